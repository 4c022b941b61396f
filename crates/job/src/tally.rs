//! Counts and their merge: what a shard emits and what the reducer folds.
//!
//! Every structure here merges associatively and commutatively, so the
//! reducer may fold shard results in any order and any grouping and reach the
//! same summary. The capped collections (sample values, error keys) keep the
//! smallest keys and count the rest, which preserves both properties: a key
//! among the smallest of the whole is among the smallest of every part.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::rules::RowOutcome;

/// How many distinct current values the report keeps per group.
pub const VALUE_CAP: usize = 20;
/// How many error and conflict keys the report keeps per run.
pub const ISSUE_CAP: usize = 100;
/// How many sample document diffs the report keeps per group.
pub const SAMPLE_CAP: usize = 3;
/// Largest value (as JSON) a sample diff shows; larger ones are described.
pub const SAMPLE_VALUE_BYTES: usize = 2_000;
/// Largest document a sample diff parses: diffing holds both sides parsed,
/// which for a document of tens of MiB would cost more memory than the
/// rewrite itself. Larger documents are described by their size.
pub const SAMPLE_DOC_BYTES: usize = 1024 * 1024;

/// One changed value inside a document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathChange {
    /// JSON Pointer of the value.
    pub path: String,
    /// The value before (`None`: absent).
    pub before: Option<serde_json::Value>,
    /// The value after (`None`: removed).
    pub after: Option<serde_json::Value>,
}

/// A changed row's document diff: the changed JSON paths only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleDiff {
    pub key: String,
    pub column: String,
    pub changes: Vec<PathChange>,
}

impl SampleDiff {
    /// The diff between a column's text as read and as rewritten, computed
    /// with the `json-patch` crate's diff (RFC 6902): one entry per path the
    /// patch touches, with the values on both sides.
    pub fn between(
        key: &str,
        column: &str,
        before: Option<&str>,
        after: Option<&str>,
    ) -> SampleDiff {
        let size = |t: Option<&str>| t.map_or(0, str::len);
        if size(before).max(size(after)) > SAMPLE_DOC_BYTES {
            let described = |t: Option<&str>| {
                t.map(|t| serde_json::Value::String(too_large_to_diff(t.len() as u64)))
            };
            return SampleDiff {
                key: key.to_string(),
                column: column.to_string(),
                changes: vec![PathChange {
                    path: String::new(),
                    before: described(before),
                    after: described(after),
                }],
            };
        }
        let parse = |t: &str| {
            serde_json::from_str::<serde_json::Value>(t)
                .unwrap_or_else(|_| serde_json::Value::String(t.to_string()))
        };
        let left = before.map(parse).unwrap_or(serde_json::Value::Null);
        let right = after.map(parse).unwrap_or(serde_json::Value::Null);
        let shown = |v: Option<&serde_json::Value>| {
            v.map(|v| {
                let n = v.to_string().len();
                if n > SAMPLE_VALUE_BYTES {
                    serde_json::Value::String(format!("({n} bytes of JSON, not shown)"))
                } else {
                    v.clone()
                }
            })
        };
        let changes = json_patch::diff(&left, &right)
            .0
            .iter()
            .map(|op| {
                let path = op.path().to_string();
                PathChange {
                    before: shown(left.pointer(&path)),
                    after: shown(right.pointer(&path)),
                    path,
                }
            })
            .collect();
        SampleDiff {
            key: key.to_string(),
            column: column.to_string(),
            changes,
        }
    }

