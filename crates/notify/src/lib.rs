//! Webhook notifications of a run's life: started, finished, failed,
//! cancelled, a dead-lettered shard, and a stall.
//!
//! Where they go: the spec's `[notify] urls`, plus the process's own
//! `--notify URL` / `BACKFILL_NOTIFY_URL` (installed once at start with
//! [`install`]). Every notification is a POST of one JSON document (the
//! [`Notice`], a documented contract: fields are added, never renamed), or
//! with `format = "slack"` a Slack-compatible `{"text": …}`.
//!
//! Delivery never blocks or fails a run: each is a task of its own, with a
//! timeout per attempt ([`Settings::timeout`]), tried [`ATTEMPTS`] times
//! with backoff, and its outcome is recorded in the ledger's history (an
//! event `notify` naming the event, the redacted URL and what happened).
//! A one-shot command waits for deliveries in flight at exit, at most
//! [`Settings::patience`] ([`flush`]). URLs are shown only as scheme and
//! host: a webhook's path or query is often its secret.

use backfill_job::report::{summary_line, RunView};
use backfill_job::spec::{check_webhook_url, NotifyFormat, NotifySpec};
use backfill_job::tally::Counts;
use backfill_job::RunState;
use backfill_store::{RunRecord, Store};
use serde::Serialize;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Attempts per delivery.
pub const ATTEMPTS: u32 = 3;
/// The version of the [`Notice`] document.
pub const NOTICE_VERSION: u32 = 1;

/// What happened to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Finished,
    Failed,
    Cancelled,
    ShardDead,
    Stalled,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "started",
            Event::Finished => "finished",
            Event::Failed => "failed",
            Event::Cancelled => "cancelled",
            Event::ShardDead => "shard_dead",
            Event::Stalled => "stalled",
        }
    }
}

/// The JSON body of a notification (format `json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Notice {
    /// [`NOTICE_VERSION`].
    pub v: u32,
    /// `started`, `finished`, `failed`, `cancelled`, `shard_dead`, `stalled`.
    pub event: String,
    pub run_id: String,
    pub job: String,
    /// `dry-run` or `commit`.
    pub mode: String,
    /// `forward`, `revert of RUN`, `retry of RUN`, `sample 0.1`, `verify`.
    pub kind: String,
    /// The run's state when it was sent: `running`, `done`, `failed`, `cancelled`.
    pub state: String,
    /// The `Summary:` line, once the run has ended.
    pub summary: Option<String>,
    /// The report's row counts so far (all of them once the run has ended).
    pub counts: Counts,
    /// The shard, for `shard_dead`.
    pub shard: Option<u32>,
    /// One line for people.
    pub message: String,
    /// When it was sent, UTC, RFC 3339.
    pub at: String,
}

impl Notice {
    /// The notice of `event` for a run as the ledger holds it; `detail`
    /// ends the message (a dead shard's error, how long a stall lasted).
    pub fn of(rec: &RunRecord, event: Event, shard: Option<u32>, detail: Option<&str>) -> Notice {
        let view: RunView<'_> = rec.view();
        let ended = rec.state.is_finished();
        let summary = ended.then(|| rec.summary.clone().unwrap_or_else(|| summary_line(&view)));
        let what = match event {
            Event::Started => "started".to_string(),
            Event::Finished => "finished".to_string(),
            Event::Failed => "failed: some rows had errors".to_string(),
            Event::Cancelled => "was cancelled".to_string(),
            Event::ShardDead => format!(
                "dead-lettered shard {}: its rows are counted as errors",
                shard.map_or_else(|| "?".into(), |s| s.to_string())
            ),
            Event::Stalled => "stalled: no shard finished".to_string(),
        };
        let mut message = format!(
            "backfill {} run {} of job {} ({}) {what}",
            rec.mode.as_str(),
            rec.run_id,
            rec.spec.name,
            view.kind_label()
        );
        if let Some(d) = detail {
            message.push_str(": ");
            message.push_str(d);
        }
        if let Some(s) = &summary {
            message.push_str(". ");
            message.push_str(s);
        }
        Notice {
            v: NOTICE_VERSION,
            event: event.as_str().to_string(),
            run_id: rec.run_id.clone(),
            job: rec.spec.name.clone(),
            mode: rec.mode.as_str().to_string(),
            kind: view.kind_label(),
            state: rec.state.to_string(),
            summary,
            counts: rec.tally.counts,
            shard,
            message,
            at: backfill_store::status::rfc3339(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            ),
        }
    }

