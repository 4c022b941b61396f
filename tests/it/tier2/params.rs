//! Job parameters through the real command, on PostgreSQL and SQLite:
//! `[params]` with types and defaults, `--param NAME=VALUE` on `run`,
//! `verify` and `revert`, values recorded with the run and shown by
//! `status`, the report and `history`, and part of what the review gate
//! matches.

#![allow(clippy::unwrap_used)]

use crate::common::both::{Backend, Db};
use crate::common::{job_args, num, stderr, stdout, summary, SpecFile};

/// A generic job: set KEY to VALUE in every document of TABLE.
const GENERIC: &str = r#"
name = "set-a-key"
description = "Set ${key} in every document of ${table}"
shard_size = 2

[params.table]
type = "identifier"
default = "docs"
description = "The table whose documents are rewritten"

[params.key]
type = "identifier"
description = "The key to set"

[params.value]
type = "string"
default = "New"

[[targets]]
name = "docs"
table = "${table}"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT id AS key FROM ${table}"

[[targets.rules]]
op = "set"
path = "/${key}"
value = "${value}"
"#;

async fn docs(db: &Db) -> Vec<String> {
    let cast = match db.backend() {
        Backend::Postgres => "CAST(doc AS text)",
        Backend::Sqlite => "doc",
    };
    db.rows(&format!("SELECT {cast} AS c0 FROM docs ORDER BY id"))
        .await
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect()
}

backends!(parameters_are_typed_recorded_shown_and_part_of_the_review);

pub(crate) async fn parameters_are_typed_recorded_shown_and_part_of_the_review(backend: Backend) {
    let db = Db::new(backend).await;
    db.execute("CREATE TABLE docs (id integer PRIMARY KEY, doc text)")
        .await;
    db.execute(
        r#"INSERT INTO docs (id, doc) VALUES (1, '{"a": 1}'), (2, '{"title": "Old"}'), (3, '{"title": "Hello"}')"#,
    )
    .await;
    let original = docs(&db).await;
    let spec = SpecFile::new("set-a-key", GENERIC);
    let job = spec.path();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--local", "--job", job, "--all"];
        args.extend_from_slice(extra);
        db.run_reviewed(&args)
    };

    // Bad parameters: exit 2, naming the parameter, nothing touched.
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{backend:?}: {}", stderr(&out));
    assert!(
        stderr(&out).contains("params.key") && stderr(&out).contains("--param key=VALUE"),
        "{backend:?}: {}",
        stderr(&out)
    );
    for (bad, names) in [
        (
            vec!["--param", "key=title", "--param", "nope=1"],
            "--param nope",
        ),
        (vec!["--param", "key=ti tle"], "--param key"),
        (
            vec!["--param", "key=title", "--param", "value=it's"],
            "--param value",
        ),
        (vec!["--param", "title"], "NAME=VALUE"),
    ] {
        let out = run(&bad);
        assert_eq!(out.status.code(), Some(2), "{backend:?} {bad:?}");
        assert!(
            stderr(&out).contains(names),
            "{backend:?} {bad:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(docs(&db).await, original, "{backend:?}");

    // A dry run with the values: the report names them.
    let params = ["--param", "key=title", "--param", "value=Hello"];
    let dry = run(&params);
    assert_eq!(dry.status.code(), Some(0), "{backend:?}: {}", stderr(&dry));
    assert_eq!(num(&summary(&dry), "changed"), 2, "{backend:?}");
    assert!(
        stdout(&dry).contains("Parameters: table=docs key=title value=Hello"),
        "{backend:?}: {}",
        stdout(&dry)
    );
    let dry_run = summary(&dry)["run"].clone();

    // A commit with other values is another spec: the dry run of these
    // values does not count as its review.
    let other = run(&["--param", "key=title", "--param", "value=Other", "--commit"]);
    assert_ne!(
        other.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&other)
    );
    assert!(
        stderr(&other).contains("dry run"),
        "{backend:?}: {}",
        stderr(&other)
    );
    assert_eq!(docs(&db).await, original, "{backend:?}");

    // The reviewed values commit.
    let mut commit_args = params.to_vec();
    commit_args.push("--commit");
    let commit = run(&commit_args);
    assert_eq!(
        commit.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&commit)
    );
    assert_eq!(num(&summary(&commit), "changed"), 2, "{backend:?}");
    let committed = summary(&commit)["run"].clone();
    let after = docs(&db).await;
    for d in &after {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        assert_eq!(v["title"], "Hello", "{backend:?}: {d}");
    }

    // Recorded with the run: status, history and the JSON report.
    let status = db.run(&["status", &committed, "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(
        doc["params"],
        serde_json::json!({"table": "docs", "key": "title", "value": "Hello"}),
        "{backend:?}"
    );
    let text = db.run(&["status", &committed]);
    assert!(
        stdout(&text).contains("parameters key=title table=docs value=Hello"),
        "{backend:?}: {}",
        stdout(&text)
    );
    let history = db.run(&["history", "--json"]);
    let h: serde_json::Value = serde_json::from_str(&stdout(&history)).unwrap();
    let runs = h["runs"].as_array().unwrap();
    assert!(
        runs.iter()
            .any(|r| r["run_id"] == dry_run.as_str() && r["params"]["value"] == "Hello"),
        "{backend:?}: {h}"
    );
    let report = db.run(&["report", &committed, "--format", "json"]);
    let r: serde_json::Value = serde_json::from_str(&stdout(&report)).unwrap();
    assert_eq!(r["params"]["key"], "title", "{backend:?}: {r}");

    // Verify with the same values passes; a rerun changes nothing.
    let verify = db.run(&job_args(
        "verify --local",
        job,
        "--all --param key=title --param value=Hello",
    ));
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&verify)
    );
    let again = run(&commit_args);
    assert_eq!(
        again.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&again)
    );
    assert_eq!(num(&summary(&again), "changed"), 0, "{backend:?}");

    // A revert keeps the run's values: others are refused by name.
    let refused = db.run(&["revert", &committed, "--local", "--param", "key=other"]);
    assert_eq!(refused.status.code(), Some(2), "{backend:?}");
    assert!(
        stderr(&refused).contains("planned with key=title"),
        "{backend:?}: {}",
        stderr(&refused)
    );
    let revert = db.run(&[
        "revert",
        &committed,
        "--local",
        "--commit",
        "--param",
        "key=title",
    ]);
    assert_eq!(
        revert.status.code(),
        Some(0),
        "{backend:?}: {}",
        stderr(&revert)
    );
    assert_eq!(docs(&db).await, original, "{backend:?}: byte for byte");
}
