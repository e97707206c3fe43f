//! The kwargs of `mqtt.AwaitMessageTrigger` ([`MqttParams`], checked without I/O) and what a
//! trigger runs with ([`MqttConfig`]): the broker, the credentials, the topic filters, the
//! session's client id and the QoS.

use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use triggerer_sdk::de::{Bounded, StringList, Trimmed};
use triggerer_sdk::{KwargsError, Refusal};

/// Starts a placeholder that stands for an environment reference during validation
/// (`dags sync`); the trigger is built with the variable's value.
const PLACEHOLDER: &str = "${env:";

/// The longest client id MQTT 3.1.1 servers must accept is 23 characters; the derived one fits.
const DERIVED_ID_PREFIX: &str = "triggerer-";
const DERIVED_ID_HEX: usize = 13;

pub(crate) const REFUSED: &[Refusal] = &[Refusal {
    kwargs: &["clean_session", "clean_start"],
    instead: "the session is always persistent (clean_session = false): unacknowledged \
              messages must survive a restart; give a stable `client_id` instead",
}];

pub(crate) const HINTS: &[(&str, &str)] = &[
    (
        "url",
        "the broker, e.g. mqtt://broker:1883 or mqtts://user:pass@broker:8883 (best as { env = \"NAME\" })",
    ),
    (
        "topics",
        "a list of topic filters, e.g. [\"sensors/+/temperature\", \"alerts/#\"]",
    ),
    ("qos", "0 (at most once), 1 (at least once) or 2"),
];

/// The kwargs of one watcher, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with `url` and `topics`")]
pub struct MqttParams {
    /// `mqtt://[user[:password]@]host[:port]` or `mqtts://…`.
    pub url: Trimmed,
    /// Topic filters; `+` and `#` wildcards allowed.
    pub topics: StringList,
    /// The session's client id; derived from the broker, user, topics and QoS when absent.
    #[serde(default)]
    pub client_id: Option<Trimmed>,
    /// The subscription's QoS, 0–2; 1 when absent.
    #[serde(default)]
    pub qos: Option<Bounded<0, 2>>,
}

/// A broker address parsed from a `mqtt://` or `mqtts://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct Broker {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Broker {
    /// `host:port` (IPv6 hosts in brackets): in dedup keys and messages.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL without its password, for messages and logs.
    pub fn redacted(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        let user = match (&self.username, &self.password) {
            (Some(u), Some(_)) => format!("{u}:***@"),
            (Some(u), None) => format!("{u}@"),
            _ => String::new(),
        };
        format!("{scheme}://{user}{}", self.address())
    }
}

/// What a watcher runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttConfig {
    pub broker: Broker,
    pub topics: Vec<String>,
    pub client_id: String,
    pub qos: u8,
}

/// Why a URL is refused; the message never repeats the URL (it may hold a password).
fn bad_url(why: &str) -> KwargsError {
    KwargsError::new("url", why.to_string())
}

/// `%XX` escapes decoded (userinfo may be percent-encoded, as in any URL).
fn percent_decode(s: &str) -> Result<String, KwargsError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad_url("has a malformed `%` escape in its user or password"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad_url("has a user or password that is not UTF-8"))
}

/// Splits `mqtt://[userinfo@]authority[/rest]` into `(tls, userinfo, authority, rest)`. The
/// userinfo ends at the last `@`: a password written unencoded may hold `@` or `/`.
fn split_uri(uri: &str) -> Option<(bool, Option<&str>, &str, Option<&str>)> {
    let (tls, rest) = if let Some(rest) = uri.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = uri.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return None;
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, rest),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    Some((tls, userinfo, authority, path))
}

/// Parses `mqtt://[user[:password]@]host[:port][/]`.
pub fn parse_url(url: &str) -> Result<Broker, KwargsError> {
    let (tls, userinfo, authority, path) = split_uri(url)
        .ok_or_else(|| bad_url("must start with mqtt:// or mqtts://, e.g. mqtt://broker:1883"))?;
    if path.is_some_and(|p| !p.is_empty()) {
        return Err(bad_url(
            "must not have a path: name the topic filters in `topics`",
        ));
    }
    let (username, password) = match userinfo {
        None => (None, None),
        Some(info) => {
            let (user, pass) = match info.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (info, None),
            };
            if user.is_empty() {
                return Err(bad_url(
                    "has a password but no user name (`user:password@host`)",
                ));
            }
            (
                Some(percent_decode(user)?),
                pass.map(percent_decode).transpose()?,
            )
        }
    };
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad_url("has an IPv6 host without its closing `]`"))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(p.strip_prefix(':').ok_or_else(|| {
                    bad_url("must be mqtt://host:port (something follows the IPv6 host)")
                })?),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad_url("has no host, e.g. mqtt://broker:1883"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad_url("has a port that is not a number between 1 and 65535"))?,
    };
    Ok(Broker {
        tls,
        host: host.to_string(),
        port,
        username,
        password,
    })
}

