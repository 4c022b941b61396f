//! The HTTP endpoints against hostile or malformed requests and connection
//! floods, and a database that is not there at startup, through the real
//! `backfill` binary and the real database.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;

/// A run id the database cannot take (a NUL byte) or that is absurdly long
/// is refused as a bad request, and the body carries no database internals.
#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_run_id_is_a_bad_request_without_internals() {
    let env = TestEnv::new().await;
    // The dashboard creates no ledger; a worker or job would have.
    env.store().await;
    let mut fleet = Fleet::new(&env);
    let port = free_port();
    let dash = fleet.spawn(&["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(dash); // killed with the fleet
    let long = format!("/api/runs/{}", "a".repeat(1_000));
    for path in [
        "/api/runs/%00",
        "/api/runs/%00/shards",
        "/api/runs/%00/throughput",
        "/api/runs/%00/report",
        "/api/runs/%00/report?format=json",
        "/api/runs/no-such-run/report?format=%00",
        "/api/runs/no-such-run/report?format=json&format=text",
        "/api/runs/a%01b",
        long.as_str(),
    ] {
        let (code, body) = http_get(port, path);
        assert!(code == 400 || code == 404, "{path}: {code} {body}");
        for leak in ["SQL", "sql", "postgres", "error returned from database"] {
            assert!(!body.contains(leak), "{path} leaks {leak:?}: {body}");
        }
    }
    let (code, _) = http_get(port, "/api/runs/no-such-run");
    assert_eq!(code, 404);
    let (code, _) = http_get(port, "/api/runs/no-such-run/report?format=json");
    assert_eq!(code, 404);
}

/// Connections that send nothing are closed by the server after the
/// header-read timeout, and the endpoint answers probes while they are held.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_are_closed_and_health_answers_meanwhile() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let env = TestEnv::new().await;
    let mut fleet = Fleet::new(&env);
    let port = free_port();
    let mut c = env.cmd(&["mapper", "--metrics-addr", &format!("127.0.0.1:{port}")]);
    c.env("BACKFILL_HTTP_HEADER_TIMEOUT_SECS", "2")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    fleet.mappers.push(c.spawn().unwrap()); // killed with the fleet
    assert_eq!(http_get(port, "/healthz").0, 200);
    // Under the connection cap (256), so the probe below gets a slot.
    let mut idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // One that sends half a request line.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut half, b"GET /heal").unwrap();
    idle.push(half);
    let (code, body) = http_get(port, "/healthz");
    assert_eq!(code, 200, "{body}");
    let started = Instant::now();
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        // The server closes (EOF, perhaps after a 408) or resets it; a
        // read timeout means it was still held.
        if let Err(e) = s.read_to_end(&mut buf) {
            assert!(
                !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "an idle connection was still held after {:?}: {e}",
                started.elapsed()
            );
        }
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(http_get(port, "/healthz").0, 200);
}

/// The connection cap (256) holds: while 256 connections are held, one more
/// is closed without an answer, even a complete request for `/healthz`;
/// once the held ones close, requests are served again.
#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_cap_are_not_served_until_held_ones_close() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    const CAP: usize = 256;
    let env = TestEnv::new().await;
    let mut fleet = Fleet::new(&env);
    let port = free_port();
    let log = std::env::temp_dir().join(format!("bf-endpoints-cap-{port}.log"));
    let mut c = env.cmd(&["mapper", "--metrics-addr", &format!("127.0.0.1:{port}")]);
    // Held connections must outlast the test's steps.
    c.env("BACKFILL_HTTP_HEADER_TIMEOUT_SECS", "60")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    fleet.mappers.push(c.spawn().unwrap()); // killed with the fleet
    assert_eq!(http_get(port, "/healthz").0, 200);
    // A complete request on a fresh connection: the status code, or None
    // when the server closed (or reset) it without an answer.
    let probe = || -> Option<u16> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ =
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let mut buf = Vec::new();
        match s.read_to_end(&mut buf) {
            Err(e) => {
                assert!(
                    !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                    "an over-cap connection was held, not closed: {e}"
                );
                None
            }
            Ok(_) if buf.is_empty() => None,
            Ok(_) => String::from_utf8_lossy(&buf)
                .split(' ')
                .nth(1)
                .and_then(|c| c.parse().ok()),
        }
    };
    // The cap's worth of idle connections. The server accepts in order, so
    // every later connection is accepted after these hold their slots.
    let held: Vec<std::net::TcpStream> = (0..CAP)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for i in 0..20 {
        assert_eq!(
            probe(),
            None,
            "connection {} over the cap was served",
            i + 1
        );
    }
    let warned = std::fs::read_to_string(&log).unwrap();
    assert!(warned.contains("too many connections"), "{warned}");
    // Closed, the held connections give their slots back (as the server
    // reads their end, within moments).
    let served_soon = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(code) = probe() {
                assert_eq!(code, 200);
                return;
            }
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    drop(held);
    served_soon("no request was served after the held connections closed");
    // Every slot came back: one short of the cap held, a request is served.
    let again: Vec<std::net::TcpStream> = (0..CAP - 1)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    served_soon("the cap's last slot was not given back");
    drop(again);
    let _ = std::fs::remove_file(&log);
}

