//! Rules the database applies itself (`backfill_job::pushdown`): a run
//! whose rules PostgreSQL can say in SQL gives every row the outcome the
//! read-rewrite-write path gives it (`BACKFILL_PUSHDOWN=off`), on the two
//! shipped jobs it can apply and on documents of every shape; rows of
//! another shape are handed to that path in the same transaction, a
//! revert restores the pushed-down commit byte for byte, and an
//! application's edit to another key that races the write is kept, with
//! the rules applied on top of it, where the read-rewrite-write path
//! reports a conflict.

#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::time::Duration;

use crate::common::{docs_spec, num, summary, SpecFile, TestEnv};

/// Every shape the edits meet: rows they apply to in the database, and
/// rows they hand back (a NULL document, an array, a parent a `set` would
/// create, an absent source).
const SHAPES: &str = r#"INSERT INTO docs (id, doc) VALUES
    (1, '{"title": "Old", "meta": {"x": 1, "y": 2}, "src": "s1", "info": {}}'),
    (2, '{"title": "New", "src": "s2", "copy": "s2", "info": {"label": "L"}}'),
    (3, '{"src": 3, "info": {"label": 1.0}}'),
    (4, NULL),
    (5, '[1, 2]'),
    (6, '{"title": "Old", "meta": "flat", "src": {"deep": [1, {"a": null}]}, "info": {}}'),
    (7, '{"title": 5, "meta": {"x": [1]}, "src": null, "info": {"label": 1}}'),
    (8, '{"title": "Old", "src": "s8"}'),
    (9, '{"title": "Old", "meta": {"x": 1}, "info": {}}'),
    (10, '{"title": "Old", "src": "s10", "info": []}')"#;

/// Sets from a literal and from a pointer, a nested set under a parent,
/// and a remove.
fn shapes_spec() -> String {
    docs_spec(
        r#"name = "pushdown-shapes""#,
        r#"[[targets.rules]]
op = "set"
path = "/title"
value = "New"

[[targets.rules]]
op = "remove"
path = "/meta/x"

[[targets.rules]]
op = "set"
path = "/copy"
from = "/src"

[[targets.rules]]
op = "set"
path = "/info/label"
value = 1
"#,
    )
}

async fn docs(env: &TestEnv) {
    docs_of(env, SHAPES).await;
}

async fn docs_of(env: &TestEnv, insert: &str) {
    env.exec("CREATE TABLE docs (id integer PRIMARY KEY, doc jsonb, note text)")
        .await;
    env.exec(insert).await;
}

/// `backfill ARGS` with the database applying the rules where it can
/// (`pushdown`) or every row read and rewritten.
fn run(env: &TestEnv, pushdown: bool, args: &[&str]) -> Output {
    let off: &[(&str, &str)] = &[("BACKFILL_PUSHDOWN", "off")];
    env.run_with(args, if pushdown { &[] } else { off })
}

fn counts(out: &Output) -> [i64; 6] {
    let s = summary(out);
    backfill_job::tally::Counts::NAMES.map(|k| num(&s, k))
}

