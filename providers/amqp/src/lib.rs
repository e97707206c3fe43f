//! The `amqp` provider: `amqp.AwaitMessageTrigger` turns every message of an AMQP 0.9.1 queue
//! (RabbitMQ) into an event, and serves the `amqp` and `amqps` schemes of the common
//! message-queue trigger. It holds one connection per broker URL, shared by the triggers of
//! that URL (see [`hub`]); each trigger consumes its queue on a channel of its own. It must not
//! acknowledge a delivery before that delivery's events are committed.
//!
//! | kwarg | type | default | meaning |
//! |---|---|---|---|
//! | `url` | string | required | `amqp[s]://user:password@host[:port][/vhost][?heartbeat=…]`, the vhost percent-encoded (`%2f` is `/`, also the default); may be `{ env = "NAME" }` |
//! | `queue` | string | required | the queue to consume |
//! | `declare` | bool | `false` | `false`: the queue must exist (checked with a passive declare; a missing one fails the trigger); `true`: declared durable if missing |
//! | `prefetch` | 1–10000 | 100 | deliveries unacknowledged at once (`basic.qos`): the backpressure |
//!
//! `MessageQueueTrigger` URIs: `amqp[s]://user:password@host[:port]/VHOST/QUEUE[?query]`, both
//! path segments percent-encoded (`amqp://guest:guest@rabbitmq:5672/%2f/orders`; an empty
//! vhost segment, `amqp://rabbitmq//orders`, is the default vhost `/`).
//!
//! Payload: `{queue, exchange, routing_key, redelivered, message_id, timestamp, correlation_id,
//! content_type, content_encoding, type, app_id, user_id, reply_to, priority, delivery_mode,
//! expiration, headers, body, body_encoding (json|text|base64)}`; properties the publisher did
//! not set are `null`, `timestamp` is the AMQP `timestamp` property (seconds since the Unix
//! epoch, also the event's source time), header values are JSON (strings as text, or base64
//! when not UTF-8; byte arrays as base64; decimals as exact text).
//!
//! Delivery guarantee: one event per message, dedup key `amqp:VHOST/QUEUE/id:MESSAGE_ID`
//! when the publisher set a `message_id`. A delivery is acknowledged (`basic.ack`) only after
//! its event committed: a committed prefix of delivery tags with one `multiple` ack, a commit
//! behind an uncommitted delivery on its own (see [`acks`]). A delivery that is not committed
//! is never acknowledged: the trigger fails, its channel closes, and the broker requeues
//! every delivery not acknowledged; so do a crash, a lost connection and a stop. The requeued
//! messages come again (`redelivered: true`) and their `message_id` makes that harmless.
//! Without a `message_id` AMQP gives nothing stable across redeliveries, so the key is the
//! delivery's own (`amqp:VHOST/QUEUE/delivery:RUN:TAG`) and a message redelivered after a
//! crash, a refused commit or a lost connection becomes a second event: publishers that need
//! effectively-once set `message_id`.

pub mod acks;
mod config;
pub mod hub;
mod payload;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::Channel;
use serde_json::{Map, Value};
use tokio::time::Instant;
use tracing::{debug, warn};
use triggerer_sdk::{
    Event, EventTrigger, InFlight, KwargsError, Refusal, Settled, TriggerContext, TriggerError,
    TypedProvider,
};

use acks::Acks;
pub use config::{AmqpConfig, AmqpParams, DEFAULT_PREFETCH};
use hub::Hub;
pub use payload::{DeliveryId, Received};

/// The classpaths of [`AmqpProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &["amqp.AwaitMessageTrigger"];

/// How long a stopping trigger waits for its in-flight events before it leaves them to the
/// broker's requeue.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The `amqp` provider; one per process, holding the shared connections.
#[derive(Debug, Default)]
pub struct AmqpProvider {
    hub: Arc<Hub>,
}

impl AmqpProvider {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections open now (one per broker URL in use).
    pub fn connections(&self) -> usize {
        self.hub.connections()
    }
}

impl TypedProvider for AmqpProvider {
    type Params = AmqpParams;
    const NAME: &'static str = "amqp";
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["amqp", "amqps"];
    const REFUSED: &'static [Refusal] = config::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &AmqpParams) -> Result<(), KwargsError> {
        AmqpConfig::from_params(params).map(drop)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params(queue, kwargs)
    }

    fn build_trigger(&self, params: AmqpParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        let config = AmqpConfig::from_params(&params)?;
        // At build time the URL is the variable's value: check it now, not at connect.
        config::parse_url(&config.url).map_err(|m| KwargsError::new("url", m))?;
        Ok(Box::new(AwaitMessageTrigger {
            hub: self.hub.clone(),
            config,
        }))
    }
}

/// One watcher: a channel consuming one queue on the shared connection of its URL.
pub struct AwaitMessageTrigger {
    hub: Arc<Hub>,
    config: AmqpConfig,
}

