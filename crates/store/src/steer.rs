//! Steering a run while it goes: pause, resume and cancel; throttling (rows
//! per second and shards in flight across every mapper); priorities; the
//! database health check; worker heartbeats; and the audit events of who
//! did what to a run.
//!
//! Everything lives in the ledger, so any number of mappers on any host see
//! the same settings within their refresh interval, and a setting changed
//! while a run goes takes effect without restarting anything:
//! - `backfill_control`: one row per run — `control` (`run`, `pause`,
//!   `cancel`), `priority`, `rows_per_sec`, `max_in_flight`, and `rate_next`,
//!   the shared schedule of the rows-per-second limit: each mapper reserves
//!   its shard's rows with one atomic UPDATE that moves `rate_next` on by
//!   `rows / rows_per_sec` and tells it when it may start (a generic cell
//!   rate algorithm whose state is one timestamp, on the database's clock so
//!   hosts' clocks do not matter). `bytes_per_sec`, `bytes_next` and
//!   `bytes_per_row` do the same for the bytes of rewritten documents
//!   (reserved at the bytes per row measured so far, then settled with the
//!   bytes each shard wrote). `max_wal_bytes_per_sec`, `wal_tokens`,
//!   `wal_lsn` and `wal_at` (PostgreSQL) are the WAL rate cap's token
//!   bucket: refilled at the cap, emptied by the server's WAL measured
//!   between two samples of `pg_current_wal_lsn()`.
//! - `backfill_worker`: each worker's last heartbeat.
//! - `backfill_event`: pause/resume/cancel/throttle with time and operator.
//!
//! Shards in flight are shards in state `running` whose lease has not
//! expired; a mapper claims a shard (pending → running) before it fetches
//! it, under a per-run advisory lock when the run limits shards in flight,
//! so two mappers cannot both take the last slot.

use backfill_job::report::summary_line;
use backfill_job::spec::{HealthSpec, ThrottleSpec};
use backfill_job::RunState;
use sqlx::Row;
use std::time::Duration;

use crate::{sql, Backend, Store, StoreError};

// A statement both dialects read alike is written once, with `$n`
// parameters (SQLite binds `$n` by number too); where they differ, each
// dialect has its statement in full, side by side (`…_PG`, `…_LITE`).

/// A worker's heartbeat.
const HEARTBEAT_PG: &str =
    "INSERT INTO backfill_worker (worker, role, run_id, shards_done) VALUES ($1, $2, $3, $4)
     ON CONFLICT (worker) DO UPDATE SET run_id = coalesce(excluded.run_id, backfill_worker.run_id),
        shards_done = excluded.shards_done, last_seen = now()";
const HEARTBEAT_LITE: &str =
    "INSERT INTO backfill_worker (worker, role, run_id, shards_done) VALUES ($1, $2, $3, $4)
     ON CONFLICT (worker) DO UPDATE SET run_id = coalesce(excluded.run_id, backfill_worker.run_id),
        shards_done = excluded.shards_done, last_seen = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// A running run ends as cancelled, with its summary.
const FINISH_CANCELLED_PG: &str =
    "UPDATE backfill_run SET state = 'cancelled', summary = $2, finished_at = now()
     WHERE run_id = $1 AND state = 'running'";
const FINISH_CANCELLED_LITE: &str = "UPDATE backfill_run SET state = 'cancelled', summary = $2,
            finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE run_id = $1 AND state = 'running'";

/// The most recent runs (of job `$1`, or all when NULL), newest first.
const HISTORY_PG: &str = "SELECT run_id, job_name, mode, state, spec_hash,
            to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), spec_text
     FROM backfill_run
     WHERE ($1::text IS NULL OR job_name = $1) ORDER BY created_at DESC LIMIT $2";
const HISTORY_LITE: &str = "SELECT run_id, job_name, mode, state, spec_hash,
            substr(created_at, 1, 19) || 'Z', spec_text
     FROM backfill_run
     WHERE ($1 IS NULL OR job_name = $1) ORDER BY created_at DESC LIMIT $2";

// The rows- and bytes-per-second schedules. PostgreSQL keeps them as
// timestamps; SQLite as seconds since the epoch on its own clock,
// `((julianday('now') - 2440587.5) * 86400.0)`.

/// Reserves `$2` rows at the run's rows per second, unless the start is
/// more than `$3` seconds away; returns the wait in seconds.
const RESERVE_ROWS_PG: &str = "UPDATE backfill_control
     SET rate_next = greatest(coalesce(rate_next, now()), now()) + make_interval(secs => $2 / rows_per_sec)
     WHERE run_id = $1 AND rows_per_sec > 0
       AND greatest(coalesce(rate_next, now()), now()) <= now() + make_interval(secs => $3)
     RETURNING extract(epoch FROM (rate_next - make_interval(secs => $2 / rows_per_sec) - now()))::float8";
const RESERVE_ROWS_LITE: &str = "UPDATE backfill_control
     SET rate_next = max(coalesce(rate_next, ((julianday('now') - 2440587.5) * 86400.0)),
                         ((julianday('now') - 2440587.5) * 86400.0)) + $2 / rows_per_sec
     WHERE run_id = $1 AND rows_per_sec > 0
       AND max(coalesce(rate_next, ((julianday('now') - 2440587.5) * 86400.0)),
               ((julianday('now') - 2440587.5) * 86400.0))
           <= ((julianday('now') - 2440587.5) * 86400.0) + $3
     RETURNING rate_next - $2 / rows_per_sec - ((julianday('now') - 2440587.5) * 86400.0)";

/// Reserves the estimated bytes of `$2` rows at the run's bytes per
/// second, unless the start is more than `$3` seconds away; returns the
/// wait in seconds and the bytes reserved.
const RESERVE_BYTES_PG: &str = "UPDATE backfill_control
     SET bytes_next = greatest(coalesce(bytes_next, now()), now())
                      + make_interval(secs => $2 * coalesce(bytes_per_row, 0) / bytes_per_sec)
     WHERE run_id = $1 AND bytes_per_sec > 0
       AND greatest(coalesce(bytes_next, now()), now()) <= now() + make_interval(secs => $3)
     RETURNING extract(epoch FROM (bytes_next - now()))::float8
                 - $2 * coalesce(bytes_per_row, 0) / bytes_per_sec,
               $2 * coalesce(bytes_per_row, 0)";
