//! An MQTT message as an event: its payload, and the dedup key, which MQTT makes hard.
//!
//! MQTT gives a message no identity that outlives its delivery: the packet id is the
//! session's, and is reused once the message is acknowledged. What it does give is that a
//! message the broker sends again (after a reconnect, to the same session, because it was never
//! acknowledged) keeps its packet id and carries the DUP flag, and that a packet id is not
//! reused before its message is acknowledged — which here is only after its commit. So the
//! [`Ledger`] keeps, per packet id, the *generation* of the last message committed under it
//! and a digest of that message's topic and payload, in the trigger's checkpoint (committed
//! with the event). A message is given the last generation again (so its event inserts nothing)
//! only when it is flagged DUP and has the digest of the message last committed under its
//! packet id; any other message opens a new generation.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The checkpoint key of a packet id's ledger entry.
const CHECKPOINT_PREFIX: &str = "pkid:";

/// The parts of a message the event keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub topic: String,
    pub payload: Vec<u8>,
    pub qos: u8,
    pub retain: bool,
    pub dup: bool,
    /// 0 for QoS 0, which has none.
    pub pkid: u16,
}

/// `(value, encoding)`: JSON when the bytes parse as JSON, else UTF-8 text, else base64. JSON
/// whose strings hold a NUL (which PostgreSQL cannot store) is kept as its text, and text
/// holding one as base64, as the Kafka provider does.
fn decode(bytes: &[u8]) -> (Value, &'static str) {
    if let Ok(json) = serde_json::from_slice::<Value>(bytes) {
        if triggerer_sdk::nul_in_json(&json).is_none() {
            return (json, "json");
        }
    }
    match std::str::from_utf8(bytes)
        .ok()
        .filter(|t| !t.contains('\0'))
    {
        Some(text) => (Value::String(text.to_string()), "text"),
        None => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            "base64",
        ),
    }
}

impl Received {
    pub fn from_publish(p: &rumqttc::Publish) -> Self {
        Self {
            topic: p.topic.clone(),
            payload: p.payload.to_vec(),
            qos: p.qos as u8,
            retain: p.retain,
            dup: p.dup,
            pkid: p.pkid,
        }
    }

    /// `{topic, value, value_encoding, qos, retain, dup, packet_id}`.
    pub fn payload(&self) -> Value {
        let (value, encoding) = decode(&self.payload);
        // A topic is UTF-8 by the protocol; one with a NUL would be refused by PostgreSQL.
        let topic = if self.topic.contains('\0') {
            Value::String(self.topic.escape_default().to_string())
        } else {
            Value::String(self.topic.clone())
        };
        json!({
            "topic": topic,
            "value": value,
            "value_encoding": encoding,
            "qos": self.qos,
            "retain": self.retain,
            "dup": self.dup,
            "packet_id": (self.qos > 0).then_some(self.pkid),
        })
    }

