//! Where a backfill run's time went, read back from its ledger.
//!
//! Per shard the ledger holds `started_at` (the claim's transaction time),
//! `finished_at` (`now()` in the commit transaction, i.e. when that
//! transaction began) and `elapsed_ms` (claim → just before `COMMIT`, by
//! `clock_timestamp()`). So, per shard:
//!
//! - read + evaluate = `finished_at − started_at` (fetch the rows, parse,
//!   apply the rules, serialise);
//! - commit transaction = `elapsed_ms − (finished_at − started_at)` (lock the
//!   shard row, compare-and-set UPDATE, before-image INSERT, shard UPDATE;
//!   without the `COMMIT` itself);
//! - between shards, per worker (meaningful with `--concurrency 1`): from the
//!   end of one shard's work to the claim of its next: `COMMIT` (WAL flush),
//!   publish result with confirm, ack, next delivery, admission (control,
//!   health, claim transaction) — the per-shard overhead outside the work.
//!
//! All times are on the database server's clock, as are the coordinator's
//! spawn and exit, which the harness reads from the same server.

use anyhow::Context;
use sqlx::{Connection, Row};

use crate::messaging::Stats;

/// The timings of one run.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub shards: usize,
    pub mean_rows: f64,
    pub work: Option<Stats>,
    pub read_eval: Option<Stats>,
    pub commit_tx: Option<Stats>,
    /// Between consecutive shards of one worker (None with concurrency > 1).
    pub gap: Option<Stats>,
    /// Coordinator spawned → run row written (start-up, ledger, groups query), s.
    pub to_run_row: f64,
    /// Run row → first shard claimed (targets query, first shard recorded
    /// and published: the plan's rest is recorded meanwhile), s.
    pub to_first_claim: f64,
    /// Coordinator spawned → last shard's publish recorded, s.
    pub to_last_publish: f64,
    /// First claim → last shard's work done, s.
    pub mapping: f64,
    /// Last shard's work done → run finished by the reducer, s.
    pub reduce_tail: f64,
    /// Run finished → coordinator exited (its poll, the report), s.
    pub exit_tail: f64,
    /// Sum of shard work / (mapping span × workers).
    pub busy: f64,
    pub workers: usize,
    /// One shard's stored result (a real result document for the messaging measurement).
    pub sample_result: Option<String>,
}

