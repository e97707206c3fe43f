//! `redis.AwaitMessageFromListTrigger`: items moved into a processing list, removed from it
//! after their events committed, recovered from it on start.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::time::Instant;
use tracing::debug;
use triggerer_sdk::{Event, EventTrigger, InFlight, Settled, TriggerContext, TriggerError};

use crate::config::ListConfig;
use crate::hub::{self, Hub};
use crate::{payload, MAX_IN_FLIGHT};

/// Takes the oldest item (`RPOP`) and keeps it, tagged, at the head of the processing list, in
/// one atomic step (what `LMOVE` does, with the tag added).
const TAKE: &str = "local v = redis.call('RPOP', KEYS[1]) \
                    if v then redis.call('LPUSH', KEYS[2], ARGV[1] .. v) end \
                    return v";

/// How long one blocking wait on an empty list lasts.
const BLOCK: Duration = Duration::from_secs(1);
/// How often several empty lists are looked at.
const POLL: Duration = Duration::from_millis(100);
/// How long a cancelled trigger waits for its in-flight events.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct ListTrigger {
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: ListConfig,
}

/// An item awaiting its commit: where it is held, as held.
#[derive(Debug)]
struct Held {
    list: usize,
    element: Vec<u8>,
}

impl ListTrigger {
    fn event(&self, list: usize, tag: &str, item: &[u8]) -> Event {
        let name = &self.config.lists[list];
        Event::new(
            payload::list_payload(name, tag, item),
            payload::list_key(&self.config.server.label, name, tag),
        )
    }

    async fn remove(&self, conn: &mut ConnectionManager, held: &Held) -> Result<(), TriggerError> {
        redis::cmd("LREM")
            .arg(&self.config.processing[held.list])
            .arg(1)
            .arg(&held.element)
            .query_async::<i64>(conn)
            .await
            .map(drop)
            .map_err(|e| {
                hub::failure(
                    &self.config.server,
                    &format!(
                        "removing a committed item from `{}`",
                        self.config.processing[held.list]
                    ),
                    &e,
                )
            })
    }

    async fn ack(
        &self,
        conn: &mut ConnectionManager,
        settled: Settled<Held>,
    ) -> Result<(), TriggerError> {
        match settled.outcome {
            Ok(_) => self.remove(conn, &settled.token).await,
            // It stays in the processing list, and a restart emits it again.
            Err(e) => Err(TriggerError::failed(format!(
                "redis {}: an item of `{}` was not committed ({e}); it is kept in `{}` and emitted again on restart",
                self.config.server.label, self.config.lists[settled.token.list], self.config.processing[settled.token.list]
            ))),
        }
    }
}

#[async_trait]
impl EventTrigger for ListTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let server = self.config.server.clone();
        let (mut shared, mut blocking) = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            c = async {
                let shared = self.hub.shared(&server).await?;
                let blocking = if self.config.lists.len() == 1 {
                    Some(hub::dedicated(&server, BLOCK).await?)
                } else {
                    None
                };
                Ok::<_, TriggerError>((shared, blocking))
            } => c?,
        };
        let mut inflight: InFlight<Held> = InFlight::new(MAX_IN_FLIGHT);
        let result = self
            .consume(&ctx, &mut shared, blocking.as_mut(), &mut inflight)
            .await;
        // Acknowledge what commits now; the rest stays in the processing list for the next run.
        let drained = inflight.drain(Instant::now() + DRAIN_TIMEOUT).await;
        if !drained.is_complete() {
            debug!(server = %server.label, left = drained.unsettled.len(), "stopping with items uncommitted; they are recovered on the next start");
        }
        for settled in drained.settled.into_iter().filter(|s| s.outcome.is_ok()) {
            if let Err(e) = self.remove(&mut shared, &settled.token).await {
                debug!(error = %e, "a committed item stays in the processing list; its repeat is deduplicated");
                break;
            }
        }
        if result.is_err() {
            self.hub.forget(&server).await;
        }
        result
    }
}

