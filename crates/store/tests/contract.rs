//! The store's contract: every ledger operation of [`backfill_store::Store`]
//! run against both back ends, so that what one dialect does the other is
//! seen to do too (or, where a back end lacks a capability, is seen not to).
//!
//! Each test is written once with [`contract!`] and becomes two `#[test]`s,
//! `NAME::sqlite` and `NAME::postgres`, so a failure names its back end.
//! SQLite runs on a temporary file and needs no service. The PostgreSQL
//! half creates a database of its own (`bf_contract_…`, on the server of
//! `DATABASE_URL`, else `postgres://postgres@127.0.0.1:5432/postgres`) and
//! drops it at the end; when PostgreSQL cannot be reached it FAILS, saying
//! how to start it. `cargo test -p backfill-store --test contract -- --skip
//! postgres` runs the service-free half alone.
//!
//! The target is a small Wagtail-like table, `wagtailcore_revision (id
//! integer primary key, object_id text, content jsonb)` (`content text` on
//! SQLite), with pages in `contract_page` as the groups of a grouped job.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill_job::rules::{evaluate_revert, evaluate_row, BeforeImage};
use backfill_job::spec::{Dialect, HealthSpec, SqlText, ThrottleSpec};
use backfill_job::{
    JobSpec, Mode, PlannedGroup, RowInput, RowOutcome, RunKind, RunState, Scope, ShardResult,
    ShardTask, Tally,
};
use backfill_store::shard::Reevaluate;
use backfill_store::{
    BatchLimits, Claim, Committed, ControlState, Derived, EvaluatedRow, FetchedRow, NewRun,
    OpenShard, Reduced, ShardCommit, ShardRows, ShardWork, Store, StoreError, ThrottleChange,
};
use serde_json::{json, Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ConnectOptions, PgPool, SqlitePool};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

// ---- the harness -----------------------------------------------------------

/// Writes one contract test for both back ends:
/// `contract!(name, |h| async move { … })` becomes `mod name { sqlite,
/// postgres }`, each handing a fresh [`Harness`] to the body.
macro_rules! contract {
    ($name:ident, |$h:ident| async move $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn body($h: &Harness) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let h = Harness::new(Kind::Sqlite).await;
                body(&h).await;
                h.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let h = Harness::new(Kind::Postgres).await;
                body(&h).await;
                h.finish().await;
            }
        }
    };
}

const PG_HINT: &str = "PostgreSQL is not reachable: the postgres half of the store's contract suite needs it. Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (or run `.ci/run`), or point DATABASE_URL at a server; `-- --skip postgres` runs the SQLite half alone.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database of a test's own, removed when it is dropped (also when the
/// test fails).
pub struct Scratch {
    pub url: String,
    place: Place,
}

enum Place {
    Pg {
        admin: Box<PgConnectOptions>,
        name: String,
    },
    File(PathBuf),
}

impl Scratch {
    pub async fn new(kind: Kind) -> Scratch {
        let id = uuid::Uuid::new_v4().simple().to_string();
        match kind {
            Kind::Sqlite => {
                let path = std::env::temp_dir().join(format!("bf_contract_{id}.db"));
                Scratch {
                    url: format!("sqlite://{}?mode=rwc", path.display()),
                    place: Place::File(path),
                }
            }
            Kind::Postgres => {
                let admin = PgConnectOptions::from_str(&admin_url())
                    .unwrap_or_else(|e| panic!("DATABASE_URL is not a valid URL ({e})"));
                let mut conn = tokio::time::timeout(Duration::from_secs(10), admin.connect())
                    .await
                    .unwrap_or_else(|_| panic!("{PG_HINT} (timed out)"))
                    .unwrap_or_else(|e| panic!("{PG_HINT} ({e})"));
                let name = format!("bf_contract_{id}");
                sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                    .execute(&mut conn)
                    .await
                    .expect("create the test database");
                drop(conn);
                let url = admin.clone().database(&name).to_url_lossy().to_string();
                Scratch {
                    url,
                    place: Place::Pg {
                        admin: Box::new(admin),
                        name,
                    },
                }
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        match &self.place {
            Place::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(p);
                }
            }
            Place::Pg { admin, name } => {
                let (admin, name) = (admin.as_ref().clone(), name.clone());
                // On a thread of its own: Drop may run inside the test's runtime.
                let _ = std::thread::spawn(move || {
                    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    rt.block_on(async move {
                        if let Ok(mut conn) = admin.connect().await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .execute(&mut conn)
                            .await;
                        }
                    });
                })
                .join();
            }
        }
    }
}

/// A direct connection pool to the test's database, for setting up target
/// tables and looking at what the store wrote.
#[derive(Clone)]
pub enum Raw {
    Pg(PgPool),
    Lite(SqlitePool),
}

