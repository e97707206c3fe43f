//! The `mqtt` provider: `mqtt.AwaitMessageTrigger` turns every message published to its topic
//! filters on an MQTT broker into an event, and serves the `mqtt` and `mqtts` schemes of the
//! common message-queue trigger (`queue = "mqtt://broker:1883/sensors/+/temperature"`). Each
//! trigger holds one MQTT 3.1.1 connection: a client id is one session, and two connections
//! with the same client id would take it from each other.
//!
//! | kwarg | type | default | meaning |
//! |---|---|---|---|
//! | `url` | string | required | `mqtt://[user[:password]@]host[:port]` (1883) or `mqtts://…` (8883, TLS with the system's roots); best as `{ env = "NAME" }` when it holds a password |
//! | `topics` | string or list | required | topic filters; `+` and `#` wildcards as MQTT has them |
//! | `client_id` | string | derived | the session's client id; by default `triggerer-` and 13 hex digits of a hash of the broker address, user, QoS and topics (not the password): stable across restarts and hosts |
//! | `qos` | 0–2 | 1 | the subscription's QoS; the broker delivers each message at the lower of it and the publisher's |
//!
//! The session is persistent (`clean_session = false`): while a trigger is away (a restart, a
//! `kill -9`, a network cut) the broker keeps its subscriptions, queues what arrives for it
//! (Mosquitto: up to `max_queued_messages`, 1000 by default, then it drops), and sends again
//! whatever was delivered but not acknowledged. That needs a stable client id: the derived one
//! is, as long as the kwargs are; set `client_id` when two deployments watch the same broker with
//! the same kwargs (they would share, and fight over, one session).
//!
//! Delivery guarantee: one event per message, payload `{topic, value, value_encoding
//! (json|text|base64), qos, retain, dup, packet_id}`. Acknowledgements are manual: a message's
//! PUBACK (QoS 1) or PUBREC (QoS 2) is sent only after its event committed, in the order the
//! messages arrived (as MQTT requires), and at most 256 messages wait for their commit at a time
//! (the broker's own in-flight window, Mosquitto's `max_inflight_messages`, usually bounds it
//! first). A message not committed is not acknowledged: the trigger fails, reconnects with
//! backoff, and the broker sends it again. While 256 wait, the connection is not read: a commit
//! stalled for longer than the broker's keep-alive grace (22.5 s: 1.5 × the 15 s keep-alive)
//! costs a reconnect and redeliveries, nothing more.
//!
//! Dedup key: `mqtt:{host:port}/{client_id}/{packet id}.{generation}/{digest}`, the digest being
//! 16 hex digits of SHA-256 over topic and payload. MQTT has no message id that survives a
//! redelivery (packet ids are reused once acknowledged), so the trigger's checkpoint keeps, per
//! packet id, the generation and digest of the last message committed under it (see
//! [`payload::Ledger`]): a redelivery after a crash (flagged DUP, same packet id, topic and
//! payload) gets the committed message's key and inserts nothing. The limits, honestly:
//! - QoS 0 is at most once: such a message is never acknowledged nor sent again, and one that
//!   was not committed when the trigger stopped is lost (its key is unique per run).
//! - A redelivered (DUP) message with the same packet id, topic and payload as the message last
//!   committed under that packet id is taken for a repeat and inserts nothing: a new message
//!   that reused a packet id while repeating its predecessor's payload exactly, and whose first
//!   delivery did not commit before a crash, is lost. Mosquitto hands packet ids out in turn
//!   (65,535 of them), so the two would be 65,535 messages apart.
//! - A message counts twice when the publisher sent it twice (QoS 1 is at least once from the
//!   publisher to the broker, too; publish at QoS 2 to avoid that), when a broker sends a
//!   redelivery without the DUP flag, and for a retained message, which the broker sends again
//!   at every subscription, so once per (re)connect, flagged `retain`.
//! - The checkpoint holds one pair per packet id seen, at most 65,535.

