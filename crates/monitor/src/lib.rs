//! The HTTP edge every long-running role serves on `--metrics-addr`:
//!
//! - `GET /metrics`: Prometheus text, from the `metrics` facade the roles
//!   record into (shards started/finished/failed, rows by outcome, shard
//!   durations) plus gauges read from the ledger at scrape time (each
//!   running run's shards by state, rows per second, ETA) and the queue
//!   depths.
//! - `GET /healthz`: liveness — the process serves requests.
//! - `GET /readyz`: readiness — the database answers and the broker is
//!   reachable (503 with the reason otherwise).
//! - With the dashboard on (`backfill dashboard`, or the reducer): `/`, the
//!   page (one file compiled into the binary: no CDN, works offline), and
//!   its JSON API under `/api/runs` — the same documents `status --json`
//!   prints.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backfill_queue::{Broker, QueueNames};
use backfill_store::Store;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The dashboard page, compiled in.
pub const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// How often queue depths and broker reachability are refreshed.
const BROKER_POLL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    #[error("the HTTP server stopped: {0}")]
    Serve(std::io::Error),
}

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn install_recorder() -> Result<PrometheusHandle, MonitorError> {
    if let Some(h) = RECORDER.get() {
        return Ok(h.clone());
    }
    let buckets = [
        0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("backfill_shard_duration_seconds".into()),
            &buckets,
        )
        .map_err(|e| MonitorError::Recorder(e.to_string()))?
        // A run that dropped out of the recent runs read at scrape time
        // stops being set; its series go after ten minutes.
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(Duration::from_secs(600)),
        )
        .install_recorder()
        .map_err(|e| MonitorError::Recorder(e.to_string()))?;
    describe();
    let _ = RECORDER.set(handle.clone());
    Ok(RECORDER.get().cloned().unwrap_or(handle))
}

/// `# HELP` for every metric any role exports, with its unit.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "backfill_shards_started_total",
        Unit::Count,
        "Shard attempts this mapper started."
    );
    describe_counter!(
        "backfill_shards_finished_total",
        Unit::Count,
        "Shards this mapper committed."
    );
    describe_counter!(
        "backfill_shards_failed_total",
        Unit::Count,
        "Shard attempts of this mapper that failed (retried or dead-lettered); 0 from a run's first shard."
    );
    describe_counter!(
        "backfill_rows_total",
        Unit::Count,
        "Rows this mapper finished, by outcome (changed, unchanged, skipped, conflict, error)."
    );
    describe_histogram!(
        "backfill_shard_duration_seconds",
        Unit::Seconds,
        "Time to read, evaluate and commit one shard."
    );
    describe_counter!(
        "backfill_results_folded_total",
        Unit::Count,
        "Shard results this reducer folded into their run."
    );
    describe_counter!(
        "backfill_runs_finished_total",
        Unit::Count,
        "Runs this reducer finished."
    );
    describe_gauge!(
        "backfill_queue_messages",
        Unit::Count,
        "Ready messages in each of the run queues."
    );
    describe_gauge!(
        "backfill_run_shards",
        Unit::Count,
        "Shards of a recent run by state, from the ledger at scrape time."
    );
    describe_gauge!(
        "backfill_run_shards_planned",
        Unit::Count,
        "Shards a recent run was cut into."
    );
    describe_gauge!(
        "backfill_run_shards_reduced",
        Unit::Count,
        "Shards of a recent run whose results the reducer folded."
    );
    describe_gauge!(
        "backfill_run_health_ok",
        "1 while the database health check passes (or the run has finished), 0 while it holds a running run."
    );
    describe_gauge!(
        "backfill_run_rows_processed",
        Unit::Count,
        "Rows a recent run has processed, as folded by the reducer."
    );
    describe_gauge!(
        "backfill_run_rows_per_second",
        "Rows of finished shards per second since the run's first shard started."
    );
    describe_gauge!(
        "backfill_run_eta_seconds",
        Unit::Seconds,
        "Seconds left at the current rate; NaN while paused or unknown, 0 once finished."
    );
    describe_gauge!(
        "backfill_run_paused",
        "1 while a running run is paused, else 0."
    );
    describe_gauge!(
        "backfill_run_window_open",
        "For a run with windows: 1 while one is open and the run is running, else 0."
    );
    describe_gauge!(
        "backfill_run_window_opens_in_seconds",
        Unit::Seconds,
        "For a running run waiting for its window: seconds until the next opens; 0 while open or ended."
    );
    describe_gauge!(
        "backfill_run_state",
        "1 for the state a recent run is in (running, done, failed, cancelled), 0 for the others."
    );
}

