//! Statements both dialects read alike, written once: `common_ops!()`
//! expands, inside each dialect's `impl Backend`, to the [`Backend`]
//! methods whose SQL and control flow do not depend on the dialect (SQLite
//! binds `$n` by number as PostgreSQL does); `delegated_ops!()` to the
//! methods that hand an operation to the dialect's module of the same name
//! with the same arguments; `plan_derived_shards!` to the part of planning
//! a derived run, and `fail_in!` to the part of giving up a shard, that
//! read and write alike in either dialect's transaction; `statement_ops!()`
//! to the methods whose code is the same but whose statement is each
//! dialect's own constant. The dialect modules hold only what differs.
//!
//! [`Backend`]: crate::backend::Backend

/// A run's control row, and a running run of higher priority that still
/// has shards to do (one round trip); its integers are 32-bit in either
/// dialect.
pub(crate) const CONTROL: &str = "SELECT c.control, c.priority, c.rows_per_sec, c.max_in_flight, c.shard_sizing,
                   c.bytes_per_sec, c.max_wal_bytes_per_sec,
                   (SELECT o.run_id FROM backfill_control o JOIN backfill_run r ON r.run_id = o.run_id
                     WHERE o.run_id <> c.run_id AND o.priority > c.priority AND o.control = 'run'
                       AND r.state = 'running'
                       AND EXISTS (SELECT 1 FROM backfill_shard s WHERE s.run_id = o.run_id AND s.state IN ('pending', 'running'))
                     ORDER BY o.priority DESC LIMIT 1) AS yield_to
                 FROM backfill_control c WHERE c.run_id = $1";

/// The job's most recent finished run with timed shards (same mode
/// first): its largest shard, milliseconds and rows of its done shards,
/// each a 64-bit integer in either dialect.
pub(crate) const MEASURED_SHARD_COST: &str = "SELECT r.run_id, CAST(max(s.rows) AS bigint), CAST(sum(s.elapsed_ms) AS bigint), CAST(sum(s.rows) AS bigint)
                 FROM backfill_run r JOIN backfill_shard s ON s.run_id = r.run_id
                 WHERE r.job_name = $1 AND r.state IN ('done', 'failed') AND s.elapsed_ms IS NOT NULL AND s.state = 'done'
                 GROUP BY r.run_id, r.created_at, r.mode
                 ORDER BY (r.mode = $2) DESC, r.created_at DESC LIMIT 1";

/// A derived run's row (a revert or a retry), its scope and empty tally as
/// JSON, its plan to come.
pub(crate) const INSERT_DERIVED_RUN: &str = "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally, revert_of, kind, retry_of)
     VALUES ($1, $2, $3, $4, $5, $6, 'running', '{}', 0, $7, $8, $9, $10)";

