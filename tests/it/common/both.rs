//! One test body, two back ends: PostgreSQL (with RabbitMQ) and SQLite
//! (embedded, in-process queue). Reads go through portable SQL into Rust
//! values, so the oracles are computed in Rust, independently of the job
//! spec's SQL.

#![allow(dead_code, clippy::unwrap_used, clippy::large_enum_variant)]

use super::TestEnv;
use serde_json::Value;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Row, SqlitePool};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

pub const BOTH: [Backend; 2] = [Backend::Postgres, Backend::Sqlite];

/// The PostgreSQL half of a test written once for both back ends:
/// `backends!(name)` beside `async fn name(b: Backend)` makes the test
/// `name::postgres`, so a failure names its back end. The SQLite half, which
/// needs no service, is declared in the service-free tier with
/// `on_sqlite!(area::name)` (`tests/it/tier1`).
#[allow(unused_macros)]
macro_rules! backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                super::$name($crate::common::both::Backend::Postgres).await
            }
        }
    };
}

/// The SQLite half of a test written with [`backends!`]: `on_sqlite!(area::name)`
/// makes the test `name::sqlite`, running `crate::tier2::area::name` on an
/// embedded database.
#[allow(unused_macros)]
macro_rules! on_sqlite {
    ($area:ident :: $name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn sqlite() {
                $crate::tier2::$area::$name($crate::common::both::Backend::Sqlite).await
            }
        }
    };
}

pub struct LiteEnv {
    pub dir: PathBuf,
    pub path: PathBuf,
    pub pool: SqlitePool,
}

impl Drop for LiteEnv {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A database of either kind, with the command wired to it.
pub enum Db {
    Pg(TestEnv),
    Lite(LiteEnv),
}

impl Db {
    pub async fn new(b: Backend) -> Db {
        match b {
            Backend::Postgres => Db::Pg(TestEnv::new().await),
            Backend::Sqlite => {
                let dir =
                    std::env::temp_dir().join(format!("bf-lite-{}", uuid::Uuid::new_v4().simple()));
                std::fs::create_dir_all(&dir).unwrap();
                let path = dir.join("site.sqlite3");
                let pool = SqlitePool::connect_with(
                    SqliteConnectOptions::new()
                        .filename(&path)
                        .create_if_missing(true),
                )
                .await
                .unwrap();
                Db::Lite(LiteEnv { dir, path, pool })
            }
        }
    }

    pub fn backend(&self) -> Backend {
        match self {
            Db::Pg(_) => Backend::Postgres,
            Db::Lite(_) => Backend::Sqlite,
        }
    }

    pub fn url(&self) -> String {
        match self {
            Db::Pg(e) => e.db_url.clone(),
            Db::Lite(l) => format!("sqlite://{}", l.path.display()),
        }
    }

    pub async fn store(&self) -> backfill_store::Store {
        backfill_store::Store::connect(&self.url(), 6)
            .await
            .unwrap()
    }

    /// `backfill ARGS`; a `run` goes through RabbitMQ on PostgreSQL and the
    /// in-process queue on SQLite.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_gated(args, false)
    }

    /// `backfill ARGS` with the review gate in force (no `BACKFILL_SKIP_REVIEW`).
    pub fn run_reviewed(&self, args: &[&str]) -> Output {
        self.run_gated(args, true)
    }

