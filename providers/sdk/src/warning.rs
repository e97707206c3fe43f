//! Warnings a running trigger reports without stopping: something it had to skip (an
//! unreadable subdirectory, a message it could not parse) while the rest goes on. The core
//! shows the latest one in `triggers list` (`last_error`, prefixed `warning:`) and logs it; a
//! warning is not a failure, so it does not restart the trigger or mark it failing.

use tokio::sync::mpsc;

use crate::TriggerId;

/// One warning, as the core receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub trigger_id: TriggerId,
    pub message: String,
}

/// Handed to each running trigger in its [`crate::TriggerContext`]. Cheap to clone; reporting
/// never waits (a trigger must not stall on its own diagnostics).
#[derive(Debug, Clone)]
pub struct WarningSink {
    trigger_id: TriggerId,
    tx: mpsc::UnboundedSender<Warning>,
}

impl WarningSink {
    /// A sink for `trigger_id` feeding `tx`. The core owns the receiving end.
    pub fn new(trigger_id: TriggerId, tx: mpsc::UnboundedSender<Warning>) -> Self {
        Self { trigger_id, tx }
    }

    /// Reports `message`. A stopped core is not the trigger's problem: then it is dropped.
    pub fn warn(&self, message: impl Into<String>) {
        let _ = self.tx.send(Warning {
            trigger_id: self.trigger_id,
            message: message.into(),
        });
    }
}
