//! `backfill demo`: the certificate-titles job end to end on a generated
//! database — dry run, commit, and a second commit that changes nothing.

use anyhow::Context;
use backfill_job::{JobSpec, Mode, Scope};
use sqlx::postgres::PgConnectOptions;
use sqlx::ConnectOptions;
use std::str::FromStr;

use crate::settings::{SecretUrl, Settings};

/// The shipped certificate-titles job, built into the binary so the demo
/// works from any directory.
pub const CERTIFICATE_JOB: &str = include_str!("../jobs/program-certificate-titles.toml");

pub async fn run(
    settings: &Settings,
    demo_db: &str,
    revisions: u64,
    programs: u32,
    mappers: u16,
) -> anyhow::Result<i32> {
    if !backfill_job::spec::is_identifier(demo_db) || demo_db.contains('.') {
        return Err(anyhow::anyhow!(
            "--demo-db `{demo_db}` is not a plain database name"
        ));
    }
    let admin = PgConnectOptions::from_str(settings.database_url.expose())
        .with_context(|| format!("bad DATABASE_URL {}", settings.database_url))?;
    let mut conn = admin.connect().await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {} (start it, or set DATABASE_URL)",
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
    let demo_url = demo_opts.to_url_lossy().to_string();
    println!("== Generating a Wagtail-shaped demo database `{demo_db}` ({programs} programs, ~{revisions} certificate revisions)");
    let pool = sqlx::PgPool::connect_with(demo_opts)
        .await
        .context("connect to the demo database")?;
    backfill_demo::create_certificate_schema(&pool).await?;
    let stats = backfill_demo::generate_certificates(
        &pool,
        &backfill_demo::CertificateParams {
            programs,
            revisions,
            seed: 1,
        },
    )
    .await?;
    pool.close().await;
    println!("{stats:?}");

    let demo_settings = Settings {
        database_url: SecretUrl::new(demo_url.clone()),
        amqp_url: settings.amqp_url.clone(),
        queue_prefix: format!("{}.demo", settings.queue_prefix),
    };
    let spec =
        JobSpec::parse(CERTIFICATE_JOB).map_err(|e| anyhow::anyhow!("built-in job spec: {e}"))?;
    let mut last = 0;
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
        let rec = crate::cli::run_in_process(
            &demo_settings,
            backfill_coordinator::RunRequest {
                spec: spec.clone(),
                scope: Scope::All,
                mode,
                shard_size: Some(100),
            },
            mappers,
        )
        .await?;
        print!("{}", backfill_job::report::render_report(&rec.view()));
        last = crate::cli::exit_code(&rec);
    }
    println!();
    println!(
        "The demo database is `{demo_db}`: {}",
        backfill_store::redact_url(&demo_url)
    );
    println!("Look at it with: psql '{}' -c 'SELECT id, content->>'\"'\"'product_name'\"'\"' FROM wagtailcore_revision LIMIT 5'", backfill_store::redact_url(&demo_url));
    Ok(last)
}
