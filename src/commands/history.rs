//! `backfill history`: the ledger's audit trail, as text or JSON.

use crate::connect::connect_existing_store;
use crate::exit::{usage, Exit};
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only runs of this job.
    #[arg(long, value_name = "NAME")]
    pub job: Option<String>,
    /// Most runs to show.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,
    /// Print JSON instead.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    if a.limit < 1 {
        return Err(usage("--limit must be at least 1"));
    }
    let store = connect_existing_store(settings, 2).await?;
    let runs = store.history(a.job.as_deref(), a.limit).await?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))?
        );
        return Ok(Exit::Clean);
    }
    if runs.is_empty() {
        println!("no runs in the ledger");
    }
    for r in runs {
        println!(
            "{}  {}  job={} mode={} state={} spec={}",
            r.created_at,
            r.run_id,
            r.job,
            r.mode,
            r.state,
            &r.spec_hash[..r.spec_hash.len().min(12)]
        );
        if !r.params.is_empty() {
            let pairs = backfill_job::params::describe_values(&r.params);
            println!("    parameters {pairs}");
        }
        for e in r.events {
            println!(
                "    {}  {} by {}{}",
                e.at,
                e.action,
                e.operator,
                e.detail.map(|d| format!(" ({d})")).unwrap_or_default()
            );
        }
    }
    Ok(Exit::Clean)
}
