//! SQLite's steps for a mapper's shard: the whole shard read at once
//! ([`ShardTx`] hands it out as one batch) and committed in one `IMMEDIATE`
//! transaction, which takes the write lock up front and waits (busy
//! timeout) instead of failing on a lock upgrade; a shard's compare-and-set
//! writes, before-images and ledger record commit together. JSON columns
//! are text, as Django stores JSONField on SQLite, and the compare-and-set
//! compares that text exactly as it was read (SQLite has no row versions).
//! Also the failed and dead shards' records.

use backfill_job::spec::{quote_ident, TargetSpec};
use backfill_job::{KeyType, RowOutcome, Tally};
use sqlx::{Row, SqlitePool};
use std::collections::{BTreeMap, HashSet};

use backfill_job::shard::{shard_tally, EvaluatedRow, FetchedRow};

use super::{begin_write, json_text, parse_json};
use crate::backend::{Capability, Opened, ShardTransaction};
use crate::error::{sql, StoreError};
use crate::model::ledger::decode;
use crate::model::shard::{BatchLimits, Committed, ShardCommit, ShardWork};

pub(super) async fn shard_done(
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

/// How a shard's read takes a JSON column (as it is: text), and the row's
/// version and column digests: none, SQLite compares the documents
/// themselves.
pub(super) const AS_TEXT: &str = "";
pub(super) const VERSION: &str = "NULL";
pub(super) const DIGESTS: bool = false;

/// Reads the whole shard, outside any transaction: SQLite has no
/// statement timeout to keep statements under, and commits the shard in one
/// go at [`ShardTransaction::finish`], as one writer at a time.
pub(super) async fn open_shard(
    pool: &SqlitePool,
    work: &ShardWork<'_>,
) -> Result<Opened<ShardTx>, StoreError> {
    if let Some(done) = shard_done(pool, work.run_id, work.shard_no).await? {
        return Ok(Opened::Done(done));
    }
    let lite = super::Lite { pool: pool.clone() };
    let rows =
        crate::backend::Backend::fetch_shard(&lite, work.run_id, work.target, work.shard_no, false)
            .await?;
    Ok(Opened::Open(ShardTx {
        pool: pool.clone(),
        rows: Some(rows),
        evaluated: Vec::new(),
    }))
}

/// One shard on SQLite: its rows as read, and its evaluated rows kept
/// until [`ShardTransaction::finish`] commits them.
pub(crate) struct ShardTx {
    pool: SqlitePool,
    rows: Option<Vec<FetchedRow>>,
    evaluated: Vec<EvaluatedRow>,
}

impl ShardTransaction for ShardTx {
    async fn next_batch(
        &mut self,
        _work: &ShardWork<'_>,
        _limits: BatchLimits,
    ) -> Result<Option<Vec<FetchedRow>>, StoreError> {
        Ok(self.rows.take())
    }

    async fn write(
        &mut self,
        _work: &ShardWork<'_>,
        rows: Vec<EvaluatedRow>,
    ) -> Result<Option<Tally>, StoreError> {
        self.evaluated.extend(rows);
        Ok(None)
    }

    async fn push_batch(
        &mut self,
        _work: &ShardWork<'_>,
        _plan: &backfill_job::pushdown::Pushdown,
        _params: &std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>>,
        _rows: usize,
        _in_flight: &mut usize,
    ) -> Result<Capability<Option<(Tally, Vec<FetchedRow>)>>, StoreError> {
        Ok(Capability::Lacks(
            "SQLite has no jsonb functions to apply the rules with: every row is read and rewritten",
        ))
    }

    async fn finish(self, work: &ShardWork<'_>, _tally: Tally) -> Result<Committed, StoreError> {
        commit_shard(
            &self.pool,
            ShardCommit {
                run_id: work.run_id,
                shard_no: work.shard_no,
                target: work.target,
                mode: work.mode,
                worker: work.worker,
                rows: self.evaluated,
                retry: work.retry,
            },
        )
        .await
    }
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

pub(super) async fn commit_shard(
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

pub(super) async fn shard_attempt_failed(
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

/// Quarantines the rows of shard `$2` of run `$1` (target `$3`) with the
/// error `$4`.
pub(super) const QUARANTINE_FAILED: &str =
    "INSERT OR IGNORE INTO backfill_quarantine (run_id, shard_no, target, key, group_key, refs, error)
         SELECT run_id, shard_no, ?3, key, group_key, refs, ?4 FROM backfill_item WHERE run_id = ?1 AND shard_no = ?2";

/// Records shard `$2` of run `$1` given up, with its result `$3` and last
/// error `$4`.
pub(super) const FAIL: &str = "UPDATE backfill_shard SET state = 'dead', result = ?3, worker = 'failed', finished_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), last_error = ?4
         WHERE run_id = ?1 AND shard_no = ?2";

pub(super) async fn fail_shard(
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
    crate::common::fail_in!(tx, run_id, shard_no, target, error, json_text)
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
