//! The SQLite back end of the embedded mode: the same ledger and the same
//! operations as PostgreSQL, in SQLite's dialect.
//!
//! SQLite has one writer at a time. Every write transaction starts with
//! `BEGIN IMMEDIATE`, so it takes the write lock up front and waits (busy
//! timeout) instead of failing on a lock upgrade; a shard's compare-and-set
//! writes, before-images and ledger record still commit together. JSON
//! columns are text, as Django stores JSONField on SQLite, and the
//! compare-and-set compares that text exactly as it was read.

use backfill_job::plan::{parse_ref_row, CutShard, GroupRow, ShardCutter};
use backfill_job::spec::{quote_ident, Dialect, TargetSpec};
use backfill_job::{KeyType, RowOutcome, Scope, Tally};
use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, SqlitePool, TypeInfo, ValueRef};
use std::collections::{BTreeMap, HashSet};

use backfill_job::fold::final_state;
use backfill_job::plan::{finish_plan, NewRun};
use backfill_job::shard::{failed_tally, shard_tally, EvaluatedRow, FetchedRow};

use crate::ledger::{decode, RunRecord};
use crate::planning::{
    eligible_keys, key_ints, key_order, not_an_integer, requested_keys, uses_param, Derived,
};
use crate::shard::{Committed, ShardCommit, ShardRows};
use crate::sqlite::{begin_write, json_text, parse_json};
use crate::{sql, StoreError};
use backfill_job::{JobSpec, Plan, PlannedGroup};

/// A row of a spec query as a JSON object, whatever its columns.
fn row_object(row: &SqliteRow) -> Result<Map<String, Value>, StoreError> {
    let mut m = Map::new();
    for (i, col) in row.columns().iter().enumerate() {
        let raw = row.try_get_raw(i).map_err(sql("read a column"))?;
        let v = if raw.is_null() {
            Value::Null
        } else {
            match raw.type_info().name() {
                "INTEGER" | "BOOLEAN" | "INT8" => {
                    Value::from(row.try_get::<i64, _>(i).map_err(sql("read an integer"))?)
                }
                "REAL" => serde_json::Number::from_f64(
                    row.try_get::<f64, _>(i).map_err(sql("read a number"))?,
                )
                .map(Value::Number)
                .unwrap_or(Value::Null),
                _ => Value::String(
                    row.try_get::<String, _>(i)
                        .map_err(sql("read a text column"))?,
                ),
            }
        };
        m.insert(col.name().to_string(), v);
    }
    Ok(m)
}

pub(crate) async fn group_rows(
    pool: &SqlitePool,
    spec: &JobSpec,
    scope: &Scope,
) -> Result<Vec<GroupRow>, StoreError> {
    let Some(groups) = &spec.groups else {
        return Ok(Vec::new());
    };
    let user_sql = groups.query.for_dialect("groups.query", Dialect::Sqlite)?;
    let mut q = sqlx::query(user_sql);
    if uses_param(user_sql, Dialect::Sqlite) {
        q = q.bind(requested_keys(scope));
    }
    let rows = q
        .fetch_all(pool)
        .await
        .map_err(sql(format!("job `{}`: groups.query failed", spec.name)))?;
    rows.iter()
        .map(|r| {
            GroupRow::from_object(row_object(r)?)
                .map_err(|m| StoreError::Data(format!("groups.query: {m}")))
        })
        .collect()
}

