//! Monitoring a large run: one run of 10,000 shards and 50,000 groups, its
//! ledger built directly in the database (`backfill_bench::monitor`), read
//! by `backfill status RUN --json`, the dashboard's `/api/runs/RUN` and
//! `/api/runs/RUN/shards`, and the report.
//!
//! The answers must be right at that size, and come in under 2 s each in
//! this (debug) build: reading every group's plan and counts for a status
//! took 5 s here. The release target, under 200 ms each, is measured by
//! `backfill-bench --only monitor` (BENCHMARKS.md).

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;
use std::time::{Duration, Instant};

const SHARDS: u32 = 10_000;
const GROUPS: u32 = 50_000;
const RUN: &str = "big-run";

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
    assert_eq!(rec.tally.groups["g777"].counts.changed, 20);

    let status = best_of_three(|| {
        let out = output_within(env.cmd(&["status", RUN, "--json"]), Duration::from_secs(60));
        assert!(out.status.success(), "{}", stderr(&out));
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(doc["shards"]["total"], SHARDS, "{doc}");
        assert_eq!(doc["shards"]["done"], SHARDS / 2, "{doc}");
        assert_eq!(doc["shards"]["reduced"], SHARDS / 2, "{doc}");
        assert_eq!(doc["rows"]["changed"], SHARDS / 2 * 100, "{doc}");
    });

    let port = free_port();
    let mut fleet = Fleet::new(&env);
    fleet.spawn(&["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
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
    eprintln!(
        "10,000 shards, 50,000 groups, debug build: status --json {} ms (whole process), /api/runs/RUN {} ms, /api/runs/RUN/shards {} ms",
        status.as_millis(),
        run.as_millis(),
        shards.as_millis()
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
