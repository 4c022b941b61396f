//! Publishing a run while it is planned, against real coordinator, mapper
//! and reducer processes: shards are mapped before the plan is whole, the
//! run ends only once it is, a coordinator killed (SIGKILL) while planning
//! leaves a run that the same command plans on, every row once, a run
//! cancelled while planned stays cancelled once its plan is recorded, and
//! windows given with `--window` show in `status` while the run is planned.
//!
//! Planning is made slow by the database itself: a trigger sleeps for
//! every INSERT of a shard's items into the ledger, so the timing is the
//! same on any machine.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::{coordinator_args, coordinator_output, spawn_coordinator, Fleet};
use crate::common::*;
use std::time::{Duration, Instant};

/// Documents in `docs`, and the shards they make of 10 rows.
const ROWS: i64 = 400;
const SHARDS: i64 = 40;

/// The job: sets `/seen` in every document of `docs`, 10 rows a shard.
fn spec() -> String {
    docs_spec(
        "name = \"planned-docs\"\nshard_size = 10",
        "[[targets.rules]]\nop = \"set\"\npath = \"/seen\"\nvalue = true\n",
    )
}

/// `ROWS` documents, a ledger, and 100 ms of sleep for every shard's items
/// recorded: planning takes about 4 s.
async fn slow_planning(env: &TestEnv) {
    slow_planning_of(env, ROWS, "0.1").await;
}

/// `rows` documents in `docs`, a ledger, and `sleep` seconds of sleep for
/// every shard's items recorded.
async fn slow_planning_of(env: &TestEnv, rows: i64, sleep: &str) {
    env.exec("CREATE TABLE docs (id integer PRIMARY KEY, doc jsonb NOT NULL)")
        .await;
    env.exec(&format!(
        "INSERT INTO docs SELECT n, jsonb_build_object('n', n) FROM generate_series(1, {rows}) n"
    ))
    .await;
    env.store().await.close().await;
    env.exec(&format!(
        "CREATE FUNCTION slow_items() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN PERFORM pg_sleep({sleep}); RETURN NULL; END $$"
    ))
    .await;
    env.exec(
        "CREATE TRIGGER slow_items AFTER INSERT ON backfill_item
         FOR EACH STATEMENT EXECUTE FUNCTION slow_items()",
    )
    .await;
}

/// Whether a run is being planned now.
async fn planning(env: &TestEnv) -> bool {
    env.scalar_i64("SELECT count(*) FROM backfill_planning")
        .await
        > 0
}

/// Waits until at least `n` shards are published while the run is still
/// being planned.
async fn published_while_planning(env: &TestEnv, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "no shard was published while planning"
        );
        let published = env
            .scalar_i64("SELECT count(*) FROM backfill_shard WHERE published_at IS NOT NULL")
            .await;
        if published >= n && planning(env).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every document was set once, and the run's ledger holds each row once,
