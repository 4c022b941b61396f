//! `backfill demo`: the certificate-titles job (or, with `--job
//! wagtail-streamfield`, the shipped StreamField migration) end to end on
//! a generated Wagtail-shaped database — dry run, commit, and a second commit that
//! changes nothing. Embedded by default (a SQLite file, the in-process
//! queue: no services); `--distributed` runs it on PostgreSQL and RabbitMQ.

use anyhow::Context;
use backfill_job::{JobSpec, Mode, Scope};
use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::settings::{SecretUrl, Settings};

use crate::exit::Exit;

/// The shipped certificate-titles job, built into the binary so the demo
/// works from any directory.
pub const CERTIFICATE_JOB: &str = include_str!("../jobs/program-certificate-titles.toml");

/// The shipped StreamField migration, built in for `demo --job wagtail-streamfield`.
pub const STREAMFIELD_JOB: &str = include_str!("../jobs/wagtail-streamfield.toml");

/// The shipped job the demo shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoJob {
    CertificateTitles,
    /// `jobs/wagtail-streamfield.toml`: `title_2` → `affiliation` in every
    /// signatory block, on the pages and inside their revisions.
    StreamField,
}

impl DemoJob {
    pub fn parse(name: &str) -> Result<DemoJob, String> {
        match name {
            "program-certificate-titles" => Ok(DemoJob::CertificateTitles),
            "wagtail-streamfield" => Ok(DemoJob::StreamField),
            other => Err(format!(
                "--job `{other}`: the demo shows program-certificate-titles or wagtail-streamfield"
            )),
        }
    }

    fn spec(self) -> anyhow::Result<JobSpec> {
        let params = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        match self {
            DemoJob::CertificateTitles => JobSpec::parse(CERTIFICATE_JOB),
            DemoJob::StreamField => JobSpec::parse_with_params(
                STREAMFIELD_JOB,
                &params(&[("old_name", "title_2"), ("new_name", "affiliation")]),
            ),
        }
        .map_err(|e| anyhow::anyhow!("built-in job spec: {e}"))
    }

    /// A query that shows what the job changed.
    fn look(self, sqlite: bool) -> &'static str {
        match (self, sqlite) {
            (DemoJob::CertificateTitles, false) => {
                "SELECT id, content->>'product_name' FROM wagtailcore_revision ORDER BY id LIMIT 5"
            }
            (DemoJob::CertificateTitles, true) => {
                "SELECT id, json_extract(content, '$.product_name') FROM wagtailcore_revision ORDER BY id LIMIT 5"
            }
            (DemoJob::StreamField, _) => {
                "SELECT page_ptr_id, signatories FROM cms_certificatepage ORDER BY page_ptr_id LIMIT 3"
            }
        }
    }
}

/// What the demo generates and how it runs.
pub struct DemoArgs {
    pub db: Option<PathBuf>,
    pub distributed: bool,
    pub demo_db: String,
    pub revisions: u64,
    pub programs: u32,
    pub mappers: u16,
    pub job: DemoJob,
}

pub fn default_db_path() -> PathBuf {
    std::env::temp_dir().join("backfill-demo.sqlite3")
}

