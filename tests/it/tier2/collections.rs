//! The versioned-model jobs: migrate `nodes` into `collection_dict.nodes`
//! on every version without adding one, then clear the old `nodes`.

#![allow(clippy::unwrap_used)]

use crate::common::*;

async fn counts(env: &TestEnv) -> (i64, i64) {
    (
        env.scalar_i64("SELECT count(*) FROM collection_models")
            .await,
        env.scalar_i64("SELECT count(*) FROM collection_snapshot_contents")
            .await,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_then_cleanup_rewrites_every_version_in_place() {
    let env = TestEnv::new().await;
    let stats = env.seed_collections(30, 6).await;
    let (models, snaps) = counts(&env).await;
    assert_eq!(
        (models as u64, snaps as u64),
        (stats.collections, stats.snapshots)
    );
    env.exec("CREATE TABLE models_before AS SELECT * FROM collection_models")
        .await;
    env.exec("CREATE TABLE snaps_before AS SELECT * FROM collection_snapshot_contents")
        .await;

    // Dry run first: nothing written.
    let md5 = env.table_md5("collection_snapshot_contents", "id").await;
    let out = env.run(&["run", "--job", &job("collection-dict-migrate"), "--all"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(num(&summary(&out), "changed"), models + snaps);
    assert_eq!(
        env.table_md5("collection_snapshot_contents", "id").await,
        md5
    );

    let out = env.run(&job_args(
        "run",
        &job("collection-dict-migrate"),
        "--all --commit",
    ));
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(num(&s, "processed"), models + snaps);
    assert_eq!(num(&s, "changed"), models + snaps);
    assert_eq!(counts(&env).await, (models, snaps), "no version added");
    // Every current row and every stored version has collection_dict.nodes = nodes.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM collection_models WHERE collection_dict->'nodes' IS DISTINCT FROM nodes").await,
        0
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM collection_snapshot_contents
             WHERE content->'collection_dict'->'nodes' IS DISTINCT FROM content->'nodes'"
        )
        .await,
        0
    );
    // Nothing else moved: version numbers, titles, other keys.
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM models_before b JOIN collection_models m USING (id)
             WHERE (b.version, b.title, b.category, b.nodes, b.last_updated) IS DISTINCT FROM (m.version, m.title, m.category, m.nodes, m.last_updated)"
        )
        .await,
        0
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM snaps_before b JOIN collection_snapshot_contents s USING (id)
             WHERE b.content <> (s.content - 'collection_dict')"
        )
        .await,
        0
    );
    // Per version: each snapshot of each collection holds that version's nodes.
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM collection_models m
             JOIN collection_snapshot_contents s ON s.id = m.id || '-' || m.version
             WHERE s.content->'collection_dict'->'nodes' IS DISTINCT FROM m.nodes"
        )
        .await,
        0,
        "the latest snapshot matches the current row"
    );
    let again = env.run(&job_args(
        "run",
        &job("collection-dict-migrate"),
        "--all --commit",
    ));
    assert_eq!(num(&summary(&again), "changed"), 0);
    let verify = env.run(&["verify", "--job", &job("collection-dict-migrate"), "--all"]);
    assert_eq!(verify.status.code(), Some(0), "nothing left to migrate");

    // Cleanup: clear the old property everywhere, keeping collection_dict.
    let out = env.run(&job_args(
        "run",
        &job("collection-nodes-cleanup"),
        "--all --commit",
    ));
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(num(&s, "changed"), models + snaps);
    assert_eq!(counts(&env).await, (models, snaps), "no version added");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM collection_models WHERE nodes <> '{}'::jsonb")
            .await,
        0
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM collection_snapshot_contents WHERE content->'nodes' <> '{}'::jsonb").await,
        0
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM models_before b JOIN collection_models m USING (id)
             WHERE m.collection_dict->'nodes' IS DISTINCT FROM b.nodes"
        )
        .await,
        0,
        "the nodes live on in collection_dict"
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM snaps_before b JOIN collection_snapshot_contents s USING (id)
             WHERE s.content->'collection_dict'->'nodes' IS DISTINCT FROM b.content->'nodes'"
        )
        .await,
        0
    );
    let again = env.run(&job_args(
        "run",
        &job("collection-nodes-cleanup"),
        "--all --commit",
    ));
    assert_eq!(num(&summary(&again), "changed"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cleanup_before_migrate_is_refused_and_its_rows_are_skipped() {
    let env = TestEnv::with_collections(10, 4).await;
    let (models, snaps) = counts(&env).await;
    let before = env.table_md5("collection_snapshot_contents", "id").await;
    let before_models = env.table_md5("collection_models", "id").await;
    // The commit is refused before anything is planned: the job requires
    // collection-dict-migrate committed and verified.
    let out = env.run(&job_args(
        "run",
        &job("collection-nodes-cleanup"),
        "--all --commit",
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "requires job `collection-dict-migrate` to be committed and verified first: no commit of `collection-dict-migrate` is in the ledger"
        ),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM backfill_run").await,
        0,
        "a refused commit records no run"
    );
    // Its dry run shows why: every row would be skipped by its guard.
    let out = env.run(&["run", "--job", &job("collection-nodes-cleanup"), "--all"]);
    assert_eq!(out.status.code(), Some(0));
    let s = summary(&out);
    assert_eq!(num(&s, "changed"), 0);
    assert_eq!(num(&s, "skipped"), models + snaps);
    assert!(stdout(&out)
        .contains("collection_dict.nodes not populated (run collection-dict-migrate first)"));
    assert_eq!(
        env.table_md5("collection_snapshot_contents", "id").await,
        before
    );
    assert_eq!(
        env.table_md5("collection_models", "id").await,
        before_models
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_without_groups_refuses_group_flags() {
    let env = TestEnv::with_collections(2, 2).await;
    let out = env.run(&job_args(
        "run",
        &job("collection-dict-migrate"),
        "--group col0",
    ));
    assert_eq!(out.status.code(), Some(2));
    assert_said(&out, "has no groups; run it with --all");
}
