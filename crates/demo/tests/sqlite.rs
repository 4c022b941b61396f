//! The SQLite schemas and generators against their PostgreSQL originals.
//!
//! Each test generates a data set into a SQLite file in a temporary directory and the same
//! data set (same parameters) into a fresh PostgreSQL database, then checks that
//!
//! * the stats match the SQLite tables;
//! * the SQLite schema has the PostgreSQL tables' columns (same order, Django's SQLite
//!   types, same nullability), the same unique keys, named indexes and foreign keys;
//! * every row of every table is equal, column by column, once each back end's encoding is
//!   undone (timestamps as Django's SQLite text, booleans 0/1, UUIDs as 32 hex digits, JSON
//!   documents compared as parsed `serde_json::Value`s), and SQLite's JSON text is compact.
//!
//! Needs a PostgreSQL server at `postgres://postgres@127.0.0.1:5432/postgres` (trust auth)
//! or at `DATABASE_URL`; fails (never skips) when there is none.

mod common;

use common::{certificate_counts, collection_counts, CERTIFICATES, COLLECTIONS};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};

use backfill_demo::{
    create_certificate_schema, create_certificate_schema_sqlite, create_collection_schema,
    create_collection_schema_sqlite, generate_certificates, generate_certificates_sqlite,
    generate_collections, generate_collections_sqlite,
};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{PgPool, Row, SqlitePool};

const CERTIFICATE_TABLES: &[&str] = &[
    "django_content_type",
    "courses_program",
    "wagtailcore_page",
    "wagtailcore_revision",
    "cms_programpage",
    "cms_certificatepage",
    "courses_programcertificate",
];

const COLLECTION_TABLES: &[&str] = &["collection_models", "collection_snapshot_contents"];

/// Runs `body` against a pool on a freshly created PostgreSQL database, dropping the
/// database afterwards even when the body panics (the panic is then re-raised).
async fn with_postgres<F, Fut>(body: F)
where
    F: FnOnce(PgPool) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    common::with_fresh_database(
        "backfill_demo_sqlite_test",
        "; the SQLite data is checked against it",
        |options| async move {
            let name = options.get_database().unwrap_or_default().to_owned();
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .unwrap_or_else(|e| panic!("connect to {name}: {e}"));
            body(pool).await
        },
    )
    .await
}

/// A temporary directory, removed when dropped (also while unwinding from a panic).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!(
            "backfill_demo_sqlite_{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sqlite_pool(file: &Path) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(file)
                .create_if_missing(true),
        )
        .await
        .expect("open SQLite database")
}

async fn sqlite_count(pool: &SqlitePool, sql: &str) -> u64 {
    let n: i64 = sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    u64::try_from(n).expect("non-negative count")
}

/// Asserts what each query counts in SQLite: (count, query, what that shows).
async fn assert_counts(pool: &SqlitePool, expected: &[(u64, &str, &str)]) {
    for &(want, sql, what) in expected {
        assert_eq!(sqlite_count(pool, sql).await, want, "{what}: {sql}");
    }
}

/// How a PostgreSQL column's values are compared with their SQLite encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
    Bool,
    Json,
    Decimal,
    Timestamp,
    Uuid,
}

#[derive(Debug)]
struct PgColumn {
    name: String,
    kind: Kind,
    /// The declared type Django's SQLite backend gives this column.
    sqlite_type: String,
    not_null: bool,
}

