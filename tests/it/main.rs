//! The integration suite, one test binary in two tiers.
//!
//! - [`tier1`] needs no service: the SQLite half of every test written for
//!   both back ends, each an in-process end-to-end run of the real binary on
//!   an embedded database. `cargo test --workspace -- --skip tier2 --skip
//!   postgres` runs it (with the job crate's unit tests and the store's
//!   contract suite on SQLite).
//! - [`tier2`] is the real-service suite: PostgreSQL, RabbitMQ, and real
//!   processes for the distributed and fault tests.
//!
//! The tests that restart the services or measure the server's own WAL rate
//! and timing live in the `exclusive` binary (`tests/exclusive`), which cargo
//! runs on its own, after this one.

#[macro_use]
mod common;
mod tier1;
mod tier2;
