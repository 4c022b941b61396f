//! SQLite's reads and writes for the review gate, `verify` and `revert`:
//! reviewed dry runs (times as ISO-8601 text, which sorts as time does),
//! before-images (keys as one JSON array, SQLite having no arrays) and a
//! run's table row counts (JSON text).

use sqlx::SqlitePool;

use crate::model::audit::RawImage;

/// Full forward dry runs of a job and spec that finished without errors
/// less than `$3` seconds ago, newest first.
pub(super) const RECENT_DRY_RUNS: &str = "SELECT run_id FROM backfill_run
     WHERE job_name = $1 AND spec_hash = $2 AND mode = 'dry-run'
       AND state = 'done' AND sample IS NULL AND revert_of IS NULL
       AND (kind IS NULL OR kind = 'forward')
       AND created_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $3 || ' seconds')
     ORDER BY created_at DESC LIMIT 20";

/// The before-images of some rows of a target, the keys as one JSON array.
const BEFORE_IMAGES: &str = "SELECT key, column_name, before, patch, after_version
     FROM backfill_before_image
     WHERE run_id = $1 AND target = $2 AND key IN (SELECT value FROM json_each($3))";

pub(super) async fn before_images(
    pool: &SqlitePool,
    run_id: &str,
    target: &str,
    keys_json: String,
) -> sqlx::Result<Vec<RawImage>> {
    sqlx::query_as(BEFORE_IMAGES)
        .bind(run_id)
        .bind(target)
        .bind(keys_json)
        .fetch_all(pool)
        .await
}

pub(super) async fn set_table_rows(
    pool: &SqlitePool,
    run_id: &str,
    doc: serde_json::Value,
) -> sqlx::Result<()> {
    sqlx::query("UPDATE backfill_run SET table_rows = ?2 WHERE run_id = ?1")
        .bind(run_id)
        .bind(doc.to_string())
        .execute(pool)
        .await
        .map(drop)
}
