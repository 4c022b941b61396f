//! PostgreSQL's steering: heartbeats, the end of a cancelled run, events
//! and history (times via `to_char`), pruning before-images, a run's
//! control row, claiming shards under a per-run advisory lock, the rows-
//! and bytes-per-second schedules as timestamps, the WAL rate cap
//! (`pg_current_wal_lsn`), the health check's replication lag and active
//! backends, and runs with no recent progress.

use sqlx::PgPool;

use crate::error::{sql, StoreError};
use crate::model::steer::RawEvent;

/// A worker's heartbeat.
pub(super) const HEARTBEAT: &str =
    "INSERT INTO backfill_worker (worker, role, run_id, shards_done) VALUES ($1, $2, $3, $4)
     ON CONFLICT (worker) DO UPDATE SET run_id = coalesce(excluded.run_id, backfill_worker.run_id),
        shards_done = excluded.shards_done, last_seen = now()";

/// A running run ends as cancelled, with its summary.
pub(super) const FINISH_CANCELLED: &str =
    "UPDATE backfill_run SET state = 'cancelled', summary = $2, finished_at = now()
     WHERE run_id = $1 AND state = 'running'";

/// The most recent runs (of job `$1`, or all when NULL), newest first.
pub(super) const HISTORY: &str = "SELECT run_id, job_name, mode, state, spec_hash,
            to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), spec_text
     FROM backfill_run
     WHERE ($1::text IS NULL OR job_name = $1) ORDER BY created_at DESC LIMIT $2";

/// Reserves `$2` rows at the run's rows per second, unless the start is
/// more than `$3` seconds away; returns the wait in seconds.
pub(super) const RESERVE_ROWS: &str = "UPDATE backfill_control
     SET rate_next = greatest(coalesce(rate_next, now()), now()) + make_interval(secs => $2 / rows_per_sec)
     WHERE run_id = $1 AND rows_per_sec > 0
       AND greatest(coalesce(rate_next, now()), now()) <= now() + make_interval(secs => $3)
     RETURNING extract(epoch FROM (rate_next - make_interval(secs => $2 / rows_per_sec) - now()))::float8";

/// Reserves the estimated bytes of `$2` rows at the run's bytes per
/// second, unless the start is more than `$3` seconds away; returns the
/// wait in seconds and the bytes reserved.
pub(super) const RESERVE_BYTES: &str = "UPDATE backfill_control
     SET bytes_next = greatest(coalesce(bytes_next, now()), now())
                      + make_interval(secs => $2 * coalesce(bytes_per_row, 0) / bytes_per_sec)
     WHERE run_id = $1 AND bytes_per_sec > 0
       AND greatest(coalesce(bytes_next, now()), now()) <= now() + make_interval(secs => $3)
     RETURNING extract(epoch FROM (bytes_next - now()))::float8
                 - $2 * coalesce(bytes_per_row, 0) / bytes_per_sec,
               $2 * coalesce(bytes_per_row, 0)";

/// Replaces a shard's reserved bytes (`$3`) with those it wrote (`$4`),
/// from its start (`$5` seconds ago) on at the earliest, and learns the
/// bytes per row (`$2`).
pub(super) const SETTLE_BYTES: &str = "UPDATE backfill_control
     SET bytes_next = greatest(coalesce(bytes_next, now() - make_interval(secs => $5)),
                               now() - make_interval(secs => $5))
                      + make_interval(secs => ($4 - $3) / bytes_per_sec),
         bytes_per_row = CASE WHEN $2::float8 IS NULL THEN bytes_per_row
                              ELSE coalesce(0.5 * bytes_per_row + 0.5 * $2, $2) END
     WHERE run_id = $1 AND bytes_per_sec > 0";

/// The shards of run `$1` other than shard `$2` that hold a lease.
pub(super) const IN_FLIGHT: &str =
    "SELECT count(*) FROM backfill_shard WHERE run_id = $1 AND shard_no <> $2
                           AND state = 'running' AND lease_until > now()";

/// Claims shard `$2` of run `$1` for worker `$3`, with a lease of `$4`
/// seconds, unless it is done; returns its number if claimed.
pub(super) const CLAIM: &str =
    "UPDATE backfill_shard SET state = 'running', worker = $3, started_at = clock_timestamp(),
                            lease_until = clock_timestamp() + make_interval(secs => $4)
                     WHERE run_id = $1 AND shard_no = $2 AND state IN ('pending', 'running')
                     RETURNING shard_no";