const RESERVE_BYTES_LITE: &str = "UPDATE backfill_control
     SET bytes_next = max(coalesce(bytes_next, ((julianday('now') - 2440587.5) * 86400.0)),
                          ((julianday('now') - 2440587.5) * 86400.0))
                      + $2 * coalesce(bytes_per_row, 0) / bytes_per_sec
     WHERE run_id = $1 AND bytes_per_sec > 0
       AND max(coalesce(bytes_next, ((julianday('now') - 2440587.5) * 86400.0)),
               ((julianday('now') - 2440587.5) * 86400.0))
           <= ((julianday('now') - 2440587.5) * 86400.0) + $3
     RETURNING bytes_next - $2 * coalesce(bytes_per_row, 0) / bytes_per_sec
                 - ((julianday('now') - 2440587.5) * 86400.0),
               $2 * coalesce(bytes_per_row, 0)";

/// Replaces a shard's reserved bytes (`$3`) with those it wrote (`$4`),
/// from its start (`$5` seconds ago) on at the earliest, and learns the
/// bytes per row (`$2`).
const SETTLE_BYTES_PG: &str = "UPDATE backfill_control
     SET bytes_next = greatest(coalesce(bytes_next, now() - make_interval(secs => $5)),
                               now() - make_interval(secs => $5))
                      + make_interval(secs => ($4 - $3) / bytes_per_sec),
         bytes_per_row = CASE WHEN $2::float8 IS NULL THEN bytes_per_row
                              ELSE coalesce(0.5 * bytes_per_row + 0.5 * $2, $2) END
     WHERE run_id = $1 AND bytes_per_sec > 0";
const SETTLE_BYTES_LITE: &str = "UPDATE backfill_control
     SET bytes_next = max(coalesce(bytes_next, ((julianday('now') - 2440587.5) * 86400.0) - $5),
                          ((julianday('now') - 2440587.5) * 86400.0) - $5)
                      + ($4 - $3) / bytes_per_sec,
         bytes_per_row = CASE WHEN $2 IS NULL THEN bytes_per_row
                              ELSE coalesce(0.5 * bytes_per_row + 0.5 * $2, $2) END
     WHERE run_id = $1 AND bytes_per_sec > 0";

/// A running run and how long it has made no progress.
#[derive(Debug, Clone, PartialEq)]
pub struct QuietRun {
    pub run_id: String,
    pub quiet_seconds: f64,
    /// A stall was already recorded since its last progress.
    pub told: bool,
}

/// How long a claimed shard counts as in flight without finishing; after
/// that a crashed mapper's claim no longer holds a slot.
pub const LEASE: Duration = Duration::from_secs(600);

/// What the operator asked of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlState {
    Run,
    Pause,
    Cancel,
}

impl ControlState {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlState::Run => "run",
            ControlState::Pause => "pause",
            ControlState::Cancel => "cancel",
        }
    }
    pub fn parse(s: &str) -> Result<ControlState, StoreError> {
        match s {
            "run" => Ok(ControlState::Run),
            "pause" => Ok(ControlState::Pause),
            "cancel" => Ok(ControlState::Cancel),
            other => Err(StoreError::Data(format!("unknown run control `{other}`"))),
        }
    }
}

/// A run's steering as mappers read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub control: ControlState,
    pub priority: i32,
    pub rows_per_sec: Option<f64>,
    pub bytes_per_sec: Option<f64>,
    /// PostgreSQL: the server's WAL rate cap (bytes per second).
    pub max_wal_bytes_per_sec: Option<f64>,
    pub max_in_flight: Option<u32>,
    /// A running run of higher priority that still has shards to do: this
    /// run waits for it.
    pub yield_to: Option<String>,
    /// How the run's shard size was chosen (adaptive sizing), if recorded.
    pub shard_sizing: Option<String>,
}

/// A change of throttle settings; `Some(None)` removes a limit.
#[derive(Debug, Clone, Default)]
pub struct ThrottleChange {
    pub rows_per_sec: Option<Option<f64>>,
    pub bytes_per_sec: Option<Option<f64>>,
    pub max_wal_bytes_per_sec: Option<Option<f64>>,
    pub max_in_flight: Option<Option<u32>>,
    pub priority: Option<i32>,
}

impl ThrottleChange {
    pub fn is_empty(&self) -> bool {
        self.rows_per_sec.is_none()
            && self.bytes_per_sec.is_none()
            && self.max_wal_bytes_per_sec.is_none()
            && self.max_in_flight.is_none()
            && self.priority.is_none()
    }
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in [
            ("rows_per_sec", self.rows_per_sec),
            ("bytes_per_sec", self.bytes_per_sec),
            ("max_wal_bytes_per_sec", self.max_wal_bytes_per_sec),
        ] {
            if let Some(r) = v {
                parts.push(match r {
                    Some(r) => format!("{name}={r}"),
                    None => format!("{name}=off"),
                });
            }
        }
        if let Some(m) = self.max_in_flight {
            parts.push(match m {
                Some(m) => format!("max_in_flight={m}"),
                None => "max_in_flight=off".into(),
            });
        }
        if let Some(p) = self.priority {
            parts.push(format!("priority={p}"));
        }
        parts.join(" ")
    }
}

/// The outcome of trying to claim a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the shard now.
    Claimed,
    /// The run's shards-in-flight limit is reached: try again shortly.
    Busy,
    /// The shard is done or dead already (a redelivery): re-send its result.
    Finished,
    /// No such shard.
    Unknown,
}

/// The database health check's verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Health {
    pub ok: bool,
    pub reason: Option<String>,
}

/// A run and what was done to it, for `backfill history`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunHistory {
    pub run_id: String,
    pub job: String,
    pub mode: String,
    pub state: String,
    pub spec_hash: String,
    pub created_at: String,
    /// The job's parameters with the run's values; absent without any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    pub events: Vec<RunEvent>,
}

/// An audit event of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunEvent {
    pub run_id: String,
    pub at: String,
    pub action: String,
    pub operator: String,
    pub detail: Option<String>,
}

