//! The reducer role: fold shard results into run summaries.
//!
//! Each result is folded once: the ledger marks the shard reduced in the same
//! transaction that merges its counts into the run (see
//! `backfill_store::ledger`), so a duplicate delivery or a restarted reducer
//! never counts a shard twice. When the last shard is folded the run gets its
//! final state and `Summary:` line. Any number of reducers may run.

use backfill_job::{ShardResult, ShardTask};
use backfill_queue::{
    consume_with_reconnects, is_foreign, return_foreign, Broker, Delivery, QueueNames, Route, Sink,
    Source, DELIVERY_LIMIT,
};
use backfill_store::{Reduced, Store, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// For a job whose tables hold versions: the row counts of its target
/// tables when the run finished, beside those recorded when it was planned,
/// so the ledger shows that no version was added or removed.
async fn record_finished_rows(store: &Store, run_id: &str) -> Result<(), StoreError> {
    let Some(rec) = store.load_run_totals(run_id).await? else {
        return Ok(());
    };
    if !rec.spec.versioned {
        return Ok(());
    }
    let counts = store.count_table_rows(&rec.spec).await?;
    let planned = rec
        .table_rows
        .as_ref()
        .and_then(|t| t.get("planned"))
        .cloned();
    if let Some(planned) = planned {
        if serde_json::to_value(&counts).ok().as_ref() != Some(&planned) {
            warn!(run = %run_id, planned = %planned, finished = ?counts, "the target tables' row counts changed during the run");
        }
    }
    store.record_table_rows(run_id, "finished", &counts).await
}

/// Folds one result; the step function tests drive directly.
pub async fn process_result(store: &Store, result: &ShardResult) -> Result<Reduced, StoreError> {
    let r = store.reduce(result).await?;
    match &r {
        Reduced::Counted => {
            metrics::counter!("backfill_results_folded_total", "run" => result.run_id.clone())
                .increment(1);
            // A shard that was in hand when its run was cancelled: the
            // summary shows it too.
            store.refresh_cancelled_summary(&result.run_id).await?;
        }
        Reduced::Finished(summary) => {
            metrics::counter!("backfill_results_folded_total", "run" => result.run_id.clone())
                .increment(1);
            metrics::counter!("backfill_runs_finished_total").increment(1);
            info!(run = %result.run_id, "{summary}");
            record_finished_rows(store, &result.run_id).await?;
            backfill_notify::notify_end(store, &result.run_id).await;
        }
        Reduced::Duplicate => {
            info!(run = %result.run_id, shard = result.shard_no, "duplicate result ignored")
        }
        Reduced::UnknownShard => {
            warn!(run = %result.run_id, shard = result.shard_no, "result for a shard the ledger does not know; ignored")
        }
        Reduced::NotCommitted => {
            warn!(run = %result.run_id, shard = result.shard_no, "result for a shard the ledger does not show committed; ignored")
        }
    }
    Ok(r)
}

/// How a reducer runs.
#[derive(Debug, Clone)]
pub struct ReducerConfig {
    pub amqp_url: String,
    pub queues: QueueNames,
    pub worker: String,
}

/// Consumes results until `shutdown`, reconnecting with backoff.
pub async fn run(
    store: Store,
    cfg: ReducerConfig,
    shutdown: CancellationToken,
) -> Result<(), StoreError> {
    // A copied database would fold the results of the one it was copied from.
    store.ledger().check()?;
    // There from the start, at 0, so an increase over it is never missing.
    metrics::counter!("backfill_runs_finished_total").increment(0);
    let stalls = tokio::spawn(watch_stalls(
        store.clone(),
        cfg.worker.clone(),
        shutdown.clone(),
    ));
    consume_with_reconnects(
        &shutdown,
        || consume(&store, &cfg, &shutdown),
        |e, backoff| warn!(error = %e, "reducer lost the broker; reconnecting in {:?}", backoff),
    )
    .await;
    let _ = stalls.await;
    info!(worker = %cfg.worker, "reducer stopped");
    Ok(())
}

/// How often the reducer looks for stalled runs.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// Tells of each running, unpaused run that has made no progress for its
/// spec's `[notify] stall_after_seconds`: once per stall (recorded in the
/// ledger as a `stalled` event), and again only after it progressed.
async fn watch_stalls(store: Store, worker: String, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(STALL_CHECK) => {}
        }
        let quiet = match store.quiet_runs().await {
            Ok(q) => q,
            Err(e) => {
                warn!(error = %e, "cannot look for stalled runs");
                continue;
            }
        };
        for q in quiet.into_iter().filter(|q| !q.told) {
            let Ok(Some(rec)) = store.load_run_totals(&q.run_id).await else {
                continue;
            };
            if q.quiet_seconds < rec.spec.notify.stall_after_seconds {
                continue;
            }
            let detail = format!(
                "no shard finished for {:.0} s (stall_after_seconds = {})",
                q.quiet_seconds, rec.spec.notify.stall_after_seconds
            );
            warn!(run = %q.run_id, "run stalled: {detail}");
            if let Err(e) = store
                .record_event(&q.run_id, "stalled", &worker, Some(&detail))
                .await
            {
                warn!(run = %q.run_id, error = %e, "cannot record the stall");
                continue;
            }
            backfill_notify::send(
                &store,
                &rec,
                backfill_notify::Event::Stalled,
                None,
                Some(&detail),
            );
        }
    }
}

