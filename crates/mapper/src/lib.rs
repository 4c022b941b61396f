//! The mapper role: take a shard task, rewrite its rows, record it, publish
//! its result, then ack.
//!
//! [`process_task`] is the step function (one task in, one result out) that
//! tests drive directly; [`run`] wraps it in a consume loop with bounded
//! concurrency, reconnects with backoff when the broker or database goes
//! away, and on shutdown finishes the shards in hand before returning.
//!
//! Order per shard: in one transaction, lock the shard's ledger record, then
//! batch by batch (at most [`batch_limits`] rows and bytes per statement)
//! fetch rows → apply rules → write them with their before-images, then
//! record the shard done and commit → publish the result with a confirm →
//! ack the task. A crash anywhere before the ack means a redelivery; the
//! ledger then shows the shard done and only the result is sent again.
//!
//! Where PostgreSQL can apply a target's rules itself
//! (`backfill_job::pushdown`), each batch is one statement there instead of
//! fetch → apply → write, and only the rows it hands back (a shape the
//! edits do not apply to as the job means them) are read and evaluated
//! here, in the same transaction.
//!
//! A statement the database cancels for its `statement_timeout` rolls the
//! shard back and the shard is tried again at once with the batch halved,
//! down to one row; when even one row is too slow the shard is given up
//! with a reason naming the timeout and how to raise it.
//!
//! Before a shard starts, [`steering`] admits it: not paused or cancelled,
//! no run of higher priority waiting, database healthy, within the run's
//! rows-per-second and shards-in-flight limits.

pub mod steering;

use backfill_job::message::MESSAGE_VERSION;
use backfill_job::rules::{evaluate_revert, evaluate_row};
use backfill_job::spec::OnConflict;
use backfill_job::{JobSpec, Mode, RowInput, ShardResult, ShardTask};
use backfill_queue::{
    consume_with_reconnects, is_foreign, return_foreign, Broker, Delivery, LocalQueue, QueueNames,
    Route, Sink, Source,
};
use backfill_store::shard::EvaluatedRow;
use backfill_store::{
    BatchLimits, Committed, OpenShard, PushedBatch, ShardWork, Store, StoreError,
};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, warn, Instrument};

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
    #[error("run {run} has no shard {shard} in the ledger; the task is dropped")]
    UnknownShard { run: String, shard: u32 },
    /// The ledger, not the message, says what a shard covers: a task that
    /// names another target than the ledger planned is forged or corrupt.
    #[error("task for shard {shard} of run {run} names target `{task}`, but the ledger planned that shard on `{planned}`; the task is refused")]
    TargetMismatch {
        run: String,
        shard: u32,
        task: String,
        planned: String,
    },
    /// Even one row per statement ran past the database's
    /// `statement_timeout`: no smaller statement is possible, so the shard
    /// is given up at once, with what to change.
    #[error("shard {shard}: a statement on a single row ({what}) ran past the database's statement_timeout ({detail}), so the shard cannot be written in smaller statements. Raise statement_timeout for the role backfill connects as (e.g. `ALTER ROLE <role> SET statement_timeout = '5min'`, or `ALTER DATABASE <database> SET statement_timeout = …`), restart the mappers, then `backfill retry` the run's quarantined rows")]
    StatementTimeout {
        shard: u32,
        what: String,
        detail: String,
    },
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
pub struct CachedRun {
    spec: JobSpec,
    mode: Mode,
    /// Every group's parameters, for a run planned by an earlier release
    /// (its plan alone holds them); `None`: each shard reads those of its
    /// own groups ([`Store::shard_group_params`]).
    params: Option<HashMap<String, Map<String, Value>>>,
    /// For a revert: the run whose before-images it restores.
    revert_of: Option<String>,
    /// The windows the run keeps to (`[schedule]` or `--window`).
    schedule: Option<backfill_job::schedule::Schedule>,
}

/// Runs read from the ledger, shared by a mapper's tasks.
#[derive(Clone, Default)]
pub struct RunCache(Arc<Mutex<HashMap<String, Arc<CachedRun>>>>);

