//! The kwargs of `sqs.SqsSensorTrigger` ([`SqsParams`], checked without I/O) and what a
//! trigger runs with ([`SqsConfig`]). Airflow's names are kept where they mean the same;
//! Airflow-only ones (connections, filtering, deleting on reception) are refused with what to
//! write instead.

use serde::Deserialize;
use serde_json::{Map, Value};
use triggerer_sdk::de::{Bounded, Trimmed};
use triggerer_sdk::{KwargsError, Refusal};

/// Airflow's kwargs that have no meaning here, with what to write instead.
pub(crate) const REFUSED: &[Refusal] = &[
    Refusal {
        kwargs: &["aws_conn_id"],
        instead: "Airflow connections are not available here: credentials come from the \
                  standard AWS chain (environment, profile, instance role); set `region_name` \
                  and, for emulators, `endpoint_url`",
    },
    Refusal {
        kwargs: &[
            "message_filtering",
            "message_filtering_match_values",
            "message_filtering_config",
        ],
        instead: "filtering is not supported: every message becomes an event (filter in the DAG)",
    },
];

pub(crate) const HINTS: &[(&str, &str)] = &[(
    "sqs_queue",
    "the queue URL, e.g. https://sqs.eu-west-1.amazonaws.com/123456789012/orders",
)];

/// The kwargs of one watcher, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table with `sqs_queue`")]
pub struct SqsParams {
    /// The queue URL.
    pub sqs_queue: Trimmed,
    #[serde(default)]
    pub region_name: Option<Trimmed>,
    #[serde(default)]
    pub endpoint_url: Option<Trimmed>,
    #[serde(default)]
    pub max_messages: Option<Bounded<1, 10>>,
    #[serde(default)]
    pub wait_time_seconds: Option<Bounded<0, 20>>,
    #[serde(default)]
    pub visibility_timeout: Option<Bounded<10, 43_200>>,
    /// Accepted for Airflow compatibility; the trigger polls until cancelled.
    #[serde(default)]
    pub num_batches: Option<f64>,
    /// Accepted for Airflow compatibility; the trigger long-polls.
    #[serde(default)]
    pub waiter_delay: Option<f64>,
    /// Accepted for Airflow compatibility; only `true` is.
    #[serde(default)]
    pub delete_message_on_reception: Option<bool>,
}

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

/// Whether `url` may carry userinfo (`scheme://user[:password]@host`): any `@`, since a
/// password written unencoded may hold `/` and so end the authority early. Neither queue
/// names nor endpoint paths have a use for `@`.
fn has_userinfo(url: &str) -> bool {
    url.contains('@')
}

