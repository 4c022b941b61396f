//! What the review gate, `requires`, `verify` and `revert` read from the
//! ledger: reviewed dry runs, passed verifies, before-images, and the row
//! counts of a run's target tables.
//!
//! A query both dialects read alike is written once, with `$n` parameters
//! (SQLite binds `$n` by number too); where they differ, each dialect has
//! its statement in full, side by side. Timestamps compare as `timestamptz`
//! on PostgreSQL and as ISO-8601 text on SQLite, which sorts the same way.

use backfill_job::rules::BeforeImage;
use backfill_job::spec::quote_ident;
use backfill_job::JobSpec;
use std::collections::{BTreeMap, HashMap};

use crate::{sql, Backend, Store, StoreError};

/// A finished commit of a job and the verify that passed after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The job's last commit run.
    pub commit_run: String,
    /// A run of `backfill verify` that passed after it; `None` when none did.
    pub verify_run: Option<String>,
}

/// Full forward dry runs of a job and spec that finished without errors
/// less than `$3` seconds ago, newest first.
const RECENT_DRY_RUNS_PG: &str = "SELECT run_id FROM backfill_run
     WHERE job_name = $1 AND spec_hash = $2 AND mode = 'dry-run'
       AND state = 'done' AND sample IS NULL AND revert_of IS NULL
       AND (kind IS NULL OR kind = 'forward')
       AND created_at > now() - make_interval(secs => $3)
     ORDER BY created_at DESC LIMIT 20";
const RECENT_DRY_RUNS_LITE: &str = "SELECT run_id FROM backfill_run
     WHERE job_name = $1 AND spec_hash = $2 AND mode = 'dry-run'
       AND state = 'done' AND sample IS NULL AND revert_of IS NULL
       AND (kind IS NULL OR kind = 'forward')
       AND created_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || $3 || ' seconds')
     ORDER BY created_at DESC LIMIT 20";

/// The before-images of some rows of a target: the keys as an array on
/// PostgreSQL, as one JSON array on SQLite (which has no arrays).
const BEFORE_IMAGES_PG: &str = "SELECT key, column_name, before, patch, after_version
     FROM backfill_before_image
     WHERE run_id = $1 AND target = $2 AND key = ANY($3)";
const BEFORE_IMAGES_LITE: &str = "SELECT key, column_name, before, patch, after_version
     FROM backfill_before_image
     WHERE run_id = $1 AND target = $2 AND key IN (SELECT value FROM json_each($3))";

impl Store {
    /// Dry runs of a job with this spec that finished within `window`,
    /// newest first: full forward dry runs that finished without errors
    /// only (not sampled, not a revert or retry, not a `verify`).
    pub async fn recent_dry_runs(
        &self,
        job: &str,
        spec_hash: &str,
        window: std::time::Duration,
    ) -> Result<Vec<String>, StoreError> {
        let secs = window.as_secs_f64();
        let rows: Vec<String> = match &self.backend {
            Backend::Pg(p) => {
                sqlx::query_scalar(RECENT_DRY_RUNS_PG)
                    .bind(job)
                    .bind(spec_hash)
                    .bind(secs)
                    .fetch_all(p)
                    .await
            }
            Backend::Lite(p) => {
                sqlx::query_scalar(RECENT_DRY_RUNS_LITE)
                    .bind(job)
                    .bind(spec_hash)
                    .bind(secs)
                    .fetch_all(p)
                    .await
            }
        }
        .map_err(sql("find reviewed dry runs"))?;
        Ok(rows)
    }

    /// The last commit of a job (a finished commit-mode run) and a verify
    /// of the job that passed after it finished. `None` when the job was
    /// never committed.
    pub async fn last_commit_verified(&self, job: &str) -> Result<Option<Verified>, StoreError> {
        let commit = "SELECT run_id FROM backfill_run
                      WHERE job_name = $1 AND mode = 'commit' AND finished_at IS NOT NULL
                      ORDER BY finished_at DESC LIMIT 1";
        let verify =
            "SELECT e.run_id FROM backfill_event e JOIN backfill_run r ON r.run_id = e.run_id
                      WHERE r.job_name = $1 AND e.action = 'verify' AND e.detail LIKE 'passed%'
                        AND r.created_at > (SELECT finished_at FROM backfill_run WHERE run_id = $2)
                      ORDER BY e.at DESC LIMIT 1";
        match &self.backend {
            Backend::Pg(p) => {
                let Some(commit_run) = sqlx::query_scalar::<_, String>(commit)
                    .bind(job)
                    .fetch_optional(p)
                    .await
                    .map_err(sql("find the job's last commit"))?
                else {
                    return Ok(None);
                };
                let verify_run = sqlx::query_scalar(verify)
                    .bind(job)
                    .bind(&commit_run)
                    .fetch_optional(p)
                    .await
                    .map_err(sql("find a passed verify"))?;
                Ok(Some(Verified {
                    commit_run,
                    verify_run,
                }))
            }
            Backend::Lite(p) => {
                let Some(commit_run) = sqlx::query_scalar::<_, String>(commit)
                    .bind(job)
                    .fetch_optional(p)
                    .await
                    .map_err(sql("find the job's last commit"))?
                else {
                    return Ok(None);
                };
                let verify_run = sqlx::query_scalar(verify)
                    .bind(job)
                    .bind(&commit_run)
                    .fetch_optional(p)
                    .await
                    .map_err(sql("find a passed verify"))?;
                Ok(Some(Verified {
                    commit_run,
                    verify_run,
                }))
            }
        }
    }

