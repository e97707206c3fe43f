//! The `redis` providers: three classpaths on one Redis client, each serving a scheme of the
//! common message-queue trigger (`MessageQueueTrigger`).
//!
//! | classpath | scheme | kwargs (required first) | delivery |
//! |---|---|---|---|
//! | `redis.AwaitMessageTrigger` (Airflow's `airflow.providers.redis.triggers.redis_await_message.AwaitMessageTrigger`) | `redis+pubsub` | `url`, `channels`; `poll_interval` accepted and ignored | **at most once**: pub/sub keeps nothing |
//! | `redis.AwaitMessageFromListTrigger` (Airflow's `airflow.providers.redis.triggers.redis_list_await_message.AwaitMessageFromListTrigger`) | `redis+list` | `url`, `lists`; `timeout` accepted and ignored | effectively once: moved into a processing list, removed from it after commit |
//! | `redis.StreamTrigger` | `redis+stream` | `url`, `streams`, `group` (`triggerer`), `consumer` (derived), `claim_min_idle` (60 s) | effectively once: `XACK` after commit, dead consumers' entries reclaimed |
//!
//! `url` is `redis://[user:password@]host:port[/db]` (`{ env = "NAME" }` keeps the password
//! out of the file; the core masks it in what it shows). Airflow's `redis_conn_id` is refused.
//!
//! **Pub/sub** (`redis.AwaitMessageTrigger`): one event per message received while subscribed,
//! payload `{channel, pattern (null), data, data_encoding (json|text|base64)}`, dedup key
//! `redis+pubsub:{host:port/db}/{channel}/{connection id}/{n}`: the source has no message id,
//! so the key is the random id of the subscribing connection and the message's number on it.
//! That is honest because a repeat cannot happen: Redis forgets a message once it has pushed
//! it. For the same reason a message published while the trigger is not subscribed (stopped,
//! restarting, disconnected), or received and not committed (a crash), is lost: **at most
//! once**, by the protocol. A subscriber that falls far behind is disconnected by Redis
//! (`client-output-buffer-limit pubsub`) and loses what was buffered. Use a list or a stream
//! where loss matters.
//!
//! **Lists** (`redis.AwaitMessageFromListTrigger`): producers `LPUSH`, the trigger takes items
//! from the tail (oldest first; with several lists, the first non-empty list in the order
//! given) and, atomically (one Lua script: `RPOP` + `LPUSH`, i.e. `LMOVE`), moves each into its
//! own processing list `{list}:triggerer:processing:{trigger tag}`, tagged `TAG|item` with a
//! tag made of the trigger run's random id and a counter. After the event committed, the
//! tagged element is removed (`LREM`). On start, what the processing list holds (items taken
//! by a run that crashed or was stopped before their commit) is emitted again first, with the
//! same tag. Payload `{list, data, data_encoding, tag}`, dedup key
//! `redis+list:{host:port/db}/{list}/{tag}`: the same item recovered keeps its key, and two
//! identical items pushed separately are two events. An idle trigger of one list waits with a
//! blocking `BLMOVE list list RIGHT RIGHT` (which leaves the list as it is); of several, it
//! looks every 100 ms.
//!
//! **Streams** (`redis.StreamTrigger`): a consumer group (`XGROUP CREATE … 0 MKSTREAM` when it
//! is missing: a new group starts at the stream's first entry), read with `XREADGROUP` (at
//! most 100 entries per read, `BLOCK` 500 ms); an entry is `XACK`ed only after its event
//! committed. On start the consumer's own pending entries (delivered before a crash) come
//! first; every `claim_min_idle / 2` it takes over entries pending longer than `claim_min_idle`
//! with any consumer (`XAUTOCLAIM`: a dead triggerer's, or its own lost ones). Payload
//! `{stream, id, fields, binary_fields}`, dedup key `redis+stream:{host:port/db}/{stream}/{id}`,
//! source time the id's millisecond part.
//!
//! Connections: per server URL (credentials included) one shared auto-reconnecting connection
//! (`ConnectionManager`) carries the non-blocking commands of every list and stream trigger on
//! it (moves, `LREM`, `XGROUP`, `XACK`, `XAUTOCLAIM`); a blocking wait (`BLMOVE`,
//! `XREADGROUP BLOCK`) or a subscription needs a connection of its own, one per trigger.
//! Backpressure: at most [`MAX_IN_FLIGHT`] items per trigger are taken and not yet committed.
//! An unreachable server, refused credentials or a key of the wrong type fail that trigger
//! alone, with a one-line reason; the supervisor restarts it with backoff.

