//! The `sqs` provider: `sqs.SqsSensorTrigger` (also Airflow's
//! `airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger`) turns every message of a queue
//! into an event, and serves the `sqs` scheme and SQS queue URLs of the common message-queue
//! trigger. It holds one SDK client per region and endpoint; each trigger long-polls its queue.
//! It must not delete a message before that message's events are committed.
//!
//! | kwarg | type | default | meaning |
//! |---|---|---|---|
//! | `sqs_queue` | string | required | the queue URL |
//! | `region_name` | string | from the URL | AWS region |
//! | `endpoint_url` | string | AWS | another endpoint (an emulator) |
//! | `max_messages` | 1–10 | 10 | messages per receive |
//! | `wait_time_seconds` | 0–20 | 20 | long-poll wait |
//! | `visibility_timeout` | seconds | 60 | hidden from other consumers this long; extended while a message waits for its commit |
//! | `num_batches`, `waiter_delay`, `delete_message_on_reception` | | | accepted for Airflow compatibility (`delete_message_on_reception = false` is refused) |
//!
//! Credentials come from the standard AWS chain (environment, profile, instance role); a URL
//! carrying `user:password@` is refused.
//!
//! Delivery guarantee: one event per message, dedup key `sqs:{MessageId}`, payload
//! `{message_id, body, attributes, message_attributes}`. A message is deleted (in batches of up
//! to ten) only after its event committed; until then its visibility is extended, so no other
//! consumer takes it meanwhile. A crash leaves it undeleted: it comes back after its visibility
//! timeout and its MessageId makes the repeat harmless. A message that is never committed is
//! never deleted.

mod config;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageSystemAttributeName,
};
use aws_sdk_sqs::Client;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;
use tracing::{debug, warn};
use triggerer_sdk::{
    CancellationToken, Event, EventTrigger, InFlight, KwargsError, Refusal, Settled,
    TriggerContext, TriggerError, TypedProvider,
};

pub use config::{SqsConfig, SqsParams};

/// The classpaths of [`SqsProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &[
    "sqs.SqsSensorTrigger",
    "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger",
];

/// Messages received and not yet committed, per trigger, before it stops receiving.
const MAX_IN_FLIGHT: usize = 1_000;
/// How long a cancelled trigger waits for its in-flight events before it leaves them to come back.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

type ClientKey = (Option<String>, Option<String>);

/// The `sqs` provider; one per process, holding one SDK client per region and endpoint.
#[derive(Debug, Default)]
pub struct SqsProvider {
    clients: std::sync::Arc<Mutex<HashMap<ClientKey, Client>>>,
}

impl SqsProvider {
    pub fn new() -> Self {
        Self::default()
    }
}

impl TypedProvider for SqsProvider {
    type Params = SqsParams;
    const NAME: &'static str = "sqs";
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["sqs"];
    const REFUSED: &'static [Refusal] = config::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &SqsParams) -> Result<(), KwargsError> {
        SqsConfig::from_params(params).map(drop)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params(queue, kwargs)
    }

    fn build_trigger(&self, params: SqsParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(SqsSensorTrigger {
            clients: self.clients.clone(),
            config: SqsConfig::from_params(&params)?,
        }))
    }
}

/// One watcher of one queue.
pub struct SqsSensorTrigger {
    clients: std::sync::Arc<Mutex<HashMap<ClientKey, Client>>>,
    config: SqsConfig,
}

impl SqsSensorTrigger {
    async fn client(&self) -> Client {
        let key = (self.config.region.clone(), self.config.endpoint_url.clone());
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&key) {
            return client.clone();
        }
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &self.config.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        } else {
            // An emulator needs some region for signing.
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
        if let Some(endpoint) = &self.config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let client = Client::new(&loader.load().await);
        clients.insert(key, client.clone());
        client
    }
}

