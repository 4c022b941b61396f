//! PostgreSQL's reads for a run's progress document: its shards, times and
//! workers, with times as seconds since the epoch (`extract(epoch FROM t)`).

/// A run's shards with their times (see [`crate::model::status::RawShard`]).
pub(super) const RAW_SHARDS: &str = "SELECT shard_no, state, failures, rows, worker, elapsed_ms,
            extract(epoch FROM started_at)::float8,
            extract(epoch FROM finished_at)::float8,
            extract(epoch FROM reduced_at)::float8
     FROM backfill_shard WHERE run_id = $1 ORDER BY shard_no";

/// A run's creation and finish, and the ledger's clock now.
pub(super) const RUN_TIMES: &str = "SELECT extract(epoch FROM created_at)::float8,
            extract(epoch FROM finished_at)::float8,
            extract(epoch FROM clock_timestamp())::float8
     FROM backfill_run WHERE run_id = $1";

/// The workers that committed shards of a run: shards, last finish, last
/// heartbeat.
pub(super) const RUN_WORKERS: &str = "SELECT s.worker, count(*),
            max(extract(epoch FROM s.finished_at)::float8),
            max(extract(epoch FROM w.last_seen)::float8)
     FROM backfill_shard s LEFT JOIN backfill_worker w ON w.worker = s.worker
     WHERE s.run_id = $1 AND s.worker IS NOT NULL AND s.worker <> 'failed'
     GROUP BY s.worker ORDER BY s.worker";
