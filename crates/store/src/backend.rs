//! The ledger operations as one trait, [`Backend`], that each dialect
//! implements in its own module tree (`pg`, `sqlite`), and the one point
//! where a [`crate::Store`] picks its dialect ([`Db`], [`dispatch!`]).
//!
//! A method is one database operation: its SQL and control flow live in the
//! dialect's module; argument checking, turning rows into the job crate's
//! types and pure logic stay in the dialect-free modules that call it.
//! Statements both dialects read alike are written once, in
//! [`crate::common`]. What one back end cannot do is said by the trait
//! (see [`Capability`]), never left as a silent no-op.
//!
//! Dispatch is static: `Db` is an enum of the two implementations, and
//! `dispatch!(store, op(args))` calls the operation on whichever the store
//! holds.

use backfill_job::spec::Dialect;

use crate::identity::LedgerIdentity;
use crate::status::{RawShard, RawWorker};
use crate::StoreError;

/// Whether a back end has a capability the other lacks; `Lacks` says why
/// the operation has no meaning there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Capability<T> {
    Has(T),
    Lacks(&'static str),
}

/// Every database operation the store performs, per dialect.
pub(crate) trait Backend {
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

    // ---- identity ----

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
    ) -> Result<Vec<crate::audit::RawImage>, StoreError>;
    /// Sets a run's `table_rows` document.
    async fn set_table_rows(&self, run_id: &str, doc: serde_json::Value) -> sqlx::Result<()>;
}

/// The back end a store holds.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Pg(crate::pg::Pg),
    Lite(crate::sqlite::Lite),
}

/// Calls a [`Backend`] operation on the back end a store holds:
/// `dispatch!(self, op(args…))` is `self.db.op(args…).await`;
/// `dispatch!(sync self, op(args…))` calls a method that is not `async`,
/// and `dispatch!(db: &db, op(args…))` one of a `Db` outside a store.
macro_rules! dispatch {
    ($store:expr, $op:ident ( $($arg:expr),* $(,)? )) => {
        $crate::backend::dispatch!(db: &$store.db, $op($($arg),*))
    };
    (sync $store:expr, $op:ident ( $($arg:expr),* $(,)? )) => {
        match &$store.db {
            $crate::backend::Db::Pg(b) => $crate::backend::Backend::$op(b, $($arg),*),
            $crate::backend::Db::Lite(b) => $crate::backend::Backend::$op(b, $($arg),*),
        }
    };
    (db: $db:expr, $op:ident ( $($arg:expr),* $(,)? )) => {
        match $db {
            $crate::backend::Db::Pg(b) => $crate::backend::Backend::$op(b, $($arg),*).await,
            $crate::backend::Db::Lite(b) => $crate::backend::Backend::$op(b, $($arg),*).await,
        }
    };
}
pub(crate) use dispatch;
