//! The mapper role: take a shard task, rewrite its rows, record it, publish
//! its result, then ack.
//!
//! [`process_task`] is the step function (one task in, one result out) that
//! tests drive directly; [`run`] wraps it in a consume loop with bounded
//! concurrency, reconnects with backoff when the broker or database goes
//! away, and on shutdown finishes the shards in hand before returning.
//!
//! Order per shard: fetch rows → apply rules → commit writes, before-images
//! and the shard's ledger record in one transaction → publish the result
//! with a confirm → ack the task. A crash anywhere before the ack means a
//! redelivery; the ledger then shows the shard done and only the result is
//! sent again.

use backfill_job::message::MESSAGE_VERSION;
use backfill_job::rules::evaluate_row;
use backfill_job::spec::OnConflict;
use backfill_job::{JobSpec, Mode, RowInput, RowOutcome, ShardResult, ShardTask};
use backfill_queue::{
    BasicAckOptions, BasicNackOptions, BasicRejectOptions, Broker, Delivery, LocalQueue, QueueNames,
};
use backfill_store::shard::EvaluatedRow;
use backfill_store::{Committed, ShardCommit, ShardRows, Store, StoreError};
use futures::StreamExt;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, info_span, warn, Instrument};

/// Attempts at a shard that fail for a reason other than a lost connection
/// before the shard is given up (dead-lettered; its rows reported as errors
/// and quarantined).
pub const MAX_SHARD_FAILURES: u32 = 3;

