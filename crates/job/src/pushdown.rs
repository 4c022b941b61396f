//! Rules the database can apply itself: which targets qualify
//! ([`plan`]), the edits a dialect turns into one statement per batch
//! ([`Pushdown`]), and what a shard counts from the small rows that
//! statement returns ([`pushed_tally`]). No SQL here: the PostgreSQL store
//! writes its own from the plan.
//!
//! A target is pushed down when every rule is a `set` (from a literal, a
//! group parameter or a pointer into a row's document), a `copy`, a
//! `remove` or a `rename`, at a fixed non-empty path, with no selector, on
//! `jsonb` columns, the paths the rules write do not overlap, no rule (nor
//! a `when` condition) reads what another writes, and no condition tests a
//! string's blankness or prefix. Everything else keeps the
//! read-rewrite-write path.
//!
//! Row by row, the statement applies the edits only where they mean what
//! the job's own evaluation means: every row guard passes, the document is
//! an object or NULL (a `set` makes it an object), each parent of a `set`
//! is an object, JSON null or absent (the job creates the missing ones as
//! objects), a `remove`'s or `rename`'s parent is an object or the value
//! is absent, a `rename` whose `on_both` is `error` does not find both
//! keys, the parents two edits share are objects, and every value a `set`
//! writes is there (a `copy` without its source changes nothing). Any
//! other row (one a guard skips, or whose string a `not_blank` or
//! `not_prefix` guard reads, Unicode's whitespace being the job's to tell;
//! a document that is an array, a parent that is a string, a missing
//! parameter or source, a rename the job reports as an error) is handed
//! back and goes through the read-rewrite-write path in the same
//! transaction, so both paths give each row the same outcome.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::edit::unescape_token;
use crate::guards::Check;
use crate::rule::{OnBoth, Op, ValueSource};
use crate::rules::display_value;
use crate::shard::ROW_GONE;
use crate::spec::TargetSpec;
use crate::tally::{PathChange, Recorded, CONFLICT_EDITED};
use crate::{Mode, Tally};

/// A JSON Pointer, as written and as its unescaped tokens (what
/// PostgreSQL's `#>`, `#-` and `jsonb_set` take as a `text[]` path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    pub text: String,
    pub tokens: Vec<String>,
}

impl Pointer {
    pub fn parse(text: &str) -> Pointer {
        let tokens = if text.is_empty() {
            Vec::new()
        } else {
            text[1..].split('/').map(unescape_token).collect()
        };
        Pointer {
            text: text.to_string(),
            tokens,
        }
    }

    /// The paths of each parent, outermost first (not the document itself).
    pub fn parents(&self) -> Vec<Vec<String>> {
        (1..self.tokens.len())
            .map(|n| self.tokens[..n].to_vec())
            .collect()
    }

    /// The parent's path (empty: the document).
    pub fn parent(&self) -> Vec<String> {
        self.tokens[..self.tokens.len().saturating_sub(1)].to_vec()
    }

    /// The pointer to the first `n` tokens.
    pub fn prefix(&self, n: usize) -> Pointer {
        Pointer::from_tokens(self.tokens[..n.min(self.tokens.len())].to_vec())
    }

    /// The pointer to the member `key` of this one's parent.
    pub fn sibling(&self, key: &str) -> Pointer {
        let mut tokens = self.parent();
        tokens.push(key.to_string());
        Pointer::from_tokens(tokens)
    }

    fn from_tokens(tokens: Vec<String>) -> Pointer {
        let text = tokens
            .iter()
            .map(|t| format!("/{}", t.replace('~', "~0").replace('/', "~1")))
            .collect();
        Pointer { text, tokens }
    }

    /// True when one path is the other or inside it.
    fn overlaps(&self, other: &Pointer) -> bool {
        let n = self.tokens.len().min(other.tokens.len());
        self.tokens[..n] == other.tokens[..n]
    }
}

/// Where a pushed-down `set` takes its value.
#[derive(Debug, Clone, PartialEq)]
pub enum PushedValue {
    Literal(Value),
    /// A parameter of the row's group.
    Param(String),
    /// A value inside a document of the row as it is at the write.
    Pointer {
        column: String,
        path: Pointer,
    },
}

/// One edit of a column.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// `if_there`: a `copy`, which changes nothing where its source is
    /// absent (a `set` hands such a row back: the job reports it).
    Set {
        path: Pointer,
        value: PushedValue,
        if_there: bool,
    },
    Remove {
        path: Pointer,
    },
    /// The member at `path` moved to `to`, a member of the same object.
    Rename {
        path: Pointer,
        to: Pointer,
        on_both: OnBoth,
    },
}