async fn pg_columns(pg: &PgPool, table: &str) -> Vec<PgColumn> {
    let rows: Vec<(String, String, Option<i32>, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text, character_maximum_length::int4, \
                is_nullable::text \
         FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 \
         ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(pg)
    .await
    .expect("PostgreSQL columns");
    assert!(!rows.is_empty(), "no PostgreSQL table {table}");
    rows.into_iter()
        .map(|(name, data_type, max_len, nullable)| {
            let (kind, sqlite_type) = match data_type.as_str() {
                // Wagtail's tree counters are PositiveIntegerFields.
                "integer" if name == "depth" || name == "numchild" => {
                    (Kind::Int, "integer unsigned".to_owned())
                }
                "integer" => (Kind::Int, "integer".to_owned()),
                "character varying" => (
                    Kind::Text,
                    format!("varchar({})", max_len.expect("varchar length")),
                ),
                "text" => (Kind::Text, "text".to_owned()),
                "boolean" => (Kind::Bool, "bool".to_owned()),
                "jsonb" => (Kind::Json, "text".to_owned()),
                "numeric" => (Kind::Decimal, "decimal".to_owned()),
                "timestamp with time zone" => (Kind::Timestamp, "datetime".to_owned()),
                "uuid" => (Kind::Uuid, "char(32)".to_owned()),
                other => panic!("{table}.{name}: unexpected PostgreSQL type {other}"),
            };
            PgColumn {
                name,
                kind,
                sqlite_type,
                not_null: nullable == "NO",
            }
        })
        .collect()
}

/// Tables, columns, unique keys, named indexes and foreign keys of the SQLite schema
/// against the PostgreSQL one.
async fn compare_schemas(pg: &PgPool, sqlite: &SqlitePool, tables: &[&str]) {
    let mut pg_unique = BTreeSet::new();
    let mut sqlite_unique = BTreeSet::new();
    let mut pg_indexes = BTreeMap::new();
    let mut sqlite_indexes = BTreeMap::new();
    let mut pg_fks = BTreeSet::new();
    let mut sqlite_fks = BTreeSet::new();
    for &table in tables {
        // Columns.
        let expected: Vec<(String, String, bool)> = pg_columns(pg, table)
            .await
            .into_iter()
            .map(|c| (c.name, c.sqlite_type, c.not_null))
            .collect();
        let actual: Vec<(String, String, bool)> =
            sqlx::query("SELECT name, type, \"notnull\" FROM pragma_table_info(?1) ORDER BY cid")
                .bind(table)
                .fetch_all(sqlite)
                .await
                .expect("SQLite columns")
                .into_iter()
                // SQLite reports the standard type names it recognises in upper case.
                .map(|r| {
                    let declared: String = r.get(1);
                    (r.get(0), declared.to_lowercase(), r.get::<i64, _>(2) != 0)
                })
                .collect();
        assert_eq!(
            actual, expected,
            "columns of {table} (name, type, NOT NULL)"
        );

        // Indexes and unique keys on SQLite. An INTEGER PRIMARY KEY is the rowid and has no
        // index, so primary keys come from the column list.
        let pk: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk")
                .bind(table)
                .fetch_all(sqlite)
                .await
                .expect("SQLite primary key");
        sqlite_unique.insert((table.to_owned(), pk));
        let indexes: Vec<(String, i64, String)> =
            sqlx::query_as("SELECT name, \"unique\", origin FROM pragma_index_list(?1)")
                .bind(table)
                .fetch_all(sqlite)
                .await
                .expect("SQLite indexes");
        for (name, unique, origin) in indexes {
            let cols: Vec<String> =
                sqlx::query_scalar("SELECT name FROM pragma_index_info(?1) ORDER BY seqno")
                    .bind(&name)
                    .fetch_all(sqlite)
                    .await
                    .expect("SQLite index columns");
            let unique = unique != 0;
            if unique {
                sqlite_unique.insert((table.to_owned(), cols.clone()));
            }
            if origin == "c" {
                sqlite_indexes.insert(name, (table.to_owned(), unique, cols));
            }
        }

        // Foreign keys on SQLite, all deferred as Django declares them.
        let fks: Vec<(String, String, String)> =
            sqlx::query_as("SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1)")
                .bind(table)
                .fetch_all(sqlite)
                .await
                .expect("SQLite foreign keys");
        let ddl: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1")
                .bind(table)
                .fetch_one(sqlite)
                .await
                .expect("SQLite table DDL");
        assert_eq!(
            ddl.matches("DEFERRABLE INITIALLY DEFERRED").count(),
            fks.len(),
            "every foreign key of {table} is deferrable, initially deferred"
        );
        for (from, to_table, to) in fks {
            sqlite_fks.insert((table.to_owned(), from, to_table, to, true));
        }
    }

    // The PostgreSQL side.
    let tables_owned: Vec<String> = tables.iter().map(|t| (*t).to_owned()).collect();
    let rows: Vec<(String, String, bool, Vec<String>)> = sqlx::query_as(
        "SELECT t.relname::text, i.relname::text, x.indisunique, \
                array_agg(a.attname::text ORDER BY k.ord) \
         FROM pg_index x \
         JOIN pg_class t ON t.oid = x.indrelid \
         JOIN pg_class i ON i.oid = x.indexrelid \
         CROSS JOIN LATERAL unnest(x.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
         JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum \
         WHERE t.relnamespace = current_schema()::regnamespace AND t.relname = ANY($1) \
         GROUP BY t.relname, i.relname, x.indisunique",
    )
    .bind(&tables_owned)
    .fetch_all(pg)
    .await
    .expect("PostgreSQL indexes");
    for (table, name, unique, cols) in rows {
        if unique {
            pg_unique.insert((table.clone(), cols.clone()));
        }
        // Primary keys and UNIQUE columns are anonymous on SQLite; `*_like` pattern-ops
        // indexes exist only on PostgreSQL.
        if !(name.ends_with("_pkey") || name.ends_with("_key") || name.ends_with("_like")) {
            pg_indexes.insert(name, (table, unique, cols));
        }
    }
    let rows: Vec<(String, String, String, String, bool)> = sqlx::query_as(
        "SELECT cl.relname::text, a.attname::text, rf.relname::text, af.attname::text, \
                c.condeferrable AND c.condeferred \
         FROM pg_constraint c \
         JOIN pg_class cl ON cl.oid = c.conrelid \
         JOIN pg_class rf ON rf.oid = c.confrelid \
         JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
         JOIN pg_attribute af ON af.attrelid = c.confrelid AND af.attnum = c.confkey[1] \
         WHERE c.contype = 'f' AND cl.relnamespace = current_schema()::regnamespace \
           AND cl.relname = ANY($1)",
    )
    .bind(&tables_owned)
    .fetch_all(pg)
    .await
    .expect("PostgreSQL foreign keys");
    pg_fks.extend(rows);

    assert_eq!(sqlite_unique, pg_unique, "unique keys (table, columns)");
    assert_eq!(
        sqlite_indexes, pg_indexes,
        "named indexes (name -> table, unique, columns)"
    );
    assert_eq!(sqlite_fks, pg_fks, "foreign keys");
}

fn truncated(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 600 {
        let mut end = 600;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}... ({} bytes)", &s[..end], s.len())
    } else {
        s
    }
}

