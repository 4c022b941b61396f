//! Rules: how one row's JSON documents are rewritten, and the evaluation that
//! decides what happens to the row.
//!
//! Operations are JSON Patch style over JSON Pointers and are applied with the
//! `json-patch` crate (RFC 6902 semantics): `set` becomes `add`/`replace`
//! operations (creating missing parent objects, so a revision that predates a
//! field gains it), `remove` becomes `remove` when the path exists. Both are
//! idempotent: applying the rules to their own output changes nothing, which is
//! why a second run reports `changed=0`.
//!
//! The other operations are idempotent the same way, by doing nothing where
//! there is nothing to do: `rename` moves a key within its object and
//! leaves a document without the old key alone (already renamed, or never
//! there); `copy` writes the value found at its source and leaves the
//! document alone when the source is absent; `jq` replaces a value with a
//! filter's one output and skips an absent one (a deterministic filter
//! that is idempotent itself, such as `ascii_downcase`, gives `changed=0`
//! on a second run).
//!
//! A rule applies at one place, the document root, or at every place its
//! `select` query picks (see [`crate::select`]), with its `path` relative
//! to each; its `when` conditions, checked at each place against the
//! document before the rule runs, leave out the places where they fail.

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

use crate::equality::same_value;
use crate::journal::{touch_point, Journal};
use crate::spec::TargetSpec;
use crate::splice::{nesting_depth, splice_parsed, value_depth, MAX_DEPTH};
use crate::streamrule;

// The rule model and the document edits, where they were before they had
// modules of their own.
pub use crate::edit::{remove, rename, set, unescape_token};
pub use crate::rule::{OnBoth, Op, Rule, ValueSource};

/// One row as the mapper read it.
#[derive(Debug, Clone)]
pub struct RowInput<'a> {
    pub key: &'a str,
    /// Raw JSON text per column (written and read-only); `None` is SQL NULL.
    pub columns: &'a BTreeMap<String, Option<String>>,
    /// The row's parameters (its group's parameters).
    pub params: &'a Map<String, Value>,
    /// Columns whose database normalises the JSON it stores (PostgreSQL
    /// `jsonb`): their new text is written as compact JSON. Every other
    /// column keeps the text it is given, so its new text keeps the bytes
    /// of every part no rule touched (see [`crate::splice`]).
    pub normalised: &'a BTreeSet<String>,
}

/// What happens to a row.
#[derive(Debug, Clone, PartialEq)]
pub enum RowOutcome {
    /// The rules are already applied.
    Unchanged,
    /// The new text of each written column whose document changed
    /// (`None`: SQL NULL, which only a revert writes back).
    Changed(BTreeMap<String, Option<String>>),
    /// A row guard failed.
    Skipped(String),
    /// The row cannot be processed (invalid JSON, a rule met the wrong type).
    Error(String),
    /// The row is not as expected and is left alone (a revert meeting a row
    /// edited since the run it reverts).
    Conflict(String),
}

/// A row's outcome and the value the report shows as its current value.
#[derive(Debug, Clone, PartialEq)]
pub struct RowEvaluation {
    pub outcome: RowOutcome,
    pub current: Option<String>,
    /// For each changed column: the inverse of what the rules did, as an
    /// RFC 6902 patch (JSON text) that turns the new document back into the
    /// one read — only when applying it restores that document exactly (as
    /// a JSON value). A commit may keep it as the before-image instead of
    /// the whole document.
    pub undo: BTreeMap<String, String>,
}

impl RowEvaluation {
    fn of(outcome: RowOutcome, current: Option<String>) -> RowEvaluation {
        RowEvaluation {
            outcome,
            current,
            undo: BTreeMap::new(),
        }
    }
}

/// A column's before-image as a commit recorded it.
#[derive(Debug, Clone, PartialEq)]
pub enum BeforeImage {
    /// The whole value as read (`None`: SQL NULL).
    Value(Option<String>),
    /// The inverse patch of what the run changed, with the row version
    /// the run's write left (PostgreSQL's `xmin`): while the row still has
    /// that version it holds exactly what the run wrote.
    Patch {
        patch: String,
        after_version: String,
    },
}

/// How the report prints a value: strings bare, absence marked, others as JSON.
pub fn display_value(v: Option<&Value>) -> String {
    match v {
        None => "(absent)".to_string(),
        Some(Value::Null) => "(null)".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Evaluates the target's guards and rules on one row.
///
/// `current` names the (column, pointer) whose original value the report
/// shows, when the spec asks for one.
pub fn evaluate_row(
    target: &TargetSpec,
    row: &RowInput<'_>,
    current: Option<(&str, &str)>,
) -> RowEvaluation {
    let mut docs: BTreeMap<&str, Value> = BTreeMap::new();
    for col in target.all_columns() {
        let doc = match row.columns.get(col) {
            None => {
                return RowEvaluation::of(
                    RowOutcome::Error(format!("column `{col}` was not read")),
                    None,
                )
            }
            Some(None) => Value::Null,
            Some(Some(text)) => match serde_json::from_str::<Value>(text) {
                Ok(v) => v,
                // serde_json stops at 128 levels: a deeper document is
                // valid JSON (jsonb stores it) that this job cannot read.
                Err(_) if nesting_depth(text) > MAX_DEPTH => {
                    return RowEvaluation::of(
                        RowOutcome::Error(format!(
                            "column `{col}` nests {} levels deep, deeper than serde_json's {MAX_DEPTH}; the row was left unchanged",
                            nesting_depth(text)
                        )),
                        None,
                    )
                }
                Err(e) => {
                    return RowEvaluation::of(
                        RowOutcome::Error(format!("column `{col}` is not valid JSON: {e}")),
                        None,
                    )
                }
            },
        };
        docs.insert(col.as_str(), doc);
    }

    let current =
        current.map(|(col, path)| display_value(docs.get(col).and_then(|d| d.pointer(path))));

    for g in &target.guards {
        let v = docs.get(g.column.as_str()).and_then(|d| d.pointer(&g.path));
        if !g.check.passes(v) {
            return RowEvaluation::of(RowOutcome::Skipped(g.reason.clone()), current);
        }
    }

    // What the rules change is told from an undo log of where each wrote
    // (see `journal`) rather than from a copy of the documents, which
    // would double what a large document costs. Columns that keep their
    // text need the original document to splice into, so they are copied;
    // so are all of them from the first rule whose effect the log cannot
    // hold (rebuilt from the log up to there).
    let journaled = target
        .columns
        .iter()
        .all(|c| row.normalised.contains(c.as_str()));
    let mut originals: Option<BTreeMap<&str, Value>> = (!journaled).then(|| docs.clone());
    let mut journal = Journal::default();
    for (i, rule) in target.rules.iter().enumerate() {
        if let (None, Some(doc)) = (&originals, docs.get(rule.column.as_str())) {
            match touch_point(doc, rule) {
                Some(at) => journal.record(rule, doc, at),
                None => match rebuild(&docs, &journal) {
                    Ok(o) => originals = Some(o),
                    Err(e) => {
                        return RowEvaluation::of(
                            RowOutcome::Error(format!("rule {i} ({}): {e}", rule.column)),
                            current,
                        )
                    }
                },
            }
        }
        if let Err(e) = apply_rule(rule, &mut docs, row.params) {
            return RowEvaluation::of(
                RowOutcome::Error(format!("rule {i} ({}): {e}", rule.column)),
                current,
            );
        }
    }

    let mut changed = BTreeMap::new();
    let mut undo = BTreeMap::new();
    for col in &target.columns {
        let Some(after) = docs.get(col.as_str()) else {
            continue;
        };
        // The inverse patch, when the document changed. By value: a number
        // the database normalised (jsonb keeps `1.5e-7` as `0.00000015`)
        // is the value the rule wrote.
        let (before, patch) = match &originals {
            Some(o) => {
                let Some(before) = o.get(col.as_str()) else {
                    continue;
                };
                if same_value(before, after) {
                    continue;
                }
                (Some(before), inverse_patch(before, after))
            }
            None => match journal.inverse(col, after) {
                Ok(None) => continue,
                Ok(Some(p)) => (None, Some(p)),
                Err(e) => {
                    return RowEvaluation::of(
                        RowOutcome::Error(format!(
                            "column `{col}`: cannot tell what the rules changed ({e}); the row was left unchanged"
                        )),
                        current,
                    )
                }
            },
        };
        // A document nesting deeper than serde_json reads would be
        // written but refused by every later run.
        if value_depth(after) > MAX_DEPTH {
            return RowEvaluation::of(
                RowOutcome::Error(format!(
                    "column `{col}`: the new document would nest deeper than serde_json's {MAX_DEPTH} levels; the row was left unchanged"
                )),
                current,
            );
        }
        let original = match (row.columns.get(col.as_str()), before) {
            (Some(Some(text)), Some(before)) if !row.normalised.contains(col.as_str()) => {
                Some((text, before))
            }
            _ => None,
        };
        let text = match original {
            Some((text, before)) => match splice_parsed(text, before, after) {
                Ok(t) => t,
                Err(e) => {
                    return RowEvaluation::of(
                        RowOutcome::Error(format!(
                            "column `{col}`: the untouched parts of the document cannot keep their text ({e}); the row was left unchanged"
                        )),
                        current,
                    )
                }
            },
            // serde_json's writer directly: `to_string()` goes through
            // `Display` and a formatter adapter, measurably slower.
            // Sized like the text as read (plus room for what the rules
            // add): growing a buffer of a large document by doubling
            // holds the old and the new copy at once.
            None => {
                let hint = row
                    .columns
                    .get(col)
                    .and_then(|t| t.as_deref())
                    .map_or(0, str::len);
                let mut buf = Vec::with_capacity(hint + hint / 16 + 64);
                match serde_json::to_writer(&mut buf, after) {
                    Ok(()) => String::from_utf8(buf).unwrap_or_else(|_| after.to_string()),
                    Err(_) => after.to_string(),
                }
            }
        };
        changed.insert(col.clone(), Some(text));
        if let Some(p) = patch {
            undo.insert(col.clone(), p);
        }
    }
    RowEvaluation {
        outcome: if changed.is_empty() {
            RowOutcome::Unchanged
        } else {
            RowOutcome::Changed(changed)
        },
        current,
        undo,
    }
}

/// The documents as read, rebuilt from the documents now and the undo log.
fn rebuild<'a>(
    docs: &BTreeMap<&'a str, Value>,
    journal: &Journal,
) -> Result<BTreeMap<&'a str, Value>, String> {
    docs.iter()
        .map(|(col, doc)| Ok((*col, journal.original(col, doc)?)))
        .collect()
}

