//! The PostgreSQL back end: [`Pg`] implements [`Backend`] with
//! PostgreSQL's own SQL, one module per area (`identity`, `status`,
//! `audit`, `steer`, `ledger`, `planning`, `shard`); statements both dialects read
//! alike come from [`crate::common`].

use backfill_job::plan::NewRun;
use backfill_job::spec::Dialect;
use backfill_job::spec::TargetSpec;
use backfill_job::{Plan, PlannedGroup, ShardResult, Tally};
use sqlx::PgPool;
use std::collections::BTreeMap;

use crate::backend::{Backend, Capability, Opened};
use crate::identity::LedgerIdentity;
use crate::ledger::{JobLock, RawRun, RecentRun, Reduced, RunRecord};
use crate::planning::Derived;
use crate::shard::{Committed, FetchedRow, ShardCommit, ShardWork};
use crate::status::{RawShard, RawWorker};
use crate::steer::{Claim, HistoryRow, RawControl, RawCost, RawEvent};
use crate::StoreError;

mod audit;
mod identity;
mod ledger;
mod planning;
mod shard;
mod status;
mod steer;

pub(crate) use shard::ShardTx;

/// A PostgreSQL ledger.
#[derive(Clone, Debug)]
pub(crate) struct Pg {
    pub(crate) pool: PgPool,
}

impl Backend for Pg {
    crate::common::common_ops!();

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn ensure_identity(&self) -> Result<(), StoreError> {
        identity::ensure(&self.pool).await
    }

    async fn load_identity(&self) -> Result<LedgerIdentity, StoreError> {
        identity::load(&self.pool).await
    }

    async fn replace_identity(&self) -> Result<Capability<()>, StoreError> {
        identity::replace(&self.pool).await.map(Capability::Has)
    }

    async fn raw_shards(&self, run_id: &str) -> sqlx::Result<Vec<RawShard>> {
        status::raw_shards(&self.pool, run_id).await
    }

    async fn run_times(&self, run_id: &str) -> sqlx::Result<(f64, Option<f64>, f64)> {
        status::run_times(&self.pool, run_id).await
    }

    async fn run_workers(&self, run_id: &str) -> sqlx::Result<Vec<RawWorker>> {
        status::run_workers(&self.pool, run_id).await
    }

    async fn recent_dry_runs(
        &self,
        job: &str,
        spec_hash: &str,
        secs: f64,
    ) -> sqlx::Result<Vec<String>> {
        audit::recent_dry_runs(&self.pool, job, spec_hash, secs).await
    }

    async fn before_images(
        &self,
        run_id: &str,
        target: &str,
        keys: &[String],
    ) -> Result<Vec<crate::audit::RawImage>, StoreError> {
        audit::before_images(&self.pool, run_id, target, keys)
            .await
            .map_err(crate::sql("read before-images"))
    }

    async fn set_table_rows(&self, run_id: &str, doc: serde_json::Value) -> sqlx::Result<()> {
        audit::set_table_rows(&self.pool, run_id, doc).await
    }

    async fn heartbeat(
        &self,
        worker: &str,
        role: &str,
        run_id: Option<&str>,
        shards_done: i64,
    ) -> sqlx::Result<()> {
        steer::heartbeat(&self.pool, worker, role, run_id, shards_done).await
    }

    async fn finish_cancelled(&self, run_id: &str, summary: &str) -> sqlx::Result<u64> {
        steer::finish_cancelled(&self.pool, run_id, summary).await
    }

    async fn run_events(&self, run_id: &str) -> sqlx::Result<Vec<RawEvent>> {
        steer::run_events(&self.pool, run_id).await
    }

    async fn history(&self, job: Option<&str>, limit: i64) -> sqlx::Result<Vec<HistoryRow>> {
        steer::history(&self.pool, job, limit).await
    }

    async fn prune_before_images(
        &self,
        secs: f64,
        delete: bool,
    ) -> Result<Vec<(String, i64, i64)>, StoreError> {
        steer::prune_before_images(&self.pool, secs, delete).await
    }

    async fn control(&self, run_id: &str) -> sqlx::Result<Option<RawControl>> {
        steer::control(&self.pool, run_id).await
    }

    async fn claim_shard(
        &self,
        run_id: &str,
        shard_no: u32,
        worker: &str,
        max_in_flight: Option<u32>,
    ) -> Result<Claim, StoreError> {
        steer::claim_shard(&self.pool, run_id, shard_no, worker, max_in_flight).await
    }

    async fn reserve_rows(
        &self,
        run_id: &str,
        rows: f64,
        horizon: f64,
    ) -> Result<Option<Option<f64>>, StoreError> {
        steer::reserve_rows(&self.pool, run_id, rows, horizon).await
    }

    async fn reserve_bytes(
        &self,
        run_id: &str,
        rows: f64,
        horizon: f64,
    ) -> Result<Option<(Option<f64>, Option<f64>)>, StoreError> {
        steer::reserve_bytes(&self.pool, run_id, rows, horizon).await
    }