/// A lapin error as one line, without anything of the URL's password.
pub(crate) fn one_line(e: &lapin::Error) -> String {
    let text = triggerer_sdk::redact_uri(&e.to_string());
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl AwaitMessageTrigger {
    fn failed(&self, what: &str, e: &lapin::Error) -> TriggerError {
        TriggerError::failed(format!(
            "{} queue `{}`: {what}: {}",
            self.config.shown_url(),
            self.config.queue,
            one_line(e)
        ))
    }

    /// Connects (or joins the URL's connection), opens the channel, checks or declares the
    /// queue and starts consuming.
    async fn open(&self) -> Result<(hub::Lease, Channel, lapin::Consumer), TriggerError> {
        let lease = self.hub.acquire(&self.config.url).await.map_err(|e| {
            TriggerError::failed(format!(
                "{} queue `{}`: cannot connect: {e}",
                self.config.shown_url(),
                self.config.queue
            ))
        })?;
        let channel = lease
            .conn
            .create_channel()
            .await
            .map_err(|e| self.failed("cannot open a channel", &e))?;
        channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| self.failed("basic.qos", &e))?;
        let options = if self.config.declare {
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            }
        } else {
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            }
        };
        channel
            .queue_declare(
                self.config.queue.as_str().into(),
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                if !self.config.declare && e.to_string().contains("NOT_FOUND") {
                    TriggerError::failed(format!(
                        "{} queue `{}` does not exist in vhost `{}` (declare it, or set \
                         `declare = true` to have it declared durable)",
                        self.config.shown_url(),
                        self.config.queue,
                        self.config.vhost()
                    ))
                } else {
                    self.failed("queue.declare", &e)
                }
            })?;
        let consumer = channel
            .basic_consume(
                self.config.queue.as_str().into(),
                format!("triggerer-{}", payload::new_run()).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| self.failed("basic.consume", &e))?;
        Ok((lease, channel, consumer))
    }
}

/// Sends the acknowledgements `acks` allows now.
async fn flush(channel: &Channel, acks: &mut Acks) -> Result<usize, lapin::Error> {
    let frames = acks.take();
    for ack in &frames {
        channel
            .basic_ack(
                ack.tag,
                BasicAckOptions {
                    multiple: ack.multiple,
                },
            )
            .await?;
    }
    Ok(frames.len())
}

#[async_trait]
impl EventTrigger for AwaitMessageTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let (lease, channel, mut consumer) = tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return Ok(()),
            opened = self.open() => opened?,
        };
        let vhost = self.config.vhost();
        let queue = self.config.queue.clone();
        let run = payload::new_run();
        debug!(url = %self.config.shown_url(), %queue, "consuming");

        let mut inflight: InFlight<u64> = InFlight::new(usize::from(self.config.prefetch));
        let mut acks = Acks::new();
        let mut refused: Option<String> = None;
        let result = 'run: loop {
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => break Ok(()),
                Some(first) = inflight.next() => {
                    // Everything that settled together (a batch commit) is acknowledged at once.
                    let mut settled = vec![first];
                    while let Some(more) = inflight.try_next() {
                        settled.push(more);
                    }
                    for Settled { token: tag, outcome } in settled {
                        match outcome {
                            Ok(_) => acks.commit(tag),
                            Err(e) => {
                                refused.get_or_insert_with(|| format!("delivery {tag} of queue `{queue}` was not committed: {e}"));
                            }
                        }
                    }
                    if let Err(e) = flush(&channel, &mut acks).await {
                        break Err(self.failed("basic.ack", &e));
                    }
                    if let Some(reason) = refused.take() {
                        break Err(TriggerError::failed(reason));
                    }
                }
                delivery = consumer.next(), if inflight.has_room() => match delivery {
                    Some(Ok(d)) => {
                        let received = Received {
                            exchange: d.exchange.as_str().to_string(),
                            routing_key: d.routing_key.as_str().to_string(),
                            redelivered: d.redelivered,
                            properties: d.properties,
                            body: d.data,
                        };
                        let id = DeliveryId { run: run.clone(), tag: d.delivery_tag };
                        let mut event = Event::new(
                            received.payload(&queue),
                            received.dedup_key(&vhost, &queue, &id),
                        );
                        event.source_time = received.source_time();
                        acks.track(d.delivery_tag);
                        // Waits for room and for the core's queue (backpressure), but not past
                        // a cancel: what is not handed over is requeued when the channel closes.
                        let submitted = tokio::select! {
                            biased;
                            _ = ctx.cancel.cancelled() => break 'run Ok(()),
                            submitted = inflight.submit(&ctx.sink, event, d.delivery_tag) => submitted,
                        };
                        if let Err(e) = submitted {
                            break Err(e.into());
                        }
                    }
                    Some(Err(e)) => break Err(self.failed("connection lost", &e)),
                    None => break Err(TriggerError::failed(format!(
                        "{} queue `{queue}`: the broker cancelled the consumer (queue deleted?)",
                        self.config.shown_url()
                    ))),
                },
            }
        };
        // Acknowledge what commits while stopping; the rest is requeued by the broker when the
        // channel closes.
        let drained = inflight.drain(Instant::now() + DRAIN_TIMEOUT).await;
        for tag in drained.committed() {
            acks.commit(*tag);
        }
        if channel.status().connected() {
            if let Err(e) = flush(&channel, &mut acks).await {
                warn!(%queue, error = %one_line(&e), "acknowledging on stop failed; those messages come again (deduplicated by message_id)");
            }
            if !acks.is_empty() {
                debug!(%queue, left = acks.len(), "stopping with deliveries not acknowledged; the broker requeues them");
            }
            let _ = channel
                .close(200, "triggerer: trigger stopped".into())
                .await;
        }
        drop(lease);
        result
    }
}
