//! The ledger's identity: a random id given once, when the ledger is
//! created, beside the identity of the database it was created in (its oid
//! and name).
//!
//! Every message carries the ledger id, so a worker of one database never
//! acts on work of another that shares its broker; queue names default to
//! one derived from it, so two databases do not even share queues unless
//! told to. A database copied from another (`CREATE DATABASE staging
//! TEMPLATE prod`, a dump restored elsewhere) carries the copied ledger and
//! its id; it is told apart by its oid or name no longer matching what the
//! ledger recorded, and workers refuse it until `backfill ledger adopt`
//! gives it an identity of its own.
//!
//! The `backfill_ledger` table is made by the ledger's migrations (see
//! [`crate::migrate`]); its row is given here, once they have run.

use crate::{sql, Backend, Store, StoreError};

/// Who a ledger is, and whether the database it lives in is the one it was
/// created in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerIdentity {
    /// Random, 32 lowercase hex digits.
    pub id: String,
    /// The database the ledger was created in (oid and name, as recorded).
    pub recorded_database: String,
    /// The database it is in now.
    pub current_database: String,
}

impl LedgerIdentity {
    /// True when the ledger was copied here from another database.
    pub fn is_copy(&self) -> bool {
        self.recorded_database != self.current_database
    }

    /// The queue prefix used when none is given: `backfill-<12 hex digits>`.
    pub fn queue_prefix(&self) -> String {
        format!("backfill-{}", &self.id[..self.id.len().min(12)])
    }

    /// Refuses a copied ledger, saying what to do.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.is_copy() {
            return Err(StoreError::CopiedLedger {
                id: self.id.clone(),
                recorded: self.recorded_database.clone(),
                current: self.current_database.clone(),
            });
        }
        Ok(())
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether the ledger has been given its identity.
const HAS_IDENTITY: &str = "SELECT EXISTS (SELECT 1 FROM backfill_ledger)";

/// Gives a PostgreSQL ledger its identity when it has none. Under the lock
/// the ledger's migrations of every release take, so that concurrent first
/// starts (of this release or an earlier one) agree on one id.
pub(crate) async fn ensure_postgres(pool: &sqlx::PgPool) -> Result<(), StoreError> {
    let has: bool = sqlx::query_scalar(HAS_IDENTITY)
        .fetch_one(pool)
        .await
        .map_err(sql("read the ledger identity"))?;
    if has {
        return Ok(());
    }
    let mut tx = pool
        .begin()
        .await
        .map_err(sql("begin recording the ledger identity"))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backfill ledger migration'))")
        .execute(&mut *tx)
        .await
        .map_err(sql("lock the ledger identity"))?;
    ensure_pg(&mut tx).await?;
    tx.commit().await.map_err(sql("commit the ledger identity"))
}

/// Gives an SQLite ledger its identity when it has none, in a write
/// transaction (one writer at a time).
pub(crate) async fn ensure_sqlite(pool: &sqlx::SqlitePool) -> Result<(), StoreError> {
    let has: bool = sqlx::query_scalar(HAS_IDENTITY)
        .fetch_one(pool)
        .await
        .map_err(sql("read the ledger identity"))?;
    if has {
        return Ok(());
    }
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(sql("begin recording the ledger identity"))?;
    ensure_lite(&mut tx).await?;
    tx.commit().await.map_err(sql("commit the ledger identity"))
}

/// Gives the ledger its identity when it has none, in the caller's
/// transaction (which holds the lock).
pub(crate) async fn ensure_pg(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
) -> Result<(), StoreError> {
    let has: bool = sqlx::query_scalar(HAS_IDENTITY)
        .fetch_one(&mut **tx)
        .await
        .map_err(sql("read the ledger identity"))?;
    if !has {
        sqlx::query(
            "INSERT INTO backfill_ledger (id, database_oid, database_name)
             SELECT $1, oid::text, datname FROM pg_database WHERE datname = current_database()",
        )
        .bind(new_id())
        .execute(&mut **tx)
        .await
        .map_err(sql("record the ledger identity"))?;
    }
    Ok(())
}

async fn ensure_lite(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<(), StoreError> {
    let has: bool = sqlx::query_scalar(HAS_IDENTITY)
        .fetch_one(&mut **tx)
        .await
        .map_err(sql("read the ledger identity"))?;
    if !has {
        // An SQLite file has no oid; its ledger is the only one in it, and
        // the embedded mode has no broker to share.
        sqlx::query(
            "INSERT INTO backfill_ledger (id, database_oid, database_name) VALUES (?1, '', 'main')",
        )
        .bind(new_id())
        .execute(&mut **tx)
        .await
        .map_err(sql("record the ledger identity"))?;
    }
    Ok(())
}

pub(crate) async fn load(backend: &Backend) -> Result<LedgerIdentity, StoreError> {
    let row: Option<(String, String, String)> = match backend {
        Backend::Pg(pool) => sqlx::query_as(
            "SELECT l.id, l.database_oid || '/' || l.database_name, d.oid::text || '/' || d.datname
             FROM backfill_ledger l, pg_database d
             WHERE d.datname = current_database()
             ORDER BY l.created_at, l.id LIMIT 1",
        )
        .fetch_optional(pool)
        .await
        .map_err(sql("read the ledger identity"))?,
        Backend::Lite(pool) => sqlx::query_as(
            "SELECT id, database_name, database_name
             FROM backfill_ledger ORDER BY created_at, id LIMIT 1",
        )
        .fetch_optional(pool)
        .await
        .map_err(sql("read the ledger identity"))?,
    };
    let (id, recorded_database, current_database) =
        row.ok_or_else(|| StoreError::Data("the ledger has no identity".into()))?;
    Ok(LedgerIdentity {
        id,
        recorded_database,
        current_database,
    })
}

impl Store {
    /// The ledger's identity, read when the store connected.
    pub fn ledger(&self) -> &LedgerIdentity {
        &self.ledger
    }

    /// Gives a copied ledger an identity of its own, in the database it is
    /// in now: its messages and default queues are then its own. Returns
    /// the new identity (unchanged when the ledger was not a copy).
    pub async fn adopt_ledger(&self) -> Result<LedgerIdentity, StoreError> {
        if !self.ledger.is_copy() {
            return Ok(self.ledger.as_ref().clone());
        }
        match &self.backend {
            Backend::Pg(pool) => {
                let mut tx = pool
                    .begin()
                    .await
                    .map_err(sql("begin adopting the ledger"))?;
                sqlx::query("DELETE FROM backfill_ledger")
                    .execute(&mut *tx)
                    .await
                    .map_err(sql("forget the copied ledger identity"))?;
                ensure_pg(&mut tx).await?;
                tx.commit()
                    .await
                    .map_err(sql("commit the ledger identity"))?;
            }
            Backend::Lite(_) => {}
        }
        load(&self.backend).await
    }
}
