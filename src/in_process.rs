//! A run in this process: the coordinator, mapper tasks and a reducer
//! together, over RabbitMQ or the in-process queue (`run`, `verify`,
//! `retry`, `revert`, `demo`), and what each kind of run checks before it
//! starts: a job's review gate and adoption, a retry's finished run and
//! adoption of an unfinished retry of it, a revert's before-images.

use backfill_job::{JobSpec, Mode, RunKind};
use backfill_queue::worker_name;
use backfill_store::{Derived, RunRecord, Store};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::connect::{connect_broker, connect_store, refuse_copied_ledger};
use crate::exit::usage;
use crate::progress::shutdown_on_signals;
use crate::settings::Settings;

/// What a run in this process works on.
pub enum Work {
    /// A job: plan a new run (or resume the unfinished run of the same command).
    Job(Box<backfill_coordinator::RunRequest>),
    /// The quarantined rows of a finished run.
    Retry { run_id: String, shard_size: u32 },
    /// Restore the before-images of a finished commit run.
    Revert {
        run_id: String,
        mode: Mode,
        shard_size: u32,
        /// `--param` values, checked against the run's own.
        params: Vec<(String, String)>,
    },
}

/// A run finished in this process, read with its totals only (not its
/// groups' counts), and the store it was read from: its report is
/// streamed from the ledger ([`Finished::print_report`]), so that a run of
/// any number of groups ends in the memory of a small one.
pub struct Finished {
    pub store: Store,
    pub rec: RunRecord,
}

impl Finished {
    /// Prints the run's text report, which ends with its `Summary:` line.
    pub async fn print_report(&self) -> anyhow::Result<()> {
        crate::render::print_text(&self.store, &self.rec).await
    }
}

/// Coordinator, `mappers` mapper tasks and a reducer in this process, over
/// RabbitMQ or (`local`) the in-process queue. Returns the finished run.
pub async fn run_in_process(
    settings: &Settings,
    req: Work,
    mappers: u16,
    local: bool,
) -> anyhow::Result<Option<Finished>> {
    let store = connect_store(settings, mappers as u32 + 4).await?;
    if local {
        let rec = run_local(&store, req, mappers, &settings.operator).await?;
        return Ok(rec.map(|rec| Finished { store, rec }));
    }
    refuse_copied_ledger(&store)?;
    let broker = connect_broker(settings).await?;
    let shutdown = shutdown_on_signals();
    let workers = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    for i in 0..mappers {
        let cfg = backfill_mapper::MapperConfig {
            amqp_url: settings.amqp_url.expose().to_string(),
            queues: settings.queues(),
            concurrency: 1,
            worker: format!("{}#{i}", worker_name("mapper")),
        };
        tracker.spawn(backfill_mapper::run(store.clone(), cfg, workers.clone()));
    }
    let rcfg = backfill_reducer::ReducerConfig {
        amqp_url: settings.amqp_url.expose().to_string(),
        queues: settings.queues(),
        worker: worker_name("reducer"),
    };
    tracker.spawn(backfill_reducer::run(store.clone(), rcfg, workers.clone()));
    tracker.close();

    // Each shard is published as soon as it is recorded, while the rest is
    // planned.
    let req = match req {
        Work::Job(mut job) => {
            job.publishing = Some(settings.publishing());
            Work::Job(job)
        }
        other => other,
    };
    let started = Instant::now();
    let outcome = async {
        let Some((run_id, _lock)) = begin(&store, &req, &settings.operator).await? else {
            return Ok(None);
        };
        let follower = crate::progress::follow(
            &store,
            &run_id,
            format!("backfill coordinator --resume {run_id}"),
        );
        let rec = async {
            backfill_coordinator::publish_until_done(
                &store,
                settings.amqp_url.expose(),
                &settings.queues(),
                &run_id,
                false,
                &shutdown,
            )
            .await?;
            Ok::<_, anyhow::Error>(backfill_coordinator::wait(&store, &run_id, &shutdown).await?)
        }
        .await;
        // The bar goes before anything else is printed: the report follows.
        follower.finish().await;
        Ok::<_, anyhow::Error>(Some(rec?))
    }
    .await;
    stop_workers(&workers, &tracker).await;
    broker.close().await;
    let Some(rec) = outcome? else { return Ok(None) };
    report_speed(&rec, started);
    Ok(Some(Finished { store, rec }))
}

