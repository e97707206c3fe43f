//! One librdkafka consumer per client configuration (cluster, group, settings), shared by every
//! watcher that has it: thousands of watchers do not mean thousands of clients. The consumer
//! subscribes to the union of its watchers' topics, hands each message to every watcher of its
//! topic, and stores a partition's offsets in order, each only once all its events committed.
//! librdkafka commits stored offsets in the background and when the consumer closes.
//!
//! When an event is not committed, or the cluster is unreachable, the consumer stops and every
//! watcher on it fails: the supervisor restarts them with backoff, a new consumer resumes from
//! the committed offsets, and dedup keys absorb what is delivered again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientContext;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, error, info, warn};
use triggerer_sdk::{Event, EventSink, InFlight, Settled, Ticket, Watermark};

use crate::config::KafkaConfig;
use crate::payload::Received;

/// Messages handed out and not yet committed, per consumer, before it stops reading.
const MAX_IN_FLIGHT: usize = 10_000;

/// A topic and partition: the unit whose offsets are stored in order.
type Slot = (String, i32);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The shared consumers of one provider.
#[derive(Default)]
pub struct Hub {
    /// By [`KafkaConfig::consumer_key`], which holds every setting's value, secrets included.
    consumers: Mutex<HashMap<String, Arc<Shared>>>,
    next_id: AtomicU64,
}

/// Without the consumer keys: they hold the settings' secrets.
impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not `consumers()`: a `{:?}` while the lock is held must not deadlock.
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Subscriber {
    topics: Vec<String>,
    sink: EventSink,
    failed: Option<oneshot::Sender<String>>,
}

#[derive(Debug)]
struct Shared {
    cluster: String,
    group: String,
    redact: Arc<Redact>,
    subscribers: Mutex<HashMap<u64, Subscriber>>,
    changed: Notify,
}

/// A watcher's place on a shared consumer; dropping it leaves.
pub struct Subscription {
    shared: Arc<Shared>,
    id: u64,
    /// Resolves with the reason when the consumer stopped with an error.
    pub failed: oneshot::Receiver<String>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        lock(&self.shared.subscribers).remove(&self.id);
        self.shared.changed.notify_one();
    }
}

impl Hub {
    /// Joins (or starts) the consumer for `config`, delivering its topics' messages to `sink`.
    pub fn subscribe(self: &Arc<Self>, config: &KafkaConfig, sink: EventSink) -> Subscription {
        let (failed_tx, failed) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut consumers = lock(&self.consumers);
        let key = config.consumer_key();
        let shared = consumers
            .entry(key.clone())
            .or_insert_with(|| {
                let shared = Arc::new(Shared {
                    cluster: config.cluster().to_string(),
                    group: config.client.get("group.id").cloned().unwrap_or_default(),
                    redact: Arc::new(Redact::new(&config.client)),
                    subscribers: Mutex::new(HashMap::new()),
                    changed: Notify::new(),
                });
                tokio::spawn(run(
                    self.clone(),
                    key,
                    shared.clone(),
                    config.client.clone(),
                ));
                shared
            })
            .clone();
        lock(&shared.subscribers).insert(
            id,
            Subscriber {
                topics: config.topics.clone(),
                sink,
                failed: Some(failed_tx),
            },
        );
        drop(consumers);
        shared.changed.notify_one();
        Subscription { shared, id, failed }
    }

    /// Number of running consumers (one per distinct client configuration).
    pub fn consumers(&self) -> usize {
        lock(&self.consumers).len()
    }
}

/// Shortest value [`Redact`] removes (as the core's scrubber): shorter ones occur inside
/// ordinary words and numbers, and removing them would garble every line.
const MIN_REDACTED_LEN: usize = 4;

/// The values of a consumer's secret settings, taken out of librdkafka's log lines and errors
/// before they reach our log or a watcher's error. The core scrubs what the watchers report,
/// but the provider's own log lines never pass through it.
#[derive(Default)]
struct Redact {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redact({} secrets)", self.secrets.len())
    }
}

