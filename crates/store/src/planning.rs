//! Planning: the spec's SQL run with bound parameters, and the plan recorded
//! in the ledger in one transaction (run row, items, shards), so that the
//! ledger never holds half a plan.

use backfill_job::fold::final_state;
use backfill_job::fold::finish_plan;
/// What a run is, before it is planned (defined with the plan it becomes).
pub use backfill_job::plan::NewRun;
use backfill_job::plan::{parse_ref_row, CutShard, GroupRow, RefRow, ShardCutter};
use backfill_job::spec::Dialect;
use backfill_job::{JobSpec, KeyType, Mode, Plan, PlannedGroup, Scope, Tally};
use futures::TryStreamExt;
use serde_json::{Map, Value};
use sqlx::{Column, Executor, Postgres, Row, Statement, Transaction, TypeInfo};

use crate::{sql, Store, StoreError};

/// How many items one INSERT carries.
const ITEM_BATCH: usize = 5_000;

/// Binds the parameter only when the SQL uses it (`$1` on PostgreSQL, `?1`
/// on SQLite), so a spec query without parameters is accepted as written.
pub(crate) fn uses_param(sql: &str, dialect: Dialect) -> bool {
    match dialect {
        Dialect::Postgres => sql.contains("$1"),
        Dialect::Sqlite => sql.contains("?1"),
    }
}

pub(crate) fn obj(text: &str, what: &str) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Data(format!(
            "{what} returned a row that is not an object"
        ))),
    }
}

/// `$1` of the groups query: the requested keys, or NULL for `--all`.
pub(crate) fn requested_keys(scope: &Scope) -> Option<String> {
    match scope {
        Scope::All => None,
        Scope::Groups(k) => Some(serde_json::to_string(k).unwrap_or_else(|_| "[]".into())),
    }
}

/// `$1` of the target queries: the keys of the groups that passed the
/// guards (NULL for jobs without groups).
pub(crate) fn eligible_keys(spec: &JobSpec, groups: &[PlannedGroup]) -> Option<String> {
    let eligible: Vec<&str> = groups
        .iter()
        .filter(|g| g.reason().is_none())
        .map(|g| g.key.as_str())
        .collect();
    spec.groups
        .as_ref()
        .map(|_| serde_json::to_string(&eligible).unwrap_or_else(|_| "[]".into()))
}

/// The ORDER BY of a target query's rows. The planner folds the references
/// of one row, which must come one after the other, into one item; the
/// spellings of one integer key (`0100`, `+100`, `100`, canonical once
/// read) must be adjacent too. Keys the query returns as integers already
/// are (`key_is_integer`: the plain order, which an index can serve); text
/// keys are ordered by their integer value (on PostgreSQL, texts that are
/// not integers come last, to be refused when read).
pub(crate) fn key_order(dialect: Dialect, key_type: KeyType, key_is_integer: bool) -> &'static str {
    match (key_type, key_is_integer, dialect) {
        (KeyType::Text, _, _) | (KeyType::Integer, true, _) => "ORDER BY q.key",
        (KeyType::Integer, false, Dialect::Postgres) => {
            "ORDER BY CASE WHEN q.key::text ~ '^[+-]?[0-9]+$' THEN q.key::text::numeric END, q.key"
        }
        (KeyType::Integer, false, Dialect::Sqlite) => "ORDER BY CAST(q.key AS INTEGER), q.key",
    }
}

/// A reference whose key is not an integer, for a target whose keys are:
/// bad input, naming the key, the target and its query.
pub(crate) fn not_an_integer(spec: &JobSpec, target: &str, field: &str, key: &str) -> StoreError {
    StoreError::Input(format!(
        "job `{}`: target `{target}` has key_type = \"integer\" but {field} returned key `{key}`, which is not a 64-bit integer; fix the query (or use key_type = \"text\")",
        spec.name
    ))
}

