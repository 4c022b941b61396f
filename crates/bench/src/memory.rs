//! A mapper's memory on a shard of large rows: one shard of `--memory-rows`
//! documents of `--memory-row-mib` MiB each, committed by one real `backfill
//! mapper` process, whose peak RSS (`VmHWM`) is compared with the bound the
//! README promises: 64 MiB + 3 × the largest row, whatever the shard's size.
//!
//! It runs twice on clones of the same database, on the read-rewrite-write
//! path (`BACKFILL_PUSHDOWN=off`: rules the database applies itself never
//! bring a document into the mapper): as configured (the mapper reads,
//! evaluates and writes the shard in batches bounded in rows and bytes), and with one batch holding the whole shard
//! (`BACKFILL_BATCH_ROWS` and `BACKFILL_BATCH_BYTES` set beyond the shard),
//! which is how the mapper worked before it batched: its memory then grows
//! with the shard.

use crate::db::Server;
use crate::procs::BackfillRun;
use anyhow::Context;
use sqlx::Connection;
use std::path::Path;
use std::time::Duration;

/// What one measurement found.
pub struct Memory {
    pub rows: u32,
    pub largest_row_bytes: u64,
    /// (label, mapper peak RSS in KiB).
    pub runs: Vec<(String, u64)>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Memory {
    /// The bound: 64 MiB + 3 × the largest row, in bytes.
    pub fn target_bytes(&self) -> u64 {
        64 * 1024 * 1024 + 3 * self.largest_row_bytes
    }

    /// The batched run's peak over the target (≤ 1 is within it).
    pub fn batched_ratio(&self) -> Option<f64> {
        self.runs
            .first()
            .map(|(_, kib)| (*kib * 1024) as f64 / self.target_bytes() as f64)
    }

    pub fn lines(&self) -> Vec<String> {
        let target = self.target_bytes() as f64 / MIB;
        let mut out = vec![format!(
            "target: 64 MiB + 3 × largest row ({:.1} MiB) = {target:.1} MiB",
            self.largest_row_bytes as f64 / MIB
        )];
        for (label, kib) in &self.runs {
            let peak = *kib as f64 / 1024.0;
            out.push(format!(
                "{label}: mapper peak RSS {peak:.1} MiB, {:.2} × the target",
                peak / target
            ));
        }
        out
    }

    /// The one-line summary printed at the end of the bench:
    /// `mapper memory: batched X MiB, whole shard Y MiB, target Z MiB (…)`.
    pub fn summary(&self) -> String {
        let mib = |i: usize| {
            self.runs
                .get(i)
                .map_or(0.0, |(_, kib)| *kib as f64 / 1024.0)
        };
        let verdict = match self.batched_ratio() {
            Some(r) if r <= 1.0 => format!("batched/target {r:.2}: within the target"),
            Some(r) => format!("batched/target {r:.2}: OVER the target"),
            None => "no figure".into(),
        };
        format!(
            "mapper memory: batched {:.1} MiB, whole shard {:.1} MiB, target {:.1} MiB (64 MiB + 3 × {:.1} MiB, the largest of {} rows in one shard); {verdict}",
            mib(0),
            mib(1),
            self.target_bytes() as f64 / MIB,
            self.largest_row_bytes as f64 / MIB,
            self.rows,
        )
    }
}

/// Measures it. `tag` names the databases and queues.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    server: &Server,
    bin: &Path,
    amqp_url: &str,
    log_dir: &Path,
    tag: &str,
    rows: u32,
    row_mib: u32,
    timeout: Duration,
) -> anyhow::Result<Memory> {
    let template = format!("bench_{tag}_memory");
    server.create_db(&template).await?;
    let template = template.as_str();
    // The template is dropped whether or not the measurement succeeds.
    let result: anyhow::Result<Memory> = async {
        let url = server.url_for(template)?;
        let mut conn = crate::conn::connect(&url).await?;
        // Items of 1 KiB (32 × an md5), row_mib × 1024 of them per document.
        for q in [
            "CREATE TABLE big_docs (id integer PRIMARY KEY, doc jsonb NOT NULL)".to_string(),
            format!(
                "INSERT INTO big_docs SELECT n, jsonb_build_object('n', n, 'items',
               (SELECT jsonb_agg(repeat(md5(n::text || '-' || i::text), 32))
                FROM generate_series(1, {items}) i))
             FROM generate_series(1, {rows}) n",
                items = u64::from(row_mib) * 1024
            ),
            "VACUUM (ANALYZE) big_docs".to_string(),
        ] {
            sqlx::query(&q)
                .execute(&mut conn)
                .await
                .with_context(|| format!("prepare the memory measurement: {q}"))?;
        }
        let largest: i64 =
            sqlx::query_scalar("SELECT max(octet_length(doc::text))::int8 FROM big_docs")
                .fetch_one(&mut conn)
                .await
                .context("size the largest row")?;
        conn.close().await.ok();
        let job_path = log_dir.join("memory-big-docs.toml");
        std::fs::write(
            &job_path,
            format!(
                r#"name = "bench-big-docs"
shard_size = {rows}
[[targets]]
name = "docs"
table = "big_docs"
key = "id"
key_type = "integer"
columns = ["doc"]
query = "SELECT id AS key FROM big_docs"
[[targets.rules]]
op = "set"
path = "/seen"
value = true
"#
            ),
        )
        .with_context(|| format!("cannot write {}", job_path.display()))?;

        let whole = u64::MAX / 4;
        let whole = whole.to_string();
        // The path that reads the documents into the mapper: rules the
        // database applies itself never bring a document into it.
        let read_rewrite = ("BACKFILL_PUSHDOWN", "off");
        let modes: [(&str, Vec<(&str, &str)>); 2] = [
            ("batched", vec![read_rewrite]),
            (
                "whole shard in one batch (as before batching)",
                vec![
                    read_rewrite,
                    ("BACKFILL_BATCH_ROWS", whole.as_str()),
                    ("BACKFILL_BATCH_BYTES", whole.as_str()),
                ],
            ),
        ];
        let mut runs = Vec::new();
        for (i, (label, env)) in modes.iter().enumerate() {
            let name = format!("{template}_{i}");
            server.clone_template(template, &name).await?;
            let db_url = server.url_for(&name)?;
            let prefix = format!("bench-{tag}-memory-{i}");
            let run = BackfillRun {
                bin,
                job_path: &job_path,
                db_url: &db_url,
                amqp_url,
                queue_prefix: &prefix,
                mappers: 1,
                concurrency: 1,
                commit: true,
                shard_size: Some(rows),
                log_dir,
                timeout,
                extra_env: env,
                params: &[],
            };
            let r = run.run(server).await;
            crate::messaging::delete_queues(amqp_url, &prefix).await;
            server.drop_db(&name).await?;
            let r = r?;
            anyhow::ensure!(
                r.changed == u64::from(rows),
                "the memory run ({label}) changed {} of {rows} rows: {}",
                r.changed,
                r.summary
            );
            let kib = r
                .rss
                .iter()
                .find(|(role, _)| role == "mapper1")
                .map(|(_, k)| *k)
                .context("no mapper RSS")?;
            runs.push((label.to_string(), kib));
        }
        Ok(Memory {
            rows,
            largest_row_bytes: largest.max(0) as u64,
            runs,
        })
    }
    .await;
    server.drop_db(template).await?;
    result
}
