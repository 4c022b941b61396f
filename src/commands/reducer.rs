//! `backfill reducer`: the worker that folds shard results into run
//! summaries (and, with `--dashboard`, serves the dashboard too).

use backfill_queue::worker_name;
use tracing::info;

use crate::connect::{
    connect_store_waiting, refuse_copied_ledger, refuse_sqlite, start_monitor, Access,
};
use crate::exit::Exit;
use crate::progress::shutdown_on_signals;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serve /metrics, /healthz and /readyz on this address (e.g. 0.0.0.0:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Also serve the dashboard and its JSON API (`/`, `/api/...`) on --metrics-addr.
    /// Off by default: the API is unauthenticated, and the metrics port is often
    /// reachable by more than the operators.
    #[arg(long, requires = "metrics_addr")]
    pub dashboard: bool,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    refuse_sqlite(settings, "reducer")?;
    let shutdown = shutdown_on_signals();
    let Some(store) = connect_store_waiting(settings, 4, Access::Migrate, &shutdown).await? else {
        return Ok(Exit::Clean);
    };
    refuse_copied_ledger(&store)?;
    let monitor = start_monitor(
        settings,
        &store,
        "reducer",
        a.metrics_addr,
        true,
        a.dashboard,
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
    Ok(Exit::Clean)
}
