//! One shard's rows between the read and the write: each row as read
//! ([`FetchedRow`]), with its evaluated outcome ([`EvaluatedRow`]), and the
//! shard's result once the write has told which changes landed
//! ([`shard_tally`]), or once the shard was given up ([`failed_tally`]).
//!
//! The store reads the rows and writes them back; deciding what each row
//! becomes and what the shard counts is done here, without the database.

use std::collections::{BTreeMap, HashSet};

use crate::rules::RowEvaluation;
use crate::tally::{Recorded, CONFLICT_EDITED};
use crate::{Mode, RowOutcome, Tally};

/// A shard's row as read.
#[derive(Debug, Clone)]
pub struct FetchedRow {
    pub key: String,
    pub group: String,
    pub refs: u64,
    /// Each JSON column's text as read (`None` = SQL NULL); `None` when the
    /// row no longer exists.
    pub columns: Option<BTreeMap<String, Option<String>>>,
    /// The `md5` of each column's text as read (PostgreSQL, when asked for):
    /// what the compare-and-set compares, instead of sending the documents
    /// back.
    pub digests: BTreeMap<String, Option<String>>,
    /// The row version as read (PostgreSQL's `xmin`): when it is unchanged at
    /// the write, the row was not touched since, and the digests need not be
    /// computed again.
    pub version: Option<String>,
}

impl FetchedRow {
    /// A row as a store read it: `texts`, the texts of `columns` in that
    /// order (`None` where the row no longer exists); with `digests`, each
    /// text's `md5` is kept for the compare-and-set.
    pub fn read(
        (key, group, refs): (String, String, i64),
        columns: &[&String],
        texts: Option<Vec<Option<String>>>,
        digests: bool,
        version: Option<String>,
    ) -> FetchedRow {
        let mut sums = BTreeMap::new();
        let columns = texts.map(|texts| {
            columns
                .iter()
                .zip(texts)
                .map(|(c, text)| {
                    if digests {
                        sums.insert((*c).clone(), text.as_deref().map(md5_hex));
                    }
                    ((*c).clone(), text)
                })
                .collect()
        });
        FetchedRow {
            key,
            group,
            refs: refs.max(0) as u64,
            columns,
            digests: sums,
            version,
        }
    }
}

