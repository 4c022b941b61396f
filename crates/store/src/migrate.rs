//! The ledger's schema: versioned migrations per dialect, run by sqlx's
//! migrator when a writer connects, and the adoption of ledgers made before
//! there were any.
//!
//! `migrations/postgres/` and `migrations/sqlite/` (beside `src/`) hold one
//! SQL file per version, `NNNN_name.sql`, embedded at build time by
//! `sqlx::migrate!` (with each file's checksum). A connecting writer applies
//! the versions its database lacks, each in one transaction with its record
//! in `backfill_migrations` (version, description, checksum, when); a
//! version recorded with another checksum is refused, naming it. Read-only
//! connections run nothing. A version applied by a newer release that this
//! one does not know is let be, so during a rolling upgrade the workers of
//! the older release keep starting, as they did when tables were made on
//! connect.
//!
//! The records are kept in a table of the ledger's own rather than in sqlx's
//! `_sqlx_migrations`: the ledger lives in the application's database, and
//! an application whose own schema sqlx's migrator keeps there would share
//! that table (its version 1 and the ledger's would collide).
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
//!   column is adopted without locking any of its tables. The migrations run
//!   under a session advisory lock ([`PG_LOCK`], on a connection of its own,
//!   closed after, so a failed run cannot leave the lock held in the pool):
//!   workers starting together apply a version once, one after another. Version 1 also takes the lock under which the
//!   earlier releases made their tables, so it never runs beside one of
//!   them.
//! - SQLite has no `ADD COLUMN IF NOT EXISTS`. Before the migrator runs, a
//!   ledger whose tables exist but which has no version 1 recorded gets the
//!   columns added since its release ([`SQLITE_ADDED_COLUMNS`]), each only
//!   when `pragma_table_info` shows it missing, in one write transaction;
//!   version 1's `CREATE TABLE IF NOT EXISTS` then creates only the tables
//!   it lacks. Tables a ledger lacks altogether are left to version 1,
//!   which creates them whole. Each version is applied in an immediate
//!   (write) transaction that first looks for its record, so connects in
//!   several processes apply it once, one after another.
//!
//! After the migrations, the ledger is given its identity when it has none
//! (see [`crate::identity`]).

use sqlx::migrate::{Migration, Migrator};
use sqlx::{Connection, PgPool, SqlitePool};

use crate::error::{sql, StoreError};

/// The PostgreSQL ledger's migrations.
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The SQLite ledger's migrations.
static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");

/// The session advisory lock the PostgreSQL migrations run under.
pub(crate) const PG_LOCK: &str = "SELECT pg_advisory_lock(hashtext('backfill ledger migrations'))";
const PG_UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('backfill ledger migrations'))";

const PG_RECORDS: &str = "CREATE TABLE IF NOT EXISTS backfill_migrations (
    version bigint PRIMARY KEY,
    description text NOT NULL,
    installed_on timestamptz NOT NULL DEFAULT now(),
    success boolean NOT NULL,
    checksum bytea NOT NULL,
    execution_time bigint NOT NULL
)";
const LITE_RECORDS: &str = "CREATE TABLE IF NOT EXISTS backfill_migrations (
    version integer PRIMARY KEY,
    description text NOT NULL,
    installed_on text NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    success integer NOT NULL,
    checksum blob NOT NULL,
    execution_time integer NOT NULL
)";
const RECORDED: &str = "SELECT checksum FROM backfill_migrations WHERE version = $1";
const RECORD: &str =
    "INSERT INTO backfill_migrations (version, description, success, checksum, execution_time)
    VALUES ($1, $2, TRUE, $3, $4)";

