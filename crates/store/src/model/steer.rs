//! The records of steering (controls, throttle changes, claims, health,
//! history and events), the rows a dialect reads them from, the shard
//! lease and the pure throttling rules (see [`crate::steer`], which
//! re-exports them).

use crate::error::StoreError;
use backfill_job::spec::HealthSpec;
use std::time::Duration;

// The statements are the back ends' (`pg::steer`, `sqlite::steer`, and
// `common` for those both read alike); here is what callers get of them.

/// An audit event as stored: (run, at, action, operator, detail).
pub(crate) type RawEvent = (String, String, String, String, Option<String>);

/// A run as `history` lists it: (run, job, mode, state, spec hash,
/// created at, spec text).
pub(crate) type HistoryRow = (String, String, String, String, String, String, String);

/// A run's control row: (control, priority, rows per second, max in
/// flight, shard sizing, yield to, bytes per second, WAL cap).
pub(crate) type RawControl = (
    String,
    i32,
    Option<f64>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<f64>,
);

/// A run's measured cost: (run, largest shard, milliseconds, rows).
pub(crate) type RawCost = (String, i64, i64, i64);

/// A running run and how long it has made no progress.
#[derive(Debug, Clone, PartialEq)]
pub struct QuietRun {
    pub run_id: String,
    pub quiet_seconds: f64,
    /// A stall was already recorded since its last progress.
    pub told: bool,
}

/// How long a claimed shard counts as in flight without finishing; after
/// that a crashed mapper's claim no longer holds a slot.
pub const LEASE: Duration = Duration::from_secs(600);

/// What the operator asked of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlState {
    Run,
    Pause,
    Cancel,
}

impl ControlState {
    pub fn as_str(self) -> &'static str {
        match self {
            ControlState::Run => "run",
            ControlState::Pause => "pause",
            ControlState::Cancel => "cancel",
        }
    }
    pub fn parse(s: &str) -> Result<ControlState, StoreError> {
        match s {
            "run" => Ok(ControlState::Run),
            "pause" => Ok(ControlState::Pause),
            "cancel" => Ok(ControlState::Cancel),
            other => Err(StoreError::Data(format!("unknown run control `{other}`"))),
        }
    }
}

/// A run's steering as mappers read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Control {
    pub control: ControlState,
    pub priority: i32,
    pub rows_per_sec: Option<f64>,
    pub bytes_per_sec: Option<f64>,
    /// PostgreSQL: the server's WAL rate cap (bytes per second).
    pub max_wal_bytes_per_sec: Option<f64>,
    pub max_in_flight: Option<u32>,
    /// A running run of higher priority that still has shards to do: this
    /// run waits for it.
    pub yield_to: Option<String>,
    /// How the run's shard size was chosen (adaptive sizing), if recorded.
    pub shard_sizing: Option<String>,
}

/// A change of throttle settings; `Some(None)` removes a limit.
#[derive(Debug, Clone, Default)]
pub struct ThrottleChange {
    pub rows_per_sec: Option<Option<f64>>,
    pub bytes_per_sec: Option<Option<f64>>,
    pub max_wal_bytes_per_sec: Option<Option<f64>>,
    pub max_in_flight: Option<Option<u32>>,
    pub priority: Option<i32>,
}

impl ThrottleChange {
    pub fn is_empty(&self) -> bool {
        self.rows_per_sec.is_none()
            && self.bytes_per_sec.is_none()
            && self.max_wal_bytes_per_sec.is_none()
            && self.max_in_flight.is_none()
            && self.priority.is_none()
    }
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in [
            ("rows_per_sec", self.rows_per_sec),
            ("bytes_per_sec", self.bytes_per_sec),
            ("max_wal_bytes_per_sec", self.max_wal_bytes_per_sec),
        ] {
            if let Some(r) = v {
                parts.push(match r {
                    Some(r) => format!("{name}={r}"),
                    None => format!("{name}=off"),
                });
            }
        }
        if let Some(m) = self.max_in_flight {
            parts.push(match m {
                Some(m) => format!("max_in_flight={m}"),
                None => "max_in_flight=off".into(),
            });
        }
        if let Some(p) = self.priority {
            parts.push(format!("priority={p}"));
        }
        parts.join(" ")
    }
}

/// The outcome of trying to claim a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This worker holds the shard now.
    Claimed,
    /// The run's shards-in-flight limit is reached: try again shortly.
    Busy,
    /// The shard is done or dead already (a redelivery): re-send its result.
    Finished,
    /// No such shard.
    Unknown,
}

/// The database health check's verdict.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Health {
    pub ok: bool,
    pub reason: Option<String>,
}

/// A run and what was done to it, for `backfill history`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunHistory {
    pub run_id: String,
    pub job: String,
    pub mode: String,
    pub state: String,
    pub spec_hash: String,
    pub created_at: String,
    /// The job's parameters with the run's values; absent without any.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    pub events: Vec<RunEvent>,
}

/// An audit event of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunEvent {
    pub run_id: String,
    pub at: String,
    pub action: String,
    pub operator: String,
    pub detail: Option<String>,
}

/// The window over which the WAL rate cap holds: the WAL budget's debt is
/// at most this many seconds of the cap.
pub const WAL_WINDOW: Duration = Duration::from_secs(60);

/// How long a bucket holding `tokens` bytes (negative: in debt) takes to be
/// out of debt at `cap` bytes per second.
pub fn wal_debt_wait(tokens: f64, cap: f64) -> Duration {
    if tokens >= 0.0 || cap.is_nan() || cap <= 0.0 || !tokens.is_finite() {
        return Duration::ZERO;
    }
    Duration::from_secs_f64((-tokens / cap).min(3600.0))
}

/// Why the standbys are too far behind, if they are: the largest replay lag
/// in seconds and in bytes (`None`: no standby) against the job's limits
/// (`0` turns a limit off).
pub fn replication_verdict(
    spec: &HealthSpec,
    lag_seconds: Option<f64>,
    lag_bytes: Option<f64>,
) -> Option<String> {
    if spec.max_replication_lag_seconds > 0.0 {
        if let Some(lag) = lag_seconds.filter(|l| *l > spec.max_replication_lag_seconds) {
            return Some(format!(
                "replication lag {lag:.1} s is over {} s",
                spec.max_replication_lag_seconds
            ));
        }
    }
    if spec.max_replication_lag_bytes > 0 {
        if let Some(lag) = lag_bytes.filter(|l| *l > spec.max_replication_lag_bytes as f64) {
            return Some(format!(
                "replication lag {lag:.0} bytes of WAL is over {} bytes",
                spec.max_replication_lag_bytes
            ));
        }
    }
    None
}