impl Store {
    /// Records a run's starting throttle settings (from the spec and the
    /// coordinator's flags) unless it has some already.
    pub async fn init_control(
        &self,
        run_id: &str,
        t: &ThrottleSpec,
        shard_sizing: Option<&str>,
    ) -> Result<(), StoreError> {
        let q = "INSERT INTO backfill_control (run_id, priority, rows_per_sec, max_in_flight, shard_sizing,
                                               bytes_per_sec, max_wal_bytes_per_sec)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING";
        let mif = t.max_in_flight.map(|m| m as i32);
        match &self.backend {
            Backend::Pg(p) => sqlx::query(q)
                .bind(run_id)
                .bind(t.priority)
                .bind(t.rows_per_sec)
                .bind(mif)
                .bind(shard_sizing)
                .bind(t.bytes_per_sec)
                .bind(t.max_wal_bytes_per_sec)
                .execute(p)
                .await
                .map(drop),
            Backend::Lite(p) => sqlx::query(q)
                .bind(run_id)
                .bind(t.priority)
                .bind(t.rows_per_sec)
                .bind(mif)
                .bind(shard_sizing)
                .bind(t.bytes_per_sec)
                .bind(t.max_wal_bytes_per_sec)
                .execute(p)
                .await
                .map(drop),
        }
        .map_err(sql("record the run's throttle"))
    }

    /// Sets pause/resume/cancel and records who did it.
    pub async fn set_control(
        &self,
        run_id: &str,
        control: ControlState,
        operator: &str,
    ) -> Result<(), StoreError> {
        self.require_run(run_id).await?;
        let q = "INSERT INTO backfill_control (run_id, control, updated_by) VALUES ($1, $2, $3)
                 ON CONFLICT (run_id) DO UPDATE SET control = excluded.control, updated_by = excluded.updated_by";
        match &self.backend {
            Backend::Pg(p) => sqlx::query(q)
                .bind(run_id)
                .bind(control.as_str())
                .bind(operator)
                .execute(p)
                .await
                .map(drop),
            Backend::Lite(p) => sqlx::query(q)
                .bind(run_id)
                .bind(control.as_str())
                .bind(operator)
                .execute(p)
                .await
                .map(drop),
        }
        .map_err(sql("set the run's control"))?;
        let action = match control {
            ControlState::Run => "resume",
            ControlState::Pause => "pause",
            ControlState::Cancel => "cancel",
        };
        self.record_event(run_id, action, operator, None).await
    }

    /// Changes a run's throttle while it goes and records who did it.
    pub async fn set_throttle(
        &self,
        run_id: &str,
        change: &ThrottleChange,
        operator: &str,
    ) -> Result<(), StoreError> {
        self.require_run(run_id).await?;
        let spec_default = ThrottleSpec::default();
        self.init_control(run_id, &spec_default, None).await?;
        let mut sets = Vec::new();
        if change.rows_per_sec.is_some() {
            sets.push("rows_per_sec = $2");
        }
        if change.max_in_flight.is_some() {
            sets.push("max_in_flight = $3");
        }
        if change.priority.is_some() {
            sets.push("priority = $4");
        }
        if change.bytes_per_sec.is_some() {
            sets.push("bytes_per_sec = $6");
        }
        if change.max_wal_bytes_per_sec.is_some() {
            sets.push("max_wal_bytes_per_sec = $7");
        }
        if sets.is_empty() {
            return Ok(());
        }
        let q = format!(
            "UPDATE backfill_control SET {}, updated_by = $5 WHERE run_id = $1",
            sets.join(", ")
        );
        let rps = change.rows_per_sec.flatten();
        let mif = change.max_in_flight.flatten().map(|m| m as i32);
        let prio = change.priority.unwrap_or(0);
        let bps = change.bytes_per_sec.flatten();
        let wal = change.max_wal_bytes_per_sec.flatten();
        match &self.backend {
            Backend::Pg(p) => sqlx::query(&q)
                .bind(run_id)
                .bind(rps)
                .bind(mif)
                .bind(prio)
                .bind(operator)
                .bind(bps)
                .bind(wal)
                .execute(p)
                .await
                .map(drop),
            Backend::Lite(p) => sqlx::query(&q)
                .bind(run_id)
                .bind(rps)
                .bind(mif)
                .bind(prio)
                .bind(operator)
                .bind(bps)
                .bind(wal)
                .execute(p)
                .await
                .map(drop),
        }
        .map_err(sql("change the run's throttle"))?;
        self.record_event(run_id, "throttle", operator, Some(&change.describe()))
            .await
    }

    /// The database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Pg(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            Backend::Lite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
        }
        .map_err(sql("ping the database"))
    }

    /// Whether the ledger has the run.
    pub async fn run_exists(&self, run_id: &str) -> Result<bool, StoreError> {
        match self.require_run(run_id).await {
            Ok(()) => Ok(true),
            Err(StoreError::UnknownRun(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn require_run(&self, run_id: &str) -> Result<(), StoreError> {
        let n = self
            .count_of_run(
                "SELECT count(*) FROM backfill_run WHERE run_id = $1",
                run_id,
                "read run",
            )
            .await?;
        if n == 0 {
            return Err(StoreError::UnknownRun(run_id.to_string()));
        }
        Ok(())
    }

    /// Appends an audit event.
    pub async fn record_event(
        &self,
        run_id: &str,
        action: &str,
        operator: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let q =
            "INSERT INTO backfill_event (run_id, action, operator, detail) VALUES ($1, $2, $3, $4)";
        match &self.backend {
            Backend::Pg(p) => sqlx::query(q)
                .bind(run_id)
                .bind(action)
                .bind(operator)
                .bind(detail)
                .execute(p)
                .await
                .map(drop),
            Backend::Lite(p) => sqlx::query(q)
                .bind(run_id)
                .bind(action)
                .bind(operator)
                .bind(detail)
                .execute(p)
                .await
                .map(drop),
        }
        .map_err(sql("record a run event"))
    }

    /// A run's audit events, oldest first.
    pub async fn run_events(&self, run_id: &str) -> Result<Vec<RunEvent>, StoreError> {
        let rows = match &self.backend {
            Backend::Pg(p) => sqlx::query(
                "SELECT run_id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), action, operator, detail
                 FROM backfill_event WHERE run_id = $1 ORDER BY id",
            )
            .bind(run_id)
            .fetch_all(p)
            .await
            .map_err(sql("read run events"))?
            .into_iter()
            .map(|r| RunEvent {
                run_id: r.get(0),
                at: r.get(1),
                action: r.get(2),
                operator: r.get(3),
                detail: r.get(4),
            })
            .collect(),
            Backend::Lite(p) => sqlx::query(
                "SELECT run_id, substr(at, 1, 19) || 'Z', action, operator, detail
                 FROM backfill_event WHERE run_id = ?1 ORDER BY id",
            )
            .bind(run_id)
            .fetch_all(p)
            .await
            .map_err(sql("read run events"))?
            .into_iter()
            .map(|r| RunEvent {
                run_id: r.get(0),
                at: r.get(1),
                action: r.get(2),
                operator: r.get(3),
                detail: r.get(4),
            })
            .collect(),
        };
        Ok(rows)
    }

    /// The most recent runs (of `job`, or all), newest first, with their events.
    pub async fn history(
        &self,
        job: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunHistory>, StoreError> {
        type Row = (String, String, String, String, String, String, String);
        let rows: Vec<Row> = match &self.backend {
            Backend::Pg(p) => {
                sqlx::query_as(HISTORY_PG)
                    .bind(job)
                    .bind(limit)
                    .fetch_all(p)
                    .await
            }
            Backend::Lite(p) => {
                sqlx::query_as(HISTORY_LITE)
                    .bind(job)
                    .bind(limit)
                    .fetch_all(p)
                    .await
            }
        }
        .map_err(sql("read run history"))?;
        let mut out = Vec::with_capacity(rows.len());
        for (run_id, job, mode, state, spec_hash, created_at, spec_text) in rows {
            let events = self.run_events(&run_id).await?;
            // The recorded text holds its values (see `backfill_job::params`).
            let params = backfill_job::params::resolve(&spec_text, &[])
                .map(|(_, p)| p.into_iter().map(|p| (p.name, p.value)).collect())
                .unwrap_or_default();
            out.push(RunHistory {
                params,
                run_id,
                job,
                mode,
                state,
                spec_hash,
                created_at,
                events,
            });
        }
        Ok(out)
    }

    /// Before-images of runs that finished more than `older_than` ago:
    /// (run, rows, bytes) per run. With `delete`, they are deleted (in one
    /// transaction) and each run gets a `prune` event; those runs can no
    /// longer be reverted.
    pub async fn prune_before_images(
        &self,
        older_than: std::time::Duration,
        delete: bool,
        operator: &str,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        let secs = older_than.as_secs_f64();
        let rows: Vec<(String, i64, i64)> = match &self.backend {
            Backend::Pg(p) => {
                let mut tx = p.begin().await.map_err(sql("begin prune"))?;
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT b.run_id, count(*)::int8, coalesce(sum(coalesce(octet_length(b.before), 0) + coalesce(octet_length(b.patch), 0)), 0)::int8
                     FROM backfill_before_image b JOIN backfill_run r ON r.run_id = b.run_id
                     WHERE r.finished_at IS NOT NULL AND r.finished_at < now() - make_interval(secs => $1)
                     GROUP BY b.run_id ORDER BY b.run_id",
                )
                .bind(secs)
                .fetch_all(&mut *tx)
                .await
                .map_err(sql("find before-images to prune"))?;
                if delete && !rows.is_empty() {
                    let ids: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
                    sqlx::query("DELETE FROM backfill_before_image WHERE run_id = ANY($1)")
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await
                        .map_err(sql("prune before-images"))?;
                }
                tx.commit().await.map_err(sql("commit prune"))?;
                rows
            }
            Backend::Lite(p) => {
                let mut tx = p
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(sql("begin prune"))?;
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT b.run_id, count(*), coalesce(sum(coalesce(length(CAST(b.before AS BLOB)), 0) + coalesce(length(CAST(b.patch AS BLOB)), 0)), 0)
                     FROM backfill_before_image b JOIN backfill_run r ON r.run_id = b.run_id
                     WHERE r.finished_at IS NOT NULL
                       AND julianday(r.finished_at) < julianday('now') - ?1 / 86400.0
                     GROUP BY b.run_id ORDER BY b.run_id",
                )
                .bind(secs)
                .fetch_all(&mut *tx)
                .await
                .map_err(sql("find before-images to prune"))?;
                if delete {
                    for r in &rows {
                        sqlx::query("DELETE FROM backfill_before_image WHERE run_id = ?1")
                            .bind(&r.0)
                            .execute(&mut *tx)
                            .await
                            .map_err(sql("prune before-images"))?;
                    }
                }
                tx.commit().await.map_err(sql("commit prune"))?;
                rows
            }
        };
        if delete {
            for (run, n, bytes) in &rows {
                self.record_event(
                    run,
                    "prune",
                    operator,
                    Some(&format!("{n} before-images, {bytes} bytes deleted")),
                )
                .await?;
            }
        }
        Ok(rows)
    }

    /// A run's steering; `defaults` (the spec's throttle) when nothing was
    /// recorded for it.
    pub async fn control(
        &self,
        run_id: &str,
        defaults: &ThrottleSpec,
    ) -> Result<Control, StoreError> {
        // One round trip: the run's row and whether a running run of higher
        // priority still has shards to do.
        let q = "SELECT c.control, c.priority, c.rows_per_sec, c.max_in_flight, c.shard_sizing,
                   c.bytes_per_sec, c.max_wal_bytes_per_sec,
                   (SELECT o.run_id FROM backfill_control o JOIN backfill_run r ON r.run_id = o.run_id
                     WHERE o.run_id <> c.run_id AND o.priority > c.priority AND o.control = 'run'
                       AND r.state = 'running'
                       AND EXISTS (SELECT 1 FROM backfill_shard s WHERE s.run_id = o.run_id AND s.state IN ('pending', 'running'))
                     ORDER BY o.priority DESC LIMIT 1) AS yield_to
                 FROM backfill_control c WHERE c.run_id = $1";
        let row = match &self.backend {
            Backend::Pg(p) => sqlx::query(q)
                .bind(run_id)
                .fetch_optional(p)
                .await
                .map_err(sql("read the run's control"))?
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<i32, _>(1),
                        r.get::<Option<f64>, _>(2),
                        r.get::<Option<i32>, _>(3),
                        r.get::<Option<String>, _>(4),
                        r.get::<Option<String>, _>(7),
                        r.get::<Option<f64>, _>(5),
                        r.get::<Option<f64>, _>(6),
                    )
                }),
            Backend::Lite(p) => sqlx::query(q)
                .bind(run_id)
                .fetch_optional(p)
                .await
                .map_err(sql("read the run's control"))?
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<i64, _>(1) as i32,
                        r.get::<Option<f64>, _>(2),
                        r.get::<Option<i64>, _>(3).map(|v| v as i32),
                        r.get::<Option<String>, _>(4),
                        r.get::<Option<String>, _>(7),
                        r.get::<Option<f64>, _>(5),
                        r.get::<Option<f64>, _>(6),
                    )
                }),
        };
        Ok(match row {
            None => Control {
                control: ControlState::Run,
                priority: defaults.priority,
                rows_per_sec: defaults.rows_per_sec,
                bytes_per_sec: defaults.bytes_per_sec,
                max_wal_bytes_per_sec: defaults.max_wal_bytes_per_sec,
                max_in_flight: defaults.max_in_flight,
                yield_to: None,
                shard_sizing: None,
            },
            Some((control, priority, rps, mif, sizing, yield_to, bps, wal)) => Control {
                control: ControlState::parse(&control)?,
                priority,
                rows_per_sec: rps.filter(|r| *r > 0.0),
                bytes_per_sec: bps.filter(|r| *r > 0.0),
                max_wal_bytes_per_sec: wal.filter(|r| *r > 0.0),
                max_in_flight: mif.filter(|m| *m > 0).map(|m| m as u32),
                yield_to,
                shard_sizing: sizing,
            },
        })
    }

    /// Claims a shard for `worker` (pending → running) unless the run's
    /// shards-in-flight limit is reached. A shard already `running` is taken
    /// over: its task was redelivered, so its previous holder is gone.
    pub async fn claim_shard(
        &self,
        run_id: &str,
        shard_no: u32,
        worker: &str,
        max_in_flight: Option<u32>,
    ) -> Result<Claim, StoreError> {
        match &self.backend {
            Backend::Pg(p) => {
                let mut tx = p.begin().await.map_err(sql("begin shard claim"))?;
                if let Some(max) = max_in_flight {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backfill run ' || $1))")
                        .bind(run_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(sql("lock the run's claims"))?;
                    let n: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM backfill_shard WHERE run_id = $1 AND shard_no <> $2
                           AND state = 'running' AND lease_until > now()",
                    )
                    .bind(run_id)
                    .bind(shard_no as i32)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(sql("count shards in flight"))?;
                    if n >= max as i64 {
                        tx.rollback().await.map_err(sql("end shard claim"))?;
                        return Ok(Claim::Busy);
                    }
                }
                let claimed = sqlx::query(
                    "UPDATE backfill_shard SET state = 'running', worker = $3, started_at = clock_timestamp(),
                            lease_until = clock_timestamp() + make_interval(secs => $4)
                     WHERE run_id = $1 AND shard_no = $2 AND state IN ('pending', 'running')
                     RETURNING shard_no",
                )
                .bind(run_id)
                .bind(shard_no as i32)
                .bind(worker)
                .bind(LEASE.as_secs_f64())
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql("claim shard"))?;
                let outcome = if claimed.is_some() {
                    Claim::Claimed
                } else {
                    let exists: Option<String> = sqlx::query_scalar(
                        "SELECT state FROM backfill_shard WHERE run_id = $1 AND shard_no = $2",
                    )
                    .bind(run_id)
                    .bind(shard_no as i32)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(sql("read shard"))?;
                    if exists.is_some() {
                        Claim::Finished
                    } else {
                        Claim::Unknown
                    }
                };
                tx.commit().await.map_err(sql("commit shard claim"))?;
                Ok(outcome)
            }
            Backend::Lite(p) => {
                // One writer at a time: BEGIN IMMEDIATE serializes claims.
                let mut tx = p
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(sql("begin shard claim"))?;
                if let Some(max) = max_in_flight {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM backfill_shard WHERE run_id = ?1 AND shard_no <> ?2
                           AND state = 'running' AND lease_until > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
                    )
                    .bind(run_id)
                    .bind(shard_no as i64)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(sql("count shards in flight"))?;
                    if n >= max as i64 {
                        tx.rollback().await.map_err(sql("end shard claim"))?;
                        return Ok(Claim::Busy);
                    }
                }
                let claimed = sqlx::query(
                    "UPDATE backfill_shard SET state = 'running', worker = ?3,
                            started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                            lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || ?4 || ' seconds')
                     WHERE run_id = ?1 AND shard_no = ?2 AND state IN ('pending', 'running')
                     RETURNING shard_no",
                )
                .bind(run_id)
                .bind(shard_no as i64)
                .bind(worker)
                .bind(LEASE.as_secs() as i64)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql("claim shard"))?;
                let outcome = if claimed.is_some() {
                    Claim::Claimed
                } else {
                    let exists: Option<String> = sqlx::query_scalar(
                        "SELECT state FROM backfill_shard WHERE run_id = ?1 AND shard_no = ?2",
                    )
                    .bind(run_id)
                    .bind(shard_no as i64)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(sql("read shard"))?;
                    if exists.is_some() {
                        Claim::Finished
                    } else {
                        Claim::Unknown
                    }
                };
                tx.commit().await.map_err(sql("commit shard claim"))?;
                Ok(outcome)
            }
        }
    }

    /// Reserves `rows` of the run's rows-per-second budget, shared by every
    /// mapper. Returns how long to wait before starting, or `None` when the
    /// start would be more than `horizon` away (nothing is reserved then: ask
    /// again later, so a pause is seen meanwhile). Without a limit, no wait.
    pub async fn reserve_rows(
        &self,
        run_id: &str,
        rows: u32,
        horizon: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let wait: Option<Option<f64>> = match &self.backend {
            Backend::Pg(p) => sqlx::query_scalar(RESERVE_ROWS_PG)
                .bind(run_id)
                .bind(rows as f64)
                .bind(horizon.as_secs_f64())
                .fetch_optional(p)
                .await
                .map_err(sql("reserve rows"))?,
            Backend::Lite(p) => {
                let mut tx = p
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(sql("begin rows reservation"))?;
                let w: Option<Option<f64>> = sqlx::query_scalar(RESERVE_ROWS_LITE)
                    .bind(run_id)
                    .bind(rows as f64)
                    .bind(horizon.as_secs_f64())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(sql("reserve rows"))?;
                tx.commit().await.map_err(sql("commit rows reservation"))?;
                w
            }
        };
        match wait {
            Some(w) => Ok(Some(Duration::from_secs_f64(w.unwrap_or(0.0).max(0.0)))),
            None => {
                // No row updated: either no limit (go now) or too far ahead.
                let limited = self.control(run_id, &ThrottleSpec::default()).await?;
                Ok(match limited.rows_per_sec {
                    None => Some(Duration::ZERO),
                    Some(_) => None,
                })
            }
        }
    }

    /// Reserves the estimated bytes of a shard of `rows` rows from the run's
    /// bytes-per-second budget, shared by every mapper: the estimate is the
    /// run's measured bytes per row so far (nothing before its first shard
    /// is settled), and [`Store::settle_bytes`] corrects it with the bytes
    /// the shard wrote. Returns how long to wait and the bytes reserved, or
    /// `None` when the start would be more than `horizon` away (nothing is
    /// reserved then). Without a limit: no wait, nothing reserved.
    pub async fn reserve_bytes(
        &self,
        run_id: &str,
        rows: u32,
        horizon: Duration,
    ) -> Result<Option<(Duration, f64)>, StoreError> {
        let got: Option<(Option<f64>, Option<f64>)> = match &self.backend {
            Backend::Pg(p) => sqlx::query_as(RESERVE_BYTES_PG)
                .bind(run_id)
                .bind(rows as f64)
                .bind(horizon.as_secs_f64())
                .fetch_optional(p)
                .await
                .map_err(sql("reserve bytes"))?,
            Backend::Lite(p) => {
                let mut tx = p
                    .begin_with("BEGIN IMMEDIATE")
                    .await
                    .map_err(sql("begin bytes reservation"))?;
                let w: Option<(Option<f64>, Option<f64>)> = sqlx::query_as(RESERVE_BYTES_LITE)
                    .bind(run_id)
                    .bind(rows as f64)
                    .bind(horizon.as_secs_f64())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(sql("reserve bytes"))?;
                tx.commit().await.map_err(sql("commit bytes reservation"))?;
                w
            }
        };
        match got {
            Some((w, est)) => Ok(Some((
                Duration::from_secs_f64(w.unwrap_or(0.0).max(0.0)),
                est.unwrap_or(0.0).max(0.0),
            ))),
            None => {
                let limited = self.control(run_id, &ThrottleSpec::default()).await?;
                Ok(match limited.bytes_per_sec {
                    None => Some((Duration::ZERO, 0.0)),
                    Some(_) => None,
                })
            }
        }
    }

    /// After a shard of `rows` rows that started `elapsed` ago: replaces
    /// the `reserved` estimate in the run's bytes-per-second schedule with
    /// the `written` bytes, and learns the run's bytes per row from them.
    /// Nothing happens without a limit.
    pub async fn settle_bytes(
        &self,
        run_id: &str,
        rows: u32,
        reserved: f64,
        written: u64,
        elapsed: Duration,
    ) -> Result<(), StoreError> {
        // From the shard's start on at the earliest, so that bytes written
        // by a shard that started on an idle schedule are not forgiven.
        let per_row = (rows > 0).then(|| written as f64 / rows as f64);
        match &self.backend {
            Backend::Pg(p) => sqlx::query(SETTLE_BYTES_PG)
                .bind(run_id)
                .bind(per_row)
                .bind(reserved)
                .bind(written as f64)
                .bind(elapsed.as_secs_f64())
                .execute(p)
                .await
                .map(drop),
            Backend::Lite(p) => sqlx::query(SETTLE_BYTES_LITE)
                .bind(run_id)
                .bind(per_row)
                .bind(reserved)
                .bind(written as f64)
                .bind(elapsed.as_secs_f64())
                .execute(p)
                .await
                .map(drop),
        }
        .map_err(sql("settle the shard's bytes"))
    }

    /// The run's WAL rate cap: samples the server's WAL position and
    /// returns how long to wait before starting a shard (zero: go now), or
    /// `None` when the run has no cap or the back end has no WAL (SQLite).
    ///
    /// The cap is a token bucket in bytes kept in the run's control row and
    /// shared by every mapper: each sample adds `cap × seconds` since the
    /// previous sample and takes away the WAL the server wrote meanwhile
    /// (`pg_wal_lsn_diff` of the two `pg_current_wal_lsn()`), holding at
    /// most `burst` seconds of the cap. A shard may start while the bucket
    /// is not in debt. The server's WAL counts whoever writes it, so the
    /// run keeps the whole server at the cap: other writers' WAL slows it,
    /// and their bursts are paid back by holding the run longer — up to
    /// [`WAL_WINDOW`] of the cap: older excess is forgiven, so a burst of
    /// another writer long ago does not hold the run now.
    pub async fn wal_wait(
        &self,
        run_id: &str,
        burst: Duration,
    ) -> Result<Option<Duration>, StoreError> {
        let Backend::Pg(p) = &self.backend else {
            return Ok(None);
        };
        let got: Option<(f64, f64)> = sqlx::query_as(
            "UPDATE backfill_control
             SET wal_tokens = CASE WHEN wal_lsn IS NULL OR wal_at IS NULL THEN 0
                   ELSE greatest(-max_wal_bytes_per_sec * $3, least(max_wal_bytes_per_sec * $2,
                              coalesce(wal_tokens, 0)
                              + max_wal_bytes_per_sec * extract(epoch FROM clock_timestamp() - wal_at)
                              - pg_wal_lsn_diff(pg_current_wal_lsn(), wal_lsn))) END,
                 wal_lsn = pg_current_wal_lsn(),
                 wal_at = clock_timestamp()
             WHERE run_id = $1 AND max_wal_bytes_per_sec > 0
               AND (wal_at IS NULL OR wal_at <= clock_timestamp())
             RETURNING wal_tokens::float8, max_wal_bytes_per_sec",
        )
        .bind(run_id)
        .bind(burst.as_secs_f64())
        .bind(WAL_WINDOW.as_secs_f64())
        .fetch_optional(p)
        .await
        .map_err(sql("sample the WAL position"))?;
        Ok(got.map(|(tokens, cap)| wal_debt_wait(tokens, cap)))
    }

    /// Evaluates the database health check of a job: replication lag and
    /// active backends on PostgreSQL, then the job's own SQL.
    pub async fn health(&self, spec: &HealthSpec) -> Result<Health, StoreError> {
        if let Backend::Pg(p) = &self.backend {
            if spec.max_replication_lag_seconds > 0.0 || spec.max_replication_lag_bytes > 0 {
                // The largest lag of any standby, in time and in bytes of
                // WAL not yet replayed; no standby: no rows, no lag.
                let (secs, bytes): (Option<f64>, Option<f64>) = sqlx::query_as(
                    "SELECT max(extract(epoch FROM coalesce(replay_lag, interval '0')))::float8,
                            max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::float8
                     FROM pg_stat_replication",
                )
                .fetch_one(p)
                .await
                .map_err(sql("read replication lag"))?;
                if let Some(reason) = replication_verdict(spec, secs, bytes) {
                    return Ok(Health {
                        ok: false,
                        reason: Some(reason),
                    });
                }
            }
            if spec.max_active_backends > 0 {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND backend_type = 'client backend'",
                )
                .fetch_one(p)
                .await
                .map_err(sql("count active backends"))?;
                if n > spec.max_active_backends as i64 {
                    return Ok(Health {
                        ok: false,
                        reason: Some(format!(
                            "{n} active backends, over {}",
                            spec.max_active_backends
                        )),
                    });
                }
            }
        }
        if let Some(text) = &spec.sql {
            let q = text.for_dialect("health.sql", self.dialect())?;
            let ok: Option<bool> = match &self.backend {
                Backend::Pg(p) => sqlx::query_scalar(q).fetch_optional(p).await,
                Backend::Lite(p) => sqlx::query_scalar(q).fetch_optional(p).await,
            }
            .map_err(sql("run the job's health check (health.sql)"))?;
            if ok != Some(true) {
                return Ok(Health {
                    ok: false,
                    reason: Some("the job's health check (health.sql) did not return true".into()),
                });
            }
        }
        Ok(Health {
            ok: true,
            reason: None,
        })
    }

    /// A worker's heartbeat: it is alive, working on `run_id`, and has
    /// finished `shards_done` shards since it started.
    pub async fn heartbeat(
        &self,
        worker: &str,
        role: &str,
        run_id: Option<&str>,
        shards_done: u64,
    ) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Pg(p) => sqlx::query(HEARTBEAT_PG)
                .bind(worker)
                .bind(role)
                .bind(run_id)
                .bind(shards_done as i64)
                .execute(p)
                .await
                .map(drop),
            Backend::Lite(p) => sqlx::query(HEARTBEAT_LITE)
                .bind(worker)
                .bind(role)
                .bind(run_id)
                .bind(shards_done as i64)
                .execute(p)
                .await
                .map(drop),
        }
        .map_err(sql("record heartbeat"))
    }

    /// Ends a run the operator cancelled: state `cancelled`, the summary of
    /// what was done. Shards still in hand may finish afterwards; the reducer
    /// folds them and [`Store::refresh_cancelled_summary`] keeps the summary true.
    /// Returns false when the run had already finished.
    pub async fn finish_cancelled(&self, run_id: &str) -> Result<bool, StoreError> {
        let Some(rec) = self.load_run(run_id).await? else {
            return Err(StoreError::UnknownRun(run_id.to_string()));
        };
        if rec.state.is_finished() {
            return Ok(false);
        }
        let mut view = rec.view();
        view.cancelled = Some(rec.shards_reduced);
        view.state = RunState::Cancelled;
        let summary = summary_line(&view);
        let n = match &self.backend {
            Backend::Pg(p) => sqlx::query(FINISH_CANCELLED_PG)
                .bind(run_id)
                .bind(&summary)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            Backend::Lite(p) => sqlx::query(FINISH_CANCELLED_LITE)
                .bind(run_id)
                .bind(&summary)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(sql("mark the run cancelled"))?;
        Ok(n > 0)
    }

    /// After a late shard of a cancelled run was folded: the summary again.
    pub async fn refresh_cancelled_summary(&self, run_id: &str) -> Result<(), StoreError> {
        let q = "SELECT state FROM backfill_run WHERE run_id = $1";
        let state: Option<String> = match &self.backend {
            Backend::Pg(p) => sqlx::query_scalar(q).bind(run_id).fetch_optional(p).await,
            Backend::Lite(p) => sqlx::query_scalar(q).bind(run_id).fetch_optional(p).await,
        }
        .map_err(sql("read run state"))?;
        if state.as_deref() != Some("cancelled") {
            return Ok(());
        }
        let Some(rec) = self.load_run(run_id).await? else {
            return Ok(());
        };
        if rec.state != RunState::Cancelled {
            return Ok(());
        }
        let summary = summary_line(&rec.view());
        let q = "UPDATE backfill_run SET summary = $2 WHERE run_id = $1 AND state = 'cancelled'";
        match &self.backend {
            Backend::Pg(p) => sqlx::query(q)
                .bind(run_id)
                .bind(&summary)
                .execute(p)
                .await
                .map(drop),
            Backend::Lite(p) => sqlx::query(q)
                .bind(run_id)
                .bind(&summary)
                .execute(p)
                .await
                .map(drop),
        }
        .map_err(sql("update the cancelled run's summary"))
    }

    /// Records the run windows given on the command line for a run, which
    /// replace its spec's `[schedule]`.
    pub async fn set_run_schedule(
        &self,
        run_id: &str,
        schedule: &backfill_job::schedule::Schedule,
    ) -> Result<(), StoreError> {
        let text = serde_json::json!({
            "windows": schedule.windows.iter().map(|w| w.text()).collect::<Vec<_>>(),
            "time_zone": schedule.time_zone,
        })
        .to_string();
        let q = "UPDATE backfill_run SET schedule = $2 WHERE run_id = $1";
        match &self.backend {
            Backend::Pg(p) => sqlx::query(q)
                .bind(run_id)
                .bind(text)
                .execute(p)
                .await
                .map(drop),
            Backend::Lite(p) => sqlx::query(q)
                .bind(run_id)
                .bind(text)
                .execute(p)
                .await
                .map(drop),
        }
        .map_err(sql("record the run's windows"))
    }

    /// The windows a run keeps to: those given on the command line when it
    /// was started, else its spec's `[schedule]`; `None` when it has none.
    pub async fn run_schedule(
        &self,
        rec: &crate::RunRecord,
    ) -> Result<Option<backfill_job::schedule::Schedule>, StoreError> {
        let q = "SELECT schedule FROM backfill_run WHERE run_id = $1";
        let stored: Option<Option<String>> = match &self.backend {
            Backend::Pg(p) => {
                sqlx::query_scalar(q)
                    .bind(&rec.run_id)
                    .fetch_optional(p)
                    .await
            }
            Backend::Lite(p) => {
                sqlx::query_scalar(q)
                    .bind(&rec.run_id)
                    .fetch_optional(p)
                    .await
            }
        }
        .map_err(sql("read the run's windows"))?;
        let Some(text) = stored.flatten() else {
            return Ok(rec.spec.schedule.clone());
        };
        #[derive(serde::Deserialize)]
        struct Stored {
            windows: Vec<String>,
            time_zone: String,
        }
        let s: Stored = serde_json::from_str(&text).map_err(|e| {
            StoreError::Data(format!(
                "run {}: its windows cannot be read: {e}",
                rec.run_id
            ))
        })?;
        backfill_job::schedule::Schedule::new(&s.windows, &s.time_zone)
            .map(Some)
            .map_err(|(_, e)| StoreError::Data(format!("run {}: its windows: {e}", rec.run_id)))
    }

    /// Running runs that are not paused, each with the seconds since its
    /// last sign of progress (a shard finished, the run planned, or its
    /// control changed, whichever is latest) and whether a stall has been
    /// recorded since then. PostgreSQL only: on SQLite the run is one
    /// process that reports itself.
    pub async fn quiet_runs(&self) -> Result<Vec<QuietRun>, StoreError> {
        let Backend::Pg(p) = &self.backend else {
            return Ok(Vec::new());
        };
        let rows: Vec<(String, f64, bool)> = sqlx::query_as(
            "WITH last AS (
                 SELECT r.run_id,
                        GREATEST(r.created_at,
                                 coalesce(max(s.finished_at), r.created_at),
                                 coalesce(max(c.updated_at), r.created_at)) AS at
                 FROM backfill_run r
                 LEFT JOIN backfill_shard s ON s.run_id = r.run_id
                 LEFT JOIN backfill_control c ON c.run_id = r.run_id
                 WHERE r.state = 'running'
                   AND NOT EXISTS (SELECT 1 FROM backfill_control p
                                   WHERE p.run_id = r.run_id AND p.control <> 'run')
                 GROUP BY r.run_id, r.created_at)
             SELECT l.run_id, EXTRACT(EPOCH FROM now() - l.at)::float8,
                    EXISTS (SELECT 1 FROM backfill_event e
                            WHERE e.run_id = l.run_id AND e.action = 'stalled' AND e.at >= l.at)
             FROM last l",
        )
        .fetch_all(p)
        .await
        .map_err(sql("find runs with no recent progress"))?;
        Ok(rows
            .into_iter()
            .map(|(run_id, quiet_seconds, told)| QuietRun {
                run_id,
                quiet_seconds,
                told,
            })
            .collect())
    }

    /// Shards of the run being worked on now.
    pub async fn shards_running(&self, run_id: &str) -> Result<u32, StoreError> {
        let n = self
            .count_of_run(
                "SELECT count(*) FROM backfill_shard WHERE run_id = $1 AND state = 'running'",
                run_id,
                "count running shards",
            )
            .await?;
        Ok(n.min(u32::MAX as u64) as u32)
    }

    /// Measured cost of the job's most recent finished run with timed
    /// shards: (its largest planned shard size, milliseconds per row), for
    /// adaptive shard sizing. Same mode preferred.
    pub async fn measured_shard_cost(
        &self,
        job: &str,
        mode: &str,
    ) -> Result<Option<(String, u32, f64)>, StoreError> {
        let q = "SELECT r.run_id, max(s.rows), sum(s.elapsed_ms), sum(s.rows)
                 FROM backfill_run r JOIN backfill_shard s ON s.run_id = r.run_id
                 WHERE r.job_name = $1 AND r.state IN ('done', 'failed') AND s.elapsed_ms IS NOT NULL AND s.state = 'done'
                 GROUP BY r.run_id, r.created_at, r.mode
                 ORDER BY (r.mode = $2) DESC, r.created_at DESC LIMIT 1";
        let row = match &self.backend {
            Backend::Pg(p) => sqlx::query(q)
                .bind(job)
                .bind(mode)
                .fetch_optional(p)
                .await
                .map_err(sql("read measured shard durations"))?
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<Option<i32>, _>(1).unwrap_or(0) as i64,
                        r.get::<Option<i64>, _>(2).unwrap_or(0),
                        r.get::<Option<i64>, _>(3).unwrap_or(0),
                    )
                }),
            Backend::Lite(p) => sqlx::query(q)
                .bind(job)
                .bind(mode)
                .fetch_optional(p)
                .await
                .map_err(sql("read measured shard durations"))?
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<Option<i64>, _>(1).unwrap_or(0),
                        r.get::<Option<i64>, _>(2).unwrap_or(0),
                        r.get::<Option<i64>, _>(3).unwrap_or(0),
                    )
                }),
        };
        Ok(row.and_then(|(run, size, ms, rows)| {
            (rows > 0 && size > 0).then(|| (run, size as u32, ms as f64 / rows as f64))
        }))
    }
}

