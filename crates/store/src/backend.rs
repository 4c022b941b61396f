//! The ledger operations as one trait, [`Backend`], that each dialect
//! implements in its own module tree (`pg`, `sqlite`), with what one back
//! end lacks ([`Capability`]) and a shard's transaction
//! ([`ShardTransaction`]). The one point where a [`crate::Store`] picks its
//! dialect is [`crate::db`].
//!
//! A method is one database operation: its SQL and control flow live in the
//! dialect's module; argument checking, turning rows into the job crate's
//! types and pure logic stay in the dialect-free modules that call it.
//! Statements both dialects read alike are written once, in
//! [`crate::common`]. What one back end cannot do is said by the trait
//! (see [`Capability`]), never left as a silent no-op. This file imports
//! only the records of `model` and `error`, never a dialect.

use backfill_job::plan::NewRun;
use backfill_job::spec::Dialect;
use backfill_job::spec::TargetSpec;
use backfill_job::{Plan, ShardResult, Tally};
use std::collections::BTreeMap;

use crate::error::StoreError;
use crate::model::identity::LedgerIdentity;
use crate::model::ledger::{
    JobLock, RawActiveRun, RawRun, RecentRun, Reduced, RunRecord, ShardRecord,
};
use crate::model::planning::{Derived, PlanFrom, ShardSink};
use crate::model::shard::{
    BatchLimits, Committed, EvaluatedRow, FetchedRow, ShardCommit, ShardWork,
};
use crate::model::status::{RawShard, RawWorker};
use crate::model::steer::{Claim, HistoryRow, RawControl, RawCost, RawEvent, ThrottleChange};
use backfill_job::pushdown::Pushdown;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Whether a back end has a capability the other lacks; `Lacks` says why
/// the operation has no meaning there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capability<T> {
    Has(T),
    Lacks(&'static str),
}

/// Every database operation the store performs, per dialect.
pub(crate) trait Backend {
    /// The back end's shard transaction (see [`Backend::open_shard`]).
    type Tx: ShardTransaction;

    /// The SQL dialect spoken.
    fn dialect(&self) -> Dialect;
    /// Closes the pool.
    async fn close(&self);

    // ---- statements both dialects read alike (`crate::common`) ----

    /// A `count(*)` query whose one parameter is a run id (`$1`).
    async fn count_of_run(&self, q: &str, run_id: &str) -> sqlx::Result<i64>;
    /// A `count(*)` query without parameters.
    async fn count(&self, q: &str) -> sqlx::Result<i64>;
    /// The last finished commit-mode run of a job.
    async fn last_commit(&self, job: &str) -> sqlx::Result<Option<String>>;
    /// A verify of `job` that passed after `commit_run` finished.
    async fn passed_verify_after(
        &self,
        job: &str,
        commit_run: &str,
    ) -> sqlx::Result<Option<String>>;

    /// Records a run's starting throttle unless it has one.
    async fn init_control(
        &self,
        run_id: &str,
        t: &backfill_job::spec::ThrottleSpec,
        shard_sizing: Option<&str>,
    ) -> sqlx::Result<()>;
    /// Sets a run's control (`run`, `pause`, `cancel`) and who set it.
    async fn set_control(&self, run_id: &str, control: &str, operator: &str) -> sqlx::Result<()>;
    /// Runs the throttle's `UPDATE` `q` with the change's values bound.
    async fn update_throttle(
        &self,
        q: &str,
        run_id: &str,
        change: &ThrottleChange,
        operator: &str,
    ) -> sqlx::Result<()>;
    /// `SELECT 1`.
    async fn ping(&self) -> sqlx::Result<()>;
    /// Appends an audit event.
    async fn record_event(
        &self,
        run_id: &str,
        action: &str,
        operator: &str,
        detail: Option<&str>,
    ) -> sqlx::Result<()>;
    /// A run's state, if the run exists.
    async fn run_state(&self, run_id: &str) -> sqlx::Result<Option<String>>;
    /// Replaces a cancelled run's summary.
    async fn set_cancelled_summary(&self, run_id: &str, summary: &str) -> sqlx::Result<()>;
    /// A run's recorded windows: `None` without the run.
    async fn run_schedule(&self, run_id: &str) -> sqlx::Result<Option<Option<String>>>;
    /// The job's own health check, one boolean.
    async fn health_sql(&self, q: &str) -> sqlx::Result<Option<bool>>;

    // ---- steering ----

