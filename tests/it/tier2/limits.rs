//! What a spec may hold, and documents deeper than serde_json reads.
//!
//! A spec over a cap (rules per target, pointer segments) is refused with
//! exit 2, naming the field and the limit, before anything is recorded. A
//! `jsonb` row nesting deeper than serde_json's 128 levels is valid in the
//! database but cannot be read by the job: it is a row error naming the
//! depth, left unchanged, while the other rows are written. Rules the
//! database applies itself write it like any other row.

#![allow(clippy::unwrap_used)]

use crate::common::{docs_spec, num, stderr, summary, SpecFile, TestEnv};

/// A job over `docs` whose rule sets `path` (plus `extra` rules).
fn spec(path: &str, extra: &str) -> String {
    docs_spec(
        r#"name = "limits""#,
        &format!(
            r#"[[targets.rules]]
op = "set"
path = "{path}"
value = "New"
{extra}"#
        ),
    )
}

async fn docs_table(env: &TestEnv) {
    env.exec("CREATE TABLE docs (id integer PRIMARY KEY, doc jsonb)")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spec_over_a_cap_exits_2_naming_the_field_and_the_limit() {
    let env = TestEnv::new().await;
    docs_table(&env).await;

    // A pointer of 20,000 segments.
    let deep = SpecFile::new("limits", &spec(&"/a".repeat(20_000), ""));
    let out = env.run(&["run", "--local", "--job", deep.path(), "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("targets[0].rules[0].path")
            && err.contains("20000 segments")
            && err.contains("64"),
        "{err}"
    );

    // 10,001 rules on one target.
    let many: String = (0..10_000)
        .map(|i| format!("[[targets.rules]]\nop = \"remove\"\npath = \"/k{i}\"\n"))
        .collect();
    let many = SpecFile::new("limits", &spec("/title", &many));
    let out = env.run(&["run", "--local", "--job", many.path(), "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("targets[0].rules") && err.contains("10001 rules") && err.contains("10000"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_document_deeper_than_serde_json_reads_is_a_named_row_error_and_left_unchanged() {
    let env = TestEnv::new().await;
    docs_table(&env).await;
    let deep = format!(
        "{{\"title\": \"Old\", \"deep\": {}{}}}",
        "[".repeat(199),
        "]".repeat(199)
    );
    env.exec_with(
        "INSERT INTO docs (id, doc) VALUES (1, '{\"title\": \"Old\"}'), (2, $1::jsonb), (3, '{}')",
        &deep,
    )
    .await;
    let before = env
        .scalar_text("SELECT md5(doc::text) FROM docs WHERE id = 2")
        .await;
    // Read and rewritten by the job (`pushdown = false`).
    let text =
        spec("/title", "").replace(r#"name = "limits""#, "name = \"limits\"\npushdown = false");
    let job_path = SpecFile::new("limits", &text);

    let out = env.run(&[
        "run",
        "--local",
        "--job",
        job_path.path(),
        "--all",
        "--commit",
    ]);
    // Row errors: the run finishes as failed.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(
        (num(&s, "processed"), num(&s, "changed"), num(&s, "errors")),
        (3, 2, 1),
        "rows 1 and 3 are written, row 2 is an error"
    );
    let error = env
        .scalar_text("SELECT error FROM backfill_quarantine WHERE key = '2'")
        .await;
    assert!(
        error.contains("nests 200 levels deep")
            && error.contains("serde_json's 128")
            && error.contains("left unchanged"),
        "{error}"
    );
    assert_eq!(
        env.scalar_text("SELECT md5(doc::text) FROM docs WHERE id = 2")
            .await,
        before,
        "the deep row is left as it was"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM docs WHERE doc->>'title' = 'New'")
            .await,
        2
    );

    // Rules the database applies itself never parse the document: the
    // deep row is written like any other.
    let pushed = SpecFile::new("limits", &spec("/title", ""));
    let out = env.run(&[
        "run",
        "--local",
        "--job",
        pushed.path(),
        "--all",
        "--commit",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!((num(&s, "changed"), num(&s, "errors")), (1, 0));
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM docs WHERE doc->>'title' = 'New'")
            .await,
        3
    );
}
