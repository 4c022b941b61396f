//! Planning: the spec's SQL run with bound parameters, and the plan recorded
//! in the ledger in one transaction (run row, items, shards), so that the
//! ledger never holds half a plan. The statements and the transaction are
//! each dialect's (`pg::planning`, `sqlite::planning`); what the queries
//! are bound to, how keys are ordered and checked, and how a derived run's
//! plan is finished are decided here.

/// What a run is, before it is planned (defined with the plan it becomes).
pub use backfill_job::plan::NewRun;

use backfill_job::plan::GroupRow;

use backfill_job::{JobSpec, Plan, PlannedGroup, Scope};

use crate::db::dispatch;

use crate::{Store, StoreError};

pub use crate::model::planning::*;

impl Store {
    /// Runs the spec's groups query. `$1` is a JSON array of the requested
    /// keys, or NULL for `--all`.
    pub async fn group_rows(
        &self,
        spec: &JobSpec,
        scope: &Scope,
    ) -> Result<Vec<GroupRow>, StoreError> {
        let Some(groups) = &spec.groups else {
            return Ok(Vec::new());
        };
        let dialect = self.dialect();
        let user_sql = groups.query.for_dialect("groups.query", dialect)?;
        let keys = uses_param(user_sql, dialect).then(|| requested_keys(scope));
        let what = format!("job `{}`: groups.query failed", spec.name);
        dispatch!(self, group_rows(user_sql, keys, &what))?
            .into_iter()
            .map(|row| {
                GroupRow::from_object(row)
                    .map_err(|m| StoreError::Data(format!("groups.query: {m}")))
            })
            .collect()
    }

    /// Records the plan of a new run: finds the target rows of every target
    /// (streamed, in key order), folds shared rows into one item, cuts items
    /// into shards, and writes run, items and shards in one transaction.
    /// A run with nothing to do is finished on the spot.
    pub async fn create_run(
        &self,
        new: NewRun<'_>,
        groups: Vec<PlannedGroup>,
    ) -> Result<Plan, StoreError> {
        dispatch!(self, create_run(new, groups))
    }
}

impl Store {
    /// Plans a run derived from a finished run (see [`Derived`]): a new run
    /// with the same spec and group parameters whose rows come from the
    /// original's ledger rows, recorded in one transaction.
    pub async fn create_derived_run(
        &self,
        run_id: &str,
        original: &crate::RunRecord,
        shard_size: u32,
        derived: Derived,
    ) -> Result<Plan, StoreError> {
        dispatch!(
            self,
            create_derived_run(run_id, original, shard_size, derived)
        )
    }
}