    /// A worker's heartbeat.
    async fn heartbeat(
        &self,
        worker: &str,
        role: &str,
        run_id: Option<&str>,
        shards_done: i64,
    ) -> sqlx::Result<()>;
    /// Ends a running run as cancelled with its summary; rows changed.
    async fn finish_cancelled(&self, run_id: &str, summary: &str) -> sqlx::Result<u64>;
    /// A run's audit events, oldest first.
    async fn run_events(&self, run_id: &str) -> sqlx::Result<Vec<RawEvent>>;
    /// The most recent runs (of a job, or all), newest first.
    async fn history(&self, job: Option<&str>, limit: i64) -> sqlx::Result<Vec<HistoryRow>>;
    /// Before-images of runs finished more than `secs` ago, (run, rows,
    /// bytes) per run; deleted in the same transaction with `delete`.
    async fn prune_before_images(
        &self,
        secs: f64,
        delete: bool,
    ) -> Result<Vec<(String, i64, i64)>, StoreError>;
    /// A run's control row.
    async fn control(&self, run_id: &str) -> sqlx::Result<Option<RawControl>>;
    /// Claims a shard unless the run's shards-in-flight limit is reached.
    async fn claim_shard(
        &self,
        run_id: &str,
        shard_no: u32,
        worker: &str,
        max_in_flight: Option<u32>,
    ) -> Result<Claim, StoreError>;
    /// Reserves rows of the rows-per-second schedule: the wait in seconds,
    /// `None` when no row was updated.
    async fn reserve_rows(
        &self,
        run_id: &str,
        rows: f64,
        horizon: f64,
    ) -> Result<Option<Option<f64>>, StoreError>;
    /// Reserves bytes of the bytes-per-second schedule: the wait in seconds
    /// and the bytes reserved, `None` when no row was updated.
    async fn reserve_bytes(
        &self,
        run_id: &str,
        rows: f64,
        horizon: f64,
    ) -> Result<Option<(Option<f64>, Option<f64>)>, StoreError>;
    /// Replaces a shard's reserved bytes with those it wrote.
    async fn settle_bytes(
        &self,
        run_id: &str,
        per_row: Option<f64>,
        reserved: f64,
        written: f64,
        elapsed: f64,
    ) -> sqlx::Result<()>;
    /// Samples the server's WAL position into the run's WAL token bucket:
    /// (tokens, cap), `None` when the run has no cap. Only a back end with
    /// a write-ahead log position to read has a WAL rate cap.
    async fn wal_sample(
        &self,
        run_id: &str,
        burst: f64,
        window: f64,
    ) -> sqlx::Result<Capability<Option<(f64, f64)>>>;
    /// The largest replay lag of any standby, in seconds and bytes. Only a
    /// back end with replicas has one.
    async fn replication_lag(&self) -> sqlx::Result<Capability<(Option<f64>, Option<f64>)>>;
    /// Client backends active now. Only a server back end has them.
    async fn active_backends(&self) -> sqlx::Result<Capability<i64>>;
    /// Running, unpaused runs with their seconds since the last progress and
    /// whether a stall was recorded since. Only where runs are worked on by
    /// processes that may die apart from the one watching.
    async fn quiet_runs(&self) -> sqlx::Result<Capability<Vec<(String, f64, bool)>>>;
    /// The job's most recent measured shard cost.
    async fn measured_shard_cost(&self, job: &str, mode: &str) -> sqlx::Result<Option<RawCost>>;

    /// Quarantined rows of a run not yet retried: (target, key, error).
    async fn quarantined(&self, run_id: &str) -> sqlx::Result<Vec<(String, String, String)>>;

    // ---- the ledger ----