impl Edit {
    /// The path the edit reads and writes first (a rename's old key).
    pub fn path(&self) -> &Pointer {
        match self {
            Edit::Set { path, .. } | Edit::Remove { path } | Edit::Rename { path, .. } => path,
        }
    }

    /// Every path the edit writes.
    pub fn written(&self) -> Vec<&Pointer> {
        match self {
            Edit::Rename { path, to, .. } => vec![path, to],
            e => vec![e.path()],
        }
    }

    fn overlaps(&self, p: &Pointer) -> bool {
        self.written().iter().any(|w| w.overlaps(p))
    }
}

/// A written column's edits, in the rules' order.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedColumn {
    pub column: String,
    pub edits: Vec<Edit>,
    /// `when[k]`: the conditions under which `edits[k]` applies, checked
    /// on the column as read (no rule writes what a condition reads).
    pub when: Vec<Vec<(Pointer, Check)>>,
    /// The parents two edits share: a row is pushed down only where each
    /// is an object, so that each edit's effect, told from the row as
    /// read, is its own (a `set` creates only parents no other edit uses).
    pub shared: Vec<Pointer>,
}

/// A target's rules as edits the database applies itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Pushdown {
    pub columns: Vec<PushedColumn>,
    /// The report's current value: its column and path, read as the row
    /// stands before the edits.
    pub current: Option<(String, Pointer)>,
    /// The target's row guards (column, path, check): a row is pushed
    /// down only where every one passes.
    pub guards: Vec<(String, Pointer, Check)>,
}

impl Pushdown {
    /// Every group parameter the edits read, once each, in order.
    pub fn params(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for e in self.columns.iter().flat_map(|c| &c.edits) {
            if let Edit::Set {
                value: PushedValue::Param(p),
                ..
            } = e
            {
                if !out.contains(&p.as_str()) {
                    out.push(p);
                }
            }
        }
        out
    }

    /// Every column the statement reads: the written ones, those a value
    /// is taken from and the current value's.
    pub fn read_columns(&self) -> BTreeSet<&str> {
        let mut out: BTreeSet<&str> = self.columns.iter().map(|c| c.column.as_str()).collect();
        for e in self.columns.iter().flat_map(|c| &c.edits) {
            if let Edit::Set {
                value: PushedValue::Pointer { column, .. },
                ..
            } = e
            {
                out.insert(column);
            }
        }
        if let Some((c, _)) = &self.current {
            out.insert(c);
        }
        out.extend(self.guards.iter().map(|(c, _, _)| c.as_str()));
        out
    }
}

