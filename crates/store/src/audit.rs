//! What the review gate, `requires`, `verify` and `revert` read from the
//! ledger: reviewed dry runs, passed verifies, before-images, and the row
//! counts of a run's target tables.
//!
//! The statements are the back ends' (`pg::audit`, `sqlite::audit`, and
//! [`crate::common`] for those both read alike); here are what the callers
//! get from them.

use backfill_job::rules::BeforeImage;

use backfill_job::spec::quote_ident;

use backfill_job::JobSpec;

use std::collections::{BTreeMap, HashMap};

use crate::db::dispatch;

use crate::{sql, Store, StoreError};

pub(crate) use crate::model::audit::*;

/// A finished commit of a job and the verify that passed after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    /// The job's last commit run.
    pub commit_run: String,
    /// A run of `backfill verify` that passed after it; `None` when none did.
    pub verify_run: Option<String>,
}

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
        let rows: Vec<String> = dispatch!(self, recent_dry_runs(job, spec_hash, secs))
            .map_err(sql("find reviewed dry runs"))?;
        Ok(rows)
    }

    /// The last commit of a job (a finished commit-mode run) and a verify
    /// of the job that passed after it finished. `None` when the job was
    /// never committed.
    pub async fn last_commit_verified(&self, job: &str) -> Result<Option<Verified>, StoreError> {
        let Some(commit_run) =
            dispatch!(self, last_commit(job)).map_err(sql("find the job's last commit"))?
        else {
            return Ok(None);
        };
        let verify_run = dispatch!(self, passed_verify_after(job, &commit_run))
            .map_err(sql("find a passed verify"))?;
        Ok(Some(Verified {
            commit_run,
            verify_run,
        }))
    }

    /// How many before-images a run recorded.
    pub async fn before_image_count(&self, run_id: &str) -> Result<i64, StoreError> {
        dispatch!(
            self,
            count_of_run(
                "SELECT count(*) FROM backfill_before_image WHERE run_id = $1",
                run_id
            )
        )
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
        let rows: Vec<RawImage> = dispatch!(self, before_images(run_id, target, keys))?;
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
            let n: i64 = dispatch!(self, count(&q))
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
        let rec = self.load_run_totals(run_id).await?;
        let mut doc = rec
            .and_then(|r| r.table_rows)
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        doc.insert(
            moment.to_string(),
            serde_json::to_value(counts).map_err(|e| StoreError::Data(e.to_string()))?,
        );
        let doc = serde_json::Value::Object(doc);
        dispatch!(self, set_table_rows(run_id, doc)).map_err(sql("record table row counts"))?;
        Ok(())
    }
}
