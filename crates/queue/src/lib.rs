//! The broker edge: RabbitMQ topology, publishing with confirms, consuming
//! with explicit acks.
//!
//! Three durable quorum queues per deployment, named from a prefix
//! (`BACKFILL_QUEUE_PREFIX`, default `backfill`): `<prefix>.tasks` carries
//! shard tasks to mappers, `<prefix>.results` carries shard results to
//! reducers, and `<prefix>.dead` receives tasks that failed on every
//! attempt: a mapper gives up on a shard after a few failures and rejects
//! it, or the broker dead-letters it after [`DELIVERY_LIMIT`] deliveries
//! (a shard that kills its worker every time). The reducer records a
//! dead-lettered shard as failed in the ledger so the run ends. A message
//! that can never be processed (unreadable, or refused by the database
//! whatever the attempt) is logged once and moved to `<prefix>.parked`, a
//! fourth durable queue nobody consumes, for an operator to inspect. Messages are persistent and every publish waits for the
//! broker's confirm, so a task or result the publisher moved on from is on
//! disk at the broker. Consumers ack only after their effect is durable.
//!
//! The roles see the broker, and the in-process queue of the embedded mode,
//! through [`transport`]: publish to a [`Route`], take [`Delivery`]s from a
//! [`Source`], settle each one. No broker client type leaves this crate.
//! A worker's consume loop starts again after the broker went away, with a
//! growing backoff ([`consume_with_reconnects`]).

mod transport;

pub use transport::{
    is_foreign, return_foreign, AmqpSource, Delivery, LocalSource, Route, Sink, Source,
    FOREIGN_DELAY,
};

use backfill_job::{ShardResult, ShardTask};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

/// Errors of the broker edge.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot connect to RabbitMQ at {url}: {source}. Is it running? (start it with `rabbitmq-server -detached`, or set AMQP_URL)")]
    Connect {
        url: String,
        /// lapin's error with the URL's secrets hidden: its parse errors
        /// quote the URL ("Invalid URL: '…'").
        #[source]
        source: backfill_job::redact::RedactedError,
    },
    #[error("{what}: {source}")]
    Amqp {
        what: String,
        /// The broker client's error, kept as an error value so that its
        /// type stays inside this crate.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the broker refused (nacked) a message published to {0}")]
    Nacked(String),
    #[error("no confirm from the broker within {secs} s for a message published to {queue}")]
    NoConfirm { queue: String, secs: u64 },
    #[error("the connection to the broker was lost")]
    Lost,
    #[error("no answer from the broker within {secs} s to {what}")]
    NoAnswer { what: String, secs: u64 },
}

fn amqp(what: impl Into<String>) -> impl FnOnce(lapin::Error) -> QueueError {
    let what = what.into();
    move |source| QueueError::Amqp {
        what,
        source: Box::new(source),
    }
}

/// Whether the broker refused an operation because the queue does not exist.
fn is_not_found(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    e.downcast_ref::<lapin::Error>().is_some_and(|e| {
        matches!(e.kind(), lapin::ErrorKind::ProtocolError(p)
            if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
    })
}

/// Hides the credentials of a URL (userinfo password, secret query
/// parameters).
pub fn redact_url(url: &str) -> String {
    backfill_job::redact::redact_url(url)
}

/// Deliveries of one task before the broker dead-letters it.
pub const DELIVERY_LIMIT: i64 = 20;

/// How long closing a channel or connection waits for the broker's
/// close-ok. lapin waits for that reply without limit, and a connection
/// that failed under it (a broker restart, a reset) may never give one: a
/// worker must not hang in its goodbye.
pub const CLOSE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a publish waits for the broker's confirm. Past it the publish
/// is an error, and the caller publishes again on a new connection: a task
/// or result sent twice is harmless (the ledger counts a shard once), one
/// waited on forever stalls the run. A broker that blocks publishers (a
/// memory or disk alarm) is the usual cause.
pub const CONFIRM_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long connecting (the handshake and the queue declarations), opening a
/// channel, or settling a delivery may take. lapin waits without limit for a
/// connection the broker answers but does not open (a virtual host that does
/// not exist, a broker still starting after a restart), and for a frame on a
/// connection that failed under it: past this the attempt is an error, and a
/// worker connects again. A settle that timed out is harmless: the broker
/// delivers again whatever its channel left unacknowledged.
pub const ANSWER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Waits at most [`ANSWER_PATIENCE`] for `fut`, a step named `what`.
pub(crate) async fn patiently<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(ANSWER_PATIENCE, fut)
        .await
        .map_err(|_| QueueError::NoAnswer {
            what: what.to_string(),
            secs: ANSWER_PATIENCE.as_secs(),
        })?
}

