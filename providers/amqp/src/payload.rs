//! An AMQP delivery as an event payload and dedup key. Nothing is dropped: a body that is
//! JSON is kept as JSON, text as text, anything else as base64, and `body_encoding` says which.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use lapin::types::{AMQPValue, FieldTable};
use lapin::BasicProperties;
use serde_json::{json, Map, Value};

use crate::config::percent_encode;

/// The parts of a delivery the payload keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// `(body, encoding)`: JSON when the bytes parse as JSON, else UTF-8 text, else base64. A NUL
/// character cannot be stored in JSON on PostgreSQL, so JSON whose strings hold one is kept as
/// its text (where it is the escape `\u0000`, no NUL), and text holding one as base64.
fn decode(bytes: &[u8]) -> (Value, &'static str) {
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

/// The bytes as text, when they are UTF-8 without a NUL.
fn text(bytes: &[u8]) -> Option<&str> {
    std::str::from_utf8(bytes)
        .ok()
        .filter(|t| !t.contains('\0'))
}

/// Text if UTF-8 without a NUL, else base64.
fn text_or_base64(bytes: &[u8]) -> Value {
    match text(bytes) {
        Some(text) => Value::String(text.to_string()),
        None => Value::String(base64(bytes)),
    }
}

/// A header value as JSON: numbers and booleans as such, strings as text (base64 when not
/// UTF-8), byte arrays as base64, decimals as their exact text (`"12.50"`), timestamps as
/// seconds since the Unix epoch, arrays and tables recursively.
pub fn header_value(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Timestamp(n) => json!(n),
        // Non-finite floats have no JSON form: null, as serde_json writes them.
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => Value::String(decimal(d.scale, d.value)),
        AMQPValue::ShortString(s) => text_or_base64(s.as_str().as_bytes()),
        AMQPValue::LongString(s) => text_or_base64(s.as_bytes()),
        AMQPValue::ByteArray(b) => Value::String(base64(b.as_slice())),
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(header_value).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(table_json(table)),
        AMQPValue::Void => Value::Null,
    }
}

/// `value × 10^-scale` as exact decimal text.
fn decimal(scale: u8, value: u32) -> String {
    let digits = value.to_string();
    let scale = usize::from(scale);
    if scale == 0 {
        return digits;
    }
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{int}.{frac}")
}

fn table_json(table: &FieldTable) -> Map<String, Value> {
    table
        .inner()
        .iter()
        .map(|(k, v)| {
            // A key with a NUL could not be stored on PostgreSQL.
            let key = k.as_str().replace('\0', "\u{FFFD}");
            (key, header_value(v))
        })
        .collect()
}

fn short(s: &Option<lapin::types::ShortString>) -> Value {
    s.as_ref()
        .map_or(Value::Null, |s| text_or_base64(s.as_str().as_bytes()))
}

impl Received {
    /// The event payload (see the crate documentation for its fields).
    pub fn payload(&self, queue: &str) -> Value {
        let (body, encoding) = decode(&self.body);
        let p = &self.properties;
        json!({
            "queue": queue,
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "redelivered": self.redelivered,
            "message_id": short(p.message_id()),
            "timestamp": p.timestamp(),
            "correlation_id": short(p.correlation_id()),
            "content_type": short(p.content_type()),
            "content_encoding": short(p.content_encoding()),
            "type": short(p.kind()),
            "app_id": short(p.app_id()),
            "user_id": short(p.user_id()),
            "reply_to": short(p.reply_to()),
            "priority": p.priority(),
            "delivery_mode": p.delivery_mode(),
            "expiration": short(p.expiration()),
            "headers": p.headers().as_ref().map(table_json).unwrap_or_default(),
            "body": body,
            "body_encoding": encoding,
        })
    }

    /// When the publisher says it sent the message: its `timestamp` property (seconds since
    /// the Unix epoch), when it set one.
    pub fn source_time(&self) -> Option<SystemTime> {
        let secs = (*self.properties.timestamp())?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
    }

    /// The publisher's `message_id`, when it set a non-blank one.
    pub fn message_id(&self) -> Option<&str> {
        self.properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str())
            .filter(|id| !id.trim().is_empty())
    }

    /// `amqp:VHOST/QUEUE/id:MESSAGE_ID` when the publisher set a `message_id`: the same
    /// message redelivered (after a crash, a refused commit, a lost connection) has the same
    /// key. Without one, AMQP gives nothing that is stable across redeliveries (delivery tags
    /// count per channel), and distinct messages may have identical bodies and properties, so
    /// a digest of them would merge two real messages into one event: the key is then the
    /// delivery's own, `amqp:VHOST/QUEUE/delivery:RUN:TAG` (RUN unique per channel opened),
    /// and a redelivery becomes a second event.
    pub fn dedup_key(&self, vhost: &str, queue: &str, delivery: &DeliveryId) -> String {
        let (vhost, queue) = (percent_encode(vhost), percent_encode(queue));
        match self.message_id() {
            Some(id) => format!("amqp:{vhost}/{queue}/id:{id}"),
            None => format!(
                "amqp:{vhost}/{queue}/delivery:{}:{}",
                delivery.run, delivery.tag
            ),
        }
    }
}

/// Identifies one delivery of one channel: what a key without `message_id` is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryId {
    /// Unique per channel this process opened, and across processes (time and process id).
    pub run: String,
    pub tag: u64,
}