pub(super) async fn run_events(pool: &PgPool, run_id: &str) -> sqlx::Result<Vec<RawEvent>> {
    sqlx::query_as(
        "SELECT run_id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), action, operator, detail
                 FROM backfill_event WHERE run_id = $1 ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
}

/// The before-images of each run that finished more than `$1` seconds
/// ago: the run, their rows and their bytes.
pub(super) const PRUNABLE: &str = "SELECT b.run_id, count(*)::int8, coalesce(sum(coalesce(octet_length(b.before), 0) + coalesce(octet_length(b.patch), 0)), 0)::int8
     FROM backfill_before_image b JOIN backfill_run r ON r.run_id = b.run_id
     WHERE r.finished_at IS NOT NULL AND r.finished_at < now() - make_interval(secs => $1)
     GROUP BY b.run_id ORDER BY b.run_id";

/// Begins a shard claim's transaction; when the run limits its shards in
/// flight (`limited`), claims of the run wait for each other on an advisory
/// lock until it ends.
pub(super) async fn begin_claims(
    pool: &PgPool,
    run_id: &str,
    limited: bool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = pool.begin().await.map_err(sql("begin shard claim"))?;
    if limited {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('backfill run ' || $1))")
            .bind(run_id)
            .execute(&mut *tx)
            .await
            .map_err(sql("lock the run's claims"))?;
    }
    Ok(tx)
}

pub(super) async fn wal_sample(
    pool: &PgPool,
    run_id: &str,
    burst: f64,
    window: f64,
) -> sqlx::Result<Option<(f64, f64)>> {
    sqlx::query_as(
        "UPDATE backfill_control
             SET wal_tokens = CASE WHEN wal_lsn IS NULL OR wal_at IS NULL THEN 0
                   ELSE greatest(-max_wal_bytes_per_sec * $3, least(max_wal_bytes_per_sec * $2,
                              coalesce(wal_tokens, 0)
                              + max_wal_bytes_per_sec * extract(epoch FROM clock_timestamp() - wal_at)
                              - pg_wal_lsn_diff(pg_current_wal_lsn(), wal_lsn))) END,
                 wal_lsn = pg_current_wal_lsn(),
                 wal_at = clock_timestamp()
             WHERE run_id = $1 AND max_wal_bytes_per_sec > 0
               AND (wal_at IS NULL OR wal_at <= clock_timestamp())
             RETURNING wal_tokens::float8, max_wal_bytes_per_sec",
    )
    .bind(run_id)
    .bind(burst)
    .bind(window)
    .fetch_optional(pool)
    .await
}

/// The largest lag of any standby, in time and in bytes of WAL not yet
/// replayed; no standby: no rows, no lag.
pub(super) async fn replication_lag(pool: &PgPool) -> sqlx::Result<(Option<f64>, Option<f64>)> {
    sqlx::query_as(
        "SELECT max(extract(epoch FROM coalesce(replay_lag, interval '0')))::float8,
                            max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::float8
                     FROM pg_stat_replication",
    )
    .fetch_one(pool)
    .await
}

pub(super) async fn active_backends(pool: &PgPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND backend_type = 'client backend'",
    )
    .fetch_one(pool)
    .await
}

pub(super) async fn quiet_runs(pool: &PgPool) -> sqlx::Result<Vec<(String, f64, bool)>> {
    sqlx::query_as(
        "WITH last AS (
                 SELECT r.run_id,
                        GREATEST(r.created_at,
                                 coalesce(max(s.finished_at), r.created_at),
                                 coalesce(max(c.updated_at), r.created_at)) AS at
                 FROM backfill_run r
                 LEFT JOIN backfill_shard s ON s.run_id = r.run_id
                 LEFT JOIN backfill_control c ON c.run_id = r.run_id
                 WHERE r.state = 'running'
                   AND NOT EXISTS (SELECT 1 FROM backfill_control p
                                   WHERE p.run_id = r.run_id AND p.control <> 'run')
                 GROUP BY r.run_id, r.created_at)
             SELECT l.run_id, EXTRACT(EPOCH FROM now() - l.at)::float8,
                    EXISTS (SELECT 1 FROM backfill_event e
                            WHERE e.run_id = l.run_id AND e.action = 'stalled' AND e.at >= l.at)
             FROM last l",
    )
    .fetch_all(pool)
    .await
}