impl Redact {
    fn new(client: &BTreeMap<String, String>) -> Self {
        let mut secrets: Vec<String> = client
            .iter()
            .filter(|(key, value)| {
                triggerer_sdk::is_sensitive_key(key) && value.len() >= MIN_REDACTED_LEN
            })
            .map(|(_, value)| value.clone())
            .collect();
        secrets.sort_unstable();
        secrets.dedup();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets }
    }

    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "***");
            }
        }
        out
    }
}

/// A configuration librdkafka refused, without the value: librdkafka (`Unsupported value
/// "…" for configuration property "ssl.key.password"`) and rdkafka's `Display` both repeat it,
/// and a key with a typo (`sasl.pasword`) says nothing about whether the value is a secret.
fn creation_error(error: &KafkaError, redact: &Redact) -> String {
    match error {
        KafkaError::ClientConfig(_, description, key, value) if !value.is_empty() => {
            let mut description = description.replace(&format!("\"{value}\""), "\"***\"");
            if value.len() >= MIN_REDACTED_LEN {
                description = description.replace(value.as_str(), "***");
            }
            format!("client setting `{key}`: {description}")
        }
        other => redact.scrub(&other.to_string()),
    }
}

/// Forwards librdkafka's client-level errors (brokers down, authentication) to the consumer
/// loop, which decides whether they stop it.
struct HubContext {
    errors: mpsc::UnboundedSender<KafkaError>,
    redact: Arc<Redact>,
}

impl ClientContext for HubContext {
    /// librdkafka's own log (group joins, rebalances, broker connections) goes to our log, so
    /// a consumer that waits for its partitions says why; `kafka_config.debug` adds detail.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        let message = self.redact.scrub(message);
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let (error_text, reason) = (
            self.redact.scrub(&error.to_string()),
            self.redact.scrub(reason),
        );
        debug!(error = %error_text, reason, "kafka client error");
        let _ = self.errors.send(error);
    }
}

impl ConsumerContext for HubContext {}

/// librdkafka logs only what our log filter would show (target `librdkafka`).
fn librdkafka_log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    }
}

/// Whether a client error means the watchers cannot make progress (they fail, and retry with
/// backoff), as opposed to a blip librdkafka recovers from by itself.
fn is_stopping(error: &KafkaError) -> bool {
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::Fatal,
        ) => true,
        _ => matches!(error, KafkaError::MessageConsumptionFatal(_)),
    }
}

async fn run(hub: Arc<Hub>, key: String, shared: Arc<Shared>, client: BTreeMap<String, String>) {
    let (errors_tx, errors) = mpsc::unbounded_channel();
    let mut config = ClientConfig::new();
    for (k, v) in &client {
        config.set(k, v);
    }
    config
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set_log_level(librdkafka_log_level());
    let created: Result<StreamConsumer<HubContext>, _> = config.create_with_context(HubContext {
        errors: errors_tx,
        redact: shared.redact.clone(),
    });
    let (outcome, consumer) = match created {
        Ok(consumer) => (
            consume(&hub, &key, &shared, &consumer, errors).await,
            Some(consumer),
        ),
        Err(e) => (
            Err(format!(
                "cannot create a Kafka consumer for {}: {}",
                shared.cluster,
                creation_error(&e, &shared.redact)
            )),
            None,
        ),
    };
    let mut consumers = lock(&hub.consumers);
    if consumers.get(&key).is_some_and(|s| Arc::ptr_eq(s, &shared)) {
        consumers.remove(&key);
    }
    drop(consumers);
    if let Err(reason) = outcome {
        // Not the reason: librdkafka's text may repeat any setting (`Unsupported SASL
        // mechanism: …`), and only the core knows which came from the environment. Each
        // watcher gets it, and the core logs and records it scrubbed.
        warn!(cluster = %shared.cluster, group = %shared.group, "kafka consumer stopped; its watchers fail with the reason");
        for (_, mut subscriber) in lock(&shared.subscribers).drain() {
            if let Some(failed) = subscriber.failed.take() {
                let _ = failed.send(reason.clone());
            }
        }
    }
    // Closing leaves the group, which waits on the brokers (and, with none reachable, on
    // librdkafka's timeouts): on a blocking thread, after the watchers were told, so a dead
    // cluster can neither stall an async worker nor keep its watchers looking healthy.
    if let Some(consumer) = consumer {
        tokio::task::spawn_blocking(move || drop(consumer));
    }
}

