//! `redis.StreamTrigger`: a consumer group's entries, `XACK`ed after their events committed;
//! the consumer's own pending entries first, other consumers' long-idle ones taken over.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::Value;
use tokio::time::Instant;
use tracing::debug;
use triggerer_sdk::{Event, EventTrigger, InFlight, Settled, TriggerContext, TriggerError};

use crate::config::StreamConfig;
use crate::hub::{self, bytes, items, string, Hub};
use crate::{payload, MAX_IN_FLIGHT};

/// The most entries one read asks for.
const COUNT: usize = 100;
/// How long one read blocks on empty streams.
const BLOCK: Duration = Duration::from_millis(500);
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub struct StreamTrigger {
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: StreamConfig,
}

/// One entry as read: `(stream index, id, fields)`; `fields` is `None` for an entry deleted
/// from the stream while it was pending.
type Entry = (usize, String, Option<BTreeMap<String, Vec<u8>>>);

/// An entry's fields from `[name, value, name, value, …]` (or a map).
fn fields(v: Value) -> Option<BTreeMap<String, Vec<u8>>> {
    if matches!(v, Value::Nil) {
        return None;
    }
    let mut out = BTreeMap::new();
    let mut it = items(v).into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let name = bytes(name).map(|b| String::from_utf8_lossy(&b).into_owned());
        if let (Some(name), Some(value)) = (name, bytes(value)) {
            out.insert(name, value);
        }
    }
    Some(out)
}

/// `[[id, fields], …]` as entries of stream `index`.
fn entries_of(index: usize, v: Value, out: &mut Vec<Entry>) {
    for entry in items(v) {
        let mut parts = items(entry).into_iter();
        let Some(id) = parts.next().and_then(string) else {
            continue;
        };
        let fields = parts.next().and_then(fields);
        out.push((index, id, fields));
    }
}

impl StreamTrigger {
    fn fail(&self, doing: &str, e: &redis::RedisError) -> TriggerError {
        hub::failure(&self.config.server, doing, e)
    }

    fn index(&self, key: &str) -> Option<usize> {
        self.config.streams.iter().position(|s| s == key)
    }

    /// An `XREADGROUP` reply as entries.
    fn parse_read(&self, reply: Value) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut it = match reply {
            // RESP3: {stream: entries}.
            Value::Map(pairs) => pairs
                .into_iter()
                .flat_map(|(k, v)| [k, v])
                .collect::<Vec<_>>(),
            // RESP2: [[stream, entries], …].
            other => items(other).into_iter().flat_map(items).collect(),
        }
        .into_iter();
        while let (Some(key), Some(entries)) = (it.next(), it.next()) {
            if let Some(i) = string(key).and_then(|k| self.index(&k)) {
                entries_of(i, entries, &mut out);
            }
        }
        out
    }

    async fn create_groups(&self, conn: &mut ConnectionManager) -> Result<(), TriggerError> {
        for stream in &self.config.streams {
            let created: redis::RedisResult<Value> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(&self.config.group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(conn)
                .await;
            match created {
                Ok(_) => debug!(stream, group = %self.config.group, "consumer group created"),
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => {
                    return Err(self.fail(
                        &format!(
                            "creating group `{}` on stream `{stream}`",
                            self.config.group
                        ),
                        &e,
                    ))
                }
            }
        }
        Ok(())
    }

    /// Reads from every stream after `ids` (`>`: new entries; an id: this consumer's pending
    /// entries after it), blocking up to `block` when given.
    async fn read(
        &self,
        conn: &mut MultiplexedConnection,
        ids: &[String],
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, TriggerError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.config.streams).arg(ids);
        let reply: Value = cmd
            .query_async(conn)
            .await
            .map_err(|e| self.fail("reading with XREADGROUP", &e))?;
        Ok(self.parse_read(reply))
    }

    /// Takes over entries idle longer than `claim_min_idle` with any consumer of the group.
    async fn claim(
        &self,
        conn: &mut ConnectionManager,
        stream: usize,
        room: usize,
    ) -> Result<Vec<Entry>, TriggerError> {
        let name = &self.config.streams[stream];
        let mut out = Vec::new();
        let mut cursor = "0-0".to_string();
        // A bounded number of rounds: the next tick goes on.
        for _ in 0..10 {
            if out.len() >= room {
                break;
            }
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(name)
                .arg(&self.config.group)
                .arg(&self.config.consumer)
                .arg(self.config.claim_min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(COUNT.min(room - out.len()).max(1))
                .query_async(conn)
                .await
                .map_err(|e| self.fail(&format!("claiming idle entries of `{name}`"), &e))?;
            let mut parts = items(reply).into_iter();
            let next = parts
                .next()
                .and_then(string)
                .unwrap_or_else(|| "0-0".into());
            if let Some(entries) = parts.next() {
                entries_of(stream, entries, &mut out);
            }
            if next == "0-0" {
                break;
            }
            cursor = next;
        }
        Ok(out)
    }

    async fn ack(
        &self,
        conn: &mut ConnectionManager,
        pending: &mut HashSet<(usize, String)>,
        settled: Vec<Settled<(usize, String)>>,
    ) -> Result<(), TriggerError> {
        let mut by_stream: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        let mut refused = None;
        for s in settled {
            pending.remove(&s.token);
            match s.outcome {
                Ok(_) => by_stream.entry(s.token.0).or_default().push(s.token.1),
                Err(e) => refused = Some((s.token, e)),
            }
        }
        for (stream, ids) in by_stream {
            self.xack(conn, stream, &ids).await?;
        }
        match refused {
            // It stays pending: this consumer reads it again on restart.
            Some(((stream, id), e)) => Err(TriggerError::failed(format!(
                "redis {}: entry {id} of `{}` was not committed ({e}); it stays pending and is read again on restart",
                self.config.server.label, self.config.streams[stream]
            ))),
            None => Ok(()),
        }
    }

    async fn xack(
        &self,
        conn: &mut ConnectionManager,
        stream: usize,
        ids: &[String],
    ) -> Result<(), TriggerError> {
        let name = &self.config.streams[stream];
        redis::cmd("XACK")
            .arg(name)
            .arg(&self.config.group)
            .arg(ids)
            .query_async::<i64>(conn)
            .await
            .map(drop)
            .map_err(|e| self.fail(&format!("acknowledging entries of `{name}`"), &e))
    }

    /// Submits `entries` not already in flight; an entry deleted while pending is only
    /// acknowledged (there is nothing to emit).
    async fn submit(
        &self,
        ctx: &TriggerContext,
        conn: &mut ConnectionManager,
        inflight: &mut InFlight<(usize, String)>,
        pending: &mut HashSet<(usize, String)>,
        entries: Vec<Entry>,
    ) -> Result<bool, TriggerError> {
        let label = &self.config.server.label;
        for (stream, id, fields) in entries {
            if pending.contains(&(stream, id.clone())) {
                continue;
            }
            let Some(fields) = fields else {
                self.xack(conn, stream, std::slice::from_ref(&id)).await?;
                continue;
            };
            let name = &self.config.streams[stream];
            let mut event = Event::new(
                payload::stream_payload(name, &id, &fields),
                payload::stream_key(label, name, &id),
            );
            event.source_time = payload::stream_time(&id);
            pending.insert((stream, id.clone()));
            tokio::select! {
                biased;
                _ = ctx.cancel.cancelled() => return Ok(false),
                s = inflight.submit(&ctx.sink, event, (stream, id)) => s?,
            }
        }
        Ok(true)
    }
}

