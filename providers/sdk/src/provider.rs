//! The two traits a provider implements: [`Provider`] (a factory the registry holds, one per
//! crate) and [`EventTrigger`] (one running watcher).

use std::collections::HashMap;

use async_trait::async_trait;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{EventSink, KwargsError, TriggerError, WarningSink};

/// A factory for triggers of one kind. Held by the core's registry for the whole process, so it
/// is also the place for state shared by all its triggers (one OS file watcher, one Kafka
/// consumer per cluster and group).
pub trait Provider: Send + Sync + 'static {
    /// Short name, e.g. `file`; shown in logs and `triggers list`.
    fn name(&self) -> &'static str;

    /// The classpaths this provider answers to. The first is canonical: it is what the core
    /// stores, so that an Airflow alias and the short name give the same trigger identity.
    fn classpaths(&self) -> &'static [&'static str];

    /// URI schemes this provider serves for the common message-queue trigger (`kafka`, `sqs`).
    fn schemes(&self) -> &'static [&'static str] {
        &[]
    }

    /// The kwargs of this provider's trigger for a message-queue URI (`MessageQueueTrigger`'s
    /// `queue`, e.g. `kafka://host:9092/orders`), merged with the watcher's other `kwargs`; or
    /// `None` when this provider does not serve the URI. No I/O.
    fn queue_kwargs(
        &self,
        _queue: &str,
        _kwargs: &serde_json::Map<String, Value>,
    ) -> Option<Result<Value, KwargsError>> {
        None
    }

    /// Checks `kwargs` without any I/O: it runs at `dags sync` time.
    fn validate(&self, kwargs: &Value) -> Result<(), KwargsError>;

    /// Builds a trigger from validated kwargs. Connecting happens in [`EventTrigger::run`], so
    /// that an unreachable source becomes a restart with backoff, not a build failure.
    fn build(&self, kwargs: &Value) -> Result<Box<dyn EventTrigger>, KwargsError>;
}

/// A running watcher: emits one event per external occurrence until cancelled.
#[async_trait]
pub trait EventTrigger: Send + 'static {
    /// Runs until `ctx.cancel` fires (return `Ok(())`) or the trigger fails (return the error;
    /// the supervisor restarts it with backoff). An event trigger never stops on its own after
    /// an event: it is repeatable.
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError>;
}

/// What the core hands a trigger when it starts it.
#[derive(Debug)]
pub struct TriggerContext {
    pub trigger_id: i64,
    pub sink: EventSink,
    /// Where to report what the trigger skipped while it goes on (see [`WarningSink`]).
    pub warnings: WarningSink,
    /// The trigger's committed checkpoint pairs, as of this start.
    pub checkpoint: HashMap<String, String>,
    /// Fires when the trigger is unassigned, removed, or the process shuts down.
    pub cancel: CancellationToken,
}
