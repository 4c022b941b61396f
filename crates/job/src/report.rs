//! The run's report and its `Summary:` line, rendered from the plan and the
//! folded tally — never from a recount of the database.

use std::fmt::Write;

use crate::plan::{GroupStatus, Plan, PlannedGroup};
use crate::run::{Mode, RunKind, RunState};
use crate::spec::JobSpec;
use crate::tally::{Counts, GroupTally, Tally};

/// What the report is made from.
pub struct RunView<'a> {
    pub run_id: &'a str,
    pub spec: &'a JobSpec,
    pub mode: Mode,
    pub scope: &'a str,
    pub plan: &'a Plan,
    /// The plan's own tally merged with every shard result.
    pub tally: &'a Tally,
    /// For a cancelled run: how many of its shards were counted (the rest
    /// were never started, or finished after the cancel).
    pub cancelled: Option<u32>,
    /// The run's state: `running` for a report of a run still going.
    pub state: RunState,
    /// What the run is for.
    pub kind: RunKind,
    /// For a revert or a retry: the run it was made from.
    pub of: Option<&'a str>,
    /// For a sampled dry run: the share of the target rows it read (0–1].
    pub sample: Option<f64>,
}

impl RunView<'_> {
    /// The run's kind as the report's header shows it: `forward`, `verify`,
    /// `revert of RUN`, `retry of RUN` or `sample SHARE` (a sampled dry run,
    /// SHARE the share of the rows it read, 0–1).
    pub fn kind_label(&self) -> String {
        match (self.kind, self.of, self.sample) {
            (RunKind::Revert, Some(of), _) => format!("revert of {of}"),
            (RunKind::Retry, Some(of), _) => format!("retry of {of}"),
            (_, _, Some(share)) => format!("sample {share}"),
            (k, _, _) => k.as_str().to_string(),
        }
    }
}

/// The run's totals in words, for the header of every report format:
/// `N processed, N changed (N to change in a dry run), N unchanged,
/// N skipped, N conflicts, N errors` — all six, zeros too.
pub fn totals_phrase(c: &Counts, mode: Mode) -> String {
    let verb = if mode.is_commit() {
        "changed"
    } else {
        "to change"
    };
    format!(
        "{} processed, {} {verb}, {} unchanged, {} skipped, {} conflicts, {} errors",
        c.processed, c.changed, c.unchanged, c.skipped, c.conflicts, c.errors
    )
}

/// The one-line summary ops scripts parse. The keys are a contract: none
/// moves or goes, new ones are added at the end (`state=` last).
pub fn summary_line(v: &RunView<'_>) -> String {
    summary_line_seen(v, None)
}

fn summary_with(v: &RunView<'_>, groups: GroupsSeen) -> String {
    let c = &v.tally.counts;
    let mut line = format!(
        "Summary: mode={} shards={} processed={} changed={} unchanged={} skipped={} conflicts={} errors={} groups_processed={} groups_skipped={} refs_affected={} refs_skipped={} conflicts_retried={} run={}",
        v.mode,
        v.plan.shards_total,
        c.processed,
        c.changed,
        c.unchanged,
        c.skipped,
        c.conflicts,
        c.errors,
        groups.processed,
        groups.skipped,
        v.tally.refs_affected,
        v.tally.refs_skipped,
        v.tally.conflicts_retried,
        v.run_id,
    );
    let _ = write!(line, " state={}", v.state);
    line
}

/// The state as the text header shows it; a running run's counts are
/// those folded so far.
fn state_phrase(state: RunState) -> String {
    match state {
        RunState::Running => "running (the counts so far)".to_string(),
        s => s.to_string(),
    }
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("{n} {noun}")
    } else if noun.ends_with('s') {
        format!("{n} {noun}es")
    } else {
        format!("{n} {noun}s")
    }
}

