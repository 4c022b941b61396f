//! PostgreSQL applies a pushed-down target's edits itself (see
//! `backfill_job::pushdown`): per batch of a shard's items, one statement
//! locks the rows (`FOR UPDATE`, in key order), then one statement works
//! out every row's outcome, writes the rows that change with `jsonb_set`
//! and `#-`, and records their before-images (inverse patches, with the
//! row version the write left) through data-modifying CTEs. No document
//! leaves the server: the statement returns each row's outcome, the
//! report's current value and the changed paths. A dry run is the same
//! statement without the write.
//!
//! The rows are locked before the statement takes its snapshot, so what
//! it reads is what it writes: an application's edit that committed
//! before the lock is kept and the rules apply on top of it; one that
//! comes after waits for the shard's commit. There is nothing to compare
//! and set, and no conflict.

use std::collections::{BTreeMap, HashMap};

use backfill_job::guards::Check;
use backfill_job::pushdown::{
    Edit, Pointer, Pushdown, PushedChange, PushedRow, PushedState, PushedValue,
};
use backfill_job::rule::OnBoth;
use backfill_job::spec::{quote_ident, TargetSpec};
use backfill_job::KeyType;
use serde_json::{Map, Value};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Row};

use crate::error::{sql, StoreError};
use crate::model::shard::{key_join, ShardWork};

/// A statement's parameters beyond the first four, as they are added.
enum Bind {
    Text(String),
    Path(Vec<String>),
    Json(String),
    JsonArray(Vec<Option<String>>),
}

/// The statement being written: its placeholders are numbered as values
/// are bound.
struct Statement {
    binds: Vec<Bind>,
}

impl Statement {
    /// The first four placeholders are the run, the shard, the item
    /// numbers and the groups' keys.
    const FIXED: usize = 4;

    fn push(&mut self, b: Bind, cast: &str) -> String {
        self.binds.push(b);
        format!("${}::{cast}", Self::FIXED + self.binds.len())
    }
    fn path(&mut self, tokens: &[String]) -> String {
        self.push(Bind::Path(tokens.to_vec()), "text[]")
    }
    fn text(&mut self, s: &str) -> String {
        self.push(Bind::Text(s.to_string()), "text")
    }
}

/// The SQL names the statement gives what it reads, on the rows of `row`.
#[derive(Clone)]
struct Names {
    row: &'static str,
    /// Column → its alias in the `x` CTE.
    columns: BTreeMap<String, String>,
    /// Group parameter → its alias.
    params: HashMap<String, String>,
}

impl Names {
    fn col(&self, c: &str) -> String {
        format!(
            "{}.{}",
            self.row,
            self.columns.get(c).map_or("NULL", String::as_str)
        )
    }

    /// The same names on the rows of `row`.
    fn on(&self, row: &'static str) -> Names {
        Names {
            row,
            ..self.clone()
        }
    }
}

/// The value a `set` writes.
fn value_sql(v: &PushedValue, n: &Names, st: &mut Statement) -> String {
    match v {
        PushedValue::Literal(v) => st.push(Bind::Json(v.to_string()), "jsonb"),
        PushedValue::Param(p) => format!(
            "{}.{}",
            n.row,
            n.params.get(p).map_or("NULL", String::as_str)
        ),
        PushedValue::Pointer { column, path } => {
            format!("({} #> {})", n.col(column), st.path(&path.tokens))
        }
    }
}

/// `value` under the keys `tokens`, innermost last: what a `set` writes
/// where the parent at the first of them is missing.
fn nested(tokens: &[String], value: &str, st: &mut Statement) -> String {
    tokens.iter().rev().fold(value.to_string(), |inner, t| {
        format!("jsonb_build_object({}, {inner})", st.text(t))
    })
}

/// A JSON Patch or changes entry as SQL.
fn entry(fields: &[(&str, String)]) -> String {
    let args: Vec<String> = fields.iter().map(|(k, v)| format!("'{k}', {v}")).collect();
    format!("jsonb_build_array(jsonb_build_object({}))", args.join(", "))
}