/// Runs the consumer until it has no watchers (Ok) or must stop (Err with the reason).
async fn consume(
    hub: &Hub,
    key: &str,
    shared: &Shared,
    consumer: &StreamConsumer<HubContext>,
    mut errors: mpsc::UnboundedReceiver<KafkaError>,
) -> Result<(), String> {
    let mut subscribed: BTreeSet<String> = BTreeSet::new();
    // One delivery per message and watcher, tagged with its partition and its place there.
    let mut inflight: InFlight<(Slot, Ticket)> = InFlight::new(MAX_IN_FLIGHT);
    // A message's offset is stored once every watcher's event of it, and of every message
    // before it in the partition, committed.
    let mut marks: Watermark<Slot> = Watermark::new();

    loop {
        let (topics, watchers) = {
            let subs = lock(&shared.subscribers);
            let topics: BTreeSet<String> = subs
                .values()
                .flat_map(|s| s.topics.iter().cloned())
                .collect();
            (topics, subs.len())
        };
        if watchers == 0 && inflight.is_empty() {
            // Leave only if nobody joined meanwhile: joining happens under the hub's lock.
            let mut consumers = lock(&hub.consumers);
            if lock(&shared.subscribers).is_empty() {
                consumers.remove(key);
                drop(consumers);
                if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                    debug!(error = %e, "final offset commit");
                }
                info!(cluster = %shared.cluster, group = %shared.group, "kafka consumer closed: no watchers left");
                return Ok(());
            }
            continue;
        }
        if topics != subscribed && !topics.is_empty() {
            let list: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer.subscribe(&list).map_err(|e| {
                format!(
                    "cannot subscribe to {list:?}: {}",
                    shared.redact.scrub(&e.to_string())
                )
            })?;
            info!(cluster = %shared.cluster, group = %shared.group, watchers, topics = ?list, "kafka consumer serving watchers");
            subscribed = topics;
        }
        tokio::select! {
            biased;
            Some(Settled { token: (slot, ticket), outcome }) = inflight.next() => {
                if let Err(e) = outcome {
                    marks.refuse(&slot, ticket);
                    return Err(format!("the event of {}/{}@{} was not committed: {e}", slot.0, slot.1, ticket.offset()));
                }
                if let Some(next) = marks.commit(&slot, ticket) {
                    store(consumer, &slot, next);
                }
            }
            Some(error) = errors.recv() => {
                let text = shared.redact.scrub(&error.to_string());
                if is_stopping(&error) {
                    return Err(format!("Kafka cluster {}: {text}", shared.cluster));
                }
                warn!(cluster = %shared.cluster, error = %text, "kafka client error; librdkafka retries");
            }
            _ = shared.changed.notified() => {}
            received = consumer.recv(), if watchers > 0 && inflight.has_room() => {
                let message = match received {
                    Ok(m) => m,
                    Err(error) if is_stopping(&error) => {
                        return Err(format!("Kafka cluster {}: {}", shared.cluster, shared.redact.scrub(&error.to_string())));
                    }
                    Err(error) => {
                        warn!(cluster = %shared.cluster, error = %shared.redact.scrub(&error.to_string()), "kafka consume error");
                        continue;
                    }
                };
                let received = Received {
                    topic: message.topic().to_string(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                    headers: message
                        .headers()
                        .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
                        .unwrap_or_default(),
                    timestamp_ms: message.timestamp().to_millis(),
                };
                drop(message);
                let sinks: Vec<(u64, EventSink)> = lock(&shared.subscribers)
                    .iter()
                    .filter(|(_, s)| s.topics.contains(&received.topic))
                    .map(|(id, s)| (*id, s.sink.clone()))
                    .collect();
                let slot: Slot = (received.topic.clone(), received.partition);
                if sinks.is_empty() {
                    // Its watcher left: nobody to tell, and nothing to hold the partition for.
                    if let Some(next) = marks.pass(slot.clone(), received.offset) {
                        store(consumer, &slot, next);
                    }
                    continue;
                }
                let payload = received.payload();
                let dedup_key = received.dedup_key(&shared.cluster);
                let source_time = received.source_time();
                // Room is checked once per message, so one fanned out to several watchers may
                // go past the bound by a few: splitting a message would hold its partition.
                for (_, sink) in sinks {
                    // Waiting here when the core's queue is full is the backpressure.
                    let mut event = Event::new(payload.clone(), dedup_key.clone());
                    event.source_time = source_time;
                    let delivery = sink
                        .submit(event)
                        .await
                        .map_err(|e| format!("cannot hand over {dedup_key}: {e}"))?;
                    let ticket = marks.track(slot.clone(), received.offset);
                    inflight.push((slot.clone(), ticket), delivery);
                }
            }
        }
    }
}

