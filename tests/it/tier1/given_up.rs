//! A shard that fails on every attempt, in the embedded mode: the mapper
//! gives it up to the in-process dead queue and the reducer records it, as
//! both do over RabbitMQ (`tier2::faults`), so the run ends as failed with
//! the shard's rows as errors and nothing of it written.

use crate::common::both::{Backend, Db};
use crate::common::{job, job_args, num, stdout, summary};

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_failing_every_attempt_is_given_up_recorded_and_the_run_ends() {
    let db = Db::with_collections(Backend::Sqlite, 40, 5).await;
    let poison = db
        .rows("SELECT id FROM collection_snapshot_contents ORDER BY id LIMIT 1 OFFSET 30")
        .await;
    let poison = poison[0][0].clone().unwrap();
    // The application refuses to update one snapshot: its shard fails on
    // every attempt.
    db.execute(&format!(
        "CREATE TRIGGER poison BEFORE UPDATE ON collection_snapshot_contents
         WHEN NEW.id = '{poison}'
         BEGIN SELECT RAISE(ABORT, 'version {poison} is locked by the application'); END"
    ))
    .await;
    let out = db.run(&job_args(
        "run",
        &job("collection-dict-migrate"),
        "--all --commit --shard-size 20",
    ));
    assert_eq!(out.status.code(), Some(1), "the run ends, as failed");
    let s = summary(&out);
    let run_id = s["run"].clone();
    let dead = db
        .rows(&format!(
            "SELECT rows, last_error FROM backfill_shard WHERE run_id = '{run_id}' AND state = 'dead'"
        ))
        .await;
    assert_eq!(dead.len(), 1, "exactly the poison shard is given up");
    let dead_rows: i64 = dead[0][0].clone().unwrap().parse().unwrap();
    assert!(
        dead[0][1]
            .clone()
            .unwrap_or_default()
            .contains("locked by the application"),
        "the shard's reason is the database's refusal: {:?}",
        dead[0][1]
    );
    assert_eq!(
        num(&s, "errors"),
        dead_rows,
        "the dead shard's rows are errors"
    );
    assert_eq!(
        db.rows(&format!(
            "SELECT state FROM backfill_run WHERE run_id = '{run_id}'"
        ))
        .await[0][0]
            .as_deref(),
        Some("failed")
    );
    let written_of_dead = db
        .rows(&format!(
            "SELECT count(*) FROM backfill_before_image b JOIN backfill_shard s
             ON s.run_id = b.run_id AND s.shard_no = b.shard_no
             WHERE s.run_id = '{run_id}' AND s.state = 'dead'"
        ))
        .await;
    assert_eq!(
        written_of_dead[0][0].as_deref(),
        Some("0"),
        "nothing of the dead shard was written"
    );
    assert!(stdout(&out).contains("Summary:"));
}
