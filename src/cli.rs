//! Command line: raw flags parsed by clap, validated into typed settings,
//! then handed to the role libraries.
//!
//! Exit codes: 0 the run finished clean; 1 the run finished with row errors,
//! or a service or runtime failure; 2 bad input (flags, scope, job spec),
//! or a commit refused by its review gate or `requires`;
//! 3 the run finished without errors but with conflicts (rows edited
//! concurrently and left as the application wrote them); 4 the run was
//! cancelled (`backfill cancel`).

use backfill_job::{JobSpec, Mode, RunState, Scope};
use backfill_queue::{worker_name, Broker};
use backfill_store::{Derived, RunRecord, Store};
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::settings::Settings;

const AFTER_HELP: &str = "\
Exit codes: 0 clean; 1 row errors or a failure; 2 bad input (flags, scope, spec) or a commit
refused by the review gate; 3 conflicts; 4 the run was cancelled.
Environment: DATABASE_URL, AMQP_URL, BACKFILL_QUEUE_PREFIX, BACKFILL_OPERATOR,
BACKFILL_SKIP_REVIEW, BACKFILL_REVIEW_WINDOW, BACKFILL_NOTIFY_URL, BACKFILL_NOTIFY_FORMAT,
BACKFILL_NOTIFY_TIMEOUT, RUST_LOG.";

/// Rewrites the JSON content of revision rows, distributed over RabbitMQ, safely and resumably.
#[derive(Debug, Parser)]
#[command(name = "backfill", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,
    /// No progress bar on a terminal: plain progress lines on stderr instead
    /// (a line per 10 % of the shards or per 30 s), as for a pipe or a file.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    #[command(flatten)]
    notify: NotifyArgs,
    #[command(subcommand)]
    command: Command,
}

/// Webhooks told when a run starts, finishes, fails, is cancelled,
/// dead-letters a shard or stalls (beside the spec's `[notify] urls`).
#[derive(Debug, Args)]
struct NotifyArgs {
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
    urls: Vec<String>,
    /// Body of each notification: `json` (the documented document) or
    /// `slack` (`{"text": …}`) [default: the spec's `[notify] format`, else json].
    #[arg(
        long,
        value_name = "FORMAT",
        env = "BACKFILL_NOTIFY_FORMAT",
        global = true
    )]
    notify_format: Option<String>,
    /// Seconds one delivery attempt may take (3 attempts, 1 s then 4 s apart).
    #[arg(
        long,
        value_name = "SECS",
        env = "BACKFILL_NOTIFY_TIMEOUT",
        global = true,
        default_value_t = 5.0
    )]
    notify_timeout: f64,
}