pub async fn run(settings: &Settings, args: DemoArgs) -> anyhow::Result<Exit> {
    let params = backfill_demo::CertificateParams {
        programs: args.programs,
        revisions: args.revisions,
        seed: 1,
    };
    println!(
        "== Generating a Wagtail-shaped demo database ({} programs, ~{} certificate revisions)",
        args.programs, args.revisions
    );
    let (demo_settings, where_text, look) = if args.distributed {
        let url = create_pg_demo(settings, &args.demo_db, &params).await?;
        let shown = backfill_store::redact_url(&url);
        let look = format!("psql '{shown}' -c \"{}\"", args.job.look(false));
        (
            Settings {
                database_url: SecretUrl::new(url),
                amqp_url: settings.amqp_url.clone(),
                queue_prefix: format!("{}.demo", settings.queue_prefix),
                operator: settings.operator.clone(),
                queue_prefix_given: settings.queue_prefix_given,
                ledger_prefix: Default::default(),
            },
            format!("PostgreSQL database `{}`", args.demo_db),
            look,
        )
    } else {
        let path = args.db.clone().unwrap_or_else(default_db_path);
        let url = create_sqlite_demo(&path, &params).await?;
        let look = format!("sqlite3 {} \"{}\"", path.display(), args.job.look(true));
        (
            Settings {
                database_url: SecretUrl::new(url),
                amqp_url: settings.amqp_url.clone(),
                queue_prefix: settings.queue_prefix.clone(),
                operator: settings.operator.clone(),
                queue_prefix_given: settings.queue_prefix_given,
                ledger_prefix: Default::default(),
            },
            format!("SQLite file {}", path.display()),
            look,
        )
    };

    let spec = args.job.spec()?;
    let mut last = Exit::Clean;
    for (title, mode) in [
        (
            "Dry run (the default): the report to share with admins; nothing is written",
            Mode::DryRun,
        ),
        ("Commit: the same run with --commit", Mode::Commit),
        ("Commit again: already applied, so changed=0", Mode::Commit),
    ] {
        println!();
        println!("== {title}");
        let done = crate::in_process::run_in_process(
            &demo_settings,
            crate::in_process::Work::Job(Box::new(backfill_coordinator::RunRequest {
                spec: spec.clone(),
                scope: Scope::All,
                mode,
                shard_size: Some(100),
                throttle: None,
                sample: None,
                // The dry run just before is the reviewed one the commits rely on.
                gate: backfill_coordinator::Gate::review(
                    &demo_settings.operator,
                    backfill_coordinator::DEFAULT_REVIEW_WINDOW,
                ),
                kind: backfill_job::RunKind::Forward,
                windows: None,
                publishing: None,
            })),
            args.mappers,
            !args.distributed,
        )
        .await?
        .ok_or_else(|| {
            anyhow::anyhow!("another run of the demo job is in progress on this database")
        })?;
        done.print_report().await?;
        last = crate::exit::Exit::of_run(&done.rec);
    }
    println!();
    println!("The demo database is the {where_text}.");
    println!("Look at it with: {look}");
    Ok(last)
}

/// Sizes for `backfill seed`.
pub struct SeedArgs {
    pub revisions: u64,
    pub programs: u32,
    pub collections: u64,
    pub max_versions: u32,
    pub seed: u64,
}

/// `--dataset` named nothing we ship.
#[derive(Debug, thiserror::Error)]
#[error("unknown dataset `{0}` (certificates or collections)")]
pub struct UnknownDataset(String);

/// `backfill seed`: a shipped job's tables, filled, in DATABASE_URL
/// (PostgreSQL, or SQLite created when missing).
pub async fn seed(settings: &Settings, dataset: &str, a: SeedArgs) -> anyhow::Result<Exit> {
    let cert = backfill_demo::CertificateParams {
        programs: a.programs,
        revisions: a.revisions,
        seed: a.seed,
    };
    let coll = backfill_demo::CollectionParams {
        collections: a.collections,
        max_versions: a.max_versions,
        seed: a.seed,
    };
    if !matches!(dataset, "certificates" | "collections") {
        return Err(UnknownDataset(dataset.to_string()).into());
    }
    let url = settings.database_url.expose();
    // A bar (or plain lines) while the rows go in: revisions or
    // collections stored so far, out of about as many as asked for.
    let (unit, total) = if dataset == "certificates" {
        ("revisions", a.revisions + u64::from(a.programs))
    } else {
        ("collections", a.collections)
    };
    let follower = crate::progress::follow_count(
        format!("seed {dataset}"),
        unit,
        total,
        backfill_demo::progress::stored,
    );
    let seeded = async {
        if settings.is_sqlite() {
            let opts = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("bad DATABASE_URL {}", settings.database_url))?
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts)
                .await
                .with_context(|| format!("cannot open {}", settings.database_url))?;
            let line = if dataset == "certificates" {
                backfill_demo::create_certificate_schema_sqlite(&pool).await?;
                certificate_line(&backfill_demo::generate_certificates_sqlite(&pool, &cert).await?)
            } else {
                backfill_demo::create_collection_schema_sqlite(&pool).await?;
                collection_line(&backfill_demo::generate_collections_sqlite(&pool, &coll).await?)
            };
            pool.close().await;
            Ok::<_, anyhow::Error>(line)
        } else {
            let pool = sqlx::PgPool::connect(url)
                .await
                .with_context(|| format!("cannot connect to {}", settings.database_url))?;
            let line = if dataset == "certificates" {
                backfill_demo::create_certificate_schema(&pool).await?;
                certificate_line(&backfill_demo::generate_certificates(&pool, &cert).await?)
            } else {
                backfill_demo::create_collection_schema(&pool).await?;
                collection_line(&backfill_demo::generate_collections(&pool, &coll).await?)
            };
            pool.close().await;
            Ok(line)
        }
    }
    .await;
    follower.finish().await;
    println!("{}", seeded?);
    Ok(Exit::Clean)
}

