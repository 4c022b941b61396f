//! Folding: a shard's result counted into its run, and how a run ends.
//!
//! The reducer counts each shard exactly once: the ledger claims the shard
//! (so a redelivered result is recognised as a duplicate before it gets
//! here), then [`fold_result`] merges the shard's stored result into the
//! run's tally and counts it among the reduced shards. When it was the last
//! shard, the fold also decides the run's final state ([`final_state`]) and
//! writes its `Summary:` line. Nothing here reads or writes the ledger; the
//! store hands in what it read and writes back what comes out.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::plan::{NewRun, PlannedGroup, PlannedTarget};
use crate::report::{summary_line_seen, GroupsSeen, RunView};
use crate::tally::GroupTally;
use crate::{JobSpec, Mode, Plan, RunKind, RunState, Scope, SpecError, Tally};

/// Why a run's ledger record could not be folded.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// A JSON field of the ledger does not decode as what it should hold.
    #[error("ledger {what} is unreadable: {message}")]
    Unreadable { what: &'static str, message: String },
    /// A shard marked finished in the ledger has no result recorded.
    #[error("a finished shard has no stored result")]
    NoStoredResult,
    /// The run's recorded spec no longer parses.
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// The run's recorded mode is not one this version knows.
    #[error("{0}")]
    Mode(String),
    /// The folded tally could not be written back as JSON.
    #[error("{0}")]
    Encode(String),
}

/// A run's ledger record as the reducer reads it, under lock, before one
/// more shard is folded in. The JSON fields are as the ledger stores them;
/// the spec, scope and plan are decoded only when the run finishes, since
/// only its summary line needs them.
#[derive(Debug, Clone)]
pub struct RunLedger<'a> {
    pub run_id: &'a str,
    pub spec_text: &'a str,
    pub mode: &'a str,
    pub scope: Value,
    /// The plan's JSON text, read for the last shard only (`None` before):
    /// of its groups only their statuses are needed, for the summary line
    /// (the store reads no more of them), so finishing a run of 50,000
    /// groups does not hold their parameters.
    pub plan: Option<String>,
    pub tally: Value,
    pub shards_total: i64,
    pub shards_reduced: i64,
    /// The run is still being planned (it has a row in `backfill_planning`): its shards
    /// are published as they are recorded, so `shards_total` counts only
    /// those recorded so far and the run cannot end yet, however many of
    /// them are folded.
    pub planning: bool,
}

/// What the summary line needs of a plan: its shards and its groups'
/// statuses (the rest of each group is skipped, never held).
#[derive(Debug, Deserialize)]
struct PlanOutline {
    #[serde(default)]
    groups: Vec<GroupOutline>,
    #[serde(default)]
    shards_total: u32,
}

#[derive(Debug, Deserialize)]
struct GroupOutline {
    /// `eligible`, `skipped` or `unknown` ([`crate::plan::GroupStatus`]).
    status: String,
}

impl PlanOutline {
    fn read(text: Option<&str>) -> Result<(Plan, GroupsSeen), FoldError> {
        let unreadable = |message: String| FoldError::Unreadable {
            what: "plan",
            message,
        };
        let text = text.ok_or_else(|| unreadable("not read with the last shard".into()))?;
        let outline: PlanOutline =
            serde_json::from_str(text).map_err(|e| unreadable(e.to_string()))?;
        let processed = outline
            .groups
            .iter()
            .filter(|g| g.status == "eligible")
            .count() as u64;
        let seen = GroupsSeen {
            processed,
            skipped: outline.groups.len() as u64 - processed,
        };
        let plan = Plan {
            groups: vec![],
            targets: vec![],
            shards_total: outline.shards_total,
            tally: Tally::default(),
        };
        Ok((plan, seen))
    }
}

/// A run's tally with one more shard folded in, and, when it was the last
/// shard, the run's final state and summary line.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// The run's tally after the fold, as the ledger stores it.
    pub tally: Value,
    /// How many shards are folded now, this one included.
    pub reduced: i64,
    /// `Some` when this was the last shard.
    pub finished: Option<(RunState, String)>,
}

