//! Review, verify and undo end to end, through RabbitMQ and separate
//! mapper tasks: dry run → report → commit → verify → revert → verify on
//! both shipped jobs with the tables compared row by row to the original;
//! a revert meeting an application edit; the review gate; sampled dry runs.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use std::collections::BTreeMap;
use std::process::Output;
use std::time::Duration;

/// `backfill ARGS` with the review gate in force (the suite skips it
/// elsewhere).
fn gated(env: &TestEnv, args: &[&str]) -> Output {
    let mut c = env.cmd(args);
    c.env_remove("BACKFILL_SKIP_REVIEW")
        .env("BACKFILL_OPERATOR", "ops-dana");
    let out = output_within(c, Duration::from_secs(300));
    eprintln!(
        "$ backfill {}\n--- exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    out
}

/// Every row of a table as text, by key: the "row by row" comparison.
async fn rows(env: &TestEnv, table: &str, key: &str) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(&format!(
        "SELECT t.{key}::text, t::text FROM {table} t ORDER BY 1"
    ))
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

async fn events(env: &TestEnv, run: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT action, operator, coalesce(detail, '') FROM backfill_event WHERE run_id = $1 ORDER BY id",
    )
    .bind(run)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// The whole cycle for one job; `tables` are compared row by row.
async fn round_trip(env: &TestEnv, spec: &str, tables: &[(&str, &str)]) {
    let mut original = Vec::new();
    for (t, k) in tables {
        original.push(rows(env, t, k).await);
    }

    // Dry run and its report (parsed back), with sample diffs.
    let dry = gated(env, &["run", "--job", spec, "--all"]);
    assert_eq!(dry.status.code(), Some(0));
    let dry_run = summary(&dry)["run"].clone();
    let to_change = num(&summary(&dry), "changed");
    assert!(to_change > 0);
    let report = env.run(&["report", &dry_run, "--format", "json"]);
    let doc: backfill_job::formats::ReportDoc = serde_json::from_slice(&report.stdout).unwrap();
    for g in doc.groups.iter().filter(|g| g.rows.changed > 0) {
        assert!(!g.samples.is_empty(), "group {} shows sample diffs", g.key);
        for s in &g.samples {
            assert!(!s.changes.is_empty());
            assert!(s.changes.iter().all(|c| c.before != c.after));
        }
    }

    // Commit: relies on the dry run just made.
    let commit = gated(env, &["run", "--job", spec, "--all", "--commit"]);
    assert_eq!(commit.status.code(), Some(0));
    let commit_run = summary(&commit)["run"].clone();
    assert_eq!(num(&summary(&commit), "changed"), to_change);
    let ev = events(env, &commit_run).await;
    assert!(
        ev.iter()
            .any(|(a, o, d)| a == "review" && o == "ops-dana" && d.contains(&dry_run)),
        "{ev:?}"
    );
    for (i, (t, k)) in tables.iter().enumerate() {
        if to_change > 0 && i == 0 {
            assert_ne!(rows(env, t, k).await, original[i], "{t} was rewritten");
        }
    }
    let verify = env.run(&["verify", "--job", spec, "--all"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "nothing left after the commit"
    );

    // Revert: the dry run writes nothing and says what it would restore.
    let after_commit: Vec<_> = {
        let mut v = Vec::new();
        for (t, k) in tables {
            v.push(rows(env, t, k).await);
        }
        v
    };
    let look = env.run(&["revert", &commit_run]);
    assert_eq!(look.status.code(), Some(0));
    assert_eq!(&summary(&look)["mode"], "dry-run");
    assert_eq!(num(&summary(&look), "changed"), to_change);
    for (i, (t, k)) in tables.iter().enumerate() {
        assert_eq!(
            rows(env, t, k).await,
            after_commit[i],
            "a dry revert writes nothing"
        );
    }
    let revert = env.run(&["revert", &commit_run, "--commit", "--mappers", "3"]);
    assert_eq!(revert.status.code(), Some(0));
    let revert_run = summary(&revert)["run"].clone();
    assert_ne!(revert_run, commit_run);
    let st: serde_json::Value =
        serde_json::from_slice(&env.run(&["status", &revert_run, "--json"]).stdout).unwrap();
    assert_eq!(st["revert_of"], serde_json::json!(commit_run));
    assert!(
        stdout(&env.run(&["status", &revert_run])).contains(&format!("revert of run {commit_run}"))
    );
    assert_eq!(num(&summary(&revert), "changed"), to_change);
    assert_eq!(num(&summary(&revert), "conflicts"), 0);
    for (i, (t, k)) in tables.iter().enumerate() {
        assert_eq!(
            rows(env, t, k).await,
            original[i],
            "{t}: every row as it was before the commit"
        );
    }
    let ev = events(env, &commit_run).await;
    assert!(
        ev.iter()
            .any(|(a, _, d)| a == "revert" && d.contains(&revert_run)),
        "{ev:?}"
    );
    // Idempotent: again, nothing to do.
    let again = env.run(&["revert", &commit_run, "--commit"]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(num(&summary(&again), "changed"), 0);
    assert_eq!(num(&summary(&again), "unchanged"), to_change);
    // All back: verify finds every row to do again.
    let verify = env.run(&["verify", "--job", spec, "--all"]);
    assert_eq!(verify.status.code(), Some(1));
    assert_eq!(num(&summary(&verify), "changed"), to_change);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificate_titles_round_trip_restores_every_row() {
    let env = TestEnv::with_certificates(40, 2_000).await;
    round_trip(
        &env,
        &job("program-certificate-titles"),
        &[("wagtailcore_revision", "id")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn collection_migrate_round_trip_restores_every_version() {
    let env = TestEnv::with_collections(30, 6).await;
    let count = |t: &'static str| {
        let env = &env;
        async move { env.scalar_i64(&format!("SELECT count(*) FROM {t}")).await }
    };
    let versions = count("collection_snapshot_contents").await;
    round_trip(
        &env,
        &job("collection-dict-migrate"),
        &[
            ("collection_snapshot_contents", "id"),
            ("collection_models", "id"),
        ],
    )
    .await;
    assert_eq!(count("collection_snapshot_contents").await, versions);
    // The ledger holds the row counts of the versioned tables.
    let table_rows: serde_json::Value = sqlx::query_scalar(
        "SELECT table_rows FROM backfill_run WHERE mode = 'commit' AND revert_of IS NULL",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        table_rows["planned"]["collection_snapshot_contents"],
        serde_json::json!(versions)
    );
    assert_eq!(table_rows["planned"], table_rows["finished"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revert_leaves_a_row_the_application_edited_since() {
    let env = TestEnv::with_certificates(30, 1_500).await;
    let spec = job("program-certificate-titles");
    let original = rows(&env, "wagtailcore_revision", "id").await;
    let commit = env.run(&["run", "--job", &spec, "--all", "--commit"]);
    assert_eq!(commit.status.code(), Some(0));
    let commit_run = summary(&commit)["run"].clone();
    let changed = num(&summary(&commit), "changed");
    // The application edits one of the rewritten revisions.
    let edited: i64 = sqlx::query_scalar(
        "SELECT key::int8 FROM backfill_before_image WHERE run_id = $1 ORDER BY key::int8 LIMIT 1",
    )
    .bind(&commit_run)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE wagtailcore_revision SET content = jsonb_set(content::jsonb, '{product_name}', '\"Edited by an admin\"')::json WHERE id = $1",
    )
    .bind(edited)
    .execute(&env.pool)
    .await
    .unwrap();
    let edit = rows(&env, "wagtailcore_revision", "id").await[&edited.to_string()].clone();

    let revert = env.run(&["revert", &commit_run, "--commit"]);
    assert_eq!(revert.status.code(), Some(3), "conflicts exit 3");
    let s = summary(&revert);
    assert_eq!(num(&s, "conflicts"), 1);
    assert_eq!(num(&s, "changed"), changed - 1);
    assert!(
        stdout(&revert).contains(&format!("revisions/{edited}")),
        "the conflict names the row"
    );
    let now = rows(&env, "wagtailcore_revision", "id").await;
    assert_eq!(
        now[&edited.to_string()],
        edit,
        "the application's edit stays"
    );
    for (k, v) in &original {
        if *k != edited.to_string() {
            assert_eq!(&now[k], v, "row {k} restored");
        }
    }
    // A dry run is nothing to revert; an unknown run is an error.
    let dry = env.run(&["run", "--job", &spec, "--all"]);
    let dry_run = summary(&dry)["run"].clone();
    let out = env.run(&["revert", &dry_run]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is a dry run"));
    assert_eq!(env.run(&["revert", "no-such-run"]).status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_needs_a_reviewed_dry_run_whose_plan_still_matches() {
    let env = TestEnv::with_certificates(30, 1_500).await;
    let spec = job("program-certificate-titles");
    let checksum = env.table_md5("wagtailcore_revision", "id").await;

    // No dry run yet: refused, naming the dry run to make; nothing recorded.
    let out = gated(&env, &["run", "--job", &spec, "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("refusing to commit job `program-certificate-titles`")
            && err.contains("backfill run --job <spec file> --all"),
        "{err}"
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM backfill_run").await, 0);
    assert_eq!(env.table_md5("wagtailcore_revision", "id").await, checksum);

    // A dry run of another scope does not count.
    let page_key: (String,) =
        sqlx::query_as("SELECT readable_id FROM courses_program ORDER BY id LIMIT 1")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let one = gated(&env, &["run", "--job", &spec, "--group", &page_key.0]);
    assert_eq!(one.status.code(), Some(0));
    let out = gated(&env, &["run", "--job", &spec, "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(2));

    // The dry run is reviewed, then a live title is edited: the plan no
    // longer matches and the commit names the group that changed.
    let dry = gated(&env, &["run", "--job", &spec, "--all"]);
    let dry_run = summary(&dry)["run"].clone();
    let (page, key) = first_titled_group(&env, &dry_run).await;
    env.exec_with("UPDATE cms_certificatepage SET product_name = 'Renamed after review' WHERE page_ptr_id = $1::int", &page).await;
    let out = gated(&env, &["run", "--job", &spec, "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("the plan changed since dry run {dry_run}"))
            && err.contains(&format!("program {key}: target")),
        "{err}"
    );
    assert_eq!(env.table_md5("wagtailcore_revision", "id").await, checksum);

    // A window of zero accepts no dry run at all.
    let dry = gated(&env, &["run", "--job", &spec, "--all"]);
    let dry_run = summary(&dry)["run"].clone();
    let out = gated(
        &env,
        &[
            "run",
            "--job",
            &spec,
            "--all",
            "--commit",
            "--review-window",
            "0s",
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    // A fresh dry run of the new plan: the commit relies on it.
    let out = gated(&env, &["run", "--job", &spec, "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(0));
    let run = summary(&out)["run"].clone();
    let ev = events(&env, &run).await;
    assert!(
        ev.iter().any(|(a, o, d)| a == "review"
            && o == "ops-dana"
            && d == &format!("relied on dry run {dry_run}")),
        "{ev:?}"
    );

    // --skip-review, and BACKFILL_SKIP_REVIEW=1 for automation: recorded.
    env.exec_with(
        "UPDATE cms_certificatepage SET product_name = 'Renamed again' WHERE page_ptr_id = $1::int",
        &page,
    )
    .await;
    let out = gated(
        &env,
        &["run", "--job", &spec, "--all", "--commit", "--skip-review"],
    );
    assert_eq!(out.status.code(), Some(0));
    let run = summary(&out)["run"].clone();
    assert!(events(&env, &run).await.contains(&(
        "skip-review".into(),
        "ops-dana".into(),
        "review skipped with --skip-review".into()
    )));
    let mut c = env.cmd(&["run", "--job", &spec, "--all", "--commit"]);
    c.env("BACKFILL_SKIP_REVIEW", "1");
    let out = output_within(c, Duration::from_secs(300));
    assert_eq!(out.status.code(), Some(0));
    let run = summary(&out)["run"].clone();
    assert!(events(&env, &run)
        .await
        .iter()
        .any(|(a, _, d)| a == "skip-review" && d == "review skipped with BACKFILL_SKIP_REVIEW"));
    let h = stdout(&env.run(&["history", "--job", "program-certificate-titles"]));
    assert!(h.contains("skip-review by"), "{h}");
    assert!(h.contains("review by ops-dana (relied on dry run"), "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sampled_dry_run_reads_a_share_and_estimates_the_whole() {
    let env = TestEnv::with_certificates(30, 4_000).await;
    let spec = job("program-certificate-titles");
    let checksum = env.table_md5("wagtailcore_revision", "id").await;
    let full = env.run(&["run", "--job", &spec, "--all"]);
    let full_rows = num(&summary(&full), "processed");
    let out = env.run(&["run", "--job", &spec, "--all", "--sample", "10%"]);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    let read = num(&s, "processed") - num(&s, "skipped");
    let full_read = full_rows - num(&summary(&full), "skipped");
    assert!(
        read * 100 >= full_read * 6 && read * 100 <= full_read * 14,
        "a 10% sample read {read} of {full_read} rows"
    );
    let text = stdout(&out);
    assert!(text.contains("Estimate from a 10.000% sample"), "{text}");
    assert!(
        text.trim_end()
            .lines()
            .last()
            .unwrap()
            .starts_with("Summary: "),
        "the output still ends with the Summary: line"
    );
    assert!(text.contains("rows that would change:"), "{text}");
    assert!(text.contains("bytes to write: about"), "{text}");
    assert!(text.contains("ETA of the full dry run"), "{text}");
    assert_eq!(env.table_md5("wagtailcore_revision", "id").await, checksum);
    // A sample is no review: the commit still needs a full dry run... which
    // `full` was, so make the sample the newest and check it is passed over.
    let out = gated(&env, &["run", "--job", &spec, "--all", "--commit"]);
    assert_eq!(out.status.code(), Some(0));
    let run = summary(&out)["run"].clone();
    let ev = events(&env, &run).await;
    assert!(ev
        .iter()
        .any(|(a, _, d)| a == "review" && d.contains(&summary(&full)["run"])));
    // Bad values are refused.
    for bad in ["0%", "101%", "x", "-5%"] {
        let o = env.run(&["run", "--job", &spec, "--all", "--sample", bad]);
        assert_eq!(o.status.code(), Some(2), "--sample {bad}");
    }
    let o = env.run(&["run", "--job", &spec, "--all", "--sample", "5%", "--commit"]);
    assert_eq!(o.status.code(), Some(2), "a sample is a dry run only");
}
