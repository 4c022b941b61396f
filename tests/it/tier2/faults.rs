//! Fault injection against the real services: mapper processes killed with
//! SIGKILL mid-shard, the reducer killed and restarted, the coordinator
//! killed while publishing, duplicate deliveries, two coordinators at once.
//! Each faulty run is compared with the same run without faults on an
//! identical database: row by row, write by write, summary by summary.

#![allow(clippy::unwrap_used)]

use crate::common::*;
use rand::Rng;
use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::fleet::*;

#[tokio::test(flavor = "multi_thread")]
async fn mappers_killed_mid_shard_lose_nothing_and_write_nothing_twice() {
    let reference = reference("collection-dict-migrate", "100").await;
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    assert!(num(&reference.0, "processed") >= 20_000);
    let mut fleet = Fleet::started(&env, 3);
    let mut coord = spawn_coordinator(&env, &job("collection-dict-migrate"), "100");
    let mut kills = 0;
    let mut rng = rand::thread_rng();
    let deadline = Instant::now() + Duration::from_secs(240);
    while coord.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(Duration::from_millis(rng.gen_range(150..450)));
        if kills < 8 && coord.try_wait().unwrap().is_none() {
            let i = rng.gen_range(0..fleet.mappers.len());
            fleet.kill_mapper(i);
            kills += 1;
        }
    }
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    assert!(kills >= 3, "the faults hit the run ({kills} kills)");
    assert_matches_reference(&env, &summary(&out), &reference).await;
}

