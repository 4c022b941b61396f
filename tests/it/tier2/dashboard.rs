//! The web dashboard in a real headless Chromium while a run progresses:
//! the shard grid and the counts it shows must agree with the ledger read
//! just before and just after the page was rendered. A screenshot is kept
//! under `target/` (CI keeps it as an artifact).
//!
//! Needs Debian's `chromium` (`apt-get install chromium`; `.ci/run` installs
//! it), or BACKFILL_CHROMIUM pointing at a Chromium binary.

#![allow(clippy::unwrap_used)]

use crate::common::fleet::*;
use crate::common::steer::*;
use crate::common::*;
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
    let env = TestEnv::with_collections(1_500, 8).await;
    let mut fleet = Fleet::started(&env, 2);
    let port = free_port();
    let dash = fleet.spawn(&["dashboard", "--listen", &format!("127.0.0.1:{port}")]);
    fleet.mappers.push(dash); // killed with the fleet

    // Slow enough that the run outlasts three headless renders of the page
    // on a busy machine (at 500 rows/s it once ended after two).
    let (coord, run) =
        start_job(&env, JOB, "--all --wait --shard-size 50 --rows-per-sec 250").await;
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

// ---------------------------------------------------------------------------
// The page driven in a real browser: a headless Chromium over the DevTools
// protocol. The page runs as it does for an operator (it polls the API, its
// click handlers sort); the tests evaluate JavaScript in it to read what it
// shows, its computed colours, and to click.

const CERTS: &str = "program-certificate-titles";

/// A minimal WebSocket client (RFC 6455) for the DevTools protocol: text
/// frames, masked as a client must; replies may come fragmented.
struct Ws(std::net::TcpStream);

impl Ws {
    fn connect(port: u16, path: &str) -> Ws {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "DevTools refused the WebSocket: {head}"
        );
        Ws(s)
    }

    fn send(&mut self, text: &str) {
        use std::io::Write;
        let data = text.as_bytes();
        let mask = [0x5au8, 0x3c, 0x96, 0x0f];
        let mut frame = vec![0x81u8];
        match data.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n < 65_536 => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&frame).unwrap();
    }

    fn recv(&mut self) -> String {
        use std::io::Read;
        let mut message = Vec::new();
        loop {
            let mut h = [0u8; 2];
            self.0.read_exact(&mut h).unwrap();
            let (fin, opcode) = (h[0] & 0x80 != 0, h[0] & 0x0f);
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    self.0.read_exact(&mut l).unwrap();
                    u16::from_be_bytes(l) as usize
                }
                127 => {
                    let mut l = [0u8; 8];
                    self.0.read_exact(&mut l).unwrap();
                    u64::from_be_bytes(l) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.0.read_exact(&mut payload).unwrap();
            match opcode {
                0x8 => panic!("DevTools closed the WebSocket"),
                0x9 | 0xA => continue, // ping, pong
                _ => message.extend_from_slice(&payload),
            }
            if fin {
                return String::from_utf8(message).unwrap();
            }
        }
    }
}

/// DevTools' list of targets (its HTTP server keeps the connection open:
/// read the body by its length).
fn devtools_targets(port: u16) -> serde_json::Value {
    use std::io::{BufRead, Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
    )
    .unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    r.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap_or_default()
}

struct Browser {
    child: std::process::Child,
    profile: std::path::PathBuf,
    ws: Option<Ws>,
    next_id: u64,
}