    /// The diff of a large document told from its inverse patch (what turns
    /// the new document back into the one read): the paths it changed with
    /// their values before; the values after, inside a document of
    /// `after_bytes`, are not parsed again and are described.
    pub fn from_inverse(key: &str, column: &str, inverse: &str, after_bytes: u64) -> SampleDiff {
        let ops: Vec<serde_json::Value> = serde_json::from_str(inverse).unwrap_or_default();
        let shown = |v: &serde_json::Value| {
            let n = v.to_string().len();
            if n > SAMPLE_VALUE_BYTES {
                serde_json::Value::String(format!("({n} bytes of JSON, not shown)"))
            } else {
                v.clone()
            }
        };
        let changes = ops
            .iter()
            .map(|op| {
                let path = op
                    .get("path")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                // `remove` undoes an addition: nothing was there before.
                let before = match op.get("op").and_then(serde_json::Value::as_str) {
                    Some("add" | "replace") => op.get("value").map(shown),
                    _ => None,
                };
                let after = (op.get("op").and_then(serde_json::Value::as_str) != Some("add"))
                    .then(|| serde_json::Value::String(not_parsed_again(after_bytes)));
                PathChange {
                    path,
                    before,
                    after,
                }
            })
            .collect();
        SampleDiff {
            key: key.to_string(),
            column: column.to_string(),
            changes,
        }
    }

    fn order(&self) -> (usize, &str, &str) {
        // Numeric keys in numeric order: shorter first.
        (self.key.len(), &self.key, &self.column)
    }
}

/// How a sample describes a document too large to diff.
fn too_large_to_diff(bytes: u64) -> String {
    format!("(a document of {bytes} bytes, too large to diff)")
}

/// How a sample of a large document describes a value after the rewrite.
fn not_parsed_again(bytes: u64) -> String {
    format!("(in a document of {bytes} bytes, not shown)")
}

/// Keeps the `SAMPLE_CAP` smallest samples by key: commutative and
/// associative like every other merge here.
fn keep_samples(samples: &mut Vec<SampleDiff>) {
    samples.sort_by(|a, b| a.order().cmp(&b.order()));
    samples.dedup_by(|a, b| a.key == b.key && a.column == b.column);
    samples.truncate(SAMPLE_CAP);
}

/// Row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub processed: u64,
    pub changed: u64,
    pub unchanged: u64,
    pub skipped: u64,
    pub conflicts: u64,
    pub errors: u64,
}

impl Counts {
    /// The counts' names, in the order of the fields, the `Summary:` line
    /// and the report.
    pub const NAMES: [&'static str; 6] = [
        "processed",
        "changed",
        "unchanged",
        "skipped",
        "conflicts",
        "errors",
    ];

    pub fn merge(&mut self, o: &Counts) {
        self.processed += o.processed;
        self.changed += o.changed;
        self.unchanged += o.unchanged;
        self.skipped += o.skipped;
        self.conflicts += o.conflicts;
        self.errors += o.errors;
    }
}

/// Counts per string key, keeping the `cap` smallest keys and a count of the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CappedCounts {
    pub kept: BTreeMap<String, u64>,
    /// Occurrences of values beyond the cap.
    pub other: u64,
}

impl CappedCounts {
    pub fn add(&mut self, key: &str, n: u64, cap: usize) {
        *self.kept.entry(key.to_string()).or_default() += n;
        self.truncate(cap);
    }
    pub fn merge(&mut self, o: &CappedCounts, cap: usize) {
        for (k, n) in &o.kept {
            *self.kept.entry(k.clone()).or_default() += n;
        }
        self.other += o.other;
        self.truncate(cap);
    }
    fn truncate(&mut self, cap: usize) {
        while self.kept.len() > cap {
            if let Some((_, n)) = self.kept.pop_last() {
                self.other += n;
            }
        }
    }
    pub fn distinct_kept(&self) -> usize {
        self.kept.len()
    }
}

/// A row that could not be written: its target, key and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issues {
    /// `target/key` → message, the smallest `ISSUE_CAP` keys.
    pub kept: BTreeMap<String, String>,
    pub other: u64,
}

impl Issues {
    pub fn add(&mut self, target: &str, key: &str, message: &str) {
        let k = format!("{target}/{key}");
        match self.kept.get(&k) {
            // A duplicate keeps the smaller message so merge stays commutative.
            Some(m) if m.as_str() <= message => {}
            _ => {
                self.kept.insert(k, message.to_string());
            }
        }
        self.truncate();
    }
    pub fn merge(&mut self, o: &Issues) {
        for (k, m) in &o.kept {
            match self.kept.get(k) {
                Some(existing) if existing <= m => {}
                _ => {
                    self.kept.insert(k.clone(), m.clone());
                }
            }
        }
        self.other += o.other;
        self.truncate();
    }
    fn truncate(&mut self) {
        while self.kept.len() > ISSUE_CAP {
            if self.kept.pop_last().is_some() {
                self.other += 1;
            }
        }
    }
    pub fn total(&self) -> u64 {
        self.kept.len() as u64 + self.other
    }
}