/// Records a dead-lettered shard as failed (its rows quarantined as
/// errors) and folds that into its run, so the run ends instead of waiting
/// for a shard nobody can finish.
pub async fn process_dead_task(
    store: &Store,
    task: &ShardTask,
    worker: &str,
) -> Result<Reduced, StoreError> {
    let error = store
        .shard_last_error(&task.run_id, task.shard_no)
        .await?
        .unwrap_or_else(|| format!("delivered {DELIVERY_LIMIT} times without finishing (a worker died on it each time)"));
    let result = store.record_dead_shard(task, worker, &error).await?;
    warn!(run = %task.run_id, shard = task.shard_no, error = %error, "shard dead-lettered; its rows are reported as errors and quarantined");
    backfill_notify::notify(
        store,
        &task.run_id,
        backfill_notify::Event::ShardDead,
        Some(task.shard_no),
        Some(&error),
    )
    .await;
    process_result(store, &result).await
}

/// Moves a message that can never be processed to the parking queue, with
/// one log line saying why, and acks it: retrying it would only repeat the
/// same refusal forever.
async fn park<S: Sink>(sink: &S, d: Delivery, what: &str, why: &str) {
    error!(error = %why, parked = %sink.names().parked, "{what} can never be processed; parked");
    match sink.publish(Route::Parked, &d.data).await {
        Ok(()) => {
            let _ = d.ack().await;
        }
        Err(e) => {
            warn!(error = %e, "could not park the message; it goes back to its queue");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let _ = d.requeue().await;
        }
    }
}

/// Back to its queue after a pause: the database is away for now.
async fn requeue_later(d: Delivery) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = d.requeue().await;
}

/// Handles one delivery of the dead queue, whatever the transport.
async fn handle_dead<S: Sink>(store: &Store, sink: &S, worker: &str, d: Delivery) {
    let task = match ShardTask::decode(&d.data) {
        Ok(task) => task,
        Err(e) => return park(sink, d, "a dead-lettered message", &e.to_string()).await,
    };
    if is_foreign(
        &store.ledger().id,
        "dead-lettered task",
        &task.ledger,
        &task.run_id,
        sink.names(),
    ) {
        return return_foreign(sink, Route::Dead, d).await;
    }
    match process_dead_task(store, &task, worker).await {
        Ok(_) => {
            let _ = d.ack().await;
        }
        Err(e @ StoreError::Data(_)) => {
            error!(error = %e, run = %task.run_id, shard = task.shard_no, "dead-lettered task of an unknown shard; dropped");
            let _ = d.ack().await;
        }
        Err(e) if e.is_transient() => {
            warn!(error = %e, "could not record a dead-lettered shard; it goes back to the dead queue");
            requeue_later(d).await;
        }
        Err(e) => park(sink, d, "a dead-lettered task", &e.to_string()).await,
    }
}

