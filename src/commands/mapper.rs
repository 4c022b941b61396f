//! `backfill mapper`: the worker that takes shard tasks, rewrites rows,
//! records them and publishes results, until a shutdown signal.

use backfill_queue::worker_name;
use tracing::info;

use crate::connect::{
    connect_store_waiting, refuse_copied_ledger, refuse_sqlite, start_monitor, Access,
};
use crate::exit::{usage, Exit};
use crate::progress::shutdown_on_signals;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Shards this process works on at once.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u16,
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    refuse_sqlite(settings, "mapper")?;
    if a.concurrency == 0 {
        return Err(usage("--concurrency must be at least 1"));
    }
    let shutdown = shutdown_on_signals();
    let Some(store) = connect_store_waiting(
        settings,
        a.concurrency as u32 + 2,
        Access::Migrate,
        &shutdown,
    )
    .await?
    else {
        return Ok(Exit::Clean);
    };
    refuse_copied_ledger(&store)?;
    let cfg = backfill_mapper::MapperConfig {
        amqp_url: settings.amqp_url.expose().to_string(),
        queues: settings.queues(),
        concurrency: a.concurrency,
        worker: worker_name("mapper"),
    };
    info!(database = %settings.database_url, amqp = %settings.amqp_url, "mapper starting");
    let monitor = start_monitor(
        settings,
        &store,
        "mapper",
        a.metrics_addr,
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
    Ok(Exit::Clean)
}
