//! The kwargs of the three Redis triggers ([`PubSubParams`], [`ListParams`], [`StreamParams`]),
//! checked without I/O, the server they point at ([`Server`]), and the `redis+pubsub`,
//! `redis+list` and `redis+stream` URIs of the common message-queue trigger.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use triggerer_sdk::de::{Seconds, StringList, Trimmed};
use triggerer_sdk::{KwargsError, Refusal};

/// The consumer group of a stream trigger when none is given.
pub const DEFAULT_GROUP: &str = "triggerer";
/// How long a stream entry stays pending with another consumer before it is taken over.
pub const DEFAULT_CLAIM_MIN_IDLE: Duration = Duration::from_secs(60);

/// Starts a placeholder that stands for an environment reference during validation.
const PLACEHOLDER: &str = "${env:";

pub(crate) const REFUSED: &[Refusal] = &[Refusal {
    kwargs: &["redis_conn_id"],
    instead: "Airflow connections are not available here: set `url` (redis://[user:password@]host:port[/db]; \
              with a password, best as { env = \"NAME\" })",
}];

pub(crate) const HINTS: &[(&str, &str)] = &[
    (
        "url",
        "the server, e.g. redis://127.0.0.1:6379/0 (with a password, best as { env = \"NAME\" })",
    ),
    ("channels", "a list of channel names, e.g. [\"orders\"]"),
    ("lists", "a list of list keys, e.g. [\"orders\"]"),
    ("streams", "a list of stream keys, e.g. [\"orders\"]"),
];

/// `redis.AwaitMessageTrigger`'s kwargs.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with `url` and `channels`")]
pub struct PubSubParams {
    pub url: Trimmed,
    pub channels: StringList,
    /// Accepted for Airflow compatibility; messages are pushed, nothing polls.
    #[serde(default)]
    pub poll_interval: Option<f64>,
}

/// `redis.AwaitMessageFromListTrigger`'s kwargs.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with `url` and `lists`")]
pub struct ListParams {
    pub url: Trimmed,
    pub lists: StringList,
    /// Accepted for Airflow compatibility (its BRPOP timeout); the trigger waits until cancelled.
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// `redis.StreamTrigger`'s kwargs.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with `url` and `streams`")]
pub struct StreamParams {
    pub url: Trimmed,
    pub streams: StringList,
    #[serde(default)]
    pub group: Option<Trimmed>,
    /// The consumer name in the group; derived from the trigger when not given.
    #[serde(default)]
    pub consumer: Option<Trimmed>,
    /// How long an entry must have been pending with another consumer before this one takes
    /// it over (`XAUTOCLAIM` min-idle-time).
    #[serde(default)]
    pub claim_min_idle: Option<Seconds>,
}

macro_rules! masked_debug {
    ($ty:ident, $($field:ident),*) => {
        /// Without the URL's password.
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty))
                    .field("url", &triggerer_sdk::redact_uri(&self.url.0))
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}
masked_debug!(PubSubParams, channels);
masked_debug!(ListParams, lists);
masked_debug!(StreamParams, streams, group, consumer);

/// A server as the triggers connect to it. `Debug` and `label` never show the password.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Server {
    /// The URL as given, password included: what connections are opened (and shared) by.
    pub url: String,
    /// `host:port/db` (or the placeholder at sync time): in messages and dedup keys.
    pub label: String,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Server({})", self.label)
    }
}

impl Server {
    /// The server `url` names, or why it cannot be one. No I/O. A placeholder (an environment
    /// reference at sync time) is let through and checked at build time with its value.
    pub fn parse(url: &str) -> Result<Self, KwargsError> {
        if url.contains(PLACEHOLDER) {
            return Ok(Self {
                url: url.to_string(),
                label: url.to_string(),
            });
        }
        if url.starts_with("rediss://") {
            return Err(KwargsError::new(
                "url",
                "TLS (rediss://) is not supported in this build; use redis://",
            ));
        }
        if !url.starts_with("redis://") {
            return Err(KwargsError::new(
                "url",
                "must be a redis:// URL, e.g. redis://127.0.0.1:6379/0",
            ));
        }
        // The redis crate's parser, so that what passes here connects the same way later.
        // Its errors are not repeated: they may quote the URL, password and all.
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|_| {
            KwargsError::new(
                "url",
                "is not a valid redis:// URL (redis://[user:password@]host:port[/db])",
            )
        })?;
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => format!("{host}:{port}"),
            _ => return Err(KwargsError::new("url", "must be a plain TCP redis:// URL")),
        };
        Ok(Self {
            url: url.to_string(),
            label: format!("{addr}/{}", info.redis_settings().db()),
        })
    }
}