pub(crate) async fn create_run(
    pool: &SqlitePool,
    new: NewRun<'_>,
    groups: Vec<PlannedGroup>,
) -> Result<Plan, StoreError> {
    let spec = new.spec;
    let eligible = eligible_keys(spec, &groups);
    // Read the references first: SQLite serializes writers, and the plan is
    // written in one transaction afterwards.
    let mut tx = begin_write(pool, "plan").await?;
    sqlx::query(
        "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally, sample, kind)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', '{}', 0, '{}', ?7, ?8)",
    )
    .bind(new.run_id)
    .bind(&spec.name)
    .bind(&spec.source)
    .bind(&spec.hash)
    .bind(new.mode.as_str())
    .bind(json_text(new.scope)?)
    .bind(new.sample)
    .bind(new.kind.as_str())
    .execute(&mut *tx)
    .await
    .map_err(sql("record run"))?;

    let mut tally = Tally::default();
    let mut next_shard = 0u32;
    let mut targets = Vec::new();
    for (ti, target) in spec.targets.iter().enumerate() {
        let field = format!("targets[{ti}].query");
        let user_sql = target.query.for_dialect(&field, Dialect::Sqlite)?;
        // The CAST is exact for integers and cheap: no need to ask SQLite
        // how the key column is typed.
        let order = key_order(Dialect::Sqlite, target.key_type, false);
        let wrapped = format!("SELECT * FROM ({user_sql}) q {order}");
        let mut q = sqlx::query(&wrapped);
        if uses_param(user_sql, Dialect::Sqlite) {
            q = q.bind(eligible.clone());
        }
        let rows = q
            .fetch_all(&mut *tx)
            .await
            .map_err(sql(format!("job `{}`: {field} failed", spec.name)))?;
        let mut cutter = ShardCutter::new(&target.name, new.shard_size, next_shard);
        let mut cut = Vec::new();
        for row in &rows {
            let r = parse_ref_row(row_object(row)?, &field, spec.groups.is_some())
                .map_err(StoreError::Data)?
                .with_canonical_key(target.key_type)
                .map_err(|k| not_an_integer(spec, &target.name, &field, &k))?;
            if new.sample.is_some_and(|f| !r.in_sample(f)) {
                continue;
            }
            cut.extend(cutter.push(r, &mut tally));
        }
        drop(rows);
        next_shard = cutter.next_shard_no();
        let (last, planned) = cutter.finish(&mut tally);
        if let Some(shard) = last {
            next_shard = shard.shard_no + 1;
            cut.push(shard);
        }
        for shard in &cut {
            write_shard(&mut tx, new.run_id, &target.name, target.key_type, shard).await?;
        }
        targets.push(planned);
    }
    let (plan, summary) = finish_plan(&new, groups, targets, next_shard, tally);
    let plan_text = json_text(&plan)?;
    let tally_text = json_text(&plan.tally)?;
    match summary {
        Some(summary) => {
            sqlx::query("UPDATE backfill_run SET plan = ?2, tally = ?3, shards_total = 0, state = ?4, summary = ?5, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE run_id = ?1")
            .bind(new.run_id)
            .bind(&plan_text)
            .bind(&tally_text)
            .bind(final_state(&plan.tally).as_str())
            .bind(&summary)
            .execute(&mut *tx)
            .await
            .map_err(sql("finish empty run"))?;
        }
        None => {
            sqlx::query("UPDATE backfill_run SET plan = ?2, tally = ?3, shards_total = ?4 WHERE run_id = ?1")
                .bind(new.run_id)
                .bind(&plan_text)
                .bind(&tally_text)
                .bind(plan.shards_total as i64)
                .execute(&mut *tx)
                .await
                .map_err(sql("record plan"))?;
        }
    }
    tx.commit().await.map_err(sql("commit plan"))?;
    Ok(plan)
}

async fn write_shard(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    run_id: &str,
    target: &str,
    key_type: KeyType,
    shard: &CutShard,
) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (shard.items.first(), shard.items.last()) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO backfill_shard (run_id, shard_no, target, first_key, last_key, rows) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(run_id)
    .bind(shard.shard_no as i64)
    .bind(target)
    .bind(&first.key)
    .bind(&last.key)
    .bind(shard.items.len() as i64)
    .execute(&mut **tx)
    .await
    .map_err(sql("record shard"))?;
    let ints = key_ints(target, key_type, shard)?;
    for (n, (item, key_int)) in shard.items.iter().zip(ints).enumerate() {
        sqlx::query(
            "INSERT INTO backfill_item (run_id, shard_no, item_no, key, key_int, group_key, refs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .bind(run_id)
        .bind(shard.shard_no as i64)
        .bind(n as i64)
        .bind(&item.key)
        .bind(key_int)
        .bind(&item.group)
        .bind(item.refs as i64)
        .execute(&mut **tx)
        .await
        .map_err(sql("record shard items"))?;
    }
    Ok(())
}

