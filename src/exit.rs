//! The exit codes, in one place: what every command returns, what a
//! scheduler reads, and the one mapping to the process's `ExitCode`.
//!
//! 0 the run finished clean; 1 the run finished with row errors, or a
//! service or runtime failure; 2 bad input (flags, scope, job spec), or a
//! commit refused by its review gate or `requires`; 3 the run finished
//! without errors but with conflicts (rows edited concurrently and left as
//! the application wrote them); 4 the run was cancelled (`backfill
//! cancel`); 5 nothing was started because another run or coordinator of
//! the job is in progress; 130 a second Ctrl-C stopped the command at once.

use backfill_job::RunState;
use backfill_store::RunRecord;

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done, clean.
    Clean,
    /// Row errors, a failed check, or a service or runtime failure.
    Failed,
    /// Bad input, or a commit refused by its gate.
    Usage,
    /// Finished with conflicts and no errors.
    Conflicts,
    /// The run was cancelled.
    Cancelled,
    /// Another run or coordinator of the job is in progress: the work
    /// asked for was not done, and a scheduler must see that.
    Busy,
    /// A second Ctrl-C (128 + SIGINT, as a shell reports it).
    Interrupted,
}

impl Exit {
    pub const fn code(self) -> u8 {
        match self {
            Exit::Clean => 0,
            Exit::Failed => 1,
            Exit::Usage => 2,
            Exit::Conflicts => 3,
            Exit::Cancelled => 4,
            Exit::Busy => 5,
            Exit::Interrupted => 130,
        }
    }

    /// 0 when `ok`, else 1: a check that passed or not.
    pub fn check(ok: bool) -> Exit {
        if ok {
            Exit::Clean
        } else {
            Exit::Failed
        }
    }

    /// How a finished run ends the command that waited for it.
    pub fn of_run(rec: &RunRecord) -> Exit {
        if rec.state == RunState::Cancelled {
            Exit::Cancelled
        } else if rec.state == RunState::Failed || rec.tally.counts.errors > 0 {
            Exit::Failed
        } else if rec.tally.counts.conflicts > 0 {
            Exit::Conflicts
        } else {
            Exit::Clean
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

/// An error that is the user's input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(String);

/// A usage error (exit 2) with this message.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// The exit code of a command that ended in an error.
pub fn of_error(e: &anyhow::Error) -> Exit {
    if e.downcast_ref::<UsageError>().is_some() {
        Exit::Usage
    } else {
        Exit::Failed
    }
}