/// Counts of one group (a program), or of one target for jobs without groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTally {
    pub counts: Counts,
    /// References (e.g. certificates) behind the rows processed.
    pub refs: u64,
    /// References behind rows that changed (or would change, in a dry run).
    pub refs_affected: u64,
    /// References skipped, by reason (revoked, no revision).
    pub refs_skipped: BTreeMap<String, u64>,
    /// Rows skipped, by reason.
    pub skipped_by_reason: BTreeMap<String, u64>,
    /// The rows' current values before the run, with how many rows hold each.
    pub current: CappedCounts,
    /// A few changed rows' document diffs (the smallest keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<SampleDiff>,
}

impl GroupTally {
    pub fn merge(&mut self, o: &GroupTally) {
        self.counts.merge(&o.counts);
        self.refs += o.refs;
        self.refs_affected += o.refs_affected;
        merge_map(&mut self.refs_skipped, &o.refs_skipped);
        merge_map(&mut self.skipped_by_reason, &o.skipped_by_reason);
        self.current.merge(&o.current, VALUE_CAP);
        if !o.samples.is_empty() {
            self.samples.extend(o.samples.iter().cloned());
            keep_samples(&mut self.samples);
        }
    }
}

fn merge_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, n) in from {
        *into.entry(k.clone()).or_default() += n;
    }
}

/// Everything a shard reports, and everything the reducer folds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub counts: Counts,
    pub skipped_by_reason: BTreeMap<String, u64>,
    pub refs_affected: u64,
    pub refs_skipped: u64,
    pub groups: BTreeMap<String, GroupTally>,
    pub targets: BTreeMap<String, Counts>,
    pub errors: Issues,
    pub conflicts: Issues,
    /// Rows edited concurrently that were read again and rewritten
    /// (`on_conflict = "retry"`); not counted in `conflicts`.
    #[serde(default)]
    pub conflicts_retried: u64,
    /// Bytes of the rewritten columns of changed rows (what a commit
    /// writes), and of the same columns as read (their before-images).
    #[serde(default)]
    pub bytes_written: u64,
    #[serde(default)]
    pub bytes_before: u64,
    /// Rows per target whose rules the database applied itself (see
    /// `pushdown`); the target's other rows were read and rewritten.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pushed_down: BTreeMap<String, u64>,
}

impl Tally {
    /// The totals alone: every count but the groups' (each group's are a
    /// record of their own), without copying the groups.
    pub fn without_groups(&self) -> Tally {
        // Every field named, so that a new one is not forgotten here.
        let Tally {
            counts,
            skipped_by_reason,
            refs_affected,
            refs_skipped,
            groups: _,
            targets,
            errors,
            conflicts,
            conflicts_retried,
            bytes_written,
            bytes_before,
            pushed_down,
        } = self;
        Tally {
            counts: *counts,
            skipped_by_reason: skipped_by_reason.clone(),
            refs_affected: *refs_affected,
            refs_skipped: *refs_skipped,
            groups: BTreeMap::new(),
            targets: targets.clone(),
            errors: errors.clone(),
            conflicts: conflicts.clone(),
            conflicts_retried: *conflicts_retried,
            bytes_written: *bytes_written,
            bytes_before: *bytes_before,
            pushed_down: pushed_down.clone(),
        }
    }
}

