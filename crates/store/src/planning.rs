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
        dispatch!(self, group_rows(user_sql, keys, &what))
    }

    /// Records the plan of a new run: finds the target rows of every target
    /// (streamed, in key order), folds shared rows into one item, cuts items
    /// into shards, and records run, items and shards. A run with nothing
    /// to do is finished on the spot.
    ///
    /// On PostgreSQL the run is recorded as it is planned (with a row in
    /// `backfill_planning` until the plan is whole): its row and groups first, then each shard
    /// committed on its own and its task sent to `sink`, so that mappers
    /// start while the rest is planned; the reducer does not end a run
    /// being planned. SQLite records the plan in one transaction.
    pub async fn create_run(
        &self,
        new: NewRun<'_>,
        groups: Vec<PlannedGroup>,
        sink: Option<&ShardSink>,
    ) -> Result<Plan, StoreError> {
        let run_id = new.run_id;
        let planned = dispatch!(self, create_run(new, PlanFrom::New(groups), sink));
        if planned.as_ref().is_err_and(|e| !e.is_transient()) {
            // Bad input found mid-way (a key that is not an integer, a query
            // that fails): a run none of whose shards went out is taken
            // back, as if never begun. One whose shards did stays being
            // planned: the same command carries it on, `cancel` ends it. A
            // database that went away is waited for by the caller, who
            // plans on (`Store::continue_run`).
            if let Err(e) = dispatch!(self, discard_unpublished_run(run_id)) {
                tracing::warn!(run = %run_id, error = %e, "could not take back the run whose planning failed");
            }
        }
        planned
    }

    /// Carries on planning a run whose coordinator stopped while planning
    /// it (see [`Store::create_run`]): its target rows are read again and
    /// cut into shards numbered on from its last, leaving out the items it
    /// recorded; its groups are those it recorded. `new` is the run as it
    /// was begun ([`Store::interrupted_plan`]).
    pub async fn continue_run(
        &self,
        new: NewRun<'_>,
        sink: Option<&ShardSink>,
    ) -> Result<Plan, StoreError> {
        dispatch!(self, create_run(new, PlanFrom::Interrupted, sink))
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
