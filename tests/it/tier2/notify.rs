//! Notifications, against webhook receivers started by the test: a run
//! tells of its start and end (with its `Summary:` line and counts) to one
//! that answers 200, while one answering 500 gets its retries and one that
//! never answers is given up on, without holding the run up or changing its
//! exit code; every delivery is in the ledger's history with the URL
//! redacted. A run that fails tells `failed` to the webhooks of
//! `BACKFILL_NOTIFY_URL`. A spec's `[notify]` in the Slack form tells of a
//! stall, a dead-lettered shard and a cancel.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JOB: &str = "collection-dict-migrate";
/// In every receiver's path: it must never be printed or recorded.
const SECRET: &str = "T0KEN-s3cr3t-path";

#[derive(Clone, Copy, PartialEq)]
enum Answer {
    Ok,
    Fail,
    Hang,
}

/// A webhook receiver on a port of its own, in a thread: it records the
/// body of every POST it reads.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Receiver {
    fn start(answer: Answer) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://127.0.0.1:{}/hooks/{SECRET}",
            listener.local_addr().unwrap().port()
        );
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        std::thread::spawn(move || {
            let mut held: Vec<TcpStream> = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let Some(body) = read_request(&mut conn) else {
                    continue;
                };
                seen.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
                match answer {
                    Answer::Ok => {
                        let _ = conn.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        );
                    }
                    Answer::Fail => {
                        let _ = conn.write_all(
                            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope",
                        );
                    }
                    // Read, and never answer.
                    Answer::Hang => held.push(conn),
                }
            }
        });
        Receiver { url, bodies }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.bodies.lock().unwrap().clone()
    }

    fn events(&self) -> Vec<String> {
        self.bodies()
            .iter()
            .map(|b| b["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

/// Reads one HTTP request and returns its body.
fn read_request(conn: &mut TcpStream) -> Option<Vec<u8>> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut len = 0usize;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

/// Waits until `f` holds, at most `limit`.
async fn until(limit: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn notify_events(env: &TestEnv, run: &str) -> Vec<String> {
    let store = env.store().await;
    store
        .run_events(run)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "notify")
        .map(|e| e.detail.unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_tells_its_start_and_end_and_a_failing_or_hanging_webhook_never_holds_it_up() {
    let env = TestEnv::with_collections(300, 4).await;
    let (ok, fail, hang) = (
        Receiver::start(Answer::Ok),
        Receiver::start(Answer::Fail),
        Receiver::start(Answer::Hang),
    );
    let notify: Vec<&str> = [&ok, &fail, &hang]
        .iter()
        .flat_map(|r| ["--notify", r.url.as_str()])
        .chain(["--notify-timeout", "1"])
        .collect();

    let mut fleet = Fleet::new(&env);
    let m = fleet.spawn(&["mapper", "--concurrency", "2"]);
    fleet.mappers.push(m);
    let mut reducer_args = vec!["reducer"];
    reducer_args.extend(&notify);
    let mut reducer = fleet.spawn(&reducer_args);

    let started = Instant::now();
    let spec = job(JOB);
    let mut args = vec![
        "coordinator",
        "--job",
        spec.as_str(),
        "--all",
        "--commit",
        "--wait",
        "--shard-size",
        "50",
    ];
    args.extend(&notify);
    let out = output_within(
        {
            let mut c = env.cmd(&args);
            c.env("RUST_LOG", "info");
            c
        },
        Duration::from_secs(120),
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let line = summary_line(&out);
    let s = summary(&out);
    let run = s["run"].clone();
    // The coordinator waited for its own delivery to the hanging receiver
    // (3 attempts of 1 s, 1 s and 4 s apart), and no longer.
    assert!(took < Duration::from_secs(60), "the run took {took:?}");

    // The receiver that answers: the start, then the end with the summary.
    until(Duration::from_secs(30), "the finished notification", || {
        ok.events() == ["started", "finished"]
    })
    .await;
    let bodies = ok.bodies();
    let (start, end) = (&bodies[0], &bodies[1]);
    for b in [start, end] {
        assert_eq!(b["v"], 1);
        assert_eq!(b["run_id"], run.as_str());
        assert_eq!(b["job"], JOB);
        assert_eq!(b["mode"], "commit");
        assert_eq!(b["kind"], "forward");
        assert!(b["at"].as_str().unwrap().ends_with('Z'), "{b}");
        assert!(b["message"].as_str().unwrap().contains(&run), "{b}");
    }
    assert_eq!(start["state"], "running");
    assert_eq!(start["summary"], serde_json::Value::Null);
    assert_eq!(end["state"], "done");
    assert_eq!(
        end["summary"],
        line.as_str(),
        "the finish carries the Summary: line"
    );
    assert_eq!(end["counts"]["processed"], num(&s, "processed"));
    assert_eq!(end["counts"]["changed"], num(&s, "changed"));

    // The one answering 500: every event tried three times. The hanging one:
    // each attempt read, none answered.
    until(Duration::from_secs(30), "the retries", || {
        fail.bodies().len() == 6 && hang.bodies().len() == 6
    })
    .await;
    let mut tries = fail.events();
    tries.sort();
    assert_eq!(
        tries,
        ["finished", "finished", "finished", "started", "started", "started"]
    );

    // The ledger's history: every delivery, the URL without its secret.
    let store_events = || notify_events(&env, &run);
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let e = store_events().await;
        if e.len() == 6 || Instant::now() > deadline {
            break e;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events.len(), 6, "{events:#?}");
    let with = |what: &str| events.iter().filter(|e| e.contains(what)).count();
    assert_eq!(
        with("delivered (HTTP 200) after 1 attempt(s)"),
        2,
        "{events:#?}"
    );
    assert_eq!(
        with("not delivered after 3 attempt(s): HTTP 500"),
        2,
        "{events:#?}"
    );
    assert_eq!(
        with("not delivered after 3 attempt(s): no answer within"),
        2,
        "{events:#?}"
    );
    assert!(events
        .iter()
        .all(|e| e.contains("http://127.0.0.1:") && e.contains("/…")));

    reducer.kill().unwrap();
    let _ = reducer.wait();
    // Nothing printed the secret part of the URLs.
    let mut printed = format!("{}{}", stdout(&out), stderr(&out));
    let logs = std::env::temp_dir().join(format!("bf-fleet-{}", env.prefix));
    for f in std::fs::read_dir(&logs).unwrap() {
        printed.push_str(&std::fs::read_to_string(f.unwrap().path()).unwrap_or_default());
    }
    drop(fleet);
    assert!(
        printed.contains("notification"),
        "the workers log deliveries"
    );
    assert!(!printed.contains(SECRET), "a webhook's path was printed");
    assert!(events.iter().all(|e| !e.contains(SECRET)));
}

/// A run that ends failed (rows with errors) tells `failed`, with its
/// `Summary:` line and error count, to every webhook of
/// `BACKFILL_NOTIFY_URL` (a comma-separated list, no `--notify` given).
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_run_tells_failed_to_the_webhooks_of_backfill_notify_url() {
    let env = TestEnv::with_certificates(20, 800).await;
    // Revisions that are not objects: row errors, so the run fails.
    env.exec("UPDATE wagtailcore_revision SET content = '[1]'::jsonb WHERE id % 3 = 0")
        .await;
    let (a, b) = (Receiver::start(Answer::Ok), Receiver::start(Answer::Ok));
    let spec = job("program-certificate-titles");
    let mut cmd = env.cmd(&["run", "--job", &spec, "--all", "--commit"]);
    cmd.env("BACKFILL_NOTIFY_URL", format!("{},{}", a.url, b.url))
        .env("RUST_LOG", "info");
    let out = output_within(cmd, Duration::from_secs(120));
    eprintln!("{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(out.status.code(), Some(1), "a failed run: {}", stderr(&out));
    let line = summary_line(&out);
    let s = summary(&out);
    assert_eq!(s["state"], "failed");
    let errors = num(&s, "errors");
    assert!(errors > 0);
    let run = s["run"].clone();
    for hook in [&a, &b] {
        until(Duration::from_secs(30), "the failed notification", || {
            hook.events() == ["started", "failed"]
        })
        .await;
        let end = hook.bodies().remove(1);
        assert_eq!(end["run_id"], run.as_str());
        assert_eq!(end["state"], "failed");
        assert_eq!(end["summary"], line.as_str(), "{end}");
        assert_eq!(end["counts"]["errors"], errors, "{end}");
        assert!(end["message"].as_str().unwrap().contains("failed"), "{end}");
    }
    let events = notify_events(&env, &run).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("failed") && e.contains("delivered (HTTP 200)"))
            .count(),
        2,
        "{events:#?}"
    );
    let printed = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!printed.contains(SECRET), "a webhook's path was printed");
    assert!(events.iter().all(|e| !e.contains(SECRET)));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_spec_s_slack_webhook_hears_of_a_stall_a_dead_shard_and_a_cancel() {
    let env = TestEnv::with_collections(300, 4).await;
    let hook = Receiver::start(Answer::Ok);
    let spec = spec_with(
        JOB,
        &format!(
            "[notify]\nurls = [\"{}\"]\nformat = \"slack\"\nstall_after_seconds = 2\n",
            hook.url
        ),
        &env.prefix,
    );
    // A reducer and no mapper: nothing finishes, so the run stalls.
    let mut fleet = Fleet::new(&env);
    let mut reducer = fleet.spawn(&["reducer"]);
    let coord = spawn_job(
        &env,
        spec.to_str().unwrap(),
        "--all --commit --shard-size 50",
    );
    let out = child_output_within(coord, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run = run_of(&env, JOB).await;

    let texts = || -> Vec<String> {
        hook.bodies()
            .iter()
            .map(|b| {
                // The Slack form: one `text` field, nothing else.
                assert_eq!(b.as_object().map(|o| o.len()), Some(1), "{b}");
                b["text"].as_str().unwrap().to_string()
            })
            .collect()
    };
    until(Duration::from_secs(40), "the stall", || {
        texts().iter().any(|t| t.contains("stalled"))
    })
    .await;
    let t = texts();
    assert!(t[0].contains(&run) && t[0].contains("started"), "{t:#?}");
    let stall = t.iter().find(|t| t.contains("stalled")).unwrap();
    assert!(stall.contains("no shard finished for"), "{stall}");
    // Told once per stall, not at every check.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        texts().iter().filter(|t| t.contains("stalled")).count(),
        1,
        "{:#?}",
        texts()
    );

    // A shard given up on: its task reaches the dead-letter queue, as
    // RabbitMQ routes a task delivered too many times.
    let store = env.store().await;
    let shard = store.shards(&run).await.unwrap().remove(0);
    let task = backfill_job::message::ShardTask {
        v: backfill_job::message::MESSAGE_VERSION,
        ledger: store.ledger().id.clone(),
        run_id: run.clone(),
        shard_no: shard.shard_no,
        target: shard.target.clone(),
        first_key: shard.first_key.clone(),
        last_key: shard.last_key.clone(),
        rows: shard.rows,
    };
    let broker = env.broker().await;
    broker
        .publisher()
        .await
        .unwrap()
        .publish_to(&env.queues().dead, &task.encode())
        .await
        .unwrap();
    until(Duration::from_secs(30), "the dead shard", || {
        texts().iter().any(|t| t.contains("dead-lettered shard"))
    })
    .await;

    let out = env.run(&["cancel", &run]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    until(Duration::from_secs(30), "the cancel", || {
        texts().iter().any(|t| t.contains("was cancelled"))
    })
    .await;
    let t = texts();
    let cancel = t.iter().find(|t| t.contains("was cancelled")).unwrap();
    assert!(
        cancel.contains("Summary:") && cancel.contains("state=cancelled"),
        "{cancel}"
    );
    reducer.kill().unwrap();
    let _ = reducer.wait();
    let _ = std::fs::remove_file(&spec);
}
