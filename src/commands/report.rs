//! `backfill report RUN`: a run's report from the ledger in any of its
//! formats, or (`--diff`) how its plan differs from another run's.

use backfill_job::formats::{self, Format};
use backfill_store::Store;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::connect::connect_existing_store;
use crate::exit::{usage, Exit};
use crate::render::write_report;
use crate::settings::Settings;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The run id.
    pub run: String,
    /// text, md, csv or json.
    #[arg(long, default_value = "text")]
    pub format: String,
    /// Write the report to this file instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Instead of the report: the groups whose plan differs between OTHER_RUN (e.g. the
    /// reviewed dry run) and RUN. Exit 0 when the plans agree, 1 when they differ.
    #[arg(long, value_name = "OTHER_RUN", conflicts_with_all = ["format", "output"])]
    pub diff: Option<String>,
}

pub async fn run(a: Args, settings: &Settings) -> anyhow::Result<Exit> {
    let store = connect_existing_store(settings, 2).await?;
    match &a.diff {
        Some(other) => diff(&store, other, &a.run).await,
        None => report(&store, a).await,
    }
}

async fn load(store: &Store, id: &str) -> anyhow::Result<backfill_store::RunRecord> {
    store
        .load_run(id)
        .await?
        .ok_or_else(|| usage(format!("run {id} is not in the ledger")))
}

async fn diff(store: &Store, other: &str, run: &str) -> anyhow::Result<Exit> {
    let (first, second) = (load(store, other).await?, load(store, run).await?);
    if first.spec.name != second.spec.name {
        return Err(usage(format!(
            "runs {other} and {run} are of different jobs (`{}` and `{}`)",
            first.spec.name, second.spec.name
        )));
    }
    let lines = formats::plan_diff(
        &first.plan,
        &second.plan,
        second.spec.report.target_param.as_deref(),
        second.spec.group_noun(),
    );
    println!(
        "Plan of run {run} ({}, scope {}) against run {other} ({}, scope {}):",
        second.mode, second.scope, first.mode, first.scope
    );
    if lines.is_empty() {
        println!("  the same: same groups, same targets, same values");
        return Ok(Exit::Clean);
    }
    for l in &lines {
        println!("  {l}");
    }
    println!("{} differences", lines.len());
    Ok(Exit::Failed)
}

async fn report(store: &Store, a: Args) -> anyhow::Result<Exit> {
    let run = &a.run;
    let format: Format = a.format.parse().map_err(usage)?;
    // The run's totals first: a run whose groups are counted in records of
    // their own is written a group at a time, as the database gives them.
    let totals = store
        .load_run_totals(run)
        .await?
        .ok_or_else(|| usage(format!("run {run} is not in the ledger")))?;
    if !totals.state.is_finished() {
        eprintln!(
            "run {run} is still running ({}/{} shards reduced); the report shows what is folded so far",
            totals.shards_reduced, totals.shards_total
        );
    }
    // Write to a file beside the target, then rename: a reader never sees
    // half a report.
    let tmp = a.output.as_ref().map(|p| p.with_extension("partial"));
    let mut out: Box<dyn Write> = match &tmp {
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
        Some(tmp) => {
            Box::new(BufWriter::new(std::fs::File::create(tmp).map_err(|e| {
                anyhow::anyhow!("cannot write {}: {e}", tmp.display())
            })?))
        }
    };
    let written = write_report(store, &totals, format, &mut out)
        .await
        .and_then(|()| out.flush().map_err(anyhow::Error::from));
    drop(out);
    match (&a.output, &tmp) {
        (Some(path), Some(tmp)) => {
            if let Err(e) = written {
                let _ = std::fs::remove_file(tmp);
                return Err(e.context(format!("cannot write {}", path.display())));
            }
            std::fs::rename(tmp, path)
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            eprintln!("report of run {run} written to {}", path.display());
        }
        _ => written?,
    }
    Ok(Exit::of_run(&totals))
}