mod config;
pub mod payload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event as MqttEvent, EventLoop, MqttOptions,
    Outgoing, Packet, Publish, QoS, SubscribeFilter, SubscribeReasonCode, TlsConfiguration,
    Transport,
};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use triggerer_sdk::{
    Event, EventTrigger, InFlight, KwargsError, Refusal, Settled, Ticket, TriggerContext,
    TriggerError, TypedProvider, Watermark,
};

pub use config::{check_filter, derived_client_id, parse_url, Broker, MqttConfig, MqttParams};
use payload::{Ledger, Received};

/// The classpaths of [`MqttProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &["mqtt.AwaitMessageTrigger"];

/// Messages handed over and not yet committed, at most.
const MAX_IN_FLIGHT: usize = 256;
/// How often the client pings the broker when nothing else is sent; the broker drops a
/// connection silent for 1.5 times this.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// MQTT's largest packet: no message is too big to become an event.
const MAX_PACKET: usize = 268_435_455;
/// How long a cancelled trigger waits for its in-flight events before it leaves them to the
/// broker's redelivery.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a stopping trigger gives its last acknowledgements and DISCONNECT to go out.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// The `mqtt` provider. It shares nothing between triggers: each holds its own connection,
/// since a client id is a session.
#[derive(Debug, Default)]
pub struct MqttProvider;

impl MqttProvider {
    pub fn new() -> Self {
        Self
    }
}

impl TypedProvider for MqttProvider {
    type Params = MqttParams;
    const NAME: &'static str = "mqtt";
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["mqtt", "mqtts"];
    const REFUSED: &'static [Refusal] = config::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &MqttParams) -> Result<(), KwargsError> {
        MqttConfig::check(params)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params(queue, kwargs)
    }

    fn build_trigger(&self, params: MqttParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(AwaitMessageTrigger {
            config: MqttConfig::from_params(&params)?,
        }))
    }
}

/// One watcher: one connection and one persistent session.
pub struct AwaitMessageTrigger {
    config: MqttConfig,
}

fn qos_of(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// rustls with ring (the binary links both of rustls' providers, so none is the default) and
/// the system's root certificates.
fn tls_config() -> Result<TlsConfiguration, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A certificate the store cannot take is skipped, as every TLS client does.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err("mqtts: no usable root certificate in the system's store".into());
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("mqtts: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

/// A refused CONNACK in words.
fn refusal(code: ConnectReturnCode) -> &'static str {
    match code {
        ConnectReturnCode::BadUserNamePassword => "bad user name or password",
        ConnectReturnCode::NotAuthorized => "not authorized",
        ConnectReturnCode::BadClientId => "client id rejected",
        ConnectReturnCode::ServiceUnavailable => "service unavailable",
        ConnectReturnCode::RefusedProtocolVersion => "MQTT 3.1.1 not supported",
        ConnectReturnCode::Success => "accepted",
    }
}

/// A connection error as one line, without any password.
fn describe(broker: &Broker, client_id: &str, e: &ConnectionError) -> String {
    let what = match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {}", refusal(*code))
        }
        ConnectionError::NetworkTimeout => "connection timed out".to_string(),
        ConnectionError::Io(io) => format!("connection lost: {io}"),
        other => format!("connection lost: {other}"),
    };
    // The library's own text could carry the URL; take its password out all the same.
    let what = triggerer_sdk::redact_uri(&what);
    format!("{} (client id {client_id}): {what}", broker.redacted())
}

/// What the connection task hands the trigger.
enum FromBroker {
    Connected { session_present: bool },
    Subscribed(Vec<SubscribeReasonCode>),
    Message(Box<Publish>),
    Failed(String),
}

