//! Monitoring a large run: one run of 10,000 shards and 50,000 groups, its
//! ledger built directly in the database (`backfill_bench::monitor`), read
//! by `backfill status RUN --json`, the dashboard's `/api/runs/RUN` and
//! `/api/runs/RUN/shards`, and the report.
//!
//! The report streams: the same as made whole, its first line at once,
//! its memory that of a run of 500 groups.
//!
//! The answers must be right at that size, and come in under 2 s each in
//! this (debug) build: reading every group's plan and counts for a status
//! took 5 s here. The release target, under 200 ms each, is measured by
//! `backfill-bench --only monitor` (BENCHMARKS.md), with the report's time
//! and memory.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;
use std::time::{Duration, Instant};

const SHARDS: u32 = 10_000;
const GROUPS: u32 = 50_000;
const RUN: &str = "big-run";

/// The peak RSS (`VmHWM`, KiB) of process `pid` until it exits, polled.
fn peak_rss_kib(pid: u32) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            if let Some(kib) = status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
            {
                peak = peak.max(kib);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        peak
    })
}

/// One `backfill report RUN --format FORMAT` process, watched.
struct Report {
    ok: bool,
    stdout: String,
    stderr: String,
    /// When its first line came, and when it ended, from its start.
    first_line: Duration,
    total: Duration,
    peak_mib: f64,
}

fn run_report(env: &TestEnv, run: &str, format: &str) -> Report {
    use std::io::{BufRead, Read};
    let t0 = Instant::now();
    let mut child = env
        .cmd(&["report", run, "--format", format])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let peak = peak_rss_kib(child.id());
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_line(&mut text);
        let first_line = t0.elapsed();
        let _ = out.read_to_string(&mut text);
        (text, first_line)
    });
    let done = child_output_within(child, Duration::from_secs(120));
    let total = t0.elapsed();
    let (stdout, first_line) = reader.join().unwrap();
    Report {
        ok: done.status.success(),
        stdout,
        stderr: stderr(&done),
        first_line,
        total,
        peak_mib: peak.join().unwrap() as f64 / 1024.0,
    }
}

