//! `backfill coordinator`: plan a run (or resume one), record it in the
//! ledger and publish its shard tasks; with `--wait`, follow it to its end
//! and print its report.

use tokio_util::sync::CancellationToken;

use crate::cli::args::ResumableJobArgs;
use crate::cli::parse::job_request;
use crate::connect::{
    connect_broker, connect_store, refuse_copied_ledger, refuse_sqlite, start_monitor,
};
use crate::exit::{usage, Exit};
use crate::in_process::{record_start, refusal};
use crate::progress::shutdown_on_signals;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub job: ResumableJobArgs,
    /// Wait until the run is reduced, then print its report and summary.
    #[arg(long)]
    pub wait: bool,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let Args {
        job,
        wait,
        metrics_addr,
    } = a;
    refuse_sqlite(settings, "coordinator")?;
    // Validate everything the user gave before touching anything.
    let req = match &job.resume {
        Some(_) => None,
        None => {
            let path = job
                .job
                .clone()
                .ok_or_else(|| usage("--job FILE is required"))?;
            Some(job_request(&path, &job.opts, &settings.operator)?)
        }
    };
    let store = connect_store(settings, 4).await?;
    refuse_copied_ledger(&store)?;
    let stop_monitor = CancellationToken::new();
    let _monitor = start_monitor(
        settings,
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
            job.opts.steer.warn_not_applied(run_id);
            let rec = store
                .load_run(run_id)
                .await?
                .ok_or_else(|| usage(format!("run {run_id} is not in the ledger")))?;
            let Some(lock) = store.try_lock_job(&rec.spec.name).await? else {
                eprintln!(
                    "another coordinator is working on job `{}`; not resuming run {run_id} twice",
                    rec.spec.name
                );
                return Ok(Exit::Busy);
            };
            // A coordinator that died while planning the run: plan the rest.
            backfill_coordinator::finish_planning(&store, run_id, Some(&settings.publishing()))
                .await
                .map_err(refusal)?;
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
            let mut req = req.ok_or_else(|| usage("--job FILE is required"))?;
            // Each shard is published as soon as it is recorded, while the
            // rest is planned.
            req.publishing = Some(settings.publishing());
            // The broker first: a run recorded with nobody able to
            // publish it would be orphaned and block the job.
            connect_broker(settings).await?.close().await;
            let (start, lock) = backfill_coordinator::start(&store, &req)
                .await
                .map_err(refusal)?;
            let run_id = match start {
                backfill_coordinator::Start::Busy(msg) => {
                    eprintln!("{msg}");
                    return Ok(Exit::Busy);
                }
                backfill_coordinator::Start::Planned { run_id, shards } => {
                    eprintln!("run {run_id} planned: {shards} shards");
                    run_id
                }
                backfill_coordinator::Start::Resumed { run_id, kind } => {
                    eprintln!("adopting run {run_id}: a {kind} run of the same job, spec and scope that was unfinished: resuming it");
                    job.opts.steer.warn_not_applied(&run_id);
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
            record_start(&store, &run_id, &settings.operator).await?;
            println!("{run_id}");
            eprintln!("{n} shard tasks published; watch the run with `backfill status {run_id}`");
            (run_id, lock)
        }
    };
    if !wait {
        return Ok(Exit::Clean);
    }
    let follower = crate::progress::follow(
        &store,
        &run_id,
        format!("backfill coordinator --resume {run_id}"),
    );
    let rec = backfill_coordinator::wait(&store, &run_id, &shutdown_on_signals()).await;
    follower.finish().await;
    let rec = rec?;
    crate::render::print_text(&store, &rec).await?;
    Ok(Exit::of_run(&rec))
}