    /// 16 hex digits of SHA-256 over the topic and the payload.
    pub fn digest(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(self.topic.as_bytes());
        hash.update([0]);
        hash.update(&self.payload);
        hash.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Per packet id, the generation and digest of the message last committed (or, in this run,
/// handed over) under it.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: HashMap<u16, (u64, String)>,
}

/// What the ledger says about one message: its dedup key and the checkpoint to commit with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub dedup_key: String,
    /// `(key, value)`; `None` for QoS 0.
    pub checkpoint: Option<(String, String)>,
    /// Whether this is taken for a redelivery of an already committed message.
    pub repeat: bool,
}

impl Ledger {
    /// The ledger as committed: the trigger's checkpoint pairs `pkid:N` → `GEN:DIGEST`.
    pub fn from_checkpoint(checkpoint: &HashMap<String, String>) -> Self {
        let entries = checkpoint
            .iter()
            .filter_map(|(k, v)| {
                let pkid = k.strip_prefix(CHECKPOINT_PREFIX)?.parse::<u16>().ok()?;
                let (gen, digest) = v.split_once(':')?;
                Some((pkid, (gen.parse::<u64>().ok()?, digest.to_string())))
            })
            .collect();
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The identity of `m`, received by session `session` (`host:port/client_id`); records it
    /// as the latest under its packet id. `qos0_run` and `qos0_seq` make a QoS 0 message's key
    /// unique: such a message is never redelivered.
    pub fn identify(
        &mut self,
        session: &str,
        m: &Received,
        qos0_run: u128,
        qos0_seq: u64,
    ) -> Identity {
        if m.qos == 0 {
            return Identity {
                dedup_key: format!("mqtt:{session}/qos0/{qos0_run:x}.{qos0_seq}"),
                checkpoint: None,
                repeat: false,
            };
        }
        let digest = m.digest();
        let (generation, repeat) = match self.entries.get(&m.pkid) {
            Some((gen, last)) if m.dup && *last == digest => (*gen, true),
            Some((gen, _)) => (gen + 1, false),
            None => (1, false),
        };
        self.entries.insert(m.pkid, (generation, digest.clone()));
        Identity {
            dedup_key: format!("mqtt:{session}/{}.{generation}/{digest}", m.pkid),
            checkpoint: Some((
                format!("{CHECKPOINT_PREFIX}{}", m.pkid),
                format!("{generation}:{digest}"),
            )),
            repeat,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(pkid: u16, payload: &[u8], dup: bool) -> Received {
        Received {
            topic: "sensors/1".into(),
            payload: payload.to_vec(),
            qos: 1,
            retain: false,
            dup,
            pkid,
        }
    }

    #[test]
    fn json_text_and_binary_are_kept_and_flags_are_shown() {
        let p = msg(7, br#"{"t": 21.5}"#, false).payload();
        assert_eq!(
            p,
            json!({"topic": "sensors/1", "value": {"t": 21.5}, "value_encoding": "json",
                   "qos": 1, "retain": false, "dup": false, "packet_id": 7})
        );
        let p = msg(7, b"plain", true).payload();
        assert_eq!(
            (p["value"].clone(), p["value_encoding"].clone()),
            (json!("plain"), json!("text"))
        );
        assert_eq!(p["dup"], true);
        let p = msg(7, &[0xff, 0x00], false).payload();
        assert_eq!(
            (p["value"].clone(), p["value_encoding"].clone()),
            (json!("/wA="), json!("base64"))
        );
        let p = msg(7, b"", false).payload();
        assert_eq!(
            (p["value"].clone(), p["value_encoding"].clone()),
            (json!(""), json!("text"))
        );
        let p = msg(7, br#"{"a": "x\u0000"}"#, false).payload();
        assert_eq!(p["value_encoding"], "text");
        let mut q0 = msg(0, b"1", false);
        q0.qos = 0;
        q0.retain = true;
        let p = q0.payload();
        assert_eq!(
            (
                p["qos"].clone(),
                p["retain"].clone(),
                p["packet_id"].clone()
            ),
            (json!(0), json!(true), Value::Null)
        );
        assert_eq!(triggerer_sdk::nul_in_json(&p), None);
    }

    #[test]
    fn a_redelivery_of_a_committed_message_keeps_its_key() {
        let mut ledger = Ledger::default();
        let first = ledger.identify("h:1/c", &msg(1, b"a", false), 0, 0);
        assert_eq!(
            first.dedup_key,
            format!("mqtt:h:1/c/1.1/{}", msg(1, b"a", false).digest())
        );
        assert!(!first.repeat);
        // The process dies after the commit, before the PUBACK; the next run starts from the
        // committed checkpoint, and the broker sends the message again, flagged DUP.
        let (k, v) = first.checkpoint.clone().unwrap();
        let mut ledger = Ledger::from_checkpoint(&HashMap::from([(k, v)]));
        let again = ledger.identify("h:1/c", &msg(1, b"a", true), 0, 0);
        assert_eq!(again.dedup_key, first.dedup_key);
        assert!(again.repeat);
    }

    #[test]
    fn a_reused_packet_id_is_a_new_message() {
        let mut ledger = Ledger::default();
        let a = ledger.identify("s", &msg(1, b"a", false), 0, 0);
        // Acknowledged; the broker reuses packet id 1 for the next message — same payload even.
        let b = ledger.identify("s", &msg(1, b"a", false), 0, 0);
        assert_ne!(a.dedup_key, b.dedup_key);
        // A redelivery (DUP) of a message never committed, with another payload: new as well.
        let c = ledger.identify("s", &msg(1, b"c", true), 0, 0);
        assert_ne!(b.dedup_key, c.dedup_key);
        assert!(!c.repeat);
        assert_eq!(
            c.checkpoint.unwrap().1,
            format!("3:{}", msg(1, b"c", true).digest())
        );
        // Uncommitted when the process died: the next run, from the committed checkpoint (b),
        // computes the same key for its redelivery as this run gave it.
        let mut next = Ledger::from_checkpoint(&HashMap::from([b.checkpoint.clone().unwrap()]));
        let c_again = next.identify("s", &msg(1, b"c", true), 0, 0);
        assert_eq!(c_again.dedup_key, c.dedup_key);
    }

    #[test]
    fn the_documented_limit_a_dup_with_the_last_committed_payload_is_taken_for_a_repeat() {
        // Committed and acknowledged under id 1; then a new message under id 1 with the same
        // topic and payload, redelivered (DUP) after a crash before its commit: indistinguishable
        // from a redelivery of the first, so it inserts nothing.
        let mut ledger = Ledger::default();
        let first = ledger.identify("s", &msg(1, b"beat", false), 0, 0);
        let mut next = Ledger::from_checkpoint(&HashMap::from([first.checkpoint.clone().unwrap()]));
        assert_eq!(
            next.identify("s", &msg(1, b"beat", true), 0, 0).dedup_key,
            first.dedup_key
        );
    }

    #[test]
    fn qos0_keys_are_unique_and_checkpoint_nothing() {
        let mut ledger = Ledger::default();
        let mut m = msg(0, b"x", false);
        m.qos = 0;
        let a = ledger.identify("s", &m, 0xabc, 1);
        let b = ledger.identify("s", &m, 0xabc, 2);
        assert_ne!(a.dedup_key, b.dedup_key);
        assert_eq!(a.checkpoint, None);
        assert!(ledger.is_empty());
    }

    #[test]
    fn foreign_or_malformed_checkpoint_pairs_are_ignored() {
        let ledger = Ledger::from_checkpoint(&HashMap::from([
            ("pkid:3".to_string(), "2:abcd".to_string()),
            ("pkid:x".to_string(), "2:abcd".to_string()),
            ("pkid:4".to_string(), "two:abcd".to_string()),
            ("other".to_string(), "1:a".to_string()),
        ]));
        assert_eq!(ledger.len(), 1);
    }
}
