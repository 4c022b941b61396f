//! PostgreSQL's planning: the spec's groups query read as JSON
//! (`row_to_json`), a target's rows streamed on a connection of their own
//! in key order while the plan is written in one transaction, items
//! written in batches through `unnest`, and derived runs (retry, revert)
//! planned from the ledger's own rows.

use backfill_job::fold::finish_plan;
use backfill_job::plan::{CutShard, NewRun, ShardCutter};
use backfill_job::spec::Dialect;
use backfill_job::{KeyType, Plan, PlannedGroup, Tally};
use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::{Column, Executor, PgPool, Postgres, Row, Statement, Transaction, TypeInfo};

use crate::error::{sql, StoreError};
use crate::model::ledger::RunRecord;
use crate::model::planning::{
    eligible_keys, finish_derived, in_run, key_ints, key_order, obj, recorded_plan, ref_row,
    uses_param, Derived,
};

/// How many items one INSERT carries.
const ITEM_BATCH: usize = 5_000;

/// The groups query's rows as JSON objects.
pub(super) async fn group_rows(
    pool: &PgPool,
    user_sql: &str,
    keys: Option<Option<String>>,
    what: &str,
) -> Result<Vec<Map<String, Value>>, StoreError> {
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({user_sql}) q");
    let mut q = sqlx::query(&wrapped);
    if let Some(keys) = keys {
        q = q.bind(keys);
    }
    let rows = q.fetch_all(pool).await.map_err(sql(what))?;
    rows.into_iter()
        .map(|r| obj(&r.get::<String, _>(0), "groups.query"))
        .collect()
}

/// Records the plan of a new run in one transaction; the target rows are
/// streamed, so memory stays bounded by one shard.
pub(super) async fn create_run(
    pool: &PgPool,
    new: NewRun<'_>,
    groups: Vec<PlannedGroup>,
) -> Result<Plan, StoreError> {
    let spec = new.spec;
    let eligible = eligible_keys(spec, &groups);
    let mut tx = pool.begin().await.map_err(sql("begin plan"))?;
    let empty = serde_json::json!({});
    sqlx::query(
        "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally, sample, kind)
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, 0, $7, $8, $9)",
    )
    .bind(new.run_id)
    .bind(&spec.name)
    .bind(&spec.source)
    .bind(&spec.hash)
    .bind(new.mode.as_str())
    .bind(serde_json::to_value(new.scope).unwrap_or(Value::Null))
    .bind(&empty)
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
        let user_sql = target.query.for_dialect(&field, Dialect::Postgres)?;
        let typed = target.key_type == KeyType::Integer && key_is_integer(pool, user_sql).await;
        let order = key_order(Dialect::Postgres, target.key_type, typed);
        let wrapped = format!("SELECT row_to_json(q)::text FROM ({user_sql}) q {order}");
        let mut q = sqlx::query(&wrapped);
        if uses_param(user_sql, Dialect::Postgres) {
            q = q.bind(eligible.clone());
        }
        // Streamed on a connection of its own while the plan is written
        // in the transaction: memory stays bounded by one shard.
        let mut stream = q.fetch(pool);
        let mut cutter = ShardCutter::new(&target.name, new.shard_size, next_shard);
        let what = format!("job `{}`: {field} failed", spec.name);
        while let Some(row) = stream.try_next().await.map_err(sql(what.clone()))? {
            let text: String = row.get(0);
            let r = ref_row(spec, target, &field, obj(&text, &field)?)?;
            if !in_run(&new, &r) {
                continue;
            }
            if let Some(shard) = cutter.push(r, &mut tally) {
                write_shard(&mut tx, new.run_id, &target.name, target.key_type, &shard).await?;
            }
        }
        drop(stream);
        next_shard = cutter.next_shard_no();
        let (last, planned) = cutter.finish(&mut tally);
        if let Some(shard) = last {
            write_shard(&mut tx, new.run_id, &target.name, target.key_type, &shard).await?;
            next_shard = shard.shard_no + 1;
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
    tx: &mut Transaction<'_, Postgres>,
    run_id: &str,
    plan: &Plan,
    summary: Option<String>,
) -> Result<(), StoreError> {
    let r = recorded_plan(plan, summary)?;
    let totals = serde_json::to_value(&r.totals).map_err(|e| StoreError::Data(e.to_string()))?;
    // The groups first: the plan's list of them is made from their rows.
    super::ledger::add_plan_groups(tx, run_id, &plan.groups).await?;
    sqlx::query(
        "UPDATE backfill_run SET
                plan = jsonb_set($2::jsonb, '{groups}', COALESCE(
                    (SELECT jsonb_agg(entry ORDER BY n) FROM backfill_group WHERE run_id = $1),
                    '[]'::jsonb)),
                tally = $3, shards_total = $4, state = $5, summary = $6,
                finished_at = CASE WHEN $5 = 'running' THEN NULL ELSE now() END
         WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(&r.plan)
    .bind(&totals)
    .bind(plan.shards_total as i32)
    .bind(r.state)
    .bind(&r.summary)
    .execute(&mut **tx)
    .await
    .map_err(sql("record plan"))?;
    super::ledger::add_groups(tx, run_id, r.groups).await
}

/// Plans a run derived from a finished run in one transaction.
pub(super) async fn create_derived_run(
    pool: &PgPool,
    run_id: &str,
    original: &RunRecord,
    shard_size: u32,
    derived: Derived,
) -> Result<Plan, StoreError> {
    let spec = &original.spec;
    let mode = derived.mode(original);
    let mut tx = pool.begin().await.map_err(sql("begin plan"))?;
    let empty = serde_json::json!({});
    sqlx::query(
        "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally, revert_of, kind, retry_of)
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, 0, $7, $8, $9, $10)",
    )
    .bind(run_id)
    .bind(&spec.name)
    .bind(&spec.source)
    .bind(&spec.hash)
    .bind(mode.as_str())
    .bind(serde_json::to_value(&original.scope_value).unwrap_or(Value::Null))
    .bind(&empty)
    .bind(derived.revert_of(original))
    .bind(derived.kind().as_str())
    .bind(derived.retry_of(original))
    .execute(&mut *tx)
    .await
    .map_err(sql("record run"))?;
    let (targets, next_shard, tally) =
        crate::common::plan_derived_shards!(tx, run_id, original, shard_size, derived);
    let (plan, summary) = finish_derived(
        run_id, original, shard_size, derived, targets, next_shard, tally,
    );
    record_plan(&mut tx, run_id, &plan, summary).await?;
    tx.commit().await.map_err(sql("commit plan"))?;
    Ok(plan)
}