/// Names the trigger stably from what identifies it (its server without credentials and its
/// keys): the processing lists and the consumer name of a trigger are the same after every
/// restart, and differ between triggers.
pub fn trigger_tag(server: &Server, keys: &[String], extra: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(server.label.as_bytes());
    for key in keys {
        hash.update([0]);
        hash.update(key.as_bytes());
    }
    hash.update([1]);
    hash.update(extra.as_bytes());
    let digest = hash.finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The configuration of a pub/sub trigger.
#[derive(Debug, Clone)]
pub struct PubSubConfig {
    pub server: Server,
    pub channels: Vec<String>,
}

impl PubSubConfig {
    pub fn from_params(p: &PubSubParams) -> Result<Self, KwargsError> {
        Ok(Self {
            server: Server::parse(&p.url.0)?,
            channels: p.channels.0.clone(),
        })
    }
}

/// The configuration of a list trigger.
#[derive(Debug, Clone)]
pub struct ListConfig {
    pub server: Server,
    pub lists: Vec<String>,
    /// Per source list, the processing list this trigger moves its items into.
    pub processing: Vec<String>,
}

impl ListConfig {
    pub fn from_params(p: &ListParams) -> Result<Self, KwargsError> {
        let server = Server::parse(&p.url.0)?;
        let lists = p.lists.0.clone();
        let mut seen = std::collections::HashSet::new();
        for (i, list) in lists.iter().enumerate() {
            if !seen.insert(list) {
                return Err(KwargsError::new(format!("lists[{i}]"), "is listed twice"));
            }
        }
        let tag = trigger_tag(&server, &lists, "list");
        let processing = lists
            .iter()
            .map(|l| format!("{l}:triggerer:processing:{tag}"))
            .collect();
        Ok(Self {
            server,
            lists,
            processing,
        })
    }
}

/// The configuration of a stream trigger.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub server: Server,
    pub streams: Vec<String>,
    pub group: String,
    pub consumer: String,
    pub claim_min_idle: Duration,
}

impl StreamConfig {
    pub fn from_params(p: &StreamParams) -> Result<Self, KwargsError> {
        let server = Server::parse(&p.url.0)?;
        let streams = p.streams.0.clone();
        let mut seen = std::collections::HashSet::new();
        for (i, stream) in streams.iter().enumerate() {
            if !seen.insert(stream) {
                return Err(KwargsError::new(format!("streams[{i}]"), "is listed twice"));
            }
        }
        let group = p
            .group
            .as_ref()
            .map_or_else(|| DEFAULT_GROUP.to_string(), |g| g.0.clone());
        let consumer = p.consumer.as_ref().map_or_else(
            || format!("triggerer-{}", trigger_tag(&server, &streams, &group)),
            |c| c.0.clone(),
        );
        let claim_min_idle = p.claim_min_idle.map_or(DEFAULT_CLAIM_MIN_IDLE, |s| s.0);
        if claim_min_idle < Duration::from_secs(1) {
            return Err(KwargsError::new(
                "claim_min_idle",
                "must be at least 1 second: a shorter one takes entries from live consumers",
            ));
        }
        Ok(Self {
            server,
            streams,
            group,
            consumer,
            claim_min_idle,
        })
    }
}

/// `SCHEME://[user:password@]host:port[/db]/name1,name2` → `url` = `redis://…[/db]` and the
/// names under `field`; `None` for another scheme. The last path segment holds the names; a
/// segment before it is the database number.
pub(crate) fn queue_params(
    scheme: &str,
    field: &str,
    queue: &str,
    kwargs: &Map<String, Value>,
) -> Option<Result<Map<String, Value>, KwargsError>> {
    let rest = queue.strip_prefix(scheme)?.strip_prefix("://")?;
    Some(queue_params_inner(field, rest, kwargs))
}

