//! The StreamField contender: backfill against Wagtail's own
//! `MigrateStreamData`, each on a fresh clone of the template, renaming the
//! `title_2` child of every `signatory` block to `affiliation` in
//! `cms_certificatepage.signatories` (jsonb) and in every revision of the
//! certificate pages (`wagtailcore_revision.content`, where the field is a
//! JSON string written by Python's `json.dumps`).
//!
//! - **Wagtail**: `tools/wagtail-bench/run.sh` (a minimal Django project
//!   with Wagtail from PyPI in a virtualenv) applies
//!   `MigrateStreamData(…, RenameStructChildrenOperation("title_2",
//!   "affiliation"), "signatory", revisions_from=None)` in one transaction,
//!   as a migration would. It rewrites every page of the model and every
//!   revision of its content type. Timed from spawning the script to its
//!   exit (Python's and Django's start included; the script also reports
//!   the migration alone).
//! - **backfill**: `backfill coordinator --job jobs/wagtail-streamfield.toml
//!   --all --commit --wait --param old_name=title_2 --param
//!   new_name=affiliation` with a reducer and `--streamfield-mappers` mapper
//!   processes, timed as the commit contenders are. It writes only the rows
//!   that change.
//!
//! Rows written are read from `pg_stat_user_tables.n_tup_upd` of the two
//! tables once every process has exited (a fresh clone starts at 0). The two
//! results must agree: the page column equal as JSON values, the revisions
//! equal once their `signatories` string is decoded (and the rest of the
//! document equal as JSON values); both must differ from the template.
//! Whether the revision texts are also byte for byte the same is reported.
//!
//! Without Python, a virtualenv or PyPI the contender is skipped with the
//! reason (or the bench fails, with `--require-wagtail`).

use anyhow::{bail, Context};
use sqlx::{Connection, Row};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::procs::{BackfillRun, Proc};
use crate::{db, messaging, Options};

/// The job backfill runs, built in so the bench runs from anywhere.
pub const STREAMFIELD_JOB: &str = include_str!("../../../jobs/wagtail-streamfield.toml");

/// The operation both sides apply.
pub const OPERATION: &str = "rename_struct_children";
pub const BLOCK_PATH: &str = "signatory";
pub const OLD_NAME: &str = "title_2";
pub const NEW_NAME: &str = "affiliation";

/// `tools/wagtail-bench/run.sh` of the source tree this bench was built from.
pub fn default_tool() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/wagtail-bench/run.sh")
}

/// Digests of what the migration writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// `cms_certificatepage.signatories` as JSON values (jsonb's text).
    pub pages: String,
    /// Revisions with their `signatories` string decoded (jsonb's text).
    pub revisions: String,
    /// Revisions as stored (`content::text`), the string as written.
    pub revision_text: String,
}

/// One side of the comparison.
#[derive(Debug, Clone)]
pub struct Side {
    pub label: String,
    pub wall: Duration,
    pub pages_written: u64,
    pub revisions_written: u64,
    pub digests: Digests,
    /// (role, peak RSS KiB).
    pub rss: Vec<(String, u64)>,
    pub notes: Vec<String>,
}

/// The comparison, or why it did not run.
pub enum Comparison {
    Skipped(String),
    Ran(Box<Ran>),
}

pub struct Ran {
    pub pages: u64,
    pub revisions: u64,
    pub template: Digests,
    pub wagtail: Side,
    pub backfill: Side,
    pub mappers: u16,
}

/// The digests of a database's pages and revisions: `md5` over per-row
/// `md5`s in key order (a per-row digest first, so a million documents stay
/// far from the 1 GB limit of one text value).
pub async fn digests(url: &str) -> anyhow::Result<Digests> {
    let mut conn = db::connect(url).await?;
    let row = sqlx::query(
        "SELECT
           (SELECT coalesce(md5(string_agg(md5(page_ptr_id::text || ':' || signatories::text), '' ORDER BY page_ptr_id)), '')
              FROM cms_certificatepage),
           (SELECT coalesce(md5(string_agg(md5(id::text || ':' || (content - 'signatories')::text || ':' ||
                      coalesce(CASE WHEN jsonb_typeof(content -> 'signatories') = 'string'
                                    THEN (content ->> 'signatories')::jsonb::text END, '-')),
                      '' ORDER BY id)), '')
              FROM wagtailcore_revision),
           (SELECT coalesce(md5(string_agg(md5(id::text || ':' || content::text), '' ORDER BY id)), '')
              FROM wagtailcore_revision)",
    )
    .fetch_one(&mut conn)
    .await
    .context("digests of the pages' signatories and of the revisions")?;
    conn.close().await.ok();
    Ok(Digests {
        pages: row.get(0),
        revisions: row.get(1),
        revision_text: row.get(2),
    })
}