impl RunCache {
    pub async fn get(&self, store: &Store, run_id: &str) -> Result<Arc<CachedRun>, MapperError> {
        if let Some(r) = self.0.lock().ok().and_then(|m| m.get(run_id).cloned()) {
            return Ok(r);
        }
        // The run without its plan's groups: their parameters are read per
        // shard, so a run of any number of groups costs the same memory.
        let (rec, params) = if store.has_group_params(run_id).await? {
            let rec = store.load_run_totals(run_id).await?;
            (rec, None)
        } else {
            let rec = store.load_run_plan(run_id).await?;
            let params = rec.as_ref().map(|rec| {
                rec.plan
                    .groups
                    .iter()
                    .map(|g| (g.key.clone(), g.params.clone()))
                    .collect()
            });
            (rec, params)
        };
        let rec = rec.ok_or_else(|| MapperError::UnknownRun(run_id.to_string()))?;
        let schedule = store.run_schedule(&rec).await?;
        let cached = Arc::new(CachedRun {
            schedule,
            spec: rec.spec,
            mode: rec.mode,
            params,
            revert_of: rec.revert_of,
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
    let planned = store
        .shard_target(&task.run_id, task.shard_no)
        .await?
        .ok_or_else(|| MapperError::UnknownShard {
            run: task.run_id.clone(),
            shard: task.shard_no,
        })?;
    if planned != task.target {
        return Err(MapperError::TargetMismatch {
            run: task.run_id.clone(),
            shard: task.shard_no,
            task: task.target.clone(),
            planned,
        });
    }
    let target = run
        .spec
        .target(&planned)
        .ok_or_else(|| MapperError::UnknownTarget {
            run: task.run_id.clone(),
            target: planned.clone(),
        })?;
    // A shard too big for the database's statement_timeout is tried again
    // in smaller statements: the batch that timed out, halved, down to one
    // row. Nothing of a timed-out attempt was committed.
    let mut limits = batch_limits();
    let tally = loop {
        let mut in_flight = 0usize;
        match map_shard(store, &run, target, task, worker, limits, &mut in_flight).await {
            Err(MapperError::Store(StoreError::StatementTimeout { what, source })) => {
                let from = if in_flight > 0 {
                    in_flight.min(limits.rows)
                } else {
                    limits.rows
                };
                if from <= 1 {
                    return Err(MapperError::StatementTimeout {
                        shard: task.shard_no,
                        what,
                        detail: source.to_string(),
                    });
                }
                let next = (from / 2).max(1);
                warn!(
                    rows = from,
                    next,
                    step = %what,
                    "a statement ran past the database's statement_timeout; halving the batch: retrying the shard with at most {} per statement",
                    rows_text(next)
                );
                limits.rows = next;
            }
            other => break other?,
        }
    };
    Ok(ShardResult {
        v: MESSAGE_VERSION,
        ledger: store.ledger().id.clone(),
        run_id: task.run_id.clone(),
        shard_no: task.shard_no,
        target: target.name.clone(),
        worker: worker.to_string(),
        elapsed_ms: started.elapsed().as_millis() as u64,
        tally,
    })
}

/// "1 row", "5 rows".
fn rows_text(n: usize) -> String {
    if n == 1 {
        "1 row".into()
    } else {
        format!("{n} rows")
    }
}

/// Rows and bytes per statement: [`BatchLimits`]' defaults, or
/// `BACKFILL_BATCH_ROWS` and `BACKFILL_BATCH_BYTES` when set to a positive
/// number (read once per process).
pub fn batch_limits() -> BatchLimits {
    static LIMITS: std::sync::OnceLock<BatchLimits> = std::sync::OnceLock::new();
    *LIMITS.get_or_init(|| {
        let num = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
        };
        let d = BatchLimits::default();
        BatchLimits {
            rows: num("BACKFILL_BATCH_ROWS").map_or(d.rows, |n| n as usize),
            bytes: num("BACKFILL_BATCH_BYTES").unwrap_or(d.bytes),
        }
    })
}

/// Whether the database may apply a target's rules itself: unless
/// `BACKFILL_PUSHDOWN` is `off` (read once per process).
pub fn pushdown_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        !std::env::var("BACKFILL_PUSHDOWN").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "off" | "0" | "false" | "no"
            )
        })
    })
}

