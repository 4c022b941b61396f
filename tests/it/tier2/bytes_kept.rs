//! Columns that keep the text they are given (PostgreSQL `json` and
//! `text`, SQLite): a rewrite changes the bytes of the changed value only.
//! Numbers keep their notation (`1e400`, not `1e+400`), escapes stay
//! escaped (`"\u00e9"`), duplicate keys in an untouched object stay, and so
//! does the whitespace of a pretty-printed document.

#![allow(clippy::unwrap_used)]

use crate::common::both::{Backend, Db};
use crate::common::{num, summary, SpecFile};

/// One rule, on one path, over a `json` table and a `text` table.
const SET_TITLE: &str = r#"
name = "bytes-kept"
shard_size = 2
[[targets]]
name = "as_json"
table = "docs_json"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT id AS key FROM docs_json"
[[targets.rules]]
op = "set"
path = "/title"
value = "New"

[[targets]]
name = "as_text"
table = "docs_text"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT id AS key FROM docs_text"
[[targets.rules]]
op = "set"
path = "/title"
value = "New"
"#;

/// Pretty-printed, with what serde_json would rewrite everywhere: a number
/// beyond f64 in exponent notation, an escaped `é`, an untouched object
/// with a duplicate key, numbers whose notation is not canonical.
const PRETTY: &str = "{\n  \"title\": \"Old\",\n  \"big\": 1e400,\n  \"name\": \"caf\\u00e9\",\n  \"meta\": {\"k\": 1, \"k\": 2},\n  \"list\": [1.0, -0, 2.50, 1E3]\n}\n";
/// Without the title: the rule adds it after the last member.
const NO_TITLE: &str = r#"{"big": 1e400,  "meta": {"k": 1, "k": 2}, "s": "\ud83d\ude00"}"#;
/// Already as the rule wants it.
const DONE: &str = r#"{ "title" : "New", "big": 1e400 }"#;

async fn tables(db: &Db) {
    for (table, ty) in [("docs_json", "json"), ("docs_text", "text")] {
        db.execute(&format!(
            "CREATE TABLE {table} (id integer PRIMARY KEY, doc {ty})"
        ))
        .await;
        for (id, doc) in [(1, PRETTY), (2, NO_TITLE), (3, DONE)] {
            db.execute(&format!(
                "INSERT INTO {table} (id, doc) VALUES ({id}, '{}')",
                doc.replace('\'', "''")
            ))
            .await;
        }
    }
}

async fn texts(db: &Db, table: &str) -> Vec<String> {
    let cast = match db.backend() {
        Backend::Postgres => "CAST(doc AS text)",
        Backend::Sqlite => "doc",
    };
    db.rows(&format!("SELECT {cast} AS c0 FROM {table} ORDER BY id"))
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

backends!(a_rewrite_keeps_the_bytes_of_everything_no_rule_touched);

pub(crate) async fn a_rewrite_keeps_the_bytes_of_everything_no_rule_touched(backend: Backend) {
    let db = Db::new(backend).await;
    tables(&db).await;
    let spec = SpecFile::new("bytes-kept", SET_TITLE);

    let first = db.run(&["run", "--local", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(first.status.code(), Some(0), "{backend:?}");
    let s = summary(&first);
    assert_eq!(
        (
            num(&s, "processed"),
            num(&s, "changed"),
            num(&s, "unchanged"),
            num(&s, "errors")
        ),
        (6, 4, 2, 0),
        "{backend:?}: rows 1 and 2 of each table change, row 3 already holds the title"
    );
    let expected = vec![
        // Only the changed value's bytes differ.
        PRETTY.replace("\"Old\"", "\"New\""),
        // The added member goes after the last one, spaced like it.
        NO_TITLE.replace(r#""\ud83d\ude00"}"#, r#""\ud83d\ude00", "title": "New"}"#),
        DONE.to_string(),
    ];
    for table in ["docs_json", "docs_text"] {
        assert_eq!(texts(&db, table).await, expected, "{backend:?}: {table}");
    }

    let second = db.run(&["run", "--local", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(second.status.code(), Some(0), "{backend:?}");
    let s = summary(&second);
    assert_eq!(
        (
            num(&s, "processed"),
            num(&s, "changed"),
            num(&s, "unchanged")
        ),
        (6, 0, 6),
        "{backend:?}: a second run over the spliced text changes nothing"
    );
    for table in ["docs_json", "docs_text"] {
        assert_eq!(texts(&db, table).await, expected, "{backend:?}: {table}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revert_puts_back_the_original_bytes() {
    let db = Db::new(Backend::Postgres).await;
    tables(&db).await;
    let spec = SpecFile::new("bytes-kept", SET_TITLE);
    let before = (texts(&db, "docs_json").await, texts(&db, "docs_text").await);

    let commit = db.run(&["run", "--local", "--job", spec.path(), "--all", "--commit"]);
    assert_eq!(commit.status.code(), Some(0));
    let run = summary(&commit)["run"].clone();
    let revert = db.run(&["revert", &run, "--local", "--commit"]);
    assert_eq!(revert.status.code(), Some(0));
    assert_eq!(num(&summary(&revert), "changed"), 4);
    assert_eq!(
        (texts(&db, "docs_json").await, texts(&db, "docs_text").await),
        before,
        "every byte as before the run"
    );
}

backends!(a_change_under_a_duplicated_key_is_a_row_error_and_the_row_is_left_alone);

pub(crate) async fn a_change_under_a_duplicated_key_is_a_row_error_and_the_row_is_left_alone(
    backend: Backend,
) {
    let db = Db::new(backend).await;
    db.execute("CREATE TABLE docs_json (id integer PRIMARY KEY, doc json)")
        .await;
    db.execute("CREATE TABLE docs_text (id integer PRIMARY KEY, doc text)")
        .await;
    let dup = r#"{"title": "First", "title": "Old", "n": 1e400}"#;
    for table in ["docs_json", "docs_text"] {
        db.execute(&format!(
            "INSERT INTO {table} (id, doc) VALUES (1, '{dup}'), (2, '{}')",
            PRETTY.replace('\'', "''")
        ))
        .await;
    }
    let spec = SpecFile::new("bytes-kept", SET_TITLE);
    let out = db.run(&["run", "--local", "--job", spec.path(), "--all", "--commit"]);
    // Row errors: the run finishes as failed.
    assert_eq!(out.status.code(), Some(1), "{backend:?}");
    let s = summary(&out);
    assert_eq!(
        (num(&s, "changed"), num(&s, "errors")),
        (2, 2),
        "{backend:?}: row 2 of each table is written, row 1 refused"
    );
    let errors = db
        .rows("SELECT error AS c0 FROM backfill_quarantine ORDER BY target")
        .await;
    assert_eq!(errors.len(), 2, "{backend:?}");
    for e in errors {
        let e = e[0].clone().unwrap();
        assert!(
            e.contains("`title` more than once") && e.contains("left unchanged"),
            "{backend:?}: {e}"
        );
    }
    for table in ["docs_json", "docs_text"] {
        assert_eq!(
            texts(&db, table).await,
            vec![dup.to_string(), PRETTY.replace("\"Old\"", "\"New\"")],
            "{backend:?}: {table}"
        );
    }
}
