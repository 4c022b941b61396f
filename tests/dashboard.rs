//! The web dashboard in a real headless Chromium while a run progresses:
//! the shard grid and the counts it shows must agree with the ledger read
//! just before and just after the page was rendered. A screenshot is kept
//! under `target/` (CI keeps it as an artifact).
//!
//! Needs Debian's `chromium` (`apt-get install chromium`; `.ci/run` installs
//! it), or BACKFILL_CHROMIUM pointing at a Chromium binary.

#![allow(clippy::unwrap_used)]

mod common;

use common::fleet::*;
use common::steer::*;
use common::*;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const JOB: &str = "collection-dict-migrate";

fn chromium() -> String {
    let bin = std::env::var("BACKFILL_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let ok = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "Chromium is needed for the dashboard test: install it with `apt-get install -y chromium` (`.ci/run` does), or set BACKFILL_CHROMIUM to its path"
    );
    bin
}

fn headless(bin: &str, args: &[&str], url: &str) -> std::process::Output {
    let mut c = Command::new(bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
    ])
    .args(args)
    .arg(url)
    .stdin(Stdio::null());
    output_within(c, Duration::from_secs(60))
}

/// What the page shows: the grid's cells (shard → state) and the counts.
struct Page {
    loaded_run: String,
    cells: BTreeMap<u32, String>,
    counts: BTreeMap<String, i64>,
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let key = format!("{name}=\"");
    let start = tag.find(&key)? + key.len();
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_string())
}

fn parse_page(html: &str) -> Page {
    let body = html.split("<body").nth(1).expect("a body");
    let body_tag = &body[..body.find('>').unwrap()];
    let mut cells = BTreeMap::new();
    for piece in html.split("<div").skip(1) {
        let tag = &piece[..piece.find('>').unwrap_or(piece.len())];
        if attr(tag, "class").as_deref() == Some("cell") {
            let no = attr(tag, "data-shard").unwrap().parse().unwrap();
            cells.insert(no, attr(tag, "data-state").unwrap());
        }
    }
    let mut counts = BTreeMap::new();
    for id in [
        "count-total",
        "count-pending",
        "count-running",
        "count-done",
        "count-failed",
        "count-dead",
        "rows-planned",
        "rows-processed",
    ] {
        let key = format!("id=\"{id}\">");
        let at = html
            .find(&key)
            .unwrap_or_else(|| panic!("no #{id} in the page"))
            + key.len();
        let text: String = html[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        counts.insert(id.to_string(), text.parse().unwrap_or(-1));
    }
    Page {
        loaded_run: attr(body_tag, "data-loaded-run").unwrap_or_default(),
        cells,
        counts,
    }
}

/// The ledger's shard states, as the grid names them.
async fn ledger_cells(env: &TestEnv, run: &str) -> BTreeMap<u32, String> {
    let rows: Vec<(i32, String, i32)> = sqlx::query_as(
        "SELECT shard_no, state, failures FROM backfill_shard WHERE run_id = $1 ORDER BY shard_no",
    )
    .bind(run)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(n, s, f)| {
            let s = if s == "pending" && f > 0 {
                "failed".to_string()
            } else {
                s
            };
            (n as u32, s)
        })
        .collect()
}

async fn processed(env: &TestEnv, run: &str) -> i64 {
    env.scalar_i64(&format!(
        "SELECT (tally->'counts'->>'processed')::int8 FROM backfill_run WHERE run_id = '{run}'"
    ))
    .await
}

fn done_count(cells: &BTreeMap<u32, String>) -> i64 {
    cells.values().filter(|s| *s == "done").count() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_the_ledger_live_in_a_real_browser() {
    let bin = chromium();
    let env = TestEnv::new().await;
    env.seed_collections(1_500, 8).await;
    let mut fleet = Fleet::new(&env);
    fleet.start(2);
    let port = free_port();
    let dash = fleet.spawn(&["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(dash); // killed with the fleet
    let coord = spawn_coordinator_with(
        &env,
        &[
            "--job",
            &job(JOB),
            "--all",
            "--wait",
            "--shard-size",
            "50",
            "--rows-per-sec",
            "500",
        ],
    );
    let run = run_of(&env, JOB).await;
    wait_done(&env, &run, 3).await;
    let url = format!("http://127.0.0.1:{port}/?run={run}");
    let (code, _) = http_get(port, "/");
    assert_eq!(code, 200);

    // While the run progresses: the page agrees with the ledger around it.
    let mut seen_mid_run = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut shot = false;
    while seen_mid_run < 3 && Instant::now() < deadline {
        let before = ledger_cells(&env, &run).await;
        let processed_before = processed(&env, &run).await;
        let out = headless(&bin, &["--virtual-time-budget=1500", "--dump-dom"], &url);
        let after = ledger_cells(&env, &run).await;
        let processed_after = processed(&env, &run).await;
        let page = parse_page(&stdout(&out));
        assert_eq!(page.loaded_run, run, "the page rendered the run");
        assert_eq!(page.cells.len(), before.len(), "one cell per shard");
        assert_eq!(page.counts["count-total"], before.len() as i64);
        let shown_done = page.counts["count-done"];
        assert!(
            done_count(&before) <= shown_done && shown_done <= done_count(&after),
            "done shown {shown_done}, ledger {} before and {} after",
            done_count(&before),
            done_count(&after)
        );
        // The grid and the counts come from two requests a moment apart:
        // each lies between the ledger before and after.
        let grid_done = done_count(&page.cells);
        assert!(
            done_count(&before) <= grid_done && grid_done <= done_count(&after),
            "grid shows {grid_done} done, ledger {} before and {} after",
            done_count(&before),
            done_count(&after)
        );
        for (no, state) in &page.cells {
            if before[no] == "done" {
                assert_eq!(state, "done", "shard {no} was done before the page loaded");
            }
            if state == "done" {
                assert_eq!(
                    after[no], "done",
                    "shard {no} shown done is done in the ledger"
                );
            }
        }
        let shown_processed = page.counts["rows-processed"];
        assert!(processed_before <= shown_processed && shown_processed <= processed_after);
        if shown_done > 0 && (shown_done as usize) < before.len() {
            seen_mid_run += 1;
            if !shot {
                let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .parent()
                    .unwrap()
                    .join("dashboard-screenshot.png");
                let arg = format!("--screenshot={}", path.display());
                let out = headless(
                    &bin,
                    &["--window-size=1280,900", "--virtual-time-budget=1500", &arg],
                    &url,
                );
                assert!(out.status.success(), "{}", stderr(&out));
                let png = std::fs::read(&path).unwrap();
                assert!(
                    png.starts_with(b"\x89PNG") && png.len() > 10_000,
                    "a real screenshot"
                );
                eprintln!("screenshot: {}", path.display());
                shot = true;
            }
        }
    }
    assert!(
        seen_mid_run >= 3,
        "the page was checked while the run was in progress"
    );

    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    // Finished: the page shows exactly the ledger.
    let page = parse_page(&stdout(&headless(
        &bin,
        &["--virtual-time-budget=1500", "--dump-dom"],
        &url,
    )));
    let ledger = ledger_cells(&env, &run).await;
    assert_eq!(page.cells, ledger);
    assert_eq!(page.counts["count-done"], ledger.len() as i64);
    assert_eq!(page.counts["rows-processed"], processed(&env, &run).await);
    assert_eq!(page.counts["rows-planned"], page.counts["rows-processed"]);
}
