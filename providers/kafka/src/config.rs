//! The kwargs of `kafka.AwaitMessageTrigger`, checked without I/O, and the librdkafka client
//! configuration they stand for. Airflow's kwarg names are kept where they mean the same here;
//! the Airflow-only ones (Python callables, connection ids) are refused with what to write instead.

use std::collections::BTreeMap;

use serde_json::{Map, Value};
use triggerer_sdk::KwargsError;

const KWARGS: &[&str] = &[
    "topics",
    "bootstrap_servers",
    "kafka_config",
    "group_id",
    "poll_timeout",
    "poll_interval",
    "commit_offset",
];

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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    pub topics: Vec<String>,
    /// librdkafka settings, including `bootstrap.servers` and `group.id`.
    pub client: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn from_kwargs(kwargs: &Value) -> Result<Self, KwargsError> {
        let Value::Object(map) = kwargs else {
            return Err(KwargsError::new(
                "",
                "expected a table with `topics` and `bootstrap_servers` (or `kafka_config`)",
            ));
        };
        for key in map.keys() {
            match key.as_str() {
                "apply_function" | "apply_function_args" | "apply_function_kwargs" => {
                    return Err(KwargsError::new(
                        key,
                        "Python callables cannot run here: every message becomes an event whose \
                         payload carries the message (filter in the DAG instead)",
                    ))
                }
                "kafka_config_id" => {
                    return Err(KwargsError::new(
                        key,
                        "Airflow connections are not available here: set `bootstrap_servers` and, \
                         for other client settings, `kafka_config`",
                    ))
                }
                k if !KWARGS.contains(&k) => {
                    return Err(KwargsError::new(
                        k,
                        format!("unknown kwarg; expected one of: {}", KWARGS.join(", ")),
                    ))
                }
                _ => {}
            }
        }
        let topics = match map.get("topics") {
            Some(Value::Array(items)) if !items.is_empty() => items
                .iter()
                .map(|t| match t {
                    Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
                    _ => Err(KwargsError::new(
                        "topics",
                        "each topic must be a non-empty string",
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_string()],
            _ => {
                return Err(KwargsError::new(
                    "topics",
                    "required: a list of topic names, e.g. [\"orders\"]",
                ))
            }
        };
        let mut client: BTreeMap<String, String> = BTreeMap::new();
        if let Some(extra) = map.get("kafka_config") {
            let Value::Object(extra) = extra else {
                return Err(KwargsError::new(
                    "kafka_config",
                    "must be a table of librdkafka settings",
                ));
            };
            for (key, value) in extra {
                if RESERVED.contains(&key.as_str()) {
                    return Err(KwargsError::new(
                        format!("kafka_config.{key}"),
                        "is managed by the provider: offsets are stored only after the events are committed",
                    ));
                }
                client.insert(key.clone(), scalar(&format!("kafka_config.{key}"), value)?);
            }
        }
        match map.get("bootstrap_servers") {
            Some(Value::String(s)) if !s.trim().is_empty() => {
                client.insert("bootstrap.servers".into(), s.trim().to_string());
            }
            Some(Value::Array(items)) if !items.is_empty() => {
                let servers: Vec<String> = items
                    .iter()
                    .map(|v| scalar("bootstrap_servers", v))
                    .collect::<Result<_, _>>()?;
                client.insert("bootstrap.servers".into(), servers.join(","));
            }
            Some(_) => {
                return Err(KwargsError::new(
                    "bootstrap_servers",
                    "must be \"host:port[,host:port…]\" or a list of them",
                ))
            }
            None => {}
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
        match map.get("group_id") {
            Some(Value::String(g)) if !g.trim().is_empty() => {
                client.insert("group.id".into(), g.trim().to_string());
            }
            Some(_) => return Err(KwargsError::new("group_id", "must be a non-empty string")),
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
        for key in ["poll_timeout", "poll_interval"] {
            match map.get(key) {
                None | Some(Value::Number(_)) => {}
                Some(_) => return Err(KwargsError::new(key, "must be a number of seconds")),
            }
        }
        match map.get("commit_offset") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => {
                return Err(KwargsError::new(
                    "commit_offset",
                    "offsets are always committed, and only after the events are stored; remove it",
                ))
            }
            Some(_) => return Err(KwargsError::new("commit_offset", "must be true or false")),
        }
        Ok(Self { topics, client })
    }

    /// The configuration `kafka://host:port[,host:port]/topic[,topic]` stands for, merged with
    /// the watcher's other kwargs.
    pub fn queue_kwargs(
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
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
        let merged = Value::Object(merged);
        Some(Self::from_kwargs(&merged).map(|_| merged))
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

fn scalar(field: &str, value: &Value) -> Result<String, KwargsError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(KwargsError::new(
            field,
            "must be a string, number or boolean",
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn airflow_kwargs_map_to_a_client_config() {
        let c = KafkaConfig::from_kwargs(&json!({
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
        let d = KafkaConfig::from_kwargs(&json!({"topics": ["t"], "bootstrap_servers": "b:9092"}))
            .unwrap();
        assert_eq!(d.client["group.id"], DEFAULT_GROUP);
        assert_eq!(d.client["auto.offset.reset"], "earliest");
    }

    #[test]
    fn mistakes_name_the_field() {
        let field = |kwargs: Value| KafkaConfig::from_kwargs(&kwargs).unwrap_err().field;
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
    fn queue_uris() {
        let kwargs =
            KafkaConfig::queue_kwargs("kafka://localhost:9092/orders,refunds", &Map::new())
                .unwrap()
                .unwrap();
        assert_eq!(
            kwargs,
            json!({"bootstrap_servers": "localhost:9092", "topics": ["orders", "refunds"]})
        );
        assert!(KafkaConfig::queue_kwargs("sqs://x", &Map::new()).is_none());
        let err = KafkaConfig::queue_kwargs("kafka://localhost:9092", &Map::new())
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
            let err = KafkaConfig::from_kwargs(&kwargs).unwrap_err();
            assert_eq!(err.field, "bootstrap_servers");
            assert!(!err.to_string().contains("hunter2"), "{err}");
            assert!(err.message.contains("sasl.password"), "{err}");
        }
        for queue in ["kafka://u:hunter2@b:9092/t", "kafka://u:hun/ter2@b:9092/t"] {
            let err = KafkaConfig::queue_kwargs(queue, &Map::new())
                .unwrap()
                .unwrap_err();
            assert_eq!(err.field, "queue");
            assert!(!err.to_string().contains("hun"), "{err}");
        }
    }

    #[test]
    fn consumers_are_shared_by_identical_client_settings() {
        let a = KafkaConfig::from_kwargs(&json!({"topics": ["a"], "bootstrap_servers": "b:9092"}))
            .unwrap();
        let b = KafkaConfig::from_kwargs(&json!({"topics": ["b"], "bootstrap_servers": "b:9092"}))
            .unwrap();
        let c = KafkaConfig::from_kwargs(
            &json!({"topics": ["a"], "bootstrap_servers": "b:9092", "group_id": "other"}),
        )
        .unwrap();
        assert_eq!(a.consumer_key(), b.consumer_key());
        assert_ne!(a.consumer_key(), c.consumer_key());
    }
}
