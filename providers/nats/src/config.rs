//! The kwargs of `nats.JetStreamTrigger` ([`NatsParams`], checked without I/O) and what a
//! trigger runs with ([`NatsConfig`]): the server URL split from its credentials, the stream,
//! its subjects (used only to create it), and the durable consumer's settings.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};
use triggerer_sdk::de::{Bounded, StringList, Trimmed};
use triggerer_sdk::KwargsError;

/// The durable consumer used when none is given.
pub const DEFAULT_DURABLE: &str = "triggerer";
/// Messages delivered and not yet acknowledged, per consumer, by default.
pub const DEFAULT_MAX_ACK_PENDING: i64 = 1_000;
/// How long the server waits for an acknowledgement before it redelivers, by default.
pub const DEFAULT_ACK_WAIT_SECS: i64 = 60;

pub(crate) const HINTS: &[(&str, &str)] = &[
    (
        "url",
        "the server URL, e.g. nats://127.0.0.1:4222 (or { env = \"NATS_URL\" })",
    ),
    ("stream", "the JetStream stream name, e.g. ORDERS"),
    (
        "subjects",
        "the subjects of the stream, e.g. [\"orders.>\"]",
    ),
];

/// The kwargs of one watcher, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with `url` and `stream`")]
pub struct NatsParams {
    /// `nats://[user:password@|token@]host:port` or `tls://…`.
    pub url: Trimmed,
    pub stream: Trimmed,
    /// Only used to create the stream when it does not exist.
    #[serde(default)]
    pub subjects: Option<StringList>,
    #[serde(default)]
    pub durable: Option<Trimmed>,
    #[serde(default)]
    pub max_ack_pending: Option<Bounded<1, 100_000>>,
    /// Whole seconds.
    #[serde(default)]
    pub ack_wait: Option<Bounded<1, 86_400>>,
}

/// Credentials taken out of the URL, handed to the client as options (async-nats does not
/// read them from the URL itself).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    UserPassword { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::None => "None",
            Self::UserPassword { .. } => "UserPassword(***)",
            Self::Token(_) => "Token(***)",
        })
    }
}

/// What a trigger runs with. Its `Debug` shows the URL without credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// The URL as written, credentials included: the key of the shared connection. Never
    /// logged; see [`NatsConfig::shown_url`].
    pub url: String,
    /// `scheme://host:port` without credentials: what the client connects to.
    pub server: String,
    pub credentials: Credentials,
    pub stream: String,
    pub subjects: Option<Vec<String>>,
    pub durable: String,
    pub max_ack_pending: i64,
    pub ack_wait: Duration,
}

/// Whether `s` is a kwarg's environment reference as `dags sync` sees it (`${env:NAME}`).
fn is_placeholder(s: &str) -> bool {
    s.starts_with("${env:") && s.ends_with('}')
}

/// A JetStream stream or consumer name: the server refuses these characters.
fn check_name(field: &str, name: &str) -> Result<(), KwargsError> {
    if let Some(c) = name
        .chars()
        .find(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(KwargsError::new(
            field,
            format!("must not contain {c:?} (a JetStream name has no '.', '*', '>', '/', '\\' or whitespace)"),
        ));
    }
    Ok(())
}

fn check_subject(field: &str, subject: &str) -> Result<(), KwargsError> {
    if subject.chars().any(char::is_whitespace) {
        return Err(KwargsError::new(field, "a subject has no whitespace"));
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(KwargsError::new(
                field,
                "a subject's tokens (between dots) must not be empty",
            ));
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return Err(KwargsError::new(
                field,
                "a wildcard (`*`, `>`) must be a whole token",
            ));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(KwargsError::new(field, "`>` must be the last token"));
        }
    }
    Ok(())
}

