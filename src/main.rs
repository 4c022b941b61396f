//! The `backfill` binary: one subcommand per role. `main` only calls
//! [`cli::run`] and maps its result to an exit code.

mod cli;
mod demo;
mod progress;
mod settings;
mod steer;
mod watch;

fn main() {
    std::process::exit(cli::main());
}
