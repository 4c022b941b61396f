//! SQLite's steering: heartbeats, the end of a cancelled run, events and
//! history (times cut from the ISO-8601 text), pruning before-images,
//! a run's control row, claiming shards (one writer at a time: `BEGIN
//! IMMEDIATE` serializes claims), and the rows- and bytes-per-second
//! schedules as seconds since the epoch on SQLite's own clock,
//! `((julianday('now') - 2440587.5) * 86400.0)`.

use sqlx::SqlitePool;

use crate::error::{sql, StoreError};
use crate::model::steer::RawEvent;

/// A worker's heartbeat.
pub(super) const HEARTBEAT: &str =
    "INSERT INTO backfill_worker (worker, role, run_id, shards_done) VALUES ($1, $2, $3, $4)
     ON CONFLICT (worker) DO UPDATE SET run_id = coalesce(excluded.run_id, backfill_worker.run_id),
        shards_done = excluded.shards_done, last_seen = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// A running run ends as cancelled, with its summary.
pub(super) const FINISH_CANCELLED: &str =
    "UPDATE backfill_run SET state = 'cancelled', summary = $2,
            finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE run_id = $1 AND state = 'running'";

/// The most recent runs (of job `$1`, or all when NULL), newest first.
pub(super) const HISTORY: &str = "SELECT run_id, job_name, mode, state, spec_hash,
            substr(created_at, 1, 19) || 'Z', spec_text
     FROM backfill_run
     WHERE ($1 IS NULL OR job_name = $1) ORDER BY created_at DESC LIMIT $2";

/// Reserves `$2` rows at the run's rows per second, unless the start is
/// more than `$3` seconds away; returns the wait in seconds.
pub(super) const RESERVE_ROWS: &str = "UPDATE backfill_control
     SET rate_next = max(coalesce(rate_next, ((julianday('now') - 2440587.5) * 86400.0)),
                         ((julianday('now') - 2440587.5) * 86400.0)) + $2 / rows_per_sec
     WHERE run_id = $1 AND rows_per_sec > 0
       AND max(coalesce(rate_next, ((julianday('now') - 2440587.5) * 86400.0)),
               ((julianday('now') - 2440587.5) * 86400.0))
           <= ((julianday('now') - 2440587.5) * 86400.0) + $3
     RETURNING rate_next - $2 / rows_per_sec - ((julianday('now') - 2440587.5) * 86400.0)";

/// Reserves the estimated bytes of `$2` rows at the run's bytes per
/// second, unless the start is more than `$3` seconds away; returns the
/// wait in seconds and the bytes reserved.
pub(super) const RESERVE_BYTES: &str = "UPDATE backfill_control
     SET bytes_next = max(coalesce(bytes_next, ((julianday('now') - 2440587.5) * 86400.0)),
                          ((julianday('now') - 2440587.5) * 86400.0))
                      + $2 * coalesce(bytes_per_row, 0) / bytes_per_sec
     WHERE run_id = $1 AND bytes_per_sec > 0
       AND max(coalesce(bytes_next, ((julianday('now') - 2440587.5) * 86400.0)),
               ((julianday('now') - 2440587.5) * 86400.0))
           <= ((julianday('now') - 2440587.5) * 86400.0) + $3
     RETURNING bytes_next - $2 * coalesce(bytes_per_row, 0) / bytes_per_sec
                 - ((julianday('now') - 2440587.5) * 86400.0),
               $2 * coalesce(bytes_per_row, 0)";

/// Replaces a shard's reserved bytes (`$3`) with those it wrote (`$4`),
/// from its start (`$5` seconds ago) on at the earliest, and learns the
/// bytes per row (`$2`).
pub(super) const SETTLE_BYTES: &str = "UPDATE backfill_control
     SET bytes_next = max(coalesce(bytes_next, ((julianday('now') - 2440587.5) * 86400.0) - $5),
                          ((julianday('now') - 2440587.5) * 86400.0) - $5)
                      + ($4 - $3) / bytes_per_sec,
         bytes_per_row = CASE WHEN $2 IS NULL THEN bytes_per_row
                              ELSE coalesce(0.5 * bytes_per_row + 0.5 * $2, $2) END
     WHERE run_id = $1 AND bytes_per_sec > 0";

/// The shards of run `$1` other than shard `$2` that hold a lease.
pub(super) const IN_FLIGHT: &str = "SELECT count(*) FROM backfill_shard WHERE run_id = ?1 AND shard_no <> ?2
                           AND state = 'running' AND lease_until > strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Claims shard `$2` of run `$1` for worker `$3`, with a lease of `$4`
/// seconds (whole seconds, as SQLite's date modifier reads them), unless it
/// is done; returns its number if claimed.
pub(super) const CLAIM: &str = "UPDATE backfill_shard SET state = 'running', worker = ?3,
                            started_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                            lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || CAST(?4 AS integer) || ' seconds')
                     WHERE run_id = ?1 AND shard_no = ?2 AND state IN ('pending', 'running')
                     RETURNING shard_no";

pub(super) async fn run_events(pool: &SqlitePool, run_id: &str) -> sqlx::Result<Vec<RawEvent>> {
    sqlx::query_as(
        "SELECT run_id, substr(at, 1, 19) || 'Z', action, operator, detail
                 FROM backfill_event WHERE run_id = ?1 ORDER BY id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
}

/// The before-images of each run that finished more than `$1` seconds
/// ago: the run, their rows and their bytes.
pub(super) const PRUNABLE: &str = "SELECT b.run_id, count(*), coalesce(sum(coalesce(length(CAST(b.before AS BLOB)), 0) + coalesce(length(CAST(b.patch AS BLOB)), 0)), 0)
     FROM backfill_before_image b JOIN backfill_run r ON r.run_id = b.run_id
     WHERE r.finished_at IS NOT NULL
       AND julianday(r.finished_at) < julianday('now') - $1 / 86400.0
     GROUP BY b.run_id ORDER BY b.run_id";

/// Begins a shard claim's transaction. One writer at a time: BEGIN
/// IMMEDIATE serializes claims, whether or not the run limits its shards
/// in flight.
pub(super) async fn begin_claims(
    pool: &SqlitePool,
    _run_id: &str,
    _limited: bool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(sql("begin shard claim"))
}