/// The window over which the WAL rate cap holds: the WAL budget's debt is
/// at most this many seconds of the cap.
pub const WAL_WINDOW: Duration = Duration::from_secs(60);

/// How long a bucket holding `tokens` bytes (negative: in debt) takes to be
/// out of debt at `cap` bytes per second.
pub fn wal_debt_wait(tokens: f64, cap: f64) -> Duration {
    if tokens >= 0.0 || cap.is_nan() || cap <= 0.0 || !tokens.is_finite() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64((-tokens / cap).min(3600.0))
}

/// Why the standbys are too far behind, if they are: the largest replay lag
/// in seconds and in bytes (`None`: no standby) against the job's limits
/// (`0` turns a limit off).
pub fn replication_verdict(
    spec: &HealthSpec,
    lag_seconds: Option<f64>,
    lag_bytes: Option<f64>,
) -> Option<String> {
    if spec.max_replication_lag_seconds > 0.0 {
        if let Some(lag) = lag_seconds.filter(|l| *l > spec.max_replication_lag_seconds) {
            return Some(format!(
                "replication lag {lag:.1} s is over {} s",
                spec.max_replication_lag_seconds
            ));
        }
    }
    if spec.max_replication_lag_bytes > 0 {
        if let Some(lag) = lag_bytes.filter(|l| *l > spec.max_replication_lag_bytes as f64) {
            return Some(format!(
                "replication lag {lag:.0} bytes of WAL is over {} bytes",
                spec.max_replication_lag_bytes
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(secs: f64, bytes: u64) -> HealthSpec {
        HealthSpec {
            max_replication_lag_seconds: secs,
            max_replication_lag_bytes: bytes,
            ..HealthSpec::default()
        }
    }

    #[test]
    fn replication_lag_in_bytes_beside_seconds() {
        // No standby: healthy whatever the limits.
        assert_eq!(replication_verdict(&spec(30.0, 1_000), None, None), None);
        // Under both limits.
        assert_eq!(
            replication_verdict(&spec(30.0, 1_000), Some(2.0), Some(999.0)),
            None
        );
        // At the limit is still healthy.
        assert_eq!(
            replication_verdict(&spec(30.0, 1_000), Some(30.0), Some(1_000.0)),
            None
        );
        let r = replication_verdict(&spec(30.0, 1_000), Some(1.0), Some(4_096.0)).unwrap();
        assert!(
            r.contains("4096 bytes") && r.contains("over 1000 bytes"),
            "{r}"
        );
        let r = replication_verdict(&spec(30.0, 1_000), Some(31.5), Some(10.0)).unwrap();
        assert!(r.contains("31.5 s"), "{r}");
        // 0 turns a check off.
        assert_eq!(
            replication_verdict(&spec(30.0, 0), Some(1.0), Some(1e12)),
            None
        );
        assert_eq!(
            replication_verdict(&spec(0.0, 1_000), Some(1e6), Some(10.0)),
            None
        );
        assert!(replication_verdict(&spec(0.0, 1_000), Some(1e6), Some(1e6)).is_some());
    }

    #[test]
    fn a_wal_bucket_in_debt_waits_until_the_cap_has_paid_it() {
        assert_eq!(wal_debt_wait(10.0, 1_000.0), Duration::ZERO);
        assert_eq!(wal_debt_wait(0.0, 1_000.0), Duration::ZERO);
        assert_eq!(wal_debt_wait(-500.0, 1_000.0), Duration::from_millis(500));
        assert_eq!(wal_debt_wait(-500.0, 0.0), Duration::ZERO);
        assert_eq!(wal_debt_wait(f64::NEG_INFINITY, 1.0), Duration::ZERO);
        assert_eq!(wal_debt_wait(-1e12, 1.0), Duration::from_secs(3600));
    }
}