impl Browser {
    /// Chromium showing `url` in a 1280×1000 window.
    fn open(bin: &str, url: &str) -> Browser {
        let profile =
            std::env::temp_dir().join(format!("bf-chromium-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).unwrap();
        let child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--window-size=1280,1000",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut b = Browser {
            child,
            profile,
            ws: None,
            next_id: 0,
        };
        // Chromium writes the port it chose to DevToolsActivePort.
        let deadline = Instant::now() + Duration::from_secs(30);
        let port: u16 = loop {
            let port = std::fs::read_to_string(b.profile.join("DevToolsActivePort"))
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
            if let Some(p) = port {
                break p;
            }
            assert!(
                Instant::now() < deadline,
                "Chromium did not open its DevTools port"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let page = loop {
            let targets = devtools_targets(port);
            let page = targets.as_array().and_then(|ts| {
                ts.iter()
                    .find(|t| t["type"] == "page")
                    .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    .map(|u| u.to_string())
            });
            if let Some(p) = page {
                break p;
            }
            assert!(Instant::now() < deadline, "Chromium opened no page");
            std::thread::sleep(Duration::from_millis(100));
        };
        let path = &page[page.find("/devtools/").unwrap()..];
        b.ws = Some(Ws::connect(port, path));
        b
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value.
    fn eval(&mut self, js: &str) -> serde_json::Value {
        self.try_eval(js)
            .unwrap_or_else(|reply| panic!("{js}\nthrew: {reply}"))
    }

    /// Evaluates `js` in the page, or returns Chromium's reply when it threw
    /// or could not run (as while the page navigates away: its execution
    /// context is destroyed under the call).
    fn try_eval(&mut self, js: &str) -> Result<serde_json::Value, serde_json::Value> {
        self.next_id += 1;
        let id = self.next_id;
        let ws = self.ws.as_mut().unwrap();
        ws.send(
            &serde_json::json!({
                "id": id,
                "method": "Runtime.evaluate",
                "params": {"expression": js, "awaitPromise": true, "returnByValue": true},
            })
            .to_string(),
        );
        loop {
            let reply: serde_json::Value = serde_json::from_str(&ws.recv()).unwrap();
            if reply["id"] != id {
                continue; // an event
            }
            let result = &reply["result"];
            if result.get("exceptionDetails").is_some() || reply.get("error").is_some() {
                return Err(reply);
            }
            return Ok(result["result"]["value"].clone());
        }
    }

    /// Waits until the page has rendered `run` at least `n` times after now.
    fn rendered(&mut self, run: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut first: Option<u64> = None;
        loop {
            // A page that is navigating may answer with its context gone:
            // that is "not rendered yet", and the deadline still holds.
            let v = self
                .try_eval(
                    "document.body ? [document.body.dataset.loadedRun || '', Number(document.body.dataset.renders || 0)] : ['', 0]",
                )
                .unwrap_or_default();
            let (loaded, renders) = (v[0].as_str().unwrap_or(""), v[1].as_u64().unwrap_or(0));
            if loaded == run {
                let since = *first.get_or_insert(renders);
                if renders >= since + n {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the page did not render run {run} (it shows {loaded:?}, {renders} renders; error: {})",
                self.try_eval("document.getElementById('error').textContent")
                    .unwrap_or_else(|reply| reply)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn text(&mut self, selector: &str) -> String {
        let v = self.eval(&format!(
            "(() => {{ const e = document.querySelector({}); return e ? e.textContent.trim() : null; }})()",
            serde_json::json!(selector)
        ));
        v.as_str()
            .unwrap_or_else(|| panic!("no {selector} in the page"))
            .to_string()
    }

    /// The computed (text colour, background colour) of an element.
    fn colours(&mut self, selector: &str) -> (Rgb, Rgb) {
        let v = self.eval(&format!(
            "(() => {{ const s = getComputedStyle(document.querySelector({})); return [s.color, s.backgroundColor]; }})()",
            serde_json::json!(selector)
        ));
        (rgb(&v[0]), rgb(&v[1]))
    }

    /// The computed colours of a badge with these classes, for comparison.
    fn badge_colours(&mut self, classes: &str) -> (Rgb, Rgb) {
        let v = self.eval(&format!(
            "(() => {{ const e = document.createElement('span'); e.className = {}; document.body.appendChild(e);
               const s = getComputedStyle(e); const c = [s.color, s.backgroundColor]; e.remove(); return c; }})()",
            serde_json::json!(classes)
        ));
        (rgb(&v[0]), rgb(&v[1]))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.ws = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

type Rgb = (u8, u8, u8);

fn rgb(v: &serde_json::Value) -> Rgb {
    let s = v.as_str().unwrap_or_default();
    let n: Vec<u8> = s
        .trim_start_matches("rgba(")
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .take(3)
        .map(|p| p.trim().parse().unwrap_or_else(|_| panic!("colour {s}")))
        .collect();
    (n[0], n[1], n[2])
}

/// A colour an operator reads as red: red well above green and blue.
fn reddish((r, g, b): Rgb) -> bool {
    let r = f64::from(r);
    r >= 120.0 && r > 1.6 * f64::from(g) && r > 1.6 * f64::from(b)
}

/// `backfill dashboard` on a free port, killed on drop.
struct Dashboard {
    child: std::process::Child,
    port: u16,
}

impl Dashboard {
    fn start(env: &TestEnv) -> Dashboard {
        let port = free_port();
        let child = env
            .cmd(&["dashboard", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (code, _) = http_get(port, "/");
        assert_eq!(code, 200);
        Dashboard { child, port }
    }

    fn url(&self, run: &str) -> String {
        format!("http://127.0.0.1:{}/?run={run}", self.port)
    }

    fn json(&self, path: &str) -> serde_json::Value {
        let (code, body) = http_get(self.port, path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With BACKFILL_SCREENSHOTS=1, a screenshot of `url` into docs/NAME (the
/// README shows them); otherwise nothing is written there.
fn screenshot_for_docs(bin: &str, url: &str, name: &str, height: u32) {
    if std::env::var_os("BACKFILL_SCREENSHOTS").is_none() {
        return;
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join(name);
    let out = headless(
        bin,
        &[
            &format!("--window-size=1280,{height}"),
            "--virtual-time-budget=2500",
            &format!("--screenshot={}", path.display()),
        ],
        url,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let png = std::fs::read(&path).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000);
    eprintln!("screenshot: {}", path.display());
}

async fn shard_count(env: &TestEnv, run: &str, what: &str) -> i64 {
    count(env, run, what).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_run_shows_paused_its_killed_mapper_stale_and_the_reducer_lag() {
    let bin = chromium();
    let env = TestEnv::with_collections(1_500, 8).await;
    let mut fleet = Fleet::started(&env, 2);
    let coord = spawn_job(&env, &job(JOB), "--all --shard-size 50 --rows-per-sec 300");
    fleet.mappers.push(coord); // killed with the fleet
    let run = run_of(&env, JOB).await;
    wait_done(&env, &run, 2).await;

    // The reducer stops: shards done from now on are not folded.
    fleet.stop_reducer();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let workers = env
            .scalar_i64(&format!(
                "SELECT count(DISTINCT worker) FROM backfill_shard WHERE run_id = '{run}' AND state = 'done'"
            ))
            .await;
        let lag = shard_count(&env, &run, "state = 'done' AND reduced_at IS NULL").await;
        if workers >= 2 && lag >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both mappers did not commit shards in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One mapper is killed (not replaced); the run is paused.
    let mut killed = fleet.mappers.remove(0);
    let pid = killed.id();
    killed.kill().unwrap();
    killed.wait().unwrap();
    let killed_name: String = sqlx::query_scalar(
        "SELECT DISTINCT worker FROM backfill_shard WHERE run_id = $1 AND state = 'done' AND worker LIKE $2",
    )
    .bind(&run)
    .bind(format!("%:{pid}"))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let out = env.run(&["pause", &run]);
    assert_eq!(out.status.code(), Some(0));

    let dash = Dashboard::start(&env);
    // The killed mapper goes silent; the live one keeps its heartbeat. Wait
    // until the API calls the killed one stale (30 s without a sign of life).
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let s = dash.json(&format!("/api/runs/{run}"));
        let killed_stale = s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == killed_name.as_str())
            .map(|w| w["stale"] == true);
        if killed_stale == Some(true) {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the killed mapper {killed_name} never became stale: {s}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(status["state"], "running");
    assert_eq!(status["control"], "pause");
    let workers = status["workers"].as_array().unwrap();
    assert!(workers.len() >= 2, "{status}");
    for w in workers {
        let stale = w["stale"].as_bool().expect("workers[].stale is a bool");
        let age = w["age_seconds"].as_f64().unwrap();
        assert_eq!(stale, age > 30.0, "{w}");
        assert_eq!(stale, w["name"] == killed_name.as_str(), "{w}");
    }
    // `status` in the terminal flags it too, and only it.
    let text = stdout(&env.run(&["status", &run]));
    let flagged: Vec<&str> = text.lines().filter(|l| l.contains("STALE")).collect();
    assert_eq!(flagged.len(), 1, "{text}");
    assert!(flagged[0].contains(killed_name.as_str()), "{text}");

    // The page, while the ledger holds still (paused, reducer stopped).
    let url = dash.url(&run);
    let mut browser = Browser::open(&bin, &url);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (done, reduced) = loop {
        let before = (
            shard_count(&env, &run, "state = 'done'").await,
            shard_count(&env, &run, "reduced_at IS NOT NULL").await,
        );
        browser.rendered(&run, 2);
        let shown = browser.eval(
            "[document.getElementById('count-done').textContent, document.getElementById('count-reduced').textContent, document.getElementById('reducer-lag') && document.getElementById('reducer-lag').textContent]",
        );
        let after = (
            shard_count(&env, &run, "state = 'done'").await,
            shard_count(&env, &run, "reduced_at IS NOT NULL").await,
        );
        if before == after {
            assert_eq!(shown[0], before.0.to_string(), "done shown");
            assert_eq!(shown[1], before.1.to_string(), "reduced shown");
            assert_eq!(
                shown[2],
                (before.0 - before.1).to_string(),
                "the reducer lag shown is the shards done but not reduced"
            );
            break before;
        }
        assert!(Instant::now() < deadline, "the ledger never held still");
    };
    assert!(
        done - reduced >= 2,
        "a real lag: {done} done, {reduced} reduced"
    );
    assert_eq!(
        shard_count(&env, &run, "state = 'dead'").await,
        0,
        "no dead shards in the lag"
    );

    // Paused, not running: in the header and in the list of runs.
    assert_eq!(browser.text("#run-state"), "paused");
    assert_eq!(
        browser.text(&format!("#runs li[data-run-id=\"{run}\"] .badge.n")),
        "paused"
    );
    assert_eq!(browser.text("#run-control"), "pause");

    // The killed mapper is flagged stale; the live one is not.
    let rows = browser.eval(
        "[...document.querySelectorAll('#workers tbody tr')].map((tr) => [tr.cells[0].textContent, tr.dataset.stale, tr.cells[tr.cells.length - 1].textContent.trim()])",
    );
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), workers.len());
    for r in rows {
        let name = r[0].as_str().unwrap();
        if name == killed_name {
            assert_eq!(r[1], "true", "{r}");
            assert_eq!(r[2], "stale", "the killed mapper is flagged stale: {r}");
        } else {
            assert_eq!(r[1], "false", "{r}");
            assert_eq!(r[2], "live", "{r}");
        }
    }
    let (colour, _) = browser.colours(&format!(
        "#workers tr[data-worker=\"{killed_name}\"] td.name"
    ));
    let (plain, _) = browser.colours("#workers tbody tr[data-stale=\"false\"] td.name");
    assert_ne!(colour, plain, "the stale row stands out");

    // A running run's health is checked: it passes here.
    assert_eq!(browser.text("#run-health"), "ok");
    drop(browser);
    screenshot_for_docs(&bin, &url, "dashboard-paused.png", 1100);
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_and_cancelled_runs_show_their_own_state_and_no_failing_health() {
    let bin = chromium();
    let env = TestEnv::with_certificates(4, 100).await;
    // A run that finished: a dry run in one process.
    let out = env.run(&["run", "--local", "--job", &job(CERTS), "--all"]);
    assert_eq!(out.status.code(), Some(0));
    let finished = run_of(&env, CERTS).await;
    // A run cancelled before any mapper took a shard.
    let coord = spawn_coordinator_with(&env, &["--job", &job(CERTS), "--all"]);
    let out = coordinator_output(coord);
    assert_eq!(out.status.code(), Some(0));
    let cancelled = run_of(&env, CERTS).await;
    assert_ne!(cancelled, finished);
    let out = env.run(&["cancel", &cancelled, "--wait-secs", "5"]);
    assert_eq!(out.status.code(), Some(0));

    let dash = Dashboard::start(&env);
    let s = dash.json(&format!("/api/runs/{finished}"));
    assert_eq!(s["state"], "done");
    assert!(s["health"].is_null(), "no health check once finished: {s}");
    let s = dash.json(&format!("/api/runs/{cancelled}"));
    assert_eq!(s["state"], "cancelled");
    assert!(s["health"].is_null(), "{s}");

    let mut browser = Browser::open(&bin, &dash.url(&finished));
    browser.rendered(&finished, 1);
    assert_eq!(browser.text("#run-state"), "done");
    for run in [&finished, &cancelled] {
        if run == &cancelled {
            browser.eval(&format!(
                "location.assign({}); true",
                serde_json::json!(dash.url(run))
            ));
            browser.rendered(run, 1);
        }
        // A null health is no failure: not "not ok", not red.
        let health = browser.text("#run-health");
        assert!(
            !health.contains("not ok") && !health.contains("fail"),
            "run {run} shows DB health {health:?}"
        );
        let (fg, bg) = browser.colours("#run-health");
        assert!(
            !reddish(fg) && !reddish(bg),
            "run {run}: DB health {health:?} is shown in red ({fg:?} on {bg:?})"
        );
    }

    // The cancelled run has its own badge: named so, and coloured neither as
    // a failed, a running, a done run nor as an unstyled badge.
    assert_eq!(browser.text("#run-state"), "cancelled");
    assert_eq!(
        browser.text(&format!("#runs li[data-run-id=\"{cancelled}\"] .badge.n")),
        "cancelled"
    );
    assert_eq!(
        browser.text(&format!("#runs li[data-run-id=\"{finished}\"] .badge.n")),
        "done"
    );
    let shown = browser.colours("#run-state");
    for other in ["badge", "badge s-failed", "badge s-running", "badge s-done"] {
        assert_ne!(
            shown,
            browser.badge_colours(other),
            "the cancelled badge looks like `{other}`"
        );
    }
    assert!(!reddish(shown.0) && !reddish(shown.1));
}

/// A finished commit run of the certificate job over every program with
/// one conflict (a row the application edited between the mapper's read
/// and its write) and one error (a revision that is not a JSON object),
/// committed and folded as the mapper and reducer do. Returns the run, the
/// conflict's key and the error's key.
async fn run_with_conflicts(env: &TestEnv) -> (String, String, String) {
    use backfill_job::{evaluate_row, JobSpec, RowInput, Scope};
    let bad: i32 = sqlx::query_scalar(
        "UPDATE wagtailcore_revision SET content = '\"not an object\"'::jsonb
         WHERE id = (SELECT c.certificate_page_revision_id FROM courses_programcertificate c
                     JOIN courses_program p ON p.id = c.program_id
                     WHERE p.readable_id = $1 AND NOT c.is_revoked
                     ORDER BY 1 LIMIT 1)
         RETURNING id",
    )
    .bind(backfill_demo::program_readable_id(0))
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let store = env.store().await;
    let spec = JobSpec::parse(&std::fs::read_to_string(job(CERTS)).unwrap()).unwrap();
    let run_id = plan_commit(&store, spec, Scope::All).await;
    let tasks = backfill_coordinator::pending_tasks(&store, &run_id)
        .await
        .unwrap();
    let rec = store.load_run(&run_id).await.unwrap().unwrap();
    let task = &tasks[0];
    let target = rec.spec.target(&task.target).unwrap();
    let backfill_store::ShardRows::Pending(rows) = store
        .fetch_shard(&run_id, target, task.shard_no, true)
        .await
        .unwrap()
    else {
        panic!("expected a fresh shard")
    };
    let normalised = store.normalised_columns(&target.table).await.unwrap();
    let empty = serde_json::Map::new();
    let evaluated: Vec<backfill_store::EvaluatedRow> = rows
        .into_iter()
        .map(|r| {
            let params = rec
                .plan
                .group(&r.group)
                .map(|g| &g.params)
                .unwrap_or(&empty);
            backfill_store::EvaluatedRow::evaluate(r, |key, columns, _| {
                evaluate_row(
                    target,
                    &RowInput {
                        key,
                        columns,
                        params,
                        normalised: &normalised,
                    },
                    None,
                )
            })
        })
        .collect();
    let victim = changing(&evaluated)[0].to_string();
    env.exec_with(EDIT_TITLE, &victim).await;
    let committed = commit_rows(
        &store,
        &run_id,
        target,
        task.shard_no,
        "mapper@test:1",
        evaluated,
        None,
    )
    .await;
    assert_eq!(committed.tally().counts.conflicts, 1);
    let runs = backfill_mapper::RunCache::default();
    for t in &tasks {
        let result = backfill_mapper::process_task(&store, &runs, t, "mapper@test:1")
            .await
            .unwrap();
        backfill_reducer::process_result(&store, &result)
            .await
            .unwrap();
    }
    let rec = store.load_run(&run_id).await.unwrap().unwrap();
    assert!(rec.state.is_finished(), "{}", rec.state);
    assert_eq!(rec.tally.counts.conflicts, 1);
    assert_eq!(rec.tally.counts.errors, 1);
    store.close().await;
    (run_id, victim, bad.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn conflicts_errors_and_groups_are_tables_and_a_header_click_sorts() {
    let bin = chromium();
    let env = TestEnv::with_certificates(8, 400).await;
    let (run, conflict, error) = run_with_conflicts(&env).await;
    let store = env.store().await;
    let rec = store.load_run(&run).await.unwrap().unwrap();
    let doc = backfill_job::formats::report_doc(&rec.view());
    store.close().await;

    let dash = Dashboard::start(&env);
    // The report API's JSON form is the JSON report.
    let api = dash.json(&format!("/api/runs/{run}/report?format=json"));
    assert_eq!(api, serde_json::to_value(&doc).unwrap());
    let (code, _) = http_get(dash.port, &format!("/api/runs/{run}/report?format=xml"));
    assert_eq!(code, 400);
    assert!(dash.json(&format!("/api/runs/{run}/report"))["text"].is_string());

    let url = dash.url(&run);
    let mut browser = Browser::open(&bin, &url);
    browser.rendered(&run, 1);

    // Conflicts and errors: one row per key, with its reason.
    let issues = browser.eval(
        "[...document.querySelectorAll('#issues tbody tr')].map((tr) => [...tr.cells].map((c) => c.textContent.trim()))",
    );
    let expected: Vec<Vec<String>> = doc
        .conflicts
        .iter()
        .map(|i| ("conflict", i))
        .chain(doc.errors.iter().map(|i| ("error", i)))
        .map(|(k, i)| vec![k.into(), i.target.clone(), i.key.clone(), i.message.clone()])
        .collect();
    assert_eq!(issues, serde_json::json!(expected));
    assert_eq!(issues[0][2], conflict.as_str());
    assert_eq!(issues[1][2], error.as_str());
    assert!(
        issues[1][3]
            .as_str()
            .unwrap()
            .starts_with("rule 0 (content): cannot set"),
        "{issues}"
    );

    // The per-group report: one row per group, in the report's order.
    let keys = |b: &mut Browser| -> Vec<(String, u64, u64)> {
        b.eval(
            "[...document.querySelectorAll('#groups tbody tr')].map((tr) => [tr.dataset.key, tr.cells[3].textContent, tr.cells[5].textContent])",
        )
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |v: &serde_json::Value| v.as_str().unwrap().replace(',', "").parse().unwrap();
            (r[0].as_str().unwrap().to_string(), n(&r[1]), n(&r[2]))
        })
        .collect()
    };
    let by_key: BTreeMap<String, (u64, u64)> = doc
        .groups
        .iter()
        .map(|g| (g.key.clone(), (g.rows.processed, g.refs)))
        .collect();
    let shown = keys(&mut browser);
    assert_eq!(
        shown.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        doc.groups.iter().map(|g| g.key.clone()).collect::<Vec<_>>()
    );
    for (k, rows, refs) in &shown {
        assert_eq!(by_key[k], (*rows, *refs), "group {k}");
    }
    let header = browser.eval(
        "[...document.querySelectorAll('#groups thead th')].map((th) => th.textContent.trim().toLowerCase())",
    );
    assert_eq!(
        header,
        serde_json::json!(["key", "label", "change", "rows", "changed", "refs"])
    );
    let mut distinct: Vec<u64> = by_key.values().map(|v| v.0).collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 3, "groups of different sizes: {by_key:?}");

    // A click on "Rows" sorts by rows, ascending; again, descending; the
    // order holds while the page keeps polling.
    let click = |b: &mut Browser, col: &str| {
        b.eval(&format!(
            "document.querySelector('#groups th[data-sort=\"{col}\"]').click(); true"
        ));
    };
    let sorted_by = |rows: &[(String, u64, u64)], f: fn(&(String, u64, u64)) -> u64, asc: bool| {
        rows.windows(2).all(|w| {
            if asc {
                f(&w[0]) <= f(&w[1])
            } else {
                f(&w[0]) >= f(&w[1])
            }
        })
    };
    click(&mut browser, "rows");
    let asc = keys(&mut browser);
    assert!(sorted_by(&asc, |r| r.1, true), "ascending by rows: {asc:?}");
    assert_eq!(asc.len(), doc.groups.len());
    assert_eq!(
        browser.eval(
            "document.querySelector('#groups th[data-sort=\"rows\"]').getAttribute('aria-sort')"
        ),
        "ascending"
    );
    browser.rendered(&run, 2);
    assert_eq!(keys(&mut browser), asc, "the order holds across refreshes");
    click(&mut browser, "rows");
    let desc = keys(&mut browser);
    assert!(
        sorted_by(&desc, |r| r.1, false),
        "descending by rows: {desc:?}"
    );
    assert_ne!(desc, asc);
    click(&mut browser, "refs");
    let refs = keys(&mut browser);
    assert!(
        sorted_by(&refs, |r| r.2, true),
        "ascending by refs: {refs:?}"
    );
    click(&mut browser, "key");
    let by_name: Vec<String> = keys(&mut browser).into_iter().map(|r| r.0).collect();
    let mut expected_names: Vec<String> = by_key.keys().cloned().collect();
    expected_names.sort_by_key(|k| k.to_lowercase());
    assert_eq!(by_name, expected_names, "ascending by key");
    assert_eq!(
        browser.eval(
            "document.querySelector('#groups th[data-sort=\"key\"]').getAttribute('aria-sort')"
        ),
        "ascending"
    );
    drop(browser);
    screenshot_for_docs(&bin, &url, "dashboard-conflicts.png", 1300);
}

/// A run of 10,000 shards: the grid draws 2,000 cells of 5 shards each,
/// each cell showing the worst that happened to its shards, else work in
/// hand, else how far it is done, with its shards' states in its title.
#[tokio::test(flavor = "multi_thread")]
async fn a_grid_of_10000_shards_draws_a_cell_per_5_shards() {
    const RUN: &str = "grid-run";
    let bin = chromium();
    let env = TestEnv::new().await;
    env.store().await.close().await;
    let spec = std::fs::read_to_string(job("program-certificate-titles")).unwrap();
    // Shards 0–4999 done, the rest pending.
    backfill_bench::monitor::build_big_run(&env.pool, RUN, &spec, 10_000, 200)
        .await
        .unwrap();
    for (shards, state) in [
        ("5000, 5001", "done"),
        ("6003", "running"),
        ("7000", "dead"),
    ] {
        sqlx::query(&format!(
            "UPDATE backfill_shard SET state = '{state}' WHERE run_id = $1 AND shard_no IN ({shards})"
        ))
        .bind(RUN)
        .execute(&env.pool)
        .await
        .unwrap();
    }
    let dash = Dashboard::start(&env);
    let mut browser = Browser::open(&bin, &dash.url(RUN));
    browser.rendered(RUN, 1);
    let cells = browser.eval(
        "[...document.querySelectorAll('#grid .cell')].map((c) => [c.dataset.shard, c.dataset.state, c.title])",
    );
    let cells = cells.as_array().unwrap();
    assert_eq!(cells.len(), 2000);
    assert_eq!(
        browser.eval("document.getElementById('grid').dataset.perCell"),
        "5"
    );
    assert_eq!(browser.text("#grid-note"), "each cell is 5 shards");
    let cell = |i: usize| {
        let c = cells[i].as_array().unwrap();
        (
            c[0].as_str().unwrap().to_string(),
            c[1].as_str().unwrap().to_string(),
            c[2].as_str().unwrap().to_string(),
        )
    };
    let want = |i: usize, key: &str, state: &str, title: &str| {
        assert_eq!(
            cell(i),
            (key.to_string(), state.to_string(), title.to_string()),
            "cell {i}"
        );
    };
    want(0, "0-4", "done", "shards 0–4: 5 done");
    want(999, "4995-4999", "done", "shards 4995–4999: 5 done");
    want(
        1000,
        "5000-5004",
        "partial",
        "shards 5000–5004: 3 pending, 2 done",
    );
    want(1001, "5005-5009", "pending", "shards 5005–5009: 5 pending");
    want(
        1200,
        "6000-6004",
        "running",
        "shards 6000–6004: 4 pending, 1 running",
    );
    want(
        1400,
        "7000-7004",
        "dead",
        "shards 7000–7004: 4 pending, 1 dead",
    );
    want(1999, "9995-9999", "pending", "shards 9995–9999: 5 pending");
    let counts = cells
        .iter()
        .fold(BTreeMap::<String, u32>::new(), |mut m, c| {
            *m.entry(c[1].as_str().unwrap().to_string()).or_default() += 1;
            m
        });
    assert_eq!(
        counts,
        BTreeMap::from([
            ("dead".to_string(), 1),
            ("done".to_string(), 1000),
            ("partial".to_string(), 1),
            ("pending".to_string(), 997),
            ("running".to_string(), 1),
        ])
    );
    // The partly done cell is filled to its share done.
    assert_eq!(
        browser.eval(
            "document.querySelector('#grid .cell[data-shard=\"5000-5004\"]').style.getPropertyValue('--p')"
        ),
        "40%"
    );
    assert!(!browser
        .eval("document.getElementById('legend-partial').hidden")
        .as_bool()
        .unwrap());

    // The report (megabytes, for a run of 50,000 groups) is fetched again
    // when a shard is folded, not every second with the status.
    let report_fetches = |b: &mut Browser| {
        b.eval("performance.getEntriesByType('resource').filter((e) => e.name.includes('/report')).length")
            .as_u64()
            .unwrap()
    };
    browser.rendered(RUN, 3);
    assert_eq!(report_fetches(&mut browser), 1, "nothing was folded");
    sqlx::query(
        "UPDATE backfill_shard SET reduced_at = now() WHERE run_id = $1 AND shard_no = 5000",
    )
    .bind(RUN)
    .execute(&env.pool)
    .await
    .unwrap();
    browser.rendered(RUN, 2);
    assert_eq!(report_fetches(&mut browser), 2, "a shard was folded");
}