/// The dialect-independent [`crate::backend::Backend`] methods, for an
/// implementation whose pool is `self.pool`.
macro_rules! common_ops {
    () => {
        async fn control(
            &self,
            run_id: &str,
        ) -> sqlx::Result<Option<crate::model::steer::RawControl>> {
            use sqlx::Row;
            Ok(sqlx::query(crate::common::CONTROL)
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<i32, _>(1),
                        r.get::<Option<f64>, _>(2),
                        r.get::<Option<i32>, _>(3),
                        r.get::<Option<String>, _>(4),
                        r.get::<Option<String>, _>(7),
                        r.get::<Option<f64>, _>(5),
                        r.get::<Option<f64>, _>(6),
                    )
                }))
        }

        async fn measured_shard_cost(
            &self,
            job: &str,
            mode: &str,
        ) -> sqlx::Result<Option<crate::model::steer::RawCost>> {
            let row: Option<(String, Option<i64>, Option<i64>, Option<i64>)> =
                sqlx::query_as(crate::common::MEASURED_SHARD_COST)
                    .bind(job)
                    .bind(mode)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(row.map(|(run, size, ms, rows)| {
                (run, size.unwrap_or(0), ms.unwrap_or(0), rows.unwrap_or(0))
            }))
        }

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

        async fn init_control(
            &self,
            run_id: &str,
            t: &backfill_job::spec::ThrottleSpec,
            shard_sizing: Option<&str>,
        ) -> sqlx::Result<()> {
            sqlx::query(
                "INSERT INTO backfill_control (run_id, priority, rows_per_sec, max_in_flight, shard_sizing,
                                               bytes_per_sec, max_wal_bytes_per_sec)
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING",
            )
            .bind(run_id)
            .bind(t.priority)
            .bind(t.rows_per_sec)
            .bind(t.max_in_flight.map(|m| m as i32))
            .bind(shard_sizing)
            .bind(t.bytes_per_sec)
            .bind(t.max_wal_bytes_per_sec)
            .execute(&self.pool)
            .await
            .map(drop)
        }

        async fn set_control(&self, run_id: &str, control: &str, operator: &str) -> sqlx::Result<()> {
            sqlx::query(
                "INSERT INTO backfill_control (run_id, control, updated_by) VALUES ($1, $2, $3)
                 ON CONFLICT (run_id) DO UPDATE SET control = excluded.control, updated_by = excluded.updated_by",
            )
            .bind(run_id)
            .bind(control)
            .bind(operator)
            .execute(&self.pool)
            .await
            .map(drop)
        }

        async fn update_throttle(
            &self,
            q: &str,
            run_id: &str,
            change: &crate::model::steer::ThrottleChange,
            operator: &str,
        ) -> sqlx::Result<()> {
            sqlx::query(q)
                .bind(run_id)
                .bind(change.rows_per_sec.flatten())
                .bind(change.max_in_flight.flatten().map(|m| m as i32))
                .bind(change.priority.unwrap_or(0))
                .bind(operator)
                .bind(change.bytes_per_sec.flatten())
                .bind(change.max_wal_bytes_per_sec.flatten())
                .execute(&self.pool)
                .await
                .map(drop)
        }

        async fn set_table_rows(&self, run_id: &str, doc: serde_json::Value) -> sqlx::Result<()> {
            // `Json`: `jsonb` on PostgreSQL, text on SQLite.
            sqlx::query("UPDATE backfill_run SET table_rows = $2 WHERE run_id = $1")
                .bind(run_id)
                .bind(sqlx::types::Json(doc))
                .execute(&self.pool)
                .await
                .map(drop)
        }

        async fn ping(&self) -> sqlx::Result<()> {
            sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
        }

        async fn record_event(
            &self,
            run_id: &str,
            action: &str,
            operator: &str,
            detail: Option<&str>,
        ) -> sqlx::Result<()> {
            sqlx::query(
                "INSERT INTO backfill_event (run_id, action, operator, detail) VALUES ($1, $2, $3, $4)",
            )
            .bind(run_id)
            .bind(action)
            .bind(operator)
            .bind(detail)
            .execute(&self.pool)
            .await
            .map(drop)
        }

        async fn run_state(&self, run_id: &str) -> sqlx::Result<Option<String>> {
            sqlx::query_scalar("SELECT state FROM backfill_run WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await
        }

        async fn set_cancelled_summary(&self, run_id: &str, summary: &str) -> sqlx::Result<()> {
            sqlx::query(
                "UPDATE backfill_run SET summary = $2 WHERE run_id = $1 AND state = 'cancelled'",
            )
            .bind(run_id)
            .bind(summary)
            .execute(&self.pool)
            .await
            .map(drop)
        }

        async fn has_group_params(&self, run_id: &str) -> sqlx::Result<bool> {
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM backfill_group WHERE run_id = $1)")
                .bind(run_id)
                .fetch_one(&self.pool)
                .await
        }

        async fn planning_of(&self, run_id: &str) -> sqlx::Result<Option<i64>> {
            sqlx::query_scalar(
                "SELECT CAST(shard_size AS bigint) FROM backfill_planning WHERE run_id = $1",
            )
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
        }

        async fn discard_unpublished_run(&self, run_id: &str) -> sqlx::Result<bool> {
            let mut tx = self.pool.begin().await?;
            let published: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM backfill_shard WHERE run_id = $1 AND published_at IS NOT NULL",
            )
            .bind(run_id)
            .fetch_one(&mut *tx)
            .await?;
            if published > 0 {
                return Ok(false);
            }
            // Items and the run's steering (recorded before it) have no
            // reference to their run; the rest goes with it.
            sqlx::query("DELETE FROM backfill_item WHERE run_id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM backfill_control WHERE run_id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await?;
            let n = sqlx::query("DELETE FROM backfill_run WHERE run_id = $1")
                .bind(run_id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(n > 0)
        }

        async fn shard_group_params(
            &self,
            run_id: &str,
            shard_no: u32,
        ) -> sqlx::Result<Vec<(String, String)>> {
            // `->` with a plain key reads alike in both dialects.
            sqlx::query_as(
                "SELECT g.group_key, COALESCE(CAST(g.entry -> 'params' AS text), '{}')
                 FROM backfill_group g
                 WHERE g.run_id = $1 AND g.group_key IN (
                     SELECT DISTINCT i.group_key FROM backfill_item i
                     WHERE i.run_id = $1 AND i.shard_no = $2)",
            )
            .bind(run_id)
            .bind(shard_no as i32)
            .fetch_all(&self.pool)
            .await
        }

        async fn run_schedule(&self, run_id: &str) -> sqlx::Result<Option<Option<String>>> {
            sqlx::query_scalar("SELECT schedule FROM backfill_run WHERE run_id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await
        }

        async fn health_sql(&self, q: &str) -> sqlx::Result<Option<bool>> {
            sqlx::query_scalar(q).fetch_optional(&self.pool).await
        }

        async fn quarantined(&self, run_id: &str) -> sqlx::Result<Vec<(String, String, String)>> {
            sqlx::query_as(
                "SELECT target, key, error FROM backfill_quarantine WHERE run_id = $1 AND retried_by IS NULL ORDER BY target, key",
            )
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
        }

        async fn shards(&self, run_id: &str) -> sqlx::Result<Vec<crate::model::ledger::ShardRecord>> {
            use sqlx::Row;
            let rows = sqlx::query(
                "SELECT CAST(shard_no AS bigint) AS shard_no, target, first_key, last_key,
                        CAST(rows AS bigint) AS rows, state,
                        published_at IS NOT NULL AS published, reduced_at IS NOT NULL AS reduced
                 FROM backfill_shard WHERE run_id = $1 ORDER BY shard_no",
            )
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| crate::model::ledger::ShardRecord {
                    shard_no: r.get::<i64, _>("shard_no") as u32,
                    target: r.get("target"),
                    first_key: r.get("first_key"),
                    last_key: r.get("last_key"),
                    rows: r.get::<i64, _>("rows") as u32,
                    state: r.get("state"),
                    published: r.get("published"),
                    reduced: r.get("reduced"),
                })
                .collect())
        }

        async fn active_runs(&self, job: &str) -> sqlx::Result<Vec<crate::model::ledger::RawActiveRun>> {
            sqlx::query_as(
                "SELECT r.run_id, r.spec_hash, r.mode, CAST(r.scope AS text),
                        CAST(r.shards_total AS bigint), CAST(r.shards_reduced AS bigint),
                        (SELECT count(*) FROM backfill_shard s WHERE s.run_id = r.run_id AND s.published_at IS NOT NULL),
                        r.kind, r.revert_of, r.retry_of, r.sample
                 FROM backfill_run r WHERE r.job_name = $1 AND r.state = 'running' ORDER BY r.created_at DESC",
            )
            .bind(job)
            .fetch_all(&self.pool)
            .await
        }

        async fn shard_target(&self, run_id: &str, shard_no: u32) -> sqlx::Result<Option<String>> {
            sqlx::query_scalar("SELECT target FROM backfill_shard WHERE run_id = $1 AND shard_no = $2")
                .bind(run_id)
                .bind(shard_no as i64)
                .fetch_optional(&self.pool)
                .await
        }

        async fn shard_last_error(
            &self,
            run_id: &str,
            shard_no: u32,
        ) -> sqlx::Result<Option<Option<String>>> {
            sqlx::query_scalar(
                "SELECT last_error FROM backfill_shard WHERE run_id = $1 AND shard_no = $2",
            )
            .bind(run_id)
            .bind(shard_no as i64)
            .fetch_optional(&self.pool)
            .await
        }

        async fn dead_shards(&self, run_id: &str) -> sqlx::Result<Vec<(i64, String, String)>> {
            sqlx::query_as(
                "SELECT CAST(shard_no AS bigint), target, coalesce(last_error, '') FROM backfill_shard
                 WHERE run_id = $1 AND state = 'dead' ORDER BY shard_no",
            )
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
        }

        async fn has_identity(&self) -> sqlx::Result<bool> {
            sqlx::query_scalar(crate::model::identity::HAS_IDENTITY)
                .fetch_one(&self.pool)
                .await
        }

        async fn close(&self) {
            self.pool.close().await
        }
    };
}
pub(crate) use common_ops;

