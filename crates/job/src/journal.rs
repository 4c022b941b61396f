//! The undo log of one row's evaluation: what each rule found where it
//! wrote, so that a row is evaluated without a second copy of its
//! documents.
//!
//! Deciding whether a row changed, and the inverse patch a commit keeps as
//! its before-image, both need the documents as they were read. Holding a
//! copy of them doubles the memory a large document costs while its rules
//! run. Instead, before each rule writes, the log records its *touch
//! point* — the one place in the document the rule changes: the rule's
//! path, or the first parent it creates (a missing or null one), or the
//! whole document when that is null — with the value found there. A rule
//! changes nothing outside that subtree, so undoing the entries in reverse
//! order gives back the documents as read, exactly.
//!
//! When every touch point of a column lies under an object key and none is
//! another's ancestor (the usual case: rules on distinct fields), each
//! entry's value is the original one, and the column changed exactly when
//! some touch point now holds another value. Otherwise the column's
//! original is rebuilt from the log (one copy, for that column only).

use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation, ReplaceOperation};
use serde_json::Value;

use crate::equality::same_value;
use crate::rules::{Op, Rule};

/// One rule's touch point in one column and what stood there before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub column: String,
    /// A JSON Pointer ("" for the whole document).
    pub path: String,
    /// The value found there (`None`: absent).
    pub old: Option<Value>,
    /// The rule was a `remove`: undoing it adds `old` back (in an array,
    /// inserts it where it was), where undoing a `set` replaces.
    pub removed: bool,
}

/// Where `rule` will write in `doc`, as `set` and `remove` do; `None` when
/// that cannot be told from the pointer alone (an array's `-`), and the
/// caller keeps a copy of the documents instead. So it is, too, for a rule
/// with a selector or conditions (it writes at places known only once it
/// runs, or perhaps nowhere) and for `rename`, `copy` and `jq`: the copy
/// is always right, and these rules are rare enough not to need the log.
pub fn touch_point(doc: &Value, rule: &Rule) -> Option<String> {
    if rule.select.is_some() || !rule.when.is_empty() {
        return None;
    }
    let path = match &rule.op {
        Op::Set { path, .. } | Op::Remove { path } => path,
        Op::Rename { .. } | Op::Copy { .. } | Op::Jq { .. } => return None,
        // Where these write is only known by comparing documents.
        Op::Stream { .. } | Op::InString { .. } => return None,
    };
    if path.split('/').any(|t| t == "-") {
        return None;
    }
    if let Op::Remove { .. } = rule.op {
        return Some(path.clone());
    }
    if path.is_empty() || doc.is_null() {
        return Some(String::new());
    }
    // `set` creates each missing parent, and replaces a null one, with an
    // empty object: the first such parent is where the document changes.
    let tokens: Vec<&str> = path[1..].split('/').collect();
    let mut prefix = String::new();
    for tok in &tokens[..tokens.len() - 1] {
        prefix.push('/');
        prefix.push_str(tok);
        match doc.pointer(&prefix) {
            None | Some(Value::Null) => return Some(prefix),
            Some(_) => {}
        }
    }
    Some(path.clone())
}

/// The log of one row.
#[derive(Debug, Default)]
pub struct Journal {
    entries: Vec<Entry>,
}

impl Journal {
    /// Records what stands at `path` (from [`touch_point`]) of `doc`
    /// before `rule` writes there.
    pub fn record(&mut self, rule: &Rule, doc: &Value, path: String) {
        let old = doc.pointer(&path).cloned();
        self.entries.push(Entry {
            column: rule.column.clone(),
            path,
            old,
            removed: matches!(rule.op, Op::Remove { .. }),
        });
    }