async fn rows(env: &TestEnv) -> Vec<(i64, String)> {
    let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let rows: Vec<(i64, Option<String>)> =
        sqlx::query_as("SELECT id::int8, doc::text FROM docs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    pool.close().await;
    rows.into_iter()
        .map(|(id, d)| (id, d.unwrap_or_else(|| "NULL".into())))
        .collect()
}

/// Rows of the run's target the database applied the rules to.
async fn pushed_down(env: &TestEnv, run: &str) -> i64 {
    env.scalar_i64(&format!(
        "SELECT coalesce((tally->'pushed_down'->>'docs')::int8, 0) FROM backfill_run WHERE run_id = '{run}'"
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shape_gets_the_outcome_of_the_read_rewrite_write_path_and_a_revert_restores_it() {
    let (classic, pushed) = (TestEnv::new().await, TestEnv::new().await);
    docs(&classic).await;
    docs(&pushed).await;
    let before = rows(&pushed).await;
    let spec = SpecFile::new("pushdown-shapes", &shapes_spec());
    let args = ["run", "--local", "--job", spec.path(), "--all"];

    // The dry runs agree, and write nothing.
    let (dry_c, dry_p) = (run(&classic, false, &args), run(&pushed, true, &args));
    assert_eq!(dry_c.status.code(), dry_p.status.code());
    assert_eq!(counts(&dry_c), counts(&dry_p));
    assert_eq!(rows(&pushed).await, before, "a dry run writes nothing");
    let dry_run = summary(&dry_p)["run"].clone();
    assert_eq!(
        pushed_down(&pushed, &dry_run).await,
        6,
        "rows 4, 5, 9 and 10 are handed back"
    );
    assert_eq!(pushed_down(&classic, &summary(&dry_c)["run"]).await, 0);

    // The commits agree row for row.
    let commit: Vec<&str> = args.iter().copied().chain(["--commit"]).collect();
    let (com_c, com_p) = (run(&classic, false, &commit), run(&pushed, true, &commit));
    assert_eq!(com_c.status.code(), com_p.status.code());
    let c = counts(&com_p);
    assert_eq!(c, counts(&com_c));
    assert_eq!(c[0], 10, "{c:?}");
    assert_eq!(
        (c[1], c[4], c[5]),
        (6, 0, 4),
        "rows 4, 5, 9 and 10 are errors"
    );
    assert_eq!(rows(&pushed).await, rows(&classic).await);
    let after = rows(&pushed).await;
    assert_ne!(after, before);
    let commit_run = summary(&com_p)["run"].clone();
    assert_eq!(pushed_down(&pushed, &commit_run).await, 6);
    // A dry run afterwards finds nothing to change.
    let again = run(&pushed, true, &args);
    assert_eq!(num(&summary(&again), "changed"), 0);

    // The revert puts every row back as it was, to the byte.
    let revert = run(&pushed, true, &["revert", &commit_run, "--commit"]);
    assert_eq!(revert.status.code(), Some(0));
    assert_eq!(rows(&pushed).await, before);
}

/// The certificate job at its real shape: every revision is pushed down and
/// the result is the read-rewrite-write path's, revision for revision.
#[tokio::test(flavor = "multi_thread")]
async fn the_certificate_job_pushed_down_writes_what_the_job_path_writes() {
    a_wagtail_job_pushed_down_writes_what_the_job_path_writes("program-certificate-titles").await;
}

/// The Wagtail field rename (a `rename` of a key that may hold `null`),
/// the same way.
#[tokio::test(flavor = "multi_thread")]
async fn the_field_rename_pushed_down_writes_what_the_job_path_writes() {
    a_wagtail_job_pushed_down_writes_what_the_job_path_writes("wagtail-rename-field").await;
}

/// `job` (a target `revisions` of Wagtail's revisions) committed on both
/// paths over the same data: the same revisions, counts and report, every
/// revision applied by the database, and `status` saying so.
async fn a_wagtail_job_pushed_down_writes_what_the_job_path_writes(job: &str) {
    let (classic, pushed) = (
        TestEnv::with_certificates(6, 300).await,
        TestEnv::with_certificates(6, 300).await,
    );
    let job = crate::common::job(job);
    let args = ["run", "--local", "--job", &job, "--all", "--commit"];
    let (c, p) = (run(&classic, false, &args), run(&pushed, true, &args));
    assert_eq!(c.status.code(), p.status.code());
    assert_eq!(counts(&c), counts(&p));
    assert!(counts(&p)[1] > 0);
    let md5 = "SELECT md5(string_agg(id || ':' || content::text, ',' ORDER BY id)) FROM wagtailcore_revision";
    assert_eq!(
        classic.scalar_text(md5).await,
        pushed.scalar_text(md5).await
    );
    let run_id = summary(&p)["run"].clone();
    let pushed_rows = pushed
        .scalar_i64(&format!(
            "SELECT (tally->'pushed_down'->>'revisions')::int8 FROM backfill_run WHERE run_id = '{run_id}'"
        ))
        .await;
    assert_eq!(pushed_rows, counts(&p)[0]);
    // `status` says which path the rows took, as text and as JSON.
    let status = pushed.run(&["status", &run_id, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(json["pushed_down"]["revisions"].as_i64(), Some(pushed_rows));
    let text = String::from_utf8_lossy(&pushed.run(&["status", &run_id]).stdout).into_owned();
    assert!(
        text.contains(&format!(
            "path     revisions: rules applied by the database to {pushed_rows} rows"
        )),
        "{text}"
    );
    let classic_status = classic.run(&["status", &summary(&c)["run"], "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&classic_status.stdout).unwrap();
    assert_eq!(json["pushed_down"], serde_json::json!({}));
    // The report's current values and samples are the same.
    same_reports(
        (&classic, &summary(&c)["run"]),
        (&pushed, &run_id),
        "revisions",
        true,
    );
}

/// The reports of a run on each path are the same, line for line, but for
/// the pushed-down run's `Rules applied by the database:` block, which
/// names `target`. `in_order: false` compares the lines in any order: a
/// sample that changes several paths lists them in the document's order on
/// the read-rewrite-write path (its diff's) and in the rules' order when
/// the database applies them.
fn same_reports(
    (classic, c_run): (&TestEnv, &str),
    (pushed, p_run): (&TestEnv, &str),
    target: &str,
    in_order: bool,
) {
    let report = |env: &TestEnv, run: &str| {
        let out = env.run(&["report", run]);
        String::from_utf8_lossy(&out.stdout).replace(run, "RUN")
    };
    let (rc, rp) = (report(classic, c_run), report(pushed, p_run));
    assert!(
        rp.contains(&format!("Rules applied by the database:\n  {target}: ")),
        "{rp}"
    );
    assert!(!rc.contains("Rules applied by the database"), "{rc}");
    let start = rp.find("\nRules applied by the database:").unwrap();
    let end = start + 2 + rp[start + 1..].find("\n\n").unwrap();
    let without = format!("{}{}", &rp[..start], &rp[end..]);
    let lines = |r: &str| {
        let mut l: Vec<String> = r.lines().map(str::to_string).collect();
        if !in_order {
            l.sort();
        }
        l
    };
    assert_eq!(lines(&rc), lines(&without));
}

/// Renames (each `on_both`, an array's element, a JSON null moved), a
/// copy, rules under conditions (a number equal by value, a key that must
/// be absent, a value that must differ) and a row guard, on documents of
/// every shape.
const RENAMES: &str = r#"INSERT INTO docs (id, doc) VALUES
    (1, '{"a": 1, "p": {"c": 2}, "q": {"e": 3}, "src": "s", "kind": 1.0, "tmp": 1}'),
    (2, '{"a": 1, "b": 2, "src": "s"}'),
    (3, '{"p": {"c": 2, "d": 9}, "q": {"e": 3, "f": 8}, "kind": "1"}'),
    (4, '{"p": [1, 2], "a": null, "src": {"deep": [1, {"x": null}]}, "kind": 1, "gone": null}'),
    (5, '{"list": [1], "a": 2}'),
    (6, NULL),
    (7, '[1]'),
    (8, '{"src": {"deep": [1]}, "dst": {"deep": [1]}, "kind": 1}'),
    (9, '{"p": "text", "q": null, "list": {"0": "x"}, "tmp": 2, "keep": true}'),
    (10, '{"a": 1, "p": {"c": null}, "dst": 1, "tmp": 3, "keep": false}'),
    (11, '{"a": 1, "hold": "yes"}'),
    (12, '{"a": 1, "hold": null}')"#;

const RENAME_RULES: &str = r#"[[targets.guards]]
column = "doc"
path = "/hold"
check = "not_equals"
value = "yes"
reason = "held"

[[targets.rules]]
op = "rename"
path = "/a"
to = "b"

[[targets.rules]]
op = "rename"
path = "/p/c"
to = "d"
on_both = "keep_new"

[[targets.rules]]
op = "rename"
path = "/q/e"
to = "f"
on_both = "overwrite"

[[targets.rules]]
op = "rename"
path = "/list/0"
to = "first"

[[targets.rules]]
op = "copy"
path = "/dst"
from = "/src"

[[targets.rules]]
op = "set"
path = "/flag"
value = true
when = [{ path = "/kind", check = "equals", value = 1 }, { path = "/gone", check = "absent" }]

[[targets.rules]]
op = "remove"
path = "/tmp"
when = [{ path = "/keep", check = "not_equals", value = true }]
"#;

#[tokio::test(flavor = "multi_thread")]
async fn renames_copies_and_conditions_get_the_outcome_of_the_read_rewrite_write_path_and_revert() {
    let (classic, pushed) = (TestEnv::new().await, TestEnv::new().await);
    docs_of(&classic, RENAMES).await;
    docs_of(&pushed, RENAMES).await;
    let before = rows(&pushed).await;
    let spec = SpecFile::new(
        "pushdown-renames",
        &docs_spec(r#"name = "pushdown-renames""#, RENAME_RULES),
    );
    let args = ["run", "--local", "--job", spec.path(), "--all"];
    let (dry_c, dry_p) = (run(&classic, false, &args), run(&pushed, true, &args));
    assert_eq!(counts(&dry_c), counts(&dry_p));
    assert_eq!(rows(&pushed).await, before, "a dry run writes nothing");

    let commit: Vec<&str> = args.iter().copied().chain(["--commit"]).collect();
    let (com_c, com_p) = (run(&classic, false, &commit), run(&pushed, true, &commit));
    assert_eq!(com_c.status.code(), com_p.status.code());
    let c = counts(&com_p);
    assert_eq!(c, counts(&com_c));
    assert_eq!(
        (c[0], c[1], c[2], c[3], c[5]),
        (12, 7, 2, 1, 2),
        "row 11 is skipped by the guard, rows 2 (both keys) and 5 (an array's element) are errors: {c:?}"
    );
    assert_eq!(rows(&pushed).await, rows(&classic).await);
    let (c_run, p_run) = (
        summary(&com_c)["run"].clone(),
        summary(&com_p)["run"].clone(),
    );
    assert_eq!(
        pushed_down(&pushed, &p_run).await,
        8,
        "rows 2, 5, 7 and 11 are handed back"
    );
    same_reports((&classic, &c_run), (&pushed, &p_run), "docs", false);
    let again = run(&pushed, true, &args);
    assert_eq!(num(&summary(&again), "changed"), 0);

    let revert = run(&pushed, true, &["revert", &p_run, "--commit"]);
    assert_eq!(revert.status.code(), Some(0));
    assert_eq!(rows(&pushed).await, before, "restored to the byte");
}

/// The collection migration (Oppia's shape): a NULL column made an object
/// (`collection_dict` of the models), a parent the rule creates
/// (`/collection_dict` of every snapshot), a value taken from another
/// column. Every row is applied by the database, the tables end as the
/// read-rewrite-write path leaves them, and a revert restores them.
#[tokio::test(flavor = "multi_thread")]
async fn the_collection_migration_pushed_down_writes_what_the_job_path_writes_and_reverts() {
    let (classic, pushed) = (
        TestEnv::with_collections(40, 6).await,
        TestEnv::with_collections(40, 6).await,
    );
    let before = tables(&pushed).await;
    assert_eq!(tables(&classic).await, before, "the same data on both");
    let job = crate::common::job("collection-dict-migrate");
    let args = ["run", "--local", "--job", &job, "--all", "--commit"];
    let (c, p) = (run(&classic, false, &args), run(&pushed, true, &args));
    assert_eq!((c.status.code(), p.status.code()), (Some(0), Some(0)));
    assert_eq!(counts(&c), counts(&p));
    assert_eq!(tables(&pushed).await, tables(&classic).await);
    let run_id = summary(&p)["run"].clone();
    for (target, table) in [
        ("models", "collection_models"),
        ("snapshots", "collection_snapshot_contents"),
    ] {
        let n = pushed
            .scalar_i64(&format!(
                "SELECT coalesce((tally->'pushed_down'->>'{target}')::int8, 0) FROM backfill_run WHERE run_id = '{run_id}'"
            ))
            .await;
        let all = pushed
            .scalar_i64(&format!("SELECT count(*) FROM {table}"))
            .await;
        assert_eq!(n, all, "every row of {target} applied by the database");
    }
    let revert = run(&pushed, true, &["revert", &run_id, "--commit"]);
    assert_eq!(revert.status.code(), Some(0));
    assert_eq!(tables(&pushed).await, before, "restored to the byte");
}

/// The collection cleanup after the migration: its snapshots target (a
/// `set` under a row guard) is applied by the database, its models target
/// (a whole column set) read and rewritten; before the migration the
/// guard skips every row on both paths.
#[tokio::test(flavor = "multi_thread")]
async fn the_collection_cleanup_pushed_down_writes_what_the_job_path_writes() {
    let (classic, pushed) = (
        TestEnv::with_collections(30, 4).await,
        TestEnv::with_collections(30, 4).await,
    );
    let cleanup = crate::common::job("collection-nodes-cleanup");
    let dry = ["run", "--local", "--job", &cleanup, "--all"];
    // Before the migration the guard skips every row, on both paths.
    let (c, p) = (run(&classic, false, &dry), run(&pushed, true, &dry));
    assert_eq!(counts(&c), counts(&p));
    assert_eq!(counts(&p)[3], counts(&p)[0], "all skipped");
    let migrate = crate::common::job("collection-dict-migrate");
    for env in [&classic, &pushed] {
        let migrated = env.run(&["run", "--local", "--job", &migrate, "--all", "--commit"]);
        assert_eq!(migrated.status.code(), Some(0));
        let verified = env.run(&["verify", "--job", &migrate, "--all"]);
        assert_eq!(verified.status.code(), Some(0));
    }
    let args = ["run", "--local", "--job", &cleanup, "--all", "--commit"];
    let (c, p) = (run(&classic, false, &args), run(&pushed, true, &args));
    assert_eq!((c.status.code(), p.status.code()), (Some(0), Some(0)));
    assert_eq!(counts(&c), counts(&p));
    assert!(counts(&p)[1] > 0);
    assert_eq!(tables(&pushed).await, tables(&classic).await);
    let run_id = summary(&p)["run"].clone();
    let tally = |target: &str| {
        format!(
            "SELECT coalesce((tally->'pushed_down'->>'{target}')::int8, 0) FROM backfill_run WHERE run_id = '{run_id}'"
        )
    };
    let snapshots = pushed
        .scalar_i64("SELECT count(*) FROM collection_snapshot_contents")
        .await;
    assert_eq!(pushed.scalar_i64(&tally("snapshots")).await, snapshots);
    assert_eq!(pushed.scalar_i64(&tally("models")).await, 0);
}

/// Both tables of the collection data set, as checksums.
async fn tables(env: &TestEnv) -> (String, String) {
    (
        env.table_md5("collection_models", "id").await,
        env.table_md5("collection_snapshot_contents", "id").await,
    )
}

/// An application transaction that edits another key of a row holds the
/// row while the run reaches it, then commits.
async fn race(env: &TestEnv, pushdown: bool) -> Output {
    let pool = sqlx::PgPool::connect(&env.db_url).await.unwrap();
    let mut app = pool.begin().await.unwrap();
    sqlx::query("UPDATE docs SET doc = doc || '{\"edited_by_app\": true}' WHERE id = 1")
        .execute(&mut *app)
        .await
        .unwrap();
    let spec = SpecFile::new("pushdown-shapes", &shapes_spec());
    let mut cmd = env.cmd(&["run", "--local", "--job", spec.path(), "--all", "--commit"]);
    if !pushdown {
        cmd.env("BACKFILL_PUSHDOWN", "off");
    }
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the run to read the row, or to wait on its lock.
    tokio::time::sleep(Duration::from_secs(3)).await;
    app.commit().await.unwrap();
    pool.close().await;
    tokio::task::spawn_blocking(move || {
        crate::common::child_output_within(child, Duration::from_secs(300))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_racing_a_pushed_down_write_is_kept_with_the_rules_applied_on_top() {
    let env = TestEnv::new().await;
    docs(&env).await;
    let out = race(&env, true).await;
    let s = summary(&out);
    assert_eq!(num(&s, "conflicts"), 0, "{s:?}");
    let doc = env
        .scalar_text("SELECT doc::text FROM docs WHERE id = 1")
        .await;
    assert!(
        doc.contains("\"edited_by_app\": true") && doc.contains("\"title\": \"New\""),
        "both the application's edit and the rule: {doc}"
    );

    // The read-rewrite-write path read the row before the edit: its
    // compare-and-set finds it changed, reports a conflict and keeps the edit.
    let env = TestEnv::new().await;
    docs(&env).await;
    let out = race(&env, false).await;
    assert_ne!(out.status.code(), Some(0));
    assert_eq!(num(&summary(&out), "conflicts"), 1);
    let doc = env
        .scalar_text("SELECT doc::text FROM docs WHERE id = 1")
        .await;
    assert!(
        doc.contains("\"edited_by_app\": true") && doc.contains("\"title\": \"Old\""),
        "{doc}"
    );
}
