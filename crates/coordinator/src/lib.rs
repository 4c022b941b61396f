//! The coordinator role: plan a run, record it, publish its shard tasks, and
//! (optionally) wait for its summary.
//!
//! The plan is recorded in the ledger before anything is published, so every
//! published task refers to a run the mappers can read. Publishing reads the
//! unpublished shards back from the ledger and marks them as the broker
//! confirms them, so publishing again after a crash sends only what is
//! missing.

use backfill_job::message::MESSAGE_VERSION;
use backfill_job::plan::evaluate_groups;
use backfill_job::{JobSpec, Mode, Plan, Scope, ShardTask};
use backfill_queue::{Broker, LocalQueue, QueueError};
use backfill_store::{NewRun, RunRecord, Store, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("job `{0}` has no [groups]; run it with --all")]
    NoGroups(String),
    #[error("run {0} is not in the ledger")]
    UnknownRun(String),
    #[error("stopped while waiting for run {0}; it carries on without this process (see `backfill status {0}`)")]
    Interrupted(String),
}

/// What to run.
pub struct RunRequest {
    pub spec: JobSpec,
    pub scope: Scope,
    pub mode: Mode,
    /// Rows per shard; the spec's `shard_size` when `None`.
    pub shard_size: Option<u32>,
}

/// A new run id: time-ordered and unique.
pub fn new_run_id(job: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let short = uuid::Uuid::new_v4().simple().to_string();
    format!("{job}-{secs}-{}", &short[..8])
}

/// Plans a run and records it in the ledger. Returns the run id and plan.
pub async fn plan(store: &Store, req: &RunRequest) -> Result<(String, Plan), CoordinatorError> {
    if req.spec.groups.is_none() {
        if let Scope::Groups(_) = req.scope {
            return Err(CoordinatorError::NoGroups(req.spec.name.clone()));
        }
    }
    let run_id = new_run_id(&req.spec.name);
    let rows = store.group_rows(&req.spec, &req.scope).await?;
    let groups = evaluate_groups(&req.spec, &req.scope, rows);
    let shard_size = req.shard_size.unwrap_or(req.spec.shard_size).max(1);
    let plan = store
        .create_run(
            NewRun {
                run_id: &run_id,
                spec: &req.spec,
                mode: req.mode,
                scope: &req.scope,
                shard_size,
            },
            groups,
        )
        .await?;
    info!(run = %run_id, job = %req.spec.name, mode = %req.mode, shards = plan.shards_total, "run planned");
    Ok((run_id, plan))
}

/// The tasks of every shard of the run not yet published.
pub async fn pending_tasks(
    store: &Store,
    run_id: &str,
) -> Result<Vec<ShardTask>, CoordinatorError> {
    Ok(store
        .shards(run_id)
        .await?
        .into_iter()
        .filter(|s| !s.published)
        .map(|s| ShardTask {
            v: MESSAGE_VERSION,
            run_id: run_id.to_string(),
            shard_no: s.shard_no,
            target: s.target,
            first_key: s.first_key,
            last_key: s.last_key,
            rows: s.rows,
        })
        .collect())
}

/// How many confirmed publishes are recorded in the ledger at once.
const MARK_BATCH: usize = 500;

/// Publishes every shard of the run not yet confirmed by the broker, and
/// records each as published once confirmed. Returns how many were published.
pub async fn publish(
    store: &Store,
    broker: &Broker,
    run_id: &str,
) -> Result<usize, CoordinatorError> {
    let tasks = pending_tasks(store, run_id).await?;
    let publisher = broker.publisher().await?;
    let mut done: Vec<i32> = Vec::new();
    for task in &tasks {
        publisher.publish_task(task).await?;
        done.push(task.shard_no as i32);
        if done.len() >= MARK_BATCH {
            store.mark_published(run_id, &done).await?;
            done.clear();
        }
    }
    if !done.is_empty() {
        store.mark_published(run_id, &done).await?;
    }
    info!(run = %run_id, published = tasks.len(), "shard tasks published");
    Ok(tasks.len())
}

/// Sends every unpublished shard of the run to the in-process queue.
pub async fn publish_local(
    store: &Store,
    queue: &LocalQueue,
    run_id: &str,
) -> Result<usize, CoordinatorError> {
    let tasks = pending_tasks(store, run_id).await?;
    let nos: Vec<i32> = tasks.iter().map(|t| t.shard_no as i32).collect();
    let n = tasks.len();
    for task in tasks {
        queue.send_task(task);
    }
    for chunk in nos.chunks(MARK_BATCH) {
        store.mark_published(run_id, chunk).await?;
    }
    Ok(n)
}

/// Waits until the run is finished (every shard folded), polling the ledger.
pub async fn wait(
    store: &Store,
    run_id: &str,
    shutdown: &CancellationToken,
) -> Result<RunRecord, CoordinatorError> {
    let mut interval = Duration::from_millis(50);
    loop {
        let rec = store
            .load_run(run_id)
            .await?
            .ok_or_else(|| CoordinatorError::UnknownRun(run_id.to_string()))?;
        if rec.state.is_finished() {
            return Ok(rec);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(CoordinatorError::Interrupted(run_id.to_string())),
            _ = tokio::time::sleep(interval) => {}
        }
        interval = (interval * 2).min(Duration::from_millis(500));
    }
}
