//! The mapper's steps timed one by one, in process, on a sample of shards:
//! the product's own calls (`Store::fetch_shard`, `evaluate_row`,
//! `Store::commit_shard`) without the broker, plus the serde_json parts of
//! the evaluation measured separately on the same documents (parse, the deep
//! clone `evaluate_row` keeps of the originals, serialise).
//!
//! It runs on the dry-run contender's database once that contender has been
//! measured: a new commit run is planned there (`backfill_coordinator::plan`,
//! nothing published) and its sampled shards are fetched, evaluated and
//! committed, one at a time.

use anyhow::Context;
use backfill_job::rules::evaluate_row;
use backfill_job::{JobSpec, Mode, RowInput, Scope};
use backfill_store::{EvaluatedRow, ShardCommit, ShardRows, Store};
use serde_json::{Map, Value};
use std::time::Instant;

/// Mean milliseconds per shard of each step.
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    pub shards: u32,
    pub rows: f64,
    pub doc_bytes: f64,
    pub plan_s: f64,
    pub fetch: f64,
    pub evaluate: f64,
    pub parse: f64,
    pub clone: f64,
    pub serialise: f64,
    pub commit: f64,
}

impl Breakdown {
    pub fn lines(&self) -> Vec<String> {
        let n = f64::from(self.shards.max(1));
        let per = |x: f64| x / n;
        let total = per(self.fetch + self.evaluate + self.commit);
        let rules = (self.evaluate - self.parse - self.clone - self.serialise).max(0.0);
        vec![
            format!(
                "breakdown (in process, {} shards of {:.0} rows, {:.0} KiB of documents each; planning the run took {:.2} s): per shard {:.1} ms = fetch {:.1} + evaluate {:.1} + commit {:.1} (commit mode, COMMIT included) → {:.0} rows/s for one worker without the broker",
                self.shards,
                per(self.rows),
                per(self.doc_bytes) / 1024.0,
                self.plan_s,
                total,
                per(self.fetch),
                per(self.evaluate),
                per(self.commit),
                per(self.rows) / total.max(1e-9) * 1000.0,
            ),
            format!(
                "breakdown: evaluate {:.1} ms per shard ≈ serde_json parse {:.1} + deep clone of the originals {:.1} + serialise the new document {:.1} + rules and compare {:.1}",
                per(self.evaluate),
                per(self.parse),
                per(self.clone),
                per(self.serialise),
                per(rules),
            ),
        ]
    }
}

/// Plans a commit run in the database at `url` and times `sample` of its shards.
pub async fn run(
    url: &str,
    spec: &JobSpec,
    shard_size: Option<u32>,
    sample: u32,
) -> anyhow::Result<Breakdown> {
    let store = Store::connect(url, 2).await?;
    let t = Instant::now();
    let (run_id, plan) = backfill_coordinator::plan(
        &store,
        &backfill_coordinator::RunRequest {
            spec: spec.clone(),
            scope: Scope::All,
            mode: Mode::Commit,
            shard_size,
            throttle: None,
            sample: None,
            gate: backfill_coordinator::Gate::skip("backfill-bench", "benchmark"),
            kind: backfill_job::RunKind::Forward,
            windows: None,
            publishing: None,
        },
    )
    .await
    .context("plan a run for the breakdown")?;
    let plan_s = t.elapsed().as_secs_f64();
    let rec = store
        .load_run(&run_id)
        .await?
        .context("the planned run is not in the ledger")?;
    let params: std::collections::HashMap<String, Map<String, Value>> = rec
        .plan
        .groups
        .iter()
        .map(|g| (g.key.clone(), g.params.clone()))
        .collect();
    let [target] = spec.targets.as_slice() else {
        anyhow::bail!("the breakdown needs a job with one target");
    };
    let current = spec
        .report
        .current
        .as_ref()
        .filter(|c| c.target == target.name)
        .map(|c| (c.column.as_str(), c.path.as_str()));
    let total = plan.shards_total;
    let sample = sample.min(total);
    let mut b = Breakdown {
        plan_s,
        ..Breakdown::default()
    };
    let empty = Map::new();
    let normalised = store.normalised_columns(&target.table).await?;
    for i in 0..sample {
        let shard_no = (u64::from(i) * u64::from(total) / u64::from(sample.max(1))) as u32;
        let t = Instant::now();
        let rows = match store.fetch_shard(&run_id, target, shard_no, true).await? {
            ShardRows::Pending(r) => r,
            ShardRows::Done(_) => continue,
        };
        b.fetch += ms(t);

        // The serde_json parts alone, on the same documents.
        let texts: Vec<&str> = rows
            .iter()
            .filter_map(|r| r.columns.as_ref())
            .flat_map(|c| c.values().filter_map(|v| v.as_deref()))
            .collect();
        b.doc_bytes += texts.iter().map(|t| t.len()).sum::<usize>() as f64;
        let t = Instant::now();
        let docs: Vec<Value> = texts
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect();
        b.parse += ms(t);
        let t = Instant::now();
        let copies = docs.clone();
        b.clone += ms(t);
        let t = Instant::now();
        let out: usize = copies.iter().map(|d| d.to_string().len()).sum();
        b.serialise += ms(t);
        std::hint::black_box(out);

        let t = Instant::now();
        let evaluated: Vec<EvaluatedRow> = rows
            .into_iter()
            .map(|row| {
                let p = params.get(&row.group).unwrap_or(&empty);
                EvaluatedRow::evaluate(row, |key, columns, _| {
                    evaluate_row(
                        target,
                        &RowInput {
                            key,
                            columns,
                            params: p,
                            normalised: &normalised,
                        },
                        current,
                    )
                })
            })
            .collect();
        b.evaluate += ms(t);
        b.rows += evaluated.len() as f64;

        let t = Instant::now();
        store
            .commit_shard(ShardCommit {
                run_id: &run_id,
                shard_no,
                target,
                mode: Mode::Commit,
                worker: "backfill-bench",
                rows: evaluated,
                retry: None,
            })
            .await?;
        b.commit += ms(t);
        b.shards += 1;
    }
    Ok(b)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