/// (certificate pages, revisions of the certificate page content type).
async fn job_rows(url: &str) -> anyhow::Result<(u64, u64)> {
    let mut conn = db::connect(url).await?;
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM cms_certificatepage)::int8,
                (SELECT count(*) FROM wagtailcore_revision r
                   JOIN django_content_type ct ON ct.id = r.content_type_id
                  WHERE ct.app_label = 'cms' AND ct.model = 'certificatepage')::int8",
    )
    .fetch_one(&mut conn)
    .await
    .context("count the certificate pages and their revisions")?;
    conn.close().await.ok();
    Ok((
        row.get::<i64, _>(0).max(0) as u64,
        row.get::<i64, _>(1).max(0) as u64,
    ))
}

/// `n_tup_upd` of (cms_certificatepage, wagtailcore_revision), read until
/// two reads 300 ms apart agree (a backend reports its counts as it exits).
async fn rows_written(url: &str) -> anyhow::Result<(u64, u64)> {
    let mut last: Option<(u64, u64)> = None;
    for _ in 0..30 {
        let mut conn = db::connect(url).await?;
        let row = sqlx::query(
            "SELECT coalesce((SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'cms_certificatepage'), 0)::int8,
                    coalesce((SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'wagtailcore_revision'), 0)::int8",
        )
        .fetch_one(&mut conn)
        .await
        .context("read pg_stat_user_tables")?;
        conn.close().await.ok();
        let now = (
            row.get::<i64, _>(0).max(0) as u64,
            row.get::<i64, _>(1).max(0) as u64,
        );
        if last == Some(now) {
            return Ok(now);
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Ok(last.unwrap_or_default())
}

fn tool_command(opts: &Options, tool: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg(tool);
    if let Some(v) = &opts.wagtail_venv {
        cmd.env("VENV", v);
    }
    cmd
}

/// Makes the virtualenv (from PyPI when missing); `Err(reason)` when it
/// cannot.
async fn setup(opts: &Options, tool: &Path) -> Result<String, String> {
    if !tool.is_file() {
        return Err(format!(
            "{} does not exist (pass --wagtail-bench)",
            tool.display()
        ));
    }
    let mut cmd = tool_command(opts, tool);
    cmd.arg("--setup")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(900), cmd.output())
        .await
        .map_err(|_| "making the virtualenv took longer than 15 minutes".to_string())?
        .map_err(|e| format!("cannot run sh {}: {e}", tool.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        return Err(format!(
            "{} --setup exited with {}: {}",
            tool.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    Ok(stdout)
}

/// A `key=value` of the tool's report line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

async fn wagtail_side(
    opts: &Options,
    tool: &Path,
    url: &str,
    log_dir: &Path,
) -> anyhow::Result<Side> {
    let mut envs: Vec<(&str, &str)> = Vec::new();
    let venv = opts.wagtail_venv.as_ref().map(|v| v.display().to_string());
    if let Some(v) = &venv {
        envs.push(("VENV", v));
    }
    let args = vec![
        tool.display().to_string(),
        url.to_string(),
        "--operation".into(),
        OPERATION.into(),
        "--block-path".into(),
        BLOCK_PATH.into(),
        "--old-name".into(),
        OLD_NAME.into(),
        "--new-name".into(),
        NEW_NAME.into(),
    ];
    let log = log_dir.join("streamfield-wagtail.log");
    let t0 = Instant::now();
    // run.sh execs Python: the peak RSS is the interpreter's.
    let p = Proc::spawn("wagtail", Path::new("sh"), &args, &envs, log.clone(), true)?;
    let (status, stdout, peak) = p
        .wait_output(Duration::from_secs(opts.timeout_secs))
        .await?;
    let wall = t0.elapsed();
    if !status.success() {
        bail!(
            "Wagtail's MigrateStreamData exited with {status}; stdout: {stdout}; see {}",
            log.display()
        );
    }
    let line = stdout
        .lines()
        .find(|l| l.starts_with("wagtail-bench:"))
        .with_context(|| format!("the Wagtail side printed no report line: {stdout}"))?
        .to_string();
    let (pages_written, revisions_written) = rows_written(url).await?;
    let ms = |k: &str| {
        field(&line, k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1000.0
    };
    let mut notes = vec![format!(
        "Wagtail {}, Django {}, Python {}: migration {:.2} s in one transaction (commit {:.2} s), Python and Django start {:.2} s",
        field(&line, "wagtail").unwrap_or("?"),
        field(&line, "django").unwrap_or("?"),
        field(&line, "python").unwrap_or("?"),
        ms("wall_ms"),
        ms("commit_ms"),
        ms("setup_ms"),
    )];
    let own = (
        field(&line, "pages_written").and_then(|v| v.parse::<u64>().ok()),
        field(&line, "revisions_written").and_then(|v| v.parse::<u64>().ok()),
    );
    if own != (Some(pages_written), Some(revisions_written)) {
        notes.push(format!(
            "rows written as counted in its transaction (xmin): pages {}, revisions {}; pg_stat_user_tables says {pages_written}, {revisions_written}",
            own.0.map_or("?".into(), |n| n.to_string()),
            own.1.map_or("?".into(), |n| n.to_string()),
        ));
    }
    Ok(Side {
        label: "Wagtail MigrateStreamData".into(),
        wall,
        pages_written,
        revisions_written,
        digests: digests(url).await?,
        rss: vec![("python".into(), peak)],
        notes,
    })
}

#[allow(clippy::too_many_arguments)]
async fn backfill_side(
    opts: &Options,
    server: &db::Server,
    bin: &Path,
    url: &str,
    tag: &str,
    log_dir: &Path,
    mappers: u16,
) -> anyhow::Result<Side> {
    let job_path = log_dir.join("wagtail-streamfield.toml");
    std::fs::write(&job_path, STREAMFIELD_JOB)
        .with_context(|| format!("cannot write {}", job_path.display()))?;
    let params = vec![
        format!("operation={OPERATION}"),
        format!("block_path={BLOCK_PATH}"),
        format!("old_name={OLD_NAME}"),
        format!("new_name={NEW_NAME}"),
    ];
    let prefix = format!("bench-{tag}-sfbackfill");
    let run = BackfillRun {
        bin,
        job_path: &job_path,
        db_url: url,
        amqp_url: &opts.amqp_url,
        queue_prefix: &prefix,
        mappers,
        concurrency: opts.concurrency,
        commit: true,
        shard_size: opts.shard_size,
        log_dir,
        timeout: Duration::from_secs(opts.timeout_secs),
        extra_env: &[],
        params: &params,
    };
    let r = run.run(server).await;
    messaging::delete_queues(&opts.amqp_url, &prefix).await;
    let r = r?;
    let (pages_written, revisions_written) = rows_written(url).await?;
    Ok(Side {
        label: format!(
            "backfill commit, {mappers} mapper{}",
            if mappers == 1 { "" } else { "s" }
        ),
        wall: r.wall,
        pages_written,
        revisions_written,
        digests: digests(url).await?,
        rss: r.rss,
        notes: vec![r.summary],
    })
}

/// Runs both sides on clones of `template`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    opts: &Options,
    server: &db::Server,
    template: &str,
    tag: &str,
    bin: &Path,
    log_dir: &Path,
    cleanup: &mut db::Cleanup,
) -> anyhow::Result<Comparison> {
    let tool = opts.wagtail_bench.clone().unwrap_or_else(default_tool);
    match setup(opts, &tool).await {
        Ok(line) => println!("   {line}"),
        Err(reason) => {
            if opts.require_wagtail {
                bail!("the Wagtail side cannot run (--require-wagtail): {reason}");
            }
            return Ok(Comparison::Skipped(reason));
        }
    }
    let template_url = server.url_for(template)?;
    let (pages, revisions) = job_rows(&template_url).await?;
    let template_digests = digests(&template_url).await?;
    println!(
        "   {pages} certificate pages, {revisions} revisions of their content type; {OPERATION} {OLD_NAME} -> {NEW_NAME} at `{BLOCK_PATH}`"
    );

    let mut sides = Vec::new();
    for which in ["sfwagtail", "sfbackfill"] {
        let name = format!("bench_{tag}_{which}");
        cleanup.add(&name);
        server.clone_template(template, &name).await?;
        let url = server.url_for(&name)?;
        let side = if which == "sfwagtail" {
            wagtail_side(opts, &tool, &url, log_dir).await?
        } else {
            backfill_side(
                opts,
                server,
                bin,
                &url,
                tag,
                log_dir,
                opts.streamfield_mappers,
            )
            .await?
        };
        println!(
            "   {}: {:.2} s, {:.0} rows/s, wrote {} pages and {} revisions, peak RSS MiB {}",
            side.label,
            side.wall.as_secs_f64(),
            (pages + revisions) as f64 / side.wall.as_secs_f64().max(1e-9),
            side.pages_written,
            side.revisions_written,
            rss_text(&side.rss)
        );
        for n in &side.notes {
            println!("      {n}");
        }
        sides.push(side);
        if !opts.keep {
            server.drop_db(&name).await?;
            cleanup.forget(&name);
        }
    }
    let backfill = sides.pop().context("no backfill side")?;
    let wagtail = sides.pop().context("no Wagtail side")?;
    Ok(Comparison::Ran(Box::new(Ran {
        pages,
        revisions,
        template: template_digests,
        wagtail,
        backfill,
        mappers: opts.streamfield_mappers,
    })))
}

fn rss_text(rss: &[(String, u64)]) -> String {
    rss.iter()
        .map(|(r, k)| format!("{r} {:.0}", *k as f64 / 1024.0))
        .collect::<Vec<_>>()
        .join(" · ")
}

impl Ran {
    /// Both sides wrote the same data, and it is not the template's.
    pub fn verdict(&self) -> (bool, String) {
        let (w, b) = (&self.wagtail.digests, &self.backfill.digests);
        let mut problems = Vec::new();
        if w.pages != b.pages {
            problems.push("the pages' signatories differ".to_string());
        }
        if w.revisions != b.revisions {
            problems.push("the revisions differ once decoded".to_string());
        }
        if self.pages > 0 && w.pages == self.template.pages {
            problems.push("Wagtail left the pages as generated".to_string());
        }
        if self.revisions > 0 && w.revisions == self.template.revisions {
            problems.push("Wagtail left the revisions as generated".to_string());
        }
        if problems.is_empty() {
            (
                true,
                format!(
                    "streamfield: match (pages equal as JSON values, revisions equal with their signatories decoded; revision texts byte for byte {})",
                    if w.revision_text == b.revision_text {
                        "the same"
                    } else {
                        "different"
                    }
                ),
            )
        } else {
            (
                false,
                format!("streamfield: MISMATCH: {}", problems.join("; ")),
            )
        }
    }

    /// The table (Markdown) and the ratio.
    pub fn table(&self) -> String {
        let rows = self.pages + self.revisions;
        let rate = |s: &Side| rows as f64 / s.wall.as_secs_f64().max(1e-9);
        let mut t = format!(
            "StreamField migration: {OPERATION} {OLD_NAME} -> {NEW_NAME} at `{BLOCK_PATH}`, {} pages + {} revisions = {rows} rows\n\n",
            self.pages, self.revisions
        );
        t.push_str("| contender | wall (s) | rows/s | pages written | revisions written | peak RSS (MiB) |\n");
        t.push_str("|---|---:|---:|---:|---:|---|\n");
        for s in [&self.wagtail, &self.backfill] {
            t.push_str(&format!(
                "| {} | {:.2} | {:.0} | {} | {} | {} |\n",
                s.label,
                s.wall.as_secs_f64(),
                rate(s),
                s.pages_written,
                s.revisions_written,
                rss_text(&s.rss)
            ));
        }
        let ratio = self.backfill.wall.as_secs_f64() / self.wagtail.wall.as_secs_f64().max(1e-9);
        t.push_str(&format!(
            "\nbackfill/Wagtail wall time: {ratio:.2} (backfill with {} mapper{} takes {:.0}% of Wagtail's time; {:.1}x its rows/s)\n",
            self.mappers,
            if self.mappers == 1 { "" } else { "s" },
            ratio * 100.0,
            1.0 / ratio.max(1e-9),
        ));
        t
    }
}

#[cfg(test)]
mod tests {
    use super::field;

    #[test]
    fn the_tools_report_line_is_read_by_key() {
        let line = "wagtail-bench: wall_ms=12.5 migrate_ms=10.0 commit_ms=2.5 setup_ms=900.1 pages_written=18 revisions_written=5000 wagtail=8.0.1 django=5.2.19 python=3.11.7";
        assert_eq!(field(line, "wall_ms"), Some("12.5"));
        assert_eq!(field(line, "pages_written"), Some("18"));
        assert_eq!(field(line, "revisions_written"), Some("5000"));
        assert_eq!(field(line, "wagtail"), Some("8.0.1"));
        assert_eq!(field(line, "missing"), None);
    }
}
