//! The store's error type, [`StoreError`], and [`sql`], which wraps a
//! driver error with what was being done (a statement cancelled by the
//! server's `statement_timeout` told apart).

/// Errors of the database edge.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to the database at {url}: {source}. {hint}")]
    Connect {
        url: String,
        hint: &'static str,
        /// The driver's error with the URL's secrets hidden: sqlx's text
        /// may quote what it was given.
        #[source]
        source: backfill_job::redact::RedactedError,
    },
    #[error("unsupported database URL {0}: use postgres://… or sqlite://…")]
    Scheme(String),
    #[error("{what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("{0}")]
    Spec(#[from] backfill_job::SpecError),
    #[error("{0}")]
    Data(String),
    /// A spec's query returned what the spec does not allow (a key that is
    /// not an integer for `key_type = "integer"`): the job's input is wrong,
    /// and nothing was recorded.
    #[error("{0}")]
    Input(String),
    #[error("run {0} is not in the ledger")]
    UnknownRun(String),
    /// The database cancelled a statement that ran past its
    /// `statement_timeout` (SQLSTATE 57014 with that cause). Counted as
    /// transient, as it always was, so the reducer and coordinator retry it
    /// (a fold or a publish may pass once the load is lower, and parking a
    /// result would lose it); the mapper, whose statements grow with the
    /// batch, matches it first and makes its statements smaller instead.
    #[error("{what}: the statement ran past the database's statement_timeout ({source})")]
    StatementTimeout {
        what: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("this database ({current}) holds a ledger copied from another database ({recorded}): its runs and ledger id {id} are the other database's, so its workers would take that database's work. Give it an identity of its own with `backfill ledger adopt` (its queue names change with it), then start its workers")]
    CopiedLedger {
        id: String,
        recorded: String,
        current: String,
    },
    /// A read-only command looked at a database without a (current) ledger;
    /// nothing was created there.
    #[error("no backfill ledger in the database at {url}: {why}. Nothing was created there; point DATABASE_URL (or --database-url) at the database your jobs run against")]
    NoLedger { url: String, why: String },
}

impl From<backfill_job::fold::FoldError> for StoreError {
    /// A run whose ledger record cannot be folded: its spec as a spec error,
    /// anything else as unreadable ledger data.
    fn from(e: backfill_job::fold::FoldError) -> Self {
        match e {
            backfill_job::fold::FoldError::Spec(e) => StoreError::Spec(e),
            other => StoreError::Data(other.to_string()),
        }
    }
}

impl StoreError {
    /// True when retrying later may succeed (connection lost, server restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Connect { .. } | StoreError::StatementTimeout { .. } => true,
            StoreError::Sql { source, .. } => {
                matches!(
                    source,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || matches!(source, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("57") || c.starts_with("08") || c == "40001" || c == "40P01"))
            }
            _ => false,
        }
    }
}

/// Wraps a sqlx error with what was being done.
pub(crate) fn sql(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> StoreError {
    let what = what.into();
    move |source| {
        if is_statement_timeout(&source) {
            StoreError::StatementTimeout { what, source }
        } else {
            StoreError::Sql { what, source }
        }
    }
}

/// True for PostgreSQL's cancel of a statement by `statement_timeout`.
/// SQLSTATE 57014 (`query_canceled`) also covers a cancel by an operator
/// (`pg_cancel_backend`), which is a one-off worth retrying as it was: only
/// the timeout's own message marks a statement that will always be too slow.
fn is_statement_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d)
        if d.code().as_deref() == Some("57014") && d.message().contains("statement timeout"))
}
