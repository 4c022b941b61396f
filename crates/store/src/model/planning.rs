//! The pure steps of planning a run (see [`crate::planning`], which
//! re-exports them): reading a spec query's rows, ordering and cutting a
//! target's keys into shards, and what a derived run (revert, retry) takes
//! from the run it is derived from.

use std::collections::BTreeMap;

use crate::error::StoreError;
use backfill_job::fold::final_state;
use backfill_job::fold::finish_plan;
/// What a run is, before it is planned (defined with the plan it becomes).
use backfill_job::plan::NewRun;
use backfill_job::plan::{parse_ref_row, CutShard, PlannedTarget, RefRow, ShardCutter};
use backfill_job::spec::Dialect;
use backfill_job::spec::TargetSpec;
use backfill_job::tally::GroupTally;
use backfill_job::{JobSpec, KeyType, Mode, Plan, PlannedGroup, Scope, Tally};
use serde_json::{Map, Value};

/// Binds the parameter only when the SQL uses it (`$1` on PostgreSQL, `?1`
/// on SQLite), so a spec query without parameters is accepted as written.
pub(crate) fn uses_param(sql: &str, dialect: Dialect) -> bool {
    match dialect {
        Dialect::Postgres => sql.contains("$1"),
        Dialect::Sqlite => sql.contains("?1"),
    }
}

/// A groups query's row (a JSON object) as a group; an error names the query.
pub(crate) fn group_row(
    row: Map<String, Value>,
) -> Result<backfill_job::plan::GroupRow, StoreError> {
    backfill_job::plan::GroupRow::from_object(row)
        .map_err(|m| StoreError::Data(format!("groups.query: {m}")))
}

/// A groups query's rows as groups, read as they come: `object` makes
/// each row a JSON object (each dialect reads its rows its own way).
pub(crate) async fn collect_groups<R>(
    mut rows: impl futures::Stream<Item = sqlx::Result<R>> + Unpin,
    what: &str,
    object: impl Fn(R) -> Result<Map<String, Value>, StoreError>,
) -> Result<Vec<backfill_job::plan::GroupRow>, StoreError> {
    use futures::TryStreamExt;
    let mut groups = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(crate::error::sql(what))? {
        groups.push(group_row(object(row)?)?);
    }
    Ok(groups)
}

pub(crate) fn obj(text: &str, what: &str) -> Result<Map<String, Value>, StoreError> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(StoreError::Data(format!(
            "{what} returned a row that is not an object"
        ))),
    }
}

/// `$1` of the groups query: the requested keys, or NULL for `--all`.
pub(crate) fn requested_keys(scope: &Scope) -> Option<String> {
    match scope {
        Scope::All => None,
        Scope::Groups(k) => Some(serde_json::to_string(k).unwrap_or_else(|_| "[]".into())),
    }
}

/// `$1` of the target queries: the keys of the groups that passed the
/// guards (NULL for jobs without groups).
pub(crate) fn eligible_keys(spec: &JobSpec, groups: &[PlannedGroup]) -> Option<String> {
    let eligible: Vec<&str> = groups
        .iter()
        .filter(|g| g.reason().is_none())
        .map(|g| g.key.as_str())
        .collect();
    spec.groups
        .as_ref()
        .map(|_| serde_json::to_string(&eligible).unwrap_or_else(|_| "[]".into()))
}

/// The ORDER BY of a target query's rows. The planner folds the references
/// of one row, which must come one after the other, into one item; the
/// spellings of one integer key (`0100`, `+100`, `100`, canonical once
/// read) must be adjacent too. Keys the query returns as integers already
/// are (`key_is_integer`: the plain order, which an index can serve); text
/// keys are ordered by their integer value (on PostgreSQL, texts that are
/// not integers come last, to be refused when read).
pub(crate) fn key_order(dialect: Dialect, key_type: KeyType, key_is_integer: bool) -> &'static str {
    match (key_type, key_is_integer, dialect) {
        (KeyType::Text, _, _) | (KeyType::Integer, true, _) => "ORDER BY q.key",
        (KeyType::Integer, false, Dialect::Postgres) => {
            "ORDER BY CASE WHEN q.key::text ~ '^[+-]?[0-9]+$' THEN q.key::text::numeric END, q.key"
        }
        (KeyType::Integer, false, Dialect::Sqlite) => "ORDER BY CAST(q.key AS INTEGER), q.key",
    }
}

/// A reference whose key is not an integer, for a target whose keys are:
/// bad input, naming the key, the target and its query.
pub(crate) fn not_an_integer(spec: &JobSpec, target: &str, field: &str, key: &str) -> StoreError {
    StoreError::Input(format!(
        "job `{}`: target `{target}` has key_type = \"integer\" but {field} returned key `{key}`, which is not a 64-bit integer; fix the query (or use key_type = \"text\")",
        spec.name
    ))
}