/// The patch that turns `after` back into `before` (the `json-patch`
/// crate's RFC 6902 diff, exact for JSON values), as JSON text.
pub fn inverse_patch(before: &Value, after: &Value) -> Option<String> {
    serde_json::to_string(&json_patch::diff(after, before)).ok()
}

/// Evaluates a row of a revert: `before` holds the before-image of each
/// column the reverted run wrote, `version` the row's version as read now
/// (PostgreSQL's `xmin`; `None` elsewhere).
///
/// Each written column is either still as the run wrote it, already back
/// as it was before the run, or something else. For a whole-value
/// before-image, what the run wrote is the run's rules applied again, with
/// the run's parameters, to the before-image (read-only columns as they are
/// now), compared as JSON values. For an inverse-patch before-image, the
/// row still has the version the run's write left (nothing wrote it since),
/// or the patch changes nothing (already restored). The row is restored
/// only while every written column still holds what the run wrote; a row
/// already holding its before-image is unchanged (a revert is idempotent);
/// anything else was written since the run and is a conflict, left alone.
pub fn evaluate_revert(
    target: &TargetSpec,
    row: &RowInput<'_>,
    before: Option<&BTreeMap<String, BeforeImage>>,
    version: Option<&str>,
    current: Option<(&str, &str)>,
) -> RowEvaluation {
    let shown = current.map(|(col, path)| {
        let doc = row
            .columns
            .get(col)
            .and_then(|v| v.as_deref())
            .and_then(|t| serde_json::from_str::<Value>(t).ok());
        display_value(doc.as_ref().and_then(|d| d.pointer(path)))
    });
    let done = |outcome| RowEvaluation::of(outcome, shown.clone());
    let Some(before) = before.filter(|b| !b.is_empty()) else {
        return done(RowOutcome::Error(
            "no before-image is recorded for this row (pruned?); it cannot be reverted".into(),
        ));
    };
    let now = |col: &String| row.columns.get(col).cloned().flatten();
    // The whole-value columns' after-images, from the rules.
    let wholes: BTreeMap<&String, &Option<String>> = before
        .iter()
        .filter_map(|(c, b)| match b {
            BeforeImage::Value(v) => Some((c, v)),
            BeforeImage::Patch { .. } => None,
        })
        .collect();
    let mut after = row.columns.clone();
    if !wholes.is_empty() {
        let mut original = row.columns.clone();
        for (col, v) in &wholes {
            original.insert((*col).clone(), (*v).clone());
        }
        after = original.clone();
        let redo = evaluate_row(
            target,
            &RowInput {
                key: row.key,
                columns: &original,
                params: row.params,
                normalised: row.normalised,
            },
            None,
        );
        if let RowOutcome::Changed(new) = redo.outcome {
            for (col, v) in new {
                after.insert(col, v);
            }
        }
    }
    let (mut all_before, mut all_after) = (true, true);
    let mut restore = BTreeMap::new();
    for (col, b) in before {
        match b {
            BeforeImage::Value(v) => {
                all_before &= same_json(now(col), v.clone());
                all_after &= same_json(now(col), after.get(col).cloned().flatten());
                restore.insert(col.clone(), v.clone());
            }
            BeforeImage::Patch {
                patch,
                after_version,
            } => {
                let is_after = version == Some(after_version.as_str());
                all_after &= is_after;
                match (restore_with(now(col).as_deref(), patch), is_after) {
                    (Ok(text), true) => {
                        all_before = false;
                        restore.insert(col.clone(), Some(text));
                    }
                    // Written since: already as before only if every path
                    // the patch names holds its value from before.
                    (_, false) => {
                        all_before &= patch_holds(now(col).as_deref(), patch);
                    }
                    (Err(e), true) => {
                        return done(RowOutcome::Error(format!(
                            "column `{col}`: the before-image patch does not apply: {e}"
                        )))
                    }
                }
            }
        }
    }
    if all_before {
        return done(RowOutcome::Unchanged);
    }
    if !all_after {
        return done(RowOutcome::Conflict(
            "edited since the run it reverts; left as it is".into(),
        ));
    }
    done(RowOutcome::Changed(restore))
}

