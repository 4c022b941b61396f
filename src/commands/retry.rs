//! `backfill retry RUN`: re-run exactly the rows a finished run
//! quarantined, as a new run in this process, or finish an unfinished
//! retry of it (one whose process died), saying so.

use crate::exit::Exit;
use crate::in_process::{RerunArgs, Work};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The finished run whose quarantined rows to retry.
    pub run: String,
    #[command(flatten)]
    pub workers: RerunArgs,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let run_id = a.run;
    let work = |shard_size| Work::Retry { run_id, shard_size };
    let Some(rec) = a.workers.run(settings, work).await? else {
        return Ok(Exit::Busy);
    };
    Ok(Exit::of_run(&rec))
}
