//! `backfill retry RUN`: re-run exactly the rows a finished run
//! quarantined, as a new run in this process, or finish an unfinished
//! retry of it (one whose process died), saying so.

use crate::exit::Exit;
use crate::in_process::{check_workers, run_in_process, Work};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The finished run whose quarantined rows to retry.
    pub run: String,
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
    let work = Work::Retry {
        run_id: a.run,
        shard_size: a.shard_size,
    };
    let Some(rec) = run_in_process(settings, work, a.mappers, local).await? else {
        return Ok(Exit::Busy);
    };
    print!("{}", backfill_job::report::render_report(&rec.view()));
    Ok(Exit::of_run(&rec))
}
