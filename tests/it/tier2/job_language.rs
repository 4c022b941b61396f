//! The rule language through the real binary, on PostgreSQL (with
//! RabbitMQ) and SQLite: a rename of a field in every revision of a page
//! type (dry run, commit, a second run that changes nothing, verify, revert
//! byte for byte), and selector, condition and jq rules over the nodes of
//! every collection version. The expected documents are computed in Rust.

#![allow(clippy::unwrap_used)]

use crate::common::both::{Backend, Db};
use crate::common::{job, num, stderr, summary, SpecFile};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}.toml", env!("CARGO_MANIFEST_DIR"))
}

/// A JSON column's stored text by key, as the database gives it back.
async fn texts(db: &Db, table: &str, column: &str) -> BTreeMap<String, String> {
    let col = match db.backend() {
        Backend::Postgres => format!("CAST({column} AS text)"),
        Backend::Sqlite => column.to_string(),
    };
    db.rows(&format!(
        "SELECT CAST(id AS text) AS c0, {col} AS c1 FROM {table}"
    ))
    .await
    .into_iter()
    .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap()))
    .collect()
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

/// Dry run, commit, a second commit, verify; returns the commit's run id.
/// `expected` holds the new document of each row that changes.
async fn commit_and_check(
    db: &Db,
    spec: &str,
    table: &str,
    processed: i64,
    before: &BTreeMap<String, String>,
    expected: &BTreeMap<String, Value>,
) -> String {
    let b = db.backend();
    let changing = expected.len() as i64;
    assert!(changing > 0, "{b:?}: the data set has rows to change");

    let out = db.run(&["run", "--job", spec, "--all"]);
    assert_eq!(out.status.code(), Some(0), "{b:?}");
    let s = summary(&out);
    assert_eq!(s["mode"], "dry-run");
    assert_eq!(
        (num(&s, "processed"), num(&s, "changed"), num(&s, "errors")),
        (processed, changing, 0),
        "{b:?}"
    );
    assert_eq!(
        &texts(db, table, "content").await,
        before,
        "{b:?}: a dry run writes nothing"
    );

    let out = db.run(&["run", "--job", spec, "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(0), "{b:?}");
    let s = summary(&out);
    let run = s["run"].clone();
    assert_eq!(
        (num(&s, "changed"), num(&s, "errors"), num(&s, "conflicts")),
        (changing, 0, 0),
        "{b:?}"
    );
    let after = texts(db, table, "content").await;
    assert_eq!(after.len(), before.len(), "{b:?}: no row added or removed");
    for (key, text) in &after {
        match expected.get(key) {
            Some(want) => assert_eq!(&parse(text), want, "{b:?}: row {key}"),
            None => assert_eq!(text, &before[key], "{b:?}: row {key} is not to change"),
        }
    }

    // Applied again: nothing to do, and verify agrees.
    let out = db.run(&["run", "--job", spec, "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(0), "{b:?}");
    let s = summary(&out);
    assert_eq!(
        (num(&s, "changed"), num(&s, "unchanged"), num(&s, "errors")),
        (0, processed, 0),
        "{b:?}"
    );
    assert_eq!(texts(db, table, "content").await, after, "{b:?}");
    let out = db.run(&["verify", "--job", spec, "--all"]);
    assert_eq!(out.status.code(), Some(0), "{b:?}: verify passes");
    run
}

/// Reverts `run` and checks every row's text is back, byte for byte.
async fn revert_restores_bytes(db: &Db, run: &str, table: &str, before: &BTreeMap<String, String>) {
    let b = db.backend();
    let out = db.run(&["revert", run, "--commit"]);
    assert_eq!(out.status.code(), Some(0), "{b:?}");
    assert_eq!(num(&summary(&out), "conflicts"), 0, "{b:?}");
    let back = texts(db, table, "content").await;
    for (key, text) in before {
        assert_eq!(&back[key], text, "{b:?}: row {key} restored byte for byte");
    }
    assert_eq!(back.len(), before.len());
}

/// `doc` with `old` renamed to `new`, in place.
fn renamed(doc: &Map<String, Value>, old: &str, new: &str) -> Map<String, Value> {
    doc.iter()
        .map(|(k, v)| {
            (
                if k == old { new.to_string() } else { k.clone() },
                v.clone(),
            )
        })
        .collect()
}

backends!(renaming_a_field_in_every_revision_of_a_page_type_verifies_and_reverts);

pub(crate) async fn renaming_a_field_in_every_revision_of_a_page_type_verifies_and_reverts(
    b: Backend,
) {
    let db = Db::with_certificates(b, 12, 400).await;
    let before = texts(&db, "wagtailcore_revision", "content").await;
    let of_type: Vec<String> = db
        .rows(
            "SELECT CAST(r.id AS text) AS c0 FROM wagtailcore_revision r
             JOIN django_content_type ct ON ct.id = r.content_type_id
             WHERE ct.app_label = 'cms' AND ct.model = 'certificatepage'",
        )
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    let mut expected = BTreeMap::new();
    let mut nulls = 0;
    for key in &of_type {
        let doc = parse(&before[key]);
        let doc = doc.as_object().unwrap();
        if let Some(v) = doc.get("institute_text") {
            nulls += usize::from(v.is_null());
            expected.insert(
                key.clone(),
                Value::Object(renamed(doc, "institute_text", "institution_text")),
            );
        }
    }
    assert!(nulls > 0, "{b:?}: some revisions hold a null to move");
    assert!(
        of_type.len() < before.len(),
        "{b:?}: revisions of other page types are left alone"
    );

    let spec = job("wagtail-rename-field");
    let run = commit_and_check(
        &db,
        &spec,
        "wagtailcore_revision",
        of_type.len() as i64,
        &before,
        &expected,
    )
    .await;
    // A text column keeps the renamed key where the old one stood.
    if b == Backend::Sqlite {
        let after = texts(&db, "wagtailcore_revision", "content").await;
        for key in expected.keys() {
            assert_eq!(
                after[key],
                before[key].replacen("\"institute_text\"", "\"institution_text\"", 1),
                "{b:?}: row {key}: only the key's name changes in the text"
            );
        }
    }
    revert_restores_bytes(&db, &run, "wagtailcore_revision", &before).await;
}

/// What the collection-node-rules fixture makes of one snapshot.
fn node_rules(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(Value::Array(nodes)) = doc.get_mut("nodes") {
        for node in nodes {
            let obj = node.as_object_mut().unwrap();
            let entry = obj
                .get("prerequisite_skill_ids")
                .and_then(Value::as_array)
                .is_some_and(|a| a.is_empty());
            if entry && !obj.contains_key("entry_point") {
                obj.insert("entry_point".into(), Value::Bool(true));
            }
            *obj = renamed(obj, "acquired_skill_ids", "skills_acquired");
            if let Some(Value::String(id)) = obj.get_mut("exploration_id") {
                *id = id.to_uppercase();
            }
        }
    }
    doc
}

backends!(selector_condition_and_jq_rules_over_every_collection_node);

pub(crate) async fn selector_condition_and_jq_rules_over_every_collection_node(b: Backend) {
    let db = Db::with_collections(b, 15, 4).await;
    let table = "collection_snapshot_contents";
    let before = texts(&db, table, "content").await;
    let expected: BTreeMap<String, Value> = before
        .iter()
        .filter_map(|(k, t)| {
            let (was, now) = (parse(t), node_rules(&parse(t)));
            (was != now).then(|| (k.clone(), now))
        })
        .collect();
    let run = commit_and_check(
        &db,
        &fixture("collection-node-rules"),
        table,
        before.len() as i64,
        &before,
        &expected,
    )
    .await;
    revert_restores_bytes(&db, &run, table, &before).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_selector_or_filter_that_does_not_parse_is_refused_at_load_naming_the_field() {
    let db = Db::with_collections(Backend::Sqlite, 2, 1).await;
    let base = std::fs::read_to_string(fixture("collection-node-rules")).unwrap();
    for (bad, field) in [
        (
            base.replace("$.nodes[*].exploration_id", "$.nodes[*"),
            "targets[0].rules[2].select",
        ),
        (
            base.replace("\"ascii_upcase\"", "\"ascii_upcase |\""),
            "targets[0].rules[2].filter",
        ),
        (
            base.replace("check = \"absent\"", "check = \"missing\""),
            "targets[0].rules[0].when.check",
        ),
    ] {
        let spec = SpecFile::new("bad", &bad);
        let out = db.run(&["run", "--job", spec.path(), "--all"]);
        assert_eq!(out.status.code(), Some(2), "a spec error exits 2");
        assert!(stderr(&out).contains(field), "{field}: {}", stderr(&out));
    }
}