/// Stores `next` (the partition's release point: one past its last message whose events, and
/// those of every message before it, committed) for librdkafka to commit.
fn store<C: ConsumerContext>(consumer: &StreamConsumer<C>, (topic, partition): &Slot, next: i64) {
    // `store_offset` is librdkafka's legacy `rd_kafka_offset_store`, which commits the offset
    // it is given plus one: hand it the last released message.
    let last = next - 1;
    // Fails only for a partition revoked meanwhile: its new owner redelivers from the last
    // committed offset, and the dedup keys absorb the repeats.
    if let Err(e) = consumer.store_offset(topic, *partition, last) {
        debug!(%topic, partition, offset = last, error = %e, "offset not stored");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "c4n4ry-9f3b1e";

    /// What librdkafka itself says when it refuses `key = CANARY`.
    fn refused(key: &str) -> String {
        let (errors, _rx) = mpsc::unbounded_channel();
        let mut client = BTreeMap::new();
        client.insert("bootstrap.servers".to_string(), "127.0.0.1:9".to_string());
        client.insert("group.id".to_string(), "g".to_string());
        client.insert(key.to_string(), CANARY.to_string());
        let redact = Arc::new(Redact::new(&client));
        let mut config = ClientConfig::new();
        for (k, v) in &client {
            config.set(k, v);
        }
        let created: Result<StreamConsumer<HubContext>, _> =
            config.create_with_context(HubContext {
                errors,
                redact: redact.clone(),
            });
        match created {
            Ok(_) => panic!("librdkafka accepted `{key}`"),
            Err(e) => {
                assert!(
                    e.to_string().contains(CANARY),
                    "rdkafka no longer repeats the value; this guard may go: {e}"
                );
                creation_error(&e, &redact)
            }
        }
    }

    #[test]
    fn refused_settings_are_named_without_their_value() {
        // A typo'd key: not a known secret setting, and its value is a secret all the same.
        let typo = refused("sasl.pasword");
        assert!(!typo.contains(CANARY), "{typo}");
        assert!(
            typo.contains("`sasl.pasword`") && typo.contains("No such configuration property"),
            "{typo}"
        );
        // Built without OpenSSL, librdkafka refuses the SSL settings and repeats the value.
        let ssl = refused("ssl.key.password");
        assert!(!ssl.contains(CANARY), "{ssl}");
        assert!(ssl.contains("`ssl.key.password`"), "{ssl}");
    }

    #[test]
    fn secret_settings_are_redacted_from_log_lines() {
        let client: BTreeMap<String, String> = [
            ("sasl.password", CANARY),
            ("sasl.username", "svc-user"),
            ("ssl.keystore.password", "k3ystore"),
            ("sasl.oauthbearer.client.secret", "abc"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let redact = Redact::new(&client);
        assert_eq!(
            redact.scrub(&format!("auth as svc-user with {CANARY} / k3ystore failed")),
            "auth as svc-user with *** / *** failed"
        );
        // Too short to redact without garbling the line.
        assert_eq!(redact.scrub("abc"), "abc");
        assert!(!format!("{redact:?}").contains(CANARY));
    }
}
