//! The common message-queue trigger (Airflow's `MessageQueueTrigger`): a watcher written as
//! `classpath = "MessageQueueTrigger"` with `scheme = "kafka"` or `queue = "kafka://…"` names no
//! provider; this crate finds the one provider that serves it and turns the watcher into that
//! provider's own classpath and kwargs. As in Airflow, the trigger stored and run is the
//! concrete one, so a `MessageQueueTrigger` watcher and a direct watcher with the same settings
//! share one trigger. No provider or several providers serving the scheme or URI is an error
//! naming it. This crate only resolves, at sync time and without I/O; it runs nothing.
//!
//! kwargs: `queue` (a URI; takes precedence, as in Airflow) or `scheme` (a provider's scheme),
//! `trigger_queue` (accepted and ignored: watcher triggers run on every triggerer), and the
//! target provider's own kwargs.

use std::sync::Arc;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{Map, Value};
use triggerer_sdk::{parse_kwargs, KwargsError, Provider};

/// A provider that claimed a `queue` URI, with the kwargs it derived from it.
type QueueMatch = (Arc<dyn Provider>, Result<Value, KwargsError>);

/// The classpaths this dispatch answers to.
pub const CLASSPATHS: &[&str] = &[
    "MessageQueueTrigger",
    "msgqueue.MessageQueueTrigger",
    "airflow.providers.common.messaging.triggers.msg_queue.MessageQueueTrigger",
];

const HINTS: &[(&str, &str)] = &[
    ("queue", "a URI such as \"kafka://host:9092/topic\""),
    ("scheme", "a provider's scheme, such as \"kafka\""),
];

/// A `MessageQueueTrigger` watcher's own kwargs; all the others belong to the provider it
/// resolves to, which checks them (so no `deny_unknown_fields` here).
#[derive(Debug, Deserialize)]
#[serde(expecting = "a table with `queue` (a URI) or `scheme`")]
struct Dispatch {
    #[serde(default)]
    queue: Option<String>,
    #[serde(default)]
    scheme: Option<String>,
    /// Accepted and ignored: watcher triggers run on every triggerer.
    #[serde(default)]
    #[allow(dead_code)]
    trigger_queue: Option<IgnoredAny>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// The provider a `MessageQueueTrigger` watcher stands for, and that provider's kwargs.
pub fn resolve(
    providers: &[Arc<dyn Provider>],
    kwargs: &Value,
) -> Result<(Arc<dyn Provider>, Value), KwargsError> {
    let Dispatch {
        queue,
        scheme,
        rest,
        ..
    } = parse_kwargs(kwargs, HINTS)?;
    let known_schemes = || -> String {
        let mut schemes: Vec<&str> = providers
            .iter()
            .flat_map(|p| p.schemes().iter().copied())
            .collect();
        schemes.sort_unstable();
        schemes.dedup();
        if schemes.is_empty() {
            "none".into()
        } else {
            schemes.join(", ")
        }
    };
    match (queue, scheme) {
        (Some(uri), _) => {
            // Errors repeat the URI, so they get it without the password of its userinfo.
            let shown = triggerer_sdk::redact_uri(&uri);
            let mut matches: Vec<QueueMatch> = providers
                .iter()
                .filter_map(|p| p.queue_kwargs(&uri, &rest).map(|k| (p.clone(), k)))
                .collect();
            match matches.len() {
                0 => Err(KwargsError::new(
                    "queue",
                    format!("`{shown}` is not served by any provider in this build (schemes: {})", known_schemes()),
                )),
                1 => {
                    let (provider, kwargs) = matches.remove(0);
                    let kwargs = kwargs.map_err(|e| in_queue(&shown, e))?;
                    Ok((provider, kwargs))
                }
                _ => Err(KwargsError::new(
                    "queue",
                    format!("`{shown}` is served by more than one provider: {}", names(&matches)),
                )),
            }
        }
        (None, Some(scheme)) => {
            let mut matches: Vec<Arc<dyn Provider>> = providers
                .iter()
                .filter(|p| p.schemes().contains(&scheme.as_str()))
                .cloned()
                .collect();
            match matches.len() {
                0 => Err(KwargsError::new(
                    "scheme",
                    format!("`{scheme}` is not served by any provider in this build (schemes: {})", known_schemes()),
                )),
                1 => {
                    let provider = matches.remove(0);
                    let kwargs = Value::Object(rest);
                    provider.validate(&kwargs)?;
                    Ok((provider, kwargs))
                }
                _ => Err(KwargsError::new(
                    "scheme",
                    format!(
                        "`{scheme}` is served by more than one provider: {}",
                        matches.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
                    ),
                )),
            }
        }
        (None, None) => Err(KwargsError::new(
            "queue",
            "a MessageQueueTrigger needs `queue` (a URI such as \"kafka://host:9092/topic\") or `scheme`",
        )),
    }
}

fn in_queue(uri: &str, e: KwargsError) -> KwargsError {
    KwargsError::new(e.field, format!("{} (for queue `{uri}`)", e.message))
}

fn names(matches: &[QueueMatch]) -> String {
    matches
        .iter()
        .map(|(p, _)| p.name())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use triggerer_sdk::EventTrigger;

    use super::*;

    /// A provider serving `scheme`, whose URIs `scheme://X` become `{"target": X}` (refused when
    /// `X` holds `@`).
    struct Fake {
        name: &'static str,
        schemes: &'static [&'static str],
    }

