//! PostgreSQL's ledger records: runs (read, listed, folded into under a
//! row lock), shards marked published, and the job's lock, a session
//! advisory lock on a connection of its own (released when the connection
//! closes, also when the process dies), and whether some session holds it.

use std::collections::BTreeMap;

use backfill_job::fold::merge_groups;
use backfill_job::tally::GroupTally;
use backfill_job::PlannedGroup;
use sqlx::{PgPool, Row};

use crate::error::{sql, StoreError};
use crate::model::ledger::{JobLock, RawRun, RecentRun};

pub(super) async fn try_lock_job(pool: &PgPool, job: &str) -> Result<Option<JobLock>, StoreError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(sql("connect for the job lock"))?
        .detach();
    let got: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('backfill job ' || $1))")
            .bind(job)
            .fetch_one(&mut conn)
            .await
            .map_err(sql("take the job lock"))?;
    Ok(got.then_some(JobLock { _conn: Some(conn) }))
}

/// A one-key advisory lock shows in pg_locks as its high 32 bits in
/// classid and its low 32 bits in objid (objsubid 1).
pub(super) async fn job_lock_held(pool: &PgPool, job: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
                WHERE locktype = 'advisory' AND objsubid = 1 AND granted
                  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                  AND ((classid::bigint << 32) | objid::bigint) = hashtext('backfill job ' || $1)::bigint)",
    )
    .bind(job)
    .fetch_one(pool)
    .await
}

/// A run row.
pub(super) async fn load_run(
    pool: &PgPool,
    run_id: &str,
    plan_groups: bool,
) -> Result<Option<RawRun>, StoreError> {
    let row = sqlx::query(
        "SELECT run_id, spec_text, mode, scope, state,
                (CASE WHEN $2 THEN plan ELSE jsonb_set(plan, '{groups}', '[]') END)::text AS plan,
                shards_total, shards_reduced, tally, summary,
                revert_of, sample, table_rows, kind, retry_of
         FROM backfill_run WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(plan_groups)
    .fetch_optional(pool)
    .await
    .map_err(sql("read run"))?;
    Ok(row.map(|row| RawRun {
        run_id: row.get("run_id"),
        spec_text: row.get("spec_text"),
        mode: row.get("mode"),
        scope: row.get("scope"),
        state: row.get("state"),
        plan: row.get("plan"),
        shards_total: row.get::<i32, _>("shards_total") as i64,
        shards_reduced: row.get::<i32, _>("shards_reduced") as i64,
        tally: row.get("tally"),
        summary: row.get("summary"),
        revert_of: row.get("revert_of"),
        sample: row.get("sample"),
        table_rows: row.get("table_rows"),
        kind: row.get("kind"),
        retry_of: row.get("retry_of"),
    }))
}

/// The most recent runs, newest first.
pub(super) async fn recent_runs(pool: &PgPool, limit: i64) -> sqlx::Result<Vec<RecentRun>> {
    sqlx::query_as(
        "SELECT run_id, job_name, mode, state FROM backfill_run ORDER BY created_at DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Marks shards as published, in one statement.
pub(super) async fn mark_published(
    pool: &PgPool,
    run_id: &str,
    shard_nos: &[i32],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE backfill_shard SET published_at = now()
         WHERE run_id = $1 AND shard_no = ANY($2) AND published_at IS NULL",
    )
    .bind(run_id)
    .bind(shard_nos)
    .execute(pool)
    .await
    .map_err(sql("mark shards published"))?;
    Ok(())
}

/// Claims a shard's result for the fold (`reduced_at`), once, and returns
/// it (`$1` run, `$2` shard).
pub(super) const CLAIM_RESULT: &str = "UPDATE backfill_shard SET reduced_at = now()
     WHERE run_id = $1 AND shard_no = $2 AND reduced_at IS NULL AND state IN ('done', 'dead')
     RETURNING result";

/// The run row a fold reads ([`crate::model::ledger::FoldRow`]), locked
/// (`FOR UPDATE`) so that folds of one run take turns; the plan only with
/// the last shard, and of its groups only their statuses, for the summary
/// line: a fold costs what the shard carries, not what the run holds.
pub(super) const FOLD_ROW: &str =
    "SELECT spec_text, mode, scope, tally, shards_total::int8, shards_reduced::int8,
            EXISTS (SELECT 1 FROM backfill_planning p WHERE p.run_id = $1) AS planning,
            CASE WHEN shards_reduced + 1 >= shards_total THEN jsonb_set(plan, '{groups}', COALESCE(
                (SELECT jsonb_agg(jsonb_build_object('status', g.value->'status'))
                 FROM jsonb_array_elements(plan->'groups') AS g),
                '[]'))::text END AS plan
     FROM backfill_run WHERE run_id = $1 FOR UPDATE";

/// Writes a fold into the run row: its tally, shards folded and, when it
/// ended the run, its state, summary and end time.
pub(super) const FOLD: &str = "UPDATE backfill_run SET tally = $2, shards_reduced = $3,
            state = COALESCE($4, state), summary = COALESCE($5, summary),
            finished_at = CASE WHEN $4 IS NULL THEN finished_at ELSE now() END
     WHERE run_id = $1";

/// Merges `groups` into the run's group records, in the caller's
/// transaction: one read and one upsert of the groups' rows per batch,
/// whatever the number of groups the run has.
pub(super) async fn add_groups(
    conn: &mut sqlx::PgConnection,
    run_id: &str,
    groups: &BTreeMap<String, GroupTally>,
) -> Result<(), StoreError> {
    // A batch at a time, in key order (so concurrent folds lock rows in
    // one order): a shard's groups are one batch, a plan's 50,000 are ten.
    let all: Vec<(&String, &GroupTally)> = groups.iter().collect();
    for batch in all.chunks(GROUP_BATCH) {
        let keys: Vec<&String> = batch.iter().map(|(k, _)| *k).collect();
        let stored: Vec<(String, String)> = sqlx::query_as(
            "SELECT group_key, tally::text FROM backfill_group_tally
             WHERE run_id = $1 AND group_key = ANY($2) FOR UPDATE",
        )
        .bind(run_id)
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await
        .map_err(sql("read group tallies"))?;
        let (keys, tallies): (Vec<String>, Vec<String>) =
            merge_groups(stored, batch.iter().copied())?
                .into_iter()
                .unzip();
        sqlx::query(
            "INSERT INTO backfill_group_tally (run_id, group_key, tally)
             SELECT $1, k, t::jsonb FROM UNNEST($2::text[], $3::text[]) AS g (k, t)
             ON CONFLICT (run_id, group_key) DO UPDATE SET tally = EXCLUDED.tally",
        )
        .bind(run_id)
        .bind(&keys)
        .bind(&tallies)
        .execute(&mut *conn)
        .await
        .map_err(sql("write group tallies"))?;
    }
    Ok(())
}

/// How many groups the plan of run `$1` lists.
pub(super) const PLAN_GROUP_COUNT: &str =
    "SELECT COALESCE(jsonb_array_length(plan->'groups'), 0)::int8 FROM backfill_run WHERE run_id = $1";

/// A run's plan groups in order, each with its record (JSON texts),
/// streamed: the server unnests the plan's list, the client holds a row at
/// a time.
pub(super) fn report_groups<'a>(
    pool: &'a PgPool,
    run_id: &'a str,
) -> futures::stream::BoxStream<'a, sqlx::Result<(String, Option<String>)>> {
    sqlx::query_as(
        "SELECT g.elem::text, t.tally::text
         FROM backfill_run r
         CROSS JOIN LATERAL jsonb_array_elements(r.plan->'groups') WITH ORDINALITY AS g(elem, n)
         LEFT JOIN backfill_group_tally t ON t.run_id = r.run_id AND t.group_key = g.elem->>'key'
         WHERE r.run_id = $1
         ORDER BY g.n",
    )
    .bind(run_id)
    .fetch(pool)
}