/// What the endpoints read.
#[derive(Clone)]
pub struct MonitorState {
    pub role: String,
    pub store: Store,
    /// The broker to check for readiness and read queue depths from.
    pub amqp: Option<(String, QueueNames)>,
    /// Serve the dashboard and its API too.
    pub dashboard: bool,
    broker_ok: Arc<AtomicBool>,
    broker_error: Arc<Mutex<Option<String>>>,
    prometheus: PrometheusHandle,
}

impl MonitorState {
    pub fn new(
        role: &str,
        store: Store,
        amqp: Option<(String, QueueNames)>,
        dashboard: bool,
    ) -> Result<MonitorState, MonitorError> {
        Ok(MonitorState {
            role: role.to_string(),
            store,
            broker_ok: Arc::new(AtomicBool::new(amqp.is_none())),
            broker_error: Arc::new(Mutex::new(None)),
            amqp,
            dashboard,
            prometheus: install_recorder()?,
        })
    }
}

/// The routes, for tests and for [`serve`].
pub fn router(state: MonitorState) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready));
    if state.dashboard {
        r = r
            .route("/", get(|| async { Html(DASHBOARD_HTML) }))
            .route("/api/runs", get(api_runs))
            .route("/api/runs/{id}", get(api_run))
            .route("/api/runs/{id}/shards", get(api_shards))
            .route("/api/runs/{id}/throughput", get(api_throughput))
            .route("/api/runs/{id}/report", get(api_report));
    }
    r.with_state(state)
}

/// Binds `addr` (before returning, so a bad address fails the command at
/// once) and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    state: MonitorState,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, MonitorError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MonitorError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    info!(addr = %local, role = %state.role, dashboard = state.dashboard, "serving metrics and health");
    if state.amqp.is_some() {
        tokio::spawn(watch_broker(state.clone(), shutdown.clone()));
    }
    let app = router(state);
    let limits = ConnLimits::from_env();
    Ok(tokio::spawn(accept_loop(listener, app, limits, shutdown)))
}

/// Default for how long a client may take to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// At most this many connections are served at once; the endpoints are for
/// a scraper, probes and a few dashboard viewers, not for the public.
const MAX_CONNECTIONS: usize = 256;

#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    header_read_timeout: Duration,
    max_connections: usize,
}

