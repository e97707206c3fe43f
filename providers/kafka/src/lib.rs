//! The `kafka` provider: `kafka.AwaitMessageTrigger` (also Airflow's
//! `airflow.providers.apache.kafka.triggers.await_message.AwaitMessageTrigger`) turns every
//! message of its topics into an event, and serves the `kafka` scheme and `kafka://` URIs of the
//! common message-queue trigger. It owns the shared consumers (see [`hub`]); a trigger only
//! holds its place on one. It must not store an offset before the events of that message, and
//! of every message before it in the partition, are committed.
//!
//! | kwarg | type | default | meaning |
//! |---|---|---|---|
//! | `topics` | list of strings | required | topics to watch |
//! | `bootstrap_servers` | string or list | required (or in `kafka_config`) | `host:port[,host:port…]`; no `user:password@` (use `kafka_config` `sasl.*`) |
//! | `group_id` | string | `triggerer` | consumer group; watchers with the same cluster, group and settings share one consumer |
//! | `kafka_config` | table | `{}` | further librdkafka settings (security, timeouts; `auto.offset.reset` defaults to `earliest`) |
//! | `poll_timeout`, `poll_interval` | number | — | accepted for Airflow compatibility; the consumer is push-based |
//! | `commit_offset` | bool | `true` | accepted for compatibility; `false` is refused: offsets are always committed, after storage |
//!
//! Delivery guarantee: one event per message and watcher, dedup key
//! `kafka:{bootstrap servers}/{topic}/{partition}/{offset}`, payload `{topic, partition, offset,
//! key, value, value_encoding (json|text|base64|null), headers, timestamp}`. Offsets are stored
//! in order per partition only after the events' transaction committed, and committed by
//! librdkafka in the background and on close. A crash, a rebalance or a failed commit makes the
//! unacknowledged messages come again; their dedup keys make that harmless.

mod config;
pub mod hub;
mod payload;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use triggerer_sdk::{
    EventTrigger, KwargsError, Refusal, TriggerContext, TriggerError, TypedProvider,
};

pub use config::{KafkaConfig, KafkaParams, Setting};
use hub::Hub;

/// The classpaths of [`KafkaProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &[
    "kafka.AwaitMessageTrigger",
    "airflow.providers.apache.kafka.triggers.await_message.AwaitMessageTrigger",
];

/// The `kafka` provider; one per process, holding the shared consumers.
#[derive(Debug, Default)]
pub struct KafkaProvider {
    hub: Arc<Hub>,
}

impl KafkaProvider {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumers running now (one per distinct cluster, group and settings).
    pub fn consumers(&self) -> usize {
        self.hub.consumers()
    }
}

impl TypedProvider for KafkaProvider {
    type Params = KafkaParams;
    const NAME: &'static str = "kafka";
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["kafka"];
    const REFUSED: &'static [Refusal] = config::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &KafkaParams) -> Result<(), KwargsError> {
        KafkaConfig::from_params(params).map(drop)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params(queue, kwargs)
    }

    fn build_trigger(&self, params: KafkaParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(AwaitMessageTrigger {
            hub: self.hub.clone(),
            config: KafkaConfig::from_params(&params)?,
        }))
    }
}

/// One watcher: a place on the shared consumer of its cluster and group.
pub struct AwaitMessageTrigger {
    hub: Arc<Hub>,
    config: KafkaConfig,
}

#[async_trait]
impl EventTrigger for AwaitMessageTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let mut subscription = self.hub.subscribe(&self.config, ctx.sink.clone());
        tokio::select! {
            _ = ctx.cancel.cancelled() => Ok(()),
            reason = &mut subscription.failed => Err(TriggerError::failed(
                reason.unwrap_or_else(|_| "the Kafka consumer stopped".into()),
            )),
        }
    }
}
