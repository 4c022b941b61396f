//! `verify`'s verdict: a job's postcondition holds over its scope when a
//! dry run of it finds nothing left to change, no conflicts and no errors,
//! and, for a job whose tables hold versions, as many rows in them as when
//! the job was last committed.

use std::collections::BTreeMap;

use crate::run::RunState;
use crate::tally::Counts;

/// The row counts of a versioned job's target tables now, against those
/// when its last commit was planned.
#[derive(Debug, Clone, PartialEq)]
pub struct Versions {
    /// Every table holds as many rows as then.
    pub same: bool,
    /// The line printed before the report.
    pub line: String,
}

impl Versions {
    /// `before` when commit run `commit_run` was planned, `now` when the
    /// verify was.
    pub fn compare(
        before: &BTreeMap<String, i64>,
        now: &BTreeMap<String, i64>,
        commit_run: &str,
    ) -> Versions {
        let same = before == now;
        let tables: Vec<String> = before
            .iter()
            .map(|(t, n)| format!("{t} {n} → {}", now.get(t).copied().unwrap_or(0)))
            .collect();
        Versions {
            same,
            line: format!(
                "Versions: {} (rows when commit run {commit_run} was planned → now){}",
                tables.join(", "),
                if same {
                    ""
                } else {
                    "; rows were added or removed"
                }
            ),
        }
    }
}

/// Whether a verify passed, and the detail the ledger records.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    pub detail: String,
}

impl Verdict {
    /// The verdict of a verify run that ended in `state` with `counts`;
    /// `versions_same` is `None` for a job without versions.
    pub fn of(counts: &Counts, state: RunState, versions_same: Option<bool>) -> Verdict {
        let c = counts;
        let passed = c.changed == 0
            && c.conflicts == 0
            && c.errors == 0
            && state == RunState::Done
            && versions_same.unwrap_or(true);
        let detail = if passed {
            "passed: nothing left to do".to_string()
        } else {
            let mut d = format!(
                "failed: {} rows would still change, {} conflicts, {} errors",
                c.changed, c.conflicts, c.errors
            );
            if versions_same == Some(false) {
                d.push_str("; the row counts of the target tables changed since the last commit");
            }
            d
        };
        Verdict { passed, detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(changed: u64, conflicts: u64, errors: u64) -> Counts {
        Counts {
            processed: 10,
            changed,
            unchanged: 10 - changed,
            skipped: 0,
            conflicts,
            errors,
        }
    }

    #[test]
    fn only_nothing_left_to_do_passes() {
        let ok = Verdict::of(&counts(0, 0, 0), RunState::Done, None);
        assert!(ok.passed);
        assert_eq!(ok.detail, "passed: nothing left to do");
        assert!(Verdict::of(&counts(0, 0, 0), RunState::Done, Some(true)).passed);
        for (c, state, v) in [
            (counts(1, 0, 0), RunState::Done, None),
            (counts(0, 1, 0), RunState::Done, None),
            (counts(0, 0, 1), RunState::Done, None),
            (counts(0, 0, 0), RunState::Failed, None),
            (counts(0, 0, 0), RunState::Cancelled, None),
            (counts(0, 0, 0), RunState::Running, None),
            (counts(0, 0, 0), RunState::Done, Some(false)),
        ] {
            assert!(!Verdict::of(&c, state, v).passed, "{c:?} {state:?} {v:?}");
        }
        let f = Verdict::of(&counts(2, 1, 3), RunState::Done, Some(false));
        assert_eq!(
            f.detail,
            "failed: 2 rows would still change, 1 conflicts, 3 errors; the row counts of the target tables changed since the last commit"
        );
    }

    #[test]
    fn versions_name_each_table_then_and_now() {
        let m = |v: &[(&str, i64)]| v.iter().map(|(k, n)| (k.to_string(), *n)).collect();
        let v = Versions::compare(&m(&[("a", 3), ("b", 5)]), &m(&[("a", 3), ("b", 5)]), "r1");
        assert!(v.same);
        assert_eq!(
            v.line,
            "Versions: a 3 → 3, b 5 → 5 (rows when commit run r1 was planned → now)"
        );
        let v = Versions::compare(&m(&[("a", 3)]), &m(&[("a", 4)]), "r1");
        assert!(!v.same);
        assert!(
            v.line.ends_with("; rows were added or removed"),
            "{}",
            v.line
        );
        let v = Versions::compare(&m(&[("a", 3)]), &m(&[]), "r1");
        assert!(!v.same);
        assert!(v.line.contains("a 3 → 0"), "{}", v.line);
    }
}
