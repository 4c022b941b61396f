//! The monitoring APIs on a large run: a ledger of one run with 10,000
//! shards and 50,000 groups built directly in a database of its own
//! ([`build_big_run`]: half the shards done and folded, the rest pending,
//! every group counted), and the time `backfill status RUN --json` (the
//! whole process) and the dashboard's `/api/runs/RUN` and
//! `/api/runs/RUN/shards` take to answer about it, best of three each.
//! Target: under 200 ms each.

use anyhow::Context;
use backfill_job::{JobSpec, Scope, Tally};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::db::Server;
use crate::procs::Proc;

/// The times, ms.
#[derive(Debug, Clone)]
pub struct MonitorTimes {
    pub shards: u32,
    pub groups: u32,
    pub status_ms: f64,
    pub run_api_ms: f64,
    pub shards_api_ms: f64,
    /// `backfill report RUN` (text), the whole process: ms, peak RSS MiB.
    pub report_ms: f64,
    pub report_mib: f64,
}

impl MonitorTimes {
    pub fn line(&self) -> String {
        let mark = |ms: f64| if ms < 200.0 { "met" } else { "NOT met" };
        format!(
            "monitoring a run of {} shards and {} groups, best of 3: status --json {:.0} ms (whole process) — {}; /api/runs/RUN {:.0} ms — {}; /api/runs/RUN/shards {:.0} ms — {} (target < 200 ms each); report {:.0} ms, peak RSS {:.1} MiB",
            self.shards,
            self.groups,
            self.status_ms,
            mark(self.status_ms),
            self.run_api_ms,
            mark(self.run_api_ms),
            self.shards_api_ms,
            mark(self.shards_api_ms),
            self.report_ms,
            self.report_mib
        )
    }
}

/// Records run `run_id` of the job `spec_text` in a ledger made already:
/// a plan of `groups` groups (`g1` …), `shards` shards of 100 rows of
/// which the first half are done and folded (0.3 s apart, an hour ago),
/// and every group's record counted with 20 rows: changed in every
/// thousandth group, unchanged in the others.
pub async fn build_big_run(
    pool: &PgPool,
    run_id: &str,
    spec_text: &str,
    shards: u32,
    groups: u32,
) -> anyhow::Result<()> {
    let spec = JobSpec::parse(spec_text)?;
    let done = shards / 2;
    let mut totals = Tally::default();
    totals.counts.processed = u64::from(groups) * 20;
    totals.counts.changed = u64::from(groups / 1000) * 20;
    totals.counts.unchanged = totals.counts.processed - totals.counts.changed;
    let group = json!({"label": null, "params": {"title": "A title"}, "status": "eligible"});
    let counted = |changed: u64| {
        json!({
            "counts": {"processed": 20, "changed": changed, "unchanged": 20 - changed, "skipped": 0, "conflicts": 0, "errors": 0},
            "refs": 20, "refs_affected": changed, "refs_skipped": {}, "skipped_by_reason": {},
            "current": {"kept": {"Old title": 20}, "other": 0}
        })
    };
    sqlx::query(
        "INSERT INTO backfill_run (run_id, job_name, spec_text, spec_hash, mode, scope, state, plan, shards_total, shards_reduced, tally)
         SELECT $1, $2, $3, $4, 'commit', $5, 'running',
                jsonb_build_object('groups', (SELECT jsonb_agg($6::jsonb || jsonb_build_object('key', 'g' || n)) FROM generate_series(1, $7) n),
                                   'targets', '[]'::jsonb, 'shards_total', $8, 'tally', $9::jsonb),
                $8, $10, $11",
    )
    .bind(run_id)
    .bind(&spec.name)
    .bind(spec_text)
    .bind(&spec.hash)
    .bind(serde_json::to_value(Scope::All)?)
    .bind(&group)
    .bind(groups as i32)
    .bind(shards as i32)
    .bind(serde_json::to_value(Tally::default())?)
    .bind(done as i32)
    .bind(serde_json::to_value(&totals)?)
    .execute(pool)
    .await
    .context("record the run")?;
    sqlx::query(
        "INSERT INTO backfill_shard (run_id, shard_no, target, first_key, last_key, rows, state, published_at,
                                     started_at, finished_at, reduced_at, worker, elapsed_ms)
         SELECT $1, n, 'revisions', (n * 100)::text, (n * 100 + 99)::text, 100,
                CASE WHEN n < $2 THEN 'done' ELSE 'pending' END,
                now() - interval '1 hour',
                CASE WHEN n < $2 THEN now() - interval '1 hour' + n * interval '300 ms' END,
                CASE WHEN n < $2 THEN now() - interval '1 hour' + n * interval '300 ms' + interval '250 ms' END,
                CASE WHEN n < $2 THEN now() - interval '1 hour' + n * interval '300 ms' + interval '260 ms' END,
                CASE WHEN n < $2 THEN 'w' || (n % 4) END,
                CASE WHEN n < $2 THEN 250 END
         FROM generate_series(0, $3 - 1) n",
    )
    .bind(run_id)
    .bind(done as i32)
    .bind(shards as i32)
    .execute(pool)
    .await
    .context("record the shards")?;
    sqlx::query(
        "INSERT INTO backfill_group_tally (run_id, group_key, tally)
         SELECT $1, 'g' || n, CASE WHEN n % 1000 = 0 THEN $2 ELSE $3 END FROM generate_series(1, $4) n",
    )
    .bind(run_id)
    .bind(counted(20))
    .bind(counted(0))
    .bind(groups as i32)
    .execute(pool)
    .await
    .context("record the groups' counts")?;
    sqlx::query("ANALYZE")
        .execute(pool)
        .await
        .context("analyse")?;
    Ok(())
}

