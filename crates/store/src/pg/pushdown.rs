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

use backfill_job::pushdown::{Edit, Pushdown, PushedChange, PushedRow, PushedState, PushedValue};
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
/// whether it changes the row, the step that applies it to `e` (the
/// column after the edits before it), its inverse patch and its changes.
struct EditSql {
    /// Values read once per row (`x0`, into `x1`): `expr AS alias`.
    defs: Vec<String>,
    plain: Vec<String>,
    changes_it: String,
    step: Box<dyn Fn(&str) -> String>,
    undo: String,
    changes: String,
}

/// `id` names the edit's values read once per row: the value at its path
/// as read (`o…`) and, for a `set`, the value it writes (`v…`). Each read
/// of a document decompresses it, so each is read once.
fn edit_sql(e: &Edit, column: &str, id: &str, n: &Names, st: &mut Statement) -> EditSql {
    let at = st.path(&e.path().tokens);
    let pointer = st.text(&e.path().text);
    let doc = &n.col(column);
    let doc0 = n.on("x0").col(column);
    let mut defs = vec![format!("({doc0} #> {at}) AS o{id}")];
    let old = format!("x.o{id}");
    match e {
        Edit::Set { path, value } => {
            let v0 = value_sql(value, &n.on("x0"), st);
            defs.push(format!("{v0} AS v{id}"));
            let v = format!("x.v{id}");
            let mut plain = vec![format!("{v} IS NOT NULL")];
            // Per parent, outermost first: its path, its pointer, and the
            // value written there when it is the first missing one.
            let mut levels = Vec::new();
            for depth in 1..path.tokens.len() {
                let p = path.prefix(depth);
                let at_p = st.path(&p.tokens);
                plain.push(format!(
                    "coalesce(jsonb_typeof({doc} #> {at_p}), 'null') IN ('object', 'null')"
                ));
                let pointer_p = st.text(&p.text);
                let nest = nested(&path.tokens[depth..], &v, st);
                levels.push((at_p, pointer_p, nest));
            }
            let whole = nested(&path.tokens, &v, st);
            let changes_it = format!("({old} IS DISTINCT FROM {v})");
            let not_object = |e: &str, at_p: &str| {
                format!("coalesce(jsonb_typeof({e} #> {at_p}), 'null') <> 'object'")
            };
            let (ch, lv, at2, v2) = (changes_it.clone(), levels.clone(), at.clone(), v.clone());
            let step = Box::new(move |e: &str| {
                let mut arms = vec![
                    format!("WHEN NOT {ch} THEN {e}"),
                    format!("WHEN {e} IS NULL THEN {whole}"),
                ];
                for (at_p, _, nest) in &lv {
                    arms.push(format!(
                        "WHEN {} THEN jsonb_set({e}, {at_p}, {nest}, true)",
                        not_object(e, at_p)
                    ));
                }
                format!(
                    "CASE {} ELSE jsonb_set({e}, {at2}, {v2}, true) END",
                    arms.join(" ")
                )
            });
            // What was there before, at the first parent that was not an
            // object (the job creates it whole), or at the path.
            let mut undo_arms = Vec::new();
            let mut change_arms = Vec::new();
            for (at_p, pointer_p, nest) in &levels {
                let was = format!("({doc} #> {at_p})");
                let cond = not_object(doc, at_p);
                undo_arms.push(format!(
                    "WHEN {cond} THEN CASE WHEN {was} IS NULL THEN {} ELSE {} END",
                    entry(&[("op", "'remove'".into()), ("path", pointer_p.clone())]),
                    entry(&[
                        ("op", "'replace'".into()),
                        ("path", pointer_p.clone()),
                        ("value", was.clone())
                    ])
                ));
                change_arms.push(format!(
                    "WHEN {cond} THEN {}",
                    entry(&[
                        ("path", pointer_p.clone()),
                        ("before", was.clone()),
                        ("after", nest.clone())
                    ])
                ));
            }
            let undo = format!(
                "CASE WHEN NOT {changes_it} THEN '[]'::jsonb {} WHEN {old} IS NULL THEN {} ELSE {} END",
                undo_arms.join(" "),
                entry(&[("op", "'remove'".into()), ("path", pointer.clone())]),
                entry(&[
                    ("op", "'replace'".into()),
                    ("path", pointer.clone()),
                    ("value", old.clone())
                ])
            );
            let changes = format!(
                "CASE WHEN NOT {changes_it} THEN '[]'::jsonb {} ELSE {} END",
                change_arms.join(" "),
                entry(&[
                    ("path", pointer.clone()),
                    ("before", old.clone()),
                    ("after", v.clone())
                ])
            );
            EditSql {
                defs,
                plain,
                changes_it,
                step,
                undo,
                changes,
            }
        }
        Edit::Remove { path } => {
            let parent = st.path(&path.parent());
            let changes_it = format!("({old} IS NOT NULL)");
            let (ch, at2) = (changes_it.clone(), at.clone());
            EditSql {
                defs,
                plain: vec![format!(
                    "({old} IS NULL OR jsonb_typeof({doc} #> {parent}) = 'object')"
                )],
                step: Box::new(move |e: &str| {
                    format!("CASE WHEN {ch} THEN ({e} #- {at2}) ELSE {e} END")
                }),
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
                    entry(&[("path", pointer.clone()), ("before", old.clone())])
                ),
                changes_it,
            }
        }
    }
}

