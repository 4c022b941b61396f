//! `backfill status`: the runs in the ledger and their progress, as text for
//! people (redrawn in place with `--watch`) or as the stable JSON document
//! (`--json`) that the dashboard's API serves too.

use backfill_store::status::RunStatus;
use backfill_store::Store;
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::exit::Exit;

/// What `status` shows.
pub struct StatusArgs {
    pub run: Option<String>,
    pub watch: bool,
    pub json: bool,
    pub interval: Duration,
}

/// A progress bar of `width` cells.
fn bar(done: u64, total: u64, width: usize) -> String {
    let filled = if total == 0 {
        width
    } else {
        ((done as f64 / total as f64) * width as f64).round() as usize
    }
    .min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

/// Seconds as `1h 2m`, `3m 4s` or `5s`.
pub fn duration_text(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "off".into())
}

/// One run, as text.
pub fn render_run(r: &RunStatus, out: &mut String) {
    let s = &r.shards;
    let _ = writeln!(
        out,
        "run {} job={} mode={} scope={} state={} control={} priority={}",
        r.run_id, r.job, r.mode, r.scope, r.state, r.control, r.priority
    );
    if let Some(of) = &r.revert_of {
        let _ = writeln!(out, "  revert of run {of}");
    }
    if !r.params.is_empty() {
        let pairs = backfill_job::params::describe_values(&r.params);
        let _ = writeln!(out, "  parameters {}", pairs);
    }
    if let Some(f) = r.sample {
        let _ = writeln!(out, "  sampled dry run: {:.3}% of the rows", f * 100.0);
    }
    let _ = writeln!(
        out,
        "  shards   {} {}/{} done, {} running, {} pending, {} failed, {} dead-lettered, {} reduced",
        bar(s.done + s.dead, s.total, 30),
        s.done,
        s.total,
        s.running,
        s.pending,
        s.failed,
        s.dead,
        s.reduced
    );
    let w = &r.rows;
    let _ = writeln!(
        out,
        "  rows     planned={} processed={} changed={} unchanged={} skipped={} conflicts={} errors={}",
        w.planned, w.processed, w.changed, w.unchanged, w.skipped, w.conflicts, w.errors
    );
    let eta = r
        .eta_seconds
        .map(duration_text)
        .unwrap_or_else(|| "—".into());
    let _ = writeln!(
        out,
        "  speed    {:.0} rows/s, ETA {eta}, elapsed {}, started {}, finished {}",
        r.rows_per_sec,
        duration_text(r.elapsed_seconds),
        r.created_at,
        r.finished_at.as_deref().unwrap_or("—")
    );
    let health = match &r.health {
        None => "—".to_string(),
        Some(h) if h.ok => "ok".to_string(),
        Some(h) => format!(
            "FAILING ({}): work is paused until it passes",
            h.reason.as_deref().unwrap_or("unhealthy")
        ),
    };
    let _ = writeln!(
        out,
        "  steering rows/s={} in-flight={} health={health}",
        opt(r.throttle.rows_per_sec),
        opt(r.throttle.max_in_flight)
    );
    if r.throttle.bytes_per_sec.is_some() || r.throttle.max_wal_bytes_per_sec.is_some() {
        let _ = writeln!(
            out,
            "  steering bytes/s={} wal-bytes/s={}",
            opt(r.throttle.bytes_per_sec),
            opt(r.throttle.max_wal_bytes_per_sec)
        );
    }
    for (target, n) in &r.pushed_down {
        let _ = writeln!(
            out,
            "  path     {target}: rules applied by the database to {n} rows so far"
        );
    }
    if r.planning && !r.orphaned {
        let _ = writeln!(
            out,
            "  planning its coordinator is still recording shards ({} so far), each published as it is recorded",
            s.total
        );
    }
    if r.orphaned {
        let resume = r
            .resume
            .as_deref()
            .unwrap_or("backfill coordinator --resume RUN");
        let (what, next) = if r.planning {
            (
                format!(
                    "stopped while planning it ({} shards recorded, {} unpublished)",
                    s.total, r.unpublished
                ),
                ", which plans the rest",
            )
        } else {
            (
                format!(
                    "stopped before publishing {} of {} shards",
                    r.unpublished, s.total
                ),
                "",
            )
        };
        let _ = writeln!(
            out,
            "  ORPHANED its coordinator {what}; nothing more happens until it is resumed{next}: {resume} (or run the same command again)"
        );
    }
    if let Some(other) = &r.waiting_for {
        let _ = writeln!(
            out,
            "  waiting  for run {other}, which has a higher priority"
        );
    }
    if let Some(w) = &r.window {
        let now = match (&w.waiting, w.closes_in_seconds) {
            (Some(waiting), _) => waiting.clone(),
            (None, Some(c)) => format!("in a window, closes in {}", duration_text(c)),
            (None, None) => "—".into(),
        };
        let _ = writeln!(out, "  windows  {}: {now}", w.schedule);
    }
    let _ = writeln!(
        out,
        "  shard size {} rows (min {}, max {}){}",
        r.shard_size.mean.round(),
        r.shard_size.min,
        r.shard_size.max,
        r.shard_size
            .chosen_by
            .as_deref()
            .map(|c| format!("; {c}"))
            .unwrap_or_default()
    );
    for wk in &r.workers {
        let _ = writeln!(
            out,
            "  worker   {} — {} shards, last seen {}{}",
            wk.name,
            wk.shards_done,
            wk.age_seconds
                .map(|a| format!("{} ago", duration_text(a)))
                .unwrap_or_else(|| "never".into()),
            // A silent worker of a running run may be dead; of a finished
            // one, it simply left.
            if wk.stale && r.state == "running" {
                " (STALE: no sign of life; killed, hung or cut off?)"
            } else {
                ""
            }
        );
    }
    for d in &r.dead_shards {
        let _ = writeln!(
            out,
            "dead-lettered shard {} ({}): {}",
            d.shard, d.target, d.error
        );
    }
}