/// Percent-decodes a userinfo part (`%40` → `@`); malformed escapes are kept as written.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| char::from(b).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'%'));
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `scheme://[userinfo@]host[:port][/]` split into the server without credentials and the
/// credentials; the error says what is wrong without repeating the URL (it may hold a secret).
pub fn split_url(url: &str) -> Result<(String, Credentials), &'static str> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("must be a nats:// or tls:// URL, e.g. nats://127.0.0.1:4222")?;
    if scheme != "nats" && scheme != "tls" {
        return Err("must be a nats:// or tls:// URL, e.g. nats://127.0.0.1:4222");
    }
    // The last `@`: a password written unencoded may hold `@` or `/`.
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((userinfo, hostport)) => (Some(userinfo), hostport),
        None => (None, rest),
    };
    let hostport = hostport.strip_suffix('/').unwrap_or(hostport);
    if hostport.is_empty()
        || hostport.contains(['/', '?', '#', ','])
        || hostport.contains(char::is_whitespace)
    {
        return Err("must be scheme://host[:port] with no path (the stream is the `stream` kwarg); one server only");
    }
    let credentials = match userinfo {
        None => Credentials::None,
        Some(info) => match info.split_once(':') {
            Some((user, password)) => {
                if user.is_empty() {
                    return Err("has a password but no user name (`user:password@host`, or a token as `token@host`)");
                }
                Credentials::UserPassword {
                    user: percent_decode(user),
                    password: percent_decode(password),
                }
            }
            None if info.is_empty() => return Err("has an empty user name before `@`"),
            None => Credentials::Token(percent_decode(info)),
        },
    };
    Ok((format!("{scheme}://{hostport}"), credentials))
}

/// `url` with any userinfo replaced by `***`, for logs and errors.
pub fn shown(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, hostport)) => format!("{scheme}://***@{hostport}"),
            None => url.to_string(),
        },
        None => match url.rsplit_once('@') {
            Some((_, hostport)) => format!("***@{hostport}"),
            None => url.to_string(),
        },
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.shown_url())
            .field("server", &self.server)
            .field("credentials", &self.credentials)
            .field("stream", &self.stream)
            .field("subjects", &self.subjects)
            .field("durable", &self.durable)
            .field("max_ack_pending", &self.max_ack_pending)
            .field("ack_wait", &self.ack_wait)
            .finish()
    }
}

impl NatsConfig {
    /// The configuration `params` stand for, or why they cannot work. No I/O.
    pub fn from_params(params: &NatsParams) -> Result<Self, KwargsError> {
        let Trimmed(url) = &params.url;
        let (server, credentials) = if is_placeholder(url) {
            // `dags sync`: the value stays in the environment; it is checked at build time.
            (String::new(), Credentials::None)
        } else {
            split_url(url).map_err(|m| KwargsError::new("url", m))?
        };
        let Trimmed(stream) = &params.stream;
        check_name("stream", stream)?;
        let subjects = match &params.subjects {
            None => None,
            Some(StringList(subjects)) => {
                for (i, s) in subjects.iter().enumerate() {
                    check_subject(&format!("subjects[{i}]"), s)?;
                }
                Some(subjects.clone())
            }
        };
        let durable = params
            .durable
            .as_ref()
            .map_or(DEFAULT_DURABLE, |Trimmed(d)| d.as_str())
            .to_string();
        check_name("durable", &durable)?;
        let ack_wait = params.ack_wait.map_or(DEFAULT_ACK_WAIT_SECS, Bounded::get);
        Ok(Self {
            url: url.clone(),
            server,
            credentials,
            stream: stream.clone(),
            subjects,
            durable,
            max_ack_pending: params
                .max_ack_pending
                .map_or(DEFAULT_MAX_ACK_PENDING, Bounded::get),
            ack_wait: Duration::from_secs(u64::try_from(ack_wait).unwrap_or(60)),
        })
    }

    /// The URL without its credentials, for logs and errors.
    pub fn shown_url(&self) -> String {
        shown(&self.url)
    }
}

