//! The run ledger: what was planned, what each shard did, what was folded.
//!
//! Tables (made by the ledger's migrations, see `migrate`):
//! - `backfill_run`: one row per run — job, spec text and hash, mode, scope,
//!   plan, the fold of the shard results so far, state and summary.
//! - `backfill_shard`: one row per shard — its rows, whether its task was
//!   published, whether a mapper committed it (with its result), whether the
//!   reducer folded it. The reducer's dedup state lives here, so it survives
//!   a restart of the reducer.
//! - `backfill_item`: the distinct target rows of each shard, with their group
//!   and reference count. Messages carry only (run, shard).
//! - `backfill_before_image`: in commit mode, each written column's value as it
//!   was, written in the same transaction as the row.
//! - `backfill_quarantine`: rows that could not be rewritten (a rule error, or
//!   their shard was dead-lettered) with their error, for `backfill retry`.
//!
//! A shard is `pending`, `running` (claimed by a mapper, see `steer`),
//! `done` (committed by a mapper) or `dead` (given up after failing on every
//! attempt). A failed attempt puts it back to `pending` with `failures`
//! counted.
//!
//! The statements are each dialect's (`pg::ledger`, `sqlite::ledger`, and
//! `common` where they read alike); the records, how a run row becomes a
//! [`RunRecord`] and how a stored result is folded are in `model::ledger`
//! (re-exported here); this file holds the store's ledger operations.

pub use backfill_job::fold::final_state;

use std::collections::HashMap;

use serde_json::{Map, Value};

use backfill_job::tally::GroupTally;
use backfill_job::{PlannedGroup, ShardResult};

use crate::backend::Capability;
use crate::db::dispatch;

use crate::{sql, StoreError};

pub use crate::model::ledger::*;

impl crate::Store {
    /// Reads a run with its per-group counts, as a report shows it; `None`
    /// when the ledger has no such run. Reading every group costs what the
    /// run holds: what needs only the run's totals (the status, a worker's
    /// plan) reads [`Self::load_run_totals`].
    pub async fn load_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let Some(raw) = dispatch!(self, load_run(run_id, true))? else {
            return Ok(None);
        };
        let groups = dispatch!(self, group_tallies(run_id))?;
        run_record(raw, groups).map(Some)
    }

    /// Reads a run with its plan's groups (their parameters) but without
    /// their counts: what comparing two plans needs, and what a mapper
    /// reads of a run planned before its groups had rows of their own
    /// (otherwise it reads [`Self::shard_group_params`] per shard).
    pub async fn load_run_plan(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        dispatch!(self, load_run(run_id, true))?
            .map(|raw| run_record(raw, vec![]))
            .transpose()
    }

    /// Reads a run with its totals only: neither its plan's groups nor
    /// their counts (its tally's `groups` is empty, but for a run folded
    /// before groups had records of their own); `None` when the ledger has
    /// no such run. What the status and the steering read, at any size.
    pub async fn load_run_totals(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        dispatch!(self, load_run(run_id, false))?
            .map(|raw| run_record(raw, vec![]))
            .transpose()
    }

    /// Whether [`Self::report_groups`] can give run `rec`'s groups with all
    /// their counts: a run whose groups are counted in records of their own
    /// (a run begun by an earlier release holds them in its own record,
    /// which [`Self::load_run`] reads whole).
    pub fn groups_stream(rec: &RunRecord) -> bool {
        rec.tally.groups.is_empty() && rec.plan.tally.groups.is_empty()
    }

    /// Whether run `run_id`'s groups are in rows of their own
    /// (`backfill_group`), for [`Self::shard_group_params`]; not for a run
    /// planned by an earlier release, whose plan alone lists its groups
    /// ([`Self::load_run_plan`]), nor for a run without groups.
    pub async fn has_group_params(&self, run_id: &str) -> Result<bool, StoreError> {
        dispatch!(self, has_group_params(run_id)).map_err(sql("read group parameters"))
    }

    /// The run as it was begun, when its coordinator stopped while planning
    /// it (its row in `backfill_planning` still there), to carry on with
    /// ([`Store::continue_run`]): its shard size, or `None` when the run is
    /// not being planned. Only its job's lock holder may ask: a run that
    /// another coordinator is planning looks the same.
    pub async fn interrupted_plan(&self, run_id: &str) -> Result<Option<u32>, StoreError> {
        Ok(dispatch!(self, planning_of(run_id))
            .map_err(sql("read the run's planning"))?
            .map(|size| size.clamp(1, u32::MAX as i64) as u32))
    }

    /// The parameters of the groups shard `shard_no` of run `run_id` holds,
    /// by group: what a mapper reads per shard, so that its memory does not
    /// grow with the number of groups in the run.
    pub async fn shard_group_params(
        &self,
        run_id: &str,
        shard_no: u32,
    ) -> Result<HashMap<String, Map<String, Value>>, StoreError> {
        dispatch!(self, shard_group_params(run_id, shard_no))
            .map_err(sql("read group parameters"))?
            .into_iter()
            .map(|(key, text)| {
                let params = serde_json::from_str(&text).map_err(|e| {
                    StoreError::Data(format!("group {key}'s parameters are unreadable: {e}"))
                })?;
                Ok((key, params))
            })
            .collect()
    }

    /// How many groups run `run_id`'s plan lists; `None` when the ledger
    /// has no such run.
    pub async fn plan_group_count(&self, run_id: &str) -> Result<Option<u64>, StoreError> {
        Ok(dispatch!(self, plan_group_count(run_id))
            .map_err(sql("count the plan's groups"))?
            .map(|n| n.max(0) as u64))
    }

    /// Run `run_id`'s plan groups in the plan's order, each with its counts
    /// (`None`: nothing of it counted yet), read one at a time from the
    /// database: a report streams at any number of groups. Complete for a
    /// run of which [`Self::groups_stream`] holds.
    pub fn report_groups<'a>(
        &'a self,
        run_id: &'a str,
    ) -> impl futures::Stream<Item = Result<(PlannedGroup, Option<GroupTally>), StoreError>> + 'a
    {
        use futures::StreamExt;
        dispatch!(sync self, report_groups(run_id)).map(|row| {
            let (group, tally) = row.map_err(sql("read the report's groups"))?;
            let group: PlannedGroup = serde_json::from_str(&group)
                .map_err(|e| StoreError::Data(format!("a plan group is unreadable: {e}")))?;
            let tally = tally
                .map(|t| serde_json::from_str::<GroupTally>(&t))
                .transpose()
                .map_err(|e| {
                    StoreError::Data(format!("group {}'s counts are unreadable: {e}", group.key))
                })?;
            Ok((group, tally))
        })
    }

    /// The most recent runs, newest first.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RecentRun>, StoreError> {
        dispatch!(self, recent_runs(limit)).map_err(sql("list runs"))
    }

    /// The shards of a run, in order.
    pub async fn shards(&self, run_id: &str) -> Result<Vec<ShardRecord>, StoreError> {
        dispatch!(self, shards(run_id)).map_err(sql("read shards"))
    }

    /// Marks shards as published (their task was confirmed by the broker).
    pub async fn mark_published(&self, run_id: &str, shard_nos: &[i32]) -> Result<(), StoreError> {
        dispatch!(self, mark_published(run_id, shard_nos))
    }

    /// Folds one shard result into its run, once. Returns what happened.
    ///
    /// Dedup and fold share one transaction: the shard's `reduced_at` is set
    /// only if it was unset and the shard is committed, and the run's tally is
    /// updated under a row lock. A duplicate result changes nothing.
    pub async fn reduce(&self, result: &ShardResult) -> Result<Reduced, StoreError> {
        dispatch!(self, reduce(result))
    }
}

