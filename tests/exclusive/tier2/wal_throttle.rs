//! The WAL-aware throttle against the real services: a run capped in WAL
//! bytes per second keeps the server's WAL rate at the cap; a run capped in
//! bytes per second takes as long as its bytes over the cap, and the cap
//! changes while it runs; the replica lag in bytes is read (no standby
//! here: healthy).

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const JOB: &str = "collection-dict-migrate";

/// The cap, in WAL bytes per second.
///
/// The cap is on the server's WAL, whoever writes it: the test database
/// shares its server with the other tests running at the same time (this
/// file's other tests, and any other suite on the same server), and their
/// WAL counts too, both for the throttle and for this measurement, which
/// samples the same `pg_current_wal_lsn()`. The throttle pays another
/// writer's burst back by holding the run longer, so the server's rate
/// stays at the cap as long as the others write less than the cap on
/// average: the run then writes the rest of it. Unthrottled, this run
/// writes about 60 MB of WAL at 7–8 MB/s on a small machine; 4 MB/s is
/// about half of that (so the run can always fill what the others leave)
/// and well above what the other tests of this file write; on a quiet
/// server the run lasts about 15 s, longer while others write.
const WAL_CAP: f64 = 4_000_000.0;

/// The server's clock and WAL position.
const WAL_NOW: &str = "SELECT extract(epoch FROM clock_timestamp())::float8,
                              pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::float8";

/// `(seconds since the epoch, bytes since LSN 0/0)` of the server's WAL
/// position, sampled every 50 ms until `stop`.
async fn sample_wal(pool: sqlx::PgPool, stop: Arc<AtomicBool>) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let s: (f64, f64) = sqlx::query_as(WAL_NOW).fetch_one(&pool).await.unwrap();
        out.push(s);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out
}

/// The WAL position at time `t`, interpolated between the samples around it.
fn wal_at(samples: &[(f64, f64)], t: f64) -> f64 {
    let i = samples.partition_point(|s| s.0 <= t);
    assert!(
        i > 0 && i < samples.len(),
        "no WAL samples around {t} ({} samples from {:?} to {:?})",
        samples.len(),
        samples.first(),
        samples.last()
    );
    let (a, b) = (samples[i - 1], samples[i]);
    a.1 + (b.1 - a.1) * (t - a.0) / (b.0 - a.0).max(1e-9)
}