    /// How many before-images a run recorded.
    pub async fn before_image_count(&self, run_id: &str) -> Result<i64, StoreError> {
        let q = "SELECT count(*) FROM backfill_before_image WHERE run_id = $1";
        match &self.backend {
            Backend::Pg(p) => sqlx::query_scalar(q).bind(run_id).fetch_one(p).await,
            Backend::Lite(p) => sqlx::query_scalar(q).bind(run_id).fetch_one(p).await,
        }
        .map_err(sql("count before-images"))
    }

    /// The before-images a run recorded for some rows of a target:
    /// key → column → before-image (the whole value, or an inverse patch
    /// with the row version the write left).
    pub async fn before_images(
        &self,
        run_id: &str,
        target: &str,
        keys: &[String],
    ) -> Result<HashMap<String, BTreeMap<String, BeforeImage>>, StoreError> {
        type Raw = (
            String,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Raw> = match &self.backend {
            Backend::Pg(p) => sqlx::query_as(BEFORE_IMAGES_PG)
                .bind(run_id)
                .bind(target)
                .bind(keys)
                .fetch_all(p)
                .await
                .map_err(sql("read before-images"))?,
            Backend::Lite(p) => {
                // SQLite has no arrays: the keys go in as one JSON array.
                let list =
                    serde_json::to_string(keys).map_err(|e| StoreError::Data(e.to_string()))?;
                sqlx::query_as(BEFORE_IMAGES_LITE)
                    .bind(run_id)
                    .bind(target)
                    .bind(list)
                    .fetch_all(p)
                    .await
                    .map_err(sql("read before-images"))?
            }
        };
        let mut out: HashMap<String, BTreeMap<String, BeforeImage>> = HashMap::new();
        for (key, col, before, patch, after_version) in rows {
            let image = match (patch, after_version) {
                (Some(patch), Some(after_version)) => BeforeImage::Patch {
                    patch,
                    after_version,
                },
                _ => BeforeImage::Value(before),
            };
            out.entry(key).or_default().insert(col, image);
        }
        Ok(out)
    }

    /// Counts the rows of each of the spec's target tables.
    pub async fn count_table_rows(
        &self,
        spec: &JobSpec,
    ) -> Result<BTreeMap<String, i64>, StoreError> {
        let mut out = BTreeMap::new();
        for t in &spec.targets {
            if out.contains_key(&t.table) {
                continue;
            }
            let q = format!("SELECT count(*) FROM {}", quote_ident(&t.table));
            let n: i64 = match &self.backend {
                Backend::Pg(p) => sqlx::query_scalar(&q).fetch_one(p).await,
                Backend::Lite(p) => sqlx::query_scalar(&q).fetch_one(p).await,
            }
            .map_err(sql(format!("count the rows of {}", t.table)))?;
            out.insert(t.table.clone(), n);
        }
        Ok(out)
    }

    /// Records the target tables' row counts of a run at one moment
    /// (`planned` or `finished`), merged into `backfill_run.table_rows`.
    pub async fn record_table_rows(
        &self,
        run_id: &str,
        moment: &str,
        counts: &BTreeMap<String, i64>,
    ) -> Result<(), StoreError> {
        let rec = self.load_run(run_id).await?;
        let mut doc = rec
            .and_then(|r| r.table_rows)
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        doc.insert(
            moment.to_string(),
            serde_json::to_value(counts).map_err(|e| StoreError::Data(e.to_string()))?,
        );
        let doc = serde_json::Value::Object(doc);
        match &self.backend {
            Backend::Pg(p) => {
                sqlx::query("UPDATE backfill_run SET table_rows = $2 WHERE run_id = $1")
                    .bind(run_id)
                    .bind(doc)
                    .execute(p)
                    .await
                    .map(drop)
            }
            Backend::Lite(p) => {
                sqlx::query("UPDATE backfill_run SET table_rows = ?2 WHERE run_id = ?1")
                    .bind(run_id)
                    .bind(doc.to_string())
                    .execute(p)
                    .await
                    .map(drop)
            }
        }
        .map_err(sql("record table row counts"))?;
        Ok(())
    }
}