/// The [`crate::backend::Backend`] methods that hand an operation to the
/// dialect's own module of the same name (`identity`, `status`, `audit`,
/// `steer`, `ledger`, `planning`, `shard`) with the pool and the same
/// arguments: each dialect declares only what its modules do differently.
macro_rules! delegated_ops {
    () => {
        async fn ensure_identity(&self) -> Result<(), crate::error::StoreError> {
            identity::ensure(&self.pool).await
        }

        async fn load_identity(
            &self,
        ) -> Result<crate::model::identity::LedgerIdentity, crate::error::StoreError> {
            identity::load(&self.pool).await
        }

        async fn run_events(
            &self,
            run_id: &str,
        ) -> sqlx::Result<Vec<crate::model::steer::RawEvent>> {
            steer::run_events(&self.pool, run_id).await
        }

        async fn load_run(
            &self,
            run_id: &str,
            plan_groups: bool,
        ) -> Result<Option<crate::model::ledger::RawRun>, crate::error::StoreError> {
            ledger::load_run(&self.pool, run_id, plan_groups).await
        }

        fn report_groups<'a>(
            &'a self,
            run_id: &'a str,
        ) -> futures::stream::BoxStream<'a, sqlx::Result<(String, Option<String>)>> {
            ledger::report_groups(&self.pool, run_id)
        }

        async fn recent_runs(
            &self,
            limit: i64,
        ) -> sqlx::Result<Vec<crate::model::ledger::RecentRun>> {
            ledger::recent_runs(&self.pool, limit).await
        }

        async fn mark_published(
            &self,
            run_id: &str,
            shard_nos: &[i32],
        ) -> Result<(), crate::error::StoreError> {
            ledger::mark_published(&self.pool, run_id, shard_nos).await
        }

        async fn group_rows(
            &self,
            user_sql: &str,
            keys: Option<Option<String>>,
            what: &str,
        ) -> Result<Vec<backfill_job::plan::GroupRow>, crate::error::StoreError> {
            planning::group_rows(&self.pool, user_sql, keys, what).await
        }

        async fn create_run(
            &self,
            new: backfill_job::plan::NewRun<'_>,
            from: crate::model::planning::PlanFrom,
            sink: Option<&crate::model::planning::ShardSink>,
        ) -> Result<backfill_job::Plan, crate::error::StoreError> {
            planning::create_run(&self.pool, new, from, sink).await
        }

        async fn shard_done(
            &self,
            run_id: &str,
            shard_no: u32,
        ) -> Result<Option<backfill_job::Tally>, crate::error::StoreError> {
            shard::shard_done(&self.pool, run_id, shard_no).await
        }

        async fn shard_attempt_failed(
            &self,
            run_id: &str,
            shard_no: u32,
            error: &str,
        ) -> Result<u32, crate::error::StoreError> {
            shard::shard_attempt_failed(&self.pool, run_id, shard_no, error).await
        }

        async fn fail_shard(
            &self,
            run_id: &str,
            shard_no: u32,
            target: &str,
            error: &str,
        ) -> Result<crate::model::shard::Committed, crate::error::StoreError> {
            shard::fail_shard(&self.pool, run_id, shard_no, target, error).await
        }
    };
}
pub(crate) use delegated_ops;

