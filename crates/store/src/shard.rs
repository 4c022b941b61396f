//! A mapper's database steps for one shard.
//!
//! - [`Store::open_shard`] starts the shard's ONE transaction and locks its
//!   ledger row (a shard already done is not applied again). Then, batch by
//!   batch within [`BatchLimits`] (rows, and bytes of documents, so that
//!   statements stay under the database's `statement_timeout` and memory
//!   stays bounded whatever the shard's size): [`ShardTx::next_batch`] reads
//!   the batch's rows, [`ShardTx::write`] writes the changed ones with
//!   compare-and-set against every JSON column as it was read and records
//!   the before-images of what was written. [`ShardTx::finish`] records the
//!   shard done with the result of every batch and commits. A row that
//!   changed since it was read is not written and is counted as a conflict.
//! - [`Store::fetch_shard`] and [`Store::commit_shard`] do the same for a
//!   whole shard at once (reads without locks, then one transaction).
//!
//! What a row becomes and what the shard counts are decided in
//! `backfill_job::shard`. The statements and the transaction are each
//! dialect's (`pg::shard`, `sqlite::shard`, behind
//! `backend::ShardTransaction`); this file holds what a shard's steps are,
//! and the types they pass are in `model::shard` (re-exported here).

use backfill_job::message::MESSAGE_VERSION;

/// A shard's rows as read and as evaluated, defined with the evaluation.
pub use backfill_job::shard::{md5_hex, EvaluatedRow, FetchedRow, RELEASE_BYTES};

use backfill_job::{Mode, ShardResult, ShardTask, Tally};

use std::collections::BTreeMap;

use crate::backend::{Capability, Opened};
use crate::db::{dispatch, DbTx};

use crate::{sql, Store, StoreError};

pub use crate::model::shard::*;

impl Store {
    /// The state of a shard: `Some(result)` when it is done.
    pub async fn shard_done(
        &self,
        run_id: &str,
        shard_no: u32,
    ) -> Result<Option<Tally>, StoreError> {
        dispatch!(self, shard_done(run_id, shard_no))
    }

    /// Reads a shard's items and their target rows.
    pub async fn fetch_shard(
        &self,
        run_id: &str,
        target: &backfill_job::spec::TargetSpec,
        shard_no: u32,
        digests: bool,
    ) -> Result<ShardRows, StoreError> {
        if let Some(done) = self.shard_done(run_id, shard_no).await? {
            return Ok(ShardRows::Done(done));
        }
        let mut rows = dispatch!(self, fetch_shard(run_id, target, shard_no, digests))?;
        if let Capability::Lacks(_) = dispatch!(sync self, row_versions()) {
            // A row carries a version only where the back end has them: a
            // write compares the documents otherwise.
            rows.iter_mut().for_each(|r| r.version = None);
        }
        Ok(ShardRows::Pending(rows))
    }

    /// How a column is typed, to cast written text back to it (looked up
    /// once per process; none where columns keep the text they are given).
    async fn column_types(&self, table: &str) -> Result<BTreeMap<String, String>, StoreError> {
        if let Some(t) = self.types_cache().get(table) {
            return Ok(t);
        }
        let m = match dispatch!(self, column_types(table))
            .map_err(sql(format!("read the column types of {table}")))?
        {
            Capability::Has(m) => m,
            Capability::Lacks(_) => return Ok(BTreeMap::new()),
        };
        self.types_cache().put(table, m.clone());
        Ok(m)
    }

    /// The columns of `table` whose database normalises the JSON it stores
    /// (PostgreSQL `jsonb`); a `json` or `text` column, and every SQLite
    /// column, keeps the text it is given.
    pub async fn normalised_columns(
        &self,
        table: &str,
    ) -> Result<std::collections::BTreeSet<String>, StoreError> {
        Ok(self
            .column_types(table)
            .await?
            .into_iter()
            .filter(|(_, ty)| ty == "jsonb")
            .map(|(col, _)| col)
            .collect())
    }

    /// The column types a shard's writes cast to: none in a dry run.
    async fn write_types(
        &self,
        mode: Mode,
        table: &str,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        if mode.is_commit() {
            self.column_types(table).await
        } else {
            Ok(BTreeMap::new())
        }
    }

    /// Commits a shard: compare-and-set writes, before-images and the shard's
    /// ledger record in one transaction, the whole shard as one batch.
    pub async fn commit_shard(&self, c: ShardCommit<'_>) -> Result<Committed, StoreError> {
        let types = self.write_types(c.mode, &c.target.table).await?;
        dispatch!(self, commit_shard(c, types))
    }

    /// Starts a shard's transaction and locks its ledger row, so no other
    /// delivery of the shard works on it meanwhile; a shard already done
    /// (or given up) returns its stored result instead. Its rows are then
    /// read, evaluated and written batch by batch through [`ShardTx`].
    ///
    /// SQLite reads the whole shard here, outside the transaction, and
    /// commits it in one go at [`ShardTx::finish`], as one writer at a time
    /// always did: it has no statement timeout to keep statements under.
    pub async fn open_shard<'a>(&self, work: ShardWork<'a>) -> Result<OpenShard<'a>, StoreError> {
        let types = self.write_types(work.mode, &work.target.table).await?;
        Ok(match self.db.open_shard(&work, types).await? {
            Opened::Done(t) => OpenShard::Done(t),
            Opened::Open(inner) => OpenShard::Open(ShardTx {
                work,
                tally: Tally::default(),
                inner,
            }),
        })
    }
}

