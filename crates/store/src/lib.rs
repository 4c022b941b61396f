//! The database edge: target rows and the run ledger, over sqlx.
//!
//! # Layout
//!
//! - `migrate` (private): the ledger's schema, as versioned SQL migrations
//!   per dialect (`migrations/postgres`, `migrations/sqlite`) that a writer
//!   applies on connect, and the adoption of ledgers made before them.
//! - `backend` (private): the ledger operations as one trait, `Backend`,
//!   and a shard's transaction as another (`ShardTransaction`); a
//!   capability one dialect lacks is said there.
//! - `db` (private): the one point where a store picks its dialect (`Db`,
//!   `DbTx`, `dispatch!`).
//! - `pg`, `sqlite` (private): one module tree per dialect implementing
//!   `Backend`, each holding its own SQL and control flow; `common`
//!   (private): what both dialects would otherwise repeat, written once —
//!   the statements they read alike, the methods that only hand an
//!   operation to the dialect's module, and the code around a statement
//!   each dialect writes its own way.
//! - `error` (private): [`StoreError`] and `sql()`, which wraps a driver
//!   error with what was being done.
//! - `model` (private): the records, row types, statements and pure helpers
//!   that the dialects and the dialect-free modules share; it imports
//!   nothing of the crate but `error`, and each dialect-free module
//!   re-exports its part, so public paths stay.
//! - [`ledger`]: the ledger tables' run and shard records, the reducer's
//!   dedup-and-fold step.
//! - [`planning`]: runs the spec's groups and targets SQL with bound
//!   parameters, and records a run's plan (run row, items, shards) in one
//!   transaction.
//! - [`shard`]: a mapper's two database steps — fetch a shard's rows, then
//!   commit the compare-and-set writes, before-images and the shard's ledger
//!   record in ONE transaction (each dialect's transaction behind
//!   `backend::ShardTransaction`).
//!
//! The dialect-free modules ([`ledger`], [`planning`], [`shard`], [`steer`],
//! [`status`], [`audit`], [`identity`]) reach a dialect only through `db`
//! and the trait; `pg`, `sqlite` and `common` use only `model`, `error` and
//! `backend`, never a dialect-free module, so no file imports one that
//! imports it back.
//!
//! PostgreSQL is the main back end; SQLite (`sqlite`, private) serves the
//! embedded mode with the same operations and the same guarantees, one
//! writer at a time. Table and column names from a spec are validated by the
//! job model and always quoted here; values are always bound. A statement
//! both dialects read alike is written once with `$n` parameters (SQLite
//! binds `$n` by number as PostgreSQL does); where the dialects differ, each
//! has its statement written out in full, side by side. No SQL is rewritten
//! from one dialect into the other.
//!
//! `tests/contract.rs` is the store's contract: every ledger operation, run
//! on both back ends (each its own test, `NAME::sqlite` and
//! `NAME::postgres`; `-- --skip postgres` runs the half that needs no
//! service), including the adoption of ledgers made by earlier releases
//! (`tests/fixtures`).

pub mod audit;
mod backend;
mod common;
mod db;
mod error;
pub mod eta;
pub mod identity;
pub mod ledger;
mod migrate;
mod model;
mod pg;
pub mod planning;
pub mod shard;
mod sqlite;
pub mod status;
pub mod steer;

use backfill_job::spec::Dialect;
use db::{dispatch, Db};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection};
use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use audit::Verified;
pub(crate) use error::sql;
pub use error::StoreError;
pub use identity::LedgerIdentity;
pub use ledger::{ActiveRun, JobLock, Reduced};
pub use ledger::{RunRecord, ShardRecord};
pub use planning::{Derived, NewRun, ShardSink};
pub use shard::{
    BatchLimits, Committed, EvaluatedRow, FetchedRow, OpenShard, PushedBatch, ShardCommit,
    ShardRows, ShardTx, ShardWork,
};
pub use steer::{Claim, Control, ControlState, Health, QuietRun, ThrottleChange};

/// A read-only command found no ledger (or one made by an older version,
/// which only a writing command upgrades).
fn no_ledger((runs, identity): (bool, bool), url: &str) -> Result<(), StoreError> {
    match (runs, identity) {
        (true, true) => Ok(()),
        (false, _) => Err(StoreError::NoLedger {
            url: redact_url(url),
            why: "no job has run against this database".into(),
        }),
        (true, false) => Err(StoreError::NoLedger {
            url: redact_url(url),
            why: "its ledger was made by an older version of backfill; start any worker or job of this version once to upgrade it".into(),
        }),
    }
}

impl Store {
    /// A `count(*)` query whose one parameter is a run id (`$1`), written
    /// in SQL both dialects read alike.
    pub(crate) async fn count_of_run(
        &self,
        q: &str,
        run_id: &str,
        what: &str,
    ) -> Result<u64, StoreError> {
        let n: i64 = dispatch!(self, count_of_run(q, run_id)).map_err(sql(what))?;
        Ok(n.max(0) as u64)
    }
}

/// Hides the credentials of a URL (userinfo password, secret query
/// parameters), for every log line and error message.
pub fn redact_url(url: &str) -> String {
    backfill_job::redact::redact_url(url)
}

/// A handle on the database: target tables and ledger.
#[derive(Clone, Debug)]
pub struct Store {
    /// The back end, by dialect (see `db`).
    pub(crate) db: Db,
    types: TypesCache,
    pub(crate) ledger: Arc<LedgerIdentity>,
}