/// A worker's port serves metrics and health, not the dashboard API.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_port_serves_metrics_but_not_the_dashboard() {
    let env = TestEnv::new().await;
    let mut fleet = Fleet::new(&env);
    let port = free_port();
    let w = fleet.spawn(&["mapper", "--metrics-addr", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(w);
    assert_eq!(http_get(port, "/metrics").0, 200);
    assert_eq!(http_get(port, "/api/runs").0, 404);
    assert_eq!(http_get(port, "/").0, 404);
    // The reducer too, unless asked for the dashboard.
    let port = free_port();
    let r = fleet.spawn(&["reducer", "--metrics-addr", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(r);
    assert_eq!(http_get(port, "/metrics").0, 200);
    assert_eq!(http_get(port, "/api/runs").0, 404);
    let port = free_port();
    let r = fleet.spawn(&[
        "reducer",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--dashboard",
    ]);
    fleet.mappers.push(r);
    assert_eq!(http_get(port, "/api/runs").0, 200);
}

/// A one-shot command against a database that is not there fails within a
/// few seconds with the real cause; the "start PostgreSQL" hint only when
/// nothing listens, not for a database that does not exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_shot_command_fails_fast_with_the_real_cause() {
    use std::time::{Duration, Instant};
    let env = TestEnv::new().await;
    let closed = free_port();
    let started = Instant::now();
    let mut c = env.cmd(&["status"]);
    c.env(
        "DATABASE_URL",
        format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
    );
    let out = output_within(c, Duration::from_secs(30));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(err.contains("pg_ctlcluster"), "{err}");
    let mut c = env.cmd(&["status"]);
    c.env(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/does_not_exist_xyz",
    );
    let out = output_within(c, Duration::from_secs(30));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!err.contains("pg_ctlcluster"), "{err}");
}

/// Runs `backfill mapper` on the database at `url` for `run` (its log in the
/// temp file `log`), then kills it: whether it was still running, and its log.
fn mapper_for(env: &TestEnv, url: &str, log: &str, run: std::time::Duration) -> (bool, String) {
    let log = std::env::temp_dir().join(log);
    let mut child = env
        .cmd(&["mapper"])
        .env("DATABASE_URL", url)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(run);
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let err = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    (still_running, err)
}

/// A mapper started while the database is down keeps retrying and logs the
/// real cause each time, instead of exiting.
#[tokio::test(flavor = "multi_thread")]
async fn a_mapper_waits_for_the_database_and_logs_the_cause() {
    use std::time::Duration;
    let env = TestEnv::new().await;
    let closed = free_port();
    let (still_running, err) = mapper_for(
        &env,
        &format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
        &format!("bf-endpoints-{closed}.log"),
        Duration::from_secs(5),
    );
    assert!(still_running, "the mapper exited: {err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
}

/// GET http://127.0.0.1:PORT/PATH once: the status, or `None` when nothing
/// answers (not listening yet, or closed without an answer).
fn status_once(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// A database of the test's own made later than the workers start,
/// dropped at the end (even on failure).
struct LateDatabase {
    name: String,
    url: String,
}

impl LateDatabase {
    fn new(env: &TestEnv) -> LateDatabase {
        let name = format!("{}_late", env.db_name);
        let url = env
            .db_url
            .replacen(&format!("/{}", env.db_name), &format!("/{name}"), 1);
        assert!(url.contains(&name), "{url}");
        LateDatabase { name, url }
    }

    async fn create(&self, env: &TestEnv) {
        env.exec(&format!("CREATE DATABASE \"{}\"", self.name))
            .await;
    }
}

impl Drop for LateDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        on_own_thread(async move {
            use sqlx::Connection;
            if let Ok(mut c) = sqlx::PgConnection::connect(&base_db_url()).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        });
    }
}

/// A mapper and a reducer started before their database exists keep
/// retrying, log the real cause (without the "start PostgreSQL" hint: the
/// server answers), and serve `/readyz` 200 once the database is there.
#[tokio::test(flavor = "multi_thread")]
async fn workers_started_before_their_database_exists_wait_and_become_ready() {
    use std::time::{Duration, Instant};
    let env = TestEnv::new().await;
    let late = LateDatabase::new(&env);
    let mut fleet = Fleet::new(&env);
    let mut workers = Vec::new();
    for role in ["mapper", "reducer"] {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("bf-endpoints-late-{role}-{port}.log"));
        let mut c = env.cmd(&[role, "--metrics-addr", &format!("127.0.0.1:{port}")]);
        c.env("DATABASE_URL", &late.url)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        fleet.mappers.push(c.spawn().unwrap()); // killed with the fleet
        workers.push((role, port, log));
    }
    std::thread::sleep(Duration::from_secs(4));
    for (i, (role, port, log)) in workers.iter().enumerate() {
        let err = std::fs::read_to_string(log).unwrap();
        assert!(
            fleet.mappers[i].try_wait().unwrap().is_none(),
            "the {role} exited: {err}"
        );
        assert!(
            err.contains(&format!("database \"{}\" does not exist", late.name)),
            "the {role} logs the real cause: {err}"
        );
        assert!(err.contains("retrying"), "{role}: {err}");
        assert!(!err.contains("pg_ctlcluster"), "{role}: {err}");
        assert_ne!(status_once(*port, "/readyz"), Some(200), "{role}");
    }
    late.create(&env).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for (role, port, log) in &workers {
        while status_once(*port, "/readyz") != Some(200) {
            assert!(
                Instant::now() < deadline,
                "the {role}'s /readyz never came up: {}",
                std::fs::read_to_string(log).unwrap()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop(fleet);
    for (_, _, log) in &workers {
        let _ = std::fs::remove_file(log);
    }
}

/// The "start PostgreSQL" hint is for a refused connection only: a role
/// the server does not know is named, with no such hint, by a one-shot
/// command and by a waiting worker alike.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_role_is_named_without_the_start_postgresql_hint() {
    use std::time::Duration;
    let env = TestEnv::new().await;
    let no_role = "postgres://nosuchrole@127.0.0.1:5432/postgres";
    let refused = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port());
    let mut c = env.cmd(&["status"]);
    c.env("DATABASE_URL", no_role);
    let out = output_within(c, Duration::from_secs(30));
    let err = stderr(&out);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("role \"nosuchrole\" does not exist"), "{err}");
    assert!(!err.contains("pg_ctlcluster"), "{err}");
    let mut c = env.cmd(&["status"]);
    c.env("DATABASE_URL", &refused);
    let out = output_within(c, Duration::from_secs(30));
    let err = stderr(&out);
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(err.contains("pg_ctlcluster"), "{err}");
    // A mapper waiting for each logs the same distinction.
    for (url, hinted) in [(no_role, false), (refused.as_str(), true)] {
        let (still_running, err) = mapper_for(
            &env,
            url,
            &format!("bf-endpoints-role-{}.log", free_port()),
            Duration::from_secs(3),
        );
        assert!(still_running, "the mapper exited: {err}");
        assert!(err.contains("retrying"), "{err}");
        assert_eq!(err.contains("pg_ctlcluster"), hinted, "{url}: {err}");
        if !hinted {
            assert!(err.contains("role \"nosuchrole\" does not exist"), "{err}");
        }
    }
}

