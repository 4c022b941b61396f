//! SQLite's ledger records: runs (read with their JSON text parsed,
//! listed, folded into under SQLite's write lock) and shards marked
//! published. SQLite has no advisory job lock (see `Backend::try_lock_job`).

use std::collections::BTreeMap;

use backfill_job::fold::merge_groups;
use backfill_job::tally::GroupTally;
use backfill_job::PlannedGroup;
use sqlx::{Row, SqlitePool};

use super::{begin_write, parse_json};
use crate::error::{sql, StoreError};
use crate::model::ledger::{RawRun, RecentRun};

/// A run row, its JSON columns parsed from their text.
pub(super) async fn load_run(
    pool: &SqlitePool,
    run_id: &str,
    plan_groups: bool,
) -> Result<Option<RawRun>, StoreError> {
    let row = sqlx::query(
        "SELECT run_id, spec_text, mode, scope, state,
                CASE WHEN ?2 THEN plan ELSE json_set(plan, '$.groups', json('[]')) END AS plan,
                shards_total, shards_reduced, tally, summary,
                revert_of, sample, table_rows, kind, retry_of
         FROM backfill_run WHERE run_id = ?1",
    )
    .bind(run_id)
    .bind(plan_groups)
    .fetch_optional(pool)
    .await
    .map_err(sql("read run"))?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(RawRun {
        run_id: row.get("run_id"),
        spec_text: row.get("spec_text"),
        mode: row.get("mode"),
        scope: parse_json("scope", row.get("scope"))?,
        state: row.get("state"),
        plan: row.get("plan"),
        shards_total: row.get("shards_total"),
        shards_reduced: row.get("shards_reduced"),
        tally: parse_json("tally", row.get("tally"))?,
        summary: row.get("summary"),
        revert_of: row.get("revert_of"),
        sample: row.get("sample"),
        kind: row.get("kind"),
        retry_of: row.get("retry_of"),
        table_rows: Some(parse_json("table_rows", row.get("table_rows"))?).filter(|v| !v.is_null()),
    }))
}