impl Raw {
    pub async fn open(url: &str) -> Raw {
        if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .unwrap()
                .busy_timeout(Duration::from_secs(60));
            Raw::Lite(
                SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(opts)
                    .await
                    .unwrap(),
            )
        } else {
            Raw::Pg(
                PgPoolOptions::new()
                    .max_connections(2)
                    .connect(url)
                    .await
                    .unwrap(),
            )
        }
    }

    /// Runs statements (`;`-separated, none with a `;` of its own).
    pub async fn exec(&self, sql: &str) {
        for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
            match self {
                Raw::Pg(p) => sqlx::query(stmt).execute(p).await.map(drop),
                Raw::Lite(p) => sqlx::query(stmt).execute(p).await.map(drop),
            }
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
        }
    }

    pub async fn i64(&self, sql: &str) -> i64 {
        match self {
            Raw::Pg(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
            Raw::Lite(p) => sqlx::query_scalar::<_, i64>(sql).fetch_one(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn opt_text(&self, sql: &str) -> Option<String> {
        match self {
            Raw::Pg(p) => {
                sqlx::query_scalar::<_, Option<String>>(sql)
                    .fetch_one(p)
                    .await
            }
            Raw::Lite(p) => {
                sqlx::query_scalar::<_, Option<String>>(sql)
                    .fetch_one(p)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn texts(&self, sql: &str) -> Vec<String> {
        match self {
            Raw::Pg(p) => sqlx::query_scalar::<_, String>(sql).fetch_all(p).await,
            Raw::Lite(p) => sqlx::query_scalar::<_, String>(sql).fetch_all(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn close(&self) {
        match self {
            Raw::Pg(p) => p.close().await,
            Raw::Lite(p) => p.close().await,
        }
    }

    /// Every column of the ledger's tables, as `table: column type
    /// nullability default`, in order: what a ledger's schema is, wherever
    /// its columns sit in their tables.
    pub async fn ledger_schema(&self) -> BTreeSet<String> {
        let sql = match self {
            Raw::Pg(_) => {
                "SELECT table_name || ': ' || column_name || ' ' || data_type || ' ' || is_nullable
                                  || ' ' || coalesce(column_default, '')
                           FROM information_schema.columns
                           WHERE table_schema = 'public' AND table_name LIKE 'backfill%'"
            }
            Raw::Lite(_) => {
                "SELECT m.name || ': ' || p.name || ' ' || p.type || ' ' || p.\"notnull\"
                                    || ' ' || coalesce(p.dflt_value, '') || ' ' || p.pk
                             FROM sqlite_master m, pragma_table_info(m.name) p
                             WHERE m.type = 'table' AND m.name LIKE 'backfill%'"
            }
        };
        self.texts(sql).await.into_iter().collect()
    }

    /// The ledger's migrations as recorded: (version, success, checksum).
    pub async fn migrations(&self) -> Vec<(i64, bool, Vec<u8>)> {
        let sql = "SELECT version, success, checksum FROM backfill_migrations ORDER BY version";
        match self {
            Raw::Pg(p) => sqlx::query_as(sql).fetch_all(p).await,
            Raw::Lite(p) => sqlx::query_as(sql).fetch_all(p).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The names of the ledger's tables.
    pub async fn ledger_tables(&self) -> BTreeSet<String> {
        let sql = match self {
            Raw::Pg(_) => "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'backfill%'",
            Raw::Lite(_) => "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'backfill%'",
        };
        self.texts(sql).await.into_iter().collect()
    }

    /// The columns of a table, by name.
    pub async fn columns(&self, table: &str) -> BTreeSet<String> {
        let sql = match self {
            Raw::Pg(_) => format!(
                "SELECT column_name::text FROM information_schema.columns WHERE table_schema = 'public' AND table_name = '{table}'"
            ),
            Raw::Lite(_) => format!("SELECT name FROM pragma_table_info('{table}')"),
        };
        self.texts(&sql).await.into_iter().collect()
    }
}

/// The target tables: Wagtail-like revisions, the pages they belong to,
/// and documents keyed by text.
async fn create_targets(raw: &Raw, kind: Kind) {
    let content = match kind {
        Kind::Postgres => "jsonb",
        Kind::Sqlite => "text",
    };
    raw.exec(&format!(
        "CREATE TABLE wagtailcore_revision (id integer PRIMARY KEY, object_id text NOT NULL, content {content});
         CREATE TABLE contract_page (slug text PRIMARY KEY, title text);
         CREATE TABLE contract_doc (slug text PRIMARY KEY, content {content})"
    ))
    .await;
}

/// A connected store on a fresh database holding the target tables.
pub struct Harness {
    pub kind: Kind,
    pub store: Store,
    pub raw: Raw,
    pub scratch: Scratch,
}

impl Harness {
    pub async fn new(kind: Kind) -> Harness {
        let scratch = Scratch::new(kind).await;
        let store = Store::connect(&scratch.url, 4)
            .await
            .unwrap_or_else(|e| panic!("connect the store: {e}"));
        let raw = Raw::open(&scratch.url).await;
        create_targets(&raw, kind).await;
        Harness {
            kind,
            store,
            raw,
            scratch,
        }
    }

    /// A database holding a ledger made by an earlier release (`fixture`,
    /// its SQL), then connected to with the current store.
    pub async fn adopting(kind: Kind, fixture: &str) -> Harness {
        let scratch = Scratch::new(kind).await;
        let raw = Raw::open(&scratch.url).await;
        raw.exec(fixture).await;
        raw.close().await;
        let store = Store::connect(&scratch.url, 4)
            .await
            .unwrap_or_else(|e| panic!("adopt the ledger: {e}"));
        let raw = Raw::open(&scratch.url).await;
        create_targets(&raw, kind).await;
        Harness {
            kind,
            store,
            raw,
            scratch,
        }
    }

    pub async fn finish(self) {
        self.store.close().await;
        self.raw.close().await;
        drop(self.scratch);
    }

    pub fn pg(&self) -> bool {
        self.kind == Kind::Postgres
    }

    /// A second store on the same database, as another process would open.
    pub async fn reconnect(&self) -> Store {
        Store::connect(&self.scratch.url, 4).await.unwrap()
    }

    /// Inserts revisions: (id, page, content).
    pub async fn seed(&self, rows: &[(i64, &str, &str)]) {
        for (id, page, content) in rows {
            match &self.raw {
                Raw::Pg(p) => sqlx::query(
                    "INSERT INTO wagtailcore_revision (id, object_id, content) VALUES ($1, $2, $3::jsonb)",
                )
                .bind(id)
                .bind(page)
                .bind(content)
                .execute(p)
                .await
                .map(drop),
                Raw::Lite(p) => sqlx::query(
                    "INSERT INTO wagtailcore_revision (id, object_id, content) VALUES (?1, ?2, ?3)",
                )
                .bind(id)
                .bind(page)
                .bind(content)
                .execute(p)
                .await
                .map(drop),
            }
            .unwrap();
        }
    }

    pub async fn seed_pages(&self, pages: &[(&str, &str)]) {
        for (slug, title) in pages {
            self.raw
                .exec(&format!(
                    "INSERT INTO contract_page (slug, title) VALUES ('{slug}', '{title}')"
                ))
                .await;
        }
    }

    /// A revision's content as a JSON value (`Null` for SQL NULL).
    pub async fn content(&self, id: i64) -> Value {
        let sql = match self.kind {
            Kind::Postgres => {
                format!("SELECT content::text FROM wagtailcore_revision WHERE id = {id}")
            }
            Kind::Sqlite => format!("SELECT content FROM wagtailcore_revision WHERE id = {id}"),
        };
        match self.raw.opt_text(&sql).await {
            Some(t) => serde_json::from_str(&t).unwrap(),
            None => Value::Null,
        }
    }

    pub async fn set_content(&self, id: i64, content: &str) {
        let cast = if self.pg() { "::jsonb" } else { "" };
        self.raw
            .exec(&format!(
                "UPDATE wagtailcore_revision SET content = '{content}'{cast} WHERE id = {id}"
            ))
            .await;
    }
}

// ---- jobs and data -----------------------------------------------------------

/// Renames `institute_text` to `institution_text`; a revision holding both
/// is a row error.
const RENAME: &str = r#"
name = "contract-rename"
shard_size = 2

[[targets]]
name = "revisions"
table = "wagtailcore_revision"
key = "id"
key_type = "integer"
columns = ["content"]
query = "SELECT id AS key FROM wagtailcore_revision"

[[targets.rules]]
column = "content"
op = "rename"
path = "/institute_text"
to = "institution_text"
on_both = "error"
"#;

/// Sets each revision's `title` to its page's title; pages without one are
/// skipped by a guard.
const TITLES: &str = r#"
name = "contract-titles"
shard_size = 2

[groups]
noun = "page"
query.postgres = 'SELECT slug AS key, slug AS label, title FROM contract_page WHERE $1::jsonb IS NULL OR slug IN (SELECT jsonb_array_elements_text($1::jsonb))'
query.sqlite = 'SELECT slug AS key, slug AS label, title FROM contract_page WHERE ?1 IS NULL OR slug IN (SELECT value FROM json_each(?1))'

[[groups.guards]]
param = "title"
check = "not_blank"
reason = "the page has no title"

[[targets]]
name = "revisions"
table = "wagtailcore_revision"
key = "id"
key_type = "integer"
columns = ["content"]
query.postgres = 'SELECT id AS key, object_id AS "group" FROM wagtailcore_revision WHERE object_id IN (SELECT jsonb_array_elements_text($1::jsonb))'
query.sqlite = 'SELECT id AS key, object_id AS "group" FROM wagtailcore_revision WHERE object_id IN (SELECT value FROM json_each(?1))'

[[targets.rules]]
column = "content"
op = "set"
path = "/title"
param = "title"
"#;

/// Seven revisions over three pages: five to rename (1, 2, 3, 5, 7), one
/// renamed already (4), one holding both keys (6: a row error).
const REVISIONS: &[(i64, &str, &str)] = &[
    (1, "p1", r#"{"institute_text": "A1"}"#),
    (2, "p1", r#"{"institute_text": "A2"}"#),
    (3, "p2", r#"{"institute_text": "A3", "title": "old"}"#),
    (4, "p2", r#"{"institution_text": "done"}"#),
    (5, "p3", r#"{"institute_text": "A5"}"#),
    (
        6,
        "p3",
        r#"{"institute_text": "x", "institution_text": "y"}"#,
    ),
    (7, "p3", r#"{"institute_text": "A7"}"#),
];

/// The same revisions without the row error.
const CLEAN: &[(i64, &str, &str)] = &[
    (1, "p1", r#"{"institute_text": "A1"}"#),
    (2, "p1", r#"{"institute_text": "A2"}"#),
    (3, "p2", r#"{"institute_text": "A3", "title": "old"}"#),
    (4, "p2", r#"{"institution_text": "done"}"#),
    (5, "p3", r#"{"institute_text": "A5"}"#),
];

fn spec(text: &str) -> JobSpec {
    JobSpec::parse(text).unwrap_or_else(|e| panic!("spec: {e}"))
}

fn counts(t: &Tally) -> (u64, u64, u64, u64, u64, u64) {
    let c = &t.counts;
    (
        c.processed,
        c.changed,
        c.unchanged,
        c.skipped,
        c.conflicts,
        c.errors,
    )
}

/// Plans a run of `spec` over every group, as the coordinator does.
async fn plan(h: &Harness, spec: &JobSpec, mode: Mode, run_id: &str) -> backfill_job::Plan {
    plan_scoped(h, spec, mode, run_id, &Scope::All, None).await
}

async fn plan_scoped(
    h: &Harness,
    spec: &JobSpec,
    mode: Mode,
    run_id: &str,
    scope: &Scope,
    sample: Option<f64>,
) -> backfill_job::Plan {
    let rows = h.store.group_rows(spec, scope).await.unwrap();
    let groups = backfill_job::plan::evaluate_groups(spec, scope, rows);
    h.store
        .create_run(
            NewRun {
                run_id,
                spec,
                mode,
                scope,
                shard_size: spec.shard_size,
                sample,
                kind: RunKind::Forward,
                schedule: None,
            },
            groups,
            None,
        )
        .await
        .unwrap()
}

/// The group parameters of a run, by group key.
fn params_of(plan: &backfill_job::Plan) -> HashMap<String, Map<String, Value>> {
    plan.groups
        .iter()
        .map(|g| (g.key.clone(), g.params.clone()))
        .collect()
}

/// Evaluates fetched rows with the run's rules (or, for a revert, against
/// the before-images of the run it reverts), as a mapper does.
async fn evaluate(
    h: &Harness,
    rec: &backfill_store::RunRecord,
    target: &backfill_job::spec::TargetSpec,
    rows: Vec<FetchedRow>,
) -> Vec<EvaluatedRow> {
    let params = params_of(&rec.plan);
    let empty = Map::new();
    let normalised = h.store.normalised_columns(&target.table).await.unwrap();
    let befores = match &rec.revert_of {
        Some(original) => {
            let keys: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
            Some(
                h.store
                    .before_images(original, &target.name, &keys)
                    .await
                    .unwrap(),
            )
        }
        None => None,
    };
    rows.into_iter()
        .map(|row| {
            let p = params.get(&row.group).unwrap_or(&empty);
            EvaluatedRow::evaluate(row, |key, columns, version| {
                let input = RowInput {
                    key,
                    columns,
                    params: p,
                    normalised: &normalised,
                };
                match &befores {
                    Some(b) => evaluate_revert(target, &input, b.get(key), version, None),
                    None => evaluate_row(target, &input, None),
                }
            })
        })
        .collect()
}

/// One shard, as a mapper works it: opened, read and written batch by
/// batch (`batch` rows at a time), finished.
async fn map_shard(
    h: &Harness,
    run_id: &str,
    shard_no: u32,
    worker: &str,
    batch: usize,
) -> Committed {
    let rec = h.store.load_run(run_id).await.unwrap().unwrap();
    let name = h
        .store
        .shard_target(run_id, shard_no)
        .await
        .unwrap()
        .unwrap();
    let target = rec.spec.target(&name).unwrap();
    let work = ShardWork {
        run_id,
        shard_no,
        target,
        mode: rec.mode,
        worker,
        retry: None,
    };
    let mut tx = match h.store.open_shard(work).await.unwrap() {
        OpenShard::Done(t) => return Committed::AlreadyDone(t),
        OpenShard::Open(tx) => tx,
    };
    let limits = BatchLimits {
        rows: batch,
        bytes: BatchLimits::DEFAULT_BYTES,
    };
    while let Some(rows) = tx.next_batch(limits).await.unwrap() {
        let evaluated = evaluate(h, &rec, target, rows).await;
        tx.write(evaluated).await.unwrap();
    }
    tx.finish().await.unwrap()
}

fn result_of(run_id: &str, shard_no: u32, tally: Tally) -> ShardResult {
    ShardResult {
        v: backfill_job::message::MESSAGE_VERSION,
        ledger: String::new(),
        run_id: run_id.into(),
        shard_no,
        target: "revisions".into(),
        worker: "w1".into(),
        elapsed_ms: 1,
        tally,
    }
}

/// Claims, maps and reduces every pending shard of a run; the last fold.
async fn run_to_end(h: &Harness, run_id: &str) -> Reduced {
    let mut last = Reduced::Counted;
    for s in h.store.shards(run_id).await.unwrap() {
        if s.state != "pending" {
            continue;
        }
        assert_eq!(
            h.store
                .claim_shard(run_id, s.shard_no, "w1", None)
                .await
                .unwrap(),
            Claim::Claimed
        );
        let committed = map_shard(h, run_id, s.shard_no, "w1", 100).await;
        last = h
            .store
            .reduce(&result_of(run_id, s.shard_no, committed.tally().clone()))
            .await
            .unwrap();
    }
    last
}

fn is_hex_id(s: &str) -> bool {
    s.len() == 32
        && s.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn is_utc_second(s: &str) -> bool {
    s.len() == 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z')
}

// ---- connecting and the ledger's identity ------------------------------------

const LEDGER_TABLES: &[&str] = &[
    "backfill_before_image",
    "backfill_control",
    "backfill_event",
    "backfill_group",
    "backfill_group_tally",
    "backfill_item",
    "backfill_ledger",
    "backfill_planning",
    "backfill_quarantine",
    "backfill_run",
    "backfill_shard",
    "backfill_worker",
];

contract!(
    connect_creates_the_ledger_and_its_identity,
    |h| async move {
        let tables = h.raw.ledger_tables().await;
        for t in LEDGER_TABLES {
            assert!(tables.contains(*t), "{t} missing: {tables:?}");
        }
        for (table, col) in [
            ("backfill_shard", "lease_until"),
            ("backfill_shard", "elapsed_ms"),
            ("backfill_run", "kind"),
            ("backfill_run", "schedule"),
            ("backfill_before_image", "patch"),
            ("backfill_before_image", "after_version"),
            ("backfill_control", "bytes_per_row"),
            ("backfill_control", "max_wal_bytes_per_sec"),
        ] {
            assert!(
                h.raw.columns(table).await.contains(col),
                "{table}.{col} missing"
            );
        }
        let id = h.store.ledger().clone();
        assert!(is_hex_id(&id.id), "{id:?}");
        assert!(!id.is_copy());
        id.check().unwrap();
        assert_eq!(id.queue_prefix(), format!("backfill-{}", &id.id[..12]));
        assert_eq!(h.raw.i64("SELECT count(*) FROM backfill_ledger").await, 1);
        assert_eq!(
            h.store.dialect(),
            if h.pg() {
                Dialect::Postgres
            } else {
                Dialect::Sqlite
            }
        );
        h.store.ping().await.unwrap();
        // Another process connecting keeps the ledger and its identity.
        let again = h.reconnect().await;
        assert_eq!(again.ledger(), h.store.ledger());
        assert_eq!(h.raw.i64("SELECT count(*) FROM backfill_ledger").await, 1);
        again.close().await;
    }
);

contract!(read_only_connections_need_a_ledger, |h| async move {
    let kind = h.kind;
    // A database no job has run against: nothing is created there.
    let fresh = Scratch::new(kind).await;
    match Store::connect_existing(&fresh.url, 2).await {
        Err(StoreError::NoLedger { why, .. }) => {
            assert!(why.contains("no job has run"), "{why}")
        }
        other => panic!("expected NoLedger, got {other:?}"),
    }
    let raw = Raw::open(&fresh.url).await;
    assert!(raw.ledger_tables().await.is_empty());
    // A ledger of a version before identities: upgraded only by a writer.
    raw.exec("CREATE TABLE backfill_run (run_id text PRIMARY KEY)")
        .await;
    match Store::connect_existing(&fresh.url, 2).await {
        Err(StoreError::NoLedger { why, .. }) => assert!(why.contains("older version"), "{why}"),
        other => panic!("expected NoLedger, got {other:?}"),
    }
    raw.close().await;
    drop(fresh);
    // The harness's database has a ledger: read-only connections see it.
    let ro = Store::connect_existing(&h.scratch.url, 2).await.unwrap();
    assert_eq!(ro.ledger(), h.store.ledger());
    ro.close().await;
    // Not a database URL at all.
    assert!(matches!(
        Store::connect("mysql://x/y", 2).await,
        Err(StoreError::Scheme(_))
    ));
});

contract!(a_copied_ledger_is_refused_until_adopted, |h| async move {
    let first = h.store.ledger().clone();
    // Make the ledger look recorded in another database.
    h.raw
        .exec("UPDATE backfill_ledger SET database_oid = '1', database_name = 'elsewhere'")
        .await;
    let copy = h.reconnect().await;
    if h.pg() {
        assert!(copy.ledger().is_copy());
        assert_eq!(copy.ledger().id, first.id);
        assert!(matches!(
            copy.ledger().check(),
            Err(StoreError::CopiedLedger { .. })
        ));
        let adopted = copy.adopt_ledger().await.unwrap();
        assert!(!adopted.is_copy());
        assert_ne!(adopted.id, first.id);
        assert!(is_hex_id(&adopted.id));
        let after = h.reconnect().await;
        assert_eq!(after.ledger(), &adopted);
        after.close().await;
    } else {
        // An SQLite file has no identity of its own to differ from: it
        // cannot be told to be a copy, and adopting changes nothing.
        assert!(!copy.ledger().is_copy());
        assert_eq!(copy.adopt_ledger().await.unwrap(), *copy.ledger());
    }
    copy.close().await;
});

// ---- planning ------------------------------------------------------------------

contract!(
    planning_records_the_run_its_shards_and_items,
    |h| async move {
        h.seed(REVISIONS).await;
        let spec = spec(RENAME);
        let planned = plan(h, &spec, Mode::DryRun, "run-plan").await;
        assert_eq!(planned.shards_total, 4);
        assert!(planned.groups.is_empty());
        assert_eq!(h.raw.i64("SELECT count(*) FROM backfill_item").await, 7);

        let rec = h.store.load_run("run-plan").await.unwrap().unwrap();
        assert_eq!(rec.run_id, "run-plan");
        assert_eq!(rec.spec.name, "contract-rename");
        assert_eq!(rec.spec.hash, spec.hash);
        assert_eq!(rec.mode, Mode::DryRun);
        assert_eq!(rec.state, RunState::Running);
        assert_eq!(rec.scope, "all");
        assert_eq!(rec.scope_value, Scope::All);
        assert_eq!((rec.shards_total, rec.shards_reduced), (4, 0));
        assert_eq!(rec.kind, RunKind::Forward);
        assert_eq!(rec.plan, planned);
        assert_eq!(rec.summary, None);
        assert_eq!(
            (rec.revert_of.as_deref(), rec.retry_of.as_deref()),
            (None, None)
        );
        assert_eq!(rec.sample, None);
        assert_eq!(rec.describe_kind(), "forward");
        assert!(h.store.load_run("no-such-run").await.unwrap().is_none());

        let shards = h.store.shards("run-plan").await.unwrap();
        let cut: Vec<(u32, &str, &str, u32, &str, bool, bool)> = shards
            .iter()
            .map(|s| {
                (
                    s.shard_no,
                    s.first_key.as_str(),
                    s.last_key.as_str(),
                    s.rows,
                    s.state.as_str(),
                    s.published,
                    s.reduced,
                )
            })
            .collect();
        assert_eq!(
            cut,
            vec![
                (0, "1", "2", 2, "pending", false, false),
                (1, "3", "4", 2, "pending", false, false),
                (2, "5", "6", 2, "pending", false, false),
                (3, "7", "7", 1, "pending", false, false),
            ]
        );
        assert!(shards.iter().all(|s| s.target == "revisions"));
        assert_eq!(
            h.store
                .shard_target("run-plan", 3)
                .await
                .unwrap()
                .as_deref(),
            Some("revisions")
        );
        assert_eq!(h.store.shard_target("run-plan", 9).await.unwrap(), None);
        assert!(h.store.run_exists("run-plan").await.unwrap());
        assert!(!h.store.run_exists("nope").await.unwrap());

        // Active runs of the job, and what was published.
        let active = h.store.active_runs("contract-rename").await.unwrap();
        assert_eq!(active.len(), 1);
        let a = &active[0];
        assert_eq!(
            (a.run_id.as_str(), a.spec_hash.as_str(), a.mode, &a.scope),
            ("run-plan", spec.hash.as_str(), Mode::DryRun, &Scope::All)
        );
        assert_eq!(
            (a.shards_total, a.shards_published, a.shards_reduced),
            (4, 0, 0)
        );
        assert_eq!(
            (a.kind, a.of.as_deref(), a.sample),
            (RunKind::Forward, None, None)
        );
        assert_eq!(a.describe_kind(), "forward");
        h.store.mark_published("run-plan", &[0, 2]).await.unwrap();
        h.store.mark_published("run-plan", &[2]).await.unwrap();
        let published: Vec<bool> = h
            .store
            .shards("run-plan")
            .await
            .unwrap()
            .iter()
            .map(|s| s.published)
            .collect();
        assert_eq!(published, vec![true, false, true, false]);
        assert_eq!(
            h.store.active_runs("contract-rename").await.unwrap()[0].shards_published,
            2
        );
        assert!(h.store.active_runs("other-job").await.unwrap().is_empty());

        // A second run is listed first.
        tokio::time::sleep(Duration::from_millis(20)).await;
        plan(h, &spec, Mode::Commit, "run-plan-2").await;
        let recent = h.store.recent_runs(10).await.unwrap();
        assert_eq!(
            recent,
            vec![
                (
                    "run-plan-2".to_string(),
                    "contract-rename".to_string(),
                    "commit".to_string(),
                    "running".to_string()
                ),
                (
                    "run-plan".to_string(),
                    "contract-rename".to_string(),
                    "dry-run".to_string(),
                    "running".to_string()
                ),
            ]
        );
        assert_eq!(h.store.recent_runs(1).await.unwrap().len(), 1);
    }
);

contract!(
    planning_runs_the_groups_query_and_its_guards,
    |h| async move {
        h.seed(REVISIONS).await;
        h.seed_pages(&[("p1", "Title One"), ("p2", ""), ("p3", "Title Three")])
            .await;
        let spec = spec(TITLES);
        let mut rows = h.store.group_rows(&spec, &Scope::All).await.unwrap();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        let keys: Vec<(&str, Option<&str>, &Value)> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.label.as_deref(), &r.params["title"]))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("p1", Some("p1"), &json!("Title One")),
                ("p2", Some("p2"), &json!("")),
                ("p3", Some("p3"), &json!("Title Three")),
            ]
        );
        // The requested keys go in as $1 / ?1.
        let scope = Scope::Groups(vec!["p3".into(), "p9".into()]);
        let some = h.store.group_rows(&spec, &scope).await.unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].key, "p3");
        // A job without groups has none.
        assert!(h
            .store
            .group_rows(&super::spec(RENAME), &Scope::All)
            .await
            .unwrap()
            .is_empty());

        // --all: the page without a title is skipped, its revisions are not planned.
        let all = plan(h, &spec, Mode::DryRun, "run-groups").await;
        let status: Vec<(&str, Option<&str>)> = all
            .groups
            .iter()
            .map(|g| (g.key.as_str(), g.reason()))
            .collect();
        assert_eq!(
            status,
            vec![
                ("p1", None),
                ("p2", Some("the page has no title")),
                ("p3", None)
            ]
        );
        assert_eq!(all.shards_total, 3);
        let items = h
        .raw
        .texts("SELECT key FROM backfill_item WHERE run_id = 'run-groups' ORDER BY shard_no, item_no")
        .await;
        assert_eq!(items, vec!["1", "2", "5", "6", "7"]);
        let groups = h
        .raw
        .texts("SELECT group_key FROM backfill_item WHERE run_id = 'run-groups' ORDER BY shard_no, item_no")
        .await;
        assert_eq!(groups, vec!["p1", "p1", "p3", "p3", "p3"]);

        // Named groups: an unknown key is planned as unknown.
        let named = plan_scoped(h, &spec, Mode::DryRun, "run-named", &scope, None).await;
        let status: Vec<(&str, Option<&str>)> = named
            .groups
            .iter()
            .map(|g| (g.key.as_str(), g.reason()))
            .collect();
        assert_eq!(status, vec![("p3", None), ("p9", Some("unknown key"))]);
        assert_eq!(named.shards_total, 2);
        let rec = h.store.load_run("run-named").await.unwrap().unwrap();
        assert_eq!(rec.scope, "p3,p9");
        assert_eq!(rec.scope_value, scope);

        // The whole run, with the group's parameter applied.
        let done = run_to_end(h, "run-groups").await;
        assert!(matches!(done, Reduced::Finished(_)), "{done:?}");
        let rec = h.store.load_run("run-groups").await.unwrap().unwrap();
        assert_eq!(rec.state, RunState::Done);
        assert_eq!(counts(&rec.tally), (5, 5, 0, 0, 0, 0));
        // A dry run writes nothing.
        assert_eq!(h.content(1).await, json!({"institute_text": "A1"}));
    }
);

contract!(an_empty_plan_is_finished_at_once, |h| async move {
    let spec = spec(RENAME);
    let planned = plan(h, &spec, Mode::Commit, "run-empty").await;
    assert_eq!(planned.shards_total, 0);
    let rec = h.store.load_run("run-empty").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Done);
    assert_eq!(rec.shards_total, 0);
    assert!(rec.summary.is_some());
    assert!(h.store.shards("run-empty").await.unwrap().is_empty());
    assert!(h
        .store
        .active_runs("contract-rename")
        .await
        .unwrap()
        .is_empty());
    let finished = h
        .raw
        .i64("SELECT count(*) FROM backfill_run WHERE run_id = 'run-empty' AND finished_at IS NOT NULL")
        .await;
    assert_eq!(finished, 1);
});

contract!(a_key_that_is_not_an_integer_is_bad_input, |h| async move {
    h.seed(&[(1, "p1", "{}")]).await;
    let text = RENAME.replace(
        "SELECT id AS key FROM wagtailcore_revision",
        "SELECT 'abc' AS key FROM wagtailcore_revision",
    );
    let spec = spec(&text);
    let err = h
        .store
        .create_run(
            NewRun {
                run_id: "run-bad",
                spec: &spec,
                mode: Mode::DryRun,
                scope: &Scope::All,
                shard_size: 2,
                sample: None,
                kind: RunKind::Forward,
                schedule: None,
            },
            Vec::<PlannedGroup>::new(),
            None,
        )
        .await
        .unwrap_err();
    match err {
        StoreError::Input(m) => assert!(m.contains("`abc`") && m.contains("key_type"), "{m}"),
        other => panic!("expected Input, got {other:?}"),
    }
    // Nothing of the run was recorded.
    assert!(h.store.load_run("run-bad").await.unwrap().is_none());
    assert_eq!(h.raw.i64("SELECT count(*) FROM backfill_run").await, 0);
    assert_eq!(h.raw.i64("SELECT count(*) FROM backfill_shard").await, 0);
});

contract!(
    a_sampled_run_plans_a_stable_share_of_the_rows,
    |h| async move {
        let rows: Vec<(i64, String)> = (1..=200).map(|i| (i, format!("p{}", i % 3))).collect();
        let seed: Vec<(i64, &str, &str)> = rows
            .iter()
            .map(|(i, p)| (*i, p.as_str(), r#"{"institute_text": "x"}"#))
            .collect();
        h.seed(&seed).await;
        let spec = spec(RENAME);
        plan_scoped(
            h,
            &spec,
            Mode::DryRun,
            "run-sample",
            &Scope::All,
            Some(0.25),
        )
        .await;
        let n = h
            .raw
            .i64("SELECT count(*) FROM backfill_item WHERE run_id = 'run-sample'")
            .await;
        assert!(n > 20 && n < 90, "a quarter of 200, give or take: {n}");
        let rec = h.store.load_run("run-sample").await.unwrap().unwrap();
        assert_eq!(rec.sample, Some(0.25));
        assert!(
            rec.describe_kind().contains("sample of 25%"),
            "{}",
            rec.describe_kind()
        );
        // The same keys every time.
        plan_scoped(
            h,
            &spec,
            Mode::DryRun,
            "run-sample-2",
            &Scope::All,
            Some(0.25),
        )
        .await;
        let a = h
            .raw
            .texts("SELECT key FROM backfill_item WHERE run_id = 'run-sample' ORDER BY key")
            .await;
        let b = h
            .raw
            .texts("SELECT key FROM backfill_item WHERE run_id = 'run-sample-2' ORDER BY key")
            .await;
        assert_eq!(a, b);
    }
);

contract!(text_keys_and_integer_keys_given_as_text, |h| async move {
    let cast = if h.pg() { "::jsonb" } else { "" };
    h.raw
        .exec(&format!(
            "INSERT INTO contract_doc (slug, content) VALUES ('b', '{{\"institute_text\": \"B\"}}'{cast});
             INSERT INTO contract_doc (slug, content) VALUES ('a', '{{\"institute_text\": \"A\"}}'{cast});
             INSERT INTO contract_doc (slug, content) VALUES ('c', '{{\"other\": 1}}'{cast})"
        ))
        .await;
    let text = RENAME
        .replace(
            "table = \"wagtailcore_revision\"",
            "table = \"contract_doc\"",
        )
        .replace("key = \"id\"", "key = \"slug\"")
        .replace("key_type = \"integer\"", "key_type = \"text\"")
        .replace(
            "SELECT id AS key FROM wagtailcore_revision",
            "SELECT slug AS key FROM contract_doc",
        );
    let spec = spec(&text);
    plan(h, &spec, Mode::Commit, "run-text").await;
    let cut: Vec<(String, String)> = h
        .store
        .shards("run-text")
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.first_key, s.last_key))
        .collect();
    assert_eq!(
        cut,
        vec![("a".into(), "b".into()), ("c".into(), "c".into())]
    );
    let ints = h
        .raw
        .i64("SELECT count(*) FROM backfill_item WHERE run_id = 'run-text' AND key_int IS NULL")
        .await;
    assert_eq!(ints, 3, "text keys have no integer form");
    assert!(matches!(
        run_to_end(h, "run-text").await,
        Reduced::Finished(_)
    ));
    let rec = h.store.load_run("run-text").await.unwrap().unwrap();
    assert_eq!(counts(&rec.tally), (3, 2, 1, 0, 0, 0));
    let content = if h.pg() { "content::text" } else { "content" };
    let a = h
        .raw
        .opt_text(&format!(
            "SELECT {content} FROM contract_doc WHERE slug = 'a'"
        ))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&a).unwrap(),
        json!({"institution_text": "A"})
    );
    let original = h.store.load_run("run-text").await.unwrap().unwrap();
    h.store
        .create_derived_run("run-text-rev", &original, 10, Derived::Revert(Mode::Commit))
        .await
        .unwrap();
    run_to_end(h, "run-text-rev").await;
    let a = h
        .raw
        .opt_text(&format!(
            "SELECT {content} FROM contract_doc WHERE slug = 'a'"
        ))
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&a).unwrap(),
        json!({"institute_text": "A"})
    );

    // Integer keys the query returns as text are ordered by value and
    // recorded in their canonical spelling.
    h.seed(&[
        (10, "p1", r#"{"institute_text": "x"}"#),
        (9, "p1", r#"{"institute_text": "x"}"#),
        (100, "p1", r#"{"institute_text": "x"}"#),
    ])
    .await;
    let text = RENAME.replace("shard_size = 2", "shard_size = 10").replace(
        "SELECT id AS key FROM wagtailcore_revision",
        "SELECT '0' || CAST(id AS text) AS key FROM wagtailcore_revision",
    );
    plan(h, &super::spec(&text), Mode::DryRun, "run-padded").await;
    let keys = h
        .raw
        .texts("SELECT key FROM backfill_item WHERE run_id = 'run-padded' ORDER BY item_no")
        .await;
    assert_eq!(keys, vec!["9", "10", "100"]);
    let ints = h
        .raw
        .i64("SELECT CAST(sum(key_int) AS bigint) FROM backfill_item WHERE run_id = 'run-padded'")
        .await;
    assert_eq!(ints, 119);
    assert!(matches!(
        run_to_end(h, "run-padded").await,
        Reduced::Finished(_)
    ));
    let rec = h.store.load_run("run-padded").await.unwrap().unwrap();
    assert_eq!(counts(&rec.tally), (3, 3, 0, 0, 0, 0));
});

// ---- claims and leases ------------------------------------------------------------

contract!(
    claims_take_shards_within_the_in_flight_limit,
    |h| async move {
        h.seed(REVISIONS).await;
        plan(h, &spec(RENAME), Mode::Commit, "run-claim").await;
        let s = &h.store;
        assert_eq!(
            s.claim_shard("run-claim", 0, "w1", Some(1)).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(s.shards_running("run-claim").await.unwrap(), 1);
        // The limit is reached for another shard, not for the one held.
        assert_eq!(
            s.claim_shard("run-claim", 1, "w2", Some(1)).await.unwrap(),
            Claim::Busy
        );
        assert_eq!(
            s.claim_shard("run-claim", 1, "w2", Some(2)).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            s.claim_shard("run-claim", 2, "w2", None).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(s.shards_running("run-claim").await.unwrap(), 3);
        // A redelivered task takes over the shard.
        assert_eq!(
            s.claim_shard("run-claim", 0, "w3", Some(1)).await.unwrap(),
            Claim::Busy,
            "two other shards are in flight"
        );
        assert_eq!(
            s.claim_shard("run-claim", 0, "w3", None).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            h.raw
                .opt_text(
                    "SELECT worker FROM backfill_shard WHERE run_id = 'run-claim' AND shard_no = 0"
                )
                .await
                .as_deref(),
            Some("w3")
        );
        let leased = h
        .raw
        .i64("SELECT count(*) FROM backfill_shard WHERE run_id = 'run-claim' AND state = 'running' AND lease_until IS NOT NULL AND started_at IS NOT NULL")
        .await;
        assert_eq!(leased, 3);
        // An expired lease no longer holds a slot.
        h.raw
        .exec("UPDATE backfill_shard SET lease_until = NULL WHERE run_id = 'run-claim' AND shard_no IN (1, 2)")
        .await;
        assert_eq!(
            s.claim_shard("run-claim", 3, "w1", Some(2)).await.unwrap(),
            Claim::Claimed
        );
        assert_eq!(
            s.claim_shard("run-claim", 9, "w1", None).await.unwrap(),
            Claim::Unknown
        );
        assert_eq!(
            s.claim_shard("no-run", 0, "w1", Some(1)).await.unwrap(),
            Claim::Unknown
        );
        // A finished shard is not claimed again.
        map_shard(h, "run-claim", 0, "w3", 100).await;
        assert_eq!(
            s.claim_shard("run-claim", 0, "w1", None).await.unwrap(),
            Claim::Finished
        );
        assert_eq!(s.shards_running("run-claim").await.unwrap(), 3);
        let lease = h
        .raw
        .i64("SELECT count(*) FROM backfill_shard WHERE run_id = 'run-claim' AND shard_no = 0 AND lease_until IS NULL AND elapsed_ms IS NOT NULL")
        .await;
        assert_eq!(lease, 1, "finishing ends the lease and times the shard");
    }
);

// ---- fetching and committing shards --------------------------------------------------

contract!(
    fetch_then_commit_writes_with_before_images,
    |h| async move {
        h.seed(REVISIONS).await;
        let spec = spec(RENAME);
        plan(h, &spec, Mode::Commit, "run-commit").await;
        let target = &spec.targets[0];
        let rec = h.store.load_run("run-commit").await.unwrap().unwrap();
        let normalised = h
            .store
            .normalised_columns("wagtailcore_revision")
            .await
            .unwrap();
        if h.pg() {
            assert_eq!(normalised, BTreeSet::from(["content".to_string()]));
        } else {
            assert!(normalised.is_empty());
        }
        assert_eq!(h.store.shard_done("run-commit", 2).await.unwrap(), None);
        let ShardRows::Pending(rows) = h
            .store
            .fetch_shard("run-commit", target, 2, true)
            .await
            .unwrap()
        else {
            panic!("a fresh shard")
        };
        let keys: Vec<(&str, &str, u64)> = rows
            .iter()
            .map(|r| (r.key.as_str(), r.group.as_str(), r.refs))
            .collect();
        // A job without groups has one group per target, named after it.
        assert_eq!(keys, vec![("5", "revisions", 1), ("6", "revisions", 1)]);
        let doc: Value = serde_json::from_str(
            rows[0].columns.as_ref().unwrap()["content"]
                .as_deref()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(doc, json!({"institute_text": "A5"}));
        if h.pg() {
            assert!(
                rows[0].version.is_some(),
                "PostgreSQL reads the row version"
            );
            assert!(
                rows[0].digests["content"].is_some(),
                "digests were asked for"
            );
        } else {
            assert!(rows[0].version.is_none() && rows[0].digests.is_empty());
        }
        let evaluated = evaluate(h, &rec, target, rows).await;
        assert!(matches!(evaluated[0].outcome, RowOutcome::Changed(_)));
        assert!(matches!(evaluated[1].outcome, RowOutcome::Error(_)));
        let committed = h
            .store
            .commit_shard(ShardCommit {
                run_id: "run-commit",
                shard_no: 2,
                target,
                mode: Mode::Commit,
                worker: "w1",
                rows: evaluated,
                retry: None,
            })
            .await
            .unwrap();
        let Committed::Applied(tally) = committed.clone() else {
            panic!("applied: {committed:?}")
        };
        assert_eq!(counts(&tally), (2, 1, 0, 0, 0, 1));
        assert_eq!(h.content(5).await, json!({"institution_text": "A5"}));
        assert_eq!(
            h.content(6).await,
            json!({"institute_text": "x", "institution_text": "y"}),
            "a row in error is not written"
        );
        // The row in error is quarantined.
        let q = h.store.quarantined("run-commit").await.unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!((q[0].0.as_str(), q[0].1.as_str()), ("revisions", "6"));
        assert!(q[0].2.contains("institution_text"), "{}", q[0].2);
        // The before-image of what was written.
        assert_eq!(h.store.before_image_count("run-commit").await.unwrap(), 1);
        let images = h
            .store
            .before_images("run-commit", "revisions", &["5".into(), "6".into()])
            .await
            .unwrap();
        assert_eq!(images.len(), 1);
        match &images["5"]["content"] {
            BeforeImage::Value(Some(t)) => {
                assert!(!h.pg(), "SQLite keeps whole values");
                assert_eq!(
                    serde_json::from_str::<Value>(t).unwrap(),
                    json!({"institute_text": "A5"})
                );
            }
            BeforeImage::Patch {
                patch,
                after_version,
            } => {
                assert!(h.pg(), "PostgreSQL keeps jsonb inverse patches");
                assert!(patch.contains("institute_text"), "{patch}");
                assert!(!after_version.is_empty());
            }
            other => panic!("unexpected before-image {other:?}"),
        }
        assert!(h
            .store
            .before_images("run-commit", "revisions", &[])
            .await
            .unwrap()
            .is_empty());
        // The shard is done: its stored result comes back, nothing again.
        assert_eq!(
            h.store.shard_done("run-commit", 2).await.unwrap(),
            Some(tally.clone())
        );
        assert!(matches!(
            h.store.fetch_shard("run-commit", target, 2, false).await.unwrap(),
            ShardRows::Done(t) if t == tally
        ));
        let again = h
            .store
            .commit_shard(ShardCommit {
                run_id: "run-commit",
                shard_no: 2,
                target,
                mode: Mode::Commit,
                worker: "w2",
                rows: Vec::new(),
                retry: None,
            })
            .await
            .unwrap();
        assert_eq!(again, Committed::AlreadyDone(tally.clone()));
        assert!(matches!(
            h.store
                .open_shard(ShardWork {
                    run_id: "run-commit",
                    shard_no: 2,
                    target,
                    mode: Mode::Commit,
                    worker: "w2",
                    retry: None,
                })
                .await
                .unwrap(),
            OpenShard::Done(t) if t == tally
        ));
        assert_eq!(h.store.before_image_count("run-commit").await.unwrap(), 1);
        let worker = h
            .raw
            .opt_text(
                "SELECT worker FROM backfill_shard WHERE run_id = 'run-commit' AND shard_no = 2",
            )
            .await;
        assert_eq!(worker.as_deref(), Some("w1"));
        // A shard the ledger does not have is refused: PostgreSQL when it is
        // opened, SQLite (which reads the shard before its transaction) when
        // it is finished; either way nothing is recorded.
        let unknown = ShardWork {
            run_id: "run-commit",
            shard_no: 42,
            target,
            mode: Mode::Commit,
            worker: "w2",
            retry: None,
        };
        match h.store.open_shard(unknown).await {
            Err(StoreError::Data(m)) => {
                assert!(h.pg(), "SQLite refuses at finish");
                assert!(m.contains("not in the ledger"), "{m}");
            }
            Ok(OpenShard::Open(mut tx)) => {
                assert!(!h.pg(), "PostgreSQL refuses at open");
                assert!(tx
                    .next_batch(BatchLimits::default())
                    .await
                    .unwrap()
                    .unwrap()
                    .is_empty());
                match tx.finish().await {
                    Err(StoreError::Data(m)) => assert!(m.contains("not in the ledger"), "{m}"),
                    other => panic!("expected Data, got {other:?}"),
                }
            }
            Ok(OpenShard::Done(_)) => panic!("an unknown shard is not done"),
            Err(other) => panic!("expected Data, got {other:?}"),
        }
        assert!(matches!(
            h.store
                .commit_shard(ShardCommit {
                    run_id: "run-commit",
                    shard_no: 42,
                    target,
                    mode: Mode::Commit,
                    worker: "w2",
                    rows: Vec::new(),
                    retry: None,
                })
                .await,
            Err(StoreError::Data(_))
        ));
    }
);

contract!(a_dry_run_writes_nothing, |h| async move {
    h.seed(REVISIONS).await;
    plan(h, &spec(RENAME), Mode::DryRun, "run-dry").await;
    let committed = map_shard(h, "run-dry", 0, "w1", 100).await;
    assert_eq!(counts(committed.tally()), (2, 2, 0, 0, 0, 0));
    assert_eq!(h.content(1).await, json!({"institute_text": "A1"}));
    assert_eq!(h.store.before_image_count("run-dry").await.unwrap(), 0);
});

contract!(a_shard_is_read_and_written_in_batches, |h| async move {
    h.seed(REVISIONS).await;
    let mut text = RENAME.replace("shard_size = 2", "shard_size = 5");
    text.push('\n');
    let spec = spec(&text);
    plan(h, &spec, Mode::Commit, "run-batches").await;
    let rec = h.store.load_run("run-batches").await.unwrap().unwrap();
    let target = &spec.targets[0];
    let work = ShardWork {
        run_id: "run-batches",
        shard_no: 0,
        target,
        mode: Mode::Commit,
        worker: "w1",
        retry: None,
    };
    let OpenShard::Open(mut tx) = h.store.open_shard(work).await.unwrap() else {
        panic!("open")
    };
    let limits = BatchLimits {
        rows: 2,
        bytes: BatchLimits::DEFAULT_BYTES,
    };
    let mut sizes = Vec::new();
    let mut keys = Vec::new();
    while let Some(rows) = tx.next_batch(limits).await.unwrap() {
        sizes.push(rows.len());
        keys.extend(rows.iter().map(|r| r.key.clone()));
        let evaluated = evaluate(h, &rec, target, rows).await;
        tx.write(evaluated).await.unwrap();
    }
    assert_eq!(keys, vec!["1", "2", "3", "4", "5"]);
    if h.pg() {
        assert_eq!(sizes, vec![2, 2, 1], "PostgreSQL keeps to the batch limit");
    } else {
        assert_eq!(sizes, vec![5], "SQLite reads the shard in one go");
    }
    let Committed::Applied(tally) = tx.finish().await.unwrap() else {
        panic!("applied")
    };
    assert_eq!(counts(&tally), (5, 4, 1, 0, 0, 0));
    for (id, want) in [
        (1, json!({"institution_text": "A1"})),
        (3, json!({"institution_text": "A3", "title": "old"})),
        (4, json!({"institution_text": "done"})),
        (5, json!({"institution_text": "A5"})),
    ] {
        assert_eq!(h.content(id).await, want, "revision {id}");
    }
    // A shard dropped before `finish` leaves nothing behind.
    let work = ShardWork {
        shard_no: 1,
        ..work
    };
    let OpenShard::Open(mut tx) = h.store.open_shard(work).await.unwrap() else {
        panic!("open")
    };
    let rows = tx.next_batch(limits).await.unwrap().unwrap();
    let evaluated = evaluate(h, &rec, target, rows).await;
    tx.write(evaluated).await.unwrap();
    drop(tx);
    assert_eq!(h.content(7).await, json!({"institute_text": "A7"}));
    assert_eq!(h.store.shard_done("run-batches", 1).await.unwrap(), None);
});

contract!(
    a_row_edited_since_it_was_read_is_a_conflict,
    |h| async move {
        h.seed(REVISIONS).await;
        let spec = spec(RENAME);
        plan(h, &spec, Mode::Commit, "run-cas").await;
        let rec = h.store.load_run("run-cas").await.unwrap().unwrap();
        let target = &spec.targets[0];
        let fetch = |shard: u32| {
            let store = h.store.clone();
            let target = target.clone();
            async move {
                match store
                    .fetch_shard("run-cas", &target, shard, false)
                    .await
                    .unwrap()
                {
                    ShardRows::Pending(rows) => rows,
                    ShardRows::Done(_) => panic!("fresh shard"),
                }
            }
        };
        // Report: the application's edit stays.
        let rows = evaluate(h, &rec, target, fetch(0).await).await;
        h.set_content(1, r#"{"institute_text": "edited"}"#).await;
        let committed = h
            .store
            .commit_shard(ShardCommit {
                run_id: "run-cas",
                shard_no: 0,
                target,
                mode: Mode::Commit,
                worker: "w1",
                rows,
                retry: None,
            })
            .await
            .unwrap();
        assert_eq!(counts(committed.tally()), (2, 1, 0, 0, 1, 0));
        assert_eq!(committed.tally().conflicts_retried, 0);
        assert_eq!(h.content(1).await, json!({"institute_text": "edited"}));
        assert_eq!(h.content(2).await, json!({"institution_text": "A2"}));
        assert_eq!(h.store.before_image_count("run-cas").await.unwrap(), 1);

        // Retry: the row is read again and the rules applied to the edit.
        let rows = evaluate(h, &rec, target, fetch(1).await).await;
        h.set_content(3, r#"{"institute_text": "edited 3"}"#).await;
        let normalised = h.store.normalised_columns(&target.table).await.unwrap();
        let empty = Map::new();
        let again = |_group: &str, cols: &BTreeMap<String, Option<String>>| {
            evaluate_row(
                target,
                &RowInput {
                    key: "",
                    columns: cols,
                    params: &empty,
                    normalised: &normalised,
                },
                None,
            )
            .outcome
        };
        let retry: &Reevaluate<'_> = &again;
        let committed = h
            .store
            .commit_shard(ShardCommit {
                run_id: "run-cas",
                shard_no: 1,
                target,
                mode: Mode::Commit,
                worker: "w1",
                rows,
                retry: Some(retry),
            })
            .await
            .unwrap();
        assert_eq!(counts(committed.tally()), (2, 1, 1, 0, 0, 0));
        assert_eq!(committed.tally().conflicts_retried, 1);
        assert_eq!(h.content(3).await, json!({"institution_text": "edited 3"}));
        // Deleted since it was read: skipped after the retry.
        let rows = evaluate(h, &rec, target, fetch(3).await).await;
        h.raw
            .exec("DELETE FROM wagtailcore_revision WHERE id = 7")
            .await;
        let committed = h
            .store
            .commit_shard(ShardCommit {
                run_id: "run-cas",
                shard_no: 3,
                target,
                mode: Mode::Commit,
                worker: "w1",
                rows,
                retry: Some(retry),
            })
            .await
            .unwrap();
        assert_eq!(counts(committed.tally()), (1, 0, 0, 1, 0, 0));
        // A row gone before the read is skipped at the read.
        let rows = fetch(2).await;
        assert!(rows.iter().all(|r| r.columns.is_some()));
        h.raw
            .exec("DELETE FROM wagtailcore_revision WHERE id = 5")
            .await;
        let rows = fetch(2).await;
        assert!(rows[0].columns.is_none(), "revision 5 is gone");
        assert!(rows[1].columns.is_some());
    }
);

// ---- reducing ----------------------------------------------------------------------

contract!(reduce_folds_each_shard_exactly_once, |h| async move {
    h.seed(REVISIONS).await;
    plan(h, &spec(RENAME), Mode::Commit, "run-reduce").await;
    let s = &h.store;
    // Not committed yet: nothing folded.
    assert_eq!(
        s.reduce(&result_of("run-reduce", 0, Tally::default()))
            .await
            .unwrap(),
        Reduced::NotCommitted
    );
    assert_eq!(
        s.reduce(&result_of("run-reduce", 9, Tally::default()))
            .await
            .unwrap(),
        Reduced::UnknownShard
    );
    let mut tallies = Vec::new();
    for shard in 0..4 {
        tallies.push(map_shard(h, "run-reduce", shard, "w1", 100).await);
    }
    // The ledger's result is folded, not the message's.
    let forged = {
        let mut t = Tally::default();
        t.counts.processed = 1000;
        t
    };
    assert_eq!(
        s.reduce(&result_of("run-reduce", 0, forged)).await.unwrap(),
        Reduced::Counted
    );
    assert_eq!(
        s.reduce(&result_of("run-reduce", 0, Tally::default()))
            .await
            .unwrap(),
        Reduced::Duplicate
    );
    let rec = s.load_run("run-reduce").await.unwrap().unwrap();
    assert_eq!(rec.shards_reduced, 1);
    assert_eq!(counts(&rec.tally), (2, 2, 0, 0, 0, 0));
    assert_eq!(rec.state, RunState::Running);
    for shard in 1..3 {
        assert_eq!(
            s.reduce(&result_of(
                "run-reduce",
                shard,
                tallies[shard as usize].tally().clone()
            ))
            .await
            .unwrap(),
            Reduced::Counted
        );
    }
    let last = s
        .reduce(&result_of("run-reduce", 3, Tally::default()))
        .await
        .unwrap();
    let Reduced::Finished(summary) = last else {
        panic!("finished: {last:?}")
    };
    assert!(!summary.is_empty());
    let rec = s.load_run("run-reduce").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Failed, "a row had an error");
    assert_eq!(rec.shards_reduced, 4);
    assert_eq!(counts(&rec.tally), (7, 5, 1, 0, 0, 1));
    assert_eq!(rec.summary.as_deref(), Some(summary.as_str()));
    assert!(s
        .shards("run-reduce")
        .await
        .unwrap()
        .iter()
        .all(|x| x.reduced));
    assert_eq!(
        s.reduce(&result_of("run-reduce", 3, Tally::default()))
            .await
            .unwrap(),
        Reduced::Duplicate
    );
    assert!(s.active_runs("contract-rename").await.unwrap().is_empty());
    let finished = h
        .raw
        .i64("SELECT count(*) FROM backfill_run WHERE run_id = 'run-reduce' AND finished_at IS NOT NULL")
        .await;
    assert_eq!(finished, 1);
});

/// The groups of a run's tally as its record (not its group records) holds them.
async fn groups_in_run_record(h: &Harness, run_id: &str) -> Map<String, Value> {
    let text = h
        .raw
        .opt_text(&format!(
            "SELECT CAST(tally AS text) FROM backfill_run WHERE run_id = '{run_id}'"
        ))
        .await
        .unwrap();
    let tally: Value = serde_json::from_str(&text).unwrap();
    tally["groups"].as_object().cloned().unwrap_or_default()
}

contract!(
    a_shard_reads_the_parameters_of_its_own_groups_only,
    |h| async move {
        h.seed(REVISIONS).await;
        h.seed_pages(&[("p1", "Title One"), ("p2", ""), ("p3", "Title Three")])
            .await;
        let spec = spec(TITLES);
        plan(h, &spec, Mode::DryRun, "run-params").await;
        assert!(h.store.has_group_params("run-params").await.unwrap());
        let rec = h.store.load_run_plan("run-params").await.unwrap().unwrap();
        let shards = h.store.shards("run-params").await.unwrap();
        assert!(shards.len() > 1, "{shards:?}");
        for shard in &shards {
            let held = h
            .raw
            .texts(&format!(
                "SELECT DISTINCT group_key FROM backfill_item WHERE run_id = 'run-params' AND shard_no = {} ORDER BY group_key",
                shard.shard_no
            ))
            .await;
            let params = h
                .store
                .shard_group_params("run-params", shard.shard_no)
                .await
                .unwrap();
            let mut read: Vec<String> = params.keys().cloned().collect();
            read.sort();
            assert_eq!(read, held, "shard {}", shard.shard_no);
            for (key, p) in &params {
                let planned = rec.plan.groups.iter().find(|g| &g.key == key).unwrap();
                assert_eq!(p, &planned.params, "group {key}");
            }
        }
        let p1 = h.store.shard_group_params("run-params", 0).await.unwrap();
        assert_eq!(p1["p1"]["title"], "Title One");
        // A run planned by an earlier release has its groups' parameters in its
        // plan only: its workers read the plan.
        h.raw
            .exec("DELETE FROM backfill_group WHERE run_id = 'run-params'")
            .await;
        assert!(!h.store.has_group_params("run-params").await.unwrap());
    }
);

/// A new run's groups and evaluated plan, for `create_run`.
async fn planned_groups(h: &Harness, spec: &JobSpec) -> Vec<PlannedGroup> {
    let rows = h.store.group_rows(spec, &Scope::All).await.unwrap();
    backfill_job::plan::evaluate_groups(spec, &Scope::All, rows)
}

fn new_run<'a>(run_id: &'a str, spec: &'a JobSpec) -> NewRun<'a> {
    NewRun {
        run_id,
        spec,
        mode: Mode::DryRun,
        scope: &Scope::All,
        shard_size: spec.shard_size,
        sample: None,
        kind: RunKind::Forward,
        schedule: None,
    }
}

/// A run's items as (shard, key, group), in shard and item order.
async fn items_of(h: &Harness, run_id: &str) -> Vec<String> {
    h.raw
        .texts(&format!(
            "SELECT CAST(shard_no AS text) || ' ' || key || ' ' || group_key FROM backfill_item
             WHERE run_id = '{run_id}' ORDER BY shard_no, item_no"
        ))
        .await
}

contract!(
    a_run_is_published_while_planned_and_an_interrupted_plan_goes_on,
    |h| async move {
        h.seed(REVISIONS).await;
        h.seed_pages(&[("p1", "Title One"), ("p2", ""), ("p3", "Title Three")])
            .await;
        // Revisions 1, 2, 5, 6 and 7 are in eligible pages: three shards of two.
        let spec = spec(TITLES);
        plan(h, &spec, Mode::DryRun, "run-whole").await;
        let whole = h.store.load_run("run-whole").await.unwrap().unwrap();
        assert_eq!(h.store.interrupted_plan("run-whole").await.unwrap(), None);
        let keys = |items: Vec<String>| -> Vec<String> {
            items
                .iter()
                .map(|i| i.split_once(' ').unwrap().1.to_string())
                .collect()
        };
        let whole_items = keys(items_of(h, "run-whole").await);
        assert_eq!(whole_items.len(), 5, "{whole_items:?}");
        assert_eq!(whole.shards_total, 3);

        let (sink, mut tasks) = backfill_store::ShardSink::new(&h.store.ledger().id);
        let groups = planned_groups(h, &spec).await;
        if h.kind == Kind::Sqlite {
            // One transaction, published afterwards: nothing is sent while
            // planning, and a run is never left being planned.
            h.store
                .create_run(new_run("run-cut", &spec), groups, Some(&sink))
                .await
                .unwrap();
            assert!(tasks.try_recv().is_err());
            assert_eq!(h.store.interrupted_plan("run-cut").await.unwrap(), None);
            assert!(h
                .store
                .continue_run(new_run("run-cut", &spec), None)
                .await
                .is_err());
            return;
        }
        // The coordinator stops once a shard's task has come: as a process
        // killed there, the planning is dropped mid-way.
        let first = {
            let planning = h
                .store
                .create_run(new_run("run-cut", &spec), groups, Some(&sink));
            tokio::select! {
                _ = planning => panic!("planned whole before a task was taken"),
                t = tasks.recv() => t.unwrap(),
            }
        };
        // The task came once its shard was committed, items and all.
        assert_eq!(first.shard_no, 0);
        assert_eq!(first.ledger, h.store.ledger().id);
        let recorded = h
            .raw
            .i64("SELECT count(*) FROM backfill_item WHERE run_id = 'run-cut' AND shard_no = 0")
            .await;
        assert_eq!(recorded, first.rows as i64);
        assert_eq!(
            (first.first_key.as_str(), first.last_key.as_str()),
            ("1", "2")
        );
        // Left being planned: its shard size kept, its groups recorded
        // (mappers read them), its count of shards those recorded.
        assert_eq!(h.store.interrupted_plan("run-cut").await.unwrap(), Some(2));
        assert!(h.store.has_group_params("run-cut").await.unwrap());
        let shards_then = h
            .raw
            .i64("SELECT count(*) FROM backfill_shard WHERE run_id = 'run-cut'")
            .await;
        assert!((1..3).contains(&shards_then), "{shards_then}");
        assert_eq!(
            h.raw
                .i64("SELECT CAST(shards_total AS bigint) FROM backfill_run WHERE run_id = 'run-cut'")
                .await,
            shards_then
        );
        let status = h.store.run_status("run-cut").await.unwrap().unwrap();
        assert!(status.planning);
        assert_eq!(status.eta_seconds, None);
        // Its shards mapped and folded meanwhile do not end it, however many.
        let fold = |run: &'static str, shard: u32| async move {
            let t = map_shard(h, run, shard, "w1", 10).await;
            h.store
                .reduce(&result_of(run, shard, t.tally().clone()))
                .await
                .unwrap()
        };
        for shard in 0..shards_then as u32 {
            assert_eq!(
                fold("run-cut", shard).await,
                Reduced::Counted,
                "shard {shard}"
            );
        }
        let rec = h.store.load_run("run-cut").await.unwrap().unwrap();
        assert_eq!(
            (rec.shards_reduced as i64, rec.state),
            (shards_then, RunState::Running)
        );

        // The next coordinator plans the rest: every item once, numbered on.
        drop(sink);
        let (sink, mut tasks) = backfill_store::ShardSink::new(&h.store.ledger().id);
        h.store
            .continue_run(new_run("run-cut", &spec), Some(&sink))
            .await
            .unwrap();
        drop(sink);
        let mut sent = Vec::new();
        while let Some(t) = tasks.recv().await {
            sent.push(t.shard_no);
        }
        let cut_items = items_of(h, "run-cut").await;
        let mut sorted = keys(cut_items.clone());
        sorted.sort_by_key(|k| k.split(' ').next().unwrap().parse::<i64>().unwrap());
        assert_eq!(sorted, whole_items, "{cut_items:?}");
        let shard_nos: Vec<i64> = cut_items
            .iter()
            .map(|i| i.split(' ').next().unwrap().parse().unwrap())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let n = shard_nos.len() as i64;
        assert_eq!(shard_nos, (0..n).collect::<Vec<_>>());
        assert_eq!(
            sent,
            (shards_then as u32..n as u32).collect::<Vec<_>>(),
            "the shards planned on, and only they, are sent"
        );
        assert_eq!(h.store.interrupted_plan("run-cut").await.unwrap(), None);
        assert!(
            !h.store
                .run_status("run-cut")
                .await
                .unwrap()
                .unwrap()
                .planning
        );
        // Folded to the end, it counts what the run planned whole counts.
        for shard in 0..3 {
            fold("run-whole", shard).await;
        }
        for shard in shards_then as u32..n as u32 {
            let r = fold("run-cut", shard).await;
            assert_eq!(
                matches!(r, Reduced::Finished(_)),
                shard + 1 == n as u32,
                "{r:?}"
            );
        }
        let whole = h.store.load_run("run-whole").await.unwrap().unwrap();
        let cut = h.store.load_run("run-cut").await.unwrap().unwrap();
        assert_eq!(cut.shards_total as i64, n);
        assert_eq!(cut.state, whole.state);
        assert!(cut.state.is_finished());
        assert_eq!(counts(&cut.tally), counts(&whole.tally));
        assert_eq!(cut.tally.skipped_by_reason, whole.tally.skipped_by_reason);
        assert_eq!(
            cut.summary.clone().unwrap().replace("run-cut", "R"),
            whole.summary.clone().unwrap().replace("run-whole", "R")
        );
        let group_keys = |r: &backfill_store::RunRecord| -> Vec<String> {
            r.plan.groups.iter().map(|g| g.key.clone()).collect()
        };
        assert_eq!(group_keys(&cut), group_keys(&whole));
        assert_eq!(cut.tally.groups.len(), whole.tally.groups.len());
    }
);

contract!(groups_are_folded_in_records_of_their_own, |h| async move {
    h.seed(REVISIONS).await;
    h.seed_pages(&[("p1", "Title One"), ("p2", ""), ("p3", "Title Three")])
        .await;
    let spec = spec(TITLES);
    plan(h, &spec, Mode::DryRun, "run-g").await;
    assert!(groups_in_run_record(h, "run-g").await.is_empty());
    let group_keys = |run: &'static str| async move {
        h.raw
            .texts(&format!(
                "SELECT group_key FROM backfill_group_tally WHERE run_id = '{run}' ORDER BY group_key"
            ))
            .await
    };
    let planned = group_keys("run-g").await;
    assert!(!planned.contains(&"p1".to_string()), "{planned:?}");

    // Shard 0 holds revisions 1 and 2 of p1: only p1's record is written.
    assert_eq!(
        h.store.claim_shard("run-g", 0, "w1", None).await.unwrap(),
        Claim::Claimed
    );
    let first = map_shard(h, "run-g", 0, "w1", 100).await;
    assert_eq!(
        h.store
            .reduce(&result_of("run-g", 0, first.tally().clone()))
            .await
            .unwrap(),
        Reduced::Counted
    );
    let mut want = planned.clone();
    want.push("p1".into());
    want.sort();
    assert_eq!(group_keys("run-g").await, want);
    assert!(groups_in_run_record(h, "run-g").await.is_empty());
    let rec = h.store.load_run("run-g").await.unwrap().unwrap();
    assert_eq!(rec.tally.groups["p1"].counts.processed, 2);
    assert!(!rec.tally.groups.contains_key("p3"));

    let done = run_to_end(h, "run-g").await;
    assert!(matches!(done, Reduced::Finished(_)), "{done:?}");
    let whole = h.store.load_run("run-g").await.unwrap().unwrap();
    assert_eq!(whole.tally.groups["p1"].counts.processed, 2);
    assert_eq!(whole.tally.groups["p3"].counts.processed, 3);
    assert_eq!(whole.tally.groups["p3"].counts.changed, 3);
    assert_eq!(counts(&whole.tally), (5, 5, 0, 0, 0, 0));
    // The totals alone: the same counts, no groups.
    let totals = h.store.load_run_totals("run-g").await.unwrap().unwrap();
    assert_eq!(totals.tally.counts, whole.tally.counts);
    assert!(totals.tally.groups.is_empty());
    assert_eq!(totals.summary, whole.summary);
    assert!(
        totals.plan.groups.is_empty(),
        "the plan's groups are left out"
    );
    assert_eq!(totals.plan.shards_total, whole.plan.shards_total);
    // The plan with its groups, without their counts: what a worker reads.
    let planned = h.store.load_run_plan("run-g").await.unwrap().unwrap();
    assert_eq!(planned.plan.groups, whole.plan.groups);
    assert!(planned.tally.groups.is_empty());
    // The groups one at a time, as a report streams them: the plan's
    // groups in order, each with the counts the whole read gives it.
    assert!(backfill_store::Store::groups_stream(&totals));
    assert_eq!(
        h.store.plan_group_count("run-g").await.unwrap(),
        Some(whole.plan.groups.len() as u64)
    );
    assert_eq!(h.store.plan_group_count("no-such-run").await.unwrap(), None);
    let streamed: Vec<_> = {
        use futures::TryStreamExt;
        h.store.report_groups("run-g").try_collect().await.unwrap()
    };
    assert_eq!(streamed.len(), whole.plan.groups.len());
    for ((pg, g), want) in streamed.iter().zip(&whole.plan.groups) {
        assert_eq!(pg, want);
        assert_eq!(g.as_ref(), whole.tally.groups.get(&pg.key), "{}", pg.key);
    }
    assert!(streamed.iter().any(|(pg, g)| pg.key == "p3" && g.is_some()));

    // A run folded in part by a release that kept its groups inside the
    // run's record ends with the same tally.
    plan(h, &spec, Mode::DryRun, "run-old").await;
    assert_eq!(
        h.store.claim_shard("run-old", 0, "w1", None).await.unwrap(),
        Claim::Claimed
    );
    let first = map_shard(h, "run-old", 0, "w1", 100).await;
    h.store
        .reduce(&result_of("run-old", 0, first.tally().clone()))
        .await
        .unwrap();
    let part = h.store.load_run("run-old").await.unwrap().unwrap().tally;
    let text = serde_json::to_string(&part).unwrap().replace('\'', "''");
    h.raw
        .exec(&format!(
            "UPDATE backfill_run SET tally = '{text}' WHERE run_id = 'run-old'"
        ))
        .await;
    h.raw
        .exec("DELETE FROM backfill_group_tally WHERE run_id = 'run-old'")
        .await;
    assert!(groups_in_run_record(h, "run-old").await.contains_key("p1"));
    let done = run_to_end(h, "run-old").await;
    assert!(matches!(done, Reduced::Finished(_)), "{done:?}");
    let old = h.store.load_run("run-old").await.unwrap().unwrap();
    assert_eq!(old.tally, whole.tally);
});

// ---- failures, dead shards, quarantine, retry and revert -------------------------------

contract!(failed_attempts_and_dead_shards, |h| async move {
    h.seed(REVISIONS).await;
    plan(h, &spec(RENAME), Mode::Commit, "run-dead").await;
    let s = &h.store;
    s.claim_shard("run-dead", 1, "w1", None).await.unwrap();
    assert_eq!(
        s.shard_attempt_failed("run-dead", 1, "boom 1")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.shard_attempt_failed("run-dead", 1, "boom 2")
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        s.shard_last_error("run-dead", 1).await.unwrap().as_deref(),
        Some("boom 2")
    );
    assert_eq!(s.shard_last_error("run-dead", 0).await.unwrap(), None);
    assert_eq!(s.shard_last_error("run-dead", 99).await.unwrap(), None);
    assert_eq!(
        s.shards_running("run-dead").await.unwrap(),
        0,
        "back to pending"
    );
    assert_eq!(
        s.shard_attempt_failed("run-dead", 99, "x").await.unwrap(),
        0,
        "no such shard"
    );
    // Given up: dead, every row an error and quarantined.
    let task = ShardTask {
        v: backfill_job::message::MESSAGE_VERSION,
        ledger: s.ledger().id.clone(),
        run_id: "run-dead".into(),
        shard_no: 1,
        target: "revisions".into(),
        first_key: "3".into(),
        last_key: "4".into(),
        rows: 2,
    };
    let forged = ShardTask {
        target: "pages".into(),
        ..task.clone()
    };
    assert!(matches!(
        s.record_dead_shard(&forged, "w1", "boom").await,
        Err(StoreError::Data(_))
    ));
    let unknown = ShardTask {
        shard_no: 42,
        ..task.clone()
    };
    assert!(matches!(
        s.record_dead_shard(&unknown, "w1", "boom").await,
        Err(StoreError::Data(_))
    ));
    let result = s.record_dead_shard(&task, "w1", "boom 3").await.unwrap();
    assert_eq!(
        (
            result.run_id.as_str(),
            result.shard_no,
            result.target.as_str()
        ),
        ("run-dead", 1, "revisions")
    );
    assert_eq!(result.ledger, s.ledger().id);
    assert_eq!(counts(&result.tally), (2, 0, 0, 0, 0, 2));
    assert_eq!(
        s.dead_shards("run-dead").await.unwrap(),
        vec![(1, "revisions".to_string(), "boom 3".to_string())]
    );
    let q = s.quarantined("run-dead").await.unwrap();
    let keys: Vec<&str> = q.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(keys, vec!["3", "4"]);
    assert!(
        q[0].2.contains("failed on every attempt: boom 3"),
        "{}",
        q[0].2
    );
    // Once dead, it stays as it is.
    assert!(matches!(
        s.fail_shard("run-dead", 1, "revisions", "again").await.unwrap(),
        Committed::AlreadyDone(t) if t == result.tally
    ));
    assert_eq!(
        s.claim_shard("run-dead", 1, "w1", None).await.unwrap(),
        Claim::Finished
    );
    assert_eq!(
        s.shard_attempt_failed("run-dead", 1, "late").await.unwrap(),
        0
    );
    // fail_shard directly, and a dead shard is folded like any other.
    let Committed::Applied(t) = s
        .fail_shard("run-dead", 3, "revisions", "gone")
        .await
        .unwrap()
    else {
        panic!("applied")
    };
    assert_eq!(counts(&t), (1, 0, 0, 0, 0, 1));
    assert_eq!(
        s.reduce(&result_of("run-dead", 1, Tally::default()))
            .await
            .unwrap(),
        Reduced::Counted
    );
    let grid: Vec<(u32, String)> = s
        .shard_grid("run-dead")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.no, c.state))
        .collect();
    assert_eq!(
        grid,
        vec![
            (0, "pending".to_string()),
            (1, "dead".to_string()),
            (2, "pending".to_string()),
            (3, "dead".to_string())
        ]
    );
    assert!(matches!(
        s.fail_shard("run-dead", 42, "revisions", "x").await,
        Err(StoreError::Data(_))
    ));
});

contract!(a_retry_redoes_the_quarantined_rows, |h| async move {
    h.seed(REVISIONS).await;
    let spec = spec(RENAME);
    plan(h, &spec, Mode::Commit, "run-orig").await;
    run_to_end(h, "run-orig").await;
    let original = h.store.load_run("run-orig").await.unwrap().unwrap();
    assert_eq!(original.state, RunState::Failed);
    assert_eq!(h.store.quarantined("run-orig").await.unwrap().len(), 1);
    // The cause is fixed; the retry takes the quarantined row only.
    h.set_content(6, r#"{"institute_text": "x"}"#).await;
    let plan = h
        .store
        .create_derived_run("run-retry", &original, 10, Derived::Retry)
        .await
        .unwrap();
    assert_eq!(plan.shards_total, 1);
    let rec = h.store.load_run("run-retry").await.unwrap().unwrap();
    assert_eq!(rec.kind, RunKind::Retry);
    assert_eq!(rec.retry_of.as_deref(), Some("run-orig"));
    assert_eq!(rec.revert_of, None);
    assert_eq!(rec.mode, Mode::Commit);
    assert_eq!(rec.scope_value, Scope::All);
    assert_eq!(rec.describe_kind(), "retry of run-orig");
    let items = h
        .raw
        .texts("SELECT key FROM backfill_item WHERE run_id = 'run-retry'")
        .await;
    assert_eq!(items, vec!["6"]);
    // Retried rows are no longer quarantined for the original.
    assert!(h.store.quarantined("run-orig").await.unwrap().is_empty());
    let retried_by = h
        .raw
        .opt_text("SELECT retried_by FROM backfill_quarantine WHERE run_id = 'run-orig'")
        .await;
    assert_eq!(retried_by.as_deref(), Some("run-retry"));
    let active = h.store.active_runs("contract-rename").await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(
        (active[0].kind, active[0].of.as_deref()),
        (RunKind::Retry, Some("run-orig"))
    );
    assert!(matches!(
        run_to_end(h, "run-retry").await,
        Reduced::Finished(_)
    ));
    let rec = h.store.load_run("run-retry").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Done);
    assert_eq!(counts(&rec.tally), (1, 1, 0, 0, 0, 0));
    assert_eq!(h.content(6).await, json!({"institution_text": "x"}));
    // Nothing is left to retry: an empty retry finishes at once.
    let plan = h
        .store
        .create_derived_run("run-retry-2", &original, 10, Derived::Retry)
        .await
        .unwrap();
    assert_eq!(plan.shards_total, 0);
    let rec = h.store.load_run("run-retry-2").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Done);
});

contract!(a_revert_restores_the_before_images, |h| async move {
    h.seed(REVISIONS).await;
    let spec = spec(RENAME);
    plan(h, &spec, Mode::Commit, "run-fwd").await;
    run_to_end(h, "run-fwd").await;
    assert_eq!(h.content(1).await, json!({"institution_text": "A1"}));
    assert_eq!(h.store.before_image_count("run-fwd").await.unwrap(), 5);
    let original = h.store.load_run("run-fwd").await.unwrap().unwrap();
    // A dry run of the revert first: it plans the rows the run wrote.
    let plan = h
        .store
        .create_derived_run("run-rev-dry", &original, 2, Derived::Revert(Mode::DryRun))
        .await
        .unwrap();
    assert_eq!(plan.shards_total, 3);
    let rec = h.store.load_run("run-rev-dry").await.unwrap().unwrap();
    assert_eq!(
        (
            rec.kind,
            rec.mode,
            rec.revert_of.as_deref(),
            rec.retry_of.as_deref()
        ),
        (RunKind::Revert, Mode::DryRun, Some("run-fwd"), None)
    );
    assert_eq!(rec.describe_kind(), "revert of run-fwd");
    let items = h
        .raw
        .texts(
            "SELECT key FROM backfill_item WHERE run_id = 'run-rev-dry' ORDER BY shard_no, item_no",
        )
        .await;
    assert_eq!(items, vec!["1", "2", "3", "5", "7"]);
    run_to_end(h, "run-rev-dry").await;
    let rec = h.store.load_run("run-rev-dry").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Done);
    assert_eq!(counts(&rec.tally), (5, 5, 0, 0, 0, 0));
    assert_eq!(h.content(1).await, json!({"institution_text": "A1"}));
    // The revert itself.
    h.store
        .create_derived_run("run-rev", &original, 2, Derived::Revert(Mode::Commit))
        .await
        .unwrap();
    run_to_end(h, "run-rev").await;
    let rec = h.store.load_run("run-rev").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Done);
    assert_eq!(counts(&rec.tally), (5, 5, 0, 0, 0, 0));
    for (id, _, content) in REVISIONS {
        let want: Value = serde_json::from_str(content).unwrap();
        assert_eq!(h.content(*id).await, want, "revision {id} restored");
    }
});

// ---- steering: control, throttle, cancel, events ------------------------------------------

contract!(control_pause_throttle_and_events, |h| async move {
    h.seed(REVISIONS).await;
    let spec = spec(RENAME);
    plan(h, &spec, Mode::Commit, "run-ctl").await;
    let s = &h.store;
    let defaults = ThrottleSpec {
        rows_per_sec: Some(7.0),
        max_in_flight: Some(2),
        priority: 1,
        ..ThrottleSpec::default()
    };
    // Nothing recorded: the spec's values.
    let c = s.control("run-ctl", &defaults).await.unwrap();
    assert_eq!(
        (c.control, c.priority, c.rows_per_sec, c.max_in_flight),
        (ControlState::Run, 1, Some(7.0), Some(2))
    );
    assert_eq!((c.yield_to, c.shard_sizing), (None, None));
    s.init_control(
        "run-ctl",
        &ThrottleSpec {
            rows_per_sec: Some(50.0),
            bytes_per_sec: Some(1000.0),
            max_wal_bytes_per_sec: Some(2000.0),
            max_in_flight: Some(4),
            priority: 3,
        },
        Some("adaptive: 2 rows"),
    )
    .await
    .unwrap();
    // A second init keeps the first.
    s.init_control("run-ctl", &ThrottleSpec::default(), None)
        .await
        .unwrap();
    let c = s.control("run-ctl", &defaults).await.unwrap();
    assert_eq!(
        (
            c.control,
            c.priority,
            c.rows_per_sec,
            c.bytes_per_sec,
            c.max_wal_bytes_per_sec,
            c.max_in_flight,
            c.shard_sizing.as_deref()
        ),
        (
            ControlState::Run,
            3,
            Some(50.0),
            Some(1000.0),
            Some(2000.0),
            Some(4),
            Some("adaptive: 2 rows")
        )
    );
    s.set_control("run-ctl", ControlState::Pause, "alice")
        .await
        .unwrap();
    assert_eq!(
        s.control("run-ctl", &defaults).await.unwrap().control,
        ControlState::Pause
    );
    s.set_control("run-ctl", ControlState::Run, "bob")
        .await
        .unwrap();
    s.set_throttle(
        "run-ctl",
        &ThrottleChange {
            rows_per_sec: Some(None),
            max_in_flight: Some(Some(9)),
            priority: Some(5),
            bytes_per_sec: Some(Some(64.0)),
            max_wal_bytes_per_sec: None,
        },
        "carol",
    )
    .await
    .unwrap();
    let c = s.control("run-ctl", &defaults).await.unwrap();
    assert_eq!(
        (
            c.control,
            c.priority,
            c.rows_per_sec,
            c.bytes_per_sec,
            c.max_wal_bytes_per_sec,
            c.max_in_flight
        ),
        (
            ControlState::Run,
            5,
            None,
            Some(64.0),
            Some(2000.0),
            Some(9)
        )
    );
    let updated_by = h
        .raw
        .opt_text("SELECT updated_by FROM backfill_control WHERE run_id = 'run-ctl'")
        .await;
    assert_eq!(updated_by.as_deref(), Some("carol"));
    // An empty change changes nothing and records nothing.
    s.set_throttle("run-ctl", &ThrottleChange::default(), "dave")
        .await
        .unwrap();
    // Unknown runs are refused.
    assert!(matches!(
        s.set_control("nope", ControlState::Pause, "x").await,
        Err(StoreError::UnknownRun(_))
    ));
    assert!(matches!(
        s.set_throttle("nope", &ThrottleChange::default(), "x")
            .await,
        Err(StoreError::UnknownRun(_))
    ));
    s.record_event("run-ctl", "note", "erin", Some("by hand"))
        .await
        .unwrap();
    let events: Vec<(String, String, Option<String>)> = s
        .run_events("run-ctl")
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            assert_eq!(e.run_id, "run-ctl");
            assert!(is_utc_second(&e.at), "{}", e.at);
            (e.action, e.operator, e.detail)
        })
        .collect();
    assert_eq!(
        events,
        vec![
            ("pause".to_string(), "alice".to_string(), None),
            ("resume".to_string(), "bob".to_string(), None),
            (
                "throttle".to_string(),
                "carol".to_string(),
                Some("rows_per_sec=off bytes_per_sec=64 max_in_flight=9 priority=5".to_string())
            ),
            (
                "note".to_string(),
                "erin".to_string(),
                Some("by hand".to_string())
            ),
        ]
    );
    assert!(s.run_events("nope").await.unwrap().is_empty());

    // A running run of higher priority with shards left is yielded to.
    tokio::time::sleep(Duration::from_millis(20)).await;
    plan(h, &spec, Mode::Commit, "run-urgent").await;
    s.init_control(
        "run-urgent",
        &ThrottleSpec {
            priority: 10,
            ..ThrottleSpec::default()
        },
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        s.control("run-ctl", &defaults)
            .await
            .unwrap()
            .yield_to
            .as_deref(),
        Some("run-urgent")
    );
    assert_eq!(
        s.control("run-urgent", &defaults).await.unwrap().yield_to,
        None
    );
    s.set_control("run-urgent", ControlState::Pause, "x")
        .await
        .unwrap();
    assert_eq!(
        s.control("run-ctl", &defaults).await.unwrap().yield_to,
        None
    );

    // History: the runs of the job with their events, newest first.
    let history = s.history(Some("contract-rename"), 10).await.unwrap();
    let ids: Vec<&str> = history.iter().map(|r| r.run_id.as_str()).collect();
    assert_eq!(ids, vec!["run-urgent", "run-ctl"]);
    let ctl = &history[1];
    assert_eq!(
        (ctl.job.as_str(), ctl.mode.as_str(), ctl.state.as_str()),
        ("contract-rename", "commit", "running")
    );
    assert_eq!(ctl.spec_hash, spec.hash);
    assert!(is_utc_second(&ctl.created_at), "{}", ctl.created_at);
    assert_eq!(ctl.events.len(), 4);
    assert!(ctl.params.is_empty());
    assert_eq!(s.history(None, 1).await.unwrap().len(), 1);
    assert!(s.history(Some("other"), 10).await.unwrap().is_empty());
});

contract!(cancelling_a_run, |h| async move {
    h.seed(REVISIONS).await;
    plan(h, &spec(RENAME), Mode::Commit, "run-cancel").await;
    let s = &h.store;
    let done = map_shard(h, "run-cancel", 0, "w1", 100).await;
    s.reduce(&result_of("run-cancel", 0, done.tally().clone()))
        .await
        .unwrap();
    s.set_control("run-cancel", ControlState::Cancel, "alice")
        .await
        .unwrap();
    assert_eq!(
        s.control("run-cancel", &ThrottleSpec::default())
            .await
            .unwrap()
            .control,
        ControlState::Cancel
    );
    assert!(s.finish_cancelled("run-cancel").await.unwrap());
    let rec = s.load_run("run-cancel").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Cancelled);
    let first = rec.summary.clone().expect("a summary");
    assert!(!s.finish_cancelled("run-cancel").await.unwrap(), "once");
    assert!(matches!(
        s.finish_cancelled("nope").await,
        Err(StoreError::UnknownRun(_))
    ));
    // A shard in hand finishes late: it is folded and the summary follows.
    let late = map_shard(h, "run-cancel", 1, "w1", 100).await;
    s.reduce(&result_of("run-cancel", 1, late.tally().clone()))
        .await
        .unwrap();
    s.refresh_cancelled_summary("run-cancel").await.unwrap();
    let rec = s.load_run("run-cancel").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Cancelled);
    assert_eq!(rec.shards_reduced, 2);
    assert_eq!(counts(&rec.tally), (4, 3, 1, 0, 0, 0));
    let refreshed = rec.summary.clone().expect("a summary");
    assert_ne!(refreshed, first, "the summary counts the late shard");
    // Not cancelled: nothing to refresh.
    plan(h, &spec(RENAME), Mode::Commit, "run-other").await;
    s.refresh_cancelled_summary("run-other").await.unwrap();
    assert_eq!(
        s.load_run("run-other").await.unwrap().unwrap().summary,
        None
    );
    s.refresh_cancelled_summary("nope").await.unwrap();
});

contract!(
    rate_limits_are_reserved_on_the_ledger_clock,
    |h| async move {
        h.seed(REVISIONS).await;
        plan(h, &spec(RENAME), Mode::Commit, "run-rate").await;
        let s = &h.store;
        let hour = Duration::from_secs(3600);
        // No limit: go now, nothing reserved.
        assert_eq!(
            s.reserve_rows("run-rate", 10, hour).await.unwrap(),
            Some(Duration::ZERO)
        );
        assert_eq!(
            s.reserve_bytes("run-rate", 10, hour).await.unwrap(),
            Some((Duration::ZERO, 0.0))
        );
        s.settle_bytes("run-rate", 10, 0.0, 5000, Duration::ZERO)
            .await
            .unwrap();
        s.init_control(
            "run-rate",
            &ThrottleSpec {
                rows_per_sec: Some(10.0),
                bytes_per_sec: Some(1000.0),
                ..ThrottleSpec::default()
            },
            None,
        )
        .await
        .unwrap();
        // Rows: 10 rows at 10 rows/s: the next reservation starts a second later.
        let first = s.reserve_rows("run-rate", 10, hour).await.unwrap().unwrap();
        assert!(first < Duration::from_millis(200), "{first:?}");
        let second = s.reserve_rows("run-rate", 10, hour).await.unwrap().unwrap();
        assert!(
            second > Duration::from_millis(700) && second <= Duration::from_millis(1100),
            "{second:?}"
        );
        // Beyond the horizon: nothing reserved, ask again later.
        assert_eq!(
            s.reserve_rows("run-rate", 10, Duration::from_millis(500))
                .await
                .unwrap(),
            None
        );
        let third = s.reserve_rows("run-rate", 10, hour).await.unwrap().unwrap();
        assert!(
            third > Duration::from_millis(1700) && third <= Duration::from_millis(2100),
            "{third:?}: the refused reservation took nothing"
        );
        // Bytes: nothing measured yet, so nothing reserved; then the shard's
        // 5000 bytes are settled at 1000 bytes/s.
        let (wait, reserved) = s
            .reserve_bytes("run-rate", 10, hour)
            .await
            .unwrap()
            .unwrap();
        assert!(wait < Duration::from_millis(200), "{wait:?}");
        assert_eq!(reserved, 0.0);
        s.settle_bytes("run-rate", 10, reserved, 5000, Duration::ZERO)
            .await
            .unwrap();
        let per_row = h
        .raw
        .opt_text("SELECT CAST(bytes_per_row AS text) FROM backfill_control WHERE run_id = 'run-rate'")
        .await
        .unwrap();
        assert_eq!(per_row.parse::<f64>().unwrap(), 500.0);
        let (wait, reserved) = s
            .reserve_bytes("run-rate", 10, hour)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reserved, 5000.0, "10 rows at 500 bytes a row");
        assert!(
            wait > Duration::from_millis(4500) && wait <= Duration::from_millis(5100),
            "{wait:?}"
        );
        assert_eq!(
            s.reserve_bytes("run-rate", 10, Duration::from_secs(1))
                .await
                .unwrap(),
            None
        );
        // The WAL cap: PostgreSQL only.
        assert_eq!(
            s.wal_wait("run-rate", Duration::from_secs(1))
                .await
                .unwrap(),
            None,
            "no cap"
        );
        s.set_throttle(
            "run-rate",
            &ThrottleChange {
                max_wal_bytes_per_sec: Some(Some(1e9)),
                ..ThrottleChange::default()
            },
            "x",
        )
        .await
        .unwrap();
        let wal = s
            .wal_wait("run-rate", Duration::from_secs(1))
            .await
            .unwrap();
        if h.pg() {
            assert_eq!(wal, Some(Duration::ZERO), "a fresh bucket is not in debt");
            let sampled = h
            .raw
            .i64("SELECT count(*) FROM backfill_control WHERE run_id = 'run-rate' AND wal_lsn IS NOT NULL AND wal_at IS NOT NULL")
            .await;
            assert_eq!(sampled, 1);
        } else {
            assert_eq!(wal, None, "SQLite has no WAL position");
        }
    }
);

contract!(health_checks_run_the_jobs_sql, |h| async move {
    let s = &h.store;
    let ok = s.health(&HealthSpec::default()).await.unwrap();
    assert_eq!((ok.ok, ok.reason), (true, None));
    let healthy = HealthSpec {
        sql: Some(SqlText::Any("SELECT 1 = 1".into())),
        ..HealthSpec::default()
    };
    assert!(s.health(&healthy).await.unwrap().ok);
    let unhealthy = HealthSpec {
        sql: Some(SqlText::Any("SELECT 1 = 0".into())),
        ..HealthSpec::default()
    };
    let bad = s.health(&unhealthy).await.unwrap();
    assert!(!bad.ok);
    assert!(bad.reason.unwrap().contains("health.sql"));
    let per_dialect = HealthSpec {
        sql: Some(SqlText::PerDialect {
            postgres: Some("SELECT count(*) = 0 FROM pg_stat_replication".into()),
            sqlite: Some("SELECT count(*) = 0 FROM sqlite_master WHERE name = 'nothing'".into()),
        }),
        ..HealthSpec::default()
    };
    assert!(s.health(&per_dialect).await.unwrap().ok);
    let missing = HealthSpec {
        sql: Some(SqlText::PerDialect {
            postgres: None,
            sqlite: None,
        }),
        ..HealthSpec::default()
    };
    assert!(matches!(s.health(&missing).await, Err(StoreError::Spec(_))));
    // PostgreSQL also counts active backends.
    let crowded = HealthSpec {
        max_active_backends: 0,
        ..HealthSpec::default()
    };
    assert!(s.health(&crowded).await.unwrap().ok, "0 turns it off");
});

contract!(windows_given_on_the_command_line, |h| async move {
    h.seed(REVISIONS).await;
    let job = spec(RENAME);
    plan(h, &job, Mode::Commit, "run-none").await;
    let rec = h.store.load_run("run-none").await.unwrap().unwrap();
    assert_eq!(h.store.run_schedule(&rec).await.unwrap(), None);
    // Windows given for a run are in its row from the moment it exists:
    // before any shard is planned or published.
    let schedule =
        backfill_job::schedule::Schedule::new(&["01:00-02:00".into(), "22:00-23:30".into()], "UTC")
            .unwrap();
    let groups = planned_groups(h, &job).await;
    h.store
        .create_run(
            NewRun {
                mode: Mode::Commit,
                schedule: Some(&schedule),
                ..new_run("run-win", &job)
            },
            groups,
            None,
        )
        .await
        .unwrap();
    let rec = h.store.load_run("run-win").await.unwrap().unwrap();
    let got = h.store.run_schedule(&rec).await.unwrap().unwrap();
    assert_eq!(got, schedule);
    // A spec's [schedule] applies when none was given.
    let text = format!("{RENAME}\n[schedule]\nwindows = [\"03:00-04:00\"]\ntime_zone = \"UTC\"\n");
    let spec = spec(&text);
    plan(h, &spec, Mode::Commit, "run-win-2").await;
    let rec = h.store.load_run("run-win-2").await.unwrap().unwrap();
    let got = h.store.run_schedule(&rec).await.unwrap().unwrap();
    assert_eq!(got.describe(), "03:00-04:00 (UTC)");
    // An unreadable record is an error, not the spec's windows.
    h.raw
        .exec("UPDATE backfill_run SET schedule = 'nonsense' WHERE run_id = 'run-win-2'")
        .await;
    assert!(matches!(
        h.store.run_schedule(&rec).await,
        Err(StoreError::Data(_))
    ));
});

// ---- workers, status and throughput ----------------------------------------------------

contract!(heartbeats_and_the_run_status_document, |h| async move {
    h.seed(REVISIONS).await;
    plan(h, &spec(RENAME), Mode::Commit, "run-status").await;
    let s = &h.store;
    s.init_control("run-status", &ThrottleSpec::default(), None)
        .await
        .unwrap();
    s.heartbeat("w1", "mapper", Some("run-status"), 0)
        .await
        .unwrap();
    s.heartbeat("w1", "mapper", None, 3).await.unwrap();
    let worker = h
        .raw
        .opt_text("SELECT run_id FROM backfill_worker WHERE worker = 'w1'")
        .await;
    assert_eq!(
        worker.as_deref(),
        Some("run-status"),
        "a beat without a run keeps it"
    );
    assert_eq!(
        h.raw
            .i64("SELECT shards_done FROM backfill_worker WHERE worker = 'w1'")
            .await,
        3
    );
    h.store.mark_published("run-status", &[0, 1]).await.unwrap();
    for shard in 0..2 {
        assert_eq!(
            s.claim_shard("run-status", shard, "w1", None)
                .await
                .unwrap(),
            Claim::Claimed
        );
        let c = map_shard(h, "run-status", shard, "w1", 100).await;
        s.reduce(&result_of("run-status", shard, c.tally().clone()))
            .await
            .unwrap();
    }
    s.claim_shard("run-status", 2, "w2", None).await.unwrap();
    s.shard_attempt_failed("run-status", 2, "oops")
        .await
        .unwrap();

    let st = s.run_status("run-status").await.unwrap().unwrap();
    assert_eq!(
        (
            st.run_id.as_str(),
            st.job.as_str(),
            st.mode.as_str(),
            st.scope.as_str(),
            st.state.as_str(),
            st.control.as_str()
        ),
        (
            "run-status",
            "contract-rename",
            "commit",
            "all",
            "running",
            "run"
        )
    );
    let c = &st.shards;
    assert_eq!(
        (c.total, c.pending, c.running, c.done, c.failed, c.dead, c.reduced),
        (4, 1, 0, 2, 1, 0, 2)
    );
    assert_eq!((st.shard_size.min, st.shard_size.max), (1, 2));
    assert_eq!(st.rows.planned, 7);
    assert_eq!(
        (st.rows.processed, st.rows.changed, st.rows.unchanged),
        (4, 3, 1)
    );
    assert!(is_utc_second(&st.created_at), "{}", st.created_at);
    assert_eq!(st.finished_at, None);
    assert!(st.elapsed_seconds >= 0.0 && st.elapsed_seconds < 600.0);
    assert_eq!(st.unpublished, 2);
    if h.pg() {
        // No coordinator holds the job's lock: nobody publishes the rest.
        assert!(st.orphaned);
        assert_eq!(
            st.resume.as_deref(),
            Some("backfill coordinator --resume run-status")
        );
    } else {
        assert!(!st.orphaned && st.resume.is_none());
    }
    let health = st.health.as_ref().expect("a running run's health");
    assert!(health.ok, "{health:?}");
    // Workers that took shards of the run: w1 committed two and beats,
    // w2 failed one attempt and was never heard of again.
    let workers: Vec<(&str, u64)> = st
        .workers
        .iter()
        .map(|w| (w.name.as_str(), w.shards_done))
        .collect();
    assert_eq!(workers, vec![("w1", 2), ("w2", 1)]);
    let w1 = &st.workers[0];
    assert!(w1.last_seen.as_deref().is_some_and(is_utc_second));
    assert!(!w1.stale);
    assert_eq!(st.workers[1].last_seen, None);
    assert!(st.dead_shards.is_empty());
    assert_eq!(st.waiting_for, None);
    assert_eq!(st.window.as_ref().map(|w| w.open), None);

    // The grid and the throughput.
    let grid: Vec<(u32, String, u32, Option<String>)> = s
        .shard_grid("run-status")
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.no, c.state, c.rows, c.worker))
        .collect();
    assert_eq!(
        grid,
        vec![
            (0, "done".to_string(), 2, Some("w1".to_string())),
            (1, "done".to_string(), 2, Some("w1".to_string())),
            (2, "failed".to_string(), 2, Some("w2".to_string())),
            (3, "pending".to_string(), 1, None),
        ]
    );
    let tp = s.throughput("run-status").await.unwrap();
    assert!(tp.bucket_seconds >= 1);
    assert_eq!(tp.points.iter().map(|p| p.rows).sum::<u64>(), 4);
    let empty = s.throughput("nope").await.unwrap();
    assert!(empty.points.is_empty());

    // The list of runs, without the details.
    let all = s.run_statuses(10).await.unwrap();
    assert_eq!(all.len(), 1);
    assert!(all[0].workers.is_empty() && all[0].health.is_none());
    assert!(s.run_status("nope").await.unwrap().is_none());

    // Runs quiet for a while (PostgreSQL: the stall watch).
    let quiet = s.quiet_runs().await.unwrap();
    if h.pg() {
        assert_eq!(quiet.len(), 1);
        assert_eq!(quiet[0].run_id, "run-status");
        assert!(quiet[0].quiet_seconds >= 0.0 && !quiet[0].told);
        s.record_event("run-status", "stalled", "watch", None)
            .await
            .unwrap();
        assert!(s.quiet_runs().await.unwrap()[0].told);
        s.set_control("run-status", ControlState::Pause, "x")
            .await
            .unwrap();
        assert!(
            s.quiet_runs().await.unwrap().is_empty(),
            "paused runs are not watched"
        );
    } else {
        assert!(quiet.is_empty());
    }

    // Finished: no health, no ETA, a finish time.
    for shard in [2, 3] {
        let c = map_shard(h, "run-status", shard, "w2", 100).await;
        s.reduce(&result_of("run-status", shard, c.tally().clone()))
            .await
            .unwrap();
    }
    let st = s.run_status("run-status").await.unwrap().unwrap();
    assert_eq!(st.state, "failed");
    assert!(st.finished_at.as_deref().is_some_and(is_utc_second));
    assert_eq!((st.eta_seconds, st.health.is_none()), (None, true));
    assert_eq!(st.unpublished, 0);
    assert_eq!(st.summary.as_deref().map(str::is_empty), Some(false));
});

contract!(job_locks_keep_one_coordinator_per_job, |h| async move {
    let s = &h.store;
    let lock = s.try_lock_job("contract-rename").await.unwrap();
    assert!(lock.is_some());
    let second = s.try_lock_job("contract-rename").await.unwrap();
    let other = s.try_lock_job("another-job").await.unwrap();
    assert!(other.is_some());
    if h.pg() {
        assert!(second.is_none(), "one coordinator per job");
        assert_eq!(
            s.job_lock_held("contract-rename").await.unwrap(),
            Some(true)
        );
        drop(lock);
        // Released when its connection closes.
        let mut held = Some(true);
        for _ in 0..50 {
            held = s.job_lock_held("contract-rename").await.unwrap();
            if held == Some(false) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(held, Some(false));
        assert!(s.try_lock_job("contract-rename").await.unwrap().is_some());
    } else {
        // One process: SQLite's own locking serializes writers.
        assert!(second.is_some());
        assert_eq!(s.job_lock_held("contract-rename").await.unwrap(), None);
    }
});

// ---- audit: review gate, verify, revert, row counts, prune ------------------------------

contract!(
    audit_lookups_for_the_review_gate_and_verify,
    |h| async move {
        h.seed(CLEAN).await;
        let spec = spec(RENAME);
        let s = &h.store;
        let hour = Duration::from_secs(3600);
        assert!(s
            .recent_dry_runs("contract-rename", &spec.hash, hour)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            s.last_commit_verified("contract-rename").await.unwrap(),
            None
        );
        // A reviewed dry run: full, forward, finished without errors.
        plan(h, &spec, Mode::DryRun, "run-review").await;
        assert!(
            s.recent_dry_runs("contract-rename", &spec.hash, hour)
                .await
                .unwrap()
                .is_empty(),
            "not finished yet"
        );
        run_to_end(h, "run-review").await;
        // A sampled one does not count.
        plan_scoped(
            h,
            &spec,
            Mode::DryRun,
            "run-sampled",
            &Scope::All,
            Some(0.5),
        )
        .await;
        run_to_end(h, "run-sampled").await;
        assert_eq!(
            s.recent_dry_runs("contract-rename", &spec.hash, hour)
                .await
                .unwrap(),
            vec!["run-review".to_string()]
        );
        assert!(s
            .recent_dry_runs("contract-rename", "another-hash", hour)
            .await
            .unwrap()
            .is_empty());
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(
            s.recent_dry_runs("contract-rename", &spec.hash, Duration::from_millis(500))
                .await
                .unwrap()
                .is_empty(),
            "outside the window"
        );
        // The commit and a verify that passed after it.
        plan(h, &spec, Mode::Commit, "run-commit").await;
        run_to_end(h, "run-commit").await;
        assert_eq!(
            s.last_commit_verified("contract-rename").await.unwrap(),
            Some(backfill_store::Verified {
                commit_run: "run-commit".into(),
                verify_run: None,
            })
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        plan(h, &spec, Mode::DryRun, "run-verify").await;
        s.record_event("run-verify", "verify", "ci", Some("failed: 1 row left"))
            .await
            .unwrap();
        assert_eq!(
            s.last_commit_verified("contract-rename")
                .await
                .unwrap()
                .unwrap()
                .verify_run,
            None
        );
        s.record_event("run-verify", "verify", "ci", Some("passed: nothing left"))
            .await
            .unwrap();
        assert_eq!(
            s.last_commit_verified("contract-rename")
                .await
                .unwrap()
                .unwrap()
                .verify_run
                .as_deref(),
            Some("run-verify")
        );
        assert_eq!(s.last_commit_verified("other").await.unwrap(), None);

        // Row counts of the target tables, recorded on the run.
        let counts = s.count_table_rows(&spec).await.unwrap();
        assert_eq!(
            counts,
            BTreeMap::from([("wagtailcore_revision".to_string(), 5)])
        );
        s.record_table_rows("run-commit", "planned", &counts)
            .await
            .unwrap();
        s.record_table_rows(
            "run-commit",
            "finished",
            &BTreeMap::from([("wagtailcore_revision".to_string(), 6)]),
        )
        .await
        .unwrap();
        let rec = s.load_run("run-commit").await.unwrap().unwrap();
        assert_eq!(
            rec.table_rows,
            Some(json!({
                "planned": {"wagtailcore_revision": 5},
                "finished": {"wagtailcore_revision": 6}
            }))
        );
        assert_eq!(
            s.load_run("run-review").await.unwrap().unwrap().table_rows,
            None
        );
    }
);

contract!(pruning_before_images_of_finished_runs, |h| async move {
    h.seed(CLEAN).await;
    let spec = spec(RENAME);
    let s = &h.store;
    plan(h, &spec, Mode::Commit, "run-old").await;
    run_to_end(h, "run-old").await;
    plan(h, &spec, Mode::Commit, "run-open").await;
    h.set_content(1, r#"{"institute_text": "again"}"#).await;
    let c = map_shard(h, "run-open", 0, "w1", 100).await;
    assert_eq!(c.tally().counts.changed, 1);
    assert_eq!(s.before_image_count("run-old").await.unwrap(), 4);
    assert_eq!(s.before_image_count("run-open").await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Finished longer ago than a day: none.
    assert!(s
        .prune_before_images(Duration::from_secs(86_400), false, "ops")
        .await
        .unwrap()
        .is_empty());
    // Listed without deleting.
    let listed = s
        .prune_before_images(Duration::ZERO, false, "ops")
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "only the finished run: {listed:?}");
    let (run, n, bytes) = listed[0].clone();
    assert_eq!((run.as_str(), n), ("run-old", 4));
    assert!(bytes > 0);
    assert_eq!(s.before_image_count("run-old").await.unwrap(), 4);
    // Deleted, with an event.
    let pruned = s
        .prune_before_images(Duration::ZERO, true, "ops")
        .await
        .unwrap();
    assert_eq!(pruned, listed);
    assert_eq!(s.before_image_count("run-old").await.unwrap(), 0);
    assert_eq!(s.before_image_count("run-open").await.unwrap(), 1);
    let events = s.run_events("run-old").await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.action.as_str(), last.operator.as_str()),
        ("prune", "ops")
    );
    assert_eq!(
        last.detail.as_deref(),
        Some(format!("4 before-images, {bytes} bytes deleted").as_str())
    );
});

contract!(measured_shard_cost_for_adaptive_sizing, |h| async move {
    h.seed(CLEAN).await;
    let spec = spec(RENAME);
    let s = &h.store;
    assert_eq!(
        s.measured_shard_cost("contract-rename", "commit")
            .await
            .unwrap(),
        None
    );
    plan(h, &spec, Mode::DryRun, "run-dry").await;
    run_to_end(h, "run-dry").await;
    let (run, size, ms) = s
        .measured_shard_cost("contract-rename", "commit")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (run.as_str(), size),
        ("run-dry", 2),
        "another mode serves when none of this one"
    );
    assert!(ms >= 0.0);
    tokio::time::sleep(Duration::from_millis(20)).await;
    plan(h, &spec, Mode::Commit, "run-commit").await;
    run_to_end(h, "run-commit").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    plan(h, &spec, Mode::DryRun, "run-dry-2").await;
    run_to_end(h, "run-dry-2").await;
    let (run, ..) = s
        .measured_shard_cost("contract-rename", "commit")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run, "run-commit", "the same mode first");
    let (run, ..) = s
        .measured_shard_cost("contract-rename", "dry-run")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(run, "run-dry-2", "the most recent");
    assert_eq!(
        s.measured_shard_cost("other", "commit").await.unwrap(),
        None
    );
});

// ---- the ledger's migrations ---------------------------------------------------------

/// A ledger as the release before versioned migrations left it.
fn before_migrations(kind: Kind) -> &'static str {
    match kind {
        Kind::Postgres => include_str!("fixtures/ledger_before_migrations.postgres.sql"),
        Kind::Sqlite => include_str!("fixtures/ledger_before_migrations.sqlite.sql"),
    }
}

/// The columns that came after the older release below (commit ad595c8, the
/// first with run steering).
const LATER_COLUMNS: [&str; 15] = [
    "revert_of",
    "sample",
    "table_rows",
    "kind",
    "retry_of",
    "schedule",
    "patch",
    "after_version",
    "bytes_per_sec",
    "bytes_next",
    "bytes_per_row",
    "max_wal_bytes_per_sec",
    "wal_tokens",
    "wal_lsn",
    "wal_at",
];

/// A ledger as an older release of backfill created it (commit ad595c8, the
/// first with run steering): the statements of the ledger from before
/// migrations, less those that came later, the ledger's identity table and
/// the `ALTER TABLE … ADD COLUMN` of each of [`LATER_COLUMNS`]. That release's
/// DDL constants were those statements verbatim, in the same order.
fn older(kind: Kind) -> String {
    let later = |stmt: &str| {
        if stmt.contains("backfill_ledger") {
            return true;
        }
        let Some((_, added)) = stmt.split_once(" ADD COLUMN ") else {
            return false;
        };
        let added = added.trim_start_matches("IF NOT EXISTS ");
        let column = added.split_whitespace().next().unwrap_or_default();
        LATER_COLUMNS.contains(&column)
    };
    before_migrations(kind)
        .split(';')
        .filter(|stmt| !later(stmt))
        .collect::<Vec<_>>()
        .join(";")
}

/// A whole commit, its fold, and its revert, on a ledger.
async fn commit_and_revert(h: &Harness) {
    h.seed(REVISIONS).await;
    let spec = spec(RENAME);
    plan(h, &spec, Mode::Commit, "run-adopted").await;
    assert!(matches!(
        run_to_end(h, "run-adopted").await,
        Reduced::Finished(_)
    ));
    let rec = h.store.load_run("run-adopted").await.unwrap().unwrap();
    assert_eq!(rec.state, RunState::Failed);
    assert_eq!(counts(&rec.tally), (7, 5, 1, 0, 0, 1));
    assert_eq!(h.content(1).await, json!({"institution_text": "A1"}));
    assert_eq!(h.store.before_image_count("run-adopted").await.unwrap(), 5);
    assert_eq!(h.store.quarantined("run-adopted").await.unwrap().len(), 1);
    h.store
        .create_derived_run("run-adopted-rev", &rec, 10, Derived::Revert(Mode::Commit))
        .await
        .unwrap();
    run_to_end(h, "run-adopted-rev").await;
    for (id, _, content) in REVISIONS {
        let want: Value = serde_json::from_str(content).unwrap();
        assert_eq!(h.content(*id).await, want, "revision {id} restored");
    }
}

contract!(a_fresh_ledger_records_its_versions, |h| async move {
    let migrations = h.raw.migrations().await;
    let versions: Vec<(i64, bool)> = migrations.iter().map(|m| (m.0, m.1)).collect();
    assert_eq!(
        versions,
        vec![(1, true), (2, true), (3, true), (4, true)],
        "{migrations:?}"
    );
    assert!(
        migrations.iter().all(|m| m.2.len() == 48),
        "sqlx's SHA-384 of each file"
    );
    assert!(h.raw.ledger_tables().await.contains("backfill_group_tally"));
    assert!(h.raw.ledger_tables().await.contains("backfill_group"));
    assert!(h.raw.ledger_tables().await.contains("backfill_planning"));
});

contract!(a_ledger_from_before_migrations_is_adopted, |h| async move {
    let old = Harness::adopting(h.kind, before_migrations(h.kind)).await;
    // Its identity and its rows are kept.
    assert_eq!(old.store.ledger().id, "feedfacefeedfacefeedfacefeedface");
    assert!(!old.store.ledger().is_copy());
    assert_eq!(old.raw.i64("SELECT count(*) FROM backfill_ledger").await, 1);
    // It is now at the latest version, with the schema of a fresh ledger
    // exactly.
    assert_eq!(old.raw.migrations().await, h.raw.migrations().await);
    assert_eq!(old.raw.ledger_schema().await, h.raw.ledger_schema().await);
    commit_and_revert(&old).await;
    // Read-only connections see it as before.
    let ro = Store::connect_existing(&old.scratch.url, 2).await.unwrap();
    assert_eq!(ro.ledger(), old.store.ledger());
    ro.close().await;
    old.finish().await;
});

contract!(an_older_ledger_gains_what_it_lacks, |h| async move {
    // An older ledger: no identity table, and none of the later columns.
    let fixture = &older(h.kind);
    let scratch = Scratch::new(h.kind).await;
    let raw = Raw::open(&scratch.url).await;
    raw.exec(fixture).await;
    assert!(!raw.ledger_tables().await.contains("backfill_ledger"));
    assert!(!raw.columns("backfill_run").await.contains("kind"));
    assert!(!raw.columns("backfill_before_image").await.contains("patch"));
    raw.close().await;
    drop(scratch);

    let old = Harness::adopting(h.kind, fixture).await;
    assert_eq!(old.raw.ledger_schema().await, h.raw.ledger_schema().await);
    let id = old.store.ledger().clone();
    assert!(is_hex_id(&id.id) && !id.is_copy(), "{id:?}");
    assert_eq!(old.raw.i64("SELECT count(*) FROM backfill_ledger").await, 1);
    assert_eq!(old.raw.migrations().await, h.raw.migrations().await);
    commit_and_revert(&old).await;
    // Connecting again keeps the identity it was given.
    let again = old.reconnect().await;
    assert_eq!(again.ledger(), &id);
    again.close().await;
    old.finish().await;
});

contract!(connecting_again_changes_nothing, |h| async move {
    h.seed(CLEAN).await;
    plan(h, &spec(RENAME), Mode::Commit, "run-kept").await;
    let schema = h.raw.ledger_schema().await;
    let migrations = h.raw.migrations().await;
    let installed = h
        .raw
        .texts("SELECT CAST(installed_on AS text) FROM backfill_migrations")
        .await;
    for _ in 0..3 {
        let again = h.reconnect().await;
        assert_eq!(again.ledger(), h.store.ledger());
        again.close().await;
    }
    assert_eq!(h.raw.ledger_schema().await, schema);
    assert_eq!(h.raw.migrations().await, migrations);
    assert_eq!(
        h.raw
            .texts("SELECT CAST(installed_on AS text) FROM backfill_migrations")
            .await,
        installed,
        "no version was applied again"
    );
    assert_eq!(h.raw.i64("SELECT count(*) FROM backfill_ledger").await, 1);
    assert_eq!(h.store.shards("run-kept").await.unwrap().len(), 3);
    // And an adopted ledger, connected to again, too.
    let old = Harness::adopting(h.kind, before_migrations(h.kind)).await;
    let again = old.reconnect().await;
    assert_eq!(again.ledger().id, "feedfacefeedfacefeedfacefeedface");
    again.close().await;
    assert_eq!(old.raw.migrations().await, migrations);
    old.finish().await;
});

/// Connects `n` stores to one database at once; every connect must succeed.
async fn connect_at_once(url: &str, n: usize) -> Vec<Store> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(60), Store::connect(&url, 2)).await
            })
        })
        .collect();
    let mut stores = Vec::new();
    for t in tasks {
        let connected = t.await.expect("the connect task");
        let store = connected
            .expect("a connect neither hangs nor deadlocks")
            .unwrap_or_else(|e| panic!("a concurrent connect failed: {e}"));
        stores.push(store);
    }
    stores
}

