//! The kwargs of `amqp.AwaitMessageTrigger` ([`AmqpParams`], checked without I/O), what a
//! trigger runs with ([`AmqpConfig`]), and the `amqp://…/VHOST/QUEUE` URIs of the common
//! message-queue trigger ([`queue_params`]).

use std::str::FromStr;

use lapin::uri::{AMQPScheme, AMQPUri};
use serde::Deserialize;
use serde_json::{Map, Value};
use triggerer_sdk::de::{Bounded, Trimmed};
use triggerer_sdk::{KwargsError, Refusal};

/// Unacknowledged deliveries per watcher when `prefetch` is not given.
pub const DEFAULT_PREFETCH: u16 = 100;

/// Starts the placeholder that stands for an environment reference during validation.
const PLACEHOLDER: &str = "${env:";

/// Airflow-style kwargs that have no meaning here, with what to write instead.
pub(crate) const REFUSED: &[Refusal] = &[
    Refusal {
        kwargs: &["amqp_conn_id", "rabbitmq_conn_id", "conn_id"],
        instead: "Airflow connections are not available here: set `url` \
                  (amqp://user:password@host:5672/vhost), e.g. `url = { env = \"AMQP_URL\" }`",
    },
    Refusal {
        kwargs: &["auto_ack", "no_ack"],
        instead: "messages are always acknowledged, and only after their events are stored; \
                  remove it",
    },
    Refusal {
        kwargs: &[
            "apply_function",
            "apply_function_args",
            "apply_function_kwargs",
        ],
        instead: "Python callables cannot run here: every message becomes an event whose \
                  payload carries the message (filter in the DAG instead)",
    },
];

pub(crate) const HINTS: &[(&str, &str)] = &[
    (
        "url",
        "the broker URL, e.g. amqp://user:password@rabbitmq:5672/%2f (or { env = \"AMQP_URL\" })",
    ),
    ("queue", "the name of the queue to consume, e.g. \"orders\""),
];

/// The kwargs of one watcher, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with `url` and `queue`")]
pub struct AmqpParams {
    /// `amqp[s]://user:password@host:port/vhost[?heartbeat=…]`.
    pub url: Trimmed,
    /// The queue to consume.
    pub queue: Trimmed,
    /// Declare the queue (durable) instead of requiring it to exist.
    #[serde(default)]
    pub declare: Option<bool>,
    /// Deliveries unacknowledged at once (`basic.qos`): the backpressure.
    #[serde(default)]
    pub prefetch: Option<Bounded<1, 10_000>>,
}

/// What a trigger runs with.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// The broker URL as given (it may hold a password: never log it, see [`Self::shown_url`]).
    pub url: String,
    pub queue: String,
    pub declare: bool,
    pub prefetch: u16,
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &self.shown_url())
            .field("queue", &self.queue)
            .field("declare", &self.declare)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

/// `url` as lapin reads it, or why it cannot be used. The message never repeats the URL.
pub(crate) fn parse_url(url: &str) -> Result<AMQPUri, String> {
    if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
        return Err("must be an amqp:// or amqps:// URL".into());
    }
    // lapin's parser repeats nothing of the URL in its errors, but keep ours to the point.
    AMQPUri::from_str(url).map_err(|_| {
        "is not a valid AMQP URL (amqp[s]://user:password@host[:port][/vhost], the vhost \
         percent-encoded: %2f for `/`)"
            .to_string()
    })
}

impl AmqpConfig {
    /// The configuration `params` stand for, or why they cannot work. No I/O. A `url` holding
    /// an environment placeholder (at `dags sync`) is checked when the triggerer builds the
    /// trigger, with the variable's value.
    pub fn from_params(params: &AmqpParams) -> Result<Self, KwargsError> {
        let Trimmed(url) = &params.url;
        if !url.contains(PLACEHOLDER) {
            parse_url(url).map_err(|m| KwargsError::new("url", m))?;
        }
        let Trimmed(queue) = &params.queue;
        if queue.len() > 255 {
            return Err(KwargsError::new(
                "queue",
                "must be at most 255 bytes (an AMQP short string)",
            ));
        }
        if queue.starts_with("amq.") && params.declare == Some(true) {
            return Err(KwargsError::new(
                "queue",
                "names starting with `amq.` are reserved by the broker and cannot be declared",
            ));
        }
        Ok(Self {
            url: url.clone(),
            queue: queue.clone(),
            declare: params.declare.unwrap_or(false),
            prefetch: params
                .prefetch
                .and_then(|p| u16::try_from(p.get()).ok())
                .unwrap_or(DEFAULT_PREFETCH),
        })
    }

    /// The URL with its password shown as `***`: for logs and errors.
    pub fn shown_url(&self) -> String {
        triggerer_sdk::redact_uri(&self.url)
    }