/// Stops this process's mapper and reducer tasks, waiting for them at
/// most a minute.
async fn stop_workers(workers: &CancellationToken, tracker: &tokio_util::task::TaskTracker) {
    workers.cancel();
    if tokio::time::timeout(Duration::from_secs(60), tracker.wait())
        .await
        .is_err()
    {
        warn!("workers did not stop within 60 s");
    }
}

pub fn report_speed(rec: &RunRecord, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "run {} finished in {:.2} s ({:.0} rows/s)",
        rec.run_id,
        secs,
        rec.tally.counts.processed as f64 / secs.max(1e-9)
    );
}

/// The embedded mode: the same coordinator, mappers and reducer over the
/// in-process queue.
pub async fn run_local(
    store: &Store,
    req: Work,
    mappers: u16,
    operator: &str,
) -> anyhow::Result<Option<RunRecord>> {
    let queue = backfill_queue::LocalQueue::new();
    let shutdown = shutdown_on_signals();
    let workers = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    for i in 0..mappers {
        let worker = format!("{}#{i}", worker_name("mapper"));
        tracker.spawn(backfill_mapper::run_local(
            store.clone(),
            queue.clone(),
            worker,
            workers.clone(),
        ));
    }
    tracker.spawn(backfill_reducer::run_local(
        store.clone(),
        queue.clone(),
        worker_name("reducer"),
        workers.clone(),
    ));
    tracker.close();
    let started = Instant::now();
    let outcome = async {
        let Some((run_id, _lock)) = begin(store, &req, operator).await? else {
            return Ok(None);
        };
        // In-process tasks die with their process: send every shard not done.
        let tasks = backfill_coordinator::resume_tasks(store, &run_id).await?;
        let nos: Vec<i32> = tasks.iter().map(|t| t.shard_no as i32).collect();
        for t in tasks {
            queue.send_task(t);
        }
        store.mark_published(&run_id, &nos).await?;
        // In-process queue: the same command run again resumes the run.
        let follower =
            crate::progress::follow(store, &run_id, "the same command again".to_string());
        let rec = backfill_coordinator::wait(store, &run_id, &shutdown).await;
        follower.finish().await;
        Ok::<_, anyhow::Error>(Some(rec?))
    }
    .await;
    stop_workers(&workers, &tracker).await;
    let Some(rec) = outcome? else { return Ok(None) };
    report_speed(&rec, started);
    Ok(Some(rec))
}

pub async fn begin(
    store: &Store,
    work: &Work,
    operator: &str,
) -> anyhow::Result<Option<(String, Option<backfill_store::JobLock>)>> {
    let started = begin_inner(store, work).await?;
    if let Some((run_id, _)) = &started {
        record_start(store, run_id, operator).await?;
        if let Work::Revert {
            run_id: of, mode, ..
        } = work
        {
            let detail = format!("by run {run_id} ({mode})");
            store
                .record_event(of, "revert", operator, Some(&detail))
                .await?;
        }
    }
    Ok(started)
}

/// The audit event of a run's start (or resumption): who, from which host.
pub async fn record_start(store: &Store, run_id: &str, operator: &str) -> anyhow::Result<()> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    store
        .record_event(run_id, "start", operator, Some(&format!("host={host}")))
        .await?;
    Ok(())
}