/// What `seed` stored, as one line of `key=value` pairs.
fn certificate_line(s: &backfill_demo::CertificateStats) -> String {
    format!(
        "Seeded: dataset=certificates programs={} revisions={} referenced_revisions={} certificates={} revoked={} without_revision={}",
        s.programs, s.revisions_total, s.referenced_revisions, s.certificates, s.revoked, s.without_revision
    )
}

fn collection_line(s: &backfill_demo::CollectionStats) -> String {
    format!(
        "Seeded: dataset=collections collections={} snapshots={}",
        s.collections, s.snapshots
    )
}

/// A fresh SQLite demo file: schema, data, and the URL to reach it.
async fn create_sqlite_demo(
    path: &Path,
    params: &backfill_demo::CertificateParams,
) -> anyhow::Result<String> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "cannot remove the old demo file {}: {e}",
                    Path::new(&p).display()
                ))
            }
        }
    }
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(opts)
        .await
        .with_context(|| {
            format!(
                "create the demo database {} (its folder must exist and be writable; pass another --db PATH)",
                path.display()
            )
        })?;
    backfill_demo::create_certificate_schema_sqlite(&pool).await?;
    let stats = backfill_demo::generate_certificates_sqlite(&pool, params).await?;
    pool.close().await;
    println!("{}", certificate_line(&stats));
    Ok(format!("sqlite://{}", path.display()))
}

/// A fresh PostgreSQL demo database on the server of DATABASE_URL.
async fn create_pg_demo(
    settings: &Settings,
    demo_db: &str,
    params: &backfill_demo::CertificateParams,
) -> anyhow::Result<String> {
    if !backfill_job::spec::is_identifier(demo_db) || demo_db.contains('.') {
        return Err(anyhow::anyhow!(
            "--demo-db `{demo_db}` is not a plain database name"
        ));
    }
    let admin = PgConnectOptions::from_str(settings.database_url.expose())
        .with_context(|| format!("bad DATABASE_URL {}", settings.database_url))?;
    let mut conn = admin.connect().await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {} (start it, or set DATABASE_URL; without --distributed the demo needs no server)",
            settings.database_url
        )
    })?;
    let quoted = backfill_job::spec::quote_ident(demo_db);
    sqlx::query(&format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .context("drop the old demo database")?;
    sqlx::query(&format!("CREATE DATABASE {quoted}"))
        .execute(&mut conn)
        .await
        .context("create the demo database")?;
    drop(conn);
    let demo_opts = admin.clone().database(demo_db);
    let pool = sqlx::PgPool::connect_with(demo_opts.clone())
        .await
        .context("connect to the demo database")?;
    backfill_demo::create_certificate_schema(&pool).await?;
    let stats = backfill_demo::generate_certificates(&pool, params).await?;
    pool.close().await;
    println!("{}", certificate_line(&stats));
    // Rebuild the URL from the server URL so user, password and host carry over.
    let mut url = url_with_database(settings.database_url.expose(), demo_db);
    if url.is_empty() {
        url = demo_opts.to_url_lossy().to_string();
    }
    Ok(url)
}

/// `postgres://u:p@h:5432/old?x` → `postgres://u:p@h:5432/NEW?x`.
fn url_with_database(url: &str, db: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return String::new();
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = before_query.split('/').next().unwrap_or(before_query);
    match query {
        Some(q) => format!("{scheme}://{authority}/{db}?{q}"),
        None => format!("{scheme}://{authority}/{db}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped_in_urls() {
        assert_eq!(
            url_with_database("postgres://u:p@h:5432/postgres", "d"),
            "postgres://u:p@h:5432/d"
        );
        assert_eq!(url_with_database("postgres://h", "d"), "postgres://h/d");
        assert_eq!(
            url_with_database("postgres://h/x?sslmode=disable", "d"),
            "postgres://h/d?sslmode=disable"
        );
    }

    #[test]
    fn the_built_in_job_parses() {
        let spec = JobSpec::parse(CERTIFICATE_JOB).unwrap();
        assert_eq!(spec.name, "program-certificate-titles");
    }
}
