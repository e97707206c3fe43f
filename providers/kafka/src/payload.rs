//! A Kafka message as an event payload and dedup key. Nothing is dropped: a value that is JSON
//! is kept as JSON, text as text, anything else as base64, and `value_encoding` says which.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde_json::{json, Map, Value};

/// The parts of a message the payload keeps, copied out of librdkafka's buffer.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The message's timestamp (CreateTime or LogAppendTime, whichever the topic keeps), in
    /// milliseconds since the Unix epoch; `None` when the broker has none.
    pub timestamp_ms: Option<i64>,
}

/// `(value, encoding)`: JSON when the bytes parse as JSON, else UTF-8 text, else base64. A
/// NUL character cannot be stored in JSON on PostgreSQL, so JSON whose strings hold one is kept
/// as its text (where it is the escape `\u0000`, no NUL), and text holding one as base64.
fn decode(bytes: &[u8]) -> (Value, &'static str) {
    if let Ok(json) = serde_json::from_slice::<Value>(bytes) {
        if triggerer_sdk::nul_in_json(&json).is_none() {
            return (json, "json");
        }
    }
    match text(bytes) {
        Some(text) => (Value::String(text.to_string()), "text"),
        None => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            "base64",
        ),
    }
}

/// The bytes as text, when they are UTF-8 without a NUL.
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|t| !t.contains('\0'))
}

/// Text if UTF-8 without a NUL, else base64 (keys and headers are identifiers, not documents).
fn text_or_base64(bytes: &[u8]) -> Value {
    match text(bytes) {
        Some(text) => Value::String(text.to_string()),
        None => Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

impl Received {
    pub fn payload(&self) -> Value {
        let (value, encoding) = match &self.value {
            Some(bytes) => decode(bytes),
            None => (Value::Null, "null"), // a tombstone
        };
        let headers: Map<String, Value> = self
            .headers
            .iter()
            .map(|(name, v)| {
                (
                    name.clone(),
                    v.as_deref().map_or(Value::Null, text_or_base64),
                )
            })
            .collect();
        json!({
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "key": self.key.as_deref().map(text_or_base64),
            "value": value,
            "value_encoding": encoding,
            "headers": headers,
            "timestamp": self.timestamp_ms,
        })
    }

    /// When the message says it was produced (or appended to the log): its timestamp, if it
    /// has a valid one (librdkafka reports a missing one as `-1`).
    pub fn source_time(&self) -> Option<SystemTime> {
        let ms = u64::try_from(self.timestamp_ms?).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_millis(ms))
    }

    /// `kafka:CLUSTER/TOPIC/PARTITION/OFFSET`: the same message redelivered has the same key.
    pub fn dedup_key(&self, cluster: &str) -> String {
        format!(
            "kafka:{cluster}/{}/{}/{}",
            self.topic, self.partition, self.offset
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(value: Option<&[u8]>) -> Received {
        Received {
            topic: "orders".into(),
            partition: 2,
            offset: 41,
            key: Some(b"k1".to_vec()),
            value: value.map(<[u8]>::to_vec),
            headers: vec![
                ("trace".into(), Some(vec![0xff, 0x00])),
                ("empty".into(), None),
            ],
            timestamp_ms: Some(1_700_000_000_000),
        }
    }

    /// PostgreSQL refuses a NUL in JSON: such a message was a poison event there.
    #[test]
    fn nul_characters_never_reach_the_payload() {
        let p = message(Some(br#"{"a": "x\u0000y"}"#)).payload();
        assert_eq!(
            (p["value"].clone(), p["value_encoding"].clone()),
            (json!(r#"{"a": "x\u0000y"}"#), json!("text"))
        );
        let p = message(Some(b"a\0b")).payload();
        assert_eq!(
            (p["value"].clone(), p["value_encoding"].clone()),
            (json!("YQBi"), json!("base64"))
        );
        let mut m = message(Some(b"v"));
        m.key = Some(b"k\0".to_vec());
        m.headers = vec![("h".into(), Some(b"\0".to_vec()))];
        let p = m.payload();
        assert_eq!(
            (p["key"].clone(), p["headers"]["h"].clone()),
            (json!("awA="), json!("AA=="))
        );
        assert_eq!(triggerer_sdk::nul_in_json(&p), None);
    }

    #[test]
    fn json_text_binary_and_tombstones_are_all_kept() {
        let p = message(Some(br#"{"id": 7}"#)).payload();
        assert_eq!(
            (p["value"]["id"].clone(), p["value_encoding"].clone()),
            (json!(7), json!("json"))
        );
        let p = message(Some(b"plain text")).payload();
        assert_eq!(
            (p["value"].clone(), p["value_encoding"].clone()),
            (json!("plain text"), json!("text"))
        );
        let p = message(Some(&[0xde, 0xad, 0xbe, 0xef])).payload();
        assert_eq!(
            (p["value"].clone(), p["value_encoding"].clone()),
            (json!("3q2+7w=="), json!("base64"))
        );
        let p = message(None).payload();
        assert_eq!(
            (p["value"].clone(), p["value_encoding"].clone()),
            (Value::Null, json!("null"))
        );
        assert_eq!(p["key"], "k1");
        assert_eq!(p["headers"]["trace"], "/wA=");
        assert_eq!(p["headers"]["empty"], Value::Null);
        assert_eq!(
            (
                p["topic"].clone(),
                p["partition"].clone(),
                p["offset"].clone()
            ),
            (json!("orders"), json!(2), json!(41))
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 500, ..Default::default() })]

        /// Whatever the bytes, the payload holds them and says how to get them back.
        #[test]
        fn any_value_is_kept_and_recoverable(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let p = message(Some(&bytes)).payload();
            let recovered: Vec<u8> = match p["value_encoding"].as_str() {
                Some("json") => {
                    let parsed: Value = serde_json::from_slice(&bytes).expect("was JSON");
                    proptest::prop_assert_eq!(&p["value"], &parsed);
                    bytes.clone()
                }
                Some("text") => p["value"].as_str().expect("text").as_bytes().to_vec(),
                Some("base64") => base64::engine::general_purpose::STANDARD
                    .decode(p["value"].as_str().expect("base64 text"))
                    .expect("valid base64"),
                other => return Err(proptest::test_runner::TestCaseError::fail(format!("encoding {other:?}"))),
            };
            proptest::prop_assert_eq!(recovered, bytes);
        }
    }

    #[test]
    fn the_source_time_is_the_message_timestamp() {
        assert_eq!(
            message(None).source_time(),
            Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000))
        );
        let mut m = message(None);
        m.timestamp_ms = None;
        assert_eq!(m.source_time(), None);
        m.timestamp_ms = Some(-1);
        assert_eq!(m.source_time(), None);
    }

    #[test]
    fn dedup_key_names_cluster_topic_partition_offset() {
        assert_eq!(
            message(None).dedup_key("b:9092"),
            "kafka:b:9092/orders/2/41"
        );
    }
}
