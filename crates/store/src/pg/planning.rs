//! PostgreSQL's planning: the spec's groups query read as JSON
//! (`row_to_json`), a target's rows streamed on a connection of their own
//! in key order while each shard is committed (and its task sent) as it is
//! cut, items written in batches through `unnest`, a run interrupted while
//! planned carried on, and derived runs (retry, revert) planned from the
//! ledger's own rows in one transaction.

use backfill_job::fold::finish_plan;
use backfill_job::plan::{CutShard, GroupRow, NewRun, PlannedTarget, ShardCutter};
use backfill_job::spec::Dialect;
use backfill_job::{KeyType, Plan, PlannedGroup, Tally};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::{Column, Executor, PgPool, Postgres, Row, Statement, Transaction, TypeInfo};
use std::collections::HashMap;

use crate::error::{sql, StoreError};
use crate::model::planning::{
    collect_groups, eligible_keys, in_run, key_ints, key_order, obj, recorded_plan, ref_row,
    uses_param, PlanFrom, RecordedTarget, ShardSink,
};

/// How many items one INSERT carries.
const ITEM_BATCH: usize = 5_000;

/// The groups query's rows (as JSON objects), each read as a group as it
/// comes.
pub(super) async fn group_rows(
    pool: &PgPool,
    user_sql: &str,
    keys: Option<Option<String>>,
    what: &str,
) -> Result<Vec<GroupRow>, StoreError> {
    let wrapped = format!("SELECT row_to_json(q)::text FROM ({user_sql}) q");
    let mut q = sqlx::query_scalar::<_, String>(&wrapped);
    if let Some(keys) = keys {
        q = q.bind(keys);
    }
    collect_groups(q.fetch(pool), what, |text| obj(&text, "groups.query")).await
}

/// Plans a run and records it as it goes: first the run's row and its
/// groups, committed with a row in `backfill_planning` (a mapper given one of its shards
/// reads them); then each shard in a transaction of its own, its task sent
/// to `sink` once committed; last the plan and its totals, in one
/// transaction that deletes the run's row in `backfill_planning`. The target rows are streamed, so memory stays
/// bounded by one shard. A run interrupted while planned
/// ([`PlanFrom::Interrupted`]) is planned again from its target rows, the
/// items it recorded left out. A run cancelled while planned stops being
/// planned at its next shard, and its plan holds the shards recorded.
pub(super) async fn create_run(
    pool: &PgPool,
    new: NewRun<'_>,
    from: PlanFrom,
    sink: Option<&ShardSink>,
) -> Result<Plan, StoreError> {
    let (groups, recorded) = match from {
        PlanFrom::New(groups) => {
            begin_run(pool, &new, &groups).await?;
            (groups, Recorded::default())
        }
        PlanFrom::Interrupted => (
            recorded_groups(pool, new.run_id).await?,
            recorded_shards(pool, new.run_id).await?,
        ),
    };
    let eligible = eligible_keys(new.spec, &groups);
    let (targets, next_shard, tally) = plan_targets(pool, &new, eligible, recorded, sink).await?;
    let (plan, summary) = finish_plan(&new, groups, targets, next_shard, tally);
    let mut tx = pool.begin().await.map_err(sql("begin plan"))?;
    record_plan(&mut tx, new.run_id, &plan, summary).await?;
    tx.commit().await.map_err(sql("commit plan"))?;
    Ok(plan)
}

/// The run's row, its row in `backfill_planning`, and its groups, committed.
async fn begin_run(
    pool: &PgPool,
    new: &NewRun<'_>,
    groups: &[PlannedGroup],
) -> Result<(), StoreError> {
    let spec = new.spec;
    let mut tx = pool.begin().await.map_err(sql("begin plan"))?;
    // The tally the reducer folds into while the run is planned.
    let empty =
        serde_json::to_value(Tally::default()).map_err(|e| StoreError::Data(e.to_string()))?;
    let outline = Plan {
        groups: vec![],
        targets: vec![],
        shards_total: 0,
        tally: Tally::default(),
    }
    .outline_text()
    .map_err(|e| StoreError::Data(e.to_string()))?;
    sqlx::query(
        "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally, sample, kind, schedule)
         VALUES ($1, $2, $3, $4, $5, $6, 'running', $7::jsonb, 0, $8, $9, $10, $11)",
    )
    .bind(new.run_id)
    .bind(&spec.name)
    .bind(&spec.source)
    .bind(&spec.hash)
    .bind(new.mode.as_str())
    .bind(serde_json::to_value(new.scope).unwrap_or(Value::Null))
    .bind(&outline)
    .bind(&empty)
    .bind(new.sample)
    .bind(new.kind.as_str())
    .bind(new.schedule.map(|w| w.ledger_text()))
    .execute(&mut *tx)
    .await
    .map_err(sql("record run"))?;
    sqlx::query("INSERT INTO backfill_planning (run_id, shard_size) VALUES ($1, $2)")
        .bind(new.run_id)
        .bind(new.shard_size as i32)
        .execute(&mut *tx)
        .await
        .map_err(sql("record run"))?;
    super::ledger::add_plan_groups(&mut tx, new.run_id, groups).await?;
    sqlx::query(&format!(
        "UPDATE backfill_run SET plan = jsonb_set(plan, '{{groups}}', {GROUPS_LISTED}) WHERE run_id = $1"
    ))
    .bind(new.run_id)
    .execute(&mut *tx)
    .await
    .map_err(sql("list the plan's groups"))?;
    tx.commit().await.map_err(sql("commit run"))
}

