//! Secrets in watcher kwargs. A value may be an environment reference, `{ env = "NAME" }`:
//! definitions, the database, trigger identity and every CLI listing keep the reference, never
//! the value, and only the triggerer process resolves it, just before it builds the trigger.
//! Literal values under sensitive keys (passwords, tokens, …) are masked wherever kwargs are
//! shown. This module owns that vocabulary; it must not read or write the database.

use std::collections::HashMap;

use serde_json::{Map, Value};
use thiserror::Error;

/// The one key of an environment reference.
const ENV_KEY: &str = "env";
/// What a masked value is shown as.
pub const MASK: &str = "***";
/// Starts every placeholder that stands for a reference during validation.
const PLACEHOLDER_PREFIX: &str = "${env:";

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("kwargs `{path}`: environment variable `{name}` is not set in this triggerer")]
    NotSet { path: String, name: String },
    #[error("kwargs `{path}`: environment variable `{name}` is not valid UTF-8")]
    NotUnicode { path: String, name: String },
    #[error("kwargs `{path}`: `{{ env = … }}` needs a variable name (letters, digits, `_`)")]
    BadName { path: String },
    #[error(
        "kwargs `{path}`: an environment reference must be a whole value, not part of one \
         (here it ended up inside `{value}`)"
    )]
    Embedded { path: String, value: String },
}

/// The variable an environment reference names: an object whose only key is `env`, a string.
pub fn env_reference(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) if map.len() == 1 => map.get(ENV_KEY)?.as_str(),
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Rebuilds `value`: a node for which `f` (given its path) returns a replacement is replaced,
/// the others are copied with their children rebuilt the same way.
fn rewrite<E>(
    value: &Value,
    path: &mut Vec<String>,
    f: &mut impl FnMut(&Value, &[String]) -> Option<Result<Value, E>>,
) -> Result<Value, E> {
    if let Some(replaced) = f(value, path) {
        return replaced;
    }
    Ok(match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                path.push(k.clone());
                let rebuilt = rewrite(v, path, f);
                path.pop();
                out.insert(k.clone(), rebuilt?);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                let rebuilt = rewrite(v, path, f);
                path.pop();
                out.push(rebuilt?);
            }
            Value::Array(out)
        }
        other => other.clone(),
    })
}

/// Replaces every reference with what `f` makes of its path (`kafka_config.sasl.password`)
/// and variable name.
fn replace_references<E>(
    value: &Value,
    f: &mut impl FnMut(&str, &str) -> Result<Value, E>,
) -> Result<Value, E> {
    rewrite(value, &mut Vec::new(), &mut |v, path| {
        env_reference(v).map(|name| f(&path.join("."), name))
    })
}

/// Resolves every reference with `lookup` (the process environment in the triggerer).
pub fn resolve(
    kwargs: &Value,
    lookup: impl Fn(&str) -> Result<String, std::env::VarError>,
) -> Result<Value, SecretError> {
    replace_references(kwargs, &mut |path, name| {
        if !valid_name(name) {
            return Err(SecretError::BadName { path: path.into() });
        }
        match lookup(name) {
            Ok(value) => Ok(Value::String(value)),
            Err(std::env::VarError::NotPresent) => Err(SecretError::NotSet {
                path: path.into(),
                name: name.into(),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::NotUnicode {
                path: path.into(),
                name: name.into(),
            }),
        }
    })
}

/// [`resolve`] from this process's environment.
pub fn resolve_from_env(kwargs: &Value) -> Result<Value, SecretError> {
    resolve(kwargs, |name| std::env::var(name))
}

/// Kwargs with every reference replaced by a placeholder string, for validation where the
/// variables are not set (`dags sync` runs anywhere); [`Placeholders::restore`] puts the
/// references back into whatever the validator derived from them.
pub fn with_placeholders(kwargs: &Value) -> Result<(Value, Placeholders), SecretError> {
    let mut names = HashMap::new();
    let value = replace_references(kwargs, &mut |path, name| {
        if !valid_name(name) {
            return Err(SecretError::BadName { path: path.into() });
        }
        let placeholder = format!("{PLACEHOLDER_PREFIX}{name}}}");
        names.insert(placeholder.clone(), name.to_string());
        Ok(Value::String(placeholder))
    })?;
    Ok((value, Placeholders { names }))
}

/// The placeholders [`with_placeholders`] made, by the variable they stand for.
#[derive(Debug, Default)]
pub struct Placeholders {
    names: HashMap<String, String>,
}

impl Placeholders {
    /// Turns each placeholder in `value` back into its reference. A placeholder that ended up
    /// inside a longer string (a URI built from it) cannot be resolved later: an error.
    pub fn restore(&self, value: &Value) -> Result<Value, SecretError> {
        if self.names.is_empty() {
            return Ok(value.clone());
        }
        rewrite(value, &mut Vec::new(), &mut |v, path| {
            let Value::String(s) = v else { return None };
            Some(match self.names.get(s) {
                Some(name) => Ok(Value::Object(Map::from_iter([(
                    ENV_KEY.to_string(),
                    Value::String(name.clone()),
                )]))),
                None if s.contains(PLACEHOLDER_PREFIX) => Err(SecretError::Embedded {
                    path: path.join("."),
                    value: s.clone(),
                }),
                None => Ok(v.clone()),
            })
        })
    }
}

/// Whether a kwarg or client-setting name holds a secret (Airflow's sensitive field names,
/// plus librdkafka's and AWS's).
pub fn is_sensitive(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "passwd",
        "secret",
        "token",
        "credential",
        "api_key",
        "apikey",
        "private_key",
        "private.key",
        "jaas.config",
        "authorization",
    ]
    .iter()
    .any(|word| key.contains(word))
}