/// Column types per table, looked up once per process.
#[derive(Clone, Debug, Default)]
pub(crate) struct TypesCache(Arc<Mutex<HashMap<String, BTreeMap<String, String>>>>);

impl TypesCache {
    pub(crate) fn get(&self, table: &str) -> Option<BTreeMap<String, String>> {
        self.0.lock().ok().and_then(|m| m.get(table).cloned())
    }
    pub(crate) fn put(&self, table: &str, types: BTreeMap<String, String>) {
        if let Ok(mut m) = self.0.lock() {
            m.insert(table.to_string(), types);
        }
    }
}

/// How long the first, direct connection to PostgreSQL may take.
const FIRST_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn is_refused(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused)
}

impl Store {
    /// Connects to `postgres://…` or `sqlite://…`, and creates or upgrades
    /// the ledger tables (applies the ledger's migrations the database
    /// lacks, see `migrate`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Store::open(url, max_connections, true).await
    }

    /// Connects for a read-only command (`status`, `report`, `history`,
    /// `dashboard`): runs no DDL, so pointing one at the wrong database
    /// creates nothing there; a database with no ledger is
    /// [`StoreError::NoLedger`], naming the URL (redacted).
    pub async fn connect_existing(url: &str, max_connections: u32) -> Result<Store, StoreError> {
        Store::open(url, max_connections, false).await
    }

    async fn open(url: &str, max_connections: u32, migrate: bool) -> Result<Store, StoreError> {
        let pg_hint = "Is PostgreSQL running? (start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or set DATABASE_URL)";
        let lite_hint = "Check the path; add `?mode=rwc` to the URL to create a new database file.";
        let connect_err = |source: sqlx::Error| StoreError::Connect {
            url: redact_url(url),
            hint: pg_hint,
            source: backfill_job::redact::RedactedError::new(&source, url),
        };
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = PgConnectOptions::from_str(url)
                .map_err(connect_err)?
                .application_name("backfill")
                // Adopting a ledger made before versioned migrations would
                // log a notice per table and column already there.
                .options([("client_min_messages", "warning")]);
            // One direct connection first: the pool's acquire timeout would
            // wait 30 s and then report "pool timed out", losing the cause
            // (refused, unknown host, no such role or database).
            let probe = tokio::time::timeout(FIRST_CONNECT_TIMEOUT, opts.connect())
                .await
                .map_err(|_| StoreError::Connect {
                    url: redact_url(url),
                    hint: pg_hint,
                    source: backfill_job::redact::RedactedError::new(
                        &sqlx::Error::PoolTimedOut,
                        url,
                    ),
                })?;
            match probe {
                Ok(conn) => {
                    let _ = conn.close().await;
                }
                Err(source) => {
                    return Err(StoreError::Connect {
                        url: redact_url(url),
                        // The "start it" hint only helps when nothing listens.
                        hint: if is_refused(&source) {
                            pg_hint
                        } else {
                            "Check DATABASE_URL: host, port, role, password and database name."
                        },
                        source: backfill_job::redact::RedactedError::new(&source, url),
                    });
                }
            }
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(2))
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await
                .map_err(connect_err)?;
            if migrate {
                migrate::postgres(&pool).await?;
            } else {
                let present: (bool, bool) = sqlx::query_as(
                    "SELECT to_regclass('backfill_run') IS NOT NULL, to_regclass('backfill_ledger') IS NOT NULL",
                )
                .fetch_one(&pool)
                .await
                .map_err(sql("look for the ledger"))?;
                no_ledger(present, url)?;
            }
            Db::postgres(pool)
        } else if url.starts_with("sqlite:") {
            // WAL lets readers go on while one writer commits; the busy
            // timeout makes concurrent shard commits wait their turn.
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|source| StoreError::Connect {
                    url: redact_url(url),
                    hint: lite_hint,
                    source: backfill_job::redact::RedactedError::new(&source, url),
                })?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(60));
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.clamp(2, 8))
                .acquire_timeout(Duration::from_secs(60))
                .connect_with(opts)
                .await
                .map_err(|source| StoreError::Connect {
                    url: redact_url(url),
                    hint: lite_hint,
                    source: backfill_job::redact::RedactedError::new(&source, url),
                })?;
            if migrate {
                migrate::sqlite(&pool).await?;
            } else {
                let present: (bool, bool) = sqlx::query_as(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'backfill_run'),
                            EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'backfill_ledger')",
                )
                .fetch_one(&pool)
                .await
                .map_err(sql("look for the ledger"))?;
                no_ledger(present, url)?;
            }
            Db::sqlite(pool)
        } else {
            return Err(StoreError::Scheme(redact_url(url)));
        };
        let ledger = Arc::new(dispatch!(db: &db, load_identity())?);
        Ok(Store {
            db,
            types: TypesCache::default(),
            ledger,
        })
    }

    /// The SQL dialect of the back end.
    pub fn dialect(&self) -> Dialect {
        dispatch!(sync self, dialect())
    }

    pub(crate) fn types_cache(&self) -> &TypesCache {
        &self.types
    }

    pub async fn close(&self) {
        dispatch!(self, close())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(
            redact_url("postgres://postgres@h:5432/db?password=hunter2"),
            "postgres://postgres@h:5432/db?password=***"
        );
    }
}
