//! The argument groups that several commands share, declared once:
//! connection, notifications, steering (throttle, priority, windows) and
//! a job with its scope, review and parameters. Each command's own
//! arguments are in its module in `commands`, flattening these.

use clap::Args;
use std::path::PathBuf;

use crate::exit::usage;

#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Database holding the target tables and the ledger: postgres://… or sqlite://PATH.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", global = true, hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Prefix of the queue names (`<prefix>.tasks`, `<prefix>.results`, `<prefix>.dead`).
    #[arg(long, env = "BACKFILL_QUEUE_PREFIX", global = true)]
    pub queue_prefix: Option<String>,
    /// Optional TOML settings file (database_url, amqp_url, queue_prefix); flags and environment win.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Who is acting, for the ledger's audit events [default: the OS user].
    #[arg(long, env = "BACKFILL_OPERATOR", global = true)]
    pub operator: Option<String>,
}

/// Webhooks told when a run starts, finishes, fails, is cancelled,
/// dead-letters a shard or stalls (beside the spec's `[notify] urls`).
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// Webhook to POST each notification to (repeatable; the environment
    /// variable takes a comma-separated list). Set it on the coordinator
    /// and the reducer: the reducer tells of a run's end.
    #[arg(
        long = "notify",
        value_name = "URL",
        env = "BACKFILL_NOTIFY_URL",
        global = true,
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub urls: Vec<String>,
    /// Body of each notification: `json` (the documented document) or
    /// `slack` (`{"text": …}`) [default: the spec's `[notify] format`, else json;
    /// empty means the default].
    #[arg(
        long,
        value_name = "FORMAT",
        env = "BACKFILL_NOTIFY_FORMAT",
        global = true
    )]
    pub notify_format: Option<String>,
    /// Seconds one delivery attempt may take (3 attempts, 1 s then 4 s apart).
    #[arg(
        long,
        value_name = "SECS",
        env = "BACKFILL_NOTIFY_TIMEOUT",
        global = true,
        default_value_t = 5.0
    )]
    pub notify_timeout: f64,
}

impl NotifyArgs {
    pub fn settings(&self) -> Result<backfill_notify::Settings, String> {
        // An empty BACKFILL_NOTIFY_FORMAT (a deploy file passing an unset
        // variable through) means the default, as an empty URL list does.
        let format = match self.notify_format.as_deref().map(str::trim) {
            Some(f) if !f.is_empty() => {
                Some(f.parse().map_err(|e| format!("--notify-format: {e}"))?)
            }
            _ => None,
        };
        if !(self.notify_timeout.is_finite() && self.notify_timeout > 0.0) {
            return Err(format!(
                "--notify-timeout: must be a positive number of seconds, got {}",
                self.notify_timeout
            ));
        }
        let timeout = std::time::Duration::from_secs_f64(self.notify_timeout.min(300.0));
        let s = backfill_notify::Settings {
            urls: self
                .urls
                .iter()
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect(),
            format,
            timeout,
            // Three attempts and the waits between them, and a margin.
            patience: timeout * 3 + std::time::Duration::from_secs(7),
            sender: "backfill".into(),
        };
        s.check()?;
        Ok(s)
    }
}

/// A run's starting throttle and priority (the spec's `[throttle]` otherwise);
/// change them while it runs with `backfill throttle`.
#[derive(Debug, Args, Clone, Default)]
pub struct SteerArgs {
    /// Most rows per second across all mappers.
    #[arg(long, value_name = "N")]
    pub rows_per_sec: Option<f64>,
    /// Most bytes of rewritten documents per second across all mappers.
    #[arg(long, value_name = "N")]
    pub bytes_per_sec: Option<f64>,
    /// PostgreSQL: hold new shards while the server writes more WAL than this many bytes
    /// per second (measured from pg_current_wal_lsn(); the spec's [health]
    /// max_wal_bytes_per_sec). Not applied on SQLite.
    #[arg(long, value_name = "N")]
    pub max_wal_bytes_per_sec: Option<f64>,
    /// Most shards worked on at once across all mappers.
    #[arg(long, value_name = "N")]
    pub max_in_flight: Option<u32>,
    /// Priority against other runs at the same time: higher goes first (default 0).
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    pub priority: Option<i32>,
    /// A window in which the run may start shards (repeatable), e.g.
    /// "Mon-Fri 01:00-05:00" or "22:00-04:00"; outside every window the
    /// shards in hand finish and nothing new starts until the next opens.
    /// Replaces the spec's [schedule].
    #[arg(long = "window", value_name = "WINDOW")]
    pub windows: Vec<String>,
    /// Time zone of --window: an IANA name such as Europe/Berlin [default: UTC].
    #[arg(long, value_name = "TZ", requires = "windows")]
    pub time_zone: Option<String>,
}

