//! One module per subcommand: its own arguments (flattening the shared
//! groups of `cli::args`) and what it does. Each returns how it ended as
//! an [`Exit`](crate::exit::Exit).

pub mod cancel;
pub mod coordinator;
pub mod dashboard;
pub mod demo;
pub mod history;
pub mod ledger;
pub mod mapper;
pub mod pause;
pub mod probe;
pub mod prune;
pub mod reducer;
pub mod report;
pub mod resume;
pub mod retry;
pub mod revert;
pub mod run;
pub mod seed;
pub mod status;
pub mod throttle;
pub mod verify;