    fn run_gated(&self, args: &[&str], reviewed: bool) -> Output {
        let mut c = match self {
            Db::Pg(e) => e.cmd(args),
            Db::Lite(_) => {
                let mut c = Command::new(env!("CARGO_BIN_EXE_backfill"));
                c.args(args)
                    .env("DATABASE_URL", self.url())
                    .env("AMQP_URL", "amqp://nobody:nothing@127.0.0.1:1/%2f")
                    .env("BACKFILL_SKIP_REVIEW", "1")
                    .env_remove("RUST_LOG")
                    .stdin(Stdio::null());
                c
            }
        };
        if reviewed {
            c.env_remove("BACKFILL_SKIP_REVIEW");
        }
        let out = super::output_within(c, std::time::Duration::from_secs(300));
        eprintln!(
            "[{:?}] $ backfill {}\n--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.backend(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A fresh database of kind `b` holding the certificate data set.
    pub async fn with_certificates(b: Backend, programs: u32, revisions: u64) -> Db {
        let db = Db::new(b).await;
        db.seed_certificates(programs, revisions).await;
        db
    }

    /// A fresh database of kind `b` holding the collection data set.
    pub async fn with_collections(b: Backend, collections: u64, max_versions: u32) -> Db {
        let db = Db::new(b).await;
        db.seed_collections(collections, max_versions).await;
        db
    }

    pub async fn seed_certificates(&self, programs: u32, revisions: u64) {
        let p = backfill_demo::CertificateParams {
            programs,
            revisions,
            seed: 11,
        };
        match self {
            Db::Pg(e) => {
                backfill_demo::create_certificate_schema(&e.pool)
                    .await
                    .unwrap();
                backfill_demo::generate_certificates(&e.pool, &p)
                    .await
                    .unwrap();
            }
            Db::Lite(l) => {
                backfill_demo::create_certificate_schema_sqlite(&l.pool)
                    .await
                    .unwrap();
                backfill_demo::generate_certificates_sqlite(&l.pool, &p)
                    .await
                    .unwrap();
            }
        }
    }

    pub async fn seed_collections(&self, collections: u64, max_versions: u32) {
        let p = backfill_demo::CollectionParams {
            collections,
            max_versions,
            seed: 11,
        };
        match self {
            Db::Pg(e) => {
                backfill_demo::create_collection_schema(&e.pool)
                    .await
                    .unwrap();
                backfill_demo::generate_collections(&e.pool, &p)
                    .await
                    .unwrap();
            }
            Db::Lite(l) => {
                backfill_demo::create_collection_schema_sqlite(&l.pool)
                    .await
                    .unwrap();
                backfill_demo::generate_collections_sqlite(&l.pool, &p)
                    .await
                    .unwrap();
            }
        }
    }

    /// Runs portable SQL returning text/integer columns, as strings.
    pub async fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            Db::Pg(e) => {
                let wrapped = format!("SELECT to_jsonb(q)::text FROM ({sql}) q");
                let rows = sqlx::query(&wrapped)
                    .fetch_all(&e.pool)
                    .await
                    .unwrap_or_else(|err| panic!("{sql}: {err}"));
                rows.into_iter()
                    .map(|r| {
                        let v: Value = serde_json::from_str(&r.get::<String, _>(0)).unwrap();
                        // to_jsonb orders keys; callers name columns c0, c1, ...
                        let obj = v.as_object().unwrap();
                        (0..obj.len())
                            .map(|i| json_cell(&obj[&format!("c{i}")]))
                            .collect()
                    })
                    .collect()
            }
            Db::Lite(l) => {
                let rows = sqlx::query(sql)
                    .fetch_all(&l.pool)
                    .await
                    .unwrap_or_else(|err| panic!("{sql}: {err}"));
                rows.into_iter()
                    .map(|r| {
                        (0..r.len())
                            .map(|i| {
                                if let Ok(v) = r.try_get::<Option<i64>, _>(i) {
                                    v.map(|n| n.to_string())
                                } else {
                                    r.try_get::<Option<String>, _>(i).unwrap()
                                }
                            })
                            .collect()
                    })
                    .collect()
            }
        }
    }

    pub async fn execute(&self, sql: &str) {
        match self {
            Db::Pg(e) => {
                sqlx::query(sql)
                    .execute(&e.pool)
                    .await
                    .unwrap_or_else(|err| panic!("{sql}: {err}"));
            }
            Db::Lite(l) => {
                sqlx::query(sql)
                    .execute(&l.pool)
                    .await
                    .unwrap_or_else(|err| panic!("{sql}: {err}"));
            }
        }
    }

    pub async fn count(&self, table: &str) -> i64 {
        self.rows(&format!("SELECT count(*) AS c0 FROM {table}"))
            .await[0][0]
            .as_ref()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// A JSON column of a table as parsed documents, by key.
    pub async fn docs(&self, table: &str, key: &str, column: &str) -> BTreeMap<String, Value> {
        let col = match self {
            Db::Pg(_) => format!("CAST({column} AS text)"),
            Db::Lite(_) => column.to_string(),
        };
        let key_expr = format!("CAST({key} AS text)");
        self.rows(&format!(
            "SELECT {key_expr} AS c0, {col} AS c1 FROM {table}"
        ))
        .await
        .into_iter()
        .map(|r| {
            let k = r[0].clone().unwrap();
            let v = r[1]
                .as_deref()
                .map(|t| serde_json::from_str(t).unwrap())
                .unwrap_or(Value::Null);
            (k, v)
        })
        .collect()
    }
}

fn json_cell(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(if *b { "1".into() } else { "0".into() }),
        other => Some(other.to_string()),
    }
}

