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

use std::time::Duration;

use crate::backend::Capability;
use crate::db::dispatch;

use crate::{sql, Store, StoreError};

pub use crate::model::steer::*;

impl Store {
    /// Records a run's starting throttle settings (from the spec and the
    /// coordinator's flags) unless it has some already.
    pub async fn init_control(
        &self,
        run_id: &str,
        t: &ThrottleSpec,
        shard_sizing: Option<&str>,
    ) -> Result<(), StoreError> {
        dispatch!(self, init_control(run_id, t, shard_sizing))
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
        dispatch!(self, set_control(run_id, control.as_str(), operator))
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
        dispatch!(self, update_throttle(&q, run_id, change, operator))
            .map_err(sql("change the run's throttle"))?;
        self.record_event(run_id, "throttle", operator, Some(&change.describe()))
            .await
    }

    /// The database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, ping()).map_err(sql("ping the database"))
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
        dispatch!(self, record_event(run_id, action, operator, detail))
            .map_err(sql("record a run event"))
    }

    /// A run's audit events, oldest first.
    pub async fn run_events(&self, run_id: &str) -> Result<Vec<RunEvent>, StoreError> {
        Ok(dispatch!(self, run_events(run_id))
            .map_err(sql("read run events"))?
            .into_iter()
            .map(|(run_id, at, action, operator, detail)| RunEvent {
                run_id,
                at,
                action,
                operator,
                detail,
            })
            .collect())
    }

    /// The most recent runs (of `job`, or all), newest first, with their events.
    pub async fn history(
        &self,
        job: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunHistory>, StoreError> {
        let rows: Vec<HistoryRow> =
            dispatch!(self, history(job, limit)).map_err(sql("read run history"))?;
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
        let rows: Vec<(String, i64, i64)> = dispatch!(self, prune_before_images(secs, delete))?;
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
        let row = dispatch!(self, control(run_id)).map_err(sql("read the run's control"))?;
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
        dispatch!(self, claim_shard(run_id, shard_no, worker, max_in_flight))
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
        let wait: Option<Option<f64>> = dispatch!(
            self,
            reserve_rows(run_id, rows as f64, horizon.as_secs_f64())
        )?;
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
        let got: Option<(Option<f64>, Option<f64>)> = dispatch!(
            self,
            reserve_bytes(run_id, rows as f64, horizon.as_secs_f64())
        )?;
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
        dispatch!(
            self,
            settle_bytes(
                run_id,
                per_row,
                reserved,
                written as f64,
                elapsed.as_secs_f64()
            )
        )
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
        let sample = dispatch!(
            self,
            wal_sample(run_id, burst.as_secs_f64(), WAL_WINDOW.as_secs_f64())
        )
        .map_err(sql("sample the WAL position"))?;
        Ok(match sample {
            Capability::Has(got) => got.map(|(tokens, cap)| wal_debt_wait(tokens, cap)),
            Capability::Lacks(_) => None,
        })
    }

    /// Evaluates the database health check of a job: replication lag and
    /// active backends on PostgreSQL, then the job's own SQL.
    pub async fn health(&self, spec: &HealthSpec) -> Result<Health, StoreError> {
        if spec.max_replication_lag_seconds > 0.0 || spec.max_replication_lag_bytes > 0 {
            let lag = dispatch!(self, replication_lag()).map_err(sql("read replication lag"))?;
            if let Capability::Has((secs, bytes)) = lag {
                if let Some(reason) = replication_verdict(spec, secs, bytes) {
                    return Ok(Health {
                        ok: false,
                        reason: Some(reason),
                    });
                }
            }
        }
        if spec.max_active_backends > 0 {
            let active =
                dispatch!(self, active_backends()).map_err(sql("count active backends"))?;
            if let Capability::Has(n) = active {
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
            let ok: Option<bool> = dispatch!(self, health_sql(q))
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
        dispatch!(self, heartbeat(worker, role, run_id, shards_done as i64))
            .map_err(sql("record heartbeat"))
    }

    /// Ends a run the operator cancelled: state `cancelled`, the summary of
    /// what was done. Shards still in hand may finish afterwards; the reducer
    /// folds them and [`Store::refresh_cancelled_summary`] keeps the summary true.
    /// Returns false when the run had already finished.
    pub async fn finish_cancelled(&self, run_id: &str) -> Result<bool, StoreError> {
        let Some(rec) = self.load_run_plan(run_id).await? else {
            return Err(StoreError::UnknownRun(run_id.to_string()));
        };
        if rec.state.is_finished() {
            return Ok(false);
        }
        let mut view = rec.view();
        view.cancelled = Some(rec.shards_reduced);
        view.state = RunState::Cancelled;
        let summary = summary_line(&view);
        let n = dispatch!(self, finish_cancelled(run_id, &summary))
            .map_err(sql("mark the run cancelled"))?;
        Ok(n > 0)
    }

    /// After a late shard of a cancelled run was folded: the summary again.
    pub async fn refresh_cancelled_summary(&self, run_id: &str) -> Result<(), StoreError> {
        let state: Option<String> =
            dispatch!(self, run_state(run_id)).map_err(sql("read run state"))?;
        if state.as_deref() != Some("cancelled") {
            return Ok(());
        }
        let Some(rec) = self.load_run_plan(run_id).await? else {
            return Ok(());
        };
        if rec.state != RunState::Cancelled {
            return Ok(());
        }
        let summary = summary_line(&rec.view());
        dispatch!(self, set_cancelled_summary(run_id, &summary))
            .map_err(sql("update the cancelled run's summary"))
    }

    /// The windows a run keeps to: those given on the command line when it
    /// was started, else its spec's `[schedule]`; `None` when it has none.
    pub async fn run_schedule(
        &self,
        rec: &crate::RunRecord,
    ) -> Result<Option<backfill_job::schedule::Schedule>, StoreError> {
        let stored: Option<Option<String>> =
            dispatch!(self, run_schedule(&rec.run_id)).map_err(sql("read the run's windows"))?;
        let Some(text) = stored.flatten() else {
            return Ok(rec.spec.schedule.clone());
        };
        backfill_job::schedule::Schedule::from_ledger_text(&text)
            .map(Some)
            .map_err(|e| StoreError::Data(format!("run {}: {e}", rec.run_id)))
    }

    /// Running runs that are not paused, each with the seconds since its
    /// last sign of progress (a shard finished, the run planned, or its
    /// control changed, whichever is latest) and whether a stall has been
    /// recorded since then. PostgreSQL only: on SQLite the run is one
    /// process that reports itself.
    pub async fn quiet_runs(&self) -> Result<Vec<QuietRun>, StoreError> {
        let rows: Vec<(String, f64, bool)> = match dispatch!(self, quiet_runs())
            .map_err(sql("find runs with no recent progress"))?
        {
            Capability::Has(rows) => rows,
            Capability::Lacks(_) => return Ok(Vec::new()),
        };
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
        let row = dispatch!(self, measured_shard_cost(job, mode))
            .map_err(sql("read measured shard durations"))?;
        Ok(row.and_then(|(run, size, ms, rows)| {
            (rows > 0 && size > 0).then(|| (run, size as u32, ms as f64 / rows as f64))
        }))
    }
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
