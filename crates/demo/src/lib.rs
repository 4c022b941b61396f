//! Demo and test databases for the shipped backfill jobs.
//!
//! This crate holds the schemas the jobs run against, for PostgreSQL and for SQLite, and
//! deterministic, realistic data generators that fill them, so that tests, demos and
//! benchmarks can build a database without a Django/Wagtail or Oppia installation:
//!
//! * **Certificate titles** (Django + Wagtail): [`create_certificate_schema`] creates
//!   `django_content_type`, `wagtailcore_page`, `wagtailcore_revision`, `courses_program`,
//!   `cms_programpage`, `cms_certificatepage` and `courses_programcertificate` exactly as
//!   the Django/Wagtail migrations do, and [`generate_certificates`] fills them with
//!   programs, a Wagtail page tree, certificate-page revisions holding frozen
//!   `product_name`s and certificates pointing at those revisions, including every edge
//!   case the job has to handle (see [`ProgramKind`]).
//! * **Collections** (Oppia-style versioned model): [`create_collection_schema`] and
//!   [`generate_collections`] build `collection_models` and their per-version
//!   `collection_snapshot_contents`.
//!
//! Generation is deterministic for a given seed and scales to millions of rows: rows are
//! produced in bounded batches on a blocking thread and bulk-inserted with
//! `INSERT ... SELECT FROM unnest(...)` over several connections of the pool.
//! The SQL is not schema-qualified, so it works in whatever schema the connection's
//! `search_path` selects; generators expect the freshly created (empty) tables.
//!
//! # SQLite
//!
//! For the embedded mode (a small Django site on SQLite running the same jobs without a
//! server) every schema and generator has a `_sqlite` twin:
//! [`create_certificate_schema_sqlite`] / [`generate_certificates_sqlite`] and
//! [`create_collection_schema_sqlite`] / [`generate_collections_sqlite`], taking a
//! [`sqlx::SqlitePool`] on a database file. The schemas (`sql/*.sqlite.sql`) are what
//! Django's SQLite backend creates for the same models, and the data is the same data as
//! on PostgreSQL for the same parameters — same ids, page tree, revision content documents
//! and certificates — because both back ends share one row generator and differ only in
//! the step that stores a finished batch. Values are encoded as Django stores them on
//! SQLite: timestamps as UTC text, booleans as 0/1, UUIDs as 32 hex digits, JSON as compact
//! text. Each batch is inserted in one transaction of prepared statements by a single
//! writer, overlapping with the generation of the next batch.

mod certificates;
mod collections;
pub mod progress;
mod util;

pub use certificates::{
    create_certificate_schema, create_certificate_schema_sqlite, generate_certificates,
    generate_certificates_sqlite, program_kind, program_readable_id, CertificateParams,
    CertificateStats, ProgramKind, CERTIFICATES_SCHEMA_SQL, CERTIFICATES_SQLITE_SCHEMA_SQL,
};
pub use collections::{
    collection_id, create_collection_schema, create_collection_schema_sqlite, generate_collections,
    generate_collections_sqlite, CollectionParams, CollectionStats, COLLECTIONS_SCHEMA_SQL,
    COLLECTIONS_SQLITE_SCHEMA_SQL,
};

/// Errors from creating demo schemas or generating demo data.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A statement failed in the database (PostgreSQL or SQLite), or the connection did.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The generator refuses to add to a table that already has rows.
    #[error("table {0} already holds rows; generate into freshly created tables")]
    NotEmpty(&'static str),
    /// The parameters cannot produce a valid data set.
    #[error("invalid parameters: {0}")]
    InvalidParams(String),
    /// A generator or insert task panicked or was cancelled.
    #[error("generator task failed: {0}")]
    Task(String),
    /// Generation stopped because inserting an earlier batch failed.
    #[error("generation aborted")]
    Aborted,
}
