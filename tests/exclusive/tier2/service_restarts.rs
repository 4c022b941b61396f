//! The services restarted under a running job: RabbitMQ (stop_app /
//! start_app) and PostgreSQL (a cluster restart). These tests restart the
//! machine's shared services, so they live in a test binary of their own
//! (cargo runs test binaries one at a time) and take turns within it.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::*;
use std::process::Command;

use std::time::{Duration, Instant};

fn sh(cmd: &str) {
    let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
    assert!(
        st.success(),
        "`{cmd}` failed; these tests need to control the local services"
    );
}

/// Waits until `n` shards of the run are folded.
async fn until_reduced(env: &TestEnv, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM backfill_shard WHERE reduced_at IS NOT NULL",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap_or(0);
        if done >= n {
            return;
        }
        assert!(Instant::now() < deadline, "the run did not progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn run_through(restart: &str, shard_size: &str) {
    let reference = reference("collection-dict-migrate", shard_size).await;
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let _fleet = Fleet::started(&env, 2);
    let coord = spawn_coordinator(&env, &job("collection-dict-migrate"), shard_size);
    until_reduced(&env, 10).await;
    let before = env
        .scalar_i64("SELECT count(*) FROM backfill_shard WHERE reduced_at IS NOT NULL")
        .await;
    let total = env
        .scalar_i64("SELECT shards_total::bigint FROM backfill_run")
        .await;
    assert!(
        before < total,
        "restarted mid-run ({before} of {total} shards folded)"
    );
    sh(restart);
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    assert_matches_reference(&env, &summary(&out), &reference).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rabbitmq_restart_mid_run_loses_no_task_and_counts_no_result_twice() {
    let _turn = crate::SERVICES.write().await;
    run_through(
        "rabbitmqctl -q stop_app && sleep 2 && rabbitmqctl -q start_app && rabbitmqctl -q await_startup",
        // Small shards: the coordinator is usually still publishing when the
        // broker goes away, so publishing resumes too.
        "10",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgresql_restart_mid_run_rolls_back_the_shard_in_flight_and_redoes_it() {
    let _turn = crate::SERVICES.write().await;
    run_through(
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | sort -V | tail -n 1) main restart && until pg_isready -q -h 127.0.0.1; do sleep 0.2; done",
        "50",
    )
    .await;
}

/// Connects again and again while RabbitMQ starts, as every worker does
/// after a restart, until a connection opens: every attempt must end,
/// opened or refused. One that waits on a broker still starting, for an
/// answer that never comes, would stop a worker for good.
#[tokio::test(flavor = "multi_thread")]
async fn connecting_while_rabbitmq_starts_ends_every_attempt() {
    let _turn = crate::SERVICES.write().await;
    let names =
        backfill_queue::QueueNames::with_prefix(&format!("bftest-starting-{}", std::process::id()));
    let (mut attempts, mut hung) = (0, 0);
    for round in 0..4 {
        sh("rabbitmqctl -q stop_app");
        let starting = std::thread::spawn(|| sh("rabbitmqctl -q start_app"));
        let deadline = Instant::now() + Duration::from_secs(120);
        let opened = loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: no connection opened in 120 s"
            );
            attempts += 1;
            let tried = Instant::now();
            match tokio::time::timeout(
                backfill_queue::ANSWER_PATIENCE + Duration::from_secs(10),
                backfill_queue::Broker::connect(&amqp_url(), names.clone()),
            )
            .await
            {
                Err(_) => hung += 1,
                Ok(Ok(b)) => break b,
                Ok(Err(e)) => {
                    if !e.to_string().contains("Connection refused") {
                        eprintln!("round {round}, after {:?}: {e}", tried.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        opened.delete_queues().await.unwrap();
        opened.close().await;
        starting.join().unwrap();
        sh("rabbitmqctl -q await_startup");
    }
    assert_eq!(
        hung, 0,
        "{hung} of {attempts} attempts to connect never ended"
    );
}