/// A row's outcome as the tally records it; conflicts are only known after
/// the compare-and-set write.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded<'a> {
    Changed,
    Unchanged,
    Skipped(&'a str),
    /// Not written, with why.
    Conflict(&'a str),
    Error(&'a str),
}

/// Why a compare-and-set write did not happen.
pub const CONFLICT_EDITED: &str = "changed since it was read; left as it is";

impl<'a> From<&'a RowOutcome> for Recorded<'a> {
    fn from(o: &'a RowOutcome) -> Self {
        match o {
            RowOutcome::Changed(_) => Recorded::Changed,
            RowOutcome::Unchanged => Recorded::Unchanged,
            RowOutcome::Skipped(r) => Recorded::Skipped(r),
            RowOutcome::Error(m) => Recorded::Error(m),
            RowOutcome::Conflict(m) => Recorded::Conflict(m),
        }
    }
}

impl Tally {
    /// Folds `o` into `self`.
    pub fn merge(&mut self, o: &Tally) {
        self.counts.merge(&o.counts);
        merge_map(&mut self.skipped_by_reason, &o.skipped_by_reason);
        self.refs_affected += o.refs_affected;
        self.refs_skipped += o.refs_skipped;
        self.bytes_written += o.bytes_written;
        self.bytes_before += o.bytes_before;
        for (k, g) in &o.groups {
            self.groups.entry(k.clone()).or_default().merge(g);
        }
        for (k, c) in &o.targets {
            self.targets.entry(k.clone()).or_default().merge(c);
        }
        self.errors.merge(&o.errors);
        self.conflicts.merge(&o.conflicts);
        self.conflicts_retried += o.conflicts_retried;
        merge_map(&mut self.pushed_down, &o.pushed_down);
    }

    /// Records one processed row.
    #[allow(clippy::too_many_arguments)]
    pub fn record_row(
        &mut self,
        target: &str,
        group: &str,
        key: &str,
        refs: u64,
        outcome: Recorded<'_>,
        current: Option<&str>,
    ) {
        let mut c = Counts {
            processed: 1,
            ..Counts::default()
        };
        let g = self.groups.entry(group.to_string()).or_default();
        g.refs += refs;
        match outcome {
            Recorded::Changed => {
                c.changed = 1;
                g.refs_affected += refs;
                self.refs_affected += refs;
            }
            Recorded::Unchanged => c.unchanged = 1,
            Recorded::Skipped(reason) => {
                c.skipped = 1;
                *g.skipped_by_reason.entry(reason.to_string()).or_default() += 1;
                *self
                    .skipped_by_reason
                    .entry(reason.to_string())
                    .or_default() += 1;
            }
            Recorded::Conflict(why) => {
                c.conflicts = 1;
                self.conflicts.add(target, key, why);
            }
            Recorded::Error(m) => {
                c.errors = 1;
                self.errors.add(target, key, m);
            }
        }
        if let Some(v) = current {
            g.current.add(v, 1, VALUE_CAP);
        }
        g.counts.merge(&c);
        self.counts.merge(&c);
        self.targets
            .entry(target.to_string())
            .or_default()
            .merge(&c);
    }

    /// Records a changed row's rewritten columns: their sizes, and a sample
    /// diff for its group's report.
    pub fn record_change(
        &mut self,
        group: &str,
        key: &str,
        read: &BTreeMap<String, Option<String>>,
        new: &BTreeMap<String, Option<String>>,
    ) {
        let g = self.groups.entry(group.to_string()).or_default();
        for (col, after) in new {
            // A column missing from what was read was released after
            // evaluation: `record_released` records it.
            let Some(before) = read.get(col) else {
                continue;
            };
            let before = before.as_deref();
            let after = after.as_deref();
            self.bytes_written += after.map_or(0, |a| a.len() as u64);
            self.bytes_before += before.map_or(0, |b| b.len() as u64);
            // Only a row that would be kept is diffed: parsing and diffing
            // every changed row would cost as much as the rewrite itself.
            let order = (key.len(), key, col.as_str());
            let fits =
                g.samples.len() < SAMPLE_CAP || g.samples.last().is_some_and(|l| order < l.order());
            if fits {
                g.samples.push(SampleDiff::between(key, col, before, after));
                keep_samples(&mut g.samples);
            }
        }
    }

    /// Records a changed column whose text as read was released after
    /// evaluation (a large document, `before_bytes` long): its sizes, and a
    /// sample diff told from its inverse patch `undo`.
    pub fn record_released(
        &mut self,
        group: &str,
        key: &str,
        col: &str,
        before_bytes: u64,
        undo: Option<&String>,
        after: Option<&Option<String>>,
    ) {
        let g = self.groups.entry(group.to_string()).or_default();
        let after_bytes = after
            .and_then(|a| a.as_deref())
            .map_or(0, |a| a.len() as u64);
        self.bytes_written += after_bytes;
        self.bytes_before += before_bytes;
        let order = (key.len(), key, col);
        let fits =
            g.samples.len() < SAMPLE_CAP || g.samples.last().is_some_and(|l| order < l.order());
        if let (true, Some(undo)) = (fits, undo) {
            g.samples
                .push(SampleDiff::from_inverse(key, col, undo, after_bytes));
            keep_samples(&mut g.samples);
        }
    }

    /// Records a changed column of a row whose rules the database applied
    /// (see `pushdown`): its sizes as stored, and a sample diff of the
    /// paths the edits changed.
    pub fn record_pushed(
        &mut self,
        group: &str,
        key: &str,
        col: &str,
        before_bytes: u64,
        after_bytes: u64,
        changes: Vec<PathChange>,
    ) {
        let g = self.groups.entry(group.to_string()).or_default();
        self.bytes_written += after_bytes;
        self.bytes_before += before_bytes;
        let order = (key.len(), key, col);
        let fits =
            g.samples.len() < SAMPLE_CAP || g.samples.last().is_some_and(|l| order < l.order());
        if fits {
            let shown = |v: serde_json::Value| {
                let n = v.to_string().len();
                if n > SAMPLE_VALUE_BYTES {
                    serde_json::Value::String(format!("({n} bytes of JSON, not shown)"))
                } else {
                    v
                }
            };
            g.samples.push(SampleDiff {
                key: key.to_string(),
                column: col.to_string(),
                changes: changes
                    .into_iter()
                    .map(|c| PathChange {
                        path: c.path,
                        before: c.before.map(shown),
                        after: c.after.map(shown),
                    })
                    .collect(),
            });
            keep_samples(&mut g.samples);
        }
    }

    /// Records rows the plan skipped without reading them (their group was
    /// skipped), so they appear in the skipped counts by reason.
    pub fn record_planned_skip(
        &mut self,
        target: &str,
        group: &str,
        rows: u64,
        refs: u64,
        reason: &str,
    ) {
        let c = Counts {
            skipped: rows,
            ..Counts::default()
        };
        let g = self.groups.entry(group.to_string()).or_default();
        g.counts.merge(&c);
        *g.skipped_by_reason.entry(reason.to_string()).or_default() += rows;
        g.refs += refs;
        *self
            .skipped_by_reason
            .entry(reason.to_string())
            .or_default() += rows;
        self.counts.merge(&c);
        self.targets
            .entry(target.to_string())
            .or_default()
            .merge(&c);
    }

    /// Records references skipped at planning (a revoked certificate, one
    /// with no revision): they point at no row to rewrite.
    pub fn record_skipped_refs(&mut self, group: &str, reason: &str, refs: u64) {
        let g = self.groups.entry(group.to_string()).or_default();
        *g.refs_skipped.entry(reason.to_string()).or_default() += refs;
        self.refs_skipped += refs;
    }

    /// Records a planned row the plan could not send (for instance one
    /// referenced by two groups with different targets).
    pub fn record_planned_error(&mut self, target: &str, group: &str, key: &str, message: &str) {
        let c = Counts {
            processed: 1,
            errors: 1,
            ..Counts::default()
        };
        self.groups
            .entry(group.to_string())
            .or_default()
            .counts
            .merge(&c);
        self.counts.merge(&c);
        self.targets
            .entry(target.to_string())
            .or_default()
            .merge(&c);
        self.errors.add(target, key, message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seed: u64) -> Tally {
        let mut t = Tally::default();
        for i in 0..(seed % 7 + 3) {
            let key = format!("{}", seed * 100 + i);
            let group = format!("G{}", (seed + i) % 3);
            let outcome = match (seed + i) % 5 {
                0 => Recorded::Changed,
                1 => Recorded::Unchanged,
                2 => Recorded::Skipped("guard"),
                3 => Recorded::Conflict(CONFLICT_EDITED),
                _ => Recorded::Error("bad"),
            };
            let cur = format!("title {}", (seed * 7 + i) % 30);
            t.record_row("revisions", &group, &key, i % 3 + 1, outcome, Some(&cur));
        }
        t.record_skipped_refs("G0", "revoked", seed % 4);
        t
    }

    fn fold(parts: &[Tally]) -> Tally {
        let mut acc = Tally::default();
        for p in parts {
            acc.merge(p);
        }
        acc
    }

    #[test]
    fn merge_is_commutative() {
        for a in 0..20 {
            for b in 0..20 {
                let (x, y) = (sample(a), sample(b));
                let mut xy = x.clone();
                xy.merge(&y);
                let mut yx = y.clone();
                yx.merge(&x);
                assert_eq!(xy, yx, "a={a} b={b}");
            }
        }
    }

    #[test]
    fn merge_is_associative() {
        for a in 0..12 {
            for b in 0..12 {
                for c in 0..6 {
                    let (x, y, z) = (sample(a), sample(b), sample(c));
                    let mut left = x.clone();
                    left.merge(&y);
                    left.merge(&z);
                    let mut yz = y.clone();
                    yz.merge(&z);
                    let mut right = x.clone();
                    right.merge(&yz);
                    assert_eq!(left, right);
                }
            }
        }
    }

    #[test]
    fn fold_order_does_not_matter_with_caps() {
        // Enough distinct values and issues to overflow both caps.
        let parts: Vec<Tally> = (0..60).map(sample).collect();
        let forward = fold(&parts);
        let mut rev = parts.clone();
        rev.reverse();
        assert_eq!(forward, fold(&rev));
        let mut shuffled = parts.clone();
        shuffled.rotate_left(17);
        shuffled.swap(3, 40);
        assert_eq!(forward, fold(&shuffled));
        // Nothing is lost to the caps: totals still add up.
        let total_rows: u64 = forward.counts.processed;
        let per_group: u64 = forward
            .groups
            .values()
            .map(|g| g.current.kept.values().sum::<u64>() + g.current.other)
            .sum();
        assert_eq!(total_rows, per_group);
        assert_eq!(forward.errors.total(), forward.counts.errors);
        assert_eq!(forward.conflicts.total(), forward.counts.conflicts);
        assert!(forward.errors.kept.len() <= ISSUE_CAP);
    }

    #[test]
    fn empty_is_identity() {
        let x = sample(5);
        let mut y = Tally::default();
        y.merge(&x);
        assert_eq!(x, y);
        let mut z = x.clone();
        z.merge(&Tally::default());
        assert_eq!(x, z);
    }

    /// Documents over `SAMPLE_DOC_BYTES` are described, not parsed; a
    /// released one is told from its inverse patch.
    #[test]
    fn large_documents_are_sampled_without_parsing_them() {
        let big = format!(r#"{{"x":"{}"}}"#, "z".repeat(SAMPLE_DOC_BYTES));
        let d = SampleDiff::between("1", "doc", Some(&big), Some(&big));
        assert_eq!(d.changes.len(), 1);
        assert_eq!(d.changes[0].path, "");
        assert_eq!(
            d.changes[0].before,
            Some(serde_json::Value::String(too_large_to_diff(
                big.len() as u64
            )))
        );

        let inverse = r#"[{"op":"remove","path":"/seen"},{"op":"replace","path":"/t","value":"old"},{"op":"add","path":"/gone","value":[1]}]"#;
        let mut t = Tally::default();
        let read = BTreeMap::new();
        let new = BTreeMap::from([("doc".to_string(), Some("{}".repeat(10)))]);
        t.record_change("G", "7", &read, &new);
        assert_eq!(t.bytes_written, 0, "a released column is recorded once");
        t.record_released(
            "G",
            "7",
            "doc",
            5_000_000,
            Some(&inverse.to_string()),
            new.get("doc"),
        );
        assert_eq!((t.bytes_before, t.bytes_written), (5_000_000, 20));
        let s = &t.groups["G"].samples[0];
        let shown = |c: &PathChange| (c.path.clone(), c.before.clone(), c.after.is_some());
        assert_eq!(
            s.changes.iter().map(shown).collect::<Vec<_>>(),
            vec![
                ("/seen".to_string(), None, true),
                ("/t".to_string(), Some(serde_json::json!("old")), true),
                ("/gone".to_string(), Some(serde_json::json!([1])), false),
            ]
        );
    }

    #[test]
    fn sample_diffs_hold_the_changed_paths_only_and_merge_in_any_order() {
        let d = SampleDiff::between(
            "1",
            "content",
            Some(r#"{"a":1,"b":{"c":"x"},"gone":true}"#),
            Some(r#"{"a":1,"b":{"c":"y"},"new":[1]}"#),
        );
        let paths: Vec<&str> = d.changes.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths.len(), 3, "{paths:?}");
        assert!(paths.contains(&"/b/c") && paths.contains(&"/gone") && paths.contains(&"/new"));
        let bc = d.changes.iter().find(|c| c.path == "/b/c").unwrap();
        assert_eq!(bc.before, Some(serde_json::json!("x")));
        assert_eq!(bc.after, Some(serde_json::json!("y")));
        let gone = d.changes.iter().find(|c| c.path == "/gone").unwrap();
        assert_eq!(gone.after, None);

        let mut parts: Vec<Tally> = Vec::new();
        for k in [12, 3, 40, 7, 25] {
            let mut t = Tally::default();
            let read = BTreeMap::from([("doc".to_string(), Some(r#"{"t":"old"}"#.to_string()))]);
            let new = BTreeMap::from([("doc".to_string(), Some(r#"{"t":"new"}"#.to_string()))]);
            t.record_change("G", &k.to_string(), &read, &new);
            parts.push(t);
        }
        let fold = |order: &[usize]| {
            let mut all = Tally::default();
            for i in order {
                all.merge(&parts[*i]);
            }
            all
        };
        let a = fold(&[0, 1, 2, 3, 4]);
        assert_eq!(a, fold(&[4, 2, 0, 3, 1]));
        let keys: Vec<&str> = a.groups["G"]
            .samples
            .iter()
            .map(|s| s.key.as_str())
            .collect();
        assert_eq!(keys, ["3", "7", "12"]);
        assert_eq!(a.bytes_written, 5 * r#"{"t":"new"}"#.len() as u64);
        assert_eq!(a.bytes_before, 5 * r#"{"t":"old"}"#.len() as u64);
        // Big values are described rather than carried in every message.
        let big = format!(r#"{{"x":"{}"}}"#, "z".repeat(SAMPLE_VALUE_BYTES));
        let d = SampleDiff::between("1", "c", Some(r#"{"x":"a"}"#), Some(&big));
        assert!(d.changes[0]
            .after
            .as_ref()
            .unwrap()
            .as_str()
            .unwrap()
            .contains("bytes of JSON"));
    }

    #[test]
    fn record_row_counts_each_outcome() {
        let mut t = Tally::default();
        t.record_row("r", "P", "1", 3, Recorded::Changed, Some("Old"));
        t.record_row("r", "P", "2", 1, Recorded::Unchanged, Some("New"));
        t.record_row("r", "P", "3", 1, Recorded::Skipped("why"), None);
        t.record_row("r", "P", "4", 1, Recorded::Conflict(CONFLICT_EDITED), None);
        t.record_row("r", "P", "5", 1, Recorded::Error("boom"), None);
        assert_eq!(
            t.counts,
            Counts {
                processed: 5,
                changed: 1,
                unchanged: 1,
                skipped: 1,
                conflicts: 1,
                errors: 1
            }
        );
        assert_eq!(t.refs_affected, 3);
        let g = &t.groups["P"];
        assert_eq!(g.refs, 7);
        assert_eq!(g.current.kept["Old"], 1);
        assert_eq!(t.errors.kept["r/5"], "boom");
        assert!(t.conflicts.kept.contains_key("r/4"));
        assert_eq!(t.targets["r"].processed, 5);
    }

    #[test]
    fn serde_round_trip() {
        let t = sample(9);
        let s = serde_json::to_string(&t).unwrap();
        let back: Tally = serde_json::from_str(&s).unwrap();
        assert_eq!(t, back);
    }
}