fn counts_line(c: &Counts, mode: Mode, row_noun: &str) -> String {
    let verb = if mode.is_commit() {
        "changed"
    } else {
        "to change"
    };
    let mut s = format!(
        "{} ({} {verb}, {} unchanged, {} skipped",
        plural(c.processed, row_noun),
        c.changed,
        c.unchanged,
        c.skipped
    );
    if c.conflicts > 0 {
        let _ = write!(s, ", {} conflicts", c.conflicts);
    }
    if c.errors > 0 {
        let _ = write!(s, ", {} errors", c.errors);
    }
    s.push(')');
    s
}

fn change_flag(status: &GroupStatus, g: Option<&GroupTally>) -> String {
    match status {
        GroupStatus::Skipped(r) => format!("SKIPPED ({r})"),
        GroupStatus::Unknown => "SKIPPED (unknown key)".to_string(),
        GroupStatus::Eligible => match g {
            Some(g) if g.counts.changed > 0 => "YES".to_string(),
            Some(g) if g.counts.processed == 0 && g.counts.skipped == 0 => {
                "NO (nothing references it)".to_string()
            }
            _ => "NO".to_string(),
        },
    }
}

fn current_values(out: &mut String, g: &GroupTally, row_noun: &str) {
    if g.current.kept.is_empty() {
        let _ = writeln!(out, "  current: (none)");
        return;
    }
    let _ = writeln!(out, "  current:");
    for (v, n) in &g.current.kept {
        let _ = writeln!(out, "    {v:?} — {}", plural(*n, row_noun));
    }
    if g.current.other > 0 {
        let _ = writeln!(
            out,
            "    … and {} with other values",
            plural(g.current.other, row_noun)
        );
    }
}

/// Above this many groups, the text and Markdown reports give a block (a
/// row) only to the groups that changed, were skipped, or had conflicts or
/// errors, and count the other groups in one line: a run of 50,000 pages
/// reads as what happened to it, not as a list of every page. The JSON and
/// CSV reports list every group.
pub const LISTED_GROUPS: usize = 50;

/// Whether a group has something to tell beyond "nothing of it changes".
pub fn eventful(status: &GroupStatus, counts: &crate::tally::Counts) -> bool {
    *status != GroupStatus::Eligible
        || counts.changed > 0
        || counts.skipped > 0
        || counts.conflicts > 0
        || counts.errors > 0
}

/// The line that counts the groups a long report leaves out.
pub fn unchanged_line(n: u64, noun: &str) -> String {
    format!(
        "Unchanged: {} with nothing to change, not listed (`--format json` lists every {noun})",
        plural(n, noun)
    )
}

/// The report: a header, a block per group (or per target for jobs without
/// groups; in a run of more than [`LISTED_GROUPS`] groups, only the groups
/// with something to tell), conflicts and errors with their keys, and the
/// `Summary:` line.
pub fn render_report(v: &RunView<'_>) -> String {
    let mut r = TextReport::new(v, v.plan.groups.len());
    let mut out = r.head();
    if v.spec.groups.is_some() {
        for pg in &v.plan.groups {
            out.push_str(&r.group(pg, v.tally.groups.get(&pg.key)));
        }
    }
    out.push_str(&r.tail());
    out
}

/// The groups a report has passed through, counted for its `Summary:`
/// line: a streamed report holds no plan of groups to count afterwards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupsSeen {
    pub processed: u64,
    pub skipped: u64,
}

impl GroupsSeen {
    pub fn see(&mut self, status: &GroupStatus) {
        if *status == GroupStatus::Eligible {
            self.processed += 1;
        } else {
            self.skipped += 1;
        }
    }
}

/// The `Summary:` line of a run whose groups were counted as they were
/// read (`seen`), or from the plan (`None`).
pub fn summary_line_seen(v: &RunView<'_>, seen: Option<GroupsSeen>) -> String {
    let seen = seen.unwrap_or(GroupsSeen {
        processed: v.plan.groups_processed(),
        skipped: v.plan.groups_skipped(),
    });
    summary_with(v, seen)
}

