//! Planning: the spec's SQL run with bound parameters, and the plan recorded
//! in the ledger in one transaction (run row, items, shards), so that the
//! ledger never holds half a plan.

use backfill_job::plan::{GroupRow, Item, ItemAccumulator, PlannedTarget, RefRow};
use backfill_job::report::{summary_line, RunView};
use backfill_job::spec::Dialect;
use backfill_job::{JobSpec, KeyType, Mode, Plan, PlannedGroup, Scope, Tally};
use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::{Postgres, Row, Transaction};

use crate::ledger::final_state;
use crate::{sql, Store, StoreError};

/// How many items one INSERT carries.
const ITEM_BATCH: usize = 5_000;

/// Binds `param` as `$1` only when the SQL uses it, so a spec query without
/// parameters is accepted as written.
fn uses_param(sql: &str) -> bool {
    sql.contains("$1")
}

/// What a run is, before it is planned.
pub struct NewRun<'a> {
    pub run_id: &'a str,
    pub spec: &'a JobSpec,
    pub mode: Mode,
    pub scope: &'a Scope,
    pub shard_size: u32,
}

fn obj(text: &str, what: &str) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Data(format!(
            "{what} returned a row that is not an object"
        ))),
    }
}

fn opt_text(v: Option<Value>) -> Option<String> {
    match v {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    }
}

impl Store {
    /// Runs the spec's groups query. `$1` is a JSON array of the requested
    /// keys, or NULL for `--all`.
    pub async fn group_rows(
        &self,
        spec: &JobSpec,
        scope: &Scope,
    ) -> Result<Vec<GroupRow>, StoreError> {
        let Some(groups) = &spec.groups else {
            return Ok(Vec::new());
        };
        let user_sql = groups
            .query
            .for_dialect("groups.query", Dialect::Postgres)?;
        let wrapped = format!("SELECT row_to_json(q)::text FROM ({user_sql}) q");
        let keys: Option<String> = match scope {
            Scope::All => None,
            Scope::Groups(k) => Some(serde_json::to_string(k).unwrap_or_else(|_| "[]".into())),
        };
        let mut q = sqlx::query(&wrapped);
        if uses_param(user_sql) {
            q = q.bind(keys);
        }
        let rows = q
            .fetch_all(self.pool())
            .await
            .map_err(sql(format!("job `{}`: groups.query failed", spec.name)))?;
        rows.into_iter()
            .map(|r| {
                let text: String = r.get(0);
                GroupRow::from_object(obj(&text, "groups.query")?)
                    .map_err(|m| StoreError::Data(format!("groups.query: {m}")))
            })
            .collect()
    }

