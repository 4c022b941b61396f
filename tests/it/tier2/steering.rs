//! Steering a run across processes, against the real services: pause,
//! resume and cancel from another process; a throttled run keeps to its
//! rate, changed while it runs; a failing database health check holds the
//! run until it passes; a shards-in-flight limit; two runs at once with
//! priorities; and the metrics and health endpoints of the workers.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;
use std::time::Duration;

const JOB: &str = "collection-dict-migrate";

async fn seeded() -> TestEnv {
    TestEnv::with_collections(1_500, 8).await
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_stops_new_shards_within_two_seconds_and_resume_finishes_the_run() {
    let env = seeded().await;
    let mut fleet = Fleet::started(&env, 1);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let m = fleet.spawn(&["mapper", "--concurrency", "2", "--metrics-addr", &addr]);
    fleet.mappers.push(m);
    let (coord, run) = start_job(
        &env,
        JOB,
        "--all --commit --wait --shard-size 50 --rows-per-sec 1000",
    )
    .await;
    wait_done(&env, &run, 20).await;

    let out = env
        .cmd(&["pause", &run])
        .env("BACKFILL_OPERATOR", "ops-alice")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let paused_at = db_now(&env).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let done_then = count(&env, &run, "state = 'done'").await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let started_late = count(
        &env,
        &run,
        &format!("started_at > to_timestamp({paused_at}) + interval '2 seconds'"),
    )
    .await;
    assert_eq!(started_late, 0, "no shard starts more than 2 s after pause");
    assert_eq!(
        count(&env, &run, "state = 'done'").await,
        done_then,
        "no progress while paused"
    );
    assert_eq!(
        count(&env, &run, "state = 'running'").await,
        0,
        "the shards in hand finished"
    );
    let pending = count(&env, &run, "state = 'pending'").await;
    assert!(pending > 0, "the pause caught the run before its end");
    let st = status_json(&env, &run);
    assert_eq!(st["control"], "pause");
    assert_eq!(st["state"], "running");
    assert_eq!(st["shards"]["done"].as_i64().unwrap(), done_then);
    assert_eq!(
        st["eta_seconds"],
        serde_json::Value::Null,
        "no ETA while paused"
    );

    // The worker's endpoints while the run is paused.
    let (code, body) = http_get(port, "/healthz");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(port, "/readyz");
    assert_eq!(code, 200, "{body}");
    let probe = env.run(&["probe", &format!("http://127.0.0.1:{port}/readyz")]);
    assert_eq!(
        probe.status.code(),
        Some(0),
        "the container health probe passes"
    );
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "backfill_shards_started_total",
        "backfill_shards_finished_total",
        "backfill_rows_total",
        "backfill_shard_duration_seconds_bucket",
        "backfill_run_shards",
        "backfill_run_rows_per_second",
        "backfill_queue_messages",
    ] {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }
    assert!(
        metrics.contains(&format!("run=\"{run}\"")) && metrics.contains(&format!("job=\"{JOB}\"")),
        "metrics carry run and job labels:\n{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "backfill_run_paused{{run=\"{run}\",job=\"{JOB}\"}} 1"
        )),
        "the paused gauge is set:\n{metrics}"
    );

    let out = env
        .cmd(&["resume", &run])
        .env("BACKFILL_OPERATOR", "ops-bob")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    let planned = env
        .scalar_i64(&format!(
            "SELECT sum(rows)::int8 FROM backfill_shard WHERE run_id = '{run}'"
        ))
        .await;
    assert_eq!(
        num(&s, "processed"),
        planned,
        "every planned row processed once"
    );
    assert_eq!(
        count(
            &env,
            &run,
            "state = 'done' AND deliveries = 1 AND reduced_at IS NOT NULL"
        )
        .await,
        num(&s, "shards"),
        "each shard committed once and folded once"
    );
    let events: Vec<(String, String)> =
        sqlx::query_as("SELECT action, operator FROM backfill_event WHERE run_id = $1 AND action NOT IN ('start', 'skip-review') ORDER BY id")
            .bind(&run)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        events,
        vec![
            ("pause".into(), "ops-alice".into()),
            ("resume".into(), "ops-bob".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_the_run_and_writes_the_summary_of_what_was_done() {
    let env = seeded().await;
    let _fleet = Fleet::started(&env, 2);
    let (coord, run) = start_job(
        &env,
        JOB,
        "--all --commit --wait --shard-size 50 --rows-per-sec 800",
    )
    .await;
    wait_done(&env, &run, 10).await;
    let asked = db_now(&env).await;
    let out = env.run(&["cancel", &run]);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    let coord_out = coordinator_output(coord);
    assert_eq!(coord_out.status.code(), Some(4), "a cancelled run exits 4");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(
            &env,
            &run,
            &format!("started_at > to_timestamp({asked}) + interval '2 seconds'")
        )
        .await,
        0,
        "no shard starts more than 2 s after cancel"
    );
    assert_eq!(
        env.scalar_text(&format!(
            "SELECT state FROM backfill_run WHERE run_id = '{run}'"
        ))
        .await,
        "cancelled"
    );
    let done_rows = env
        .scalar_i64(&format!(
            "SELECT coalesce(sum(rows), 0)::int8 FROM backfill_shard WHERE run_id = '{run}' AND state = 'done'"
        ))
        .await;
    assert!(
        count(&env, &run, "state = 'pending'").await > 0,
        "the cancel stopped the run early"
    );
    assert_eq!(
        num(&s, "processed"),
        done_rows,
        "the summary counts what was done"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        num(&s, "changed"),
        "everything written is recorded"
    );
    let again = env.run(&["resume", &run]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "a cancelled run cannot be resumed"
    );
    let report = env.run(&["report", &run]);
    assert_eq!(report.status.code(), Some(4));
    // The summary and the report's header say the run was cancelled, and
    // the cancel says how many shards were done, counted and never started.
    assert_eq!(s.get("state").map(String::as_str), Some("cancelled"));
    let stored = env
        .scalar_text(&format!(
            "SELECT summary FROM backfill_run WHERE run_id = '{run}'"
        ))
        .await;
    assert!(stored.ends_with(" state=cancelled"), "{stored}");
    let header = stdout(&report);
    let first = header.lines().next().unwrap_or_default();
    assert_eq!(
        first, "State: cancelled — kind: forward — mode: commit",
        "{header}"
    );
    let cancelled = header.lines().nth(3).unwrap_or_default();
    assert!(cancelled.starts_with("Cancelled: "), "{header}");
    assert!(
        header
            .lines()
            .last()
            .unwrap_or_default()
            .ends_with(" state=cancelled"),
        "{header}"
    );
    let total = count(&env, &run, "true").await;
    let done = count(&env, &run, "state = 'done'").await;
    let never = count(&env, &run, "state = 'pending'").await;
    let told = stderr(&out);
    assert!(
        told.contains(&format!("of {total} shards, {done} were done and")),
        "{told}"
    );
    assert!(told.contains(&format!("{never} never started")), "{told}");
    assert!(!told.contains("the rest were never started"), "{told}");
}

/// A run cancelled while its coordinator still cuts and records its shards
/// stops being planned: no shard is recorded after the cancel's, and the
/// run ends cancelled with the shards recorded.
#[tokio::test(flavor = "multi_thread")]
async fn cancel_while_the_run_is_planned_stops_the_planning() {
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let rows = env
        .scalar_i64(
            "SELECT (SELECT count(*) FROM collection_models) + (SELECT count(*) FROM collection_snapshot_contents)",
        )
        .await;
    let (coord, run) = start_job(&env, JOB, "--all --commit --wait --shard-size 5").await;
    // No mappers: nothing runs, so every shard is a pending one.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while count(&env, &run, "true").await < 20 {
        assert!(std::time::Instant::now() < deadline, "no shards recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = env.run(&["cancel", &run, "--wait-secs", "1"]);
    assert_eq!(out.status.code(), Some(0));
    let at_cancel = count(&env, &run, "true").await;
    let coord_out = coordinator_output(coord);
    assert_eq!(coord_out.status.code(), Some(4), "a cancelled run exits 4");
    let recorded = count(&env, &run, "true").await;
    // At most this many: a target's last shard may be short.
    let full = rows / 5 + 2;
    assert!(
        recorded < full,
        "planning went on after the cancel: {recorded} of {full} shards recorded"
    );
    assert_eq!(recorded, at_cancel, "a shard was recorded after the cancel");
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM backfill_planning WHERE run_id = '{run}'"
        ))
        .await,
        0,
        "the run is no longer being planned"
    );
    assert_eq!(
        env.scalar_text(&format!(
            "SELECT state FROM backfill_run WHERE run_id = '{run}'"
        ))
        .await,
        "cancelled"
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT shards_total::int8 FROM backfill_run WHERE run_id = '{run}'"
        ))
        .await,
        recorded,
        "the plan holds the shards recorded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_throttled_run_keeps_to_its_rate_and_the_rate_changes_while_it_runs() {
    let env = seeded().await;
    let _fleet = Fleet::started(&env, 2);
    let (coord, run) =
        start_job(&env, JOB, "--all --wait --shard-size 50 --rows-per-sec 400").await;
    wait_done(&env, &run, 30).await; // 1,500 rows: about 4 s at 400 rows/s
    let out = env.run(&["throttle", &run, "--rows-per-sec", "1000"]);
    assert_eq!(out.status.code(), Some(0));
    let changed_at = db_now(&env).await;
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    let times = shard_times(&env, &run).await;
    let before: Vec<_> = times.iter().copied().filter(|s| s.0 < changed_at).collect();
    let after: Vec<_> = times
        .iter()
        .copied()
        .filter(|s| s.0 > changed_at + 1.0)
        .collect();
    let (r1, r2) = (start_rate(&before), start_rate(&after));
    eprintln!("measured {r1:.0} rows/s at 400, {r2:.0} rows/s at 1000");
    assert!(
        (r1 / 400.0 - 1.0).abs() <= 0.10,
        "{r1:.0} rows/s is not within 10 % of 400"
    );
    assert!(
        (r2 / 1000.0 - 1.0).abs() <= 0.10,
        "{r2:.0} rows/s is not within 10 % of 1000"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_health_check_holds_the_run_until_it_passes_with_one_shard_in_flight() {
    let env = seeded().await;
    env.exec("CREATE TABLE ops_hold (reason text); INSERT INTO ops_hold VALUES ('vacuum window')")
        .await;
    let spec = spec_with(
        JOB,
        "[health]\nsql = \"SELECT NOT EXISTS (SELECT 1 FROM ops_hold)\"\ncheck_every_seconds = 0.5\n\n[throttle]\nmax_in_flight = 1\n",
        "health",
    );
    let _fleet = Fleet::started(&env, 2);
    let coord = spawn_job(
        &env,
        spec.to_str().unwrap(),
        "--all --wait --shard-size 200",
    );
    let run = run_of(&env, JOB).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        count(&env, &run, "started_at IS NOT NULL").await,
        0,
        "no shard starts while the check fails"
    );
    let st = status_json(&env, &run);
    assert_eq!(st["health"]["ok"], false, "{st}");
    assert!(
        st["health"]["reason"]
            .as_str()
            .unwrap()
            .contains("health.sql"),
        "{st}"
    );
    assert_eq!(st["throttle"]["max_in_flight"], 1);

    env.exec("DELETE FROM ops_hold").await;
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    let planned = env
        .scalar_i64(&format!(
            "SELECT sum(rows)::int8 FROM backfill_shard WHERE run_id = '{run}'"
        ))
        .await;
    assert_eq!(num(&summary(&out), "processed"), planned);
    // One shard in flight at a time, across both mappers (4 slots).
    let times = shard_times(&env, &run).await;
    for w in times.windows(2) {
        let finished = w[0].1.unwrap();
        assert!(
            w[1].0 >= finished,
            "shards overlapped: one finished at {finished}, the next started at {}",
            w[1].0
        );
    }
    let _ = std::fs::remove_file(spec);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_at_once_keep_their_tasks_apart_and_the_higher_priority_goes_first() {
    let env = seeded().await;
    env.seed_certificates(30, 6_000).await;
    let _fleet = Fleet::started(&env, 2);
    let (low, low_run) =
        start_job(&env, JOB, "--all --wait --shard-size 50 --rows-per-sec 800").await;
    wait_done(&env, &low_run, 5).await;
    let (high, high_run) = start_job(
        &env,
        "program-certificate-titles",
        "--all --wait --shard-size 50 --rows-per-sec 400 --priority 5",
    )
    .await;
    let high_out = coordinator_output(high);
    assert_eq!(high_out.status.code(), Some(0));
    let low_out = coordinator_output(low);
    assert_eq!(low_out.status.code(), Some(0));

    for (run, out) in [(&low_run, &low_out), (&high_run, &high_out)] {
        let s = summary(out);
        assert_eq!(&s["run"], run);
        let planned = env
            .scalar_i64(&format!(
                "SELECT sum(rows)::int8 FROM backfill_shard WHERE run_id = '{run}'"
            ))
            .await;
        assert_eq!(
            num(&s, "processed"),
            planned,
            "run {run} processed its own rows once"
        );
        assert_eq!(
            count(
                &env,
                run,
                "state = 'done' AND deliveries = 1 AND reduced_at IS NOT NULL"
            )
            .await,
            num(&s, "shards")
        );
    }
    let high_times = shard_times(&env, &high_run).await;
    let high_start = high_times.first().unwrap().0;
    let high_end = high_times
        .iter()
        .filter_map(|t| t.1)
        .fold(f64::MIN, f64::max);
    assert!(
        high_end - high_start > 4.0,
        "the high-priority run lasted long enough to tell ({:.1} s)",
        high_end - high_start
    );
    let low_during = shard_times(&env, &low_run)
        .await
        .into_iter()
        .filter(|t| t.0 > high_start + 2.0 && t.0 < high_end)
        .count();
    assert_eq!(
        low_during, 0,
        "the lower-priority run waited while the higher one had shards left"
    );
    let low_after = shard_times(&env, &low_run)
        .await
        .into_iter()
        .filter(|t| t.0 >= high_end)
        .count();
    assert!(
        low_after > 0,
        "the lower-priority run carried on afterwards"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_reports_an_unreachable_broker() {
    let env = TestEnv::new().await;
    // The dashboard creates no ledger; a worker or job would have.
    env.store().await;
    let port = free_port();
    let mut dash = env
        .cmd(&["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (code, _) = http_get(port, "/healthz");
    assert_eq!(code, 200, "alive");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = http_get(port, "/readyz");
        if body.contains("broker") || std::time::Instant::now() > deadline {
            break (code, body);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("broker"), "{body}");
    let probe = env.run(&["probe", &format!("http://127.0.0.1:{port}/readyz")]);
    assert_eq!(
        probe.status.code(),
        Some(1),
        "the health probe fails while not ready"
    );
    assert_said(&probe, "503");
    let (code, body) = http_get(port, "/api/runs/nope");
    assert_eq!(code, 404, "{body}");
    let _ = dash.kill();
    let _ = dash.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn adaptive_sizing_sizes_the_next_run_from_measured_shard_durations() {
    let env = seeded().await;
    let spec = spec_with(
        JOB,
        "[sizing]\nadaptive = true\ntarget_shard_seconds = 0.05\nmin_shard_size = 20\nmax_shard_size = 3000\nmax_growth = 4.0\n",
        "sizing",
    );
    let spec_path = spec.to_str().unwrap().to_string();
    let first = env.run(&["run", "--job", &spec_path, "--all", "--mappers", "2"]);
    assert_eq!(first.status.code(), Some(0));
    let run1 = summary(&first)["run"].clone();
    let st1 = status_json(&env, &run1);
    assert!(
        st1["shard_size"]["chosen_by"]
            .as_str()
            .unwrap()
            .contains("no measured run"),
        "{st1}"
    );
    let size1 = st1["shard_size"]["max"].as_u64().unwrap() as u32;
    let (ms, rows): (i64, i64) = sqlx::query_as(
        "SELECT sum(elapsed_ms)::int8, sum(rows)::int8 FROM backfill_shard WHERE run_id = $1 AND elapsed_ms IS NOT NULL",
    )
    .bind(&run1)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(rows > 0, "shard durations were measured");
    let parsed = backfill_job::JobSpec::parse(&std::fs::read_to_string(&spec).unwrap()).unwrap();
    let expected =
        backfill_job::spec::adapt_shard_size(&parsed.sizing, size1, ms as f64 / rows as f64);

    let second = env.run(&["run", "--job", &spec_path, "--all", "--mappers", "2"]);
    assert_eq!(second.status.code(), Some(0));
    let run2 = summary(&second)["run"].clone();
    let st2 = status_json(&env, &run2);
    assert_eq!(
        st2["shard_size"]["max"].as_u64().unwrap() as u32,
        expected,
        "{st2}"
    );
    let chosen = st2["shard_size"]["chosen_by"].as_str().unwrap();
    assert!(
        chosen.contains(&run1) && chosen.contains("ms/row"),
        "{chosen}"
    );
    assert_ne!(expected, size1, "the measured durations changed the size");
    assert_eq!(
        num(&summary(&second), "processed"),
        num(&summary(&first), "processed"),
        "same rows, other shards"
    );
    let _ = std::fs::remove_file(spec);
}