/// in shards numbered from 0 without a gap.
async fn every_row_once(env: &TestEnv, run_id: &str) {
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM docs WHERE doc->'seen' = 'true'")
            .await,
        ROWS
    );
    let q = |what: &str| format!("SELECT {what} FROM backfill_item WHERE run_id = '{run_id}'");
    assert_eq!(env.scalar_i64(&q("count(*)")).await, ROWS);
    assert_eq!(env.scalar_i64(&q("count(DISTINCT key)")).await, ROWS);
    let shards = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM backfill_shard WHERE run_id = '{run_id}'"
        ))
        .await;
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT max(shard_no)::bigint + 1 FROM backfill_shard WHERE run_id = '{run_id}'"
        ))
        .await,
        shards
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT shards_total::bigint FROM backfill_run WHERE run_id = '{run_id}'"
        ))
        .await,
        shards
    );
    assert!(!planning(env).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn shards_are_mapped_while_the_run_is_planned_and_it_ends_once_planned() {
    let env = TestEnv::new().await;
    slow_planning(&env).await;
    let spec = SpecFile::new("planned-docs", &spec());
    let _fleet = Fleet::started(&env, 2);
    let coord = spawn_coordinator(&env, spec.path(), "10");
    // A shard mapped (done) while the run is still being planned.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = false;
    while Instant::now() < deadline {
        let both = env
            .scalar_i64(
                "SELECT count(*) FROM backfill_planning
                 WHERE EXISTS (SELECT 1 FROM backfill_shard WHERE state = 'done')",
            )
            .await;
        if both > 0 {
            seen = true;
            let run_id = env.scalar_text("SELECT run_id FROM backfill_run").await;
            let status = env.run(&["status", &run_id, "--json"]);
            let run: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
            assert_eq!(run["planning"], true, "{run}");
            assert_eq!(run["state"], "running");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen,
        "no shard was mapped while the run was planned: tasks are published only after planning"
    );
    let out = tokio::task::spawn_blocking(move || coordinator_output(coord))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(num(&s, "processed"), ROWS);
    assert_eq!(num(&s, "changed"), ROWS);
    assert_eq!(num(&s, "shards"), SHARDS);
    every_row_once(&env, &s["run"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_while_planning_is_planned_on_by_the_same_command() {
    let env = TestEnv::new().await;
    slow_planning(&env).await;
    let spec = SpecFile::new("planned-docs", &spec());
    let args = coordinator_args(spec.path(), "10");
    let mut fleet = Fleet::started(&env, 2);
    // Killed once some shards went out, the plan not yet whole.
    let mut coord = spawn_coordinator(&env, spec.path(), "10");
    published_while_planning(&env, 3).await;
    coord.kill().unwrap(); // SIGKILL
    coord.wait().unwrap();
    assert!(planning(&env).await, "killed while planning");
    let recorded = env.scalar_i64("SELECT count(*) FROM backfill_shard").await;
    assert!(recorded < SHARDS, "{recorded} of {SHARDS} recorded");
    // Every shard it published is mapped and folded; the run goes on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while env
        .scalar_i64("SELECT count(*) FROM backfill_shard WHERE published_at IS NOT NULL AND reduced_at IS NULL")
        .await
        > 0
    {
        assert!(Instant::now() < deadline, "the published shards were not folded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let run_id = env.scalar_text("SELECT run_id FROM backfill_run").await;
    let status = env.run(&["status", &run_id]);
    assert!(
        stdout(&status).contains("ORPHANED its coordinator stopped while planning it"),
        "{}",
        stdout(&status)
    );
    assert_eq!(
        env.scalar_text("SELECT state FROM backfill_run").await,
        "running"
    );
    // A reducer restarted meanwhile changes nothing.
    fleet.kill_reducer();
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_said(&out, "was unfinished: resuming it");
    let s = summary(&out);
    assert_eq!(num(&s, "processed"), ROWS);
    assert_eq!(num(&s, "changed"), ROWS);
    every_row_once(&env, &s["run"]).await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM backfill_run").await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_cancelled_while_planned_stays_cancelled_once_planned() {
    let env = TestEnv::new().await;
    slow_planning(&env).await;
    let spec = SpecFile::new("planned-docs", &spec());
    let _fleet = Fleet::started(&env, 2);
    let coord = spawn_coordinator(&env, spec.path(), "10");
    published_while_planning(&env, 2).await;
    let run_id = env.scalar_text("SELECT run_id FROM backfill_run").await;
    let out = env.run(&["cancel", &run_id, "--wait-secs", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The coordinator stops planning at its next shard and publishes no
    // more, and the run stays cancelled: exit 4, as for any cancelled run.
    let out = tokio::task::spawn_blocking(move || coordinator_output(coord))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!planning(&env).await);
    assert_eq!(
        env.scalar_text("SELECT state FROM backfill_run").await,
        "cancelled"
    );
    // What was written was written once, by the shards done before.
    let done_rows = env
        .scalar_i64(
            "SELECT COALESCE(sum(rows), 0)::bigint FROM backfill_shard WHERE state = 'done'",
        )
        .await;
    assert!(done_rows < ROWS, "{done_rows}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM docs WHERE doc->'seen' = 'true'")
            .await,
        done_rows
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn windows_given_on_the_command_line_show_in_status_while_the_run_is_planned() {
    let env = TestEnv::new().await;
    // A second of planning a shard: the first shard is published only
    // once the second is recorded, two seconds after the run's row.
    slow_planning_of(&env, 30, "1").await;
    let spec = SpecFile::new("planned-docs", &spec());
    let _fleet = Fleet::started(&env, 1);
    let mut args = coordinator_args(spec.path(), "10").to_vec();
    args.extend(["--window", "00:00-24:00", "--time-zone", "UTC"]);
    let coord = env
        .cmd(&args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_id = loop {
        let id: Option<String> = sqlx::query_scalar("SELECT run_id FROM backfill_run")
            .fetch_optional(&env.pool)
            .await
            .unwrap();
        if let Some(id) = id {
            break id;
        }
        assert!(Instant::now() < deadline, "the run was never recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let status = env.run(&["status", &run_id, "--json"]);
    let run: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(run["planning"], true, "looked too late: {run}");
    assert_eq!(
        run["window"]["schedule"], "00:00-24:00 (UTC)",
        "the run's windows are not shown while it is planned: {run}"
    );
    assert_eq!(run["window"]["open"], true, "{run}");
    let out = tokio::task::spawn_blocking(move || coordinator_output(coord))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM docs WHERE doc->'seen' = 'true'")
            .await,
        30
    );
}
