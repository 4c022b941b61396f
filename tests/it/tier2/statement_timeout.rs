//! A database that cancels long statements (`statement_timeout`, SQLSTATE
//! 57014) against real mapper and reducer processes: a shard whose
//! statements are too slow is written in smaller statements — the batch
//! halved until it fits — and still exactly once; a shard whose single rows
//! are too slow is given up at once with a reason naming the statement
//! timeout and what to change, never as a worker that died on it.
//!
//! The slowness is a trigger that sleeps for every row updated, so the
//! timing is the database's own and the same on any machine.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::{coordinator_output, spawn_coordinator, wait_child, Fleet};
use crate::common::*;
use std::time::Duration;

/// The job: sets `/seen` in every document of `docs`, 40 rows a shard.
fn spec() -> String {
    docs_spec(
        "name = \"slow-docs\"\nshard_size = 40",
        "[[targets.rules]]\nop = \"set\"\npath = \"/seen\"\nvalue = true\n",
    )
}

/// The spec in a file of its own, removed with the value.
struct SpecFile(std::path::PathBuf);

impl SpecFile {
    fn new(env: &TestEnv) -> SpecFile {
        let path = std::env::temp_dir().join(format!("{}-slow-docs.toml", env.prefix));
        std::fs::write(&path, spec()).unwrap();
        SpecFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `rows` documents whose every UPDATE sleeps `sleep_per_row` seconds, in a
/// database that cancels statements after `timeout` (for connections made
/// from now on: the workers').
async fn slow_table(env: &TestEnv, rows: i64, sleep_per_row: f64, timeout: &str) {
    for q in [
        "CREATE TABLE docs (id integer PRIMARY KEY, doc jsonb NOT NULL)".to_string(),
        format!(
            "INSERT INTO docs SELECT n, jsonb_build_object('n', n) FROM generate_series(1, {rows}) n"
        ),
        format!(
            "CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep({sleep_per_row}); RETURN NEW; END $$"
        ),
        "CREATE TRIGGER slow BEFORE UPDATE ON docs FOR EACH ROW EXECUTE FUNCTION slow_row()"
            .to_string(),
        format!(
            "ALTER DATABASE \"{}\" SET statement_timeout = '{timeout}'",
            env.db_name
        ),
    ] {
        env.exec(&q).await;
    }
}

/// Every mapper log of the fleet, concatenated.
fn mapper_logs(env: &TestEnv) -> String {
    let dir = std::env::temp_dir().join(format!("bf-fleet-{}", env.prefix));
    let mut all = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("mapper"))
        {
            all.push_str(&std::fs::read_to_string(&p).unwrap());
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_too_slow_for_the_statement_timeout_is_written_in_halved_batches_exactly_once() {
    let env = TestEnv::new().await;
    // 40 rows a shard at 80 ms a row: 3.2 s and 1.6 s statements are
    // cancelled at 1 s, 10 rows (0.8 s) pass.
    slow_table(&env, 80, 0.08, "1s").await;
    let spec = SpecFile::new(&env);
    let _fleet = Fleet::started(&env, 2);
    let mut coord = spawn_coordinator(&env, spec.path(), "40");
    wait_child(&mut coord, Duration::from_secs(180));
    let out = coordinator_output(coord);
    let log = mapper_logs(&env);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let s = summary(&out);
    assert_eq!(num(&s, "shards"), 2, "{s:?}");
    assert_eq!(num(&s, "changed"), 80, "{s:?}");
    assert_eq!(num(&s, "errors"), 0, "{s:?}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM docs WHERE doc->'seen' = 'true'")
            .await,
        80,
        "every row rewritten"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        80,
        "each row written exactly once"
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM backfill_shard WHERE state = 'done' AND deliveries = 1 AND reduced_at IS NOT NULL"
        )
        .await,
        2,
        "each shard committed once and folded once"
    );
    for halving in [
        "retrying the shard with at most 20 rows per statement",
        "retrying the shard with at most 10 rows per statement",
    ] {
        assert!(log.contains(halving), "the log shows `{halving}`:\n{log}");
    }
    assert!(
        !log.contains("at most 5 rows"),
        "no halving beyond what fits:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_too_slow_for_the_statement_timeout_is_given_up_naming_the_timeout() {
    let env = TestEnv::new().await;
    // Every single row's UPDATE takes 1.5 s against a 1 s timeout.
    slow_table(&env, 4, 1.5, "1s").await;
    let spec = SpecFile::new(&env);
    let _fleet = Fleet::started(&env, 1);
    let mut coord = spawn_coordinator(&env, spec.path(), "4");
    wait_child(&mut coord, Duration::from_secs(180));
    let out = coordinator_output(coord);
    let log = mapper_logs(&env);
    assert_ne!(out.status.code(), Some(0), "a run with a dead shard fails");
    let s = summary(&out);
    assert_eq!(num(&s, "changed"), 0, "{s:?}");
    assert_eq!(num(&s, "errors"), 4, "{s:?}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM docs WHERE doc ? 'seen'")
            .await,
        0,
        "nothing written"
    );
    let reason = env
        .scalar_text("SELECT last_error FROM backfill_shard WHERE state = 'dead'")
        .await;
    assert!(reason.contains("statement_timeout"), "{reason}");
    assert!(reason.contains("ALTER ROLE"), "{reason}");
    assert!(!reason.contains("died"), "{reason}");
    assert!(
        log.contains("retrying the shard with at most 2 rows per statement")
            && log.contains("retrying the shard with at most 1 row per statement"),
        "halved down to one row first:\n{log}"
    );
    // Given up at once: no 20 deliveries, no attempt counting.
    assert_eq!(
        env.scalar_i64("SELECT failures::int8 FROM backfill_shard")
            .await,
        1
    );

    let status = env.run(&["status", s.get("run").unwrap()]);
    let text = stdout(&status);
    let line = text
        .lines()
        .find(|l| l.starts_with("dead-lettered shard"))
        .unwrap_or_else(|| panic!("status lists the dead shard:\n{text}"));
    assert!(line.contains("statement_timeout"), "{line}");
    assert!(!line.contains("died"), "{line}");
}