    /// The vhost the URL names (`/` when it names none), for dedup keys and messages.
    pub fn vhost(&self) -> String {
        parse_url(&self.url)
            .map(|u| u.vhost)
            .unwrap_or_else(|_| "/".into())
    }

    /// Whether the URL asks for TLS.
    pub fn is_tls(&self) -> bool {
        parse_url(&self.url).is_ok_and(|u| u.scheme == AMQPScheme::AMQPS)
    }
}

/// The kwargs `amqp[s]://[user:password@]host[:port]/VHOST/QUEUE[?query]` stands for, merged
/// with the watcher's other kwargs; `None` for another URI.
///
/// The path has exactly two segments, each percent-encoded: the vhost (`%2f` for the default
/// vhost `/`; an empty segment, `amqp://host//orders`, is `/` too) and the queue. The query
/// (`heartbeat`, `connection_timeout`, `frame_max`, `channel_max`) stays on `url`.
pub(crate) fn queue_params(
    queue: &str,
    kwargs: &Map<String, Value>,
) -> Option<Result<Map<String, Value>, KwargsError>> {
    let (scheme, rest) = if let Some(rest) = queue.strip_prefix("amqp://") {
        ("amqp", rest)
    } else if let Some(rest) = queue.strip_prefix("amqps://") {
        ("amqps", rest)
    } else {
        return None;
    };
    Some(split_queue_uri(scheme, rest).and_then(|(url, name)| {
        for given in ["url", "queue"] {
            if kwargs.contains_key(given) {
                return Err(KwargsError::new(
                    given,
                    "is given by the `queue` URI; set one or the other",
                ));
            }
        }
        let mut merged = kwargs.clone();
        merged.insert("url".into(), Value::String(url));
        merged.insert("queue".into(), Value::String(name));
        Ok(merged)
    }))
}

const QUEUE_URI_FORM: &str = "must be amqp[s]://[user:password@]host[:port]/VHOST/QUEUE \
     (percent-encoded; `%2f` for the default vhost `/`)";

/// `(url, queue)` of a queue URI without its scheme.
fn split_queue_uri(scheme: &str, rest: &str) -> Result<(String, String), KwargsError> {
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    // The authority ends at the first `/` after the userinfo: a password may hold `/` only
    // percent-encoded, as in any URL.
    let after_userinfo = rest.rfind('@').map_or(0, |at| at + 1);
    let Some(slash) = rest[after_userinfo..].find('/').map(|i| i + after_userinfo) else {
        return Err(KwargsError::new("queue", QUEUE_URI_FORM));
    };
    let (authority, path) = (&rest[..slash], &rest[slash + 1..]);
    let segments: Vec<&str> = path.split('/').collect();
    let [vhost, name] = segments.as_slice() else {
        return Err(KwargsError::new("queue", QUEUE_URI_FORM));
    };
    let name = percent_decode(name).ok_or_else(|| {
        KwargsError::new("queue", "the queue name is not valid percent-encoded UTF-8")
    })?;
    if name.trim().is_empty() {
        return Err(KwargsError::new("queue", QUEUE_URI_FORM));
    }
    let vhost = if vhost.is_empty() { "%2f" } else { vhost };
    let mut url = format!("{scheme}://{authority}/{vhost}");
    if let Some(query) = query {
        url.push('?');
        url.push_str(query);
    }
    Ok((url, name))
}