impl SteerArgs {
    /// The flags given, as typed, for a warning that they are not applied.
    pub fn given(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.rows_per_sec.is_some() {
            v.push("--rows-per-sec");
        }
        if self.bytes_per_sec.is_some() {
            v.push("--bytes-per-sec");
        }
        if self.max_wal_bytes_per_sec.is_some() {
            v.push("--max-wal-bytes-per-sec");
        }
        if self.max_in_flight.is_some() {
            v.push("--max-in-flight");
        }
        if self.priority.is_some() {
            v.push("--priority");
        }
        if !self.windows.is_empty() {
            v.push("--window");
        }
        v
    }

    /// The windows given with `--window`, checked; `None` without any.
    pub fn schedule(&self) -> anyhow::Result<Option<backfill_job::schedule::Schedule>> {
        if self.windows.is_empty() {
            return Ok(None);
        }
        backfill_job::schedule::Schedule::new(
            &self.windows,
            self.time_zone.as_deref().unwrap_or("UTC"),
        )
        .map(Some)
        .map_err(|(i, e)| match i {
            Some(i) => usage(format!("--window {:?}: {e}", self.windows[i])),
            None => usage(format!("--time-zone: {e}")),
        })
    }

    /// Says on stderr that these flags are not applied to `run_id`, which
    /// was planned before with its own throttle, and how to change it.
    pub fn warn_not_applied(&self, run_id: &str) {
        let given = self.given();
        if !given.is_empty() {
            eprintln!(
                "warning: {} not applied: run {run_id} keeps the throttle and windows it was planned with; change its throttle with `backfill throttle {run_id} …`",
                given.join(", ")
            );
        }
    }
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job spec file (TOML).
    #[arg(long)]
    pub job: PathBuf,
    #[command(flatten)]
    pub opts: JobOptions,
}

/// What a run of a job takes besides its spec file: scope, mode, shard
/// size, review, sample, parameters and steering.
#[derive(Debug, Args, Clone)]
pub struct JobOptions {
    /// A group to process (repeatable), e.g. a program's readable id.
    #[arg(long = "group", value_name = "KEY")]
    pub groups: Vec<String>,
    /// Process every group.
    #[arg(long)]
    pub all: bool,
    /// Write the changes. Without it the run is a dry run that writes nothing.
    #[arg(long)]
    pub commit: bool,
    /// Rows per shard (default: the spec's shard_size).
    #[arg(long)]
    pub shard_size: Option<u32>,
    /// Commit without a reviewed dry run; the ledger records who skipped it.
    /// For automation, BACKFILL_SKIP_REVIEW=1 does the same.
    #[arg(long, env = "BACKFILL_SKIP_REVIEW", value_parser = clap::builder::FalseyValueParser::new())]
    pub skip_review: bool,
    /// How recent the reviewed dry run a commit relies on must be (e.g. 24h, 90m, 7d).
    #[arg(
        long,
        value_name = "AGE",
        default_value = "24h",
        env = "BACKFILL_REVIEW_WINDOW"
    )]
    pub review_window: String,
    /// A sampled dry run: read only this share of the target rows (e.g. 1%) and estimate
    /// the full run: share of rows that would change, rows and bytes to write, ETA.
    #[arg(long, value_name = "PCT", conflicts_with = "commit")]
    pub sample: Option<String>,
    /// A value for one of the job's parameters (`[params]` in the spec), as
    /// NAME=VALUE (repeatable). The values are part of the run's spec: a
    /// commit relies only on a dry run with the same values.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    #[command(flatten)]
    pub steer: SteerArgs,
}

/// A job to plan, or a run to resume.
#[derive(Debug, Args)]
pub struct ResumableJobArgs {
    /// Resume this run: publish again every shard of it not yet done.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["job", "groups", "all", "commit", "shard_size", "sample", "params"])]
    pub resume: Option<String>,
    /// The job spec file (TOML).
    #[arg(long, required_unless_present = "resume")]
    pub job: Option<PathBuf>,
    #[command(flatten)]
    pub opts: JobOptions,
}

/// `--param NAME=VALUE`.
pub fn parse_param(s: &str) -> Result<(String, String), String> {
    backfill_job::params::parse_assignment(s)
}

#[cfg(test)]
mod tests {
    use super::NotifyArgs;

    fn args(format: Option<&str>) -> NotifyArgs {
        NotifyArgs {
            urls: vec![" ".into()],
            notify_format: format.map(str::to_string),
            notify_timeout: 5.0,
        }
    }

    #[test]
    fn an_empty_notify_format_is_the_default_and_a_wrong_one_is_refused() {
        let s = args(Some("")).settings().expect("empty means the default");
        assert!(s.format.is_none() && s.urls.is_empty());
        assert!(args(Some("slack"))
            .settings()
            .expect("slack")
            .format
            .is_some());
        let e = args(Some("xml")).settings().expect_err("xml is no format");
        assert!(e.starts_with("--notify-format:"), "{e}");
    }
}