/// One edit as SQL, told from the row as read (`doc`, the column's alias):
/// whether the row is in the shape it applies to as the job means it,
/// whether it changes the row, where it writes and what (the path `{}`
/// where it changes nothing, for which `jsonb_set` and `#-` return the
/// document as it is), its inverse patch and its changes.
struct EditSql {
    /// Values read once per row (over `x0`, into `x1`): `expr AS alias`.
    defs: Vec<String>,
    plain: Vec<String>,
    changes_it: String,
    /// What it writes, in order: `(path, Some(value))` for a `jsonb_set`,
    /// `(path, None)` for a `#-` (a rename does both).
    writes: Vec<(String, Option<String>)>,
    undo: String,
    changes: String,
    /// What it adds to the column's size (a dry run's size after).
    growth: String,
}

/// `id` names the edit's values read once per row: the value at its path
/// as read (`o…`) and, for a `set`, the value it writes (`v…`). Each read
/// of a document decompresses it, so each is read once.
fn edit_sql(
    e: &Edit,
    when: &[(Pointer, Check)],
    column: &str,
    id: &str,
    n: &Names,
    st: &mut Statement,
) -> EditSql {
    let at = st.path(&e.path().tokens);
    let pointer = st.text(&e.path().text);
    let doc = &n.col(column);
    let doc0 = n.on("x0").col(column);
    let mut defs = vec![format!("({doc0} #> {at}) AS o{id}")];
    let old = format!("x.o{id}");
    let none = "'{}'::text[]";
    // The edit applies where its conditions hold on the row as read.
    let mut gate = Vec::new();
    let mut ungated = Vec::new();
    for (j, (path, check)) in when.iter().enumerate() {
        let at = st.path(&path.tokens);
        defs.push(format!("({doc0} #> {at}) AS k{id}_{j}"));
        let v = format!("x.k{id}_{j}");
        gate.push(check_sql(&v, check, st).unwrap_or_else(|| {
            // Not pushed down (`pushdown::plan`); were one here, every
            // row would go back to the job.
            ungated.push("false".to_string());
            "false".to_string()
        }));
    }
    let gated = |changes: String| {
        if gate.is_empty() {
            changes
        } else {
            format!("({} AND {changes})", gate.join(" AND "))
        }
    };
    let mut sql = match e {
        Edit::Set {
            path,
            value,
            if_there,
        } => {
            let v0 = value_sql(value, &n.on("x0"), st);
            defs.push(format!("{v0} AS v{id}"));
            let v = format!("x.v{id}");
            // A `set` without its value is the job's row error (handed
            // back); a `copy` without its source changes nothing.
            let (mut plain, changes_it) = if *if_there {
                (
                    Vec::new(),
                    gated(format!("({v} IS NOT NULL AND {old} IS DISTINCT FROM {v})")),
                )
            } else {
                (
                    vec![format!("{v} IS NOT NULL")],
                    gated(format!("({old} IS DISTINCT FROM {v})")),
                )
            };
            // Per parent, outermost first: the test that it is the first
            // one that is not an object (the job creates it, and all below
            // it, as objects), its path and pointer, and what is written
            // there then.
            let mut at_arms = Vec::new();
            let mut value_arms = Vec::new();
            let mut undo_arms = Vec::new();
            let mut change_arms = Vec::new();
            for depth in 1..path.tokens.len() {
                let p = path.prefix(depth);
                let at_p = st.path(&p.tokens);
                let was = format!("({doc} #> {at_p})");
                plain.push(format!(
                    "coalesce(jsonb_typeof({was}), 'null') IN ('object', 'null')"
                ));
                let first = format!("coalesce(jsonb_typeof({was}), 'null') <> 'object'");
                let pointer_p = st.text(&p.text);
                let nest = nested(&path.tokens[depth..], &v, st);
                at_arms.push(format!("WHEN {first} THEN {at_p}"));
                value_arms.push(format!("WHEN {first} THEN {nest}"));
                undo_arms.push(format!(
                    "WHEN {first} THEN CASE WHEN {was} IS NULL THEN {} ELSE {} END",
                    entry(&[("op", "'remove'".into()), ("path", pointer_p.clone())]),
                    entry(&[
                        ("op", "'replace'".into()),
                        ("path", pointer_p.clone()),
                        ("value", was.clone())
                    ])
                ));
                change_arms.push(format!(
                    "WHEN {first} THEN {}",
                    entry(&[
                        ("path", pointer_p),
                        ("before", was.clone()),
                        ("after", nest)
                    ])
                ));
            }
            let value = format!(
                // `jsonb_set` is strict: a NULL value would make the
                // document NULL, even at the path `{{}}`.
                "CASE WHEN NOT {changes_it} THEN 'null'::jsonb {} ELSE {v} END",
                value_arms.join(" ")
            );
            EditSql {
                defs,
                plain,
                growth: format!(
                    "CASE WHEN {changes_it} THEN coalesce(pg_column_size({value}), 0) - coalesce(pg_column_size({old}), 0) ELSE 0 END"
                ),
                writes: vec![(
                    format!(
                        "CASE WHEN NOT {changes_it} THEN {none} {} ELSE {at} END",
                        at_arms.join(" ")
                    ),
                    Some(value),
                )],
                undo: format!(
                    "CASE WHEN NOT {changes_it} THEN '[]'::jsonb {} WHEN {old} IS NULL THEN {} ELSE {} END",
                    undo_arms.join(" "),
                    entry(&[("op", "'remove'".into()), ("path", pointer.clone())]),
                    entry(&[
                        ("op", "'replace'".into()),
                        ("path", pointer.clone()),
                        ("value", old.clone())
                    ])
                ),
                changes: format!(
                    "CASE WHEN NOT {changes_it} THEN '[]'::jsonb {} ELSE {} END",
                    change_arms.join(" "),
                    entry(&[("path", pointer), ("before", old), ("after", v)])
                ),
                changes_it,
            }
        }
        Edit::Remove { path } => {
            let parent = st.path(&path.parent());
            let changes_it = gated(format!("({old} IS NOT NULL)"));
            EditSql {
                defs,
                plain: vec![format!(
                    "({old} IS NULL OR jsonb_typeof({doc} #> {parent}) = 'object')"
                )],
                writes: vec![(
                    format!("CASE WHEN {changes_it} THEN {at} ELSE {none} END"),
                    None,
                )],
                growth: format!(
                    "CASE WHEN {changes_it} THEN -coalesce(pg_column_size({old}), 0) ELSE 0 END"
                ),
                undo: format!(
                    "CASE WHEN {changes_it} THEN {} ELSE '[]'::jsonb END",
                    entry(&[
                        ("op", "'add'".into()),
                        ("path", pointer.clone()),
                        ("value", old.clone())
                    ])
                ),
                changes: format!(
                    "CASE WHEN {changes_it} THEN {} ELSE '[]'::jsonb END",
                    entry(&[("path", pointer), ("before", old)])
                ),
                changes_it,
            }
        }
        Edit::Rename { path, to, on_both } => {
            let parent = st.path(&path.parent());
            let at_to = st.path(&to.tokens);
            let pointer_to = st.text(&to.text);
            defs.push(format!("({doc0} #> {at_to}) AS n{id}"));
            let new = format!("x.n{id}");
            // The old key is there (in an object: an array's element is
            // the job's row error, handed back).
            let changes_it = gated(format!("({old} IS NOT NULL)"));
            let mut plain = vec![format!(
                "({old} IS NULL OR jsonb_typeof({doc} #> {parent}) = 'object')"
            )];
            // Whether the old key's value goes to the new key: always but
            // where both are there and the new key keeps its value.
            let moves = match on_both {
                OnBoth::Error => {
                    plain.push(format!("({old} IS NULL OR {new} IS NULL)"));
                    changes_it.clone()
                }
                OnBoth::Overwrite => changes_it.clone(),
                OnBoth::KeepNew => format!("({changes_it} AND {new} IS NULL)"),
            };
            let renamed = entry(&[
                ("path", pointer_to.clone()),
                ("before", new.clone()),
                ("after", old.clone()),
            ]);
            let removed = entry(&[("path", pointer.clone()), ("before", old.clone())]);
            let key_growth = to.tokens.last().map_or(0, |k| k.len() as i64)
                - path.tokens.last().map_or(0, |k| k.len() as i64);
            EditSql {
                defs,
                plain,
                writes: vec![
                    (
                        format!("CASE WHEN {moves} THEN {at_to} ELSE {none} END"),
                        Some(format!("CASE WHEN {moves} THEN {old} ELSE 'null'::jsonb END")),
                    ),
                    (format!("CASE WHEN {changes_it} THEN {at} ELSE {none} END"), None),
                ],
                // Undone in order: the new key back as it was, then the
                // old key added again.
                undo: format!(
                    "CASE WHEN NOT {changes_it} THEN '[]'::jsonb ELSE CASE WHEN NOT {moves} THEN '[]'::jsonb WHEN {new} IS NULL THEN {} ELSE {} END || {} END",
                    entry(&[("op", "'remove'".into()), ("path", pointer_to.clone())]),
                    entry(&[
                        ("op", "'replace'".into()),
                        ("path", pointer_to),
                        ("value", new.clone())
                    ]),
                    entry(&[
                        ("op", "'add'".into()),
                        ("path", pointer),
                        ("value", old.clone())
                    ]),
                ),
                // As the job's diff tells them: the new key, then the old.
                changes: format!(
                    "CASE WHEN NOT {changes_it} THEN '[]'::jsonb WHEN {moves} THEN {renamed} || {removed} ELSE {removed} END"
                ),
                growth: format!(
                    "CASE WHEN NOT {changes_it} THEN 0 WHEN NOT {moves} THEN -coalesce(pg_column_size({old}), 0) - {k} \
                     WHEN {new} IS NULL THEN {key_growth} ELSE -coalesce(pg_column_size({new}), 0) - {k} END",
                    k = path.tokens.last().map_or(0, String::len),
                ),
                changes_it,
            }
        }
    };
    sql.plain.extend(ungated);
    sql
}

