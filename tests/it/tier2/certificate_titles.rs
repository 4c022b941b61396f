//! The certificate-titles job end to end against the real PostgreSQL and
//! RabbitMQ: the behaviours the seed PR lists, each checked against the data
//! (never against the tool's own counts alone).

#![allow(clippy::unwrap_used)]

use crate::common::*;
use backfill_demo::{program_kind, program_readable_id, ProgramKind};
use backfill_job::{JobSpec, Scope};
use std::time::Duration;

const PROGRAMS: u32 = 25;

fn normal_programs(n: u32) -> Vec<String> {
    (0..n)
        .filter(|i| program_kind(*i) == ProgramKind::Normal)
        .map(program_readable_id)
        .collect()
}

/// (distinct revisions referenced by a live certificate of an eligible
/// program, of which need a change, certificates behind the changed ones)
async fn oracle(env: &TestEnv, programs: &[String]) -> (i64, i64, i64) {
    let list = programs
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(",");
    let base = format!(
        "FROM courses_programcertificate cert
         JOIN courses_program p ON p.id = cert.program_id
         JOIN (SELECT p.id AS program_id, c.product_name AS title
               FROM courses_program p
               JOIN cms_programpage pp ON pp.program_id = p.id
               JOIN wagtailcore_page pg ON pg.id = pp.page_ptr_id
               JOIN wagtailcore_page cg ON cg.path LIKE pg.path || '%' AND cg.depth = pg.depth + 1 AND cg.live
               JOIN cms_certificatepage c ON c.page_ptr_id = cg.id) lt ON lt.program_id = p.id
         JOIN wagtailcore_revision r ON r.id = cert.certificate_page_revision_id
         WHERE NOT cert.is_revoked AND p.readable_id IN ({list})"
    );
    let rows = env
        .scalar_i64(&format!("SELECT count(DISTINCT r.id) {base}"))
        .await;
    let changing = env
        .scalar_i64(&format!(
            "SELECT count(DISTINCT r.id) {base} AND r.content->>'product_name' IS DISTINCT FROM lt.title"
        ))
        .await;
    let refs = env
        .scalar_i64(&format!(
            "SELECT count(*) {base} AND r.content->>'product_name' IS DISTINCT FROM lt.title"
        ))
        .await;
    (rows, changing, refs)
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_is_the_default_and_writes_nothing() {
    let env = TestEnv::with_certificates(PROGRAMS, 600).await;
    let before = env.table_md5("wagtailcore_revision", "id").await;
    let normal = normal_programs(PROGRAMS);
    let (rows, changing, refs) = oracle(&env, &normal).await;
    assert!(
        changing > 0 && changing < rows,
        "the data must hold both stale and current titles"
    );

    let out = env.run(&["run", "--job", &job("program-certificate-titles"), "--all"]);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(s["mode"], "dry-run");
    assert_eq!(num(&s, "processed"), rows);
    assert_eq!(
        num(&s, "changed"),
        changing,
        "dry run reports what would change"
    );
    assert_eq!(num(&s, "unchanged"), rows - changing);
    assert_eq!(num(&s, "refs_affected"), refs);
    assert_eq!(num(&s, "groups_processed"), normal.len() as i64);
    assert_eq!(
        num(&s, "groups_skipped"),
        (PROGRAMS as usize - normal.len()) as i64
    );
    assert_eq!(num(&s, "conflicts") + num(&s, "errors"), 0);
    assert_eq!(
        env.table_md5("wagtailcore_revision", "id").await,
        before,
        "a dry run writes nothing"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        0
    );

    // The report tells admins, per program, what would happen and why.
    let text = stdout(&out);
    let block = |i: u32| {
        let head = format!("program {} — ", program_readable_id(i));
        let start = text
            .find(&head)
            .unwrap_or_else(|| panic!("no block for {head}"));
        let end = text[start + 1..]
            .find("\nprogram ")
            .map(|e| start + 1 + e)
            .unwrap_or(text.len());
        text[start..end].to_string()
    };
    assert!(block(7).contains("change:  SKIPPED (live certificate title is still a placeholder)"));
    assert!(block(8).contains("change:  SKIPPED (live certificate title is empty)"));
    assert!(block(9).contains("change:  SKIPPED (no program page)"));
    assert!(block(19).contains("change:  SKIPPED (no live certificate page)"));
    assert!(
        block(5).contains("change:  SKIPPED (no live certificate page)"),
        "an unpublished certificate page is not live"
    );
    let b0 = block(0);
    assert!(b0.contains("change:  YES"), "{b0}");
    assert!(b0.contains("  current:\n"), "{b0}");
    let title: String = sqlx::query_scalar(
        "SELECT c.product_name FROM courses_program p
         JOIN cms_programpage pp ON pp.program_id = p.id
         JOIN wagtailcore_page pg ON pg.id = pp.page_ptr_id
         JOIN wagtailcore_page cg ON cg.path LIKE pg.path || '%' AND cg.depth = pg.depth + 1
         JOIN cms_certificatepage c ON c.page_ptr_id = cg.id WHERE p.readable_id = $1",
    )
    .bind(program_readable_id(0))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(b0.contains(&format!("target:  {title:?}")), "{b0}");
    assert!(
        text.contains("certificate is revoked"),
        "revoked certificates are reported"
    );
    assert!(
        text.contains("certificate has no revision"),
        "certificates without a revision are reported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scope_needs_exactly_one_of_group_or_all() {
    let env = TestEnv::with_certificates(12, 100).await;
    let before = env.table_md5("wagtailcore_revision", "id").await;
    let spec = job("program-certificate-titles");
    for args in [
        job_args("run", &spec, ""),
        job_args("run", &spec, "--commit"),
        job_args("run", &spec, "--all --group X --commit"),
        job_args("coordinator", &spec, "--commit"),
    ] {
        let out = env.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_said(&out, "exactly one of --group KEY (repeatable) or --all");
    }
    assert_eq!(env.table_md5("wagtailcore_revision", "id").await, before);
    let ledger = env
        .scalar_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'backfill_run'")
        .await;
    assert_eq!(
        ledger, 0,
        "a refused command does not even touch the ledger"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_rewrites_only_product_name_once_and_a_second_run_changes_nothing() {
    let env = TestEnv::with_certificates(PROGRAMS, 800).await;
    let normal = normal_programs(PROGRAMS);
    let (rows, changing, refs) = oracle(&env, &normal).await;
    env.exec("CREATE TABLE rev_before AS SELECT * FROM wagtailcore_revision")
        .await;
    let revisions = env
        .scalar_i64("SELECT count(*) FROM wagtailcore_revision")
        .await;
    let certs_md5 = env.table_md5("courses_programcertificate", "id").await;
    let pages_md5 = env.table_md5("cms_certificatepage", "page_ptr_id").await;

    let out = env.run(&job_args(
        "run",
        &job("program-certificate-titles"),
        "--all --commit --mappers 2",
    ));
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(s["mode"], "commit");
    assert_eq!(num(&s, "changed"), changing);
    assert_eq!(num(&s, "processed"), rows);
    assert_eq!(num(&s, "refs_affected"), refs);

    // Every revision behind a live certificate of an eligible program now
    // shows the live title (the display path reads content->>'product_name').
    let list = normal
        .iter()
        .map(|p| format!("'{p}'"))
        .collect::<Vec<_>>()
        .join(",");
    let stale = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM courses_programcertificate cert
             JOIN courses_program p ON p.id = cert.program_id
             JOIN cms_programpage pp ON pp.program_id = p.id
             JOIN wagtailcore_page pg ON pg.id = pp.page_ptr_id
             JOIN wagtailcore_page cg ON cg.path LIKE pg.path || '%' AND cg.depth = pg.depth + 1 AND cg.live
             JOIN cms_certificatepage c ON c.page_ptr_id = cg.id
             JOIN wagtailcore_revision r ON r.id = cert.certificate_page_revision_id
             WHERE NOT cert.is_revoked AND p.readable_id IN ({list})
               AND r.content->>'product_name' IS DISTINCT FROM c.product_name"
        ))
        .await;
    assert_eq!(stale, 0);
    // No new rows; no other column touched; no other JSON key touched.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM wagtailcore_revision")
            .await,
        revisions
    );
    let other_cols = env
        .scalar_i64(
            "SELECT count(*) FROM rev_before b JOIN wagtailcore_revision r USING (id)
             WHERE (b.created_at, b.approved_go_live_at, b.object_id, b.user_id, b.content_type_id, b.base_content_type_id, b.object_str)
                IS DISTINCT FROM (r.created_at, r.approved_go_live_at, r.object_id, r.user_id, r.content_type_id, r.base_content_type_id, r.object_str)",
        )
        .await;
    assert_eq!(other_cols, 0);
    let other_keys = env
        .scalar_i64(
            "SELECT count(*) FROM rev_before b JOIN wagtailcore_revision r USING (id)
             WHERE (b.content - 'product_name')::text <> (r.content - 'product_name')::text",
        )
        .await;
    assert_eq!(other_keys, 0);
    let changed_rows = env
        .scalar_i64("SELECT count(*) FROM rev_before b JOIN wagtailcore_revision r USING (id) WHERE b.content <> r.content")
        .await;
    assert_eq!(changed_rows, changing);
    // Revisions that predate the field gained it.
    let gained = env
        .scalar_i64(
            "SELECT count(*) FROM rev_before b JOIN wagtailcore_revision r USING (id)
             WHERE NOT b.content ? 'product_name' AND r.content ? 'product_name'",
        )
        .await;
    assert!(gained > 0, "revisions without product_name gain it");
    // A revision only revoked certificates point at is not touched.
    let revoked_only_changed = env
        .scalar_i64(
            "SELECT count(*) FROM rev_before b JOIN wagtailcore_revision r USING (id)
             WHERE b.content <> r.content
               AND NOT EXISTS (SELECT 1 FROM courses_programcertificate c
                               WHERE c.certificate_page_revision_id = r.id AND NOT c.is_revoked)",
        )
        .await;
    assert_eq!(revoked_only_changed, 0);
    // Skipped programs' revisions and unreferenced revisions are untouched:
    // every changed row is behind a live certificate of an eligible program.
    let outside = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM rev_before b JOIN wagtailcore_revision r USING (id)
             WHERE b.content <> r.content AND r.id NOT IN (
               SELECT cert.certificate_page_revision_id FROM courses_programcertificate cert
               JOIN courses_program p ON p.id = cert.program_id
               WHERE NOT cert.is_revoked AND cert.certificate_page_revision_id IS NOT NULL AND p.readable_id IN ({list}))"
        ))
        .await;
    assert_eq!(outside, 0);
    assert_eq!(
        env.table_md5("courses_programcertificate", "id").await,
        certs_md5
    );
    assert_eq!(
        env.table_md5("cms_certificatepage", "page_ptr_id").await,
        pages_md5
    );

    // Shared revisions were written once: one before-image per changed row,
    // holding exactly what was there.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        changing
    );
    let shared_changed = env
        .scalar_i64(
            "SELECT count(*) FROM (SELECT certificate_page_revision_id FROM courses_programcertificate
              WHERE NOT is_revoked GROUP BY 1 HAVING count(*) > 1) s
             JOIN backfill_before_image bi ON bi.key = s.certificate_page_revision_id::text",
        )
        .await;
    assert!(
        shared_changed > 0,
        "the data has shared revisions that changed"
    );
    // The jsonb column's before-images are inverse patches of what the job
    // touched, with the row version the write left (the revert tests apply
    // them); each names the product_name path only.
    let images_match = env
        .scalar_i64(
            "SELECT count(*) FROM backfill_before_image bi JOIN rev_before b ON b.id::text = bi.key
             JOIN wagtailcore_revision r ON r.id::text = bi.key
             WHERE bi.before IS NULL AND bi.after_version = r.xmin::text
               AND bi.patch::jsonb @> '[{\"path\": \"/product_name\"}]'
               AND jsonb_array_length(bi.patch::jsonb) = 1",
        )
        .await;
    assert_eq!(images_match, changing);

    // A second run changes nothing.
    let after_first = env.table_md5("wagtailcore_revision", "id").await;
    let again = env.run(&job_args(
        "run",
        &job("program-certificate-titles"),
        "--all --commit",
    ));
    assert_eq!(again.status.code(), Some(0));
    let s2 = summary(&again);
    assert_eq!(num(&s2, "changed"), 0);
    assert_eq!(num(&s2, "unchanged"), rows);
    assert_eq!(num(&s2, "refs_affected"), 0);
    assert_eq!(
        env.table_md5("wagtailcore_revision", "id").await,
        after_first
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        changing
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn named_groups_unknown_keys_and_skipped_groups_are_reported_not_fatal() {
    let env = TestEnv::with_certificates(PROGRAMS, 500).await;
    let keep = program_readable_id(1);
    let before_other = env
        .scalar_text(&format!(
            "SELECT md5(string_agg(r.content::text, '|' ORDER BY r.id)) FROM wagtailcore_revision r
             WHERE r.id IN (SELECT certificate_page_revision_id FROM courses_programcertificate c
                            JOIN courses_program p ON p.id = c.program_id WHERE p.readable_id = '{keep}')"
        ))
        .await;
    let (rows, changing, _) = oracle(&env, &[program_readable_id(0)]).await;
    let out = env.run(&[
        "run",
        "--job",
        &job("program-certificate-titles"),
        "--group",
        &program_readable_id(0),
        "--group",
        &program_readable_id(7),
        "--group",
        &program_readable_id(9),
        "--group",
        "program-v1:NOPE",
        "--commit",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(num(&s, "groups_processed"), 1);
    assert_eq!(num(&s, "groups_skipped"), 3);
    assert_eq!(num(&s, "processed"), rows);
    assert_eq!(num(&s, "changed"), changing);
    let text = stdout(&out);
    assert!(
        text.contains("program program-v1:NOPE — (no title)\n  change:  SKIPPED (unknown key)"),
        "{text}"
    );
    let after_other = env
        .scalar_text(&format!(
            "SELECT md5(string_agg(r.content::text, '|' ORDER BY r.id)) FROM wagtailcore_revision r
             WHERE r.id IN (SELECT certificate_page_revision_id FROM courses_programcertificate c
                            JOIN courses_program p ON p.id = c.program_id WHERE p.readable_id = '{keep}')"
        ))
        .await;
    assert_eq!(
        before_other, after_other,
        "programs out of scope are not touched"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_that_cannot_be_rewritten_are_errors_and_the_rest_commits() {
    let env = TestEnv::with_certificates(12, 200).await;
    let (rows, changing, _) = oracle(&env, &normal_programs(12)).await;
    // A revision whose content is not an object: the rule meets the wrong type.
    let bad: i32 = sqlx::query_scalar(
        "UPDATE wagtailcore_revision SET content = '\"not an object\"'::jsonb
         WHERE id = (SELECT c.certificate_page_revision_id FROM courses_programcertificate c
                     JOIN courses_program p ON p.id = c.program_id
                     JOIN wagtailcore_revision r ON r.id = c.certificate_page_revision_id
                     WHERE p.readable_id = $1 AND NOT c.is_revoked
                     ORDER BY 1 LIMIT 1)
         RETURNING id",
    )
    .bind(program_readable_id(0))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let out = env.run(&job_args(
        "run",
        &job("program-certificate-titles"),
        "--all --commit",
    ));
    assert_eq!(
        out.status.code(),
        Some(1),
        "a run with errors exits non-zero"
    );
    let s = summary(&out);
    assert_eq!(num(&s, "errors"), 1);
    assert_eq!(num(&s, "processed"), rows);
    assert_eq!(num(&s, "changed") + num(&s, "unchanged") + 1, rows);
    assert!(num(&s, "changed") >= changing - 1);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "Errors (1):\n  revisions/{bad}: rule 0 (content): cannot set"
        )),
        "{text}"
    );
    let content = env
        .scalar_text(&format!(
            "SELECT content::text FROM wagtailcore_revision WHERE id = {bad}"
        ))
        .await;
    assert_eq!(
        content, "\"not an object\"",
        "the bad row is left as it was"
    );
    let state = env.scalar_text("SELECT state FROM backfill_run").await;
    assert_eq!(state, "failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_spec_is_refused_naming_the_field() {
    let env = TestEnv::new().await;
    let dir = std::env::temp_dir().join(format!("bf-spec-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(job("program-certificate-titles"))
        .unwrap()
        .replace(
            "table = \"wagtailcore_revision\"",
            "table = \"wagtailcore_revision; DROP TABLE x\"",
        );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, text).unwrap();
    let out = env.run(&["run", "--job", bad.to_str().unwrap(), "--all"]);
    assert_eq!(out.status.code(), Some(2));
    assert_said(&out, "field `targets[0].table`");
    let out = env.run(&["run", "--job", "/nonexistent/job.toml", "--all"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read job spec /nonexistent/job.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Plans a commit run of one program in the ledger (no broker needed) and
/// returns its id and shard tasks.
async fn plan_one_program(
    env: &TestEnv,
    store: &backfill_store::Store,
    program: &str,
) -> (String, Vec<backfill_job::ShardTask>) {
    let spec = JobSpec::parse(&std::fs::read_to_string(job("program-certificate-titles")).unwrap())
        .unwrap();
    let run_id = plan_commit(store, spec, Scope::Groups(vec![program.to_string()])).await;
    let tasks = backfill_coordinator::all_tasks(store, &run_id)
        .await
        .unwrap();
    let _ = env;
    (run_id, tasks)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_row_edited_after_it_was_read_is_a_conflict_and_not_overwritten() {
    let env = TestEnv::with_certificates(4, 120).await;
    let store = env.store().await;
    let program = program_readable_id(0);
    let (run_id, tasks) = plan_one_program(&env, &store, &program).await;
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    let rec = store.load_run(&run_id).await.unwrap().unwrap();
    let target = rec.spec.target("revisions").unwrap();
    let params = rec.plan.group(&program).unwrap().params.clone();

    // Step 1 of the mapper: read the shard.
    let evaluated = read_and_evaluate(&store, &run_id, target, task.shard_no, &params).await;
    let to_change = changing(&evaluated);
    assert!(to_change.len() >= 2);
    let victim = to_change[0].to_string();

    // The application edits the row between our read and our write.
    env.exec_with(EDIT_TITLE, &victim).await;

    // Step 2: commit with compare-and-set.
    let committed = commit_rows(
        &store,
        &run_id,
        target,
        task.shard_no,
        "test",
        evaluated.clone(),
        None,
    )
    .await;
    let tally = committed.tally();
    assert_eq!(tally.counts.conflicts, 1);
    assert_eq!(tally.counts.changed as usize, to_change.len() - 1);
    assert!(tally
        .conflicts
        .kept
        .contains_key(&format!("revisions/{victim}")));
    let now = env
        .scalar_text(&format!(
            "SELECT content->>'product_name' FROM wagtailcore_revision WHERE id = {victim}"
        ))
        .await;
    assert_eq!(now, "Edited by an admin", "the application's edit stands");
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM backfill_before_image WHERE key = '{victim}'"
        ))
        .await,
        0
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_shard_is_not_applied_twice_and_its_result_counts_once() {
    let env = TestEnv::with_certificates(4, 120).await;
    let store = env.store().await;
    let (run_id, tasks) = plan_one_program(&env, &store, &program_readable_id(0)).await;
    let runs = backfill_mapper::RunCache::default();
    let task = &tasks[0];

    let first = backfill_mapper::process_task(&store, &runs, task, "m1")
        .await
        .unwrap();
    let images = env
        .scalar_i64("SELECT count(*) FROM backfill_before_image")
        .await;
    assert!(first.tally.counts.changed > 0);
    assert_eq!(images as u64, first.tally.counts.changed);
    let content_md5 = env.table_md5("wagtailcore_revision", "id").await;

    // The same task again (a redelivery after a crash before the ack).
    let again = backfill_mapper::process_task(&store, &runs, task, "m2")
        .await
        .unwrap();
    assert_eq!(again.tally, first.tally, "the stored result is re-sent");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        images
    );
    assert_eq!(
        env.table_md5("wagtailcore_revision", "id").await,
        content_md5
    );
    assert_eq!(
        env.scalar_i64("SELECT deliveries::bigint FROM backfill_shard")
            .await,
        1,
        "committed once"
    );

    // The reducer counts the shard once however often its result arrives.
    let r1 = backfill_reducer::process_result(&store, &first)
        .await
        .unwrap();
    assert!(matches!(r1, backfill_store::Reduced::Finished(_)));
    let r2 = backfill_reducer::process_result(&store, &again)
        .await
        .unwrap();
    assert_eq!(r2, backfill_store::Reduced::Duplicate);
    let rec = store.load_run(&run_id).await.unwrap().unwrap();
    assert_eq!(rec.shards_reduced, 1);
    assert_eq!(rec.tally.counts, first.tally.counts);
    // A result for a shard the ledger does not know is ignored.
    let mut forged = first.clone();
    forged.shard_no = 99;
    assert_eq!(
        backfill_reducer::process_result(&store, &forged)
            .await
            .unwrap(),
        backfill_store::Reduced::UnknownShard
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_mapper_processes_share_one_run() {
    let env = TestEnv::with_certificates(40, 3_000).await;
    let normal = normal_programs(40);
    let (rows, changing, refs) = oracle(&env, &normal).await;

    let mut workers: Vec<std::process::Child> = (0..3)
        .map(|_| env.cmd(&["mapper", "--concurrency", "1"]).spawn().unwrap())
        .collect();
    workers.push(env.cmd(&["reducer"]).spawn().unwrap());

    let out = env.run(&job_args(
        "coordinator",
        &job("program-certificate-titles"),
        "--all --commit --wait --shard-size 25",
    ));
    // Stop the workers the way an orchestrator does: SIGTERM, then wait.
    for w in &workers {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &w.id().to_string()])
            .status();
    }
    let mut codes = Vec::new();
    for w in &mut workers {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = w.try_wait().unwrap() {
                codes.push(st.code());
                break;
            }
            if std::time::Instant::now() > deadline {
                let _ = w.kill();
                codes.push(None);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    assert_eq!(out.status.code(), Some(0));
    let run_id = stdout(&out).lines().next().unwrap().trim().to_string();
    assert!(
        run_id.starts_with("program-certificate-titles-"),
        "the run id comes first: {run_id}"
    );
    let s = summary(&out);
    assert_eq!(num(&s, "processed"), rows);
    assert_eq!(num(&s, "changed"), changing);
    assert_eq!(num(&s, "refs_affected"), refs);
    let shards = num(&s, "shards");
    assert!(shards >= 20, "many shards: {shards}");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM backfill_shard WHERE state = 'done' AND deliveries = 1 AND reduced_at IS NOT NULL").await, shards);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        changing,
        "each row written once"
    );
    let workers_seen = env
        .scalar_i64("SELECT count(DISTINCT worker) FROM backfill_shard")
        .await;
    assert!(
        workers_seen >= 2,
        "shards spread over the mapper processes ({workers_seen})"
    );
    assert_eq!(codes, vec![Some(0); 4], "workers stop cleanly on SIGTERM");
}
