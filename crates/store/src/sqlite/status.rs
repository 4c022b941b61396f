//! SQLite's reads for a run's progress document: its shards, times and
//! workers, with times as seconds since the epoch from the Julian day of
//! the ISO-8601 text.

/// A run's shards with their times (see [`crate::model::status::RawShard`]).
pub(super) const RAW_SHARDS: &str = "SELECT shard_no, state, failures, rows, worker, elapsed_ms,
            ((julianday(started_at) - 2440587.5) * 86400.0),
            ((julianday(finished_at) - 2440587.5) * 86400.0),
            ((julianday(reduced_at) - 2440587.5) * 86400.0)
     FROM backfill_shard WHERE run_id = $1 ORDER BY shard_no";

/// A run's creation and finish, and the ledger's clock now.
pub(super) const RUN_TIMES: &str = "SELECT ((julianday(created_at) - 2440587.5) * 86400.0),
            ((julianday(finished_at) - 2440587.5) * 86400.0),
            ((julianday('now') - 2440587.5) * 86400.0)
     FROM backfill_run WHERE run_id = $1";

/// The workers that committed shards of a run: shards, last finish, last
/// heartbeat.
pub(super) const RUN_WORKERS: &str = "SELECT s.worker, count(*),
            max(((julianday(s.finished_at) - 2440587.5) * 86400.0)),
            max(((julianday(w.last_seen) - 2440587.5) * 86400.0))
     FROM backfill_shard s LEFT JOIN backfill_worker w ON w.worker = s.worker
     WHERE s.run_id = $1 AND s.worker IS NOT NULL AND s.worker <> 'failed'
     GROUP BY s.worker ORDER BY s.worker";