impl crate::Store {
    /// Takes the job's lock, or `None` when another coordinator holds it.
    pub async fn try_lock_job(&self, job: &str) -> Result<Option<JobLock>, StoreError> {
        Ok(match dispatch!(self, try_lock_job(job))? {
            Capability::Has(lock) => lock,
            // Embedded mode is one process; SQLite's own locking serializes writers.
            Capability::Lacks(_) => Some(JobLock { _conn: None }),
        })
    }

    /// Whether some session holds the job's lock (a coordinator is at
    /// work on it); `None` on SQLite, which has no such lock.
    pub async fn job_lock_held(&self, job: &str) -> Result<Option<bool>, StoreError> {
        Ok(
            match dispatch!(self, job_lock_held(job))
                .map_err(sql("look for the job's coordinator"))?
            {
                Capability::Has(held) => Some(held),
                Capability::Lacks(_) => None,
            },
        )
    }

    /// The job's runs that have not finished, newest first.
    pub async fn active_runs(&self, job: &str) -> Result<Vec<ActiveRun>, StoreError> {
        let rows = dispatch!(self, active_runs(job)).map_err(sql("list active runs"))?;
        rows.into_iter()
            .map(
                |(
                    run_id,
                    spec_hash,
                    mode,
                    scope,
                    total,
                    reduced,
                    published,
                    kind,
                    revert_of,
                    retry_of,
                    sample,
                )| {
                    Ok(ActiveRun {
                        run_id,
                        spec_hash,
                        mode: mode.parse().map_err(StoreError::Data)?,
                        scope: serde_json::from_str(&scope).map_err(|e| {
                            StoreError::Data(format!("ledger scope is unreadable: {e}"))
                        })?,
                        shards_total: total.max(0) as u32,
                        shards_published: published.max(0) as u32,
                        shards_reduced: reduced.max(0) as u32,
                        kind: backfill_job::RunKind::from_ledger(
                            kind.as_deref(),
                            revert_of.as_deref(),
                        )
                        .map_err(StoreError::Data)?,
                        of: revert_of.or(retry_of),
                        sample,
                    })
                },
            )
            .collect()
    }
}

impl crate::Store {
    /// The target a shard of the run covers, as the ledger planned it
    /// (`None`: no such shard). A task names its target only for people
    /// reading queues; the mapper works on what the ledger says.
    pub async fn shard_target(
        &self,
        run_id: &str,
        shard_no: u32,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, shard_target(run_id, shard_no)).map_err(sql("read the shard's target"))
    }
}

impl crate::Store {
    /// The last error recorded for a shard, if any.
    pub async fn shard_last_error(
        &self,
        run_id: &str,
        shard_no: u32,
    ) -> Result<Option<String>, StoreError> {
        let v =
            dispatch!(self, shard_last_error(run_id, shard_no)).map_err(sql("read shard error"))?;
        Ok(v.flatten())
    }

    /// Shards given up (dead-lettered) with their errors.
    pub async fn dead_shards(
        &self,
        run_id: &str,
    ) -> Result<Vec<(u32, String, String)>, StoreError> {
        Ok(dispatch!(self, dead_shards(run_id))
            .map_err(sql("read dead shards"))?
            .into_iter()
            .map(|(n, target, error)| (n as u32, target, error))
            .collect())
    }

    /// Quarantined rows of a run not yet retried: (target, key, error).
    pub async fn quarantined(
        &self,
        run_id: &str,
    ) -> Result<Vec<(String, String, String)>, StoreError> {
        dispatch!(self, quarantined(run_id)).map_err(sql("read quarantined rows"))
    }
}
