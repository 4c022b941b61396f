//! The PostgreSQL side of the harness: the admin connection, the template
//! database generated once, a clone of it per contender
//! (`CREATE DATABASE … TEMPLATE …`, file copy), sizes and checksums.
//!
//! The checksum is over the target column of every row of the target table:
//! `md5` of the concatenated per-row `md5(id:content::text)` in key order
//! (a per-row digest first, so 1M documents of 4 KB stay far from the 1 GB
//! limit of one text value).

use anyhow::{bail, Context};
use backfill_job::spec::quote_ident;
use backfill_job::JobSpec;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection, Row};
use std::str::FromStr;

use crate::Options;

/// The server the benchmark databases live on.
#[derive(Clone)]
pub struct Server {
    admin: PgConnectOptions,
    url: String,
}

impl Server {
    /// Checks the server answers; the error says how to reach one.
    pub async fn connect(url: &str) -> anyhow::Result<Server> {
        let admin = PgConnectOptions::from_str(url).with_context(|| {
            format!(
                "--database-url {} is not a PostgreSQL URL",
                backfill_store::redact_url(url)
            )
        })?;
        let admin = admin.disable_statement_logging();
        let conn = admin.connect().await.with_context(|| {
            format!(
                "PostgreSQL is not reachable at {}: start it, or pass --database-url / DATABASE_URL",
                backfill_store::redact_url(url)
            )
        })?;
        conn.close().await.ok();
        Ok(Server {
            admin,
            url: url.to_string(),
        })
    }

    async fn admin_conn(&self) -> anyhow::Result<PgConnection> {
        self.admin.connect().await.with_context(|| {
            format!(
                "cannot connect to PostgreSQL at {}",
                backfill_store::redact_url(&self.url)
            )
        })
    }