    async fn settle_bytes(
        &self,
        run_id: &str,
        per_row: Option<f64>,
        reserved: f64,
        written: f64,
        elapsed: f64,
    ) -> sqlx::Result<()> {
        steer::settle_bytes(&self.pool, run_id, per_row, reserved, written, elapsed).await
    }

    async fn measured_shard_cost(&self, job: &str, mode: &str) -> sqlx::Result<Option<RawCost>> {
        steer::measured_shard_cost(&self.pool, job, mode).await
    }

    async fn wal_sample(
        &self,
        run_id: &str,
        burst: f64,
        window: f64,
    ) -> sqlx::Result<Capability<Option<(f64, f64)>>> {
        steer::wal_sample(&self.pool, run_id, burst, window)
            .await
            .map(Capability::Has)
    }

    async fn replication_lag(&self) -> sqlx::Result<Capability<(Option<f64>, Option<f64>)>> {
        steer::replication_lag(&self.pool)
            .await
            .map(Capability::Has)
    }

    async fn active_backends(&self) -> sqlx::Result<Capability<i64>> {
        steer::active_backends(&self.pool)
            .await
            .map(Capability::Has)
    }

    async fn quiet_runs(&self) -> sqlx::Result<Capability<Vec<(String, f64, bool)>>> {
        steer::quiet_runs(&self.pool).await.map(Capability::Has)
    }

    async fn try_lock_job(&self, job: &str) -> Result<Capability<Option<JobLock>>, StoreError> {
        ledger::try_lock_job(&self.pool, job)
            .await
            .map(Capability::Has)
    }

    async fn job_lock_held(&self, job: &str) -> sqlx::Result<Capability<bool>> {
        ledger::job_lock_held(&self.pool, job)
            .await
            .map(Capability::Has)
    }

    async fn load_run(&self, run_id: &str) -> Result<Option<RawRun>, StoreError> {
        ledger::load_run(&self.pool, run_id)
            .await
            .map_err(crate::sql("read run"))
    }

    async fn recent_runs(&self, limit: i64) -> sqlx::Result<Vec<RecentRun>> {
        ledger::recent_runs(&self.pool, limit).await
    }

    async fn mark_published(&self, run_id: &str, shard_nos: &[i32]) -> Result<(), StoreError> {
        ledger::mark_published(&self.pool, run_id, shard_nos).await
    }

    async fn reduce(&self, result: &ShardResult) -> Result<Reduced, StoreError> {
        ledger::reduce(&self.pool, result).await
    }

    async fn group_rows(
        &self,
        user_sql: &str,
        keys: Option<Option<String>>,
        what: &str,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, StoreError> {
        planning::group_rows(&self.pool, user_sql, keys, what).await
    }

    async fn create_run(
        &self,
        new: NewRun<'_>,
        groups: Vec<PlannedGroup>,
    ) -> Result<Plan, StoreError> {
        planning::create_run(&self.pool, new, groups).await
    }

    async fn create_derived_run(
        &self,
        run_id: &str,
        original: &RunRecord,
        shard_size: u32,
        derived: Derived,
    ) -> Result<Plan, StoreError> {
        planning::create_derived_run(&self.pool, run_id, original, shard_size, derived).await
    }

    async fn shard_done(&self, run_id: &str, shard_no: u32) -> Result<Option<Tally>, StoreError> {
        shard::shard_done(&self.pool, run_id, shard_no).await
    }

    async fn fetch_shard(
        &self,
        run_id: &str,
        target: &TargetSpec,
        shard_no: u32,
        digests: bool,
    ) -> Result<Vec<FetchedRow>, StoreError> {
        shard::fetch_shard(&self.pool, run_id, target, shard_no, digests).await
    }

    async fn column_types(
        &self,
        table: &str,
    ) -> sqlx::Result<Capability<BTreeMap<String, String>>> {
        shard::column_types(&self.pool, table)
            .await
            .map(Capability::Has)
    }

    fn row_versions(&self) -> Capability<&'static str> {
        Capability::Has(shard::ROW_VERSION)
    }

    async fn open_shard(
        &self,
        work: &ShardWork<'_>,
        types: BTreeMap<String, String>,
    ) -> Result<Opened, StoreError> {
        shard::open_shard(&self.pool, work, types).await
    }

    async fn commit_shard(
        &self,
        c: ShardCommit<'_>,
        types: BTreeMap<String, String>,
    ) -> Result<Committed, StoreError> {
        shard::commit_shard(&self.pool, c, types).await
    }

    async fn shard_attempt_failed(
        &self,
        run_id: &str,
        shard_no: u32,
        error: &str,
    ) -> Result<u32, StoreError> {
        shard::shard_attempt_failed(&self.pool, run_id, shard_no, error).await
    }

    async fn fail_shard(
        &self,
        run_id: &str,
        shard_no: u32,
        target: &str,
        error: &str,
    ) -> Result<Committed, StoreError> {
        shard::fail_shard(&self.pool, run_id, shard_no, target, error).await
    }
}
