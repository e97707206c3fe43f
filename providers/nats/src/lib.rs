//! The `nats` provider: `nats.JetStreamTrigger` turns every message of a NATS JetStream stream
//! into an event, read through a durable pull consumer with explicit acknowledgement, and
//! serves the `nats` scheme and `nats://host:port/STREAM` URIs of the common message-queue
//! trigger. It holds one NATS connection per server URL (credentials included), shared by all
//! its triggers; each trigger pulls from its own consumer. It must not acknowledge a message
//! before that message's event is committed.
//!
//! | kwarg | type | default | meaning |
//! |---|---|---|---|
//! | `url` | string | required | `nats://[user:password@\|token@]host:port` or `tls://…`; may be `{ env = "NAME" }` |
//! | `stream` | string | required | the JetStream stream |
//! | `subjects` | string or list | — | the stream's subjects, used only to create it when it is missing; an existing stream is left as it is |
//! | `durable` | string | `triggerer` | the durable pull consumer (explicit ack, from the first message of the stream) |
//! | `max_ack_pending` | 1–100000 | 1000 | messages delivered and not yet acknowledged; the server stops delivering at this bound |
//! | `ack_wait` | 1–86400 s | 60 | the server redelivers a message not acknowledged this long after its delivery; kept from expiring (in-progress acks) while a message waits for its commit |
//!
//! Delivery guarantee: one event per message, dedup key `nats:{stream}/{stream sequence}`,
//! payload `{stream, subject, sequence, delivered, data, data_encoding (json|text|base64),
//! headers, timestamp}`. A message is acknowledged (`+ACK`) only after its event committed; a
//! message whose event was refused is `-NAK`ed and the trigger fails, to be restarted with
//! backoff. A stopping run `-NAK`s what it pulled and did not commit with a delay
//! ([`GIVE_BACK_DELAY`], past its own pull request's expiry, which could otherwise take the
//! message back). A crash, or a connection lost for good, leaves messages unacknowledged: the
//! server redelivers them after `ack_wait`, and their stream sequence makes the repeat harmless.
//! Watchers with the same server, stream and `durable` share that consumer's messages (each
//! goes to one of them): give each watcher of a stream its own `durable`.
//! The client reconnects by itself; a connection still down after [`DISCONNECTED_LIMIT`] fails
//! the trigger with that reason (shown as `failing`), and it recovers once the server is back.

mod config;
mod payload;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::pull::{self, Stream as Messages};
use async_nats::jetstream::consumer::{AckPolicy, Consumer, DeliverPolicy};
use async_nats::jetstream::message::{AckKind, Acker};
use async_nats::jetstream::stream::Config as StreamConfig;
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, ConnectOptions};
use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use triggerer_sdk::{
    Event, EventTrigger, InFlight, KwargsError, Settled, TriggerContext, TriggerError,
    TypedProvider,
};

pub use config::{Credentials, NatsConfig, NatsParams, DEFAULT_DURABLE};
pub use payload::{dedup_key, Received};

/// The classpaths of [`NatsProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &["nats.JetStreamTrigger"];

/// How long the connection may stay down before the trigger fails (and shows as `failing`);
/// the client goes on reconnecting meanwhile and after.
pub const DISCONNECTED_LIMIT: Duration = Duration::from_secs(10);
/// How long a cancelled trigger waits for its in-flight events before it leaves them to be
/// redelivered.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages per pull request, at most (and never more than `max_ack_pending`).
const MAX_BATCH: i64 = 256;
/// How long one pull request stays open at the server. A stopping run's request may outlive
/// its subscription there; a message handed back is redelivered only after it expired
/// ([`GIVE_BACK_DELAY`]), so that the next run, not the dead request, receives it.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// The delay of the `-NAK` of a message handed back by a stopping run.
pub const GIVE_BACK_DELAY: Duration = Duration::from_secs(6);

/// One client per URL as written (credentials included), shared by the provider's triggers.
#[derive(Default)]
struct Connections {
    clients: Mutex<HashMap<String, Client>>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys hold credentials.
        f.write_str("Connections")
    }
}

/// `text` without the URL's secrets (client errors may repeat them).
fn scrub(text: &str, config: &NatsConfig) -> String {
    let mut text = text.replace(&config.url, &config.shown_url());
    match &config.credentials {
        Credentials::UserPassword { password, .. } if !password.is_empty() => {
            text = text.replace(password.as_str(), "***");
        }
        Credentials::Token(token) => text = text.replace(token.as_str(), "***"),
        _ => {}
    }
    text
}

