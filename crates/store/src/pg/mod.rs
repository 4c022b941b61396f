//! The PostgreSQL back end: [`Pg`] implements [`Backend`] with
//! PostgreSQL's own SQL, one module per area (`identity`, `status`,
//! `audit`, `steer`, `ledger`, `planning`, `shard`); statements both
//! dialects read alike, and the methods that only hand an operation to the
//! area's module, come from [`crate::common`]. What is written here is what
//! PostgreSQL does differently.

use backfill_job::spec::Dialect;
use sqlx::PgPool;
use std::collections::BTreeMap;

use crate::backend::{Backend, Capability, Opened};
use crate::error::StoreError;
use crate::model::ledger::JobLock;
use crate::model::shard::{Committed, ShardCommit, ShardWork};

mod audit;
mod identity;
mod ledger;
mod planning;
mod pushdown;
mod shard;
mod status;
mod steer;

pub(crate) use shard::ShardTx;

/// Begins a write transaction: what SQLite's `begin_write` is to its
/// write lock, for the statements both dialects share (PostgreSQL locks
/// rows as they are written).
pub(crate) async fn begin_write(
    pool: &PgPool,
    what: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    pool.begin()
        .await
        .map_err(crate::error::sql(format!("begin {what}")))
}

/// A PostgreSQL ledger.
#[derive(Clone, Debug)]
pub(crate) struct Pg {
    pub(crate) pool: PgPool,
}

impl Backend for Pg {
    type Tx = ShardTx;

    crate::common::common_ops!();
    crate::common::delegated_ops!();
    crate::common::statement_ops!();

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    async fn replace_identity(&self) -> Result<Capability<()>, StoreError> {
        identity::replace(&self.pool).await.map(Capability::Has)
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
    ) -> Result<Opened<ShardTx>, StoreError> {
        shard::open_shard(&self.pool, work, types).await
    }

    async fn commit_shard(
        &self,
        c: ShardCommit<'_>,
        types: BTreeMap<String, String>,
    ) -> Result<Committed, StoreError> {
        shard::commit_shard(&self.pool, c, types).await
    }
}
