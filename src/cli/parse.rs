//! Turning what was typed into typed values: a job spec with its
//! parameters, a run request from a job's options, ages, limits,
//! percentages and the operator's name. Bad input is a usage error (exit 2)
//! that names the flag.

use backfill_job::{JobSpec, Mode, Scope};
use std::path::Path;
use std::time::Duration;

use super::args::{JobOptions, SteerArgs};
use crate::exit::usage;

pub fn load_spec(path: &Path, params: &[(String, String)]) -> anyhow::Result<JobSpec> {
    use std::io::Read;
    let cannot = |e: std::io::Error| usage(format!("cannot read job spec {}: {e}", path.display()));
    // One byte more than a spec may hold is enough for the parse to refuse
    // it, without reading a file of any size into memory.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(backfill_job::spec::MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    backfill_job::spec::check_size(bytes.len())
        .map_err(|e| usage(format!("job spec {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| cannot(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    JobSpec::parse_with_params(&text, params)
        .map_err(|e| usage(format!("job spec {}: {e}", path.display())))
}

/// `--sample 1%` (or `1`) as a share of the rows, 0–1.
pub fn parse_sample(text: &str) -> Result<f64, String> {
    let pct: f64 = text
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("--sample must be a percentage such as 1% or 0.5%, got `{text}`"))?;
    if !(pct.is_finite() && pct > 0.0 && pct <= 100.0) {
        return Err(format!(
            "--sample must be more than 0% and at most 100%, got `{text}`"
        ));
    }
    Ok(pct / 100.0)
}

/// The run a job's spec file and options ask for.
pub fn job_request(
    path: &Path,
    job: &JobOptions,
    operator: &str,
) -> anyhow::Result<backfill_coordinator::RunRequest> {
    let spec = load_spec(path, &job.params)?;
    let window =
        parse_age(&job.review_window).map_err(|e| usage(format!("--review-window: {e}")))?;
    let sample = job
        .sample
        .as_deref()
        .map(parse_sample)
        .transpose()
        .map_err(usage)?;
    let gate = if job.skip_review {
        let how = match std::env::var("BACKFILL_SKIP_REVIEW") {
            Ok(v) if !v.is_empty() => "BACKFILL_SKIP_REVIEW",
            _ => "--skip-review",
        };
        backfill_coordinator::Gate::skip(operator, &format!("review skipped with {how}"))
    } else {
        backfill_coordinator::Gate::review(operator, window)
    };
    validate_steer(&job.steer)?;
    let spec_throttle = spec.throttle;
    let scope = Scope::from_flags(&job.groups, job.all).map_err(|e| usage(e.to_string()))?;
    if scope != Scope::All && spec.groups.is_none() {
        return Err(usage(format!(
            "job `{}` has no groups; run it with --all",
            spec.name
        )));
    }
    if let Some(n) = job.shard_size {
        if n == 0 || n > backfill_job::spec::MAX_SHARD_SIZE {
            return Err(usage(format!(
                "--shard-size must be between 1 and {}",
                backfill_job::spec::MAX_SHARD_SIZE
            )));
        }
    }
    Ok(backfill_coordinator::RunRequest {
        spec,
        scope,
        mode: if job.commit {
            Mode::Commit
        } else {
            Mode::DryRun
        },
        shard_size: job.shard_size,
        throttle: steer_throttle(&job.steer, &spec_throttle),
        sample,
        gate,
        kind: backfill_job::RunKind::Forward,
        windows: job.steer.schedule()?,
        // Set by the commands that publish to RabbitMQ.
        publishing: None,
    })
}

/// The spec's throttle with the coordinator's flags over it; `None` when
/// no flag was given.
pub fn steer_throttle(
    steer: &SteerArgs,
    spec: &backfill_job::spec::ThrottleSpec,
) -> Option<backfill_job::spec::ThrottleSpec> {
    if steer.given().is_empty() {
        return None;
    }
    Some(backfill_job::spec::ThrottleSpec {
        rows_per_sec: steer.rows_per_sec.or(spec.rows_per_sec),
        bytes_per_sec: steer.bytes_per_sec.or(spec.bytes_per_sec),
        max_wal_bytes_per_sec: steer.max_wal_bytes_per_sec.or(spec.max_wal_bytes_per_sec),
        max_in_flight: steer.max_in_flight.or(spec.max_in_flight),
        priority: steer.priority.unwrap_or(spec.priority),
    })
}

pub fn validate_steer(steer: &SteerArgs) -> anyhow::Result<()> {
    for (flag, v) in [
        ("--rows-per-sec", steer.rows_per_sec),
        ("--bytes-per-sec", steer.bytes_per_sec),
        ("--max-wal-bytes-per-sec", steer.max_wal_bytes_per_sec),
    ] {
        if let Some(r) = v {
            if !(r.is_finite() && r > 0.0) {
                return Err(usage(format!("{flag} must be a positive number")));
            }
        }
    }
    if steer.max_in_flight == Some(0) {
        return Err(usage("--max-in-flight must be at least 1"));
    }
    Ok(())
}

/// `N` or `off`.
pub fn limit_flag<T: std::str::FromStr>(
    flag: &str,
    v: &Option<String>,
) -> anyhow::Result<Option<Option<T>>> {
    match v.as_deref() {
        None => Ok(None),
        Some("off") => Ok(Some(None)),
        Some(text) => text
            .parse::<T>()
            .map(|n| Some(Some(n)))
            .map_err(|_| usage(format!("{flag} takes a number or `off`, got `{text}`"))),
    }
}

/// `30d`, `12h`, `90m`, `45s` as a duration.
pub fn parse_age(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("--older-than takes a number and a unit (d, h, m or s), e.g. 30d; got `{text}`");
    let t = text.trim();
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(bad());
    }
    let secs = match unit {
        "d" => n * 86_400.0,
        "h" => n * 3_600.0,
        "m" => n * 60.0,
        "s" => n,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The operator for audit events: the flag, else the OS user.
pub fn operator(flag: &Option<String>) -> String {
    flag.clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("30").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("-1d").is_err());
        assert!(parse_age("1w").is_err());
    }
}