/// Checks one topic filter as MQTT 3.1.1 §4.7 has it: `#` only as the whole last level, `+`
/// only as a whole level, no NUL.
pub fn check_filter(filter: &str) -> Result<(), &'static str> {
    if filter.contains('\0') {
        return Err("must not contain a NUL character");
    }
    if filter.len() > 65_535 {
        return Err("is longer than MQTT's 65535 bytes");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("may hold `#` only as its whole last level (`sensors/#`)");
        }
        if level.contains('+') && *level != "+" {
            return Err("may hold `+` only as a whole level (`sensors/+/temperature`)");
        }
    }
    Ok(())
}

/// The client id used when none is given: `triggerer-` and 13 hex digits of a SHA-256 over the
/// broker address, the user, the QoS and the sorted topic filters (never the password, so that
/// rotating it keeps the session). Stable across restarts and hosts as long as those kwargs are.
pub fn derived_client_id(broker: &Broker, topics: &[String], qos: u8) -> String {
    let mut sorted: Vec<&str> = topics.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut hash = Sha256::new();
    hash.update(broker.address().as_bytes());
    hash.update([0]);
    hash.update(broker.username.as_deref().unwrap_or_default().as_bytes());
    hash.update([0, qos]);
    for t in sorted {
        hash.update([0]);
        hash.update(t.as_bytes());
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{DERIVED_ID_PREFIX}{}", &hex[..DERIVED_ID_HEX])
}

impl MqttConfig {
    /// Checks what needs no URL value (topics, client id, QoS) and, unless it is still an
    /// environment placeholder (at `dags sync`), the URL. No I/O.
    pub fn check(params: &MqttParams) -> Result<(), KwargsError> {
        Self::topics_and_id(params)?;
        if !params.url.0.contains(PLACEHOLDER) {
            parse_url(&params.url.0)?;
        }
        Ok(())
    }

    fn topics_and_id(params: &MqttParams) -> Result<(), KwargsError> {
        for (i, topic) in params.topics.0.iter().enumerate() {
            check_filter(topic).map_err(|why| KwargsError::new(format!("topics[{i}]"), why))?;
        }
        if let Some(Trimmed(id)) = &params.client_id {
            if id.contains('\0') || id.len() > 65_535 {
                return Err(KwargsError::new(
                    "client_id",
                    "must be at most 65535 bytes without NUL characters",
                ));
            }
        }
        Ok(())
    }

    /// The configuration `params` stand for (with references resolved), or why they cannot
    /// work. No I/O.
    pub fn from_params(params: &MqttParams) -> Result<Self, KwargsError> {
        Self::topics_and_id(params)?;
        let broker = parse_url(&params.url.0)?;
        let topics = params.topics.0.clone();
        let qos = params.qos.map_or(1, |q| u8::try_from(q.get()).unwrap_or(1));
        let client_id = match &params.client_id {
            Some(Trimmed(id)) => id.clone(),
            None => derived_client_id(&broker, &topics, qos),
        };
        Ok(Self {
            broker,
            topics,
            client_id,
            qos,
        })
    }
}

/// `mqtt://[user:password@]host[:port]/TOPIC/FILTER` (or `mqtts://`) is `url` plus one topic
/// filter, the whole path taken as written (`+` and `#` need no escaping); without a path, the
/// filters come from the watcher's `topics`. `None` for another URI.
pub(crate) fn queue_params(
    queue: &str,
    kwargs: &Map<String, Value>,
) -> Option<Result<Map<String, Value>, KwargsError>> {
    let (tls, userinfo, authority, path) = split_uri(queue)?;
    let mut merged = kwargs.clone();
    if merged.contains_key("url") {
        return Some(Err(KwargsError::new(
            "url",
            "is given by the `queue` URI; set one or the other",
        )));
    }
    let scheme = if tls { "mqtts" } else { "mqtt" };
    let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    merged.insert(
        "url".into(),
        Value::String(format!("{scheme}://{user}{authority}")),
    );
    if let Some(filter) = path.filter(|p| !p.is_empty()) {
        if merged.contains_key("topics") {
            return Some(Err(KwargsError::new(
                "topics",
                "is given by the `queue` URI; set one or the other",
            )));
        }
        merged.insert(
            "topics".into(),
            Value::Array(vec![Value::String(filter.to_string())]),
        );
    }
    Some(Ok(merged))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggerer_sdk::{parse_params, Provider};

    use super::*;
    use crate::MqttProvider;

    fn from_kwargs(kwargs: &Value) -> Result<MqttConfig, KwargsError> {
        MqttConfig::from_params(&parse_params(&MqttProvider::new(), kwargs)?)
    }

    fn field(kwargs: Value) -> String {
        MqttProvider::new().validate(&kwargs).unwrap_err().field
    }

    #[test]
    fn kwargs_and_defaults() {
        let c = from_kwargs(&json!({
            "url": "mqtt://u:p%40ss@broker.example:1884",
            "topics": ["sensors/+/temperature", "alerts/#"],
        }))
        .unwrap();
        assert_eq!(c.broker.host, "broker.example");
        assert_eq!(c.broker.port, 1884);
        assert_eq!(c.broker.username.as_deref(), Some("u"));
        assert_eq!(c.broker.password.as_deref(), Some("p@ss"));
        assert!(!c.broker.tls);
        assert_eq!(c.qos, 1);
        assert!(c.client_id.starts_with("triggerer-"), "{}", c.client_id);
        assert_eq!(c.client_id.len(), 23);
        let tls =
            from_kwargs(&json!({"url": "mqtts://b", "topics": "t", "qos": 2, "client_id": "me"}))
                .unwrap();
        assert_eq!((tls.broker.tls, tls.broker.port, tls.qos), (true, 8883, 2));
        assert_eq!(tls.client_id, "me");
        let v6 = from_kwargs(&json!({"url": "mqtt://[::1]:1999", "topics": "t"})).unwrap();
        assert_eq!(v6.broker.address(), "[::1]:1999");
        // A password holding `/` and `@`, unencoded.
        let odd = from_kwargs(&json!({"url": "mqtt://u:a/b@c@h:1", "topics": "t"})).unwrap();
        assert_eq!(odd.broker.password.as_deref(), Some("a/b@c"));
        assert_eq!(odd.broker.host, "h");
    }

    #[test]
    fn the_derived_client_id_is_stable_and_ignores_the_password() {
        let id = |url: &str, topics: Value| {
            from_kwargs(&json!({"url": url, "topics": topics}))
                .unwrap()
                .client_id
        };
        let a = id("mqtt://u:one@h:1883", json!(["a", "b"]));
        assert_eq!(a, id("mqtt://u:two@h:1883", json!(["b", "a"])));
        assert_eq!(a, id("mqtt://u:one@h", json!(["a", "b"])));
        assert_ne!(a, id("mqtt://v:one@h:1883", json!(["a", "b"])));
        assert_ne!(a, id("mqtt://u:one@h:1883", json!(["a"])));
        assert_ne!(a, id("mqtt://u:one@other:1883", json!(["a", "b"])));
        // Pinned: a change of derivation would orphan every existing session.
        assert_eq!(
            id("mqtt://127.0.0.1:1883", json!(["sensors/#"])),
            derived_client_id(
                &parse_url("mqtt://127.0.0.1:1883").unwrap(),
                &["sensors/#".to_string()],
                1
            )
        );
    }

    #[test]
    fn mistakes_name_the_field() {
        assert_eq!(field(json!({"topics": ["t"]})), "url");
        assert_eq!(field(json!({"url": "mqtt://h"})), "topics");
        assert_eq!(field(json!({"url": "http://h", "topics": "t"})), "url");
        assert_eq!(field(json!({"url": "mqtt://h/x", "topics": "t"})), "url");
        assert_eq!(field(json!({"url": "mqtt://h:0", "topics": "t"})), "url");
        assert_eq!(
            field(json!({"url": "mqtt://h:99999", "topics": "t"})),
            "url"
        );
        assert_eq!(field(json!({"url": "mqtt://:p@h", "topics": "t"})), "url");
        assert_eq!(field(json!({"url": "mqtt://h", "topics": []})), "topics");
        assert_eq!(
            field(json!({"url": "mqtt://h", "topics": ["a", "b/#/c"]})),
            "topics[1]"
        );
        assert_eq!(
            field(json!({"url": "mqtt://h", "topics": ["a+"]})),
            "topics[0]"
        );
        assert_eq!(
            field(json!({"url": "mqtt://h", "topics": "t", "qos": 3})),
            "qos"
        );
        assert_eq!(
            field(json!({"url": "mqtt://h", "topics": "t", "qos": "1"})),
            "qos"
        );
        assert_eq!(
            field(json!({"url": "mqtt://h", "topics": "t", "client_id": " "})),
            "client_id"
        );
        assert_eq!(
            field(json!({"url": "mqtt://h", "topics": "t", "topic": "x"})),
            "topic"
        );
        assert_eq!(
            field(json!({"url": "mqtt://h", "topics": "t", "clean_session": true})),
            "clean_session"
        );
    }

    #[test]
    fn messages_keep_the_guidance_and_never_the_password() {
        let message = |kwargs: Value| {
            MqttProvider::new()
                .validate(&kwargs)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            message(json!({"url": "mqtt://h", "topics": ["a/#/b"]})),
            "kwargs.topics[0]: may hold `#` only as its whole last level (`sensors/#`)"
        );
        assert!(message(json!({"topics": "t"})).starts_with("kwargs.url: required: the broker"));
        assert!(
            message(json!({"url": "mqtt://h", "topics": "t", "clean_session": false}))
                .contains("stable `client_id`")
        );
        for url in [
            "mqtt://u:hunter2@h:port",
            "mqtt://u:hunter2@h/x",
            "http://u:hunter2@h",
            "mqtt://u:hun%zzter2@h",
        ] {
            let e = message(json!({"url": url, "topics": "t"}));
            assert!(e.starts_with("kwargs.url: "), "{e}");
            assert!(!e.contains("hunter2") && !e.contains("hun"), "{e}");
        }
        let broker = parse_url("mqtt://u:hunter2@h").unwrap();
        assert_eq!(broker.redacted(), "mqtt://u:***@h:1883");
        assert!(!format!("{broker:?}").contains("hunter2"));
    }

    #[test]
    fn an_environment_placeholder_passes_sync_and_is_checked_at_build() {
        let kwargs = json!({"url": "${env:MQTT_URL}", "topics": "t"});
        assert!(MqttProvider::new().validate(&kwargs).is_ok());
        assert_eq!(
            MqttProvider::new().build(&kwargs).err().map(|e| e.field),
            Some("url".to_string())
        );
        // The topics are still checked at sync.
        assert_eq!(
            field(json!({"url": "${env:MQTT_URL}", "topics": "a#"})),
            "topics[0]"
        );
    }

    #[test]
    fn queue_uris() {
        let p = MqttProvider::new();
        let k = p
            .queue_kwargs("mqtt://broker:1883/sensors/+/temperature", &Map::new())
            .unwrap()
            .unwrap();
        assert_eq!(
            k,
            json!({"url": "mqtt://broker:1883", "topics": ["sensors/+/temperature"]})
        );
        let mut extra = Map::new();
        extra.insert("qos".into(), json!(2));
        let k = p
            .queue_kwargs("mqtts://u:p@broker/alerts/#", &extra)
            .unwrap()
            .unwrap();
        assert_eq!(
            k,
            json!({"url": "mqtts://u:p@broker", "topics": ["alerts/#"], "qos": 2})
        );
        // Without a path the topics come from the kwargs; with neither, `topics` is missing.
        let mut topics = Map::new();
        topics.insert("topics".into(), json!(["a", "b"]));
        let k = p.queue_kwargs("mqtt://h", &topics).unwrap().unwrap();
        assert_eq!(k["topics"], json!(["a", "b"]));
        assert_eq!(
            p.queue_kwargs("mqtt://h", &Map::new())
                .unwrap()
                .unwrap_err()
                .field,
            "topics"
        );
        assert_eq!(
            p.queue_kwargs("mqtt://h/t", &topics)
                .unwrap()
                .unwrap_err()
                .field,
            "topics"
        );
        assert!(p.queue_kwargs("kafka://b:9092/t", &Map::new()).is_none());
        assert!(p.queue_kwargs("mqttx://h/t", &Map::new()).is_none());
    }
}