/// An error and its causes as one line.
fn describe(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

impl Connections {
    async fn client(&self, config: &NatsConfig) -> Result<Client, String> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&config.url) {
            return Ok(client.clone());
        }
        let shown = config.shown_url();
        let mut options = ConnectOptions::new()
            .name("triggerer")
            .connection_timeout(Duration::from_secs(5));
        match &config.credentials {
            Credentials::None => {}
            Credentials::UserPassword { user, password } => {
                options = options.user_and_password(user.clone(), password.clone());
            }
            Credentials::Token(token) => options = options.token(token.clone()),
        }
        let log_as = shown.clone();
        options = options.event_callback(move |event| {
            let server = log_as.clone();
            async move {
                match event {
                    async_nats::Event::Disconnected => {
                        warn!(%server, "nats connection lost; reconnecting")
                    }
                    async_nats::Event::Connected => info!(%server, "nats connected"),
                    other => debug!(%server, event = %other, "nats connection event"),
                }
            }
        });
        let client = options
            .connect(config.server.as_str())
            .await
            .map_err(|e| scrub(&format!("connecting to {shown}: {}", describe(&e)), config))?;
        info!(server = %shown, "nats connection opened (shared by this server's triggers)");
        clients.insert(config.url.clone(), client.clone());
        Ok(client)
    }

    fn len(&self) -> usize {
        self.clients.try_lock().map_or(0, |c| c.len())
    }
}

/// The `nats` provider; one per process, holding one connection per server URL.
#[derive(Debug, Default)]
pub struct NatsProvider {
    connections: Arc<Connections>,
}

impl NatsProvider {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections open now (one per distinct server URL); 0 while one is being opened.
    pub fn connections(&self) -> usize {
        self.connections.len()
    }
}

impl TypedProvider for NatsProvider {
    type Params = NatsParams;
    const NAME: &'static str = "nats";
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["nats"];
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &NatsParams) -> Result<(), KwargsError> {
        NatsConfig::from_params(params).map(drop)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params(queue, kwargs)
    }

    fn build_trigger(&self, params: NatsParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        let config = NatsConfig::from_params(&params)?;
        if config.server.is_empty() {
            // Only a `${env:…}` placeholder has no server: the reference was not resolved.
            return Err(KwargsError::new(
                "url",
                "the environment reference was not resolved",
            ));
        }
        Ok(Box::new(JetStreamTrigger {
            connections: self.connections.clone(),
            config,
        }))
    }
}

/// One watcher of one stream, through its durable consumer.
pub struct JetStreamTrigger {
    connections: Arc<Connections>,
    config: NatsConfig,
}

/// A delivered message awaiting its commit.
struct Pending {
    acker: Acker,
    sequence: u64,
    /// When it was delivered or last reported in progress.
    since: Instant,
}

impl JetStreamTrigger {
    fn fail(&self, what: &str, e: &dyn std::error::Error) -> TriggerError {
        TriggerError::failed(scrub(&format!("{what}: {}", describe(e)), &self.config))
    }

    /// The stream, created with `subjects` when it is missing; an existing one is left as is.
    async fn stream(
        &self,
        js: &jetstream::Context,
    ) -> Result<jetstream::stream::Stream, TriggerError> {
        let c = &self.config;
        match js.get_stream(&c.stream).await {
            Ok(stream) => Ok(stream),
            Err(e) => {
                let missing = matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(ref js_err)
                        if js_err.error_code() == ErrorCode::STREAM_NOT_FOUND
                );
                if !missing {
                    return Err(self.fail(&format!("looking up stream {}", c.stream), &e));
                }
                let Some(subjects) = &c.subjects else {
                    return Err(TriggerError::failed(format!(
                        "stream {} does not exist; create it, or give `subjects` to have it created",
                        c.stream
                    )));
                };
                let created = js
                    .create_stream(StreamConfig {
                        name: c.stream.clone(),
                        subjects: subjects.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| {
                        self.fail(
                            &format!("creating stream {} with subjects {subjects:?}", c.stream),
                            &e,
                        )
                    })?;
                info!(stream = %c.stream, ?subjects, "nats stream created");
                Ok(js
                    .get_stream(&created.cached_info().config.name)
                    .await
                    .map_err(|e| self.fail(&format!("looking up stream {}", c.stream), &e))?)
            }
        }
    }

