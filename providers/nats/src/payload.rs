//! A JetStream message as an event payload and dedup key. Nothing is dropped: data that is
//! JSON is kept as JSON, text as text, anything else as base64, and `data_encoding` says which.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The parts of a message the payload keeps.
#[derive(Debug, Clone)]
pub struct Received {
    pub stream: String,
    pub subject: String,
    /// The JetStream stream sequence: the message's place in its stream.
    pub sequence: u64,
    /// How many times the server delivered it (1 the first time).
    pub delivered: i64,
    pub data: Vec<u8>,
    /// Header names and their values, in the server's order per name.
    pub headers: Vec<(String, Vec<String>)>,
    /// When the server stored the message, in nanoseconds since the Unix epoch.
    pub published_ns: i128,
}

/// `(data, encoding)`: JSON when the bytes parse as JSON, else UTF-8 text, else base64. A NUL
/// character cannot be stored in JSON on PostgreSQL, so JSON whose strings hold one is kept as
/// its text, and text holding one as base64.
fn decode(bytes: &[u8]) -> (Value, &'static str) {
    if let Ok(json) = serde_json::from_slice::<Value>(bytes) {
        if triggerer_sdk::nul_in_json(&json).is_none() {
            return (json, "json");
        }
    }
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => (Value::String(text.to_string()), "text"),
        _ => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            "base64",
        ),
    }
}

/// A header value: NATS headers are text; one holding a NUL is kept as base64.
fn header_value(v: &str) -> Value {
    if v.contains('\0') {
        Value::String(base64::engine::general_purpose::STANDARD.encode(v))
    } else {
        Value::String(v.to_string())
    }
}

impl Received {
    pub fn payload(&self) -> Value {
        let (data, encoding) = decode(&self.data);
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(name, values)| {
                let value = match values.as_slice() {
                    [one] => header_value(one),
                    many => Value::Array(many.iter().map(|v| header_value(v)).collect()),
                };
                (name.replace('\0', ""), value)
            })
            .collect();
        json!({
            "stream": self.stream,
            "subject": self.subject,
            "sequence": self.sequence,
            "delivered": self.delivered,
            "data": data,
            "data_encoding": encoding,
            "headers": headers,
            "timestamp": self.timestamp_ms(),
        })
    }

    /// When the server stored the message, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> i64 {
        i64::try_from(self.published_ns.div_euclid(1_000_000)).unwrap_or_default()
    }

    /// When the server stored the message (JetStream's published time).
    pub fn source_time(&self) -> Option<SystemTime> {
        let ns = u64::try_from(self.published_ns).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_nanos(ns))
    }

    /// `nats:STREAM/SEQUENCE`: the same message redelivered has the same key.
    pub fn dedup_key(&self) -> String {
        dedup_key(&self.stream, self.sequence)
    }
}

/// `nats:STREAM/SEQUENCE`.
pub fn dedup_key(stream: &str, sequence: u64) -> String {
    format!("nats:{stream}/{sequence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &[u8]) -> Received {
        Received {
            stream: "ORDERS".into(),
            subject: "orders.eu".into(),
            sequence: 41,
            delivered: 2,
            data: data.to_vec(),
            headers: vec![
                ("Nats-Msg-Id".into(), vec!["m-1".into()]),
                ("tag".into(), vec!["a".into(), "b".into()]),
            ],
            published_ns: 1_700_000_000_123_456_789,
        }
    }

    #[test]
    fn payload_shape() {
        let p = message(br#"{"id": 7}"#).payload();
        assert_eq!(
            p,
            json!({
                "stream": "ORDERS",
                "subject": "orders.eu",
                "sequence": 41,
                "delivered": 2,
                "data": {"id": 7},
                "data_encoding": "json",
                "headers": {"Nats-Msg-Id": "m-1", "tag": ["a", "b"]},
                "timestamp": 1_700_000_000_123_i64,
            })
        );
    }

    #[test]
    fn json_text_and_binary_are_all_kept() {
        let p = message(b"plain text").payload();
        assert_eq!(
            (p["data"].clone(), p["data_encoding"].clone()),
            (json!("plain text"), json!("text"))
        );
        let p = message(&[0xde, 0xad, 0xbe, 0xef]).payload();
        assert_eq!(
            (p["data"].clone(), p["data_encoding"].clone()),
            (json!("3q2+7w=="), json!("base64"))
        );
        let p = message(b"").payload();
        assert_eq!(
            (p["data"].clone(), p["data_encoding"].clone()),
            (json!(""), json!("text"))
        );
        let p = message(b"a\0b").payload();
        assert_eq!(
            (p["data"].clone(), p["data_encoding"].clone()),
            (json!("YQBi"), json!("base64"))
        );
        let p = message(br#"{"a": "x\u0000y"}"#).payload();
        assert_eq!(p["data_encoding"], "text");
        assert_eq!(triggerer_sdk::nul_in_json(&p), None);
    }

    #[test]
    fn dedup_key_is_stream_and_sequence_and_source_time_the_published_time() {
        let m = message(b"x");
        assert_eq!(m.dedup_key(), "nats:ORDERS/41");
        let mut again = m.clone();
        again.delivered = 5;
        again.published_ns += 0;
        assert_eq!(
            again.dedup_key(),
            m.dedup_key(),
            "a redelivery keeps its key"
        );
        assert_eq!(
            m.source_time(),
            Some(UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789))
        );
        let mut early = m;
        early.published_ns = -5;
        assert_eq!(early.source_time(), None);
    }
}
