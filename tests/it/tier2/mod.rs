//! The real-service tier: every test here needs PostgreSQL and RabbitMQ
//! (and some Chromium, promtool or tmux), makes its own database and queues,
//! and fails with how to start a service it cannot reach. A test that runs on
//! both back ends is one `#[test]` per back end (see
//! [`crate::common::both::backends`]): the PostgreSQL half is here, the
//! SQLite half, which needs no service, in [`crate::tier1`].

pub(crate) mod behaviour;
pub(crate) mod broker_refusals;
pub(crate) mod bytes_kept;
pub(crate) mod certificate_titles;
pub(crate) mod collections;
pub(crate) mod convergence;
pub(crate) mod dashboard;
pub(crate) mod deploy;
pub(crate) mod endpoints;
pub(crate) mod faults;
pub(crate) mod forged_messages;
pub(crate) mod job_language;
pub(crate) mod limits;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod params;
pub(crate) mod planning;
pub(crate) mod poison_messages;
pub(crate) mod progress;
pub(crate) mod pushdown;
pub(crate) mod quiet;
pub(crate) mod report_safety;
pub(crate) mod reports;
pub(crate) mod scale;
pub(crate) mod secrets;
pub(crate) mod statement_timeout;
pub(crate) mod steering;
pub(crate) mod streamfield;
pub(crate) mod two_databases;
pub(crate) mod unattended;
pub(crate) mod undo;
pub(crate) mod windows;