impl ListTrigger {
    async fn consume(
        &self,
        ctx: &TriggerContext,
        shared: &mut ConnectionManager,
        mut blocking: Option<&mut redis::aio::MultiplexedConnection>,
        inflight: &mut InFlight<Held>,
    ) -> Result<(), TriggerError> {
        let server = &self.config.server;
        // Recovery: what an earlier run took and did not see committed, oldest first.
        for (i, processing) in self.config.processing.iter().enumerate() {
            let held: Vec<Vec<u8>> = redis::cmd("LRANGE")
                .arg(processing)
                .arg(0)
                .arg(-1)
                .query_async(shared)
                .await
                .map_err(|e| hub::failure(server, &format!("reading `{processing}`"), &e))?;
            for element in held.into_iter().rev() {
                let event = match payload::unwrap(&element) {
                    Some((tag, item)) => self.event(i, tag, item),
                    // Not put there by a trigger: its content is all there is to name it by.
                    None => {
                        let digest = Sha256::digest(&element);
                        let tag: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                        self.event(i, &format!("h{tag}"), &element)
                    }
                };
                while let Some(settled) = inflight.try_next() {
                    self.ack(shared, settled).await?;
                }
                tokio::select! {
                    biased;
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    s = inflight.submit(&ctx.sink, event, Held { list: i, element }) => s?,
                }
            }
        }

        let run = hub::run_id();
        let mut taken: u64 = 0;
        loop {
            while let Some(settled) = inflight.try_next() {
                self.ack(shared, settled).await?;
            }
            if ctx.cancel.is_cancelled() {
                return Ok(());
            }
            if !inflight.has_room() {
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    Some(settled) = inflight.next() => self.ack(shared, settled).await?,
                }
                continue;
            }
            // In priority order: the first list with an item gives it. Not raced against
            // anything, so that no reply of a move that happened is lost.
            let mut got = None;
            for (i, list) in self.config.lists.iter().enumerate() {
                let tag = format!("{run}-{}", taken + 1);
                let item: Option<Vec<u8>> = redis::cmd("EVAL")
                    .arg(TAKE)
                    .arg(2)
                    .arg(list)
                    .arg(&self.config.processing[i])
                    .arg(format!("{tag}|"))
                    .query_async(shared)
                    .await
                    .map_err(|e| hub::failure(server, &format!("taking from list `{list}`"), &e))?;
                if let Some(item) = item {
                    taken += 1;
                    got = Some((i, tag, item));
                    break;
                }
            }
            match got {
                Some((i, tag, item)) => {
                    let event = self.event(i, &tag, &item);
                    let element = payload::wrap(&tag, &item);
                    tokio::select! {
                        biased;
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        s = inflight.submit(&ctx.sink, event, Held { list: i, element }) => s?,
                    }
                }
                None => {
                    // Empty: wait for an item (or a commit to acknowledge).
                    let wait = async {
                        match blocking.as_deref_mut() {
                            Some(conn) => {
                                let list = &self.config.lists[0];
                                // Moves the tail to the tail: the list stays as it is.
                                redis::cmd("BLMOVE")
                                    .arg(list)
                                    .arg(list)
                                    .arg("RIGHT")
                                    .arg("RIGHT")
                                    .arg(BLOCK.as_secs_f64())
                                    .query_async::<Option<Vec<u8>>>(conn)
                                    .await
                                    .map(drop)
                                    .map_err(|e| {
                                        hub::failure(
                                            server,
                                            &format!("waiting on list `{list}`"),
                                            &e,
                                        )
                                    })
                            }
                            None => {
                                tokio::time::sleep(POLL).await;
                                Ok(())
                            }
                        }
                    };
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        Some(settled) = inflight.next() => self.ack(shared, settled).await?,
                        waited = wait => waited?,
                    }
                }
            }
        }
    }
}