contract!(
    concurrent_first_connects_agree_on_one_ledger,
    |h| async move {
        // A fresh database: four workers start together.
        let fresh = Scratch::new(h.kind).await;
        let stores = connect_at_once(&fresh.url, 4).await;
        let id = stores[0].ledger().clone();
        assert!(stores.iter().all(|s| s.ledger() == &id), "one identity");
        let raw = Raw::open(&fresh.url).await;
        assert_eq!(raw.i64("SELECT count(*) FROM backfill_ledger").await, 1);
        assert_eq!(raw.migrations().await, h.raw.migrations().await);
        assert_eq!(raw.ledger_schema().await, h.raw.ledger_schema().await);
        for s in &stores {
            s.close().await;
        }
        raw.close().await;
        drop(fresh);
        // A ledger from before migrations: four workers of this release adopt
        // it together.
        let old = Scratch::new(h.kind).await;
        let raw = Raw::open(&old.url).await;
        raw.exec(before_migrations(h.kind)).await;
        raw.close().await;
        let stores = connect_at_once(&old.url, 4).await;
        assert!(stores
            .iter()
            .all(|s| s.ledger().id == "feedfacefeedfacefeedfacefeedface"));
        let raw = Raw::open(&old.url).await;
        assert_eq!(raw.migrations().await, h.raw.migrations().await);
        assert_eq!(raw.ledger_schema().await, h.raw.ledger_schema().await);
        for s in &stores {
            s.close().await;
        }
        raw.close().await;
    }
);

