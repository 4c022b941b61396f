//! A message that can never be processed (here: a run id holding a NUL,
//! which PostgreSQL refuses as a parameter, SQLSTATE 22021) is logged once
//! and parked in `<prefix>.parked`, and costs the runs around it nothing.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::{coordinator_output, spawn_coordinator, wait_child, Fleet};
use crate::common::*;
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use std::time::{Duration, Instant};

/// Publishes `payload` straight to `queue`, as any client of the broker could.
async fn publish_raw(queue: &str, payload: &[u8]) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    ch.basic_publish(
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        payload,
        BasicProperties::default().with_delivery_mode(2),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "published".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn messages_the_database_refuses_are_parked_once_and_cost_the_run_nothing() {
    let env = TestEnv::with_collections(300, 4).await;
    let q = env.queues();
    let task = br#"{"v":1,"run_id":"bad\u0000run","shard_no":0,"target":"models","first_key":"1","last_key":"2","rows":1}"#;
    let tally = serde_json::to_value(backfill_job::Tally::default()).unwrap();
    let result = serde_json::json!({
        "v": 1, "run_id": "bad\u{0}run", "shard_no": 0, "target": "models",
        "worker": "w", "elapsed_ms": 0, "tally": tally,
    })
    .to_string();
    publish_raw(&q.tasks, task).await;
    publish_raw(&q.dead, task).await;
    publish_raw(&q.results, result.as_bytes()).await;

    let _fleet = Fleet::started(&env, 2);
    let started = Instant::now();
    let mut coord = spawn_coordinator(&env, &job("collection-dict-migrate"), "10");
    wait_child(&mut coord, Duration::from_secs(120));
    let took = started.elapsed();
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert!(num(&s, "shards") >= 100, "{s:?}");
    assert_eq!(num(&s, "errors"), 0);
    assert!(
        took < Duration::from_secs(10),
        "the run took {took:?} beside the poison messages"
    );

    let broker = backfill_queue::Broker::connect(&amqp_url(), q.clone())
        .await
        .unwrap();
    let parked = format!("{}.parked", env.prefix);
    let deadline = Instant::now() + Duration::from_secs(20);
    while broker.depth(&parked).await.unwrap() < 3 {
        assert!(
            Instant::now() < deadline,
            "the three poison messages were parked"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let a reducer that would retry them show it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(broker.depth(&parked).await.unwrap(), 3);
    assert_eq!(broker.depth(&q.tasks).await.unwrap(), 0);
    assert_eq!(broker.depth(&q.dead).await.unwrap(), 0);
    assert_eq!(broker.depth(&q.results).await.unwrap(), 0);
    broker.close().await;

    let log = std::fs::read_to_string(
        std::env::temp_dir()
            .join(format!("bf-fleet-{}", env.prefix))
            .join("reducer-3.log"),
    )
    .unwrap();
    let lines = log
        .lines()
        .filter(|l| l.contains("can never be processed"))
        .count();
    assert_eq!(lines, 3, "each poison message logged once:\n{log}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_shard WHERE state <> 'done'")
            .await,
        0
    );
}
