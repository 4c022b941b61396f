//! The records, row types, statements and pure helpers that both the
//! dialects (`pg`, `sqlite`, `common`) and the dialect-free modules use:
//! each file here imports nothing of the crate but [`crate::error`] and its
//! siblings, so a dialect never reaches back into the module that calls it.
//! The dialect-free module of each area re-exports its file, so every public
//! path (`backfill_store::ledger::RunRecord`, …) stays as it was.

pub(crate) mod audit;
pub(crate) mod identity;
pub(crate) mod ledger;
pub(crate) mod planning;
pub(crate) mod shard;
pub(crate) mod status;
pub(crate) mod steer;
