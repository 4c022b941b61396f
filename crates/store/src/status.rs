//! What an operator watches: a run's progress document (the one `backfill
//! status --json`, the dashboard and its API share), the shard grid and the
//! throughput over time — all read from the ledger, so any number of
//! watchers on any host see the same thing and nothing is kept in memory.
//!
//! The JSON shapes here are a documented, stable contract (README, "Watching
//! and steering a production run"): fields are added, never renamed.

use crate::db::dispatch;

use crate::eta::{EtaBasis, EtaInput, EtaShard};

use crate::steer::Health;

use crate::{sql, Store, StoreError};

use serde::Serialize;

pub(crate) use crate::model::status::*;

/// A run's progress, as `status --json` prints it and `/api/runs/{id}` serves it.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    pub run_id: String,
    pub job: String,
    pub mode: String,
    pub scope: String,
    /// `running`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// What the operator asked: `run`, `pause` or `cancel`.
    pub control: String,
    pub priority: i32,
    pub throttle: ThrottleStatus,
    /// The database health check, evaluated now for a running run.
    pub health: Option<Health>,
    /// A running run of higher priority this run waits for.
    pub waiting_for: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub elapsed_seconds: f64,
    pub shards: ShardCounts,
    pub shard_size: ShardSize,
    pub rows: RowCounts,
    /// Rows of finished shards per second since the first shard started.
    pub rows_per_sec: f64,
    /// Seconds until the last shard is folded, from recent throughput (see
    /// [`crate::eta`]); `null` when finished, paused or unknown.
    pub eta_seconds: Option<f64>,
    /// Which bound gave `eta_seconds`: `mappers` (rows left over the recent
    /// rate), `reducer` (shards not folded over the recent fold rate) or
    /// `throttle` (rows left over the rows-per-second limit).
    pub eta_basis: Option<EtaBasis>,
    /// Rows of finished shards per second, exponentially weighted (half-life
    /// [`crate::eta::HALF_LIFE_SECONDS`] or more).
    pub rows_per_sec_recent: f64,
    /// Shards folded by a reducer per second, weighted the same way.
    pub shards_reduced_per_sec_recent: f64,
    pub workers: Vec<WorkerStatus>,
    pub dead_shards: Vec<DeadShard>,
    pub summary: Option<String>,
    /// For a revert: the run whose writes it restores.
    pub revert_of: Option<String>,
    /// For a sampled dry run: the share of rows it reads (0–1].
    pub sample: Option<f64>,
    /// Shards its coordinator has not (yet) sent to the queue.
    pub unpublished: u64,
    /// A running run whose coordinator stopped before publishing every
    /// shard: nothing more happens to it until it is resumed (`resume`
    /// says how). `false` when a coordinator is still publishing, when all
    /// shards went out, and on SQLite (one process: nothing to tell).
    pub orphaned: bool,
    /// For an orphaned run: the command that carries it on.
    pub resume: Option<String>,
    /// The run is still being planned: its shards are published as they
    /// are recorded, `shards.total` counts those recorded so far, and there
    /// is no ETA yet. Orphaned too when its coordinator stopped meanwhile
    /// (the same command, or `resume`, plans the rest).
    pub planning: bool,
    /// Rows per target whose rules the database applied itself, of the
    /// rows processed so far; a target not named here had every row read
    /// and rewritten by the mappers.
    pub pushed_down: std::collections::BTreeMap<String, u64>,
    /// The run windows it keeps to, and where it stands against them now
    /// (while running); `null` for a run without windows.
    pub window: Option<WindowStatus>,
    /// The job's parameters (`[params]`) with the values the run uses;
    /// absent for a job without parameters.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
}

/// A run's windows (`[schedule]` or `--window`) and where it stands.
#[derive(Debug, Clone, Serialize)]
pub struct WindowStatus {
    /// The windows and their time zone, as one line.
    pub schedule: String,
    /// Inside a window now (always `false` once the run has ended).
    pub open: bool,
    pub opens_in_seconds: Option<f64>,
    pub closes_in_seconds: Option<f64>,
    /// `waiting for window, opens in 3 h 12 min` while a running run waits.
    pub waiting: Option<String>,
}

