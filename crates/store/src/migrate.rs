//! The ledger's schema: versioned migrations per dialect, run by sqlx's
//! migrator when a writer connects, and the adoption of ledgers made before
//! there were any.
//!
//! `migrations/postgres/` and `migrations/sqlite/` (beside `src/`) hold one
//! SQL file per version, `NNNN_name.sql`, embedded at build time by
//! `sqlx::migrate!`. A connecting writer applies the versions its database
//! lacks, each in one transaction with its record in `_sqlx_migrations`
//! (sqlx's bookkeeping: version, checksum, when); read-only connections
//! run nothing. A version applied by a newer release that this one does not
//! know is let be (`ignore_missing`), so during a rolling upgrade the
//! workers of the older release keep starting, as they did when tables were
//! made on connect. `_sqlx_migrations` has that one name in sqlx 0.8: an
//! application of the same database whose own schema sqlx's migrator keeps
//! would share it with the ledger.
//!
//! # Adopting a ledger made before versioned migrations
//!
//! Releases before versioned migrations created and upgraded the ledger's
//! tables on every connect. Version 1 is the schema as it stood when that
//! ended, written so that it adopts whatever part of it a database holds:
//!
//! - PostgreSQL: `CREATE TABLE IF NOT EXISTS`, then the columns added over
//!   the releases, each added (`ALTER TABLE … ADD COLUMN IF NOT EXISTS`)
//!   only when the catalog shows it missing: that statement takes an ACCESS
//!   EXCLUSIVE lock on its table even when the column is there, which
//!   deadlocked with workers using the ledger, so a ledger that has every
//!   column is adopted without locking any of its tables. sqlx's migrator
//!   holds a session advisory lock for the database while it runs (on a
//!   connection of its own here, closed after, so a failed run cannot leave
//!   the lock held in the pool): workers starting together apply a version
//!   once, one after another. Version 1 also takes the lock under which the
//!   earlier releases made their tables, so it never runs beside one of
//!   them.
//! - SQLite has no `ADD COLUMN IF NOT EXISTS`. Before the migrator runs, a
//!   ledger whose tables exist but which has no version 1 recorded gets the
//!   columns added since its release ([`SQLITE_ADDED_COLUMNS`]), each only
//!   when `pragma_table_info` shows it missing, in one write transaction;
//!   version 1's `CREATE TABLE IF NOT EXISTS` then creates only the tables
//!   it lacks. Tables a ledger lacks altogether are left to version 1,
//!   which creates them whole. sqlx takes no lock on SQLite: connects in one
//!   process wait for each other here, and a connect that lost a race with
//!   another process applying the same version runs the migrator once more,
//!   which then finds it recorded.
//!
//! After the migrations, the ledger is given its identity when it has none
//! (see [`crate::identity`]).

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::{PgPool, SqlitePool};

use crate::{sql, StoreError};

/// The PostgreSQL ledger's migrations.
fn postgres_migrator() -> Migrator {
    let mut m = sqlx::migrate!("./migrations/postgres");
    m.set_ignore_missing(true);
    m
}

/// The SQLite ledger's migrations.
fn sqlite_migrator() -> Migrator {
    let mut m = sqlx::migrate!("./migrations/sqlite");
    m.set_ignore_missing(true);
    m
}

/// A migration that failed: the database's error when there is one (so a
/// lost connection stays transient), else what the migrator found.
fn migration_failed(e: MigrateError) -> StoreError {
    match e {
        MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _) => {
            sql("migrate the ledger")(source)
        }
        other => StoreError::Data(format!("the ledger's migrations: {other}")),
    }
}

/// Brings a PostgreSQL ledger to the current version (creating it on a
/// fresh database) and gives it its identity.
pub(crate) async fn postgres(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(sql("connect to migrate the ledger"))?
        .detach();
    // `run_direct` rather than `run`: `run`'s future is not `Send` (its
    // `Acquire` bound is not general enough), and connects are spawned.
    let done = postgres_migrator().run_direct(&mut conn).await;
    // Closing ends the session and with it the migrator's advisory lock,
    // also when the run failed half-way and did not release it.
    let _ = sqlx::Connection::close(conn).await;
    done.map_err(migration_failed)?;
    crate::identity::ensure_postgres(pool).await
}