contract!(
    adopting_a_complete_ledger_locks_none_of_its_tables,
    |h| async move {
        // A worker of the earlier release is mid-transaction on the ledger
        // while a worker of this release starts: adopting a ledger that has
        // every column must not wait for it (an ALTER TABLE would, and could
        // deadlock with it).
        let old = Scratch::new(h.kind).await;
        let raw = Raw::open(&old.url).await;
        raw.exec(before_migrations(h.kind)).await;
        let busy = match &raw {
            Raw::Pg(p) => {
                let mut tx = p.begin().await.unwrap();
                sqlx::query("SELECT * FROM backfill_shard FOR UPDATE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("SELECT * FROM backfill_run FOR UPDATE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                Some(tx)
            }
            Raw::Lite(p) => {
                // SQLite: a reader keeps reading while the ledger is adopted.
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(p)
                    .await
                    .unwrap();
                None
            }
        };
        let reader = match &raw {
            Raw::Lite(p) => {
                let mut tx = p.begin().await.unwrap();
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM backfill_shard")
                    .fetch_one(&mut *tx)
                    .await
                    .unwrap();
                assert_eq!(n, 0);
                Some(tx)
            }
            Raw::Pg(_) => None,
        };
        let store = tokio::time::timeout(Duration::from_secs(20), Store::connect(&old.url, 2))
            .await
            .expect("adopting a complete ledger waits for no worker")
            .unwrap();
        assert_eq!(store.ledger().id, "feedfacefeedfacefeedfacefeedface");
        if let Some(tx) = busy {
            tx.rollback().await.unwrap();
        }
        if let Some(tx) = reader {
            tx.rollback().await.unwrap();
        }
        assert_eq!(raw.migrations().await, h.raw.migrations().await);
        store.close().await;
        raw.close().await;
    }
);
