//! PostgreSQL's steps for a mapper's shard: a shard's transaction
//! ([`ShardTx`]) that locks the shard's ledger row (`FOR UPDATE`), reads
//! its rows batch by batch (sized by `octet_length` first, so a batch of
//! large documents is cut short), and writes each batch with
//! compare-and-set, first on the row version (`xmin`) and then on the
//! `md5` of every JSON column; before-images, quarantine and the failed
//! and dead shards' records.

use backfill_job::shard::{md5_hex, shard_tally, EvaluatedRow, FetchedRow};
use backfill_job::spec::quote_ident;
use backfill_job::{KeyType, RowOutcome, Tally};
use sqlx::{PgPool, Row};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::backend::{Capability, Opened, ShardTransaction};
use crate::error::{sql, StoreError};
use crate::model::shard::{key_join, BatchLimits, Committed, ShardCommit, ShardWork};
use backfill_job::pushdown::{pushed_tally, Pushdown};
use serde_json::{Map, Value};

/// The system column of a row's version.
pub(super) const ROW_VERSION: &str = "xmin";

/// How a shard's read takes a JSON column as text, and the row's version;
/// the compare-and-set compares digests of the columns when asked.
pub(super) const AS_TEXT: &str = "::text";
pub(super) const VERSION: &str = "t.xmin::text";
pub(super) const DIGESTS: bool = true;

/// A shard's stored result.
fn stored_result(v: Option<serde_json::Value>) -> Result<Tally, StoreError> {
    serde_json::from_value(v.unwrap_or_default())
        .map_err(|e| StoreError::Data(format!("stored shard result is unreadable: {e}")))
}

pub(super) async fn shard_done(
    pool: &PgPool,
    run_id: &str,
    shard_no: u32,
) -> Result<Option<Tally>, StoreError> {
    let row: Option<Option<serde_json::Value>> = sqlx::query_scalar("SELECT result FROM backfill_shard WHERE run_id = $1 AND shard_no = $2 AND state IN ('done', 'dead')")
        .bind(run_id)
        .bind(shard_no as i32)
        .fetch_optional(pool)
        .await
        .map_err(sql("read shard state"))?;
    row.map(stored_result).transpose()
}

