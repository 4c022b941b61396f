//! The shipped StreamField migration (`jobs/wagtail-streamfield.toml`)
//! through the real command, on PostgreSQL and SQLite: a struct child of
//! every signatory renamed in the page table's `jsonb` column and inside
//! every revision of those pages, where the field is a JSON string that
//! keeps the style Python's `json.dumps` wrote it in.

#![allow(clippy::unwrap_used)]

use crate::common;

use crate::common::both::{Backend, Db};
use crate::common::{job, num, stderr, stdout, summary};
use serde_json::Value;
use std::collections::BTreeMap;

const PARAMS: [&str; 4] = [
    "--param",
    "old_name=title_2",
    "--param",
    "new_name=affiliation",
];

fn text_of(db: &Db, column: &str) -> String {
    match db.backend() {
        Backend::Postgres => format!("CAST({column} AS text)"),
        Backend::Sqlite => column.to_string(),
    }
}

/// A column of every row of `table`, as stored, by the row's `key`.
async fn column(db: &Db, table: &str, key: &str, column: &str) -> BTreeMap<String, String> {
    let col = text_of(db, column);
    db.rows(&format!(
        "SELECT CAST({key} AS text) AS c0, {col} AS c1 FROM {table}"
    ))
    .await
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect()
}

/// The certificate pages' `signatories` column, as stored, by page id.
async fn pages(db: &Db) -> BTreeMap<String, String> {
    column(db, "cms_certificatepage", "page_ptr_id", "signatories").await
}

/// Every revision's `content`, as stored, by id.
async fn revisions(db: &Db) -> BTreeMap<String, String> {
    column(db, "wagtailcore_revision", "id", "content").await
}

/// The ids of the certificate pages' revisions.
async fn certificate_revisions(db: &Db) -> Vec<String> {
    db.rows(
        "SELECT CAST(r.id AS text) AS c0 FROM wagtailcore_revision r \
         JOIN django_content_type ct ON ct.id = r.content_type_id \
         WHERE ct.app_label = 'cms' AND ct.model = 'certificatepage' ORDER BY r.id",
    )
    .await
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect()
}

/// Sets the `signatories` string of one revision.
async fn set_signatories(db: &Db, id: &str, text: &str) {
    let lit = text.replace('\'', "''");
    let sql = match db.backend() {
        Backend::Postgres => format!(
            "UPDATE wagtailcore_revision SET content = jsonb_set(content, '{{signatories}}', to_jsonb(CAST('{lit}' AS text))) WHERE id = {id}"
        ),
        Backend::Sqlite => format!(
            "UPDATE wagtailcore_revision SET content = json_set(content, '$.signatories', '{lit}') WHERE id = {id}"
        ),
    };
    db.execute(&sql).await;
}

fn signatories_of(content: &str) -> String {
    let v: Value = serde_json::from_str(content).unwrap();
    v["signatories"].as_str().unwrap().to_string()
}

/// The `rows:` line of a target in a run's report.
fn target_rows(out: &std::process::Output, target: &str) -> String {
    let text = stdout(out);
    let mut lines = text
        .lines()
        .skip_while(|l| !l.starts_with(&format!("target {target} ")));
    lines
        .find(|l| l.trim_start().starts_with("rows:"))
        .unwrap_or_else(|| panic!("no rows line for target {target} in\n{text}"))
        .trim()
        .to_string()
}

/// `backfill run` of the shipped job with the parameters, and `extra`.
fn run(db: &Db, extra: &[&str]) -> std::process::Output {
    let job = job("wagtail-streamfield");
    let mut args = vec!["run", "--job", &job, "--all"];
    args.extend_from_slice(&PARAMS);
    args.extend_from_slice(extra);
    db.run(&args)
}

backends!(a_struct_child_is_renamed_on_pages_and_inside_revisions_and_reverted);