/// The best of three timings of `f`, ms; each must succeed.
async fn best_of_three<F, Fut>(mut f: F) -> anyhow::Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t0 = Instant::now();
        f().await?;
        best = best.min(t0.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(best)
}

/// GET `url`, which must answer 200 with JSON.
async fn get_json(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let r = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    anyhow::ensure!(r.status().is_success(), "GET {url}: {}", r.status());
    Ok(r.json().await?)
}

/// Measures it with the `backfill` binary `bin`; `tag` names the database.
pub async fn measure(
    server: &Server,
    bin: &Path,
    log_dir: &Path,
    tag: &str,
    shards: u32,
    groups: u32,
) -> anyhow::Result<MonitorTimes> {
    let name = format!("bench_{tag}_monitor");
    server.create_db(&name).await?;
    let result = async {
        let url = server.url_for(&name)?;
        let store = backfill_store::Store::connect(&url, 2).await?;
        store.close().await;
        let pool = PgPool::connect(&url).await?;
        build_big_run(&pool, "big-run", crate::CERTIFICATE_JOB, shards, groups).await?;
        pool.close().await;
        let status_ms = best_of_three(|| async {
            let out = tokio::process::Command::new(bin)
                .args(["status", "big-run", "--json"])
                .env("DATABASE_URL", &url)
                .env_remove("RUST_LOG")
                .output()
                .await?;
            anyhow::ensure!(
                out.status.success(),
                "status: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let doc: Value = serde_json::from_slice(&out.stdout)?;
            anyhow::ensure!(doc["shards"]["total"] == json!(shards), "status: {doc}");
            Ok(())
        })
        .await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let dash = Proc::spawn(
            "dashboard",
            bin,
            &["dashboard".into(), "--listen".into(), listen.clone()],
            &[("DATABASE_URL", url.as_str())],
            log_dir.join("monitor-dashboard.log"),
            false,
        )?;
        let client = reqwest::Client::new();
        let base = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.get(format!("{base}/healthz")).send().await.is_err() {
            anyhow::ensure!(Instant::now() < deadline, "the dashboard did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let run_api_ms = best_of_three(|| async {
            let doc = get_json(&client, &format!("{base}/api/runs/big-run")).await?;
            anyhow::ensure!(doc["shards"]["done"] == json!(shards / 2), "{doc}");
            Ok(())
        })
        .await?;
        let shards_api_ms = best_of_three(|| async {
            let doc = get_json(&client, &format!("{base}/api/runs/big-run/shards")).await?;
            anyhow::ensure!(
                doc["shards"].as_array().is_some_and(|a| !a.is_empty()),
                "no cells"
            );
            Ok(())
        })
        .await?;
        dash.stop(Duration::from_secs(5)).await;
        let t0 = Instant::now();
        let report = Proc::spawn(
            "report",
            bin,
            &["report".into(), "big-run".into()],
            &[("DATABASE_URL", url.as_str())],
            log_dir.join("monitor-report.log"),
            true,
        )?;
        let (status, text, report_kib) = report.wait_output(Duration::from_secs(300)).await?;
        let report_ms = t0.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            status.success() && text.contains("Unchanged: "),
            "report: {status}"
        );
        Ok(MonitorTimes {
            shards,
            groups,
            status_ms,
            run_api_ms,
            shards_api_ms,
            report_ms,
            report_mib: report_kib as f64 / 1024.0,
        })
    }
    .await;
    server.drop_db(&name).await.ok();
    result
}