/// Decodes a JSON field of the ledger.
pub fn decode<T: serde::de::DeserializeOwned>(
    what: &'static str,
    v: Value,
) -> Result<T, FoldError> {
    serde_json::from_value(v).map_err(|e| FoldError::Unreadable {
        what,
        message: e.to_string(),
    })
}

/// The tally a mapper committed with its shard (`backfill_shard.result`):
/// what the reducer folds, rather than what the message says.
pub fn stored_tally(v: Option<Value>) -> Result<Tally, FoldError> {
    decode("shard result", v.ok_or(FoldError::NoStoredResult)?)
}

/// A tally as the ledger keeps it: the run's totals in the run's record,
/// with no groups, and each group's counts in a record of its own, so that
/// folding a shard reads and writes only the groups the shard carries and
/// its cost never grows with the number of groups in the run.
pub fn split_groups(mut tally: Tally) -> (Tally, BTreeMap<String, GroupTally>) {
    let groups = std::mem::take(&mut tally.groups);
    (tally, groups)
}

/// Merges `incoming` groups into the records the ledger holds for the same
/// keys (`stored`, as JSON text; a key without a record starts from
/// nothing), giving the records to write back, one per incoming group, in
/// key order.
pub fn merge_groups<'a>(
    stored: Vec<(String, String)>,
    incoming: impl IntoIterator<Item = (&'a String, &'a GroupTally)>,
) -> Result<Vec<(String, String)>, FoldError> {
    let mut stored: BTreeMap<String, String> = stored.into_iter().collect();
    incoming
        .into_iter()
        .map(|(key, add)| {
            let mut group = match stored.remove(key) {
                Some(text) => group_record(&text)?,
                None => GroupTally::default(),
            };
            group.merge(add);
            let json =
                serde_json::to_string(&group).map_err(|e| FoldError::Encode(e.to_string()))?;
            Ok((key.clone(), json))
        })
        .collect()
}

/// A group's record, decoded from its JSON text straight into its counts
/// (no JSON tree in between: a report reads tens of thousands of them).
fn group_record(text: &str) -> Result<GroupTally, FoldError> {
    serde_json::from_str(text).map_err(|e| FoldError::Unreadable {
        what: "group tally",
        message: e.to_string(),
    })
}

/// Puts the groups' records (JSON text) back into a run's totals: the
/// tally the report reads. A run folded by a release that kept its groups
/// inside the run's record has them there already; the two are merged.
pub fn join_groups(totals: &mut Tally, groups: Vec<(String, String)>) -> Result<(), FoldError> {
    use std::collections::btree_map::Entry;
    for (key, text) in groups {
        let group = group_record(&text)?;
        match totals.groups.entry(key) {
            Entry::Vacant(e) => {
                e.insert(group);
            }
            Entry::Occupied(mut e) => e.get_mut().merge(&group),
        }
    }
    Ok(())
}

/// Folds one shard's result into its run. The caller must have claimed the
/// shard in the same transaction, so that each shard is folded once: this
/// function counts whatever it is given.
pub fn fold_result(run: RunLedger<'_>, shard: &Tally) -> Result<Fold, FoldError> {
    let mut tally: Tally = decode("tally", run.tally)?;
    tally.merge(shard);
    let reduced = run.shards_reduced + 1;
    let tally_json = serde_json::to_value(&tally).map_err(|e| FoldError::Encode(e.to_string()))?;
    if reduced < run.shards_total || run.planning {
        return Ok(Fold {
            tally: tally_json,
            reduced,
            finished: None,
        });
    }
    let spec = JobSpec::parse(run.spec_text)?;
    let mode: Mode = run.mode.parse().map_err(FoldError::Mode)?;
    let scope: Scope = decode("scope", run.scope)?;
    let (plan, seen) = PlanOutline::read(run.plan.as_deref())?;
    Ok(Fold {
        tally: tally_json,
        reduced,
        finished: Some(finished_seen(
            run.run_id,
            &spec,
            mode,
            &scope,
            &plan,
            Some(seen),
            &tally,
        )),
    })
}