/// The best of three timings of `f`, which must succeed each time.
fn best_of_three(mut f: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed()
        })
        .min()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_the_dashboards_run_apis_answer_about_10000_shards_and_50000_groups() {
    let env = TestEnv::new().await;
    // The ledger's tables, as any command makes them.
    env.store().await.close().await;
    let spec = std::fs::read_to_string(job("program-certificate-titles")).unwrap();
    backfill_bench::monitor::build_big_run(&env.pool, RUN, &spec, SHARDS, GROUPS)
        .await
        .unwrap();

    // The run as the report sees it: every group, with its counts.
    let rec = env.store().await.load_run(RUN).await.unwrap().unwrap();
    assert_eq!(rec.plan.groups.len(), GROUPS as usize);
    assert_eq!(rec.tally.groups.len(), GROUPS as usize);
    assert_eq!(rec.tally.groups["g777"].counts.unchanged, 20);
    assert_eq!(rec.tally.groups["g7000"].counts.changed, 20);

    let status = best_of_three(|| {
        let out = output_within(env.cmd(&["status", RUN, "--json"]), Duration::from_secs(60));
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["shards"]["total"], SHARDS, "{doc}");
        assert_eq!(doc["shards"]["done"], SHARDS / 2, "{doc}");
        assert_eq!(doc["shards"]["reduced"], SHARDS / 2, "{doc}");
        assert_eq!(doc["rows"]["changed"], GROUPS / 1000 * 20, "{doc}");
    });

    let port = free_port();
    let mut fleet = Fleet::new(&env);
    let dash = fleet.spawn(&["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(dash); // killed with the fleet
    let (code, _) = http_get(port, "/healthz");
    assert_eq!(code, 200);
    let run = best_of_three(|| {
        let (code, body) = http_get(port, &format!("/api/runs/{RUN}"));
        assert_eq!(code, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["run_id"], RUN, "{body}");
        assert_eq!(doc["shards"]["pending"], SHARDS / 2, "{body}");
    });
    let shards = best_of_three(|| {
        let (code, body) = http_get(port, &format!("/api/runs/{RUN}/shards"));
        assert_eq!(code, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(doc["shards"].as_array().unwrap().len(), SHARDS as usize);
    });
    // The report leads with the totals and the 50 groups that changed,
    // and counts the 49,950 others in one line. It is the report made
    // whole from the run read whole, byte for byte, but written a group at
    // a time as the database streams them.
    let text_report = run_report(&env, RUN, "text");
    assert!(text_report.ok, "{}", text_report.stderr);
    let text = &text_report.stdout;
    assert!(
        text.starts_with("State: "),
        "{}",
        &text[..text.len().min(400)]
    );
    let blocks: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("program g"))
        .collect();
    assert_eq!(blocks.len(), 50, "{blocks:?}");
    assert!(blocks.iter().all(|b| b
        .trim_start_matches("program g")
        .starts_with(|c: char| c.is_ascii_digit())));
    assert!(
        text.contains("Unchanged: 49950 programs with nothing to change, not listed"),
        "{}",
        &text[text.len().saturating_sub(600)..]
    );
    assert!(
        *text == backfill_job::report::render_report(&rec.view()),
        "the streamed report differs from the whole one"
    );
    // Every group in the JSON report, as the whole document has them.
    let json_report = run_report(&env, RUN, "json");
    assert!(json_report.ok, "{}", json_report.stderr);
    let doc: serde_json::Value = serde_json::from_str(&json_report.stdout).unwrap();
    let whole = serde_json::to_value(backfill_job::formats::report_doc(&rec.view())).unwrap();
    assert_eq!(doc["groups"].as_array().unwrap().len(), GROUPS as usize);
    assert!(
        doc == whole,
        "the streamed JSON report differs from the whole one"
    );
    assert!(
        doc["summary"]
            .as_str()
            .unwrap()
            .contains(&format!(" groups_processed={GROUPS} groups_skipped=0 ")),
        "{}",
        doc["summary"]
    );

    // Its memory is flat: the same report of a run of 500 groups peaks
    // within a few MiB of it. Read whole, 50,000 groups took 111 MiB in
    // this build (and 290 MiB before the groups had records of their own).
    const SMALL: &str = "small-run";
    backfill_bench::monitor::build_big_run(&env.pool, SMALL, &spec, 100, 500)
        .await
        .unwrap();
    let small = run_report(&env, SMALL, "json");
    assert!(small.ok, "{}", small.stderr);
    eprintln!(
        "10,000 shards, 50,000 groups, debug build: status --json {} ms (whole process), /api/runs/RUN {} ms, /api/runs/RUN/shards {} ms; report (text) {} ms, first line after {} ms, {} lines, peak RSS {:.1} MiB; report (json) {} ms, first line after {} ms, peak RSS {:.1} MiB; of 500 groups (json) peak RSS {:.1} MiB",
        status.as_millis(),
        run.as_millis(),
        shards.as_millis(),
        text_report.total.as_millis(),
        text_report.first_line.as_millis(),
        text.lines().count(),
        text_report.peak_mib,
        json_report.total.as_millis(),
        json_report.first_line.as_millis(),
        json_report.peak_mib,
        small.peak_mib,
    );
    for r in [&text_report, &json_report] {
        assert!(
            r.peak_mib < small.peak_mib + 12.0,
            "the report of 50,000 groups took {:.1} MiB, of 500 groups {:.1} MiB",
            r.peak_mib,
            small.peak_mib
        );
    }
    // It starts at once: the totals come before the groups are read.
    assert!(
        json_report.first_line * 2 < json_report.total,
        "the JSON report's first line came after {} ms of {} ms",
        json_report.first_line.as_millis(),
        json_report.total.as_millis()
    );
    for (what, t) in [
        ("status --json", status),
        ("/api/runs/RUN", run),
        ("/api/runs/RUN/shards", shards),
    ] {
        assert!(
            t < Duration::from_secs(2),
            "{what} took {} ms",
            t.as_millis()
        );
    }
}