/// `check` on the value read `v` (`jsonb`, NULL where absent) as SQL that
/// holds exactly where the job's check passes; `None` for a string's
/// blankness or prefix, which is Unicode's whitespace to the job.
fn check_sql(v: &str, check: &Check, st: &mut Statement) -> Option<String> {
    Some(match check {
        Check::Present => format!("({v} IS NOT NULL AND {v} <> 'null'::jsonb)"),
        Check::Exists => format!("({v} IS NOT NULL)"),
        Check::Absent => format!("({v} IS NULL)"),
        Check::Null => format!("coalesce({v} = 'null'::jsonb, false)"),
        // jsonb compares numbers by value and objects by their keys, as
        // the job does.
        Check::Equals(x) => format!(
            "coalesce({v} = {}, false)",
            st.push(Bind::Json(x.to_string()), "jsonb")
        ),
        Check::NotEquals(x) => format!(
            "NOT coalesce({v} = {}, false)",
            st.push(Bind::Json(x.to_string()), "jsonb")
        ),
        Check::NotBlank | Check::NotPrefix(_) => return None,
    })
}

/// A row guard as SQL that holds where the row surely passes it: a row
/// that fails it, or whose string a `not_blank` or `not_prefix` guard
/// reads, is handed back for the job to tell.
fn guard_sql(v: &str, check: &Check, st: &mut Statement) -> String {
    check_sql(v, check, st).unwrap_or_else(|| {
        format!("({v} IS NOT NULL AND jsonb_typeof({v}) NOT IN ('string', 'null'))")
    })
}

