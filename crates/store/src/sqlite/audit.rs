//! SQLite's statements for the review gate and `revert`: reviewed dry runs
//! (times as ISO-8601 text, which sorts as time does) and before-images
//! (the keys as one JSON array, SQLite having no arrays).

/// Full forward dry runs of a job and spec that finished without errors
/// less than `$3` seconds ago, newest first.
pub(super) const RECENT_DRY_RUNS: &str = "SELECT run_id FROM backfill_run
     WHERE job_name = $1 AND spec_hash = $2 AND mode = 'dry-run'
       AND state = 'done' AND sample IS NULL AND revert_of IS NULL
       AND (kind IS NULL OR kind = 'forward')
       AND created_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $3 || ' seconds')
     ORDER BY created_at DESC LIMIT 20";

/// The before-images of some rows of a target, the keys as one JSON array.
pub(super) const BEFORE_IMAGES: &str = "SELECT key, column_name, before, patch, after_version
     FROM backfill_before_image
     WHERE run_id = $1 AND target = $2 AND key IN (SELECT value FROM json_each($3))";