impl ConnLimits {
    /// `BACKFILL_HTTP_HEADER_TIMEOUT_SECS` shortens the header-read timeout
    /// (tests use it); an unreadable value keeps the default.
    fn from_env() -> ConnLimits {
        let header_read_timeout = std::env::var("BACKFILL_HTTP_HEADER_TIMEOUT_SECS")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|s| *s > 0)
            .map(Duration::from_secs)
            .unwrap_or(HEADER_READ_TIMEOUT);
        ConnLimits {
            header_read_timeout,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

/// Serves each connection with hyper's HTTP/1 header-read timeout, so a
/// client that connects and sends nothing (or half a request line) is
/// closed instead of being held for ever; a semaphore caps the connections
/// served at once, and one over the cap is closed at once rather than
/// queued (a flood must not pile up file descriptors).
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: back off briefly rather
                // than spin.
                warn!(error = %e, "monitor endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            warn!(
                limit = limits.max_connections,
                "monitor endpoint: too many connections; closing a new one"
            );
            drop(stream);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

/// Keeps a broker connection to read queue depths and to know whether the
/// broker is reachable; reconnects when it goes away.
async fn watch_broker(state: MonitorState, shutdown: CancellationToken) {
    let Some((url, names)) = state.amqp.clone() else {
        return;
    };
    let mut broker: Option<Broker> = None;
    loop {
        if broker.as_ref().is_none_or(|b| !b.is_connected()) {
            // Without declaring the queues: a watcher creates nothing.
            broker = match Broker::connect_to_watch(&url, names.clone()).await {
                Ok(b) => Some(b),
                Err(e) => {
                    set_broker(&state, Err(e.to_string()));
                    None
                }
            };
        }
        if let Some(b) = &broker {
            let mut ok = true;
            for q in [&names.tasks, &names.results, &names.dead] {
                // A queue no worker has declared yet holds nothing.
                match b.depth_if_declared(q).await {
                    Ok(n) => metrics::gauge!("backfill_queue_messages", "queue" => q.clone())
                        .set(n.unwrap_or(0) as f64),
                    Err(e) => {
                        ok = false;
                        set_broker(&state, Err(e.to_string()));
                    }
                }
            }
            if ok {
                set_broker(&state, Ok(()));
            } else {
                broker = None;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(BROKER_POLL) => {}
        }
    }
    if let Some(b) = broker {
        b.close().await;
    }
}

fn set_broker(state: &MonitorState, r: Result<(), String>) {
    state.broker_ok.store(r.is_ok(), Ordering::Relaxed);
    if let Ok(mut e) = state.broker_error.lock() {
        *e = r.err();
    }
}

async fn ready(State(s): State<MonitorState>) -> Response {
    let db = tokio::time::timeout(Duration::from_secs(3), s.store.ping()).await;
    let mut problems = Vec::new();
    match db {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("database: {e}")),
        Err(_) => problems.push("database: no answer within 3 s".to_string()),
    }
    if !s.broker_ok.load(Ordering::Relaxed) {
        let why = s
            .broker_error
            .lock()
            .ok()
            .and_then(|e| e.clone())
            .unwrap_or_else(|| "not connected yet".into());
        problems.push(format!("broker: {why}"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<MonitorState>) -> Response {
    // Ledger gauges of the runs in progress, read at scrape time so every
    // replica reports the same, true figures.
    if let Ok(runs) = s.store.run_statuses(20).await {
        // Recent runs, finished ones too: a finished run carries its final,
        // true figures and its state, never the last "in progress" ones.
        for r in &runs {
            let running = r.state == "running";
            let l = |k: &'static str, v: String| (k, v);
            let base = [l("run", r.run_id.clone()), l("job", r.job.clone())];
            for (state, n) in [
                ("pending", r.shards.pending),
                ("running", r.shards.running),
                ("done", r.shards.done),
                ("failed", r.shards.failed),
                ("dead", r.shards.dead),
            ] {
                metrics::gauge!("backfill_run_shards", "run" => r.run_id.clone(), "job" => r.job.clone(), "state" => state)
                    .set(n as f64);
            }
            for state in ["running", "done", "failed", "cancelled"] {
                metrics::gauge!("backfill_run_state", "run" => r.run_id.clone(), "job" => r.job.clone(), "state" => state)
                    .set(if r.state == state { 1.0 } else { 0.0 });
            }
            metrics::gauge!("backfill_run_shards_planned", &base).set(r.shards.total as f64);
            metrics::gauge!("backfill_run_shards_reduced", &base).set(r.shards.reduced as f64);
            // The health check as mappers see it: 0 while it holds a running
            // run; a finished run is held by nothing.
            let full = if running {
                s.store.run_status(&r.run_id).await.ok().flatten()
            } else {
                None
            };
            let ok = !running
                || full
                    .as_ref()
                    .and_then(|f| f.health.as_ref())
                    .map(|h| h.ok)
                    .unwrap_or(true);
            // A run with windows: whether one is open, and when the next
            // opens while it waits (0 while open, and once it has ended).
            let window = full.as_ref().and_then(|f| f.window.as_ref());
            if let Some(w) = window.or(r.window.as_ref()) {
                metrics::gauge!("backfill_run_window_open", &base).set(if running && w.open {
                    1.0
                } else {
                    0.0
                });
                metrics::gauge!("backfill_run_window_opens_in_seconds", &base).set(if running {
                    w.opens_in_seconds.unwrap_or(0.0)
                } else {
                    0.0
                });
            }
            metrics::gauge!("backfill_run_health_ok", &base).set(if ok { 1.0 } else { 0.0 });
            metrics::gauge!("backfill_run_rows_per_second", &base).set(r.rows_per_sec);
            metrics::gauge!("backfill_run_rows_processed", &base).set(r.rows.processed as f64);
            metrics::gauge!("backfill_run_eta_seconds", &base).set(if running {
                r.eta_seconds.unwrap_or(f64::NAN)
            } else {
                0.0
            });
            metrics::gauge!("backfill_run_paused", &base).set(if running && r.control == "pause" {
                1.0
            } else {
                0.0
            });
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.prometheus.render(),
    )
        .into_response()
}

fn api_error(status: StatusCode, msg: String) -> Response {
    (status, Json(serde_json::json!({ "error": msg }))).into_response()
}

/// The database's own message can name tables, SQL and hosts: it goes to
/// the log, and the client gets a generic message.
fn store_error(e: backfill_store::StoreError) -> Response {
    warn!(error = %e, "dashboard API: ledger query failed");
    api_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the ledger could not be read; see the server's log".into(),
    )
}

/// Run ids are short printable tokens; anything else (NUL, control
/// characters, a huge path segment) is refused before it reaches the
/// database, which would answer with an error rather than "no such run".
const MAX_RUN_ID_LEN: usize = 128;

fn bad_run_id(id: &str) -> Option<Response> {
    if id.is_empty() || id.len() > MAX_RUN_ID_LEN || id.chars().any(char::is_control) {
        Some(api_error(StatusCode::BAD_REQUEST, "bad run id".into()))
    } else {
        None
    }
}

fn no_run(id: &str) -> Response {
    api_error(StatusCode::NOT_FOUND, format!("no run {id} in the ledger"))
}

/// The answer to a request about run `id` when there is no such run (or
/// the id is refused, or the ledger cannot say); `None` when it is there.
async fn unknown_run(s: &MonitorState, id: &str) -> Option<Response> {
    if let Some(r) = bad_run_id(id) {
        return Some(r);
    }
    match s.store.run_exists(id).await {
        Ok(true) => None,
        Ok(false) => Some(no_run(id)),
        Err(e) => Some(store_error(e)),
    }
}

async fn api_runs(State(s): State<MonitorState>) -> Response {
    match s.store.run_statuses(50).await {
        Ok(runs) => Json(serde_json::json!({ "runs": runs })).into_response(),
        Err(e) => store_error(e),
    }
}

async fn api_run(State(s): State<MonitorState>, Path(id): Path<String>) -> Response {
    if let Some(r) = bad_run_id(&id) {
        return r;
    }
    match s.store.run_status(&id).await {
        Ok(Some(r)) => Json(r).into_response(),
        Ok(None) => no_run(&id),
        Err(e) => store_error(e),
    }
}

async fn api_shards(State(s): State<MonitorState>, Path(id): Path<String>) -> Response {
    if let Some(r) = unknown_run(&s, &id).await {
        return r;
    }
    match s.store.shard_grid(&id).await {
        Ok(cells) => Json(serde_json::json!({ "shards": cells })).into_response(),
        Err(e) => store_error(e),
    }
}

async fn api_throughput(State(s): State<MonitorState>, Path(id): Path<String>) -> Response {
    if let Some(r) = unknown_run(&s, &id).await {
        return r;
    }
    match s.store.throughput(&id).await {
        Ok(t) => Json(t).into_response(),
        Err(e) => store_error(e),
    }
}

/// `?format=` of the report endpoint.
#[derive(Debug, serde::Deserialize)]
struct ReportQuery {
    format: Option<String>,
}

/// `GET /api/runs/{id}/report`: `{"text"}`, the text report; with
/// `?format=json`, the JSON report `report --format json` prints (groups,
/// counts, conflicts and errors by key).
async fn api_report(
    State(s): State<MonitorState>,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Response {
    if let Some(r) = bad_run_id(&id) {
        return r;
    }
    let json = match q.format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(_) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "unknown report format (expected text or json)".into(),
            )
        }
    };
    match s.store.load_run(&id).await {
        Ok(Some(rec)) if json => {
            Json(backfill_job::formats::report_doc(&rec.view())).into_response()
        }
        Ok(Some(rec)) => Json(serde_json::json!({
            "text": backfill_job::report::render_report(&rec.view())
        }))
        .into_response(),
        Ok(None) => no_run(&id),
        Err(e) => store_error(e),
    }
}
