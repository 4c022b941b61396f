//! The PostgreSQL back end: [`Pg`] implements [`Backend`] with
//! PostgreSQL's own SQL, one module per area (`identity`, `status`,
//! `audit`); statements both dialects read alike come from
//! [`crate::common`].

use backfill_job::spec::Dialect;
use sqlx::PgPool;

use crate::backend::{Backend, Capability};
use crate::identity::LedgerIdentity;
use crate::status::{RawShard, RawWorker};
use crate::StoreError;

mod audit;
pub(crate) mod identity;
mod status;

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
}
