//! The coordinator role: plan a run, record it, publish its shard tasks, and
//! (optionally) wait for its summary.
//!
//! Every published task refers to a shard the ledger holds: on PostgreSQL
//! a shard is published as soon as it is committed, while the rest of the
//! run is planned ([`Publishing`]), and the run is marked as being planned
//! until its plan is whole, which the reducer respects. Publishing reads the
//! unpublished shards back from the ledger and marks them as the broker
//! confirms them, so publishing again after a crash sends only what is
//! missing; a run whose coordinator stopped while planning it is planned on
//! by the next coordinator of the same command.

use backfill_job::message::MESSAGE_VERSION;
use backfill_job::plan::evaluate_groups;
use backfill_job::spec::{adapt_shard_size, ThrottleSpec};
use backfill_job::{JobSpec, Mode, Plan, Scope, ShardTask};
use backfill_queue::{Broker, QueueError, QueueNames};
use backfill_store::{JobLock, NewRun, RunRecord, ShardRecord, ShardSink, Store, StoreError};
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
    /// Stopped (or gave up on the broker) before every shard was
    /// published: the run cannot carry on by itself.
    #[error("stopped before every shard of run {0} was published, so the run cannot finish by itself; it is resumable: `backfill coordinator --resume {0}` (or stop it with `backfill cancel {0}`)")]
    Unpublished(String),
    /// A commit that its gate refuses (no reviewed dry run, a required job
    /// not verified); nothing was recorded.
    #[error("{0}")]
    Refused(String),
}

/// How recent a reviewed dry run must be for a commit, by default.
pub const DEFAULT_REVIEW_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// What a `--commit` run must show before it starts, and who asks.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Who starts the run, for the ledger's audit events.
    pub operator: String,
    /// How recent the reviewed dry run must be; `None` when the review is
    /// skipped (`--skip-review`), which is recorded with `skip_reason`.
    pub review_window: Option<Duration>,
    pub skip_reason: String,
}

impl Gate {
    /// A commit needs a dry run of the same job, spec and scope from
    /// within `window` whose plan still matches.
    pub fn review(operator: &str, window: Duration) -> Gate {
        Gate {
            operator: operator.to_string(),
            review_window: Some(window),
            skip_reason: String::new(),
        }
    }

    /// The review is skipped, for the reason given (recorded in the ledger).
    pub fn skip(operator: &str, why: &str) -> Gate {
        Gate {
            operator: operator.to_string(),
            review_window: None,
            skip_reason: why.to_string(),
        }
    }
}

