//! `redis.AwaitMessageTrigger`: one event per message of its channels, at most once.

use async_trait::async_trait;
use futures::StreamExt;
use tracing::warn;
use triggerer_sdk::{Event, EventTrigger, InFlight, Settled, TriggerContext, TriggerError};

use crate::config::PubSubConfig;
use crate::{hub, payload, MAX_IN_FLIGHT};

pub struct PubSubTrigger {
    pub(crate) config: PubSubConfig,
}

#[async_trait]
impl EventTrigger for PubSubTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let config = self.config;
        let server = &config.server;
        let mut conn = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            c = hub::pubsub(server) => c?,
        };
        conn.subscribe(&config.channels)
            .await
            .map_err(|e| hub::failure(server, "subscribing", &e))?;
        let connection = hub::run_id();
        let mut n: u64 = 0;
        let mut inflight: InFlight<u64> = InFlight::new(MAX_IN_FLIGHT);
        let mut messages = conn.on_message();
        loop {
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return Ok(()),
                Some(Settled { token, outcome }) = inflight.next() => {
                    if let Err(e) = outcome {
                        // Nothing can bring it back: pub/sub keeps nothing.
                        warn!(server = %server.label, message = token, error = %e, "a pub/sub message was not committed and is lost (pub/sub is at most once)");
                    }
                }
                message = messages.next(), if inflight.has_room() => {
                    let Some(message) = message else {
                        return Err(TriggerError::failed(format!(
                            "redis {}: the subscription connection closed",
                            server.label
                        )));
                    };
                    n += 1;
                    let channel = message.get_channel_name().to_string();
                    let event = Event::new(
                        payload::pubsub_payload(&channel, message.get_payload_bytes()),
                        payload::pubsub_key(&server.label, &channel, &connection, n),
                    );
                    tokio::select! {
                        biased;
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        submitted = inflight.submit(&ctx.sink, event, n) => submitted?,
                    }
                }
            }
        }
    }
}
