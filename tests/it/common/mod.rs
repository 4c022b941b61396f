//! Test harness: every test gets its own PostgreSQL database and its own
//! RabbitMQ queues, both removed when the test ends (even on failure). A test
//! that cannot reach a service fails with how to start it.

#![allow(dead_code, clippy::unwrap_used)]

use backfill_queue::{Broker, QueueNames};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::time::Duration;

pub fn base_db_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub const PG_HINT: &str = "PostgreSQL is not reachable. Start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` (or run `.ci/run`), or point DATABASE_URL at a server.";
pub const MQ_HINT: &str = "RabbitMQ is not reachable. Start it with `rabbitmq-server -detached` (or run `.ci/run`), or point AMQP_URL at a broker.";

pub struct TestEnv {
    pub db_name: String,
    pub db_url: String,
    pub prefix: String,
    pub pool: PgPool,
    admin: PgConnectOptions,
}

impl TestEnv {
    pub async fn new() -> TestEnv {
        let admin =
            PgConnectOptions::from_str(&base_db_url()).expect("DATABASE_URL is not a valid URL");
        let mut conn = admin
            .connect()
            .await
            .unwrap_or_else(|e| panic!("{PG_HINT} ({e})"));
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("bf_test_{}", &id[..16]);
        sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&mut conn)
            .await
            .expect("create test database");
        drop(conn);
        let opts = admin.clone().database(&db_name);
        let db_url = opts.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .expect("connect to test database");
        let prefix = format!("bftest-{}", &id[..16]);
        // Fail early, with the hint, when the broker is down.
        let broker = Broker::connect(&amqp_url(), QueueNames::with_prefix(&prefix))
            .await
            .unwrap_or_else(|e| panic!("{MQ_HINT} ({e})"));
        broker.close().await;
        TestEnv {
            db_name,
            db_url,
            prefix,
            pool,
            admin,
        }
    }

    pub fn queues(&self) -> QueueNames {
        QueueNames::with_prefix(&self.prefix)
    }

    /// A `backfill` command wired to this test's database and queues.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_backfill"));
        c.args(args)
            .env("DATABASE_URL", &self.db_url)
            .env("AMQP_URL", amqp_url())
            .env("BACKFILL_QUEUE_PREFIX", &self.prefix)
            // Most tests commit without a dry run first; the review gate
            // has tests of its own (tests/it/tier2/reports.rs) that remove this.
            .env("BACKFILL_SKIP_REVIEW", "1")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    /// Runs `backfill ARGS` to completion (killed, and the test failed, after
    /// five minutes: a hung run must not hang the suite).
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    /// [`TestEnv::run`] with more environment variables set.
    pub fn run_with(&self, args: &[&str], vars: &[(&str, &str)]) -> Output {
        let mut cmd = self.cmd(args);
        cmd.envs(vars.iter().copied());
        let out = output_within(cmd, Duration::from_secs(300));
        eprintln!(
            "$ {}backfill {}\n--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            vars.iter()
                .map(|(k, v)| format!("{k}={v} "))
                .collect::<String>(),
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A fresh database holding the certificate data set.
    pub async fn with_certificates(programs: u32, revisions: u64) -> TestEnv {
        let env = TestEnv::new().await;
        env.seed_certificates(programs, revisions).await;
        env
    }

    /// A fresh database holding the collection data set.
    pub async fn with_collections(collections: u64, max_versions: u32) -> TestEnv {
        let env = TestEnv::new().await;
        env.seed_collections(collections, max_versions).await;
        env
    }

    pub async fn seed_certificates(
        &self,
        programs: u32,
        revisions: u64,
    ) -> backfill_demo::CertificateStats {
        backfill_demo::create_certificate_schema(&self.pool)
            .await
            .expect("schema");
        backfill_demo::generate_certificates(
            &self.pool,
            &backfill_demo::CertificateParams {
                programs,
                revisions,
                seed: 7,
            },
        )
        .await
        .expect("generate certificates")
    }

    pub async fn seed_collections(
        &self,
        collections: u64,
        max_versions: u32,
    ) -> backfill_demo::CollectionStats {
        backfill_demo::create_collection_schema(&self.pool)
            .await
            .expect("schema");
        backfill_demo::generate_collections(
            &self.pool,
            &backfill_demo::CollectionParams {
                collections,
                max_versions,
                seed: 7,
            },
        )
        .await
        .expect("generate collections")
    }

    /// A broker connection on this test's queues.
    pub async fn broker(&self) -> Broker {
        Broker::connect(&amqp_url(), self.queues()).await.unwrap()
    }

    pub async fn store(&self) -> backfill_store::Store {
        backfill_store::Store::connect(&self.db_url, 6)
            .await
            .expect("store")
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub async fn scalar_text(&self, sql: &str) -> String {
        sqlx::query_scalar::<_, String>(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs SQL of one or more statements.
    pub async fn exec(&self, sql: &str) {
        sqlx::raw_sql(sql)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Runs one statement with `$1` bound to `arg`.
    pub async fn exec_with(&self, sql: &str, arg: &str) {
        sqlx::query(sql)
            .bind(arg)
            .execute(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// A checksum of a whole table's rows, in key order.
    pub async fn table_md5(&self, table: &str, key: &str) -> String {
        self.scalar_text(&format!(
            "SELECT coalesce(md5(string_agg(t::text, '|' ORDER BY t.{key})), '') FROM {table} t"
        ))
        .await
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let db = self.db_name.clone();
        let prefix = self.prefix.clone();
        let pool = self.pool.clone();
        // Clean up on a thread of its own: Drop may run inside a runtime.
        on_own_thread(async move {
            // A connection dropped last on a current-thread test runtime
            // is returned by a task of that runtime, which is blocked in
            // this drop: closing would wait for it forever. Bound the
            // wait; DROP … WITH (FORCE) ends what is left.
            let _ = tokio::time::timeout(Duration::from_secs(2), pool.close()).await;
            if let Ok(mut conn) = admin.connect().await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
            if let Ok(b) = Broker::connect(&amqp_url(), QueueNames::with_prefix(&prefix)).await {
                let _ = b.delete_queues().await;
                b.close().await;
            }
        });
    }
}

/// Runs `work` to its end on a runtime of its own, on a thread of its own,
/// and waits for it: for clean-ups in Drop, which may run inside a runtime.
pub fn on_own_thread(work: impl std::future::Future<Output = ()> + Send + 'static) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(work);
    })
    .join();
}

/// Runs a command to completion within `limit`, or kills it and panics.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the backfill binary");
    child_output_within(child, limit)
}

/// Waits for a spawned child's output within `limit`, or kills it (SIGKILL)
/// and panics: a hung process must fail its test, not hang the suite.
pub fn child_output_within(child: std::process::Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.expect("wait for the backfill binary"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let partial = rx.recv_timeout(Duration::from_secs(5));
            if let Ok(Ok(out)) = partial {
                eprintln!(
                    "--- stdout of the killed process\n{}\n--- stderr\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            panic!("`backfill` did not finish within {limit:?}; killed it");
        }
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Asserts that a command's stderr holds `needle`, showing all of it if not.
pub fn assert_said(o: &Output, needle: &str) {
    assert!(stderr(o).contains(needle), "{}", stderr(o));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// The first `Summary:` line of a command's output.
pub fn summary_line(o: &Output) -> String {
    let text = stdout(o);
    text.lines()
        .find(|l| l.starts_with("Summary: "))
        .unwrap_or_else(|| panic!("no Summary: line in\n{text}"))
        .to_string()
}

/// The `Summary:` line's key=value pairs.
pub fn summary(o: &Output) -> std::collections::BTreeMap<String, String> {
    let text = stdout(o);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with("Summary: "))
        .unwrap_or_else(|| panic!("no Summary: line in\n{text}"));
    summary_fields(line)
}

/// A `Summary:` line's key=value pairs.
pub fn summary_fields(line: &str) -> std::collections::BTreeMap<String, String> {
    line.strip_prefix("Summary: ")
        .unwrap_or_else(|| panic!("not a Summary: line: {line}"))
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn num(s: &std::collections::BTreeMap<String, String>, k: &str) -> i64 {
    s.get(k)
        .unwrap_or_else(|| panic!("no {k} in summary {s:?}"))
        .parse()
        .unwrap()
}

/// The words of `backfill SUB --job SPEC FLAGS`, `sub` and `flags` split at
/// white space.
pub fn job_args<'a>(sub: &'a str, spec: &'a str, flags: &'a str) -> Vec<&'a str> {
    let mut args: Vec<&str> = sub.split_whitespace().collect();
    args.extend(["--job", spec]);
    args.extend(flags.split_whitespace());
    args
}

pub fn job(name: &str) -> String {
    format!("{}/jobs/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}
#[macro_use]
pub mod both;
pub mod fleet;
pub mod steer;

/// A job spec over the table `docs (id integer, doc jsonb)`: `head` (its
/// name and settings), the target, then `rules` (TOML of its rules).
pub fn docs_spec(head: &str, rules: &str) -> String {
    format!(
        r#"
{head}
[[targets]]
name = "docs"
table = "docs"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT id AS key FROM docs"
{rules}"#
    )
}

/// Plans a forward commit of `spec` over `scope`, 10,000 rows a shard, with
/// no throttle, sample or windows and a gate that lets it through; its run id.
pub async fn plan_commit(
    store: &backfill_store::Store,
    spec: backfill_job::JobSpec,
    scope: backfill_job::Scope,
) -> String {
    let (run_id, _plan) = backfill_coordinator::plan(
        store,
        &backfill_coordinator::RunRequest {
            spec,
            scope,
            mode: backfill_job::Mode::Commit,
            shard_size: Some(10_000),
            throttle: None,
            sample: None,
            gate: backfill_coordinator::Gate::skip("test", "test"),
            kind: backfill_job::RunKind::Forward,
            windows: None,
            publishing: None,
        },
    )
    .await
    .unwrap();
    run_id
}

/// Evaluates a row again (group, documents) after a conflict.
pub type Reevaluate<'a> = dyn Fn(&str, &std::collections::BTreeMap<String, Option<String>>) -> backfill_job::RowOutcome
    + Send
    + Sync
    + 'a;

/// A mapper's last step by hand: commits evaluated rows of a shard as
/// `worker`, re-evaluating conflicting rows with `retry` when given.
pub async fn commit_rows(
    store: &backfill_store::Store,
    run_id: &str,
    target: &backfill_job::spec::TargetSpec,
    shard_no: u32,
    worker: &str,
    rows: Vec<backfill_store::EvaluatedRow>,
    retry: Option<&Reevaluate<'_>>,
) -> backfill_store::Committed {
    store
        .commit_shard(backfill_store::ShardCommit {
            run_id,
            shard_no,
            target,
            mode: backfill_job::Mode::Commit,
            worker,
            rows,
            retry,
        })
        .await
        .unwrap()
}

/// A mapper's first step by hand: a fresh shard's rows, evaluated with the
/// given group parameters.
pub async fn read_and_evaluate(
    store: &backfill_store::Store,
    run_id: &str,
    target: &backfill_job::spec::TargetSpec,
    shard_no: u32,
    params: &serde_json::Map<String, serde_json::Value>,
) -> Vec<backfill_store::EvaluatedRow> {
    let backfill_store::ShardRows::Pending(rows) = store
        .fetch_shard(run_id, target, shard_no, true)
        .await
        .unwrap()
    else {
        panic!("expected a fresh shard")
    };
    let normalised = store.normalised_columns(&target.table).await.unwrap();
    rows.into_iter()
        .map(|r| {
            assert!(r.columns.is_some(), "row {} exists", r.key);
            backfill_store::EvaluatedRow::evaluate(r, |key, columns, _| {
                backfill_job::evaluate_row(
                    target,
                    &backfill_job::RowInput {
                        key,
                        columns,
                        params,
                        normalised: &normalised,
                    },
                    None,
                )
            })
        })
        .collect()
}

/// The first group (by key) a run planned with a certificate page and a
/// target title: (that page's id, the group's key).
pub async fn first_titled_group(env: &TestEnv, run: &str) -> (String, String) {
    sqlx::query_as(
        "SELECT g->'params'->>'certificate_page_id', g->>'key'
         FROM backfill_run, jsonb_array_elements(plan->'groups') g
         WHERE run_id = $1 AND g->'params'->>'certificate_page_id' IS NOT NULL
           AND g->'params'->>'target_title' IS NOT NULL
         ORDER BY g->>'key' LIMIT 1",
    )
    .bind(run)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// The keys of the evaluated rows the job would change, in shard order.
pub fn changing(evaluated: &[backfill_store::EvaluatedRow]) -> Vec<&str> {
    evaluated
        .iter()
        .filter(|r| matches!(r.outcome, backfill_job::RowOutcome::Changed(_)))
        .map(|r| r.key.as_str())
        .collect()
}

/// The SQL with which the application edits revision `$1`'s title on
/// PostgreSQL (`jsonb`).
pub const EDIT_TITLE: &str = "UPDATE wagtailcore_revision SET content = jsonb_set(content, '{product_name}', '\"Edited by an admin\"') WHERE id = $1::int";

/// Starts `backfill ARGS` (a coordinator, its output dropped) and kills it
/// (SIGKILL) once it has published some of its shards; asserts that it had
/// not published them all, and returns (published, total) as the ledger
/// then shows them.
pub async fn kill_mid_publish(env: &TestEnv, args: &[&str]) -> (i64, i64) {
    let mut coordinator = env
        .cmd(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the coordinator never started publishing"
        );
        let published = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM backfill_shard WHERE published_at IS NOT NULL",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap_or(0);
        if published > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    let published = env
        .scalar_i64("SELECT count(*) FROM backfill_shard WHERE published_at IS NOT NULL")
        .await;
    let total = env
        .scalar_i64("SELECT shards_total::bigint FROM backfill_run")
        .await;
    assert!(
        published < total,
        "killed mid-publish ({published} of {total})"
    );
    (published, total)
}

/// A spec file in a directory of its own, removed on drop.
pub struct SpecFile {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
}

impl SpecFile {
    pub fn new(name: &str, text: &str) -> SpecFile {
        let dir = std::env::temp_dir().join(format!("bf-spec-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        SpecFile { dir, path }
    }

    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