/// The hex `md5` of a column's text, as PostgreSQL's `md5(text)` computes it.
pub fn md5_hex(text: &str) -> String {
    use md5::Digest;
    let d = md5::Md5::digest(text.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A row with its evaluated outcome, ready to commit.
#[derive(Debug, Clone)]
pub struct EvaluatedRow {
    pub key: String,
    pub group: String,
    pub refs: u64,
    pub outcome: RowOutcome,
    pub current: Option<String>,
    /// Every JSON column as read, for the compare-and-set and before-images;
    /// without the large documents released after evaluation (`released`).
    pub read: BTreeMap<String, Option<String>>,
    /// Columns whose text as read was released once evaluated (see
    /// [`RELEASE_BYTES`]), with its length in bytes: a `jsonb` document
    /// whose before-image is its inverse patch and whose compare-and-set
    /// needs only its digest.
    pub released: BTreeMap<String, u64>,
    /// The `md5` of every JSON column as read (PostgreSQL): the
    /// compare-and-set compares these; empty on SQLite.
    pub digests: BTreeMap<String, Option<String>>,
    /// Inverse patches of the changed columns (see `RowEvaluation::undo`),
    /// kept as the before-image of a `jsonb` column instead of its whole value.
    pub undo: BTreeMap<String, String>,
    /// The row version as read (`xmin`; PostgreSQL).
    pub version: Option<String>,
}

impl EvaluatedRow {
    /// A fetched row with its outcome: `eval` gets the row's key, its
    /// documents as read and its version; a row that no longer exists is
    /// skipped without evaluating.
    pub fn evaluate(
        row: FetchedRow,
        eval: impl FnOnce(&str, &BTreeMap<String, Option<String>>, Option<&str>) -> RowEvaluation,
    ) -> EvaluatedRow {
        let Some(cols) = row.columns else {
            return EvaluatedRow {
                key: row.key,
                group: row.group,
                refs: row.refs,
                outcome: RowOutcome::Skipped(ROW_GONE.into()),
                current: None,
                read: BTreeMap::new(),
                released: BTreeMap::new(),
                digests: BTreeMap::new(),
                undo: BTreeMap::new(),
                version: None,
            };
        };
        let ev = eval(&row.key, &cols, row.version.as_deref());
        let mut r = EvaluatedRow {
            key: row.key,
            group: row.group,
            refs: row.refs,
            outcome: ev.outcome,
            current: ev.current,
            read: cols,
            released: BTreeMap::new(),
            digests: row.digests,
            undo: ev.undo,
            version: row.version,
        };
        r.release_large_documents();
        r
    }

    /// Drops the text as read of each large document that the write no
    /// longer needs, keeping its digest and length, so that a batch holds
    /// one copy of it (the new text) rather than two while it is written.
    /// Only on PostgreSQL (a row version was read) and only for a column
    /// whose before-image is an inverse patch.
    fn release_large_documents(&mut self) {
        if self.version.is_none() || !matches!(self.outcome, RowOutcome::Changed(_)) {
            return;
        }
        for (col, text) in self.read.iter_mut() {
            let Some(t) = text else { continue };
            if t.len() < RELEASE_BYTES || !self.undo.contains_key(col) {
                continue;
            }
            self.digests
                .entry(col.clone())
                .or_insert_with(|| Some(md5_hex(t)));
            self.released.insert(col.clone(), t.len() as u64);
            *text = None;
        }
        self.read.retain(|c, _| !self.released.contains_key(c));
    }
}

/// Why a row deleted between planning and reading is skipped.
pub const ROW_GONE: &str = "row no longer exists";

/// Documents of this size or more are released once evaluated (see
/// [`EvaluatedRow::evaluate`]); smaller ones are kept, as digesting every
/// document would cost more than it saves.
pub const RELEASE_BYTES: usize = 1024 * 1024;

/// A shard's result: each row's outcome, with a change that the
/// compare-and-set did not write (its key is not in `written`) counted as a
/// conflict. A dry run writes nothing, so its changes count as changes.
pub fn shard_tally(
    target: &str,
    mode: Mode,
    rows: &[EvaluatedRow],
    written: &HashSet<String>,
) -> Tally {
    let mut tally = Tally::default();
    for r in rows {
        let rec = match &r.outcome {
            RowOutcome::Changed(_) if mode.is_commit() && !written.contains(&r.key) => {
                Recorded::Conflict(CONFLICT_EDITED)
            }
            other => Recorded::from(other),
        };
        if let (Recorded::Changed, RowOutcome::Changed(new)) = (&rec, &r.outcome) {
            tally.record_change(&r.group, &r.key, &r.read, new);
            for (col, bytes) in &r.released {
                tally.record_released(&r.group, &r.key, col, *bytes, r.undo.get(col), new.get(col));
            }
        }
        tally.record_row(target, &r.group, &r.key, r.refs, rec, r.current.as_deref());
    }
    tally
}

/// The result of a shard given up after failing on every attempt: each of
/// its rows (key, group) is an error.
pub fn failed_tally(target: &str, shard_no: u32, error: &str, items: &[(String, String)]) -> Tally {
    let mut tally = Tally::default();
    let msg = format!("shard {shard_no} failed on every attempt: {error}");
    for (key, group) in items {
        tally.record_planned_error(target, group, key, &msg);
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn a_row_as_read_keeps_its_texts_by_column_and_their_digests_when_asked() {
        let (doc, extra) = ("doc".to_string(), "extra".to_string());
        let texts = Some(vec![Some("{}".to_string()), None]);
        let r = FetchedRow::read(
            ("7".into(), "G".into(), -1),
            &[&doc, &extra],
            texts.clone(),
            true,
            Some("42".into()),
        );
        assert_eq!(r.refs, 0, "a negative count reads as none");
        assert_eq!(
            r.columns,
            Some(cols(&[("doc", Some("{}")), ("extra", None)]))
        );
        assert_eq!(r.digests["doc"].as_deref(), Some(md5_hex("{}").as_str()));
        assert_eq!(r.digests["extra"], None);
        assert_eq!(r.version.as_deref(), Some("42"));
        let plain = FetchedRow::read(
            ("7".into(), "G".into(), 2),
            &[&doc, &extra],
            texts,
            false,
            None,
        );
        assert!(plain.digests.is_empty());
        let gone = FetchedRow::read(("7".into(), "G".into(), 2), &[&doc], None, true, None);
        assert_eq!((gone.columns, gone.digests.len()), (None, 0));
    }

    fn cols(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
        pairs
            .iter()
            .map(|(c, t)| (c.to_string(), t.map(str::to_string)))
            .collect()
    }

    fn fetched(key: &str, columns: Option<BTreeMap<String, Option<String>>>) -> FetchedRow {
        FetchedRow {
            key: key.into(),
            group: "G".into(),
            refs: 3,
            columns,
            digests: BTreeMap::new(),
            version: None,
        }
    }

    fn evaluation(outcome: RowOutcome) -> RowEvaluation {
        RowEvaluation {
            outcome,
            current: None,
            undo: BTreeMap::new(),
        }
    }

    fn changed(col: &str, text: &str) -> RowOutcome {
        RowOutcome::Changed(cols(&[(col, Some(text))]))
    }

    fn row(key: &str, outcome: RowOutcome) -> EvaluatedRow {
        EvaluatedRow::evaluate(
            fetched(key, Some(cols(&[("content", Some("{}"))]))),
            |_, _, _| evaluation(outcome),
        )
    }

    #[test]
    fn md5_hex_matches_postgres() {
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex("abc"), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn a_row_gone_is_skipped_without_evaluating() {
        let called = Cell::new(false);
        let r = EvaluatedRow::evaluate(fetched("7", None), |_, _, _| {
            called.set(true);
            evaluation(RowOutcome::Unchanged)
        });
        assert!(!called.get());
        assert_eq!(r.outcome, RowOutcome::Skipped(ROW_GONE.into()));
        assert_eq!((r.key.as_str(), r.group.as_str(), r.refs), ("7", "G", 3));
        assert!(r.read.is_empty() && r.undo.is_empty() && r.current.is_none());
    }

    #[test]
    fn evaluate_hands_over_key_documents_and_version() {
        let mut f = fetched(
            "7",
            Some(cols(&[("content", Some(r#"{"a":1}"#)), ("extra", None)])),
        );
        f.version = Some("42".into());
        f.digests = cols(&[("content", Some("d"))]);
        let r = EvaluatedRow::evaluate(f, |key, documents, version| {
            assert_eq!(key, "7");
            assert_eq!(
                documents.get("content"),
                Some(&Some(r#"{"a":1}"#.to_string()))
            );
            assert_eq!(documents.get("extra"), Some(&None));
            assert_eq!(version, Some("42"));
            RowEvaluation {
                outcome: RowOutcome::Unchanged,
                current: Some("old".into()),
                undo: BTreeMap::new(),
            }
        });
        assert_eq!(r.outcome, RowOutcome::Unchanged);
        assert_eq!(r.current.as_deref(), Some("old"));
        assert_eq!(r.read.len(), 2);
        assert_eq!(r.digests, cols(&[("content", Some("d"))]));
        assert_eq!(r.version.as_deref(), Some("42"));
        assert!(r.released.is_empty());
    }

    fn large(version: Option<&str>, outcome: RowOutcome, undo: bool) -> (EvaluatedRow, String) {
        let doc = format!(r#"{{"a":"{}"}}"#, "x".repeat(RELEASE_BYTES));
        let mut f = fetched(
            "1",
            Some(cols(&[("content", Some(&doc)), ("small", Some("{}"))])),
        );
        f.version = version.map(str::to_string);
        let r = EvaluatedRow::evaluate(f, |_, _, _| RowEvaluation {
            outcome,
            current: None,
            undo: if undo {
                [("content".to_string(), "[]".to_string())].into()
            } else {
                BTreeMap::new()
            },
        });
        (r, doc)
    }

    #[test]
    fn a_large_changed_document_with_an_inverse_patch_is_released() {
        let (r, doc) = large(Some("9"), changed("content", "{}"), true);
        assert!(!r.read.contains_key("content"));
        assert!(r.read.contains_key("small"));
        assert_eq!(r.released.get("content"), Some(&(doc.len() as u64)));
        assert_eq!(r.digests.get("content"), Some(&Some(md5_hex(&doc))));
    }

    #[test]
    fn large_documents_are_kept_when_the_write_needs_them() {
        // SQLite (no row version), no inverse patch, or nothing to write:
        // the document as read is the before-image or is not needed at all.
        for (version, outcome, undo) in [
            (None, changed("content", "{}"), true),
            (Some("9"), changed("content", "{}"), false),
            (Some("9"), RowOutcome::Unchanged, true),
        ] {
            let (r, doc) = large(version, outcome, undo);
            assert_eq!(r.read.get("content"), Some(&Some(doc)));
            assert!(r.released.is_empty());
        }
    }

    #[test]
    fn shard_tally_counts_each_outcome() {
        let rows = vec![
            row("1", changed("content", r#"{"a":2}"#)),
            row("2", RowOutcome::Unchanged),
            row("3", RowOutcome::Skipped("blank".into())),
            row("4", RowOutcome::Error("bad json".into())),
            row("5", RowOutcome::Conflict("edited since".into())),
        ];
        let written: HashSet<String> = ["1".to_string()].into();
        let t = shard_tally("revisions", Mode::Commit, &rows, &written);
        let c = &t.counts;
        assert_eq!(
            (
                c.processed,
                c.changed,
                c.unchanged,
                c.skipped,
                c.errors,
                c.conflicts
            ),
            (5, 1, 1, 1, 1, 1)
        );
        assert_eq!(t.refs_affected, 3);
        assert_eq!(
            t.errors.kept.get("revisions/4").map(String::as_str),
            Some("bad json")
        );
        assert_eq!(
            t.conflicts.kept.get("revisions/5").map(String::as_str),
            Some("edited since")
        );
        assert_eq!(t.bytes_written, r#"{"a":2}"#.len() as u64);
        assert_eq!(t.bytes_before, 2);
        assert_eq!(t.targets.get("revisions"), Some(c));
    }

    #[test]
    fn an_unwritten_change_is_a_conflict_in_a_commit() {
        let rows = vec![
            row("1", changed("content", "{}")),
            row("2", changed("content", "{}")),
        ];
        let written: HashSet<String> = ["2".to_string()].into();
        let t = shard_tally("revisions", Mode::Commit, &rows, &written);
        assert_eq!((t.counts.changed, t.counts.conflicts), (1, 1));
        assert_eq!(
            t.conflicts.kept.get("revisions/1").map(String::as_str),
            Some(CONFLICT_EDITED)
        );
        assert_eq!(t.refs_affected, 3);
    }

    #[test]
    fn a_dry_run_counts_changes_it_did_not_write() {
        let rows = vec![row("1", changed("content", "{}"))];
        let t = shard_tally("revisions", Mode::DryRun, &rows, &HashSet::new());
        assert_eq!((t.counts.changed, t.counts.conflicts), (1, 0));
    }

    #[test]
    fn shard_tally_counts_released_documents_by_their_length() {
        let (r, doc) = large(Some("9"), changed("content", "{}"), true);
        let t = shard_tally("revisions", Mode::Commit, &[r], &["1".to_string()].into());
        assert_eq!(t.counts.changed, 1);
        assert_eq!(t.bytes_before, doc.len() as u64);
        assert_eq!(t.bytes_written, 2);
    }

    #[test]
    fn failed_tally_makes_every_row_an_error() {
        let items = vec![
            ("1".to_string(), "A".to_string()),
            ("2".to_string(), "B".to_string()),
        ];
        let t = failed_tally("revisions", 4, "timeout", &items);
        assert_eq!((t.counts.processed, t.counts.errors), (2, 2));
        assert_eq!(t.groups.len(), 2);
        assert_eq!(
            t.errors.kept.get("revisions/2").map(String::as_str),
            Some("shard 4 failed on every attempt: timeout")
        );
        assert_eq!(crate::fold::final_state(&t), crate::RunState::Failed);
        assert_eq!(
            failed_tally("revisions", 4, "timeout", &[]),
            Tally::default()
        );
    }
}