impl NotifyArgs {
    fn settings(&self) -> Result<backfill_notify::Settings, String> {
        let format = match &self.notify_format {
            Some(f) => Some(f.parse().map_err(|e| format!("--notify-format: {e}"))?),
            None => None,
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

#[derive(Debug, Subcommand)]
enum LedgerAction {
    /// Print the ledger id, the database it belongs to and the queue names in use.
    Show,
    /// Give a ledger copied from another database (`CREATE DATABASE … TEMPLATE …`, a
    /// restored dump) a new id, so its workers stop taking the other database's work.
    Adopt,
}

/// What `status` and `ledger show` print about the ledger, on stderr.
fn ledger_lines(settings: &Settings, store: &Store) -> String {
    let l = store.ledger();
    let q = settings.queues();
    let mut s = format!(
        "ledger {} (database {}); queues {}, {}, {}, {}{}\n",
        l.id,
        l.current_database,
        q.tasks,
        q.results,
        q.dead,
        q.parked,
        if settings.queue_prefix_given {
            ""
        } else {
            " (named after the ledger; --queue-prefix to choose)"
        }
    );
    if let Err(e) = l.check() {
        s.push_str(&format!("warning: {e}\n"));
    }
    s
}

#[derive(Debug, Args)]
struct ConnArgs {
    /// Database holding the target tables and the ledger: postgres://… or sqlite://PATH.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    /// RabbitMQ URL.
    #[arg(long, env = "AMQP_URL", global = true, hide_env_values = true)]
    amqp_url: Option<String>,
    /// Prefix of the queue names (`<prefix>.tasks`, `<prefix>.results`, `<prefix>.dead`).
    #[arg(long, env = "BACKFILL_QUEUE_PREFIX", global = true)]
    queue_prefix: Option<String>,
    /// Optional TOML settings file (database_url, amqp_url, queue_prefix); flags and environment win.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Who is acting, for the ledger's audit events [default: the OS user].
    #[arg(long, env = "BACKFILL_OPERATOR", global = true)]
    operator: Option<String>,
}

/// A run's starting throttle and priority (the spec's `[throttle]` otherwise);
/// change them while it runs with `backfill throttle`.
#[derive(Debug, Args, Clone, Default)]
struct SteerArgs {
    /// Most rows per second across all mappers.
    #[arg(long, value_name = "N")]
    rows_per_sec: Option<f64>,
    /// Most bytes of rewritten documents per second across all mappers.
    #[arg(long, value_name = "N")]
    bytes_per_sec: Option<f64>,
    /// PostgreSQL: hold new shards while the server writes more WAL than this many bytes
    /// per second (measured from pg_current_wal_lsn(); the spec's [health]
    /// max_wal_bytes_per_sec). Not applied on SQLite.
    #[arg(long, value_name = "N")]
    max_wal_bytes_per_sec: Option<f64>,
    /// Most shards worked on at once across all mappers.
    #[arg(long, value_name = "N")]
    max_in_flight: Option<u32>,
    /// Priority against other runs at the same time: higher goes first (default 0).
    #[arg(long, value_name = "P", allow_hyphen_values = true)]
    priority: Option<i32>,
    /// A window in which the run may start shards (repeatable), e.g.
    /// "Mon-Fri 01:00-05:00" or "22:00-04:00"; outside every window the
    /// shards in hand finish and nothing new starts until the next opens.
    /// Replaces the spec's [schedule].
    #[arg(long = "window", value_name = "WINDOW")]
    windows: Vec<String>,
    /// Time zone of --window: an IANA name such as Europe/Berlin [default: UTC].
    #[arg(long, value_name = "TZ", requires = "windows")]
    time_zone: Option<String>,
}

impl SteerArgs {
    /// The flags given, as typed, for a warning that they are not applied.
    fn given(&self) -> Vec<&'static str> {
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
    fn schedule(&self) -> anyhow::Result<Option<backfill_job::schedule::Schedule>> {
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
    fn warn_not_applied(&self, run_id: &str) {
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
struct JobArgs {
    /// The job spec file (TOML).
    #[arg(long)]
    job: PathBuf,
    /// A group to process (repeatable), e.g. a program's readable id.
    #[arg(long = "group", value_name = "KEY")]
    groups: Vec<String>,
    /// Process every group.
    #[arg(long)]
    all: bool,
    /// Write the changes. Without it the run is a dry run that writes nothing.
    #[arg(long)]
    commit: bool,
    /// Rows per shard (default: the spec's shard_size).
    #[arg(long)]
    shard_size: Option<u32>,
    /// Commit without a reviewed dry run; the ledger records who skipped it.
    /// For automation, BACKFILL_SKIP_REVIEW=1 does the same.
    #[arg(long, env = "BACKFILL_SKIP_REVIEW", value_parser = clap::builder::FalseyValueParser::new())]
    skip_review: bool,
    /// How recent the reviewed dry run a commit relies on must be (e.g. 24h, 90m, 7d).
    #[arg(
        long,
        value_name = "AGE",
        default_value = "24h",
        env = "BACKFILL_REVIEW_WINDOW"
    )]
    review_window: String,
    /// A sampled dry run: read only this share of the target rows (e.g. 1%) and estimate
    /// the full run: share of rows that would change, rows and bytes to write, ETA.
    #[arg(long, value_name = "PCT", conflicts_with = "commit")]
    sample: Option<String>,
    /// A value for one of the job's parameters (`[params]` in the spec), as
    /// NAME=VALUE (repeatable). The values are part of the run's spec: a
    /// commit relies only on a dry run with the same values.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    #[command(flatten)]
    steer: SteerArgs,
}

/// A job to plan, or a run to resume.
#[derive(Debug, Args)]
struct ResumableJobArgs {
    /// Resume this run: publish again every shard of it not yet done.
    #[arg(long, value_name = "RUN", conflicts_with_all = ["job", "groups", "all", "commit", "shard_size", "sample", "params"])]
    resume: Option<String>,
    /// The job spec file (TOML).
    #[arg(long, required_unless_present = "resume")]
    job: Option<PathBuf>,
    /// A group to process (repeatable), e.g. a program's readable id.
    #[arg(long = "group", value_name = "KEY")]
    groups: Vec<String>,
    /// Process every group.
    #[arg(long)]
    all: bool,
    /// Write the changes. Without it the run is a dry run that writes nothing.
    #[arg(long)]
    commit: bool,
    /// Rows per shard (default: the spec's shard_size).
    #[arg(long)]
    shard_size: Option<u32>,
    /// Commit without a reviewed dry run; the ledger records who skipped it.
    /// For automation, BACKFILL_SKIP_REVIEW=1 does the same.
    #[arg(long, env = "BACKFILL_SKIP_REVIEW", value_parser = clap::builder::FalseyValueParser::new())]
    skip_review: bool,
    /// How recent the reviewed dry run a commit relies on must be (e.g. 24h, 90m, 7d).
    #[arg(
        long,
        value_name = "AGE",
        default_value = "24h",
        env = "BACKFILL_REVIEW_WINDOW"
    )]
    review_window: String,
    /// A sampled dry run: read only this share of the target rows (e.g. 1%) and estimate
    /// the full run: share of rows that would change, rows and bytes to write, ETA.
    #[arg(long, value_name = "PCT", conflicts_with = "commit")]
    sample: Option<String>,
    /// A value for one of the job's parameters (`[params]` in the spec), as
    /// NAME=VALUE (repeatable). The values are part of the run's spec: a
    /// commit relies only on a dry run with the same values.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    params: Vec<(String, String)>,
    #[command(flatten)]
    steer: SteerArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plan, map and reduce a run in this process (over RabbitMQ, or in-process with --local);
    /// print the report and the `Summary:` line.
    Run {
        #[command(flatten)]
        job: JobArgs,
        /// Mapper tasks to start in this process.
        #[arg(long, default_value_t = 2)]
        mappers: u16,
        /// Embedded mode: all roles over an in-process queue, no RabbitMQ (implied by a sqlite:// URL).
        #[arg(long)]
        local: bool,
    },
    /// Plan a run, record it in the ledger and publish its shard tasks; prints the run id.
    /// Rerunning the same command resumes an unfinished run instead of planning another.
    Coordinator {
        #[command(flatten)]
        job: ResumableJobArgs,
        /// Wait until the run is reduced, then print its report and summary.
        #[arg(long)]
        wait: bool,
        /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9464).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Check a job's postcondition over its scope without writing: a dry run whose success is
    /// "nothing left to change, no conflicts, no errors". Exit 0 only then; 1 otherwise.
    Verify {
        /// The job spec file (TOML).
        #[arg(long)]
        job: PathBuf,
        /// A group to verify (repeatable).
        #[arg(long = "group", value_name = "KEY")]
        groups: Vec<String>,
        /// Verify every group.
        #[arg(long)]
        all: bool,
        /// A value for one of the job's parameters, as NAME=VALUE (repeatable):
        /// the values the commit used.
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Rows per shard (default: the spec's shard_size).
        #[arg(long)]
        shard_size: Option<u32>,
        /// Mapper tasks to start in this process.
        #[arg(long, default_value_t = 2)]
        mappers: u16,
        /// Embedded mode: the in-process queue instead of RabbitMQ (implied by a sqlite:// URL).
        #[arg(long)]
        local: bool,
    },
    /// Worker: take shard tasks, rewrite rows, record them, publish results. Run any number, anywhere.
    Mapper {
        /// Shards this process works on at once.
        #[arg(long, default_value_t = 2)]
        concurrency: u16,
        /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9464).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Worker: fold shard results into run summaries.
    Reducer {
        /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9464).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
        /// Also serve the dashboard and its JSON API (`/`, `/api/...`) on --metrics-addr.
        /// Off by default: the API is unauthenticated, and the metrics port is often
        /// reachable by more than the operators.
        #[arg(long, requires = "metrics_addr")]
        dashboard: bool,
    },
    /// Serve the web dashboard (runs, live shard grid, throughput, report) and its JSON API,
    /// plus /metrics, /healthz and /readyz.
    Dashboard {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// The ledger's audit trail: recent runs (of a job) with who started them, from which host,
    /// the spec's hash, and every pause/resume/cancel/throttle/verify with time and operator.
    History {
        /// Only runs of this job.
        #[arg(long, value_name = "NAME")]
        job: Option<String>,
        /// Most runs to show.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Delete the before-images of runs finished longer ago than --older-than (retention).
    /// Shows what it would delete unless --commit. Pruned runs cannot be reverted.
    Prune {
        /// Age, e.g. 30d, 12h, 90m, 45s.
        #[arg(long, value_name = "AGE")]
        older_than: String,
        /// Delete. Without it, only list what would be deleted.
        #[arg(long)]
        commit: bool,
    },
    /// Health probe for images without curl: GET an http:// URL (e.g. http://127.0.0.1:9464/readyz);
    /// exit 0 on a 2xx answer, 1 otherwise.
    Probe {
        /// The URL to GET (plain HTTP).
        url: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Stop starting new shards of a run; the shards in hand finish and commit.
    Pause {
        /// The run id.
        run: String,
    },
    /// Carry on with a paused run.
    Resume {
        /// The run id.
        run: String,
    },
    /// Stop a run for good: no new shard starts, the shards in hand finish, the run is
    /// marked cancelled and the summary of what was done is printed.
    Cancel {
        /// The run id.
        run: String,
        /// Most seconds to wait for the shards in hand to finish.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Change a run's throttle or priority while it runs (`off` removes a limit).
    Throttle {
        /// The run id.
        run: String,
        /// Most rows per second across all mappers, or `off`.
        #[arg(long, value_name = "N|off")]
        rows_per_sec: Option<String>,
        /// Most bytes of rewritten documents per second across all mappers, or `off`.
        #[arg(long, value_name = "N|off")]
        bytes_per_sec: Option<String>,
        /// PostgreSQL: the server's WAL write rate cap in bytes per second, or `off`.
        #[arg(long, value_name = "N|off")]
        max_wal_bytes_per_sec: Option<String>,
        /// Most shards worked on at once across all mappers, or `off`.
        #[arg(long, value_name = "N|off")]
        max_in_flight: Option<String>,
        /// Priority against other runs: higher goes first.
        #[arg(long, value_name = "P", allow_hyphen_values = true)]
        priority: Option<i32>,
    },
    /// Re-run exactly the rows a finished run quarantined (rule errors, rows of dead-lettered
    /// shards), once their cause is fixed: a new run, same spec and mode, in this process.
    Retry {
        /// The finished run whose quarantined rows to retry.
        run: String,
        /// Mapper tasks to start in this process.
        #[arg(long, default_value_t = 2)]
        mappers: u16,
        /// Embedded mode: the in-process queue instead of RabbitMQ (implied by a sqlite:// URL).
        #[arg(long)]
        local: bool,
        /// Rows per shard.
        #[arg(long, default_value_t = backfill_job::spec::DEFAULT_SHARD_SIZE)]
        shard_size: u32,
    },
    /// Undo a finished commit run: restore the before-images it recorded, through the same
    /// shards, mappers and reducer, as a new run. A row edited since the run (it no longer
    /// holds what the run wrote) is a conflict and is left alone. Dry run unless --commit;
    /// running it again changes nothing.
    Revert {
        /// The finished commit run to revert.
        run: String,
        /// The run's parameter values, as NAME=VALUE (repeatable): checked
        /// against the values the run was planned with, which are the ones used.
        #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// Write. Without it, report what a revert would restore.
        #[arg(long)]
        commit: bool,
        /// Mapper tasks to start in this process.
        #[arg(long, default_value_t = 2)]
        mappers: u16,
        /// Embedded mode: the in-process queue instead of RabbitMQ (implied by a sqlite:// URL).
        #[arg(long)]
        local: bool,
        /// Rows per shard.
        #[arg(long, default_value_t = backfill_job::spec::DEFAULT_SHARD_SIZE)]
        shard_size: u32,
    },
    /// Show recent runs, or one run's progress: shards, rows, rate, ETA, steering, workers,
    /// dead-lettered shards, quarantined rows and summary.
    Status {
        /// A run id; without it, the recent runs.
        run: Option<String>,
        /// Redraw every --interval seconds until the run (or every run shown) has finished.
        #[arg(long)]
        watch: bool,
        /// Print the machine-readable JSON document instead (see the README).
        #[arg(long)]
        json: bool,
        /// Seconds between redraws with --watch.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
    },
    /// The ledger's identity: `show` it (id, database, queue names), or `adopt` a ledger
    /// copied from another database (a clone), giving it an identity of its own.
    Ledger {
        #[command(subcommand)]
        action: LedgerAction,
    },
    /// Print a run's report from the ledger: text, or md (for admins), csv (one row per group)
    /// or json (the documented document).
    Report {
        /// The run id.
        run: String,
        /// text, md, csv or json.
        #[arg(long, default_value = "text")]
        format: String,
        /// Write the report to this file instead of standard output.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Instead of the report: the groups whose plan differs between OTHER_RUN (e.g. the
        /// reviewed dry run) and RUN. Exit 0 when the plans agree, 1 when they differ.
        #[arg(long, value_name = "OTHER_RUN", conflicts_with_all = ["format", "output"])]
        diff: Option<String>,
    },
    /// Create a demo database with realistic data and run the certificate-titles job on it:
    /// dry run, commit, and a second commit that changes nothing. Embedded (SQLite, no services)
    /// unless --distributed.
    Demo {
        /// The SQLite demo file to (re)create [default: backfill-demo.sqlite3 in the temp directory].
        #[arg(long)]
        db: Option<PathBuf>,
        /// Run on PostgreSQL (DATABASE_URL's server) and RabbitMQ instead of embedded.
        #[arg(long)]
        distributed: bool,
        /// With --distributed: the database to (re)create on the server of DATABASE_URL.
        #[arg(long, default_value = "backfill_demo")]
        demo_db: String,
        /// Certificate-page revisions to generate.
        #[arg(long, default_value_t = 2_000)]
        revisions: u64,
        /// Programs to generate.
        #[arg(long, default_value_t = 40)]
        programs: u32,
        /// Mapper tasks.
        #[arg(long, default_value_t = 2)]
        mappers: u16,
    },
    /// Create a shipped job's demo tables in DATABASE_URL (PostgreSQL or SQLite) and fill them with generated data.
    Seed {
        /// `certificates` (program-certificate-titles) or `collections` (collection-dict jobs).
        #[arg(long)]
        dataset: String,
        /// Certificate-page revisions (certificates dataset).
        #[arg(long, default_value_t = 10_000)]
        revisions: u64,
        /// Programs (certificates dataset).
        #[arg(long, default_value_t = 100)]
        programs: u32,
        /// Collections (collections dataset).
        #[arg(long, default_value_t = 1_000)]
        collections: u64,
        /// Most versions per collection (collections dataset).
        #[arg(long, default_value_t = 8)]
        max_versions: u32,
        /// Random seed; the same seed gives the same data.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// An error that is the user's input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    init_tracing(&cli.command);
    crate::progress::set_quiet(cli.quiet);
    match cli.notify.settings() {
        Ok(s) => backfill_notify::install(s),
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return 1;
        }
    };
    // Notifications sent during the command are delivered before it exits
    // (at most the notify patience); they never change its exit code.
    let result = rt.block_on(async {
        let r = dispatch(cli).await;
        backfill_notify::flush().await;
        r
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::settings::scrub(&error_chain(&e)));
            if e.downcast_ref::<UsageError>().is_some() {
                2
            } else {
                1
            }
        }
    }
}

/// The error and its causes, each cause once: library errors already quote
/// their source in their message, so a cause already in the text is skipped.
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
    }
    text
}

fn init_tracing(cmd: &Command) {
    // Worker roles log their progress; one-shot commands keep the terminal for the report.
    let default = match cmd {
        Command::Mapper { .. }
        | Command::Reducer { .. }
        | Command::Coordinator { .. }
        | Command::Dashboard { .. } => "info",
        _ => "warn",
    };
    // lapin logs a channel it is closing, when the connection closes under
    // it on a normal shutdown, as an ERROR ("invalid channel state:
    // Closing"); a broker failure that matters reaches our own code as an
    // error and is reported there, so that target is quietened by default
    // (RUST_LOG still shows it). sqlx warns of every statement over a
    // second with its whole SQL text: a backfill's target queries and
    // seed's bulk inserts are meant to take that long, so that is quiet
    // too unless RUST_LOG asks for it.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{default},lapin::channels=off,sqlx::query=error"
        ))
    });
    // Colours only on a terminal: a log file or a journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(crate::settings::ScrubbedStderr)
        .try_init();
}

