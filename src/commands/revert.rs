//! `backfill revert RUN`: restore the before-images of a finished commit
//! run, as a new run in this process.

use backfill_job::Mode;

use crate::exit::Exit;
use crate::in_process::{RerunArgs, Work};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The finished commit run to revert.
    pub run: String,
    /// The run's parameter values, as NAME=VALUE (repeatable): checked
    /// against the values the run was planned with, which are the ones used.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = crate::cli::args::parse_param)]
    pub params: Vec<(String, String)>,
    /// Write. Without it, report what a revert would restore.
    #[arg(long)]
    pub commit: bool,
    #[command(flatten)]
    pub workers: RerunArgs,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let work = |shard_size| Work::Revert {
        run_id: a.run.clone(),
        mode: if a.commit { Mode::Commit } else { Mode::DryRun },
        shard_size,
        params: a.params,
    };
    let Some(rec) = a.workers.run(settings, work).await? else {
        return Ok(Exit::Busy);
    };
    eprintln!(
        "run {} {} run {}{}",
        rec.run_id,
        if a.commit { "reverted" } else { "would revert" },
        a.run,
        if a.commit {
            ""
        } else {
            "; add --commit to restore the rows"
        }
    );
    Ok(Exit::of_run(&rec))
}