/// The part of giving up a shard that reads and writes alike in the
/// dialect's transaction `$tx`, which holds the shard's row lock: its rows
/// are quarantined (the dialect's `QUARANTINE_FAILED`, in scope where it
/// expands) and the shard recorded dead with `error` and its tally (`FAIL`,
/// the tally as `$encode` makes it the dialect's JSON). Commits; evaluates
/// to the tally applied.
macro_rules! fail_in {
    ($tx:ident, $run_id:expr, $shard_no:expr, $target:expr, $error:expr, $encode:expr) => {{
        use sqlx::Row;
        let items: Vec<(String, String)> = sqlx::query(
            "SELECT key, group_key FROM backfill_item WHERE run_id = $1 AND shard_no = $2 ORDER BY item_no",
        )
        .bind($run_id)
        .bind($shard_no as i32)
        .fetch_all(&mut *$tx)
        .await
        .map_err(crate::error::sql("read shard items"))?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
        let tally = backfill_job::shard::failed_tally($target, $shard_no, $error, &items);
        sqlx::query(QUARANTINE_FAILED)
            .bind($run_id)
            .bind($shard_no as i32)
            .bind($target)
            .bind(format!("shard {} failed on every attempt: {}", $shard_no, $error))
            .execute(&mut *$tx)
            .await
            .map_err(crate::error::sql("quarantine rows"))?;
        sqlx::query(FAIL)
            .bind($run_id)
            .bind($shard_no as i32)
            .bind($encode(&tally)?)
            .bind($error)
            .execute(&mut *$tx)
            .await
            .map_err(crate::error::sql("record shard failed"))?;
        $tx.commit()
            .await
            .map_err(crate::error::sql("commit shard"))?;
        Ok(crate::model::shard::Committed::Applied(tally))
    }};
}
pub(crate) use fail_in;

