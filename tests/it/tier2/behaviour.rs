//! The foundation behaviours on both back ends: PostgreSQL with RabbitMQ,
//! and SQLite embedded (`run --local`, implied by the sqlite:// URL). The
//! expected outcome is computed in Rust from the raw tables.

#![allow(clippy::unwrap_used)]

use crate::common::both::{Backend, CertOracle, Db, BOTH};
use crate::common::{
    assert_said, changing, commit_rows, job, job_args, num, plan_commit, read_and_evaluate, stderr,
    stdout, summary,
};
use backfill_demo::program_readable_id;
use backfill_job::{JobSpec, RowInput, Scope};

#[tokio::test(flavor = "multi_thread")]
async fn certificate_titles_dry_run_commit_rerun_on_both_back_ends() {
    // What a run of the job processed, changed and affected.
    let affected = |s: &std::collections::BTreeMap<String, String>| {
        (
            num(s, "processed"),
            num(s, "changed"),
            num(s, "refs_affected"),
        )
    };
    let spec = job("program-certificate-titles");
    let mut summaries = Vec::new();
    for b in BOTH {
        let db = Db::with_certificates(b, 25, 500).await;
        let oracle = CertOracle::read(&db).await;
        let (rows, changing, refs) = oracle.expected();
        assert!(
            changing > 0 && changing < rows,
            "{b:?}: stale and current titles both present"
        );

        // Dry run: reports, writes nothing.
        let out = db.run(&job_args("run", &spec, "--all"));
        assert_eq!(out.status.code(), Some(0), "{b:?}");
        let s = summary(&out);
        assert_eq!(s["mode"], "dry-run");
        assert_eq!(affected(&s), (rows, changing, refs), "{b:?}");
        assert_eq!(
            db.docs("wagtailcore_revision", "id", "content").await,
            oracle.before,
            "{b:?}: dry run wrote"
        );

        // Commit: exactly the targets change, only product_name, once.
        let out = db.run(&job_args("run", &spec, "--all --commit"));
        assert_eq!(out.status.code(), Some(0), "{b:?}");
        let s = summary(&out);
        assert_eq!(affected(&s), (rows, changing, refs), "{b:?}");
        assert_eq!(num(&s, "conflicts") + num(&s, "errors"), 0);
        let after = db.docs("wagtailcore_revision", "id", "content").await;
        oracle.check_after(&after);
        assert_eq!(oracle.changed_keys(&after).len() as i64, changing);
        assert_eq!(
            db.count("backfill_before_image").await,
            changing,
            "{b:?}: each changed row written once"
        );
        summaries.push(
            s.iter()
                .filter(|(k, _)| k.as_str() != "run")
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" "),
        );

        // A second commit changes nothing.
        let out = db.run(&job_args("run", &spec, "--all --commit"));
        assert_eq!(out.status.code(), Some(0));
        let s = summary(&out);
        assert_eq!(
            (num(&s, "changed"), num(&s, "unchanged")),
            (0, rows),
            "{b:?}"
        );
        assert_eq!(
            db.docs("wagtailcore_revision", "id", "content").await,
            after
        );
    }
    assert_eq!(
        summaries[0], summaries[1],
        "both back ends give the same summary on the same data"
    );
}

backends!(scope_flags_and_skips_on_both_back_ends);

