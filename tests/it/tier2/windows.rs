//! Run windows, with windows of a few seconds: a run started before its
//! first window waits (status says so and when it opens), starts shards
//! only inside its windows, stops starting them when one closes (the shards
//! in hand finish) and carries on in the next, until it is done.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const JOB: &str = "collection-dict-migrate";

/// The dashboard page as headless Chromium renders it.
fn chromium_dom(url: &str) -> String {
    let bin = std::env::var("BACKFILL_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let mut c = std::process::Command::new(&bin);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=1500",
        "--dump-dom",
        url,
    ])
    .stdin(std::process::Stdio::null());
    let out = std::process::Command::output(&mut c).unwrap_or_else(|e| {
        panic!("Chromium is needed: install it with `apt-get install -y chromium` (`.ci/run` does), or set BACKFILL_CHROMIUM ({e})")
    });
    stdout(&out)
}

/// `HH:MM:SS` (UTC) of an epoch second.
fn clock(epoch: u64) -> String {
    let s = epoch % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_starts_shards_only_inside_its_windows_and_carries_on_in_the_next() {
    let env = TestEnv::with_collections(1_500, 8).await;
    let mut fleet = Fleet::started(&env, 1);
    let port = free_port();
    let dash = fleet.spawn(&["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(dash); // stopped with the fleet

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Two windows: 6 s from t0+6, then 40 s from t0+24 (UTC, every day).
    let (o1, c1, o2, c2) = (now + 6, now + 12, now + 24, now + 64);
    let w1 = format!("{}-{}", clock(o1), clock(c1));
    let w2 = format!("{}-{}", clock(o2), clock(c2));
    let (coord, run) = start_job(&env, JOB, &format!("--all --commit --wait --shard-size 50 --rows-per-sec 400 --window {w1} --window {w2} --time-zone UTC")).await;

    // Before the first window: waiting, and it says when it opens. The
    // windows are recorded with the run's row.
    let st = status_json(&env, &run);
    let w = &st["window"];
    assert_eq!(w["open"], false, "{st}");
    let waiting = w["waiting"].as_str().unwrap();
    assert!(
        waiting.starts_with("waiting for window, opens in "),
        "{waiting}"
    );
    let opens_in = w["opens_in_seconds"].as_f64().unwrap();
    assert!((0.0..=7.0).contains(&opens_in), "{opens_in}");
    assert_eq!(w["schedule"], format!("{w1}; {w2} (UTC)"));
    assert_eq!(
        st["eta_seconds"],
        serde_json::Value::Null,
        "no ETA while waiting"
    );
    let text = env.run(&["status", &run]);
    assert!(
        stdout(&text).contains("waiting for window, opens in"),
        "{}",
        stdout(&text)
    );
    assert_eq!(count(&env, &run, "started_at IS NOT NULL").await, 0);

    // Between the windows: waiting again, for the second.
    let between = UNIX_EPOCH + Duration::from_secs(c1 + 4);
    tokio::time::sleep(
        between
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    )
    .await;
    let st = status_json(&env, &run);
    assert_eq!(
        st["state"], "running",
        "the first window was too short to finish: {st}"
    );
    assert_eq!(st["window"]["open"], false, "{st}");
    let opens_in = st["window"]["opens_in_seconds"].as_f64().unwrap();
    assert!((5.0..=9.0).contains(&opens_in), "{opens_in}");
    assert_eq!(
        count(&env, &run, "state = 'running'").await,
        0,
        "the shards in hand finished"
    );
    // The metrics and the dashboard say the same.
    let (code, metrics) = http_get(port, "/metrics");
    assert_eq!(code, 200);
    let gauge = |name: &str| -> f64 {
        let key = format!("{name}{{run=\"{run}\",job=\"{JOB}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("{key} missing from\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(gauge("backfill_run_window_open"), 0.0);
    let g = gauge("backfill_run_window_opens_in_seconds");
    assert!((3.0..=9.0).contains(&g), "{g}");
    let page = chromium_dom(&format!("http://127.0.0.1:{port}/?run={run}"));
    assert!(
        page.contains("waiting for window, opens in"),
        "the dashboard says it waits"
    );
    assert!(page.contains(">waiting<"), "the state badge reads waiting");

    let out = child_output_within(coord, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = summary(&out);
    let planned = env
        .scalar_i64(&format!(
            "SELECT sum(rows)::int8 FROM backfill_shard WHERE run_id = '{run}'"
        ))
        .await;
    assert_eq!(num(&s, "processed"), planned);

    // Every shard started inside a window (the admission check runs at
    // most half a second before a start: a second of slack at the close).
    let starts: Vec<f64> = sqlx::query_scalar(&format!(
        "SELECT extract(epoch FROM started_at)::float8 FROM backfill_shard WHERE run_id = '{run}' ORDER BY started_at"
    ))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let inside = |t: f64, o: u64, c: u64| t >= o as f64 - 0.5 && t <= c as f64 + 1.0;
    let (in1, in2) = (
        starts.iter().filter(|t| inside(**t, o1, c1)).count(),
        starts.iter().filter(|t| inside(**t, o2, c2)).count(),
    );
    assert_eq!(
        in1 + in2,
        starts.len(),
        "shards started outside the windows {w1} and {w2}: {starts:?}"
    );
    assert!(
        in1 > 0 && in2 > 0,
        "the run worked in both windows: {in1} and {in2}"
    );
    eprintln!(
        "windows {w1} and {w2}: {in1} shards started in the first, {in2} in the second, none outside"
    );
}