/// When the run's first shard started and its last one finished.
async fn run_span(env: &TestEnv, run: &str) -> (f64, f64) {
    sqlx::query_as(
        "SELECT extract(epoch FROM min(started_at))::float8, extract(epoch FROM max(finished_at))::float8
         FROM backfill_shard WHERE run_id = $1",
    )
    .bind(run)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wal_capped_run_keeps_the_servers_wal_rate_at_the_cap() {
    let _turn = crate::SERVICES.read().await;
    let env = TestEnv::new().await;
    // What the server writes without this test's run, for the record.
    let (t0, l0): (f64, f64) = sqlx::query_as(WAL_NOW).fetch_one(&env.pool).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (t1, l1): (f64, f64) = sqlx::query_as(WAL_NOW).fetch_one(&env.pool).await.unwrap();
    let background = (l1 - l0) / (t1 - t0);
    env.seed_collections(6_000, 8).await;
    let _fleet = Fleet::started(&env, 2);
    let cap = std::env::var("BF_TEST_WAL_CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(WAL_CAP);
    let spec = spec_with(
        JOB,
        &format!("[health]\nmax_wal_bytes_per_sec = {cap}\n"),
        "wal-cap",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_wal(env.pool.clone(), stop.clone()));
    let coord = spawn_job(
        &env,
        spec.to_str().unwrap(),
        "--all --commit --wait --shard-size 100",
    );
    let run = run_of(&env, JOB).await;
    // The cap is the run's, as the spec says.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = status_json(&env, &run);
        if st["throttle"]["max_wal_bytes_per_sec"].as_f64() == Some(cap) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never showed the WAL cap: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    let (start, end) = run_span(&env, &run).await;
    let wal = wal_at(&samples, end) - wal_at(&samples, start);
    let secs = end - start;
    let rate = wal / secs;
    let ratio = rate / cap;
    let s = summary(&out);
    eprintln!(
        "WAL cap {cap:.0} B/s: measured {rate:.0} B/s ({wal:.0} bytes of WAL in {secs:.1} s, first shard start to last shard end), ratio {ratio:.3}; {} rows changed; the server wrote {background:.0} B/s in the 2 s before this test seeded (this file's other tests included)",
        num(&s, "changed")
    );
    assert!(num(&s, "changed") > 0, "the run wrote something");
    assert!(
        secs >= 10.0,
        "the run took {secs:.1} s; the cap should make it last 15 s or more"
    );
    assert!(
        ratio <= 1.15,
        "the server wrote {rate:.0} B/s of WAL, over the cap {cap:.0} × 1.15"
    );
    assert!(
        ratio >= 0.85,
        "the server wrote {rate:.0} B/s of WAL, under the cap {cap:.0} × 0.85: the run was not held at the cap"
    );
}

/// When a shard started, and the bytes it wrote.
type Started = (f64, f64);

/// (started, bytes written) of each shard of the run, by start.
async fn shard_bytes(env: &TestEnv, run: &str) -> Vec<Started> {
    sqlx::query_as(
        "SELECT extract(epoch FROM started_at)::float8, coalesce((result->>'bytes_written')::float8, 0)
         FROM backfill_shard WHERE run_id = $1 AND started_at IS NOT NULL ORDER BY started_at",
    )
    .bind(run)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bytes_capped_run_takes_its_bytes_over_the_cap_and_the_cap_changes_while_it_runs() {
    let _turn = crate::SERVICES.read().await;
    let env = TestEnv::with_collections(1_500, 8).await;
    let _fleet = Fleet::started(&env, 2);
    let first = std::env::var("BF_TEST_BYTES_CAP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BYTES_CAP);
    let second = first * 2.0;
    // A commit: the bytes each shard wrote settle its reservation.
    let (coord, run) = start_job(
        &env,
        JOB,
        &format!("--all --commit --wait --shard-size 50 --bytes-per-sec {first}"),
    )
    .await;
    let st = status_json(&env, &run);
    assert_eq!(
        st["throttle"]["bytes_per_sec"].as_f64(),
        Some(first),
        "{st}"
    );
    wait_done(&env, &run, 50).await;
    let out = env.run(&["throttle", &run, "--bytes-per-sec", &second.to_string()]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains(&format!("bytes/s={second}")),
        "{}",
        stdout(&out)
    );
    let changed_at = db_now(&env).await;
    let st = status_json(&env, &run);
    assert_eq!(
        st["throttle"]["bytes_per_sec"].as_f64(),
        Some(second),
        "{st}"
    );
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        num(&summary(&out), "changed") > 0,
        "the commit wrote the rows whose bytes it counted"
    );

    let shards = shard_bytes(&env, &run).await;
    let (start, end) = run_span(&env, &run).await;
    let secs = end - start;
    let total: f64 = shards.iter().map(|s| s.1).sum();
    let (before, after): (Vec<Started>, Vec<Started>) =
        shards.iter().copied().partition(|s| s.0 < changed_at);
    let bytes_before: f64 = before.iter().map(|s| s.1).sum();
    let bytes_after: f64 = after.iter().map(|s| s.1).sum();
    // Each shard's bytes at the cap in force when it started.
    let expected = bytes_before / first + bytes_after / second;
    let ratio = secs / expected;
    eprintln!(
        "bytes cap {first:.0} then {second:.0} B/s: {total:.0} bytes in {secs:.1} s ({:.0} B/s), expected {expected:.1} s ({bytes_before:.0} bytes at {first:.0}, {bytes_after:.0} at {second:.0}), ratio {ratio:.3}",
        total / secs
    );
    assert!(
        !before.is_empty() && !after.is_empty(),
        "the cap changed while the run went"
    );
    assert!(total > 0.0, "the shards counted their bytes");
    assert!(
        (ratio - 1.0).abs() <= 0.20,
        "the run took {secs:.1} s, not within 20 % of its bytes over the cap ({expected:.1} s)"
    );
    let history = env.run(&["history", "--job", JOB]);
    assert!(
        stdout(&history).contains(&format!("bytes_per_sec={second}")),
        "the change is in the run's history"
    );
}

/// Bytes per second of the bytes test's first part (then twice that). Its
/// commit writes about 8.7 MB of documents: about 14 s.
const BYTES_CAP: f64 = 400_000.0;

#[tokio::test(flavor = "multi_thread")]
async fn replica_lag_in_bytes_is_read_and_no_standby_is_healthy() {
    let _turn = crate::SERVICES.read().await;
    let env = TestEnv::new().await;
    let text = std::fs::read_to_string(spec_with(
        JOB,
        "[health]\nmax_replication_lag_bytes = 1\nmax_replication_lag_seconds = 0\n",
        "lag-bytes",
    ))
    .unwrap();
    let spec = backfill_job::JobSpec::parse(&text).unwrap();
    assert_eq!(spec.health.max_replication_lag_bytes, 1);
    let store = env.store().await;
    let h = store.health(&spec.health).await.unwrap();
    assert!(h.ok, "no standby, no lag: {h:?}");
    // The same query a standby would answer, run for real.
    let standbys: i64 = env
        .scalar_i64("SELECT count(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::int8 FROM pg_stat_replication")
        .await;
    assert_eq!(standbys, 0);
    // A spec that gets it wrong names the field.
    let bad = text.replace(
        "max_replication_lag_bytes = 1",
        "max_replication_lag_bytes = -1",
    );
    let e = backfill_job::JobSpec::parse(&bad).unwrap_err();
    assert_eq!(e.field, "health.max_replication_lag_bytes");
}

/// On SQLite the WAL settings are accepted and do not apply (no WAL
/// position, no standbys): a run with a cap of 1 byte of WAL per second
/// finishes at once; the bytes-per-second limit applies.
#[tokio::test(flavor = "multi_thread")]
async fn on_sqlite_the_wal_settings_do_not_apply_and_bytes_per_second_does() {
    let _turn = crate::SERVICES.read().await;
    use crate::common::both::{Backend, Db};
    let db = Db::new(Backend::Sqlite).await;
    db.seed_collections(200, 4).await;
    let spec = spec_with(
        JOB,
        "[throttle]\nbytes_per_sec = 200000\n\n[health]\nmax_wal_bytes_per_sec = 1\nmax_replication_lag_bytes = 1\n",
        "lite",
    );
    let started = std::time::Instant::now();
    let out = db.run(&job_args(
        "run",
        spec.to_str().unwrap(),
        "--all --shard-size 25",
    ));
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = summary(&out);
    let run = s.get("run").cloned().unwrap_or_default();
    let store = db.store().await;
    let st = store.run_status(&run).await.unwrap().unwrap();
    assert_eq!(st.throttle.bytes_per_sec, Some(200_000.0));
    assert_eq!(st.throttle.max_wal_bytes_per_sec, Some(1.0));
    let written: f64 = db
        .rows(&format!(
            "SELECT result FROM backfill_shard WHERE run_id = '{run}'"
        ))
        .await
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .filter_map(|v| v["bytes_written"].as_f64())
        .sum();
    let expected = written / 200_000.0;
    eprintln!(
        "SQLite run with a WAL cap of 1 B/s and 200000 bytes/s: {written:.0} bytes in {secs:.1} s (the process, start to end), {expected:.1} s at the cap"
    );
    assert!(written > 0.0);
    assert!(
        stderr(&out).contains("max_wal_bytes_per_sec is not applied on SQLite"),
        "the run says the WAL cap does not apply"
    );
    assert!(
        secs >= expected * 0.8,
        "{secs:.1} s: the bytes-per-second limit did not hold"
    );
    assert!(
        secs <= expected * 1.2 + 10.0,
        "{secs:.1} s: the WAL cap was applied on SQLite"
    );
}