/// A PostgreSQL cell (selected as text) in the common form.
fn pg_value(kind: Kind, text: Option<String>) -> Value {
    let Some(text) = text else {
        return Value::Null;
    };
    match kind {
        Kind::Int => Value::from(text.parse::<i64>().expect("integer")),
        Kind::Text => Value::from(text),
        Kind::Bool => Value::from(match text.as_str() {
            "true" => true,
            "false" => false,
            other => panic!("PostgreSQL boolean {other}"),
        }),
        Kind::Json => serde_json::from_str(&text).expect("PostgreSQL jsonb text"),
        Kind::Decimal => Value::from(format!("{:.2}", text.parse::<f64>().expect("numeric"))),
        // to_char(.., 'YYYY-MM-DD HH24:MI:SS.US'): Django's str() omits a zero fraction.
        Kind::Timestamp => Value::from(text.strip_suffix(".000000").unwrap_or(&text).to_owned()),
        Kind::Uuid => Value::from(text.replace('-', "")),
    }
}

/// A SQLite cell (its text and storage class) in the common form, checking that it is
/// stored as Django stores that kind of field on SQLite.
fn sqlite_value(kind: Kind, text: Option<String>, storage: &str, what: &str) -> Value {
    let Some(text) = text else {
        assert_eq!(storage, "null", "{what}");
        return Value::Null;
    };
    let expected_storage: &[&str] = match kind {
        Kind::Int | Kind::Bool => &["integer"],
        Kind::Decimal => &["integer", "real"],
        Kind::Text | Kind::Json | Kind::Timestamp | Kind::Uuid => &["text"],
    };
    assert!(
        expected_storage.contains(&storage),
        "{what}: stored as {storage}, expected {expected_storage:?}"
    );
    match kind {
        Kind::Int => Value::from(text.parse::<i64>().expect("integer")),
        Kind::Text => Value::from(text),
        Kind::Bool => Value::from(match text.as_str() {
            "1" => true,
            "0" => false,
            other => panic!("{what}: SQLite boolean {other}"),
        }),
        Kind::Json => {
            let value: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{what}: invalid JSON text ({e})"));
            assert_eq!(value.to_string(), text, "{what}: JSON text is not compact");
            value
        }
        Kind::Decimal => Value::from(format!("{:.2}", text.parse::<f64>().expect("decimal"))),
        Kind::Timestamp => {
            let valid = (text.len() == 19 || text.len() == 26)
                && text.as_bytes()[10] == b' '
                && !text.ends_with(".000000");
            assert!(valid, "{what}: {text} is not Django's SQLite datetime text");
            Value::from(text)
        }
        Kind::Uuid => {
            assert!(
                text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit()),
                "{what}: {text} is not a 32-digit hex UUID"
            );
            Value::from(text)
        }
    }
}

