//! `backfill report RUN`: a run's report from the ledger in any of its
//! formats, or (`--diff`) how its plan differs from another run's.

use backfill_job::formats::{self, Format};
use backfill_job::report::{summary_line_seen, GroupsSeen, TextReport};
use backfill_store::Store;
use futures::TryStreamExt;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use crate::connect::connect_existing_store;
use crate::exit::{usage, Exit};
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

/// Prints the text report of run `totals` (read with its totals only) to
/// standard output, streamed when its groups have records of their own.
pub async fn print_text(store: &Store, totals: &backfill_store::RunRecord) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    write_report(store, totals, Format::Text, &mut out).await?;
    out.flush()?;
    Ok(())
}

/// Writes run `totals`'s report (the run read with its totals only):
/// streamed when its groups have records of their own, else read whole.
async fn write_report(
    store: &Store,
    totals: &backfill_store::RunRecord,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if totals.spec.groups.is_some() && Store::groups_stream(totals) {
        write_streamed(store, totals, format, out).await
    } else {
        let rec = load(store, &totals.run_id).await?;
        write_whole(&rec, format, out)
    }
}

/// The report made whole from a run read whole: a job without groups, or
/// a run begun by an earlier release (its groups' counts are in its record).
fn write_whole(
    rec: &backfill_store::RunRecord,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let view = rec.view();
    let text = match format {
        Format::Text => backfill_job::report::render_report(&view),
        Format::Markdown => formats::render_markdown(&formats::report_doc(&view)),
        Format::Csv => formats::render_csv(&formats::report_doc(&view)),
        Format::Json => {
            let mut t = serde_json::to_string_pretty(&formats::report_doc(&view))?;
            t.push('\n');
            t
        }
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// The report written as it is read: the head from the run's totals, then
/// each group with its counts as the database streams them, in the plan's
/// order, then the tail. The head is flushed at once, so whoever reads
/// the report sees the outcome before the groups. It holds one group at a time (and, for Markdown,
/// the groups with sample changes), whatever the number of groups.
async fn write_streamed(
    store: &Store,
    rec: &backfill_store::RunRecord,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let view = rec.view();
    let count = store.plan_group_count(&rec.run_id).await?.unwrap_or(0) as usize;
    let mut groups = std::pin::pin!(store.report_groups(&rec.run_id));
    let mut seen = GroupsSeen::default();
    match format {
        Format::Text => {
            let mut r = TextReport::new(&view, count);
            out.write_all(r.head().as_bytes())?;
            out.flush()?;
            while let Some((pg, g)) = groups.try_next().await? {
                out.write_all(r.group(&pg, g.as_ref()).as_bytes())?;
            }
            out.write_all(r.tail().as_bytes())?;
        }
        Format::Csv => {
            out.write_all(formats::csv_header().as_bytes())?;
            while let Some((pg, g)) = groups.try_next().await? {
                let entry = formats::group_entry(&rec.spec, &pg, g.as_ref());
                out.write_all(formats::csv_row(&entry).as_bytes())?;
            }
        }
        Format::Markdown => {
            let mut doc = formats::report_doc(&view);
            let mut r = formats::MarkdownReport::new(count);
            out.write_all(r.head(&doc).as_bytes())?;
            out.flush()?;
            while let Some((pg, g)) = groups.try_next().await? {
                seen.see(&pg.status);
                let entry = formats::group_entry(&rec.spec, &pg, g.as_ref());
                out.write_all(r.group(&entry).as_bytes())?;
            }
            doc.summary = summary_line_seen(&view, Some(seen));
            out.write_all(r.tail(&doc).as_bytes())?;
        }
        Format::Json => {
            let mut doc = formats::report_doc(&view);
            let (head, _) = formats::json_parts(&doc, count > 0)?;
            out.write_all(head.as_bytes())?;
            out.flush()?;
            let mut first = true;
            while let Some((pg, g)) = groups.try_next().await? {
                seen.see(&pg.status);
                if !first {
                    out.write_all(formats::JSON_GROUP_SEPARATOR.as_bytes())?;
                }
                first = false;
                let entry = formats::group_entry(&rec.spec, &pg, g.as_ref());
                out.write_all(formats::json_group(&entry)?.as_bytes())?;
            }
            doc.summary = summary_line_seen(&view, Some(seen));
            let (_, tail) = formats::json_parts(&doc, count > 0)?;
            out.write_all(tail.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}