pub(crate) async fn scope_flags_and_skips_on_both_back_ends(b: Backend) {
    let db = Db::with_certificates(b, 20, 200).await;
    let before = db.docs("wagtailcore_revision", "id", "content").await;
    for args in [vec![], vec!["--all", "--group", "x"]] {
        let spec = job("program-certificate-titles");
        let mut a = vec!["run", "--job", spec.as_str(), "--commit"];
        a.extend(args);
        let out = db.run(&a);
        assert_eq!(out.status.code(), Some(2), "{b:?} {a:?}");
        assert!(stderr(&out).contains("exactly one of --group KEY (repeatable) or --all"));
    }
    assert_eq!(
        db.docs("wagtailcore_revision", "id", "content").await,
        before
    );

    let out = db.run(&[
        "run",
        "--job",
        &job("program-certificate-titles"),
        "--group",
        &program_readable_id(0),
        "--group",
        &program_readable_id(7),
        "--group",
        &program_readable_id(8),
        "--group",
        &program_readable_id(9),
        "--group",
        &program_readable_id(19),
        "--group",
        "program-v1:NOPE",
        "--commit",
    ]);
    assert_eq!(out.status.code(), Some(0), "{b:?}");
    let s = summary(&out);
    assert_eq!(
        (num(&s, "groups_processed"), num(&s, "groups_skipped")),
        (1, 5),
        "{b:?}"
    );
    let text = stdout(&out);
    for reason in [
        "SKIPPED (live certificate title is still a placeholder)",
        "SKIPPED (live certificate title is empty)",
        "SKIPPED (no program page)",
        "SKIPPED (no live certificate page)",
        "SKIPPED (unknown key)",
    ] {
        assert!(text.contains(reason), "{b:?}: {reason}\n{text}");
    }
    assert!(
        text.contains("certificate is revoked") || text.contains("certificate has no revision")
    );
}

backends!(row_errors_exit_non_zero_and_the_rest_commits_on_both_back_ends);

pub(crate) async fn row_errors_exit_non_zero_and_the_rest_commits_on_both_back_ends(b: Backend) {
    let db = Db::with_certificates(b, 12, 150).await;
    let oracle = CertOracle::read(&db).await;
    let (rows, _, _) = oracle.expected();
    let bad = oracle.targets.keys().next().unwrap().clone();
    db.execute(&format!(
        "UPDATE wagtailcore_revision SET content = '[\"not\", \"an\", \"object\"]' WHERE id = {bad}"
    ))
    .await;
    let out = db.run(&job_args(
        "run",
        &job("program-certificate-titles"),
        "--all --commit",
    ));
    assert_eq!(out.status.code(), Some(1), "{b:?}");
    let s = summary(&out);
    assert_eq!(num(&s, "errors"), 1);
    assert_eq!(num(&s, "processed"), rows);
    assert!(
        stdout(&out).contains(&format!("revisions/{bad}: rule 0 (content): cannot set")),
        "{b:?}"
    );
    let after = db.docs("wagtailcore_revision", "id", "content").await;
    assert_eq!(after[&bad], serde_json::json!(["not", "an", "object"]));
    let others_ok = oracle
        .targets
        .iter()
        .filter(|(k, _)| **k != bad)
        .all(|(k, (p, _))| {
            after[k].get("product_name")
                == Some(&serde_json::Value::String(oracle.eligible[p].clone()))
        });
    assert!(others_ok, "{b:?}: the rest committed");
}

backends!(conflicts_and_redelivery_on_both_back_ends);

