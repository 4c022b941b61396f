//! `JobSpec::parse` and `params::resolve` on any text. The input is the
//! spec, optionally followed by a NUL byte and `NAME=VALUE` lines given as
//! `--param` overrides. Never panics.
#![no_main]

use backfill_job::params::{parse_assignment, resolve};
use backfill_job::JobSpec;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (spec, rest) = text.split_once('\0').unwrap_or((text, ""));
    let overrides: Vec<(String, String)> = rest
        .lines()
        .filter_map(|l| parse_assignment(l).ok())
        .collect();
    let _ = JobSpec::parse(spec);
    let _ = resolve(spec, &overrides);
    if !overrides.is_empty() {
        let _ = JobSpec::parse_with_params(spec, &overrides);
    }
});