pub(super) async fn column_types(
    pool: &PgPool,
    table: &str,
) -> sqlx::Result<BTreeMap<String, String>> {
    let rows = sqlx::query(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
         FROM pg_attribute a WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(quote_ident(table))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Locks a shard's ledger row in its transaction: its state and stored
/// result (a shard not in the ledger is an error).
async fn lock_shard(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    run_id: &str,
    shard_no: u32,
) -> Result<(String, Option<serde_json::Value>), StoreError> {
    sqlx::query_as(
        "SELECT state, result FROM backfill_shard WHERE run_id = $1 AND shard_no = $2 FOR UPDATE",
    )
    .bind(run_id)
    .bind(shard_no as i32)
    .fetch_optional(&mut **tx)
    .await
    .map_err(sql("lock shard"))?
    .ok_or_else(|| {
        StoreError::Data(format!(
            "shard {shard_no} of run {run_id} is not in the ledger"
        ))
    })
}

pub(super) async fn open_shard(
    pool: &PgPool,
    work: &ShardWork<'_>,
    types: BTreeMap<String, String>,
) -> Result<Opened<ShardTx>, StoreError> {
    Ok(match open(pool, work, types).await? {
        Ok(tx) => Opened::Open(tx),
        Err(done) => Opened::Done(done),
    })
}

/// Starts a shard's transaction with its ledger row locked, or gives the
/// stored result of a shard already done (or given up).
async fn open(
    pool: &PgPool,
    work: &ShardWork<'_>,
    types: BTreeMap<String, String>,
) -> Result<Result<ShardTx, Tally>, StoreError> {
    let mut tx = pool.begin().await.map_err(sql("begin shard"))?;
    let (state, result) = lock_shard(&mut tx, work.run_id, work.shard_no).await?;
    if matches!(state.as_str(), "done" | "dead") {
        tx.rollback().await.map_err(sql("rollback shard"))?;
        return Ok(Err(stored_result(result)?));
    }
    Ok(Ok(ShardTx {
        tx,
        types,
        items: None,
        oversize: false,
    }))
}

/// The whole shard as one batch.
pub(super) async fn commit_shard(
    pool: &PgPool,
    c: ShardCommit<'_>,
    types: BTreeMap<String, String>,
) -> Result<Committed, StoreError> {
    let work = ShardWork {
        run_id: c.run_id,
        shard_no: c.shard_no,
        target: c.target,
        mode: c.mode,
        worker: c.worker,
        retry: c.retry,
    };
    let mut tx = match open(pool, &work, types).await? {
        Ok(tx) => tx,
        Err(done) => return Ok(Committed::AlreadyDone(done)),
    };
    let mut tally = Tally::default();
    if let Some(t) = tx.write(&work, c.rows).await? {
        tally.merge(&t);
    }
    tx.finish(&work, tally).await
}

/// One shard's transaction on PostgreSQL.
pub(crate) struct ShardTx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    types: BTreeMap<String, String>,
    /// The shard's items not yet read, in order; read at the first batch.
    items: Option<VecDeque<Item>>,
    /// The batch in hand is one row larger than the batch limit: the
    /// connection's buffers are given back after reading and writing it.
    oversize: bool,
}

/// An item of a shard and, once asked, the size of its documents.
struct Item {
    no: i32,
    bytes: Option<u64>,
}

impl ShardTransaction for ShardTx {
    async fn next_batch(
        &mut self,
        w: &ShardWork<'_>,
        limits: BatchLimits,
    ) -> Result<Option<Vec<FetchedRow>>, StoreError> {
        let (tx, items, oversize) = (&mut self.tx, &mut self.items, &mut self.oversize);
        let items = match items {
            Some(i) => i,
            None => items.insert(shard_items(tx, w.run_id, w.shard_no).await?),
        };
        if items.is_empty() {
            return Ok(None);
        }
        let n = limits.rows.max(1).min(items.len());
        let unmeasured: Vec<i32> = items
            .iter()
            .take(n)
            .filter(|i| i.bytes.is_none())
            .map(|i| i.no)
            .collect();
        if !unmeasured.is_empty() {
            let sizes = item_sizes(tx, w.target, w.run_id, w.shard_no, &unmeasured).await?;
            for it in items.iter_mut().take(n) {
                if it.bytes.is_none() {
                    it.bytes = Some(sizes.get(&it.no).copied().unwrap_or(0));
                }
            }
        }
        let (mut take, mut bytes) = (0usize, 0u64);
        for it in items.iter().take(n) {
            let b = it.bytes.unwrap_or(0);
            // A row larger than the limit still goes, alone.
            if take > 0 && bytes + b > limits.bytes {
                break;
            }
            bytes += b;
            take += 1;
        }
        let nos: Vec<i32> = items.drain(..take).map(|i| i.no).collect();
        let rows = fetch_items(tx, w.target, w.run_id, w.shard_no, &nos).await?;
        *oversize = bytes > limits.bytes;
        if *oversize {
            give_back_buffers(tx, true).await?;
        }
        Ok(Some(rows))
    }

    async fn write(
        &mut self,
        work: &ShardWork<'_>,
        rows: Vec<EvaluatedRow>,
    ) -> Result<Option<Tally>, StoreError> {
        let t = apply_rows(&mut self.tx, work, &self.types, rows).await?;
        if self.oversize {
            give_back_buffers(&mut self.tx, false).await?;
        }
        Ok(Some(t))
    }

    async fn push_batch(
        &mut self,
        w: &ShardWork<'_>,
        plan: &Pushdown,
        params: &HashMap<String, Map<String, Value>>,
        rows: usize,
        in_flight: &mut usize,
    ) -> Result<Capability<Option<(Tally, Vec<FetchedRow>)>>, StoreError> {
        let (tx, items) = (&mut self.tx, &mut self.items);
        let items = match items {
            Some(i) => i,
            None => items.insert(shard_items(tx, w.run_id, w.shard_no).await?),
        };
        if items.is_empty() {
            return Ok(Capability::Has(None));
        }
        let n = rows.max(1).min(items.len());
        let nos: Vec<i32> = items.drain(..n).map(|i| i.no).collect();
        *in_flight = nos.len();
        let pushed = super::pushdown::push_batch(tx, w, plan, params, &nos).await?;
        let mut tally = pushed_tally(&w.target.name, w.mode, &pushed.rows, plan.current.is_some());
        if let Some(bytes) = pushed.written_bytes {
            tally.bytes_written = bytes;
        }
        let handed = pushed.handed;
        let handed = if handed.is_empty() {
            Vec::new()
        } else {
            fetch_items(tx, w.target, w.run_id, w.shard_no, &handed).await?
        };
        Ok(Capability::Has(Some((tally, handed))))
    }

    async fn finish(self, work: &ShardWork<'_>, tally: Tally) -> Result<Committed, StoreError> {
        let mut tx = self.tx;
        let result = serde_json::to_value(&tally).map_err(|e| StoreError::Data(e.to_string()))?;
        sqlx::query(
            "UPDATE backfill_shard SET state = 'done', result = $3, worker = $4, finished_at = clock_timestamp(),
                    deliveries = deliveries + 1, lease_until = NULL,
                    elapsed_ms = (extract(epoch FROM clock_timestamp() - started_at) * 1000)::int
             WHERE run_id = $1 AND shard_no = $2",
        )
        .bind(work.run_id)
        .bind(work.shard_no as i32)
        .bind(&result)
        .bind(work.worker)
        .execute(&mut *tx)
        .await
        .map_err(sql("record shard done"))?;
        tx.commit().await.map_err(sql("commit shard"))?;
        Ok(Committed::Applied(tally))
    }
}

/// A shard's item numbers, in order.
async fn shard_items(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    run_id: &str,
    shard_no: u32,
) -> Result<VecDeque<Item>, StoreError> {
    let nos: Vec<i32> = sqlx::query_scalar(
        "SELECT item_no FROM backfill_item WHERE run_id = $1 AND shard_no = $2 ORDER BY item_no",
    )
    .bind(run_id)
    .bind(shard_no as i32)
    .fetch_all(&mut **tx)
    .await
    .map_err(sql("read shard items"))?;
    Ok(nos.into_iter().map(|no| Item { no, bytes: None }).collect())
}

/// The size in bytes of each item's documents as text. `octet_length` of
/// the text is asked rather than `pg_column_size`, which gives the
/// compressed size on disk: a document that compresses well would look
/// many times smaller than it is once read.
async fn item_sizes(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    target: &backfill_job::spec::TargetSpec,
    run_id: &str,
    shard_no: u32,
    nos: &[i32],
) -> Result<HashMap<i32, u64>, StoreError> {
    let sum: Vec<String> = target
        .all_columns()
        .map(|c| format!("coalesce(octet_length(t.{}::text), 0)", quote_ident(c)))
        .collect();
    let q = format!(
        "SELECT i.item_no, ({sum})::int8
         FROM backfill_item i LEFT JOIN {table} t ON {join}
         WHERE i.run_id = $1 AND i.shard_no = $2 AND i.item_no = ANY($3)",
        sum = if sum.is_empty() {
            "0".to_string()
        } else {
            sum.join(" + ")
        },
        table = quote_ident(&target.table),
        join = key_join(target),
    );
    let rows: Vec<(i32, i64)> = sqlx::query_as(&q)
        .bind(run_id)
        .bind(shard_no as i32)
        .bind(nos)
        .fetch_all(&mut **tx)
        .await
        .map_err(sql(format!(
            "size the rows of shard {shard_no} in {}",
            target.table
        )))?;
    Ok(rows
        .into_iter()
        .map(|(no, b)| (no, b.max(0) as u64))
        .collect())
}

/// Reads the given items of a shard and their target rows.
async fn fetch_items(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    target: &backfill_job::spec::TargetSpec,
    run_id: &str,
    shard_no: u32,
    nos: &[i32],
) -> Result<Vec<FetchedRow>, StoreError> {
    let q = crate::model::shard::fetch_sql(target, "AND i.item_no = ANY($3)", AS_TEXT, VERSION);
    let rows = sqlx::query(&q)
        .bind(run_id)
        .bind(shard_no as i32)
        .bind(nos)
        .fetch_all(&mut **tx)
        .await
        .map_err(sql(format!(
            "read rows of shard {shard_no} from {}",
            target.table
        )))?;
    crate::common::fetched_rows!(target, rows, false)
}

/// Gives back the memory the connection kept from a statement that carried
/// a document larger than a batch: sqlx keeps its read and write buffers at
/// their largest, which would hold two more copies of that document through
/// the rest of the shard. The read buffer lets go of its old allocation
/// only when the next message arrives, hence, after a read, a trivial
/// statement.
async fn give_back_buffers(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    after_read: bool,
) -> Result<(), StoreError> {
    use sqlx::Connection;
    tx.shrink_buffers();
    if after_read {
        sqlx::query("SELECT 1")
            .execute(&mut **tx)
            .await
            .map_err(sql("give back the connection's read buffer"))?;
    }
    Ok(())
}

/// Writes one batch of a shard's evaluated rows in its transaction: the
/// compare-and-set writes (and, with `on_conflict = "retry"`, the conflicted
/// rows again under a row lock), the before-images of what was written and
/// the quarantine of rows in error. Returns the batch's result.
async fn apply_rows(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    w: &ShardWork<'_>,
    types: &BTreeMap<String, String>,
    rows: Vec<EvaluatedRow>,
) -> Result<Tally, StoreError> {
    let target = w.target;
    let mut rows = rows;
    let mut written: HashSet<String> = HashSet::new();
    // Written keys, each with the row version the write left.
    let mut after_version: HashMap<String, Option<String>> = HashMap::new();
    let mut retried = 0u64;
    if w.mode.is_commit() {
        let to_write: Vec<&EvaluatedRow> = rows.iter().filter(|r| is_change(r)).collect();
        if !to_write.is_empty() {
            after_version = write_cas(tx, target, types, &to_write).await?;
            written = after_version.keys().cloned().collect();
        }
        if let Some(retry) = w.retry {
            // Rows the application edited since they were read: read
            // them again under a row lock and apply the rules to what
            // the application wrote.
            let conflicted: Vec<usize> = (0..rows.len())
                .filter(|i| is_change(&rows[*i]) && !written.contains(&rows[*i].key))
                .collect();
            if !conflicted.is_empty() {
                let keys: Vec<String> = conflicted.iter().map(|i| rows[*i].key.clone()).collect();
                let fresh = read_for_update(tx, target, &keys).await?;
                for i in &conflicted {
                    let r = &mut rows[*i];
                    match fresh.get(&r.key) {
                        None => r.outcome = RowOutcome::Skipped("row no longer exists".into()),
                        Some(cols) => {
                            r.outcome = retry(&r.group, cols);
                            r.digests = cols
                                .iter()
                                .map(|(c, t)| (c.clone(), t.as_deref().map(md5_hex)))
                                .collect();
                            r.read = cols.clone();
                            r.released.clear();
                            // The retried write keeps whole before-images
                            // and compares the digests only.
                            r.undo.clear();
                            r.version = None;
                        }
                    }
                }
                let again: Vec<&EvaluatedRow> = conflicted
                    .iter()
                    .map(|i| &rows[*i])
                    .filter(|r| is_change(r))
                    .collect();
                if !again.is_empty() {
                    let more = write_cas(tx, target, types, &again).await?;
                    written.extend(more.keys().cloned());
                    after_version.extend(more);
                }
                retried = conflicted
                    .iter()
                    .filter(|i| !is_change(&rows[**i]) || written.contains(&rows[**i].key))
                    .count() as u64;
            }
        }
        // Before-images of what was actually written: for a jsonb
        // column (which keeps no formatting), the inverse patch of what
        // the rules changed, with the row version the write left;
        // otherwise the whole value as read.
        let mut keys = Vec::new();
        let mut cols = Vec::new();
        let mut befores: Vec<Option<&str>> = Vec::new();
        let mut patches: Vec<Option<&str>> = Vec::new();
        let mut versions: Vec<Option<&str>> = Vec::new();
        for r in &rows {
            let Some(version) = after_version.get(&r.key) else {
                continue;
            };
            if let RowOutcome::Changed(new) = &r.outcome {
                for col in new.keys() {
                    let patch = r.undo.get(col).map(String::as_str);
                    // A NULL column goes back to NULL: whole value.
                    let jsonb = types.get(col).map(String::as_str) == Some("jsonb")
                        && (matches!(r.read.get(col), Some(Some(_)))
                            || r.released.contains_key(col));
                    keys.push(r.key.as_str());
                    cols.push(col.as_str());
                    match (jsonb, patch, version.as_deref()) {
                        (true, Some(p), Some(v)) => {
                            befores.push(None);
                            patches.push(Some(p));
                            versions.push(Some(v));
                        }
                        _ => {
                            befores.push(r.read.get(col).and_then(|v| v.as_deref()));
                            patches.push(None);
                            versions.push(None);
                        }
                    }
                }
            }
        }
        if !keys.is_empty() {
            sqlx::query(
                    "INSERT INTO backfill_before_image (run_id, shard_no, target, key, column_name, before, patch, after_version)
                     SELECT $1, $2, $3, * FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[])",
                )
                .bind(w.run_id)
                .bind(w.shard_no as i32)
                .bind(&target.name)
                .bind(&keys)
                .bind(&cols)
                .bind(&befores)
                .bind(&patches)
                .bind(&versions)
                .execute(&mut **tx)
                .await
                .map_err(sql("record before-images"))?;
        }
    }

    let mut tally = shard_tally(&target.name, w.mode, &rows, &written);
    tally.conflicts_retried = retried;
    let poisoned: Vec<(&str, &str, i64, &str)> = rows
        .iter()
        .filter_map(|r| match &r.outcome {
            RowOutcome::Error(m) => {
                Some((r.key.as_str(), r.group.as_str(), r.refs as i64, m.as_str()))
            }
            _ => None,
        })
        .collect();
    if !poisoned.is_empty() {
        sqlx::query(
                "INSERT INTO backfill_quarantine (run_id, shard_no, target, key, group_key, refs, error)
                 SELECT $1, $2, $3, * FROM unnest($4::text[], $5::text[], $6::int8[], $7::text[])",
            )
            .bind(w.run_id)
            .bind(w.shard_no as i32)
            .bind(&target.name)
            .bind(poisoned.iter().map(|p| p.0).collect::<Vec<_>>())
            .bind(poisoned.iter().map(|p| p.1).collect::<Vec<_>>())
            .bind(poisoned.iter().map(|p| p.2).collect::<Vec<_>>())
            .bind(poisoned.iter().map(|p| p.3).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await
            .map_err(sql("quarantine rows"))?;
    }
    Ok(tally)
}

fn is_change(r: &EvaluatedRow) -> bool {
    matches!(r.outcome, RowOutcome::Changed(_))
}

/// Reads rows again, locking them for the rest of the transaction.
async fn read_for_update(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    target: &backfill_job::spec::TargetSpec,
    keys: &[String],
) -> Result<std::collections::HashMap<String, BTreeMap<String, Option<String>>>, StoreError> {
    let cols: Vec<&String> = target.all_columns().collect();
    let select_cols: String = cols
        .iter()
        .map(|c| format!(", t.{}::text", quote_ident(c)))
        .collect();
    let key = quote_ident(&target.key);
    let q = format!(
        "SELECT t.{key}::text{select_cols} FROM {table} t WHERE t.{key} = ANY($1) FOR UPDATE",
        table = quote_ident(&target.table),
    );
    let query = sqlx::query(&q);
    let query = match target.key_type {
        KeyType::Integer => query.bind(
            keys.iter()
                .map(|k| {
                    k.parse::<i64>()
                        .map_err(|_| StoreError::Data(format!("key `{k}` is not an integer")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        KeyType::Text => query.bind(keys.to_vec()),
    };
    let rows = query
        .fetch_all(&mut **tx)
        .await
        .map_err(sql(format!("read edited rows of {} again", target.table)))?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let m = cols
                .iter()
                .enumerate()
                .map(|(i, c)| ((*c).clone(), r.get::<Option<String>, _>(1 + i)))
                .collect();
            (r.get::<String, _>(0), m)
        })
        .collect())
}

pub(super) async fn shard_attempt_failed(
    pool: &PgPool,
    run_id: &str,
    shard_no: u32,
    error: &str,
) -> Result<u32, StoreError> {
    let n: Option<i32> = sqlx::query_scalar(
        "UPDATE backfill_shard SET failures = failures + 1, last_error = $3, state = 'pending', lease_until = NULL
         WHERE run_id = $1 AND shard_no = $2 AND state IN ('pending', 'running') RETURNING failures",
    )
    .bind(run_id)
    .bind(shard_no as i32)
    .bind(error)
    .fetch_optional(pool)
    .await
    .map_err(sql("record a failed shard attempt"))?;
    Ok(n.unwrap_or(0).max(0) as u32)
}

/// Quarantines the rows of shard `$2` of run `$1` (target `$3`) with the
/// error `$4`.
pub(super) const QUARANTINE_FAILED: &str =
    "INSERT INTO backfill_quarantine (run_id, shard_no, target, key, group_key, refs, error)
         SELECT run_id, shard_no, $3, key, group_key, refs, $4 FROM backfill_item WHERE run_id = $1 AND shard_no = $2
         ON CONFLICT DO NOTHING";

/// Records shard `$2` of run `$1` given up, with its result `$3` and last
/// error `$4`.
pub(super) const FAIL: &str = "UPDATE backfill_shard SET state = 'dead', result = $3, worker = 'failed', finished_at = now(), last_error = $4
         WHERE run_id = $1 AND shard_no = $2";

pub(super) async fn fail_shard(
    pool: &PgPool,
    run_id: &str,
    shard_no: u32,
    target: &str,
    error: &str,
) -> Result<Committed, StoreError> {
    let mut tx = pool.begin().await.map_err(sql("begin shard"))?;
    let (state, result) = lock_shard(&mut tx, run_id, shard_no).await?;
    if matches!(state.as_str(), "done" | "dead") {
        return Ok(Committed::AlreadyDone(stored_result(result)?));
    }
    crate::common::fail_in!(tx, run_id, shard_no, target, error, |t: &Tally| {
        serde_json::to_value(t).map_err(|e| StoreError::Data(e.to_string()))
    })
}

/// Writes changed rows with compare-and-set in up to two statements: first
/// on the row version (`xmin` as read: unchanged means nobody wrote the row
/// since, and nothing has to be compared or sent back), then, for the rows
/// whose version moved (another column updated, say), on the `md5` of every
/// JSON column's text. Returns the keys written, each with its new version.
async fn write_cas(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    target: &backfill_job::spec::TargetSpec,
    types: &BTreeMap<String, String>,
    rows: &[&EvaluatedRow],
) -> Result<HashMap<String, Option<String>>, StoreError> {
    let versioned: Vec<&EvaluatedRow> = rows
        .iter()
        .copied()
        .filter(|r| r.version.is_some())
        .collect();
    let mut written = if versioned.is_empty() {
        HashMap::new()
    } else {
        write_rows(tx, target, types, &versioned, true).await?
    };
    let rest: Vec<&EvaluatedRow> = rows
        .iter()
        .copied()
        .filter(|r| !written.contains_key(&r.key))
        .collect();
    if !rest.is_empty() {
        written.extend(write_rows(tx, target, types, &rest, false).await?);
    }
    Ok(written)
}

/// One UPDATE for the shard's changed rows: every JSON column must still read
/// as it did (compare-and-set on the `md5` of its text: the documents are
/// not sent back); returns the keys actually written, each with the row
/// version (`xmin`) the write left.
async fn write_rows(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    target: &backfill_job::spec::TargetSpec,
    types: &BTreeMap<String, String>,
    rows: &[&EvaluatedRow],
    by_version: bool,
) -> Result<HashMap<String, Option<String>>, StoreError> {
    let all_cols: Vec<&String> = target.all_columns().collect();
    let n_written = target.columns.len();
    // unnest columns: k, then per column its old text, then per written
    // column whether to set it and its new text (NULL: SQL NULL, which
    // only a revert writes back).
    let mut defs = vec!["k".to_string(), "x".to_string()];
    let mut casts = vec!["$1::text[]".to_string(), "$2::text[]".to_string()];
    for i in 0..all_cols.len() {
        defs.push(format!("o{i}"));
        casts.push(format!("${}::text[]", casts.len() + 1));
    }
    for i in 0..n_written {
        defs.push(format!("w{i}"));
        casts.push(format!("${}::bool[]", casts.len() + 1));
        defs.push(format!("n{i}"));
        casts.push(format!("${}::text[]", casts.len() + 1));
    }
    let sets: Vec<String> = target
        .columns
        .iter()
        .enumerate()
        .map(|(i, col)| {
            let ty = types.get(col).map(String::as_str).unwrap_or("jsonb");
            let cast = match ty {
                "jsonb" | "json" => format!("::{ty}"),
                _ => String::new(),
            };
            let q = quote_ident(col);
            format!("{q} = CASE WHEN v.w{i} THEN v.n{i}{cast} ELSE t.{q} END")
        })
        .collect();
    let cas: Vec<String> = all_cols
        .iter()
        .enumerate()
        .filter(|_| !by_version)
        .map(|(i, col)| {
            format!(
                "md5(t.{}::text) IS NOT DISTINCT FROM v.o{i}",
                quote_ident(col)
            )
        })
        .collect();
    let key = quote_ident(&target.key);
    let key_cmp = match target.key_type {
        KeyType::Integer => format!("t.{key} = v.k::bigint"),
        KeyType::Text => format!("t.{key} = v.k"),
    };
    let q = format!(
        "UPDATE {table} AS t SET {sets} FROM unnest({casts}) AS v({defs})
         WHERE {key_cmp} AND {cas} RETURNING t.{key}::text, t.{ROW_VERSION}::text",
        table = quote_ident(&target.table),
        sets = sets.join(", "),
        casts = casts.join(", "),
        defs = defs.join(", "),
        cas = if by_version {
            format!("t.{ROW_VERSION}::text = v.x")
        } else {
            cas.join(" AND ")
        },
    );
    let mut query = sqlx::query(&q);
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    query = query.bind(keys);
    let versions: Vec<Option<&str>> = rows.iter().map(|r| r.version.as_deref()).collect();
    query = query.bind(versions);
    for col in &all_cols {
        let olds: Vec<Option<String>> = rows
            .iter()
            .map(|r| match (by_version, r.digests.get(*col)) {
                (true, _) => None,
                (false, Some(d)) => d.clone(),
                // Not fetched with digests: digest the text as read.
                (false, None) => r.read.get(*col).and_then(|v| v.as_deref()).map(md5_hex),
            })
            .collect();
        query = query.bind(olds);
    }
    for col in &target.columns {
        let news: Vec<Option<&Option<String>>> = rows
            .iter()
            .map(|r| match &r.outcome {
                RowOutcome::Changed(m) => m.get(col),
                _ => None,
            })
            .collect();
        let set: Vec<bool> = news.iter().map(Option::is_some).collect();
        let texts: Vec<Option<&str>> = news.iter().map(|n| n.and_then(|v| v.as_deref())).collect();
        query = query.bind(set).bind(texts);
    }
    let written = query
        .fetch_all(&mut **tx)
        .await
        .map_err(sql(format!("write rows of {}", target.table)))?;
    Ok(written
        .into_iter()
        .map(|r| (r.get::<String, _>(0), r.get::<Option<String>, _>(1)))
        .collect())
}