pub async fn begin_inner(
    store: &Store,
    work: &Work,
) -> anyhow::Result<Option<(String, Option<backfill_store::JobLock>)>> {
    match work {
        Work::Job(req) => start_or_resume(store, req).await,
        Work::Retry { run_id, shard_size } => {
            let original = store
                .load_run(run_id)
                .await?
                .ok_or_else(|| usage(format!("run {run_id} is not in the ledger")))?;
            if !original.state.is_finished() {
                return Err(usage(format!(
                    "run {run_id} is still running ({}/{} shards reduced); retry it once it has finished",
                    original.shards_reduced, original.shards_total
                )));
            }
            let Some(lock) = lock_job(store, &original).await? else {
                return Ok(None);
            };
            // An unfinished retry of the same run (its coordinator died) is
            // adopted: its rows are no longer in the quarantine, so a new
            // retry would find none. Any other run in progress is waited for.
            let active = store.active_runs(&original.spec.name).await?;
            if let Some(same) = active
                .iter()
                .find(|a| a.kind == RunKind::Retry && a.of.as_deref() == Some(run_id.as_str()))
            {
                eprintln!(
                    "adopting run {}: a {} run that was unfinished: resuming it",
                    same.run_id,
                    same.describe_kind()
                );
                return Ok(Some((same.run_id.clone(), Some(lock))));
            }
            if let Some(other) = active.first() {
                eprintln!(
                    "run {} of job `{}` ({}, {}) is still in progress; not starting a retry. Watch it with `backfill status {}`; if its coordinator died, finish it with `backfill coordinator --resume {}` or stop it with `backfill cancel {}`",
                    other.run_id,
                    original.spec.name,
                    other.describe_kind(),
                    other.mode,
                    other.run_id,
                    other.run_id,
                    other.run_id
                );
                return Ok(None);
            }
            let (new_id, rows, shards) =
                derive(store, &original, *shard_size, Derived::Retry).await?;
            eprintln!(
                "run {new_id} retries {} quarantined rows of run {run_id} in {} shards",
                rows, shards
            );
            Ok(Some((new_id, Some(lock))))
        }
        Work::Revert {
            run_id,
            mode,
            shard_size,
            params,
        } => {
            let original = store
                .load_run(run_id)
                .await?
                .ok_or_else(|| usage(format!("run {run_id} is not in the ledger")))?;
            if !params.is_empty() {
                JobSpec::parse_with_params(&original.spec.source, params)
                    .map_err(|e| usage(format!("run {run_id}: {e}")))?;
            }
            if !original.state.is_finished() {
                return Err(usage(format!(
                    "run {run_id} is still running ({}/{} shards reduced); cancel it or let it finish, then revert it",
                    original.shards_reduced, original.shards_total
                )));
            }
            if !original.mode.is_commit() {
                return Err(usage(format!(
                    "run {run_id} is a dry run: it wrote nothing, so there is nothing to revert"
                )));
            }
            if let Some(of) = &original.revert_of {
                return Err(usage(format!(
                    "run {run_id} is itself a revert (of run {of}); to apply the job again, run the job"
                )));
            }
            let images = store.before_image_count(run_id).await?;
            if images == 0 && original.tally.counts.changed > 0 {
                return Err(usage(format!(
                    "run {run_id} changed {} rows but its before-images are gone (pruned); it cannot be reverted",
                    original.tally.counts.changed
                )));
            }
            let Some(lock) = lock_job(store, &original).await? else {
                return Ok(None);
            };
            let active = store.active_runs(&original.spec.name).await?;
            if let Some(other) = active.first() {
                return Err(usage(format!(
                    "run {} of job `{}` is in progress; revert once it has finished",
                    other.run_id, original.spec.name
                )));
            }
            let (new_id, rows, shards) =
                derive(store, &original, *shard_size, Derived::Revert(*mode)).await?;
            eprintln!(
                "run {new_id} ({mode}) restores {} rows written by run {run_id}, in {} shards",
                rows, shards
            );
            Ok(Some((new_id, Some(lock))))
        }
    }
}

/// The lock of the job of `original`, for a run made from it; none, once
/// said so, while another coordinator works on the job.
async fn lock_job(
    store: &Store,
    original: &RunRecord,
) -> anyhow::Result<Option<backfill_store::JobLock>> {
    let lock = store.try_lock_job(&original.spec.name).await?;
    if lock.is_none() {
        eprintln!(
            "another coordinator is working on job `{}`; try again when it is done",
            original.spec.name
        );
    }
    Ok(lock)
}

