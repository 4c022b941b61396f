//! Statements both dialects read alike, written once: `common_ops!()`
//! expands, inside each dialect's `impl Backend`, to the [`Backend`]
//! methods whose SQL and control flow do not depend on the dialect (SQLite
//! binds `$n` by number as PostgreSQL does). The dialect modules hold only
//! what differs.
//!
//! [`Backend`]: crate::backend::Backend

/// The dialect-independent [`crate::backend::Backend`] methods, for an
/// implementation whose pool is `self.pool`.
macro_rules! common_ops {
    () => {
        async fn count_of_run(&self, q: &str, run_id: &str) -> sqlx::Result<i64> {
            sqlx::query_scalar(q).bind(run_id).fetch_one(&self.pool).await
        }

        async fn count(&self, q: &str) -> sqlx::Result<i64> {
            sqlx::query_scalar(q).fetch_one(&self.pool).await
        }

        async fn last_commit(&self, job: &str) -> sqlx::Result<Option<String>> {
            sqlx::query_scalar(
                "SELECT run_id FROM backfill_run
                      WHERE job_name = $1 AND mode = 'commit' AND finished_at IS NOT NULL
                      ORDER BY finished_at DESC LIMIT 1",
            )
            .bind(job)
            .fetch_optional(&self.pool)
            .await
        }

        async fn passed_verify_after(
            &self,
            job: &str,
            commit_run: &str,
        ) -> sqlx::Result<Option<String>> {
            sqlx::query_scalar(
                "SELECT e.run_id FROM backfill_event e JOIN backfill_run r ON r.run_id = e.run_id
                      WHERE r.job_name = $1 AND e.action = 'verify' AND e.detail LIKE 'passed%'
                        AND r.created_at > (SELECT finished_at FROM backfill_run WHERE run_id = $2)
                      ORDER BY e.at DESC LIMIT 1",
            )
            .bind(job)
            .bind(commit_run)
            .fetch_optional(&self.pool)
            .await
        }

        async fn close(&self) {
            self.pool.close().await
        }
    };
}
pub(crate) use common_ops;