/// Whether a document already is as an inverse patch would leave it: each
/// removed path absent, each added or replaced path holding its value.
fn patch_holds(now: Option<&str>, patch: &str) -> bool {
    let doc: Value = match now {
        Some(t) => match serde_json::from_str(t) {
            Ok(v) => v,
            Err(_) => return false,
        },
        None => Value::Null,
    };
    let Ok(patch) = serde_json::from_str::<json_patch::Patch>(patch) else {
        return false;
    };
    patch.0.iter().all(|op| match op {
        json_patch::PatchOperation::Remove(r) => doc.pointer(r.path.as_str()).is_none(),
        json_patch::PatchOperation::Add(a) => doc
            .pointer(a.path.as_str())
            .is_some_and(|v| same_value(v, &a.value)),
        json_patch::PatchOperation::Replace(r) => doc
            .pointer(r.path.as_str())
            .is_some_and(|v| same_value(v, &r.value)),
        _ => false,
    })
}

/// A document as it was: the inverse patch applied to the document now.
fn restore_with(now: Option<&str>, patch: &str) -> Result<String, String> {
    let mut doc: Value = match now {
        Some(t) => serde_json::from_str(t).map_err(|e| e.to_string())?,
        None => Value::Null,
    };
    let patch: json_patch::Patch = serde_json::from_str(patch).map_err(|e| e.to_string())?;
    json_patch::patch(&mut doc, &patch).map_err(|e| e.to_string())?;
    Ok(doc.to_string())
}

/// Two column values compared as JSON documents (as text when either is not
/// JSON), so that formatting, key order and the notation of numbers (jsonb
/// reads back `1.5e-7` as `0.00000015`) do not matter.
fn same_json(a: Option<String>, b: Option<String>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            match (
                serde_json::from_str::<Value>(&a),
                serde_json::from_str::<Value>(&b),
            ) {
                (Ok(x), Ok(y)) => same_value(&x, &y),
                _ => a == b,
            }
        }
        _ => false,
    }
}

fn apply_rule(
    rule: &Rule,
    docs: &mut BTreeMap<&str, Value>,
    params: &Map<String, Value>,
) -> Result<(), String> {
    if rule.select.is_none() && rule.when.is_empty() {
        return apply_at(rule, docs, params, "");
    }
    // The places, and the conditions at each, are read off the document
    // as it stands before the rule writes anywhere.
    let places: Vec<String> = {
        let doc = docs
            .get(rule.column.as_str())
            .ok_or_else(|| format!("column `{}` was not read", rule.column))?;
        let all = match &rule.select {
            None => vec![String::new()],
            Some(s) => s.places(doc),
        };
        all.into_iter()
            .filter(|p| rule.when.iter().all(|c| c.holds(doc, p)))
            .collect()
    };
    for place in places {
        apply_at(rule, docs, params, &place)?;
    }
    Ok(())
}

/// Applies the rule's operation at `place` (a JSON Pointer; "" is the
/// document root).
fn apply_at(
    rule: &Rule,
    docs: &mut BTreeMap<&str, Value>,
    params: &Map<String, Value>,
    place: &str,
) -> Result<(), String> {
    let at = |path: &str| format!("{place}{path}");
    match &rule.op {
        Op::Set { path, value } => {
            let value = resolve(value, docs, params)?;
            set(column_mut(docs, rule)?, &at(path), value)
        }
        Op::Remove { path } => {
            let path = at(path);
            if path.is_empty() {
                return Err("cannot remove the whole document".into());
            }
            remove(column_mut(docs, rule)?, &path)
        }
        Op::Rename { path, to, on_both } => {
            rename(column_mut(docs, rule)?, &at(path), to, *on_both)
        }
        Op::Copy { path, column, from } => {
            let source = match column {
                Some(c) => docs.get(c.as_str()).and_then(|d| d.pointer(from)),
                None => docs
                    .get(rule.column.as_str())
                    .and_then(|d| d.pointer(&at(from))),
            };
            // An absent source leaves the document alone: the copy is
            // idempotent and a row without the source is not an error.
            let Some(value) = source.cloned() else {
                return Ok(());
            };
            set(column_mut(docs, rule)?, &at(path), value)
        }
        Op::Jq { path, filter } => {
            let path = at(path);
            let doc = column_mut(docs, rule)?;
            let Some(old) = doc.pointer(&path) else {
                return Ok(());
            };
            let new = filter.run(old).map_err(|e| {
                let shown = if path.is_empty() { "(root)" } else { &path };
                format!("jq at `{shown}`: {e}")
            })?;
            set(doc, &path, new)
        }
        Op::Stream {
            path,
            operation,
            block_path,
        } => streamrule::apply_stream(column_mut(docs, rule)?, &at(path), operation, block_path),
        Op::InString { path, inner } => {
            let value = match &**inner {
                Op::Set { value, .. } => Some(resolve(value, docs, params)?),
                _ => None,
            };
            streamrule::apply_in_string(column_mut(docs, rule)?, &at(path), inner, value)
        }
    }
}

fn column_mut<'d>(
    docs: &'d mut BTreeMap<&str, Value>,
    rule: &Rule,
) -> Result<&'d mut Value, String> {
    docs.get_mut(rule.column.as_str())
        .ok_or_else(|| format!("column `{}` was not read", rule.column))
}