/// The target's rules as edits the database can apply, or why they are
/// applied by the job instead. `is_jsonb` tells a column's type.
pub fn plan(
    target: &TargetSpec,
    current: Option<(&str, &str)>,
    is_jsonb: impl Fn(&str) -> bool,
) -> Result<Pushdown, String> {
    // A row a guard would skip is handed back, and skipped by the job
    // with the guard's reason.
    let guards: Vec<(String, Pointer, Check)> = target
        .guards
        .iter()
        .map(|g| (g.column.clone(), Pointer::parse(&g.path), g.check.clone()))
        .collect();
    let mut columns: Vec<PushedColumn> = Vec::new();
    let mut sources: Vec<(usize, String, Pointer)> = Vec::new();
    for (i, rule) in target.rules.iter().enumerate() {
        if rule.select.is_some() {
            return Err(format!("rule {i} applies at selected places"));
        }
        let mut when = Vec::new();
        for c in &rule.when {
            if matches!(c.check, Check::NotBlank | Check::NotPrefix(_)) {
                // Which strings are blank is Unicode's whitespace to the
                // job and not to SQL's `btrim`.
                return Err(format!(
                    "rule {i} has a condition on a string's blankness or prefix"
                ));
            }
            let path = Pointer::parse(&c.path);
            sources.push((i, rule.column.clone(), path.clone()));
            when.push((path, c.check.clone()));
        }
        let edit = match &rule.op {
            Op::Set { path, value } if !path.is_empty() => Edit::Set {
                path: Pointer::parse(path),
                if_there: false,
                value: match value {
                    ValueSource::Literal(v) => PushedValue::Literal(v.clone()),
                    ValueSource::Param(p) => PushedValue::Param(p.clone()),
                    ValueSource::Pointer { column, path } => {
                        let path = Pointer::parse(path);
                        sources.push((i, column.clone(), path.clone()));
                        PushedValue::Pointer {
                            column: column.clone(),
                            path,
                        }
                    }
                },
            },
            Op::Copy { path, column, from } if !path.is_empty() => {
                let column = column.clone().unwrap_or_else(|| rule.column.clone());
                let from = Pointer::parse(from);
                sources.push((i, column.clone(), from.clone()));
                Edit::Set {
                    path: Pointer::parse(path),
                    value: PushedValue::Pointer { column, path: from },
                    if_there: true,
                }
            }
            Op::Remove { path } if !path.is_empty() => Edit::Remove {
                path: Pointer::parse(path),
            },
            Op::Rename { path, to, on_both } if !path.is_empty() => {
                let path = Pointer::parse(path);
                if path.tokens.last() == Some(to) {
                    return Err(format!("rule {i} renames a key to itself"));
                }
                Edit::Rename {
                    to: path.sibling(to),
                    path,
                    on_both: *on_both,
                }
            }
            _ => {
                return Err(format!(
                    "rule {i} is not a `set`, `copy`, `remove` or `rename` at a path"
                ))
            }
        };
        match columns.iter_mut().find(|c| c.column == rule.column) {
            Some(c) => {
                let clash = c.edits.iter().flat_map(Edit::written).find_map(|a| {
                    edit.written()
                        .into_iter()
                        .find(|b| a.overlaps(b))
                        .map(|b| (a, b))
                });
                if let Some((a, b)) = clash {
                    return Err(format!(
                        "rules touch overlapping paths ({} and {})",
                        a.text, b.text
                    ));
                }
                c.edits.push(edit);
                c.when.push(when);
            }
            None => columns.push(PushedColumn {
                column: rule.column.clone(),
                edits: vec![edit],
                when: vec![when],
                shared: Vec::new(),
            }),
        }
    }
    let pointers = columns
        .iter()
        .flat_map(|c| c.edits.iter().flat_map(Edit::written))
        .chain(sources.iter().map(|(_, _, p)| p))
        .chain(guards.iter().map(|(_, p, _)| p));
    for p in pointers {
        if let Some(t) = p.tokens.iter().find(|t| !index_as_sql_reads_it(t)) {
            return Err(format!(
                "`{}` holds `{t}`, which SQL would read as another array index",
                p.text
            ));
        }
    }
    for c in &mut columns {
        for (i, a) in c.edits.iter().enumerate() {
            for b in &c.edits[i + 1..] {
                let common = a
                    .path()
                    .tokens
                    .iter()
                    .zip(&b.path().tokens)
                    .take_while(|(x, y)| x == y)
                    .count();
                for n in 1..=common {
                    let p = a.path().prefix(n);
                    if !c.shared.contains(&p) {
                        c.shared.push(p);
                    }
                }
            }
        }
    }
    if columns.is_empty() {
        return Err("the target has no rules".into());
    }
    for (i, column, path) in &sources {
        if let Some(c) = columns.iter().find(|c| &c.column == column) {
            if c.edits.iter().any(|e| e.overlaps(path)) {
                return Err(format!("rule {i} reads a value the rules write"));
            }
        }
    }
    let current = current.map(|(c, p)| (c.to_string(), Pointer::parse(p)));
    let pushdown = Pushdown {
        columns,
        current,
        guards,
    };
    if let Some(c) = pushdown.read_columns().into_iter().find(|c| !is_jsonb(c)) {
        return Err(format!("column `{c}` is not jsonb"));
    }
    Ok(pushdown)
}

/// Whether PostgreSQL reads `token` as the job does: a token PostgreSQL
/// would take for an array index (`-1`, `01`, `+1`) that JSON Pointer
/// does not (or reads as another one) keeps the target on the job's path.
fn index_as_sql_reads_it(token: &str) -> bool {
    match token.trim().trim_start_matches('+').parse::<i64>() {
        Ok(n) => n >= 0 && n.to_string() == token,
        Err(_) => token != "-",
    }
}

/// What the database did with one row of a pushed-down batch.
#[derive(Debug, Clone, PartialEq)]
pub enum PushedState {
    /// The row no longer exists.
    Gone,
    /// Not in a shape the edits apply to as the job would: handed back to
    /// the read-rewrite-write path (and not counted here).
    Handed,
    Unchanged,
    /// The edits change it: `written` says whether a commit wrote it.
    Changed {
        written: bool,
        columns: Vec<PushedChange>,
    },
}

