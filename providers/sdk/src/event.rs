//! What a trigger emits ([`Event`]) and what it learns back once the event is durable
//! ([`Committed`]).

use std::time::SystemTime;

use serde_json::Value;

/// One external occurrence, as a trigger reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The JSON payload; stored as `extra.payload` of every asset event made from it. No string
    /// or key in it may hold a NUL character: PostgreSQL cannot store one in JSON, and the event
    /// would be refused there (a source's bytes with NULs belong in an encoded field, see
    /// [`nul_in_json`]).
    pub payload: Value,
    /// Identifies the occurrence at its source (Kafka cluster/topic/partition/offset, SQS
    /// MessageId, a file's path + inode + mtime). The same occurrence delivered twice must carry
    /// the same key: the database keeps one asset event per asset and key.
    pub dedup_key: String,
    /// Trigger state to commit in the same transaction as the event, so that after a crash the
    /// trigger resumes from exactly what was committed.
    pub checkpoint: Option<Checkpoint>,
    /// When the source says the occurrence happened: a Kafka message's timestamp, an SQS
    /// message's `SentTimestamp`, a file's mtime. `None` when the source does not say. It is
    /// not stored; the core measures how old events are when they commit
    /// (`triggerer_event_age_at_commit_seconds`).
    pub source_time: Option<SystemTime>,
}

impl Event {
    pub fn new(payload: Value, dedup_key: impl Into<String>) -> Self {
        Self {
            payload,
            dedup_key: dedup_key.into(),
            checkpoint: None,
            source_time: None,
        }
    }

    /// Sets when the source says the occurrence happened (see [`Event::source_time`]).
    pub fn with_source_time(mut self, at: SystemTime) -> Self {
        self.source_time = Some(at);
        self
    }

    pub fn with_checkpoint(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.checkpoint = Some(Checkpoint {
            key: key.into(),
            value: value.into(),
        });
        self
    }
}

/// A key/value pair of a trigger's durable state (for example a file path and the identity of
/// the file last emitted for it). The core hands the committed pairs back at every start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub key: String,
    pub value: String,
}

/// The event's transaction has committed: it is now safe to acknowledge it upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Asset events newly inserted for this event (0 when every one was a duplicate).
    pub inserted: u32,
}

/// The path (`a.0.b`) of the first string or key in `value` holding a NUL character, which
/// PostgreSQL cannot store in JSON (`""` when `value` itself is such a string).
pub fn nul_in_json(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.contains('\0') => Some(String::new()),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                return Some(k.escape_default().to_string());
            }
            nul_in_json(v).map(|rest| join_path(k, &rest))
        }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_in_json(v).map(|rest| join_path(&i.to_string(), &rest))),
        _ => None,
    }
}

fn join_path(head: &str, rest: &str) -> String {
    if rest.is_empty() {
        head.to_string()
    } else {
        format!("{head}.{rest}")
    }
}
