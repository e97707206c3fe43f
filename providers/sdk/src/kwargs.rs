//! Kwargs into a provider's typed params, with errors a user can act on: each names the full
//! path of the offending value (`kwargs.kafka_config.group.id`), says what was expected and what
//! was found (never a string's content, which may be a secret), and an unknown kwarg lists the
//! accepted ones.

use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_path_to_error::{Path, Segment};

use crate::KwargsError;

/// Deserializes `kwargs` into `T` (a `#[serde(deny_unknown_fields)]` struct, normally), turning
/// serde's error into a [`KwargsError`] whose `field` is the path of the offending value.
/// `hints` (`(kwarg, what it takes)`) complete the message when a top-level kwarg is missing
/// (`required: the queue URL, e.g. …`) or of the wrong type (`expected a string, got 3 (the
/// queue URL, e.g. …)`).
pub fn parse_kwargs<T: DeserializeOwned>(
    kwargs: &Value,
    hints: &[(&str, &str)],
) -> Result<T, KwargsError> {
    serde_path_to_error::deserialize(kwargs).map_err(|e| {
        let path = e.path().clone();
        explain(kwargs, &path, &e.into_inner().to_string(), hints)
    })
}

/// `path` as users write it: `kafka_config.group.id`, `topics[1]`; empty at the root.
fn path_string(path: &Path) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

fn join(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_string()
    } else {
        format!("{parent}.{child}")
    }
}

/// The value the error is about, to say what was found in our words rather than serde's.
fn value_at<'v>(root: &'v Value, path: &Path) -> Option<&'v Value> {
    path.iter().try_fold(root, |value, segment| match segment {
        Segment::Map { key } => value.get(key.as_str()),
        Segment::Seq { index } => value.get(*index),
        _ => None,
    })
}

/// What was found, without a string's content: a value in the wrong place may be a password.
fn found(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => "a string".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "a table".into(),
    }
}

/// serde's names for what a primitive expects, in the words of a TOML file.
fn expected(serde_says: &str) -> &str {
    match serde_says {
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" | "u8" | "u16" | "u32" | "u64" | "u128"
        | "usize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "a list",
        "a map" => "a table",
        other => other,
    }
}

/// The names between backticks in `text`, in order: serde's lists of fields.
fn quoted(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// "required", with the hint for `field` when it is a top-level kwarg that has one.
fn required(field: &str, hints: &[(&str, &str)]) -> String {
    match hints.iter().find(|(kwarg, _)| *kwarg == field) {
        Some((_, hint)) => format!("required: {hint}"),
        None => "required".to_string(),
    }
}

fn explain(root: &Value, path: &Path, message: &str, hints: &[(&str, &str)]) -> KwargsError {
    let at = path_string(path);
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        let field = join(&at, name);
        return KwargsError::new(field.clone(), required(&field, hints));
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((name, accepted)) = rest.split_once('`') {
            // The path may stop at the table holding the unknown key or include the key itself.
            let field = if path
                .iter()
                .next_back()
                .is_some_and(|s| matches!(s, Segment::Map { key } if key == name))
            {
                at.clone()
            } else {
                join(&at, name)
            };
            let noun = if field.contains(['.', '[']) {
                "key"
            } else {
                "kwarg"
            };
            let accepted = quoted(accepted);
            let message = if accepted.is_empty() {
                format!("unknown {noun}; none are accepted here")
            } else {
                format!("unknown {noun}; expected one of: {}", accepted.join(", "))
            };
            return KwargsError::new(field, message);
        }
    }
    let mismatch = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "));
    if let Some((serde_found, wanted)) = mismatch.and_then(|m| m.rsplit_once(", expected ")) {
        let value = value_at(root, path);
        // A kwarg written as null (JSON's "not given") that may not be left out.
        let is_field = matches!(path.iter().next_back(), Some(Segment::Map { .. }));
        if is_field && value.is_some_and(Value::is_null) {
            return KwargsError::new(at.clone(), required(&at, hints));
        }
        let got = value.map_or_else(|| serde_found.to_string(), found);
        let mut message = format!("expected {}, got {got}", expected(wanted));
        if let Some((_, hint)) = hints.iter().find(|(kwarg, _)| *kwarg == at) {
            message.push_str(&format!(" ({hint})"));
        }
        return KwargsError::new(at, message);
    }
    KwargsError::new(at, message)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields, expecting = "a table with `name`")]
    struct Params {
        name: String,
        #[serde(default)]
        flag: bool,
        #[serde(default)]
        count: Option<u32>,
        #[serde(default)]
        ratio: Option<f64>,
        #[serde(default)]
        items: Vec<Item>,
        #[serde(default)]
        settings: BTreeMap<String, String>,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        id: String,
    }

    fn err(kwargs: Value) -> KwargsError {
        match parse_kwargs::<Params>(&kwargs, &[("name", "a short name")]) {
            Err(e) => e,
            Ok(p) => panic!("{kwargs} parsed: {p:?}"),
        }
    }

    #[test]
    fn errors_name_the_full_path_and_what_was_found() {
        let e = err(json!({"name": "n", "settings": {"group.id": 3}}));
        assert_eq!(e.field, "settings.group.id");
        assert_eq!(e.message, "expected a string, got 3");
        assert_eq!(
            e.to_string(),
            "kwargs.settings.group.id: expected a string, got 3"
        );
        let e = err(json!({"name": "n", "items": [{"id": "a"}, {"id": true}]}));
        assert_eq!(e.field, "items[1].id");
        assert_eq!(e.message, "expected a string, got true");
        let e = err(json!({"name": "n", "flag": "yes"}));
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("flag", "expected a boolean, got a string")
        );
        let e = err(json!({"name": "n", "count": -1}));
        assert_eq!(e.message, "expected a whole number, got -1");
        let e = err(json!({"name": "n", "ratio": "1"}));
        assert_eq!(e.message, "expected a number, got a string");
        let e = err(json!({"name": "n", "items": {}}));
        assert_eq!(e.message, "expected a list, got a table");
        let e = err(json!("just a string"));
        assert_eq!(
            e.to_string(),
            "kwargs: expected a table with `name`, got a string"
        );
    }

    #[test]
    fn a_string_in_the_wrong_place_is_not_repeated() {
        let e = err(json!({"name": "n", "flag": "hunter2"}));
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    #[test]
    fn unknown_fields_list_the_accepted_ones() {
        let e = err(json!({"name": "n", "colour": 1}));
        assert_eq!(e.field, "colour");
        assert_eq!(
            e.message,
            "unknown kwarg; expected one of: name, flag, count, ratio, items, settings"
        );
        let e = err(json!({"name": "n", "items": [{"id": "a", "idd": "b"}]}));
        assert_eq!(e.field, "items[0].idd");
        assert_eq!(e.message, "unknown key; expected one of: id");
    }

    #[test]
    fn missing_fields_are_named_with_their_hint() {
        let e = err(json!({}));
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("name", "required: a short name")
        );
        let e = err(json!({"name": 3}));
        assert_eq!(
            e.to_string(),
            "kwargs.name: expected a string, got 3 (a short name)"
        );
        let e = err(json!({"name": null}));
        assert_eq!(e.to_string(), "kwargs.name: required: a short name");
        let e = err(json!({"name": "n", "items": [{"id": null}]}));
        assert_eq!(e.to_string(), "kwargs.items[0].id: required");
        let e = err(json!({"name": "n", "items": [{}]}));
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("items[0].id", "required")
        );
    }
}