pub(crate) async fn conflicts_and_redelivery_on_both_back_ends(b: Backend) {
    let db = Db::with_certificates(b, 4, 100).await;
    let store = db.store().await;
    let spec = JobSpec::parse(&std::fs::read_to_string(job("program-certificate-titles")).unwrap())
        .unwrap();
    let program = program_readable_id(0);
    let run_id = plan_commit(&store, spec, Scope::Groups(vec![program.clone()])).await;
    let tasks = backfill_coordinator::pending_tasks(&store, &run_id)
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    let rec = store.load_run(&run_id).await.unwrap().unwrap();
    let target = rec.spec.target("revisions").unwrap();
    let params = rec.plan.group(&program).unwrap().params.clone();

    let evaluated = read_and_evaluate(&store, &run_id, target, 0, &params).await;
    let victim = changing(&evaluated)[0].to_string();
    let edited = r#"{"product_name": "Edited by an admin"}"#;
    db.execute(&format!(
        "UPDATE wagtailcore_revision SET content = '{edited}' WHERE id = {victim}"
    ))
    .await;
    // Another row gets an edit of a column the job does not read: its
    // row version moves but its JSON does not, so it is still written
    // (the compare-and-set falls back from the version to the content).
    let bystander = changing(&evaluated)[1].to_string();
    db.execute(&format!(
        "UPDATE wagtailcore_revision SET approved_go_live_at = NULL WHERE id = {bystander}"
    ))
    .await;

    let committed = commit_rows(&store, &run_id, target, 0, "test", evaluated.clone(), None).await;
    assert_eq!(committed.tally().counts.conflicts, 1, "{b:?}");
    let docs = db.docs("wagtailcore_revision", "id", "content").await;
    assert_eq!(
        docs[&bystander]["product_name"], params["target_title"],
        "{b:?}: a row whose other columns changed is still rewritten"
    );
    assert_eq!(
        docs[&victim],
        serde_json::json!({"product_name": "Edited by an admin"}),
        "{b:?}: not clobbered"
    );
    let images = db.count("backfill_before_image").await;
    assert_eq!(images as u64, committed.tally().counts.changed);

    // Redelivery: the shard is done; nothing is applied again.
    let runs = backfill_mapper::RunCache::default();
    let again = backfill_mapper::process_task(&store, &runs, task, "m2")
        .await
        .unwrap();
    assert_eq!(&again.tally, committed.tally(), "{b:?}");
    assert_eq!(db.count("backfill_before_image").await, images);
    assert_eq!(db.docs("wagtailcore_revision", "id", "content").await, docs);
    let r1 = backfill_reducer::process_result(&store, &again)
        .await
        .unwrap();
    assert!(
        matches!(r1, backfill_store::Reduced::Finished(_)),
        "{b:?}: {r1:?}"
    );
    let r2 = backfill_reducer::process_result(&store, &again)
        .await
        .unwrap();
    assert_eq!(r2, backfill_store::Reduced::Duplicate, "{b:?}");
    let rec = store.load_run(&run_id).await.unwrap().unwrap();
    assert_eq!(rec.tally.counts, committed.tally().counts);
    store.close().await;
}

backends!(collection_migrate_then_cleanup_on_both_back_ends);