/// How often a consumer proves its connection still carries frames, by
/// opening and closing a channel on it ([`Broker::lost`]).
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// How often a consumer checks that its connection is still up. lapin does
/// not always end a consumer's stream when the connection under it fails,
/// so a consume loop also watches the connection ([`Broker::lost`]).
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Closes a channel, waiting at most [`CLOSE_PATIENCE`] for the broker.
pub(crate) async fn close_channel(channel: &Channel, why: &str) {
    let _ = tokio::time::timeout(CLOSE_PATIENCE, channel.close(200, why.into())).await;
}

/// The backoff before a worker's first attempt to reconnect; it doubles
/// after each failure, up to [`RECONNECT_BACKOFF_MAX`].
const RECONNECT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);
/// The longest backoff between a worker's attempts to reconnect.
const RECONNECT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Runs a worker's consume loop (`consume`) until it ends or `shutdown` is
/// cancelled, starting it again after each failure (the broker went away)
/// once a backoff has passed: 200 ms at first, doubling up to 10 s. `lost`
/// tells of each failure and the wait before the next attempt.
pub async fn consume_with_reconnects<E, Fut>(
    shutdown: &tokio_util::sync::CancellationToken,
    mut consume: impl FnMut() -> Fut,
    lost: impl Fn(&E, std::time::Duration),
) where
    Fut: std::future::Future<Output = Result<(), E>>,
{
    let mut backoff = RECONNECT_BACKOFF;
    while !shutdown.is_cancelled() {
        match consume().await {
            Ok(()) => break,
            Err(e) => {
                lost(&e, backoff);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
            }
        }
    }
}

/// The queue names of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    pub tasks: String,
    pub results: String,
    pub dead: String,
    /// Messages that can never be processed, kept for inspection.
    pub parked: String,
}

impl QueueNames {
    pub fn with_prefix(prefix: &str) -> QueueNames {
        QueueNames {
            tasks: format!("{prefix}.tasks"),
            results: format!("{prefix}.results"),
            dead: format!("{prefix}.dead"),
            parked: format!("{prefix}.parked"),
        }
    }
}

/// A connection to RabbitMQ with the topology declared.
pub struct Broker {
    conn: Connection,
    pub names: QueueNames,
}

impl Broker {
    /// Connects and declares the queues (idempotent).
    /// Waits at most [`ANSWER_PATIENCE`] for the broker to open the
    /// connection and declare the queues.
    pub async fn connect(url: &str, names: QueueNames) -> Result<Broker, QueueError> {
        Broker::connect_patiently(url, names, true).await
    }

    /// Connects without declaring the queues, for watchers (the dashboard,
    /// the workers' endpoints) that only read depths: a watcher creates no
    /// queue, so one pointed at a ledger nobody runs leaves nothing behind
    /// on the broker. Waits as [`Broker::connect`] does.
    pub async fn connect_to_watch(url: &str, names: QueueNames) -> Result<Broker, QueueError> {
        Broker::connect_patiently(url, names, false).await
    }

