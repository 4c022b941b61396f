//! `/metrics` as Prometheus reads it: checked with Prometheus's own
//! `promtool check metrics` (Debian's `prometheus` package) on a real
//! mapper's and reducer's scrape after a run, and a finished run's series
//! carry its final, true values — never stale "in progress" ones.

#![allow(clippy::unwrap_used)]

mod common;

use common::fleet::*;
use common::steer::{free_port, http_get};
use common::*;
use std::io::Write;

const PROMTOOL_HINT: &str =
    "promtool is missing: install it with `apt-get install prometheus` (or run `.ci/run`)";

/// `promtool check metrics` on a scrape: its findings, empty when clean.
fn promtool_findings(scrape: &str) -> String {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PROMTOOL_HINT} ({e})"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        text.trim().to_string()
    } else {
        format!("exit {:?}: {text}", out.status.code())
    }
}

/// The value of one series, `name{labels}`, in a scrape.
fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_and_a_finished_run_leaves_its_true_final_values() {
    let env = TestEnv::new().await;
    env.seed_collections(300, 4).await;
    let mut fleet = Fleet::new(&env);
    let (mport, rport) = (free_port(), free_port());
    let mapper = fleet.spawn(&[
        "mapper",
        "--concurrency",
        "2",
        "--metrics-addr",
        &format!("127.0.0.1:{mport}"),
    ]);
    fleet.mappers.push(mapper);
    let reducer = fleet.spawn(&["reducer", "--metrics-addr", &format!("127.0.0.1:{rport}")]);
    fleet.mappers.push(reducer);
    // Scraped before any run: the failure counters already exist.
    let (code, before) = http_get(rport, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        value(&before, "backfill_runs_finished_total"),
        Some(0.0),
        "{before}"
    );

    let out = env.run(&[
        "coordinator",
        "--job",
        &job("collection-dict-migrate"),
        "--all",
        "--commit",
        "--wait",
        "--shard-size",
        "50",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = stdout(&out).lines().next().unwrap().trim().to_string();
    let shards = num(&summary(&out), "shards");

    for port in [mport, rport] {
        let (code, scrape) = http_get(port, "/metrics");
        assert_eq!(code, 200);
        let findings = promtool_findings(&scrape);
        assert!(
            findings.is_empty(),
            "promtool check metrics: {findings}\n{scrape}"
        );
        let labels = format!("run=\"{run}\",job=\"collection-dict-migrate\"");
        let series = |name: &str, extra: &str| {
            let sep = if extra.is_empty() { "" } else { "," };
            value(&scrape, &format!("{name}{{{labels}{sep}{extra}}}"))
        };
        assert_eq!(
            series("backfill_run_shards", "state=\"pending\""),
            Some(0.0),
            "{scrape}"
        );
        assert_eq!(
            series("backfill_run_shards", "state=\"running\""),
            Some(0.0)
        );
        assert_eq!(
            series("backfill_run_shards", "state=\"done\""),
            Some(shards as f64)
        );
        assert_eq!(series("backfill_run_state", "state=\"done\""), Some(1.0));
        assert_eq!(series("backfill_run_state", "state=\"running\""), Some(0.0));
        assert_eq!(
            series("backfill_run_eta_seconds", ""),
            Some(0.0),
            "{scrape}"
        );
        assert_eq!(series("backfill_run_paused", ""), Some(0.0));
        assert_eq!(
            series("backfill_run_shards_planned", ""),
            Some(shards as f64)
        );
        assert!(
            !scrape.contains("backfill_run_shards_total"),
            "a gauge does not end in _total: {scrape}"
        );
        // Every backfill metric the alert rules use is in the scrape.
        let rules = std::fs::read_to_string(format!(
            "{}/deploy/prometheus/alerts.yaml",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        for name in rules
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("backfill_") && w.len() > "backfill_".len())
        {
            if name == "backfill_queue_messages" && port == mport {
                continue; // only roles with a broker connection report it
            }
            assert!(
                scrape.contains(&format!("\n{name}{{")) || scrape.contains(&format!("\n{name} ")),
                "alerts.yaml uses {name}, which :{port}/metrics does not export:\n{scrape}"
            );
        }
        if port == mport {
            assert_eq!(
                series("backfill_shards_failed_total", ""),
                Some(0.0),
                "{scrape}"
            );
            assert_eq!(
                series("backfill_shards_finished_total", ""),
                Some(shards as f64)
            );
        }
    }
}

/// The shipped alert rules load and pass their unit tests in promtool.
#[test]
fn alert_rules_pass_promtool_check_and_test() {
    let dir = format!("{}/deploy/prometheus", env!("CARGO_MANIFEST_DIR"));
    for args in [
        vec!["check", "rules", "alerts.yaml"],
        vec!["test", "rules", "alerts.test.yaml"],
        vec!["check", "config", "scrape.yaml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{PROMTOOL_HINT} ({e})"));
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