/// The versions to apply, in order (sqlx's embedded list also holds the
/// reverse of a reversible migration; the ledger's are not reversible).
///
/// Collected, not iterated lazily: an iterator with a closure held across
/// the awaits makes the connect's future lose `Send`.
fn ups(m: &'static Migrator) -> Vec<&'static Migration> {
    m.iter()
        .filter(|m| m.migration_type.is_up_migration())
        .collect()
}

/// A version recorded with another text than this release's: the file was
/// edited after it was applied somewhere, and applying the rest on top of
/// it could leave a ledger neither release knows.
fn changed(m: &Migration) -> StoreError {
    StoreError::Data(format!(
        "the ledger's migration {} ({}) was applied with another text than this release's; \
         the database's ledger and this release disagree on its schema",
        m.version, m.description
    ))
}

/// Whether migration `$m` is recorded on `$conn` with this release's text;
/// one recorded with another text returns the error [`changed`].
macro_rules! recorded {
    ($conn:expr, $m:expr) => {{
        let sum: Option<Vec<u8>> = sqlx::query_scalar(RECORDED)
            .bind($m.version)
            .fetch_optional($conn)
            .await
            .map_err(sql("read the ledger's migrations"))?;
        match sum {
            Some(sum) if sum == *$m.checksum => true,
            Some(_) => return Err(changed($m)),
            None => false,
        }
    }};
}

/// Runs migration `$m` in the transaction `$tx`, records it with how long
/// it took, and commits.
macro_rules! apply {
    ($tx:ident, $m:expr) => {{
        let started = std::time::Instant::now();
        sqlx::Executor::execute(&mut *$tx, $m.sql.as_ref())
            .await
            .map_err(sql(format!("migrate the ledger to version {}", $m.version)))?;
        sqlx::query(RECORD)
            .bind($m.version)
            .bind($m.description.to_string())
            .bind($m.checksum.to_vec())
            .bind(started.elapsed().as_nanos() as i64)
            .execute(&mut *$tx)
            .await
            .map_err(sql("record a ledger migration"))?;
        $tx.commit()
            .await
            .map_err(sql("commit a ledger migration"))?;
    }};
}

/// Brings a PostgreSQL ledger to the current version (creating it on a
/// fresh database) and gives it its identity.
pub(crate) async fn postgres(pool: &PgPool) -> Result<(), StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(sql("connect to migrate the ledger"))?
        .detach();
    let done = postgres_on(&mut conn).await;
    // Closing ends the session and with it the advisory lock, also when the
    // run failed half-way and did not release it.
    let _ = conn.close().await;
    done?;
    crate::identity::ensure_postgres(pool).await
}

async fn postgres_on(conn: &mut sqlx::PgConnection) -> Result<(), StoreError> {
    sqlx::query(PG_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(sql("lock the ledger's migrations"))?;
    sqlx::query(PG_RECORDS)
        .execute(&mut *conn)
        .await
        .map_err(sql("create the ledger's migration records"))?;
    for m in ups(&POSTGRES) {
        if recorded!(&mut *conn, m) {
            continue;
        }
        let mut tx = conn
            .begin()
            .await
            .map_err(sql("begin a ledger migration"))?;
        apply!(tx, m);
    }
    sqlx::query(PG_UNLOCK)
        .execute(&mut *conn)
        .await
        .map_err(sql("unlock the ledger's migrations"))?;
    Ok(())
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

/// Brings an SQLite ledger to the current version (creating it in a fresh
/// database file) and gives it its identity.
pub(crate) async fn sqlite(pool: &SqlitePool) -> Result<(), StoreError> {
    adopt_sqlite(pool).await?;
    for m in ups(&SQLITE) {
        // An immediate transaction holds the database's write lock from its
        // start: another process's connect waits here, then finds the record.
        let mut tx = pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql("begin a ledger migration"))?;
        sqlx::query(LITE_RECORDS)
            .execute(&mut *tx)
            .await
            .map_err(sql("create the ledger's migration records"))?;
        if recorded!(&mut *tx, m) {
            continue;
        }
        apply!(tx, m);
    }
    crate::identity::ensure_sqlite(pool).await
}

/// Whether the SQLite query `query` (an `EXISTS`) holds; `what` names it in
/// an error.
async fn holds(
    conn: &mut sqlx::SqliteConnection,
    query: &str,
    what: &str,
) -> Result<bool, StoreError> {
    sqlx::query_scalar(query)
        .fetch_one(conn)
        .await
        .map_err(sql(what.to_string()))
}

/// Adds to a ledger made before versioned migrations the columns it lacks
/// (see the module's documentation); nothing once version 1 is recorded.
async fn adopt_sqlite(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(sql("begin adopting the ledger"))?;
    // The records are read only where their table exists.
    let baseline = holds(
        &mut tx,
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'backfill_migrations')",
        "look for the ledger's migrations",
    )
    .await?
        && holds(
            &mut tx,
            "SELECT EXISTS (SELECT 1 FROM backfill_migrations WHERE version = 1)",
            "read the ledger's migrations",
        )
        .await?;
    if baseline {
        return Ok(());
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
