//! The types a mapper's shard steps pass to a dialect and get back (work,
//! commit, batch limits, the shard's result), and how a target's key
//! columns are joined (see [`crate::shard`], which re-exports them).

/// A shard's rows as read and as evaluated, defined with the evaluation.
pub(crate) use backfill_job::shard::{EvaluatedRow, FetchedRow};
use backfill_job::spec::quote_ident;
use backfill_job::{KeyType, Mode, RowOutcome, Tally};
use std::collections::BTreeMap;

/// The rows of a shard, or the shard's stored result if it is already done.
/// Short-lived (one per shard read), so the tally is not boxed.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum ShardRows {
    Pending(Vec<FetchedRow>),
    Done(Tally),
}

/// What to commit for a shard.
pub struct ShardCommit<'a> {
    pub run_id: &'a str,
    pub shard_no: u32,
    pub target: &'a backfill_job::spec::TargetSpec,
    pub mode: Mode,
    pub worker: &'a str,
    pub rows: Vec<EvaluatedRow>,
    /// With `on_conflict = "retry"`: evaluates a row again, given its group
    /// and its documents as read under a row lock.
    pub retry: Option<&'a Reevaluate<'a>>,
}

/// Evaluates a row again (group, documents) after a conflict.
pub type Reevaluate<'a> =
    dyn Fn(&str, &BTreeMap<String, Option<String>>) -> RowOutcome + Send + Sync + 'a;

/// What committing did.
#[derive(Debug, Clone, PartialEq)]
pub enum Committed {
    /// Applied now; the shard's result.
    Applied(Tally),
    /// Another delivery already committed this shard; its stored result.
    AlreadyDone(Tally),
}

impl Committed {
    pub fn tally(&self) -> &Tally {
        match self {
            Committed::Applied(t) | Committed::AlreadyDone(t) => t,
        }
    }
}

/// How a shard's items join their target rows: on the integer key beside
/// an item's text, or on the text.
/// The query reading a shard's items with their target rows (`$1` run,
/// `$2` shard, `filter` any further condition on the items): each item's
/// key, group, references, whether its row was found, the row's version
/// (the dialect's `version` expression) and its JSON columns as text
/// (`as_text` the dialect's cast), in item order.
pub(crate) fn fetch_sql(
    target: &backfill_job::spec::TargetSpec,
    filter: &str,
    as_text: &str,
    version: &str,
) -> String {
    let select_cols: String = target
        .all_columns()
        .map(|c| format!(", t.{}{as_text}", quote_ident(c)))
        .collect();
    format!(
        "SELECT i.key, i.group_key, i.refs, (t.{key} IS NOT NULL) AS found, {version}{select_cols}
         FROM backfill_item i LEFT JOIN {table} t ON {join}
         WHERE i.run_id = $1 AND i.shard_no = $2 {filter} ORDER BY i.item_no",
        key = quote_ident(&target.key),
        table = quote_ident(&target.table),
        join = key_join(target),
    )
}

pub(crate) fn key_join(target: &backfill_job::spec::TargetSpec) -> String {
    let k = quote_ident(&target.key);
    match target.key_type {
        KeyType::Integer => format!("t.{k} = i.key_int"),
        KeyType::Text => format!("t.{k} = i.key"),
    }
}

/// What a pushed-down batch leaves to the mapper (see
/// [`crate::ShardTx::push_batch`]).
#[derive(Debug)]
pub enum PushedBatch {
    /// The dialect cannot apply the rules itself (why): the shard is read
    /// with [`crate::ShardTx::next_batch`].
    Unsupported(&'static str),
    /// Every item of the shard was taken.
    Done,
    /// The rows handed back to be read, evaluated and written as usual
    /// (often none).
    Handed(Vec<FetchedRow>),
}

/// How much of a shard one batch may hold: at most `rows` rows, and at most
/// `bytes` bytes of documents (as text) unless a single row is larger. Each
/// batch is read, written and dropped before the next, so statements stay
/// short and memory stays near the batch's size whatever the shard's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub rows: usize,
    pub bytes: u64,
}

impl BatchLimits {
    /// Rows per batch unless configured otherwise.
    pub const DEFAULT_ROWS: usize = 500;
    /// Bytes of documents per batch unless configured otherwise.
    pub const DEFAULT_BYTES: u64 = 4 * 1024 * 1024;
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            rows: Self::DEFAULT_ROWS,
            bytes: Self::DEFAULT_BYTES,
        }
    }
}

/// What a shard's transaction works under.
#[derive(Clone, Copy)]
pub struct ShardWork<'a> {
    pub run_id: &'a str,
    pub shard_no: u32,
    pub target: &'a backfill_job::spec::TargetSpec,
    pub mode: Mode,
    pub worker: &'a str,
    /// With `on_conflict = "retry"`: evaluates a conflicted row again.
    pub retry: Option<&'a Reevaluate<'a>>,
}
