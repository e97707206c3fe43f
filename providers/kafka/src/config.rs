//! The kwargs of `kafka.AwaitMessageTrigger` ([`KafkaParams`], checked without I/O) and the
//! librdkafka client configuration they stand for ([`KafkaConfig`]). Airflow's kwarg names are
//! kept where they mean the same here; the Airflow-only ones (Python callables, connection ids)
//! are refused with what to write instead ([`REFUSED`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use triggerer_sdk::de::{StringList, Trimmed};
use triggerer_sdk::{KwargsError, Refusal};

/// The consumer group used when none is given.
pub const DEFAULT_GROUP: &str = "triggerer";

/// Client settings the provider owns: acknowledging only after commit depends on them.
const RESERVED: &[&str] = &["enable.auto.offset.store", "enable.auto.commit"];

/// Why a broker address may not hold `user:password@`. librdkafka has no credentials in
/// addresses: it would take the whole thing for a host name and print it in every connection
/// error, and the address is also part of every event's dedup key.
const NO_CREDENTIALS: &str = "a broker address cannot carry credentials (`user:password@`): set \
     `kafka_config` `sasl.username` and `sasl.password` (with `{ env = \"NAME\" }` the password \
     stays in the triggerer's environment)";

/// Airflow's kwargs that have no meaning here, with what to write instead.
pub(crate) const REFUSED: &[Refusal] = &[
    Refusal {
        kwargs: &[
            "apply_function",
            "apply_function_args",
            "apply_function_kwargs",
        ],
        instead: "Python callables cannot run here: every message becomes an event whose \
                  payload carries the message (filter in the DAG instead)",
    },
    Refusal {
        kwargs: &["kafka_config_id"],
        instead: "Airflow connections are not available here: set `bootstrap_servers` and, for \
                  other client settings, `kafka_config`",
    },
];

pub(crate) const HINTS: &[(&str, &str)] = &[("topics", "a list of topic names, e.g. [\"orders\"]")];

/// The kwargs of one watcher, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `topics` and `bootstrap_servers` (or `kafka_config`)"
)]
pub struct KafkaParams {
    pub topics: StringList,
    /// `host:port[,host:port…]`, or a list of them.
    #[serde(default)]
    pub bootstrap_servers: Option<StringList>,
    #[serde(default)]
    pub group_id: Option<Trimmed>,
    /// Further librdkafka settings.
    #[serde(default)]
    pub kafka_config: BTreeMap<String, Setting>,
    /// Accepted for Airflow compatibility; the consumer is push-based.
    #[serde(default)]
    pub poll_timeout: Option<f64>,
    /// Accepted for Airflow compatibility; the consumer is push-based.
    #[serde(default)]
    pub poll_interval: Option<f64>,
    /// Accepted for Airflow compatibility; only `true` is.
    #[serde(default)]
    pub commit_offset: Option<bool>,
}

/// A librdkafka setting's value: librdkafka takes strings, TOML spells numbers and booleans
/// as such.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting(pub String);

impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SettingVisitor;

        impl Visitor<'_> for SettingVisitor {
            type Value = Setting;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Setting, E> {
                Ok(Setting(v.to_string()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Setting, E> {
                Ok(Setting(v.to_string()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Setting, E> {
                Ok(Setting(v.to_string()))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Setting, E> {
                Ok(Setting(v.to_string()))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Setting, E> {
                Ok(Setting(v.to_string()))
            }
        }

        d.deserialize_any(SettingVisitor)
    }
}

/// What a watcher runs with: its topics and the client settings of its consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub topics: Vec<String>,
    /// librdkafka settings, including `bootstrap.servers` and `group.id`.
    pub client: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// The configuration `params` stand for, or why they cannot work. No I/O.
    pub fn from_params(params: &KafkaParams) -> Result<Self, KwargsError> {
        let mut client = BTreeMap::new();
        for (key, Setting(value)) in &params.kafka_config {
            if RESERVED.contains(&key.as_str()) {
                return Err(KwargsError::new(
                    format!("kafka_config.{key}"),
                    "is managed by the provider: offsets are stored only after the events are committed",
                ));
            }
            client.insert(key.clone(), value.clone());
        }
        if let Some(StringList(servers)) = &params.bootstrap_servers {
            client.insert("bootstrap.servers".into(), servers.join(","));
        }
        match client.get("bootstrap.servers") {
            None => {
                return Err(KwargsError::new(
                    "bootstrap_servers",
                    "required (or `kafka_config.\"bootstrap.servers\"`)",
                ))
            }
            // The message does not repeat the value: it holds a password.
            Some(servers) if servers.contains('@') => {
                return Err(KwargsError::new("bootstrap_servers", NO_CREDENTIALS))
            }
            Some(_) => {}
        }
        match &params.group_id {
            Some(Trimmed(group)) => {
                client.insert("group.id".into(), group.clone());
            }
            None => {
                client
                    .entry("group.id".into())
                    .or_insert_with(|| DEFAULT_GROUP.into());
            }
        }
        // A new group reads from the start of the topic: the watcher must not miss messages
        // produced before it first joined.
        client
            .entry("auto.offset.reset".into())
            .or_insert_with(|| "earliest".into());
        if params.commit_offset == Some(false) {
            return Err(KwargsError::new(
                "commit_offset",
                "offsets are always committed, and only after the events are stored; remove it",
            ));
        }
        Ok(Self {
            topics: params.topics.0.clone(),
            client,
        })
    }

    /// Which shared consumer serves this watcher: one per distinct client configuration
    /// (cluster, group and settings).
    pub fn consumer_key(&self) -> String {
        self.client
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The cluster as configured, for dedup keys and logs.
    pub fn cluster(&self) -> &str {
        self.client
            .get("bootstrap.servers")
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// The kwargs `kafka://host:port[,host:port]/topic[,topic]` stands for, merged with the
/// watcher's other kwargs; `None` for another URI.
pub(crate) fn queue_params(
    queue: &str,
    kwargs: &Map<String, Value>,
) -> Option<Result<Map<String, Value>, KwargsError>> {
    let rest = queue.strip_prefix("kafka://")?;
    // Anywhere in the URI: a password with a `/` would put the rest of it in the topics
    // (which cannot hold `@`).
    if rest.contains('@') {
        return Some(Err(KwargsError::new("queue", NO_CREDENTIALS)));
    }
    let (servers, topics) = rest.split_once('/').unwrap_or((rest, ""));
    let mut merged = kwargs.clone();
    if !servers.is_empty() {
        merged.insert(
            "bootstrap_servers".into(),
            Value::String(servers.to_string()),
        );
    }
    let topics: Vec<Value> = topics
        .split(',')
        .filter(|t| !t.is_empty())
        .map(|t| Value::String(t.to_string()))
        .collect();
    if !topics.is_empty() {
        if merged.contains_key("topics") {
            return Some(Err(KwargsError::new(
                "topics",
                "is given by the `queue` URI; set one or the other",
            )));
        }
        merged.insert("topics".into(), Value::Array(topics));
    }
    Some(Ok(merged))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggerer_sdk::{parse_params, Provider};

    use super::*;
    use crate::KafkaProvider;

    fn from_kwargs(kwargs: &Value) -> Result<KafkaConfig, KwargsError> {
        KafkaConfig::from_params(&parse_params(&KafkaProvider::new(), kwargs)?)
    }

    fn queue_kwargs(
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
        KafkaProvider::new().queue_kwargs(queue, kwargs)
    }

    #[test]
    fn airflow_kwargs_map_to_a_client_config() {
        let c = from_kwargs(&json!({
            "topics": ["orders", "refunds"],
            "bootstrap_servers": "b1:9092,b2:9092",
            "group_id": "g",
            "kafka_config": {"session.timeout.ms": 10000, "auto.offset.reset": "latest"},
            "poll_timeout": 1,
        }))
        .unwrap();
        assert_eq!(c.topics, ["orders", "refunds"]);
        assert_eq!(c.client["bootstrap.servers"], "b1:9092,b2:9092");
        assert_eq!(c.client["group.id"], "g");
        assert_eq!(c.client["session.timeout.ms"], "10000");
        assert_eq!(c.client["auto.offset.reset"], "latest");
        let d = from_kwargs(&json!({"topics": ["t"], "bootstrap_servers": "b:9092"})).unwrap();
        assert_eq!(d.client["group.id"], DEFAULT_GROUP);
        assert_eq!(d.client["auto.offset.reset"], "earliest");
    }

    #[test]
    fn mistakes_name_the_field() {
        let field = |kwargs: Value| from_kwargs(&kwargs).unwrap_err().field;
        assert_eq!(field(json!({"bootstrap_servers": "b:9092"})), "topics");
        assert_eq!(field(json!({"topics": []})), "topics");
        assert_eq!(field(json!({"topics": ["t"]})), "bootstrap_servers");
        assert_eq!(
            field(json!({"topics": ["t"], "bootstrap_servers": "b", "apply_function": "m.f"})),
            "apply_function"
        );
        assert_eq!(
            field(json!({"topics": ["t"], "bootstrap_servers": "b", "kafka_config_id": "k"})),
            "kafka_config_id"
        );
        assert_eq!(
            field(json!({"topics": ["t"], "bootstrap_servers": "b", "topic": "x"})),
            "topic"
        );
        assert_eq!(
            field(json!({"topics": ["t"], "bootstrap_servers": "b", "commit_offset": false})),
            "commit_offset"
        );
        assert_eq!(
            field(
                json!({"topics": ["t"], "bootstrap_servers": "b", "kafka_config": {"enable.auto.offset.store": true}})
            ),
            "kafka_config.enable.auto.offset.store"
        );
    }

    #[test]
    fn messages_name_the_full_path_and_keep_the_guidance() {
        let message = |kwargs: Value| from_kwargs(&kwargs).unwrap_err().to_string();
        assert_eq!(
            message(
                json!({"topics": ["t"], "bootstrap_servers": "b", "kafka_config": {"group.id": {}}})
            ),
            "kwargs.kafka_config.group.id: expected a string, number or boolean, got a table"
        );
        assert_eq!(
            message(json!({"topics": ["t", ""], "bootstrap_servers": "b"})),
            "kwargs.topics[1]: must not be empty"
        );
        assert_eq!(
            message(json!({"bootstrap_servers": "b"})),
            "kwargs.topics: required: a list of topic names, e.g. [\"orders\"]"
        );
        assert_eq!(
            message(json!({"topics": ["t"], "bootstrap_servers": "b", "topic": "x"})),
            "kwargs.topic: unknown kwarg; expected one of: topics, bootstrap_servers, group_id, \
             kafka_config, poll_timeout, poll_interval, commit_offset"
        );
        let refused = message(json!({"topics": ["t"], "apply_function": "m.f"}));
        assert!(
            refused.starts_with("kwargs.apply_function: Python callables"),
            "{refused}"
        );
        let refused = message(json!({"topics": ["t"], "kafka_config_id": "k"}));
        assert!(refused.contains("set `bootstrap_servers`"), "{refused}");
        // An environment reference arrives as a placeholder at sync time, as its value later.
        let c = from_kwargs(&json!({
            "topics": "t",
            "bootstrap_servers": ["b1:9092", "b2:9092"],
            "kafka_config": {"sasl.password": "${env:KAFKA_PASSWORD}"},
        }))
        .unwrap();
        assert_eq!(c.client["sasl.password"], "${env:KAFKA_PASSWORD}");
        assert_eq!(c.client["bootstrap.servers"], "b1:9092,b2:9092");
        assert_eq!(c.topics, ["t"]);
    }

    #[test]
    fn queue_uris() {
        let kwargs = queue_kwargs("kafka://localhost:9092/orders,refunds", &Map::new())
            .unwrap()
            .unwrap();
        assert_eq!(
            kwargs,
            json!({"bootstrap_servers": "localhost:9092", "topics": ["orders", "refunds"]})
        );
        assert!(queue_kwargs("sqs://x", &Map::new()).is_none());
        let err = queue_kwargs("kafka://localhost:9092", &Map::new())
            .unwrap()
            .unwrap_err();
        assert_eq!(err.field, "topics");
    }

    #[test]
    fn credentials_in_broker_addresses_are_refused_without_repeating_them() {
        for kwargs in [
            json!({"topics": ["t"], "bootstrap_servers": "u:hunter2@b:9092"}),
            json!({"topics": ["t"], "bootstrap_servers": ["b1:9092", "sasl_plaintext://u:hunter2@b2:9092"]}),
            json!({"topics": ["t"], "kafka_config": {"bootstrap.servers": "u:hunter2@b:9092"}}),
        ] {
            let err = from_kwargs(&kwargs).unwrap_err();
            assert_eq!(err.field, "bootstrap_servers");
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(err.message.contains("sasl.password"), "{err}");
        }
        for queue in ["kafka://u:hunter2@b:9092/t", "kafka://u:hun/ter2@b:9092/t"] {
            let err = queue_kwargs(queue, &Map::new()).unwrap().unwrap_err();
            assert_eq!(err.field, "queue");
            assert!(!err.to_string().contains("hun"), "{err}");
        }
    }

    #[test]
    fn consumers_are_shared_by_identical_client_settings() {
        let a = from_kwargs(&json!({"topics": ["a"], "bootstrap_servers": "b:9092"})).unwrap();
        let b = from_kwargs(&json!({"topics": ["b"], "bootstrap_servers": "b:9092"})).unwrap();
        let c = from_kwargs(
            &json!({"topics": ["a"], "bootstrap_servers": "b:9092", "group_id": "other"}),
        )
        .unwrap();
        assert_eq!(a.consumer_key(), b.consumer_key());
        assert_ne!(a.consumer_key(), c.consumer_key());
    }
}
