//! PostgreSQL's ledger records: the job's lock, a session advisory lock on
//! a connection of its own (released when the connection closes, also
//! when the process dies), and whether some session holds it.

use sqlx::PgPool;

use crate::ledger::JobLock;
use crate::{sql, StoreError};

pub(super) async fn try_lock_job(pool: &PgPool, job: &str) -> Result<Option<JobLock>, StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(sql("connect for the job lock"))?
        .detach();
    let got: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('backfill job ' || $1))")
            .bind(job)
            .fetch_one(&mut conn)
            .await
            .map_err(sql("take the job lock"))?;
    Ok(got.then_some(JobLock { _conn: Some(conn) }))
}

/// A one-key advisory lock shows in pg_locks as its high 32 bits in
/// classid and its low 32 bits in objid (objsubid 1).
pub(super) async fn job_lock_held(pool: &PgPool, job: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND objsubid = 1 AND granted
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND ((classid::bigint << 32) | objid::bigint) = hashtext('backfill job ' || $1)::bigint)",
    )
    .bind(job)
    .fetch_one(pool)
    .await
}
