//! The SQLite back end of the embedded mode: [`Lite`] implements
//! [`Backend`] with SQLite's own SQL, one module per area (`identity`,
//! `status`, `audit`); statements both dialects read alike come from
//! [`crate::common`]. One writer at a time: a write transaction begins
//! `IMMEDIATE`.

use backfill_job::spec::Dialect;
use sqlx::SqlitePool;

use crate::backend::{Backend, Capability};
use crate::identity::LedgerIdentity;
use crate::status::{RawShard, RawWorker};
use crate::StoreError;

mod audit;
pub(crate) mod identity;
mod status;

/// An SQLite ledger.
#[derive(Clone, Debug)]
pub(crate) struct Lite {
    pub(crate) pool: SqlitePool,
}

impl Backend for Lite {
    crate::common::common_ops!();

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }

    async fn load_identity(&self) -> Result<LedgerIdentity, StoreError> {
        identity::load(&self.pool).await
    }

    async fn replace_identity(&self) -> Result<Capability<()>, StoreError> {
        Ok(Capability::Lacks(
            "an SQLite file has no oid: its ledger is never a copy",
        ))
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
        // SQLite has no arrays: the keys go in as one JSON array.
        let list = serde_json::to_string(keys).map_err(|e| StoreError::Data(e.to_string()))?;
        audit::before_images(&self.pool, run_id, target, list)
            .await
            .map_err(crate::sql("read before-images"))
    }

    async fn set_table_rows(&self, run_id: &str, doc: serde_json::Value) -> sqlx::Result<()> {
        audit::set_table_rows(&self.pool, run_id, doc).await
    }
}