/// What the certificate-titles job must do, computed in Rust from the raw tables.
#[derive(Debug, Default)]
pub struct CertOracle {
    /// Live title of each eligible program (by program id).
    pub eligible: BTreeMap<String, String>,
    /// Target revision id → (program id, live certificates referencing it).
    pub targets: BTreeMap<String, (String, u64)>,
    /// Revision id → document before the run.
    pub before: BTreeMap<String, Value>,
}

impl CertOracle {
    pub async fn read(db: &Db) -> CertOracle {
        let pages: BTreeMap<String, (String, i64, bool)> = db
            .rows("SELECT CAST(id AS text) AS c0, path AS c1, depth AS c2, CASE WHEN live THEN 1 ELSE 0 END AS c3 FROM wagtailcore_page")
            .await
            .into_iter()
            .map(|r| {
                (
                    r[0].clone().unwrap(),
                    (r[1].clone().unwrap(), r[2].as_ref().unwrap().parse().unwrap(), r[3].as_deref() == Some("1")),
                )
            })
            .collect();
        let cert_pages: BTreeMap<String, String> = db
            .rows("SELECT CAST(page_ptr_id AS text) AS c0, product_name AS c1 FROM cms_certificatepage")
            .await
            .into_iter()
            .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap_or_default()))
            .collect();
        let program_pages: Vec<(String, String)> = db
            .rows("SELECT CAST(program_id AS text) AS c0, CAST(page_ptr_id AS text) AS c1 FROM cms_programpage")
            .await
            .into_iter()
            .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
            .collect();
        let mut eligible = BTreeMap::new();
        for (program, page) in &program_pages {
            let (ppath, pdepth, _) = &pages[page];
            let live_cert = cert_pages.iter().find(|(id, _)| {
                let (path, depth, live) = &pages[*id];
                path.starts_with(ppath.as_str()) && *depth == pdepth + 1 && *live
            });
            if let Some((_, title)) = live_cert {
                if !title.trim().is_empty() && !title.starts_with("PLACEHOLDER - ") {
                    eligible.insert(program.clone(), title.clone());
                }
            }
        }
        let mut targets: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for r in db
            .rows(
                "SELECT CAST(program_id AS text) AS c0, CAST(certificate_page_revision_id AS text) AS c1,
                        CASE WHEN is_revoked THEN 1 ELSE 0 END AS c2 FROM courses_programcertificate",
            )
            .await
        {
            let (program, rev, revoked) = (r[0].clone().unwrap(), r[1].clone(), r[2].as_deref() == Some("1"));
            if let (Some(rev), false, true) = (rev, revoked, eligible.contains_key(&program)) {
                targets.entry(rev).or_insert((program, 0)).1 += 1;
            }
        }
        let before = db.docs("wagtailcore_revision", "id", "content").await;
        CertOracle {
            eligible,
            targets,
            before,
        }
    }

    /// (rows to process, rows that change, certificates behind changed rows)
    pub fn expected(&self) -> (i64, i64, i64) {
        let mut changing = 0;
        let mut refs = 0;
        for (rev, (program, n)) in &self.targets {
            let want = Value::String(self.eligible[program].clone());
            if self.before[rev].get("product_name") != Some(&want) {
                changing += 1;
                refs += *n as i64;
            }
        }
        (self.targets.len() as i64, changing, refs)
    }

    /// Checks the documents after a commit: targets hold the live title and
    /// nothing else changed anywhere.
    pub fn check_after(&self, after: &BTreeMap<String, Value>) {
        assert_eq!(
            after.len(),
            self.before.len(),
            "no revision added or removed"
        );
        for (rev, doc) in after {
            let before = &self.before[rev];
            match self.targets.get(rev) {
                Some((program, _)) => {
                    assert_eq!(
                        doc.get("product_name"),
                        Some(&Value::String(self.eligible[program].clone())),
                        "revision {rev}"
                    );
                    let (mut a, mut b) = (doc.clone(), before.clone());
                    a.as_object_mut().unwrap().remove("product_name");
                    b.as_object_mut().unwrap().remove("product_name");
                    assert_eq!(a, b, "revision {rev}: only product_name changes");
                }
                None => assert_eq!(
                    doc, before,
                    "revision {rev} is not a target and must not change"
                ),
            }
        }
    }

    pub fn changed_keys(&self, after: &BTreeMap<String, Value>) -> BTreeSet<String> {
        after
            .iter()
            .filter(|(k, v)| self.before[*k] != **v)
            .map(|(k, _)| k.clone())
            .collect()
    }
}
