//! The `backfill` binary: one subcommand per role. `main` only calls
//! [`cli::run`] and maps its result to an exit code.

mod cli;
mod demo;
mod progress;
mod settings;
mod steer;
mod watch;

fn main() {
    // Before anything is allocated in earnest: large documents' memory is
    // given back when freed (see backfill_malloc).
    backfill_malloc::return_large_blocks();
    std::process::exit(cli::main());
}
