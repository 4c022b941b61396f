//! The ledger's run and shard records, the rows a dialect reads them from,
//! and how a stored shard result is decoded and folded into its run (see
//! [`crate::ledger`], which re-exports them).

use crate::error::StoreError;
use std::collections::BTreeMap;

use backfill_job::fold::{fold_result, join_groups, split_groups, stored_tally, Fold, RunLedger};
use backfill_job::report::RunView;
use backfill_job::tally::GroupTally;
use backfill_job::{JobSpec, Mode, Plan, RunState, Tally};

/// A run as the ledger holds it.
#[derive(Debug, Clone)]
pub struct RunRecord {
    pub run_id: String,
    pub spec: JobSpec,
    pub mode: Mode,
    /// The scope as the report prints it.
    pub scope: String,
    pub scope_value: backfill_job::Scope,
    pub state: RunState,
    pub plan: Plan,
    pub shards_total: u32,
    pub shards_reduced: u32,
    pub tally: Tally,
    pub summary: Option<String>,
    /// For a revert: the run whose writes it restores.
    pub revert_of: Option<String>,
    /// For a sampled dry run: the share of the target rows it read (0–1].
    pub sample: Option<f64>,
    /// What the run is for; with `revert_of` / `retry_of`, of which run.
    pub kind: backfill_job::RunKind,
    /// For a retry: the run whose quarantined rows it redoes.
    pub retry_of: Option<String>,
    /// The target tables' row counts: `{"planned": {table: n}, "finished": {table: n}}`.
    pub table_rows: Option<serde_json::Value>,
}

impl RunRecord {
    /// The run's kind for people (`revert of RUN`, `forward (sample of 1% …)`).
    pub fn describe_kind(&self) -> String {
        self.kind.describe(
            self.revert_of.as_deref().or(self.retry_of.as_deref()),
            self.sample,
        )
    }

    pub fn view(&self) -> RunView<'_> {
        RunView {
            run_id: &self.run_id,
            spec: &self.spec,
            mode: self.mode,
            scope: &self.scope,
            plan: &self.plan,
            tally: &self.tally,
            cancelled: (self.state == RunState::Cancelled).then_some(self.shards_reduced),
            state: self.state,
            kind: self.kind,
            of: self.revert_of.as_deref().or(self.retry_of.as_deref()),
            sample: self.sample,
        }
    }
}

/// A shard as the ledger holds it.
#[derive(Debug, Clone)]
pub struct ShardRecord {
    pub shard_no: u32,
    pub target: String,
    pub first_key: String,
    pub last_key: String,
    pub rows: u32,
    pub state: String,
    pub published: bool,
    pub reduced: bool,
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    what: &str,
    v: serde_json::Value,
) -> Result<T, StoreError> {
    serde_json::from_value(v)
        .map_err(|e| StoreError::Data(format!("ledger {what} is unreadable: {e}")))
}

/// A run as [`crate::Store::recent_runs`] lists it: (run, job, mode, state).
pub type RecentRun = (String, String, String, String);

/// What a fold did not happen for: a shard whose result was not claimed,
/// by whether it was already reduced (`None`: no such shard).
pub(crate) fn not_reduced(already_reduced: Option<bool>) -> Reduced {
    match already_reduced {
        None => Reduced::UnknownShard,
        Some(true) => Reduced::Duplicate,
        Some(false) => Reduced::NotCommitted,
    }
}

/// A shard's stored result (the ledger, not the message, is the truth of
/// what the shard counted), split as the ledger keeps it: totals for the
/// run's record, and a record per group.
pub(crate) fn stored_result(
    stored: Option<serde_json::Value>,
) -> Result<(Tally, BTreeMap<String, GroupTally>), StoreError> {
    Ok(split_groups(stored_tally(stored)?))
}

/// The run row a fold reads, as both dialects' SQL returns it: its JSON
/// columns decoded by sqlx (`jsonb` on PostgreSQL, text on SQLite), its
/// counts as 64-bit integers, the plan's text only with the last shard.
#[derive(sqlx::FromRow)]
pub(crate) struct FoldRow {
    spec_text: String,
    mode: String,
    #[sqlx(json)]
    scope: serde_json::Value,
    plan: Option<String>,
    #[sqlx(json)]
    tally: serde_json::Value,
    shards_total: i64,
    shards_reduced: i64,
    planning: bool,
}