/// A shard opened with [`Store::open_shard`].
pub enum OpenShard<'a> {
    /// Already done (or given up): its stored result.
    Done(Tally),
    /// Locked for this worker: read and write it batch by batch.
    Open(ShardTx<'a>),
}

/// One shard's transaction: [`ShardTx::next_batch`] reads the next batch of
/// rows, [`ShardTx::write`] writes its evaluated rows (compare-and-set,
/// before-images, quarantine), and [`ShardTx::finish`] records the shard
/// done with the result of every batch and commits — all in ONE
/// transaction, so a shard is written completely and once, or not at all.
/// Dropping it without `finish` rolls everything back.
pub struct ShardTx<'a> {
    work: ShardWork<'a>,
    tally: Tally,
    inner: DbTx,
}

impl ShardTx<'_> {
    /// The next batch of the shard's rows within `limits`, or `None` when
    /// every row was read. The documents' sizes are asked first (one
    /// statement per batch, without sending the documents), so a batch of
    /// large rows is cut short before it is read.
    pub async fn next_batch(
        &mut self,
        limits: BatchLimits,
    ) -> Result<Option<Vec<FetchedRow>>, StoreError> {
        dispatch!(tx: &mut self.inner, next_batch(&self.work, limits))
    }

    /// Writes a batch's evaluated rows in the shard's transaction and adds
    /// their outcomes to the shard's result; the rows are dropped after.
    pub async fn write(&mut self, rows: Vec<EvaluatedRow>) -> Result<(), StoreError> {
        if let Some(t) = dispatch!(tx: &mut self.inner, write(&self.work, rows))? {
            self.tally.merge(&t);
        }
        Ok(())
    }

    /// Has the database apply a pushed-down target's edits to the shard's
    /// next `rows` items (see `backfill_job::pushdown`), adding their
    /// outcomes to the shard's result; the rows not in a shape the edits
    /// apply to are handed back to be evaluated and written with
    /// [`ShardTx::write`]. `params` holds the parameters of the shard's
    /// groups; `in_flight` is set to the rows of the batch before its
    /// statement runs (what a statement timeout halves).
    pub async fn push_batch(
        &mut self,
        plan: &backfill_job::pushdown::Pushdown,
        params: &std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>>,
        rows: usize,
        in_flight: &mut usize,
    ) -> Result<PushedBatch, StoreError> {
        Ok(
            match dispatch!(tx: &mut self.inner, push_batch(&self.work, plan, params, rows, in_flight))?
            {
                Capability::Lacks(why) => PushedBatch::Unsupported(why),
                Capability::Has(None) => PushedBatch::Done,
                Capability::Has(Some((t, handed))) => {
                    self.tally.merge(&t);
                    PushedBatch::Handed(handed)
                }
            },
        )
    }

    /// Records the shard done with the result of all its batches, and commits.
    pub async fn finish(self) -> Result<Committed, StoreError> {
        let ShardTx { work, tally, inner } = self;
        dispatch!(tx: inner, finish(&work, tally))
    }
}

impl Store {
    /// Records a failed attempt at a shard; returns how many attempts failed.
    pub async fn shard_attempt_failed(
        &self,
        run_id: &str,
        shard_no: u32,
        error: &str,
    ) -> Result<u32, StoreError> {
        dispatch!(self, shard_attempt_failed(run_id, shard_no, error))
    }

    /// Records a shard given up (dead-lettered) in the ledger — state
    /// `dead`, its rows quarantined as errors, see [`Store::fail_shard`] —
    /// and returns its result for the reducer to fold.
    pub async fn record_dead_shard(
        &self,
        task: &ShardTask,
        worker: &str,
        error: &str,
    ) -> Result<ShardResult, StoreError> {
        // What the shard covers is the ledger's to say, never the message's:
        // a forged dead task must not fail a healthy shard of another target.
        let planned = self
            .shard_target(&task.run_id, task.shard_no)
            .await?
            .ok_or_else(|| {
                StoreError::Data(format!(
                    "shard {} of run {} is not in the ledger",
                    task.shard_no, task.run_id
                ))
            })?;
        if planned != task.target {
            return Err(StoreError::Data(format!(
                "dead task for shard {} of run {} names target `{}`, but the ledger planned `{planned}`",
                task.shard_no, task.run_id, task.target
            )));
        }
        let committed = self
            .fail_shard(&task.run_id, task.shard_no, &planned, error)
            .await?;
        Ok(ShardResult {
            v: MESSAGE_VERSION,
            ledger: self.ledger().id.clone(),
            run_id: task.run_id.clone(),
            shard_no: task.shard_no,
            target: planned,
            worker: worker.to_string(),
            elapsed_ms: 0,
            tally: committed.tally().clone(),
        })
    }

    /// Gives up on a shard that failed on every attempt (dead-lettered):
    /// records it `dead`, with every row counted as an error carrying
    /// `error` and quarantined for `backfill retry`, so the run ends as
    /// failed and lists the rows instead of waiting for it forever. Nothing
    /// of the shard was written (its transaction never committed).
    pub async fn fail_shard(
        &self,
        run_id: &str,
        shard_no: u32,
        target: &str,
        error: &str,
    ) -> Result<Committed, StoreError> {
        dispatch!(self, fail_shard(run_id, shard_no, target, error))
    }
}
