//! Redis messages, list items and stream entries as event payloads and dedup keys. Nothing is
//! dropped: data that is JSON is kept as JSON, text as text, anything else as base64, and
//! `data_encoding` says which.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// `(value, encoding)`: JSON when the bytes parse as JSON without a NUL in it, else UTF-8 text
/// without a NUL, else base64 (PostgreSQL cannot store a NUL in JSON).
pub fn decode(bytes: &[u8]) -> (Value, &'static str) {
    if let Ok(json) = serde_json::from_slice::<Value>(bytes) {
        if triggerer_sdk::nul_in_json(&json).is_none() {
            return (json, "json");
        }
    }
    match text(bytes) {
        Some(text) => (Value::String(text.to_string()), "text"),
        None => (Value::String(base64(bytes)), "base64"),
    }
}

fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|t| !t.contains('\0'))
}

/// Text if UTF-8 without a NUL, else base64 (names are identifiers, not documents).
fn text_or_base64(bytes: &[u8]) -> String {
    text(bytes).map_or_else(|| base64(bytes), str::to_string)
}

/// A pub/sub message: `{channel, pattern, data, data_encoding}` (`pattern` is always null:
/// the trigger subscribes to channels, not patterns).
pub fn pubsub_payload(channel: &str, data: &[u8]) -> Value {
    let (data, encoding) = decode(data);
    json!({
        "channel": channel,
        "pattern": Value::Null,
        "data": data,
        "data_encoding": encoding,
    })
}

/// `redis+pubsub:SERVER/CHANNEL/CONNECTION/N`: the connection's random id and the message's
/// number on it. A message is never delivered twice (pub/sub keeps nothing), so nothing needs
/// to recognise a repeat: the key only has to be distinct.
pub fn pubsub_key(server: &str, channel: &str, connection: &str, n: u64) -> String {
    format!("redis+pubsub:{server}/{channel}/{connection}/{n}")
}

/// A list item: `{list, data, data_encoding, tag}`.
pub fn list_payload(list: &str, tag: &str, data: &[u8]) -> Value {
    let (data, encoding) = decode(data);
    json!({
        "list": list,
        "data": data,
        "data_encoding": encoding,
        "tag": tag,
    })
}

/// `redis+list:SERVER/LIST/TAG`: the tag the item was given as it was moved into the processing
/// list (a random id of the trigger's run and a counter), which goes with it there, so a
/// recovered item carries the key of its first delivery.
pub fn list_key(server: &str, list: &str, tag: &str) -> String {
    format!("redis+list:{server}/{list}/{tag}")
}

/// How an item is held in a processing list: `TAG|ITEM`, the tag being ASCII without `|`.
pub fn wrap(tag: &str, item: &[u8]) -> Vec<u8> {
    let mut held = Vec::with_capacity(tag.len() + 1 + item.len());
    held.extend_from_slice(tag.as_bytes());
    held.push(b'|');
    held.extend_from_slice(item);
    held
}

/// `(tag, item)` of a processing-list element; `None` when it was not put there by [`wrap`].
pub fn unwrap(held: &[u8]) -> Option<(&str, &[u8])> {
    let bar = held.iter().position(|b| *b == b'|')?;
    let tag = std::str::from_utf8(&held[..bar]).ok()?;
    if tag.is_empty() || !tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    Some((tag, &held[bar + 1..]))
}

/// A stream entry: `{stream, id, fields, binary_fields}`: each field's value as text, or as
/// base64 when it is not UTF-8 text, its name then listed in `binary_fields`.
pub fn stream_payload(stream: &str, id: &str, fields: &BTreeMap<String, Vec<u8>>) -> Value {
    let mut map = Map::new();
    let mut binary = Vec::new();
    for (name, value) in fields {
        match text(value) {
            Some(t) => {
                map.insert(text_or_base64(name.as_bytes()), Value::String(t.into()));
            }
            None => {
                map.insert(name.clone(), Value::String(base64(value)));
                binary.push(Value::String(name.clone()));
            }
        }
    }
    json!({
        "stream": stream,
        "id": id,
        "fields": map,
        "binary_fields": binary,
    })
}

/// `redis+stream:SERVER/STREAM/ID`: an entry id is unique in its stream for ever.
pub fn stream_key(server: &str, stream: &str, id: &str) -> String {
    format!("redis+stream:{server}/{stream}/{id}")
}

/// When the entry was added: the millisecond part of its id (`1700000000123-0`), for ids Redis
/// generated.
pub fn stream_time(id: &str) -> Option<SystemTime> {
    let ms: u64 = id.split_once('-').map_or(id, |(ms, _)| ms).parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_text_and_binary_are_all_kept() {
        let p = pubsub_payload("orders", br#"{"id": 7}"#);
        assert_eq!(
            p,
            json!({"channel": "orders", "pattern": null, "data": {"id": 7}, "data_encoding": "json"})
        );
        let p = list_payload("jobs", "ab-1", b"plain");
        assert_eq!(
            p,
            json!({"list": "jobs", "data": "plain", "data_encoding": "text", "tag": "ab-1"})
        );
        let p = list_payload("jobs", "ab-1", &[0xde, 0xad, 0x00]);
        assert_eq!(
            (p["data"].clone(), p["data_encoding"].clone()),
            (json!("3q0A"), json!("base64"))
        );
        let p = pubsub_payload("c", br#"{"a": "x\u0000y"}"#);
        assert_eq!(p["data_encoding"], "text");
        assert_eq!(triggerer_sdk::nul_in_json(&p), None);
    }

    #[test]
    fn stream_entries_keep_every_field() {
        let mut fields = BTreeMap::new();
        fields.insert("order".to_string(), b"42".to_vec());
        fields.insert("raw".to_string(), vec![0xff, 0x00]);
        let p = stream_payload("events", "1700000000123-4", &fields);
        assert_eq!(
            p,
            json!({"stream": "events", "id": "1700000000123-4",
                   "fields": {"order": "42", "raw": "/wA="}, "binary_fields": ["raw"]})
        );
        assert_eq!(triggerer_sdk::nul_in_json(&p), None);
    }

    #[test]
    fn dedup_keys() {
        assert_eq!(
            stream_key("h:6379/0", "events", "1-0"),
            "redis+stream:h:6379/0/events/1-0"
        );
        assert_eq!(
            list_key("h:6379/0", "jobs", "9f-3"),
            "redis+list:h:6379/0/jobs/9f-3"
        );
        assert_ne!(
            pubsub_key("h:6379/0", "c", "aa", 1),
            pubsub_key("h:6379/0", "c", "bb", 1),
            "another connection never repeats a key"
        );
    }

    #[test]
    fn processing_list_elements_carry_their_tag() {
        let held = wrap("0a1b-17", b"x|y");
        assert_eq!(unwrap(&held), Some(("0a1b-17", &b"x|y"[..])));
        assert_eq!(unwrap(b"no tag here"), None);
        assert_eq!(unwrap(b"|x"), None);
        assert_eq!(unwrap(b"a b|x"), None);
    }

    #[test]
    fn the_source_time_is_the_entry_ids_milliseconds() {
        assert_eq!(
            stream_time("1700000000123-4"),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        assert_eq!(
            stream_time("5"),
            Some(UNIX_EPOCH + Duration::from_millis(5))
        );
        assert_eq!(stream_time("x-1"), None);
    }
}