/// One attempt at a shard: in its single transaction, read, evaluate and
/// write it batch by batch within `limits` (each batch's documents are
/// dropped before the next is read), then record it done. `in_flight` is
/// left holding the rows of the batch being worked on, so that a statement
/// timeout can say which batch size was too big.
async fn map_shard(
    store: &Store,
    run: &CachedRun,
    target: &backfill_job::spec::TargetSpec,
    task: &ShardTask,
    worker: &str,
    limits: BatchLimits,
    in_flight: &mut usize,
) -> Result<backfill_job::Tally, MapperError> {
    let current = run
        .spec
        .report
        .current
        .as_ref()
        .filter(|c| c.target == target.name)
        .map(|c| (c.column.as_str(), c.path.as_str()));
    let empty = Map::new();
    let shard_params = match &run.params {
        Some(_) => None,
        None => Some(
            store
                .shard_group_params(&task.run_id, task.shard_no)
                .await?,
        ),
    };
    let params_of = |group: &str| {
        shard_params
            .as_ref()
            .or(run.params.as_ref())
            .and_then(|p| p.get(group))
            .unwrap_or(&empty)
    };
    // jsonb columns are written compactly; the others keep the bytes of
    // what no rule touched.
    let normalised = store.normalised_columns(&target.table).await?;
    let reevaluate = |group: &str, cols: &std::collections::BTreeMap<String, Option<String>>| {
        let params = params_of(group);
        evaluate_row(
            target,
            &RowInput {
                key: "",
                columns: cols,
                params,
                normalised: &normalised,
            },
            None,
        )
        .outcome
    };
    // A revert never rewrites a row edited since the run: it is
    // reported and left alone, whatever the spec says.
    let retry: Option<&backfill_store::shard::Reevaluate<'_>> =
        match (run.spec.on_conflict, &run.revert_of) {
            (OnConflict::Retry, None) => Some(&reevaluate),
            _ => None,
        };
    let work = ShardWork {
        run_id: &task.run_id,
        shard_no: task.shard_no,
        target,
        mode: run.mode,
        worker,
        retry,
    };
    // The rules the database applies itself, when it can (see
    // `backfill_job::pushdown`): never for a revert, which restores
    // before-images.
    let pushdown = match &run.revert_of {
        None if run.spec.pushdown && pushdown_enabled() => {
            backfill_job::pushdown::plan(target, current, |c| normalised.contains(c))
                .map_err(|why| debug!(target = %target.name, reason = %why, "rules read and rewritten by the mapper"))
                .ok()
        }
        _ => None,
    };
    let mut tx = match store.open_shard(work).await? {
        OpenShard::Done(t) => {
            info!("shard already committed; re-sending its result");
            return Ok(t);
        }
        OpenShard::Open(tx) => tx,
    };
    // The parameters of the shard's groups; for a run planned by an
    // earlier release, every group's (its plan holds them).
    let no_params = HashMap::new();
    let push_params = shard_params
        .as_ref()
        .or(run.params.as_ref())
        .unwrap_or(&no_params);
    let mut pushing = pushdown.as_ref().map(|p| (p, push_params));
    loop {
        *in_flight = limits.rows;
        let rows = match pushing {
            Some((plan, params)) => {
                match tx.push_batch(plan, params, limits.rows, in_flight).await? {
                    PushedBatch::Done => break,
                    PushedBatch::Handed(rows) if rows.is_empty() => continue,
                    PushedBatch::Handed(rows) => rows,
                    PushedBatch::Unsupported(why) => {
                        debug!(reason = why, "rules read and rewritten by the mapper");
                        pushing = None;
                        continue;
                    }
                }
            }
            None => match tx.next_batch(limits).await? {
                Some(rows) => rows,
                None => break,
            },
        };
        *in_flight = rows.len();
        // A row larger than the batch limit leaves its parsed values'
        // memory in the allocator's arenas once freed: give it back.
        let oversize = fetched_bytes(&rows) > limits.bytes;
        // A revert evaluates each row against the before-image the
        // reverted run recorded for it.
        let befores = match &run.revert_of {
            Some(original) => {
                let keys: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
                Some(store.before_images(original, &target.name, &keys).await?)
            }
            None => None,
        };
        let evaluated: Vec<EvaluatedRow> = rows
            .into_iter()
            .map(|row| {
                let params = params_of(&row.group);
                EvaluatedRow::evaluate(row, |key, columns, version| {
                    let input = RowInput {
                        key,
                        columns,
                        params,
                        normalised: &normalised,
                    };
                    match &befores {
                        Some(b) => evaluate_revert(target, &input, b.get(key), version, current),
                        None => evaluate_row(target, &input, current),
                    }
                })
            })
            .collect();
        tx.write(evaluated).await?;
        if oversize {
            backfill_malloc::give_back_free_memory();
        }
    }
    let committed = tx.finish().await?;
    if let Committed::AlreadyDone(_) = committed {
        info!("another delivery committed this shard first");
    }
    Ok(committed.tally().clone())
}