/// The plan's list of groups, made from their rows in plan order.
const GROUPS_LISTED: &str = "COALESCE(
    (SELECT jsonb_agg(entry ORDER BY n) FROM backfill_group WHERE run_id = $1), '[]'::jsonb)";

/// The groups an interrupted run recorded, in plan order.
async fn recorded_groups(pool: &PgPool, run_id: &str) -> Result<Vec<PlannedGroup>, StoreError> {
    let entries: Vec<String> =
        sqlx::query_scalar("SELECT entry::text FROM backfill_group WHERE run_id = $1 ORDER BY n")
            .bind(run_id)
            .fetch_all(pool)
            .await
            .map_err(sql("read the run's groups"))?;
    entries
        .iter()
        .map(|e| {
            serde_json::from_str(e)
                .map_err(|e| StoreError::Data(format!("a group of run {run_id}: {e}")))
        })
        .collect()
}

/// What an interrupted run recorded: each target's rows, shards and item
/// keys, and the number its next shard takes.
#[derive(Default)]
struct Recorded {
    targets: HashMap<String, RecordedTarget>,
    next_shard: u32,
}

async fn recorded_shards(pool: &PgPool, run_id: &str) -> Result<Recorded, StoreError> {
    let mut recorded = Recorded::default();
    let shards: Vec<(String, i64, i64, i32)> = sqlx::query_as(
        "SELECT target, count(*), COALESCE(sum(rows), 0)::int8, COALESCE(max(shard_no) + 1, 0)
         FROM backfill_shard WHERE run_id = $1 GROUP BY target",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await
    .map_err(sql("read the run's shards"))?;
    for (target, shards, rows, next) in shards {
        let t = recorded.targets.entry(target).or_default();
        t.shards = shards as u32;
        t.rows = rows as u64;
        recorded.next_shard = recorded.next_shard.max(next as u32);
    }
    // The keys, to leave out of the shards planned again: only read when
    // resuming a run whose coordinator died while planning it.
    let mut keys = sqlx::query_as::<_, (String, String)>(
        "SELECT s.target, i.key FROM backfill_item i
         JOIN backfill_shard s ON s.run_id = i.run_id AND s.shard_no = i.shard_no
         WHERE i.run_id = $1",
    )
    .bind(run_id)
    .fetch(pool);
    while let Some((target, key)) = keys.try_next().await.map_err(sql("read the run's items"))? {
        recorded.targets.entry(target).or_default().keys.insert(key);
    }
    Ok(recorded)
}

/// Streams every target's rows in key order and records each shard as it
/// is cut, in a transaction of its own.
async fn plan_targets(
    pool: &PgPool,
    new: &NewRun<'_>,
    eligible: Option<String>,
    mut recorded: Recorded,
    sink: Option<&ShardSink>,
) -> Result<(Vec<PlannedTarget>, u32, Tally), StoreError> {
    let spec = new.spec;
    let mut tally = Tally::default();
    let mut next_shard = recorded.next_shard;
    let mut targets = Vec::new();
    let mut cancelled = false;
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
        let before = recorded.targets.remove(&target.name).unwrap_or_default();
        let mut out = TargetOut {
            run_id: new.run_id,
            target: &target.name,
            key_type: target.key_type,
            planned: PlannedTarget {
                name: target.name.clone(),
                rows: before.rows,
                shards: before.shards,
            },
            before,
            next_shard: &mut next_shard,
            sink,
        };
        if cancelled {
            // Listed with what an earlier attempt recorded, if anything.
            targets.push(out.planned);
            continue;
        }
        // Streamed on a connection of its own while each shard is written
        // in a transaction: memory stays bounded by one shard.
        let mut stream = q.fetch(pool);
        let mut cutter = ShardCutter::new(&target.name, new.shard_size, 0);
        let what = format!("job `{}`: {field} failed", spec.name);
        while let Some(row) = stream.try_next().await.map_err(sql(what.clone()))? {
            let text: String = row.get(0);
            let r = ref_row(spec, target, &field, obj(&text, &field)?)?;
            if !in_run(new, &r) {
                continue;
            }
            if let Some(shard) = cutter.push(r, &mut tally) {
                if out.record(pool, shard).await? == Planning::Cancelled {
                    cancelled = true;
                    break;
                }
            }
        }
        drop(stream);
        if !cancelled {
            let (last, _) = cutter.finish(&mut tally);
            if let Some(shard) = last {
                cancelled = out.record(pool, shard).await? == Planning::Cancelled;
            }
        }
        targets.push(out.planned);
    }
    if cancelled {
        tracing::info!(run = %new.run_id, shards = next_shard, "the run was cancelled while it was planned; planning stopped");
    }
    Ok((targets, next_shard, tally))
}