/// Why a task could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum MapperError {
    #[error("run {0} is not in the ledger; the task is dropped")]
    UnknownRun(String),
    #[error("run {run}: the job has no target named `{target}`; the task is dropped")]
    UnknownTarget { run: String, target: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MapperError {
    /// True when the same task may succeed later (database restarting).
    pub fn is_transient(&self) -> bool {
        matches!(self, MapperError::Store(e) if e.is_transient())
    }
}

/// A run as a mapper needs it; runs never change once planned.
struct CachedRun {
    spec: JobSpec,
    mode: Mode,
    params: HashMap<String, Map<String, Value>>,
}

/// Runs read from the ledger, shared by a mapper's tasks.
#[derive(Clone, Default)]
pub struct RunCache(Arc<Mutex<HashMap<String, Arc<CachedRun>>>>);

impl RunCache {
    async fn get(&self, store: &Store, run_id: &str) -> Result<Arc<CachedRun>, MapperError> {
        if let Some(r) = self.0.lock().ok().and_then(|m| m.get(run_id).cloned()) {
            return Ok(r);
        }
        let rec = store
            .load_run(run_id)
            .await?
            .ok_or_else(|| MapperError::UnknownRun(run_id.to_string()))?;
        let params = rec
            .plan
            .groups
            .iter()
            .map(|g| (g.key.clone(), g.params.clone()))
            .collect();
        let cached = Arc::new(CachedRun {
            spec: rec.spec,
            mode: rec.mode,
            params,
        });
        if let Ok(mut m) = self.0.lock() {
            m.insert(run_id.to_string(), cached.clone());
        }
        Ok(cached)
    }
}

/// Processes one shard task against the database and returns its result.
/// Publishing the result and acking are the caller's.
pub async fn process_task(
    store: &Store,
    runs: &RunCache,
    task: &ShardTask,
    worker: &str,
) -> Result<ShardResult, MapperError> {
    let started = Instant::now();
    let run = runs.get(store, &task.run_id).await?;
    let target = run
        .spec
        .target(&task.target)
        .ok_or_else(|| MapperError::UnknownTarget {
            run: task.run_id.clone(),
            target: task.target.clone(),
        })?;
    let tally = match store
        .fetch_shard(&task.run_id, target, task.shard_no)
        .await?
    {
        ShardRows::Done(t) => {
            info!("shard already committed; re-sending its result");
            t
        }
        ShardRows::Pending(rows) => {
            let current = run
                .spec
                .report
                .current
                .as_ref()
                .filter(|c| c.target == target.name)
                .map(|c| (c.column.as_str(), c.path.as_str()));
            let empty = Map::new();
            let evaluated: Vec<EvaluatedRow> = rows
                .into_iter()
                .map(|row| {
                    let params = run.params.get(&row.group).unwrap_or(&empty);
                    match row.columns {
                        None => EvaluatedRow {
                            key: row.key,
                            group: row.group,
                            refs: row.refs,
                            outcome: RowOutcome::Skipped("row no longer exists".into()),
                            current: None,
                            read: Default::default(),
                        },
                        Some(cols) => {
                            let ev = evaluate_row(
                                target,
                                &RowInput {
                                    key: &row.key,
                                    columns: &cols,
                                    params,
                                },
                                current,
                            );
                            EvaluatedRow {
                                key: row.key,
                                group: row.group,
                                refs: row.refs,
                                outcome: ev.outcome,
                                current: ev.current,
                                read: cols,
                            }
                        }
                    }
                })
                .collect();
            let reevaluate =
                |group: &str, cols: &std::collections::BTreeMap<String, Option<String>>| {
                    let params = run.params.get(group).unwrap_or(&empty);
                    evaluate_row(
                        target,
                        &RowInput {
                            key: "",
                            columns: cols,
                            params,
                        },
                        None,
                    )
                    .outcome
                };
            let retry: Option<&backfill_store::shard::Reevaluate<'_>> = match run.spec.on_conflict {
                OnConflict::Retry => Some(&reevaluate),
                OnConflict::Report => None,
            };
            let committed = store
                .commit_shard(ShardCommit {
                    run_id: &task.run_id,
                    shard_no: task.shard_no,
                    target,
                    mode: run.mode,
                    worker,
                    rows: evaluated,
                    retry,
                })
                .await?;
            if let Committed::AlreadyDone(_) = committed {
                info!("another delivery committed this shard first");
            }
            committed.tally().clone()
        }
    };
    Ok(ShardResult {
        v: MESSAGE_VERSION,
        run_id: task.run_id.clone(),
        shard_no: task.shard_no,
        target: task.target.clone(),
        worker: worker.to_string(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        tally,
    })
}

/// How a mapper runs.
#[derive(Debug, Clone)]
pub struct MapperConfig {
    pub amqp_url: String,
    pub queues: QueueNames,
    /// Shards processed at once by this process (and the prefetch).
    pub concurrency: u16,
    pub worker: String,
}

/// Consumes shard tasks until `shutdown`; then finishes the shards in hand.
pub async fn run(
    store: Store,
    cfg: MapperConfig,
    shutdown: CancellationToken,
) -> Result<(), MapperError> {
    let runs = RunCache::default();
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match consume(&store, &runs, &cfg, &shutdown).await {
            Ok(()) => break,
            Err(e) => {
                warn!(error = %e, "mapper lost the broker; reconnecting in {:?}", backoff);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    info!(worker = %cfg.worker, "mapper stopped");
    Ok(())
}

async fn consume(
    store: &Store,
    runs: &RunCache,
    cfg: &MapperConfig,
    shutdown: &CancellationToken,
) -> Result<(), backfill_queue::QueueError> {
    let broker = Broker::connect(&cfg.amqp_url, cfg.queues.clone()).await?;
    let publisher = Arc::new(broker.publisher().await?);
    let (channel, mut consumer) = broker
        .consume(&cfg.queues.tasks, cfg.concurrency.max(1), &cfg.worker)
        .await?;
    info!(worker = %cfg.worker, queue = %cfg.queues.tasks, concurrency = cfg.concurrency, "mapper consuming");
    let mut tasks: JoinSet<()> = JoinSet::new();
    let outcome = loop {
        // Reap finished shards so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            d = consumer.next() => d,
        };
        let delivery = match next {
            None => {
                break Err(backfill_queue::QueueError::Nacked(
                    "consumer cancelled by the broker".into(),
                ))
            }
            Some(Err(e)) => {
                break Err(backfill_queue::QueueError::Amqp {
                    what: "receive a task".into(),
                    source: e,
                })
            }
            Some(Ok(d)) => d,
        };
        let (store, runs, publisher, worker) = (
            store.clone(),
            runs.clone(),
            publisher.clone(),
            cfg.worker.clone(),
        );
        tasks.spawn(
            async move { handle_delivery(&store, &runs, &publisher, &worker, delivery).await },
        );
    };
    // Finish what is in hand: each shard commits, publishes and acks.
    while tasks.join_next().await.is_some() {}
    // Close the channel first: the server handles everything sent on it
    // (the last acks) before it confirms the close, so no finished shard's
    // task is redelivered after a clean stop.
    let _ = channel.close(200, "mapper stopping".into()).await;
    broker.close().await;
    outcome
}

/// What to do with a task after trying it.
#[derive(Debug)]
pub enum Disposition {
    /// The shard is committed (now or before): send this result, then ack.
    Done(Box<ShardResult>),
    /// Try again later (lost connection, or a failure not yet given up on).
    Retry(String),
    /// Never processable (unknown run or target): drop it.
    Drop(String),
    /// Failed on every attempt: dead-letter it (the reducer then records the
    /// shard as failed, its rows quarantined, so the run ends).
    GiveUp(String),
}

/// Runs a task and decides what becomes of it: a shard that fails for a
/// reason other than a lost connection is retried up to
/// [`MAX_SHARD_FAILURES`] times, then given up with its rows reported as
/// errors, so the run ends instead of waiting forever.
pub async fn attempt(
    store: &Store,
    runs: &RunCache,
    task: &ShardTask,
    worker: &str,
) -> Disposition {
    match process_task(store, runs, task, worker).await {
        Ok(result) => Disposition::Done(Box::new(result)),
        Err(e @ (MapperError::UnknownRun(_) | MapperError::UnknownTarget { .. })) => {
            Disposition::Drop(e.to_string())
        }
        Err(e) if e.is_transient() => Disposition::Retry(e.to_string()),
        Err(e) => {
            let msg = e.to_string();
            let failures = match store
                .shard_attempt_failed(&task.run_id, task.shard_no, &msg)
                .await
            {
                Ok(n) => n,
                Err(e2) => {
                    return Disposition::Retry(format!("{msg} (and recording it failed: {e2})"))
                }
            };
            if failures < MAX_SHARD_FAILURES {
                return Disposition::Retry(format!(
                    "{msg} (attempt {failures} of {MAX_SHARD_FAILURES})"
                ));
            }
            error!(error = %msg, failures, "shard failed on every attempt; giving it up");
            Disposition::GiveUp(msg)
        }
    }
}

/// Records a shard given up in the ledger (state `dead`, its rows
/// quarantined as errors) and returns its result for the reducer.
pub async fn record_dead_shard(
    store: &Store,
    task: &ShardTask,
    worker: &str,
    error: &str,
) -> Result<ShardResult, StoreError> {
    let committed = store
        .fail_shard(&task.run_id, task.shard_no, &task.target, error)
        .await?;
    Ok(ShardResult {
        v: MESSAGE_VERSION,
        run_id: task.run_id.clone(),
        shard_no: task.shard_no,
        target: task.target.clone(),
        worker: worker.to_string(),
        elapsed_ms: 0,
        tally: committed.tally().clone(),
    })
}

fn log_done(result: &ShardResult) {
    let c = &result.tally.counts;
    info!(
        rows = c.processed,
        changed = c.changed,
        conflicts = c.conflicts,
        errors = c.errors,
        ms = result.elapsed_ms,
        "shard done"
    );
}

/// Pause before a task goes back to the queue, so a failing shard does not spin.
const RETRY_DELAY: Duration = Duration::from_millis(500);

async fn handle_delivery(
    store: &Store,
    runs: &RunCache,
    publisher: &backfill_queue::Publisher,
    worker: &str,
    d: Delivery,
) {
    let task = match ShardTask::decode(&d.data) {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "dropping a task message that cannot be read");
            let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
            return;
        }
    };
    let span =
        info_span!("shard", run = %task.run_id, shard = task.shard_no, target = %task.target);
    async {
        match attempt(store, runs, &task, worker).await {
            Disposition::Done(result) => {
                if let Err(e) = publisher.publish_result(&result).await {
                    // The shard is committed; a redelivery re-sends the result.
                    warn!(error = %e, "could not publish the result; the task goes back to the queue");
                    let _ = d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                    return;
                }
                log_done(&result);
                let _ = d.acker.ack(BasicAckOptions::default()).await;
            }
            Disposition::Drop(why) => {
                error!(error = %why, "dropping task");
                let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
            }
            Disposition::GiveUp(why) => {
                // To the dead-letter queue; the reducer records it.
                error!(error = %why, "dead-lettering the shard");
                let _ = d.acker.reject(BasicRejectOptions { requeue: false }).await;
            }
            Disposition::Retry(why) => {
                warn!(error = %why, "shard not done; the task goes back to the queue");
                tokio::time::sleep(RETRY_DELAY).await;
                let _ = d.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
            }
        }
    }
    .instrument(span)
    .await
}