pub(crate) async fn collection_migrate_then_cleanup_on_both_back_ends(b: Backend) {
    let db = Db::with_collections(b, 12, 5).await;
    let (models, snaps) = (
        db.count("collection_models").await,
        db.count("collection_snapshot_contents").await,
    );
    let nodes_before = db.docs("collection_models", "id", "nodes").await;
    let snaps_before = db
        .docs("collection_snapshot_contents", "id", "content")
        .await;

    // Cleanup first: its commit is refused (it requires the migrate job
    // committed and verified), and its dry run skips every row.
    let out = db.run(&job_args(
        "run",
        &job("collection-nodes-cleanup"),
        "--all --commit",
    ));
    assert_eq!(out.status.code(), Some(2), "{b:?}");
    assert_said(&out, "requires job `collection-dict-migrate`");
    let out = db.run(&["run", "--job", &job("collection-nodes-cleanup"), "--all"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(num(&summary(&out), "skipped"), models + snaps, "{b:?}");
    assert_eq!(
        db.docs("collection_snapshot_contents", "id", "content")
            .await,
        snaps_before
    );

    let out = db.run(&job_args(
        "run",
        &job("collection-dict-migrate"),
        "--all --commit",
    ));
    assert_eq!(out.status.code(), Some(0), "{b:?}");
    assert_eq!(num(&summary(&out), "changed"), models + snaps);
    let dicts = db.docs("collection_models", "id", "collection_dict").await;
    for (id, nodes) in &nodes_before {
        assert_eq!(dicts[id]["nodes"], *nodes, "{b:?}: {id}");
    }
    for (id, doc) in db
        .docs("collection_snapshot_contents", "id", "content")
        .await
    {
        assert_eq!(
            doc["collection_dict"]["nodes"], snaps_before[&id]["nodes"],
            "{b:?}: version {id}"
        );
        let mut rest = doc.clone();
        rest.as_object_mut().unwrap().remove("collection_dict");
        assert_eq!(
            rest, snaps_before[&id],
            "{b:?}: version {id} otherwise unchanged"
        );
    }
    assert_eq!(
        (
            db.count("collection_models").await,
            db.count("collection_snapshot_contents").await
        ),
        (models, snaps)
    );

    // Not verified yet: still refused. Verify, and it starts.
    let out = db.run(&job_args(
        "run",
        &job("collection-nodes-cleanup"),
        "--all --commit",
    ));
    assert_eq!(out.status.code(), Some(2), "{b:?}");
    assert!(stderr(&out).contains("no verify of `collection-dict-migrate` passed"));
    let out = db.run(&["verify", "--job", &job("collection-dict-migrate"), "--all"]);
    assert_eq!(out.status.code(), Some(0), "{b:?}");
    assert!(stdout(&out)
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .starts_with("Summary: "));
    assert!(
        stdout(&out).contains(&format!(
            "Versions: collection_models {models} → {models}, collection_snapshot_contents {snaps} → {snaps}"
        )),
        "{}",
        stdout(&out)
    );
    let out = db.run(&job_args(
        "run",
        &job("collection-nodes-cleanup"),
        "--all --commit",
    ));
    assert_eq!(num(&summary(&out), "changed"), models + snaps, "{b:?}");
    for (_, nodes) in db.docs("collection_models", "id", "nodes").await {
        assert_eq!(nodes, serde_json::json!({}));
    }
    for (id, doc) in db
        .docs("collection_snapshot_contents", "id", "content")
        .await
    {
        assert_eq!(doc["nodes"], serde_json::json!({}), "{b:?}: {id}");
        assert_eq!(doc["collection_dict"]["nodes"], snaps_before[&id]["nodes"]);
    }
    let out = db.run(&job_args(
        "run",
        &job("collection-nodes-cleanup"),
        "--all --commit",
    ));
    assert_eq!(num(&summary(&out), "changed"), 0);
    assert_eq!(
        (
            db.count("collection_models").await,
            db.count("collection_snapshot_contents").await
        ),
        (models, snaps)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqlite_refuses_distributed_roles() {
    let db = Db::new(Backend::Sqlite).await;
    for role in [
        vec!["mapper"],
        vec!["reducer"],
        job_args("coordinator", &job("collection-dict-migrate"), "--all"),
    ] {
        let out = db.run(&role);
        assert_eq!(out.status.code(), Some(2), "{role:?}");
        assert_said(&out, "use `backfill run --local`");
    }
}

/// `backfill demo ARGS` on an embedded database in a fresh directory, with
/// both service URLs at closed ports; its output, its three `Summary:`
/// lines (dry run, commit, commit again) checked, and the directory.
fn embedded_demo(args: &[&str]) -> (std::process::Output, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("bf-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("demo.sqlite3");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(["demo", "--db", db.to_str().unwrap()])
        .args(args)
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .env("AMQP_URL", "amqp://nobody:x@127.0.0.1:1/%2f")
        .output()
        .unwrap();
    let text = stdout(&out);
    eprintln!("{text}\n{}", stderr(&out));
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("Summary: "))
        .collect();
    assert_eq!(lines.len(), 3, "dry run, commit, commit again");
    assert!(lines[0].starts_with("Summary: mode=dry-run "));
    assert!(lines[1].starts_with("Summary: mode=commit "));
    assert!(
        !lines[1].contains(" changed=0 "),
        "the first commit changes rows"
    );
    assert!(
        lines[2].contains(" changed=0 "),
        "the second commit changes nothing"
    );
    (out, dir)
}

#[test]
fn the_demo_needs_no_services() {
    let (out, dir) = embedded_demo(&["--revisions", "400", "--programs", "20"]);
    let db = dir.join("demo.sqlite3");
    assert!(stdout(&out).contains(&format!(
        "The demo database is the SQLite file {}",
        db.display()
    )));
    assert!(db.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `demo --job wagtail-streamfield`: the shipped StreamField migration on
/// the same embedded database, pages and revisions, with `changed=0` the
/// second time; every signatory block's `title_2` is now `affiliation`.
#[test]
fn the_demo_shows_the_streamfield_migration() {
    let (out, dir) = embedded_demo(&[
        "--revisions",
        "300",
        "--programs",
        "12",
        "--job",
        "wagtail-streamfield",
    ]);
    let text = stdout(&out);
    assert!(text.contains("Parameters: table=cms_certificatepage field=signatories"));
    assert!(text.contains("SELECT page_ptr_id, signatories FROM cms_certificatepage"));
    let db = dir.join("demo.sqlite3");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"))
        .args(["demo", "--db", db.to_str().unwrap(), "--job", "nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert_said(&bad, "--job `nope`");
    let _ = std::fs::remove_dir_all(&dir);
}

backends!(on_conflict_retry_applies_the_rules_to_the_applications_edit_on_both_back_ends);

pub(crate) async fn on_conflict_retry_applies_the_rules_to_the_applications_edit_on_both_back_ends(
    b: Backend,
) {
    let db = Db::with_certificates(b, 4, 100).await;
    let store = db.store().await;
    let text = std::fs::read_to_string(job("program-certificate-titles")).unwrap();
    let spec = JobSpec::parse(&format!("on_conflict = \"retry\"\n{text}")).unwrap();
    let program = program_readable_id(0);
    let run_id = plan_commit(&store, spec, Scope::Groups(vec![program.clone()])).await;
    let rec = store.load_run(&run_id).await.unwrap().unwrap();
    let target = rec.spec.target("revisions").unwrap();
    let params = rec.plan.group(&program).unwrap().params.clone();
    let title = params["target_title"].clone();
    let evaluated = read_and_evaluate(&store, &run_id, target, 0, &params).await;
    let changing_rows = changing(&evaluated).len() as u64;
    let victim = changing(&evaluated)[0].to_string();
    // The application edits the row between our read and our write.
    db.execute(&format!(
        "UPDATE wagtailcore_revision SET content = '{{\"product_name\": \"Edited by an admin\", \"admin_note\": \"keep me\"}}' WHERE id = {victim}"
    ))
    .await;
    let reevaluate = |group: &str, cols: &std::collections::BTreeMap<String, Option<String>>| {
        let p = rec.plan.group(group).unwrap().params.clone();
        backfill_job::evaluate_row(
            target,
            &RowInput {
                key: "",
                columns: cols,
                params: &p,
                normalised: &std::collections::BTreeSet::new(),
            },
            None,
        )
        .outcome
    };
    let committed = commit_rows(
        &store,
        &run_id,
        target,
        0,
        "test",
        evaluated,
        Some(&reevaluate),
    )
    .await;
    let t = committed.tally();
    assert_eq!(
        (t.counts.conflicts, t.conflicts_retried, t.counts.changed),
        (0, 1, changing_rows),
        "{b:?}"
    );
    let docs = db.docs("wagtailcore_revision", "id", "content").await;
    assert_eq!(
        docs[&victim],
        serde_json::json!({"product_name": title, "admin_note": "keep me"}),
        "{b:?}: the rule applied on top of the application's edit"
    );
    // The before-image is the application's version, not the stale read.
    let images = db
        .rows(&format!(
            "SELECT before AS c0 FROM backfill_before_image WHERE key = '{victim}'"
        ))
        .await;
    let before: serde_json::Value = serde_json::from_str(images[0][0].as_deref().unwrap()).unwrap();
    assert_eq!(before["admin_note"], "keep me", "{b:?}");
    store.close().await;
}

backends!(rows_holding_invalid_json_are_errors_with_their_keys_on_both_back_ends);

pub(crate) async fn rows_holding_invalid_json_are_errors_with_their_keys_on_both_back_ends(
    b: Backend,
) {
    let db = Db::new(b).await;
    // A legacy table storing JSON as text, as some applications do.
    db.execute(
        "CREATE TABLE legacy_docs (id integer PRIMARY KEY, title text NOT NULL, doc text NOT NULL)",
    )
    .await;
    let mut values = Vec::new();
    for i in 1..=300 {
        let doc = match i {
            17 => "{\"truncated\": ".to_string(),
            230 => "not json at all".to_string(),
            _ => format!("{{\"n\": {i}, \"tags\": [\"a\", \"b\"]}}"),
        };
        values.push(format!("({i}, 'doc {i}', '{doc}')"));
    }
    db.execute(&format!(
        "INSERT INTO legacy_docs (id, title, doc) VALUES {}",
        values.join(", ")
    ))
    .await;
    let dir = std::env::temp_dir().join(format!("bf-legacy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join("legacy.toml");
    std::fs::write(
        &spec,
        r#"
name = "legacy-docs-flag"
shard_size = 40
[[targets]]
name = "docs"
table = "legacy_docs"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT id AS key FROM legacy_docs"
[[targets.rules]]
op = "set"
path = "/migrated"
value = true
"#,
    )
    .unwrap();
    let titles = "SELECT CAST(id AS text) AS c0, title AS c1 FROM legacy_docs ORDER BY id";
    let before = db.rows(titles).await;
    let out = db.run(&["run", "--job", spec.to_str().unwrap(), "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(1), "{b:?}");
    let s = summary(&out);
    assert_eq!(
        (num(&s, "errors"), num(&s, "changed"), num(&s, "processed")),
        (2, 298, 300),
        "{b:?}"
    );
    let text = stdout(&out);
    assert!(
        text.contains("docs/17: column `doc` is not valid JSON"),
        "{b:?}: {text}"
    );
    assert!(
        text.contains("docs/230: column `doc` is not valid JSON"),
        "{b:?}: {text}"
    );
    let rows = db
        .rows("SELECT CAST(id AS text) AS c0, doc AS c1 FROM legacy_docs ORDER BY id")
        .await;
    for r in rows {
        let (id, doc) = (r[0].clone().unwrap(), r[1].clone().unwrap());
        match id.as_str() {
            "17" => assert_eq!(doc, "{\"truncated\": "),
            "230" => assert_eq!(doc, "not json at all"),
            _ => {
                let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
                assert_eq!(v["migrated"], true, "{b:?}: row {id}");
            }
        }
    }
    assert_eq!(
        db.rows(titles).await,
        before,
        "{b:?}: other columns untouched"
    );
    let q = db
        .rows("SELECT key AS c0 FROM backfill_quarantine ORDER BY key")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(
        q,
        vec!["17".to_string(), "230".to_string()],
        "{b:?}: quarantined with their keys"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

backends!(revert_restores_every_document_on_both_back_ends);

pub(crate) async fn revert_restores_every_document_on_both_back_ends(b: Backend) {
    let db = Db::with_collections(b, 10, 4).await;
    let spec = job("collection-dict-migrate");
    let before = (
        db.docs("collection_models", "id", "collection_dict").await,
        db.docs("collection_snapshot_contents", "id", "content")
            .await,
    );
    let commit = db.run(&["run", "--job", &spec, "--all", "--commit"]);
    assert_eq!(commit.status.code(), Some(0), "{b:?}");
    let changed = num(&summary(&commit), "changed");
    let run = summary(&commit)["run"].clone();
    let revert = db.run(&["revert", &run, "--commit"]);
    assert_eq!(revert.status.code(), Some(0), "{b:?}");
    assert_eq!(num(&summary(&revert), "changed"), changed, "{b:?}");
    assert_eq!(
        (
            db.docs("collection_models", "id", "collection_dict").await,
            db.docs("collection_snapshot_contents", "id", "content")
                .await,
        ),
        before,
        "{b:?}: every document as before the commit (collection_dict back to NULL)"
    );
    let again = db.run(&["revert", &run, "--commit"]);
    assert_eq!(num(&summary(&again), "changed"), 0, "{b:?}");
}