/// A target query's row as a reference row, its key in canonical form;
/// `field` names the query in errors.
pub(crate) fn ref_row(
    spec: &JobSpec,
    target: &TargetSpec,
    field: &str,
    row: Map<String, Value>,
) -> Result<RefRow, StoreError> {
    parse_ref_row(row, field, spec.groups.is_some())
        .map_err(StoreError::Data)?
        .with_canonical_key(target.key_type)
        .map_err(|k| not_an_integer(spec, &target.name, field, &k))
}

/// Whether a reference row belongs to the run: every row, or in a sampled
/// run those of its sample.
pub(crate) fn in_run(new: &NewRun<'_>, r: &RefRow) -> bool {
    new.sample.is_none_or(|f| r.in_sample(f))
}

/// Cuts one target's reference rows (in key order) into shards numbered
/// from `*next_shard` on, which is moved past them; the shards and what
/// the plan says of the target.
pub(crate) fn cut_target(
    target: &str,
    shard_size: u32,
    next_shard: &mut u32,
    rows: impl IntoIterator<Item = RefRow>,
    tally: &mut Tally,
) -> (Vec<CutShard>, PlannedTarget) {
    let mut cutter = ShardCutter::new(target, shard_size, *next_shard);
    let mut cut = Vec::new();
    for r in rows {
        cut.extend(cutter.push(r, tally));
    }
    *next_shard = cutter.next_shard_no();
    let (last, planned) = cutter.finish(tally);
    if let Some(shard) = last {
        *next_shard = shard.shard_no + 1;
        cut.push(shard);
    }
    (cut, planned)
}

/// Integer keys as the ledger stores them beside their text.
pub(crate) fn key_ints(
    target: &str,
    key_type: KeyType,
    shard: &CutShard,
) -> Result<Vec<Option<i64>>, StoreError> {
    match key_type {
        KeyType::Text => Ok(vec![None; shard.items.len()]),
        KeyType::Integer => shard
            .items
            .iter()
            .map(|i| {
                i.key.parse::<i64>().map(Some).map_err(|_| {
                    StoreError::Data(format!(
                        "target `{target}` has key_type = \"integer\" but its query returned key `{}`",
                        i.key
                    ))
                })
            })
            .collect(),
    }
}

/// The quarantined rows of one target of a run, as reference rows.
pub(crate) fn quarantine_ref(key: String, group: String, refs: i64) -> RefRow {
    RefRow {
        key: Some(key),
        group: Some(group),
        refs: refs.max(0) as u64,
        skip: None,
    }
}

/// A run made from a finished run's ledger rather than from the spec's
/// queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Derived {
    /// `backfill retry`: the original's quarantined rows not yet retried,
    /// in the original's mode; they are marked as retried by the new run.
    Retry,
    /// `backfill revert`: the rows the original (a commit) wrote, restored
    /// from their before-images, in the given mode.
    Revert(Mode),
}

impl Derived {
    /// The rows of one target: (key, group, refs), in key order; `$1` is
    /// the original run, `$2` the target. The same SQL on both dialects.
    pub(crate) fn rows_sql(self) -> &'static str {
        match self {
            Derived::Retry => {
                "SELECT key, group_key, refs FROM backfill_quarantine
                 WHERE run_id = $1 AND target = $2 AND retried_by IS NULL ORDER BY key"
            }
            // The item of the shard that wrote the before-image gives the
            // row's group and references.
            Derived::Revert(_) => {
                "SELECT i.key, min(i.group_key), max(i.refs) FROM backfill_before_image b
                 JOIN backfill_item i ON i.run_id = b.run_id AND i.shard_no = b.shard_no AND i.key = b.key
                 WHERE b.run_id = $1 AND b.target = $2 GROUP BY i.key ORDER BY i.key"
            }
        }
    }

    pub(crate) fn mode(self, original: &crate::model::ledger::RunRecord) -> Mode {
        match self {
            Derived::Retry => original.mode,
            Derived::Revert(m) => m,
        }
    }

    pub(crate) fn revert_of(self, original: &crate::model::ledger::RunRecord) -> Option<&str> {
        matches!(self, Derived::Revert(_)).then_some(original.run_id.as_str())
    }

    pub(crate) fn retry_of(self, original: &crate::model::ledger::RunRecord) -> Option<&str> {
        matches!(self, Derived::Retry).then_some(original.run_id.as_str())
    }

    pub(crate) fn kind(self) -> backfill_job::RunKind {
        match self {
            Derived::Retry => backfill_job::RunKind::Retry,
            Derived::Revert(_) => backfill_job::RunKind::Revert,
        }
    }
}

