//! Quiet when healthy: a command that works prints what it is for and no
//! library noise — no sqlx "slow statement" warning with its SQL text
//! during `seed` on PostgreSQL, no debug dump of the generated data in the
//! demo — and flags that a resumed run does not apply are named in a
//! warning rather than silently dropped.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::time::Duration;

/// Library noise that must not reach a healthy command's output.
fn assert_no_noise(what: &str, out: &std::process::Output) {
    for (stream, text) in [("stdout", stdout(out)), ("stderr", stderr(out))] {
        for noise in [
            "slow statement",
            "db.statement",
            "CREATE TABLE",
            "INSERT INTO",
            "Stats {",
            "CertificateStats",
        ] {
            assert!(
                !text.contains(noise),
                "{what}: {noise:?} in {stream}:\n{text}"
            );
        }
    }
}

/// `seed` on PostgreSQL with a statement the server makes slow (an event
/// trigger sleeps 1.5 s when the schema creates `courses_program`): with
/// `RUST_LOG=warn` sqlx's slow-statement warning and its SQL show, which
/// proves the statement was slow; by default neither does, and stdout is
/// the one `Seeded:` line.
#[tokio::test(flavor = "multi_thread")]
async fn seed_on_postgresql_prints_no_slow_statement_warning_and_no_sql() {
    let env = TestEnv::new().await;
    env.exec(
        "CREATE SCHEMA slow;
         CREATE FUNCTION slow.ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                      WHERE object_identity LIKE '%.courses_program') THEN
             PERFORM pg_sleep(1.5);
           END IF;
         END $$;
         CREATE EVENT TRIGGER slow_ddl ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
           EXECUTE FUNCTION slow.ddl();",
    )
    .await;
    let args = [
        "seed",
        "--dataset",
        "certificates",
        "--revisions",
        "300",
        "--programs",
        "10",
    ];
    let mut loud = env.cmd(&args);
    loud.env("RUST_LOG", "warn");
    let out = output_within(loud, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("slow statement"),
        "the schema statement was not slow, so this test shows nothing:\n{}",
        stderr(&out)
    );
    env.exec("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .await;

    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_no_noise("seed", &out);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(text.starts_with("Seeded: dataset=certificates "), "{text}");
}

/// The embedded demo (no services: both URLs point at closed ports) says
/// what it generated in a `Seeded:` line, not as a `CertificateStats { … }`
/// debug dump.
#[test]
fn the_demo_prints_what_it_generated_without_a_debug_dump() {
    let dir = std::env::temp_dir().join(format!("bf-quiet-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("demo.sqlite3");
    let out = output_within(
        {
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
            c.args(["demo", "--db", db.to_str().unwrap()])
                .args(["--revisions", "300", "--programs", "12"])
                .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
                .env("AMQP_URL", "amqp://nobody:x@127.0.0.1:1/%2f")
                .env_remove("RUST_LOG");
            c
        },
        Duration::from_secs(300),
    );
    eprintln!("{}\n{}", stdout(&out), stderr(&out));
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0));
    assert_no_noise("demo", &out);
    let text = stdout(&out);
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("Seeded: dataset=certificates programs=12 "))
            .count(),
        1,
        "{text}"
    );
}

/// Steering flags given with `coordinator --resume RUN` (or to a
/// coordinator that adopts its unfinished run) are not applied to a run
/// planned before: each is named in a warning that says how to change the
/// throttle, and the run's throttle in the ledger is unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn flags_given_to_a_resumed_run_are_named_as_not_applied() {
    let env = TestEnv::with_certificates(20, 800).await;
    let spec = job("program-certificate-titles");
    // Planned and published; no worker takes it, so it stays running.
    let planned = env.run(&job_args(
        "coordinator",
        &spec,
        "--all --commit --shard-size 50",
    ));
    assert_eq!(planned.status.code(), Some(0), "{}", stderr(&planned));
    let run = stdout(&planned).lines().next().unwrap().trim().to_string();
    let control_sql = format!(
        "SELECT row(control, priority, rows_per_sec, max_in_flight, bytes_per_sec, max_wal_bytes_per_sec)::text
         FROM backfill_control WHERE run_id = '{run}'"
    );
    let control = || env.scalar_text(&control_sql);
    let before = control().await;
    // The run's record, its windows (`schedule`) among it.
    let record_sql =
        format!("SELECT CAST(to_jsonb(r) AS text) FROM backfill_run r WHERE run_id = '{run}'");
    let record = || env.scalar_text(&record_sql);
    let planned_record = record().await;

    let flags: [(&str, &[&str]); 6] = [
        ("--rows-per-sec", &["--rows-per-sec", "5"]),
        ("--bytes-per-sec", &["--bytes-per-sec", "1000"]),
        (
            "--max-wal-bytes-per-sec",
            &["--max-wal-bytes-per-sec", "1000000"],
        ),
        ("--max-in-flight", &["--max-in-flight", "1"]),
        ("--priority", &["--priority", "3"]),
        (
            "--window",
            &["--window", "01:00-02:00", "--time-zone", "Europe/Berlin"],
        ),
    ];
    let not_applied = |err: &str, names: &str| {
        assert!(
            err.contains(&format!(
                "warning: {names} not applied: run {run} keeps the throttle and windows it was planned with"
            )),
            "{err}"
        );
        assert!(err.contains(&format!("backfill throttle {run}")), "{err}");
    };
    // Each flag alone.
    for (name, args) in flags {
        let mut all = vec!["coordinator", "--resume", run.as_str()];
        all.extend_from_slice(args);
        let out = env.run(&all);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{name}: {err}");
        not_applied(&err, name);
    }
    // All at once: one warning naming each.
    let mut all = vec!["coordinator", "--resume", run.as_str()];
    for (_, args) in flags {
        all.extend_from_slice(args);
    }
    let out = env.run(&all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    not_applied(
        &stderr(&out),
        "--rows-per-sec, --bytes-per-sec, --max-wal-bytes-per-sec, --max-in-flight, --priority, --window",
    );
    // A coordinator of the same command adopts the run, and says the same.
    let out = env.run(&job_args(
        "coordinator",
        &spec,
        "--all --commit --shard-size 50 --rows-per-sec 5 --priority 3",
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains(&format!("adopting run {run}: a forward run")),
        "{err}"
    );
    not_applied(&err, "--rows-per-sec, --priority");
    // Without such flags, no warning.
    let out = env.run(&["coordinator", "--resume", &run]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    assert_eq!(control().await, before, "the throttle is as planned");
    assert_eq!(record().await, planned_record, "the run is as planned");
}
