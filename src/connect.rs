//! Reaching the services: the ledger's database (waiting for it in the
//! long-running roles, refusing a copied ledger), the broker, and the
//! monitoring endpoints a role serves beside its work.

use backfill_queue::Broker;
use backfill_store::Store;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::exit::usage;
use crate::settings::Settings;

/// What `status` and `ledger show` print about the ledger, on stderr.
pub fn ledger_lines(settings: &Settings, store: &Store) -> String {
    let l = store.ledger();
    let q = settings.queues();
    let mut s = format!(
        "ledger {} (database {}); queues {}, {}, {}, {}{}\n",
        l.id,
        l.current_database,
        q.tasks,
        q.results,
        q.dead,
        q.parked,
        if settings.queue_prefix_given {
            ""
        } else {
            " (named after the ledger; --queue-prefix to choose)"
        }
    );
    if let Err(e) = l.check() {
        s.push_str(&format!("warning: {e}\n"));
    }
    s
}

/// Serves /metrics, /healthz, /readyz (and the dashboard) until `stop`.
pub async fn start_monitor(
    settings: &Settings,
    store: &Store,
    role: &str,
    addr: Option<std::net::SocketAddr>,
    broker: bool,
    dashboard: bool,
    stop: &CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(addr) = addr else { return Ok(None) };
    let state = backfill_monitor::MonitorState::new(
        role,
        store.clone(),
        broker.then(|| (settings.amqp_url.expose().to_string(), settings.queues())),
        dashboard,
    )?;
    Ok(Some(
        backfill_monitor::serve(addr, state, stop.clone()).await?,
    ))
}

/// For the read-only commands: no DDL, and no ledger is bad input (exit 2)
/// that names the database looked at.
pub async fn connect_existing_store(s: &Settings, max: u32) -> anyhow::Result<Store> {
    match Store::connect_existing(s.database_url.expose(), max).await {
        Ok(store) => {
            s.use_ledger(store.ledger());
            Ok(store)
        }
        Err(e @ backfill_store::StoreError::NoLedger { .. }) => Err(usage(e.to_string())),
        Err(e) => Err(e.into()),
    }
}

pub async fn connect_store(s: &Settings, max: u32) -> anyhow::Result<Store> {
    let store = Store::connect(s.database_url.expose(), max).await?;
    s.use_ledger(store.ledger());
    Ok(store)
}

/// Refuses to work for a database whose ledger was copied from another
/// (exit code 2, nothing touched): it would take that database's work.
pub fn refuse_copied_ledger(store: &Store) -> anyhow::Result<()> {
    store.ledger().check().map_err(|e| usage(e.to_string()))
}

/// Whether a role may create or upgrade the ledger tables.
#[derive(Clone, Copy)]
pub enum Access {
    Migrate,
    ReadOnly,
}

/// For the long-running roles: a database that is not up yet (or restarting)
/// is waited for, as the broker is, retrying with backoff and logging the
/// real cause of each failure; `None` when a shutdown signal came first.
/// Errors that retrying cannot fix (a bad URL, a SQLite file) end at once.
///
/// The dashboard (`Access::ReadOnly`) runs no DDL: until a worker or a job
/// has made the ledger, it waits, saying which database it looks at.
pub async fn connect_store_waiting(
    s: &Settings,
    max: u32,
    access: Access,
    stop: &CancellationToken,
) -> anyhow::Result<Option<Store>> {
    let url = s.database_url.expose();
    let mut delay = Duration::from_millis(500);
    loop {
        let store = match access {
            Access::Migrate => Store::connect(url, max).await,
            Access::ReadOnly => Store::connect_existing(url, max).await,
        };
        match store {
            Ok(store) => {
                s.use_ledger(store.ledger());
                return Ok(Some(store));
            }
            Err(e @ backfill_store::StoreError::NoLedger { .. }) => {
                // The database answers: look again soon, without backing off.
                warn!(error = %e, retry_in_ms = 1000u64, "waiting for a worker or job to create the ledger");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            Err(e) if s.is_sqlite() => return Err(e.into()),
            Err(e) => {
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database not reachable; retrying");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

pub async fn connect_broker(s: &Settings) -> anyhow::Result<Broker> {
    Ok(Broker::connect(s.amqp_url.expose(), s.queues()).await?)
}

/// The distributed roles need a database every host can reach.
pub fn refuse_sqlite(settings: &Settings, role: &str) -> anyhow::Result<()> {
    if settings.is_sqlite() {
        return Err(usage(format!(
            "`backfill {role}` runs distributed and needs PostgreSQL; a SQLite database runs embedded: use `backfill run --local`"
        )));
    }
    Ok(())
}
