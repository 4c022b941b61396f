//! `backfill run`: plan, map and reduce a run in this process; print the
//! report and the `Summary:` line (after a sampled dry run's estimate).

use std::time::Instant;

use crate::cli::args::JobArgs;
use crate::cli::parse::job_request;
use crate::exit::{usage, Exit};
use crate::in_process::{run_in_process, Work};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub job: JobArgs,
    /// Mapper tasks to start in this process.
    #[arg(long, default_value_t = 2)]
    pub mappers: u16,
    /// Embedded mode: all roles over an in-process queue, no RabbitMQ (implied by a sqlite:// URL).
    #[arg(long)]
    pub local: bool,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let req = job_request(&a.job.job, &a.job.opts, &settings.operator)?;
    if a.mappers == 0 {
        return Err(usage("--mappers must be at least 1"));
    }
    let local = a.local || settings.is_sqlite();
    let started = Instant::now();
    let Some(done) = run_in_process(settings, Work::Job(Box::new(req)), a.mappers, local).await?
    else {
        return Ok(Exit::Busy);
    };
    let rec = &done.rec;
    // Before the report, which ends with the `Summary:` line.
    if let Some(fraction) = rec.sample {
        print!(
            "{}",
            backfill_job::estimate::sample_estimate(
                &rec.tally,
                fraction,
                started.elapsed().as_secs_f64()
            )
        );
    }
    done.print_report().await?;
    Ok(Exit::of_run(rec))
}