/// Whether planning goes on after a shard was recorded.
#[derive(Debug, PartialEq, Eq)]
enum Planning {
    GoesOn,
    /// The operator cancelled the run (`backfill cancel`): no more shards
    /// are cut; the plan is finished with those recorded.
    Cancelled,
}

/// Where one target's shards go while it is planned.
struct TargetOut<'a> {
    run_id: &'a str,
    target: &'a str,
    key_type: KeyType,
    planned: PlannedTarget,
    before: RecordedTarget,
    next_shard: &'a mut u32,
    sink: Option<&'a ShardSink>,
}

impl TargetOut<'_> {
    /// Commits a shard (numbered on from the run's last) with its items,
    /// and the run's count of shards; then sends its task. Says whether the
    /// run was cancelled meanwhile, read in the same statement.
    async fn record(&mut self, pool: &PgPool, shard: CutShard) -> Result<Planning, StoreError> {
        let mut shard = self.before.unrecorded(shard);
        if shard.items.is_empty() {
            return Ok(Planning::GoesOn);
        }
        shard.shard_no = *self.next_shard;
        let mut tx = pool.begin().await.map_err(sql("begin shard"))?;
        write_shard(&mut tx, self.run_id, self.target, self.key_type, &shard).await?;
        let cancelled: bool = sqlx::query_scalar(
            "UPDATE backfill_run SET shards_total = $2 WHERE run_id = $1
             RETURNING EXISTS (SELECT 1 FROM backfill_control c
                               WHERE c.run_id = $1 AND c.control = 'cancel')",
        )
        .bind(self.run_id)
        .bind(shard.shard_no as i32 + 1)
        .fetch_one(&mut *tx)
        .await
        .map_err(sql("count the run's shards"))?;
        tx.commit().await.map_err(sql("commit shard"))?;
        *self.next_shard += 1;
        self.planned.rows += shard.items.len() as u64;
        self.planned.shards += 1;
        if let Some(sink) = self.sink {
            sink.send(self.run_id, self.target, &shard);
        }
        Ok(if cancelled {
            Planning::Cancelled
        } else {
            Planning::GoesOn
        })
    }
}

/// Records a run's plan, its totals (what the plan counted, added to what
/// was folded while it was planned) and group records, and the state it
/// goes on in: finished when there is nothing to send, unless cancelled
/// meanwhile, which it stays. Its groups' rows are written before.
async fn record_plan(
    tx: &mut Transaction<'_, Postgres>,
    run_id: &str,
    plan: &Plan,
    summary: Option<String>,
) -> Result<(), StoreError> {
    let r = recorded_plan(plan, summary)?;
    let folded: String =
        sqlx::query_scalar("SELECT tally::text FROM backfill_run WHERE run_id = $1 FOR UPDATE")
            .bind(run_id)
            .fetch_one(&mut **tx)
            .await
            .map_err(sql("lock run"))?;
    let mut totals: Tally = serde_json::from_str(&folded)
        .map_err(|e| StoreError::Data(format!("run {run_id}'s tally: {e}")))?;
    totals.merge(&r.totals);
    let totals = serde_json::to_value(&totals).map_err(|e| StoreError::Data(e.to_string()))?;
    sqlx::query(&format!(
        "UPDATE backfill_run SET
                plan = jsonb_set($2::jsonb, '{{groups}}', {GROUPS_LISTED}),
                tally = $3, shards_total = $4,
                state = CASE WHEN state = 'running' THEN $5 ELSE state END,
                summary = CASE WHEN state = 'running' THEN $6 ELSE summary END,
                finished_at = CASE WHEN state <> 'running' THEN finished_at
                                   WHEN $5 = 'running' THEN NULL ELSE now() END
         WHERE run_id = $1"
    ))
    .bind(run_id)
    .bind(&r.plan)
    .bind(&totals)
    .bind(plan.shards_total as i32)
    .bind(r.state)
    .bind(&r.summary)
    .execute(&mut **tx)
    .await
    .map_err(sql("record plan"))?;
    sqlx::query("DELETE FROM backfill_planning WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut **tx)
        .await
        .map_err(sql("record plan"))?;
    super::ledger::add_groups(tx, run_id, r.groups).await
}

/// A derived run's plan: the groups first (the plan's list of them is
/// made from their rows), then the plan.
pub(super) async fn record_derived_plan(
    tx: &mut Transaction<'_, Postgres>,
    run_id: &str,
    plan: &Plan,
    summary: Option<String>,
) -> Result<(), StoreError> {
    super::ledger::add_plan_groups(tx, run_id, &plan.groups).await?;
    record_plan(tx, run_id, plan, summary).await
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

pub(super) async fn write_shard(
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
