//! What the demo crate's integration tests share: a freshly created PostgreSQL database
//! per test, dropped afterwards. The server is `postgres://postgres@127.0.0.1:5432/postgres`
//! (trust auth) or the one at `DATABASE_URL`; a test fails (never skips) when there is none.

use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use backfill_demo::{CertificateParams, CertificateStats, CollectionParams, CollectionStats};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const DEFAULT_SERVER: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn server_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
}

/// Runs `body` against a database created for it (named `{prefix}_` and a fresh UUID),
/// dropping the database afterwards even when the body panics (the panic is then
/// re-raised). `why`, when not empty, says after the address of an unreachable server
/// what the test needs it for.
pub async fn with_fresh_database<F, Fut>(prefix: &str, why: &str, body: F)
where
    F: FnOnce(PgConnectOptions) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let url = server_url();
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {url} ({e}){why}. Start the local cluster with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 or point DATABASE_URL at a server that trusts user postgres."
            )
        });
    let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("create test database");
    let options = PgConnectOptions::from_str(&url)
        .expect("parse DATABASE_URL")
        .database(&name);
    let outcome = tokio::spawn(body(options)).await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .expect("drop test database");
    admin.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The certificate data set the tests generate: 25 programs, about 400 revisions.
pub const CERTIFICATES: CertificateParams = CertificateParams {
    programs: 25,
    revisions: 400,
    seed: 7,
};

/// The collection data set the tests generate: 10 collections of up to 6 versions.
pub const COLLECTIONS: CollectionParams = CollectionParams {
    collections: 10,
    max_versions: 6,
    seed: 11,
};

/// What a certificate data set's stats say its tables hold, on either back end:
/// (count, query, what it is).
pub fn certificate_counts(stats: &CertificateStats) -> [(u64, &'static str, &'static str); 6] {
    [
        (
            stats.programs,
            "SELECT count(*) FROM courses_program",
            "programs",
        ),
        (
            stats.revisions_total,
            "SELECT count(*) FROM wagtailcore_revision",
            "revisions",
        ),
        (
            stats.certificates,
            "SELECT count(*) FROM courses_programcertificate",
            "certificates",
        ),
        (
            stats.revoked,
            "SELECT count(*) FROM courses_programcertificate WHERE is_revoked",
            "revoked certificates",
        ),
        (
            stats.without_revision,
            "SELECT count(*) FROM courses_programcertificate \
             WHERE certificate_page_revision_id IS NULL",
            "certificates without a revision",
        ),
        (
            stats.referenced_revisions,
            "SELECT count(DISTINCT certificate_page_revision_id) \
             FROM courses_programcertificate WHERE NOT is_revoked",
            "referenced revisions",
        ),
    ]
}

/// What a collection data set's stats say its tables hold, on either back end:
/// (count, query, what it is).
pub fn collection_counts(stats: &CollectionStats) -> [(u64, &'static str, &'static str); 2] {
    [
        (
            stats.collections,
            "SELECT count(*) FROM collection_models",
            "collections",
        ),
        (
            stats.snapshots,
            "SELECT count(*) FROM collection_snapshot_contents",
            "snapshots",
        ),
    ]
}
