//! Writes a run's report for the commands that print one (`report`,
//! `run`, `retry`, `revert`, `verify`, `coordinator --wait`, `demo`):
//! streamed from the ledger a group at a time when the run's groups are
//! counted in records of their own, so that printing the report of a run
//! of 50,000 groups holds one group at a time; read whole otherwise (a job
//! without groups, a run begun by an earlier release).

use backfill_job::formats::{self, Format};
use backfill_job::report::{summary_line_seen, GroupsSeen, TextReport};
use backfill_store::Store;
use futures::TryStreamExt;
use std::io::{BufWriter, Write};

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
pub async fn write_report(
    store: &Store,
    totals: &backfill_store::RunRecord,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if totals.spec.groups.is_some() && Store::groups_stream(totals) {
        write_streamed(store, totals, format, out).await
    } else {
        let rec = store
            .load_run(&totals.run_id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("run {} is not in the ledger", totals.run_id))?;
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
