//! Live progress of a run on stderr while a command waits for it.
//!
//! On a terminal, a bar (indicatif): shards done/total, rows processed and
//! changed, rows per second, the ETA, conflicts and errors, and whether the
//! run is paused, throttled or held by the health check. The figures are
//! the ledger's, read with `Store::run_status` — the same numbers and ETA
//! as `backfill status` — so the bar tells the truth for runs worked on by
//! other processes too (`coordinator --wait`).
//!
//! Anywhere else (a pipe or file, `--quiet`, `NO_COLOR`, `TERM=dumb`, `CI`)
//! a plain line per 10 % of the shards or per 30 s, whichever comes first:
//! a log file or CI output gets a readable trail, not a stream of control
//! characters. Stdout is never written here: the report and the `Summary:`
//! line stay the only things on it.

use backfill_store::status::RunStatus;
use backfill_store::Store;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the ledger is read: often enough for the figures to move,
/// rarely enough to cost the database nothing worth noticing.
const POLL: Duration = Duration::from_millis(300);
/// A plain line at least this often, even when fewer than 10 % went by.
const LINE_EVERY: Duration = Duration::from_secs(30);

/// `--quiet`: no bar, plain lines only.
static QUIET: AtomicBool = AtomicBool::new(false);

/// The bar being drawn, if any: the log writer and the Ctrl-C message print
/// above it through [`print_above`], so a log line never tears it.
static BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// The run being followed, with the command that resumes it, for the
/// message of the first Ctrl-C.
static FOLLOWED: Mutex<Option<(String, String)>> = Mutex::new(None);

pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

/// Whether a bar may be drawn: stderr is a terminal and nothing asked for
/// plain output.
fn bar_wanted() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    std::io::stderr().is_terminal()
        && !QUIET.load(Ordering::Relaxed)
        && !set("NO_COLOR")
        && !set("CI")
        && std::env::var("TERM").map_or(true, |t| t != "dumb")
}

/// Writes `bytes` to stderr; while a bar is drawn, above it (the bar is
/// hidden for the write and drawn again after).
pub fn print_above(bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let write = || std::io::stderr().write_all(bytes);
    // A poisoned lock only means a writer panicked: the bar is still there.
    let bar = match BAR.lock() {
        Ok(b) => b.clone(),
        Err(p) => p.into_inner().clone(),
    };
    match bar {
        Some(pb) if !pb.is_finished() => pb.suspend(write),
        _ => write(),
    }
}

/// Follows a run until [`Follower::finish`].
pub struct Follower {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Starts following `run_id`; `resume` is the command that carries the run
/// on if it is stopped (named by the Ctrl-C message).
pub fn follow(store: &Store, run_id: &str, resume: String) -> Follower {
    if let Ok(mut f) = FOLLOWED.lock() {
        *f = Some((run_id.to_string(), resume));
    }
    let stop = CancellationToken::new();
    let task = tokio::spawn(draw(store.clone(), run_id.to_string(), stop.clone()));
    Follower { stop, task }
}

impl Follower {
    /// Stops following and clears the bar, before the report is printed.
    pub async fn finish(mut self) {
        self.stop.cancel();
        // The report must never wait on the bar: a ledger read that hangs
        // is abandoned, and the bar cleared here instead.
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            let bar = BAR.lock().ok().and_then(|mut b| b.take());
            if let Some(pb) = bar {
                pb.finish_and_clear();
            }
        }
        if let Ok(mut f) = FOLLOWED.lock() {
            *f = None;
        }
    }
}