fn is_http(url: &str) -> bool {
    url.starts_with("https://") || url.starts_with("http://")
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

/// A bounded kwarg or its default; the bounds of every SQS kwarg fit in an `i32`.
fn int<const MIN: i64, const MAX: i64>(value: Option<Bounded<MIN, MAX>>, default: i32) -> i32 {
    value.map_or(default, |v| i32::try_from(v.get()).unwrap_or(default))
}

impl SqsConfig {
    /// The configuration `params` stand for, or why they cannot work. No I/O.
    pub fn from_params(params: &SqsParams) -> Result<Self, KwargsError> {
        let Trimmed(queue_url) = &params.sqs_queue;
        if !is_http(queue_url) {
            return Err(KwargsError::new(
                "sqs_queue",
                "must be the queue URL (https://…)",
            ));
        }
        // The messages do not repeat the URL: it holds a password.
        if has_userinfo(queue_url) {
            return Err(KwargsError::new("sqs_queue", NO_CREDENTIALS));
        }
        let endpoint_url = params.endpoint_url.as_ref().map(|Trimmed(e)| e.clone());
        if let Some(e) = &endpoint_url {
            if !is_http(e) {
                return Err(KwargsError::new(
                    "endpoint_url",
                    "must be an http(s):// URL",
                ));
            }
            if has_userinfo(e) {
                return Err(KwargsError::new("endpoint_url", NO_CREDENTIALS));
            }
        }
        let region = params
            .region_name
            .as_ref()
            .map(|Trimmed(r)| r.clone())
            .or_else(|| region_of(queue_url));
        if region.is_none() && endpoint_url.is_none() {
            return Err(KwargsError::new(
                "region_name",
                "required when the queue URL does not name an AWS region",
            ));
        }
        if params.delete_message_on_reception == Some(false) {
            return Err(KwargsError::new(
                "delete_message_on_reception",
                "messages are always deleted, and only after their events are stored; remove it",
            ));
        }
        Ok(Self {
            queue_url: queue_url.clone(),
            region,
            endpoint_url,
            max_messages: int(params.max_messages, 10),
            wait_time_seconds: int(params.wait_time_seconds, 20),
            visibility_timeout: int(params.visibility_timeout, 60),
        })
    }
}

/// `https://sqs.<region>.amazonaws.com/<account>/<queue>` (or `sqs://` with the same rest) is
/// `sqs_queue`, merged with the watcher's other kwargs; `None` for another URI.
pub(crate) fn queue_params(
    queue: &str,
    kwargs: &Map<String, Value>,
) -> Option<Result<Map<String, Value>, KwargsError>> {
    let url = if let Some(rest) = queue.strip_prefix("sqs://") {
        format!("https://{rest}")
    } else if region_of(queue).is_some() && queue.starts_with("https://") {
        queue.to_string()
    } else {
        return None;
    };
    if kwargs.contains_key("sqs_queue") {
        return Some(Err(KwargsError::new(
            "sqs_queue",
            "is given by the `queue` URI; set one or the other",
        )));
    }
    let mut merged = kwargs.clone();
    merged.insert("sqs_queue".into(), Value::String(url));
    Some(Ok(merged))
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggerer_sdk::{parse_params, Provider};

    use super::*;
    use crate::SqsProvider;

    fn from_kwargs(kwargs: &Value) -> Result<SqsConfig, KwargsError> {
        SqsConfig::from_params(&parse_params(&SqsProvider::new(), kwargs)?)
    }

    fn queue_kwargs(
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
        SqsProvider::new().queue_kwargs(queue, kwargs)
    }

    #[test]
    fn airflow_kwargs() {
        let c = from_kwargs(&json!({
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
        let local = from_kwargs(&json!({"sqs_queue": "http://127.0.0.1:5000/123/q", "endpoint_url": "http://127.0.0.1:5000"})).unwrap();
        assert_eq!(local.region, None);
    }

    #[test]
    fn mistakes_name_the_field() {
        let field = |kwargs: Value| from_kwargs(&kwargs).unwrap_err().field;
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
    fn messages_keep_the_guidance() {
        let message = |kwargs: Value| from_kwargs(&kwargs).unwrap_err().to_string();
        let q = "https://sqs.eu-west-1.amazonaws.com/1/q";
        assert_eq!(
            message(json!({})),
            "kwargs.sqs_queue: required: the queue URL, e.g. \
             https://sqs.eu-west-1.amazonaws.com/123456789012/orders"
        );
        assert_eq!(
            message(json!({"sqs_queue": q, "max_messages": 11})),
            "kwargs.max_messages: must be between 1 and 10, got 11"
        );
        assert_eq!(
            message(json!({"sqs_queue": q, "visibility_timeout": "60"})),
            "kwargs.visibility_timeout: expected a whole number between 10 and 43200, got a string"
        );
        let refused = message(json!({"sqs_queue": q, "aws_conn_id": "aws_default"}));
        assert!(refused.contains("standard AWS chain"), "{refused}");
        let refused = message(json!({"sqs_queue": q, "message_filtering_config": {}}));
        assert!(refused.contains("filter in the DAG"), "{refused}");
        let refused = message(json!({"sqs_queue": q, "delete_message_on_reception": false}));
        assert!(refused.contains("remove it"), "{refused}");
        assert!(from_kwargs(&json!({"sqs_queue": q, "delete_message_on_reception": true})).is_ok());
        assert!(
            message(json!({"sqs_queue": q, "max_message": 1})).starts_with(
                "kwargs.max_message: unknown kwarg; expected one of: sqs_queue, region_name"
            )
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
            let err = from_kwargs(&kwargs).unwrap_err();
            assert_eq!(err.field, field);
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
        let err = queue_kwargs(
            "sqs://u:hunter2@sqs.us-east-1.amazonaws.com/1/q",
            &Map::new(),
        )
        .unwrap()
        .unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        // A password with `/` ends the authority early: still refused.
        let err = from_kwargs(&json!({"sqs_queue": "http://127.0.0.1:5000/1/q", "endpoint_url": "http://u:hun/ter2@127.0.0.1:5000"})).unwrap_err();
        assert!(!err.to_string().contains("hun"), "{err}");
    }

    #[test]
    fn queue_uris() {
        let aws = "https://sqs.us-east-1.amazonaws.com/123456789012/orders";
        let k = queue_kwargs(aws, &Map::new()).unwrap().unwrap();
        assert_eq!(k, json!({"sqs_queue": aws}));
        let k = queue_kwargs(
            "sqs://sqs.us-east-1.amazonaws.com/123456789012/orders",
            &Map::new(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(k["sqs_queue"], aws);
        assert!(queue_kwargs("https://example.com/q", &Map::new()).is_none());
        assert!(queue_kwargs("kafka://b:9092/t", &Map::new()).is_none());
    }
}