/// The kwargs `nats://[userinfo@]host:port/STREAM` (or `tls://…`) stands for, merged with the
/// watcher's other kwargs; `None` for another URI.
pub(crate) fn queue_params(
    queue: &str,
    kwargs: &Map<String, Value>,
) -> Option<Result<Map<String, Value>, KwargsError>> {
    let (scheme, rest) = queue.split_once("://")?;
    if scheme != "nats" {
        return None;
    }
    // The stream is the last path segment: a password written unencoded may hold `/`.
    let Some((server, stream)) = rest.rsplit_once('/') else {
        return Some(Err(KwargsError::new(
            "queue",
            "must be nats://host:port/STREAM (the stream is the path)",
        )));
    };
    if stream.is_empty() || server.is_empty() {
        return Some(Err(KwargsError::new(
            "queue",
            "must be nats://host:port/STREAM (the stream is the path)",
        )));
    }
    for key in ["url", "stream"] {
        if kwargs.contains_key(key) {
            return Some(Err(KwargsError::new(
                key,
                "is given by the `queue` URI; set one or the other",
            )));
        }
    }
    let mut merged = kwargs.clone();
    merged.insert("url".into(), Value::String(format!("nats://{server}")));
    merged.insert("stream".into(), Value::String(stream.to_string()));
    Some(Ok(merged))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggerer_sdk::{parse_params, Provider};

    use super::*;
    use crate::NatsProvider;

    fn from_kwargs(kwargs: &Value) -> Result<NatsConfig, KwargsError> {
        NatsConfig::from_params(&parse_params(&NatsProvider::new(), kwargs)?)
    }

    fn field(kwargs: Value) -> String {
        from_kwargs(&kwargs).unwrap_err().field
    }

    #[test]
    fn defaults_and_settings() {
        let c = from_kwargs(&json!({"url": "nats://127.0.0.1:4222", "stream": "ORDERS"})).unwrap();
        assert_eq!(c.server, "nats://127.0.0.1:4222");
        assert_eq!(c.credentials, Credentials::None);
        assert_eq!(c.durable, "triggerer");
        assert_eq!(c.subjects, None);
        assert_eq!(c.max_ack_pending, 1_000);
        assert_eq!(c.ack_wait, Duration::from_secs(60));
        let c = from_kwargs(&json!({
            "url": "tls://u:p%40ss@nats.example:4443/",
            "stream": "ORDERS",
            "subjects": ["orders.*", "refunds.>"],
            "durable": "etl",
            "max_ack_pending": 10,
            "ack_wait": 5,
        }))
        .unwrap();
        assert_eq!(c.server, "tls://nats.example:4443");
        assert_eq!(
            c.credentials,
            Credentials::UserPassword {
                user: "u".into(),
                password: "p@ss".into()
            }
        );
        assert_eq!(
            c.subjects.as_deref(),
            Some(&["orders.*".to_string(), "refunds.>".to_string()][..])
        );
        assert_eq!(
            (c.durable.as_str(), c.max_ack_pending, c.ack_wait),
            ("etl", 10, Duration::from_secs(5))
        );
        let c =
            from_kwargs(&json!({"url": "nats://s3cr3t@h:4222", "stream": "S", "subjects": "s.1"}))
                .unwrap();
        assert_eq!(c.credentials, Credentials::Token("s3cr3t".into()));
        // A password holding `@` and `/` unencoded.
        let c = from_kwargs(&json!({"url": "nats://u:a/b@c@h:4222", "stream": "S"})).unwrap();
        assert_eq!(c.server, "nats://h:4222");
        assert_eq!(
            c.credentials,
            Credentials::UserPassword {
                user: "u".into(),
                password: "a/b@c".into()
            }
        );
        // An environment reference at sync time.
        assert!(from_kwargs(&json!({"url": "${env:NATS_URL}", "stream": "S"})).is_ok());
    }

    #[test]
    fn mistakes_name_the_field() {
        let u = "nats://127.0.0.1:4222";
        assert_eq!(field(json!({})), "url");
        assert_eq!(field(json!({"url": u})), "stream");
        assert_eq!(field(json!({"url": "http://h:4222", "stream": "S"})), "url");
        assert_eq!(field(json!({"url": "h:4222", "stream": "S"})), "url");
        assert_eq!(
            field(json!({"url": "nats://h:4222/S", "stream": "S"})),
            "url"
        );
        assert_eq!(
            field(json!({"url": "nats://:p@h:4222", "stream": "S"})),
            "url"
        );
        assert_eq!(field(json!({"url": u, "stream": "A.B"})), "stream");
        assert_eq!(
            field(json!({"url": u, "stream": "S", "subjects": []})),
            "subjects"
        );
        assert_eq!(
            field(json!({"url": u, "stream": "S", "subjects": ["a", "b..c"]})),
            "subjects[1]"
        );
        assert_eq!(
            field(json!({"url": u, "stream": "S", "subjects": ["a.>.b"]})),
            "subjects[0]"
        );
        assert_eq!(
            field(json!({"url": u, "stream": "S", "subjects": ["a.b*"]})),
            "subjects[0]"
        );
        assert_eq!(
            field(json!({"url": u, "stream": "S", "durable": "a b"})),
            "durable"
        );
        assert_eq!(
            field(json!({"url": u, "stream": "S", "max_ack_pending": 0})),
            "max_ack_pending"
        );
        assert_eq!(
            field(json!({"url": u, "stream": "S", "ack_wait": 0})),
            "ack_wait"
        );
        assert_eq!(
            field(json!({"url": u, "stream": "S", "ack_wait": 1.5})),
            "ack_wait"
        );
        assert_eq!(
            field(json!({"url": u, "stream": "S", "subject": "a"})),
            "subject"
        );
        let unknown = from_kwargs(&json!({"url": u, "stream": "S", "consumer": "x"}))
            .unwrap_err()
            .to_string();
        assert!(
            unknown.starts_with(
                "kwargs.consumer: unknown kwarg; expected one of: url, stream, subjects, durable"
            ),
            "{unknown}"
        );
        let missing = from_kwargs(&json!({"url": u})).unwrap_err().to_string();
        assert_eq!(
            missing,
            "kwargs.stream: required: the JetStream stream name, e.g. ORDERS"
        );
    }

    #[test]
    fn credentials_never_show_in_errors_or_logs() {
        for url in [
            "nats://u:hunter2@h:4222/x",
            "nats://hunter2@h/x",
            "nats://:hunter2@h",
        ] {
            let err = from_kwargs(&json!({"url": url, "stream": "S"})).unwrap_err();
            assert_eq!(err.field, "url");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        assert_eq!(shown("nats://u:hunter2@h:4222"), "nats://***@h:4222");
        assert_eq!(shown("nats://hunter2@h:4222"), "nats://***@h:4222");
        assert_eq!(shown("nats://u:a/b@c@h:4222"), "nats://***@h:4222");
        assert_eq!(shown("nats://h:4222"), "nats://h:4222");
        let c = from_kwargs(&json!({"url": "nats://u:hunter2@h:4222", "stream": "S"})).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
        assert!(!format!("{:?}", c.credentials).contains("hunter2"));
        assert_eq!(c.shown_url(), "nats://***@h:4222");
    }

    fn queue_kwargs(
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
        NatsProvider::new().queue_kwargs(queue, kwargs)
    }

    #[test]
    fn queue_uris() {
        let k = queue_kwargs("nats://127.0.0.1:4222/ORDERS", &Map::new())
            .unwrap()
            .unwrap();
        assert_eq!(
            k,
            json!({"url": "nats://127.0.0.1:4222", "stream": "ORDERS"})
        );
        let mut extra = Map::new();
        extra.insert("subjects".into(), json!(["orders.>"]));
        extra.insert("durable".into(), json!("etl"));
        let k = queue_kwargs("nats://u:p/w@h:4222/ORDERS", &extra)
            .unwrap()
            .unwrap();
        assert_eq!(
            k,
            json!({"url": "nats://u:p/w@h:4222", "stream": "ORDERS", "subjects": ["orders.>"], "durable": "etl"})
        );
        assert!(queue_kwargs("kafka://b:9092/t", &Map::new()).is_none());
        assert!(queue_kwargs("sqs://x/y", &Map::new()).is_none());
        let err = queue_kwargs("nats://h:4222", &Map::new())
            .unwrap()
            .unwrap_err();
        assert_eq!(err.field, "queue");
        let err = queue_kwargs("nats://h:4222/", &Map::new())
            .unwrap()
            .unwrap_err();
        assert_eq!(err.field, "queue");
        let mut both = Map::new();
        both.insert("stream".into(), json!("X"));
        let err = queue_kwargs("nats://h:4222/S", &both).unwrap().unwrap_err();
        assert_eq!(err.field, "stream");
        // The merged kwargs are checked like any: a bad stream name is named.
        let err = queue_kwargs("nats://h:4222/A.B", &Map::new())
            .unwrap()
            .unwrap_err();
        assert_eq!(err.field, "stream");
    }
}
