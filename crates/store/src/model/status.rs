//! The rows a dialect reads a run's shards and workers from, as
//! [`crate::status`] turns them into an operator's view.

/// A worker of a run: (name, shards committed, last finish, last
/// heartbeat), times in seconds since the epoch.
pub(crate) type RawWorker = (String, i64, Option<f64>, Option<f64>);

/// Shard rows: (no, state, failures, rows, worker, elapsed ms, started,
/// finished, reduced), times in seconds since the epoch.
pub(crate) type RawShard = (
    u32,
    String,
    i64,
    u32,
    Option<String>,
    Option<i64>,
    Option<f64>,
    Option<f64>,
    Option<f64>,
);
