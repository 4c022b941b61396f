//! Generates a demo data set into a database, creating the database and its tables when
//! they are missing, and reports how long it took.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/backfill_demo_big \
//!     cargo run --release -p backfill-demo --example generate -- certificates 2000 1000000 42
//! cargo run --release -p backfill-demo --example generate -- collections 10000 12 42
//! DATABASE_URL=sqlite:///tmp/site.sqlite3 \
//!     cargo run --release -p backfill-demo --example generate -- certificates 200 100000 42
//! ```
//!
//! A `sqlite:` URL generates into that SQLite file (created when missing) with the
//! `_sqlite` functions: the same data as on PostgreSQL, as Django stores it on SQLite.
//!
//! Arguments: `certificates [programs] [revisions] [seed]` or
//! `collections [collections] [max_versions] [seed]`.

use std::str::FromStr;
use std::time::Instant;

use backfill_demo::{
    create_certificate_schema, create_certificate_schema_sqlite, create_collection_schema,
    create_collection_schema_sqlite, generate_certificates, generate_certificates_sqlite,
    generate_collections, generate_collections_sqlite, CertificateParams, CollectionParams,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn arg<T: FromStr>(args: &[String], i: usize, default: T) -> Result<T, Error> {
    match args.get(i) {
        Some(s) => s
            .parse()
            .map_err(|_| format!("argument {i} ({s}) is not a number").into()),
        None => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/backfill_demo".to_owned());
    if url.starts_with("sqlite:") {
        return sqlite(&url, &args).await;
    }
    let options = PgConnectOptions::from_str(&url)?;
    let database = options.get_database().unwrap_or("postgres").to_owned();

    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().database("postgres"))
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&database)
            .fetch_one(&admin)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&admin)
            .await?;
        println!("created database {database}");
    }
    admin.close().await;
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;

    let dataset = args.first().map(String::as_str).unwrap_or("certificates");
    let started = Instant::now();
    match dataset {
        "certificates" => {
            let params = CertificateParams {
                programs: arg(&args, 1, 200)?,
                revisions: arg(&args, 2, 100_000)?,
                seed: arg(&args, 3, 42)?,
            };
            let present: Option<String> =
                sqlx::query_scalar("SELECT to_regclass('courses_program')::text")
                    .fetch_one(&pool)
                    .await?;
            if present.is_none() {
                create_certificate_schema(&pool).await?;
            }
            let stats = generate_certificates(&pool, &params).await?;
            println!("{params:?}\n{stats:?}");
        }
        "collections" => {
            let params = CollectionParams {
                collections: arg(&args, 1, 1_000)?,
                max_versions: arg(&args, 2, 10)?,
                seed: arg(&args, 3, 42)?,
            };
            let present: Option<String> =
                sqlx::query_scalar("SELECT to_regclass('collection_models')::text")
                    .fetch_one(&pool)
                    .await?;
            if present.is_none() {
                create_collection_schema(&pool).await?;
            }
            let stats = generate_collections(&pool, &params).await?;
            println!("{params:?}\n{stats:?}");
        }
        other => return Err(format!("unknown data set {other}").into()),
    }
    println!(
        "generated into {database} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The same for a SQLite database file.
async fn sqlite(url: &str, args: &[String]) -> Result<(), Error> {
    let pool = SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(SqliteConnectOptions::from_str(url)?.create_if_missing(true))
        .await?;
    let present = |table: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            )
            .bind(table)
            .fetch_one(&pool)
            .await
            .map(|n| n > 0)
        }
    };
    let dataset = args.first().map(String::as_str).unwrap_or("certificates");
    let started = Instant::now();
    match dataset {
        "certificates" => {
            let params = CertificateParams {
                programs: arg(args, 1, 200)?,
                revisions: arg(args, 2, 100_000)?,
                seed: arg(args, 3, 42)?,
            };
            if !present("courses_program").await? {
                create_certificate_schema_sqlite(&pool).await?;
            }
            let stats = generate_certificates_sqlite(&pool, &params).await?;
            println!("{params:?}\n{stats:?}");
        }
        "collections" => {
            let params = CollectionParams {
                collections: arg(args, 1, 1_000)?,
                max_versions: arg(args, 2, 10)?,
                seed: arg(args, 3, 42)?,
            };
            if !present("collection_models").await? {
                create_collection_schema_sqlite(&pool).await?;
            }
            let stats = generate_collections_sqlite(&pool, &params).await?;
            println!("{params:?}\n{stats:?}");
        }
        other => return Err(format!("unknown data set {other}").into()),
    }
    pool.close().await;
    println!(
        "generated into {url} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