/// A name for a channel's deliveries no other channel, here or in another process, has had.
pub fn new_run() -> String {
    static CHANNELS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{nanos:x}-{:x}-{}",
        std::process::id(),
        CHANNELS.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use lapin::types::{ByteArray, DecimalValue, FieldArray, LongString, ShortString};

    use super::*;

    fn received(body: &[u8]) -> Received {
        let mut headers = FieldTable::default();
        headers.insert(
            "trace".into(),
            AMQPValue::LongString(LongString::from(vec![0xffu8, 0x00])),
        );
        headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
        headers.insert("attempt".into(), AMQPValue::LongInt(3));
        headers.insert("ok".into(), AMQPValue::Boolean(true));
        headers.insert(
            "price".into(),
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 1250,
            }),
        );
        headers.insert(
            "raw".into(),
            AMQPValue::ByteArray(ByteArray::from(vec![1u8, 2, 3])),
        );
        headers.insert(
            "list".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::ShortString(ShortString::from("a")),
                AMQPValue::Void,
            ])),
        );
        let mut nested = FieldTable::default();
        nested.insert("at".into(), AMQPValue::Timestamp(1_700_000_000));
        headers.insert("nested".into(), AMQPValue::FieldTable(nested));
        Received {
            exchange: "orders-x".into(),
            routing_key: "orders.created".into(),
            redelivered: false,
            properties: BasicProperties::default()
                .with_message_id("m-1".into())
                .with_timestamp(1_700_000_123)
                .with_content_type("application/json".into())
                .with_headers(headers),
            body: body.to_vec(),
        }
    }

    #[test]
    fn the_payload_keeps_the_delivery_and_its_properties() {
        let p = received(br#"{"id": 7}"#).payload("orders");
        assert_eq!(p["queue"], "orders");
        assert_eq!(p["exchange"], "orders-x");
        assert_eq!(p["routing_key"], "orders.created");
        assert_eq!(p["redelivered"], false);
        assert_eq!(p["message_id"], "m-1");
        assert_eq!(p["timestamp"], 1_700_000_123);
        assert_eq!(p["content_type"], "application/json");
        assert_eq!(p["correlation_id"], Value::Null);
        assert_eq!(
            (p["body"]["id"].clone(), p["body_encoding"].clone()),
            (json!(7), json!("json"))
        );
        let h = &p["headers"];
        assert_eq!(h["trace"], "/wA=");
        assert_eq!(h["tenant"], "acme");
        assert_eq!(h["attempt"], 3);
        assert_eq!(h["ok"], true);
        assert_eq!(h["price"], "12.50");
        assert_eq!(h["raw"], "AQID");
        assert_eq!(h["list"], json!(["a", null]));
        assert_eq!(h["nested"]["at"], 1_700_000_000);
        assert_eq!(triggerer_sdk::nul_in_json(&p), None);
    }

    #[test]
    fn bodies_are_json_text_or_base64() {
        let enc = |body: &[u8]| {
            let p = received(body).payload("q");
            (p["body"].clone(), p["body_encoding"].clone())
        };
        assert_eq!(enc(b"plain text"), (json!("plain text"), json!("text")));
        assert_eq!(enc(b""), (json!(""), json!("text")));
        assert_eq!(
            enc(&[0xde, 0xad, 0xbe, 0xef]),
            (json!("3q2+7w=="), json!("base64"))
        );
        assert_eq!(enc(b"a\0b"), (json!("YQBi"), json!("base64")));
        assert_eq!(
            enc(br#"{"a": "x\u0000y"}"#),
            (json!(r#"{"a": "x\u0000y"}"#), json!("text"))
        );
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal(0, 5), "5");
        assert_eq!(decimal(2, 5), "0.05");
        assert_eq!(decimal(3, 12345), "12.345");
    }

    #[test]
    fn the_source_time_is_the_timestamp_property() {
        assert_eq!(
            received(b"").source_time(),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_123))
        );
        let mut r = received(b"");
        r.properties = BasicProperties::default();
        assert_eq!(r.source_time(), None);
        assert_eq!(r.payload("q")["timestamp"], Value::Null);
    }

    #[test]
    fn dedup_keys_come_from_the_message_id_or_else_the_delivery() {
        let first = DeliveryId {
            run: "r1".into(),
            tag: 4,
        };
        let again = DeliveryId {
            run: "r2".into(),
            tag: 1,
        };
        let mut r = received(b"x");
        assert_eq!(r.dedup_key("/", "orders", &first), "amqp:%2F/orders/id:m-1");
        // Redelivered on another channel: the same key.
        r.redelivered = true;
        assert_eq!(
            r.dedup_key("/", "orders", &again),
            r.dedup_key("/", "orders", &first)
        );
        // Vhost and queue names cannot run into each other.
        assert_ne!(
            r.dedup_key("a/b", "c", &first),
            r.dedup_key("a", "b/c", &first)
        );
        // Without a message_id, each delivery is its own occurrence (a redelivery repeats).
        r.properties = BasicProperties::default().with_message_id("  ".into());
        assert_eq!(r.message_id(), None);
        assert_eq!(
            r.dedup_key("/", "orders", &first),
            "amqp:%2F/orders/delivery:r1:4"
        );
        assert_ne!(
            r.dedup_key("/", "orders", &first),
            r.dedup_key("/", "orders", &again)
        );
    }

    #[test]
    fn runs_are_unique() {
        assert_ne!(new_run(), new_run());
    }
}
