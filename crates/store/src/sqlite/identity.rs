//! SQLite's ledger identity: given once in a write transaction, recorded
//! without an oid (an SQLite file has none; its ledger is the only one in
//! it, and the embedded mode has no broker to share), and read back.

use sqlx::SqlitePool;

use crate::error::{sql, StoreError};
use crate::model::identity::{new_id, LedgerIdentity, HAS_IDENTITY};

/// Gives an SQLite ledger that had no identity one, unless a concurrent
/// start gave it one meanwhile, in a write transaction (one writer at a
/// time).
pub(super) async fn ensure(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = pool
        .begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(sql("begin recording the ledger identity"))?;
    let has: bool = sqlx::query_scalar(HAS_IDENTITY)
        .fetch_one(&mut *tx)
        .await
        .map_err(sql("read the ledger identity"))?;
    if !has {
        // An SQLite file has no oid; its ledger is the only one in it, and
        // the embedded mode has no broker to share.
        sqlx::query(
            "INSERT INTO backfill_ledger (id, database_oid, database_name) VALUES (?1, '', 'main')",
        )
        .bind(new_id())
        .execute(&mut *tx)
        .await
        .map_err(sql("record the ledger identity"))?;
    }
    tx.commit().await.map_err(sql("commit the ledger identity"))
}

pub(super) async fn load(pool: &SqlitePool) -> Result<LedgerIdentity, StoreError> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT id, database_name, database_name
             FROM backfill_ledger ORDER BY created_at, id LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(sql("read the ledger identity"))?;
    LedgerIdentity::from_row(row)
}