pub(crate) async fn shard_done(
    pool: &SqlitePool,
    run_id: &str,
    shard_no: u32,
) -> Result<Option<Tally>, StoreError> {
    let row = sqlx::query(
        "SELECT result FROM backfill_shard WHERE run_id = ?1 AND shard_no = ?2 AND state IN ('done', 'dead')",
    )
    .bind(run_id)
    .bind(shard_no as i64)
    .fetch_optional(pool)
    .await
    .map_err(sql("read shard state"))?;
    match row {
        None => Ok(None),
        Some(r) => Ok(Some(decode(
            "shard result",
            parse_json("shard result", r.get(0))?,
        )?)),
    }
}

fn key_join(target: &TargetSpec) -> String {
    let k = quote_ident(&target.key);
    match target.key_type {
        KeyType::Integer => format!("t.{k} = i.key_int"),
        KeyType::Text => format!("t.{k} = i.key"),
    }
}

pub(crate) async fn fetch_shard(
    pool: &SqlitePool,
    run_id: &str,
    target: &TargetSpec,
    shard_no: u32,
) -> Result<ShardRows, StoreError> {
    if let Some(done) = shard_done(pool, run_id, shard_no).await? {
        return Ok(ShardRows::Done(done));
    }
    let cols: Vec<&String> = target.all_columns().collect();
    let select_cols: String = cols
        .iter()
        .map(|c| format!(", t.{}", quote_ident(c)))
        .collect();
    let q = format!(
        "SELECT i.key, i.group_key, i.refs, (t.{key} IS NOT NULL) AS found{select_cols}
         FROM backfill_item i LEFT JOIN {table} t ON {join}
         WHERE i.run_id = ?1 AND i.shard_no = ?2 ORDER BY i.item_no",
        key = quote_ident(&target.key),
        table = quote_ident(&target.table),
        join = key_join(target),
    );
    let rows = sqlx::query(&q)
        .bind(run_id)
        .bind(shard_no as i64)
        .fetch_all(pool)
        .await
        .map_err(sql(format!(
            "read rows of shard {shard_no} from {}",
            target.table
        )))?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let found: bool = r.get(3);
        let columns = if found {
            let mut m = BTreeMap::new();
            for (i, c) in cols.iter().enumerate() {
                let v: Option<String> = r
                    .try_get(4 + i)
                    .map_err(sql(format!("read column {c} as JSON text")))?;
                m.insert((*c).clone(), v);
            }
            Some(m)
        } else {
            None
        };
        out.push(FetchedRow {
            key: r.get(0),
            group: r.get(1),
            refs: r.get::<i64, _>(2).max(0) as u64,
            columns,
            // SQLite compares the documents themselves.
            digests: BTreeMap::new(),
            version: None,
        });
    }
    Ok(ShardRows::Pending(out))
}