/// A written column as SQL.
struct ColumnSql {
    column: String,
    /// Whether any edit changes the row's column.
    changed: String,
    /// Per write of its edits: where and what (`x` columns `a…`, `w…`).
    edits: Vec<(String, Option<String>)>,
    /// The column's edits write a value (a NULL column becomes `{}`).
    sets: bool,
    /// The inverse patch (`NULL` for a NULL column: its before-image is
    /// the whole value) and the changed paths.
    undo: String,
    changes: String,
    /// The edits' values' sizes less the sizes of what they replace: the
    /// column's size after, told without building it (a dry run's).
    growth: String,
}

/// The SQL of what is in the statement: the values read once per row,
/// whether a row is in the shape the edits apply to as the job means them,
/// per written column what changes and how, and the report's current
/// value.
struct Parts {
    defs: Vec<String>,
    plain: String,
    columns: Vec<ColumnSql>,
    current: String,
}

fn parts(plan: &Pushdown, n: &Names, st: &mut Statement) -> Parts {
    let mut defs = Vec::new();
    let mut plain = Vec::new();
    for (j, (column, path, check)) in plan.guards.iter().enumerate() {
        let at = st.path(&path.tokens);
        defs.push(format!("({} #> {at}) AS r{j}", n.on("x0").col(column)));
        plain.push(guard_sql(&format!("x.r{j}"), check, st));
    }
    let mut columns = Vec::new();
    for (ci, c) in plan.columns.iter().enumerate() {
        let doc = n.col(&c.column);
        // A value found under a key that is not a number is inside an
        // object: the document's type need not be read (which would
        // decompress it again).
        let found_in_object = c
            .edits
            .first()
            .filter(|e| {
                e.path()
                    .tokens
                    .first()
                    .is_some_and(|t| t.parse::<i64>().is_err())
            })
            .map(|_| format!("x.o{ci}_0 IS NOT NULL OR "))
            .unwrap_or_default();
        plain.push(format!(
            "({found_in_object}{doc} IS NULL OR jsonb_typeof({doc}) = 'object')"
        ));
        for p in &c.shared {
            plain.push(format!(
                "({doc} IS NULL OR jsonb_typeof({doc} #> {}) = 'object')",
                st.path(&p.tokens)
            ));
        }
        let mut changed = Vec::new();
        let mut edits = Vec::new();
        let mut undo = Vec::new();
        let mut changes = Vec::new();
        let mut growth = Vec::new();
        for (k, e) in c.edits.iter().enumerate() {
            let id = format!("{ci}_{k}");
            let sql = edit_sql(e, &c.when[k], &c.column, &id, n, st);
            defs.extend(sql.defs);
            plain.extend(sql.plain);
            growth.push(sql.growth);
            edits.extend(sql.writes);
            changed.push(sql.changes_it);
            undo.push(sql.undo);
            changes.push(sql.changes);
        }
        columns.push(ColumnSql {
            column: c.column.clone(),
            changed: format!("({})", changed.join(" OR ")),
            sets: c.edits.iter().any(|e| matches!(e, Edit::Set { .. })),
            edits,
            undo: format!(
                "CASE WHEN {doc} IS NULL THEN NULL ELSE ({})::text END",
                undo.join(" || ")
            ),
            changes: changes.join(" || "),
            growth: growth.join(" + "),
        });
    }
    let current = match &plan.current {
        // The value an edit reads already, when it is at the same place.
        Some((c, p)) if n.columns.contains_key(c) => plan
            .columns
            .iter()
            .enumerate()
            .filter(|(_, pc)| &pc.column == c)
            .find_map(|(ci, pc)| {
                pc.edits
                    .iter()
                    .position(|e| e.path() == p)
                    .map(|k| format!("x.o{ci}_{k}::text"))
            })
            .unwrap_or_else(|| format!("({} #> {})::text", n.col(c), st.path(&p.tokens))),
        _ => "NULL::text".into(),
    };
    Parts {
        defs,
        plain: plain.join(" AND "),
        columns,
        current,
    }
}