/// Integer keys as the ledger stores them beside their text.
pub(crate) fn key_ints(
    target: &str,
    key_type: KeyType,
    shard: &CutShard,
) -> Result<Vec<Option<i64>>, StoreError> {
    match key_type {
        KeyType::Text => Ok(vec![None; shard.items.len()]),
        KeyType::Integer => shard
            .items
            .iter()
            .map(|i| {
                i.key.parse::<i64>().map(Some).map_err(|_| {
                    StoreError::Data(format!(
                        "target `{target}` has key_type = \"integer\" but its query returned key `{}`",
                        i.key
                    ))
                })
            })
            .collect(),
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
        let pool = match &self.backend {
            crate::Backend::Pg(p) => p,
            crate::Backend::Lite(l) => return crate::lite::group_rows(l, spec, scope).await,
        };
        let Some(groups) = &spec.groups else {
            return Ok(Vec::new());
        };
        let user_sql = groups
            .query
            .for_dialect("groups.query", Dialect::Postgres)?;
        let wrapped = format!("SELECT row_to_json(q)::text FROM ({user_sql}) q");
        let mut q = sqlx::query(&wrapped);
        if uses_param(user_sql, Dialect::Postgres) {
            q = q.bind(requested_keys(scope));
        }
        let rows = q
            .fetch_all(pool)
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
        let pool = match &self.backend {
            crate::Backend::Pg(p) => p,
            crate::Backend::Lite(l) => return crate::lite::create_run(l, new, groups).await,
        };
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
                let r = parse_ref_row(obj(&text, &field)?, &field, spec.groups.is_some())
                    .map_err(StoreError::Data)?
                    .with_canonical_key(target.key_type)
                    .map_err(|k| not_an_integer(spec, &target.name, &field, &k))?;
                if new.sample.is_some_and(|f| !r.in_sample(f)) {
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
        let plan_json = serde_json::to_value(&plan).map_err(|e| StoreError::Data(e.to_string()))?;
        let tally_json =
            serde_json::to_value(&plan.tally).map_err(|e| StoreError::Data(e.to_string()))?;
        match summary {
            Some(summary) => {
                sqlx::query(
                    "UPDATE backfill_run SET plan = $2, tally = $3, shards_total = 0, state = $4, summary = $5, finished_at = now()
                     WHERE run_id = $1",
                )
                .bind(new.run_id)
                .bind(&plan_json)
                .bind(&tally_json)
                .bind(final_state(&plan.tally).as_str())
                .bind(&summary)
                .execute(&mut *tx)
                .await
                .map_err(sql("finish empty run"))?;
            }
            None => {
                sqlx::query("UPDATE backfill_run SET plan = $2, tally = $3, shards_total = $4 WHERE run_id = $1")
                    .bind(new.run_id)
                    .bind(&plan_json)
                    .bind(&tally_json)
                    .bind(plan.shards_total as i32)
                    .execute(&mut *tx)
                    .await
                    .map_err(sql("record plan"))?;
            }
        }
        tx.commit().await.map_err(sql("commit plan"))?;
        Ok(plan)
    }
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

/// The quarantined rows of one target of a run, as reference rows.
pub(crate) fn quarantine_ref(key: String, group: String, refs: i64) -> RefRow {
    RefRow {
        key: Some(key),
        group: Some(group),
        refs: refs.max(0) as u64,
        skip: None,
    }
}

/// A run made from a finished run's ledger rather than from the spec's
/// queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    /// `backfill retry`: the original's quarantined rows not yet retried,
    /// in the original's mode; they are marked as retried by the new run.
    Retry,
    /// `backfill revert`: the rows the original (a commit) wrote, restored
    /// from their before-images, in the given mode.
    Revert(Mode),
}

impl Derived {
    /// The rows of one target: (key, group, refs), in key order; `$1` is
    /// the original run, `$2` the target. The same SQL on both dialects.
    pub(crate) fn rows_sql(self) -> &'static str {
        match self {
            Derived::Retry => {
                "SELECT key, group_key, refs FROM backfill_quarantine
                 WHERE run_id = $1 AND target = $2 AND retried_by IS NULL ORDER BY key"
            }
            // The item of the shard that wrote the before-image gives the
            // row's group and references.
            Derived::Revert(_) => {
                "SELECT i.key, min(i.group_key), max(i.refs) FROM backfill_before_image b
                 JOIN backfill_item i ON i.run_id = b.run_id AND i.shard_no = b.shard_no AND i.key = b.key
                 WHERE b.run_id = $1 AND b.target = $2 GROUP BY i.key ORDER BY i.key"
            }
        }
    }

    pub(crate) fn mode(self, original: &crate::RunRecord) -> Mode {
        match self {
            Derived::Retry => original.mode,
            Derived::Revert(m) => m,
        }
    }

    pub(crate) fn revert_of(self, original: &crate::RunRecord) -> Option<&str> {
        matches!(self, Derived::Revert(_)).then_some(original.run_id.as_str())
    }

    pub(crate) fn retry_of(self, original: &crate::RunRecord) -> Option<&str> {
        matches!(self, Derived::Retry).then_some(original.run_id.as_str())
    }

    pub(crate) fn kind(self) -> backfill_job::RunKind {
        match self {
            Derived::Retry => backfill_job::RunKind::Retry,
            Derived::Revert(_) => backfill_job::RunKind::Revert,
        }
    }
}

impl Store {
    /// Plans a run derived from a finished run (see [`Derived`]): a new run
    /// with the same spec and group parameters whose rows come from the
    /// original's ledger rows, recorded in one transaction.
    pub async fn create_derived_run(
        &self,
        run_id: &str,
        original: &crate::RunRecord,
        shard_size: u32,
        derived: Derived,
    ) -> Result<Plan, StoreError> {
        let pool = match &self.backend {
            crate::Backend::Pg(p) => p,
            crate::Backend::Lite(l) => {
                return crate::lite::create_derived_run(l, run_id, original, shard_size, derived)
                    .await
            }
        };
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
                cut.extend(cutter.push(quarantine_ref(r.get(0), r.get(1), r.get(2)), &mut tally));
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
            sqlx::query("UPDATE backfill_quarantine SET retried_by = $2 WHERE run_id = $1 AND retried_by IS NULL")
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
        let plan_json = serde_json::to_value(&plan).map_err(|e| StoreError::Data(e.to_string()))?;
        let tally_json =
            serde_json::to_value(&plan.tally).map_err(|e| StoreError::Data(e.to_string()))?;
        let state = match &summary {
            Some(_) => final_state(&plan.tally).as_str(),
            None => "running",
        };
        sqlx::query(
            "UPDATE backfill_run SET plan = $2, tally = $3, shards_total = $4, state = $5, summary = $6,
                    finished_at = CASE WHEN $5 = 'running' THEN NULL ELSE now() END
             WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(&plan_json)
        .bind(&tally_json)
        .bind(plan.shards_total as i32)
        .bind(state)
        .bind(&summary)
        .execute(&mut *tx)
        .await
        .map_err(sql("record plan"))?;
        tx.commit().await.map_err(sql("commit plan"))?;
        Ok(plan)
    }
}
