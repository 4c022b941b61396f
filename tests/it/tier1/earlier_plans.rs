//! A run planned by an earlier release has its groups in its plan only,
//! not in rows of their own (`backfill_group`): a mapper of this release
//! reads their parameters from the plan and rewrites every row as the
//! earlier release would have.

use crate::common::both::{Backend, CertOracle, Db};
use crate::common::{job, job_args, num, summary};

#[tokio::test(flavor = "multi_thread")]
async fn a_run_planned_without_group_parameter_rows_takes_them_from_its_plan() {
    let db = Db::with_certificates(Backend::Sqlite, 12, 200).await;
    let oracle = CertOracle::read(&db).await;
    let (rows, changing, refs) = oracle.expected();
    assert!(changing > 0, "some titles are stale");
    // What an earlier release's planning leaves: a plan that lists the
    // groups, and no rows of them (the ledger is made first, by connecting).
    drop(db.store().await);
    db.execute(
        "CREATE TRIGGER earlier_release AFTER UPDATE OF plan ON backfill_run
         BEGIN DELETE FROM backfill_group WHERE run_id = NEW.run_id; END",
    )
    .await;
    let out = db.run(&job_args(
        "run",
        &job("program-certificate-titles"),
        "--all --commit",
    ));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s = summary(&out);
    assert_eq!(
        (
            num(&s, "processed"),
            num(&s, "changed"),
            num(&s, "refs_affected")
        ),
        (rows, changing, refs)
    );
    assert_eq!(db.count("backfill_group").await, 0);
    oracle.check_after(&db.docs("wagtailcore_revision", "id", "content").await);
}
