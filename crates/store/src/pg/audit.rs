//! PostgreSQL's statements for the review gate and `revert`: reviewed dry
//! runs (times as `timestamptz`) and before-images (the keys as one JSON
//! array, as both dialects take them).

/// Full forward dry runs of a job and spec that finished without errors
/// less than `$3` seconds ago, newest first.
pub(super) const RECENT_DRY_RUNS: &str = "SELECT run_id FROM backfill_run
     WHERE job_name = $1 AND spec_hash = $2 AND mode = 'dry-run'
       AND state = 'done' AND sample IS NULL AND revert_of IS NULL
       AND (kind IS NULL OR kind = 'forward')
       AND created_at > now() - make_interval(secs => $3)
     ORDER BY created_at DESC LIMIT 20";

/// The before-images of some rows of a target, the keys as one JSON
/// array (as SQLite, which has no arrays, takes them).
pub(super) const BEFORE_IMAGES: &str = "SELECT key, column_name, before, patch, after_version
     FROM backfill_before_image
     WHERE run_id = $1 AND target = $2 AND key IN (SELECT jsonb_array_elements_text($3::jsonb))";
