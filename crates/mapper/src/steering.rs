//! Admission of a shard: before a mapper starts a shard it asks the ledger
//! whether it may — the run is not paused or cancelled, it is inside one of
//! its windows (if it has any), no run of higher priority is waiting, the
//! database is healthy, the server's WAL rate is within the run's cap
//! (PostgreSQL), the run's rows-per-second and bytes-per-second budgets
//! have room, and a shards-in-flight slot is free (the claim). The bytes a
//! shard reserves are an estimate, settled with the bytes it wrote once it
//! is done ([`Steering::settle`]).
//!
//! Settings are read at most every [`CONTROL_REFRESH`] per run and process,
//! so `backfill pause` takes effect within about half a second plus the
//! shard in hand. A task that may not start is held for a few seconds and
//! then parked (published again at the back of the queue, then acked): the
//! broker never sees a long-unacked message (its consumer timeout), and the
//! delivery limit is not spent on waiting. One task slot per process holds a
//! blocked run's task; the others park that run's tasks after a short pause
//! ([`FAST_PARK`]), so the tasks of other runs queued behind a paused or
//! lower-priority run get their turn within seconds.

use backfill_job::ShardTask;
use backfill_store::{Claim, Control, ControlState, Health, Store, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::CachedRun;

/// How often a process re-reads a run's control row.
pub const CONTROL_REFRESH: Duration = Duration::from_millis(500);
/// How long a task that may not start is held before it is parked.
pub const HOLD: Duration = Duration::from_secs(5);
/// How long a slot waits before parking a task of a run another slot of the
/// process is already holding (bounds the churn of a paused run's tasks).
pub const FAST_PARK: Duration = Duration::from_millis(50);
/// Poll interval while holding.
const POLL: Duration = Duration::from_millis(200);
/// Reserve rows at most this far ahead, so a pause is still seen in time.
const RATE_HORIZON: Duration = Duration::from_secs(2);
/// The most a run's WAL budget saves up while the server writes less than
/// the cap: one second of it, so the rate over any few seconds stays near
/// the cap.
const WAL_BURST: Duration = Duration::from_secs(1);

/// What becomes of a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Start it (claimed; or finished already, so its result is re-sent).
    Go,
    /// The run was cancelled: drop the task.
    Cancelled,
    /// Not now (the reason): put the task back at the end of the queue.
    Park(String),
}

#[derive(Default)]
struct Caches {
    control: HashMap<String, (Instant, Control)>,
    health: HashMap<String, (Instant, Health)>,
    /// Runs whose task a slot of this process is holding.
    holding: std::collections::HashSet<String>,
    /// Bytes reserved for shards started and not yet settled, and when
    /// they started.
    reserved: HashMap<(String, u32), (f64, Instant)>,
}

/// Releases the hold of a run when the holding slot is done with it.
struct HoldGuard<'a> {
    steering: &'a Steering,
    run: Option<String>,
}

impl Drop for HoldGuard<'_> {
    fn drop(&mut self) {
        if let Some(run) = self.run.take() {
            if let Ok(mut c) = self.steering.caches.lock() {
                c.holding.remove(&run);
            }
        }
    }
}

/// A process's view of the runs' steering, shared by its mapper tasks.
#[derive(Clone, Default)]
pub struct Steering {
    caches: Arc<Mutex<Caches>>,
    beat: Arc<Beat>,
}

/// What the heartbeat reports.
#[derive(Default)]
pub struct Beat {
    pub shards_done: AtomicU64,
    pub run: Mutex<Option<String>>,
}

impl Steering {
    pub fn beat(&self) -> Arc<Beat> {
        self.beat.clone()
    }