    async fn connect_patiently(
        url: &str,
        names: QueueNames,
        declare: bool,
    ) -> Result<Broker, QueueError> {
        match tokio::time::timeout(ANSWER_PATIENCE, Broker::open(url, names, declare)).await {
            Ok(opened) => opened,
            Err(_) => {
                let why = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "the broker did not open the connection within {} s (does the URL's virtual host exist, and may its user use it?)",
                        ANSWER_PATIENCE.as_secs()
                    ),
                );
                Err(QueueError::Connect {
                    url: redact_url(url),
                    source: backfill_job::redact::RedactedError::new(&why, url),
                })
            }
        }
    }

    async fn open(url: &str, names: QueueNames, declare: bool) -> Result<Broker, QueueError> {
        let props = ConnectionProperties::default().with_connection_name("backfill".into());
        let conn = Connection::connect(url, props)
            .await
            .map_err(|source| QueueError::Connect {
                url: redact_url(url),
                source: backfill_job::redact::RedactedError::new(&source, url),
            })?;
        let broker = Broker { conn, names };
        if !declare {
            return Ok(broker);
        }
        let ch = broker.channel().await?;
        // The dead queue first: the tasks queue dead-letters into it.
        for q in [
            &broker.names.dead,
            &broker.names.results,
            &broker.names.tasks,
            &broker.names.parked,
        ] {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            if q == &broker.names.tasks {
                // Rejected (requeue=false) or over-delivered tasks go to the dead queue.
                args.insert(
                    "x-delivery-limit".into(),
                    AMQPValue::LongLongInt(DELIVERY_LIMIT),
                );
                args.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString("".into()),
                );
                args.insert(
                    "x-dead-letter-routing-key".into(),
                    AMQPValue::LongString(broker.names.dead.as_str().into()),
                );
            }
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            )
            .await
            .map_err(amqp(format!("declare queue {q}")))?;
        }
        close_channel(&ch, "declared").await;
        Ok(broker)
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        patiently("open a channel", async {
            self.conn
                .create_channel()
                .await
                .map_err(amqp("open a channel"))
        })
        .await
    }

    /// A channel in confirm mode for publishing.
    pub async fn publisher(&self) -> Result<Publisher, QueueError> {
        let channel = self.channel().await?;
        patiently("enable publisher confirms", async {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(amqp("enable publisher confirms"))
        })
        .await?;
        Ok(Publisher {
            channel,
            names: self.names.clone(),
        })
    }

    /// Consumes one of the deployment's queues with at most `prefetch`
    /// unacknowledged deliveries.
    pub async fn consume(
        &self,
        route: Route,
        prefetch: u16,
        tag: &str,
    ) -> Result<AmqpSource, QueueError> {
        let queue = route.name(&self.names);
        let channel = self.channel().await?;
        let consumer = patiently(&format!("consume {queue}"), async {
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(amqp("set prefetch"))?;
            channel
                .basic_consume(
                    queue.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(amqp(format!("consume {queue}")))
        })
        .await?;
        let what = match route {
            Route::Tasks => "a task",
            Route::Results => "a result",
            Route::Dead => "a dead task",
            Route::Parked => "a parked message",
        };
        Ok(AmqpSource {
            channel,
            consumer,
            what: what.to_string(),
        })
    }

    /// Number of ready messages in a queue.
    pub async fn depth(&self, queue: &str) -> Result<u32, QueueError> {
        let ch = self.channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp(format!("inspect queue {queue}")))?;
        close_channel(&ch, "inspected").await;
        Ok(q.message_count())
    }

    /// Number of ready messages in a queue, or `None` while no worker has
    /// declared it (the broker answers NOT_FOUND to a passive declare).
    pub async fn depth_if_declared(&self, queue: &str) -> Result<Option<u32>, QueueError> {
        match self.depth(queue).await {
            Ok(n) => Ok(Some(n)),
            Err(QueueError::Amqp { source, .. }) if is_not_found(source.as_ref()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes this deployment's queues (tests and teardown).
    pub async fn delete_queues(&self) -> Result<(), QueueError> {
        let ch = self.channel().await?;
        for q in [
            &self.names.tasks,
            &self.names.results,
            &self.names.dead,
            &self.names.parked,
        ] {
            ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await
                .map_err(amqp(format!("delete queue {q}")))?;
        }
        Ok(())
    }

    pub fn is_connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Closes the connection, waiting at most [`CLOSE_PATIENCE`].
    pub async fn close(&self) {
        let _ = tokio::time::timeout(CLOSE_PATIENCE, self.conn.close(200, "bye".into())).await;
    }

    /// Resolves once the connection is no longer up. A consume loop selects
    /// on it beside its consumer, so a connection that failed without
    /// ending the consumer's stream still sends the worker back to
    /// reconnect instead of leaving it waiting for deliveries that will
    /// never come.
    ///
    /// Every [`PROBE_EVERY`] it also opens and closes a channel: a
    /// connection the client still calls up but that no longer carries
    /// anything (its peer gone without a word) fails that probe, or gives
    /// no answer within [`ANSWER_PATIENCE`], and counts as lost.
    pub async fn lost(&self) {
        let mut probed = std::time::Instant::now();
        while self.conn.status().connected() {
            if probed.elapsed() >= PROBE_EVERY {
                let probe = patiently("probe the connection", async {
                    let ch = self.channel().await?;
                    ch.close(200, "probe".into())
                        .await
                        .map_err(amqp("close a probe channel"))
                })
                .await;
                if let Err(e) = probe {
                    tracing::warn!(error = %e, "the connection to the broker no longer answers");
                    return;
                }
                probed = std::time::Instant::now();
            }
            tokio::time::sleep(WATCH_EVERY).await;
        }
    }
}

/// Publishes persistent messages and waits for each confirm.
pub struct Publisher {
    channel: Channel,
    names: QueueNames,
}

impl Publisher {
    async fn publish(&self, queue: &str, payload: &[u8]) -> Result<(), QueueError> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let publish = async {
            self.channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    payload,
                    props,
                )
                .await
                .map_err(amqp(format!("publish to {queue}")))?
                .await
                .map_err(amqp(format!("confirm of a publish to {queue}")))
        };
        let confirm = tokio::time::timeout(CONFIRM_PATIENCE, publish)
            .await
            .map_err(|_| QueueError::NoConfirm {
                queue: queue.to_string(),
                secs: CONFIRM_PATIENCE.as_secs(),
            })??;
        if confirm.is_ack() && confirm.take_message().is_none() {
            Ok(())
        } else {
            Err(QueueError::Nacked(queue.to_string()))
        }
    }

    pub async fn publish_task(&self, task: &ShardTask) -> Result<(), QueueError> {
        self.publish(&self.names.tasks, &task.encode()).await
    }

    pub async fn publish_result(&self, result: &ShardResult) -> Result<(), QueueError> {
        self.publish(&self.names.results, &result.encode()).await
    }

    /// Publishes raw bytes to a queue: a message returned or parked as it
    /// came.
    pub async fn publish_to(&self, queue: &str, payload: &[u8]) -> Result<(), QueueError> {
        self.publish(queue, payload).await
    }

    /// The queues this publisher sends to.
    pub fn names(&self) -> &QueueNames {
        &self.names
    }

    /// Moves a message that can never be processed to the parking queue.
    pub async fn park(&self, payload: &[u8]) -> Result<(), QueueError> {
        self.publish(&self.names.parked, payload).await
    }

    /// Publishes raw bytes to the task queue (for tests of malformed input).
    pub async fn publish_raw_task(&self, payload: &[u8]) -> Result<(), QueueError> {
        self.publish(&self.names.tasks, payload).await
    }

    /// Publishes raw bytes to the result queue (for tests of duplicates).
    pub async fn publish_raw_result(&self, payload: &[u8]) -> Result<(), QueueError> {
        self.publish(&self.names.results, payload).await
    }
}

