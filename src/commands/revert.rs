//! `backfill revert RUN`: restore the before-images of a finished commit
//! run, as a new run in this process.

use backfill_job::Mode;

use crate::exit::Exit;
use crate::in_process::{check_workers, run_in_process, Work};
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
    /// Mapper tasks to start in this process.
    #[arg(long, default_value_t = 2)]
    pub mappers: u16,
    /// Embedded mode: the in-process queue instead of RabbitMQ (implied by a sqlite:// URL).
    #[arg(long)]
    pub local: bool,
    /// Rows per shard.
    #[arg(long, default_value_t = backfill_job::spec::DEFAULT_SHARD_SIZE)]
    pub shard_size: u32,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    check_workers(a.mappers, a.shard_size)?;
    let local = a.local || settings.is_sqlite();
    let work = Work::Revert {
        run_id: a.run.clone(),
        mode: if a.commit { Mode::Commit } else { Mode::DryRun },
        shard_size: a.shard_size,
        params: a.params,
    };
    let Some(rec) = run_in_process(settings, work, a.mappers, local).await? else {
        return Ok(Exit::Busy);
    };
    print!("{}", backfill_job::report::render_report(&rec.view()));
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