/// The embedded mode's mapper: takes tasks from the in-process queue until
/// `shutdown`, finishing the shard in hand.
pub async fn run_local(
    store: Store,
    queue: LocalQueue,
    worker: String,
    shutdown: CancellationToken,
) {
    let runs = RunCache::default();
    loop {
        let task = tokio::select! {
            _ = shutdown.cancelled() => break,
            t = queue.recv_task() => match t { Some(t) => t, None => break },
        };
        let span =
            info_span!("shard", run = %task.run_id, shard = task.shard_no, target = %task.target);
        async {
            match attempt(&store, &runs, &task, &worker).await {
                Disposition::Done(result) => {
                    log_done(&result);
                    queue.send_result(*result);
                }
                Disposition::Drop(why) => error!(error = %why, "dropping task"),
                Disposition::GiveUp(why) => {
                    match record_dead_shard(&store, &task, &worker, &why).await {
                        Ok(result) => queue.send_result(result),
                        Err(e) => {
                            warn!(error = %e, "could not record the failed shard; trying again");
                            tokio::time::sleep(RETRY_DELAY).await;
                            queue.send_task(task.clone());
                        }
                    }
                }
                Disposition::Retry(why) => {
                    warn!(error = %why, "shard not done; trying it again");
                    tokio::time::sleep(RETRY_DELAY).await;
                    queue.send_task(task.clone());
                }
            }
        }
        .instrument(span)
        .await;
    }
}