/// `%XX` sequences decoded; `None` when they are malformed or not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `s` with `%`, `/` and `:` (and anything outside printable ASCII) percent-encoded: the parts
/// of a dedup key stay apart whatever a vhost or queue is called.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'/' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggerer_sdk::{parse_params, Provider};

    use super::*;
    use crate::AmqpProvider;

    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    fn from_kwargs(kwargs: &Value) -> Result<AmqpConfig, KwargsError> {
        AmqpConfig::from_params(&parse_params(&AmqpProvider::new(), kwargs)?)
    }

    fn queue_kwargs(
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
        AmqpProvider::new().queue_kwargs(queue, kwargs)
    }

    #[test]
    fn defaults() {
        let c = from_kwargs(&json!({"url": URL, "queue": " orders "})).unwrap();
        assert_eq!(c.queue, "orders");
        assert!(!c.declare);
        assert_eq!(c.prefetch, DEFAULT_PREFETCH);
        assert_eq!(c.vhost(), "/");
        assert!(!c.is_tls());
        let c = from_kwargs(&json!({"url": "amqps://u:p@mq.example.com/prod", "queue": "q", "declare": true, "prefetch": 5})).unwrap();
        assert!(c.declare);
        assert_eq!(c.prefetch, 5);
        assert_eq!(c.vhost(), "prod");
        assert!(c.is_tls());
    }

    #[test]
    fn mistakes_name_the_field() {
        let field = |kwargs: Value| from_kwargs(&kwargs).unwrap_err().field;
        assert_eq!(field(json!({"queue": "q"})), "url");
        assert_eq!(field(json!({"url": URL})), "queue");
        assert_eq!(field(json!({"url": "http://h/q", "queue": "q"})), "url");
        assert_eq!(
            field(json!({"url": "amqp://h:notaport/", "queue": "q"})),
            "url"
        );
        assert_eq!(field(json!({"url": URL, "queue": ""})), "queue");
        assert_eq!(
            field(json!({"url": URL, "queue": "q".repeat(256)})),
            "queue"
        );
        assert_eq!(
            field(json!({"url": URL, "queue": "amq.x", "declare": true})),
            "queue"
        );
        assert_eq!(
            field(json!({"url": URL, "queue": "q", "prefetch": 0})),
            "prefetch"
        );
        assert_eq!(
            field(json!({"url": URL, "queue": "q", "prefetch": 10_001})),
            "prefetch"
        );
        assert_eq!(
            field(json!({"url": URL, "queue": "q", "declare": "yes"})),
            "declare"
        );
        assert_eq!(
            field(json!({"url": URL, "queue": "q", "prefech": 3})),
            "prefech"
        );
        assert_eq!(
            field(json!({"url": URL, "queue": "q", "auto_ack": true})),
            "auto_ack"
        );
        assert_eq!(
            field(json!({"url": URL, "queue": "q", "amqp_conn_id": "x"})),
            "amqp_conn_id"
        );
    }

    #[test]
    fn messages_keep_the_guidance_and_never_the_password() {
        let message = |kwargs: Value| from_kwargs(&kwargs).unwrap_err().to_string();
        assert!(message(json!({"queue": "q"})).starts_with("kwargs.url: required: the broker URL"));
        assert_eq!(
            message(json!({"url": URL, "queue": "q", "prefetch": 0})),
            "kwargs.prefetch: must be between 1 and 10000, got 0"
        );
        let unknown = message(json!({"url": URL, "queue": "q", "prefech": 3}));
        assert!(
            unknown.contains("expected one of: url, queue, declare, prefetch"),
            "{unknown}"
        );
        let bad = message(json!({"url": "amqp://u:hunter2@h:99999/", "queue": "q"}));
        assert!(
            bad.starts_with("kwargs.url: is not a valid AMQP URL"),
            "{bad}"
        );
        assert!(!bad.contains("hunter2"), "{bad}");
        let c = from_kwargs(&json!({"url": "amqp://u:hunter2@h/%2f", "queue": "q"})).unwrap();
        assert_eq!(c.shown_url(), "amqp://u:***@h/%2f");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn an_environment_placeholder_passes_at_sync_time() {
        let c = from_kwargs(&json!({"url": "${env:AMQP_URL}", "queue": "q"})).unwrap();
        assert_eq!(c.url, "${env:AMQP_URL}");
    }

    #[test]
    fn queue_uris() {
        let k = queue_kwargs("amqp://guest:guest@127.0.0.1:5672/%2f/orders", &Map::new())
            .unwrap()
            .unwrap();
        assert_eq!(k, json!({"url": URL, "queue": "orders"}));
        // An empty vhost segment is the default vhost; the queue is percent-decoded; the
        // query stays on the URL; other kwargs are kept.
        let mut rest = Map::new();
        rest.insert("prefetch".into(), json!(10));
        let k = queue_kwargs("amqps://u:p%2Fq@mq:5671//my%20queue?heartbeat=10", &rest)
            .unwrap()
            .unwrap();
        assert_eq!(
            k,
            json!({"url": "amqps://u:p%2Fq@mq:5671/%2f?heartbeat=10", "queue": "my queue", "prefetch": 10})
        );
        let k = queue_kwargs("amqp://mq/prod/orders", &Map::new())
            .unwrap()
            .unwrap();
        assert_eq!(k["url"], "amqp://mq/prod");
        for bad in [
            "amqp://mq",
            "amqp://mq/orders",
            "amqp://mq/a/b/c",
            "amqp://mq/a/",
            "amqp://mq/a/%zz",
        ] {
            let e = queue_kwargs(bad, &Map::new()).unwrap().unwrap_err();
            assert_eq!(e.field, "queue", "{bad}: {e}");
        }
        let mut both = Map::new();
        both.insert("queue".into(), json!("other"));
        let e = queue_kwargs("amqp://mq/v/q", &both).unwrap().unwrap_err();
        assert_eq!(e.field, "queue");
        assert!(queue_kwargs("kafka://b:9092/t", &Map::new()).is_none());
        assert!(queue_kwargs("amqpx://b/v/q", &Map::new()).is_none());
        // Errors about the URI never repeat the password.
        let e = queue_kwargs("amqp://u:hunter2@mq/v", &Map::new())
            .unwrap()
            .unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn percent_coding() {
        assert_eq!(percent_encode("/"), "%2F");
        assert_eq!(percent_encode("a:b/c%d e"), "a%3Ab%2Fc%25d%20e");
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