    /// Records the plan of a new run: finds the target rows of every target
    /// (streamed, in key order), folds shared rows into one item, cuts items
    /// into shards, and writes run, items and shards in one transaction.
    /// A run with nothing to do is finished on the spot.
    pub async fn create_run(
        &self,
        new: NewRun<'_>,
        groups: Vec<PlannedGroup>,
    ) -> Result<Plan, StoreError> {
        let spec = new.spec;
        let eligible: Vec<&str> = groups
            .iter()
            .filter(|g| g.reason().is_none())
            .map(|g| g.key.as_str())
            .collect();
        let eligible_json: Option<String> = spec
            .groups
            .as_ref()
            .map(|_| serde_json::to_string(&eligible).unwrap_or_else(|_| "[]".into()));

        let mut tx = self.pool().begin().await.map_err(sql("begin plan"))?;
        let empty = serde_json::json!({});
        sqlx::query(
            "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally)
             VALUES ($1, $2, $3, $4, $5, $6, 'running', $7, 0, $7)",
        )
        .bind(new.run_id)
        .bind(&spec.name)
        .bind(&spec.source)
        .bind(&spec.hash)
        .bind(new.mode.as_str())
        .bind(serde_json::to_value(new.scope).unwrap_or(Value::Null))
        .bind(&empty)
        .execute(&mut *tx)
        .await
        .map_err(sql("record run"))?;

        let mut tally = Tally::default();
        let mut shard_no: u32 = 0;
        let mut targets = Vec::new();
        for (ti, target) in spec.targets.iter().enumerate() {
            let field = format!("targets[{ti}].query");
            let user_sql = target.query.for_dialect(&field, Dialect::Postgres)?;
            let wrapped = format!("SELECT row_to_json(q)::text FROM ({user_sql}) q ORDER BY q.key");
            let mut q = sqlx::query(&wrapped);
            if uses_param(user_sql) {
                q = q.bind(eligible_json.clone());
            }
            let mut stream = q.fetch(self.pool());
            let mut acc = ItemAccumulator::new(&target.name, &target.name);
            let mut shard: Vec<Item> = Vec::with_capacity(new.shard_size as usize);
            let mut planned = PlannedTarget {
                name: target.name.clone(),
                ..PlannedTarget::default()
            };
            let what = format!("job `{}`: {field} failed", spec.name);
            loop {
                let next = stream.try_next().await.map_err(sql(what.clone()))?;
                let item = match next {
                    Some(row) => {
                        let text: String = row.get(0);
                        let mut m = obj(&text, &field)?;
                        if !m.contains_key("key") {
                            return Err(StoreError::Data(format!(
                                "{field} must return a `key` column"
                            )));
                        }
                        let refs = match m.remove("refs") {
                            None | Some(Value::Null) => 1,
                            Some(Value::Number(n)) => n.as_u64().unwrap_or(1),
                            Some(other) => {
                                return Err(StoreError::Data(format!(
                                    "{field}: `refs` must be a number, got {other}"
                                )))
                            }
                        };
                        let r = RefRow {
                            key: opt_text(m.remove("key")),
                            group: opt_text(m.remove("group")),
                            refs,
                            skip: opt_text(m.remove("skip")),
                        };
                        if spec.groups.is_some()
                            && r.group.is_none()
                            && r.skip.is_none()
                            && r.key.is_some()
                        {
                            return Err(StoreError::Data(format!(
                                "{field} must return a `group` column naming each row's group"
                            )));
                        }
                        acc.push(r, &mut tally)
                    }
                    None => {
                        let last = std::mem::replace(
                            &mut acc,
                            ItemAccumulator::new(&target.name, &target.name),
                        )
                        .finish(&mut tally);
                        if let Some(i) = last {
                            shard.push(i);
                        }
                        break;
                    }
                };
                if let Some(i) = item {
                    shard.push(i);
                    if shard.len() >= new.shard_size as usize {
                        write_shard(
                            &mut tx,
                            new.run_id,
                            shard_no,
                            target.name.as_str(),
                            target.key_type,
                            &shard,
                        )
                        .await?;
                        planned.rows += shard.len() as u64;
                        planned.shards += 1;
                        shard_no += 1;
                        shard.clear();
                    }
                }
            }
            drop(stream);
            if !shard.is_empty() {
                write_shard(
                    &mut tx,
                    new.run_id,
                    shard_no,
                    target.name.as_str(),
                    target.key_type,
                    &shard,
                )
                .await?;
                planned.rows += shard.len() as u64;
                planned.shards += 1;
                shard_no += 1;
            }
            targets.push(planned);
        }

        let plan = Plan {
            groups,
            targets,
            shards_total: shard_no,
            tally: tally.clone(),
        };
        let plan_json = serde_json::to_value(&plan).map_err(|e| StoreError::Data(e.to_string()))?;
        let tally_json =
            serde_json::to_value(&tally).map_err(|e| StoreError::Data(e.to_string()))?;
        if shard_no == 0 {
            // Nothing to send: the run's summary is the plan's own tally.
            let scope = new.scope.describe();
            let summary = summary_line(&RunView {
                run_id: new.run_id,
                spec,
                mode: new.mode,
                scope: &scope,
                plan: &plan,
                tally: &tally,
            });
            sqlx::query(
                "UPDATE backfill_run SET plan = $2, tally = $3, shards_total = 0, state = $4, summary = $5, finished_at = now()
                 WHERE run_id = $1",
            )
            .bind(new.run_id)
            .bind(&plan_json)
            .bind(&tally_json)
            .bind(final_state(&tally).as_str())
            .bind(&summary)
            .execute(&mut *tx)
            .await
            .map_err(sql("finish empty run"))?;
        } else {
            sqlx::query("UPDATE backfill_run SET plan = $2, tally = $3, shards_total = $4 WHERE run_id = $1")
                .bind(new.run_id)
                .bind(&plan_json)
                .bind(&tally_json)
                .bind(shard_no as i32)
                .execute(&mut *tx)
                .await
                .map_err(sql("record plan"))?;
        }
        tx.commit().await.map_err(sql("commit plan"))?;
        Ok(plan)
    }
}

async fn write_shard(
    tx: &mut Transaction<'_, Postgres>,
    run_id: &str,
    shard_no: u32,
    target: &str,
    key_type: KeyType,
    items: &[Item],
) -> Result<(), StoreError> {
    let (Some(first), Some(last)) = (items.first(), items.last()) else {
        return Ok(());
    };
    sqlx::query(
        "INSERT INTO backfill_shard (run_id, shard_no, target, first_key, last_key, rows)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(run_id)
    .bind(shard_no as i32)
    .bind(target)
    .bind(&first.key)
    .bind(&last.key)
    .bind(items.len() as i32)
    .execute(&mut **tx)
    .await
    .map_err(sql("record shard"))?;
    for (batch_no, batch) in items.chunks(ITEM_BATCH).enumerate() {
        let base = batch_no * ITEM_BATCH;
        let item_nos: Vec<i32> = (0..batch.len()).map(|i| (base + i) as i32).collect();
        let keys: Vec<&str> = batch.iter().map(|i| i.key.as_str()).collect();
        let key_ints: Vec<Option<i64>> = match key_type {
            KeyType::Text => vec![None; batch.len()],
            KeyType::Integer => batch
                .iter()
                .map(|i| {
                    i.key.parse::<i64>().map(Some).map_err(|_| {
                        StoreError::Data(format!(
                            "target `{target}` has key_type = \"integer\" but its query returned key `{}`",
                            i.key
                        ))
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let groups: Vec<&str> = batch.iter().map(|i| i.group.as_str()).collect();
        let refs: Vec<i64> = batch.iter().map(|i| i.refs as i64).collect();
        sqlx::query(
            "INSERT INTO backfill_item (run_id, shard_no, item_no, key, key_int, group_key, refs)
             SELECT $1, $2, * FROM unnest($3::int[], $4::text[], $5::int8[], $6::text[], $7::int8[])",
        )
        .bind(run_id)
        .bind(shard_no as i32)
        .bind(&item_nos)
        .bind(&keys)
        .bind(&key_ints)
        .bind(&groups)
        .bind(&refs)
        .execute(&mut **tx)
        .await
        .map_err(sql("record shard items"))?;
    }
    Ok(())
}
