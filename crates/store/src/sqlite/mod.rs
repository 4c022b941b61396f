//! The SQLite back end of the embedded mode: [`Lite`] implements
//! [`Backend`] with SQLite's own SQL, one module per area (`identity`,
//! `status`, `audit`, `steer`, `ledger`, `planning`, `shard`); statements
//! both dialects read alike, and the methods that only hand an operation to
//! the area's module, come from [`crate::common`]. One writer at a time: a
//! write transaction begins `IMMEDIATE` ([`begin_write`]); JSON columns are
//! text ([`json_text`], [`parse_json`]).

use backfill_job::spec::Dialect;
use sqlx::SqlitePool;
use std::collections::BTreeMap;

use crate::backend::{Backend, Capability, Opened};
use crate::error::StoreError;
use crate::model::ledger::JobLock;
use crate::model::shard::{Committed, ShardCommit, ShardWork};

mod audit;
mod identity;
mod ledger;
mod planning;
mod shard;
mod status;
mod steer;

pub(crate) use shard::ShardTx;

/// An SQLite ledger.
#[derive(Clone, Debug)]
pub(crate) struct Lite {
    pub(crate) pool: SqlitePool,
}

impl Backend for Lite {
    type Tx = ShardTx;

    crate::common::common_ops!();
    crate::common::delegated_ops!();
    crate::common::statement_ops!();

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn replace_identity(&self) -> Result<Capability<()>, StoreError> {
        Ok(Capability::Lacks(
            "an SQLite file has no oid: its ledger is never a copy",
        ))
    }

    async fn wal_sample(
        &self,
        _run_id: &str,
        _burst: f64,
        _window: f64,
    ) -> sqlx::Result<Capability<Option<(f64, f64)>>> {
        Ok(Capability::Lacks("SQLite has no WAL position to cap"))
    }

    async fn replication_lag(&self) -> sqlx::Result<Capability<(Option<f64>, Option<f64>)>> {
        Ok(Capability::Lacks("an SQLite file has no replicas"))
    }

    async fn active_backends(&self) -> sqlx::Result<Capability<i64>> {
        Ok(Capability::Lacks("SQLite has no server backends"))
    }

    async fn quiet_runs(&self) -> sqlx::Result<Capability<Vec<(String, f64, bool)>>> {
        Ok(Capability::Lacks(
            "on SQLite the run is one process that reports itself",
        ))
    }

    async fn try_lock_job(&self, _job: &str) -> Result<Capability<Option<JobLock>>, StoreError> {
        Ok(Capability::Lacks("SQLite has no session advisory locks"))
    }

    async fn job_lock_held(&self, _job: &str) -> sqlx::Result<Capability<bool>> {
        Ok(Capability::Lacks("SQLite has no session advisory locks"))
    }

    async fn column_types(
        &self,
        _table: &str,
    ) -> sqlx::Result<Capability<BTreeMap<String, String>>> {
        Ok(Capability::Lacks(
            "every SQLite column keeps the text it is given",
        ))
    }

    fn row_versions(&self) -> Capability<&'static str> {
        Capability::Lacks("SQLite has no row versions: the documents themselves are compared")
    }

    async fn open_shard(
        &self,
        work: &ShardWork<'_>,
        _types: BTreeMap<String, String>,
    ) -> Result<Opened<ShardTx>, StoreError> {
        shard::open_shard(&self.pool, work).await
    }

    async fn commit_shard(
        &self,
        c: ShardCommit<'_>,
        _types: BTreeMap<String, String>,
    ) -> Result<Committed, StoreError> {
        shard::commit_shard(&self.pool, c).await
    }
}

/// A value as the JSON text SQLite stores.
pub(crate) fn json_text(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Data(e.to_string()))
}

/// A JSON column's text, parsed (SQL NULL: JSON null).
pub(crate) fn parse_json(
    what: &str,
    text: Option<String>,
) -> Result<serde_json::Value, StoreError> {
    match text {
        None => Ok(serde_json::Value::Null),
        Some(t) => serde_json::from_str(&t)
            .map_err(|e| StoreError::Data(format!("ledger {what} is unreadable: {e}"))),
    }
}

/// Begins a write transaction that takes SQLite's write lock up front
/// (`BEGIN IMMEDIATE`), so it waits its turn instead of failing on a lock
/// upgrade.
pub(crate) async fn begin_write(
    pool: &SqlitePool,
    what: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(crate::error::sql(format!("begin {what}")))
}