/// How many groups one INSERT carries.
const GROUP_BATCH: usize = 5_000;

/// Records each planned group, as the plan lists it, in a row of its own
/// (`backfill_group`), a batch at a time: the plan's list of groups is made
/// from these rows by the database (`planning::record_plan`), and a mapper
/// reads those of its shard's groups only.
pub(super) async fn add_plan_groups(
    conn: &mut sqlx::PgConnection,
    run_id: &str,
    groups: &[PlannedGroup],
) -> Result<(), StoreError> {
    for (b, batch) in groups.chunks(GROUP_BATCH).enumerate() {
        let keys: Vec<&str> = batch.iter().map(|g| g.key.as_str()).collect();
        let nos: Vec<i32> = (0..batch.len())
            .map(|i| (b * GROUP_BATCH + i) as i32)
            .collect();
        let entries = batch
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| StoreError::Data(e.to_string()))?;
        sqlx::query(
            "INSERT INTO backfill_group (run_id, group_key, n, entry)
             SELECT $1, k, n, e::jsonb FROM UNNEST($2::text[], $3::int[], $4::text[]) AS g (k, n, e)",
        )
        .bind(run_id)
        .bind(&keys)
        .bind(&nos)
        .bind(&entries)
        .execute(&mut *conn)
        .await
        .map_err(sql("record the plan's groups"))?;
    }
    Ok(())
}

/// The group records of run `$1`, as (group, tally as JSON text).
pub(super) const GROUP_TALLIES: &str =
    "SELECT group_key, tally::text FROM backfill_group_tally WHERE run_id = $1";