/// A name for this worker in logs and the ledger: host and process id.
pub fn worker_name(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{role}@{host}:{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_redaction() {
        let n = QueueNames::with_prefix("bf");
        assert_eq!(n.tasks, "bf.tasks");
        assert_eq!(n.results, "bf.results");
        assert_eq!(n.dead, "bf.dead");
        assert_eq!(n.parked, "bf.parked");
        assert_eq!(
            redact_url("amqp://u:p@h:5672/%2f"),
            "amqp://u:***@h:5672/%2f"
        );
        assert_eq!(
            redact_url("amqps://u@h/v?password=p&heartbeat=5"),
            "amqps://u@h/v?password=***&heartbeat=5"
        );
    }
}

/// The in-process queue of the embedded mode: the same tasks and results as
/// RabbitMQ carries, between tasks of one process, as the same bytes.
/// Nothing outlives the process; the ledger does, so an interrupted run can
/// be planned again.
#[derive(Clone)]
pub struct LocalQueue {
    inner: std::sync::Arc<LocalInner>,
}

type Lane = (
    tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
);

struct LocalInner {
    names: QueueNames,
    tasks: Lane,
    results: Lane,
    dead: Lane,
    parked: Lane,
}

fn lane() -> Lane {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    (tx, tokio::sync::Mutex::new(rx))
}

impl Default for LocalQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalQueue {
    pub fn new() -> LocalQueue {
        LocalQueue {
            inner: std::sync::Arc::new(LocalInner {
                names: QueueNames::with_prefix("local"),
                tasks: lane(),
                results: lane(),
                dead: lane(),
                parked: lane(),
            }),
        }
    }

    fn lane(&self, route: Route) -> &Lane {
        match route {
            Route::Tasks => &self.inner.tasks,
            Route::Results => &self.inner.results,
            Route::Dead => &self.inner.dead,
            Route::Parked => &self.inner.parked,
        }
    }

    pub(crate) fn push(&self, route: Route, payload: Vec<u8>) {
        // The receiver lives as long as the queue, so sending cannot fail.
        let _ = self.lane(route).0.send(payload);
    }

    /// The next message of a route; consumers of one route share one
    /// receiver.
    pub(crate) async fn pop(&self, route: Route) -> Option<Vec<u8>> {
        self.lane(route).1.lock().await.recv().await
    }

    /// Deliveries from one of the queues.
    pub fn source(&self, route: Route) -> LocalSource {
        LocalSource {
            queue: self.clone(),
            route,
        }
    }

    pub fn send_task(&self, task: ShardTask) {
        self.push(Route::Tasks, task.encode());
    }

    /// The next task; mappers share one receiver. Only this process
    /// publishes here, so every message reads back; one that does not is
    /// skipped with a log line.
    pub async fn recv_task(&self) -> Option<ShardTask> {
        loop {
            match ShardTask::decode(&self.pop(Route::Tasks).await?) {
                Ok(t) => return Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "dropping a task message that cannot be read")
                }
            }
        }
    }

    pub fn send_result(&self, result: ShardResult) {
        self.push(Route::Results, result.encode());
    }

    pub async fn recv_result(&self) -> Option<ShardResult> {
        loop {
            match ShardResult::decode(&self.pop(Route::Results).await?) {
                Ok(r) => return Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "dropping a result message that cannot be read")
                }
            }
        }
    }
}