    fn of<'a>(&'a self, column: &'a str) -> impl DoubleEndedIterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.column == column)
    }

    /// The operations that undo the column's entries, last first.
    fn undo_ops(&self, column: &str) -> Result<Vec<PatchOperation>, String> {
        let mut ops = Vec::new();
        for e in self.of(column).rev() {
            let path = json_patch::jsonptr::PointerBuf::parse(e.path.as_str())
                .map_err(|err| format!("bad pointer `{}`: {err}", e.path))?;
            ops.push(match &e.old {
                None => PatchOperation::Remove(RemoveOperation { path }),
                Some(v) if e.removed => PatchOperation::Add(AddOperation {
                    path,
                    value: v.clone(),
                }),
                Some(v) => PatchOperation::Replace(ReplaceOperation {
                    path,
                    value: v.clone(),
                }),
            });
        }
        Ok(ops)
    }

    /// Whether the column's touch points are disjoint object members (no
    /// one under another, none in an array, not the whole document).
    fn simple(&self, column: &str, doc: &Value) -> bool {
        let paths: Vec<&str> = self.of(column).map(|e| e.path.as_str()).collect();
        for (i, p) in paths.iter().enumerate() {
            if p.is_empty() {
                return false;
            }
            let parent = &p[..p.rfind('/').unwrap_or(0)];
            if !matches!(doc.pointer(parent), Some(Value::Object(_))) {
                return false;
            }
            for q in &paths[i + 1..] {
                let under = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
                if under(p, q) || under(q, p) {
                    return false;
                }
            }
        }
        true
    }

    /// What the rules did to `column`, whose document is now `now`:
    /// `None` when it holds what was read, else the inverse patch (JSON
    /// text) that turns `now` back into it.
    pub fn inverse(&self, column: &str, now: &Value) -> Result<Option<String>, String> {
        if self.of(column).next().is_none() {
            return Ok(None);
        }
        if self.simple(column, now) {
            let changed = self
                .of(column)
                .any(|e| match (&e.old, now.pointer(&e.path)) {
                    (None, None) => false,
                    (Some(a), Some(b)) => !same_value(a, b),
                    _ => true,
                });
            if !changed {
                return Ok(None);
            }
            // Only what changed, so the patch stays as small as the change.
            let mut ops = Vec::new();
            for e in self.of(column).rev() {
                let now_there = now.pointer(&e.path);
                let path = json_patch::jsonptr::PointerBuf::parse(e.path.as_str())
                    .map_err(|err| format!("bad pointer `{}`: {err}", e.path))?;
                match (&e.old, now_there) {
                    (None, None) => {}
                    (Some(a), Some(b)) if same_value(a, b) => {}
                    (None, Some(_)) => ops.push(PatchOperation::Remove(RemoveOperation { path })),
                    (Some(v), Some(_)) => ops.push(PatchOperation::Replace(ReplaceOperation {
                        path,
                        value: v.clone(),
                    })),
                    (Some(v), None) => ops.push(PatchOperation::Add(AddOperation {
                        path,
                        value: v.clone(),
                    })),
                }
            }
            return serde_json::to_string(&Patch(ops))
                .map(Some)
                .map_err(|e| e.to_string());
        }
        let before = self.original(column, now)?;
        if same_value(&before, now) {
            return Ok(None);
        }
        serde_json::to_string(&json_patch::diff(now, &before))
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// The column's document as read, rebuilt from `now` by undoing the
    /// entries, last first.
    pub fn original(&self, column: &str, now: &Value) -> Result<Value, String> {
        let mut doc = now.clone();
        for op in self.undo_ops(column)? {
            let step = match op {
                // A rule that found nothing and made nothing (a `remove`
                // of an absent path): nothing to undo.
                PatchOperation::Remove(r) if doc.pointer(r.path.as_str()).is_none() => continue,
                PatchOperation::Replace(r) if r.path.is_root() => {
                    doc = r.value;
                    continue;
                }
                op => op,
            };
            json_patch::patch(&mut doc, &Patch(vec![step]))
                .map_err(|e| format!("cannot undo a rule: {e}"))?;
        }
        Ok(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{remove, set, ValueSource};
    use serde_json::json;

    fn rule_set(path: &str) -> Rule {
        Rule {
            column: "c".into(),
            op: Op::Set {
                path: path.into(),
                value: ValueSource::Literal(json!(1)),
            },
            select: None,
            when: Vec::new(),
        }
    }

    fn rule_remove(path: &str) -> Rule {
        Rule {
            column: "c".into(),
            op: Op::Remove { path: path.into() },
            select: None,
            when: Vec::new(),
        }
    }

    /// Applies the rules while logging them; returns the journal.
    fn run(doc: &mut Value, rules: &[(Rule, Value)]) -> Journal {
        let mut j = Journal::default();
        for (r, v) in rules {
            let at = touch_point(doc, r).expect("a touch point");
            j.record(r, doc, at);
            match &r.op {
                Op::Set { path, .. } => set(doc, path, v.clone()).unwrap(),
                Op::Remove { path } => remove(doc, path).unwrap(),
                other => panic!("no touch point for {other:?}"),
            }
        }
        j
    }

    fn undo(j: &Journal, now: &Value) -> Value {
        let patch: Patch = serde_json::from_str(&j.inverse("c", now).unwrap().unwrap()).unwrap();
        let mut back = now.clone();
        json_patch::patch(&mut back, &patch).unwrap();
        back
    }

    #[test]
    fn touch_points_are_the_first_created_parent() {
        let doc = json!({"a": {"b": 1}, "n": null});
        assert_eq!(touch_point(&doc, &rule_set("/a/b")).unwrap(), "/a/b");
        assert_eq!(touch_point(&doc, &rule_set("/x/y/z")).unwrap(), "/x");
        assert_eq!(touch_point(&doc, &rule_set("/n/y")).unwrap(), "/n");
        assert_eq!(touch_point(&doc, &rule_set("")).unwrap(), "");
        assert_eq!(touch_point(&Value::Null, &rule_set("/a")).unwrap(), "");
        assert_eq!(touch_point(&doc, &rule_remove("/a/b")).unwrap(), "/a/b");
        assert!(touch_point(&json!({"l": []}), &rule_set("/l/-")).is_none());
    }

    #[test]
    fn simple_rules_find_the_change_and_undo_it() {
        let original = json!({"title": "old", "keep": [1, 2], "gone": {"x": 1}});
        let mut doc = original.clone();
        let j = run(
            &mut doc,
            &[
                (rule_set("/title"), json!("new")),
                (rule_set("/meta/added"), json!(true)),
                (rule_remove("/gone"), Value::Null),
                (rule_remove("/never"), Value::Null),
            ],
        );
        assert_ne!(doc, original);
        assert_eq!(undo(&j, &doc), original);
        assert!(j.simple("c", &doc));
    }

    #[test]
    fn rules_already_applied_change_nothing() {
        let mut doc = json!({"title": "new", "n": 1.5e-7});
        let j = run(
            &mut doc,
            &[
                (rule_set("/title"), json!("new")),
                (rule_set("/n"), serde_json::from_str("0.00000015").unwrap()),
                (rule_remove("/absent"), Value::Null),
            ],
        );
        assert_eq!(j.inverse("c", &doc).unwrap(), None);
    }

    #[test]
    fn overlapping_rules_are_undone_through_the_rebuilt_original() {
        let original = json!({"a": {"b": 1, "c": 2}, "l": [1, 2, 3]});
        let mut doc = original.clone();
        let j = run(
            &mut doc,
            &[
                (rule_set("/a/b"), json!(5)),
                (rule_set("/a"), json!({"z": 1})),
                (rule_remove("/l/0"), Value::Null),
                (rule_set("/new/deep"), json!(1)),
                (rule_set("/new/other"), json!(2)),
            ],
        );
        assert!(!j.simple("c", &doc));
        assert_eq!(j.original("c", &doc).unwrap(), original);
        assert_eq!(undo(&j, &doc), original);
        // Set and set back: no change, though the entries overlap.
        let mut same = original.clone();
        let j = run(
            &mut same,
            &[(rule_set("/a/b"), json!(9)), (rule_set("/a/b"), json!(1))],
        );
        assert_eq!(same, original);
        assert_eq!(j.inverse("c", &same).unwrap(), None);
    }

    #[test]
    fn a_null_document_or_the_whole_document_is_undone() {
        let mut doc = Value::Null;
        let j = run(&mut doc, &[(rule_set("/a/b"), json!(1))]);
        assert_eq!(doc, json!({"a": {"b": 1}}));
        assert_eq!(j.original("c", &doc).unwrap(), Value::Null);
        let original = json!({"x": 1});
        let mut doc = original.clone();
        let j = run(&mut doc, &[(rule_set(""), json!([1]))]);
        assert_eq!(j.original("c", &doc).unwrap(), original);
        assert_eq!(undo(&j, &doc), original);
    }
}