/// Plans a run made from `original` (a retry or a revert), with the
/// spec's throttle: a revert or retry at night is as gentle as the run.
/// Returns its id, rows and shards.
async fn derive(
    store: &Store,
    original: &RunRecord,
    shard_size: u32,
    derived: Derived,
) -> anyhow::Result<(String, u64, u32)> {
    let new_id = backfill_coordinator::new_run_id(&original.spec.name);
    let plan = store
        .create_derived_run(&new_id, original, shard_size, derived)
        .await?;
    store
        .init_control(&new_id, &original.spec.throttle, None)
        .await?;
    let rows = plan.targets.iter().map(|t| t.rows).sum::<u64>();
    Ok((new_id, rows, plan.shards_total))
}

/// The workers of a run in this process that works on a finished run
/// (`retry`, `revert`).
#[derive(Debug, clap::Args)]
pub struct RerunArgs {
    /// Mapper tasks to start in this process.
    #[arg(long, default_value_t = 2)]
    pub mappers: u16,
    /// Embedded mode: the in-process queue instead of RabbitMQ (implied by a sqlite:// URL).
    #[arg(long)]
    pub local: bool,
    /// Rows per shard.
    #[arg(long, default_value_t = backfill_job::spec::DEFAULT_SHARD_SIZE)]
    pub shard_size: u32,
}

impl RerunArgs {
    /// Runs the work `work(shard size)` in this process and prints its
    /// report. Returns the finished run, or `None` when another run of the
    /// job is in progress.
    pub async fn run(
        &self,
        settings: &Settings,
        work: impl FnOnce(u32) -> Work,
    ) -> anyhow::Result<Option<RunRecord>> {
        check_workers(self.mappers, self.shard_size)?;
        let local = self.local || settings.is_sqlite();
        let done = run_in_process(settings, work(self.shard_size), self.mappers, local).await?;
        if let Some(done) = &done {
            done.print_report().await?;
        }
        Ok(done.map(|d| d.rec))
    }
}

/// The flags of a run made from another run (`retry`, `revert`).
pub fn check_workers(mappers: u16, shard_size: u32) -> anyhow::Result<()> {
    if mappers == 0 {
        return Err(usage("--mappers must be at least 1"));
    }
    if shard_size == 0 || shard_size > backfill_job::spec::MAX_SHARD_SIZE {
        return Err(usage(format!(
            "--shard-size must be between 1 and {}",
            backfill_job::spec::MAX_SHARD_SIZE
        )));
    }
    Ok(())
}

/// A commit refused by its gate, or a spec whose query returns keys it
/// does not allow, is the user's to fix: exit 2.
pub fn refusal(e: backfill_coordinator::CoordinatorError) -> anyhow::Error {
    match e {
        backfill_coordinator::CoordinatorError::Refused(m) => usage(m),
        backfill_coordinator::CoordinatorError::Store(backfill_store::StoreError::Input(m)) => {
            usage(m)
        }
        other => other.into(),
    }
}

/// Plans a run, or resumes the unfinished run of the same command; `None`
/// (after saying why) when another run of the job is in progress.
pub async fn start_or_resume(
    store: &Store,
    req: &backfill_coordinator::RunRequest,
) -> anyhow::Result<Option<(String, Option<backfill_store::JobLock>)>> {
    let (start, lock) = backfill_coordinator::start(store, req)
        .await
        .map_err(refusal)?;
    match start {
        backfill_coordinator::Start::Busy(msg) => {
            eprintln!("{msg}");
            Ok(None)
        }
        backfill_coordinator::Start::Planned { run_id, shards } => {
            eprintln!("run {run_id}: {shards} shards planned");
            Ok(Some((run_id, lock)))
        }
        backfill_coordinator::Start::Resumed { run_id, kind } => {
            eprintln!("adopting run {run_id}: a {kind} run of the same job, spec and scope that was unfinished: resuming it");
            if req.throttle.is_some() {
                eprintln!(
                    "warning: --rows-per-sec, --max-in-flight and --priority are not applied: run {run_id} keeps the throttle it was planned with; change it with `backfill throttle {run_id} …`"
                );
            }
            if req.windows.is_some() {
                eprintln!("warning: --window not applied: run {run_id} keeps the windows it was planned with");
            }
            Ok(Some((run_id, lock)))
        }
    }
}