/// The most recent runs, newest first (the row id orders runs created in
/// the same millisecond).
pub(super) async fn recent_runs(pool: &SqlitePool, limit: i64) -> sqlx::Result<Vec<RecentRun>> {
    sqlx::query_as("SELECT run_id, job_name, mode, state FROM backfill_run ORDER BY created_at DESC, rowid DESC LIMIT ?1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Marks shards as published, one statement per shard in one transaction.
pub(super) async fn mark_published(
    pool: &SqlitePool,
    run_id: &str,
    shard_nos: &[i32],
) -> Result<(), StoreError> {
    let mut tx = begin_write(pool, "mark shards published").await?;
    for n in shard_nos {
        sqlx::query("UPDATE backfill_shard SET published_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE run_id = ?1 AND shard_no = ?2 AND published_at IS NULL")
        .bind(run_id)
        .bind(n)
        .execute(&mut *tx)
        .await
        .map_err(sql("mark shards published"))?;
    }
    tx.commit().await.map_err(sql("commit published shards"))?;
    Ok(())
}

/// Claims a shard's result for the fold (`reduced_at`), once, and returns
/// it (`$1` run, `$2` shard).
pub(super) const CLAIM_RESULT: &str =
    "UPDATE backfill_shard SET reduced_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
     WHERE run_id = $1 AND shard_no = $2 AND reduced_at IS NULL AND state IN ('done', 'dead')
     RETURNING result";

/// The run row a fold reads ([`crate::model::ledger::FoldRow`]), under
/// SQLite's write lock, which the fold's `IMMEDIATE` transaction holds
/// throughout; the plan only with the last shard, and of its groups only
/// their statuses.
pub(super) const FOLD_ROW: &str =
    "SELECT spec_text, mode, scope, tally, shards_total, shards_reduced,
            EXISTS (SELECT 1 FROM backfill_planning p WHERE p.run_id = $1) AS planning,
            CASE WHEN shards_reduced + 1 >= shards_total THEN json_set(plan, '$.groups', json(
                (SELECT json_group_array(json_object('status', json_extract(g.value, '$.status')))
                 FROM json_each(plan, '$.groups') g))) END AS plan
     FROM backfill_run WHERE run_id = $1";

/// Writes a fold into the run row: its tally, shards folded and, when it
/// ended the run, its state, summary and end time.
pub(super) const FOLD: &str = "UPDATE backfill_run SET tally = $2, shards_reduced = $3,
            state = COALESCE($4, state), summary = COALESCE($5, summary),
            finished_at = CASE WHEN $4 IS NULL THEN finished_at ELSE strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END
     WHERE run_id = $1";

/// Merges `groups` into the run's group records, in the caller's write
/// transaction: a read and an upsert per group the caller carries.
pub(super) async fn add_groups(
    conn: &mut sqlx::SqliteConnection,
    run_id: &str,
    groups: &BTreeMap<String, GroupTally>,
) -> Result<(), StoreError> {
    let mut stored = Vec::new();
    for key in groups.keys() {
        let text: Option<String> = sqlx::query_scalar(
            "SELECT tally FROM backfill_group_tally WHERE run_id = ?1 AND group_key = ?2",
        )
        .bind(run_id)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await
        .map_err(sql("read group tallies"))?;
        if let Some(text) = text {
            stored.push((key.clone(), text));
        }
    }
    for (key, tally) in merge_groups(stored, groups)? {
        sqlx::query(
            "INSERT INTO backfill_group_tally (run_id, group_key, tally) VALUES (?1, ?2, ?3)
             ON CONFLICT (run_id, group_key) DO UPDATE SET tally = excluded.tally",
        )
        .bind(run_id)
        .bind(&key)
        .bind(&tally)
        .execute(&mut *conn)
        .await
        .map_err(sql("write group tallies"))?;
    }
    Ok(())
}

/// How many groups the plan of run `$1` lists.
pub(super) const PLAN_GROUP_COUNT: &str =
    "SELECT COALESCE(json_array_length(plan, '$.groups'), 0) FROM backfill_run WHERE run_id = ?1";

/// A run's plan groups in order, each with its record (JSON texts),
/// streamed row by row.
pub(super) fn report_groups<'a>(
    pool: &'a SqlitePool,
    run_id: &'a str,
) -> futures::stream::BoxStream<'a, sqlx::Result<(String, Option<String>)>> {
    sqlx::query_as(
        "SELECT g.value, t.tally
         FROM backfill_run r
         CROSS JOIN json_each(r.plan, '$.groups') g
         LEFT JOIN backfill_group_tally t
                ON t.run_id = r.run_id AND t.group_key = json_extract(g.value, '$.key')
         WHERE r.run_id = ?1
         ORDER BY g.key",
    )
    .bind(run_id)
    .fetch(pool)
}

/// Records each planned group, as the plan lists it, in a row of its own
/// (`backfill_group`): the plan's list of groups is made from these rows by
/// the database (`planning::record_plan`), and a mapper reads those of its
/// shard's groups only.
pub(super) async fn add_plan_groups(
    conn: &mut sqlx::SqliteConnection,
    run_id: &str,
    groups: &[PlannedGroup],
) -> Result<(), StoreError> {
    for (n, g) in groups.iter().enumerate() {
        let entry = serde_json::to_string(g).map_err(|e| StoreError::Data(e.to_string()))?;
        sqlx::query(
            "INSERT INTO backfill_group (run_id, group_key, n, entry) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(run_id)
        .bind(&g.key)
        .bind(n as i64)
        .bind(&entry)
        .execute(&mut *conn)
        .await
        .map_err(sql("record the plan's groups"))?;
    }
    Ok(())
}

/// The group records of run `$1`, as (group, tally as JSON text).
pub(super) const GROUP_TALLIES: &str =
    "SELECT group_key, tally FROM backfill_group_tally WHERE run_id = ?1";