/// Locks the shard for this transaction: a no-op write that takes SQLite's
/// write lock and returns the shard's state.
async fn lock_shard(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    run_id: &str,
    shard_no: u32,
) -> Result<Option<(String, Option<String>)>, StoreError> {
    let row = sqlx::query("UPDATE backfill_shard SET state = state WHERE run_id = ?1 AND shard_no = ?2 RETURNING state, result")
        .bind(run_id)
        .bind(shard_no as i64)
        .fetch_optional(&mut **tx)
        .await
        .map_err(sql("lock shard"))?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

pub(crate) async fn commit_shard(
    pool: &SqlitePool,
    c: ShardCommit<'_>,
) -> Result<Committed, StoreError> {
    let target = c.target;
    let mut tx = begin_write(pool, "shard").await?;
    let Some((state, result)) = lock_shard(&mut tx, c.run_id, c.shard_no).await? else {
        return Err(StoreError::Data(format!(
            "shard {} of run {} is not in the ledger",
            c.shard_no, c.run_id
        )));
    };
    if state == "done" || state == "dead" {
        tx.rollback().await.map_err(sql("rollback shard"))?;
        return Ok(Committed::AlreadyDone(decode(
            "shard result",
            parse_json("shard result", result)?,
        )?));
    }
    let mut rows = c.rows;
    let mut written: HashSet<String> = HashSet::new();
    let mut retried = 0u64;
    if c.mode.is_commit() {
        for r in rows.iter_mut() {
            if !matches!(r.outcome, RowOutcome::Changed(_)) {
                continue;
            }
            if write_one(&mut tx, c.run_id, c.shard_no, target, r).await? {
                written.insert(r.key.clone());
                continue;
            }
            let Some(retry) = c.retry else { continue };
            // Edited by the application since it was read: read it again
            // (this transaction holds SQLite's write lock, so it stays put)
            // and apply the rules to what the application wrote.
            match read_row(&mut tx, target, &r.key).await? {
                None => r.outcome = RowOutcome::Skipped("row no longer exists".into()),
                Some(cols) => {
                    r.outcome = retry(&r.group, &cols);
                    r.read = cols;
                }
            }
            if matches!(r.outcome, RowOutcome::Changed(_)) {
                if !write_one(&mut tx, c.run_id, c.shard_no, target, r).await? {
                    continue;
                }
                written.insert(r.key.clone());
            }
            retried += 1;
        }
    }
    let mut tally = shard_tally(&target.name, c.mode, &rows, &written);
    tally.conflicts_retried = retried;
    for r in &rows {
        if let RowOutcome::Error(msg) = &r.outcome {
            sqlx::query(
                "INSERT INTO backfill_quarantine (run_id, shard_no, target, key, group_key, refs, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(c.run_id)
            .bind(c.shard_no as i64)
            .bind(&target.name)
            .bind(&r.key)
            .bind(&r.group)
            .bind(r.refs as i64)
            .bind(msg)
            .execute(&mut *tx)
            .await
            .map_err(sql("quarantine rows"))?;
        }
    }
    sqlx::query("UPDATE backfill_shard SET state = 'done', result = ?3, worker = ?4, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), deliveries = deliveries + 1,
                lease_until = NULL, elapsed_ms = CAST((julianday('now') - julianday(started_at)) * 86400000 AS INTEGER)
         WHERE run_id = ?1 AND shard_no = ?2")
    .bind(c.run_id)
    .bind(c.shard_no as i64)
    .bind(json_text(&tally)?)
    .bind(c.worker)
    .execute(&mut *tx)
    .await
    .map_err(sql("record shard done"))?;
    tx.commit().await.map_err(sql("commit shard"))?;
    Ok(Committed::Applied(tally))
}

pub(crate) async fn shard_attempt_failed(
    pool: &SqlitePool,
    run_id: &str,
    shard_no: u32,
    error: &str,
) -> Result<u32, StoreError> {
    let mut tx = begin_write(pool, "record a failed attempt").await?;
    let n: Option<i64> = sqlx::query_scalar(
        "UPDATE backfill_shard SET failures = failures + 1, last_error = ?3, state = 'pending', lease_until = NULL
         WHERE run_id = ?1 AND shard_no = ?2 AND state IN ('pending', 'running') RETURNING failures",
    )
    .bind(run_id)
    .bind(shard_no as i64)
    .bind(error)
    .fetch_optional(&mut *tx)
    .await
    .map_err(sql("record a failed shard attempt"))?;
    tx.commit().await.map_err(sql("commit failed attempt"))?;
    Ok(n.unwrap_or(0).max(0) as u32)
}

pub(crate) async fn fail_shard(
    pool: &SqlitePool,
    run_id: &str,
    shard_no: u32,
    target: &str,
    error: &str,
) -> Result<Committed, StoreError> {
    let mut tx = begin_write(pool, "shard").await?;
    let Some((state, result)) = lock_shard(&mut tx, run_id, shard_no).await? else {
        return Err(StoreError::Data(format!(
            "shard {shard_no} of run {run_id} is not in the ledger"
        )));
    };
    if state == "done" || state == "dead" {
        tx.rollback().await.map_err(sql("rollback shard"))?;
        return Ok(Committed::AlreadyDone(decode(
            "shard result",
            parse_json("shard result", result)?,
        )?));
    }
    let items: Vec<(String, String)> = sqlx::query("SELECT key, group_key FROM backfill_item WHERE run_id = ?1 AND shard_no = ?2 ORDER BY item_no")
        .bind(run_id)
        .bind(shard_no as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql("read shard items"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let tally = failed_tally(target, shard_no, error, &items);
    sqlx::query(
        "INSERT OR IGNORE INTO backfill_quarantine (run_id, shard_no, target, key, group_key, refs, error)
         SELECT run_id, shard_no, ?3, key, group_key, refs, ?4 FROM backfill_item WHERE run_id = ?1 AND shard_no = ?2",
    )
    .bind(run_id)
    .bind(shard_no as i64)
    .bind(target)
    .bind(format!("shard {shard_no} failed on every attempt: {error}"))
    .execute(&mut *tx)
    .await
    .map_err(sql("quarantine rows"))?;
    sqlx::query("UPDATE backfill_shard SET state = 'dead', result = ?3, worker = 'failed', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), last_error = ?4
         WHERE run_id = ?1 AND shard_no = ?2")
    .bind(run_id)
    .bind(shard_no as i64)
    .bind(json_text(&tally)?)
    .bind(error)
    .execute(&mut *tx)
    .await
    .map_err(sql("record shard failed"))?;
    tx.commit().await.map_err(sql("commit shard"))?;
    Ok(Committed::Applied(tally))
}

pub(crate) async fn create_derived_run(
    pool: &SqlitePool,
    run_id: &str,
    original: &RunRecord,
    shard_size: u32,
    derived: Derived,
) -> Result<Plan, StoreError> {
    let spec = &original.spec;
    let mode = derived.mode(original);
    let mut tx = begin_write(pool, "plan").await?;
    sqlx::query(
        "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally, revert_of, kind, retry_of)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', '{}', 0, '{}', ?7, ?8, ?9)",
    )
    .bind(run_id)
    .bind(&spec.name)
    .bind(&spec.source)
    .bind(&spec.hash)
    .bind(mode.as_str())
    .bind(json_text(&original.scope_value)?)
    .bind(derived.revert_of(original))
    .bind(derived.kind().as_str())
    .bind(derived.retry_of(original))
    .execute(&mut *tx)
    .await
    .map_err(sql("record run"))?;
    let mut tally = Tally::default();
    let mut next_shard = 0u32;
    let mut targets = Vec::new();
    let rows_sql = derived.rows_sql();
    for target in &spec.targets {
        let rows = sqlx::query(rows_sql)
            .bind(&original.run_id)
            .bind(&target.name)
            .fetch_all(&mut *tx)
            .await
            .map_err(sql("read the rows of the run"))?;
        let mut cutter = ShardCutter::new(&target.name, shard_size, next_shard);
        let mut cut = Vec::new();
        for r in rows {
            cut.extend(cutter.push(
                crate::planning::quarantine_ref(r.get(0), r.get(1), r.get(2)),
                &mut tally,
            ));
        }
        next_shard = cutter.next_shard_no();
        let (last, planned) = cutter.finish(&mut tally);
        if let Some(shard) = last {
            next_shard = shard.shard_no + 1;
            cut.push(shard);
        }
        for shard in &cut {
            write_shard(&mut tx, run_id, &target.name, target.key_type, shard).await?;
        }
        targets.push(planned);
    }
    if derived == Derived::Retry {
        sqlx::query(
            "UPDATE backfill_quarantine SET retried_by = ?2 WHERE run_id = ?1 AND retried_by IS NULL",
        )
        .bind(&original.run_id)
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .map_err(sql("mark quarantined rows retried"))?;
    }
    let new = NewRun {
        run_id,
        spec,
        mode,
        scope: &original.scope_value,
        shard_size,
        sample: None,
        kind: derived.kind(),
    };
    let (plan, summary) = finish_plan(
        &new,
        original.plan.groups.clone(),
        targets,
        next_shard,
        tally,
    );
    let state = match &summary {
        Some(_) => final_state(&plan.tally).as_str(),
        None => "running",
    };
    sqlx::query("UPDATE backfill_run SET plan = ?2, tally = ?3, shards_total = ?4, state = ?5, summary = ?6,
                finished_at = CASE WHEN ?5 = 'running' THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END
         WHERE run_id = ?1")
    .bind(run_id)
    .bind(json_text(&plan)?)
    .bind(json_text(&plan.tally)?)
    .bind(plan.shards_total as i64)
    .bind(state)
    .bind(&summary)
    .execute(&mut *tx)
    .await
    .map_err(sql("record plan"))?;
    tx.commit().await.map_err(sql("commit plan"))?;
    Ok(plan)
}

/// One compare-and-set UPDATE: every JSON column must still hold the text
/// that was read. Records the before-images when it writes.
async fn write_one(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    run_id: &str,
    shard_no: u32,
    target: &TargetSpec,
    r: &EvaluatedRow,
) -> Result<bool, StoreError> {
    let RowOutcome::Changed(new) = &r.outcome else {
        return Ok(false);
    };
    let all_cols: Vec<&String> = target.all_columns().collect();
    let sets: Vec<String> = new
        .keys()
        .enumerate()
        .map(|(i, col)| format!("{} = ?{}", quote_ident(col), i + 2))
        .collect();
    let base = new.len() + 2;
    let cas: Vec<String> = all_cols
        .iter()
        .enumerate()
        .map(|(i, col)| format!("{} IS ?{}", quote_ident(col), base + i))
        .collect();
    let q = format!(
        "UPDATE {table} SET {sets} WHERE {key} = ?1 AND {cas}",
        table = quote_ident(&target.table),
        sets = sets.join(", "),
        key = quote_ident(&target.key),
        cas = cas.join(" AND "),
    );
    let mut query = sqlx::query(&q);
    query = bind_key(query, target, &r.key)?;
    for v in new.values() {
        query = query.bind(v.clone());
    }
    for col in &all_cols {
        query = query.bind(r.read.get(*col).cloned().flatten());
    }
    let done = query
        .execute(&mut **tx)
        .await
        .map_err(sql(format!("write rows of {}", target.table)))?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    for col in new.keys() {
        sqlx::query(
            "INSERT INTO backfill_before_image (run_id, shard_no, target, key, column_name, before)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(run_id)
        .bind(shard_no as i64)
        .bind(&target.name)
        .bind(&r.key)
        .bind(col)
        .bind(r.read.get(col).cloned().flatten())
        .execute(&mut **tx)
        .await
        .map_err(sql("record before-images"))?;
    }
    Ok(true)
}

fn bind_key<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    target: &TargetSpec,
    key: &str,
) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>, StoreError> {
    Ok(match target.key_type {
        KeyType::Integer => query.bind(
            key.parse::<i64>()
                .map_err(|_| StoreError::Data(format!("key `{key}` is not an integer")))?,
        ),
        KeyType::Text => query.bind(key.to_string()),
    })
}

/// A row's JSON columns as they are now; `None` when it is gone.
async fn read_row(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    target: &TargetSpec,
    key: &str,
) -> Result<Option<BTreeMap<String, Option<String>>>, StoreError> {
    let cols: Vec<&String> = target.all_columns().collect();
    let list: Vec<String> = cols.iter().map(|c| quote_ident(c)).collect();
    let q = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        list.join(", "),
        quote_ident(&target.table),
        quote_ident(&target.key)
    );
    let row = bind_key(sqlx::query(&q), target, key)?
        .fetch_optional(&mut **tx)
        .await
        .map_err(sql(format!("read an edited row of {} again", target.table)))?;
    Ok(row.map(|r| {
        cols.iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    (*c).clone(),
                    r.try_get::<Option<String>, _>(i).ok().flatten(),
                )
            })
            .collect()
    }))
}