    /// The URL of database `name` on this server (user, password, host and
    /// options of the admin URL).
    pub fn url_for(&self, name: &str) -> anyhow::Result<String> {
        let Some((scheme, rest)) = self.url.split_once("://") else {
            bail!("--database-url has no scheme");
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let authority = before_query.split('/').next().unwrap_or(before_query);
        Ok(match query {
            Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
            None => format!("{scheme}://{authority}/{name}"),
        })
    }

    /// Creates `name` and fills it with the certificate data set; vacuumed
    /// and analysed so every clone starts with hint bits set.
    pub async fn generate_template(
        &self,
        name: &str,
        opts: &Options,
    ) -> anyhow::Result<backfill_demo::CertificateStats> {
        let mut admin = self.admin_conn().await?;
        let q = quote_ident(name);
        sqlx::query(&format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .context("drop an old template")?;
        sqlx::query(&format!("CREATE DATABASE {q}"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create the template database {name}"))?;
        admin.close().await.ok();
        let opts_db = self.admin.clone().database(name);
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts_db)
            .await
            .with_context(|| format!("connect to {name}"))?;
        backfill_demo::create_certificate_schema(&pool)
            .await
            .context("create the certificate schema")?;
        let stats = backfill_demo::generate_certificates(
            &pool,
            &backfill_demo::CertificateParams {
                programs: opts.programs,
                revisions: opts.rows,
                seed: opts.seed,
            },
        )
        .await
        .context("generate the certificate data")?;
        sqlx::query("VACUUM (ANALYZE)")
            .execute(&pool)
            .await
            .context("vacuum the template")?;
        pool.close().await;
        Ok(stats)
    }

    /// What the template holds: sizes, documents, the job's rows, checksum.
    pub async fn inspect_template(&self, name: &str, spec: &JobSpec) -> anyhow::Result<Baseline> {
        let url = self.url_for(name)?;
        let mut conn = connect(&url).await?;
        let docs = sqlx::query(
            "SELECT count(*)::int8, coalesce(avg(octet_length(content::text)), 0)::float8,
                    coalesce(percentile_cont(0.05) WITHIN GROUP (ORDER BY octet_length(content::text)), 0)::float8,
                    coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY octet_length(content::text)), 0)::float8,
                    coalesce(min(octet_length(content::text)), 0)::int8,
                    coalesce(max(octet_length(content::text)), 0)::int8,
                    coalesce(avg(pg_column_size(content)), 0)::float8
             FROM wagtailcore_revision",
        )
        .fetch_one(&mut conn)
        .await
        .context("measure the revision documents (is this a certificate-titles database?)")?;
        let rows = crate::sqlside::RowSet::prepare(&mut conn, spec).await?;
        let (target_rows, would_change, target_doc_bytes) = rows.count(&mut conn).await?;
        conn.close().await.ok();
        let (revisions, checksum) = checksum(&url).await?;
        Ok(Baseline {
            name: name.to_string(),
            size_bytes: self.db_size(name).await?,
            revisions,
            doc_count: docs.get(0),
            doc_mean: docs.get(1),
            doc_p5: docs.get(2),
            doc_p95: docs.get(3),
            doc_min: docs.get(4),
            doc_max: docs.get(5),
            doc_stored_mean: docs.get(6),
            target_rows,
            would_change,
            target_doc_bytes,
            checksum,
        })
    }

    /// `CREATE DATABASE name TEMPLATE template` (a file copy after a checkpoint,
    /// so each contender starts from the same clean state).
    pub async fn clone_template(&self, template: &str, name: &str) -> anyhow::Result<()> {
        let mut admin = self.admin_conn().await?;
        let (q, t) = (quote_ident(name), quote_ident(template));
        sqlx::query(&format!("DROP DATABASE IF EXISTS {q} WITH (FORCE)"))
            .execute(&mut admin)
            .await
            .with_context(|| format!("drop an old {name}"))?;
        let file_copy = sqlx::query(&format!(
            "CREATE DATABASE {q} TEMPLATE {t} STRATEGY = FILE_COPY"
        ))
        .execute(&mut admin)
        .await;
        if file_copy.is_err() {
            // Before PostgreSQL 15 there is no STRATEGY and a clone is a file copy.
            sqlx::query(&format!("CREATE DATABASE {q} TEMPLATE {t}"))
                .execute(&mut admin)
                .await
                .with_context(|| {
                    format!("create {name} from the template {template} (does anyone else hold a connection to it?)")
                })?;
        }
        sqlx::query("CHECKPOINT")
            .execute(&mut admin)
            .await
            .context("checkpoint")?;
        admin.close().await.ok();
        Ok(())
    }

    /// Creates an empty database `name` (dropping an old one of that name).
    pub async fn create_db(&self, name: &str) -> anyhow::Result<()> {
        self.drop_db(name).await?;
        let mut admin = self.admin_conn().await?;
        sqlx::query(&format!("CREATE DATABASE {}", quote_ident(name)))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create {name}"))?;
        admin.close().await.ok();
        Ok(())
    }

    pub async fn drop_db(&self, name: &str) -> anyhow::Result<()> {
        let mut admin = self.admin_conn().await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .execute(&mut admin)
        .await
        .with_context(|| format!("drop {name}"))?;
        admin.close().await.ok();
        Ok(())
    }

    pub async fn db_size(&self, name: &str) -> anyhow::Result<i64> {
        let mut admin = self.admin_conn().await?;
        let n: i64 = sqlx::query_scalar("SELECT pg_database_size($1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await
            .with_context(|| format!("size of {name}"))?;
        admin.close().await.ok();
        Ok(n)
    }

    /// The server's clock in milliseconds since the epoch (the ledger's clock).
    pub async fn clock_ms(&self) -> anyhow::Result<f64> {
        let mut admin = self.admin_conn().await?;
        let t: f64 =
            sqlx::query_scalar("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::float8")
                .fetch_one(&mut admin)
                .await
                .context("read the server clock")?;
        admin.close().await.ok();
        Ok(t)
    }
}

pub use crate::conn::connect;

/// (rows, checksum) of the target column of `wagtailcore_revision`.
pub async fn checksum(url: &str) -> anyhow::Result<(i64, String)> {
    let mut conn = connect(url).await?;
    let row = sqlx::query(
        "SELECT count(*)::int8,
                coalesce(md5(string_agg(md5(id::text || ':' || coalesce(content::text, 'NULL')), '' ORDER BY id)), '')
         FROM wagtailcore_revision",
    )
    .fetch_one(&mut conn)
    .await
    .context("checksum of wagtailcore_revision.content")?;
    conn.close().await.ok();
    Ok((row.get(0), row.get(1)))
}

/// Sizes of `backfill_before_image` and of all `backfill_*` ledger tables
/// (with TOAST and indexes), `None` when there is no ledger.
pub async fn ledger_sizes(url: &str) -> anyhow::Result<(Option<i64>, Option<i64>)> {
    let mut conn = connect(url).await?;
    let row = sqlx::query(
        "SELECT (SELECT pg_total_relation_size(c.oid) FROM pg_class c
                  WHERE c.oid = to_regclass('backfill_before_image'))::int8,
                (SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
                  JOIN pg_namespace n ON n.oid = c.relnamespace
                  WHERE c.relkind = 'r' AND c.relname LIKE 'backfill\\_%'
                    AND n.nspname = current_schema())::int8",
    )
    .fetch_one(&mut conn)
    .await
    .context("ledger sizes")?;
    conn.close().await.ok();
    Ok((row.get(0), row.get(1)))
}

/// The template as generated.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub name: String,
    pub size_bytes: i64,
    pub revisions: i64,
    pub doc_count: i64,
    pub doc_mean: f64,
    pub doc_p5: f64,
    pub doc_p95: f64,
    pub doc_min: i64,
    pub doc_max: i64,
    /// Mean stored size (`pg_column_size`, after TOAST compression).
    pub doc_stored_mean: f64,
    /// Distinct rows the job processes.
    pub target_rows: u64,
    /// Of those, rows whose document changes.
    pub would_change: u64,
    /// Bytes of `content::text` of the target rows.
    pub target_doc_bytes: i64,
    pub checksum: String,
}