/// The dashboard watches the queues without creating them: pointed at a
/// ledger no worker serves, it leaves nothing on the broker and shows the
/// queues as empty; once a worker has declared them, it shows their depth.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_creates_no_queue_and_shows_the_depth_of_those_declared() {
    use std::time::{Duration, Instant};
    let env = TestEnv::new().await;
    let store = env.store().await;
    let names = env.queues();
    // The test's own check of the broker declared them: start without.
    let b = env.broker().await;
    b.delete_queues().await.unwrap();
    b.close().await;
    let mut fleet = Fleet::new(&env);
    let port = free_port();
    let dash = fleet.spawn(&["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(dash); // killed with the fleet
    let gauge = |queue: &str| format!("backfill_queue_messages{{queue=\"{queue}\"}} ");
    // Wait until it has looked at the broker: the gauge is there.
    let scrape_with = |line: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) = http_get(port, "/metrics");
            if code == 200 && body.lines().any(|l| l.starts_with(line)) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "no `{line}` in /metrics:\n{body}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    scrape_with(&format!("{}0", gauge(&names.tasks)));
    assert_eq!(http_get(port, "/readyz").0, 200, "the broker is reachable");
    let watcher = backfill_queue::Broker::connect_to_watch(&amqp_url(), names.clone())
        .await
        .unwrap();
    for q in [&names.tasks, &names.results, &names.dead, &names.parked] {
        assert_eq!(
            watcher.depth_if_declared(q).await.unwrap(),
            None,
            "the dashboard declared {q}"
        );
    }
    // A worker declares the queues; a task waits in one of them.
    let worker = backfill_queue::Broker::connect(&amqp_url(), names.clone())
        .await
        .unwrap();
    let task = backfill_job::ShardTask {
        v: 1,
        ledger: store.ledger().id.clone(),
        run_id: "no-such-run".into(),
        shard_no: 0,
        target: "t".into(),
        first_key: "1".into(),
        last_key: "1".into(),
        rows: 1,
    };
    worker
        .publisher()
        .await
        .unwrap()
        .publish_task(&task)
        .await
        .unwrap();
    scrape_with(&format!("{}1", gauge(&names.tasks)));
    assert_eq!(
        watcher.depth_if_declared(&names.tasks).await.unwrap(),
        Some(1)
    );
    watcher.close().await;
    worker.close().await;
}