/// Reads the ledger of `run_id` in the database at `url`.
pub async fn analyse(
    url: &str,
    run_id: &str,
    spawned_ms: f64,
    exited_ms: f64,
    concurrency: u16,
) -> anyhow::Result<Analysis> {
    let mut conn = crate::conn::connect(url).await?;
    let shards = sqlx::query(
        "SELECT coalesce(worker, ''), rows,
                (extract(epoch FROM started_at) * 1000)::float8,
                (extract(epoch FROM finished_at) * 1000)::float8,
                elapsed_ms::float8,
                (extract(epoch FROM published_at) * 1000)::float8
         FROM backfill_shard WHERE run_id = $1 ORDER BY worker, started_at",
    )
    .bind(run_id)
    .fetch_all(&mut conn)
    .await
    .context("read the run's shards")?;
    let run = sqlx::query(
        "SELECT (extract(epoch FROM created_at) * 1000)::float8,
                (extract(epoch FROM finished_at) * 1000)::float8
         FROM backfill_run WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(&mut conn)
    .await
    .context("read the run")?;
    let sample: Option<String> = sqlx::query_scalar(
        "SELECT result::text FROM backfill_shard WHERE run_id = $1 AND result IS NOT NULL
         ORDER BY shard_no LIMIT 1",
    )
    .bind(run_id)
    .fetch_optional(&mut conn)
    .await
    .context("read a shard result")?
    .flatten();
    conn.close().await.ok();

    struct S {
        worker: String,
        rows: i32,
        start: f64,
        commit_begin: f64,
        elapsed: f64,
        published: Option<f64>,
    }
    let mut v: Vec<S> = Vec::new();
    for r in shards {
        let (Some(start), Some(commit_begin), Some(elapsed)) = (
            r.get::<Option<f64>, _>(2),
            r.get::<Option<f64>, _>(3),
            r.get::<Option<f64>, _>(4),
        ) else {
            continue;
        };
        v.push(S {
            worker: r.get(0),
            rows: r.get(1),
            start,
            commit_begin,
            elapsed,
            published: r.get(5),
        });
    }
    let created: f64 = run.get::<Option<f64>, _>(0).unwrap_or(spawned_ms);
    let finished: f64 = run.get::<Option<f64>, _>(1).unwrap_or(exited_ms);
    let mut a = Analysis {
        shards: v.len(),
        sample_result: sample,
        ..Analysis::default()
    };
    if v.is_empty() {
        return Ok(a);
    }
    a.mean_rows = v.iter().map(|s| f64::from(s.rows)).sum::<f64>() / v.len() as f64;
    a.work = Some(Stats::of(v.iter().map(|s| s.elapsed).collect()));
    a.read_eval = Some(Stats::of(
        v.iter().map(|s| s.commit_begin - s.start).collect(),
    ));
    a.commit_tx = Some(Stats::of(
        v.iter()
            .map(|s| s.elapsed - (s.commit_begin - s.start))
            .collect(),
    ));
    let mut workers: Vec<&str> = v.iter().map(|s| s.worker.as_str()).collect();
    workers.dedup();
    a.workers = workers.len();
    if concurrency == 1 {
        let mut gaps = Vec::new();
        for w in v.windows(2) {
            if w[0].worker == w[1].worker {
                gaps.push(w[1].start - (w[0].start + w[0].elapsed));
            }
        }
        a.gap = Some(Stats::of(gaps));
    }
    let first_start = v.iter().map(|s| s.start).fold(f64::INFINITY, f64::min);
    let last_end = v
        .iter()
        .map(|s| s.start + s.elapsed)
        .fold(f64::NEG_INFINITY, f64::max);
    let last_publish = v
        .iter()
        .filter_map(|s| s.published)
        .fold(f64::NEG_INFINITY, f64::max);
    a.to_run_row = (created - spawned_ms) / 1000.0;
    a.to_first_claim = (first_start - created) / 1000.0;
    a.to_last_publish = (last_publish - spawned_ms) / 1000.0;
    a.mapping = (last_end - first_start) / 1000.0;
    a.reduce_tail = (finished - last_end) / 1000.0;
    a.exit_tail = (exited_ms - finished) / 1000.0;
    let work_total: f64 = v.iter().map(|s| s.elapsed).sum();
    let slots = (a.workers as f64) * f64::from(concurrency);
    a.busy = work_total / 1000.0 / (a.mapping * slots).max(1e-9);
    Ok(a)
}

impl Analysis {
    pub fn lines(&self) -> Vec<String> {
        if self.shards == 0 {
            return vec!["ledger: no shard timings".into()];
        }
        let ms = |s: &Option<Stats>| s.map(|s| s.short()).unwrap_or_else(|| "n/a".into());
        let mut out = vec![
            format!(
                "ledger: {} shards of {:.0} rows on {} workers; per shard, ms: work {}; of which read + evaluate {}, commit transaction {}",
                self.shards,
                self.mean_rows,
                self.workers,
                ms(&self.work),
                ms(&self.read_eval),
                ms(&self.commit_tx),
            ),
            format!(
                "ledger: between shards (COMMIT + result publish/confirm + ack + next delivery + admission/claim), ms: {}",
                match &self.gap {
                    Some(g) => g.short(),
                    None => "n/a with --concurrency > 1".into(),
                }
            ),
            format!(
                "ledger: phases, s: start-up + groups query {:.2}; run row to first claim {:.2}; last publish recorded at {:.2}; mapping {:.2} (workers busy {:.0}%); reducer tail {:.2}; coordinator exit tail {:.2}",
                self.to_run_row,
                self.to_first_claim,
                self.to_last_publish,
                self.mapping,
                self.busy * 100.0,
                self.reduce_tail,
                self.exit_tail,
            ),
        ];
        if let (Some(w), Some(g)) = (&self.work, &self.gap) {
            let per = w.mean + g.mean;
            out.push(format!(
                "ledger: per shard per worker {:.1} ms = work {:.1} + overhead {:.1} ({:.0}% overhead) → {:.0} rows/s per worker",
                per,
                w.mean,
                g.mean,
                g.mean / per.max(1e-9) * 100.0,
                self.mean_rows / per.max(1e-9) * 1000.0,
            ));
        }
        out
    }
}
