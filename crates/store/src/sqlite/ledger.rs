//! SQLite's ledger records: runs (read with their JSON text parsed,
//! listed, folded into under SQLite's write lock) and shards marked
//! published. SQLite has no advisory job lock (see `Backend::try_lock_job`).

use backfill_job::fold::RunLedger;
use backfill_job::ShardResult;
use sqlx::{Row, SqlitePool};

use super::{begin_write, json_text, parse_json};
use crate::error::{sql, StoreError};
use crate::model::ledger::{fold_stored, not_reduced, reduced, RawRun, RecentRun, Reduced};

/// A run row, its JSON columns parsed from their text.
pub(super) async fn load_run(
    pool: &SqlitePool,
    run_id: &str,
) -> Result<Option<RawRun>, StoreError> {
    let row = sqlx::query(
        "SELECT run_id, spec_text, mode, scope, state, plan, shards_total, shards_reduced, tally, summary,
                revert_of, sample, table_rows, kind, retry_of
         FROM backfill_run WHERE run_id = ?1",
    )
    .bind(run_id)
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
        plan: parse_json("plan", row.get("plan"))?,
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

/// Folds one shard result into its run, once, in one `IMMEDIATE`
/// transaction (which holds SQLite's write lock throughout).
pub(super) async fn reduce(pool: &SqlitePool, result: &ShardResult) -> Result<Reduced, StoreError> {
    let mut tx = begin_write(pool, "reduce").await?;
    let claimed = sqlx::query("UPDATE backfill_shard SET reduced_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
         WHERE run_id = ?1 AND shard_no = ?2 AND reduced_at IS NULL AND state IN ('done', 'dead') RETURNING result")
    .bind(&result.run_id)
    .bind(result.shard_no as i64)
    .fetch_optional(&mut *tx)
    .await
    .map_err(sql("claim shard result"))?;
    let Some(claimed) = claimed else {
        let known: Option<bool> = sqlx::query_scalar(
            "SELECT reduced_at IS NOT NULL FROM backfill_shard WHERE run_id = ?1 AND shard_no = ?2",
        )
        .bind(&result.run_id)
        .bind(result.shard_no as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql("read shard"))?;
        tx.rollback().await.map_err(sql("rollback reduce"))?;
        return Ok(not_reduced(known));
    };
    let stored = claimed.get::<Option<String>, _>(0);
    let stored = stored
        .map(|t| parse_json("shard result", Some(t)))
        .transpose()?;
    let row = sqlx::query(
        "SELECT spec_text, mode, scope, plan, tally, shards_total, shards_reduced FROM backfill_run WHERE run_id = ?1",
    )
    .bind(&result.run_id)
    .fetch_one(&mut *tx)
    .await
    .map_err(sql("read run"))?;
    let fold = fold_stored(
        RunLedger {
            run_id: &result.run_id,
            spec_text: &row.get::<String, _>("spec_text"),
            mode: &row.get::<String, _>("mode"),
            scope: parse_json("scope", row.get("scope"))?,
            plan: parse_json("plan", row.get("plan"))?,
            tally: parse_json("tally", row.get("tally"))?,
            shards_total: row.get("shards_total"),
            shards_reduced: row.get("shards_reduced"),
        },
        stored,
    )?;
    let tally_text = json_text(&fold.tally)?;
    match &fold.finished {
        None => {
            sqlx::query(
                "UPDATE backfill_run SET tally = ?2, shards_reduced = ?3 WHERE run_id = ?1",
            )
            .bind(&result.run_id)
            .bind(&tally_text)
            .bind(fold.reduced)
            .execute(&mut *tx)
            .await
            .map_err(sql("fold shard result"))?;
        }
        Some((state, summary)) => {
            sqlx::query("UPDATE backfill_run SET tally = ?2, shards_reduced = ?3, state = ?4, summary = ?5, finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE run_id = ?1")
            .bind(&result.run_id)
            .bind(&tally_text)
            .bind(fold.reduced)
            .bind(state.as_str())
            .bind(summary)
            .execute(&mut *tx)
            .await
            .map_err(sql("finish run"))?;
        }
    }
    tx.commit().await.map_err(sql("commit reduce"))?;
    Ok(reduced(fold))
}