    /// The body in a format.
    pub fn body(&self, format: NotifyFormat) -> serde_json::Value {
        match format {
            NotifyFormat::Json => serde_json::to_value(self).unwrap_or_default(),
            NotifyFormat::Slack => serde_json::json!({ "text": self.message }),
        }
    }
}

/// The process's own notification settings (from the command line or the
/// environment), beside each run's `[notify]`.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Webhooks every run of this process notifies (`--notify`).
    pub urls: Vec<String>,
    /// Overrides the spec's format (`--notify-format`).
    pub format: Option<NotifyFormat>,
    /// Time allowed for one attempt (connect, send and answer).
    pub timeout: Duration,
    /// How long a command waits at exit for deliveries in flight.
    pub patience: Duration,
    /// Names the sender in the ledger's history.
    pub sender: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            urls: Vec::new(),
            format: None,
            timeout: Duration::from_secs(5),
            patience: Duration::from_secs(30),
            sender: "backfill".into(),
        }
    }
}

impl Settings {
    /// Checks every URL, naming the one that is wrong (redacted).
    pub fn check(&self) -> Result<(), String> {
        for u in &self.urls {
            check_webhook_url(u).map_err(|e| format!("--notify {}: {e}", redact_webhook(u)))?;
        }
        Ok(())
    }
}

struct Notifier {
    settings: Settings,
    client: Option<reqwest::Client>,
    tracker: TaskTracker,
}

static NOTIFIER: OnceLock<Notifier> = OnceLock::new();

/// Sets this process's notification settings; the first call wins. A
/// process that never calls it still notifies each run's `[notify]` URLs.
pub fn install(settings: Settings) {
    let _ = NOTIFIER.set(Notifier::new(settings));
}

fn notifier() -> &'static Notifier {
    NOTIFIER.get_or_init(|| Notifier::new(Settings::default()))
}

impl Notifier {
    fn new(settings: Settings) -> Notifier {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("backfill/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| warn!(error = %e, "cannot build the notification client; notifications are off"))
            .ok();
        Notifier {
            settings,
            client,
            tracker: TaskTracker::new(),
        }
    }
}

/// Sends `event` of a run to its webhooks, in the background. Reads the
/// run from the ledger; nothing is sent (and nothing fails) when there are
/// no webhooks or the run cannot be read.
pub async fn notify(
    store: &Store,
    run_id: &str,
    event: Event,
    shard: Option<u32>,
    detail: Option<&str>,
) {
    let n = notifier();
    let rec = match read_if_wanted(store, run_id).await {
        Ok(Some(rec)) => rec,
        Ok(None) => return,
        Err(e) => {
            if !n.settings.urls.is_empty() {
                warn!(run = %run_id, event = event.as_str(), error = %e, "cannot read the run to notify of it");
            }
            return;
        }
    };
    send(store, &rec, event, shard, detail);
}

/// Sends the end of a run: `finished`, `failed` or `cancelled` by the
/// state the ledger holds.
pub async fn notify_end(store: &Store, run_id: &str) {
    let Ok(Some(rec)) = read_if_wanted(store, run_id).await else {
        return;
    };
    let event = match rec.state {
        RunState::Failed => Event::Failed,
        RunState::Cancelled => Event::Cancelled,
        _ => Event::Finished,
    };
    send(store, &rec, event, None, None);
}

/// The run with its plan, for a notice; `None` when the ledger has no such
/// run, or when nobody is to be told of it (no webhook in the spec or the
/// settings): then only its totals are read, not its plan of groups, which
/// a run of 50,000 groups makes large.
async fn read_if_wanted(
    store: &Store,
    run_id: &str,
) -> Result<Option<RunRecord>, backfill_store::StoreError> {
    let n = notifier();
    let Some(totals) = store.load_run_totals(run_id).await? else {
        return Ok(None);
    };
    if n.client.is_none() || targets(&totals.spec.notify, &n.settings.urls).is_empty() {
        return Ok(None);
    }
    store.load_run_plan(run_id).await
}

/// Sends `event` of a run already read, in the background.
pub fn send(
    store: &Store,
    rec: &RunRecord,
    event: Event,
    shard: Option<u32>,
    detail: Option<&str>,
) {
    let n = notifier();
    let urls = targets(&rec.spec.notify, &n.settings.urls);
    let Some(client) = n.client.clone() else {
        return;
    };
    if urls.is_empty() {
        return;
    }
    let format = n.settings.format.unwrap_or(rec.spec.notify.format);
    let body = Notice::of(rec, event, shard, detail).body(format);
    for url in urls {
        let (client, body, store) = (client.clone(), body.clone(), store.clone());
        let run_id = rec.run_id.clone();
        let sender = n.settings.sender.clone();
        let timeout = n.settings.timeout;
        n.tracker.spawn(async move {
            let outcome = deliver(&client, &url, &body, timeout).await;
            let shown = redact_webhook(&url);
            let detail = format!("{} → {shown}: {outcome}", event.as_str());
            match &outcome {
                Delivery::Delivered { .. } => info!(run = %run_id, "notification {detail}"),
                Delivery::Failed { .. } => warn!(run = %run_id, "notification {detail}"),
            }
            if let Err(e) = store
                .record_event(&run_id, "notify", &sender, Some(&detail))
                .await
            {
                warn!(run = %run_id, error = %e, "cannot record the notification in the ledger");
            }
        });
    }
}

/// Waits for the deliveries in flight, at most the installed patience.
/// Returns false when some were still going.
pub async fn flush() -> bool {
    let n = notifier();
    n.tracker.close();
    let done = tokio::time::timeout(n.settings.patience, n.tracker.wait())
        .await
        .is_ok();
    if !done {
        warn!(
            "notifications still being delivered after {:?}; not waiting longer",
            n.settings.patience
        );
    }
    done
}

/// The spec's webhooks then the process's, each once.
fn targets(spec: &NotifySpec, own: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for u in spec.urls.iter().chain(own) {
        if !out.contains(u) {
            out.push(u.clone());
        }
    }
    out
}

/// What became of one notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    Delivered { status: u16, attempts: u32 },
    Failed { last: String, attempts: u32 },
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Delivery::Delivered { status, attempts } => {
                write!(f, "delivered (HTTP {status}) after {attempts} attempt(s)")
            }
            Delivery::Failed { last, attempts } => {
                write!(f, "not delivered after {attempts} attempt(s): {last}")
            }
        }
    }
}