mod config;
mod hub;
mod list;
mod payload;
mod pubsub;
mod stream;

use std::sync::Arc;

use serde_json::{Map, Value};
use triggerer_sdk::{EventTrigger, KwargsError, Refusal, TypedProvider};

pub use config::{
    ListConfig, ListParams, PubSubConfig, PubSubParams, Server, StreamConfig, StreamParams,
    DEFAULT_CLAIM_MIN_IDLE, DEFAULT_GROUP,
};
pub use hub::Hub;

/// Items (messages, entries) a trigger holds taken and not yet committed before it stops
/// reading.
pub const MAX_IN_FLIGHT: usize = 1_000;

/// The classpaths of [`PubSubProvider`], canonical first.
pub const PUBSUB_CLASSPATHS: &[&str] = &[
    "redis.AwaitMessageTrigger",
    "airflow.providers.redis.triggers.redis_await_message.AwaitMessageTrigger",
];
/// The classpaths of [`ListProvider`], canonical first.
pub const LIST_CLASSPATHS: &[&str] = &[
    "redis.AwaitMessageFromListTrigger",
    "airflow.providers.redis.triggers.redis_list_await_message.AwaitMessageFromListTrigger",
    "airflow.providers.redis.triggers.redis_await_message.AwaitMessageFromListTrigger",
];
/// The classpaths of [`StreamProvider`].
pub const STREAM_CLASSPATHS: &[&str] = &["redis.StreamTrigger"];

/// The three providers, sharing one [`Hub`] of connections.
pub fn providers() -> (PubSubProvider, ListProvider, StreamProvider) {
    let hub = Arc::new(Hub::default());
    (
        PubSubProvider { hub: hub.clone() },
        ListProvider { hub: hub.clone() },
        StreamProvider { hub },
    )
}

/// `redis.AwaitMessageTrigger`: pub/sub channels.
#[derive(Debug, Clone)]
pub struct PubSubProvider {
    hub: Arc<Hub>,
}

/// `redis.AwaitMessageFromListTrigger`: lists as queues.
#[derive(Debug, Clone)]
pub struct ListProvider {
    hub: Arc<Hub>,
}

/// `redis.StreamTrigger`: streams read by a consumer group.
#[derive(Debug, Clone)]
pub struct StreamProvider {
    hub: Arc<Hub>,
}

impl PubSubProvider {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}
impl ListProvider {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}
impl StreamProvider {
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }
}

impl TypedProvider for PubSubProvider {
    type Params = PubSubParams;
    const NAME: &'static str = "redis";
    const CLASSPATHS: &'static [&'static str] = PUBSUB_CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["redis+pubsub"];
    const REFUSED: &'static [Refusal] = config::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &PubSubParams) -> Result<(), KwargsError> {
        PubSubConfig::from_params(params).map(drop)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params("redis+pubsub", "channels", queue, kwargs)
    }

    fn build_trigger(&self, params: PubSubParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(pubsub::PubSubTrigger {
            config: PubSubConfig::from_params(&params)?,
        }))
    }
}

impl TypedProvider for ListProvider {
    type Params = ListParams;
    const NAME: &'static str = "redis";
    const CLASSPATHS: &'static [&'static str] = LIST_CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["redis+list"];
    const REFUSED: &'static [Refusal] = config::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &ListParams) -> Result<(), KwargsError> {
        ListConfig::from_params(params).map(drop)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params("redis+list", "lists", queue, kwargs)
    }

    fn build_trigger(&self, params: ListParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(list::ListTrigger {
            hub: self.hub.clone(),
            config: ListConfig::from_params(&params)?,
        }))
    }
}

impl TypedProvider for StreamProvider {
    type Params = StreamParams;
    const NAME: &'static str = "redis";
    const CLASSPATHS: &'static [&'static str] = STREAM_CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["redis+stream"];
    const REFUSED: &'static [Refusal] = config::REFUSED;
    const HINTS: &'static [(&'static str, &'static str)] = config::HINTS;

    fn check(&self, params: &StreamParams) -> Result<(), KwargsError> {
        StreamConfig::from_params(params).map(drop)
    }

    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        config::queue_params("redis+stream", "streams", queue, kwargs)
    }

    fn build_trigger(&self, params: StreamParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(stream::StreamTrigger {
            hub: self.hub.clone(),
            config: StreamConfig::from_params(&params)?,
        }))
    }
}
