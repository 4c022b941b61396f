//! The reducer's fold, per shard, against the number of groups in a run.
//!
//! A ledger is built directly in a database of its own: a run of N groups
//! (the plan lists them all), S shards done, each shard's stored result
//! carrying the counts of K of the groups, and every group already counted
//! once, as in the middle of a run. `Store::reduce` then folds the shards
//! one by one, as the reducer does, and each fold is timed. Two layouts:
//!
//! - `records`: each group's counts in a row of `backfill_group_tally`
//!   (ledger version 2): a fold reads and writes the shard's K groups;
//! - `run record`: every group's counts inside the run's own `tally`, as
//!   ledgers before version 2 kept them (and as this release still folds a
//!   run begun before it): a fold reads, merges and rewrites all N groups.
//!
//! The second is the cost every fold had before version 2.

use anyhow::Context;
use backfill_job::message::MESSAGE_VERSION;
use backfill_job::plan::{GroupStatus, PlannedGroup};
use backfill_job::tally::Recorded;
use backfill_job::{JobSpec, Plan, ShardResult, Tally};
use backfill_store::{Reduced, Store};
use sqlx::Connection;
use std::time::Instant;

use crate::db::Server;

/// One layout at one number of groups.
#[derive(Debug, Clone)]
pub struct FoldRow {
    pub groups: u32,
    pub layout: &'static str,
    pub shards: u32,
    /// Median time of one fold, ms.
    pub median_ms: f64,
    /// Slowest fold, ms.
    pub max_ms: f64,
}

impl FoldRow {
    pub fn line(&self) -> String {
        format!(
            "{:>7} groups, {:<10}: {} shards folded, {:.2} ms per shard (median), {:.2} ms slowest",
            self.groups, self.layout, self.shards, self.median_ms, self.max_ms
        )
    }
}

/// What one group of a shard carries: 20 rows changed, one current value.
fn shard_tally(first_group: u32, groups_per_shard: u32, n_groups: u32, shard: u32) -> Tally {
    let mut t = Tally::default();
    for g in 0..groups_per_shard {
        let key = group_key((first_group + g) % n_groups);
        for r in 0..20 {
            let row = format!("{shard}-{g}-{r}");
            t.record_row(
                "revisions",
                &key,
                &row,
                1,
                Recorded::Changed,
                Some("Old title"),
            );
        }
    }
    t
}

fn group_key(n: u32) -> String {
    format!("g{n:06}")
}

/// Measures the fold at each number of groups, in both layouts; `tag`
/// names the databases.
pub async fn measure(
    server: &Server,
    tag: &str,
    groups: &[u32],
    shards: u32,
    groups_per_shard: u32,
) -> anyhow::Result<Vec<FoldRow>> {
    let mut rows = Vec::new();
    for &n in groups {
        for layout in ["records", "run record"] {
            let name = format!("bench_{tag}_fold");
            server.create_db(&name).await?;
            let row = fold_once(server, &name, n, layout, shards, groups_per_shard).await;
            server.drop_db(&name).await.ok();
            let row = row.with_context(|| format!("fold {n} groups, {layout}"))?;
            println!("   {}", row.line());
            rows.push(row);
        }
    }
    Ok(rows)
}