impl FoldRow {
    /// Folds a shard's totals into the run as this row holds it.
    pub(crate) fn fold(self, run_id: &str, totals: &Tally) -> Result<Fold, StoreError> {
        let run = RunLedger {
            run_id,
            spec_text: &self.spec_text,
            mode: &self.mode,
            scope: self.scope,
            plan: self.plan,
            tally: self.tally,
            shards_total: self.shards_total,
            shards_reduced: self.shards_reduced,
            planning: self.planning,
        };
        Ok(fold_result(run, totals)?)
    }
}

/// A run row as either back end reads it.
pub(crate) struct RawRun {
    pub run_id: String,
    pub spec_text: String,
    pub mode: String,
    pub scope: serde_json::Value,
    pub state: String,
    /// JSON text, decoded straight into a [`Plan`] (no JSON tree in
    /// between: the plan of a large run lists tens of thousands of groups).
    pub plan: String,
    pub shards_total: i64,
    pub shards_reduced: i64,
    pub tally: serde_json::Value,
    pub summary: Option<String>,
    pub revert_of: Option<String>,
    pub sample: Option<f64>,
    pub table_rows: Option<serde_json::Value>,
    pub kind: Option<String>,
    pub retry_of: Option<String>,
}

/// A run record from its row and its group records (see
/// [`backfill_job::fold::split_groups`]).
pub(crate) fn run_record(
    raw: RawRun,
    groups: Vec<(String, String)>,
) -> Result<RunRecord, StoreError> {
    let spec = JobSpec::parse(&raw.spec_text)?;
    let mut tally: Tally = decode("tally", raw.tally)?;
    join_groups(&mut tally, groups)?;
    let scope: backfill_job::Scope = decode("scope", raw.scope)?;
    Ok(RunRecord {
        run_id: raw.run_id,
        spec,
        mode: raw.mode.parse().map_err(StoreError::Data)?,
        scope: scope.describe(),
        scope_value: scope,
        state: raw.state.parse().map_err(StoreError::Data)?,
        plan: serde_json::from_str(&raw.plan)
            .map_err(|e| StoreError::Data(format!("ledger plan is unreadable: {e}")))?,
        shards_total: raw.shards_total.max(0) as u32,
        shards_reduced: raw.shards_reduced.max(0) as u32,
        tally,
        summary: raw.summary,
        kind: backfill_job::RunKind::from_ledger(raw.kind.as_deref(), raw.revert_of.as_deref())
            .map_err(StoreError::Data)?,
        revert_of: raw.revert_of,
        retry_of: raw.retry_of,
        sample: raw.sample,
        table_rows: raw.table_rows,
    })
}

/// What the reducer tells of a fold it committed.
pub(crate) fn reduced(fold: Fold) -> Reduced {
    match fold.finished {
        None => Reduced::Counted,
        Some((_, summary)) => Reduced::Finished(summary),
    }
}

/// What the reducer did with a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reduced {
    /// Folded into the run.
    Counted,
    /// Folded, and it was the last one: the run's summary line.
    Finished(String),
    /// Already folded before (a redelivery): ignored.
    Duplicate,
    /// No such shard in the ledger (a forged or stale message): ignored.
    UnknownShard,
    /// The ledger does not show the shard committed: ignored.
    NotCommitted,
}

/// A not yet finished run's row as either back end reads it: run, spec
/// hash, mode, scope (JSON text), shards total, reduced and published,
/// kind, revert of, retry of, sample.
pub(crate) type RawActiveRun = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
);

/// A run of a job that has not finished.
#[derive(Debug, Clone)]
pub struct ActiveRun {
    pub run_id: String,
    pub spec_hash: String,
    pub mode: Mode,
    pub scope: backfill_job::Scope,
    pub shards_total: u32,
    pub shards_published: u32,
    pub shards_reduced: u32,
    pub kind: backfill_job::RunKind,
    /// For a revert or a retry: the run it was made from.
    pub of: Option<String>,
    pub sample: Option<f64>,
}

impl ActiveRun {
    /// The run's kind for people (`revert of RUN`, `forward (sample of 1% …)`).
    pub fn describe_kind(&self) -> String {
        self.kind.describe(self.of.as_deref(), self.sample)
    }
}

/// Held while a coordinator works on a job, so that a second coordinator
/// of the same job (a scheduled start overlapping a slow run) backs off.
/// On PostgreSQL it is a session advisory lock on a connection of its own,
/// released when the lock is dropped (the connection closes) — also when
/// the process dies.
pub struct JobLock {
    pub(crate) _conn: Option<sqlx::PgConnection>,
}
