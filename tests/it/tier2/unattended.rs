//! Unattended runs that cannot be confused: a run adopts only an unfinished
//! run of its own kind, "another run is in progress" exits non-zero, the
//! review gate relies only on a finished forward dry run, and the reducer
//! folds what the ledger holds for a shard, never what a message claims.
//!
//! A coordinator killed after planning leaves its run `running` in the
//! ledger; the tests make that state by putting a finished run back to
//! `running`, as the kill leaves it, then start the next command.

#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::*;

/// Puts a finished run back where a killed coordinator leaves it: running,
/// its last shard committed but never folded.
async fn as_if_killed(env: &TestEnv, run: &str) {
    env.exec_with("UPDATE backfill_run SET state = 'running', summary = NULL, finished_at = NULL, shards_reduced = shards_reduced - 1 WHERE run_id = $1", run).await;
    env.exec_with("UPDATE backfill_shard SET reduced_at = NULL WHERE run_id = $1 AND shard_no = (SELECT max(shard_no) FROM backfill_shard WHERE run_id = $1)", run).await;
}

fn run_id_of(o: &std::process::Output) -> String {
    summary(o).get("run").cloned().expect("run= in summary")
}

#[tokio::test]
async fn a_forward_run_never_adopts_a_killed_revert_and_says_another_run_is_in_progress() {
    let env = TestEnv::with_certificates(20, 800).await;
    let spec = job("program-certificate-titles");
    let commit = env.run(&["run", "--local", "--job", &spec, "--all", "--commit"]);
    assert_eq!(commit.status.code(), Some(0));
    let c = run_id_of(&commit);
    let changed = num(&summary(&commit), "changed");
    assert!(changed > 0);
    let revert = env.run(&["revert", &c, "--commit", "--local"]);
    assert_eq!(revert.status.code(), Some(0));
    let r = run_id_of(&revert);
    as_if_killed(&env, &r).await;
    let after_revert = env.table_md5("wagtailcore_revision", "id").await;

    let next = env.run(&["run", "--local", "--job", &spec, "--all", "--commit"]);
    let err = stderr(&next);
    assert_eq!(next.status.code(), Some(5), "busy is a failure: {err}");
    assert!(
        err.contains(&r) && err.contains(&format!("revert of {c}")),
        "{err}"
    );
    assert!(err.contains("--resume"), "says how to finish it: {err}");
    assert_eq!(
        env.table_md5("wagtailcore_revision", "id").await,
        after_revert,
        "the revert was not finished by a forward run"
    );
    let state: String = sqlx::query_scalar("SELECT state FROM backfill_run WHERE run_id = $1")
        .bind(&r)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(state, "running");

    // The same command adopts its own kind, says so, and folds the shard
    // that was committed but never reduced.
    let again = env.run(&["revert", &c, "--commit", "--local"]);
    assert!(
        again.status.code() == Some(5) || again.status.code() == Some(2),
        "a second revert is refused while one is in progress: {}",
        stderr(&again)
    );
    let resumed = env.run(&["coordinator", "--resume", &r]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
}

/// A killed `retry` of a commit run is finished by neither a forward run
/// nor another kind of run; the next `retry` of the same run adopts it,
/// saying so in one line that names its kind, and finishes it exactly.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_retry_is_adopted_only_by_a_retry_of_the_same_run() {
    let env = TestEnv::with_certificates(20, 800).await;
    // Throttled, so that the retry can be killed part-way.
    let text = std::fs::read_to_string(job("program-certificate-titles")).unwrap();
    let spec = common::SpecFile::new(
        "program-certificate-titles",
        &format!("{text}\n[throttle]\nrows_per_sec = 25\n"),
    );
    let spec = spec.path();
    // Every third revision is not an object: a row error, quarantined.
    env.exec(
        "CREATE TABLE saved AS SELECT id, content FROM wagtailcore_revision WHERE id % 3 = 0;
         UPDATE wagtailcore_revision SET content = '[1]'::jsonb WHERE id % 3 = 0",
    )
    .await;
    let commit = env.run(&job_args(
        "run --local",
        spec,
        "--all --commit --rows-per-sec 100000",
    ));
    assert_eq!(
        commit.status.code(),
        Some(1),
        "row errors: {}",
        stderr(&commit)
    );
    let c = run_id_of(&commit);
    let errors = num(&summary(&commit), "errors");
    assert!(errors > 20, "{errors}");
    // The cause fixed, the quarantined rows are retried; the retry is
    // killed (SIGKILL) part-way.
    env.exec(
        "UPDATE wagtailcore_revision r SET content = s.content FROM saved s WHERE r.id = s.id",
    )
    .await;
    let mut first = env
        .cmd(&["retry", &c, "--local", "--shard-size", "5"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let t = loop {
        let row: Option<(String, i32)> =
            sqlx::query_as("SELECT run_id, shards_reduced FROM backfill_run WHERE kind = 'retry'")
                .fetch_optional(&env.pool)
                .await
                .unwrap();
        if let Some((t, reduced)) = row {
            if reduced >= 2 {
                break t;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the retry never got going"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    first.kill().unwrap();
    first.wait().unwrap();
    let (reduced, total): (i32, i32) =
        sqlx::query_as("SELECT shards_reduced, shards_total FROM backfill_run WHERE run_id = $1")
            .bind(&t)
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert!(reduced < total, "killed part-way ({reduced} of {total})");
    let runs = env.scalar_i64("SELECT count(*) FROM backfill_run").await;
    let table = env.table_md5("wagtailcore_revision", "id").await;
    let state = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM backfill_run WHERE run_id = $1")
            .bind(&t)
            .fetch_one(&env.pool)
            .await
            .unwrap()
    };
    assert_eq!(state().await, "running");

    // A forward commit does not finish it: busy, naming it and its kind.
    let forward = env.run(&["run", "--local", "--job", spec, "--all", "--commit"]);
    let err = stderr(&forward);
    assert_eq!(forward.status.code(), Some(5), "busy is a failure: {err}");
    assert!(
        err.contains(&t) && err.contains(&format!("retry of {c}")),
        "{err}"
    );
    assert!(err.contains("--resume"), "says how to finish it: {err}");
    assert!(!err.contains("adopting"), "{err}");
    // Nor does another kind: a verify, or a revert of the retried run.
    let verify = env.run(&["verify", "--local", "--job", spec, "--all"]);
    let err = stderr(&verify);
    assert_eq!(verify.status.code(), Some(5), "{err}");
    assert!(err.contains(&format!("retry of {c}")), "{err}");
    assert!(!err.contains("adopting"), "{err}");
    let revert = env.run(&["revert", &c, "--commit", "--local"]);
    let err = stderr(&revert);
    assert!(
        revert.status.code() == Some(5) || revert.status.code() == Some(2),
        "a revert is refused while the retry is in progress: {err}"
    );
    assert!(err.contains(&t), "names the run in progress: {err}");
    assert_eq!(state().await, "running", "the retry was left as it was");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_run").await,
        runs,
        "no other run was started"
    );
    assert_eq!(env.table_md5("wagtailcore_revision", "id").await, table);

    // The next retry of the same run adopts it, says so naming its kind,
    // and finishes it: every quarantined row retried, once.
    let again = env.run(&["retry", &c, "--local", "--shard-size", "5"]);
    let err = stderr(&again);
    assert_eq!(again.status.code(), Some(0), "{err}");
    assert_eq!(summary(&again).get("run"), Some(&t), "the same run: {err}");
    assert!(
        err.contains(&format!("adopting run {t}: a retry of {c} run")),
        "the adoption names the kind: {err}"
    );
    let s = summary(&again);
    assert_eq!(num(&s, "processed"), errors, "each quarantined row once");
    assert_eq!(num(&s, "errors"), 0);
    assert_eq!(state().await, "done");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_run").await,
        runs,
        "no other run was started"
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM backfill_quarantine WHERE run_id = '{c}' AND retried_by = '{t}'"
        ))
        .await,
        errors
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM backfill_before_image WHERE run_id = '{t}'"
        ))
        .await,
        num(&s, "changed"),
        "each row written once across the killed retry and its adoption"
    );
}

