//! Modes, scopes and run states: the small vocabulary shared by every role.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Whether a run writes. Dry-run is the default everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    DryRun,
    Commit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::DryRun => "dry-run",
            Mode::Commit => "commit",
        }
    }
    pub fn is_commit(self) -> bool {
        self == Mode::Commit
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "dry-run" => Ok(Mode::DryRun),
            "commit" => Ok(Mode::Commit),
            other => Err(format!(
                "unknown mode `{other}` (expected dry-run or commit)"
            )),
        }
    }
}

/// What a run is for. Part of a run's identity: a coordinator adopts an
/// unfinished run only when it is of the same kind (and, for a derived run,
/// of the same original), so a forward run never finishes a killed revert
/// and `verify` never passes on a killed sampled dry run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RunKind {
    /// `run` / `coordinator`: the job's rules over its scope.
    #[default]
    Forward,
    /// `verify`: a dry run whose success is "nothing left to do".
    Verify,
    /// `revert RUN`: a commit run's before-images put back.
    Revert,
    /// `retry RUN`: a finished run's quarantined rows again.
    Retry,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Forward => "forward",
            RunKind::Verify => "verify",
            RunKind::Revert => "revert",
            RunKind::Retry => "retry",
        }
    }

    /// The kind a ledger row records; rows written before kinds were
    /// recorded (`None`) are forward runs or, with `revert_of`, reverts.
    pub fn from_ledger(kind: Option<&str>, revert_of: Option<&str>) -> Result<RunKind, String> {
        match kind {
            Some("forward") => Ok(RunKind::Forward),
            Some("verify") => Ok(RunKind::Verify),
            Some("revert") => Ok(RunKind::Revert),
            Some("retry") => Ok(RunKind::Retry),
            Some(other) => Err(format!(
                "unknown run kind `{other}` (expected forward, verify, revert or retry)"
            )),
            None if revert_of.is_some() => Ok(RunKind::Revert),
            None => Ok(RunKind::Forward),
        }
    }

    /// One phrase naming the run's kind for people: `forward`, `verify`,
    /// `revert of RUN`, `retry of RUN`, with the share a sampled run reads.
    pub fn describe(self, of: Option<&str>, sample: Option<f64>) -> String {
        let mut s = match (self, of) {
            (RunKind::Revert, Some(of)) => format!("revert of {of}"),
            (RunKind::Retry, Some(of)) => format!("retry of {of}"),
            (k, _) => k.as_str().to_string(),
        };
        if let Some(f) = sample {
            let pct = (f * 10000.0).round() / 100.0;
            s.push_str(&format!(" (sample of {pct}% of the rows)"));
        }
        s
    }
}

impl fmt::Display for RunKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which groups a run covers: exactly one of "these groups" or "all".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "scope", content = "keys", rename_all = "kebab-case")]
pub enum Scope {
    Groups(Vec<String>),
    All,
}

/// Why a scope given on the command line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("choose exactly one of --group KEY (repeatable) or --all; neither was given, so nothing was touched")]
    Neither,
    #[error("choose exactly one of --group KEY (repeatable) or --all, not both")]
    Both,
    #[error("--group was given an empty key")]
    EmptyKey,
}

impl Scope {
    /// Builds the scope from the two flags, refusing neither and both.
    /// Repeated keys are kept once, in the order first given.
    pub fn from_flags(groups: &[String], all: bool) -> Result<Scope, ScopeError> {
        match (groups.is_empty(), all) {
            (true, false) => Err(ScopeError::Neither),
            (false, true) => Err(ScopeError::Both),
            (true, true) => Ok(Scope::All),
            (false, false) => {
                let mut keys: Vec<String> = Vec::with_capacity(groups.len());
                for g in groups {
                    let g = g.trim();
                    if g.is_empty() {
                        return Err(ScopeError::EmptyKey);
                    }
                    if !keys.iter().any(|k| k == g) {
                        keys.push(g.to_string());
                    }
                }
                Ok(Scope::Groups(keys))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Scope::All => "all".to_string(),
            Scope::Groups(keys) => keys.join(","),
        }
    }
}

/// The state of a run in the ledger. Round-trips to a text column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RunState {
    /// Plan recorded, tasks being (or already) published, shards in progress.
    Running,
    /// Every shard was reduced and no row had an error.
    Done,
    /// Every shard was reduced and some rows had errors.
    Failed,
    /// Stopped by `backfill cancel`: the shards committed before stay
    /// committed, the rest were never started.
    Cancelled,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Done => "done",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }
    pub fn is_finished(self) -> bool {
        !matches!(self, RunState::Running)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "running" => Ok(RunState::Running),
            "done" => Ok(RunState::Done),
            "failed" => Ok(RunState::Failed),
            "cancelled" => Ok(RunState::Cancelled),
            other => Err(format!("unknown run state `{other}`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_kinds_round_trip_and_describe() {
        for k in [
            RunKind::Forward,
            RunKind::Verify,
            RunKind::Revert,
            RunKind::Retry,
        ] {
            assert_eq!(RunKind::from_ledger(Some(k.as_str()), None).unwrap(), k);
        }
        assert_eq!(RunKind::from_ledger(None, None).unwrap(), RunKind::Forward);
        assert_eq!(
            RunKind::from_ledger(None, Some("r1")).unwrap(),
            RunKind::Revert
        );
        assert!(RunKind::from_ledger(Some("sideways"), None)
            .unwrap_err()
            .contains("sideways"));
        assert_eq!(RunKind::Revert.describe(Some("r1"), None), "revert of r1");
        assert_eq!(RunKind::Retry.describe(Some("r2"), None), "retry of r2");
        assert_eq!(
            RunKind::Forward.describe(None, Some(0.01)),
            "forward (sample of 1% of the rows)"
        );
    }

    #[test]
    fn scope_requires_exactly_one_flag() {
        assert_eq!(Scope::from_flags(&[], false), Err(ScopeError::Neither));
        assert_eq!(
            Scope::from_flags(&["A".into()], true),
            Err(ScopeError::Both)
        );
        assert_eq!(Scope::from_flags(&[], true), Ok(Scope::All));
        assert_eq!(
            Scope::from_flags(&["A".into(), "B".into(), "A".into()], false),
            Ok(Scope::Groups(vec!["A".into(), "B".into()]))
        );
        assert_eq!(
            Scope::from_flags(&[" ".into()], false),
            Err(ScopeError::EmptyKey)
        );
    }

    #[test]
    fn mode_and_state_round_trip_text() {
        for m in [Mode::DryRun, Mode::Commit] {
            assert_eq!(m.as_str().parse::<Mode>(), Ok(m));
        }
        for s in [RunState::Running, RunState::Done, RunState::Failed] {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(s));
        }
        assert!("bogus".parse::<Mode>().is_err());
        assert_eq!(Mode::default(), Mode::DryRun);
    }

    #[test]
    fn scope_serializes_stably() {
        let s = serde_json::to_string(&Scope::Groups(vec!["P".into()])).unwrap();
        assert_eq!(s, r#"{"scope":"groups","keys":["P"]}"#);
        let a = serde_json::to_string(&Scope::All).unwrap();
        assert_eq!(a, r#"{"scope":"all"}"#);
    }
}