/// The final state and `Summary:` line of a run with nothing left to fold:
/// `tally` is its plan's tally merged with every shard's result.
pub fn finished(
    run_id: &str,
    spec: &JobSpec,
    mode: Mode,
    scope: &Scope,
    plan: &Plan,
    tally: &Tally,
) -> (RunState, String) {
    finished_seen(run_id, spec, mode, scope, plan, None, tally)
}

/// [`finished`] of a plan whose groups were counted (`seen`) rather than
/// held (`None`: counted from `plan`).
fn finished_seen(
    run_id: &str,
    spec: &JobSpec,
    mode: Mode,
    scope: &Scope,
    plan: &Plan,
    seen: Option<GroupsSeen>,
    tally: &Tally,
) -> (RunState, String) {
    let state = final_state(tally);
    let summary = summary_line_seen(
        &RunView {
            run_id,
            spec,
            mode,
            scope: &scope.describe(),
            plan,
            tally,
            cancelled: None,
            state,
            // The summary line shows neither the kind nor the sample.
            kind: RunKind::default(),
            of: None,
            sample: None,
        },
        seen,
    );
    (state, summary)
}

/// The plan once every target is cut, and the summary when there is
/// nothing to send (such a run is finished on the spot, in the state
/// [`final_state`] gives its plan's own tally).
pub fn finish_plan(
    new: &NewRun<'_>,
    groups: Vec<PlannedGroup>,
    targets: Vec<PlannedTarget>,
    shards_total: u32,
    tally: Tally,
) -> (Plan, Option<String>) {
    let plan = Plan {
        groups,
        targets,
        shards_total,
        tally,
    };
    // Nothing to send: the run finishes as it is planned.
    let summary = (shards_total == 0).then(|| {
        finished(
            new.run_id,
            new.spec,
            new.mode,
            new.scope,
            &plan,
            &plan.tally,
        )
        .1
    });
    (plan, summary)
}