pub(crate) async fn a_struct_child_is_renamed_on_pages_and_inside_revisions_and_reverted(
    backend: Backend,
) {
    let db = Db::with_certificates(backend, 6, 60).await;
    let revs = certificate_revisions(&db).await;
    assert!(revs.len() > 6, "{backend:?}: several revisions per page");
    // One revision with non-ASCII text, escaped as json.dumps does.
    let first = &revs[0];
    let escaped = signatories_of(&revisions(&db).await[first]).replacen(
        "\"name\": \"",
        "\"name\": \"Jos\\u00e9 \\u2013 ",
        1,
    );
    set_signatories(&db, first, &escaped).await;

    let pages_before = pages(&db).await;
    let revisions_before = revisions(&db).await;
    let (n_pages, n_revs) = (pages_before.len() as i64, revs.len() as i64);

    // Dry run: counted per target, nothing written.
    let dry = run(&db, &[]);
    assert_eq!(dry.status.code(), Some(0), "{backend:?}: {}", stderr(&dry));
    let s = summary(&dry);
    assert_eq!(num(&s, "changed"), n_pages + n_revs, "{backend:?}");
    assert_eq!(num(&s, "errors"), 0, "{backend:?}");
    assert!(
        target_rows(&dry, "pages").contains(&format!("({n_pages} to change, 0 unchanged")),
        "{backend:?}: {}",
        target_rows(&dry, "pages")
    );
    assert!(
        target_rows(&dry, "revisions").contains(&format!("({n_revs} to change, 0 unchanged")),
        "{backend:?}: {}",
        target_rows(&dry, "revisions")
    );
    assert_eq!(pages(&db).await, pages_before, "{backend:?}");
    assert_eq!(revisions(&db).await, revisions_before, "{backend:?}");

    // Commit.
    let commit = run(&db, &["--commit"]);
    assert_eq!(
        commit.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&commit)
    );
    let s = summary(&commit);
    assert_eq!(num(&s, "changed"), n_pages + n_revs, "{backend:?}");
    let run_id = s["run"].clone();

    // Pages: every signatory has the renamed child, with its value, in its place.
    for (id, after) in pages(&db).await {
        let before: Value = serde_json::from_str(&pages_before[&id]).unwrap();
        let after: Value = serde_json::from_str(&after).unwrap();
        let blocks = after.as_array().unwrap();
        assert!(!blocks.is_empty(), "{backend:?}: page {id}");
        for (b, a) in before.as_array().unwrap().iter().zip(blocks) {
            assert_eq!(a["id"], b["id"], "{backend:?}: page {id}");
            // In place (`jsonb` orders keys by length, which here is
            // the same order).
            let keys: Vec<&str> = a["value"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                keys,
                ["name", "title_1", "affiliation", "organization"],
                "{backend:?}: page {id}"
            );
            assert_eq!(a["value"]["affiliation"], b["value"]["title_2"]);
        }
    }
    // Revisions: the string is the one json.dumps would write, with the
    // child renamed in place; every other part of the content as it was.
    let revisions_after = revisions(&db).await;
    for id in &revs {
        let before: Value = serde_json::from_str(&revisions_before[id]).unwrap();
        let mut after: Value = serde_json::from_str(&revisions_after[id]).unwrap();
        let old = before["signatories"].as_str().unwrap();
        let new = after["signatories"].as_str().unwrap().to_string();
        assert!(old.contains("\"title_2\": "), "{backend:?}: revision {id}");
        assert_eq!(
            new,
            old.replace("\"title_2\": ", "\"affiliation\": "),
            "{backend:?}: revision {id}"
        );
        after["signatories"] = before["signatories"].clone();
        assert_eq!(after, before, "{backend:?}: revision {id}");
    }
    assert!(
        signatories_of(&revisions_after[first]).contains("\"Jos\\u00e9 \\u2013 "),
        "{backend:?}: escapes kept"
    );
    // Revisions of other pages are not touched.
    for (id, text) in &revisions_before {
        if !revs.contains(id) {
            assert_eq!(&revisions_after[id], text, "{backend:?}: revision {id}");
        }
    }

    // A rerun changes nothing; verify passes.
    let again = run(&db, &["--commit"]);
    assert_eq!(again.status.code(), Some(0), "{backend:?}");
    assert_eq!(num(&summary(&again), "changed"), 0, "{backend:?}");
    let job_path = job("wagtail-streamfield");
    let mut verify = vec!["verify", "--job", &job_path, "--all"];
    verify.extend_from_slice(&PARAMS);
    let out = db.run(&verify);
    assert_eq!(out.status.code(), Some(0), "{backend:?}: {}", stderr(&out));

    // The revert puts back every column as it was.
    let revert = db.run(&["revert", &run_id, "--commit"]);
    assert_eq!(
        revert.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&revert)
    );
    assert_eq!(
        num(&summary(&revert), "changed"),
        n_pages + n_revs,
        "{backend:?}"
    );
    assert_eq!(pages(&db).await, pages_before, "{backend:?}: byte for byte");
    assert_eq!(
        revisions(&db).await,
        revisions_before,
        "{backend:?}: byte for byte"
    );
}

