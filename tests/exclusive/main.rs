//! The tests that need the services to themselves, so they are a test binary
//! of their own, which cargo runs alone: restarting PostgreSQL and RabbitMQ
//! would break any test running beside them, and the WAL throttle and the
//! ETA are measured against the server's own rate and the clock. All of them
//! are tier 2 (real services).

#[macro_use]
#[path = "../it/common/mod.rs"]
mod common;

mod tier2 {
    mod eta;
    mod service_restarts;
    mod wal_throttle;
}
