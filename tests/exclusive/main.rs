//! The tests that need the services to themselves, so they are a test binary
//! of their own, which cargo runs alone: restarting PostgreSQL and RabbitMQ
//! would break any test running beside them, and the WAL throttle and the
//! ETA are measured against the server's own rate and the clock. All of them
//! are tier 2 (real services).

#[macro_use]
#[path = "../it/common/mod.rs"]
mod common;

/// Turns at the services: a test that restarts them holds it alone (write);
/// the others share it (read), so none of them is running while PostgreSQL
/// or RabbitMQ is down, and they still run beside each other.
pub(crate) static SERVICES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

mod tier2 {
    mod eta;
    mod service_restarts;
    mod wal_throttle;
}
