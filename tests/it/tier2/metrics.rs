//! `/metrics` as Prometheus reads it: checked with Prometheus's own
//! `promtool check metrics` (Debian's `prometheus` package) on a real
//! mapper's and reducer's scrape after a run, and a finished run's series
//! carry its final, true values — never stale "in progress" ones.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::{free_port, http_get};
use crate::common::*;
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
    let env = TestEnv::with_collections(300, 4).await;
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

    let out = env.run(&job_args(
        "coordinator",
        &job("collection-dict-migrate"),
        "--all --commit --wait --shard-size 50",
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = stdout(&out).lines().next().unwrap().trim().to_string();
    let shards = num(&summary(&out), "shards");

    let mut scrapes = String::new();
    for port in [mport, rport] {
        let (code, scrape) = http_get(port, "/metrics");
        scrapes.push_str(&scrape);
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
    // Every backfill metric a Grafana query names is exported by a mapper
    // or the reducer.
    for expr in grafana_exprs() {
        for name in metric_names(&expr) {
            assert!(
                scrapes.contains(&format!("\n{name}{{")) || scrapes.contains(&format!("\n{name} ")),
                "deploy/grafana/backfill.json queries {name} (in `{expr}`), which no worker exports:\n{scrapes}"
            );
        }
    }
}

/// The PromQL of every query of the shipped Grafana dashboard, its
/// template variables included.
fn grafana_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(format!(
        "{}/deploy/grafana/backfill.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(METRIC, LABEL) names a metric too.
            let inner = q.trim_start_matches("label_values(").trim_end_matches(')');
            let metric = inner.split(',').next().unwrap().trim();
            exprs.push(metric.to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs
}

/// The backfill metric names an expression uses.
fn metric_names(expr: &str) -> Vec<&str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("backfill_") && w.len() > "backfill_".len())
        .collect()
}

/// Every query of the Grafana dashboard is PromQL that Prometheus parses:
/// each becomes a recording rule that `promtool check rules` reads, with
/// Grafana's variables given values.
#[test]
fn grafana_dashboard_queries_parse_as_promql() {
    let mut rules = String::from("groups:\n  - name: grafana\n    rules:\n");
    for (i, expr) in grafana_exprs().iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m").replace("$run", ".*");
        rules.push_str(&format!(
            "      - record: grafana:query:{i}\n        expr: '{}'\n",
            expr.replace('\'', "''")
        ));
    }
    let dir = std::env::temp_dir().join(format!("bf-grafana-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("queries.yaml");
    std::fs::write(&path, &rules).unwrap();
    let out = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{PROMTOOL_HINT} ({e})"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "promtool check rules on the dashboard's queries: {}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
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