/// The statement for a batch: its SQL and the values of its placeholders
/// from `$5` on.
///
/// `x0` holds each item with its row's columns and its group's
/// parameters; `x1` (materialized: each document is decompressed as few
/// times as can be) the values the edits read; `x2` whether the row is in
/// the shape the edits apply to; `x` per written column whether it
/// changes, per edit where it writes and what, the inverse patch, the
/// changed paths and the size before. A commit's `w` writes the rows that
/// change, building each new value from the row in the table, edit by edit
/// (`jsonb_set` and `#-` at the paths `x` worked out), and returns what
/// `b` records as their before-images. The rows are locked, so every row
/// that changes is written: the statement returns how many were, and the
/// sizes written, for the caller to check and count. Later steps read `x`
/// alone; none joins back to it.
fn statement(target: &TargetSpec, plan: &Pushdown, commit: bool) -> (String, Vec<Bind>) {
    let mut st = Statement { binds: Vec::new() };
    let read: Vec<&str> = plan.read_columns().into_iter().collect();
    let params = plan.params();
    let names = Names {
        row: "x",
        columns: read
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), format!("c{i}")))
            .collect(),
        params: params
            .iter()
            .enumerate()
            .map(|(i, p)| (p.to_string(), format!("p{i}")))
            .collect(),
    };
    // The groups' parameters, one array per parameter, aligned with `$4`.
    let mut unnest = vec!["$4::text[]".to_string()];
    for _ in &params {
        unnest.push(st.push(Bind::JsonArray(Vec::new()), "jsonb[]"));
    }
    let p = parts(plan, &names, &mut st);
    let table = quote_ident(&target.table);
    let key = quote_ident(&target.key);
    let cols: String = read
        .iter()
        .map(|c| format!(", t.{} AS {}", quote_ident(c), names.columns[*c]))
        .collect();
    let (param_cols, param_join) = if params.is_empty() {
        (String::new(), String::new())
    } else {
        let aliases: Vec<String> = (0..params.len()).map(|i| format!("p{i}")).collect();
        (
            aliases.iter().map(|a| format!(", p.{a}")).collect(),
            format!(
                "LEFT JOIN unnest({}) AS p(g, {}) ON p.g = i.group_key",
                unnest.join(", "),
                aliases.join(", ")
            ),
        )
    };
    let any_change = p
        .columns
        .iter()
        .map(|c| c.changed.as_str())
        .collect::<Vec<_>>()
        .join(" OR ");
    // Per written column: ch (changes), u (inverse patch), d (changed
    // paths), bs and g (size before, and what the edits add to it); per
    // edit, a (where it writes) and w (what).
    let per_col: String = p
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let doc = names.col(&c.column);
            let ch = format!("(x.plain AND {})", c.changed);
            let edits: String = c
                .edits
                .iter()
                .enumerate()
                .map(|(k, (at, value))| {
                    let value = value.as_deref().unwrap_or("NULL::jsonb");
                    format!(", {at} AS a{i}_{k}, {value} AS w{i}_{k}")
                })
                .collect();
            format!(
                ", {ch} AS ch{i}{edits},
                   CASE WHEN {ch} THEN {undo} END AS u{i},
                   CASE WHEN {ch} THEN ({changes})::text END AS d{i},
                   pg_column_size({doc}) AS bs{i},
                   CASE WHEN {ch} THEN pg_column_size({doc}) + {growth} END AS g{i}",
                undo = c.undo,
                changes = c.changes,
                growth = c.growth,
            )
        })
        .collect();
    let defs: String = p.defs.iter().map(|d| format!(", {d}")).collect();
    let mut sql = format!(
        "WITH i AS (
            SELECT item_no, key, key_int, group_key, refs FROM backfill_item
            WHERE run_id = $1 AND shard_no = $2 AND item_no = ANY($3)
         ), x0 AS (
            SELECT i.item_no, i.key, i.group_key, i.refs, t.{key} AS tk{cols}{param_cols}
            FROM i LEFT JOIN {table} t ON {join} {param_join}
         ), x1 AS MATERIALIZED (
            SELECT x0.*{defs} FROM x0
         ), x2 AS (
            SELECT x.*, (x.tk IS NOT NULL AND {plain}) AS plain FROM x1 AS x
         ), x AS (
            SELECT x.*, (x.plain AND ({any_change})) AS chg, {current} AS cur{per_col}
            FROM x2 AS x
         )",
        join = key_join(target),
        plain = p.plain,
        current = p.current,
    );
    let sizes = if commit {
        let sets: Vec<String> = p
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let q = quote_ident(&c.column);
                let base = if c.sets {
                    format!("coalesce(t.{q}, '{{}}'::jsonb)")
                } else {
                    format!("t.{q}")
                };
                let new = c.edits.iter().enumerate().fold(base, |e, (k, (_, value))| {
                    if value.is_some() {
                        format!("jsonb_set({e}, x.a{i}_{k}, x.w{i}_{k}, true)")
                    } else {
                        format!("({e} #- x.a{i}_{k})")
                    }
                });
                format!("{q} = CASE WHEN x.ch{i} THEN {new} ELSE t.{q} END")
            })
            .collect();
        let returned: String = p
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                format!(
                    ", x.ch{i}, x.u{i}, CASE WHEN x.ch{i} THEN pg_column_size(t.{}) END AS s{i}",
                    quote_ident(&c.column)
                )
            })
            .collect();
        let images: Vec<String> = p
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| format!("({}, w.ch{i}, w.u{i})", st.text(&c.column)))
            .collect();
        let target_name = st.text(&target.name);
        sql.push_str(&format!(
            ", w AS (
                UPDATE {table} t SET {sets} FROM x
                WHERE t.{key} = x.tk AND x.chg
                RETURNING x.key, t.xmin::text AS ver{returned}
             ), b AS (
                INSERT INTO backfill_before_image (run_id, shard_no, target, key, column_name, patch, after_version)
                SELECT $1, $2, {target_name}, w.key, u.col, u.patch, CASE WHEN u.patch IS NULL THEN NULL ELSE w.ver END
                FROM w CROSS JOIN LATERAL (VALUES {images}) AS u(col, changed, patch)
                WHERE u.changed
             )",
            sets = sets.join(", "),
            images = images.join(", "),
        ));
        let sums: Vec<String> = (0..p.columns.len())
            .map(|i| format!("coalesce(sum(s{i}), 0)"))
            .collect();
        format!(
            "(SELECT count(*) FROM w), (SELECT {} FROM w)",
            sums.join(" + ")
        )
    } else {
        "0::int8, NULL::int8".into()
    };
    let out_cols: String = (0..p.columns.len())
        .map(|i| format!(", x.d{i}, x.bs{i}, x.g{i}"))
        .collect();
    sql.push_str(&format!(
        " SELECT x.item_no, x.key, x.group_key, x.refs, x.tk IS NOT NULL, x.plain,
                 x.chg, {sizes}, x.cur{out_cols}
          FROM x ORDER BY x.item_no"
    ));
    (sql, st.binds)
}