/// The text report, written a part at a time: its head, then each group
/// as it is read (in the plan's order), then its tail. A report of any
/// number of groups is written as it is read, holding one group at a time;
/// [`render_report`] is the same report made whole.
pub struct TextReport<'a, 'v> {
    v: &'a RunView<'v>,
    /// More than [`LISTED_GROUPS`] groups: only the eventful ones get a block.
    long: bool,
    quiet: u64,
    seen: GroupsSeen,
}

impl<'a, 'v> TextReport<'a, 'v> {
    /// The report of `v`, whose plan lists `groups` groups (`v.plan` need
    /// not hold them: they come to [`Self::group`]).
    pub fn new(v: &'a RunView<'v>, groups: usize) -> Self {
        TextReport {
            v,
            long: groups > LISTED_GROUPS,
            quiet: 0,
            seen: GroupsSeen::default(),
        }
    }

    /// The outcome first: state, kind, mode and totals; then the run.
    pub fn head(&self) -> String {
        let v = self.v;
        let spec = v.spec;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "State: {} — kind: {} — mode: {}",
            state_phrase(v.state),
            v.kind_label(),
            v.mode
        );
        let _ = writeln!(out, "Totals: {}", totals_phrase(&v.tally.counts, v.mode));
        let _ = writeln!(
            out,
            "Run {} — job {} — mode {} — scope {}",
            v.run_id, spec.name, v.mode, v.scope
        );
        if !spec.params.is_empty() {
            let _ = writeln!(out, "Parameters: {}", crate::params::describe(&spec.params));
        }
        if let Some(counted) = v.cancelled {
            let _ = writeln!(
                out,
                "Cancelled: the run was stopped before it finished; the counts below are of the {counted} of {} shards that finished before the cancel.",
                v.plan.shards_total
            );
        }
        if !v.mode.is_commit() {
            let _ = writeln!(out, "Dry run: nothing was written. Add --commit to write.");
        }
        out
    }

    /// One group's block (empty for an uneventful group of a long report);
    /// `g`: its counts, `None` when nothing of it was counted.
    pub fn group(&mut self, pg: &PlannedGroup, g: Option<&GroupTally>) -> String {
        let v = self.v;
        let spec = v.spec;
        let rn = &spec.report.row_noun;
        let refn = &spec.report.ref_noun;
        let empty = GroupTally::default();
        let mut out = String::new();
        self.seen.see(&pg.status);
        if self.long && !eventful(&pg.status, &g.unwrap_or(&empty).counts) {
            self.quiet += 1;
            return out;
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} {} — {}",
            spec.group_noun(),
            pg.key,
            pg.label.as_deref().unwrap_or("(no title)")
        );
        let gt = g.unwrap_or(&empty);
        if pg.status == GroupStatus::Eligible || gt.counts.processed > 0 {
            current_values(&mut out, gt, rn);
        }
        if let Some(p) = &spec.report.target_param {
            if let Some(t) = pg.params.get(p).filter(|t| !t.is_null()) {
                let shown = crate::rules::display_value(Some(t));
                let _ = writeln!(out, "  target:  {shown:?}");
            }
        }
        let _ = writeln!(out, "  change:  {}", change_flag(&pg.status, g));
        if gt.counts.processed > 0 || gt.counts.skipped > 0 {
            let _ = writeln!(
                out,
                "  rows:    {}; {} affected of {}",
                counts_line(&gt.counts, v.mode, rn),
                plural(gt.refs_affected, refn),
                gt.refs
            );
        }
        for (reason, n) in &gt.refs_skipped {
            let _ = writeln!(out, "  skipped: {} ({reason})", plural(*n, refn));
        }
        for (reason, n) in &gt.skipped_by_reason {
            let _ = writeln!(out, "  skipped: {} ({reason})", plural(*n, rn));
        }
        out
    }

    /// The groups left out, the targets (a job without groups), conflicts
    /// and errors, and the `Summary:` line.
    pub fn tail(&self) -> String {
        let v = self.v;
        let spec = v.spec;
        let rn = &spec.report.row_noun;
        let refn = &spec.report.ref_noun;
        let empty = GroupTally::default();
        let mut out = String::new();
        if spec.groups.is_some() {
            if self.quiet > 0 {
                let _ = writeln!(out);
                let _ = writeln!(out, "{}", unchanged_line(self.quiet, spec.group_noun()));
            }
        } else {
            for t in &spec.targets {
                let c = v.tally.targets.get(&t.name).copied().unwrap_or_default();
                let g = v.tally.groups.get(&t.name).unwrap_or(&empty);
                let _ = writeln!(out);
                let _ = writeln!(out, "target {} — table {}", t.name, t.table);
                let flag = if c.changed > 0 { "YES" } else { "NO" };
                let _ = writeln!(out, "  change:  {flag}");
                let _ = writeln!(out, "  rows:    {}", counts_line(&c, v.mode, rn));
                for (reason, n) in &g.skipped_by_reason {
                    let _ = writeln!(out, "  skipped: {} ({reason})", plural(*n, rn));
                }
                for (reason, n) in &g.refs_skipped {
                    let _ = writeln!(out, "  skipped: {} ({reason})", plural(*n, refn));
                }
            }
        }
        if !v.tally.pushed_down.is_empty() {
            let _ = writeln!(out);
            let _ = writeln!(out, "Rules applied by the database:");
            for t in &spec.targets {
                let Some(n) = v.tally.pushed_down.get(&t.name) else {
                    continue;
                };
                let all = v.tally.targets.get(&t.name).map_or(0, |c| c.processed);
                let _ = writeln!(
                    out,
                    "  {}: {} of {} in SQL; {} read and rewritten",
                    t.name,
                    plural(*n, rn),
                    all,
                    all.saturating_sub(*n)
                );
            }
        }
        for (title, issues) in [
            ("Conflicts", &v.tally.conflicts),
            ("Errors", &v.tally.errors),
        ] {
            if issues.total() == 0 {
                continue;
            }
            let _ = writeln!(out);
            let _ = writeln!(out, "{title} ({}):", issues.total());
            for (k, m) in &issues.kept {
                let _ = writeln!(out, "  {k}: {m}");
            }
            if issues.other > 0 {
                let _ = writeln!(out, "  … and {} more", issues.other);
            }
        }
        if v.tally.conflicts_retried > 0 {
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "Conflicts retried: {} rows edited by the application while the run read them were read again and rewritten, keeping the application's edits",
                v.tally.conflicts_retried
            );
        }
        let _ = writeln!(out);
        out.push_str(&summary_line_seen(v, self.seen_groups()));
        out.push('\n');
        out
    }

    /// The groups counted as they passed, for a job with groups.
    fn seen_groups(&self) -> Option<GroupsSeen> {
        self.v.spec.groups.as_ref().map(|_| self.seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedGroup;
    use crate::tally::Recorded;
    use serde_json::json;

    const SPEC: &str = concat!(
        r#"
name = "titles"
[groups]
noun = "program"
query = "SELECT 1""#,
        crate::testing::revisions_target!(),
        r#"[[targets.rules]]
op = "set"
path = "/product_name"
param = "title"
[report]
row_noun = "revision"
ref_noun = "certificate"
target_param = "title"
"#
    );

    #[test]
    fn report_and_summary() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let plan = Plan {
            groups: vec![
                PlannedGroup {
                    key: "P1".into(),
                    label: Some("Data".into()),
                    params: json!({"title": "Data Science"})
                        .as_object()
                        .cloned()
                        .unwrap(),
                    status: GroupStatus::Eligible,
                },
                PlannedGroup {
                    key: "P2".into(),
                    label: Some("Other".into()),
                    params: Default::default(),
                    status: GroupStatus::Skipped("placeholder live title".into()),
                },
            ],
            targets: vec![],
            shards_total: 2,
            tally: Tally::default(),
        };
        let mut tally = Tally::default();
        tally.record_row("revisions", "P1", "1", 3, Recorded::Changed, Some("Old"));
        tally.record_row(
            "revisions",
            "P1",
            "2",
            1,
            Recorded::Unchanged,
            Some("Data Science"),
        );
        tally.record_skipped_refs("P1", "revoked", 1);
        let v = RunView {
            run_id: "r1",
            spec: &spec,
            mode: Mode::DryRun,
            scope: "all",
            plan: &plan,
            tally: &tally,
            cancelled: None,
            state: RunState::Done,
            kind: RunKind::Forward,
            of: None,
            sample: None,
        };
        let text = render_report(&v);
        assert!(text.contains("program P1 — Data"), "{text}");
        assert!(
            text.contains(
                "  current:\n    \"Data Science\" — 1 revision\n    \"Old\" — 1 revision\n"
            ),
            "{text}"
        );
        assert!(text.contains(r#"target:  "Data Science""#), "{text}");
        assert!(text.contains("change:  YES"), "{text}");
        assert!(text.contains("3 certificates affected of 4"), "{text}");
        assert!(text.contains("skipped: 1 certificate (revoked)"), "{text}");
        assert!(
            text.contains("change:  SKIPPED (placeholder live title)"),
            "{text}"
        );
        let last = text.lines().last().unwrap();
        assert_eq!(
            last,
            "Summary: mode=dry-run shards=2 processed=2 changed=1 unchanged=1 skipped=0 conflicts=0 errors=0 groups_processed=1 groups_skipped=1 refs_affected=3 refs_skipped=1 conflicts_retried=0 run=r1 state=done"
        );
    }

    #[test]
    fn a_long_report_lists_the_groups_with_something_to_tell_and_counts_the_rest() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let group = |i: usize| PlannedGroup {
            key: format!("P{i:02}"),
            label: None,
            params: Default::default(),
            status: if i == 7 {
                GroupStatus::Skipped("no title".into())
            } else {
                GroupStatus::Eligible
            },
        };
        let mut tally = Tally::default();
        for i in 0..(LISTED_GROUPS + 10) {
            let outcome = match i {
                3 => Recorded::Changed,
                5 => Recorded::Error("bad json"),
                _ => Recorded::Unchanged,
            };
            tally.record_row(
                "revisions",
                &format!("P{i:02}"),
                &i.to_string(),
                1,
                outcome,
                None,
            );
        }
        let view = |plan| {
            let v = RunView {
                run_id: "r1",
                spec: &spec,
                mode: Mode::DryRun,
                scope: "all",
                plan,
                tally: &tally,
                cancelled: None,
                state: RunState::Failed,
                kind: RunKind::Forward,
                of: None,
                sample: None,
            };
            (
                render_report(&v),
                crate::formats::render_markdown(&crate::formats::report_doc(&v)),
            )
        };
        let long = Plan {
            groups: (0..LISTED_GROUPS + 10).map(group).collect(),
            targets: vec![],
            shards_total: 1,
            tally: Tally::default(),
        };
        let (text, md) = view(&long);
        let blocks: Vec<&str> = text.lines().filter(|l| l.starts_with("program ")).collect();
        assert_eq!(
            blocks,
            vec![
                "program P03 — (no title)",
                "program P05 — (no title)",
                "program P07 — (no title)"
            ],
            "{text}"
        );
        assert!(text.contains("Unchanged: 57 programs with nothing to change, not listed (`--format json` lists every program)"), "{text}");
        assert!(text.starts_with("State: "), "the totals lead: {text}");
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| P")).collect();
        assert_eq!(rows.len(), 3, "{md}");
        assert!(md.contains("Unchanged: 57 groups with nothing to change, not listed (`--format json` lists every group)"), "{md}");
        // Up to LISTED_GROUPS groups, every one has its block.
        let short = Plan {
            groups: (0..LISTED_GROUPS).map(group).collect(),
            ..long.clone()
        };
        let (text, md) = view(&short);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("program ")).count(),
            LISTED_GROUPS
        );
        assert!(!text.contains("Unchanged:"), "{text}");
        assert_eq!(
            md.lines().filter(|l| l.starts_with("| P")).count(),
            LISTED_GROUPS
        );
    }

    fn empty_plan() -> Plan {
        Plan {
            groups: vec![],
            targets: vec![],
            shards_total: 4,
            tally: Tally::default(),
        }
    }

    fn view<'a>(spec: &'a JobSpec, plan: &'a Plan, tally: &'a Tally) -> RunView<'a> {
        RunView {
            run_id: "r2",
            spec,
            mode: Mode::Commit,
            scope: "all",
            plan,
            tally,
            cancelled: None,
            state: RunState::Done,
            kind: RunKind::Forward,
            of: None,
            sample: None,
        }
    }

    #[test]
    fn the_report_leads_with_state_kind_mode_and_totals() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let plan = empty_plan();
        let tally = Tally {
            counts: Counts {
                processed: 9,
                changed: 5,
                unchanged: 1,
                skipped: 1,
                conflicts: 1,
                errors: 1,
            },
            ..Tally::default()
        };
        let mut v = view(&spec, &plan, &tally);
        v.state = RunState::Failed;
        let text = render_report(&v);
        let head: Vec<&str> = text.lines().take(3).collect();
        assert_eq!(
            head,
            [
                "State: failed — kind: forward — mode: commit",
                "Totals: 9 processed, 5 changed, 1 unchanged, 1 skipped, 1 conflicts, 1 errors",
                "Run r2 — job titles — mode commit — scope all",
            ],
            "{text}"
        );

        // Each kind, and a dry run's "to change".
        v.mode = Mode::DryRun;
        v.state = RunState::Cancelled;
        v.cancelled = Some(2);
        v.kind = RunKind::Revert;
        v.of = Some("r1");
        let text = render_report(&v);
        assert!(
            text.starts_with(
                "State: cancelled — kind: revert of r1 — mode: dry-run\nTotals: 9 processed, 5 to change,"
            ),
            "{text}"
        );
        assert!(text.contains("\nCancelled: the run was stopped"), "{text}");
        v.kind = RunKind::Retry;
        assert_eq!(v.kind_label(), "retry of r1");
        v.kind = RunKind::Forward;
        v.of = None;
        v.sample = Some(0.05);
        assert_eq!(v.kind_label(), "sample 0.05");
        v.sample = None;
        v.kind = RunKind::Verify;
        assert_eq!(v.kind_label(), "verify");
        v.state = RunState::Running;
        v.cancelled = None;
        assert!(
            render_report(&v).starts_with("State: running (the counts so far) — kind: verify"),
            "{}",
            render_report(&v)
        );
    }

    #[test]
    fn the_summary_line_ends_with_the_state_and_keeps_its_keys_in_order() {
        let spec = JobSpec::parse(SPEC).unwrap();
        let plan = empty_plan();
        let tally = Tally::default();
        let mut v = view(&spec, &plan, &tally);
        let keys = |line: &str| -> Vec<String> {
            line["Summary: ".len()..]
                .split(' ')
                .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_string()))
                .collect()
        };
        let contract = [
            "mode",
            "shards",
            "processed",
            "changed",
            "unchanged",
            "skipped",
            "conflicts",
            "errors",
            "groups_processed",
            "groups_skipped",
            "refs_affected",
            "refs_skipped",
            "conflicts_retried",
            "run",
            "state",
        ];
        for (state, cancelled) in [
            (RunState::Done, None),
            (RunState::Failed, None),
            (RunState::Cancelled, Some(1)),
            (RunState::Running, None),
        ] {
            v.state = state;
            v.cancelled = cancelled;
            let line = summary_line(&v);
            assert_eq!(keys(&line), contract, "{line}");
            assert!(line.ends_with(&format!(" run=r2 state={state}")), "{line}");
            // The report ends with the same line.
            assert_eq!(render_report(&v).lines().last(), Some(line.as_str()));
        }
    }
}
