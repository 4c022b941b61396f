//! The transport seen by the roles: a [`Sink`] that messages are published
//! to, a [`Source`] that hands out [`Delivery`]s, and the three ways to
//! settle a delivery. RabbitMQ ([`Publisher`], [`AmqpSource`]) and the
//! in-process queue ([`LocalQueue`], [`LocalSource`]) both implement them,
//! so the role crates never see a broker client's types.
//!
//! Settling follows the broker's meaning on both: `ack` once the effect is
//! durable, `requeue` to have the message delivered again, `dead_letter` to
//! refuse it for good (a task then goes to the dead queue, where the
//! reducer records its shard as failed; anything else is dropped).

use std::future::Future;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::{Channel, Consumer};
use tracing::warn;

use crate::{close_channel, patiently, LocalQueue, Publisher, QueueError, QueueNames};

/// One of a deployment's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Tasks,
    Results,
    Dead,
    Parked,
}

impl Route {
    /// The queue's name in a deployment.
    pub fn name(self, names: &QueueNames) -> &str {
        match self {
            Route::Tasks => &names.tasks,
            Route::Results => &names.results,
            Route::Dead => &names.dead,
            Route::Parked => &names.parked,
        }
    }
}

/// Where messages are published.
pub trait Sink: Send + Sync {
    /// Publishes `payload` to `route`; returns once the transport holds it
    /// (for RabbitMQ: the broker confirmed it to disk).
    fn publish(
        &self,
        route: Route,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// The queues published to, for log lines.
    fn names(&self) -> &QueueNames;
}

/// Where deliveries come from.
pub trait Source: Send {
    /// The next delivery; `None` once the source has ended (the broker
    /// cancelled the consumer, the in-process queue was dropped).
    fn next(&mut self) -> impl Future<Output = Option<Result<Delivery, QueueError>>> + Send;
}

/// A message taken from a queue, to be settled once.
pub struct Delivery {
    /// The message as published.
    pub data: Vec<u8>,
    settle: Settle,
}

enum Settle {
    Amqp(lapin::Acker),
    Local { queue: LocalQueue, route: Route },
}

impl Delivery {
    /// Done with: the message is removed from its queue.
    pub async fn ack(self) -> Result<(), QueueError> {
        match self.settle {
            Settle::Amqp(a) => {
                patiently("ack a delivery", async {
                    a.ack(BasicAckOptions::default())
                        .await
                        .map(drop)
                        .map_err(crate::amqp("ack a delivery"))
                })
                .await
            }
            Settle::Local { .. } => Ok(()),
        }
    }

    /// Back to its queue, to be delivered again.
    pub async fn requeue(self) -> Result<(), QueueError> {
        match self.settle {
            Settle::Amqp(a) => {
                patiently("requeue a delivery", async {
                    a.nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .map(drop)
                    .map_err(crate::amqp("requeue a delivery"))
                })
                .await
            }
            Settle::Local { queue, route } => {
                queue.push(route, self.data);
                Ok(())
            }
        }
    }

    /// Refused for good: a task goes to the dead queue, anything else is
    /// dropped.
    pub async fn dead_letter(self) -> Result<(), QueueError> {
        match self.settle {
            Settle::Amqp(a) => {
                patiently("reject a delivery", async {
                    a.reject(BasicRejectOptions { requeue: false })
                        .await
                        .map(drop)
                        .map_err(crate::amqp("reject a delivery"))
                })
                .await
            }
            Settle::Local { queue, route } => {
                if route == Route::Tasks {
                    queue.push(Route::Dead, self.data);
                }
                Ok(())
            }
        }
    }
}

/// A RabbitMQ consumer of one queue, on a channel of its own.
pub struct AmqpSource {
    pub(crate) channel: Channel,
    pub(crate) consumer: Consumer,
    /// What is received, for errors (`a task`, `a result`).
    pub(crate) what: String,
}

impl AmqpSource {
    /// Closes the channel, waiting at most [`crate::CLOSE_PATIENCE`]. The
    /// broker handles everything sent on the channel (the last acks) before
    /// it confirms the close, so a clean stop redelivers nothing settled.
    pub async fn close(self, why: &str) {
        close_channel(&self.channel, why).await;
    }
}

impl Source for AmqpSource {
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        use futures::StreamExt;
        let d = self.consumer.next().await?;
        Some(
            d.map(|d| Delivery {
                data: d.data,
                settle: Settle::Amqp(d.acker),
            })
            .map_err(crate::amqp(format!("receive {}", self.what))),
        )
    }
}

impl Sink for Publisher {
    async fn publish(&self, route: Route, payload: &[u8]) -> Result<(), QueueError> {
        self.publish_to(route.name(self.names()), payload).await
    }

    fn names(&self) -> &QueueNames {
        Publisher::names(self)
    }
}