#[async_trait]
impl EventTrigger for StreamTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let server = self.config.server.clone();
        let (mut shared, mut blocking) = tokio::select! {
            _ = ctx.cancel.cancelled() => return Ok(()),
            c = async {
                let mut shared = self.hub.shared(&server).await?;
                self.create_groups(&mut shared).await?;
                let blocking = hub::dedicated(&server, BLOCK).await?;
                Ok::<_, TriggerError>((shared, blocking))
            } => c?,
        };
        let mut inflight = InFlight::new(MAX_IN_FLIGHT);
        let mut pending = HashSet::new();
        let result = self
            .consume(
                &ctx,
                &mut shared,
                &mut blocking,
                &mut inflight,
                &mut pending,
            )
            .await;
        let drained = inflight.drain(Instant::now() + DRAIN_TIMEOUT).await;
        if !drained.is_complete() {
            debug!(server = %server.label, left = drained.unsettled.len(), "stopping with entries uncommitted; they stay pending");
        }
        let committed: Vec<Settled<(usize, String)>> = drained
            .settled
            .into_iter()
            .filter(|s| s.outcome.is_ok())
            .collect();
        if let Err(e) = self.ack(&mut shared, &mut pending, committed).await {
            debug!(error = %e, "committed entries stay pending; their repeat is deduplicated");
        }
        if result.is_err() {
            self.hub.forget(&server).await;
        }
        result
    }
}

impl StreamTrigger {
    async fn consume(
        &self,
        ctx: &TriggerContext,
        shared: &mut ConnectionManager,
        blocking: &mut MultiplexedConnection,
        inflight: &mut InFlight<(usize, String)>,
        pending: &mut HashSet<(usize, String)>,
    ) -> Result<(), TriggerError> {
        let streams = self.config.streams.len();
        // This consumer's own pending entries (read before a crash or a stop), oldest first.
        let mut after: Vec<String> = vec!["0".into(); streams];
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                () = inflight.reserve() => {}
            }
            let room = (inflight.limit() - inflight.len()).min(COUNT);
            let entries = self.read(blocking, &after, room, None).await?;
            if entries.is_empty() {
                break;
            }
            for (stream, id, _) in &entries {
                after[*stream] = id.clone();
            }
            let settled: Vec<_> = std::iter::from_fn(|| inflight.try_next()).collect();
            self.ack(shared, pending, settled).await?;
            if !self.submit(ctx, shared, inflight, pending, entries).await? {
                return Ok(());
            }
        }

        let new: Vec<String> = vec![">".into(); streams];
        let claim_every = (self.config.claim_min_idle / 2).max(Duration::from_secs(1));
        let mut next_claim = Instant::now();
        loop {
            let settled: Vec<_> = std::iter::from_fn(|| inflight.try_next()).collect();
            self.ack(shared, pending, settled).await?;
            if ctx.cancel.is_cancelled() {
                return Ok(());
            }
            if !inflight.has_room() {
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(()),
                    Some(settled) = inflight.next() => self.ack(shared, pending, vec![settled]).await?,
                }
                continue;
            }
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + claim_every;
                for stream in 0..streams {
                    let room = inflight.limit() - inflight.len();
                    let claimed = self.claim(shared, stream, room).await?;
                    if !claimed.is_empty() {
                        debug!(stream = %self.config.streams[stream], claimed = claimed.len(), "took over idle pending entries");
                    }
                    if !self.submit(ctx, shared, inflight, pending, claimed).await? {
                        return Ok(());
                    }
                }
            }
            let room = (inflight.limit() - inflight.len()).min(COUNT);
            // Not raced against commits, so that no reply of a read that happened is lost
            // (what was read and not seen stays pending and is reclaimed); a cancel loses
            // nothing either way.
            let entries = tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                e = self.read(blocking, &new, room.max(1), Some(BLOCK)) => e?,
            };
            if !self.submit(ctx, shared, inflight, pending, entries).await? {
                return Ok(());
            }
        }
    }
}