    /// A run's row (`None`: no such run); without `plan_groups`, its plan's
    /// list of groups is left out by the database (read as empty).
    async fn load_run(&self, run_id: &str, plan_groups: bool)
        -> Result<Option<RawRun>, StoreError>;
    /// A run's per-group records (`backfill_group_tally`), as (group, tally).
    async fn group_tallies(&self, run_id: &str) -> Result<Vec<(String, String)>, StoreError>;
    /// Whether a run's groups are in rows of their own (`backfill_group`;
    /// a run planned by an earlier release has them in its plan only).
    async fn has_group_params(&self, run_id: &str) -> sqlx::Result<bool>;
    /// The shard size a run being planned was begun with (its row in
    /// `backfill_planning`); `None`: the run is not being planned.
    async fn planning_of(&self, run_id: &str) -> sqlx::Result<Option<i64>>;
    /// Deletes a run whose planning failed before any of its shards was
    /// published, as if it had never begun; returns whether it did.
    async fn discard_unpublished_run(&self, run_id: &str) -> sqlx::Result<bool>;
    /// The parameters of the groups a shard holds, as (group, JSON text).
    async fn shard_group_params(
        &self,
        run_id: &str,
        shard_no: u32,
    ) -> sqlx::Result<Vec<(String, String)>>;
    /// How many groups a run's plan lists (`None`: no such run).
    async fn plan_group_count(&self, run_id: &str) -> sqlx::Result<Option<i64>>;
    /// A run's plan groups in the plan's order, each with its record's
    /// counts when it has one, as JSON texts, streamed from the database
    /// row by row: a report of any size is written as it is read.
    fn report_groups<'a>(
        &'a self,
        run_id: &'a str,
    ) -> futures::stream::BoxStream<'a, sqlx::Result<(String, Option<String>)>>;
    /// The most recent runs, newest first.
    async fn recent_runs(&self, limit: i64) -> sqlx::Result<Vec<RecentRun>>;
    /// The shards of a run, in order.
    async fn shards(&self, run_id: &str) -> sqlx::Result<Vec<ShardRecord>>;
    /// Marks shards as published (their task was confirmed by the broker).
    async fn mark_published(&self, run_id: &str, shard_nos: &[i32]) -> Result<(), StoreError>;
    /// Folds one shard result into its run, once, in one transaction (see
    /// [`crate::Store::reduce`]).
    async fn reduce(&self, result: &ShardResult) -> Result<Reduced, StoreError>;
    /// The job's runs that have not finished, newest first.
    async fn active_runs(&self, job: &str) -> sqlx::Result<Vec<RawActiveRun>>;
    /// The target a shard covers (`None`: no such shard).
    async fn shard_target(&self, run_id: &str, shard_no: u32) -> sqlx::Result<Option<String>>;
    /// The last error recorded for a shard (outer `None`: no such shard).
    async fn shard_last_error(
        &self,
        run_id: &str,
        shard_no: u32,
    ) -> sqlx::Result<Option<Option<String>>>;
    /// Dead shards with their errors: (shard, target, error).
    async fn dead_shards(&self, run_id: &str) -> sqlx::Result<Vec<(i64, String, String)>>;

    /// Takes the job's lock on a connection of its own (`None`: another
    /// session holds it). Only a back end with session advisory locks has
    /// one; SQLite's own locking serializes writers of its one process.
    async fn try_lock_job(&self, job: &str) -> Result<Capability<Option<JobLock>>, StoreError>;
    /// Whether some session holds the job's lock.
    async fn job_lock_held(&self, job: &str) -> sqlx::Result<Capability<bool>>;

    // ---- planning ----

    /// The spec's groups query (`keys`: its `$1`, when it has one), each
    /// row read as a group as it comes (a run may plan 50,000 groups: their
    /// rows are not held twice); `what` names the query in its error.
    async fn group_rows(
        &self,
        user_sql: &str,
        keys: Option<Option<String>>,
        what: &str,
    ) -> Result<Vec<backfill_job::plan::GroupRow>, StoreError>;
    /// Plans a run and records it (see [`crate::Store::create_run`]): on
    /// PostgreSQL a shard at a time, each task sent to `sink` once its shard
    /// is committed; on SQLite in one transaction, `sink` unused.
    async fn create_run(
        &self,
        new: NewRun<'_>,
        from: PlanFrom,
        sink: Option<&ShardSink>,
    ) -> Result<Plan, StoreError>;
    /// Records a run derived from a finished run in one transaction (see
    /// [`crate::Store::create_derived_run`]).
    async fn create_derived_run(
        &self,
        run_id: &str,
        original: &RunRecord,
        shard_size: u32,
        derived: Derived,
    ) -> Result<Plan, StoreError>;

    // ---- a mapper's shard ----

    /// A shard's stored result when it is done (or given up).
    async fn shard_done(&self, run_id: &str, shard_no: u32) -> Result<Option<Tally>, StoreError>;
    /// A shard's items and their target rows, read without locks (`digests`:
    /// with the `md5` of each document, where the back end compares those).
    async fn fetch_shard(
        &self,
        run_id: &str,
        target: &TargetSpec,
        shard_no: u32,
        digests: bool,
    ) -> Result<Vec<FetchedRow>, StoreError>;
    /// How each column of `table` is typed, to cast written text back to
    /// it. Only a back end whose columns have types of their own has them:
    /// every SQLite column keeps the text it is given.
    async fn column_types(&self, table: &str)
        -> sqlx::Result<Capability<BTreeMap<String, String>>>;
    /// The system column a row's version is read from and compared on: a
    /// fetched row carries it, and a write whose row still has it skips
    /// comparing the documents. A back end without row versions compares
    /// the documents themselves.
    fn row_versions(&self) -> Capability<&'static str>;
    /// Starts a shard's transaction and locks its ledger row (`types`: the
    /// target's column types, see [`Backend::column_types`]).
    async fn open_shard(
        &self,
        work: &ShardWork<'_>,
        types: BTreeMap<String, String>,
    ) -> Result<Opened<Self::Tx>, StoreError>;
    /// Commits a whole shard in one transaction.
    async fn commit_shard(
        &self,
        c: ShardCommit<'_>,
        types: BTreeMap<String, String>,
    ) -> Result<Committed, StoreError>;
    /// Records a failed attempt at a shard; how many attempts failed.
    async fn shard_attempt_failed(
        &self,
        run_id: &str,
        shard_no: u32,
        error: &str,
    ) -> Result<u32, StoreError>;
    /// Records a shard given up, its rows quarantined (see
    /// [`crate::Store::fail_shard`]).
    async fn fail_shard(
        &self,
        run_id: &str,
        shard_no: u32,
        target: &str,
        error: &str,
    ) -> Result<Committed, StoreError>;

    // ---- identity ----

    /// Whether the ledger has been given its identity.
    async fn has_identity(&self) -> sqlx::Result<bool>;
    /// Gives a ledger found without an identity one (unless a concurrent
    /// start gave it one meanwhile).
    async fn ensure_identity(&self) -> Result<(), StoreError>;
    /// The ledger's identity, with the database it is in now.
    async fn load_identity(&self) -> Result<LedgerIdentity, StoreError>;
    /// Replaces a copied ledger's identity with a new one of this database.
    /// Only a back end that can tell a copied ledger apart has one to
    /// replace (an SQLite file's ledger is never a copy).
    async fn replace_identity(&self) -> Result<Capability<()>, StoreError>;

    // ---- status ----

    /// A run's shards with their times.
    async fn raw_shards(&self, run_id: &str) -> sqlx::Result<Vec<RawShard>>;
    /// A run's creation and finish, and the ledger's clock now (seconds
    /// since the epoch).
    async fn run_times(&self, run_id: &str) -> sqlx::Result<(f64, Option<f64>, f64)>;
    /// The workers that committed shards of a run.
    async fn run_workers(&self, run_id: &str) -> sqlx::Result<Vec<RawWorker>>;

    // ---- audit ----

    /// Full forward dry runs of a job and spec that finished without errors
    /// less than `secs` seconds ago, newest first.
    async fn recent_dry_runs(
        &self,
        job: &str,
        spec_hash: &str,
        secs: f64,
    ) -> sqlx::Result<Vec<String>>;
    /// The before-images of some rows of a target.
    async fn before_images(
        &self,
        run_id: &str,
        target: &str,
        keys: &[String],
    ) -> Result<Vec<crate::model::audit::RawImage>, StoreError>;
    /// Sets a run's `table_rows` document.
    async fn set_table_rows(&self, run_id: &str, doc: serde_json::Value) -> sqlx::Result<()>;
}

