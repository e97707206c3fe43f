//! Errors shared by providers and the core. Each says who must act: the user who wrote the
//! kwargs ([`KwargsError`]), the supervisor that restarts a trigger ([`TriggerError`]), or the
//! trigger that must not acknowledge ([`NotCommitted`]).

use thiserror::Error;

/// A watcher's kwargs are invalid. Raised at sync time, with no I/O; the core adds the file,
/// line, asset and watcher to the message.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("kwargs{}: {message}", dotted(.field))]
pub struct KwargsError {
    /// The path of the offending value, e.g. `filepath`, `kafka_config.group.id`, `topics[1]`
    /// (empty when the kwargs as a whole are wrong).
    pub field: String,
    pub message: String,
}

/// `.field`, or nothing for the kwargs as a whole (`kwargs: expected a table…`).
fn dotted(field: &str) -> String {
    if field.is_empty() {
        String::new()
    } else {
        format!(".{field}")
    }
}

impl KwargsError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why an event was not committed. The trigger must not acknowledge it upstream; the source
/// redelivers it later and the dedup key makes that harmless.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum NotCommitted {
    /// The trigger is no longer assigned to this triggerer (fencing): another one owns it now.
    #[error("trigger is no longer assigned to this triggerer")]
    Fenced,
    /// The writer stopped (shutdown) before the event's transaction committed.
    #[error("the event writer stopped before the event was committed")]
    WriterGone,
    /// The database refused the event itself (not a passing outage); retrying the same event
    /// will fail the same way.
    #[error("the database refused the event: {0}")]
    Rejected(String),
}

/// Emitting failed; the event was not committed.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum EmitError {
    #[error(transparent)]
    NotCommitted(#[from] NotCommitted),
}

/// A trigger stopped with an error. The supervisor logs it, shows it in `triggers list`, and
/// restarts the trigger with exponential backoff.
#[derive(Debug, Error)]
pub enum TriggerError {
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Emit(#[from] EmitError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl TriggerError {
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<NotCommitted> for TriggerError {
    fn from(value: NotCommitted) -> Self {
        Self::Emit(EmitError::NotCommitted(value))
    }
}
