//! Data that must converge: a run over its own output changes nothing,
//! whatever form the database gives back. Numbers are compared by value
//! (jsonb normalises `1.5e-7` to `0.00000015`), and integer keys are
//! canonical (`'0100'` and `'100'` are one row).

#![allow(clippy::unwrap_used)]

use crate::common::both::{Backend, Db};
use crate::common::{num, stderr, summary, SpecFile};

/// Float literals written into a `jsonb` column (which stores them
/// normalised) and into a `json` column (which keeps the text it is given).
const FLOATS: &str = r#"
name = "float-literals"
shard_size = 3
[[targets]]
name = "measures"
table = "measures"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT id AS key FROM measures"
[[targets.rules]]
op = "set"
path = "/small"
value = 1.5e-7
[[targets.rules]]
op = "set"
path = "/big"
value = 1e20
[[targets.rules]]
op = "set"
path = "/one"
value = 1.0
[[targets.rules]]
op = "set"
path = "/nested"
value = { ratio = 2.5e-3, list = [1e-2, -0.0] }

[[targets]]
name = "legacy"
table = "legacy_measures"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT id AS key FROM legacy_measures"
[[targets.rules]]
op = "set"
path = "/small"
value = 1.5e-7
"#;

/// The tables of [`FLOATS`]: `measures` rows 1–4 lack the values, row 5
/// holds them already (as jsonb stores them, and `1` for `1.0`), row 6
/// holds a different small number, row 7 is NULL; `legacy_measures` row 1
/// holds the value in another notation, row 2 lacks it.
async fn float_tables(db: &Db) {
    db.execute("CREATE TABLE measures (id integer PRIMARY KEY, doc jsonb)")
        .await;
    db.execute(
        r#"INSERT INTO measures (id, doc) VALUES
           (1, '{"n": 1}'), (2, '{"n": 2}'), (3, '{"n": 3}'), (4, '{"n": 4, "small": 1.5}'),
           (5, '{"n": 5, "small": 1.5e-7, "big": 1e20, "one": 1, "nested": {"list": [0.01, 0], "ratio": 0.0025}}'),
           (6, '{"n": 6, "small": 0.00000016, "big": 100000000000000000000, "one": 1.00, "nested": {"ratio": 25e-4, "list": [1E-2, -0]}}'),
           (7, NULL)"#,
    )
    .await;
    db.execute("CREATE TABLE legacy_measures (id integer PRIMARY KEY, doc json)")
        .await;
    db.execute(
        r#"INSERT INTO legacy_measures (id, doc) VALUES (1, '{"small": 0.00000015}'), (2, '{}')"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn float_literals_on_jsonb_converge_and_verify_passes() {
    let db = Db::new(Backend::Postgres).await;
    float_tables(&db).await;
    let spec = SpecFile::new("float-literals", FLOATS);

    let first = db.run(&["run", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(first.status.code(), Some(0));
    let s = summary(&first);
    assert_eq!(
        (
            num(&s, "processed"),
            num(&s, "changed"),
            num(&s, "unchanged"),
            num(&s, "conflicts"),
            num(&s, "errors")
        ),
        (9, 7, 2, 0, 0),
        "measures 1–4, 6, 7 and legacy 2 change; measures 5 and legacy 1 already hold the values"
    );
    // The values are there, as PostgreSQL keeps them.
    let stored = db
        .rows(
            "SELECT doc->>'small' AS c0, doc->>'big' AS c1, doc->>'one' AS c2, doc->'nested'->>'ratio' AS c3
             FROM measures WHERE id = 1",
        )
        .await;
    assert_eq!(
        stored[0],
        vec![
            Some("0.00000015".to_string()),
            Some("100000000000000000000".to_string()),
            Some("1.0".to_string()),
            Some("0.0025".to_string())
        ]
    );
    // Row 5 was not written: its text is as inserted.
    let untouched = db
        .rows("SELECT count(*) AS c0 FROM backfill_before_image WHERE target = 'measures' AND key = '5'")
        .await;
    assert_eq!(untouched[0][0].as_deref(), Some("0"));

    let second = db.run(&["run", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(second.status.code(), Some(0));
    let s = summary(&second);
    assert_eq!(
        (
            num(&s, "processed"),
            num(&s, "changed"),
            num(&s, "unchanged")
        ),
        (9, 0, 9),
        "a second run over jsonb-normalised numbers changes nothing"
    );

    let verify = db.run(&["verify", "--job", spec.path(), "--all"]);
    assert_eq!(verify.status.code(), Some(0), "{}", stderr(&verify));
    assert_eq!(num(&summary(&verify), "changed"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn revert_of_float_literals_on_jsonb_restores_every_row() {
    let db = Db::new(Backend::Postgres).await;
    float_tables(&db).await;
    let spec = SpecFile::new("float-literals", FLOATS);
    let before = (
        db.docs("measures", "id", "doc").await,
        db.docs("legacy_measures", "id", "doc").await,
    );
    let commit = db.run(&["run", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(commit.status.code(), Some(0));
    let s = summary(&commit);
    let (changed, run) = (num(&s, "changed"), s["run"].clone());
    assert_eq!(changed, 7);

    // Row 7 was NULL: its before-image is the whole value, and what the
    // run wrote (`1.5e-7`) is read back as `0.00000015` — still the run's.
    let revert = db.run(&["revert", &run, "--commit"]);
    assert_eq!(revert.status.code(), Some(0), "{}", stderr(&revert));
    let r = summary(&revert);
    assert_eq!(
        (num(&r, "changed"), num(&r, "conflicts")),
        (changed, 0),
        "every row the run wrote is restored, none taken for an edit"
    );
    assert_eq!(
        (
            db.docs("measures", "id", "doc").await,
            db.docs("legacy_measures", "id", "doc").await,
        ),
        before
    );
    let nulls = db
        .rows("SELECT count(*) AS c0 FROM measures WHERE doc IS NULL")
        .await;
    assert_eq!(nulls[0][0].as_deref(), Some("1"), "row 7 is NULL again");
}

/// The referenced rows' ids as a text column holds them (as Wagtail's
/// `object_id` varchar does), some not in canonical form.
async fn keyed_tables(db: &Db, refs: &[&str]) {
    db.execute("CREATE TABLE keyed (id integer PRIMARY KEY, doc text NOT NULL)")
        .await;
    db.execute(
        r#"INSERT INTO keyed (id, doc) VALUES (100, '{"n": 100}'), (101, '{"n": 101}'),
           (102, '{"n": 102}'), (103, '{"n": 103}'), (104, '{"n": 104}')"#,
    )
    .await;
    db.execute("CREATE TABLE refs (object_id varchar(255) NOT NULL)")
        .await;
    let values: Vec<String> = refs.iter().map(|r| format!("('{r}')")).collect();
    db.execute(&format!(
        "INSERT INTO refs (object_id) VALUES {}",
        values.join(", ")
    ))
    .await;
}

const KEYED: &str = r#"
name = "text-keys"
shard_size = 2
[[targets]]
name = "keyed"
table = "keyed"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT object_id AS key FROM refs"
[[targets.rules]]
op = "set"
path = "/seen"
value = true
"#;

backends!(integer_keys_in_any_form_are_one_row_each_on_both_back_ends);

pub(crate) async fn integer_keys_in_any_form_are_one_row_each_on_both_back_ends(b: Backend) {
    let db = Db::new(b).await;
    keyed_tables(&db, &["0100", "+103", "100", "103", "101", "102", "104"]).await;
    let spec = SpecFile::new("text-keys", KEYED);
    let out = db.run(&["run", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(0), "{b:?}");
    let s = summary(&out);
    assert_eq!(
        (
            num(&s, "processed"),
            num(&s, "changed"),
            num(&s, "conflicts"),
            num(&s, "errors"),
            num(&s, "refs_affected")
        ),
        (5, 5, 0, 0, 7),
        "{b:?}: five rows, two of them referenced twice"
    );
    let items = db
        .rows("SELECT key AS c0 FROM backfill_item ORDER BY key")
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(
        items,
        vec!["100", "101", "102", "103", "104"],
        "{b:?}: the ledger holds canonical keys"
    );
    assert_eq!(
        db.count("backfill_before_image").await,
        5,
        "{b:?}: every row written once"
    );
    for (id, doc) in db.docs("keyed", "id", "doc").await {
        assert_eq!(doc["seen"], true, "{b:?}: row {id}");
    }
    let again = db.run(&["run", "--job", spec.path(), "--all", "--commit"]);
    let s = summary(&again);
    assert_eq!((num(&s, "processed"), num(&s, "changed")), (5, 0), "{b:?}");
}

backends!(a_key_that_is_not_an_integer_is_refused_naming_it_on_both_back_ends);

pub(crate) async fn a_key_that_is_not_an_integer_is_refused_naming_it_on_both_back_ends(
    b: Backend,
) {
    let db = Db::new(b).await;
    keyed_tables(&db, &["100", "abc", "101"]).await;
    let spec = SpecFile::new("text-keys", KEYED);
    let before = db.docs("keyed", "id", "doc").await;
    let out = db.run(&["run", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(2), "{b:?}: bad input");
    let err = stderr(&out);
    for part in ["`abc`", "`keyed`", "targets[0].query", "integer"] {
        assert!(err.contains(part), "{b:?}: {part} in {err}");
    }
    assert_eq!(db.docs("keyed", "id", "doc").await, before, "{b:?}");
    assert_eq!(db.count("backfill_run").await, 0, "{b:?}: no run recorded");
}
