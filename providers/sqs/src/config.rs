//! The kwargs of `sqs.SqsSensorTrigger`, checked without I/O. Airflow's names are kept where
//! they mean the same; Airflow-only ones (connections, filtering, deleting on reception) are
//! refused with what to write instead.

use serde_json::{Map, Value};
use triggerer_sdk::KwargsError;

const KWARGS: &[&str] = &[
    "sqs_queue",
    "region_name",
    "endpoint_url",
    "max_messages",
    "wait_time_seconds",
    "visibility_timeout",
    "num_batches",
    "waiter_delay",
    "delete_message_on_reception",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqsConfig {
    /// The queue URL.
    pub queue_url: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    /// Messages per receive, 1–10.
    pub max_messages: i32,
    /// Long-poll wait, 0–20 s.
    pub wait_time_seconds: i32,
    /// How long a received message stays invisible to others; extended while it waits to be
    /// committed.
    pub visibility_timeout: i32,
}

fn int(
    map: &Map<String, Value>,
    key: &str,
    default: i64,
    range: std::ops::RangeInclusive<i64>,
) -> Result<i32, KwargsError> {
    let value = match map.get(key) {
        None => default,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| KwargsError::new(key, "must be a whole number"))?,
    };
    if !range.contains(&value) {
        return Err(KwargsError::new(
            key,
            format!(
                "must be between {} and {}, got {value}",
                range.start(),
                range.end()
            ),
        ));
    }
    i32::try_from(value).map_err(|_| KwargsError::new(key, "out of range"))
}

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, KwargsError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(_) => Err(KwargsError::new(key, "must be a non-empty string")),
    }
}

/// Whether `url` may carry userinfo (`scheme://user[:password]@host`): any `@`, since a
/// password written unencoded may hold `/` and so end the authority early. Neither queue
/// names nor endpoint paths have a use for `@`.
fn has_userinfo(url: &str) -> bool {
    url.contains('@')
}

/// Why a URL may not hold `user:password@`. The SDK signs requests with the AWS credential
/// chain and has no use for them, while its own log lines, which the core's scrubber never
/// sees, may print the endpoint and the queue URL.
const NO_CREDENTIALS: &str = "must not carry credentials (`user:password@`): requests are \
     signed with the standard AWS credential chain (environment, profile, instance role)";

/// The region of an AWS queue URL (`https://sqs.<region>.amazonaws.com/<account>/<queue>`).
fn region_of(url: &str) -> Option<String> {
    let host = url.split("://").nth(1)?.split('/').next()?;
    let rest = host.strip_prefix("sqs.")?;
    let (region, domain) = rest.split_once('.')?;
    domain
        .starts_with("amazonaws.com")
        .then(|| region.to_string())
}