/// Whether `value`, found at `path`, is a literal secret: a non-empty scalar under a
/// sensitive key.
fn is_literal_secret(value: &Value, path: &[String]) -> bool {
    let scalar = match value {
        Value::String(s) => !s.is_empty(),
        Value::Number(_) | Value::Bool(_) => true,
        _ => false,
    };
    scalar && path.last().is_some_and(|key| is_sensitive(key))
}

/// Kwargs for display: literal values under sensitive keys become [`MASK`]; references stay
/// (a variable's name is not a secret).
pub fn mask(kwargs: &Value) -> Value {
    let masked: Result<Value, std::convert::Infallible> =
        rewrite(kwargs, &mut Vec::new(), &mut |v, path| {
            if env_reference(v).is_some() {
                Some(Ok(v.clone()))
            } else if is_literal_secret(v, path) {
                Some(Ok(Value::String(MASK.into())))
            } else {
                None
            }
        });
    masked.unwrap_or_else(|never| match never {})
}

/// Paths of literal (not referenced) values under sensitive keys: `dags sync` warns about them,
/// since they are stored in the database as written.
pub fn literal_secrets(kwargs: &Value) -> Vec<String> {
    let mut found = Vec::new();
    let _: Result<Value, std::convert::Infallible> =
        rewrite(kwargs, &mut Vec::new(), &mut |v, path| {
            if is_literal_secret(v, path) {
                found.push(path.join("."));
            }
            None
        });
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, std::env::VarError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            vars.get(name)
                .cloned()
                .ok_or(std::env::VarError::NotPresent)
        }
    }

    #[test]
    fn references_resolve_anywhere_in_kwargs() {
        let kwargs = json!({
            "topics": ["a"],
            "kafka_config": {"sasl.password": {"env": "KAFKA_PASSWORD"}, "acks": "all"},
            "list": [{"env": "X"}]
        });
        let resolved =
            resolve(&kwargs, env(&[("KAFKA_PASSWORD", "hunter2"), ("X", "x")])).expect("resolves");
        assert_eq!(
            resolved,
            json!({
                "topics": ["a"],
                "kafka_config": {"sasl.password": "hunter2", "acks": "all"},
                "list": ["x"]
            })
        );
    }

    #[test]
    fn a_missing_variable_names_the_kwarg_and_the_variable() {
        let kwargs = json!({"kafka_config": {"sasl.password": {"env": "KAFKA_PASSWORD"}}});
        let err = resolve(&kwargs, env(&[])).expect_err("missing");
        assert_eq!(
            err.to_string(),
            "kwargs `kafka_config.sasl.password`: environment variable `KAFKA_PASSWORD` is not set in this triggerer"
        );
        let err = resolve(&json!({"p": {"env": "1 bad"}}), env(&[])).expect_err("bad name");
        assert!(matches!(err, SecretError::BadName { ref path } if path == "p"));
    }

    #[test]
    fn only_a_lone_env_key_is_a_reference() {
        assert_eq!(env_reference(&json!({"env": "A"})), Some("A"));
        assert_eq!(env_reference(&json!({"env": "A", "other": 1})), None);
        assert_eq!(env_reference(&json!({"env": 1})), None);
        let kwargs = json!({"opts": {"env": "A", "other": 1}});
        assert_eq!(resolve(&kwargs, env(&[])).expect("no reference"), kwargs);
    }

    #[test]
    fn placeholders_round_trip_through_derived_kwargs() {
        let kwargs =
            json!({"queue": "kafka://h:9092/t", "kafka_config": {"sasl.password": {"env": "P"}}});
        let (validated, placeholders) = with_placeholders(&kwargs).expect("placeholders");
        assert_eq!(
            validated["kafka_config"]["sasl.password"],
            json!("${env:P}")
        );
        // What a dispatcher derives keeps the placeholder as a whole value: restored.
        let derived = json!({"topics": ["t"], "kafka_config": validated["kafka_config"].clone()});
        assert_eq!(
            placeholders.restore(&derived).expect("restored"),
            json!({"topics": ["t"], "kafka_config": {"sasl.password": {"env": "P"}}})
        );
        // Spliced into a URI, it could never be resolved: an error naming where it went.
        let spliced = json!({"bootstrap_servers": "${env:P}:9092"});
        let err = placeholders.restore(&spliced).expect_err("embedded");
        assert!(err.to_string().contains("`bootstrap_servers`"), "{err}");
    }

    #[test]
    fn masking_hides_literal_secrets_and_keeps_references() {
        let kwargs = json!({
            "topics": ["a"],
            "kafka_config": {
                "sasl.password": "hunter2",
                "sasl.username": "svc",
                "ssl.key.password": {"env": "KEY_PASS"},
                "sasl.oauthbearer.client.secret": "s3"
            },
            "aws_secret_access_key": "AKIA…"
        });
        assert_eq!(
            mask(&kwargs),
            json!({
                "topics": ["a"],
                "kafka_config": {
                    "sasl.password": MASK,
                    "sasl.username": "svc",
                    "ssl.key.password": {"env": "KEY_PASS"},
                    "sasl.oauthbearer.client.secret": MASK
                },
                "aws_secret_access_key": MASK
            })
        );
        let mut found = literal_secrets(&kwargs);
        found.sort();
        assert_eq!(
            found,
            vec![
                "aws_secret_access_key",
                "kafka_config.sasl.oauthbearer.client.secret",
                "kafka_config.sasl.password"
            ]
        );
    }
}
