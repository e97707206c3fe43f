//! What a trigger emits ([`Event`]) and what it learns back once the event is durable
//! ([`Committed`]).

use serde_json::Value;

/// One external occurrence, as a trigger reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The JSON payload; stored as `extra.payload` of every asset event made from it.
    pub payload: Value,
    /// Identifies the occurrence at its source (Kafka cluster/topic/partition/offset, SQS
    /// MessageId, a file's path + inode + mtime). The same occurrence delivered twice must carry
    /// the same key: the database keeps one asset event per asset and key.
    pub dedup_key: String,
    /// Trigger state to commit in the same transaction as the event, so that after a crash the
    /// trigger resumes from exactly what was committed.
    pub checkpoint: Option<Checkpoint>,
}

impl Event {
    pub fn new(payload: Value, dedup_key: impl Into<String>) -> Self {
        Self {
            payload,
            dedup_key: dedup_key.into(),
            checkpoint: None,
        }
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