impl SqsConfig {
    pub fn from_kwargs(kwargs: &Value) -> Result<Self, KwargsError> {
        let Value::Object(map) = kwargs else {
            return Err(KwargsError::new("", "expected a table with `sqs_queue`"));
        };
        for key in map.keys() {
            match key.as_str() {
                "aws_conn_id" => {
                    return Err(KwargsError::new(
                        key,
                        "Airflow connections are not available here: credentials come from the \
                         standard AWS chain (environment, profile, instance role); set `region_name` \
                         and, for emulators, `endpoint_url`",
                    ))
                }
                "message_filtering" | "message_filtering_match_values" | "message_filtering_config" => {
                    return Err(KwargsError::new(
                        key,
                        "filtering is not supported: every message becomes an event (filter in the DAG)",
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
        let queue_url = string(map, "sqs_queue")?.ok_or_else(|| {
            KwargsError::new("sqs_queue", "required: the queue URL, e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/orders")
        })?;
        if !(queue_url.starts_with("https://") || queue_url.starts_with("http://")) {
            return Err(KwargsError::new(
                "sqs_queue",
                "must be the queue URL (https://…)",
            ));
        }
        // The messages do not repeat the URL: it holds a password.
        if has_userinfo(&queue_url) {
            return Err(KwargsError::new("sqs_queue", NO_CREDENTIALS));
        }
        let region = string(map, "region_name")?.or_else(|| region_of(&queue_url));
        let endpoint_url = string(map, "endpoint_url")?;
        if let Some(e) = &endpoint_url {
            if !(e.starts_with("https://") || e.starts_with("http://")) {
                return Err(KwargsError::new(
                    "endpoint_url",
                    "must be an http(s):// URL",
                ));
            }
            if has_userinfo(e) {
                return Err(KwargsError::new("endpoint_url", NO_CREDENTIALS));
            }
        }
        if region.is_none() && endpoint_url.is_none() {
            return Err(KwargsError::new(
                "region_name",
                "required when the queue URL does not name an AWS region",
            ));
        }
        for key in ["num_batches", "waiter_delay"] {
            if map.get(key).is_some_and(|v| !v.is_number()) {
                return Err(KwargsError::new(key, "must be a number"));
            }
        }
        match map.get("delete_message_on_reception") {
            None | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Err(KwargsError::new(
                "delete_message_on_reception",
                "messages are always deleted, and only after their events are stored; remove it",
            )),
            Some(_) => {
                return Err(KwargsError::new(
                    "delete_message_on_reception",
                    "must be true or false",
                ))
            }
        }
        Ok(Self {
            queue_url,
            region,
            endpoint_url,
            max_messages: int(map, "max_messages", 10, 1..=10)?,
            wait_time_seconds: int(map, "wait_time_seconds", 20, 0..=20)?,
            visibility_timeout: int(map, "visibility_timeout", 60, 10..=43_200)?,
        })
    }

    /// `https://sqs.<region>.amazonaws.com/<account>/<queue>` (or `sqs://` with the same rest)
    /// is `sqs_queue`, merged with the watcher's other kwargs.
    pub fn queue_kwargs(
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
        let url = if let Some(rest) = queue.strip_prefix("sqs://") {
            format!("https://{rest}")
        } else if region_of(queue).is_some() && queue.starts_with("https://") {
            queue.to_string()
        } else {
            return None;
        };
        let mut merged = kwargs.clone();
        if merged.contains_key("sqs_queue") {
            return Some(Err(KwargsError::new(
                "sqs_queue",
                "is given by the `queue` URI; set one or the other",
            )));
        }
        merged.insert("sqs_queue".into(), Value::String(url));
        let merged = Value::Object(merged);
        Some(Self::from_kwargs(&merged).map(|_| merged))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn airflow_kwargs() {
        let c = SqsConfig::from_kwargs(&json!({
            "sqs_queue": "https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
            "max_messages": 5,
            "wait_time_seconds": 10,
        }))
        .unwrap();
        assert_eq!(c.region.as_deref(), Some("eu-west-1"));
        assert_eq!(
            (c.max_messages, c.wait_time_seconds, c.visibility_timeout),
            (5, 10, 60)
        );
        let local = SqsConfig::from_kwargs(&json!({"sqs_queue": "http://127.0.0.1:5000/123/q", "endpoint_url": "http://127.0.0.1:5000"})).unwrap();
        assert_eq!(local.region, None);
    }

    #[test]
    fn mistakes_name_the_field() {
        let field = |kwargs: Value| SqsConfig::from_kwargs(&kwargs).unwrap_err().field;
        let q = "https://sqs.eu-west-1.amazonaws.com/1/q";
        assert_eq!(field(json!({})), "sqs_queue");
        assert_eq!(field(json!({"sqs_queue": "orders"})), "sqs_queue");
        assert_eq!(
            field(json!({"sqs_queue": q, "max_messages": 11})),
            "max_messages"
        );
        assert_eq!(
            field(json!({"sqs_queue": q, "wait_time_seconds": 21})),
            "wait_time_seconds"
        );
        assert_eq!(
            field(json!({"sqs_queue": q, "aws_conn_id": "aws_default"})),
            "aws_conn_id"
        );
        assert_eq!(
            field(json!({"sqs_queue": q, "message_filtering": "literal"})),
            "message_filtering"
        );
        assert_eq!(
            field(json!({"sqs_queue": q, "delete_message_on_reception": false})),
            "delete_message_on_reception"
        );
        assert_eq!(
            field(json!({"sqs_queue": "http://localhost/1/q"})),
            "region_name"
        );
    }

    #[test]
    fn credentials_in_urls_are_refused_without_repeating_them() {
        for (kwargs, field) in [
            (
                json!({"sqs_queue": "http://127.0.0.1:5000/1/q", "endpoint_url": "http://u:hunter2@127.0.0.1:5000"}),
                "endpoint_url",
            ),
            (
                json!({"sqs_queue": "https://u:hunter2@sqs.eu-west-1.amazonaws.com/1/q"}),
                "sqs_queue",
            ),
        ] {
            let err = SqsConfig::from_kwargs(&kwargs).unwrap_err();
            assert_eq!(err.field, field);
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let err = SqsConfig::queue_kwargs(
            "sqs://u:hunter2@sqs.us-east-1.amazonaws.com/1/q",
            &Map::new(),
        )
        .unwrap()
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // A password with `/` ends the authority early: still refused.
        let err = SqsConfig::from_kwargs(&json!({"sqs_queue": "http://127.0.0.1:5000/1/q", "endpoint_url": "http://u:hun/ter2@127.0.0.1:5000"})).unwrap_err();
        assert!(!err.to_string().contains("hun"), "{err}");
    }

    #[test]
    fn queue_uris() {
        let aws = "https://sqs.us-east-1.amazonaws.com/123456789012/orders";
        let k = SqsConfig::queue_kwargs(aws, &Map::new()).unwrap().unwrap();
        assert_eq!(k, json!({"sqs_queue": aws}));
        let k = SqsConfig::queue_kwargs(
            "sqs://sqs.us-east-1.amazonaws.com/123456789012/orders",
            &Map::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(k["sqs_queue"], aws);
        assert!(SqsConfig::queue_kwargs("https://example.com/q", &Map::new()).is_none());
        assert!(SqsConfig::queue_kwargs("kafka://b:9092/t", &Map::new()).is_none());
    }
}