    pub(crate) fn note_done(&self, run_id: &str) {
        self.beat.shards_done.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut r) = self.beat.run.lock() {
            if r.as_deref() != Some(run_id) {
                *r = Some(run_id.to_string());
            }
        }
    }

    /// Settles a shard's reserved bytes once it is over: the bytes it wrote
    /// (`None` when it did not finish: the reservation is given back).
    pub(crate) async fn settle(&self, store: &Store, task: &ShardTask, written: Option<u64>) {
        let Some((reserved, started)) = self
            .caches
            .lock()
            .ok()
            .and_then(|mut c| c.reserved.remove(&(task.run_id.clone(), task.shard_no)))
        else {
            return;
        };
        let rows = if written.is_some() { task.rows } else { 0 };
        if let Err(e) = store
            .settle_bytes(
                &task.run_id,
                rows,
                reserved,
                written.unwrap_or(0),
                started.elapsed(),
            )
            .await
        {
            debug!(error = %e, "cannot settle the shard's bytes; going on");
        }
    }

    async fn control(&self, store: &Store, run_id: &str, run: &CachedRun) -> Option<Control> {
        if let Some(c) = self.caches.lock().ok().and_then(|c| {
            c.control
                .get(run_id)
                .filter(|(at, _)| at.elapsed() < CONTROL_REFRESH)
                .map(|(_, c)| c.clone())
        }) {
            return Some(c);
        }
        match store.control(run_id, &run.spec.throttle).await {
            Ok(c) => {
                if let Ok(mut caches) = self.caches.lock() {
                    caches
                        .control
                        .insert(run_id.to_string(), (Instant::now(), c.clone()));
                }
                Some(c)
            }
            Err(e) => {
                // The shard's own attempt reports a database that is down.
                warn!(error = %e, "cannot read the run's control; going on");
                None
            }
        }
    }

    async fn health(&self, store: &Store, run_id: &str, run: &CachedRun) -> Health {
        let every = Duration::from_secs_f64(run.spec.health.check_every_seconds);
        if let Some(h) = self.caches.lock().ok().and_then(|c| {
            c.health
                .get(run_id)
                .filter(|(at, _)| at.elapsed() < every)
                .map(|(_, h)| h.clone())
        }) {
            return h;
        }
        let h = store
            .health(&run.spec.health)
            .await
            .unwrap_or_else(|e| Health {
                ok: false,
                reason: Some(format!("the health check failed: {e}")),
            });
        if let Ok(mut caches) = self.caches.lock() {
            caches
                .health
                .insert(run_id.to_string(), (Instant::now(), h.clone()));
        }
        h
    }

    /// The reason the run may not start a shard now, if any.
    async fn blocked(&self, store: &Store, task: &ShardTask, run: &CachedRun) -> Blocked {
        let Some(ctl) = self.control(store, &task.run_id, run).await else {
            return Blocked::No(None);
        };
        match ctl.control {
            ControlState::Cancel => return Blocked::Cancelled,
            ControlState::Pause => return Blocked::Yes("the run is paused".into()),
            ControlState::Run => {}
        }
        // Outside its windows the run waits like a paused one: the shards
        // in hand finish and nothing new starts.
        if let Some(waiting) = run.schedule.as_ref().and_then(|s| s.state_now().waiting()) {
            return Blocked::Yes(waiting);
        }
        if let Some(other) = &ctl.yield_to {
            return Blocked::Yes(format!("run {other} has a higher priority"));
        }
        let h = self.health(store, &task.run_id, run).await;
        if !h.ok {
            return Blocked::Yes(
                h.reason
                    .unwrap_or_else(|| "the database is unhealthy".into()),
            );
        }
        Blocked::No(Some(ctl))
    }

    /// Waits until the task may start (then claims its shard), the run is
    /// cancelled, or [`HOLD`] has passed. A task that does not start gives
    /// back the bytes it reserved.
    pub async fn admit(
        &self,
        store: &Store,
        run: &CachedRun,
        task: &ShardTask,
        worker: &str,
        shutdown: &CancellationToken,
    ) -> Admission {
        let a = self.hold(store, run, task, worker, shutdown).await;
        if a != Admission::Go {
            self.settle(store, task, None).await;
        }
        a
    }

    async fn hold(
        &self,
        store: &Store,
        run: &CachedRun,
        task: &ShardTask,
        worker: &str,
        shutdown: &CancellationToken,
    ) -> Admission {
        let deadline = Instant::now() + HOLD;
        let mut hold = HoldGuard {
            steering: self,
            run: None,
        };
        loop {
            if shutdown.is_cancelled() {
                return Admission::Park("the worker is stopping".into());
            }
            let why: String = match self.blocked(store, task, run).await {
                Blocked::Cancelled => return Admission::Cancelled,
                Blocked::Yes(reason) => reason,
                Blocked::No(ctl) => {
                    let Some(ctl) = ctl else { return Admission::Go };
                    match self.pace(store, task, run, &ctl).await {
                        Pace::Go => {}
                        Pace::Wait(reason) => {
                            if Instant::now() >= deadline {
                                return Admission::Park(reason);
                            }
                            continue;
                        }
                    }
                    match store
                        .claim_shard(&task.run_id, task.shard_no, worker, ctl.max_in_flight)
                        .await
                    {
                        Ok(Claim::Busy) => "the run's shards-in-flight limit".into(),
                        Ok(_) => return Admission::Go,
                        Err(e) => {
                            debug!(error = %e, "cannot claim the shard; the attempt will report it");
                            return Admission::Go;
                        }
                    }
                }
            };
            if Instant::now() >= deadline {
                return Admission::Park(why);
            }
            if hold.run.is_none() {
                let first = self
                    .caches
                    .lock()
                    .map(|mut c| c.holding.insert(task.run_id.clone()))
                    .unwrap_or(true);
                if !first {
                    tokio::time::sleep(FAST_PARK).await;
                    return Admission::Park(why);
                }
                hold.run = Some(task.run_id.clone());
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    /// Waits for the run's rate limits: the server's WAL rate, then rows
    /// and bytes per second.
    async fn pace(&self, store: &Store, task: &ShardTask, run: &CachedRun, ctl: &Control) -> Pace {
        if ctl.max_wal_bytes_per_sec.is_some() {
            if let Pace::Wait(why) = self.pace_wal(store, task, run).await {
                return Pace::Wait(why);
            }
        }
        if ctl.rows_per_sec.is_some() {
            if let Pace::Wait(why) = self.pace_rows(store, task, run).await {
                return Pace::Wait(why);
            }
        }
        if ctl.bytes_per_sec.is_some() {
            return self.pace_bytes(store, task, run).await;
        }
        Pace::Go
    }

    /// Waits while the server's WAL rate is over the run's cap (its shared
    /// WAL budget is in debt), at most [`RATE_HORIZON`].
    async fn pace_wal(&self, store: &Store, task: &ShardTask, run: &CachedRun) -> Pace {
        let give_up = Instant::now() + RATE_HORIZON;
        loop {
            let wait = match store.wal_wait(&task.run_id, WAL_BURST).await {
                Ok(Some(w)) => w,
                Ok(None) => return Pace::Go,
                Err(e) => {
                    debug!(error = %e, "cannot sample the WAL position; going on");
                    return Pace::Go;
                }
            };
            if wait.is_zero() {
                return Pace::Go;
            }
            if Instant::now() >= give_up {
                return Pace::Wait("the server's WAL rate is over the run's cap".into());
            }
            tokio::time::sleep(POLL.min(wait)).await;
            match self.blocked(store, task, run).await {
                Blocked::Yes(reason) => return Pace::Wait(reason),
                Blocked::Cancelled => return Pace::Wait("the run was cancelled".into()),
                Blocked::No(_) => {}
            }
        }
    }

    /// Takes the shard's estimated bytes from the run's bytes-per-second
    /// budget and sleeps until its turn; the reservation is settled when
    /// the shard is over.
    async fn pace_bytes(&self, store: &Store, task: &ShardTask, run: &CachedRun) -> Pace {
        let reservation = store
            .reserve_bytes(&task.run_id, task.rows.max(1), RATE_HORIZON)
            .await;
        let (wait, reserved) = match granted(reservation, "bytes").await {
            Ok(w) => w,
            Err(pace) => return pace,
        };
        let pace = self.sleep_watching(store, task, run, wait).await;
        if let Pace::Go = pace {
            if let Ok(mut c) = self.caches.lock() {
                c.reserved.insert(
                    (task.run_id.clone(), task.shard_no),
                    (reserved, Instant::now()),
                );
            }
        }
        pace
    }

    /// Takes the shard's rows from the run's rows-per-second budget and
    /// sleeps until its turn, watching for a pause meanwhile.
    async fn pace_rows(&self, store: &Store, task: &ShardTask, run: &CachedRun) -> Pace {
        let reservation = store
            .reserve_rows(&task.run_id, task.rows.max(1), RATE_HORIZON)
            .await;
        let wait = match granted(reservation, "rows").await {
            Ok(w) => w,
            Err(pace) => return pace,
        };
        self.sleep_watching(store, task, run, wait).await
    }

    /// Sleeps `wait`, watching for a pause or cancel meanwhile.
    async fn sleep_watching(
        &self,
        store: &Store,
        task: &ShardTask,
        run: &CachedRun,
        wait: Duration,
    ) -> Pace {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
            match self.blocked(store, task, run).await {
                Blocked::Yes(reason) => return Pace::Wait(reason),
                Blocked::Cancelled => return Pace::Wait("the run was cancelled".into()),
                Blocked::No(_) => {}
            }
        }
        Pace::Go
    }
}

enum Blocked {
    /// May go; the control row when it could be read.
    No(Option<Control>),
    Yes(String),
    Cancelled,
}

enum Pace {
    Go,
    Wait(String),
}

/// What a reservation from one of the run's per-second budgets (`what`:
/// rows or bytes) gave, or the pace when it gave nothing: a wait (after a
/// poll interval) when the budget has no room, go on when the ledger
/// cannot say.
async fn granted<T>(reservation: Result<Option<T>, StoreError>, what: &str) -> Result<T, Pace> {
    match reservation {
        Ok(Some(w)) => Ok(w),
        Ok(None) => {
            tokio::time::sleep(POLL).await;
            Err(Pace::Wait(format!("the run's {what}-per-second limit")))
        }
        Err(e) => {
            debug!(error = %e, "cannot reserve {what}; going on");
            Err(Pace::Go)
        }
    }
}
