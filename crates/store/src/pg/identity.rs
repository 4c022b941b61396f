//! PostgreSQL's ledger identity: given once under the migrations' lock,
//! recorded with the database's oid and name, and read back beside the
//! database it is in now (so a copied ledger shows).

use sqlx::PgPool;

use crate::error::{sql, StoreError};
use crate::model::identity::{new_id, LedgerIdentity, HAS_IDENTITY};

/// Gives a PostgreSQL ledger that had no identity one, unless a concurrent
/// start gave it one meanwhile. Under the lock the ledger's migrations of
/// every release take, so that concurrent first starts (of this release or
/// an earlier one) agree on one id.
pub(super) async fn ensure(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(sql("begin recording the ledger identity"))?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backfill ledger migration'))")
        .execute(&mut *tx)
        .await
        .map_err(sql("lock the ledger identity"))?;
    ensure_in(&mut tx).await?;
    tx.commit().await.map_err(sql("commit the ledger identity"))
}

/// Gives the ledger its identity when it has none, in the caller's
/// transaction (which holds the lock).
async fn ensure_in(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), StoreError> {
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

pub(super) async fn load(pool: &PgPool) -> Result<LedgerIdentity, StoreError> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT l.id, l.database_oid || '/' || l.database_name, d.oid::text || '/' || d.datname
             FROM backfill_ledger l, pg_database d
             WHERE d.datname = current_database()
             ORDER BY l.created_at, l.id LIMIT 1",
    )
    .fetch_optional(pool)
    .await
    .map_err(sql("read the ledger identity"))?;
    LedgerIdentity::from_row(row)
}

/// Forgets the copied identity and records one of this database, in one
/// transaction.
pub(super) async fn replace(pool: &PgPool) -> Result<(), StoreError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(sql("begin adopting the ledger"))?;
    sqlx::query("DELETE FROM backfill_ledger")
        .execute(&mut *tx)
        .await
        .map_err(sql("forget the copied ledger identity"))?;
    ensure_in(&mut tx).await?;
    tx.commit().await.map_err(sql("commit the ledger identity"))
}