impl Sink for LocalQueue {
    async fn publish(&self, route: Route, payload: &[u8]) -> Result<(), QueueError> {
        self.push(route, payload.to_vec());
        Ok(())
    }

    fn names(&self) -> &QueueNames {
        &self.inner.names
    }
}

/// Deliveries from one queue of a [`LocalQueue`].
pub struct LocalSource {
    pub(crate) queue: LocalQueue,
    pub(crate) route: Route,
}

impl Source for LocalSource {
    async fn next(&mut self) -> Option<Result<Delivery, QueueError>> {
        let data = self.queue.pop(self.route).await?;
        Some(Ok(Delivery {
            data,
            settle: Settle::Local {
                queue: self.queue.clone(),
                route: self.route,
            },
        }))
    }
}

/// Longest pause before a message of another ledger is released, so two
/// workers that keep receiving each other's messages do not spin.
pub const FOREIGN_DELAY: Duration = Duration::from_millis(200);

/// Run ids whose foreign messages were already warned about.
static WARNED_FOREIGN: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
    std::sync::Mutex::new(None);

/// True when a message belongs to another ledger than `own`: the worker
/// must not act on it, ack it nor dead-letter it. Warns once per run. A
/// message without a ledger (written before ledgers had an identity)
/// belongs to whoever takes it.
pub fn is_foreign(own: &str, what: &str, ledger: &str, run_id: &str, names: &QueueNames) -> bool {
    if ledger.is_empty() || ledger == own {
        return false;
    }
    let first = WARNED_FOREIGN
        .lock()
        .map(|mut w| {
            w.get_or_insert_with(Default::default)
                .insert(run_id.to_string())
        })
        .unwrap_or(true);
    if first {
        let prefix = names.tasks.strip_suffix(".tasks").unwrap_or(&names.tasks);
        warn!(run = %run_id, "{what} of ledger {ledger} on a worker of ledger {own}: returned to the queue; two databases share queue prefix {prefix} — give each its own --queue-prefix");
    }
    true
}

/// Gives a message of another ledger back, as it came, for a worker of its
/// own database. It is published again and the delivery acked rather than
/// requeued: the quorum queue counts a requeue towards the delivery limit,
/// so a task bounced between databases would end dead-lettered. The ack
/// waits a pause of varying length after the publish: while this delivery
/// is held, the copy goes to another consumer with room; when every
/// consumer is full of the other database's messages, the one that acks
/// first gets the oldest returned message, so a pause of the same length
/// everywhere could hand each worker back its own returns forever.
pub async fn return_foreign<S: Sink>(sink: &S, route: Route, d: Delivery) {
    match sink.publish(route, &d.data).await {
        Ok(()) => {
            tokio::time::sleep(jitter(FOREIGN_DELAY)).await;
            let _ = d.ack().await;
        }
        Err(e) => {
            warn!(error = %e, "could not return a message of another ledger; it goes back to the queue");
            tokio::time::sleep(FOREIGN_DELAY).await;
            let _ = d.requeue().await;
        }
    }
}

/// A pause between a tenth of `max` and `max`, different from call to call.
fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let max_ms = max.as_millis().max(10) as u64;
    Duration::from_millis(max_ms / 10 + h.finish() % (max_ms - max_ms / 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_deliveries_settle_like_the_broker() {
        let q = LocalQueue::new();
        let mut tasks = q.source(Route::Tasks);
        let mut dead = q.source(Route::Dead);
        q.publish(Route::Tasks, b"a").await.unwrap();
        let d = tasks.next().await.unwrap().unwrap();
        assert_eq!(d.data, b"a");
        d.requeue().await.unwrap();
        let d = tasks.next().await.unwrap().unwrap();
        assert_eq!(d.data, b"a");
        d.dead_letter().await.unwrap();
        let d = dead.next().await.unwrap().unwrap();
        assert_eq!(d.data, b"a");
        d.ack().await.unwrap();
        // A result refused for good is dropped, as on the broker.
        let mut results = q.source(Route::Results);
        q.publish(Route::Results, b"r").await.unwrap();
        results
            .next()
            .await
            .unwrap()
            .unwrap()
            .dead_letter()
            .await
            .unwrap();
        q.publish(Route::Results, b"s").await.unwrap();
        assert_eq!(results.next().await.unwrap().unwrap().data, b"s");
    }

    #[test]
    fn foreign_messages_are_told_by_their_ledger() {
        let names = QueueNames::with_prefix("bf");
        assert!(!is_foreign("own", "task", "", "r", &names));
        assert!(!is_foreign("own", "task", "own", "r", &names));
        assert!(is_foreign("own", "task", "other", "r", &names));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for _ in 0..100 {
            let j = jitter(FOREIGN_DELAY);
            assert!(j >= FOREIGN_DELAY / 10 && j < FOREIGN_DELAY, "{j:?}");
        }
    }
}
