//! Two databases on one broker never exchange work: each message carries
//! the identity of the ledger it belongs to, a worker of another database
//! gives it back untouched, queue names default to the ledger's own, and a
//! database cloned from another is refused until it has an identity of its
//! own.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::fleet::{comparable, coordinator_output, wait_child};

const JOB: &str = "collection-dict-migrate";

/// A `backfill` process of `env` on the queues of `prefix`, its stderr in `log`.
fn spawn_on(env: &TestEnv, prefix: &str, args: &[&str], log: &Path) -> Child {
    env.cmd(args)
        .env("BACKFILL_QUEUE_PREFIX", prefix)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

fn coordinator_on(env: &TestEnv, prefix: &str) -> Child {
    env.cmd(&[
        "coordinator",
        "--job",
        &job(JOB),
        "--all",
        "--commit",
        "--wait",
        "--shard-size",
        "20",
    ])
    .env("BACKFILL_QUEUE_PREFIX", prefix)
    .env("RUST_LOG", "warn")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// The ledger id and the `ledger …; queues …` line of `backfill ledger show`.
fn ledger_show(env: &TestEnv, url: &str) -> (i32, String, String) {
    let out = output_within(
        {
            let mut c = env.cmd(&["ledger", "show"]);
            c.env("DATABASE_URL", url)
                .env_remove("BACKFILL_QUEUE_PREFIX");
            c
        },
        Duration::from_secs(60),
    );
    eprintln!("{}\n{}", stdout(&out), stderr(&out));
    (
        out.status.code().unwrap_or(-1),
        stdout(&out).trim().to_string(),
        stderr(&out),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_databases_sharing_one_queue_prefix_each_finish_their_own_run_exactly() {
    // The summary of the same run alone, embedded.
    let alone = TestEnv::with_collections(300, 4).await;
    let out = alone.run(&job_args(
        "run --local",
        &job(JOB),
        "--all --commit --shard-size 20",
    ));
    assert_eq!(out.status.code(), Some(0));
    let reference = comparable(&summary(&out));
    drop(alone);

    let a = TestEnv::new().await;
    let b = TestEnv::new().await;
    a.seed_collections(300, 4).await;
    b.seed_collections(300, 4).await;
    // The hard case: both deployments told to use the same queues.
    let shared = a.prefix.clone();
    let logs = std::env::temp_dir().join(format!("bf-two-{}", a.prefix));
    std::fs::create_dir_all(&logs).unwrap();
    let mut workers = Vec::new();
    for (name, env) in [("a", &a), ("b", &b)] {
        for i in 0..2 {
            workers.push(spawn_on(
                env,
                &shared,
                &["mapper", "--concurrency", "2"],
                &logs.join(format!("{name}-mapper-{i}.log")),
            ));
        }
        workers.push(spawn_on(
            env,
            &shared,
            &["reducer"],
            &logs.join(format!("{name}-reducer.log")),
        ));
    }
    let mut coords = [coordinator_on(&a, &shared), coordinator_on(&b, &shared)];
    for c in coords.iter_mut() {
        wait_child(c, Duration::from_secs(180));
    }
    let [ca, cb] = coords;
    let (out_a, out_b) = (coordinator_output(ca), coordinator_output(cb));
    for w in workers.iter_mut() {
        let _ = w.kill();
        let _ = w.wait();
    }
    let mut returned = 0;
    for entry in std::fs::read_dir(&logs).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        returned += text
            .lines()
            .filter(|l| l.contains("returned to the queue; two databases share queue prefix"))
            .count();
        assert!(
            !text.contains("is not in the ledger"),
            "no worker acted on the other database's task:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&logs);
    assert!(
        returned > 0,
        "the workers did receive each other's messages (and gave them back)"
    );
    for (env, out) in [(&a, &out_a), (&b, &out_b)] {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
        assert_eq!(comparable(&summary(out)), reference, "same as a run alone");
        assert_eq!(
            env.scalar_i64(
                "SELECT count(*) FROM backfill_shard WHERE state <> 'done' OR reduced_at IS NULL"
            )
            .await,
            0,
            "every shard done and folded, none dead"
        );
        assert_eq!(
            env.scalar_i64("SELECT count(*) FROM backfill_quarantine")
                .await,
            0,
            "nothing quarantined"
        );
        assert_eq!(
            env.scalar_i64("SELECT count(*) FROM backfill_before_image")
                .await,
            num(&summary(out), "changed"),
            "each row written once"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_prefix_two_databases_get_queues_of_their_own() {
    let a = TestEnv::new().await;
    let b = TestEnv::new().await;
    let mut derived = Vec::new();
    for env in [&a, &b] {
        env.seed_collections(20, 2).await;
        let (code, id, err) = ledger_show(env, &env.db_url);
        assert_eq!(code, 0);
        assert_eq!(id.len(), 32, "a ledger id: {id}");
        let prefix = format!("backfill-{}", &id[..12]);
        assert!(
            err.contains(&format!(
                "queues {prefix}.tasks, {prefix}.results, {prefix}.dead, {prefix}.parked"
            )),
            "{err}"
        );
        // A run through the broker with no prefix given uses those queues.
        let out = output_within(
            {
                let mut c = env.cmd(&["run", "--job", &job(JOB), "--all"]);
                c.env_remove("BACKFILL_QUEUE_PREFIX");
                c
            },
            Duration::from_secs(120),
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        derived.push(prefix);
    }
    assert_ne!(derived[0], derived[1], "two databases, two sets of queues");
    for prefix in &derived {
        let broker = backfill_queue::Broker::connect(
            &amqp_url(),
            backfill_queue::QueueNames::with_prefix(prefix),
        )
        .await
        .unwrap();
        // Declared by the run (a passive declare fails for a missing queue).
        assert_eq!(broker.depth(&format!("{prefix}.tasks")).await.unwrap(), 0);
        broker.delete_queues().await.unwrap();
        broker.close().await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_cloned_from_another_is_refused_until_it_adopts_its_ledger() {
    let original = TestEnv::with_collections(40, 2).await;
    // Plan and publish a run in the original; no worker of it is running.
    let out = original.run(&job_args(
        "coordinator",
        &job(JOB),
        "--all --commit --shard-size 20",
    ));
    assert_eq!(out.status.code(), Some(0));
    let shards = original
        .scalar_i64("SELECT count(*) FROM backfill_shard")
        .await;
    assert!(shards > 1);
    // The clone: a template copy needs the original to have no sessions.
    original.pool.close().await;
    let clone_name = format!("{}_clone", original.db_name);
    let admin_url = base_db_url();
    let admin = sqlx::PgPool::connect(&admin_url).await.unwrap();
    // The sessions of processes that just exited may take a moment to end.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = sqlx::query(&format!(
        "CREATE DATABASE \"{clone_name}\" TEMPLATE \"{}\"",
        original.db_name
    ))
    .execute(&admin)
    .await
    {
        assert!(
            std::time::Instant::now() < deadline,
            "create the clone: {e}"
        );
        // What still holds the original (a backend of a process that has
        // exited, autovacuum) is ended; the test's own processes are done.
        let _ = sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&original.db_name)
        .execute(&admin)
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let clone_url = original.db_url.replace(&original.db_name, &clone_name);

    let (code, clone_id, err) = ledger_show(&original, &clone_url);
    assert_eq!(code, 0);
    assert!(err.contains("backfill ledger adopt"), "status warns: {err}");
    // A mapper on the clone, on the original's queues, refuses to start.
    let out = output_within(
        {
            let mut c = original.cmd(&["mapper"]);
            c.env("DATABASE_URL", &clone_url);
            c
        },
        Duration::from_secs(60),
    );
    eprintln!("{}", stderr(&out));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("copied from another database")
            && stderr(&out).contains("backfill ledger adopt"),
        "{}",
        stderr(&out)
    );
    let reducer = output_within(
        {
            let mut c = original.cmd(&["reducer"]);
            c.env("DATABASE_URL", &clone_url);
            c
        },
        Duration::from_secs(60),
    );
    assert_eq!(reducer.status.code(), Some(2));
    // Nothing taken, nothing written in either database.
    let broker = backfill_queue::Broker::connect(&amqp_url(), original.queues())
        .await
        .unwrap();
    assert_eq!(
        broker.depth(&original.queues().tasks).await.unwrap() as i64,
        shards
    );
    broker.close().await;
    for url in [&original.db_url, &clone_url] {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let touched: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM backfill_shard WHERE state <> 'pending' OR deliveries > 0)
                  + (SELECT count(*) FROM backfill_before_image)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(touched, 0, "nothing written in {url}");
        pool.close().await;
    }
    // Adopting gives the clone an identity of its own; the original keeps its.
    let out = output_within(
        {
            let mut c = original.cmd(&["ledger", "adopt"]);
            c.env("DATABASE_URL", &clone_url);
            c
        },
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (_, adopted, err) = ledger_show(&original, &clone_url);
    assert_ne!(adopted, clone_id);
    assert!(!err.contains("warning"), "{err}");
    let (_, original_id, _) = ledger_show(&original, &original.db_url);
    assert_eq!(original_id, clone_id, "the original keeps its identity");

    let _ = sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{clone_name}\" WITH (FORCE)"
    ))
    .execute(&admin)
    .await;
    admin.close().await;
}