/// A written column as SQL.
struct ColumnSql {
    column: String,
    /// The column's alias in `x`.
    alias: String,
    /// Whether any edit changes the row's column.
    changed: String,
    /// The `LATERAL` steps that build the new value, last one `e`.
    steps: Vec<String>,
    /// The inverse patch (`NULL` for a NULL column: its before-image is
    /// the whole value) and the changed paths.
    undo: String,
    changes: String,
}

/// The SQL of what is in the statement: whether a row is in the shape the
/// edits apply to as the job means them, per written column what changes
/// and how, and the report's current value.
struct Parts {
    /// Values read once per row: `expr AS alias`, over `x0`.
    defs: Vec<String>,
    plain: String,
    columns: Vec<ColumnSql>,
    current: String,
}

fn parts(plan: &Pushdown, n: &Names, st: &mut Statement) -> Parts {
    let mut defs = Vec::new();
    let mut plain = Vec::new();
    let mut columns = Vec::new();
    for (ci, c) in plan.columns.iter().enumerate() {
        let doc = n.col(&c.column);
        plain.push(format!("({doc} IS NULL OR jsonb_typeof({doc}) = 'object')"));
        for p in &c.shared {
            plain.push(format!(
                "({doc} IS NULL OR jsonb_typeof({doc} #> {}) = 'object')",
                st.path(&p.tokens)
            ));
        }
        let mut changed = Vec::new();
        let mut steps = Vec::new();
        let mut undo = Vec::new();
        let mut changes = Vec::new();
        let mut prev = doc.clone();
        for (k, e) in c.edits.iter().enumerate() {
            let sql = edit_sql(e, &c.column, &format!("{ci}_{k}"), n, st);
            defs.extend(sql.defs);
            plain.extend(sql.plain);
            let alias = format!("s{ci}_{k}");
            // Only a row in the shape the edits apply to is edited: on any
            // other, `jsonb_set` or `#-` could raise an error.
            steps.push(format!(
                "CROSS JOIN LATERAL (SELECT CASE WHEN x.plain THEN {} END AS e) {alias}",
                (sql.step)(&prev)
            ));
            prev = format!("{alias}.e");
            changed.push(sql.changes_it);
            undo.push(sql.undo);
            changes.push(sql.changes);
        }
        columns.push(ColumnSql {
            column: c.column.clone(),
            alias: prev,
            changed: format!("({})", changed.join(" OR ")),
            steps,
            undo: format!(
                "CASE WHEN {doc} IS NULL THEN NULL ELSE ({})::text END",
                undo.join(" || ")
            ),
            changes: changes.join(" || "),
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
/// parameters, `x1` the values the edits read (each once), `x2` whether
/// the row is in the shape the edits apply to, and `x` works out
/// everything else once per row: per written column
/// whether it changes, its new value (built edit by edit, each `LATERAL`
/// step naming the one before), its inverse patch, its changed paths and
/// sizes. A commit's `w` writes the rows that change and returns what `b`
/// records as their before-images. Every later step reads `x` alone, so
/// no document is read twice and no step joins back to it: the rows are
/// locked, so every row that changes is written, and the statement
/// returns how many were (`w`'s count) for the caller to check.
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
    // Per written column: ch (changes), n (new value), u (inverse patch),
    // d (changed paths), bs and as (sizes before and after).
    let per_col: String = p
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let doc = names.col(&c.column);
            let ch = format!("(x.plain AND {})", c.changed);
            format!(
                ", {ch} AS ch{i}, {new} AS n{i},
                   CASE WHEN {ch} THEN {undo} END AS u{i},
                   CASE WHEN {ch} THEN ({changes})::text END AS d{i},
                   pg_column_size({doc}) AS bs{i}, CASE WHEN {ch} THEN pg_column_size({new}) END AS as{i}",
                new = c.alias,
                undo = c.undo,
                changes = c.changes,
            )
        })
        .collect();
    let steps: String = p
        .columns
        .iter()
        .flat_map(|c| c.steps.iter())
        .map(|s| format!(" {s}"))
        .collect();
    let mut sql = format!(
        "WITH i AS (
            SELECT item_no, key, key_int, group_key, refs FROM backfill_item
            WHERE run_id = $1 AND shard_no = $2 AND item_no = ANY($3)
         ), x0 AS (
            SELECT i.item_no, i.key, i.group_key, i.refs, t.{key} AS tk{cols}{param_cols}
            FROM i LEFT JOIN {table} t ON {join} {param_join}
         ), x1 AS (
            SELECT x0.*{defs} FROM x0
         ), x2 AS (
            SELECT x.*, (x.tk IS NOT NULL AND {plain}) AS plain FROM x1 AS x
         ), x AS (
            SELECT x.*, (x.plain AND ({any_change})) AS chg, {current} AS cur{per_col}
            FROM x2 AS x{steps}
         )",
        defs = p.defs.iter().map(|d| format!(", {d}")).collect::<String>(),
        join = key_join(target),
        plain = p.plain,
        current = p.current,
    );
    let written = if commit {
        let sets: Vec<String> = p
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let q = quote_ident(&c.column);
                format!("{q} = CASE WHEN x.ch{i} THEN x.n{i} ELSE t.{q} END")
            })
            .collect();
        let returned: String = (0..p.columns.len())
            .map(|i| format!(", x.ch{i}, x.u{i}"))
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
        "(SELECT count(*) FROM w)"
    } else {
        "0::int8"
    };
    let out_cols: String = (0..p.columns.len())
        .map(|i| format!(", x.d{i}, x.bs{i}, x.as{i}"))
        .collect();
    sql.push_str(&format!(
        " SELECT x.item_no, x.key, x.group_key, x.refs, x.tk IS NOT NULL, x.plain,
                 x.chg, {written}, x.cur{out_cols}
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

/// The item numbers of the rows handed back, and the batch's rows as the
/// statement returned them.
pub(super) type Pushed = (Vec<PushedRow>, Vec<i32>);

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
    let (mut changing, mut wrote) = (0i64, 0i64);
    for r in rows {
        wrote = r.get::<Option<i64>, _>(7).unwrap_or(0);
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
                let at = 9 + 3 * i;
                let Some(changes) = r.get::<Option<String>, _>(at) else {
                    continue;
                };
                let size = |n: usize| r.get::<Option<i32>, _>(n).unwrap_or(0).max(0) as u64;
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
            current: r.get(8),
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
    Ok((out, handed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backfill_job::pushdown::plan;
    use backfill_job::JobSpec;

    #[test]
    fn a_commit_writes_and_records_before_images_in_one_statement_and_a_dry_run_writes_nothing() {
        let spec = JobSpec::parse(
            r#"
name = "t"
[[targets]]
name = "rows"
table = "docs"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT 1"
[[targets.rules]]
column = "doc"
op = "set"
path = "/a/b"
param = "title"
"#,
        )
        .unwrap();
        let t = &spec.targets[0];
        let p = plan(t, Some(("doc", "/a/b")), |_| true).unwrap();
        let (commit, binds) = statement(t, &p, true);
        assert!(commit.contains("UPDATE \"docs\" t SET \"doc\" = CASE WHEN x.ch0 THEN x.n0"));
        assert!(commit.contains("jsonb_set(x.c0, $"), "{commit}");
        assert!(commit.contains("INSERT INTO backfill_before_image"));
        assert!(commit.contains("unnest($4::text[], $5::jsonb[])"));
        assert!(matches!(binds[0], Bind::JsonArray(_)));
        if std::env::var_os("BACKFILL_PRINT_PUSHDOWN_SQL").is_some() {
            eprintln!("{commit}");
        }
        let (dry, _) = statement(t, &p, false);
        assert!(!dry.contains("UPDATE") && !dry.contains("INSERT"));
        // Every placeholder is bound.
        let highest = (1..=Statement::FIXED + binds.len())
            .rev()
            .find(|n| commit.contains(&format!("${n}::")))
            .unwrap();
        assert_eq!(highest, Statement::FIXED + binds.len());
    }
}