    /// The durable pull consumer, created when missing and brought to this trigger's
    /// `ack_wait` and `max_ack_pending` when it differs.
    async fn consumer(
        &self,
        stream: &jetstream::stream::Stream,
    ) -> Result<Consumer<pull::Config>, TriggerError> {
        let c = &self.config;
        let wanted = pull::Config {
            durable_name: Some(c.durable.clone()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: c.ack_wait,
            max_ack_pending: c.max_ack_pending,
            ..Default::default()
        };
        let what = format!("consumer {} of stream {}", c.durable, c.stream);
        let mut consumer: Consumer<pull::Config> = stream
            .get_or_create_consumer(&c.durable, wanted.clone())
            .await
            .map_err(|e| self.fail(&format!("getting or creating {what}"), &e))?;
        let info = consumer
            .info()
            .await
            .map_err(|e| self.fail(&format!("reading {what}"), &e))?;
        if info.config.ack_policy != AckPolicy::Explicit {
            return Err(TriggerError::failed(format!(
                "{what} exists with ack policy {:?}; it needs explicit acks (use another `durable`)",
                info.config.ack_policy
            )));
        }
        if info.config.ack_wait != c.ack_wait || info.config.max_ack_pending != c.max_ack_pending {
            // The same durable created again: the server updates its editable settings.
            consumer = stream
                .create_consumer(wanted)
                .await
                .map_err(|e| self.fail(&format!("updating {what}"), &e))?;
            info!(consumer = %c.durable, stream = %c.stream, "nats consumer updated to this watcher's ack_wait and max_ack_pending");
        }
        Ok(consumer)
    }
}

/// Waits until `client` is connected, up to `limit`.
async fn connected(client: &Client, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while client.connection_state() != State::Connected {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// The message as an event and its acknowledgement handle; an error for a message that is no
/// JetStream delivery (it has no acknowledgement subject to parse).
fn received(message: jetstream::Message) -> Result<(Event, Pending), String> {
    let (event, sequence) = {
        let info = message
            .info()
            .map_err(|e| format!("a message without JetStream metadata: {e}"))?;
        let r = Received {
            stream: info.stream.to_string(),
            subject: message.subject.to_string(),
            sequence: info.stream_sequence,
            delivered: info.delivered,
            data: message.payload.to_vec(),
            headers: message
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|(name, values)| {
                    (
                        name.to_string(),
                        values.iter().map(|v| v.as_str().to_string()).collect(),
                    )
                })
                .collect(),
            published_ns: info.published.unix_timestamp_nanos(),
        };
        let mut event = Event::new(r.payload(), r.dedup_key());
        if let Some(at) = r.source_time() {
            event = event.with_source_time(at);
        }
        (event, r.sequence)
    };
    let (_, acker) = message.split();
    Ok((
        event,
        Pending {
            acker,
            sequence,
            since: Instant::now(),
        },
    ))
}

#[async_trait]
impl EventTrigger for JetStreamTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let c = self.config.clone();
        let shown = c.shown_url();
        let client = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            client = self.connections.client(&c) => client.map_err(TriggerError::failed)?,
        };
        if !connected(&client, DISCONNECTED_LIMIT).await {
            return Err(TriggerError::failed(format!(
                "not connected to {shown} for {}s (reconnecting)",
                DISCONNECTED_LIMIT.as_secs()
            )));
        }
        let js = jetstream::new(client.clone());
        let setup = async {
            let stream = self.stream(&js).await?;
            let consumer = self.consumer(&stream).await?;
            let batch = usize::try_from(c.max_ack_pending.min(MAX_BATCH)).unwrap_or(1);
            consumer
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(Duration::from_secs(2))
                .expires(PULL_EXPIRES)
                .messages()
                .await
                .map_err(|e| self.fail("pulling messages", &e))
        };
        let mut messages: Messages = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            m = setup => m?,
        };
        info!(server = %shown, stream = %c.stream, consumer = %c.durable, "nats consumer pulling");

        let limit = usize::try_from(c.max_ack_pending).unwrap_or(1);
        let mut inflight: InFlight<Pending> = InFlight::new(limit);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let progress_after = (c.ack_wait / 2).max(Duration::from_millis(500));
        let mut down_since: Option<Instant> = None;
        // Pull errors while connected (missing heartbeats): since when, and the last one.
        let mut trouble: Option<(Instant, String)> = None;
        // Messages to NAK once this run no longer pulls: NAKed while its pull request is still
        // open, a message would come straight back to it, and be lost with it until ack_wait.
        let mut give_back: Vec<Acker> = Vec::new();

        let result: Result<(), TriggerError> = 'run: loop {
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => break Ok(()),
                Some(Settled { token, outcome }) = inflight.next() => match outcome {
                    Ok(_) => {
                        if let Err(e) = token.acker.ack().await {
                            warn!(stream = %c.stream, sequence = token.sequence, error = %e, "ack failed; the message will be redelivered after ack_wait and deduplicated");
                        }
                    }
                    Err(e) => {
                        give_back.push(token.acker);
                        break Err(TriggerError::failed(format!(
                            "message {} of stream {} was not committed: {e}", token.sequence, c.stream
                        )));
                    }
                },
                _ = tick.tick() => {
                    let now = Instant::now();
                    if client.connection_state() == State::Connected {
                        down_since = None;
                    } else if now.duration_since(*down_since.get_or_insert(now)) >= DISCONNECTED_LIMIT {
                        break Err(TriggerError::failed(format!(
                            "lost the connection to {shown} for {}s; unacknowledged messages are redelivered after ack_wait",
                            DISCONNECTED_LIMIT.as_secs()
                        )));
                    }
                    if let Some((since, last)) = &trouble {
                        if down_since.is_none() && now.duration_since(*since) >= DISCONNECTED_LIMIT {
                            break Err(TriggerError::failed(scrub(&format!(
                                "pulling from consumer {} of stream {}: {last}", c.durable, c.stream
                            ), &c)));
                        }
                    }
                    if down_since.is_none() {
                        for pending in inflight.unsettled_mut() {
                            if now.duration_since(pending.since) >= progress_after {
                                // Keeps ack_wait from running out while the core is busy.
                                if pending.acker.ack_with(AckKind::Progress).await.is_ok() {
                                    pending.since = now;
                                }
                            }
                        }
                    }
                }
                next = messages.next(), if inflight.has_room() => match next {
                    Some(Ok(message)) => {
                        trouble = None;
                        let (event, pending) = match received(message) {
                            Ok(r) => r,
                            Err(e) => {
                                warn!(stream = %c.stream, error = %e, "skipping a message that is no JetStream delivery");
                                continue;
                            }
                        };
                        // Waits for room and for the core's queue (backpressure), but not past
                        // a cancel: the message then goes back at once.
                        let delivery = tokio::select! {
                            biased;
                            _ = ctx.cancel.cancelled() => None,
                            submitted = async {
                                inflight.reserve().await;
                                ctx.sink.submit(event).await
                            } => Some(submitted),
                        };
                        match delivery {
                            Some(Ok(delivery)) => inflight.push(pending, delivery),
                            Some(Err(e)) => {
                                give_back.push(pending.acker);
                                break 'run Err(e.into());
                            }
                            None => {
                                give_back.push(pending.acker);
                                break 'run Ok(());
                            }
                        }
                    }
                    Some(Err(e)) => {
                        use async_nats::jetstream::consumer::pull::MessagesErrorKind as K;
                        match e.kind() {
                            K::ConsumerDeleted | K::PushBasedConsumer | K::NoResponders => {
                                break Err(self.fail(&format!("pulling from consumer {} of stream {}", c.durable, c.stream), &e));
                            }
                            _ => {
                                debug!(stream = %c.stream, error = %e, "nats pull error; retrying");
                                if trouble.is_none() {
                                    trouble = Some((Instant::now(), describe(&e)));
                                } else if let Some((_, last)) = trouble.as_mut() {
                                    *last = describe(&e);
                                }
                            }
                        }
                    }
                    None => break Err(TriggerError::failed(format!(
                        "the message stream of consumer {} of stream {} ended", c.durable, c.stream
                    ))),
                },
            }
        };

        // Messages already pulled but not handed over go back at once, after the pull's
        // subscription is gone (the server then hands them to the next pull).
        while let Some(Some(Ok(message))) = messages.next().now_or_never() {
            give_back.push(message.split().1);
        }
        drop(messages);
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        for acker in give_back {
            let _ = acker.ack_with(AckKind::Nak(Some(GIVE_BACK_DELAY))).await;
        }
        // Acknowledge what commits now; what does not, or cannot settle in time, goes back.
        let drained = inflight.drain(Instant::now() + DRAIN_TIMEOUT).await;
        for settled in drained.settled {
            let kind = if settled.outcome.is_ok() {
                AckKind::Ack
            } else {
                AckKind::Nak(Some(GIVE_BACK_DELAY))
            };
            let _ = settled.token.acker.ack_with(kind).await;
        }
        if !drained.unsettled.is_empty() {
            debug!(stream = %c.stream, left = drained.unsettled.len(), "stopping with events uncommitted; those messages are redelivered");
        }
        for pending in drained.unsettled {
            let _ = pending
                .acker
                .ack_with(AckKind::Nak(Some(GIVE_BACK_DELAY)))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
        result
    }
}