/// The shards of a derived run (see [`crate::model::planning::Derived`]), cut
/// from the original run's ledger rows and written in the transaction
/// `$tx` by the dialect's own `planning::write_shard`; for a retry, the original's
/// quarantined rows are marked retried by the new run. Evaluates to the
/// planned targets, the next shard number and the tally.
macro_rules! plan_derived_shards {
    ($tx:ident, $run_id:expr, $original:expr, $shard_size:expr, $derived:expr) => {{
        let mut tally = backfill_job::Tally::default();
        let mut next_shard = 0u32;
        let mut targets = Vec::new();
        for target in &$original.spec.targets {
            let rows: Vec<(String, String, i64)> = sqlx::query_as($derived.rows_sql())
                .bind(&$original.run_id)
                .bind(&target.name)
                .fetch_all(&mut *$tx)
                .await
                .map_err(crate::error::sql("read the rows of the run"))?;
            let refs = rows
                .into_iter()
                .map(|(key, group, refs)| crate::model::planning::quarantine_ref(key, group, refs));
            let (cut, planned) = crate::model::planning::cut_target(
                &target.name,
                $shard_size,
                &mut next_shard,
                refs,
                &mut tally,
            );
            for shard in &cut {
                planning::write_shard(&mut $tx, $run_id, &target.name, target.key_type, shard)
                    .await?;
            }
            targets.push(planned);
        }
        if $derived == crate::model::planning::Derived::Retry {
            sqlx::query(
                "UPDATE backfill_quarantine SET retried_by = $2 WHERE run_id = $1 AND retried_by IS NULL",
            )
            .bind(&$original.run_id)
            .bind($run_id)
            .execute(&mut *$tx)
            .await
            .map_err(crate::error::sql("mark quarantined rows retried"))?;
        }
        (targets, next_shard, tally)
    }};
}
pub(crate) use plan_derived_shards;

/// The rows `$rows` of [`crate::model::shard::fetch_sql`] for `$target` as
/// fetched rows (with each column's digest when `$digests`), each database
/// row dropped as soon as it is converted; a column that is not text is an
/// error naming it.
macro_rules! fetched_rows {
    ($target:expr, $rows:expr, $digests:expr) => {{
        use sqlx::Row;
        let cols: Vec<&String> = $target.all_columns().collect();
        $rows
            .into_iter()
            .map(|r| {
                let texts = if r.get::<bool, _>(3) {
                    let text = |i: usize| {
                        r.try_get(5 + i).map_err(crate::error::sql(format!(
                            "read column {} as JSON text",
                            cols[i]
                        )))
                    };
                    Some((0..cols.len()).map(text).collect::<Result<_, _>>()?)
                } else {
                    None
                };
                Ok(backfill_job::shard::FetchedRow::read(
                    (r.get(0), r.get(1), r.get(2)),
                    &cols,
                    texts,
                    $digests,
                    r.get(4),
                ))
            })
            .collect::<Result<Vec<_>, crate::error::StoreError>>()
    }};
}
pub(crate) use fetched_rows;