/// A changed column of a pushed-down row.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedChange {
    pub column: String,
    /// The changed paths, as JSON text: an array of `{path, before, after}`.
    pub changes: String,
    /// The column's size before and after, as the database stores them.
    pub before_bytes: u64,
    pub after_bytes: u64,
}

/// One row of a pushed-down batch, as the statement returned it.
#[derive(Debug, Clone, PartialEq)]
pub struct PushedRow {
    pub key: String,
    pub group: String,
    pub refs: u64,
    pub state: PushedState,
    /// The report's current value as JSON text (`None`: absent).
    pub current: Option<String>,
}

/// What a batch of pushed-down rows counts; handed rows are left to the
/// read-rewrite-write path, which counts them itself.
pub fn pushed_tally(target: &str, mode: Mode, rows: &[PushedRow], with_current: bool) -> Tally {
    let mut tally = Tally::default();
    for r in rows {
        let current = || {
            with_current.then(|| {
                let v = r
                    .current
                    .as_deref()
                    .map(|t| serde_json::from_str::<Value>(t).unwrap_or(Value::String(t.into())));
                display_value(v.as_ref())
            })
        };
        if r.state != PushedState::Handed {
            *tally.pushed_down.entry(target.to_string()).or_default() += 1;
        }
        match &r.state {
            PushedState::Handed => {}
            PushedState::Gone => tally.record_row(
                target,
                &r.group,
                &r.key,
                r.refs,
                Recorded::Skipped(ROW_GONE),
                None,
            ),
            PushedState::Unchanged => tally.record_row(
                target,
                &r.group,
                &r.key,
                r.refs,
                Recorded::Unchanged,
                current().as_deref(),
            ),
            PushedState::Changed { written, columns } => {
                let rec = if *written || !mode.is_commit() {
                    for c in columns {
                        let changes: Vec<PathChange> =
                            serde_json::from_str(&c.changes).unwrap_or_default();
                        tally.record_pushed(
                            &r.group,
                            &r.key,
                            &c.column,
                            c.before_bytes,
                            c.after_bytes,
                            changes,
                        );
                    }
                    Recorded::Changed
                } else {
                    Recorded::Conflict(CONFLICT_EDITED)
                };
                tally.record_row(target, &r.group, &r.key, r.refs, rec, current().as_deref());
            }
        }
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::JobSpec;
    use crate::testing::rows_spec;
    use serde_json::json;

    fn target(rules: &str) -> TargetSpec {
        let spec = JobSpec::parse(&rows_spec("", rules)).unwrap();
        spec.targets[0].clone()
    }

    fn jsonb(_: &str) -> bool {
        true
    }

    #[test]
    fn pointers_unescape_their_tokens_and_name_their_parents() {
        let p = Pointer::parse("/a~1b/c~0d/0");
        assert_eq!(p.tokens, ["a/b", "c~d", "0"]);
        assert_eq!(
            p.parents(),
            vec![vec!["a/b".to_string()], vec!["a/b".into(), "c~d".into()]]
        );
        assert_eq!(p.parent(), ["a/b", "c~d"]);
        assert_eq!(p.prefix(2), Pointer::parse("/a~1b/c~0d"));
        assert_eq!(p.prefix(0), Pointer::parse(""));
        assert!(Pointer::parse("/a").overlaps(&Pointer::parse("/a/b")));
        assert!(!Pointer::parse("/a").overlaps(&Pointer::parse("/ab")));
    }

    #[test]
    fn sets_and_removes_at_paths_are_pushed_down_in_order() {
        let t = target(
            r#"[[targets.rules]]
column = "doc"
op = "set"
path = "/title"
value = "New"

[[targets.rules]]
column = "doc"
op = "remove"
path = "/old/x"
"#,
        );
        let p = plan(&t, Some(("doc", "/title")), jsonb).unwrap();
        assert_eq!(p.columns.len(), 1);
        assert_eq!(
            p.columns[0].edits,
            vec![
                Edit::Set {
                    path: Pointer::parse("/title"),
                    value: PushedValue::Literal(json!("New")),
                    if_there: false,
                },
                Edit::Remove {
                    path: Pointer::parse("/old/x")
                }
            ]
        );
        assert!(p.params().is_empty());
        assert!(p.columns[0].shared.is_empty());
        let t = target(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a/b/x\"\nvalue = 1\n\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"remove\"\npath = \"/a/b/y\"\n",
        );
        let p = plan(&t, None, jsonb).unwrap();
        assert_eq!(
            p.columns[0].shared,
            vec![Pointer::parse("/a"), Pointer::parse("/a/b")],
            "the parents both edits use"
        );
        assert_eq!(p.read_columns().into_iter().collect::<Vec<_>>(), ["doc"]);
    }

    #[test]
    fn what_sql_cannot_say_as_the_job_means_it_keeps_the_job_path() {
        let why = |rules: &str| plan(&target(rules), None, jsonb).unwrap_err();
        assert!(why(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"jq\"\npath = \"/a\"\nfilter = \"ascii_downcase\"\n"
        )
        .contains("rule 0"));
        // A rename writes its new key too.
        assert!(why(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"rename\"\npath = \"/a/old\"\nto = \"new\"\n\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a/new/x\"\nvalue = 2\n"
        )
        .contains("overlapping paths (/a/new and /a/new/x)"));
        assert!(why(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"rename\"\npath = \"/a\"\nto = \"b\"\n\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"copy\"\npath = \"/c\"\nfrom = \"/b\"\n"
        )
        .contains("reads a value the rules write"));
        assert!(why(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a\"\nvalue = 1\n\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a/b\"\nvalue = 2\n"
        )
        .contains("overlapping"));
        assert!(why(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a\"\nvalue = 1\n\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/b\"\nfrom = \"/a/c\"\n"
        )
        .contains("reads a value the rules write"));
        let t =
            target("[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a\"\nvalue = 1\n");
        assert_eq!(
            plan(&t, None, |_| false).unwrap_err(),
            "column `doc` is not jsonb"
        );
    }

    #[test]
    fn renames_and_copies_are_pushed_down_as_the_paths_they_write() {
        let spec = rows_spec(
            r#"read_columns = ["extra"]"#,
            r#"[[targets.rules]]
column = "doc"
op = "rename"
path = "/meta/a~1b"
to = "c/d"
on_both = "keep_new"

[[targets.rules]]
column = "doc"
op = "copy"
path = "/copy"
from = "/src"

[[targets.rules]]
column = "doc"
op = "copy"
path = "/other"
from_column = "extra"
from = "/x"
"#,
        );
        let t = JobSpec::parse(&spec).unwrap().targets[0].clone();
        let p = plan(&t, None, jsonb).unwrap();
        let edits = &p.columns[0].edits;
        assert_eq!(
            edits[0],
            Edit::Rename {
                path: Pointer::parse("/meta/a~1b"),
                to: Pointer::parse("/meta/c~1d"),
                on_both: OnBoth::KeepNew,
            }
        );
        assert_eq!(
            edits[0].written(),
            [&Pointer::parse("/meta/a~1b"), &Pointer::parse("/meta/c~1d")]
        );
        assert_eq!(
            edits[1],
            Edit::Set {
                path: Pointer::parse("/copy"),
                value: PushedValue::Pointer {
                    column: "doc".into(),
                    path: Pointer::parse("/src")
                },
                if_there: true,
            },
            "a copy within the column reads it from its root"
        );
        assert!(matches!(
            &edits[2],
            Edit::Set { value: PushedValue::Pointer { column, .. }, if_there: true, .. } if column == "extra"
        ));
        assert_eq!(
            p.read_columns().into_iter().collect::<Vec<_>>(),
            ["doc", "extra"]
        );
    }

    #[test]
    fn conditions_go_with_their_rule_unless_a_rule_writes_what_they_read() {
        let p = plan(
            &target(
                r#"[[targets.rules]]
column = "doc"
op = "set"
path = "/a"
value = 1
when = [{ path = "/kind", check = "equals", value = "x" }, { path = "/b", check = "absent" }]

[[targets.rules]]
column = "doc"
op = "remove"
path = "/c"
"#,
            ),
            None,
            jsonb,
        )
        .unwrap();
        assert_eq!(
            p.columns[0].when,
            vec![
                vec![
                    (Pointer::parse("/kind"), Check::Equals(json!("x"))),
                    (Pointer::parse("/b"), Check::Absent)
                ],
                vec![]
            ]
        );
        let why = |rules: &str| plan(&target(rules), None, jsonb).unwrap_err();
        assert!(why(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a\"\nvalue = 1\nwhen = [{ path = \"/a\", check = \"present\" }]\n"
        )
        .contains("reads a value the rules write"));
        assert!(why(
            "[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a\"\nvalue = 1\nwhen = [{ path = \"/t\", check = \"not_blank\" }]\n"
        )
        .contains("blankness"));
    }

    #[test]
    fn row_guards_go_with_the_plan_and_their_columns_are_read() {
        let spec = rows_spec(
            r#"read_columns = ["extra"]"#,
            r#"[[targets.guards]]
column = "extra"
path = "/ready"
check = "not_blank"
reason = "not ready"

[[targets.rules]]
column = "doc"
op = "set"
path = "/ready"
value = 1
"#,
        );
        let t = JobSpec::parse(&spec).unwrap().targets[0].clone();
        let p = plan(&t, None, jsonb).unwrap();
        assert_eq!(
            p.guards,
            vec![(
                "extra".to_string(),
                Pointer::parse("/ready"),
                Check::NotBlank
            )]
        );
        assert_eq!(
            p.read_columns().into_iter().collect::<Vec<_>>(),
            ["doc", "extra"]
        );
        // A guard reads the row before the rules: it may read what they write.
        let spec = rows_spec(
            "",
            "[[targets.guards]]\ncolumn = \"doc\"\npath = \"/a\"\ncheck = \"absent\"\nreason = \"done\"\n\n[[targets.rules]]\ncolumn = \"doc\"\nop = \"set\"\npath = \"/a\"\nvalue = 1\n",
        );
        let t = JobSpec::parse(&spec).unwrap().targets[0].clone();
        assert!(plan(&t, None, jsonb).is_ok());
    }

    #[test]
    fn a_token_sql_reads_as_another_index_keeps_the_job_path() {
        for t in ["0", "12", "a", "", "1a", "99999999999999999999"] {
            assert!(index_as_sql_reads_it(t), "{t}");
        }
        for t in ["-1", "01", "+1", " 1", "-", "-0"] {
            assert!(!index_as_sql_reads_it(t), "{t}");
        }
        let why = plan(
            &target("[[targets.rules]]\ncolumn = \"doc\"\nop = \"remove\"\npath = \"/list/-1\"\n"),
            None,
            jsonb,
        )
        .unwrap_err();
        assert!(why.contains("`/list/-1` holds `-1`"), "{why}");
    }

    fn row(key: &str, state: PushedState, current: Option<&str>) -> PushedRow {
        PushedRow {
            key: key.into(),
            group: "G".into(),
            refs: 2,
            state,
            current: current.map(str::to_string),
        }
    }

    fn changed(written: bool) -> PushedState {
        PushedState::Changed {
            written,
            columns: vec![PushedChange {
                column: "doc".into(),
                changes: r#"[{"path": "/title", "before": "Old", "after": "New"}]"#.into(),
                before_bytes: 30,
                after_bytes: 31,
            }],
        }
    }

    #[test]
    fn a_batch_counts_as_the_job_path_would_and_leaves_handed_rows_out() {
        let rows = vec![
            row("1", changed(true), Some("\"Old\"")),
            row("2", PushedState::Unchanged, Some("\"New\"")),
            row("3", PushedState::Gone, None),
            row("4", PushedState::Handed, None),
            row("5", PushedState::Unchanged, None),
        ];
        let t = pushed_tally("docs", Mode::Commit, &rows, true);
        let c = t.counts;
        assert_eq!(
            (c.processed, c.changed, c.unchanged, c.skipped, c.conflicts),
            (4, 1, 2, 1, 0)
        );
        assert_eq!(t.pushed_down.get("docs"), Some(&4));
        assert_eq!(t.skipped_by_reason.get(ROW_GONE), Some(&1));
        assert_eq!(
            (t.bytes_before, t.bytes_written, t.refs_affected),
            (30, 31, 2)
        );
        let g = &t.groups["G"];
        assert_eq!(g.current.kept.get("Old"), Some(&1));
        assert_eq!(g.current.kept.get("New"), Some(&1));
        assert_eq!(g.current.kept.get("(absent)"), Some(&1));
        assert_eq!(g.samples.len(), 1);
        assert_eq!(g.samples[0].changes[0].before, Some(json!("Old")));
        assert_eq!(g.samples[0].changes[0].after, Some(json!("New")));
    }

    #[test]
    fn a_change_a_commit_did_not_write_is_a_conflict_and_a_dry_run_counts_it_changed() {
        let rows = vec![row("1", changed(false), None)];
        let commit = pushed_tally("docs", Mode::Commit, &rows, false);
        assert_eq!((commit.counts.changed, commit.counts.conflicts), (0, 1));
        let dry = pushed_tally("docs", Mode::DryRun, &rows, false);
        assert_eq!((dry.counts.changed, dry.counts.conflicts), (1, 0));
        assert!(dry.groups["G"].current.kept.is_empty());
    }
}