/// Drives the connection: polls it without pause (so pings and acknowledgements go out) and
/// hands over what the trigger needs. Waiting on a full `tx` is the backpressure. Once the
/// trigger stops listening, it goes on polling only to flush the last acknowledgements and the
/// DISCONNECT; messages arriving then are left unacknowledged, for the broker to send again.
async fn pump(
    mut eventloop: EventLoop,
    tx: mpsc::Sender<FromBroker>,
    broker: Broker,
    client_id: String,
) {
    let mut listening = true;
    loop {
        let polled = eventloop.poll().await;
        let handed = match polled {
            Ok(MqttEvent::Incoming(Packet::Publish(p))) => FromBroker::Message(Box::new(p)),
            Ok(MqttEvent::Incoming(Packet::ConnAck(c))) => FromBroker::Connected {
                session_present: c.session_present,
            },
            Ok(MqttEvent::Incoming(Packet::SubAck(s))) => FromBroker::Subscribed(s.return_codes),
            Ok(MqttEvent::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(e) => {
                if listening {
                    let _ = tx
                        .send(FromBroker::Failed(describe(&broker, &client_id, &e)))
                        .await;
                }
                return;
            }
        };
        if listening && tx.send(handed).await.is_err() {
            listening = false;
        }
    }
}

/// Acknowledges, in arrival order, every message received before `next` (the watermark's
/// release point). QoS 0 messages have nothing to acknowledge.
fn acknowledge(
    client: &AsyncClient,
    unacked: &mut BTreeMap<i64, Publish>,
    next: i64,
) -> Result<(), String> {
    while let Some(entry) = unacked.first_entry() {
        if *entry.key() >= next {
            break;
        }
        let publish = entry.remove();
        if publish.qos != QoS::AtMostOnce {
            client
                .try_ack(&publish)
                .map_err(|e| format!("cannot queue the acknowledgement of a message: {e}"))?;
        }
    }
    Ok(())
}

/// The order of arrival within one run: the watermark's one lane.
type Lane = ();

#[async_trait]
impl EventTrigger for AwaitMessageTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let config = self.config;
        let broker = config.broker.clone();
        let session = format!("{}/{}", broker.address(), config.client_id);
        let mut options = MqttOptions::new(&config.client_id, &broker.host, broker.port);
        options
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_keep_alive(KEEP_ALIVE)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(user) = &broker.username {
            options.set_credentials(user, broker.password.clone().unwrap_or_default());
        }
        if broker.tls {
            options.set_transport(Transport::tls_with_config(
                tls_config().map_err(TriggerError::failed)?,
            ));
        }
        // Room for every acknowledgement the trigger can owe at once, the subscription and the
        // DISCONNECT, so that queueing one never waits.
        let (client, eventloop) = AsyncClient::new(options, MAX_IN_FLIGHT + 16);
        let filters: Vec<SubscribeFilter> = config
            .topics
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), qos_of(config.qos)))
            .collect();
        // Sent once connected; on every start, since a new filter must reach an old session.
        client
            .try_subscribe_many(filters)
            .map_err(|e| TriggerError::failed(format!("cannot subscribe: {e}")))?;
        let (tx, mut rx) = mpsc::channel(MAX_IN_FLIGHT);
        let pump = tokio::spawn(pump(
            eventloop,
            tx,
            broker.clone(),
            config.client_id.clone(),
        ));

        let mut ledger = Ledger::from_checkpoint(&ctx.checkpoint);
        let run_nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut inflight: InFlight<Ticket> = InFlight::new(MAX_IN_FLIGHT);
        let mut marks: Watermark<Lane> = Watermark::new();
        let mut unacked: BTreeMap<i64, Publish> = BTreeMap::new();
        let mut seq: i64 = 0;

        let result: Result<(), TriggerError> = 'run: loop {
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => break Ok(()),
                Some(Settled { token: ticket, outcome }) = inflight.next() => match outcome {
                    Ok(_) => {
                        if let Some(next) = marks.commit(&(), ticket) {
                            if let Err(e) = acknowledge(&client, &mut unacked, next) {
                                break Err(TriggerError::failed(e));
                            }
                        }
                    }
                    Err(e) => break Err(TriggerError::failed(format!(
                        "{}: a message was not committed ({e}); it stays unacknowledged and the \
                         broker sends it again",
                        broker.redacted()
                    ))),
                },
                from = rx.recv(), if inflight.has_room() => match from {
                    Some(FromBroker::Message(publish)) => {
                        let m = Received::from_publish(&publish);
                        let id = ledger.identify(&session, &m, run_nonce, u64::try_from(seq).unwrap_or(0));
                        if id.repeat {
                            debug!(session = %session, pkid = m.pkid, "redelivery of a committed message");
                        }
                        let mut event = Event::new(m.payload(), id.dedup_key);
                        if let Some((k, v)) = id.checkpoint {
                            event = event.with_checkpoint(k, v);
                        }
                        let ticket = marks.track((), seq);
                        unacked.insert(seq, *publish);
                        seq += 1;
                        // Waits for room and for the core's queue (backpressure), but not past
                        // a cancel: what was not handed over is sent again by the broker.
                        let submitted = tokio::select! {
                            biased;
                            _ = ctx.cancel.cancelled() => break 'run Ok(()),
                            submitted = inflight.submit(&ctx.sink, event, ticket) => submitted,
                        };
                        if let Err(e) = submitted {
                            break 'run Err(e.into());
                        }
                    }
                    Some(FromBroker::Connected { session_present }) => {
                        info!(broker = %broker.redacted(), client_id = %config.client_id, session_present, "connected");
                        if !session_present && !ledger.is_empty() {
                            ctx.warnings.warn(format!(
                                "{}: the broker had no session for client id {}: messages \
                                 published while the trigger was away are not delivered (the \
                                 broker restarted without persistence, or the session expired)",
                                broker.redacted(),
                                config.client_id
                            ));
                        }
                    }
                    Some(FromBroker::Subscribed(codes)) => {
                        let refused: Vec<&str> = config
                            .topics
                            .iter()
                            .zip(&codes)
                            .filter(|(_, c)| matches!(c, SubscribeReasonCode::Failure))
                            .map(|(t, _)| t.as_str())
                            .collect();
                        if !refused.is_empty() {
                            break Err(TriggerError::failed(format!(
                                "{} (client id {}): the broker refused the subscription to {}",
                                broker.redacted(),
                                config.client_id,
                                refused.join(", ")
                            )));
                        }
                        debug!(session = %session, "subscribed");
                    }
                    Some(FromBroker::Failed(e)) => break Err(TriggerError::failed(e)),
                    None => break Err(TriggerError::failed(format!(
                        "{}: the MQTT connection stopped",
                        broker.redacted()
                    ))),
                },
            }
        };

        // Stop listening (the connection task no longer waits on a full channel), acknowledge
        // what commits now, then say goodbye; the rest is sent again by the broker.
        drop(rx);
        let drained = inflight.drain(Instant::now() + DRAIN_TIMEOUT).await;
        if !drained.is_complete() {
            debug!(session = %session, left = drained.unsettled.len(), "stopping with events uncommitted; the broker sends those messages again");
        }
        for settled in drained.settled {
            if settled.outcome.is_ok() {
                if let Some(next) = marks.commit(&(), settled.token) {
                    if let Err(e) = acknowledge(&client, &mut unacked, next) {
                        warn!(session = %session, error = %e, "acknowledgement lost; the message comes again, deduplicated");
                    }
                }
            }
        }
        let _ = client.try_disconnect();
        let mut pump = pump;
        if tokio::time::timeout(FLUSH_TIMEOUT, &mut pump)
            .await
            .is_err()
        {
            pump.abort();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_words() {
        let broker = parse_url("mqtt://u:hunter2@h:1").unwrap();
        let e = describe(
            &broker,
            "c1",
            &ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword),
        );
        assert_eq!(
            e,
            "mqtt://u:***@h:1 (client id c1): the broker refused the connection: bad user name or password"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn tls_has_roots_or_says_so() {
        // Either a config (roots found) or a one-line reason; never a panic.
        if let Err(e) = tls_config() {
            assert!(e.starts_with("mqtts:"), "{e}");
        }
    }

    #[test]
    fn the_provider_serves_its_classpath_and_schemes() {
        use triggerer_sdk::Provider;
        let p = MqttProvider::new();
        assert_eq!(p.classpaths(), ["mqtt.AwaitMessageTrigger"]);
        assert_eq!(p.schemes(), ["mqtt", "mqtts"]);
    }
}
