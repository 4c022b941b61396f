//! `backfill dashboard`: the web dashboard and its JSON API, read-only
//! over the ledger, plus /metrics, /healthz and /readyz.

use crate::connect::{connect_store_waiting, start_monitor, Access};
use crate::exit::Exit;
use crate::progress::shutdown_on_signals;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let shutdown = shutdown_on_signals();
    let Some(store) = connect_store_waiting(settings, 4, Access::ReadOnly, &shutdown).await? else {
        return Ok(Exit::Clean);
    };
    // The broker is optional here: readiness reports it when configured.
    let broker = !settings.is_sqlite();
    let monitor = start_monitor(
        settings,
        &store,
        "dashboard",
        Some(a.listen),
        broker,
        true,
        &shutdown,
    )
    .await?;
    eprintln!("dashboard on http://{}/ (Ctrl-C to stop)", a.listen);
    if let Some(m) = monitor {
        let _ = m.await;
    }
    Ok(Exit::Clean)
}