/// Every row of `table` in both databases, sorted by the first (key) column.
async fn compare_table(pg: &PgPool, sqlite: &SqlitePool, table: &str) -> usize {
    let columns = pg_columns(pg, table).await;
    let pg_select: Vec<String> = columns
        .iter()
        .map(|c| match c.kind {
            Kind::Timestamp => format!(
                "to_char(\"{}\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')",
                c.name
            ),
            _ => format!("\"{}\"::text", c.name),
        })
        .collect();
    let sqlite_select: Vec<String> = columns
        .iter()
        .map(|c| format!("CAST(\"{0}\" AS TEXT), typeof(\"{0}\")", c.name))
        .collect();

    let pg_rows = sqlx::query(&format!("SELECT {} FROM {table}", pg_select.join(", ")))
        .fetch_all(pg)
        .await
        .unwrap_or_else(|e| panic!("read {table} from PostgreSQL: {e}"));
    let mut expected: Vec<Vec<Value>> = pg_rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| pg_value(c.kind, row.get(i)))
                .collect()
        })
        .collect();
    let sqlite_rows = sqlx::query(&format!("SELECT {} FROM {table}", sqlite_select.join(", ")))
        .fetch_all(sqlite)
        .await
        .unwrap_or_else(|e| panic!("read {table} from SQLite: {e}"));
    let mut actual: Vec<Vec<Value>> = sqlite_rows
        .iter()
        .map(|row| {
            columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let storage: String = row.get(2 * i + 1);
                    let what = format!("{table}.{}", c.name);
                    sqlite_value(c.kind, row.get(2 * i), &storage, &what)
                })
                .collect()
        })
        .collect();
    let key = |row: &Vec<Value>| match &row[0] {
        Value::Number(n) => (n.as_i64().unwrap_or(i64::MAX), String::new()),
        other => (0, other.to_string()),
    };
    expected.sort_by_key(key);
    actual.sort_by_key(key);

    assert_eq!(
        actual.len(),
        expected.len(),
        "{table}: SQLite has {} rows, PostgreSQL {}",
        actual.len(),
        expected.len()
    );
    for (a, e) in actual.iter().zip(&expected) {
        for (i, c) in columns.iter().enumerate() {
            assert!(
                a[i] == e[i],
                "{table} row {} = {}: column {} differs\n  SQLite:     {}\n  PostgreSQL: {}",
                columns[0].name,
                e[0],
                c.name,
                truncated(&a[i]),
                truncated(&e[i])
            );
        }
    }
    expected.len()
}

/// The schema and every row of `tables`, each holding rows, equal on both back ends.
async fn compare_databases(pg: &PgPool, sqlite: &SqlitePool, tables: &[&str]) {
    compare_schemas(pg, sqlite, tables).await;
    for table in tables {
        let rows = compare_table(pg, sqlite, table).await;
        println!("{table}: {rows} equal rows");
        assert!(rows > 0, "{table} is empty");
    }
}

/// SQLite's own consistency checks: the file is sound and no foreign key dangles.
async fn sqlite_consistent(sqlite: &SqlitePool) {
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(sqlite)
        .await
        .expect("integrity_check");
    assert_eq!(integrity, "ok");
    let dangling = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(sqlite)
        .await
        .expect("foreign_key_check");
    assert!(
        dangling.is_empty(),
        "{} dangling foreign keys",
        dangling.len()
    );
}