backends!(a_revision_whose_streamfield_is_not_json_is_a_row_error_and_the_rest_commits);

pub(crate) async fn a_revision_whose_streamfield_is_not_json_is_a_row_error_and_the_rest_commits(
    backend: Backend,
) {
    let db = Db::with_certificates(backend, 3, 20).await;
    let revs = certificate_revisions(&db).await;
    let bad = revs[revs.len() / 2].clone();
    set_signatories(&db, &bad, "[{\"type\": \"signatory\", \"value\": ").await;
    let bad_before = revisions(&db).await[&bad].clone();

    // A typo in the operation or the block path stops the job at load,
    // naming the rule's field.
    for (param, field) in [
        (
            "operation=rename_struct_child",
            "targets[0].rules[0].operation",
        ),
        ("block_path=signatory..", "targets[0].rules[0].block_path"),
    ] {
        let out = run(&db, &["--param", param]);
        assert_eq!(out.status.code(), Some(2), "{backend:?} {param}");
        assert!(
            stderr(&out).contains(field),
            "{backend:?} {param}: {}",
            stderr(&out)
        );
    }

    let out = run(&db, &["--commit"]);
    let s = summary(&out);
    assert_eq!(num(&s, "errors"), 1, "{backend:?}");
    let n_pages = pages(&db).await.len() as i64;
    assert_eq!(
        num(&s, "changed"),
        n_pages + revs.len() as i64 - 1,
        "{backend:?}"
    );
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("revisions/{bad}:")))
        .unwrap_or_else(|| panic!("{backend:?}: no error naming revisions/{bad} in\n{text}"));
    assert!(
        line.contains("/signatories") && line.contains("not JSON"),
        "{backend:?}: {line}"
    );
    let after = revisions(&db).await;
    assert_eq!(after[&bad], bad_before, "{backend:?}: left alone");
    for id in revs.iter().filter(|id| **id != bad) {
        assert!(
            signatories_of(&after[id]).contains("\"affiliation\": "),
            "{backend:?}: revision {id}"
        );
    }
}

/// An operation that creates blocks, on the page table alone.
const TO_LIST: &str = r#"
name = "signatories-to-list"
shard_size = 4
[[targets]]
name = "pages"
table = "cms_certificatepage"
key = "page_ptr_id"
key_type = "integer"
columns = ["signatories"]
query = "SELECT page_ptr_id AS key FROM cms_certificatepage"
[[targets.rules]]
op = "streamfield"
path = ""
operation = "stream_children_to_list_block"
block_name = "signatory"
list_block_name = "signatory_list"
"#;

backends!(created_blocks_get_uuid4_ids_and_a_revert_restores_the_stream);

pub(crate) async fn created_blocks_get_uuid4_ids_and_a_revert_restores_the_stream(
    backend: Backend,
) {
    let db = Db::with_certificates(backend, 4, 10).await;
    let before = pages(&db).await;
    let spec = common::SpecFile::new("signatories-to-list", TO_LIST);
    let commit = db.run(&["run", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(
        commit.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&commit)
    );
    assert_eq!(
        num(&summary(&commit), "changed"),
        before.len() as i64,
        "{backend:?}"
    );
    for (id, text) in pages(&db).await {
        let v: Value = serde_json::from_str(&text).unwrap();
        let blocks = v.as_array().unwrap();
        assert_eq!(blocks.len(), 1, "{backend:?}: page {id}: {v}");
        assert_eq!(blocks[0]["type"], "signatory_list");
        let new_id = uuid::Uuid::parse_str(blocks[0]["id"].as_str().unwrap()).unwrap();
        assert_eq!(new_id.get_version_num(), 4, "{backend:?}: page {id}");
        let was: Value = serde_json::from_str(&before[&id]).unwrap();
        let items = blocks[0]["value"].as_array().unwrap();
        assert_eq!(items.len(), was.as_array().unwrap().len());
        for (item, old) in items.iter().zip(was.as_array().unwrap()) {
            assert_eq!(item["type"], "item");
            assert_eq!(item["value"], old["value"]);
            assert_eq!(item["id"], old["id"], "{backend:?}: the child keeps its id");
        }
    }
    let run_id = summary(&commit)["run"].clone();
    let revert = db.run(&["revert", &run_id, "--commit"]);
    assert_eq!(
        revert.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&revert)
    );
    assert_eq!(pages(&db).await, before, "{backend:?}: byte for byte");
}