/// A derived run's plan once its shards are cut, with its summary when it
/// has nothing to do.
pub(crate) fn finish_derived(
    run_id: &str,
    original: &crate::model::ledger::RunRecord,
    shard_size: u32,
    derived: Derived,
    targets: Vec<PlannedTarget>,
    next_shard: u32,
    tally: Tally,
) -> (Plan, Option<String>) {
    let new = NewRun {
        run_id,
        spec: &original.spec,
        mode: derived.mode(original),
        scope: &original.scope_value,
        shard_size,
        sample: None,
        kind: derived.kind(),
        schedule: None,
    };
    finish_plan(
        &new,
        original.plan.groups.clone(),
        targets,
        next_shard,
        tally,
    )
}

/// A plan as the ledger records it: the run's record holds the plan and
/// the totals, each group's counts are a record of their own.
pub(crate) struct RecordedPlan<'a> {
    /// The plan, its list of groups empty (the database fills it from the
    /// groups' rows) and its own tally without groups, as JSON text.
    pub plan: String,
    /// The run's first totals.
    pub totals: Tally,
    /// The groups' first records: what the plan itself counted of them.
    pub groups: &'a BTreeMap<String, GroupTally>,
    /// `running`, or the final state of a run with nothing to send.
    pub state: &'static str,
    /// The summary line of a run with nothing to send.
    pub summary: Option<String>,
}

/// How a plan, finished with [`finish_plan`] or [`finish_derived`], is
/// recorded. Nothing of the plan is copied but its totals: a plan may hold
/// tens of thousands of groups.
pub(crate) fn recorded_plan(
    plan: &Plan,
    summary: Option<String>,
) -> Result<RecordedPlan<'_>, StoreError> {
    let state = match &summary {
        Some(_) => final_state(&plan.tally).as_str(),
        None => "running",
    };
    let text = plan
        .outline_text()
        .map_err(|e| StoreError::Data(e.to_string()))?;
    Ok(RecordedPlan {
        plan: text,
        totals: plan.tally.without_groups(),
        groups: &plan.tally.groups,
        state,
        summary,
    })
}

/// Where a run's planning starts.
pub enum PlanFrom {
    /// A new run, with its evaluated groups.
    New(Vec<PlannedGroup>),
    /// A run whose coordinator stopped while planning it (its row in
    /// `backfill_planning` still there): its groups and the shards it recorded are the ledger's, and
    /// planning carries on from them (PostgreSQL only: SQLite plans in one
    /// transaction, so none of its runs is ever left planning).
    Interrupted,
}

/// Where each shard's task goes as soon as the shard is committed, while
/// its run is planned, so that mappers start before planning ends.
#[derive(Clone)]
pub struct ShardSink {
    ledger: String,
    tx: tokio::sync::mpsc::UnboundedSender<backfill_job::ShardTask>,
}

impl ShardSink {
    /// A sink for the tasks of ledger `ledger` (its id), and where they come out.
    pub fn new(
        ledger: &str,
    ) -> (
        ShardSink,
        tokio::sync::mpsc::UnboundedReceiver<backfill_job::ShardTask>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            ShardSink {
                ledger: ledger.to_string(),
                tx,
            },
            rx,
        )
    }

    /// Sends the task of a shard just committed; a publisher that went away
    /// loses nothing: the shard stays unpublished in the ledger.
    pub(crate) fn send(&self, run_id: &str, target: &str, shard: &CutShard) {
        let (Some(first), Some(last)) = (shard.items.first(), shard.items.last()) else {
            return;
        };
        let _ = self.tx.send(backfill_job::ShardTask {
            v: backfill_job::message::MESSAGE_VERSION,
            ledger: self.ledger.clone(),
            run_id: run_id.to_string(),
            shard_no: shard.shard_no,
            target: target.to_string(),
            first_key: first.key.clone(),
            last_key: last.key.clone(),
            rows: shard.items.len() as u32,
        });
    }
}

/// What a run interrupted while being planned had recorded of a target:
/// its rows and shards, and the keys of its items, which planning it again
/// must not record twice.
#[derive(Default)]
pub(crate) struct RecordedTarget {
    pub rows: u64,
    pub shards: u32,
    pub keys: std::collections::HashSet<String>,
}

impl RecordedTarget {
    /// The shard without the items already recorded.
    pub(crate) fn unrecorded(&self, mut shard: CutShard) -> CutShard {
        if !self.keys.is_empty() {
            shard.items.retain(|i| !self.keys.contains(&i.key));
        }
        shard
    }
}
