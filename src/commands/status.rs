//! `backfill status [RUN]`: the runs and their progress (see `watch`).

use std::time::Duration;

use crate::connect::{connect_existing_store, ledger_lines};
use crate::exit::{usage, Exit};
use crate::progress::shutdown_on_signals;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A run id; without it, the recent runs.
    pub run: Option<String>,
    /// Redraw every --interval seconds until the run (or every run shown) has finished.
    #[arg(long)]
    pub watch: bool,
    /// Print the machine-readable JSON document instead (see the README).
    #[arg(long)]
    pub json: bool,
    /// Seconds between redraws with --watch.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    if !(a.interval.is_finite() && a.interval > 0.0) {
        return Err(usage("--interval must be a positive number of seconds"));
    }
    let store = connect_existing_store(settings, 2).await?;
    if !a.json {
        eprint!("{}", ledger_lines(settings, &store));
    }
    crate::watch::status(
        &store,
        crate::watch::StatusArgs {
            run: a.run,
            watch: a.watch,
            json: a.json,
            interval: Duration::from_secs_f64(a.interval),
        },
        shutdown_on_signals(),
    )
    .await
}