/// Whether the query's `key` column is an integer type, from the prepared
/// statement (nothing is run). `false` when that cannot be told: the
/// ordering for text keys is right for every key, only slower.
async fn key_is_integer(pool: &sqlx::PgPool, user_sql: &str) -> bool {
    let probe = format!("SELECT q.key FROM ({user_sql}) q");
    match pool.prepare(&probe).await {
        Ok(st) => st
            .columns()
            .first()
            .is_some_and(|c| matches!(c.type_info().name(), "INT2" | "INT4" | "INT8")),
        Err(_) => false,
    }
}

async fn write_shard(
    tx: &mut Transaction<'_, Postgres>,
    run_id: &str,
    target: &str,
    key_type: KeyType,
    shard: &CutShard,
) -> Result<(), StoreError> {
    let items = &shard.items;
    let (Some(first), Some(last)) = (items.first(), items.last()) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO backfill_shard (run_id, shard_no, target, first_key, last_key, rows)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(run_id)
    .bind(shard.shard_no as i32)
    .bind(target)
    .bind(&first.key)
    .bind(&last.key)
    .bind(items.len() as i32)
    .execute(&mut **tx)
    .await
    .map_err(sql("record shard"))?;
    let all_ints = key_ints(target, key_type, shard)?;
    for (batch_no, batch) in items.chunks(ITEM_BATCH).enumerate() {
        let base = batch_no * ITEM_BATCH;
        let item_nos: Vec<i32> = (0..batch.len()).map(|i| (base + i) as i32).collect();
        let keys: Vec<&str> = batch.iter().map(|i| i.key.as_str()).collect();
        let ints = &all_ints[base..base + batch.len()];
        let groups: Vec<&str> = batch.iter().map(|i| i.group.as_str()).collect();
        let refs: Vec<i64> = batch.iter().map(|i| i.refs as i64).collect();
        sqlx::query(
            "INSERT INTO backfill_item (run_id, shard_no, item_no, key, key_int, group_key, refs)
             SELECT $1, $2, * FROM unnest($3::int[], $4::text[], $5::int8[], $6::text[], $7::int8[])",
        )
        .bind(run_id)
        .bind(shard.shard_no as i32)
        .bind(&item_nos)
        .bind(&keys)
        .bind(ints)
        .bind(&groups)
        .bind(&refs)
        .execute(&mut **tx)
        .await
        .map_err(sql("record shard items"))?;
    }
    Ok(())
}