/// POSTs `body`, up to [`ATTEMPTS`] times with 1 s then 4 s between them;
/// a 2xx answer is delivered, anything else (or no answer within
/// `timeout`) is tried again.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Delivery {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        let sent = client.post(url).timeout(timeout).json(body).send().await;
        match sent {
            Ok(r) if r.status().is_success() => {
                return Delivery::Delivered {
                    status: r.status().as_u16(),
                    attempts: attempt,
                }
            }
            Ok(r) => last = format!("HTTP {}", r.status().as_u16()),
            Err(e) if e.is_timeout() => last = format!("no answer within {timeout:?}"),
            Err(e) if e.is_connect() => last = "cannot connect".into(),
            Err(_) => last = "the request failed".into(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(Duration::from_secs(4u64.pow(attempt - 1))).await;
        }
    }
    Delivery::Failed {
        last,
        attempts: ATTEMPTS,
    }
}

/// A webhook URL as logs and the ledger show it: scheme and host only (a
/// webhook's path or query is often its secret; so is a userinfo).
pub fn redact_webhook(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(a URL)".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let hidden = rest.len() > authority.len() || authority.contains('@');
    format!("{scheme}://{host}{}", if hidden { "/…" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_show_scheme_and_host_only() {
        assert_eq!(
            redact_webhook("https://hooks.slack.com/services/T0/B0/XXXX"),
            "https://hooks.slack.com/…"
        );
        assert_eq!(
            redact_webhook("http://user:pw@127.0.0.1:9000"),
            "http://127.0.0.1:9000/…"
        );
        assert_eq!(redact_webhook("http://h:1"), "http://h:1");
        assert_eq!(redact_webhook("http://h/?token=s"), "http://h/…");
        assert_eq!(redact_webhook("nonsense"), "(a URL)");
    }

    #[test]
    fn targets_join_the_spec_and_the_process_once_each() {
        let spec = NotifySpec {
            urls: vec!["http://a/1".into(), "http://b/2".into()],
            ..NotifySpec::default()
        };
        assert_eq!(
            targets(&spec, &["http://b/2".into(), "http://c/3".into()]),
            vec!["http://a/1", "http://b/2", "http://c/3"]
        );
    }

    #[test]
    fn bad_urls_are_named_redacted() {
        let s = Settings {
            urls: vec!["ftp://h/secret".into()],
            ..Settings::default()
        };
        let e = s.check().unwrap_err();
        assert!(e.contains("ftp://h/…") && !e.contains("secret"), "{e}");
    }
}