#[tokio::test]
async fn verify_never_adopts_a_killed_sampled_dry_run() {
    let env = TestEnv::with_certificates(20, 800).await;
    let spec = job("program-certificate-titles");
    let sample = env.run(&["run", "--local", "--job", &spec, "--all", "--sample", "50%"]);
    assert_eq!(sample.status.code(), Some(0), "{}", stderr(&sample));
    let s = run_id_of(&sample);
    as_if_killed(&env, &s).await;
    let verify = env.run(&["verify", "--local", "--job", &spec, "--all"]);
    let err = stderr(&verify);
    assert_ne!(verify.status.code(), Some(0), "{err}");
    assert_eq!(verify.status.code(), Some(5), "{err}");
    assert!(err.contains("sample of 50% of the rows"), "{err}");
    let passed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM backfill_event WHERE action = 'verify' AND detail LIKE 'passed%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(passed, 0, "no verify passed on a share of the rows");
}

#[tokio::test]
async fn a_failed_verify_is_no_review_for_a_commit() {
    let env = TestEnv::with_certificates(20, 800).await;
    let spec = job("program-certificate-titles");
    let verify = env.run(&["verify", "--local", "--job", &spec, "--all"]);
    assert_eq!(verify.status.code(), Some(1), "rows are left to change");
    let mut gated = env.cmd(&["run", "--local", "--job", &spec, "--all", "--commit"]);
    gated.env_remove("BACKFILL_SKIP_REVIEW");
    let out = output_within(gated, std::time::Duration::from_secs(120));
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "refused by the review gate: {err}"
    );
    assert!(err.contains("refusing to commit"), "{err}");
    let commits: i64 =
        sqlx::query_scalar("SELECT count(*) FROM backfill_run WHERE mode = 'commit'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(commits, 0);
}