impl WindowStatus {
    /// The status of `schedule` now, for a run that is `running` or not.
    pub fn of(schedule: &backfill_job::schedule::Schedule, running: bool) -> WindowStatus {
        use backfill_job::schedule::WindowState;
        let st = schedule.state_now();
        let (opens, closes) = match st {
            WindowState::Open { closes_in } => (None, Some(closes_in.as_secs_f64())),
            WindowState::Closed { opens_in } => (opens_in.map(|d| d.as_secs_f64()), None),
        };
        WindowStatus {
            schedule: schedule.describe(),
            open: running && st.is_open(),
            opens_in_seconds: opens.filter(|_| running),
            closes_in_seconds: closes.filter(|_| running),
            waiting: st.waiting().filter(|_| running),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ThrottleStatus {
    pub rows_per_sec: Option<f64>,
    pub max_in_flight: Option<u32>,
    /// Bytes of rewritten documents per second across all mappers.
    pub bytes_per_sec: Option<f64>,
    /// PostgreSQL: the server's WAL write rate cap, bytes per second.
    pub max_wal_bytes_per_sec: Option<f64>,
}

/// Shards by state. `failed` are pending shards whose last attempt failed
/// (they will be tried again); `dead` were given up (dead-lettered).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ShardCounts {
    pub total: u64,
    pub pending: u64,
    pub running: u64,
    pub done: u64,
    pub failed: u64,
    pub dead: u64,
    /// Folded into the run's counts by a reducer.
    pub reduced: u64,
}

/// The sizes the run's shards were cut at, and how that size was chosen.
#[derive(Debug, Clone, Serialize)]
pub struct ShardSize {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
    /// Adaptive sizing's decision, when the spec asked for it.
    pub chosen_by: Option<String>,
}

/// Row counts: `planned` from the plan; the others folded from shard results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RowCounts {
    pub planned: u64,
    pub processed: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub conflicts: u64,
    pub errors: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub name: String,
    /// Shards of this run the worker committed.
    pub shards_done: u64,
    /// Its last sign of life: a heartbeat or a shard it finished.
    pub last_seen: Option<String>,
    pub age_seconds: Option<f64>,
    /// No sign of life for more than [`WORKER_STALE_SECONDS`]: the worker
    /// was killed, hangs or lost the database. `false` when nothing was
    /// ever seen of it.
    pub stale: bool,
}

/// A worker silent for longer than this is stale: six of a mapper's
/// heartbeats (one every 5 s), the threshold the dashboard has always used.
pub const WORKER_STALE_SECONDS: f64 = 30.0;

/// Whether a worker last seen `age_seconds` ago is stale.
pub fn worker_stale(age_seconds: Option<f64>) -> bool {
    age_seconds.is_some_and(|a| a > WORKER_STALE_SECONDS)
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadShard {
    pub shard: u32,
    pub target: String,
    pub error: String,
}

/// One cell of the dashboard's shard grid.
#[derive(Debug, Clone, Serialize)]
pub struct ShardCell {
    pub no: u32,
    /// `pending`, `running`, `done`, `failed` or `dead`.
    pub state: String,
    pub rows: u32,
    pub worker: Option<String>,
    pub ms: Option<i64>,
}

/// Rows finished per time bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub bucket_seconds: u64,
    pub points: Vec<ThroughputPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputPoint {
    /// Bucket start, seconds since the Unix epoch.
    pub t: i64,
    pub rows: u64,
    pub rows_per_sec: f64,
}

/// RFC 3339 (UTC, seconds) of seconds since the epoch.
pub fn rfc3339(epoch_seconds: f64) -> String {
    let secs = epoch_seconds.floor() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

impl Store {
    async fn raw_shards(&self, run_id: &str) -> Result<Vec<RawShard>, StoreError> {
        dispatch!(self, raw_shards(run_id)).map_err(sql("read shards"))
    }

    /// The dashboard's shard grid.
    pub async fn shard_grid(&self, run_id: &str) -> Result<Vec<ShardCell>, StoreError> {
        Ok(self
            .raw_shards(run_id)
            .await?
            .into_iter()
            .map(|(no, state, failures, rows, worker, ms, ..)| ShardCell {
                no,
                state: cell_state(&state, failures).to_string(),
                rows,
                worker,
                ms,
            })
            .collect())
    }

    /// Rows finished over time, in buckets sized so a run gives at most
    /// about 120 points.
    pub async fn throughput(&self, run_id: &str) -> Result<Throughput, StoreError> {
        let shards = self.raw_shards(run_id).await?;
        let finished: Vec<(f64, u32)> = shards
            .iter()
            .filter_map(|s| s.7.map(|f| (f, s.3)))
            .collect();
        let start = shards
            .iter()
            .filter_map(|s| s.6.or(s.7))
            .fold(f64::INFINITY, f64::min);
        let end = finished
            .iter()
            .map(|f| f.0)
            .fold(f64::NEG_INFINITY, f64::max);
        if finished.is_empty() || !start.is_finite() {
            return Ok(Throughput {
                bucket_seconds: 1,
                points: vec![],
            });
        }
        let span = (end - start).max(1.0);
        let bucket = ((span / 120.0).ceil() as u64).max(1);
        let first = (start.floor() as i64).div_euclid(bucket as i64) * bucket as i64;
        let n = ((end.floor() as i64 - first) / bucket as i64 + 1).max(1) as usize;
        let mut rows = vec![0u64; n];
        for (t, r) in finished {
            let i = ((t.floor() as i64 - first) / bucket as i64).clamp(0, n as i64 - 1) as usize;
            rows[i] += r as u64;
        }
        Ok(Throughput {
            bucket_seconds: bucket,
            points: rows
                .into_iter()
                .enumerate()
                .map(|(i, r)| ThroughputPoint {
                    t: first + (i as i64) * bucket as i64,
                    rows: r,
                    rows_per_sec: r as f64 / bucket as f64,
                })
                .collect(),
        })
    }

    /// Progress documents of the most recent runs, newest first (without
    /// workers, dead shards or the health check, which cost a query each).
    pub async fn run_statuses(&self, limit: i64) -> Result<Vec<RunStatus>, StoreError> {
        let mut out = Vec::new();
        for (id, ..) in self.recent_runs(limit).await? {
            if let Some(s) = self.run_status_inner(&id, false).await? {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// A run's progress document; `None` when the ledger has no such run.
    pub async fn run_status(&self, run_id: &str) -> Result<Option<RunStatus>, StoreError> {
        self.run_status_inner(run_id, true).await
    }

    async fn run_status_inner(
        &self,
        run_id: &str,
        detail: bool,
    ) -> Result<Option<RunStatus>, StoreError> {
        let Some(rec) = self.load_run_totals(run_id).await? else {
            return Ok(None);
        };
        let (created, finished, now): (f64, Option<f64>, f64) =
            dispatch!(self, run_times(run_id)).map_err(sql("read run times"))?;
        let control = self.control(run_id, &rec.spec.throttle).await?;
        let shards = self.raw_shards(run_id).await?;

        let mut counts = ShardCounts {
            total: shards.len() as u64,
            ..Default::default()
        };
        let (mut min, mut max, mut sum) = (u64::MAX, 0u64, 0u64);
        let mut rows_done = 0u64;
        let mut first_start = f64::INFINITY;
        let mut last_finish = f64::NEG_INFINITY;
        for s in &shards {
            match cell_state(&s.1, s.2) {
                "pending" => counts.pending += 1,
                "running" => counts.running += 1,
                "done" => counts.done += 1,
                "failed" => counts.failed += 1,
                _ => counts.dead += 1,
            }
            if s.8.is_some() {
                counts.reduced += 1;
            }
            let r = s.3 as u64;
            min = min.min(r);
            max = max.max(r);
            sum += r;
            if let Some(f) = s.7 {
                rows_done += r;
                last_finish = last_finish.max(f);
            }
            if let Some(st) = s.6.or(s.7) {
                first_start = first_start.min(st);
            }
        }
        let running = !rec.state.is_finished();
        let rate_end = if running { now } else { last_finish };
        let rows_per_sec = if first_start.is_finite() && rate_end > first_start {
            rows_done as f64 / (rate_end - first_start)
        } else {
            0.0
        };
        let timeline: Vec<EtaShard> = shards
            .iter()
            .map(|s| EtaShard {
                rows: u64::from(s.3),
                started_at: s.6,
                finished_at: s.7,
                reduced_at: s.8,
            })
            .collect();
        let window = self
            .run_schedule(&rec)
            .await?
            .map(|s| WindowStatus::of(&s, running));
        // Waiting for its window, a run is held as a paused one is: no ETA.
        let waiting = window.as_ref().is_some_and(|w| w.waiting.is_some());
        let planning = running
            && dispatch!(self, planning_of(run_id))
                .map_err(sql("read the run's planning"))?
                .is_some();
        let mut eta = crate::eta::estimate(&EtaInput {
            shards: &timeline,
            now,
            running,
            go: control.control == crate::ControlState::Run && !waiting,
            rows_per_sec_limit: control.rows_per_sec,
        });
        if planning {
            // Not all of its shards are known yet.
            eta.seconds = None;
            eta.basis = None;
        }
        let c = &rec.tally.counts;
        let (workers, dead_shards, health) = if detail {
            let health = if running {
                Some(
                    self.health(&rec.spec.health)
                        .await
                        .unwrap_or_else(|e| Health {
                            ok: false,
                            reason: Some(format!("the health check failed: {e}")),
                        }),
                )
            } else {
                None
            };
            (
                self.run_workers(run_id, now).await?,
                self.dead_shards(run_id)
                    .await?
                    .into_iter()
                    .map(|(shard, target, error)| DeadShard {
                        shard,
                        target,
                        error,
                    })
                    .collect(),
                health,
            )
        } else {
            (vec![], vec![], None)
        };
        let unpublished = if running {
            self.unpublished_shards(run_id).await?
        } else {
            0
        };
        // Only a coordinator publishes, and it holds the job's lock while it
        // works: unpublished shards and no holder means it died or gave up.
        let orphaned = unpublished > 0 && self.job_lock_held(&rec.spec.name).await? == Some(false);
        Ok(Some(RunStatus {
            params: rec
                .spec
                .params
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect(),
            window,
            unpublished,
            orphaned,
            planning,
            pushed_down: rec.tally.pushed_down.clone(),
            resume: orphaned.then(|| format!("backfill coordinator --resume {run_id}")),
            revert_of: rec.revert_of.clone(),
            sample: rec.sample,
            run_id: rec.run_id.clone(),
            job: rec.spec.name.clone(),
            mode: rec.mode.to_string(),
            scope: rec.scope.clone(),
            state: rec.state.to_string(),
            control: control.control.as_str().to_string(),
            priority: control.priority,
            throttle: ThrottleStatus {
                rows_per_sec: control.rows_per_sec,
                max_in_flight: control.max_in_flight,
                bytes_per_sec: control.bytes_per_sec,
                max_wal_bytes_per_sec: control.max_wal_bytes_per_sec,
            },
            health,
            waiting_for: if running { control.yield_to } else { None },
            created_at: rfc3339(created),
            finished_at: finished.map(rfc3339),
            elapsed_seconds: (finished.unwrap_or(now) - created).max(0.0),
            shards: counts,
            shard_size: ShardSize {
                min: if shards.is_empty() { 0 } else { min },
                max,
                mean: if shards.is_empty() {
                    0.0
                } else {
                    sum as f64 / shards.len() as f64
                },
                chosen_by: control.shard_sizing,
            },
            rows: RowCounts {
                planned: sum,
                processed: c.processed,
                changed: c.changed,
                unchanged: c.unchanged,
                skipped: c.skipped,
                conflicts: c.conflicts,
                errors: c.errors,
            },
            rows_per_sec,
            eta_seconds: eta.seconds,
            eta_basis: eta.basis,
            rows_per_sec_recent: eta.rows_per_sec_recent,
            shards_reduced_per_sec_recent: eta.shards_reduced_per_sec_recent,
            workers,
            dead_shards,
            summary: rec.summary.clone(),
        }))
    }

    /// Pending shards of a run that were never sent to the queue.
    async fn unpublished_shards(&self, run_id: &str) -> Result<u64, StoreError> {
        self.count_of_run(
            "SELECT count(*) FROM backfill_shard WHERE run_id = $1 AND state = 'pending' AND published_at IS NULL",
            run_id,
            "count unpublished shards",
        )
        .await
    }

    /// The workers that committed shards of a run, with their last sign of life.
    async fn run_workers(&self, run_id: &str, now: f64) -> Result<Vec<WorkerStatus>, StoreError> {
        let rows: Vec<RawWorker> =
            dispatch!(self, run_workers(run_id)).map_err(sql("read the run's workers"))?;
        Ok(rows
            .into_iter()
            .map(|(name, n, finished, beat)| {
                let seen = match (finished, beat) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                let age_seconds = seen.map(|s| (now - s).max(0.0));
                WorkerStatus {
                    name,
                    shards_done: n.max(0) as u64,
                    last_seen: seen.map(rfc3339),
                    age_seconds,
                    stale: worker_stale(age_seconds),
                }
            })
            .collect())
    }
}

/// The grid's state of a shard: a pending shard whose last attempt failed
/// shows as `failed`.
fn cell_state(state: &str, failures: i64) -> &'static str {
    match state {
        "pending" if failures > 0 => "failed",
        "pending" => "pending",
        "running" => "running",
        "done" => "done",
        _ => "dead",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_308_310.7), "2026-11-22T00:45:10Z");
    }

    #[test]
    fn a_worker_silent_for_over_thirty_seconds_is_stale() {
        assert!(!worker_stale(None));
        assert!(!worker_stale(Some(0.0)));
        assert!(!worker_stale(Some(29.9)));
        assert!(!worker_stale(Some(WORKER_STALE_SECONDS)));
        assert!(worker_stale(Some(30.5)));
        assert!(worker_stale(Some(3600.0)));
    }

    #[test]
    fn failed_attempts_show_as_failed() {
        assert_eq!(cell_state("pending", 0), "pending");
        assert_eq!(cell_state("pending", 2), "failed");
        assert_eq!(cell_state("running", 1), "running");
        assert_eq!(cell_state("dead", 3), "dead");
    }
}