/// Runs the job with 2 mappers and a reducer killed every `every_ms` (four
/// times at most) while the coordinator waits; its output, once it has
/// exited 0 after at least two kills.
fn run_killing_the_reducer(
    env: &TestEnv,
    job_path: &str,
    shard_size: &str,
    every_ms: u64,
) -> Output {
    let mut fleet = Fleet::started(env, 2);
    let mut coord = spawn_coordinator(env, job_path, shard_size);
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(240);
    while coord.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the run did not finish");
        std::thread::sleep(Duration::from_millis(every_ms));
        if kills < 4 && coord.try_wait().unwrap().is_none() {
            fleet.kill_reducer();
            kills += 1;
        }
    }
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    assert!(kills >= 2, "the reducer was killed mid-run ({kills} kills)");
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reducer_killed_and_restarted_counts_every_shard_once() {
    let reference = reference("collection-dict-migrate", "50").await;
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let out = run_killing_the_reducer(&env, &job("collection-dict-migrate"), "50", 400);
    assert_matches_reference(&env, &summary(&out), &reference).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_while_publishing_is_resumed_by_the_same_command() {
    let reference = reference("collection-dict-migrate", "5").await;
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let spec = job("collection-dict-migrate");
    let args = coordinator_args(&spec, "5");
    // Kill it once it has published some, but not all, of its shards.
    kill_mid_publish(&env, &args).await;

    let _fleet = Fleet::started(&env, 2);
    let out = env.run(&args);
    assert_eq!(out.status.code(), Some(0));
    assert_said(&out, "was unfinished: resuming it");
    assert_matches_reference(&env, &summary(&out), &reference).await;
}

/// Each group's counts, as the JSON report of `run` gives them.
fn group_counts(env: &TestEnv, run: &str) -> BTreeMap<String, serde_json::Value> {
    let out = env.run(&["report", run, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    doc["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let counts =
                serde_json::json!([g["rows"], g["refs"], g["refs_affected"], g["current"]]);
            (g["key"].as_str().unwrap().to_string(), counts)
        })
        .collect()
}

/// Each group's counts have a record of their own, upserted by the fold of
/// every shard that carries the group: with the reducer killed again and
/// again, every group still counts each of its rows once.
#[tokio::test(flavor = "multi_thread")]
async fn a_reducer_killed_and_restarted_counts_every_groups_rows_once() {
    let job_path = job("program-certificate-titles");
    let calm = TestEnv::with_certificates(30, 1_500).await;
    let out = calm.run(&[
        "run",
        "--local",
        "--job",
        &job_path,
        "--all",
        "--commit",
        "--shard-size",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let want = group_counts(&calm, &summary(&out)["run"]);
    assert!(want.len() >= 20, "{want:?}");

    let env = TestEnv::with_certificates(30, 1_500).await;
    let out = run_killing_the_reducer(&env, &job_path, "20", 300);
    assert_eq!(group_counts(&env, &summary(&out)["run"]), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_tasks_and_results_are_counted_once() {
    let reference = reference("collection-dict-migrate", "200").await;
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let _fleet = Fleet::started(&env, 2);
    let out = env.run(&job_args(
        "coordinator",
        &job("collection-dict-migrate"),
        "--all --commit --shard-size 200",
    ));
    assert_eq!(out.status.code(), Some(0));
    let run_id = stdout(&out).trim().to_string();
    // Every task a second time, while the run is going on.
    let store = env.store().await;
    let broker = env.broker().await;
    let publisher = broker.publisher().await.unwrap();
    let tasks = backfill_coordinator::pending_tasks(&store, &run_id)
        .await
        .unwrap();
    assert!(tasks.is_empty(), "all published by the coordinator");
    for t in backfill_coordinator::all_tasks(&store, &run_id)
        .await
        .unwrap()
    {
        publisher.publish_task(&t).await.unwrap();
    }
    let rec =
        backfill_coordinator::wait(&store, &run_id, &tokio_util::sync::CancellationToken::new())
            .await
            .unwrap();
    let first_summary = rec.summary.clone().unwrap();
    // Every result a second time, after the run finished.
    let results: Vec<String> =
        sqlx::query_scalar("SELECT result::text FROM backfill_shard WHERE run_id = $1")
            .bind(&run_id)
            .fetch_all(&env.pool)
            .await
            .unwrap();
    for (i, r) in results.iter().enumerate() {
        let msg = backfill_job::ShardResult {
            v: 1,
            ledger: store.ledger().id.clone(),
            run_id: run_id.clone(),
            shard_no: i as u32,
            target: "x".into(),
            worker: "dup".into(),
            elapsed_ms: 0,
            tally: serde_json::from_str(r).unwrap(),
        };
        publisher.publish_result(&msg).await.unwrap();
    }
    // Let the workers drain both queues.
    let deadline = Instant::now() + Duration::from_secs(60);
    while broker.depth(&env.queues().tasks).await.unwrap()
        + broker.depth(&env.queues().results).await.unwrap()
        > 0
    {
        assert!(Instant::now() < deadline, "queues did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = store.load_run(&run_id).await.unwrap().unwrap();
    assert_eq!(after.summary.as_deref(), Some(first_summary.as_str()));
    assert_eq!(after.shards_reduced, after.shards_total);
    let s = summary_fields(&first_summary);
    assert_matches_reference(&env, &s, &reference).await;
    broker.close().await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_coordinator_for_the_same_job_backs_off_naming_the_active_run() {
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let _fleet = Fleet::started(&env, 1);
    let spec = job("collection-dict-migrate");
    let args = coordinator_args(&spec, "50");
    let first = env
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first has planned its run.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_id = loop {
        assert!(Instant::now() < deadline);
        if let Ok(id) = sqlx::query_scalar::<_, String>("SELECT run_id FROM backfill_run")
            .fetch_one(&env.pool)
            .await
        {
            break id;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // The scheduled start overlaps: same job, even another scope or mode.
    for extra in [vec!["--commit"], vec![]] {
        let j = job("collection-dict-migrate");
        let mut a = vec!["coordinator", "--job", j.as_str(), "--all"];
        a.extend(extra);
        let started = Instant::now();
        let second = env.run(&a);
        assert_eq!(
            second.status.code(),
            Some(5),
            "backs off, and says nothing started"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(
            stderr(&second).contains(&format!("run {run_id}")),
            "names the active run: {}",
            stderr(&second)
        );
        assert!(stderr(&second).contains("not starting a second one"));
        assert!(stdout(&second).is_empty(), "no run id: nothing started");
    }
    let out = coordinator_output(first);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_run").await,
        1,
        "only the first run exists"
    );
    let status = env.run(&["status", &run_id]);
    assert!(stdout(&status).contains("state=done"));
    let mut c = env.cmd(&["status"]).stdout(Stdio::null()).spawn().unwrap();
    assert!(wait_child(&mut c, Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_shard_is_dead_lettered_and_poison_rows_quarantined_then_retry_finishes_the_job() {
    let reference = reference("collection-dict-migrate", "100").await;
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    // The application refuses to update one snapshot: its shard fails on
    // every attempt.
    let poison_version = env
        .scalar_text("SELECT id FROM collection_snapshot_contents ORDER BY id OFFSET 700 LIMIT 1")
        .await;
    env.exec(&format!(
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.id = '{poison_version}' THEN RAISE EXCEPTION 'version {poison_version} is locked by the application'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER poison BEFORE UPDATE ON collection_snapshot_contents FOR EACH ROW EXECUTE FUNCTION refuse_poison();"
    )).await;
    // One current row whose document a rule cannot apply to.
    let poison_model = env
        .scalar_text("SELECT id FROM collection_models ORDER BY id OFFSET 10 LIMIT 1")
        .await;
    env.exec_with(
        "UPDATE collection_models SET collection_dict = '\"not an object\"'::jsonb WHERE id = $1",
        &poison_model,
    )
    .await;

    let _fleet = Fleet::started(&env, 2);
    let out = env.run(&job_args(
        "coordinator",
        &job("collection-dict-migrate"),
        "--all --commit --wait --shard-size 100",
    ));
    assert_eq!(out.status.code(), Some(1), "the run ends, as failed");
    let run_id = stdout(&out).lines().next().unwrap().to_string();
    let s = summary(&out);
    let dead = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM backfill_shard WHERE run_id = '{run_id}' AND state = 'dead'"
        ))
        .await;
    assert_eq!(dead, 1, "exactly the poison shard is dead-lettered");
    let dead_rows = env
        .scalar_i64(&format!(
            "SELECT rows::bigint FROM backfill_shard WHERE run_id = '{run_id}' AND state = 'dead'"
        ))
        .await;
    assert_eq!(
        num(&s, "errors"),
        dead_rows + 1,
        "the dead shard's rows and the poison row are errors"
    );
    assert_eq!(
        env.scalar_text("SELECT state FROM backfill_run").await,
        "failed"
    );
    assert!(
        stdout(&out).contains(&format!(
            "models/{poison_model}: rule 0 (collection_dict): cannot set"
        )),
        "the poison row is reported with its key"
    );
    // Nothing of the dead shard was written.
    let written_of_dead = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM backfill_before_image b JOIN backfill_shard s USING (run_id, shard_no)
             WHERE s.run_id = '{run_id}' AND s.state = 'dead'"
        ))
        .await;
    assert_eq!(written_of_dead, 0);
    let status = env.run(&["status", &run_id]);
    let st = stdout(&status);
    assert!(st.contains("dead-lettered shard"), "{st}");
    assert!(st.contains("locked by the application"), "{st}");
    assert!(
        st.contains(&format!("{} rows quarantined", dead_rows + 1)),
        "{st}"
    );

    // Fix the causes, then retry exactly the quarantined rows.
    env.exec("DROP TRIGGER poison ON collection_snapshot_contents")
        .await;
    env.exec_with(
        "UPDATE collection_models SET collection_dict = NULL WHERE id = $1",
        &poison_model,
    )
    .await;
    let retry = env.run(&["retry", &run_id]);
    assert_eq!(retry.status.code(), Some(0));
    let rs = summary(&retry);
    assert_eq!(
        num(&rs, "processed"),
        dead_rows + 1,
        "exactly the quarantined rows"
    );
    assert_eq!(num(&rs, "changed"), dead_rows + 1);
    // The job's end state is the fault-free one.
    assert_eq!(env.table_md5("collection_models", "id").await, reference.1);
    assert_eq!(
        env.table_md5("collection_snapshot_contents", "id").await,
        reference.2
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        num(&reference.0, "changed"),
        "every row written once across the run and its retry"
    );
    // Nothing left to retry.
    let again = env.run(&["retry", &run_id]);
    assert_eq!(again.status.code(), Some(0));
    assert_eq!(num(&summary(&again), "processed"), 0);
}

/// Runs the migrate job while "the application" keeps editing versions that
/// are still to be processed or being processed (a shard is `running` from
/// its claim: an edit of its rows between the mapper's read and its write is
/// the race under test; one after the write changes a migrated row, which
/// stays migrated); returns the coordinator's output, the run id
/// and the versions the application edited.
async fn run_with_concurrent_edits(
    env: &TestEnv,
    spec_path: &str,
) -> (std::process::Output, std::collections::BTreeSet<String>) {
    let mut fleet = Fleet::new(env);
    fleet.start(2);
    let coord = spawn_coordinator(env, spec_path, "100");
    let stop = tokio_util::sync::CancellationToken::new();
    let app = {
        let pool = env.pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut edited = std::collections::BTreeSet::new();
            while !stop.is_cancelled() {
                let ids: Vec<String> = sqlx::query_scalar(
                    "UPDATE collection_snapshot_contents SET content = jsonb_set(content, '{edited_by_app}', 'true')
                     WHERE id IN (SELECT i.key FROM backfill_item i JOIN backfill_shard s USING (run_id, shard_no)
                                  WHERE s.state IN ('pending', 'running') AND s.target = 'snapshots' ORDER BY random() LIMIT 40)
                     RETURNING id",
                )
                .fetch_all(&pool)
                .await
                .unwrap_or_default();
                edited.extend(ids);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            edited
        })
    };
    let out = tokio::task::spawn_blocking(move || coordinator_output(coord))
        .await
        .unwrap();
    stop.cancel();
    let edited = app.await.unwrap();
    (out, edited)
}

/// The migrate job with `head` put before it, in a file of the test's own.
fn migrate_with(env: &TestEnv, name: &str, head: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("bf-{name}-spec-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let spec = dir.join(format!("{name}.toml"));
    let text = std::fs::read_to_string(job("collection-dict-migrate")).unwrap();
    std::fs::write(&spec, format!("{head}\n{text}")).unwrap();
    spec
}

/// Read and rewritten by the mappers (`pushdown = false`): compare-and-set
/// finds the application's edits and reports them.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_edits_are_reported_as_conflicts_and_never_overwritten() {
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let spec = migrate_with(&env, "migrate-cas", "pushdown = false");
    let (out, edited) = run_with_concurrent_edits(&env, spec.to_str().unwrap()).await;
    assert_eq!(out.status.code(), Some(3), "conflicts exit 3");
    let s = summary(&out);
    let conflicts = num(&s, "conflicts");
    assert!(conflicts > 0, "the application's edits raced the run");
    assert!(!edited.is_empty());
    // No edit of the application was lost.
    let lost = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM collection_snapshot_contents WHERE id IN ({}) AND NOT (content ? 'edited_by_app')",
            edited.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(",")
        ))
        .await;
    assert_eq!(lost, 0, "no application edit was overwritten");
    // Exactly the conflicted rows were left as the application wrote them.
    let unmigrated = env
        .scalar_i64("SELECT count(*) FROM collection_snapshot_contents WHERE NOT (content ? 'collection_dict')")
        .await;
    assert_eq!(unmigrated, conflicts);
    let reported = stdout(&out);
    assert!(reported.contains("Conflicts ("), "{reported}");
    // Every other row is migrated.
    assert_eq!(num(&s, "changed") + conflicts, num(&s, "processed"));
    if let Some(dir) = spec.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_on_conflict_retry_concurrent_edits_are_kept_and_the_rule_applied_on_top() {
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let spec = migrate_with(
        &env,
        "migrate-retry",
        "on_conflict = \"retry\"\npushdown = false",
    );
    let (out, edited) = run_with_concurrent_edits(&env, spec.to_str().unwrap()).await;
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(num(&s, "conflicts"), 0);
    assert!(
        num(&s, "conflicts_retried") > 0,
        "the application's edits raced the run"
    );
    assert!(!edited.is_empty());
    every_version_migrated_and_no_edit_lost(&env, &edited).await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_before_image")
            .await,
        num(&s, "changed")
    );
    if let Some(dir) = spec.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Every version holds `collection_dict`, and every version the
/// application edited still holds its edit.
async fn every_version_migrated_and_no_edit_lost(
    env: &TestEnv,
    edited: &std::collections::BTreeSet<String>,
) {
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM collection_snapshot_contents WHERE NOT (content ? 'collection_dict')").await,
        0,
        "every version migrated"
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM collection_snapshot_contents WHERE id IN ({}) AND NOT (content ? 'edited_by_app')",
            edited.iter().map(|k| format!("'{k}'")).collect::<Vec<_>>().join(",")
        ))
        .await,
        0,
        "no application edit was lost"
    );
}

/// Applied by the database, each row as it is at the write: the same race
/// loses no edit of the application, migrates every version, and has
/// nothing to report as a conflict.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_edits_racing_writes_in_the_database_are_kept_and_every_version_migrated() {
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    let (out, edited) = run_with_concurrent_edits(&env, &job("collection-dict-migrate")).await;
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!((num(&s, "conflicts"), num(&s, "errors")), (0, 0));
    assert!(!edited.is_empty(), "the application's edits raced the run");
    let pushed = env
        .scalar_i64(&format!(
            "SELECT (tally->'pushed_down'->>'snapshots')::int8 FROM backfill_run WHERE run_id = '{}'",
            s["run"]
        ))
        .await;
    assert_eq!(
        pushed,
        env.scalar_i64("SELECT count(*) FROM collection_snapshot_contents")
            .await,
        "every version applied by the database"
    );
    every_version_migrated_and_no_edit_lost(&env, &edited).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_killed_while_publishing_is_resumed_with_resume_run() {
    let reference = reference("collection-dict-migrate", "10").await;
    let env = TestEnv::with_collections(COLLECTIONS, VERSIONS).await;
    kill_mid_publish(
        &env,
        &job_args(
            "coordinator",
            &job("collection-dict-migrate"),
            "--all --commit --shard-size 10",
        ),
    )
    .await;
    let run_id = env.scalar_text("SELECT run_id FROM backfill_run").await;
    let _fleet = Fleet::started(&env, 2);
    let out = env.run(&["coordinator", "--resume", &run_id, "--wait"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out).lines().next(), Some(run_id.as_str()));
    assert_matches_reference(&env, &summary(&out), &reference).await;
}
