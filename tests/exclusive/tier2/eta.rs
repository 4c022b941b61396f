//! The run's ETA against the real services: throttled runs with mapper and
//! reducer processes, `status --json` sampled as the rows go by, each ETA
//! checked against the time the run actually took to end (its `finished_at`
//! on the ledger's clock).

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;
use std::process::Child;
use std::time::{Duration, Instant};

const JOB: &str = "collection-dict-migrate";

/// One look at `status --json`.
struct Sample {
    /// Share of planned rows processed.
    share: f64,
    eta: f64,
    basis: String,
    /// What the whole-run average (`rows_per_sec`) would have said.
    average_eta: f64,
    /// The ledger's clock when the status was read.
    at: f64,
}

/// A seeded database and the rows the job will plan (every row of both
/// targets).
async fn seeded() -> (TestEnv, i64) {
    let env = TestEnv::with_collections(1_500, 8).await;
    let planned = env
        .scalar_i64(
            "SELECT (SELECT count(*) FROM collection_models) + (SELECT count(*) FROM collection_snapshot_contents)",
        )
        .await;
    (env, planned)
}

fn start(env: &TestEnv, rows_per_sec: f64) -> Child {
    spawn_job(
        env,
        &job(JOB),
        &format!("--all --commit --wait --shard-size 50 --rows-per-sec {rows_per_sec:.0}"),
    )
}

/// Reads the run's status until `share` of its rows are processed.
async fn sample_at(env: &TestEnv, run: &str, share: f64) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let before = db_now(env).await;
        let st = status_json(env, run);
        let after = db_now(env).await;
        assert!(
            Instant::now() < deadline,
            "the run did not get to {share}: {st}"
        );
        assert_eq!(st["state"], "running", "the run ended too soon: {st}");
        let planned = st["rows"]["planned"].as_f64().unwrap();
        let processed = st["rows"]["processed"].as_f64().unwrap();
        let done = processed / planned.max(1.0);
        // While the run is planned, its shards are published as they are
        // recorded: the rows planned so far are not all its rows, and it
        // has no ETA yet.
        if st["planning"] == true {
            assert_eq!(st["eta_seconds"], serde_json::Value::Null, "{st}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if done < share {
            tokio::time::sleep(Duration::from_millis(150)).await;
            continue;
        }
        let eta = st["eta_seconds"]
            .as_f64()
            .unwrap_or_else(|| panic!("an ETA at {:.0} %: {st}", done * 100.0));
        assert!(
            st["rows_per_sec_recent"].as_f64().unwrap() > 0.0,
            "the recent rate shows: {st}"
        );
        let basis = st["eta_basis"].as_str().unwrap_or("").to_string();
        assert!(
            ["mappers", "reducer", "throttle"].contains(&basis.as_str()),
            "{st}"
        );
        let rows_left = planned - processed;
        return Sample {
            share: done,
            eta,
            basis,
            average_eta: rows_left / st["rows_per_sec"].as_f64().unwrap().max(1e-9),
            at: (before + after) / 2.0,
        };
    }
}

/// Waits for the run's end, prints every sample against the time that was
/// actually left and checks each is within 20 %; returns when the run ended.
async fn check(env: &TestEnv, run: &str, coord: Child, samples: &[Sample]) -> f64 {
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    let ended: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM finished_at)::float8 FROM backfill_run WHERE run_id = $1 AND state = 'done'",
    )
    .bind(run)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let st = status_json(env, run);
    assert_eq!(
        st["eta_seconds"],
        serde_json::Value::Null,
        "no ETA once done"
    );
    for s in samples {
        let left = ended - s.at;
        eprintln!(
            "at {:.0} % of rows: ETA {:.1} s ({}), actually {left:.1} s left, ratio {:.2} (the whole-run average said {:.1} s)",
            s.share * 100.0,
            s.eta,
            s.basis,
            s.eta / left,
            s.average_eta,
        );
    }
    for s in samples {
        let left = ended - s.at;
        assert!(
            (s.eta / left - 1.0).abs() <= 0.20,
            "at {:.0} %: ETA {:.1} s but {left:.1} s were left",
            s.share * 100.0,
            s.eta
        );
    }
    ended
}

#[tokio::test(flavor = "multi_thread")]
async fn the_eta_of_a_throttled_run_is_within_twenty_percent_of_the_time_left() {
    let _turn = crate::SERVICES.read().await;
    let (env, planned) = seeded().await;
    let rate = planned as f64 / 25.0; // about 25 s
    eprintln!("{planned} rows in shards of 50 at {rate:.0} rows/s");
    let _fleet = Fleet::started(&env, 2);
    let coord = start(&env, rate);
    let run = run_of(&env, JOB).await;
    let mut samples = Vec::new();
    for share in [0.25, 0.5, 0.75] {
        samples.push(sample_at(&env, &run, share).await);
    }
    check(&env, &run, coord, &samples).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_throttle_is_lowered_the_eta_follows_the_new_rate() {
    let _turn = crate::SERVICES.read().await;
    let (env, planned) = seeded().await;
    // A quarter at a fast rate (about 2.5 s), the rest at a quarter of it
    // (about 30 s).
    let fast = planned as f64 / 10.0;
    let slow = fast / 4.0;
    eprintln!("{planned} rows in shards of 50 at {fast:.0}, then {slow:.0} rows/s");
    let _fleet = Fleet::started(&env, 2);
    let coord = start(&env, fast);
    let run = run_of(&env, JOB).await;
    sample_at(&env, &run, 0.2).await;
    let out = env.run(&["throttle", &run, "--rows-per-sec", &format!("{slow:.0}")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut samples = Vec::new();
    for share in [0.5, 0.75] {
        samples.push(sample_at(&env, &run, share).await);
    }
    let ended = check(&env, &run, coord, &samples).await;
    // What this test is for: the whole-run average misses by more.
    let half = &samples[0];
    let left = ended - half.at;
    assert!(
        (half.average_eta / left - 1.0).abs() > 0.2,
        "the whole-run average said {:.1} s of {left:.1} s: the rate change did not show",
        half.average_eta
    );
}