/// Prints status once; `true` when every run shown has finished.
async fn show_once(store: &Store, args: &StatusArgs) -> anyhow::Result<(String, bool)> {
    let mut out = String::new();
    match &args.run {
        Some(id) => {
            let Some(r) = store.run_status(id).await? else {
                return Err(crate::exit::usage(format!("run {id} is not in the ledger")));
            };
            let finished = r.state != "running";
            if args.json {
                out = serde_json::to_string_pretty(&r)?;
                out.push('\n');
                return Ok((out, finished));
            }
            render_run(&r, &mut out);
            let quarantined = store.quarantined(id).await?;
            if !quarantined.is_empty() {
                let _ = writeln!(
                    out,
                    "{} rows quarantined; fix their cause, then `backfill retry {id}`",
                    quarantined.len()
                );
                for (target, key, error) in quarantined.iter().take(20) {
                    let _ = writeln!(out, "  {target}/{key}: {error}");
                }
            }
            if let Some(s) = &r.summary {
                let _ = writeln!(out, "{s}");
            }
            Ok((out, finished))
        }
        None => {
            let runs = store.run_statuses(20).await?;
            let finished = runs.iter().all(|r| r.state != "running");
            if args.json {
                out = serde_json::to_string_pretty(&serde_json::json!({ "runs": runs }))?;
                out.push('\n');
                return Ok((out, finished));
            }
            if runs.is_empty() {
                out.push_str("no runs in the ledger\n");
            }
            for r in &runs {
                let _ = writeln!(
                    out,
                    "{}  job={} mode={} state={} control={} shards={}/{} {:.0} rows/s",
                    r.run_id,
                    r.job,
                    r.mode,
                    r.state,
                    r.control,
                    r.shards.done + r.shards.dead,
                    r.shards.total,
                    r.rows_per_sec
                );
            }
            Ok((out, finished))
        }
    }
}

/// `backfill status`: once, or redrawn every `interval` until the runs
/// shown have finished (or Ctrl-C).
pub async fn status(
    store: &Store,
    args: StatusArgs,
    stop: CancellationToken,
) -> anyhow::Result<Exit> {
    let term = std::io::IsTerminal::is_terminal(&std::io::stdout());
    loop {
        let (text, finished) = show_once(store, &args).await?;
        let mut stdout = std::io::stdout().lock();
        if args.watch && term {
            // Redraw the whole screen, each line cut to the terminal's
            // width and the frame to its height: a line that wrapped, or a
            // frame taller than the screen, would leave copies behind.
            let (rows, cols) = console::Term::stdout().size();
            write!(
                stdout,
                "\x1b[H\x1b[2J{}",
                fit(&text, usize::from(cols), usize::from(rows))
            )?;
        } else {
            stdout.write_all(text.as_bytes())?;
        }
        stdout.flush()?;
        drop(stdout);
        if !args.watch || finished {
            return Ok(Exit::Clean);
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(Exit::Clean),
            _ = tokio::time::sleep(args.interval) => {}
        }
        if !term && !args.json {
            println!("---");
        }
    }
}

/// `text` cut to a screen of `rows` × `cols`: each line to at most `cols`
/// characters (ending in `…` when cut), and at most `rows - 1` lines (the
/// last row stays free for the cursor).
fn fit(text: &str, cols: usize, rows: usize) -> String {
    let cols = cols.max(1);
    let mut out = String::new();
    for line in text.lines().take(rows.saturating_sub(1).max(1)) {
        if line.chars().count() > cols {
            out.extend(line.chars().take(cols - 1));
            out.push('…');
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// `backfill probe URL`: GET a plain-HTTP URL; 0 on 2xx, 1 otherwise.
pub async fn probe(url: &str, timeout: Duration) -> anyhow::Result<Exit> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| crate::exit::usage(format!("probe takes an http:// URL, got `{url}`")))?;
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(host).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).to_string())
    };
    let text = match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            eprintln!("probe {url}: {e}");
            return Ok(Exit::Failed);
        }
        Err(_) => {
            eprintln!("probe {url}: no answer within {} s", timeout.as_secs());
            return Ok(Exit::Failed);
        }
    };
    let code: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|b| b.1)
        .unwrap_or("")
        .trim();
    if (200..300).contains(&code) {
        Ok(Exit::Clean)
    } else {
        eprintln!("probe {url}: HTTP {code} {body}");
        Ok(Exit::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_fit_the_screen() {
        let text = "a long header line that is wider than the screen\nshort\nthird\nfourth\n";
        let f = fit(text, 10, 4);
        assert_eq!(f, "a long he…\nshort\nthird\n");
        assert!(f.lines().all(|l| l.chars().count() <= 10));
        assert_eq!(fit("ab\n", 2, 24), "ab\n");
        assert_eq!(fit("abc\n", 1, 1), "…\n");
    }

    #[test]
    fn bars_and_durations() {
        assert_eq!(bar(0, 10, 10), "[..........]");
        assert_eq!(bar(5, 10, 10), "[#####.....]");
        assert_eq!(bar(10, 10, 10), "[##########]");
        assert_eq!(bar(0, 0, 4), "[####]");
        assert_eq!(duration_text(4.4), "4s");
        assert_eq!(duration_text(80.0), "1m 20s");
        assert_eq!(duration_text(7500.0), "2h 5m");
    }
}