/// An AWS error as one line for `triggers list` and the log: each cause's message, without
/// the SDK's debug dump of the raw response.
fn describe<E: std::error::Error>(e: E) -> String {
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

/// Long-polls the queue and hands over each non-empty batch; stops at the first error, which
/// it hands over too.
async fn receive(
    client: Client,
    config: SqsConfig,
    batches: mpsc::Sender<Result<Vec<Message>, String>>,
    cancel: CancellationToken,
) {
    loop {
        let request = client
            .receive_message()
            .queue_url(&config.queue_url)
            .max_number_of_messages(config.max_messages)
            .wait_time_seconds(config.wait_time_seconds)
            .visibility_timeout(config.visibility_timeout)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .message_attribute_names("All")
            .send();
        let response = tokio::select! {
            _ = cancel.cancelled() => return,
            r = request => r,
        };
        let outcome = match response {
            Ok(out) => match out.messages {
                Some(messages) if !messages.is_empty() => Ok(messages),
                _ => continue,
            },
            Err(e) => Err(format!(
                "receiving from {}: {}",
                config.queue_url,
                describe(e)
            )),
        };
        let stop = outcome.is_err();
        // Waiting here while the trigger is busy is the backpressure.
        if batches.send(outcome).await.is_err() || stop {
            return;
        }
    }
}

fn payload(m: &Message) -> Value {
    let attributes: Map<String, Value> = m
        .attributes
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str().to_string(), Value::String(v.clone())))
        .collect();
    let message_attributes: Map<String, Value> = m
        .message_attributes
        .iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                json!({
                    "data_type": v.data_type,
                    "string_value": v.string_value,
                    // Binary attributes are kept, as base64, like every other raw byte.
                    "binary_value": v.binary_value.as_ref().map(|b| {
                        base64::engine::general_purpose::STANDARD.encode(b.as_ref())
                    }),
                }),
            )
        })
        .collect();
    json!({
        "message_id": m.message_id,
        "body": m.body,
        "attributes": attributes,
        "message_attributes": message_attributes,
    })
}

/// When SQS says the message was sent: its `SentTimestamp` system attribute (milliseconds since
/// the Unix epoch), which every receive asks for (`MessageSystemAttributeName::All`).
fn sent_time(
    attributes: Option<&HashMap<MessageSystemAttributeName, String>>,
) -> Option<SystemTime> {
    let ms: u64 = attributes?
        .get(&MessageSystemAttributeName::SentTimestamp)?
        .trim()
        .parse()
        .ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// A received message awaiting its commit: what deleting it, and keeping it hidden meanwhile,
/// takes.
#[derive(Debug)]
struct Receipt {
    handle: String,
    id: String,
    /// When its visibility was last set.
    hidden_since: Instant,
}

#[async_trait]
impl EventTrigger for SqsSensorTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let client = self.client().await;
        let config = self.config.clone();
        let stop_receiving = ctx.cancel.child_token();
        let (tx, mut batches) = mpsc::channel(1);
        let receiver = tokio::spawn(receive(
            client.clone(),
            config.clone(),
            tx,
            stop_receiving.clone(),
        ));
        let _stop = stop_receiving.clone().drop_guard();

        let mut inflight: InFlight<Receipt> = InFlight::new(MAX_IN_FLIGHT);
        let mut to_delete: Vec<String> = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let extend_after = Duration::from_secs(
            u64::try_from(config.visibility_timeout / 2)
                .unwrap_or(5)
                .max(5),
        );

        let result = 'run: loop {
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => break Ok(()),
                Some(Settled { token: receipt, outcome }) = inflight.next() => {
                    if let Err(e) = outcome {
                        break Err(TriggerError::failed(format!("message {} was not committed: {e}", receipt.id)));
                    }
                    to_delete.push(receipt.handle);
                    if to_delete.len() >= 10 {
                        delete(&client, &config.queue_url, &mut to_delete).await;
                    }
                }
                _ = tick.tick() => {
                    delete(&client, &config.queue_url, &mut to_delete).await;
                    extend(&client, &config, &mut inflight, extend_after).await;
                }
                batch = batches.recv(), if inflight.has_room() => match batch {
                    Some(Ok(messages)) => {
                        for m in messages {
                            let (Some(id), Some(handle)) = (m.message_id.clone(), m.receipt_handle.clone()) else {
                                warn!(queue = %config.queue_url, "message without id or receipt handle; left for its visibility timeout");
                                continue;
                            };
                            let mut event = Event::new(payload(&m), format!("sqs:{id}"));
                            event.source_time = sent_time(m.attributes.as_ref());
                            let receipt = Receipt { handle, id, hidden_since: Instant::now() };
                            // Waits for room and for the core's queue (backpressure), but not
                            // past a cancel: the messages not handed over come back by
                            // themselves.
                            let submitted = tokio::select! {
                                biased;
                                _ = ctx.cancel.cancelled() => break 'run Ok(()),
                                submitted = inflight.submit(&ctx.sink, event, receipt) => submitted,
                            };
                            if let Err(e) = submitted {
                                break 'run Err(e.into());
                            }
                        }
                    }
                    Some(Err(e)) => break Err(TriggerError::failed(e)),
                    None => break Err(TriggerError::failed("the SQS receiver stopped")),
                },
            }
        };
        stop_receiving.cancel();
        let _ = receiver.await;
        // Finish the acknowledgements of what is committing now; the rest comes back later.
        let drained = inflight.drain(Instant::now() + DRAIN_TIMEOUT).await;
        if !drained.is_complete() {
            debug!(queue = %config.queue_url, left = drained.unsettled.len(), "stopping with events uncommitted; those messages come back");
        }
        to_delete.extend(
            drained
                .settled
                .into_iter()
                .filter(|s| s.outcome.is_ok())
                .map(|s| s.token.handle),
        );
        while !to_delete.is_empty() {
            delete(&client, &config.queue_url, &mut to_delete).await;
        }
        result
    }
}

