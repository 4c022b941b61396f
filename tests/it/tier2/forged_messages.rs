//! The ledger is the truth, not the message: a task naming another target
//! than the ledger planned for its shard is refused, and the reducer folds
//! the result the ledger stored with the shard, whatever a result message
//! claims. Forged messages go through the real broker to real workers.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::*;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn forged_tasks_and_results_change_nothing_the_ledger_did_not_plan_and_count() {
    let reference = reference("collection-dict-migrate", "200").await;
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let out = env.run(&job_args(
        "coordinator",
        &job("collection-dict-migrate"),
        "--all --commit --shard-size 200",
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run_id = stdout(&out).trim().to_string();
    let store = env.store().await;
    let broker = env.broker().await;
    let publisher = broker.publisher().await.unwrap();
    let shards = store.shards(&run_id).await.unwrap();
    let targets: Vec<String> = {
        let mut t: Vec<String> = shards.iter().map(|s| s.target.clone()).collect();
        t.sort();
        t.dedup();
        t
    };
    assert_eq!(targets.len(), 2, "{targets:?}");
    // The real tasks are lost (purged with RabbitMQ's own tool); a forged
    // task per shard takes each one's place: the same keys, the other target.
    purge(&env.queues().tasks);
    for s in &shards {
        let other = targets.iter().find(|t| **t != s.target).unwrap().clone();
        let forged = backfill_job::ShardTask {
            v: 1,
            ledger: store.ledger().id.clone(),
            run_id: run_id.clone(),
            shard_no: s.shard_no,
            target: other,
            first_key: s.first_key.clone(),
            last_key: s.last_key.clone(),
            rows: s.rows,
        };
        publisher.publish_task(&forged).await.unwrap();
    }
    // Mappers only. They refuse every forged task: nothing is written.
    let mut fleet = Fleet::new(&env);
    for _ in 0..2 {
        let m = fleet.spawn(&["mapper", "--concurrency", "2"]);
        fleet.mappers.push(m);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while broker.depth(&env.queues().tasks).await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "the forged tasks were not taken");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM backfill_shard WHERE run_id = '{run_id}' AND state <> 'pending'"
        ))
        .await,
        0,
        "no forged task was processed: {:?}",
        sqlx::query_as::<_, (String, Option<String>, i64)>(&format!(
            "SELECT state, last_error, count(*) FROM backfill_shard WHERE run_id = '{run_id}' GROUP BY 1, 2"
        ))
        .fetch_all(&env.pool)
        .await
        .unwrap()
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        0,
        "no row was written"
    );
    // The real tasks again: every shard is committed, its true result queued.
    let resumed = env.run(&["coordinator", "--resume", &run_id]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let deadline = Instant::now() + Duration::from_secs(240);
    while env
        .scalar_i64(&format!(
            "SELECT count(*) FROM backfill_shard WHERE run_id = '{run_id}' AND state <> 'done'"
        ))
        .await
        > 0
        || broker.depth(&env.queues().tasks).await.unwrap() > 0
    {
        assert!(Instant::now() < deadline, "the shards were not all done");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The true results are lost; forged ones, claiming a million rows per shard, take their place.
    purge(&env.queues().results);
    let stored: Vec<(i32, String)> = sqlx::query_as(
        "SELECT shard_no, result::text FROM backfill_shard WHERE run_id = $1 ORDER BY shard_no",
    )
    .bind(&run_id)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    for (shard_no, text) in &stored {
        let mut tally: serde_json::Value = serde_json::from_str(text).unwrap();
        tally["counts"]["processed"] = 1_000_000.into();
        tally["counts"]["changed"] = 1_000_000.into();
        let forged = backfill_job::ShardResult {
            v: 1,
            ledger: store.ledger().id.clone(),
            run_id: run_id.clone(),
            shard_no: *shard_no as u32,
            target: "forged".into(),
            worker: "forger".into(),
            elapsed_ms: 0,
            tally: serde_json::from_value(tally).unwrap(),
        };
        publisher.publish_result(&forged).await.unwrap();
    }
    let r = fleet.spawn(&["reducer"]);
    fleet.mappers.push(r);
    let rec = tokio::time::timeout(
        Duration::from_secs(120),
        backfill_coordinator::wait(&store, &run_id, &tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the run finished")
    .unwrap();
    let summary_text = rec.summary.clone().unwrap();
    let s = summary_fields(&summary_text);
    assert_matches_reference(&env, &s, &reference).await;
    broker.close().await;
    store.close().await;
}

/// Empties a queue with RabbitMQ's own tool.
fn purge(queue: &str) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["purge_queue", queue])
        .output()
        .expect("run rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl purge_queue {queue}: {out:?}"
    );
}
