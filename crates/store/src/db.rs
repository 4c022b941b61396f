//! The one point where a [`crate::Store`] picks its dialect: [`Db`], an
//! enum of the two [`Backend`] implementations, and `dispatch!(store,
//! op(args))`, which calls the operation on whichever the store holds. A
//! mapper's shard transaction is likewise one enum, [`DbTx`], of each
//! dialect's [`crate::backend::ShardTransaction`]. Dispatch is static.

use std::collections::BTreeMap;

use crate::backend::{Backend, Opened};
use crate::error::StoreError;
use crate::model::shard::ShardWork;

impl Db {
    /// A PostgreSQL ledger on `pool`.
    pub(crate) fn postgres(pool: sqlx::PgPool) -> Db {
        Db::Pg(crate::pg::Pg { pool })
    }

    /// An SQLite ledger on `pool`.
    pub(crate) fn sqlite(pool: sqlx::SqlitePool) -> Db {
        Db::Lite(crate::sqlite::Lite { pool })
    }
}

impl Db {
    /// Starts a shard's transaction on the back end held (see
    /// [`Backend::open_shard`]), as a [`DbTx`].
    pub(crate) async fn open_shard(
        &self,
        work: &ShardWork<'_>,
        types: BTreeMap<String, String>,
    ) -> Result<Opened<DbTx>, StoreError> {
        Ok(match self {
            Db::Pg(b) => match b.open_shard(work, types).await? {
                Opened::Done(t) => Opened::Done(t),
                Opened::Open(tx) => Opened::Open(DbTx::Pg(tx)),
            },
            Db::Lite(b) => match b.open_shard(work, types).await? {
                Opened::Done(t) => Opened::Done(t),
                Opened::Open(tx) => Opened::Open(DbTx::Lite(tx)),
            },
        })
    }
}

/// A shard's transaction, by dialect.
pub(crate) enum DbTx {
    Pg(crate::pg::ShardTx),
    Lite(crate::sqlite::ShardTx),
}

/// The back end a store holds.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Pg(crate::pg::Pg),
    Lite(crate::sqlite::Lite),
}

/// Calls a [`Backend`] operation on the back end a store holds:
/// `dispatch!(self, op(args…))` is `self.db.op(args…).await`;
/// `dispatch!(sync self, op(args…))` calls a method that is not `async`,
/// `dispatch!(db: &db, op(args…))` one of a `Db` outside a store, and
/// `dispatch!(tx: tx, op(args…))` a [`ShardTransaction`] operation on a
/// [`DbTx`].
macro_rules! dispatch {
    ($store:expr, $op:ident ( $($arg:expr),* $(,)? )) => {
        $crate::db::dispatch!(db: &$store.db, $op($($arg),*))
    };
    (sync $store:expr, $op:ident ( $($arg:expr),* $(,)? )) => {
        match &$store.db {
            $crate::db::Db::Pg(b) => $crate::backend::Backend::$op(b, $($arg),*),
            $crate::db::Db::Lite(b) => $crate::backend::Backend::$op(b, $($arg),*),
        }
    };
    (tx: $tx:expr, $op:ident ( $($arg:expr),* $(,)? )) => {
        match $tx {
            $crate::db::DbTx::Pg(t) => $crate::backend::ShardTransaction::$op(t, $($arg),*).await,
            $crate::db::DbTx::Lite(t) => $crate::backend::ShardTransaction::$op(t, $($arg),*).await,
        }
    };
    (db: $db:expr, $op:ident ( $($arg:expr),* $(,)? )) => {
        match $db {
            $crate::db::Db::Pg(b) => $crate::backend::Backend::$op(b, $($arg),*).await,
            $crate::db::Db::Lite(b) => $crate::backend::Backend::$op(b, $($arg),*).await,
        }
    };
}
pub(crate) use dispatch;