async fn draw(store: Store, run_id: String, stop: CancellationToken) {
    let mut out = Out::new("shards");
    loop {
        // A read that fails (the database restarting) skips one redraw:
        // the wait itself reports what matters.
        let read = tokio::select! {
            _ = stop.cancelled() => break,
            r = tokio::time::timeout(Duration::from_secs(5), store.run_status(&run_id)) => r,
        };
        if let Ok(Ok(Some(s))) = read {
            out.show(&s);
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    out.clear();
}

/// Follows a count that grows towards `total` in this process (`seed`:
/// the revisions or collections stored so far, read with `read`), with the
/// same bar or plain lines as a run: `what` heads each plain line, `unit`
/// names what is counted.
pub fn follow_count(what: String, unit: &'static str, total: u64, read: fn() -> u64) -> Follower {
    let stop = CancellationToken::new();
    let task = tokio::spawn(draw_count(what, unit, total, read, stop.clone()));
    Follower { stop, task }
}

async fn draw_count(
    what: String,
    unit: &'static str,
    total: u64,
    read: fn() -> u64,
    stop: CancellationToken,
) {
    let mut out = Out::new(unit);
    let start = read();
    let started = Instant::now();
    loop {
        let done = read().saturating_sub(start);
        // The total may be an estimate: never show more done than planned.
        let total = total.max(done);
        let secs = started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let mut figures = format!("{rate:.0} {unit}/s");
        if rate > 0.0 && done < total {
            figures.push_str(&format!(" ETA {}", duration((total - done) as f64 / rate)));
        }
        out.update(&what, unit, done, total, figures);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    out.clear();
}

enum Out {
    Bar(ProgressBar),
    Lines {
        /// Tenths of the total last reported.
        last_decile: u64,
        last_line: Instant,
    },
}

impl Out {
    /// A bar on a terminal, plain lines anywhere else; `unit` names what
    /// the bar counts.
    fn new(unit: &str) -> Out {
        if !bar_wanted() {
            return Out::Lines {
                last_decile: 0,
                last_line: Instant::now(),
            };
        }
        let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(10));
        // The template's pieces never fail to parse; a fallback keeps a bar anyway.
        let style = ProgressStyle::with_template(&format!(
            "{{bar:12.cyan/blue}} {{pos}}/{{len}} {unit} {{wide_msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("█▉▊▋▌▍▎▏ ");
        pb.set_style(style);
        if let Ok(mut b) = BAR.lock() {
            *b = Some(pb.clone());
        }
        Out::Bar(pb)
    }

    fn show(&mut self, s: &RunStatus) {
        let done = s.shards.done + s.shards.dead;
        self.update(
            &format!("run {}", s.run_id),
            "shards",
            done,
            s.shards.total,
            figures(s),
        );
    }

    fn update(&mut self, what: &str, unit: &str, done: u64, total: u64, figures: String) {
        match self {
            Out::Bar(pb) => {
                pb.set_length(total);
                pb.set_position(done);
                pb.set_message(figures);
            }
            Out::Lines {
                last_decile,
                last_line,
            } => {
                let decile = (done * 10).checked_div(total).unwrap_or(0);
                if decile > *last_decile || last_line.elapsed() >= LINE_EVERY {
                    *last_decile = decile;
                    *last_line = Instant::now();
                    let pct = (done * 100).checked_div(total).unwrap_or(0);
                    eprintln!("{what}: {done}/{total} {unit} ({pct}%), {figures}");
                }
            }
        }
    }

    /// Takes the bar off the screen, before what follows is printed.
    fn clear(&self) {
        if let Out::Bar(pb) = self {
            pb.finish_and_clear();
            if let Ok(mut b) = BAR.lock() {
                *b = None;
            }
        }
    }
}

/// Rows, rate, ETA, conflicts and errors, and what holds the run back.
fn figures(s: &RunStatus) -> String {
    let r = &s.rows;
    let mut t = format!(
        "{} rows {} changed {:.0} rows/s",
        r.processed, r.changed, s.rows_per_sec
    );
    if let Some(eta) = s.eta_seconds {
        t.push_str(&format!(" ETA {}", duration(eta)));
    }
    if r.conflicts > 0 {
        t.push_str(&format!(", {} conflicts", r.conflicts));
    }
    if r.errors > 0 {
        t.push_str(&format!(", {} errors", r.errors));
    }
    if s.planning {
        t.push_str(" · still planning");
    }
    if s.control == "pause" {
        t.push_str(" · paused");
    } else if s.control == "cancel" {
        t.push_str(" · cancelling");
    } else if let Some(waiting) = s.window.as_ref().and_then(|w| w.waiting.as_deref()) {
        t.push_str(&format!(" · {waiting}"));
    }
    if let Some(h) = s.health.as_ref().filter(|h| !h.ok) {
        t.push_str(&format!(
            " · held: {}",
            h.reason.as_deref().unwrap_or("health check")
        ));
    }
    if let Some(limit) = s.throttle.rows_per_sec {
        t.push_str(&format!(" · throttled {limit:.0}/s"));
    }
    if let Some(limit) = s.throttle.bytes_per_sec {
        t.push_str(&format!(" · throttled {:.1} MB/s", limit / 1e6));
    }
    if let Some(limit) = s.throttle.max_wal_bytes_per_sec {
        t.push_str(&format!(" · WAL capped {:.1} MB/s", limit / 1e6));
    }
    t
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// SIGINT or SIGTERM seen so far by [`shutdown_on_signals`].
static SIGNALS: AtomicU8 = AtomicU8::new(0);

/// A token cancelled by the first SIGINT or SIGTERM: workers finish the
/// shards in hand and the command stops. While a run is followed, that
/// first signal says so and names the command that resumes the run; a
/// second one stops the process at once (the unfinished shards' leases run
/// out and another worker takes them, as after a crash).
///
/// One listener for the process, however many times this is called: every
/// caller gets the same token, and each Ctrl-C is counted once.
pub fn shutdown_on_signals() -> CancellationToken {
    static TOKEN: std::sync::OnceLock<CancellationToken> = std::sync::OnceLock::new();
    TOKEN
        .get_or_init(|| {
            let token = CancellationToken::new();
            tokio::spawn(listen(token.clone()));
            token
        })
        .clone()
}

async fn listen(token: CancellationToken) {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    loop {
        #[cfg(unix)]
        let got = match term.as_mut() {
            Some(t) => tokio::select! {
                r = tokio::signal::ctrl_c() => r.is_ok(),
                _ = t.recv() => true,
            },
            None => tokio::signal::ctrl_c().await.is_ok(),
        };
        #[cfg(not(unix))]
        let got = tokio::signal::ctrl_c().await.is_ok();
        if !got {
            return;
        }
        let n = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= 2 {
            if let Ok(b) = BAR.lock() {
                if let Some(pb) = b.as_ref() {
                    pb.abandon();
                }
            }
            eprintln!("stopped at once");
            std::process::exit(i32::from(crate::exit::Exit::Interrupted.code()));
        }
        let followed = FOLLOWED.lock().ok().and_then(|f| f.clone());
        match followed {
            Some((run, resume)) => {
                let msg = format!(
                    "Stopping after the shards in hand of run {run}. Press Ctrl-C again to stop at once; the run can be resumed with `{resume}`\n"
                );
                let _ = print_above(msg.as_bytes());
            }
            None => tracing::info!("shutdown requested: finishing the shards in hand"),
        }
        token.cancel();
    }
}