/// The columns the SQLite ledger gained over the releases before versioned
/// migrations, as (table, column, the statement adding it).
pub(crate) const SQLITE_ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    (
        "backfill_shard",
        "started_at",
        "ALTER TABLE backfill_shard ADD COLUMN started_at text",
    ),
    (
        "backfill_shard",
        "lease_until",
        "ALTER TABLE backfill_shard ADD COLUMN lease_until text",
    ),
    (
        "backfill_shard",
        "elapsed_ms",
        "ALTER TABLE backfill_shard ADD COLUMN elapsed_ms integer",
    ),
    (
        "backfill_run",
        "revert_of",
        "ALTER TABLE backfill_run ADD COLUMN revert_of text",
    ),
    (
        "backfill_run",
        "sample",
        "ALTER TABLE backfill_run ADD COLUMN sample real",
    ),
    (
        "backfill_run",
        "table_rows",
        "ALTER TABLE backfill_run ADD COLUMN table_rows text",
    ),
    (
        "backfill_run",
        "kind",
        "ALTER TABLE backfill_run ADD COLUMN kind text",
    ),
    (
        "backfill_run",
        "retry_of",
        "ALTER TABLE backfill_run ADD COLUMN retry_of text",
    ),
    (
        "backfill_run",
        "schedule",
        "ALTER TABLE backfill_run ADD COLUMN schedule text",
    ),
    (
        "backfill_before_image",
        "patch",
        "ALTER TABLE backfill_before_image ADD COLUMN patch text",
    ),
    (
        "backfill_before_image",
        "after_version",
        "ALTER TABLE backfill_before_image ADD COLUMN after_version text",
    ),
    (
        "backfill_control",
        "bytes_per_sec",
        "ALTER TABLE backfill_control ADD COLUMN bytes_per_sec real",
    ),
    (
        "backfill_control",
        "bytes_next",
        "ALTER TABLE backfill_control ADD COLUMN bytes_next real",
    ),
    (
        "backfill_control",
        "bytes_per_row",
        "ALTER TABLE backfill_control ADD COLUMN bytes_per_row real",
    ),
    (
        "backfill_control",
        "max_wal_bytes_per_sec",
        "ALTER TABLE backfill_control ADD COLUMN max_wal_bytes_per_sec real",
    ),
];

/// Connects in this process migrate an SQLite ledger one at a time: sqlx's
/// migrator takes no lock on SQLite.
static SQLITE_MIGRATION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Brings an SQLite ledger to the current version (creating it in a fresh
/// database file) and gives it its identity.
pub(crate) async fn sqlite(pool: &SqlitePool) -> Result<(), StoreError> {
    let _one_at_a_time = SQLITE_MIGRATION.lock().await;
    adopt_sqlite(pool).await?;
    let mut conn = pool
        .acquire()
        .await
        .map_err(sql("connect to migrate the ledger"))?;
    if sqlite_migrator().run_direct(&mut *conn).await.is_err() {
        // Another process may have applied the same version meanwhile (its
        // record then collides with ours, and ours rolled back): run again,
        // which finds it recorded, or fails again and says why.
        sqlite_migrator()
            .run_direct(&mut *conn)
            .await
            .map_err(migration_failed)?;
    }
    drop(conn);
    crate::identity::ensure_sqlite(pool).await
}

/// Adds to a ledger made before versioned migrations the columns it lacks
/// (see the module's documentation); nothing once version 1 is recorded.
async fn adopt_sqlite(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(sql("begin adopting the ledger"))?;
    let recorded: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(sql("look for the ledger's migrations"))?;
    if recorded {
        let baseline: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = 1)")
                .fetch_one(&mut *tx)
                .await
                .map_err(sql("read the ledger's migrations"))?;
        if baseline {
            return Ok(());
        }
    }
    for (table, column, ddl) in SQLITE_ADDED_COLUMNS {
        let (has_table, has_column): (bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1),
                    EXISTS (SELECT 1 FROM pragma_table_info($1) WHERE name = $2)",
        )
        .bind(table)
        .bind(column)
        .fetch_one(&mut *tx)
        .await
        .map_err(sql("read the ledger's columns"))?;
        if has_table && !has_column {
            sqlx::query(ddl)
                .execute(&mut *tx)
                .await
                .map_err(sql("add a column to the ledger"))?;
        }
    }
    tx.commit().await.map_err(sql("commit adopting the ledger"))
}
