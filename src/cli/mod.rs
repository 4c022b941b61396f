//! Command line: the arguments clap parses (declared once, in `args`, and
//! flattened into each command's own), the process's `main`, and the
//! dispatch of each subcommand to its module in `commands`.

use clap::{Parser, Subcommand};

use crate::commands;
use crate::exit::{self, Exit};
use crate::settings::Settings;

pub mod args;
pub mod parse;

use parse::operator;

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
    conn: args::ConnArgs,
    /// No progress bar on a terminal: plain progress lines on stderr instead
    /// (a line per 10 % of the shards or per 30 s), as for a pipe or a file.
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    #[command(flatten)]
    notify: args::NotifyArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Plan, map and reduce a run in this process (over RabbitMQ, or in-process with --local);
    /// print the report and the `Summary:` line.
    Run(commands::run::Args),
    /// Plan a run, record it in the ledger and publish its shard tasks; prints the run id.
    /// Rerunning the same command resumes an unfinished run instead of planning another.
    Coordinator(commands::coordinator::Args),
    /// Check a job's postcondition over its scope without writing: a dry run whose success is
    /// "nothing left to change, no conflicts, no errors". Exit 0 only then; 1 otherwise.
    Verify(commands::verify::Args),
    /// Worker: take shard tasks, rewrite rows, record them, publish results. Run any number, anywhere.
    Mapper(commands::mapper::Args),
    /// Worker: fold shard results into run summaries.
    Reducer(commands::reducer::Args),
    /// Serve the web dashboard (runs, live shard grid, throughput, report) and its JSON API,
    /// plus /metrics, /healthz and /readyz.
    Dashboard(commands::dashboard::Args),
    /// The ledger's audit trail: recent runs (of a job) with who started them, from which host,
    /// the spec's hash, and every pause/resume/cancel/throttle/verify with time and operator.
    History(commands::history::Args),
    /// Delete the before-images of runs finished longer ago than --older-than (retention).
    /// Shows what it would delete unless --commit. Pruned runs cannot be reverted.
    Prune(commands::prune::Args),
    /// Health probe for images without curl: GET an http:// URL (e.g. http://127.0.0.1:9464/readyz);
    /// exit 0 on a 2xx answer, 1 otherwise.
    Probe(commands::probe::Args),
    /// Stop starting new shards of a run; the shards in hand finish and commit.
    Pause(commands::pause::Args),
    /// Carry on with a paused run.
    Resume(commands::resume::Args),
    /// Stop a run for good: no new shard starts, the shards in hand finish, the run is
    /// marked cancelled and the summary of what was done is printed.
    Cancel(commands::cancel::Args),
    /// Change a run's throttle or priority while it runs (`off` removes a limit).
    Throttle(commands::throttle::Args),
    /// Re-run exactly the rows a finished run quarantined (rule errors, rows of dead-lettered
    /// shards), once their cause is fixed: a new run, same spec and mode, in this process.
    Retry(commands::retry::Args),
    /// Undo a finished commit run: restore the before-images it recorded, through the same
    /// shards, mappers and reducer, as a new run. A row edited since the run (it no longer
    /// holds what the run wrote) is a conflict and is left alone. Dry run unless --commit;
    /// running it again changes nothing.
    Revert(commands::revert::Args),
    /// Show recent runs, or one run's progress: shards, rows, rate, ETA, steering, workers,
    /// dead-lettered shards, quarantined rows and summary.
    Status(commands::status::Args),
    /// The ledger's identity: `show` it (id, database, queue names), or `adopt` a ledger
    /// copied from another database (a clone), giving it an identity of its own.
    Ledger(commands::ledger::Args),
    /// Print a run's report from the ledger: text, or md (for admins), csv (one row per group)
    /// or json (the documented document).
    Report(commands::report::Args),
    /// Create a demo database with realistic data and run the certificate-titles job on it
    /// (or the StreamField migration, with --job wagtail-streamfield): dry run, commit, and a
    /// second commit that changes nothing. Embedded (SQLite, no services) unless --distributed.
    Demo(commands::demo::Args),
    /// Create a shipped job's demo tables in DATABASE_URL (PostgreSQL or SQLite) and fill them with generated data.
    Seed(commands::seed::Args),
}

/// Parses the command line, runs the command and says how it ended.
pub fn run() -> Exit {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Clean
            };
        }
    };
    init_tracing(&cli.command);
    crate::progress::set_quiet(cli.quiet);
    match cli.notify.settings() {
        Ok(s) => backfill_notify::install(s),
        Err(e) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return Exit::Failed;
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
            exit::of_error(&e)
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
        Command::Mapper(_)
        | Command::Reducer(_)
        | Command::Coordinator(_)
        | Command::Dashboard(_) => "info",
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

async fn dispatch(cli: Cli) -> anyhow::Result<Exit> {
    let c = &cli.conn;
    if let Command::Probe(a) = &cli.command {
        // Needs no settings: it only asks an endpoint.
        return commands::probe::run(a).await;
    }
    let mut settings = Settings::resolve(
        c.database_url.clone(),
        c.amqp_url.clone(),
        c.queue_prefix.clone(),
        c.config.as_deref(),
    )
    .map_err(|e| exit::usage(e.to_string()))?;
    settings.operator = operator(&c.operator);
    let s = &settings;
    match cli.command {
        Command::Run(a) => commands::run::run(a, s).await,
        Command::Coordinator(a) => commands::coordinator::run(a, s).await,
        Command::Verify(a) => commands::verify::run(a, s).await,
        Command::Mapper(a) => commands::mapper::run(a, s).await,
        Command::Reducer(a) => commands::reducer::run(a, s).await,
        Command::Dashboard(a) => commands::dashboard::run(a, s).await,
        Command::History(a) => commands::history::run(a, s).await,
        Command::Prune(a) => commands::prune::run(a, s).await,
        Command::Probe(a) => commands::probe::run(&a).await,
        Command::Pause(a) => commands::pause::run(a, s).await,
        Command::Resume(a) => commands::resume::run(a, s).await,
        Command::Cancel(a) => commands::cancel::run(a, s).await,
        Command::Throttle(a) => commands::throttle::run(a, s).await,
        Command::Retry(a) => commands::retry::run(a, s).await,
        Command::Revert(a) => commands::revert::run(a, s).await,
        Command::Status(a) => commands::status::run(a, s).await,
        Command::Ledger(a) => commands::ledger::run(a, s).await,
        Command::Report(a) => commands::report::run(a, s).await,
        Command::Demo(a) => commands::demo::run(a, s).await,
        Command::Seed(a) => commands::seed::run(a, s).await,
    }
}