impl Baseline {
    pub fn describe(&self) -> String {
        format!(
            "== template `{}`: {} MiB, {} revisions; content as text: mean {:.0} B, p5 {:.0} B, p95 {:.0} B, min {} B, max {} B (stored after TOAST compression: mean {:.0} B)\n   the job's rows: {} distinct target rows ({:.0} MiB of documents), {} of them change; checksum {}",
            self.name,
            self.size_bytes / (1 << 20),
            self.revisions,
            self.doc_mean,
            self.doc_p5,
            self.doc_p95,
            self.doc_min,
            self.doc_max,
            self.doc_stored_mean,
            self.target_rows,
            self.target_doc_bytes as f64 / (1u64 << 20) as f64,
            self.would_change,
            self.checksum,
        )
    }
}

/// Databases to drop when the bench ends, unless `--keep`.
pub struct Cleanup {
    server: Server,
    keep: bool,
    names: Vec<String>,
}

impl Cleanup {
    pub fn new(server: Server, keep: bool) -> Cleanup {
        Cleanup {
            server,
            keep,
            names: Vec::new(),
        }
    }

    pub fn add(&mut self, name: &str) {
        self.names.push(name.to_string());
    }

    pub fn forget(&mut self, name: &str) {
        self.names.retain(|n| n != name);
    }

    pub async fn finish(self) {
        if self.keep {
            if !self.names.is_empty() {
                println!("kept databases (--keep): {}", self.names.join(", "));
            }
            return;
        }
        for n in &self.names {
            if let Err(e) = self.server.drop_db(n).await {
                eprintln!("warning: could not drop {n}: {e:#}");
            }
        }
    }
}
