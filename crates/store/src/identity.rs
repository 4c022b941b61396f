//! The ledger's identity: a random id given once, when the ledger is
//! created, beside the identity of the database it was created in (its oid
//! and name).
//!
//! Every message carries the ledger id, so a worker of one database never
//! acts on work of another that shares its broker; queue names default to
//! one derived from it, so two databases do not even share queues unless
//! told to. A database copied from another (`CREATE DATABASE staging
//! TEMPLATE prod`, a dump restored elsewhere) carries the copied ledger and
//! its id; it is told apart by its oid or name no longer matching what the
//! ledger recorded, and workers refuse it until `backfill ledger adopt`
//! gives it an identity of its own.
//!
//! The `backfill_ledger` table is made by the ledger's migrations (see
//! [`crate::migrate`]); its row is given here, once they have run.

use crate::backend::Capability;
use crate::db::{dispatch, Db};

use crate::{Store, StoreError};

pub use crate::model::identity::*;

/// Gives a PostgreSQL ledger its identity when it has none.
pub(crate) async fn ensure_postgres(pool: &sqlx::PgPool) -> Result<(), StoreError> {
    ensure(&Db::postgres(pool.clone())).await
}

/// Gives an SQLite ledger its identity when it has none.
pub(crate) async fn ensure_sqlite(pool: &sqlx::SqlitePool) -> Result<(), StoreError> {
    ensure(&Db::sqlite(pool.clone())).await
}

/// Gives a ledger its identity when it has none.
async fn ensure(db: &Db) -> Result<(), StoreError> {
    if dispatch!(db: db, has_identity()).map_err(crate::sql("read the ledger identity"))? {
        return Ok(());
    }
    dispatch!(db: db, ensure_identity())
}

impl Store {
    /// The ledger's identity, read when the store connected.
    pub fn ledger(&self) -> &LedgerIdentity {
        &self.ledger
    }

    /// Gives a copied ledger an identity of its own, in the database it is
    /// in now: its messages and default queues are then its own. Returns
    /// the new identity (unchanged when the ledger was not a copy).
    pub async fn adopt_ledger(&self) -> Result<LedgerIdentity, StoreError> {
        if !self.ledger.is_copy() {
            return Ok(self.ledger.as_ref().clone());
        }
        // A back end that cannot tell a copy apart never gets here; its
        // identity is read back as it is.
        let _replaced: Capability<()> = dispatch!(self, replace_identity())?;
        dispatch!(self, load_identity())
    }
}
