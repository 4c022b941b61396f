//! PostgreSQL's reads and writes for the review gate, `verify` and
//! `revert`: reviewed dry runs (times as `timestamptz`), before-images
//! (keys as an array) and a run's table row counts (`jsonb`).

use sqlx::PgPool;

use crate::model::audit::RawImage;

/// Full forward dry runs of a job and spec that finished without errors
/// less than `$3` seconds ago, newest first.
pub(super) const RECENT_DRY_RUNS: &str = "SELECT run_id FROM backfill_run
     WHERE job_name = $1 AND spec_hash = $2 AND mode = 'dry-run'
       AND state = 'done' AND sample IS NULL AND revert_of IS NULL
       AND (kind IS NULL OR kind = 'forward')
       AND created_at > now() - make_interval(secs => $3)
     ORDER BY created_at DESC LIMIT 20";

/// The before-images of some rows of a target, the keys as an array.
const BEFORE_IMAGES: &str = "SELECT key, column_name, before, patch, after_version
     FROM backfill_before_image
     WHERE run_id = $1 AND target = $2 AND key = ANY($3)";

pub(super) async fn before_images(
    pool: &PgPool,
    run_id: &str,
    target: &str,
    keys: &[String],
) -> sqlx::Result<Vec<RawImage>> {
    sqlx::query_as(BEFORE_IMAGES)
        .bind(run_id)
        .bind(target)
        .bind(keys)
        .fetch_all(pool)
        .await
}

pub(super) async fn set_table_rows(
    pool: &PgPool,
    run_id: &str,
    doc: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE backfill_run SET table_rows = $2 WHERE run_id = $1")
        .bind(run_id)
        .bind(doc)
        .execute(pool)
        .await
        .map(drop)
}