/// A run with row errors ends failed; otherwise done.
pub fn final_state(tally: &Tally) -> RunState {
    if tally.counts.errors > 0 {
        RunState::Failed
    } else {
        RunState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::GroupStatus;
    use crate::tally::{Recorded, CONFLICT_EDITED};
    use crate::testing::TITLES_SPEC as SPEC;

    fn plan(shards_total: u32) -> Plan {
        Plan {
            groups: vec![],
            targets: vec![],
            shards_total,
            tally: Tally::default(),
        }
    }

    fn ledger(tally: &Tally, shards_total: i64, shards_reduced: i64) -> RunLedger<'static> {
        RunLedger {
            run_id: "r1",
            spec_text: SPEC,
            mode: "commit",
            scope: serde_json::to_value(Scope::All).unwrap(),
            plan: Some(serde_json::to_string(&plan(shards_total as u32)).unwrap()),
            tally: serde_json::to_value(tally).unwrap(),
            shards_total,
            shards_reduced,
            planning: false,
        }
    }

    fn shard(first_key: u32, outcomes: &[Recorded<'_>]) -> Tally {
        let mut t = Tally::default();
        for (i, o) in outcomes.iter().enumerate() {
            let key = (first_key + i as u32).to_string();
            t.record_row("revisions", "G", &key, 2, o.clone(), None);
        }
        t
    }

    fn tally_of(fold: &Fold) -> Tally {
        serde_json::from_value(fold.tally.clone()).unwrap()
    }

    #[test]
    fn fold_merges_the_shard_and_counts_it_once() {
        let s = shard(1, &[Recorded::Changed, Recorded::Unchanged]);
        let fold = fold_result(ledger(&Tally::default(), 3, 0), &s).unwrap();
        assert_eq!(fold.reduced, 1);
        assert_eq!(fold.finished, None);
        let t = tally_of(&fold);
        assert_eq!(t.counts.processed, 2);
        assert_eq!(t.counts.changed, 1);
        assert_eq!(t.counts.unchanged, 1);
        assert_eq!(t.refs_affected, 2);
    }

    #[test]
    fn a_run_still_being_planned_is_not_ended_by_its_last_folded_shard() {
        // Published while planned: every shard recorded so far is folded,
        // but more may come, so the run goes on; once the plan is whole
        // the same fold ends it.
        let s = shard(1, &[Recorded::Changed]);
        let mut run = ledger(&Tally::default(), 1, 0);
        run.planning = true;
        let fold = fold_result(run, &s).unwrap();
        assert_eq!(fold.reduced, 1);
        assert_eq!(fold.finished, None);
        let fold = fold_result(ledger(&Tally::default(), 1, 0), &s).unwrap();
        assert!(fold.finished.is_some());
    }

    #[test]
    fn fold_keeps_what_was_folded_before() {
        let first = shard(1, &[Recorded::Changed]);
        let second = shard(10, &[Recorded::Skipped("blank"), Recorded::Changed]);
        let after_first = fold_result(ledger(&Tally::default(), 3, 0), &first).unwrap();
        let after_second = fold_result(
            ledger(&tally_of(&after_first), 3, after_first.reduced),
            &second,
        )
        .unwrap();
        assert_eq!(after_second.reduced, 2);
        let t = tally_of(&after_second);
        assert_eq!(t.counts.processed, 3);
        assert_eq!(t.counts.changed, 2);
        assert_eq!(t.counts.skipped, 1);
        assert_eq!(t.skipped_by_reason.get("blank"), Some(&1));
    }

    #[test]
    fn fold_order_does_not_change_the_result() {
        // The reducer folds results in the order they arrive: any order of
        // the same shards gives the same run tally.
        let a = shard(1, &[Recorded::Changed, Recorded::Error("bad json")]);
        let b = shard(10, &[Recorded::Conflict(CONFLICT_EDITED)]);
        let ab = fold_result(
            ledger(
                &tally_of(&fold_result(ledger(&Tally::default(), 2, 0), &a).unwrap()),
                2,
                1,
            ),
            &b,
        )
        .unwrap();
        let ba = fold_result(
            ledger(
                &tally_of(&fold_result(ledger(&Tally::default(), 2, 0), &b).unwrap()),
                2,
                1,
            ),
            &a,
        )
        .unwrap();
        assert_eq!(ab.tally, ba.tally);
        assert_eq!(ab.finished, ba.finished);
    }

    #[test]
    fn folding_the_same_result_twice_counts_it_twice() {
        // Exactly-once rests on the ledger's claim of the shard, not on the
        // fold: a second fold of the same result is counted again, so the
        // store must never fold a shard it did not claim.
        let s = shard(1, &[Recorded::Changed]);
        let once = fold_result(ledger(&Tally::default(), 5, 0), &s).unwrap();
        let twice = fold_result(ledger(&tally_of(&once), 5, once.reduced), &s).unwrap();
        assert_eq!(tally_of(&twice).counts.changed, 2);
        assert_eq!(twice.reduced, 2);
    }

    #[test]
    fn the_last_shard_finishes_the_run_with_its_summary() {
        let s = shard(1, &[Recorded::Changed, Recorded::Unchanged]);
        let fold = fold_result(ledger(&Tally::default(), 2, 1), &s).unwrap();
        assert_eq!(fold.reduced, 2);
        let (state, summary) = fold.finished.unwrap();
        assert_eq!(state, RunState::Done);
        assert!(
            summary.starts_with("Summary: mode=commit shards=2 processed=2 changed=1 unchanged=1 "),
            "{summary}"
        );
        assert!(summary.contains("run=r1"), "{summary}");
    }

    #[test]
    fn a_last_shard_with_row_errors_fails_the_run() {
        let s = shard(1, &[Recorded::Error("bad json")]);
        let (state, summary) = fold_result(ledger(&Tally::default(), 1, 0), &s)
            .unwrap()
            .finished
            .unwrap();
        assert_eq!(state, RunState::Failed);
        assert!(summary.contains("errors=1"), "{summary}");
    }

    #[test]
    fn errors_folded_earlier_fail_the_run_at_its_last_shard() {
        let mut before = Tally::default();
        before.record_planned_error("revisions", "G", "9", "shard 0 failed on every attempt: x");
        let s = shard(1, &[Recorded::Changed]);
        let (state, _) = fold_result(ledger(&before, 2, 1), &s)
            .unwrap()
            .finished
            .unwrap();
        assert_eq!(state, RunState::Failed);
    }

    /// The last fold counts the plan's groups by status for the summary
    /// line, reading nothing else of them.
    #[test]
    fn the_last_fold_counts_the_plans_groups_by_status() {
        let group = |key: &str, status: GroupStatus| PlannedGroup {
            key: key.into(),
            label: Some("A title".into()),
            params: serde_json::json!({"title": "T", "n": [1, 2]})
                .as_object()
                .cloned()
                .unwrap(),
            status,
        };
        let mut p = plan(1);
        p.groups = vec![
            group("a", GroupStatus::Eligible),
            group("b", GroupStatus::Skipped("no page".into())),
            group("c", GroupStatus::Eligible),
            group("d", GroupStatus::Unknown),
            group("e", GroupStatus::Eligible),
        ];
        let mut last = ledger(&Tally::default(), 1, 0);
        last.plan = Some(serde_json::to_string(&p).unwrap());
        let (_, summary) = fold_result(last, &Tally::default())
            .unwrap()
            .finished
            .unwrap();
        assert!(
            summary.contains(" shards=1 ")
                && summary.contains(" groups_processed=3 groups_skipped=2 "),
            "{summary}"
        );
        // The same line as the whole plan gives.
        let (_, whole) = finished(
            "r1",
            &JobSpec::parse(SPEC).unwrap(),
            Mode::Commit,
            &Scope::All,
            &p,
            &Tally::default(),
        );
        assert_eq!(summary, whole);
    }

    #[test]
    fn the_spec_is_read_only_when_the_run_finishes() {
        let mut run = ledger(&Tally::default(), 3, 0);
        run.spec_text = "not a spec";
        run.plan = None;
        assert!(fold_result(run, &Tally::default()).is_ok());
        let mut last = ledger(&Tally::default(), 1, 0);
        last.spec_text = "not a spec";
        assert!(matches!(
            fold_result(last, &Tally::default()),
            Err(FoldError::Spec(_))
        ));
    }

    #[test]
    fn unreadable_ledger_fields_are_named() {
        let mut run = ledger(&Tally::default(), 3, 0);
        run.tally = Value::String("x".into());
        let e = fold_result(run, &Tally::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("ledger tally is unreadable: "),
            "{e}"
        );
        let mut last = ledger(&Tally::default(), 1, 0);
        last.mode = "sideways";
        assert!(matches!(
            fold_result(last, &Tally::default()),
            Err(FoldError::Mode(_))
        ));
        let mut last = ledger(&Tally::default(), 1, 0);
        last.plan = Some("null".into());
        let e = fold_result(last, &Tally::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("ledger plan is unreadable: "),
            "{e}"
        );
        let mut last = ledger(&Tally::default(), 1, 0);
        last.plan = None;
        let e = fold_result(last, &Tally::default()).unwrap_err();
        assert!(
            e.to_string().starts_with("ledger plan is unreadable: "),
            "{e}"
        );
    }

    #[test]
    fn stored_tally_needs_a_result() {
        assert!(matches!(stored_tally(None), Err(FoldError::NoStoredResult)));
        let s = shard(1, &[Recorded::Changed]);
        let back = stored_tally(Some(serde_json::to_value(&s).unwrap())).unwrap();
        assert_eq!(back, s);
        let e = stored_tally(Some(Value::Bool(true))).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("ledger shard result is unreadable: "),
            "{e}"
        );
    }

    #[test]
    fn final_state_for_each_kind_of_tally() {
        assert_eq!(final_state(&Tally::default()), RunState::Done);
        for (outcome, state) in [
            (Recorded::Changed, RunState::Done),
            (Recorded::Unchanged, RunState::Done),
            (Recorded::Skipped("blank"), RunState::Done),
            (Recorded::Conflict(CONFLICT_EDITED), RunState::Done),
            (Recorded::Error("bad json"), RunState::Failed),
        ] {
            let t = shard(1, std::slice::from_ref(&outcome));
            assert_eq!(final_state(&t), state, "{outcome:?}");
            // One error among any other outcomes fails the run.
            let mixed = shard(1, &[outcome.clone(), Recorded::Error("bad json")]);
            assert_eq!(final_state(&mixed), RunState::Failed, "{outcome:?} + error");
        }
        let mut planned = Tally::default();
        planned.record_planned_error("revisions", "G", "1", "referenced twice");
        assert_eq!(final_state(&planned), RunState::Failed);
    }

    fn two_group_shard(first_key: u32) -> Tally {
        let mut t = Tally::default();
        t.record_row(
            "revisions",
            "A",
            &first_key.to_string(),
            1,
            Recorded::Changed,
            Some("x"),
        );
        t.record_row(
            "revisions",
            "B",
            &(first_key + 1).to_string(),
            2,
            Recorded::Skipped("blank"),
            None,
        );
        t
    }

    #[test]
    fn groups_kept_apart_fold_to_the_same_tally_as_one_record() {
        // Folding totals and group records apart, shard by shard, gives the
        // tally that merging whole shards into one record gives.
        let shards = [
            two_group_shard(1),
            two_group_shard(10),
            shard(20, &[Recorded::Changed]),
        ];
        let mut whole = Tally::default();
        let mut totals = Tally::default();
        let mut records: BTreeMap<String, String> = BTreeMap::new();
        for s in &shards {
            whole.merge(s);
            let (t, groups) = split_groups(s.clone());
            assert!(t.groups.is_empty());
            totals.merge(&t);
            let stored = groups
                .keys()
                .filter_map(|k| records.get(k).map(|v| (k.clone(), v.clone())))
                .collect();
            let written = merge_groups(stored, &groups).unwrap();
            assert!(
                written.len() <= 2,
                "only the shard's own groups are written"
            );
            records.extend(written);
        }
        join_groups(&mut totals, records.into_iter().collect()).unwrap();
        assert_eq!(totals, whole);
        assert_eq!(totals.groups["A"].counts.changed, 2);
        assert_eq!(totals.groups["B"].skipped_by_reason["blank"], 2);
        assert_eq!(totals.groups["G"].counts.changed, 1);
    }

    #[test]
    fn a_run_folded_with_its_groups_inside_its_record_keeps_them() {
        // A run planned by a release that kept groups in the run's record.
        let mut old = two_group_shard(1);
        let (_, newer) = split_groups(two_group_shard(10));
        let written = merge_groups(vec![], &newer).unwrap();
        join_groups(&mut old, written).unwrap();
        let mut want = two_group_shard(1);
        want.groups
            .iter_mut()
            .for_each(|(k, g)| g.merge(&two_group_shard(10).groups[k]));
        assert_eq!(old.groups, want.groups);
    }

    #[test]
    fn an_unreadable_group_record_is_named() {
        let err = merge_groups(
            vec![("A".into(), "\"nope\"".to_string())],
            &split_groups(two_group_shard(1)).1,
        )
        .unwrap_err();
        assert!(err.to_string().contains("group tally"), "{err}");
    }
}