/// The [`crate::backend::Backend`] methods whose code is the same in both
/// dialects but whose statement is the dialect's own constant of the same
/// name in its module (`steer::HEARTBEAT`, `status::RUN_TIMES`,
/// `shard::VERSION`, …), and
/// whose write transaction is the dialect's own `begin_write`. JSON goes
/// in and out as `sqlx::types::Json`: `jsonb` on PostgreSQL, text on
/// SQLite.
macro_rules! statement_ops {
    () => {
        /// Folds one shard result into its run, once: the shard's
        /// `reduced_at` claimed and the run's row read in one write
        /// transaction; only the shard's own groups are read and written.
        async fn reduce(
            &self,
            result: &backfill_job::ShardResult,
        ) -> Result<crate::model::ledger::Reduced, crate::error::StoreError> {
            use crate::error::sql;
            use crate::model::ledger as model;
            use sqlx::types::Json;
            let mut tx = begin_write(&self.pool, "reduce").await?;
            let claimed: Option<Option<Json<serde_json::Value>>> =
                sqlx::query_scalar(ledger::CLAIM_RESULT)
                    .bind(&result.run_id)
                    .bind(result.shard_no as i32)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(sql("claim shard result"))?;
            let Some(claimed) = claimed else {
                let known: Option<bool> = sqlx::query_scalar(
                    "SELECT reduced_at IS NOT NULL FROM backfill_shard WHERE run_id = $1 AND shard_no = $2",
                )
                .bind(&result.run_id)
                .bind(result.shard_no as i32)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql("read shard"))?;
                tx.rollback().await.map_err(sql("rollback reduce"))?;
                return Ok(model::not_reduced(known));
            };
            let (totals, groups) = model::stored_result(claimed.map(|j| j.0))?;
            let row: model::FoldRow = sqlx::query_as(ledger::FOLD_ROW)
                .bind(&result.run_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(sql("read run"))?;
            ledger::add_groups(&mut tx, &result.run_id, &groups).await?;
            let fold = row.fold(&result.run_id, &totals)?;
            let (state, summary) = fold.finished.clone().unzip();
            sqlx::query(ledger::FOLD)
                .bind(&result.run_id)
                .bind(Json(&fold.tally))
                .bind(fold.reduced as i32)
                .bind(state.map(|s| s.as_str()))
                .bind(summary)
                .execute(&mut *tx)
                .await
                .map_err(sql("fold shard result"))?;
            tx.commit().await.map_err(sql("commit reduce"))?;
            Ok(model::reduced(fold))
        }

        /// Plans a run derived from a finished run in one write
        /// transaction: its row, its shards cut from the original's ledger
        /// rows, then its plan (the dialect's `planning::record_derived_plan`).
        async fn create_derived_run(
            &self,
            run_id: &str,
            original: &crate::model::ledger::RunRecord,
            shard_size: u32,
            derived: crate::model::planning::Derived,
        ) -> Result<backfill_job::Plan, crate::error::StoreError> {
            use crate::error::sql;
            use sqlx::types::Json;
            let spec = &original.spec;
            let mut tx = begin_write(&self.pool, "plan").await?;
            sqlx::query(crate::common::INSERT_DERIVED_RUN)
                .bind(run_id)
                .bind(&spec.name)
                .bind(&spec.source)
                .bind(&spec.hash)
                .bind(derived.mode(original).as_str())
                .bind(Json(&original.scope_value))
                .bind(Json(backfill_job::Tally::default()))
                .bind(derived.revert_of(original))
                .bind(derived.kind().as_str())
                .bind(derived.retry_of(original))
                .execute(&mut *tx)
                .await
                .map_err(sql("record run"))?;
            let (targets, next_shard, tally) =
                crate::common::plan_derived_shards!(tx, run_id, original, shard_size, derived);
            let (plan, summary) = crate::model::planning::finish_derived(
                run_id, original, shard_size, derived, targets, next_shard, tally,
            );
            planning::record_derived_plan(&mut tx, run_id, &plan, summary).await?;
            tx.commit().await.map_err(sql("commit plan"))?;
            Ok(plan)
        }

        async fn fetch_shard(
            &self,
            run_id: &str,
            target: &backfill_job::spec::TargetSpec,
            shard_no: u32,
            digests: bool,
        ) -> Result<Vec<backfill_job::shard::FetchedRow>, crate::error::StoreError> {
            let q = crate::model::shard::fetch_sql(target, "", shard::AS_TEXT, shard::VERSION);
            let rows = sqlx::query(&q)
                .bind(run_id)
                .bind(shard_no as i32)
                .fetch_all(&self.pool)
                .await
                .map_err(crate::error::sql(format!(
                    "read rows of shard {shard_no} from {}",
                    target.table
                )))?;
            crate::common::fetched_rows!(target, rows, digests && shard::DIGESTS)
        }

        async fn before_images(
            &self,
            run_id: &str,
            target: &str,
            keys: &[String],
        ) -> Result<Vec<crate::model::audit::RawImage>, crate::error::StoreError> {
            // The keys go in as one JSON array: SQLite has no arrays.
            let list = serde_json::to_string(keys)
                .map_err(|e| crate::error::StoreError::Data(e.to_string()))?;
            sqlx::query_as(audit::BEFORE_IMAGES)
                .bind(run_id)
                .bind(target)
                .bind(list)
                .fetch_all(&self.pool)
                .await
                .map_err(crate::error::sql("read before-images"))
        }

        /// Reserves a shard's rows at the run's rows per second (see the
        /// dialect's `RESERVE_ROWS`) in a write transaction of its own.
        async fn reserve_rows(
            &self,
            run_id: &str,
            rows: f64,
            horizon: f64,
        ) -> Result<Option<Option<f64>>, crate::error::StoreError> {
            use crate::error::sql;
            let mut tx = begin_write(&self.pool, "rows reservation").await?;
            let wait = sqlx::query_scalar(steer::RESERVE_ROWS)
                .bind(run_id)
                .bind(rows)
                .bind(horizon)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql("reserve rows"))?;
            tx.commit().await.map_err(sql("commit rows reservation"))?;
            Ok(wait)
        }

        /// Reserves a shard's estimated bytes at the run's bytes per second
        /// (see the dialect's `RESERVE_BYTES`) in a write transaction of
        /// its own.
        async fn reserve_bytes(
            &self,
            run_id: &str,
            rows: f64,
            horizon: f64,
        ) -> Result<Option<(Option<f64>, Option<f64>)>, crate::error::StoreError> {
            use crate::error::sql;
            let mut tx = begin_write(&self.pool, "bytes reservation").await?;
            let wait = sqlx::query_as(steer::RESERVE_BYTES)
                .bind(run_id)
                .bind(rows)
                .bind(horizon)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql("reserve bytes"))?;
            tx.commit().await.map_err(sql("commit bytes reservation"))?;
            Ok(wait)
        }

        async fn group_tallies(
            &self,
            run_id: &str,
        ) -> Result<Vec<(String, String)>, crate::error::StoreError> {
            sqlx::query_as(ledger::GROUP_TALLIES)
                .bind(run_id)
                .fetch_all(&self.pool)
                .await
                .map_err(crate::error::sql("read group tallies"))
        }

        async fn plan_group_count(&self, run_id: &str) -> sqlx::Result<Option<i64>> {
            sqlx::query_scalar(ledger::PLAN_GROUP_COUNT)
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await
        }


        /// The before-images of runs that finished more than `secs` ago,
        /// per run (rows, bytes), deleted too with `delete`, in one write
        /// transaction.
        async fn prune_before_images(
            &self,
            secs: f64,
            delete: bool,
        ) -> Result<Vec<(String, i64, i64)>, crate::error::StoreError> {
            use crate::error::sql;
            let mut tx = begin_write(&self.pool, "prune").await?;
            let rows: Vec<(String, i64, i64)> = sqlx::query_as(steer::PRUNABLE)
                .bind(secs)
                .fetch_all(&mut *tx)
                .await
                .map_err(sql("find before-images to prune"))?;
            if delete {
                for (run_id, _, _) in &rows {
                    sqlx::query("DELETE FROM backfill_before_image WHERE run_id = $1")
                        .bind(run_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(sql("prune before-images"))?;
                }
            }
            tx.commit().await.map_err(sql("commit prune"))?;
            Ok(rows)
        }

        async fn heartbeat(
            &self,
            worker: &str,
            role: &str,
            run_id: Option<&str>,
            shards_done: i64,
        ) -> sqlx::Result<()> {
            sqlx::query(steer::HEARTBEAT)
                .bind(worker)
                .bind(role)
                .bind(run_id)
                .bind(shards_done)
                .execute(&self.pool)
                .await
                .map(drop)
        }

        async fn finish_cancelled(&self, run_id: &str, summary: &str) -> sqlx::Result<u64> {
            sqlx::query(steer::FINISH_CANCELLED)
                .bind(run_id)
                .bind(summary)
                .execute(&self.pool)
                .await
                .map(|r| r.rows_affected())
        }

        async fn history(
            &self,
            job: Option<&str>,
            limit: i64,
        ) -> sqlx::Result<Vec<crate::model::steer::HistoryRow>> {
            sqlx::query_as(steer::HISTORY)
                .bind(job)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
        }

        async fn run_times(&self, run_id: &str) -> sqlx::Result<(f64, Option<f64>, f64)> {
            use sqlx::Row;
            sqlx::query(status::RUN_TIMES)
                .bind(run_id)
                .fetch_one(&self.pool)
                .await
                .map(|r| (r.get(0), r.get(1), r.get(2)))
        }

        async fn run_workers(
            &self,
            run_id: &str,
        ) -> sqlx::Result<Vec<crate::model::status::RawWorker>> {
            use sqlx::Row;
            sqlx::query(status::RUN_WORKERS)
                .bind(run_id)
                .fetch_all(&self.pool)
                .await
                .map(|rows| {
                    rows.into_iter()
                        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                        .collect()
                })
        }

        /// Claims are serialized per run by the transaction the dialect
        /// begins (`steer::begin_claims`); with `max_in_flight`, busy while
        /// that many other shards hold a lease (`steer::IN_FLIGHT`); then the
        /// claim (`steer::CLAIM`), or else whether the shard exists at all.
        async fn claim_shard(
            &self,
            run_id: &str,
            shard_no: u32,
            worker: &str,
            max_in_flight: Option<u32>,
        ) -> Result<crate::model::steer::Claim, crate::error::StoreError> {
            use crate::error::sql;
            use crate::model::steer::{Claim, LEASE};
            let mut tx = steer::begin_claims(&self.pool, run_id, max_in_flight.is_some()).await?;
            if let Some(max) = max_in_flight {
                let n: i64 = sqlx::query_scalar(steer::IN_FLIGHT)
                    .bind(run_id)
                    .bind(shard_no as i32)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(sql("count shards in flight"))?;
                if n >= max as i64 {
                    tx.rollback().await.map_err(sql("end shard claim"))?;
                    return Ok(Claim::Busy);
                }
            }
            let claimed = sqlx::query(steer::CLAIM)
                .bind(run_id)
                .bind(shard_no as i32)
                .bind(worker)
                .bind(LEASE.as_secs_f64())
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql("claim shard"))?;
            let outcome = if claimed.is_some() {
                Claim::Claimed
            } else {
                let exists: Option<String> = sqlx::query_scalar(
                    "SELECT state FROM backfill_shard WHERE run_id = $1 AND shard_no = $2",
                )
                .bind(run_id)
                .bind(shard_no as i32)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql("read shard"))?;
                if exists.is_some() {
                    Claim::Finished
                } else {
                    Claim::Unknown
                }
            };
            tx.commit().await.map_err(sql("commit shard claim"))?;
            Ok(outcome)
        }

        async fn settle_bytes(
            &self,
            run_id: &str,
            per_row: Option<f64>,
            reserved: f64,
            written: f64,
            elapsed: f64,
        ) -> sqlx::Result<()> {
            sqlx::query(steer::SETTLE_BYTES)
                .bind(run_id)
                .bind(per_row)
                .bind(reserved)
                .bind(written)
                .bind(elapsed)
                .execute(&self.pool)
                .await
                .map(drop)
        }

        async fn raw_shards(
            &self,
            run_id: &str,
        ) -> sqlx::Result<Vec<crate::model::status::RawShard>> {
            use sqlx::Row;
            Ok(sqlx::query(status::RAW_SHARDS)
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| {
                    (
                        r.get::<i32, _>(0) as u32,
                        r.get::<String, _>(1),
                        r.get::<i32, _>(2) as i64,
                        r.get::<i32, _>(3) as u32,
                        r.get::<Option<String>, _>(4),
                        r.get::<Option<i32>, _>(5).map(i64::from),
                        r.get::<Option<f64>, _>(6),
                        r.get::<Option<f64>, _>(7),
                        r.get::<Option<f64>, _>(8),
                    )
                })
                .collect())
        }

        async fn recent_dry_runs(
            &self,
            job: &str,
            spec_hash: &str,
            secs: f64,
        ) -> sqlx::Result<Vec<String>> {
            sqlx::query_scalar(audit::RECENT_DRY_RUNS)
                .bind(job)
                .bind(spec_hash)
                .bind(secs)
                .fetch_all(&self.pool)
                .await
        }
    };
}
pub(crate) use statement_ops;