fn queue_params_inner(
    field: &str,
    rest: &str,
    kwargs: &Map<String, Value>,
) -> Result<Map<String, Value>, KwargsError> {
    // The names come after the last `/`; a password may hold `/` too, so the authority ends
    // at the last `@` when there is one.
    let after_at = rest.rfind('@').map_or(0, |at| at + 1);
    let (authority, path) = match rest[after_at..].find('/') {
        Some(slash) => rest.split_at(after_at + slash),
        None => (rest, ""),
    };
    let path = path.trim_start_matches('/');
    let (db, names) = match path.rsplit_once('/') {
        Some((db, names)) => (Some(db), names),
        None => (None, path),
    };
    if let Some(db) = db {
        if db.parse::<u32>().is_err() {
            return Err(KwargsError::new(
                "queue",
                format!("`{db}` is not a database number (SCHEME://host:port[/db]/{field})"),
            ));
        }
    }
    let names: Vec<Value> = names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(|n| Value::String(n.to_string()))
        .collect();
    let mut merged = kwargs.clone();
    if !authority.is_empty() {
        if merged.contains_key("url") {
            return Err(KwargsError::new(
                "url",
                "is given by the `queue` URI; set one or the other",
            ));
        }
        let url = match db {
            Some(db) => format!("redis://{authority}/{db}"),
            None => format!("redis://{authority}"),
        };
        merged.insert("url".into(), Value::String(url));
    }
    if !names.is_empty() {
        if merged.contains_key(field) {
            return Err(KwargsError::new(
                field,
                "is given by the `queue` URI; set one or the other",
            ));
        }
        merged.insert(field.into(), Value::Array(names));
    }
    Ok(merged)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggerer_sdk::{parse_params, Provider};

    use super::*;
    use crate::{providers, ListProvider, PubSubProvider, StreamProvider};

    fn pubsub() -> PubSubProvider {
        providers().0
    }
    fn list() -> ListProvider {
        providers().1
    }
    fn stream() -> StreamProvider {
        providers().2
    }

    #[test]
    fn valid_kwargs() {
        let c = PubSubConfig::from_params(
            &parse_params(
                &pubsub(),
                &json!({"url": "redis://127.0.0.1:6379", "channels": ["a", "b"], "poll_interval": 1}),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.server.label, "127.0.0.1:6379/0");
        assert_eq!(c.channels, ["a", "b"]);

        let c = ListConfig::from_params(
            &parse_params(
                &list(),
                &json!({"url": "redis://:pw@h:7000/3", "lists": "jobs"}),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.server.label, "h:7000/3");
        assert!(
            c.processing[0].starts_with("jobs:triggerer:processing:"),
            "{:?}",
            c.processing
        );

        let c = StreamConfig::from_params(
            &parse_params(
                &stream(),
                &json!({"url": "redis://h", "streams": ["s1", "s2"]}),
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(c.group, "triggerer");
        assert!(c.consumer.starts_with("triggerer-"));
        assert_eq!(c.claim_min_idle, DEFAULT_CLAIM_MIN_IDLE);
    }

    #[test]
    fn derived_names_are_stable_and_ignore_the_password() {
        let cfg = |url: &str, lists: Value| {
            ListConfig::from_params(
                &parse_params(&list(), &json!({"url": url, "lists": lists})).unwrap(),
            )
            .unwrap()
            .processing
        };
        assert_eq!(
            cfg("redis://:one@h:1/0", json!(["a"])),
            cfg("redis://:two@h:1/0", json!(["a"]))
        );
        assert_ne!(
            cfg("redis://h:1/0", json!(["a"])),
            cfg("redis://h:1/1", json!(["a"]))
        );
        assert_ne!(
            cfg("redis://h:1/0", json!(["a"]))[0],
            cfg("redis://h:1/0", json!(["a", "b"]))[0]
        );
        let consumer = |group: &str| {
            StreamConfig::from_params(
                &parse_params(
                    &stream(),
                    &json!({"url": "redis://h", "streams": ["s"], "group": group}),
                )
                .unwrap(),
            )
            .unwrap()
            .consumer
        };
        assert_eq!(consumer("g"), consumer("g"));
        assert_ne!(consumer("g"), consumer("h"));
    }

    #[test]
    fn mistakes_name_the_field() {
        let field = |p: &dyn Provider, kwargs: Value| p.validate(&kwargs).unwrap_err().field;
        let u = "redis://127.0.0.1:6379";
        assert_eq!(field(&pubsub(), json!({"channels": ["a"]})), "url");
        assert_eq!(field(&pubsub(), json!({"url": u})), "channels");
        assert_eq!(
            field(&pubsub(), json!({"url": u, "channels": []})),
            "channels"
        );
        assert_eq!(
            field(&pubsub(), json!({"url": u, "channels": ["a", ""]})),
            "channels[1]"
        );
        assert_eq!(
            field(&pubsub(), json!({"url": "http://h", "channels": ["a"]})),
            "url"
        );
        assert_eq!(
            field(&pubsub(), json!({"url": "rediss://h", "channels": ["a"]})),
            "url"
        );
        assert_eq!(
            field(
                &pubsub(),
                json!({"url": u, "channels": ["a"], "redis_conn_id": "redis_default"})
            ),
            "redis_conn_id"
        );
        assert_eq!(field(&list(), json!({"url": u, "list": ["a"]})), "list");
        assert_eq!(
            field(&list(), json!({"url": u, "lists": ["a", "a"]})),
            "lists[1]"
        );
        assert_eq!(field(&stream(), json!({"url": u, "streams": 5})), "streams");
        assert_eq!(
            field(&stream(), json!({"url": u, "streams": ["s"], "group": ""})),
            "group"
        );
        assert_eq!(
            field(
                &stream(),
                json!({"url": u, "streams": ["s"], "claim_min_idle": 0.5})
            ),
            "claim_min_idle"
        );
        let message = list()
            .validate(&json!({"url": u, "lists": ["a"], "redis_conn_id": "x"}))
            .unwrap_err()
            .to_string();
        assert!(message.contains("set `url`"), "{message}");
    }

    #[test]
    fn placeholders_pass_at_sync_time_and_passwords_are_never_shown() {
        assert!(pubsub()
            .validate(&json!({"url": "${env:REDIS_URL}", "channels": ["a"]}))
            .is_ok());
        let err = pubsub()
            .validate(&json!({"url": "redis://u:hunter2@h:notaport", "channels": ["a"]}))
            .unwrap_err();
        assert_eq!(err.field, "url");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let params: PubSubParams = parse_params(
            &pubsub(),
            &json!({"url": "redis://u:hunter2@h:1", "channels": ["a"]}),
        )
        .unwrap();
        let shown = format!(
            "{params:?} {:?}",
            PubSubConfig::from_params(&params).unwrap()
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn queue_uris() {
        let none = Map::new();
        let k = pubsub()
            .queue_kwargs("redis+pubsub://127.0.0.1:6379/orders,refunds", &none)
            .unwrap()
            .unwrap();
        assert_eq!(
            k,
            json!({"url": "redis://127.0.0.1:6379", "channels": ["orders", "refunds"]})
        );
        let k = list()
            .queue_kwargs("redis+list://h:6379/2/jobs", &none)
            .unwrap()
            .unwrap();
        assert_eq!(k, json!({"url": "redis://h:6379/2", "lists": ["jobs"]}));
        let mut with_group = Map::new();
        with_group.insert("group".into(), json!("g"));
        let k = stream()
            .queue_kwargs("redis+stream://:p%2Fw@h:6379/events", &with_group)
            .unwrap()
            .unwrap();
        assert_eq!(
            k,
            json!({"url": "redis://:p%2Fw@h:6379", "streams": ["events"], "group": "g"})
        );
        // Each provider serves its own scheme only.
        assert!(pubsub()
            .queue_kwargs("redis+list://h/jobs", &none)
            .is_none());
        assert!(list().queue_kwargs("kafka://b:9092/t", &none).is_none());
        assert!(stream().queue_kwargs("redis://h/events", &none).is_none());
        // Set twice, or a bad database.
        let mut with_url = Map::new();
        with_url.insert("url".into(), json!("redis://other"));
        assert_eq!(
            list()
                .queue_kwargs("redis+list://h/jobs", &with_url)
                .unwrap()
                .unwrap_err()
                .field,
            "url"
        );
        assert_eq!(
            list()
                .queue_kwargs("redis+list://h/x/jobs", &none)
                .unwrap()
                .unwrap_err()
                .field,
            "queue"
        );
        // No names in the URI: `lists` must come from the kwargs.
        assert_eq!(
            list()
                .queue_kwargs("redis+list://h:1", &none)
                .unwrap()
                .unwrap_err()
                .field,
            "lists"
        );
    }
}