#[tokio::test]
async fn resume_folds_shards_that_were_done_but_never_reduced() {
    let env = TestEnv::with_certificates(20, 800).await;
    let spec = job("program-certificate-titles");
    // Mappers but no reducer: every shard is committed, none folded.
    let mut mappers = common::fleet::Fleet::new(&env);
    let mut m = mappers.spawn(&["mapper", "--concurrency", "2"]);
    let coord = env.run(&["coordinator", "--job", &spec, "--all", "--shard-size", "50"]);
    assert_eq!(coord.status.code(), Some(0), "{}", stderr(&coord));
    let run = stdout(&coord).lines().next().unwrap().trim().to_string();
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM backfill_shard WHERE run_id = $1")
        .bind(&run)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(total > 1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM backfill_shard WHERE run_id = $1 AND state = 'done'",
        )
        .bind(&run)
        .fetch_one(&env.pool)
        .await
        .unwrap();
        if done == total {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "shards not done");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Their results are lost (a purged queue, a broker that lost them).
    let purge = std::process::Command::new("rabbitmqctl")
        .args(["-q", "purge_queue", &env.queues().results])
        .output()
        .expect("rabbitmqctl (start RabbitMQ with `rabbitmq-server -detached`)");
    assert!(purge.status.success(), "{purge:?}");

    // Resume, and start a reducer: the run ends, every shard folded once.
    let resumed = env.run(&["coordinator", "--resume", &run]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let mut reducer = mappers.spawn(&["reducer"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let summary_line = loop {
        let row: (String, Option<String>) =
            sqlx::query_as("SELECT state, summary FROM backfill_run WHERE run_id = $1")
                .bind(&run)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        if row.0 != "running" {
            assert_eq!(row.0, "done");
            break row.1.unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the resumed run never ended: done-but-unreduced shards were not folded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let _ = m.kill();
    let _ = reducer.kill();
    let _ = m.wait();
    let _ = reducer.wait();
    let reference = env.run(&["run", "--local", "--job", &spec, "--all"]);
    let ours = summary_fields(&summary_line);
    for k in [
        "processed",
        "changed",
        "unchanged",
        "skipped",
        "refs_affected",
    ] {
        assert_eq!(ours.get(k), summary(&reference).get(k), "{k}");
    }
}

#[tokio::test]
async fn read_only_commands_create_nothing_and_name_the_database_they_looked_at() {
    let env = TestEnv::new().await;
    for args in [
        vec!["status"],
        vec!["status", "some-run"],
        vec!["report", "some-run"],
        vec!["history"],
    ] {
        let out = env.run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("no backfill ledger"), "{args:?}: {err}");
        assert!(err.contains(&env.db_name), "names the database: {err}");
    }
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'backfill%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(tables, 0, "no ledger table was created");
}

/// The URL the read-only commands name when there is no ledger has its
/// password hidden, whether it is given in the userinfo or as a query
/// parameter (the test server's trust auth ignores it).
#[tokio::test]
async fn the_no_ledger_error_names_the_url_with_its_password_hidden() {
    let env = TestEnv::new().await;
    let (scheme, rest) = env.db_url.split_once("://").unwrap();
    let (user, host) = rest.split_once('@').expect("a user in DATABASE_URL");
    let user = user.split(':').next().unwrap();
    let in_userinfo = format!("{scheme}://{user}:s3cretUI@{host}");
    let sep = if env.db_url.contains('?') { '&' } else { '?' };
    let in_query = format!("{}{sep}password=s3cretQP", env.db_url);
    for (url, secret) in [(&in_userinfo, "s3cretUI"), (&in_query, "s3cretQP")] {
        for args in [
            vec!["status"],
            vec!["status", "some-run"],
            vec!["report", "some-run"],
            vec!["history"],
        ] {
            let mut cmd = env.cmd(&args);
            cmd.env("DATABASE_URL", url);
            let out = output_within(cmd, std::time::Duration::from_secs(60));
            let (o, err) = (stdout(&out), stderr(&out));
            assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
            assert!(err.contains("no backfill ledger"), "{args:?}: {err}");
            assert!(err.contains(&env.db_name), "names the database: {err}");
            assert!(err.contains("***"), "the password is shown hidden: {err}");
            assert!(
                !err.contains(secret) && !o.contains(secret),
                "{args:?} printed the password:\n{o}\n{err}"
            );
        }
    }
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'backfill%'"
        )
        .await,
        0,
        "no ledger table was created"
    );
}

/// A coordinator killed before it published every shard leaves a run that
/// nothing will carry on: `status` says so and names the command that
/// resumes it, while a live coordinator (one holding the job's lock) is not
/// taken for dead.
#[tokio::test(flavor = "multi_thread")]
async fn status_shows_a_run_whose_coordinator_died_mid_publish_as_orphaned_and_resumable() {
    let env = TestEnv::with_certificates(20, 4000).await;
    let spec = job("program-certificate-titles");
    let (published, total) = kill_mid_publish(
        &env,
        &job_args("coordinator", &spec, "--all --commit --shard-size 2"),
    )
    .await;
    let run = env.scalar_text("SELECT run_id FROM backfill_run").await;

    let json = env.run(&["status", "--json", &run]);
    assert_eq!(json.status.code(), Some(0), "{}", stderr(&json));
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["state"], "running");
    assert_eq!(doc["orphaned"], true, "{doc}");
    assert_eq!(doc["unpublished"], (total - published) as u64, "{doc}");
    let resume = format!("backfill coordinator --resume {run}");
    assert_eq!(doc["resume"], resume.as_str());
    let text = stdout(&env.run(&["status", &run]));
    assert!(text.contains("ORPHANED"), "{text}");
    assert!(text.contains(&resume), "{text}");

    // While a session holds the job's lock (a coordinator still at work),
    // the same shards are not taken for orphaned.
    let mut holder = env.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('backfill job ' || $1))")
        .bind("program-certificate-titles")
        .execute(&mut *holder)
        .await
        .unwrap();
    let held: serde_json::Value =
        serde_json::from_slice(&env.run(&["status", "--json", &run]).stdout).unwrap();
    assert_eq!(held["orphaned"], false, "{held}");
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *holder)
        .await
        .unwrap();
    drop(holder);

    // Resumed, it finishes and is no longer orphaned.
    let mut fleet = common::fleet::Fleet::new(&env);
    fleet.start(1);
    let out = env.run(&["coordinator", "--resume", &run, "--wait"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after: serde_json::Value =
        serde_json::from_slice(&env.run(&["status", "--json", &run]).stdout).unwrap();
    assert_eq!(after["state"], "done", "{after}");
    assert_eq!(after["orphaned"], false, "{after}");
}

/// The dashboard runs no DDL either: on a database with no ledger it waits,
/// naming the database, and serves once a job has made the ledger.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_creates_no_ledger_and_waits_for_one() {
    let env = TestEnv::with_certificates(5, 50).await;
    let port = common::steer::free_port();
    let log = std::env::temp_dir().join(format!("bf-dash-{}.log", env.prefix));
    let mut dash = env
        .cmd(&["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let tables = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'backfill%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    let waited = std::fs::read_to_string(&log).unwrap();
    assert_eq!(tables().await, 0, "the dashboard created nothing: {waited}");
    assert!(waited.contains("no backfill ledger"), "{waited}");
    assert!(
        waited.contains(&env.db_name),
        "names the database: {waited}"
    );
    assert!(dash.try_wait().unwrap().is_none(), "it waits: {waited}");

    let spec = job("program-certificate-titles");
    let out = env.run(&["run", "--local", "--job", &spec, "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (code, body) = common::steer::http_get(port, "/api/runs");
    let _ = dash.kill();
    let _ = dash.wait();
    let _ = std::fs::remove_file(&log);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(&run_id_of(&out)), "{body}");
}

/// A coordinator that cannot reach the broker records nothing, so it leaves
/// no run behind to block the next scheduled start.
#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_without_a_broker_records_nothing_and_blocks_nothing() {
    let env = TestEnv::with_certificates(5, 50).await;
    let spec = job("program-certificate-titles");
    let args = ["coordinator", "--job", &spec, "--all", "--commit"];
    let mut cut_off = env.cmd(&args);
    cut_off.env("AMQP_URL", "amqp://guest:guest@127.0.0.1:1/%2f");
    let out = output_within(cut_off, std::time::Duration::from_secs(60));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("cannot connect to RabbitMQ"), "{err}");
    assert!(!err.contains("carries on"), "{err}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_run").await,
        0,
        "no run was recorded"
    );
    // The next start, with the broker back, is not told another run is
    // in progress.
    let next = env.run(&args);
    assert_eq!(next.status.code(), Some(0), "{}", stderr(&next));
    assert!(!stderr(&next).contains("in progress"), "{}", stderr(&next));
}
