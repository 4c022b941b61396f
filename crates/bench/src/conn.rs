//! One PostgreSQL connection by URL, for the benchmark's own reads and
//! writes (not the ledger's pool), with statement logging off.

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::ConnectOptions;
use std::str::FromStr;

/// One connection to a database by URL, statement logging off.
pub async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    let opts = PgConnectOptions::from_str(url)
        .with_context(|| format!("bad URL {}", backfill_store::redact_url(url)))?
        .disable_statement_logging();
    opts.connect()
        .await
        .with_context(|| format!("cannot connect to {}", backfill_store::redact_url(url)))
}