    impl Provider for Fake {
        fn name(&self) -> &'static str {
            self.name
        }
        fn classpaths(&self) -> &'static [&'static str] {
            &["fake.Trigger"]
        }
        fn schemes(&self) -> &'static [&'static str] {
            self.schemes
        }
        fn queue_kwargs(
            &self,
            queue: &str,
            kwargs: &Map<String, Value>,
        ) -> Option<Result<Value, KwargsError>> {
            let scheme = self.schemes.first()?;
            let target = queue.strip_prefix(&format!("{scheme}://"))?;
            let mut merged = kwargs.clone();
            merged.insert("target".into(), json!(target));
            Some(
                self.validate(&Value::Object(merged.clone()))
                    .map(|_| Value::Object(merged)),
            )
        }
        fn validate(&self, kwargs: &Value) -> Result<(), KwargsError> {
            match kwargs.get("target") {
                // As the Kafka provider does: credentials in the URI are refused.
                Some(Value::String(t)) if t.contains('@') => {
                    Err(KwargsError::new("target", "no credentials here"))
                }
                Some(Value::String(t)) if !t.is_empty() => Ok(()),
                _ => Err(KwargsError::new("target", "required")),
            }
        }
        fn build(&self, _: &Value) -> Result<Box<dyn EventTrigger>, KwargsError> {
            Err(KwargsError::new("", "not used in these tests"))
        }
    }

    /// The error `resolve` gives (providers are not `Debug`, so no `unwrap_err`).
    fn error_of(providers: &[Arc<dyn Provider>], kwargs: Value) -> KwargsError {
        match resolve(providers, &kwargs) {
            Err(e) => e,
            Ok((p, k)) => panic!("expected an error, got {} with {k}", p.name()),
        }
    }

    fn providers() -> Vec<Arc<dyn Provider>> {
        vec![
            Arc::new(Fake {
                name: "kafkaish",
                schemes: &["kafka"],
            }),
            Arc::new(Fake {
                name: "sqsish",
                schemes: &["sqs"],
            }),
        ]
    }

    #[test]
    fn queue_uri_picks_the_provider_and_derives_kwargs() {
        let (p, kwargs) = resolve(
            &providers(),
            &json!({"queue": "kafka://orders", "extra": 1}),
        )
        .unwrap();
        assert_eq!(p.name(), "kafkaish");
        assert_eq!(kwargs, json!({"target": "orders", "extra": 1}));
    }

    #[test]
    fn scheme_picks_the_provider_and_keeps_kwargs() {
        let (p, kwargs) = resolve(
            &providers(),
            &json!({"scheme": "sqs", "target": "q", "trigger_queue": "x"}),
        )
        .unwrap();
        assert_eq!(p.name(), "sqsish");
        assert_eq!(kwargs, json!({"target": "q"}));
        let err = error_of(&providers(), json!({"scheme": "sqs"}));
        assert_eq!(err.field, "target");
    }

    #[test]
    fn errors_name_the_uri_without_its_password() {
        let err = error_of(&providers(), json!({"queue": "amqp://u:hunter2@host/q"}));
        assert!(err.message.contains("`amqp://u:***@host/q`"), "{err}");
        // The provider refuses the kwargs it derived: the URI it names is masked too.
        let err = error_of(&providers(), json!({"queue": "kafka://u:hunter2@"}));
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(err.message.contains("kafka://u:***@"), "{err}");
        assert_eq!(
            triggerer_sdk::redact_uri("kafka://h:9092/t"),
            "kafka://h:9092/t"
        );
        assert_eq!(triggerer_sdk::redact_uri("kafka://u@h/t"), "kafka://u@h/t");
        assert_eq!(
            triggerer_sdk::redact_uri("kafka://u:p@s/s@h/t"),
            "kafka://u:***@h/t"
        );
    }

    #[test]
    fn none_or_several_providers_is_an_error_naming_the_uri_or_scheme() {
        let err = error_of(&providers(), json!({"queue": "amqp://host/q"}));
        assert_eq!(err.field, "queue");
        assert!(
            err.message.contains("amqp://host/q") && err.message.contains("kafka, sqs"),
            "{err}"
        );
        let err = error_of(&providers(), json!({"scheme": "nats"}));
        assert!(err.message.contains("`nats`"), "{err}");
        let mut twice = providers();
        twice.push(Arc::new(Fake {
            name: "other-kafka",
            schemes: &["kafka"],
        }));
        let err = error_of(&twice, json!({"scheme": "kafka", "target": "t"}));
        assert!(err.message.contains("kafkaish, other-kafka"), "{err}");
        let err = error_of(&twice, json!({"queue": "kafka://t"}));
        assert!(err.message.contains("more than one"), "{err}");
        assert_eq!(error_of(&providers(), json!({})).field, "queue");
        let err = error_of(&providers(), json!({"queue": 3}));
        assert_eq!(
            err.to_string(),
            "kwargs.queue: expected a string, got 3 (a URI such as \"kafka://host:9092/topic\")"
        );
        let err = error_of(&providers(), json!({"scheme": ["kafka"]}));
        assert_eq!(
            err.to_string(),
            "kwargs.scheme: expected a string, got a list (a provider's scheme, such as \"kafka\")"
        );
        let err = error_of(&providers(), json!("kafka://t"));
        assert!(err.message.contains("a table with `queue`"), "{err}");
    }
}