/// Deletes up to ten committed messages. A failed delete only means the message comes back and
/// its repeat is absorbed by its dedup key.
async fn delete(client: &Client, queue_url: &str, receipts: &mut Vec<String>) {
    if receipts.is_empty() {
        return;
    }
    let batch: Vec<String> = receipts.drain(..receipts.len().min(10)).collect();
    let entries: Vec<DeleteMessageBatchRequestEntry> = batch
        .iter()
        .enumerate()
        .filter_map(|(i, receipt)| {
            DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .build()
                .ok()
        })
        .collect();
    match client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) if !out.failed.is_empty() => {
            warn!(
                queue = queue_url,
                failed = out.failed.len(),
                "some deletes failed; those messages will come back and be deduplicated"
            );
        }
        Ok(_) => debug!(
            queue = queue_url,
            deleted = batch.len(),
            "messages deleted after commit"
        ),
        Err(e) => {
            warn!(queue = queue_url, error = %describe(e), "delete failed; those messages will come back and be deduplicated")
        }
    }
}

/// Keeps messages that still wait for their commit hidden from other consumers.
async fn extend(
    client: &Client,
    config: &SqsConfig,
    inflight: &mut InFlight<Receipt>,
    after: Duration,
) {
    let now = Instant::now();
    let due: Vec<String> = inflight
        .unsettled_mut()
        .filter(|r| now.duration_since(r.hidden_since) >= after)
        .map(|r| r.handle.clone())
        .take(10)
        .collect();
    if due.is_empty() {
        return;
    }
    let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = due
        .iter()
        .enumerate()
        .filter_map(|(i, receipt)| {
            ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .visibility_timeout(config.visibility_timeout)
                .build()
                .ok()
        })
        .collect();
    match client
        .change_message_visibility_batch()
        .queue_url(&config.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(_) => {
            // Nothing settled meanwhile: the set is polled only by the trigger's loop.
            for receipt in inflight.unsettled_mut() {
                if due.contains(&receipt.handle) {
                    receipt.hidden_since = now;
                }
            }
        }
        Err(e) => {
            warn!(queue = %config.queue_url, error = %describe(e), "cannot extend visibility; a message may be delivered again (deduplicated)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_time_is_the_sent_timestamp() {
        let mut attributes = HashMap::new();
        attributes.insert(
            MessageSystemAttributeName::SentTimestamp,
            "1700000000123".to_string(),
        );
        attributes.insert(
            MessageSystemAttributeName::ApproximateReceiveCount,
            "1".to_string(),
        );
        assert_eq!(
            sent_time(Some(&attributes)),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        // The payload keeps it too, under its AWS name.
        let message = Message::builder()
            .message_id("m1")
            .set_attributes(Some(attributes.clone()))
            .build();
        assert_eq!(
            payload(&message)["attributes"]["SentTimestamp"],
            "1700000000123"
        );
        assert_eq!(
            sent_time(message.attributes.as_ref()),
            sent_time(Some(&attributes))
        );
    }

    #[test]
    fn a_missing_or_malformed_sent_timestamp_is_no_source_time() {
        assert_eq!(sent_time(None), None);
        let mut attributes = HashMap::new();
        assert_eq!(sent_time(Some(&attributes)), None);
        attributes.insert(
            MessageSystemAttributeName::SentTimestamp,
            "soon".to_string(),
        );
        assert_eq!(sent_time(Some(&attributes)), None);
        attributes.insert(MessageSystemAttributeName::SentTimestamp, "-5".to_string());
        assert_eq!(sent_time(Some(&attributes)), None);
    }
}