/// A shard's transaction on one back end, as [`crate::ShardTx`] drives it.
pub(crate) trait ShardTransaction {
    /// The next batch of the shard's rows within `limits`, `None` when every
    /// row was read.
    async fn next_batch(
        &mut self,
        work: &ShardWork<'_>,
        limits: BatchLimits,
    ) -> Result<Option<Vec<FetchedRow>>, StoreError>;
    /// Writes a batch's evaluated rows: the batch's result, or `None` when
    /// the back end writes them all at [`ShardTransaction::finish`].
    async fn write(
        &mut self,
        work: &ShardWork<'_>,
        rows: Vec<EvaluatedRow>,
    ) -> Result<Option<Tally>, StoreError>;
    /// Records the shard done with `tally` (the batches' results) and
    /// commits.
    async fn finish(self, work: &ShardWork<'_>, tally: Tally) -> Result<Committed, StoreError>;
    /// Has the database apply a pushed-down target's edits to the shard's
    /// next `rows` items itself (see `backfill_job::pushdown`): their
    /// result, with the rows handed back to be read, evaluated and written
    /// as usual; `None` once every item was taken. `in_flight` is set to
    /// the batch's rows before its statement runs. `Lacks` where the
    /// dialect cannot: the shard is then read batch by batch.
    async fn push_batch(
        &mut self,
        work: &ShardWork<'_>,
        plan: &Pushdown,
        params: &HashMap<String, Map<String, Value>>,
        rows: usize,
        in_flight: &mut usize,
    ) -> Result<Capability<Option<(Tally, Vec<FetchedRow>)>>, StoreError>;
}

/// What opening a shard found (`T`: the back end's transaction). A
/// dialect's transaction may be much smaller than a stored result; the
/// value lives only until [`crate::Store::open_shard`] unpacks it.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Opened<T> {
    /// Already done (or given up): its stored result.
    Done(Tally),
    /// Locked: its transaction.
    Open(T),
}