/// Needs PostgreSQL (and RabbitMQ where it says so): the real-service tier,
/// left out by `--skip tier2`.
mod tier2 {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_certificates_equal_postgres() {
        with_postgres(|pg| async move {
            let dir = TempDir::new();
            let sqlite = sqlite_pool(&dir.path().join("site.sqlite3")).await;
            let params = CERTIFICATES;
            create_certificate_schema_sqlite(&sqlite)
                .await
                .expect("SQLite schema");
            let stats = generate_certificates_sqlite(&sqlite, &params)
                .await
                .expect("generate certificates into SQLite");
            println!("{stats:?}");

            // Stats match the SQLite tables.
            assert_eq!(stats.programs, 25);
            assert_counts(&sqlite, &certificate_counts(&stats)).await;
            assert_counts(
                &sqlite,
                &[(
                    400,
                    "SELECT count(*) FROM wagtailcore_revision r \
                     JOIN django_content_type ct ON ct.id = r.content_type_id \
                     WHERE ct.app_label = 'cms' AND ct.model = 'certificatepage'",
                    "certificate-page revisions",
                )],
            )
            .await;
            assert!(stats.revoked > 0 && stats.without_revision > 0);
            sqlite_consistent(&sqlite).await;

            // The same data set on PostgreSQL.
            create_certificate_schema(&pg)
                .await
                .expect("PostgreSQL schema");
            let pg_stats = generate_certificates(&pg, &params)
                .await
                .expect("generate certificates into PostgreSQL");
            assert_eq!(stats, pg_stats, "stats of both back ends");
            compare_databases(&pg, &sqlite, CERTIFICATE_TABLES).await;

            // SQLite specifics: a second run refuses the filled tables, AUTOINCREMENT continues
            // after the generated ids, and the JSONField check rejects invalid JSON.
            assert!(
                generate_certificates_sqlite(&sqlite, &params)
                    .await
                    .is_err(),
                "refuses non-empty tables"
            );
            let next: i64 = sqlx::query_scalar(
                "INSERT INTO courses_program (created_on, updated_on, readable_id, title, live) \
                 VALUES ('2025-06-01 00:00:00', '2025-06-01 00:00:00', 'program-v1:MITx+EXTRA', \
                         'Extra', 1) RETURNING id",
            )
            .fetch_one(&sqlite)
            .await
            .expect("insert with AUTOINCREMENT");
            assert_eq!(next, 26);
            let next_revision: i64 = sqlx::query_scalar(
                "INSERT INTO wagtailcore_revision (created_at, content, object_id, content_type_id, \
                     base_content_type_id, object_str) \
                 VALUES ('2025-06-01 00:00:00', '{}', '1', 1, 1, 'x') RETURNING id",
            )
            .fetch_one(&sqlite)
            .await
            .expect("insert revision");
            assert_eq!(
                u64::try_from(next_revision).expect("id"),
                stats.revisions_total + 1
            );
            assert!(
                sqlx::query("UPDATE wagtailcore_revision SET content = '{oops' WHERE id = 1")
                    .execute(&sqlite)
                    .await
                    .is_err(),
                "JSON_VALID check"
            );
            sqlite.close().await;
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_collections_equal_postgres() {
        with_postgres(|pg| async move {
            let dir = TempDir::new();
            let sqlite = sqlite_pool(&dir.path().join("site.sqlite3")).await;
            let params = COLLECTIONS;
            create_collection_schema_sqlite(&sqlite)
                .await
                .expect("SQLite schema");
            let stats = generate_collections_sqlite(&sqlite, &params)
                .await
                .expect("generate collections into SQLite");
            println!("{stats:?}");
            assert_eq!(stats.collections, 10);
            assert_counts(&sqlite, &collection_counts(&stats)).await;
            assert_counts(
                &sqlite,
                &[
                    (
                        stats.snapshots,
                        "SELECT sum(version) FROM collection_models",
                        "snapshots: the sum of the versions",
                    ),
                    // The current row matches the latest snapshot (SQLite's JSON functions read
                    // the stored text as JSON).
                    (
                        0,
                        "SELECT count(*) FROM collection_models m \
                         JOIN collection_snapshot_contents s ON s.id = m.id || '-' || m.version \
                         WHERE json_extract(s.content, '$.nodes') <> json(m.nodes) \
                            OR json_extract(s.content, '$.title') <> m.title \
                            OR m.collection_dict IS NOT NULL",
                        "current row matches the latest snapshot",
                    ),
                ],
            )
            .await;
            sqlite_consistent(&sqlite).await;

            create_collection_schema(&pg)
                .await
                .expect("PostgreSQL schema");
            let pg_stats = generate_collections(&pg, &params)
                .await
                .expect("generate collections into PostgreSQL");
            assert_eq!(stats, pg_stats, "stats of both back ends");
            compare_databases(&pg, &sqlite, COLLECTION_TABLES).await;

            assert!(
                generate_collections_sqlite(&sqlite, &params).await.is_err(),
                "refuses non-empty tables"
            );
            assert!(
                sqlx::query(
                    "INSERT INTO collection_snapshot_contents (id, content) VALUES ('x', 'no')"
                )
                .execute(&sqlite)
                .await
                .is_err(),
                "JSON_VALID check"
            );
            sqlite.close().await;
        })
        .await;
    }
}