/// The flags that select a scope, for messages that name a command.
pub fn scope_flags(scope: &Scope) -> String {
    match scope {
        Scope::All => "--all".to_string(),
        Scope::Groups(keys) => keys
            .iter()
            .map(|k| format!("--group {k}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Checks a commit's gate against the ledger: the reviewed dry run it
/// relies on (unless skipped) and the verified job it requires. Returns the
/// audit events to record once the run exists.
pub async fn check_gate(
    store: &Store,
    req: &RunRequest,
    groups: &[backfill_job::PlannedGroup],
) -> Result<Vec<(&'static str, String)>, CoordinatorError> {
    let spec = &req.spec;
    let mut events = Vec::new();
    if !req.mode.is_commit() {
        return Ok(events);
    }
    if let Some(required) = &spec.requires {
        let refuse = |why: String| {
            CoordinatorError::Refused(format!(
                "job `{}` requires job `{required}` to be committed and verified first: {why}.                  Commit `{required}`, run `backfill verify --job <its spec file> --all` until it passes, then commit `{}` again",
                spec.name, spec.name
            ))
        };
        match store.last_commit_verified(required).await? {
            None => {
                return Err(refuse(format!(
                    "no commit of `{required}` is in the ledger"
                )))
            }
            Some(v) => match v.verify_run {
                None => {
                    return Err(refuse(format!(
                        "no verify of `{required}` passed since its last commit, run {}",
                        v.commit_run
                    )))
                }
                Some(verify) => events.push((
                    "requires",
                    format!(
                        "job `{required}`: last commit run {}, verified by run {verify}",
                        v.commit_run
                    ),
                )),
            },
        }
    }
    let Some(window) = req.gate.review_window else {
        events.push(("skip-review", req.gate.skip_reason.clone()));
        return Ok(events);
    };
    let noun = spec
        .groups
        .as_ref()
        .map(|g| g.noun.as_str())
        .unwrap_or("group");
    let target_param = spec.report.target_param.as_deref();
    let mut stale: Option<(String, Vec<String>)> = None;
    for id in store
        .recent_dry_runs(&spec.name, &spec.hash, window)
        .await?
    {
        // Its plan, not its groups' counts: the gate compares plans.
        let Some(rec) = store.load_run_plan(&id).await? else {
            continue;
        };
        if rec.scope_value != req.scope {
            continue;
        }
        let diff = backfill_job::formats::groups_diff(&rec.plan.groups, groups, target_param, noun);
        if diff.is_empty() {
            events.push(("review", format!("relied on dry run {id}")));
            return Ok(events);
        }
        if stale.is_none() {
            stale = Some((id, diff));
        }
    }
    let hours = window.as_secs_f64() / 3600.0;
    let found = match stale {
        None => format!("no finished dry run of it with this spec and scope in the last {hours} h"),
        Some((id, diff)) => format!(
            "the plan changed since dry run {id} was reviewed:\n  {}\n",
            diff.join("\n  ")
        ),
    };
    Err(CoordinatorError::Refused(format!(
        "refusing to commit job `{}`: {found}. Make the dry run to review with          `backfill run --job <spec file> {}` (no --commit), review it with `backfill report RUN`, then commit again;          or pass --skip-review (BACKFILL_SKIP_REVIEW=1), which the ledger records",
        spec.name,
        scope_flags(&req.scope)
    )))
}

/// What to run.
pub struct RunRequest {
    pub spec: JobSpec,
    pub scope: Scope,
    pub mode: Mode,
    /// Rows per shard; the spec's `shard_size` (or adaptive sizing) when `None`.
    pub shard_size: Option<u32>,
    /// The run's starting throttle and priority; the spec's `[throttle]` when `None`.
    pub throttle: Option<ThrottleSpec>,
    /// A sampled dry run: the share of the target rows to read (0–1].
    pub sample: Option<f64>,
    /// What a commit must show before it starts.
    pub gate: Gate,
    /// What the run is for: `Forward` for `run`/`coordinator`, `Verify`
    /// for `verify`. Only a run of the same kind is adopted.
    pub kind: backfill_job::RunKind,
    /// Run windows from the command line (`--window`), replacing the
    /// spec's `[schedule]`.
    pub windows: Option<backfill_job::schedule::Schedule>,
    /// Where to publish each shard as soon as it is recorded, while the run
    /// is planned; `None`: the caller publishes once the plan is recorded.
    pub publishing: Option<Publishing>,
}

/// The broker a coordinator publishes to while it plans.
#[derive(Debug, Clone)]
pub struct Publishing {
    pub amqp_url: String,
    pub queues: QueueNames,
}

/// The shard size of a new run, and how it was chosen when adaptive:
/// from the durations measured in the job's last finished run, aiming at
/// the spec's target duration per shard, at most `max_growth` times larger
/// or smaller than the size measured, within the spec's bounds.
pub async fn choose_shard_size(
    store: &Store,
    req: &RunRequest,
) -> Result<(u32, Option<String>), CoordinatorError> {
    if let Some(n) = req.shard_size {
        return Ok((n.max(1), None));
    }
    let sizing = &req.spec.sizing;
    if !sizing.adaptive {
        return Ok((req.spec.shard_size.max(1), None));
    }
    let start = req
        .spec
        .shard_size
        .clamp(sizing.min_shard_size, sizing.max_shard_size);
    Ok(
        match store
            .measured_shard_cost(&req.spec.name, req.mode.as_str())
            .await?
        {
            Some((run, size, ms_per_row)) => {
                let n = adapt_shard_size(sizing, size, ms_per_row);
                (
                    n,
                    Some(format!(
                        "adaptive: {ms_per_row:.3} ms/row at {size} rows/shard in run {run}; {n} rows/shard aims at {} s per shard",
                        sizing.target_shard_seconds
                    )),
                )
            }
            None => (
                start,
                Some(format!(
                    "adaptive: no measured run of the job yet; starting at {start} rows/shard"
                )),
            ),
        },
    )
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

/// How a coordinator started.
pub enum Start {
    /// A new run was planned.
    Planned { run_id: String, shards: u32 },
    /// An unfinished run of the same job, spec, scope, mode and kind was
    /// found (a coordinator died before publishing it all): carry on with
    /// it. `kind` names the run's kind for the line that says so.
    Resumed { run_id: String, kind: String },
    /// Another coordinator holds the job, or a different run of it is in
    /// progress: nothing was started. The message names the run.
    Busy(String),
}

/// Starts work on a job: takes the job's lock, then resumes an unfinished
/// run of the same command, refuses while a different run of the job is in
/// progress, or plans a new run. The lock is held until it is dropped.
pub async fn start(
    store: &Store,
    req: &RunRequest,
) -> Result<(Start, Option<JobLock>), CoordinatorError> {
    let job = &req.spec.name;
    let Some(lock) = store.try_lock_job(job).await? else {
        let active = store.active_runs(job).await?;
        let which = match active.first() {
            Some(a) => format!("run {}", a.run_id),
            None => "a run being planned".to_string(),
        };
        return Ok((
            Start::Busy(format!(
                "another coordinator is working on job `{job}` ({which}); not starting a second one"
            )),
            None,
        ));
    };
    let active = store.active_runs(job).await?;
    // A run is adopted only when it is the same command: same spec, scope
    // and mode, and the same kind — a forward run never finishes a killed
    // revert or retry, and `verify` never adopts a sampled dry run.
    if let Some(same) = active.iter().find(|a| {
        a.spec_hash == req.spec.hash
            && a.scope == req.scope
            && a.mode == req.mode
            && a.kind == req.kind
            && a.of.is_none()
            && a.sample == req.sample
    }) {
        info!(run = %same.run_id, kind = %same.describe_kind(), published = same.shards_published, total = same.shards_total, "resuming an unfinished run of the same job, spec, scope and kind");
        finish_planning(store, &same.run_id, req.publishing.as_ref()).await?;
        return Ok((
            Start::Resumed {
                run_id: same.run_id.clone(),
                kind: same.describe_kind(),
            },
            Some(lock),
        ));
    }
    if let Some(other) = active.first() {
        return Ok((
            Start::Busy(format!(
                "run {} of job `{job}` ({}, {}) is still in progress ({}/{} shards published, {} reduced); not starting another. Watch it with `backfill status {}`; if its coordinator died, finish it with `backfill coordinator --resume {}` or stop it with `backfill cancel {}`",
                other.run_id,
                other.describe_kind(),
                other.mode,
                other.shards_published,
                other.shards_total,
                other.shards_reduced,
                other.run_id,
                other.run_id,
                other.run_id
            )),
            None,
        ));
    }
    let (run_id, plan) = plan(store, req).await?;
    backfill_notify::notify(store, &run_id, backfill_notify::Event::Started, None, None).await;
    Ok((
        Start::Planned {
            run_id,
            shards: plan.shards_total,
        },
        Some(lock),
    ))
}

/// Resumes a given run: publishes again every shard not yet folded by the
/// reducer (a duplicate task is harmless: a done shard is never applied
/// twice; its task makes a mapper re-send the result the ledger holds, so
/// a shard committed but never reduced is folded and the run can end).
pub async fn resume_tasks(store: &Store, run_id: &str) -> Result<Vec<ShardTask>, CoordinatorError> {
    let rec = store
        .load_run_totals(run_id)
        .await?
        .ok_or_else(|| CoordinatorError::UnknownRun(run_id.to_string()))?;
    if rec.state.is_finished() {
        return Ok(Vec::new());
    }
    shard_tasks(store, run_id, |s| !s.reduced).await
}

/// The task of every shard of the run that `wanted` keeps, in shard order.
async fn shard_tasks(
    store: &Store,
    run_id: &str,
    wanted: impl Fn(&ShardRecord) -> bool,
) -> Result<Vec<ShardTask>, CoordinatorError> {
    Ok(store
        .shards(run_id)
        .await?
        .into_iter()
        .filter(|s| wanted(s))
        .map(|s| ShardTask {
            v: MESSAGE_VERSION,
            ledger: store.ledger().id.clone(),
            run_id: run_id.to_string(),
            shard_no: s.shard_no,
            target: s.target,
            first_key: s.first_key,
            last_key: s.last_key,
            rows: s.rows,
        })
        .collect())
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
    let events = check_gate(store, req, &groups).await?;
    let (shard_size, sizing_note) = choose_shard_size(store, req).await?;
    let counts = match req.spec.versioned {
        true => Some(store.count_table_rows(&req.spec).await?),
        false => None,
    };
    let new = NewRun {
        run_id: &run_id,
        spec: &req.spec,
        mode: req.mode,
        scope: &req.scope,
        shard_size,
        sample: req.sample,
        kind: req.kind,
        schedule: req.windows.as_ref(),
    };
    // The run's steering before any of its shards can be published: a
    // mapper given one reads its throttle and priority at once.
    let throttle = req.throttle.unwrap_or(req.spec.throttle);
    if throttle.max_wal_bytes_per_sec.is_some()
        && store.dialect() == backfill_job::spec::Dialect::Sqlite
    {
        tracing::warn!(run = %run_id, "max_wal_bytes_per_sec is not applied on SQLite (it has no WAL position to measure)");
    }
    store
        .init_control(&run_id, &throttle, sizing_note.as_deref())
        .await?;
    let early = EarlyPublisher::start(store, &run_id, req.publishing.as_ref());
    let planned = store.create_run(new.clone(), groups, early.sink()).await;
    let planned = plan_on_after_outage(store, req, new, planned, &early).await;
    early.finish(&run_id).await;
    let plan = planned?;
    for (action, detail) in &events {
        store
            .record_event(&run_id, action, &req.gate.operator, Some(detail))
            .await?;
    }
    if let Some(counts) = counts {
        store.record_table_rows(&run_id, "planned", &counts).await?;
    }
    info!(run = %run_id, job = %req.spec.name, mode = %req.mode, shards = plan.shards_total, shard_size, "run planned");
    Ok((run_id, plan))
}

/// How long planning keeps trying while the database is unreachable.
pub const PLAN_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// After the database went away while a run was planned (a restart, a
/// lost connection): waits for it, then plans on from what the ledger
/// holds — the rest of the run when its row is there, the whole run again
/// when even its row was not committed, nothing when its plan was.
async fn plan_on_after_outage(
    store: &Store,
    req: &RunRequest,
    new: NewRun<'_>,
    mut planned: Result<Plan, StoreError>,
    early: &EarlyPublisher,
) -> Result<Plan, StoreError> {
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        let e = match planned {
            Err(e) if e.is_transient() && started.elapsed() < PLAN_PATIENCE => e,
            other => return other,
        };
        tracing::warn!(error = %e, run = %new.run_id, "the database went away while the run was planned; planning on in {:?}", backoff);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
        planned = async {
            if store.interrupted_plan(new.run_id).await?.is_some() {
                return store.continue_run(new.clone(), early.sink()).await;
            }
            if let Some(rec) = store.load_run_plan(new.run_id).await? {
                return Ok(rec.plan);
            }
            let rows = store.group_rows(&req.spec, &req.scope).await?;
            let groups = evaluate_groups(&req.spec, &req.scope, rows);
            store.create_run(new.clone(), groups, early.sink()).await
        }
        .await;
    }
}

/// Carries on planning a run whose coordinator stopped while planning it
/// (see `Store::continue_run`), publishing its shards as they are recorded
/// when `publishing` says where; a run not being planned is left as it is.
/// The caller holds the job's lock.
pub async fn finish_planning(
    store: &Store,
    run_id: &str,
    publishing: Option<&Publishing>,
) -> Result<(), CoordinatorError> {
    let Some(shard_size) = store.interrupted_plan(run_id).await? else {
        return Ok(());
    };
    let rec = store
        .load_run_totals(run_id)
        .await?
        .ok_or_else(|| CoordinatorError::UnknownRun(run_id.to_string()))?;
    tracing::warn!(run = %run_id, "the run's coordinator stopped while planning it: planning it on from the shards it recorded");
    let new = NewRun {
        run_id,
        spec: &rec.spec,
        mode: rec.mode,
        scope: &rec.scope_value,
        shard_size,
        sample: rec.sample,
        kind: rec.kind,
        schedule: None,
    };
    // Its steering and windows were set when it was begun.
    let early = EarlyPublisher::start(store, run_id, publishing);
    let plan = store.continue_run(new, early.sink()).await;
    early.finish(run_id).await;
    let plan = plan?;
    info!(run = %run_id, shards = plan.shards_total, "run planned");
    Ok(())
}

/// The shards of a run being planned, published as they are recorded (on
/// PostgreSQL, when a broker is given) by a task of their own.
struct EarlyPublisher {
    sink: Option<ShardSink>,
    task: Option<tokio::task::JoinHandle<usize>>,
}

impl EarlyPublisher {
    fn start(store: &Store, run_id: &str, publishing: Option<&Publishing>) -> EarlyPublisher {
        let pg = store.dialect() == backfill_job::spec::Dialect::Postgres;
        let Some(publishing) = publishing.filter(|_| pg) else {
            return EarlyPublisher {
                sink: None,
                task: None,
            };
        };
        let (sink, tasks) = ShardSink::new(&store.ledger().id);
        let task = tokio::spawn(publish_as_recorded(
            store.clone(),
            publishing.clone(),
            run_id.to_string(),
            tasks,
        ));
        EarlyPublisher {
            sink: Some(sink),
            task: Some(task),
        }
    }

    /// Where planning sends each shard it has committed.
    fn sink(&self) -> Option<&ShardSink> {
        self.sink.as_ref()
    }

    /// Once planning has ended: waits for the publisher; how many it published.
    async fn finish(self, run_id: &str) -> usize {
        // The sink's sender goes first: the publisher sees the end.
        drop(self.sink);
        let Some(task) = self.task else { return 0 };
        let n = task.await.unwrap_or(0);
        info!(run = %run_id, published = n, "shard tasks published while the run was planned");
        n
    }
}

/// Publishes each shard the planner sends, but always one behind: the
/// newest shard recorded waits until the next one comes, and the last one
/// of all until the plan is whole, when the caller publishes what is left.
/// So a run being planned always has a shard that cannot have been folded,
/// and the fold of its last shard, which ends the run, comes after the plan
/// is recorded whole. A broker that fails here is left to the caller's
/// publishing, which retries: the shards stay unpublished in the ledger.
async fn publish_as_recorded(
    store: Store,
    publishing: Publishing,
    run_id: String,
    mut tasks: tokio::sync::mpsc::UnboundedReceiver<ShardTask>,
) -> usize {
    let mut published = 0;
    let outcome = async {
        let broker = Broker::connect(&publishing.amqp_url, publishing.queues.clone()).await?;
        let publisher = broker.publisher().await?;
        let mut held: Option<ShardTask> = None;
        while let Some(task) = tasks.recv().await {
            // What came meanwhile too, so that the ledger records a batch
            // of publishes at once, not a commit per shard.
            let mut ready: Vec<ShardTask> = held.take().into_iter().collect();
            ready.push(task);
            while let Ok(more) = tasks.try_recv() {
                ready.push(more);
            }
            held = ready.pop();
            if ready.is_empty() {
                continue;
            }
            for t in &ready {
                publisher.publish_task(t).await?;
            }
            let nos: Vec<i32> = ready.iter().map(|t| t.shard_no as i32).collect();
            store.mark_published(&run_id, &nos).await?;
            published += ready.len();
        }
        broker.close().await;
        Ok::<_, CoordinatorError>(())
    }
    .await;
    if let Err(e) = outcome {
        tracing::warn!(error = %e, run = %run_id, "publishing while planning stopped; the shards left are published once the run is planned");
    }
    published
}

/// The tasks of every shard of the run, published or not.
pub async fn all_tasks(store: &Store, run_id: &str) -> Result<Vec<ShardTask>, CoordinatorError> {
    shard_tasks(store, run_id, |_| true).await
}

/// The tasks of every shard of the run not yet published.
pub async fn pending_tasks(
    store: &Store,
    run_id: &str,
) -> Result<Vec<ShardTask>, CoordinatorError> {
    shard_tasks(store, run_id, |s| !s.published).await
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
    publish_tasks(store, broker, run_id, &tasks).await
}

/// Publishes the given tasks with confirms and records them as published.
pub async fn publish_tasks(
    store: &Store,
    broker: &Broker,
    run_id: &str,
    tasks: &[ShardTask],
) -> Result<usize, CoordinatorError> {
    let publisher = broker.publisher().await?;
    let mut done: Vec<i32> = Vec::new();
    for task in tasks {
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

/// How long publishing keeps trying while RabbitMQ is unreachable.
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(15 * 60);

/// Publishes the run's shards, reconnecting with backoff when the broker
/// goes away (a restart mid-publish): each attempt publishes what the ledger
/// does not show published yet (`resume`: every shard not yet done), so
/// nothing is lost and a duplicate is at worst an idempotent redelivery.
pub async fn publish_until_done(
    store: &Store,
    amqp_url: &str,
    queues: &QueueNames,
    run_id: &str,
    resume: bool,
    shutdown: &CancellationToken,
) -> Result<usize, CoordinatorError> {
    // A run cancelled while it was planned has shards never published; they
    // stay so. Published now, a mapper that has not yet seen the cancel
    // could do them all, and the run would end done instead of cancelled.
    let control = store.control(run_id, &ThrottleSpec::default()).await?;
    if control.control == backfill_store::ControlState::Cancel {
        info!(run = %run_id, "the run was cancelled; the shards not yet published stay so");
        return Ok(0);
    }
    let started = std::time::Instant::now();
    let mut backoff = Duration::from_millis(200);

    loop {
        let attempt = async {
            let broker = Broker::connect(amqp_url, queues.clone()).await?;
            let tasks = if resume {
                resume_tasks(store, run_id).await?
            } else {
                pending_tasks(store, run_id).await?
            };
            let n = publish_tasks(store, &broker, run_id, &tasks).await;
            broker.close().await;
            n
        };
        match attempt.await {
            Ok(n) => return Ok(n),
            Err(CoordinatorError::Queue(e))
                if started.elapsed() < PUBLISH_PATIENCE && !shutdown.is_cancelled() =>
            {
                tracing::warn!(error = %e, run = %run_id, "publishing interrupted; reconnecting in {:?}", backoff);
                tokio::select! {
                    _ = shutdown.cancelled() => return Err(CoordinatorError::Unpublished(run_id.to_string())),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(CoordinatorError::Queue(e)) => {
                tracing::error!(error = %e, run = %run_id, "giving up publishing");
                return Err(CoordinatorError::Unpublished(run_id.to_string()));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Waits until the run is finished (every shard folded), polling the
/// ledger; returns the run with its totals (see `Store::load_run_totals`).
pub async fn wait(
    store: &Store,
    run_id: &str,
    shutdown: &CancellationToken,
) -> Result<RunRecord, CoordinatorError> {
    let mut interval = Duration::from_millis(50);
    loop {
        // Polled with its totals only, and returned so: whoever wants its
        // groups reads them (a report streams them).
        match store.load_run_totals(run_id).await {
            Ok(Some(rec)) if rec.state.is_finished() => return Ok(rec),
            Ok(Some(_)) => {}
            Ok(None) => return Err(CoordinatorError::UnknownRun(run_id.to_string())),
            // The database restarting is no reason to stop waiting.
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, "cannot read the run; retrying")
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Err(CoordinatorError::Interrupted(run_id.to_string())),
            _ = tokio::time::sleep(interval) => {}
        }
        // At most 100 ms: the end of a small run is noticed within a tenth
        // of a second (at 500 ms it was a fifth of a 40,000-row run's wall
        // time); a poll reads one row.
        interval = (interval * 2).min(Duration::from_millis(100));
    }
}