async fn fold_once(
    server: &Server,
    db: &str,
    n_groups: u32,
    layout: &'static str,
    shards: u32,
    groups_per_shard: u32,
) -> anyhow::Result<FoldRow> {
    let url = server.url_for(db)?;
    let store = Store::connect(&url, 4).await?;
    let spec = JobSpec::parse(crate::CERTIFICATE_JOB)?;
    let run_id = "fold-bench";
    let plan = Plan {
        groups: (0..n_groups)
            .map(|n| PlannedGroup {
                key: group_key(n),
                label: None,
                params: Default::default(),
                status: GroupStatus::Eligible,
            })
            .collect(),
        targets: vec![],
        shards_total: shards,
        tally: Tally::default(),
    };
    // Every group counted once already: the state in the middle of a run.
    let counted = shard_tally(0, 1, 1, 0)
        .groups
        .remove(&group_key(0))
        .unwrap_or_default();
    let mut conn = crate::conn::connect(&url).await?;
    sqlx::query(
        "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, tally)
         VALUES ($1, $2, $3, $4, 'dry-run', $7, 'running', $5, $6, $8)",
    )
    .bind(run_id)
    .bind(&spec.name)
    .bind(&spec.source)
    .bind(&spec.hash)
    .bind(serde_json::to_value(&plan)?)
    .bind(shards as i32)
    .bind(serde_json::to_value(backfill_job::Scope::All)?)
    .bind(serde_json::to_value(Tally::default())?)
    .execute(&mut conn)
    .await
    .context("record the run")?;
    let one = serde_json::to_value(&counted)?;
    let fill = match layout {
        "records" => {
            "INSERT INTO backfill_group_tally (run_id, group_key, tally)
             SELECT $1, 'g' || lpad(n::text, 6, '0'), $2 FROM generate_series(0, $3 - 1) n"
        }
        _ => {
            "UPDATE backfill_run SET tally = tally || jsonb_build_object('groups',
                (SELECT jsonb_object_agg('g' || lpad(n::text, 6, '0'), $2::jsonb) FROM generate_series(0, $3 - 1) n))
             WHERE run_id = $1"
        }
    };
    sqlx::query(fill)
        .bind(run_id)
        .bind(&one)
        .bind(n_groups as i32)
        .execute(&mut conn)
        .await
        .context("count every group once")?;
    for s in 0..shards {
        let t = shard_tally(s * groups_per_shard, groups_per_shard, n_groups, s);
        sqlx::query(
            "INSERT INTO backfill_shard (run_id, shard_no, target, first_key, last_key, rows, state, result, finished_at)
             VALUES ($1, $2, 'revisions', '0', '0', $3, 'done', $4, now())",
        )
        .bind(run_id)
        .bind(s as i32)
        .bind((groups_per_shard * 20) as i32)
        .bind(serde_json::to_value(&t)?)
        .execute(&mut conn)
        .await
        .context("record a done shard")?;
    }
    sqlx::query("VACUUM ANALYZE").execute(&mut conn).await.ok();
    let mut times = Vec::with_capacity(shards as usize);
    for s in 0..shards {
        let result = ShardResult {
            v: MESSAGE_VERSION,
            ledger: store.ledger().id.clone(),
            run_id: run_id.into(),
            shard_no: s,
            target: "revisions".into(),
            worker: "bench".into(),
            elapsed_ms: 0,
            tally: Tally::default(),
        };
        let t0 = Instant::now();
        let r = store.reduce(&result).await?;
        times.push(t0.elapsed().as_secs_f64() * 1000.0);
        let want_last = s + 1 == shards;
        match r {
            Reduced::Counted if !want_last => {}
            Reduced::Finished(_) if want_last => {}
            other => anyhow::bail!("shard {s} was not folded: {other:?}"),
        }
    }
    // The folded run holds what was counted: every group once, and each
    // shard's groups once more.
    let rec = store.load_run(run_id).await?.context("the run is gone")?;
    let want = u64::from(n_groups) * 20 + u64::from(shards * groups_per_shard) * 20;
    let got: u64 = rec.tally.groups.values().map(|g| g.counts.processed).sum();
    anyhow::ensure!(got == want, "folded {got} rows' counts, expected {want}");
    conn.close().await.ok();
    store.close().await;
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(FoldRow {
        groups: n_groups,
        layout,
        shards,
        median_ms: times[times.len() / 2],
        max_ms: times.last().copied().unwrap_or_default(),
    })
}

/// The ratio of the slowest to the fastest median fold of the `records`
/// layout across the numbers of groups: the fold is flat when it is small.
pub fn flatness(rows: &[FoldRow]) -> Option<f64> {
    let medians: Vec<f64> = rows
        .iter()
        .filter(|r| r.layout == "records")
        .map(|r| r.median_ms)
        .collect();
    let lo = medians.iter().copied().reduce(f64::min)?;
    let hi = medians.iter().copied().reduce(f64::max)?;
    (lo > 0.0).then(|| hi / lo)
}
