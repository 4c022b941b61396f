//! The run's report and its `Summary:` line, rendered from the plan and the
//! folded tally — never from a recount of the database.

use std::fmt::Write;

use crate::plan::{GroupStatus, Plan};
use crate::run::Mode;
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
}

/// The one-line summary ops scripts parse. The first keys are a contract;
/// more may follow.
pub fn summary_line(v: &RunView<'_>) -> String {
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
        v.plan.groups_processed(),
        v.plan.groups_skipped(),
        v.tally.refs_affected,
        v.tally.refs_skipped,
        v.tally.conflicts_retried,
        v.run_id,
    );
    if v.cancelled.is_some() {
        line.push_str(" state=cancelled");
    }
    line
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

/// The report: a header, a block per group (or per target for jobs without
/// groups), conflicts and errors with their keys, and the `Summary:` line.
pub fn render_report(v: &RunView<'_>) -> String {
    let spec = v.spec;
    let rn = &spec.report.row_noun;
    let refn = &spec.report.ref_noun;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Run {} — job {} — mode {} — scope {}",
        v.run_id, spec.name, v.mode, v.scope
    );
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
    let empty = GroupTally::default();
    if spec.groups.is_some() {
        let noun = spec.group_noun();
        for pg in &v.plan.groups {
            let g = v.tally.groups.get(&pg.key);
            let _ = writeln!(out);
            let _ = writeln!(
                out,
                "{noun} {} — {}",
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
    out.push_str(&summary_line(v));
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlannedGroup;
    use crate::tally::Recorded;
    use serde_json::json;

    const SPEC: &str = r#"
name = "titles"
[groups]
noun = "program"
query = "SELECT 1"
[[targets]]
name = "revisions"
table = "wagtailcore_revision"
key = "id"
key_type = "integer"
columns = ["content"]
query = "SELECT 1"
[[targets.rules]]
op = "set"
path = "/product_name"
param = "title"
[report]
row_noun = "revision"
ref_noun = "certificate"
target_param = "title"
"#;

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
            "Summary: mode=dry-run shards=2 processed=2 changed=1 unchanged=1 skipped=0 conflicts=0 errors=0 groups_processed=1 groups_skipped=1 refs_affected=3 refs_skipped=1 conflicts_retried=0 run=r1"
        );
    }
}