/// The bytes of documents a batch read.
fn fetched_bytes(rows: &[backfill_store::FetchedRow]) -> u64 {
    rows.iter()
        .flat_map(|r| r.columns.iter().flat_map(|c| c.values()))
        .map(|t| t.as_ref().map_or(0, |t| t.len() as u64))
        .sum()
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

/// Records the worker's heartbeat in the ledger every few seconds until
/// `shutdown`, so `status` shows which mappers are alive.
pub async fn heartbeat(
    store: Store,
    worker: String,
    beat: Arc<steering::Beat>,
    shutdown: CancellationToken,
) {
    loop {
        let run = beat.run.lock().ok().and_then(|r| r.clone());
        let done = beat.shards_done.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = store
            .heartbeat(&worker, "mapper", run.as_deref(), done)
            .await
        {
            warn!(error = %e, "cannot record the heartbeat");
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(HEARTBEAT) => {}
        }
    }
}

/// How often a mapper records its heartbeat.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// Consumes shard tasks until `shutdown`; then finishes the shards in hand.
pub async fn run(
    store: Store,
    cfg: MapperConfig,
    shutdown: CancellationToken,
) -> Result<(), MapperError> {
    // A copied database would take the work of the one it was copied from.
    store.ledger().check()?;
    let runs = RunCache::default();
    let steering = steering::Steering::default();
    let beat = tokio::spawn(heartbeat(
        store.clone(),
        cfg.worker.clone(),
        steering.beat(),
        shutdown.clone(),
    ));
    consume_with_reconnects(
        &shutdown,
        || consume(&store, &runs, &steering, &cfg, &shutdown),
        |e, backoff| warn!(error = %e, "mapper lost the broker; reconnecting in {:?}", backoff),
    )
    .await;
    let _ = beat.await;
    info!(worker = %cfg.worker, "mapper stopped");
    Ok(())
}

async fn consume(
    store: &Store,
    runs: &RunCache,
    steering: &steering::Steering,
    cfg: &MapperConfig,
    shutdown: &CancellationToken,
) -> Result<(), backfill_queue::QueueError> {
    let broker = Broker::connect(&cfg.amqp_url, cfg.queues.clone()).await?;
    let publisher = Arc::new(broker.publisher().await?);
    let mut source = broker
        .consume(Route::Tasks, cfg.concurrency.max(1), &cfg.worker)
        .await?;
    info!(worker = %cfg.worker, queue = %cfg.queues.tasks, concurrency = cfg.concurrency, "mapper consuming");
    let ctx = Ctx {
        store: store.clone(),
        runs: runs.clone(),
        steering: steering.clone(),
        worker: cfg.worker.clone(),
        shutdown: shutdown.clone(),
    };
    let outcome = serve(&ctx, &mut source, publisher, cfg.concurrency, broker.lost()).await;
    // Close the channel first: the server handles everything sent on it
    // (the last acks) before it confirms the close, so no finished shard's
    // task is redelivered after a clean stop.
    source.close("mapper stopping").await;
    broker.close().await;
    outcome
}

/// The one serving loop of a mapper, whatever the transport: takes task
/// deliveries from `source` while fewer than `concurrency` shards are in
/// hand, handles each ([`handle_delivery`]) and publishes to `sink`, until
/// shutdown, the source ends or the connection is `lost`; then finishes the
/// shards in hand (each commits, publishes and settles).
async fn serve<S: Source, K: Sink + 'static>(
    ctx: &Ctx,
    source: &mut S,
    sink: Arc<K>,
    concurrency: u16,
    lost: impl std::future::Future<Output = ()>,
) -> Result<(), backfill_queue::QueueError> {
    let slots = Arc::new(tokio::sync::Semaphore::new(usize::from(concurrency.max(1))));
    let mut tasks: JoinSet<()> = JoinSet::new();
    tokio::pin!(lost);
    let outcome = loop {
        // Reap finished shards so the set does not grow.
        while tasks.try_join_next().is_some() {}
        // A slot first, so an in-process queue is not drained into tasks.
        // The connection is watched here too: with every slot held by a
        // shard that cannot settle, the loop would otherwise never see it go.
        let slot = tokio::select! {
            _ = ctx.shutdown.cancelled() => break Ok(()),
            _ = &mut lost => break Err(backfill_queue::QueueError::Lost),
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break Ok(()),
            },
        };
        let next = tokio::select! {
            _ = ctx.shutdown.cancelled() => break Ok(()),
            _ = &mut lost => break Err(backfill_queue::QueueError::Lost),
            d = source.next() => d,
        };
        let delivery = match next {
            None => {
                break Err(backfill_queue::QueueError::Nacked(
                    "consumer cancelled by the broker".into(),
                ))
            }
            Some(Err(e)) => break Err(e),
            Some(Ok(d)) => d,
        };
        let ctx = ctx.clone();
        let sink = sink.clone();
        tasks.spawn(async move {
            handle_delivery(&ctx, &*sink, delivery).await;
            drop(slot);
        });
    };
    // Finish what is in hand: each shard commits, publishes and settles.
    while tasks.join_next().await.is_some() {}
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
        Err(
            e @ (MapperError::UnknownRun(_)
            | MapperError::UnknownTarget { .. }
            | MapperError::UnknownShard { .. }
            | MapperError::TargetMismatch { .. }),
        ) => Disposition::Drop(e.to_string()),
        Err(e) if e.is_transient() => Disposition::Retry(e.to_string()),
        Err(e @ MapperError::StatementTimeout { .. }) => {
            // Recorded as the shard's last error, which the reducer's
            // dead-letter handling and `status` report as its reason.
            let msg = e.to_string();
            if let Err(e2) = store
                .shard_attempt_failed(&task.run_id, task.shard_no, &msg)
                .await
            {
                // Given up unrecorded, the reason would be lost.
                return Disposition::Retry(format!("{msg} (and recording it failed: {e2})"));
            }
            error!(error = %msg, "shard too slow for the statement timeout even one row at a time; giving it up");
            Disposition::GiveUp(msg)
        }
        Err(e) => {
            let msg = e.to_string();
            let failures = match store
                .shard_attempt_failed(&task.run_id, task.shard_no, &msg)
                .await
            {
                Ok(n) => n,
                // The database refuses the task's own data (a run id it
                // cannot even look up): no attempt will ever succeed, so it
                // is given up now rather than retried forever.
                Err(e2) if !e2.is_transient() => {
                    let msg = format!("{msg} (and recording it failed: {e2})");
                    error!(error = %msg, "task the database refuses; giving it up");
                    return Disposition::GiveUp(msg);
                }
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

/// The bytes a finished shard wrote, for its bytes-per-second reservation.
fn written(d: &Disposition) -> Option<u64> {
    match d {
        Disposition::Done(r) => Some(r.tally.bytes_written),
        _ => None,
    }
}

/// Pause before a task goes back to the queue, so a failing shard does not spin.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// What a shard's handling needs of its process.
#[derive(Clone)]
struct Ctx {
    store: Store,
    runs: RunCache,
    steering: steering::Steering,
    worker: String,
    shutdown: CancellationToken,
}

/// Asks whether the task may start now; `None` when the run is unknown
/// (the attempt then reports it).
async fn admit(ctx: &Ctx, task: &ShardTask) -> steering::Admission {
    // A task the ledger does not plan as it says (another target, an
    // unknown shard) claims nothing: the attempt refuses it. Claiming first
    // would leave a forged task's shard `running` under a lease.
    match ctx.store.shard_target(&task.run_id, task.shard_no).await {
        Ok(Some(planned)) if planned == task.target => {}
        _ => return steering::Admission::Go,
    }
    match ctx.runs.get(&ctx.store, &task.run_id).await {
        Ok(run) => {
            ctx.steering
                .admit(&ctx.store, &run, task, &ctx.worker, &ctx.shutdown)
                .await
        }
        Err(_) => steering::Admission::Go,
    }
}

/// The job name of a run for metric labels.
async fn job_of(ctx: &Ctx, run_id: &str) -> String {
    match ctx.runs.get(&ctx.store, run_id).await {
        Ok(r) => r.spec.name.clone(),
        Err(_) => "unknown".into(),
    }
}

/// Handles one task delivery, whatever the transport: runs the shard,
/// publishes its result, settles the delivery.
async fn handle_delivery<S: Sink>(ctx: &Ctx, sink: &S, d: Delivery) {
    let (store, runs, worker) = (&ctx.store, &ctx.runs, ctx.worker.as_str());
    let task = match ShardTask::decode(&d.data) {
        Ok(t) => t,
        Err(e) => {
            error!(error = %e, "dropping a task message that cannot be read");
            let _ = d.dead_letter().await;
            return;
        }
    };
    if is_foreign(
        &store.ledger().id,
        "task",
        &task.ledger,
        &task.run_id,
        sink.names(),
    ) {
        return_foreign(sink, Route::Tasks, d).await;
        return;
    }
    let span =
        info_span!("shard", run = %task.run_id, shard = task.shard_no, target = %task.target);
    async {
        match admit(ctx, &task).await {
            steering::Admission::Go => {}
            steering::Admission::Cancelled => {
                info!("the run was cancelled; dropping its task");
                let _ = d.ack().await;
                return;
            }
            steering::Admission::Park(why) => {
                // Back of the queue: other runs' tasks get their turn, and
                // the message is never held near the consumer timeout.
                debug!(reason = %why, "shard not started; parking its task");
                match sink.publish(Route::Tasks, &task.encode()).await {
                    Ok(()) => {
                        let _ = d.ack().await;
                    }
                    Err(_) => {
                        let _ = d.requeue().await;
                    }
                }
                return;
            }
        }
        let job = job_of(ctx, &task.run_id).await;
        metrics::started(&task.run_id, &job);
        let disposition = attempt(store, runs, &task, worker).await;
        metrics::disposed(&task.run_id, &job, &disposition);
        ctx.steering
            .settle(store, &task, written(&disposition))
            .await;
        match disposition {
            Disposition::Done(result) => {
                ctx.steering.note_done(&task.run_id);
                if let Err(e) = sink.publish(Route::Results, &result.encode()).await {
                    // The shard is committed; a redelivery re-sends the result.
                    warn!(error = %e, "could not publish the result; the task goes back to the queue");
                    let _ = d.requeue().await;
                    return;
                }
                log_done(&result);
                let _ = d.ack().await;
            }
            Disposition::Drop(why) => {
                error!(error = %why, "dropping task");
                let _ = d.dead_letter().await;
            }
            Disposition::GiveUp(why) => {
                // To the dead-letter queue; the reducer records it.
                error!(error = %why, "dead-lettering the shard");
                let _ = d.dead_letter().await;
            }
            Disposition::Retry(why) => {
                warn!(error = %why, "shard not done; the task goes back to the queue");
                tokio::time::sleep(RETRY_DELAY).await;
                let _ = d.requeue().await;
            }
        }
    }
    .instrument(span)
    .await
}

/// The embedded mode's mapper: the same serving loop over the in-process
/// queue, one shard at a time, until `shutdown`, finishing the shard in
/// hand. A shard given up goes to the in-process dead queue, where the
/// reducer records it, as it does on the broker.
pub async fn run_local(
    store: Store,
    queue: LocalQueue,
    worker: String,
    shutdown: CancellationToken,
) {
    let ctx = Ctx {
        store,
        runs: RunCache::default(),
        steering: steering::Steering::default(),
        worker,
        shutdown,
    };
    let mut source = queue.source(Route::Tasks);
    // The in-process queue lives as long as this process: nothing is lost.
    let _ = serve(
        &ctx,
        &mut source,
        Arc::new(queue),
        1,
        std::future::pending::<()>(),
    )
    .await;
}

/// The mapper's Prometheus metrics (recorded through the `metrics` facade;
/// exported by whichever recorder the binary installs, or dropped).
mod metrics {
    use super::Disposition;

    pub fn started(run: &str, job: &str) {
        let labels = [("run", run.to_string()), ("job", job.to_string())];
        ::metrics::counter!("backfill_shards_started_total", &labels).increment(1);
        // Failures exist at 0 from a run's first shard, so that a rate or
        // an increase over them alerts on the first failure too.
        ::metrics::counter!("backfill_shards_failed_total", &labels).increment(0);
    }

    pub fn disposed(run: &str, job: &str, d: &Disposition) {
        let labels = [("run", run.to_string()), ("job", job.to_string())];
        match d {
            Disposition::Done(r) => {
                ::metrics::counter!("backfill_shards_finished_total", &labels).increment(1);
                ::metrics::histogram!("backfill_shard_duration_seconds", &labels)
                    .record(r.elapsed_ms as f64 / 1000.0);
                let c = &r.tally.counts;
                for (outcome, n) in [
                    ("changed", c.changed),
                    ("unchanged", c.unchanged),
                    ("skipped", c.skipped),
                    ("conflict", c.conflicts),
                    ("error", c.errors),
                ] {
                    ::metrics::counter!(
                        "backfill_rows_total",
                        "run" => run.to_string(),
                        "job" => job.to_string(),
                        "outcome" => outcome
                    )
                    .increment(n);
                }
            }
            Disposition::Retry(_) | Disposition::GiveUp(_) => {
                ::metrics::counter!("backfill_shards_failed_total", &labels).increment(1);
            }
            Disposition::Drop(_) => {}
        }
    }
}
