//! Helpers for the steering and monitoring tests: coordinators started with
//! any flags, the ledger read as the tests need it, plain HTTP GETs.

#![allow(dead_code, clippy::unwrap_used)]

use super::*;
use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Starts `backfill coordinator ARGS` with its output captured.
pub fn spawn_coordinator_with(env: &TestEnv, args: &[&str]) -> Child {
    let mut all = vec!["coordinator"];
    all.extend_from_slice(args);
    env.cmd(&all)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Starts `backfill coordinator --job JOB FLAGS` (FLAGS split at white
/// space) with its output captured.
pub fn spawn_job(env: &TestEnv, job: &str, flags: &str) -> Child {
    let mut args = vec!["--job", job];
    args.extend(flags.split_whitespace());
    spawn_coordinator_with(env, &args)
}

/// Starts `backfill coordinator --job JOB FLAGS` for the shipped job
/// `name` and waits until it has planned its run: the coordinator, and the
/// run's id.
pub async fn start_job(env: &TestEnv, name: &str, flags: &str) -> (Child, String) {
    let coord = spawn_job(env, &job(name), flags);
    (coord, run_of(env, name).await)
}

/// The newest run of `job`, once the coordinator has planned it.
pub async fn run_of(env: &TestEnv, job: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT run_id FROM backfill_run WHERE job_name = $1 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(job)
        .fetch_optional(&env.pool)
        .await
        .ok()
        .flatten();
        if let Some(id) = id {
            return id;
        }
        assert!(Instant::now() < deadline, "no run of {job} was planned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn count(env: &TestEnv, run: &str, where_: &str) -> i64 {
    env.scalar_i64(&format!(
        "SELECT count(*) FROM backfill_shard WHERE run_id = '{run}' AND {where_}"
    ))
    .await
}

/// Waits until `n` shards of the run are done and its plan is whole: its
/// shards are published as they are recorded, so on a slow disk the first
/// ones can be done while the coordinator still records the rest, and a
/// count of its shards taken then is not the run's.
pub async fn wait_done(env: &TestEnv, run: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let planning = format!("SELECT count(*) FROM backfill_planning WHERE run_id = '{run}'");
    while count(env, run, "state = 'done'").await < n || env.scalar_i64(&planning).await > 0 {
        assert!(
            Instant::now() < deadline,
            "{n} shards of {run} were not done, or its plan not whole, in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The database's clock, seconds since the epoch.
pub async fn db_now(env: &TestEnv) -> f64 {
    sqlx::query_scalar::<_, f64>("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// (started, finished, rows) of every shard that started, by start time.
pub async fn shard_times(env: &TestEnv, run: &str) -> Vec<(f64, Option<f64>, i64)> {
    sqlx::query_as::<_, (f64, Option<f64>, i64)>(
        "SELECT extract(epoch FROM started_at)::float8, extract(epoch FROM finished_at)::float8, rows::int8
         FROM backfill_shard WHERE run_id = $1 AND started_at IS NOT NULL ORDER BY started_at",
    )
    .bind(run)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// Rows per second of shards started one after another: the rows of all
/// but the last over the time from the first start to the last start.
pub fn start_rate(starts: &[(f64, Option<f64>, i64)]) -> f64 {
    assert!(starts.len() >= 3, "too few shards to measure a rate");
    let rows: i64 = starts[..starts.len() - 1].iter().map(|s| s.2).sum();
    let span = starts[starts.len() - 1].0 - starts[0].0;
    rows as f64 / span
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET http://127.0.0.1:PORT/PATH → (status, body); retries while the
/// server is starting.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_get(port, path) {
            Ok(r) => return r,
            Err(e) => {
                assert!(Instant::now() < deadline, "GET :{port}{path} failed: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn try_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// `backfill status RUN --json`, parsed.
pub fn status_json(env: &TestEnv, run: &str) -> serde_json::Value {
    let out = env.run(&["status", run, "--json"]);
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).expect("status --json is JSON")
}

/// A copy of a shipped job spec with `extra` TOML appended, in a temp file.
pub fn spec_with(job_name: &str, extra: &str, tag: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(job(job_name)).unwrap();
    let path = std::env::temp_dir().join(format!("bf-spec-{tag}-{}.toml", std::process::id()));
    std::fs::write(&path, format!("{text}\n{extra}\n")).unwrap();
    path
}