/// Handles one delivery of the results queue, whatever the transport.
async fn handle_result<S: Sink>(store: &Store, sink: &S, d: Delivery) {
    let result = match ShardResult::decode(&d.data) {
        Ok(r) => r,
        Err(e) => return park(sink, d, "a result message", &e.to_string()).await,
    };
    if is_foreign(
        &store.ledger().id,
        "result",
        &result.ledger,
        &result.run_id,
        sink.names(),
    ) {
        return return_foreign(sink, Route::Results, d).await;
    }
    match process_result(store, &result).await {
        Ok(_) => {
            let _ = d.ack().await;
        }
        Err(e) if e.is_transient() => {
            warn!(error = %e, run = %result.run_id, shard = result.shard_no, "could not fold the result; it goes back to the queue");
            requeue_later(d).await;
        }
        Err(e) => park(sink, d, "a result", &e.to_string()).await,
    }
}

async fn consume(
    store: &Store,
    cfg: &ReducerConfig,
    shutdown: &CancellationToken,
) -> Result<(), backfill_queue::QueueError> {
    let broker = Broker::connect(&cfg.amqp_url, cfg.queues.clone()).await?;
    let publisher = broker.publisher().await?;
    let mut results = broker.consume(Route::Results, 64, &cfg.worker).await?;
    let mut dead = broker
        .consume(Route::Dead, 1, &format!("{}-dead", cfg.worker))
        .await?;
    info!(worker = %cfg.worker, queue = %cfg.queues.results, dead = %cfg.queues.dead, "reducer consuming");
    let outcome = serve(
        store,
        &cfg.worker,
        &mut results,
        &mut dead,
        &publisher,
        shutdown,
        broker.lost(),
    )
    .await;
    // Close the channels first so the last acks reach the broker.
    results.close("reducer stopping").await;
    dead.close("reducer stopping").await;
    broker.close().await;
    outcome
}

/// The one serving loop of a reducer, whatever the transport: folds the
/// deliveries of `results` and records those of `dead`, one at a time, until
/// shutdown, a source ends or the connection is `lost`.
async fn serve<R: Source, D: Source, K: Sink>(
    store: &Store,
    worker: &str,
    results: &mut R,
    dead: &mut D,
    sink: &K,
    shutdown: &CancellationToken,
    lost: impl std::future::Future<Output = ()>,
) -> Result<(), backfill_queue::QueueError> {
    let cancelled =
        || backfill_queue::QueueError::Nacked("consumer cancelled by the broker".into());
    tokio::pin!(lost);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = &mut lost => return Err(backfill_queue::QueueError::Lost),
            d = dead.next() => match d {
                Some(Ok(d)) => handle_dead(store, sink, worker, d).await,
                Some(Err(e)) => return Err(e),
                None => return Err(cancelled()),
            },
            d = results.next() => match d {
                Some(Ok(d)) => handle_result(store, sink, d).await,
                Some(Err(e)) => return Err(e),
                None => return Err(cancelled()),
            },
        }
    }
}

/// The embedded mode's reducer: the same serving loop over the in-process
/// queue (results, and the shards the mappers gave up), until `shutdown`.
pub async fn run_local(
    store: Store,
    queue: backfill_queue::LocalQueue,
    worker: String,
    shutdown: CancellationToken,
) {
    let mut results = queue.source(Route::Results);
    let mut dead = queue.source(Route::Dead);
    // The in-process queue lives as long as this process: nothing is lost.
    let _ = serve(
        &store,
        &worker,
        &mut results,
        &mut dead,
        &queue,
        &shutdown,
        std::future::pending::<()>(),
    )
    .await;
}
