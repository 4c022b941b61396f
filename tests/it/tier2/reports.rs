//! `backfill report RUN --format md|csv|json [--output FILE]`: the report of
//! a real run, read back with a CSV reader and serde, must agree with the
//! run's `Summary:` line and with itself across formats.

#![allow(clippy::unwrap_used)]

use crate::common::*;

#[tokio::test(flavor = "multi_thread")]
async fn report_formats_parse_back_and_agree_with_the_summary() {
    let env = TestEnv::with_certificates(30, 1_500).await;
    let out = env.run(&job_args(
        "run --local",
        &job("program-certificate-titles"),
        "--all",
    ));
    assert_eq!(out.status.code(), Some(0));
    let summary_line = summary_line(&out);
    let s = summary(&out);
    let run = s["run"].clone();

    // JSON: the documented document.
    let json = env.run(&["report", &run, "--format", "json"]);
    assert_eq!(json.status.code(), Some(0));
    let doc: backfill_job::formats::ReportDoc = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc.summary, summary_line);
    assert_eq!(doc.run_id, run);
    assert_eq!(doc.mode, "dry-run");
    assert_eq!(doc.grouped_by, "group");
    let changed: u64 = doc.groups.iter().map(|g| g.rows.changed).sum();
    assert_eq!(changed as i64, num(&s, "changed"));
    let skipped = doc.groups.iter().filter(|g| g.change == "SKIPPED").count();
    assert_eq!(skipped as i64, num(&s, "groups_skipped"));
    assert!(doc
        .groups
        .iter()
        .all(|g| g.change != "SKIPPED" || g.reason.is_some()));
    assert!(
        doc.groups
            .iter()
            .any(|g| g.change == "YES" && g.target.is_some() && !g.current.is_empty()),
        "groups to change show their current values and target"
    );

    // CSV, through a CSV reader, row by row against the JSON.
    let path = std::env::temp_dir().join(format!("bf-report-{}.csv", env.prefix));
    let csv_out = env.run(&[
        "report",
        &run,
        "--format",
        "csv",
        "--output",
        path.to_str().unwrap(),
    ]);
    assert_eq!(csv_out.status.code(), Some(0));
    assert!(
        csv_out.stdout.is_empty(),
        "--output writes the file, not stdout"
    );
    let mut reader = csv::Reader::from_path(&path).unwrap();
    let header: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header, backfill_job::formats::CSV_HEADER);
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), doc.groups.len());
    for (row, g) in rows.iter().zip(&doc.groups) {
        assert_eq!(&row[0], g.key);
        assert_eq!(&row[2], g.change);
        assert_eq!(row[7].parse::<u64>().unwrap(), g.rows.changed);
        assert_eq!(row[13].parse::<u64>().unwrap(), g.refs_affected);
    }
    let _ = std::fs::remove_file(&path);

    // Markdown for admins: one table row per group, and the summary.
    let md = env.run(&["report", &run, "--format", "md"]);
    let md = stdout(&md);
    for g in &doc.groups {
        assert!(
            md.contains(&format!("| {} |", g.key)),
            "{} missing from\n{md}",
            g.key
        );
    }
    assert!(md.contains(&summary_line));

    let bad = env.run(&["report", &run, "--format", "xml"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_only_when_nothing_is_left_to_do() {
    let env = TestEnv::with_certificates(30, 1_500).await;
    let spec = job("program-certificate-titles");
    let before = env.run(&["verify", "--local", "--job", &spec, "--all"]);
    assert_eq!(before.status.code(), Some(1), "rows are left to change");
    assert!(num(&summary(&before), "changed") > 0);
    assert_said(&before, "would still change");
    let checksum = env.table_md5("wagtailcore_revision", "id").await;
    let commit = env.run(&job_args(
        "run --local",
        &spec,
        "--all --commit --operator ops-carol",
    ));
    assert_eq!(commit.status.code(), Some(0));
    assert_ne!(env.table_md5("wagtailcore_revision", "id").await, checksum);
    let after_commit = env.table_md5("wagtailcore_revision", "id").await;
    let after = env.run(&["verify", "--local", "--job", &spec, "--all"]);
    assert_eq!(
        after.status.code(),
        Some(0),
        "nothing left after the commit"
    );
    let s = summary(&after);
    assert_eq!(num(&s, "changed"), 0);
    assert_eq!(&s["mode"], "dry-run");
    assert_eq!(
        env.table_md5("wagtailcore_revision", "id").await,
        after_commit,
        "verify writes nothing"
    );
    let events: Vec<(String, String)> = sqlx::query_as(
        "SELECT run_id, detail FROM backfill_event WHERE action = 'verify' ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 2);
    assert!(events[0].1.starts_with("failed"));
    assert_eq!(events[1].0, s["run"]);
    assert!(events[1].1.starts_with("passed"));

    // The audit trail: three runs, who started them, and the verifies.
    let h = env.run(&["history", "--job", "program-certificate-titles", "--json"]);
    assert_eq!(h.status.code(), Some(0));
    let h: serde_json::Value = serde_json::from_slice(&h.stdout).unwrap();
    let runs = h["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let commit_run = &runs[1];
    assert_eq!(commit_run["mode"], "commit");
    // The commit skipped the review (the suite's environment), recorded first.
    assert_eq!(commit_run["events"][0]["action"], "skip-review");
    assert_eq!(
        commit_run["events"][0]["detail"],
        "review skipped with BACKFILL_SKIP_REVIEW"
    );
    assert_eq!(commit_run["events"][1]["action"], "start");
    assert_eq!(commit_run["events"][1]["operator"], "ops-carol");
    assert!(commit_run["events"][1]["detail"]
        .as_str()
        .unwrap()
        .starts_with("host="));
    assert_eq!(runs[0]["events"][1]["action"], "verify");
    let text = stdout(&env.run(&["history"]));
    assert!(text.contains("start by ops-carol"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn report_diff_names_a_group_whose_live_title_was_edited_after_the_review() {
    let env = TestEnv::with_certificates(30, 1_500).await;
    let spec = job("program-certificate-titles");
    let first = env.run(&["run", "--local", "--job", &spec, "--all"]);
    let run1 = summary(&first)["run"].clone();
    let same = env.run(&["report", &run1, "--diff", &run1]);
    assert_eq!(same.status.code(), Some(0));
    assert!(stdout(&same).contains("the same"));

    let (page, key) = first_titled_group(&env, &run1).await;
    env.exec_with("UPDATE cms_certificatepage SET product_name = 'Edited after review' WHERE page_ptr_id = $1::int", &page).await;
    let second = env.run(&["run", "--local", "--job", &spec, "--all"]);
    let run2 = summary(&second)["run"].clone();
    assert_ne!(run1, run2);
    let diff = env.run(&["report", &run2, "--diff", &run1]);
    assert_eq!(diff.status.code(), Some(1), "the plans differ");
    let text = stdout(&diff);
    assert!(
        text.contains(&format!("program {key}: target"))
            && text.contains("\"Edited after review\""),
        "{text}"
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("  program")).count(),
        1,
        "only the edited program differs:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_lists_then_deletes_the_before_images_of_old_runs() {
    let env = TestEnv::with_certificates(30, 1_500).await;
    let spec = job("program-certificate-titles");
    let commit = env.run(&["run", "--local", "--job", &spec, "--all", "--commit"]);
    let changed = num(&summary(&commit), "changed");
    assert!(changed > 0);
    let images = || env.scalar_i64("SELECT count(*) FROM backfill_before_image");
    assert_eq!(images().await, changed);

    let none = env.run(&["prune", "--older-than", "1d", "--commit"]);
    assert_eq!(none.status.code(), Some(0));
    assert_eq!(images().await, changed, "a run of today is kept");
    let dry = env.run(&["prune", "--older-than", "0s"]);
    assert!(
        stdout(&dry).contains(&format!("would prune {changed} before-images")),
        "{}",
        stdout(&dry)
    );
    assert_eq!(
        images().await,
        changed,
        "without --commit nothing is deleted"
    );
    let bytes: i64 = env
        .scalar_i64(
            "SELECT sum(coalesce(octet_length(before), 0) + coalesce(octet_length(patch), 0))::int8 FROM backfill_before_image",
        )
        .await;
    eprintln!(
        "before-images: {changed} rows, {bytes} bytes of values, {} bytes per row",
        bytes / changed
    );
    let done = env.run(&["prune", "--older-than", "0s", "--commit"]);
    assert!(stdout(&done).contains(&format!("pruned {changed} before-images")));
    assert_eq!(images().await, 0);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_event WHERE action = 'prune'")
            .await,
        1
    );
    let bad = env.run(&["prune", "--older-than", "30"]);
    assert_eq!(bad.status.code(), Some(2));
}

/// The first lines of `backfill report RUN` in text and Markdown, and the
/// JSON document, for checking their header.
struct Reports {
    text: String,
    md: String,
    json: serde_json::Value,
}

fn reports(env: &TestEnv, run: &str) -> Reports {
    let text = stdout(&env.run(&["report", run]));
    let md = stdout(&env.run(&["report", run, "--format", "markdown"]));
    let json = env.run(&["report", run, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    Reports { text, md, json }
}

impl Reports {
    /// Each format leads with `state`, `kind` and `mode`, then the totals,
    /// the same as the run's `Summary:` line.
    fn lead_with(
        &self,
        state: &str,
        kind: &str,
        mode: &str,
        s: &std::collections::BTreeMap<String, String>,
    ) {
        let verb = if mode == "commit" {
            "changed"
        } else {
            "to change"
        };
        let totals = format!(
            "{} processed, {} {verb}, {} unchanged, {} skipped, {} conflicts, {} errors",
            s["processed"], s["changed"], s["unchanged"], s["skipped"], s["conflicts"], s["errors"]
        );
        let text: Vec<&str> = self.text.lines().take(2).collect();
        assert_eq!(
            text,
            [
                format!("State: {state} — kind: {kind} — mode: {mode}"),
                format!("Totals: {totals}")
            ],
            "{}",
            self.text
        );
        let md: Vec<&str> = self.md.lines().skip(2).take(4).collect();
        assert_eq!(
            md,
            [
                format!("- **State:** {state}"),
                format!("- **Kind:** {kind}"),
                format!("- **Mode:** {mode}"),
                format!("- **Totals:** {totals}"),
            ],
            "{}",
            self.md
        );
        let keys: Vec<&str> = self
            .json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            &keys[..4],
            ["state", "kind", "mode", "counts"],
            "{:#}",
            self.json
        );
        assert_eq!(self.json["state"], state);
        assert_eq!(self.json["kind"], kind);
        assert_eq!(self.json["mode"], mode);
        for k in backfill_job::tally::Counts::NAMES {
            assert_eq!(self.json["counts"][k].to_string(), s[k], "{k}");
        }
        // The `Summary:` line ends with the state, in the report and the JSON.
        let line = self.text.lines().last().unwrap();
        assert!(
            line.ends_with(&format!(" run={} state={state}", s["run"])),
            "{line}"
        );
        assert_eq!(self.json["summary"], line);
        assert!(self.md.contains(line), "{}", self.md);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_lead_with_the_outcome_of_done_failed_revert_and_sampled_runs() {
    let env = TestEnv::with_certificates(30, 1_500).await;
    let spec = job("program-certificate-titles");
    // One program's revisions each hold a title of their own.
    let program: String = sqlx::query_scalar(
        "SELECT p.readable_id FROM courses_program p
         JOIN courses_programcertificate c ON c.program_id = p.id AND NOT c.is_revoked
         GROUP BY p.readable_id HAVING count(DISTINCT c.certificate_page_revision_id) >= 5
         ORDER BY count(DISTINCT c.certificate_page_revision_id) DESC LIMIT 1",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    env.exec_with("UPDATE wagtailcore_revision r SET content = jsonb_set(r.content, '{product_name}', to_jsonb('Old title ' || r.id))
         WHERE r.id IN (SELECT c.certificate_page_revision_id FROM courses_programcertificate c
                        JOIN courses_program p ON p.id = c.program_id WHERE p.readable_id = $1)", &program).await;

    // A dry run over RabbitMQ: done, forward.
    let dry = env.run(&["run", "--job", &spec, "--all"]);
    assert_eq!(dry.status.code(), Some(0));
    let s = summary(&dry);
    assert_eq!(s["state"], "done");
    let r = reports(&env, &s["run"]);
    r.lead_with("done", "forward", "dry-run", &s);
    // The run's own output leads the report with the same header.
    assert!(
        stdout(&dry).contains(&format!(
            "State: done — kind: forward — mode: dry-run\nTotals: {} processed,",
            s["processed"]
        )),
        "{}",
        stdout(&dry)
    );
    // The program of many titles: three in its Markdown cell, then a count.
    let group = r.json["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == program.as_str())
        .unwrap();
    let listed = group["current"].as_array().unwrap().len();
    assert!(listed >= 5, "{group:#}");
    let more = format!("+ {} more values", listed - 3);
    let row =
        r.md.lines()
            .find(|l| l.starts_with(&format!("| {} |", program.replace('_', "\\_"))))
            .unwrap_or_else(|| panic!("no row of {program} in\n{}", r.md));
    assert!(row.contains(&more), "{row}");
    assert_eq!(row.matches("Old title ").count(), 3, "{row}");

    // A commit with a row that cannot be rewritten: failed.
    env.exec_with(
        "UPDATE wagtailcore_revision SET content = '\"not an object\"'::jsonb
         WHERE id = (SELECT min(c.certificate_page_revision_id) FROM courses_programcertificate c
                     JOIN courses_program p ON p.id = c.program_id
                     WHERE p.readable_id = $1 AND NOT c.is_revoked)",
        &program,
    )
    .await;
    let commit = env.run(&["run", "--job", &spec, "--all", "--commit"]);
    assert_eq!(commit.status.code(), Some(1), "a run with errors fails");
    let c = summary(&commit);
    assert_eq!(c["state"], "failed");
    assert_eq!(num(&c, "errors"), 1);
    let failed = c["run"].clone();
    reports(&env, &failed).lead_with("failed", "forward", "commit", &c);

    // Its revert, a dry run: the kind names the run it restores.
    let revert = env.run(&["revert", &failed]);
    assert_eq!(revert.status.code(), Some(0));
    let rv = summary(&revert);
    assert_eq!(rv["state"], "done");
    let r = reports(&env, &rv["run"]);
    r.lead_with("done", &format!("revert of {failed}"), "dry-run", &rv);
    assert_eq!(r.json["revert_of"], failed.as_str());

    // A sampled dry run: the kind says the share it read.
    let sampled = env.run(&["run", "--job", &spec, "--all", "--sample", "50%"]);
    let sm = summary(&sampled);
    // Failed when the sample holds the broken row.
    let state = if num(&sm, "errors") > 0 {
        "failed"
    } else {
        "done"
    };
    assert_eq!(sm["state"], state);
    let r = reports(&env, &sm["run"]);
    r.lead_with(state, "sample 0.5", "dry-run", &sm);
    assert_eq!(r.json["sample"], 0.5);
}