/// Binds the statement's values: the groups' parameters into the arrays
/// reserved for them.
fn bind_all<'q>(
    mut q: Query<'q, Postgres, PgArguments>,
    binds: Vec<Bind>,
) -> Query<'q, Postgres, PgArguments> {
    for b in binds {
        q = match b {
            Bind::Text(s) => q.bind(s),
            Bind::Path(p) => q.bind(p),
            Bind::Json(j) => q.bind(j),
            Bind::JsonArray(a) => q.bind(a),
        };
    }
    q
}

/// What a batch's statement returned.
pub(super) struct Pushed {
    /// The batch's rows.
    pub rows: Vec<PushedRow>,
    /// The item numbers of the rows handed back.
    pub handed: Vec<i32>,
    /// A commit's bytes written, as the database stores them.
    pub written_bytes: Option<u64>,
}

/// Applies the edits of `plan` to the items `nos` of a shard in its
/// transaction (a dry run only works them out): locks the rows first on a
/// commit, then runs the batch's statement.
pub(super) async fn push_batch(
    tx: &mut sqlx::Transaction<'static, Postgres>,
    w: &ShardWork<'_>,
    plan: &Pushdown,
    params: &HashMap<String, Map<String, Value>>,
    nos: &[i32],
) -> Result<Pushed, StoreError> {
    let target = w.target;
    let commit = w.mode.is_commit();
    if commit {
        let item_key = match target.key_type {
            KeyType::Integer => "key_int",
            KeyType::Text => "key",
        };
        // In key order: two transactions locking overlapping rows wait on
        // each other instead of deadlocking.
        let lock = format!(
            "SELECT 1 FROM {table} t WHERE t.{key} IN (
                SELECT {item_key} FROM backfill_item WHERE run_id = $1 AND shard_no = $2 AND item_no = ANY($3))
             ORDER BY t.{key} FOR UPDATE",
            table = quote_ident(&target.table),
            key = quote_ident(&target.key),
        );
        sqlx::query(&lock)
            .bind(w.run_id)
            .bind(w.shard_no as i32)
            .bind(nos)
            .fetch_all(&mut **tx)
            .await
            .map_err(sql(format!("lock rows of {}", target.table)))?;
    }
    let (text, mut binds) = statement(target, plan, commit);
    let groups: Vec<&String> = params.keys().collect();
    let mut arrays = plan.params().into_iter().map(|name| {
        groups
            .iter()
            .map(|g| params[*g].get(name).map(Value::to_string))
            .collect::<Vec<_>>()
    });
    for b in binds.iter_mut() {
        if let Bind::JsonArray(a) = b {
            *a = arrays.next().unwrap_or_default();
        }
    }
    let q = sqlx::query(&text)
        .bind(w.run_id)
        .bind(w.shard_no as i32)
        .bind(nos)
        .bind(groups);
    let rows = bind_all(q, binds)
        .fetch_all(&mut **tx)
        .await
        .map_err(sql(format!(
            "apply the rules to rows of shard {} in {}",
            w.shard_no, target.table
        )))?;
    let mut out = Vec::with_capacity(rows.len());
    let mut handed = Vec::new();
    let (mut changing, mut wrote, mut written_bytes) = (0i64, 0i64, None);
    for r in rows {
        wrote = r.get::<Option<i64>, _>(7).unwrap_or(0);
        written_bytes = r.get::<Option<i64>, _>(8).map(|b| b.max(0) as u64);
        let found: bool = r.get(4);
        let plain: bool = r.get::<Option<bool>, _>(5).unwrap_or(false);
        let changed: bool = r.get::<Option<bool>, _>(6).unwrap_or(false);
        let state = if !found {
            PushedState::Gone
        } else if !plain {
            handed.push(r.get::<i32, _>(0));
            PushedState::Handed
        } else if !changed {
            PushedState::Unchanged
        } else {
            let mut columns = Vec::new();
            for (i, c) in plan.columns.iter().enumerate() {
                let at = 10 + 3 * i;
                let Some(changes) = r.get::<Option<String>, _>(at) else {
                    continue;
                };
                let size = |n: usize| r.get::<Option<i32>, _>(n).unwrap_or(0).max(0) as u64;
                // The size after is told from the edits (`g`); a commit's
                // sizes as written replace them in the batch's total.
                columns.push(PushedChange {
                    column: c.column.clone(),
                    changes,
                    before_bytes: size(at + 1),
                    after_bytes: size(at + 2),
                });
            }
            changing += 1;
            PushedState::Changed {
                written: commit,
                columns,
            }
        };
        out.push(PushedRow {
            key: r.get(1),
            group: r.get(2),
            refs: r.get::<i64, _>(3).max(0) as u64,
            state,
            current: r.get(9),
        });
    }
    // The rows were locked before the statement read them: each row that
    // changes is written. Anything else is a fault of this statement, and
    // the shard is rolled back and tried again rather than miscounted.
    if commit && wrote != changing {
        return Err(StoreError::Data(format!(
            "shard {} of {}: the rules applied by the database wrote {wrote} of the {changing} rows that change",
            w.shard_no, target.table
        )));
    }
    Ok(Pushed {
        rows: out,
        handed,
        written_bytes: written_bytes.filter(|_| commit),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_job::pushdown::plan;
    use backfill_job::JobSpec;

    /// The commit statement of a target of `docs` with `rules` (and guards),
    /// its binds and the dry run's statement, after checking that every
    /// placeholder is bound.
    fn statements(rules: &str, current: Option<(&str, &str)>) -> (String, Vec<Bind>, String) {
        let spec = JobSpec::parse(&format!(
            r#"
name = "t"
[[targets]]
name = "rows"
table = "docs"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT 1"
{rules}"#
        ))
        .unwrap();
        let t = &spec.targets[0];
        let p = plan(t, current, |_| true).unwrap();
        let (commit, binds) = statement(t, &p, true);
        let highest = (1..=Statement::FIXED + binds.len())
            .rev()
            .find(|n| commit.contains(&format!("${n}::")))
            .unwrap();
        assert_eq!(
            highest,
            Statement::FIXED + binds.len(),
            "every placeholder is bound"
        );
        (commit, binds, statement(t, &p, false).0)
    }

    #[test]
    fn a_commit_writes_and_records_before_images_in_one_statement_and_a_dry_run_writes_nothing() {
        let (commit, binds, dry) = statements(
            r#"[[targets.rules]]
column = "doc"
op = "set"
path = "/a/b"
param = "title"
"#,
            Some(("doc", "/a/b")),
        );
        assert!(
            commit.contains("UPDATE \"docs\" t SET \"doc\" = CASE WHEN x.ch0 THEN jsonb_set(coalesce(t.\"doc\", '{}'::jsonb), x.a0_0, x.w0_0, true)"),
            "{commit}"
        );
        assert!(commit.contains("INSERT INTO backfill_before_image"));
        assert!(commit.contains("unnest($4::text[], $5::jsonb[])"));
        assert!(matches!(binds[0], Bind::JsonArray(_)));
        assert!(!dry.contains("UPDATE") && !dry.contains("INSERT"));
    }

    #[test]
    fn a_rename_is_a_set_of_the_new_key_and_a_remove_of_the_old_in_one_write() {
        let (commit, _, _) = statements(
            r#"[[targets.guards]]
column = "doc"
path = "/title"
check = "not_prefix"
prefix = "DRAFT"
reason = "a draft"
[[targets.rules]]
column = "doc"
op = "rename"
path = "/old"
to = "new"
[[targets.rules]]
column = "doc"
op = "copy"
path = "/c"
from = "/src"
when = [{ path = "/kind", check = "not_equals", value = 2 }]
"#,
            None,
        );
        assert!(
            commit.contains("THEN jsonb_set((jsonb_set(coalesce(t.\"doc\", '{}'::jsonb), x.a0_0, x.w0_0, true) #- x.a0_1), x.a0_2, x.w0_2, true)"),
            "{commit}"
        );
        // A row guard: a string it reads goes back to the job.
        assert!(
            commit.contains("(x.r0 IS NOT NULL AND jsonb_typeof(x.r0) NOT IN ('string', 'null'))")
        );
        // Both keys of the rename are read once per row, and the copy's
        // condition.
        assert!(commit.contains(" AS o0_0") && commit.contains(" AS n0_0"));
        assert!(commit.contains(" AS k0_1_0") && commit.contains("NOT coalesce(x.k0_1_0 = $"));
    }
}
