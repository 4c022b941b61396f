//! The `backfill` binary: one subcommand per role. `main` only calls
//! [`cli::run`] and turns how it ended into the process's exit code.

mod cli;
mod commands;
mod connect;
mod demo;
mod exit;
mod in_process;
mod progress;
mod render;
mod settings;
mod steer;
mod watch;

fn main() -> std::process::ExitCode {
    // Before anything is allocated in earnest: large documents' memory is
    // given back when freed (see backfill_malloc).
    backfill_malloc::return_large_blocks();
    cli::run().into()
}
