//! The backfill job model: everything a run means, with no I/O.
//!
//! # Layout
//!
//! - [`spec`]: the job spec file (TOML) — targets, groups, guards, rules — parsed
//!   and validated into typed values; a bad spec is rejected with the field named.
//! - [`rules`]: the document rewrite (set, remove, rename, copy and jq
//!   operations over JSON Pointers) and the row-level evaluation that
//!   decides changed / unchanged / skipped / error for one row.
//! - [`streamfield`], [`pyjson`], [`streamrule`]: Wagtail StreamField
//!   migration operations, JSON inside strings written back as Python's
//!   `json.dumps` wrote it, and the `streamfield` / `json_string` rules
//!   built on them.
//! - [`equality`]: JSON equality as the database sees it (numbers by
//!   decimal value), which decides whether a rule already holds.
//! - [`journal`]: the undo log of a row's rules, which tells what they
//!   changed without a copy of the documents.
//! - [`splice`]: the new text of a document that keeps the bytes of every
//!   part no rule touched (for columns that store the text they are given).
//! - [`guards`]: the checks that skip a whole group (blank, placeholder prefix,
//!   missing page) or a single row, and decide a rule's `when` conditions
//!   (`null` told from absence).
//! - [`select`]: JSONPath selectors, the places a rule applies at.
//! - [`jq`]: jq filters of `jq` rules, compiled once per run.
//! - [`plan`]: the run's plan as the coordinator records it in the ledger.
//! - [`message`]: shard tasks and shard results as they travel through the queue.
//! - [`shard`]: one shard's rows as read and as evaluated, and the shard's
//!   result counted from them.
//! - [`fold`]: a shard's result folded into its run's tally, and the state
//!   and summary line a finished run ends with.
//! - [`tally`]: the counts a shard emits and their merge (associative and
//!   commutative), the `Summary:` line and the per-group report.
//! - [`run`]: modes, scopes and run states.
//! - [`redact`]: credentials hidden in connection URLs and in text quoting them.
//!
//! The database and the broker live in other crates; this one is unit-tested
//! without either.

pub mod edit;
pub mod equality;
pub mod estimate;
pub mod fold;
pub mod formats;
pub mod guards;
pub mod journal;
pub mod jq;
pub mod message;
pub mod params;
pub mod plan;
pub mod pushdown;
pub mod pyjson;
pub mod redact;
pub mod report;
pub mod rule;
pub mod rules;
pub mod run;
pub mod schedule;
pub mod select;
pub mod shard;
pub mod spec;
pub mod spec_error;
pub mod splice;
pub mod streamfield;
pub mod streamrule;
pub mod tally;
#[cfg(test)]
mod testing;
pub mod verify;

pub use message::{ShardResult, ShardTask};
pub use plan::{GroupStatus, Plan, PlannedGroup};
pub use rules::{evaluate_revert, evaluate_row, RowInput, RowOutcome};
pub use run::{Mode, RunKind, RunState, Scope};
pub use spec::{JobSpec, KeyType, SpecError};
pub use tally::{Counts, GroupTally, Tally};
