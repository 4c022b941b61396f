//! SQLite's planning: a spec query's rows read as JSON objects whatever
//! their columns, a target's rows read in key order (`CAST` to integer)
//! and the plan written in one `IMMEDIATE` transaction, items one
//! statement each, and derived runs (retry, revert) planned from the
//! ledger's own rows.

use backfill_job::fold::finish_plan;
use backfill_job::plan::{CutShard, GroupRow, NewRun};
use backfill_job::spec::Dialect;
use backfill_job::{KeyType, Plan, Tally};
use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::{Column, Row, SqlitePool, TypeInfo, ValueRef};

use super::{begin_write, json_text};
use crate::error::{sql, StoreError};
use crate::model::planning::{
    collect_groups, cut_target, eligible_keys, in_run, key_ints, key_order, recorded_plan, ref_row,
    uses_param, PlanFrom, ShardSink,
};

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

/// The groups query's rows, each read as a group as it comes.
pub(super) async fn group_rows(
    pool: &SqlitePool,
    user_sql: &str,
    keys: Option<Option<String>>,
    what: &str,
) -> Result<Vec<GroupRow>, StoreError> {
    let mut q = sqlx::query(user_sql);
    if let Some(keys) = keys {
        q = q.bind(keys);
    }
    collect_groups(q.fetch(pool), what, |row| row_object(&row)).await
}

/// Plans a run in one transaction: SQLite serves one process, whose
/// in-process queue is sent the tasks once the plan is recorded, so a run
/// is never left planning and there is no sink to feed.
pub(super) async fn create_run(
    pool: &SqlitePool,
    new: NewRun<'_>,
    from: PlanFrom,
    _sink: Option<&ShardSink>,
) -> Result<Plan, StoreError> {
    let PlanFrom::New(groups) = from else {
        return Err(StoreError::Data(format!(
            "run {} is marked as being planned, which a SQLite ledger never leaves a run",
            new.run_id
        )));
    };
    let spec = new.spec;
    let eligible = eligible_keys(spec, &groups);
    // Read the references first: SQLite serializes writers, and the plan is
    // written in one transaction afterwards.
    let mut tx = begin_write(pool, "plan").await?;
    sqlx::query(
        "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally, sample, kind, schedule)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', '{}', 0, '{}', ?7, ?8, ?9)",
    )
    .bind(new.run_id)
    .bind(&spec.name)
    .bind(&spec.source)
    .bind(&spec.hash)
    .bind(new.mode.as_str())
    .bind(json_text(new.scope)?)
    .bind(new.sample)
    .bind(new.kind.as_str())
    .bind(new.schedule.map(|w| w.ledger_text()))
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
        let refs = rows
            .iter()
            .map(|row| ref_row(spec, target, &field, row_object(row)?))
            .filter(|r| r.as_ref().map_or(true, |r| in_run(&new, r)))
            .collect::<Result<Vec<_>, _>>()?;
        drop(rows);
        let (cut, planned) = cut_target(
            &target.name,
            new.shard_size,
            &mut next_shard,
            refs,
            &mut tally,
        );
        for shard in &cut {
            write_shard(&mut tx, new.run_id, &target.name, target.key_type, shard).await?;
        }
        targets.push(planned);
    }
    let (plan, summary) = finish_plan(&new, groups, targets, next_shard, tally);
    record_plan(&mut tx, new.run_id, &plan, summary).await?;
    tx.commit().await.map_err(sql("commit plan"))?;
    Ok(plan)
}

/// Records a run's plan, its first totals and group records, and the
/// state it starts in (finished when there is nothing to send).
async fn record_plan(
    tx: &mut sqlx::SqliteConnection,
    run_id: &str,
    plan: &Plan,
    summary: Option<String>,
) -> Result<(), StoreError> {
    let r = recorded_plan(plan, summary)?;
    // The groups first: the plan's list of them is made from their rows.
    super::ledger::add_plan_groups(tx, run_id, &plan.groups).await?;
    sqlx::query("UPDATE backfill_run SET
                plan = json_set(?2, '$.groups', json(COALESCE(
                    (SELECT json_group_array(json(entry) ORDER BY n) FROM backfill_group WHERE run_id = ?1),
                    '[]'))),
                tally = ?3, shards_total = ?4, state = ?5, summary = ?6,
                finished_at = CASE WHEN ?5 = 'running' THEN NULL ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END
         WHERE run_id = ?1")
    .bind(run_id)
    .bind(&r.plan)
    .bind(json_text(&r.totals)?)
    .bind(plan.shards_total as i64)
    .bind(r.state)
    .bind(&r.summary)
    .execute(&mut *tx)
    .await
    .map_err(sql("record plan"))?;
    super::ledger::add_groups(tx, run_id, r.groups).await
}

pub(super) async fn write_shard(
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

/// A derived run's plan.
pub(super) async fn record_derived_plan(
    tx: &mut sqlx::SqliteConnection,
    run_id: &str,
    plan: &Plan,
    summary: Option<String>,
) -> Result<(), StoreError> {
    record_plan(tx, run_id, plan, summary).await
}
