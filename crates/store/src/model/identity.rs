//! A ledger's identity as a record, and the statement and id each dialect
//! uses to give one (see [`crate::identity`], which re-exports them).

use crate::error::StoreError;

/// Who a ledger is, and whether the database it lives in is the one it was
/// created in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerIdentity {
    /// Random, 32 lowercase hex digits.
    pub id: String,
    /// The database the ledger was created in (oid and name, as recorded).
    pub recorded_database: String,
    /// The database it is in now.
    pub current_database: String,
}

impl LedgerIdentity {
    /// True when the ledger was copied here from another database.
    pub fn is_copy(&self) -> bool {
        self.recorded_database != self.current_database
    }

    /// The queue prefix used when none is given: `backfill-<12 hex digits>`.
    pub fn queue_prefix(&self) -> String {
        format!("backfill-{}", &self.id[..self.id.len().min(12)])
    }

    /// Refuses a copied ledger, saying what to do.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.is_copy() {
            return Err(StoreError::CopiedLedger {
                id: self.id.clone(),
                recorded: self.recorded_database.clone(),
                current: self.current_database.clone(),
            });
        }
        Ok(())
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether the ledger has been given its identity.
pub(crate) const HAS_IDENTITY: &str = "SELECT EXISTS (SELECT 1 FROM backfill_ledger)";

impl LedgerIdentity {
    /// The identity read from the ledger: (id, recorded database, current
    /// database), or none.
    pub(crate) fn from_row(row: Option<(String, String, String)>) -> Result<Self, StoreError> {
        let (id, recorded_database, current_database) =
            row.ok_or_else(|| StoreError::Data("the ledger has no identity".into()))?;
        Ok(LedgerIdentity {
            id,
            recorded_database,
            current_database,
        })
    }
}