/// The value a `set` writes.
fn resolve(
    value: &ValueSource,
    docs: &BTreeMap<&str, Value>,
    params: &Map<String, Value>,
) -> Result<Value, String> {
    Ok(match value {
        ValueSource::Literal(v) => v.clone(),
        ValueSource::Param(p) => params
            .get(p)
            .cloned()
            .ok_or_else(|| format!("parameter `{p}` is not provided by the query"))?,
        ValueSource::Pointer { column, path: from } => docs
            .get(column.as_str())
            .and_then(|d| d.pointer(from))
            .cloned()
            .ok_or_else(|| format!("source `{column}{from}` is absent"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::JobSpec;
    use crate::testing::{doc_image, rows_spec, Row};
    use serde_json::json;

    fn spec(rules: &str, extra_cols: &str) -> JobSpec {
        JobSpec::parse(&rows_spec(extra_cols, rules)).unwrap()
    }

    fn revert(current: &str, before: Option<&str>) -> RowOutcome {
        let spec = spec(
            r#"[[targets.rules]]
column = "doc"
op = "set"
path = "/title"
param = "t""#,
            "",
        );
        let before = doc_image(BeforeImage::Value(before.map(str::to_string)));
        evaluate_revert(
            &spec.targets[0],
            &Row::doc(current).params(json!({"t": "New"})).input(),
            Some(&before),
            None,
            Some(("doc", "/title")),
        )
        .outcome
    }

    #[test]
    fn an_inverse_patch_restores_exactly_and_revert_uses_it_with_digests() {
        let s = spec(SET_TITLE, "");
        let row = |doc: &str| Row::doc(doc).params(json!({"title": "New"}));
        let ev = evaluate_row(
            &s.targets[0],
            &row(r#"{"b":[1,{"c":2}],"product_name":"Old"}"#).input(),
            None,
        );
        let patch = ev.undo["doc"].clone();
        assert!(
            patch.contains("product_name") && !patch.contains("\"b\""),
            "{patch}"
        );
        let after = match &ev.outcome {
            RowOutcome::Changed(m) => m["doc"].clone(),
            o => panic!("{o:?}"),
        };
        // Also when a key was added: the patch removes it.
        let ev2 = evaluate_row(&s.targets[0], &row(r#"{"x":1}"#).input(), None);
        assert!(ev2.undo["doc"].contains("remove"), "{:?}", ev2.undo);

        let image = BeforeImage::Patch {
            patch: patch.clone(),
            after_version: "701".into(),
        };
        let befores = doc_image(image);
        let at = |doc: &str, version: &str| {
            evaluate_revert(
                &s.targets[0],
                &row(doc).input(),
                Some(&befores),
                Some(version),
                None,
            )
            .outcome
        };
        let after = after.unwrap();
        match at(&after, "701") {
            RowOutcome::Changed(m) => {
                let restored: Value = serde_json::from_str(m["doc"].as_deref().unwrap()).unwrap();
                assert_eq!(restored, json!({"b":[1,{"c":2}],"product_name":"Old"}));
            }
            o => panic!("{o:?}"),
        }
        // Written since (another version): restored already, or a conflict.
        assert_eq!(
            at(r#"{"product_name":"Old","b":[1,{"c":2}]}"#, "702"),
            RowOutcome::Unchanged
        );
        assert!(matches!(at(&after, "702"), RowOutcome::Conflict(_)));
        assert!(matches!(
            at(r#"{"product_name":"Edited","b":[1,{"c":2}]}"#, "702"),
            RowOutcome::Conflict(_)
        ));
        // A key the run added: its inverse removes it, and a row without it
        // (restored since) is unchanged.
        let added = BeforeImage::Patch {
            patch: ev2.undo["doc"].clone(),
            after_version: "9".into(),
        };
        let befores = doc_image(added);
        let again = evaluate_revert(
            &s.targets[0],
            &row(r#"{"x":1}"#).input(),
            Some(&befores),
            Some("10"),
            None,
        );
        assert_eq!(again.outcome, RowOutcome::Unchanged);
    }

    #[test]
    fn revert_restores_the_before_image_while_the_row_holds_the_after_image() {
        // Key order and spacing differ from what the run wrote: still the after-image.
        assert_eq!(
            revert(
                r#"{"n": 1, "title": "New"}"#,
                Some(r#"{"title":"Old","n":1}"#)
            ),
            RowOutcome::Changed(
                [(
                    "doc".to_string(),
                    Some(r#"{"title":"Old","n":1}"#.to_string())
                )]
                .into()
            )
        );
    }

    #[test]
    fn revert_is_idempotent_and_leaves_edited_rows_alone() {
        assert_eq!(
            revert(r#"{"n":1,"title":"Old"}"#, Some(r#"{"title":"Old","n":1}"#)),
            RowOutcome::Unchanged
        );
        assert!(matches!(
            revert(
                r#"{"title":"Edited by the app","n":1}"#,
                Some(r#"{"title":"Old","n":1}"#)
            ),
            RowOutcome::Conflict(_)
        ));
        // The title is as the run wrote it but another field was edited since.
        assert!(matches!(
            revert(r#"{"title":"New","n":2}"#, Some(r#"{"title":"Old","n":1}"#)),
            RowOutcome::Conflict(_)
        ));
    }

    #[test]
    fn revert_restores_null_and_needs_a_before_image() {
        // A JSON null document is a value like any other: restored.
        assert_eq!(
            revert(r#"{"title":"New"}"#, Some("null")),
            RowOutcome::Changed([("doc".to_string(), Some("null".to_string()))].into())
        );
        // A column that was NULL before the run (set by it) goes back to NULL.
        assert_eq!(
            revert(r#"{"title":"New"}"#, None),
            RowOutcome::Changed([("doc".to_string(), None)].into())
        );
        let spec = spec(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"remove\"\npath = \"/x\"",
            "",
        );
        let outcome =
            evaluate_revert(&spec.targets[0], &Row::doc("{}").input(), None, None, None).outcome;
        assert!(matches!(outcome, RowOutcome::Error(m) if m.contains("pruned")));
    }

    fn run(spec: &JobSpec, cols: &[(&str, Option<&str>)], params: Value) -> RowOutcome {
        evaluate_row(
            &spec.targets[0],
            &Row::with(cols).params(params).input(),
            None,
        )
        .outcome
    }

    const SET_TITLE: &str =
        "[[targets.rules]]\nop = \"set\"\npath = \"/product_name\"\nparam = \"title\"\n";

    #[test]
    fn set_from_param_changes_then_is_idempotent() {
        let s = spec(SET_TITLE, "");
        let out = run(
            &s,
            &[("doc", Some(r#"{"product_name":"Old","b":1}"#))],
            json!({"title":"New"}),
        );
        let RowOutcome::Changed(cols) = out else {
            panic!("{out:?}")
        };
        let new = cols["doc"].as_deref().unwrap();
        assert_eq!(
            new, r#"{"product_name":"New","b":1}"#,
            "key order and other keys kept"
        );
        let again = run(&s, &[("doc", Some(new))], json!({"title":"New"}));
        assert_eq!(again, RowOutcome::Unchanged);
    }

    #[test]
    fn set_adds_a_missing_key() {
        let s = spec(SET_TITLE, "");
        let out = run(
            &s,
            &[("doc", Some(r#"{"title":"x"}"#))],
            json!({"title":"New"}),
        );
        assert_eq!(
            out,
            RowOutcome::Changed(BTreeMap::from([(
                "doc".into(),
                Some(r#"{"title":"x","product_name":"New"}"#.into())
            )]))
        );
    }

    #[test]
    fn other_keys_keep_their_exact_text() {
        // Numbers keep their written form (arbitrary precision) and strings
        // holding JSON (Wagtail StreamFields) are untouched.
        let s = spec(SET_TITLE, "");
        let doc = r#"{"CEUs":"11.29","n":1.10,"big":12345678901234567890,"body":"[{\"type\": \"x\"}]","product_name":"Old"}"#;
        let RowOutcome::Changed(cols) = run(&s, &[("doc", Some(doc))], json!({"title":"New"}))
        else {
            panic!()
        };
        assert_eq!(cols["doc"], Some(doc.replace("\"Old\"", "\"New\"")));
    }

    #[test]
    fn missing_param_is_an_error() {
        let s = spec(SET_TITLE, "");
        let out = run(&s, &[("doc", Some("{}"))], json!({}));
        assert!(matches!(out, RowOutcome::Error(m) if m.contains("title")));
    }

    #[test]
    fn invalid_json_is_an_error_naming_the_column() {
        let s = spec(SET_TITLE, "");
        let out = run(&s, &[("doc", Some("{not json"))], json!({"title":"x"}));
        assert!(matches!(out, RowOutcome::Error(m) if m.contains("`doc` is not valid JSON")));
    }

    #[test]
    fn wrong_type_parent_is_an_error() {
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\npath = \"/a/b\"\nvalue = 1\n",
            "",
        );
        let out = run(&s, &[("doc", Some(r#"{"a":"string"}"#))], json!({}));
        assert!(matches!(out, RowOutcome::Error(_)), "{out:?}");
    }

    #[test]
    fn set_creates_parents_and_null_roots() {
        let mut d = Value::Null;
        set(&mut d, "/collection_dict/nodes", json!([1])).unwrap();
        assert_eq!(d, json!({"collection_dict":{"nodes":[1]}}));
        let mut d = json!({"collection_dict": null});
        set(&mut d, "/collection_dict/nodes", json!([])).unwrap();
        assert_eq!(d, json!({"collection_dict":{"nodes":[]}}));
        let mut d = json!({"a":[{"x":1}]});
        set(&mut d, "/a/0/x", json!(2)).unwrap();
        assert_eq!(
            d,
            json!({"a":[{"x":2}]}),
            "array index replaces, never inserts"
        );
        let mut d = json!({"a":1});
        set(&mut d, "", json!({})).unwrap();
        assert_eq!(d, json!({}));
    }

    #[test]
    fn copy_from_another_column_and_within_document() {
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\npath = \"/nodes\"\nfrom_column = \"nodes\"\n",
            "read_columns = [\"nodes\"]",
        );
        let out = run(
            &s,
            &[
                ("doc", None),
                ("nodes", Some(r#"[{"exploration_id":"e1"}]"#)),
            ],
            json!({}),
        );
        assert_eq!(
            out,
            RowOutcome::Changed(BTreeMap::from([(
                "doc".into(),
                Some(r#"{"nodes":[{"exploration_id":"e1"}]}"#.into())
            )]))
        );
        let s = spec("[[targets.rules]]\nop = \"set\"\npath = \"/collection_dict/nodes\"\nfrom = \"/nodes\"\n", "");
        let out = run(
            &s,
            &[("doc", Some(r#"{"nodes":[1,2],"title":"c"}"#))],
            json!({}),
        );
        let RowOutcome::Changed(c) = out else {
            panic!()
        };
        assert_eq!(
            c["doc"].as_deref(),
            Some(r#"{"nodes":[1,2],"title":"c","collection_dict":{"nodes":[1,2]}}"#)
        );
        let out = run(&s, &[("doc", Some(r#"{"title":"c"}"#))], json!({}));
        assert!(matches!(out, RowOutcome::Error(m) if m.contains("/nodes")));
    }

    #[test]
    fn remove_is_idempotent() {
        let s = spec("[[targets.rules]]\nop = \"remove\"\npath = \"/old\"\n", "");
        let out = run(&s, &[("doc", Some(r#"{"old":1,"keep":2}"#))], json!({}));
        assert_eq!(
            out,
            RowOutcome::Changed(BTreeMap::from([(
                "doc".into(),
                Some(r#"{"keep":2}"#.into())
            )]))
        );
        assert_eq!(
            run(&s, &[("doc", Some(r#"{"keep":2}"#))], json!({})),
            RowOutcome::Unchanged
        );
    }

    #[test]
    fn row_guard_skips_with_reason() {
        let s = spec(
            "[[targets.guards]]\ncolumn = \"doc\"\npath = \"/collection_dict/nodes\"\ncheck = \"present\"\nreason = \"not migrated yet\"\n[[targets.rules]]\nop = \"set\"\npath = \"/nodes\"\nvalue = {}\n",
            "",
        );
        assert_eq!(
            run(&s, &[("doc", Some(r#"{"nodes":[1]}"#))], json!({})),
            RowOutcome::Skipped("not migrated yet".into())
        );
        let out = run(
            &s,
            &[(
                "doc",
                Some(r#"{"nodes":[1],"collection_dict":{"nodes":[1]}}"#),
            )],
            json!({}),
        );
        assert!(matches!(out, RowOutcome::Changed(_)));
    }

    #[test]
    fn current_value_is_reported_before_the_change() {
        let s = spec(SET_TITLE, "");
        let current = |doc: &str| {
            let row = Row::doc(doc).params(json!({"title":"New"}));
            evaluate_row(&s.targets[0], &row.input(), Some(("doc", "/product_name"))).current
        };
        assert_eq!(current(r#"{"product_name":"Old"}"#).as_deref(), Some("Old"));
        assert_eq!(current("{}").as_deref(), Some("(absent)"));
    }

    #[test]
    fn a_float_literal_already_held_in_another_notation_is_unchanged() {
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\npath = \"/small\"\nvalue = 1.5e-7\n\
             [[targets.rules]]\nop = \"set\"\npath = \"/big\"\nvalue = 1e20\n\
             [[targets.rules]]\nop = \"set\"\npath = \"/m\"\nvalue = { one = 1.0, zero = -0.0 }\n",
            "",
        );
        // As jsonb gives back what a run wrote.
        let stored =
            r#"{"small": 0.00000015, "big": 100000000000000000000, "m": {"zero": 0, "one": 1}}"#;
        assert_eq!(
            run(&s, &[("doc", Some(stored))], json!({})),
            RowOutcome::Unchanged
        );
        // A different value is still a change, and the other numbers keep
        // their text.
        let other = r#"{"small":1.6e-7,"big":100000000000000000000,"m":{"zero":0,"one":1}}"#;
        assert_eq!(
            run(&s, &[("doc", Some(other))], json!({})),
            RowOutcome::Changed(BTreeMap::from([(
                "doc".into(),
                Some(other.replace("1.6e-7", "1.5e-7"))
            )]))
        );
        // No rounding through f64: 0.1 and 0.1000000000000000055 differ.
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\npath = \"/x\"\nvalue = 0.1\n",
            "",
        );
        assert!(matches!(
            run(
                &s,
                &[("doc", Some(r#"{"x":0.1000000000000000055}"#))],
                json!({})
            ),
            RowOutcome::Changed(_)
        ));
        assert_eq!(
            run(&s, &[("doc", Some(r#"{"x":1.0e-1}"#))], json!({})),
            RowOutcome::Unchanged
        );
    }

    #[test]
    fn revert_recognises_what_the_run_wrote_in_the_databases_notation() {
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\npath = \"/small\"\nvalue = 1.5e-7\n",
            "",
        );
        let at = |now: &str, before: Option<&str>| {
            let before = doc_image(BeforeImage::Value(before.map(str::to_string)));
            evaluate_revert(
                &s.targets[0],
                &Row::doc(now).input(),
                Some(&before),
                None,
                None,
            )
            .outcome
        };
        // The run wrote {"small":1.5e-7} over NULL; jsonb reads it back normalised.
        assert_eq!(
            at(r#"{"small": 0.00000015}"#, None),
            RowOutcome::Changed([("doc".to_string(), None)].into())
        );
        // Already restored, in another notation: unchanged.
        assert_eq!(
            at(r#"{"small": 2.50}"#, Some(r#"{"small":2.5}"#)),
            RowOutcome::Unchanged
        );
        // An inverse patch that holds by value: already restored.
        let befores = doc_image(BeforeImage::Patch {
            patch: r#"[{"op":"replace","path":"/small","value":1e-3}]"#.into(),
            after_version: "7".into(),
        });
        let out = evaluate_revert(
            &s.targets[0],
            &Row::doc(r#"{"small": 0.001}"#).input(),
            Some(&befores),
            Some("8"),
            None,
        )
        .outcome;
        assert_eq!(out, RowOutcome::Unchanged);
    }

    #[test]
    fn unchanged_when_only_json_whitespace_differs() {
        let s = spec(SET_TITLE, "");
        let out = run(
            &s,
            &[("doc", Some("{ \"product_name\" :  \"New\" }"))],
            json!({"title":"New"}),
        );
        assert_eq!(out, RowOutcome::Unchanged);
    }

    fn run_with(spec: &JobSpec, doc: &str, normalised: &[&str]) -> RowOutcome {
        let row = Row::doc(doc)
            .params(json!({"title": "New"}))
            .normalised(normalised);
        evaluate_row(&spec.targets[0], &row.input(), None).outcome
    }

    #[test]
    fn a_column_keeping_its_text_keeps_the_untouched_bytes_and_jsonb_is_compact() {
        let s = spec(SET_TITLE, "");
        let doc = "{\n  \"product_name\": \"Old\",\n  \"n\": 1e400,\n  \"s\": \"\\u00e9\"\n}";
        assert_eq!(
            run_with(&s, doc, &[]),
            RowOutcome::Changed(BTreeMap::from([(
                "doc".into(),
                Some(doc.replace("\"Old\"", "\"New\""))
            )]))
        );
        assert_eq!(
            run_with(&s, doc, &["doc"]),
            RowOutcome::Changed(BTreeMap::from([(
                "doc".into(),
                Some(r#"{"product_name":"New","n":1e+400,"s":"é"}"#.into())
            )]))
        );
    }

    #[test]
    fn a_change_under_a_duplicated_key_is_a_row_error_not_a_rewrite() {
        let s = spec(SET_TITLE, "");
        let out = run_with(&s, r#"{"product_name": "A", "product_name": "Old"}"#, &[]);
        let RowOutcome::Error(msg) = out else {
            panic!("{out:?}")
        };
        assert!(
            msg.contains("more than once") && msg.contains("left unchanged"),
            "{msg}"
        );
    }

    #[test]
    fn a_document_deeper_than_serde_json_reads_is_a_named_row_error() {
        let s = spec(SET_TITLE, "");
        let deep = format!("{{\"a\": {}{}}}", "[".repeat(200), "]".repeat(200));
        for normalised in [&[][..], &["doc"][..]] {
            let RowOutcome::Error(msg) = run_with(&s, &deep, normalised) else {
                panic!("a 200-deep document is an error")
            };
            assert!(
                msg.contains("nests 201 levels deep")
                    && msg.contains("serde_json's 128")
                    && msg.contains("left unchanged"),
                "{msg}"
            );
        }
        // A rule that would write a document deeper than that is refused
        // too: a 126-deep value copied three levels down.
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\npath = \"/b/c/d\"\nfrom = \"/a\"\n",
            "",
        );
        let doc = format!("{{\"a\": {}{}}}", "[".repeat(126), "]".repeat(126));
        let RowOutcome::Error(msg) = run_with(&s, &doc, &[]) else {
            panic!("a 129-deep new document is an error")
        };
        assert!(msg.contains("would nest deeper"), "{msg}");
    }

    /// The undo log (columns the database normalises) and the copy of the
    /// documents (columns keeping their text) decide the same outcome, and
    /// each inverse patch gives back the document as read.
    #[test]
    fn the_undo_log_and_the_copy_agree() {
        let rules = [
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/title\"\nparam = \"title\"",
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/meta/a/b\"\nvalue = 1\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"remove\"\npath = \"/old\"",
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/meta/a\"\nvalue = 2\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/meta\"\nvalue = {a = 2}",
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/l/1\"\nvalue = 9\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"remove\"\npath = \"/l/0\"",
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/l/3\"\nvalue = 4\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/title\"\nvalue = \"x\"",
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/n\"\nvalue = 1.5e-7",
        ];
        let docs = [
            r#"{"title":"Old","old":1,"l":[1,2,3],"n":0.00000015}"#,
            r#"{"title":"New","meta":{"a":2},"l":[9],"n":1.5e-7}"#,
            r#"{"meta":null,"l":[1,9,3]}"#,
            r#"null"#,
            r#"{"title":"x","l":[2,9,3,4],"meta":{"a":{"b":1}}}"#,
        ];
        for r in rules {
            let s = spec(r, "");
            for d in docs {
                let eval = |normalised: &[&str]| {
                    let row = Row::doc(d)
                        .params(json!({"title": "New"}))
                        .normalised(normalised);
                    evaluate_row(&s.targets[0], &row.input(), None)
                };
                let logged = eval(&["doc"]);
                let copied = eval(&[]);
                if let RowOutcome::Error(_) = copied.outcome {
                    assert_eq!(logged.outcome, copied.outcome, "{r} on {d}");
                    continue;
                }
                let parsed = |e: &RowEvaluation| match &e.outcome {
                    RowOutcome::Changed(c) => {
                        Some(serde_json::from_str::<Value>(c["doc"].as_deref().unwrap()).unwrap())
                    }
                    RowOutcome::Unchanged => None,
                    other => panic!("{r} on {d}: {other:?}"),
                };
                let (new_logged, new_copied) = (parsed(&logged), parsed(&copied));
                assert_eq!(new_logged, new_copied, "{r} on {d}");
                if let Some(mut back) = new_logged {
                    let patch: json_patch::Patch =
                        serde_json::from_str(&logged.undo["doc"]).unwrap();
                    json_patch::patch(&mut back, &patch).unwrap();
                    let read: Value = serde_json::from_str(d).unwrap();
                    assert!(same_value(&back, &read), "{r} on {d}: {back} is not {read}");
                }
            }
        }
    }
}

/// The rule language beyond `set` and `remove`: rename, copy, jq,
/// selectors and conditions.
#[cfg(test)]
mod language_tests {
    use super::*;
    use crate::spec::JobSpec;
    use crate::testing::{rows_spec, Row};

    /// The target also reads the column `other`.
    const READ_OTHER: &str = "read_columns = [\"other\"]";

    fn spec(rules: &str) -> JobSpec {
        match JobSpec::parse(&rows_spec(READ_OTHER, rules)) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    fn spec_err(rules: &str) -> crate::spec::SpecError {
        JobSpec::parse(&rows_spec(READ_OTHER, rules)).expect_err("the spec is refused")
    }

    /// Evaluates the rules on `doc` (the read-only column `other` holds
    /// `{"t":"from other"}`) as a text column and as a jsonb column; both
    /// must agree. A change comes back as its new text, after checking that
    /// the inverse patch restores the document read.
    fn eval(s: &JobSpec, doc: &str) -> Result<Option<String>, String> {
        let at = |normalised: &[&str]| {
            let row = Row::with(&[("doc", Some(doc)), ("other", Some(r#"{"t":"from other"}"#))])
                .normalised(normalised);
            evaluate_row(&s.targets[0], &row.input(), None)
        };
        let text = at(&[]);
        let jsonb = at(&["doc"]);
        match (&text.outcome, &jsonb.outcome) {
            (RowOutcome::Unchanged, RowOutcome::Unchanged) => Ok(None),
            (RowOutcome::Error(a), RowOutcome::Error(b)) => {
                assert_eq!(a, b);
                Err(a.clone())
            }
            (RowOutcome::Changed(a), RowOutcome::Changed(b)) => {
                let new = a["doc"].clone().expect("a document");
                let parsed = |t: &str| serde_json::from_str::<Value>(t).expect("JSON");
                let other = b["doc"].as_deref().expect("a document");
                assert!(same_value(&parsed(&new), &parsed(other)), "{new} / {other}");
                for ev in [&text, &jsonb] {
                    let mut back = parsed(&new);
                    let patch: json_patch::Patch =
                        serde_json::from_str(&ev.undo["doc"]).expect("a patch");
                    json_patch::patch(&mut back, &patch).expect("the patch applies");
                    assert!(same_value(&back, &parsed(doc)), "undo gives {back}");
                }
                Ok(Some(new))
            }
            (a, b) => panic!("text column: {a:?}, jsonb column: {b:?}"),
        }
    }

    /// The new text of `doc`, and checks that the rules leave it alone.
    fn converges(s: &JobSpec, doc: &str) -> String {
        let new = eval(s, doc)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| doc.to_string());
        assert_eq!(eval(s, &new), Ok(None), "the rules applied to {new} again");
        new
    }

    const RENAME: &str =
        "[[targets.rules]]\nop = \"rename\"\npath = \"/institute_text\"\nto = \"institution_text\"\n";

    #[test]
    fn rename_moves_the_key_in_place_and_is_idempotent() {
        let s = spec(RENAME);
        assert_eq!(
            converges(&s, r#"{"a":1,"institute_text":"MIT","z":[2]}"#),
            r#"{"a":1,"institution_text":"MIT","z":[2]}"#,
            "the renamed key keeps its place"
        );
        // Already renamed, or never there: unchanged, not an error.
        assert_eq!(eval(&s, r#"{"institution_text":"MIT"}"#), Ok(None));
        assert_eq!(eval(&s, r#"{"a":1}"#), Ok(None));
        assert_eq!(eval(&s, "null"), Ok(None));
        // A null value is a value: it moves.
        assert_eq!(
            converges(&s, r#"{"institute_text":null}"#),
            r#"{"institution_text":null}"#
        );
    }

    #[test]
    fn rename_with_both_keys_present_follows_on_both() {
        let both = r#"{"institute_text":"old","b":0,"institution_text":"new"}"#;
        let err = eval(&spec(RENAME), both).unwrap_err();
        assert!(
            err.contains("/institute_text")
                && err.contains("/institution_text")
                && err.contains("on_both"),
            "{err}"
        );
        let keep = spec(&format!("{RENAME}on_both = \"keep_new\"\n"));
        assert_eq!(
            converges(&keep, both),
            r#"{"b":0,"institution_text":"new"}"#
        );
        let over = spec(&format!("{RENAME}on_both = \"overwrite\"\n"));
        assert_eq!(
            converges(&over, both),
            r#"{"b":0,"institution_text":"old"}"#
        );
    }

    #[test]
    fn rename_nested_and_of_an_array_element() {
        let s = spec("[[targets.rules]]\nop = \"rename\"\npath = \"/m/a~1b\"\nto = \"c/d\"\n");
        assert_eq!(
            converges(&s, r#"{"m":{"a/b":1,"x":2}}"#),
            r#"{"m":{"c/d":1,"x":2}}"#,
            "`to` is a key name taken literally"
        );
        let s = spec("[[targets.rules]]\nop = \"rename\"\npath = \"/l/0\"\nto = \"x\"\n");
        assert!(eval(&s, r#"{"l":[1]}"#)
            .unwrap_err()
            .contains("array element"));
        assert_eq!(eval(&s, r#"{"l":[]}"#), Ok(None));
        assert_eq!(eval(&s, r#"{"l":"text"}"#), Ok(None));
    }

    #[test]
    fn copy_writes_the_source_and_skips_an_absent_one() {
        let s = spec("[[targets.rules]]\nop = \"copy\"\npath = \"/b/c\"\nfrom = \"/a\"\n");
        assert_eq!(
            converges(&s, r#"{"a":{"x":[1]}}"#),
            r#"{"a":{"x":[1]},"b":{"c":{"x":[1]}}}"#
        );
        assert_eq!(eval(&s, r#"{"z":1}"#), Ok(None), "no source: unchanged");
        assert_eq!(
            converges(&s, r#"{"a":null}"#),
            r#"{"a":null,"b":{"c":null}}"#,
            "a null source is copied"
        );
        let s = spec(
            "[[targets.rules]]\nop = \"copy\"\npath = \"/t\"\nfrom = \"/t\"\nfrom_column = \"other\"\n",
        );
        assert_eq!(converges(&s, "{}"), r#"{"t":"from other"}"#);
    }

    #[test]
    fn copy_then_remove_is_a_rename_that_verifies() {
        // `set from` is an error where the source is absent (a contract);
        // `copy` is not, so copy + remove can run again.
        let s = spec(
            "[[targets.rules]]\nop = \"copy\"\npath = \"/new\"\nfrom = \"/old\"\n[[targets.rules]]\nop = \"remove\"\npath = \"/old\"\n",
        );
        assert_eq!(converges(&s, r#"{"old":1}"#), r#"{"new":1}"#);
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\npath = \"/new\"\nfrom = \"/old\"\n[[targets.rules]]\nop = \"remove\"\npath = \"/old\"\n",
        );
        assert!(eval(&s, r#"{"new":1}"#).unwrap_err().contains("is absent"));
    }

    #[test]
    fn when_tells_null_from_absent() {
        let rule = |check: &str| {
            spec(&format!(
                "[[targets.rules]]\nop = \"set\"\npath = \"/flag\"\nvalue = true\nwhen = {{ path = \"/x\", check = \"{check}\" }}\n"
            ))
        };
        let (absent, null, zero) = (r#"{"a":1}"#, r#"{"x":null}"#, r#"{"x":0}"#);
        let applies = |check: &str, doc: &str| eval(&rule(check), doc).expect("no error").is_some();
        assert!(applies("absent", absent) && !applies("absent", null) && !applies("absent", zero));
        assert!(!applies("null", absent) && applies("null", null) && !applies("null", zero));
        assert!(!applies("exists", absent) && applies("exists", null) && applies("exists", zero));
        assert!(
            !applies("present", absent) && !applies("present", null) && applies("present", zero)
        );
        // Once applied, still idempotent.
        converges(&rule("null"), null);
    }

    #[test]
    fn when_equals_and_not_equals_and_lists_of_conditions() {
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\npath = \"/v\"\nvalue = 2\n[[targets.rules.when]]\npath = \"/kind\"\ncheck = \"equals\"\nvalue = \"a\"\n[[targets.rules.when]]\npath = \"/n\"\ncheck = \"not_equals\"\nvalue = 1\n",
        );
        assert_eq!(converges(&s, r#"{"kind":"a"}"#), r#"{"kind":"a","v":2}"#);
        assert_eq!(eval(&s, r#"{"kind":"b"}"#), Ok(None));
        assert_eq!(
            eval(&s, r#"{"kind":"a","n":1.0}"#),
            Ok(None),
            "1.0 equals 1"
        );
        assert!(eval(&s, r#"{"kind":"a","n":"1"}"#).unwrap().is_some());
    }

    #[test]
    fn selector_with_a_filter_over_array_elements() {
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\nselect = \"$.nodes[?@.type == 'x'].title\"\nvalue = \"T\"\n",
        );
        assert_eq!(
            converges(
                &s,
                r#"{"nodes":[{"type":"x","title":"a"},{"type":"y","title":"b"},{"type":"x"}]}"#
            ),
            r#"{"nodes":[{"type":"x","title":"T"},{"type":"y","title":"b"},{"type":"x"}]}"#,
            "only existing places are selected"
        );
        assert_eq!(eval(&s, r#"{"nodes":[]}"#), Ok(None));
        assert_eq!(eval(&s, r#"{"other":1}"#), Ok(None));
    }

    #[test]
    fn selected_parents_with_a_relative_path_add_a_key_under_every_element() {
        let s = spec(
            "[[targets.rules]]\nop = \"set\"\nselect = \"$.nodes[*]\"\npath = \"/flag\"\nvalue = false\nwhen = { path = \"/flag\", check = \"absent\" }\n",
        );
        assert_eq!(
            converges(&s, r#"{"nodes":[{"id":1},{"id":2,"flag":true},{"id":3}]}"#),
            r#"{"nodes":[{"id":1,"flag":false},{"id":2,"flag":true},{"id":3,"flag":false}]}"#
        );
    }

    #[test]
    fn wildcards_over_object_members() {
        let s = spec(
            "[[targets.rules]]\nop = \"rename\"\nselect = \"$.blocks.*\"\npath = \"/old\"\nto = \"new\"\n",
        );
        assert_eq!(
            converges(
                &s,
                r#"{"blocks":{"a":{"old":1,"k":0},"b":{"k":0},"c":{"old":3}}}"#
            ),
            r#"{"blocks":{"a":{"new":1,"k":0},"b":{"k":0},"c":{"new":3}}}"#
        );
    }

    #[test]
    fn selector_remove_of_several_array_elements_removes_the_right_ones() {
        let s = spec("[[targets.rules]]\nop = \"remove\"\nselect = \"$.l[?@.drop == true]\"\n");
        assert_eq!(
            converges(
                &s,
                r#"{"l":[{"drop":true,"i":0},{"i":1},{"drop":true,"i":2},{"drop":true,"i":3},{"i":4}]}"#
            ),
            r#"{"l":[{"i":1},{"i":4}]}"#
        );
    }

    #[test]
    fn selector_copy_reads_relative_to_each_place() {
        let s = spec(
            "[[targets.rules]]\nop = \"copy\"\nselect = \"$.nodes[*]\"\npath = \"/label\"\nfrom = \"/title\"\n",
        );
        assert_eq!(
            converges(&s, r#"{"nodes":[{"title":"a"},{"x":1}]}"#),
            r#"{"nodes":[{"title":"a","label":"a"},{"x":1}]}"#
        );
    }

    #[test]
    fn jq_replaces_the_value_at_each_place() {
        let s = spec(
            "[[targets.rules]]\nop = \"jq\"\nselect = \"$.nodes[*].title\"\nfilter = \"ascii_downcase\"\n",
        );
        assert_eq!(
            converges(&s, r#"{"nodes":[{"title":"A"},{"title":"b"},{"x":"C"}]}"#),
            r#"{"nodes":[{"title":"a"},{"title":"b"},{"x":"C"}]}"#
        );
        let s = spec(
            "[[targets.rules]]\nop = \"jq\"\npath = \"/tags\"\nfilter = \"map(select(. != null)) | unique\"\n",
        );
        assert_eq!(
            converges(&s, r#"{"tags":["b",null,"a","b"]}"#),
            r#"{"tags":["a","b"]}"#
        );
        assert_eq!(eval(&s, r#"{"x":1}"#), Ok(None), "no value: unchanged");
    }

    #[test]
    fn jq_without_exactly_one_output_or_failing_is_a_row_error_naming_the_key() {
        for (filter, says) in [
            ("empty", "no output"),
            (".[]", "more than one output"),
            (". + 1", "failed"),
        ] {
            let s = spec(&format!(
                "[[targets.rules]]\nop = \"jq\"\nselect = \"$.nodes[*].title\"\nfilter = \"{filter}\"\n"
            ));
            let err = eval(&s, r#"{"nodes":[{"title":["a","b"]}]}"#).unwrap_err();
            assert!(
                err.contains(says) && err.contains("/nodes/0/title"),
                "{filter}: {err}"
            );
        }
    }

    #[test]
    fn load_time_errors_name_the_field() {
        let field = |rules: &str| spec_err(rules).field;
        assert_eq!(
            field("[[targets.rules]]\nop = \"set\"\nselect = \"$.nodes[\"\nvalue = 1\n"),
            "targets[0].rules[0].select"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"jq\"\npath = \"/a\"\nfilter = \".a |\"\n"),
            "targets[0].rules[0].filter"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"jq\"\npath = \"/a\"\n"),
            "targets[0].rules[0].filter"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"rename\"\npath = \"/a\"\n"),
            "targets[0].rules[0].to"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"rename\"\npath = \"/a\"\nto = \"a\"\n"),
            "targets[0].rules[0].to"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"rename\"\npath = \"/a\"\nto = \"b\"\non_both = \"merge\"\n"),
            "targets[0].rules[0].on_both"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"set\"\npath = \"/a\"\nvalue = 1\nto = \"b\"\n"),
            "targets[0].rules[0].to"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"copy\"\npath = \"/a\"\n"),
            "targets[0].rules[0].from"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"copy\"\npath = \"/a\"\nfrom = \"/a\"\n"),
            "targets[0].rules[0].from"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"remove\"\n"),
            "targets[0].rules[0].path"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"remove\"\npath = \"/a\"\nwhen = { path = \"/a\", check = \"equals\" }\n"),
            "targets[0].rules[0].when.value"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"remove\"\npath = \"/a\"\n[[targets.rules.when]]\npath = \"/a\"\ncheck = \"exists\"\n[[targets.rules.when]]\npath = \"a\"\ncheck = \"exists\"\n"),
            "targets[0].rules[0].when[1].path"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"remove\"\npath = \"/a\"\nwhen = { path = \"/a\", check = \"is\" }\n"),
            "targets[0].rules[0].when.check"
        );
        assert_eq!(
            field("[[targets.rules]]\nop = \"remove\"\npath = \"/a\"\nwhen = { path = \"/a\", check = \"null\", value = 1 }\n"),
            "targets[0].rules[0].when.value"
        );
        let e = spec_err("[[targets.rules]]\nop = \"remove\"\npath = \"/a\"\nwhen = { path = \"/a\", chek = \"null\" }\n");
        assert_eq!(e.field, "targets[0].rules[0].when", "{e}");
        assert_eq!(
            field("[[targets.guards]]\npath = \"/a\"\ncheck = \"equals\"\n[[targets.rules]]\nop = \"remove\"\npath = \"/a\"\n"),
            "targets[0].guards[0].value"
        );
    }

    #[test]
    fn selectors_and_filters_are_capped() {
        let long = format!("$.a{}", ".b".repeat(3000));
        let e = spec_err(&format!(
            "[[targets.rules]]\nop = \"remove\"\nselect = \"{long}\"\n"
        ));
        assert_eq!(e.field, "targets[0].rules[0].select");
        assert!(e.message.contains("4096"), "{e}");
        let long = ". ".repeat(40_000);
        let e = spec_err(&format!(
            "[[targets.rules]]\nop = \"jq\"\npath = \"/a\"\nfilter = \"{long}\"\n"
        ));
        assert_eq!(e.field, "targets[0].rules[0].filter");
        assert!(e.message.contains("65536"), "{e}");
    }

    #[test]
    fn row_guards_take_the_new_checks() {
        let s = spec(
            "[[targets.guards]]\npath = \"/kind\"\ncheck = \"equals\"\nvalue = \"cert\"\n[[targets.guards]]\npath = \"/done\"\ncheck = \"absent\"\n[[targets.rules]]\nop = \"set\"\npath = \"/v\"\nvalue = 1\n",
        );
        let outcome = |doc: &str| {
            let row = Row::with(&[("doc", Some(doc)), ("other", None)]);
            evaluate_row(&s.targets[0], &row.input(), None).outcome
        };
        assert!(matches!(
            outcome(r#"{"kind":"cert"}"#),
            RowOutcome::Changed(_)
        ));
        assert_eq!(
            outcome(r#"{"kind":"page"}"#),
            RowOutcome::Skipped("doc/kind is not \"cert\"".into())
        );
        assert_eq!(
            outcome(r#"{"kind":"cert","done":null}"#),
            RowOutcome::Skipped("doc/done present".into())
        );
    }
}
