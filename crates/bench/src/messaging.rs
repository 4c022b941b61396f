//! The broker side: reachability, consumer counts, queue clean-up, and the
//! per-shard messaging round trip.
//!
//! The round trip uses the product's own queue code (`backfill_queue`: the
//! same quorum queues, persistent messages, publisher confirms, explicit
//! acks) over three connections, as in a run — coordinator, mapper, reducer —
//! one shard at a time:
//!
//! 1. the coordinator publishes the shard task and waits for its confirm;
//! 2. the mapper receives it (prefetch 1);
//! 3. the mapper publishes the shard's result (a real result document of the
//!    run measured before, when there was one) with its confirm, then acks
//!    the task;
//! 4. the reducer receives the result and acks it.
//!
//! In a run, step 1 happens for all shards before the mappers start (the
//! coordinator publishes everything up front), so a mapper's critical path
//! per shard is steps 3 and 2 of the next shard; the report gives each step.

use anyhow::Context;
use backfill_job::message::MESSAGE_VERSION;
use backfill_job::{ShardResult, ShardTask, Tally};
use backfill_queue::{Broker, Delivery, QueueNames, Route, Source};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use std::time::{Duration, Instant};

/// Fails with how to reach a broker when RabbitMQ does not answer.
pub async fn check_broker(url: &str) -> anyhow::Result<()> {
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| {
        format!(
            "RabbitMQ is not reachable at {}: start it (`rabbitmq-server -detached`), or pass --amqp-url / AMQP_URL",
            backfill_store::redact_url(url)
        )
    })?;
    let _ = conn.close(200, "checked".into()).await;
    Ok(())
}

/// Consumers on `queue` (0 when it does not exist yet or on any error).
pub async fn consumers(url: &str, queue: &str) -> u32 {
    let Ok(conn) = Connection::connect(url, ConnectionProperties::default()).await else {
        return 0;
    };
    let n = match conn.create_channel().await {
        Ok(ch) => {
            let n = ch
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map(|q| q.consumer_count())
                .unwrap_or(0);
            let _ = ch.close(200, "inspected".into()).await;
            n
        }
        Err(_) => 0,
    };
    let _ = conn.close(200, "bye".into()).await;
    n
}

/// Deletes `<prefix>.tasks`, `.results` and `.dead` (best effort).
pub async fn delete_queues(url: &str, prefix: &str) {
    match Broker::connect(url, QueueNames::with_prefix(prefix)).await {
        Ok(b) => {
            if let Err(e) = b.delete_queues().await {
                eprintln!("warning: could not delete the queues {prefix}.*: {e}");
            }
            b.close().await;
        }
        Err(e) => eprintln!("warning: could not delete the queues {prefix}.*: {e}"),
    }
}

/// Milliseconds per shard for each step, over the measured round trips.
#[derive(Debug, Clone)]
pub struct Messaging {
    pub shards: u32,
    pub result_bytes: usize,
    pub publish_task: Stats,
    pub deliver_task: Stats,
    pub result_and_ack: Stats,
    pub deliver_result: Stats,
    pub total: Stats,
}

/// Mean and percentiles in ms.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub mean: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(mut v: Vec<f64>) -> Stats {
        if v.is_empty() {
            return Stats {
                mean: 0.0,
                p50: 0.0,
                p95: 0.0,
                max: 0.0,
            };
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Stats {
            mean: v.iter().sum::<f64>() / v.len() as f64,
            p50: at(0.5),
            p95: at(0.95),
            max: at(1.0),
        }
    }

    pub fn short(&self) -> String {
        format!(
            "{:.2} (p50 {:.2}, p95 {:.2}, max {:.2})",
            self.mean, self.p50, self.p95, self.max
        )
    }
}

impl Messaging {
    pub fn describe(&self) -> String {
        format!(
            "{:.2} ms mean per shard (p50 {:.2}, p95 {:.2}) = publish task + confirm {:.2} + deliver {:.2} + publish result ({} B) + confirm + ack {:.2} + deliver result + ack {:.2}; a mapper's own share (result + ack + next delivery) {:.2} ms",
            self.total.mean,
            self.total.p50,
            self.total.p95,
            self.publish_task.mean,
            self.deliver_task.mean,
            self.result_bytes,
            self.result_and_ack.mean,
            self.deliver_result.mean,
            self.result_and_ack.mean + self.deliver_task.mean,
        )
    }
}

/// The next delivery of `source`, a `what` (task, result), within 30 s.
async fn receive(source: &mut impl Source, what: &str) -> anyhow::Result<Delivery> {
    tokio::time::timeout(Duration::from_secs(30), source.next())
        .await
        .with_context(|| format!("no {what} delivered within 30 s"))?
        .with_context(|| format!("the {what} consumer was cancelled"))?
        .with_context(|| format!("receive a {what}"))
}

/// Measures `n` round trips (after 20 unmeasured ones).
pub async fn measure(
    url: &str,
    prefix: &str,
    n: u32,
    sample_result: Option<&str>,
) -> anyhow::Result<Messaging> {
    let names = QueueNames::with_prefix(prefix);
    let coord = Broker::connect(url, names.clone()).await?;
    let mapper = Broker::connect(url, names.clone()).await?;
    let reducer = Broker::connect(url, names.clone()).await?;
    let task_pub = coord.publisher().await?;
    let result_pub = mapper.publisher().await?;
    let mut tasks = mapper.consume(Route::Tasks, 1, "bench-mapper").await?;
    let mut results = reducer.consume(Route::Results, 1, "bench-reducer").await?;
    let tally: Tally = sample_result
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let mut steps: [Vec<f64>; 5] = Default::default();
    let mut result_bytes = 0;
    let warmup = 20;
    for i in 0..(n + warmup) {
        let task = ShardTask {
            v: MESSAGE_VERSION,
            ledger: String::new(),
            run_id: format!("{prefix}-run"),
            shard_no: i,
            target: "revisions".into(),
            first_key: "1000".into(),
            last_key: "1999".into(),
            rows: 500,
        };
        let result = ShardResult {
            v: MESSAGE_VERSION,
            ledger: String::new(),
            run_id: task.run_id.clone(),
            shard_no: i,
            target: task.target.clone(),
            worker: "mapper@bench:1".into(),
            elapsed_ms: 100,
            tally: tally.clone(),
        };
        result_bytes = result.encode().len();
        let t0 = Instant::now();
        task_pub.publish_task(&task).await?;
        let t1 = Instant::now();
        let d = receive(&mut tasks, "task").await?;
        let t2 = Instant::now();
        result_pub.publish_result(&result).await?;
        d.ack().await.context("ack a task")?;
        let t3 = Instant::now();
        let r = receive(&mut results, "result").await?;
        r.ack().await.context("ack a result")?;
        let t4 = Instant::now();
        if i >= warmup {
            let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1000.0;
            steps[0].push(ms(t0, t1));
            steps[1].push(ms(t1, t2));
            steps[2].push(ms(t2, t3));
            steps[3].push(ms(t3, t4));
            steps[4].push(ms(t0, t4));
        }
    }
    coord.close().await;
    mapper.close().await;
    reducer.close().await;
    let [a, b, c, d, e] = steps;
    Ok(Messaging {
        shards: n,
        result_bytes,
        publish_task: Stats::of(a),
        deliver_task: Stats::of(b),
        result_and_ack: Stats::of(c),
        deliver_result: Stats::of(d),
        total: Stats::of(e),
    })
}