/// A token cancelled by the first SIGINT or SIGTERM: workers finish the
/// shards in hand (a second one stops at once; see `progress`).
fn shutdown_on_signals() -> CancellationToken {
    crate::progress::shutdown_on_signals()
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    backfill_job::params::parse_assignment(s)
}

fn load_spec(path: &Path, params: &[(String, String)]) -> anyhow::Result<JobSpec> {
    use std::io::Read;
    let cannot = |e: std::io::Error| usage(format!("cannot read job spec {}: {e}", path.display()));
    // One byte more than a spec may hold is enough for the parse to refuse
    // it, without reading a file of any size into memory.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(backfill_job::spec::MAX_SPEC_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    backfill_job::spec::check_size(bytes.len())
        .map_err(|e| usage(format!("job spec {}: {e}", path.display())))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| cannot(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    JobSpec::parse_with_params(&text, params)
        .map_err(|e| usage(format!("job spec {}: {e}", path.display())))
}

/// `--sample 1%` (or `1`) as a share of the rows, 0–1.
fn parse_sample(text: &str) -> Result<f64, String> {
    let pct: f64 = text
        .trim()
        .trim_end_matches('%')
        .trim()
        .parse()
        .map_err(|_| format!("--sample must be a percentage such as 1% or 0.5%, got `{text}`"))?;
    if !(pct.is_finite() && pct > 0.0 && pct <= 100.0) {
        return Err(format!(
            "--sample must be more than 0% and at most 100%, got `{text}`"
        ));
    }
    Ok(pct / 100.0)
}

fn job_request(job: &JobArgs, operator: &str) -> anyhow::Result<backfill_coordinator::RunRequest> {
    let spec = load_spec(&job.job, &job.params)?;
    let window =
        parse_age(&job.review_window).map_err(|e| usage(format!("--review-window: {e}")))?;
    let sample = job
        .sample
        .as_deref()
        .map(parse_sample)
        .transpose()
        .map_err(usage)?;
    let gate = if job.skip_review {
        let how = match std::env::var("BACKFILL_SKIP_REVIEW") {
            Ok(v) if !v.is_empty() => "BACKFILL_SKIP_REVIEW",
            _ => "--skip-review",
        };
        backfill_coordinator::Gate::skip(operator, &format!("review skipped with {how}"))
    } else {
        backfill_coordinator::Gate::review(operator, window)
    };
    validate_steer(&job.steer)?;
    let spec_throttle = spec.throttle;
    let scope = Scope::from_flags(&job.groups, job.all).map_err(|e| usage(e.to_string()))?;
    if scope != Scope::All && spec.groups.is_none() {
        return Err(usage(format!(
            "job `{}` has no groups; run it with --all",
            spec.name
        )));
    }
    if let Some(n) = job.shard_size {
        if n == 0 || n > backfill_job::spec::MAX_SHARD_SIZE {
            return Err(usage(format!(
                "--shard-size must be between 1 and {}",
                backfill_job::spec::MAX_SHARD_SIZE
            )));
        }
    }
    Ok(backfill_coordinator::RunRequest {
        spec,
        scope,
        mode: if job.commit {
            Mode::Commit
        } else {
            Mode::DryRun
        },
        shard_size: job.shard_size,
        throttle: steer_throttle(&job.steer, &spec_throttle),
        sample,
        gate,
        kind: backfill_job::RunKind::Forward,
        windows: job.steer.schedule()?,
    })
}

/// The spec's throttle with the coordinator's flags over it; `None` when
/// no flag was given.
fn steer_throttle(
    steer: &SteerArgs,
    spec: &backfill_job::spec::ThrottleSpec,
) -> Option<backfill_job::spec::ThrottleSpec> {
    if steer.given().is_empty() {
        return None;
    }
    Some(backfill_job::spec::ThrottleSpec {
        rows_per_sec: steer.rows_per_sec.or(spec.rows_per_sec),
        bytes_per_sec: steer.bytes_per_sec.or(spec.bytes_per_sec),
        max_wal_bytes_per_sec: steer.max_wal_bytes_per_sec.or(spec.max_wal_bytes_per_sec),
        max_in_flight: steer.max_in_flight.or(spec.max_in_flight),
        priority: steer.priority.unwrap_or(spec.priority),
    })
}

fn validate_steer(steer: &SteerArgs) -> anyhow::Result<()> {
    for (flag, v) in [
        ("--rows-per-sec", steer.rows_per_sec),
        ("--bytes-per-sec", steer.bytes_per_sec),
        ("--max-wal-bytes-per-sec", steer.max_wal_bytes_per_sec),
    ] {
        if let Some(r) = v {
            if !(r.is_finite() && r > 0.0) {
                return Err(usage(format!("{flag} must be a positive number")));
            }
        }
    }
    if steer.max_in_flight == Some(0) {
        return Err(usage("--max-in-flight must be at least 1"));
    }
    Ok(())
}

/// `N` or `off`.
fn limit_flag<T: std::str::FromStr>(
    flag: &str,
    v: &Option<String>,
) -> anyhow::Result<Option<Option<T>>> {
    match v.as_deref() {
        None => Ok(None),
        Some("off") => Ok(Some(None)),
        Some(text) => text
            .parse::<T>()
            .map(|n| Some(Some(n)))
            .map_err(|_| usage(format!("{flag} takes a number or `off`, got `{text}`"))),
    }
}

/// `30d`, `12h`, `90m`, `45s` as a duration.
fn parse_age(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("--older-than takes a number and a unit (d, h, m or s), e.g. 30d; got `{text}`");
    let t = text.trim();
    let (num, unit) = t.split_at(t.len().saturating_sub(1));
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(n.is_finite() && n >= 0.0) {
        return Err(bad());
    }
    let secs = match unit {
        "d" => n * 86_400.0,
        "h" => n * 3_600.0,
        "m" => n * 60.0,
        "s" => n,
        _ => return Err(bad()),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// The operator for audit events: the flag, else the OS user.
fn operator(flag: &Option<String>) -> String {
    flag.clone()
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Serves /metrics, /healthz, /readyz (and the dashboard) until `stop`.
async fn start_monitor(
    settings: &Settings,
    store: &Store,
    role: &str,
    addr: Option<std::net::SocketAddr>,
    broker: bool,
    dashboard: bool,
    stop: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let state = backfill_monitor::MonitorState::new(
        role,
        store.clone(),
        broker.then(|| (settings.amqp_url.expose().to_string(), settings.queues())),
        dashboard,
    )?;
    Ok(Some(
        backfill_monitor::serve(addr, state, stop.clone()).await?,
    ))
}

/// For the read-only commands: no DDL, and no ledger is bad input (exit 2)
/// that names the database looked at.
async fn connect_existing_store(s: &Settings, max: u32) -> anyhow::Result<Store> {
    match Store::connect_existing(s.database_url.expose(), max).await {
        Ok(store) => {
            s.use_ledger(store.ledger());
            Ok(store)
        }
        Err(e @ backfill_store::StoreError::NoLedger { .. }) => Err(usage(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

async fn connect_store(s: &Settings, max: u32) -> anyhow::Result<Store> {
    let store = Store::connect(s.database_url.expose(), max).await?;
    s.use_ledger(store.ledger());
    Ok(store)
}

/// Refuses to work for a database whose ledger was copied from another
/// (exit code 2, nothing touched): it would take that database's work.
fn refuse_copied_ledger(store: &Store) -> anyhow::Result<()> {
    store.ledger().check().map_err(|e| usage(e.to_string()))
}

/// Whether a role may create or upgrade the ledger tables.
#[derive(Clone, Copy)]
enum Access {
    Migrate,
    ReadOnly,
}

/// For the long-running roles: a database that is not up yet (or restarting)
/// is waited for, as the broker is, retrying with backoff and logging the
/// real cause of each failure; `None` when a shutdown signal came first.
/// Errors that retrying cannot fix (a bad URL, a SQLite file) end at once.
///
/// The dashboard (`Access::ReadOnly`) runs no DDL: until a worker or a job
/// has made the ledger, it waits, saying which database it looks at.
async fn connect_store_waiting(
    s: &Settings,
    max: u32,
    access: Access,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    let url = s.database_url.expose();
    let mut delay = Duration::from_millis(500);
    loop {
        let store = match access {
            Access::Migrate => Store::connect(url, max).await,
            Access::ReadOnly => Store::connect_existing(url, max).await,
        };
        match store {
            Ok(store) => {
                s.use_ledger(store.ledger());
                return Ok(Some(store));
            }
            Err(e @ backfill_store::StoreError::NoLedger { .. }) => {
                // The database answers: look again soon, without backing off.
                warn!(error = %e, retry_in_ms = 1000u64, "waiting for a worker or job to create the ledger");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(e) if s.is_sqlite() => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not reachable; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn connect_broker(s: &Settings) -> anyhow::Result<Broker> {
    Ok(Broker::connect(s.amqp_url.expose(), s.queues()).await?)
}

/// Exit code when nothing was started because another run or coordinator
/// of the job is in progress: a scheduler must see that the work it asked
/// for was not done.
pub const EXIT_BUSY: i32 = 5;

pub fn exit_code(rec: &RunRecord) -> i32 {
    if rec.state == RunState::Cancelled {
        4
    } else if rec.state == RunState::Failed || rec.tally.counts.errors > 0 {
        1
    } else if rec.tally.counts.conflicts > 0 {
        3
    } else {
        0
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let c = &cli.conn;
    if let Command::Probe { url, timeout } = &cli.command {
        // Needs no settings: it only asks an endpoint.
        return crate::watch::probe(url, Duration::from_secs(*timeout)).await;
    }
    let mut settings = Settings::resolve(
        c.database_url.clone(),
        c.amqp_url.clone(),
        c.queue_prefix.clone(),
        c.config.as_deref(),
    )
    .map_err(|e| usage(e.to_string()))?;
    let operator = operator(&c.operator);
    settings.operator = operator.clone();
    match cli.command {
        Command::Run {
            job,
            mappers,
            local,
        } => {
            let req = job_request(&job, &operator)?;
            if mappers == 0 {
                return Err(usage("--mappers must be at least 1"));
            }
            let local = local || settings.is_sqlite();
            let started = Instant::now();
            let Some(rec) =
                run_in_process(&settings, Work::Job(Box::new(req)), mappers, local).await?
            else {
                return Ok(EXIT_BUSY);
            };
            // Before the report, which ends with the `Summary:` line.
            if let Some(fraction) = rec.sample {
                print!(
                    "{}",
                    sample_estimate(&rec, fraction, started.elapsed().as_secs_f64())
                );
            }
            print!("{}", backfill_job::report::render_report(&rec.view()));
            Ok(exit_code(&rec))
        }
        Command::Verify {
            job,
            groups,
            all,
            params,
            shard_size,
            mappers,
            local,
        } => {
            if mappers == 0 {
                return Err(usage("--mappers must be at least 1"));
            }
            let req = job_request(
                &JobArgs {
                    job,
                    groups,
                    all,
                    commit: false,
                    shard_size,
                    skip_review: false,
                    review_window: "24h".into(),
                    sample: None,
                    params,
                    steer: SteerArgs::default(),
                },
                &operator,
            )?;
            let req = backfill_coordinator::RunRequest {
                kind: backfill_job::RunKind::Verify,
                ..req
            };
            let local = local || settings.is_sqlite();
            let Some(rec) =
                run_in_process(&settings, Work::Job(Box::new(req)), mappers, local).await?
            else {
                return Ok(EXIT_BUSY);
            };
            let store = connect_store(&settings, 2).await?;
            let versions = versions_unchanged(&store, &rec).await?;
            // Before the report, which ends with the `Summary:` line.
            if let Some((_, line)) = &versions {
                println!("{line}");
            }
            print!("{}", backfill_job::report::render_report(&rec.view()));
            let c = &rec.tally.counts;
            let passed = c.changed == 0
                && c.conflicts == 0
                && c.errors == 0
                && rec.state == RunState::Done
                && versions.as_ref().is_none_or(|(same, _)| *same);
            let detail = if passed {
                "passed: nothing left to do".to_string()
            } else {
                let mut d = format!(
                    "failed: {} rows would still change, {} conflicts, {} errors",
                    c.changed, c.conflicts, c.errors
                );
                if let Some((false, _)) = &versions {
                    d.push_str(
                        "; the row counts of the target tables changed since the last commit",
                    );
                }
                d
            };
            store
                .record_event(&rec.run_id, "verify", &operator, Some(&detail))
                .await?;
            eprintln!("verify of job `{}` {detail}", rec.spec.name);
            Ok(if passed { 0 } else { 1 })
        }
        Command::Coordinator {
            job,
            wait,
            metrics_addr,
        } => {
            refuse_sqlite(&settings, "coordinator")?;
            // Validate everything the user gave before touching anything.
            let req = match &job.resume {
                Some(_) => None,
                None => Some(job_request(
                    &JobArgs {
                        job: job
                            .job
                            .clone()
                            .ok_or_else(|| usage("--job FILE is required"))?,
                        groups: job.groups.clone(),
                        all: job.all,
                        commit: job.commit,
                        shard_size: job.shard_size,
                        skip_review: job.skip_review,
                        review_window: job.review_window.clone(),
                        sample: job.sample.clone(),
                        params: job.params.clone(),
                        steer: job.steer.clone(),
                    },
                    &operator,
                )?),
            };
            let store = connect_store(&settings, 4).await?;
            refuse_copied_ledger(&store)?;
            let stop_monitor = CancellationToken::new();
            let _monitor = start_monitor(
                &settings,
                &store,
                "coordinator",
                metrics_addr,
                true,
                false,
                &stop_monitor,
            )
            .await?;
            let _stop_monitor = stop_monitor.drop_guard();
            let (run_id, _lock) = match &job.resume {
                Some(run_id) => {
                    job.steer.warn_not_applied(run_id);
                    let rec = store
                        .load_run(run_id)
                        .await?
                        .ok_or_else(|| usage(format!("run {run_id} is not in the ledger")))?;
                    let Some(lock) = store.try_lock_job(&rec.spec.name).await? else {
                        eprintln!("another coordinator is working on job `{}`; not resuming run {run_id} twice", rec.spec.name);
                        return Ok(EXIT_BUSY);
                    };
                    let n = backfill_coordinator::publish_until_done(
                        &store,
                        settings.amqp_url.expose(),
                        &settings.queues(),
                        run_id,
                        true,
                        &shutdown_on_signals(),
                    )
                    .await?;
                    println!("{run_id}");
                    eprintln!("run {run_id} resumed: {n} unfinished shards published again");
                    (run_id.clone(), Some(lock))
                }
                None => {
                    let req = req.ok_or_else(|| usage("--job FILE is required"))?;
                    // The broker first: a run recorded with nobody able to
                    // publish it would be orphaned and block the job.
                    connect_broker(&settings).await?.close().await;
                    let (start, lock) = backfill_coordinator::start(&store, &req)
                        .await
                        .map_err(refusal)?;
                    let run_id = match start {
                        backfill_coordinator::Start::Busy(msg) => {
                            eprintln!("{msg}");
                            return Ok(EXIT_BUSY);
                        }
                        backfill_coordinator::Start::Planned { run_id, shards } => {
                            eprintln!("run {run_id} planned: {shards} shards");
                            run_id
                        }
                        backfill_coordinator::Start::Resumed { run_id, kind } => {
                            eprintln!("adopting run {run_id}: a {kind} run of the same job, spec and scope that was unfinished: resuming it");
                            job.steer.warn_not_applied(&run_id);
                            run_id
                        }
                    };
                    let n = backfill_coordinator::publish_until_done(
                        &store,
                        settings.amqp_url.expose(),
                        &settings.queues(),
                        &run_id,
                        false,
                        &shutdown_on_signals(),
                    )
                    .await?;
                    record_start(&store, &run_id, &operator).await?;
                    println!("{run_id}");
                    eprintln!(
                        "{n} shard tasks published; watch the run with `backfill status {run_id}`"
                    );
                    (run_id, lock)
                }
            };
            if !wait {
                return Ok(0);
            }
            let follower = crate::progress::follow(
                &store,
                &run_id,
                format!("backfill coordinator --resume {run_id}"),
            );
            let rec = backfill_coordinator::wait(&store, &run_id, &shutdown_on_signals()).await;
            follower.finish().await;
            let rec = rec?;
            print!("{}", backfill_job::report::render_report(&rec.view()));
            Ok(exit_code(&rec))
        }
        Command::Mapper {
            concurrency,
            metrics_addr,
        } => {
            refuse_sqlite(&settings, "mapper")?;
            if concurrency == 0 {
                return Err(usage("--concurrency must be at least 1"));
            }
            let shutdown = shutdown_on_signals();
            let Some(store) = connect_store_waiting(
                &settings,
                concurrency as u32 + 2,
                Access::Migrate,
                &shutdown,
            )
            .await?
            else {
                return Ok(0);
            };
            refuse_copied_ledger(&store)?;
            let cfg = backfill_mapper::MapperConfig {
                amqp_url: settings.amqp_url.expose().to_string(),
                queues: settings.queues(),
                concurrency,
                worker: worker_name("mapper"),
            };
            info!(database = %settings.database_url, amqp = %settings.amqp_url, "mapper starting");
            let monitor = start_monitor(
                &settings,
                &store,
                "mapper",
                metrics_addr,
                true,
                false,
                &shutdown,
            )
            .await?;
            backfill_mapper::run(store, cfg, shutdown.clone()).await?;
            shutdown.cancel();
            if let Some(m) = monitor {
                let _ = m.await;
            }
            Ok(0)
        }
        Command::Reducer {
            metrics_addr,
            dashboard,
        } => {
            refuse_sqlite(&settings, "reducer")?;
            let shutdown = shutdown_on_signals();
            let Some(store) =
                connect_store_waiting(&settings, 4, Access::Migrate, &shutdown).await?
            else {
                return Ok(0);
            };
            refuse_copied_ledger(&store)?;
            let monitor = start_monitor(
                &settings,
                &store,
                "reducer",
                metrics_addr,
                true,
                dashboard,
                &shutdown,
            )
            .await?;
            let cfg = backfill_reducer::ReducerConfig {
                amqp_url: settings.amqp_url.expose().to_string(),
                queues: settings.queues(),
                worker: worker_name("reducer"),
            };
            info!(database = %settings.database_url, amqp = %settings.amqp_url, "reducer starting");
            backfill_reducer::run(store, cfg, shutdown.clone()).await?;
            shutdown.cancel();
            if let Some(m) = monitor {
                let _ = m.await;
            }
            Ok(0)
        }
        Command::Dashboard { listen } => {
            let shutdown = shutdown_on_signals();
            let Some(store) =
                connect_store_waiting(&settings, 4, Access::ReadOnly, &shutdown).await?
            else {
                return Ok(0);
            };
            // The broker is optional here: readiness reports it when configured.
            let broker = !settings.is_sqlite();
            let monitor = start_monitor(
                &settings,
                &store,
                "dashboard",
                Some(listen),
                broker,
                true,
                &shutdown,
            )
            .await?;
            eprintln!("dashboard on http://{listen}/ (Ctrl-C to stop)");
            if let Some(m) = monitor {
                let _ = m.await;
            }
            Ok(0)
        }
        Command::History { job, limit, json } => {
            if limit < 1 {
                return Err(usage("--limit must be at least 1"));
            }
            let store = connect_existing_store(&settings, 2).await?;
            let runs = store.history(job.as_deref(), limit).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))?
                );
                return Ok(0);
            }
            if runs.is_empty() {
                println!("no runs in the ledger");
            }
            for r in runs {
                println!(
                    "{}  {}  job={} mode={} state={} spec={}",
                    r.created_at,
                    r.run_id,
                    r.job,
                    r.mode,
                    r.state,
                    &r.spec_hash[..r.spec_hash.len().min(12)]
                );
                if !r.params.is_empty() {
                    let pairs = backfill_job::params::describe_values(&r.params);
                    println!("    parameters {}", pairs);
                }
                for e in r.events {
                    println!(
                        "    {}  {} by {}{}",
                        e.at,
                        e.action,
                        e.operator,
                        e.detail.map(|d| format!(" ({d})")).unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Prune { older_than, commit } => {
            let age = parse_age(&older_than).map_err(usage)?;
            let store = connect_store(&settings, 2).await?;
            let runs = store.prune_before_images(age, commit, &operator).await?;
            let (n, bytes) = runs
                .iter()
                .fold((0i64, 0i64), |(n, b), r| (n + r.1, b + r.2));
            for (run, rows, b) in &runs {
                println!("{run}: {rows} before-images, {b} bytes");
            }
            if commit {
                println!(
                    "pruned {n} before-images ({bytes} bytes of values) of {} runs finished more than {older_than} ago; those runs can no longer be reverted",
                    runs.len()
                );
            } else {
                println!(
                    "would prune {n} before-images ({bytes} bytes of values) of {} runs; add --commit to delete them",
                    runs.len()
                );
            }
            Ok(0)
        }
        Command::Probe { url, timeout } => {
            crate::watch::probe(&url, Duration::from_secs(timeout)).await
        }
        Command::Pause { run } => {
            let store = connect_store(&settings, 2).await?;
            crate::steer::pause(&store, &run, &operator).await
        }
        Command::Resume { run } => {
            let store = connect_store(&settings, 2).await?;
            crate::steer::resume(&store, &run, &operator).await
        }
        Command::Cancel { run, wait_secs } => {
            let store = connect_store(&settings, 2).await?;
            crate::steer::cancel(&store, &run, &operator, Duration::from_secs(wait_secs)).await
        }
        Command::Throttle {
            run,
            rows_per_sec,
            bytes_per_sec,
            max_wal_bytes_per_sec,
            max_in_flight,
            priority,
        } => {
            let change = backfill_store::ThrottleChange {
                rows_per_sec: limit_flag::<f64>("--rows-per-sec", &rows_per_sec)?,
                bytes_per_sec: limit_flag::<f64>("--bytes-per-sec", &bytes_per_sec)?,
                max_wal_bytes_per_sec: limit_flag::<f64>(
                    "--max-wal-bytes-per-sec",
                    &max_wal_bytes_per_sec,
                )?,
                max_in_flight: limit_flag::<u32>("--max-in-flight", &max_in_flight)?,
                priority,
            };
            for (flag, v) in [
                ("--rows-per-sec", change.rows_per_sec),
                ("--bytes-per-sec", change.bytes_per_sec),
                ("--max-wal-bytes-per-sec", change.max_wal_bytes_per_sec),
            ] {
                if let Some(Some(r)) = v {
                    if !(r.is_finite() && r > 0.0) {
                        return Err(usage(format!("{flag} must be a positive number or `off`")));
                    }
                }
            }
            if change.max_in_flight == Some(Some(0)) {
                return Err(usage("--max-in-flight must be at least 1 or `off`"));
            }
            if change.is_empty() {
                return Err(usage(
                    "give --rows-per-sec, --bytes-per-sec, --max-wal-bytes-per-sec, --max-in-flight or --priority to change",
                ));
            }
            let store = connect_store(&settings, 2).await?;
            crate::steer::throttle(&store, &run, &change, &operator).await
        }
        Command::Retry {
            run,
            mappers,
            local,
            shard_size,
        } => {
            check_workers(mappers, shard_size)?;
            let local = local || settings.is_sqlite();
            let work = Work::Retry {
                run_id: run,
                shard_size,
            };
            let Some(rec) = run_in_process(&settings, work, mappers, local).await? else {
                return Ok(EXIT_BUSY);
            };
            print!("{}", backfill_job::report::render_report(&rec.view()));
            Ok(exit_code(&rec))
        }
        Command::Revert {
            run,
            params,
            commit,
            mappers,
            local,
            shard_size,
        } => {
            check_workers(mappers, shard_size)?;
            let local = local || settings.is_sqlite();
            let work = Work::Revert {
                run_id: run.clone(),
                mode: if commit { Mode::Commit } else { Mode::DryRun },
                shard_size,
                params,
            };
            let Some(rec) = run_in_process(&settings, work, mappers, local).await? else {
                return Ok(EXIT_BUSY);
            };
            print!("{}", backfill_job::report::render_report(&rec.view()));
            eprintln!(
                "run {} {} run {run}{}",
                rec.run_id,
                if commit { "reverted" } else { "would revert" },
                if commit {
                    ""
                } else {
                    "; add --commit to restore the rows"
                }
            );
            Ok(exit_code(&rec))
        }
        Command::Ledger { action } => {
            let store = connect_store(&settings, 2).await?;
            if let LedgerAction::Adopt = action {
                let was = store.ledger().clone();
                if !was.is_copy() {
                    eprintln!(
                        "ledger {} belongs to this database ({}); nothing to adopt",
                        was.id, was.current_database
                    );
                    return Ok(0);
                }
                let now = store.adopt_ledger().await?;
                store.close().await;
                let store = Store::connect(settings.database_url.expose(), 2).await?;
                let mut fresh = settings.clone();
                fresh.ledger_prefix = Default::default();
                fresh.use_ledger(store.ledger());
                eprintln!(
                    "ledger {} copied from database {} is now ledger {} of database {}",
                    was.id, was.recorded_database, now.id, now.current_database
                );
                eprint!("{}", ledger_lines(&fresh, &store));
                return Ok(0);
            }
            eprint!("{}", ledger_lines(&settings, &store));
            println!("{}", store.ledger().id);
            Ok(0)
        }
        Command::Status {
            run,
            watch,
            json,
            interval,
        } => {
            if !(interval.is_finite() && interval > 0.0) {
                return Err(usage("--interval must be a positive number of seconds"));
            }
            let store = connect_existing_store(&settings, 2).await?;
            if !json {
                eprint!("{}", ledger_lines(&settings, &store));
            }
            crate::watch::status(
                &store,
                crate::watch::StatusArgs {
                    run,
                    watch,
                    json,
                    interval: Duration::from_secs_f64(interval),
                },
                shutdown_on_signals(),
            )
            .await
        }
        Command::Report {
            run,
            diff: Some(other),
            ..
        } => {
            let store = connect_existing_store(&settings, 2).await?;
            let load = |id: String| {
                let store = store.clone();
                async move {
                    store
                        .load_run(&id)
                        .await?
                        .ok_or_else(|| usage(format!("run {id} is not in the ledger")))
                }
            };
            let (first, second) = (load(other.clone()).await?, load(run.clone()).await?);
            if first.spec.name != second.spec.name {
                return Err(usage(format!(
                    "runs {other} and {run} are of different jobs (`{}` and `{}`)",
                    first.spec.name, second.spec.name
                )));
            }
            let lines = backfill_job::formats::plan_diff(
                &first.plan,
                &second.plan,
                second.spec.report.target_param.as_deref(),
                second.spec.group_noun(),
            );
            println!(
                "Plan of run {run} ({}, scope {}) against run {other} ({}, scope {}):",
                second.mode, second.scope, first.mode, first.scope
            );
            if lines.is_empty() {
                println!("  the same: same groups, same targets, same values");
                return Ok(0);
            }
            for l in &lines {
                println!("  {l}");
            }
            println!("{} differences", lines.len());
            Ok(1)
        }
        Command::Report {
            run,
            format,
            output,
            diff: None,
        } => {
            let format: backfill_job::formats::Format = format.parse().map_err(usage)?;
            let store = connect_existing_store(&settings, 2).await?;
            let rec = store
                .load_run(&run)
                .await?
                .ok_or_else(|| usage(format!("run {run} is not in the ledger")))?;
            if !rec.state.is_finished() {
                eprintln!(
                    "run {run} is still running ({}/{} shards reduced); the report shows what is folded so far",
                    rec.shards_reduced, rec.shards_total
                );
            }
            let view = rec.view();
            let text = match format {
                backfill_job::formats::Format::Text => backfill_job::report::render_report(&view),
                backfill_job::formats::Format::Markdown => backfill_job::formats::render_markdown(
                    &backfill_job::formats::report_doc(&view),
                ),
                backfill_job::formats::Format::Csv => {
                    backfill_job::formats::render_csv(&backfill_job::formats::report_doc(&view))
                }
                backfill_job::formats::Format::Json => {
                    let mut t =
                        serde_json::to_string_pretty(&backfill_job::formats::report_doc(&view))?;
                    t.push('\n');
                    t
                }
            };
            match output {
                None => print!("{text}"),
                Some(path) => {
                    // Write then rename: a reader never sees half a report.
                    let tmp = path.with_extension("partial");
                    std::fs::write(&tmp, &text)
                        .and_then(|()| std::fs::rename(&tmp, &path))
                        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
                    eprintln!("report of run {run} written to {}", path.display());
                }
            }
            Ok(exit_code(&rec))
        }
        Command::Demo {
            db,
            distributed,
            demo_db,
            revisions,
            programs,
            mappers,
        } => {
            if mappers == 0 {
                return Err(usage("--mappers must be at least 1"));
            }
            crate::demo::run(
                &settings,
                crate::demo::DemoArgs {
                    db,
                    distributed,
                    demo_db,
                    revisions,
                    programs,
                    mappers,
                },
            )
            .await
        }
        Command::Seed {
            dataset,
            revisions,
            programs,
            collections,
            max_versions,
            seed,
        } => crate::demo::seed(
            &settings,
            &dataset,
            crate::demo::SeedArgs {
                revisions,
                programs,
                collections,
                max_versions,
                seed,
            },
        )
        .await
        .map_err(|e| match e.downcast::<crate::demo::UnknownDataset>() {
            Ok(u) => usage(u.to_string()),
            Err(e) => e,
        }),
    }
}

/// What a run in this process works on.
pub enum Work {
    /// A job: plan a new run (or resume the unfinished run of the same command).
    Job(Box<backfill_coordinator::RunRequest>),
    /// The quarantined rows of a finished run.
    Retry { run_id: String, shard_size: u32 },
    /// Restore the before-images of a finished commit run.
    Revert {
        run_id: String,
        mode: Mode,
        shard_size: u32,
        /// `--param` values, checked against the run's own.
        params: Vec<(String, String)>,
    },
}

async fn begin(
    store: &Store,
    work: &Work,
    operator: &str,
) -> anyhow::Result<Option<(String, Option<backfill_store::JobLock>)>> {
    let started = begin_inner(store, work).await?;
    if let Some((run_id, _)) = &started {
        record_start(store, run_id, operator).await?;
        if let Work::Revert {
            run_id: of, mode, ..
        } = work
        {
            let detail = format!("by run {run_id} ({mode})");
            store
                .record_event(of, "revert", operator, Some(&detail))
                .await?;
        }
    }
    Ok(started)
}

/// The audit event of a run's start (or resumption): who, from which host.
async fn record_start(store: &Store, run_id: &str, operator: &str) -> anyhow::Result<()> {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    store
        .record_event(run_id, "start", operator, Some(&format!("host={host}")))
        .await?;
    Ok(())
}

async fn begin_inner(
    store: &Store,
    work: &Work,
) -> anyhow::Result<Option<(String, Option<backfill_store::JobLock>)>> {
    match work {
        Work::Job(req) => start_or_resume(store, req).await,
        Work::Retry { run_id, shard_size } => {
            let original = store
                .load_run(run_id)
                .await?
                .ok_or_else(|| usage(format!("run {run_id} is not in the ledger")))?;
            if !original.state.is_finished() {
                return Err(usage(format!(
                    "run {run_id} is still running ({}/{} shards reduced); retry it once it has finished",
                    original.shards_reduced, original.shards_total
                )));
            }
            let Some(lock) = store.try_lock_job(&original.spec.name).await? else {
                eprintln!(
                    "another coordinator is working on job `{}`; try again when it is done",
                    original.spec.name
                );
                return Ok(None);
            };
            let new_id = backfill_coordinator::new_run_id(&original.spec.name);
            let plan = store
                .create_derived_run(&new_id, &original, *shard_size, Derived::Retry)
                .await?;
            // The spec's throttle holds for a run made from another run
            // too: a revert or retry at night is as gentle as the run.
            store
                .init_control(&new_id, &original.spec.throttle, None)
                .await?;
            eprintln!(
                "run {new_id} retries {} quarantined rows of run {run_id} in {} shards",
                plan.targets.iter().map(|t| t.rows).sum::<u64>(),
                plan.shards_total
            );
            Ok(Some((new_id, Some(lock))))
        }
        Work::Revert {
            run_id,
            mode,
            shard_size,
            params,
        } => {
            let original = store
                .load_run(run_id)
                .await?
                .ok_or_else(|| usage(format!("run {run_id} is not in the ledger")))?;
            if !params.is_empty() {
                JobSpec::parse_with_params(&original.spec.source, params)
                    .map_err(|e| usage(format!("run {run_id}: {e}")))?;
            }
            if !original.state.is_finished() {
                return Err(usage(format!(
                    "run {run_id} is still running ({}/{} shards reduced); cancel it or let it finish, then revert it",
                    original.shards_reduced, original.shards_total
                )));
            }
            if !original.mode.is_commit() {
                return Err(usage(format!(
                    "run {run_id} is a dry run: it wrote nothing, so there is nothing to revert"
                )));
            }
            if let Some(of) = &original.revert_of {
                return Err(usage(format!(
                    "run {run_id} is itself a revert (of run {of}); to apply the job again, run the job"
                )));
            }
            let images = store.before_image_count(run_id).await?;
            if images == 0 && original.tally.counts.changed > 0 {
                return Err(usage(format!(
                    "run {run_id} changed {} rows but its before-images are gone (pruned); it cannot be reverted",
                    original.tally.counts.changed
                )));
            }
            let Some(lock) = store.try_lock_job(&original.spec.name).await? else {
                eprintln!(
                    "another coordinator is working on job `{}`; try again when it is done",
                    original.spec.name
                );
                return Ok(None);
            };
            let active = store.active_runs(&original.spec.name).await?;
            if let Some(other) = active.first() {
                return Err(usage(format!(
                    "run {} of job `{}` is in progress; revert once it has finished",
                    other.run_id, original.spec.name
                )));
            }
            let new_id = backfill_coordinator::new_run_id(&original.spec.name);
            let plan = store
                .create_derived_run(&new_id, &original, *shard_size, Derived::Revert(*mode))
                .await?;
            // The spec's throttle holds for a run made from another run
            // too: a revert or retry at night is as gentle as the run.
            store
                .init_control(&new_id, &original.spec.throttle, None)
                .await?;
            eprintln!(
                "run {new_id} ({mode}) restores {} rows written by run {run_id}, in {} shards",
                plan.targets.iter().map(|t| t.rows).sum::<u64>(),
                plan.shards_total
            );
            Ok(Some((new_id, Some(lock))))
        }
    }
}

/// The flags of a run made from another run (`retry`, `revert`).
fn check_workers(mappers: u16, shard_size: u32) -> anyhow::Result<()> {
    if mappers == 0 {
        return Err(usage("--mappers must be at least 1"));
    }
    if shard_size == 0 || shard_size > backfill_job::spec::MAX_SHARD_SIZE {
        return Err(usage(format!(
            "--shard-size must be between 1 and {}",
            backfill_job::spec::MAX_SHARD_SIZE
        )));
    }
    Ok(())
}

/// A commit refused by its gate, or a spec whose query returns keys it
/// does not allow, is the user's to fix: exit 2.
fn refusal(e: backfill_coordinator::CoordinatorError) -> anyhow::Error {
    match e {
        backfill_coordinator::CoordinatorError::Refused(m) => usage(m),
        backfill_coordinator::CoordinatorError::Store(backfill_store::StoreError::Input(m)) => {
            usage(m)
        }
        other => other.into(),
    }
}

/// For a job whose tables hold versions (`versioned = true`): whether the
/// target tables have as many rows now (when this verify was planned) as
/// when the job's last commit was planned, with a line saying so. `None`
/// for other jobs, or when the job was never committed.
async fn versions_unchanged(
    store: &Store,
    verify: &RunRecord,
) -> anyhow::Result<Option<(bool, String)>> {
    if !verify.spec.versioned {
        return Ok(None);
    }
    let Some(last) = store.last_commit_verified(&verify.spec.name).await? else {
        return Ok(None);
    };
    let Some(commit) = store.load_run(&last.commit_run).await? else {
        return Ok(None);
    };
    let planned = |r: &RunRecord| {
        r.table_rows
            .as_ref()
            .and_then(|t| t.get("planned"))
            .and_then(|p| {
                serde_json::from_value::<std::collections::BTreeMap<String, i64>>(p.clone()).ok()
            })
    };
    let (Some(before), Some(now)) = (planned(&commit), planned(verify)) else {
        return Ok(None);
    };
    let same = before == now;
    let tables: Vec<String> = before
        .iter()
        .map(|(t, n)| format!("{t} {n} → {}", now.get(t).copied().unwrap_or(0)))
        .collect();
    Ok(Some((
        same,
        format!(
            "Versions: {} (rows when commit run {} was planned → now){}",
            tables.join(", "),
            commit.run_id,
            if same {
                ""
            } else {
                "; rows were added or removed"
            }
        ),
    )))
}

/// What a sampled dry run says about the full run.
fn sample_estimate(rec: &RunRecord, fraction: f64, secs: f64) -> String {
    let t = &rec.tally;
    let c = &t.counts;
    let scale = 1.0 / fraction;
    let read = c.processed.saturating_sub(c.skipped).max(1);
    let share = c.changed as f64 / read as f64;
    let full_rows = c.processed as f64 * scale;
    let rate = c.processed as f64 / secs.max(1e-9);
    let eta = full_rows / rate.max(1e-9);
    format!(
        "Estimate from a {:.3}% sample ({} rows read; about {:.0} rows in the full scope):\n  \
         rows that would change: {:.1}% (about {:.0} rows)\n  \
         bytes to write: about {:.0} (rewritten columns), plus about {:.0} of before-images\n  \
         ETA of the full dry run at the measured {:.0} rows/s: about {:.0} s\n",
        fraction * 100.0,
        c.processed,
        full_rows,
        share * 100.0,
        c.changed as f64 * scale,
        t.bytes_written as f64 * scale,
        t.bytes_before as f64 * scale,
        rate,
        eta
    )
}

/// Plans a run, or resumes the unfinished run of the same command; `None`
/// (after saying why) when another run of the job is in progress.
async fn start_or_resume(
    store: &Store,
    req: &backfill_coordinator::RunRequest,
) -> anyhow::Result<Option<(String, Option<backfill_store::JobLock>)>> {
    let (start, lock) = backfill_coordinator::start(store, req)
        .await
        .map_err(refusal)?;
    match start {
        backfill_coordinator::Start::Busy(msg) => {
            eprintln!("{msg}");
            Ok(None)
        }
        backfill_coordinator::Start::Planned { run_id, shards } => {
            eprintln!("run {run_id}: {shards} shards planned");
            Ok(Some((run_id, lock)))
        }
        backfill_coordinator::Start::Resumed { run_id, kind } => {
            eprintln!("adopting run {run_id}: a {kind} run of the same job, spec and scope that was unfinished: resuming it");
            if req.throttle.is_some() {
                eprintln!(
                    "warning: --rows-per-sec, --max-in-flight and --priority are not applied: run {run_id} keeps the throttle it was planned with; change it with `backfill throttle {run_id} …`"
                );
            }
            if req.windows.is_some() {
                eprintln!("warning: --window not applied: run {run_id} keeps the windows it was planned with");
            }
            Ok(Some((run_id, lock)))
        }
    }
}

/// The distributed roles need a database every host can reach.
fn refuse_sqlite(settings: &Settings, role: &str) -> anyhow::Result<()> {
    if settings.is_sqlite() {
        return Err(usage(format!(
            "`backfill {role}` runs distributed and needs PostgreSQL; a SQLite database runs embedded: use `backfill run --local`"
        )));
    }
    Ok(())
}

/// Coordinator, `mappers` mapper tasks and a reducer in this process, over
/// RabbitMQ or (`local`) the in-process queue. Returns the finished run.
pub async fn run_in_process(
    settings: &Settings,
    req: Work,
    mappers: u16,
    local: bool,
) -> anyhow::Result<Option<RunRecord>> {
    let store = connect_store(settings, mappers as u32 + 4).await?;
    if local {
        return run_local(&store, req, mappers, &settings.operator).await;
    }
    refuse_copied_ledger(&store)?;
    let broker = connect_broker(settings).await?;
    let shutdown = shutdown_on_signals();
    let workers = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    for i in 0..mappers {
        let cfg = backfill_mapper::MapperConfig {
            amqp_url: settings.amqp_url.expose().to_string(),
            queues: settings.queues(),
            concurrency: 1,
            worker: format!("{}#{i}", worker_name("mapper")),
        };
        tracker.spawn(backfill_mapper::run(store.clone(), cfg, workers.clone()));
    }
    let rcfg = backfill_reducer::ReducerConfig {
        amqp_url: settings.amqp_url.expose().to_string(),
        queues: settings.queues(),
        worker: worker_name("reducer"),
    };
    tracker.spawn(backfill_reducer::run(store.clone(), rcfg, workers.clone()));
    tracker.close();

    let started = Instant::now();
    let outcome = async {
        let Some((run_id, _lock)) = begin(&store, &req, &settings.operator).await? else {
            return Ok(None);
        };
        let follower = crate::progress::follow(
            &store,
            &run_id,
            format!("backfill coordinator --resume {run_id}"),
        );
        let rec = async {
            backfill_coordinator::publish_until_done(
                &store,
                settings.amqp_url.expose(),
                &settings.queues(),
                &run_id,
                false,
                &shutdown,
            )
            .await?;
            Ok::<_, anyhow::Error>(backfill_coordinator::wait(&store, &run_id, &shutdown).await?)
        }
        .await;
        // The bar goes before anything else is printed: the report follows.
        follower.finish().await;
        Ok::<_, anyhow::Error>(Some(rec?))
    }
    .await;
    workers.cancel();
    if tokio::time::timeout(Duration::from_secs(60), tracker.wait())
        .await
        .is_err()
    {
        warn!("workers did not stop within 60 s");
    }
    broker.close().await;
    let Some(rec) = outcome? else { return Ok(None) };
    report_speed(&rec, started);
    Ok(Some(rec))
}

fn report_speed(rec: &RunRecord, started: Instant) {
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "run {} finished in {:.2} s ({:.0} rows/s)",
        rec.run_id,
        secs,
        rec.tally.counts.processed as f64 / secs.max(1e-9)
    );
}

/// The embedded mode: the same coordinator, mappers and reducer over the
/// in-process queue.
async fn run_local(
    store: &Store,
    req: Work,
    mappers: u16,
    operator: &str,
) -> anyhow::Result<Option<RunRecord>> {
    let queue = backfill_queue::LocalQueue::new();
    let shutdown = shutdown_on_signals();
    let workers = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    for i in 0..mappers {
        let worker = format!("{}#{i}", worker_name("mapper"));
        tracker.spawn(backfill_mapper::run_local(
            store.clone(),
            queue.clone(),
            worker,
            workers.clone(),
        ));
    }
    tracker.spawn(backfill_reducer::run_local(
        store.clone(),
        queue.clone(),
        workers.clone(),
    ));
    tracker.close();
    let started = Instant::now();
    let outcome = async {
        let Some((run_id, _lock)) = begin(store, &req, operator).await? else {
            return Ok(None);
        };
        // In-process tasks die with their process: send every shard not done.
        let tasks = backfill_coordinator::resume_tasks(store, &run_id).await?;
        let nos: Vec<i32> = tasks.iter().map(|t| t.shard_no as i32).collect();
        for t in tasks {
            queue.send_task(t);
        }
        store.mark_published(&run_id, &nos).await?;
        // In-process queue: the same command run again resumes the run.
        let follower =
            crate::progress::follow(store, &run_id, "the same command again".to_string());
        let rec = backfill_coordinator::wait(store, &run_id, &shutdown).await;
        follower.finish().await;
        Ok::<_, anyhow::Error>(Some(rec?))
    }
    .await;
    workers.cancel();
    if tokio::time::timeout(Duration::from_secs(60), tracker.wait())
        .await
        .is_err()
    {
        warn!("workers did not stop within 60 s");
    }
    let Some(rec) = outcome? else { return Ok(None) };
    report_speed(&rec, started);
    Ok(Some(rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("0s"), Ok(Duration::ZERO));
        assert!(parse_age("30").is_err());
        assert!(parse_age("d").is_err());
        assert!(parse_age("-1d").is_err());
        assert!(parse_age("1w").is_err());
    }
}
