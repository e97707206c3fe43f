//! A harness for providers' own tests: run a trigger against an in-memory sink, commit or
//! refuse its events one by one, and look at what it emitted — no database needed.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    Committed, Envelope, Event, EventSink, EventTrigger, NotCommitted, TriggerContext,
    TriggerError, Warning, WarningSink,
};

/// A trigger running under test.
pub struct TestRun {
    rx: mpsc::Receiver<Envelope>,
    cancel: CancellationToken,
    handle: JoinHandle<Result<(), TriggerError>>,
    /// Every event committed so far, in order.
    pub committed: Vec<Event>,
    /// The checkpoint as the core would have stored it (committed events only).
    pub checkpoint: HashMap<String, String>,
    warnings: mpsc::UnboundedReceiver<Warning>,
}

impl TestRun {
    /// Starts `trigger` with `checkpoint` as its committed state. The queue holds `capacity`
    /// events, so tests can exercise backpressure.
    pub fn start(
        trigger: Box<dyn EventTrigger>,
        checkpoint: HashMap<String, String>,
        capacity: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        let (warnings_tx, warnings) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let ctx = TriggerContext {
            trigger_id: 1,
            sink: EventSink::new(1, tx),
            warnings: WarningSink::new(1, warnings_tx),
            checkpoint: checkpoint.clone(),
            cancel: cancel.clone(),
        };
        let handle = tokio::spawn(trigger.run(ctx));
        Self {
            rx,
            cancel,
            handle,
            committed: Vec::new(),
            checkpoint,
            warnings,
        }
    }

    /// The warnings the trigger reported so far, oldest first.
    pub fn warnings(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(w) = self.warnings.try_recv() {
            out.push(w.message);
        }
        out
    }

    /// Waits up to `timeout` for the next event and commits it. `None` if none came.
    pub async fn commit_next(&mut self, timeout: Duration) -> Option<Event> {
        let envelope = tokio::time::timeout(timeout, self.rx.recv()).await.ok()??;
        if let Some(cp) = &envelope.event.checkpoint {
            self.checkpoint.insert(cp.key.clone(), cp.value.clone());
        }
        self.committed.push(envelope.event.clone());
        let _ = envelope.ack.send(Ok(Committed { inserted: 1 }));
        Some(envelope.event)
    }

    /// Waits up to `timeout` for the next event and answers it with `reason` instead of a commit.
    pub async fn refuse_next(&mut self, timeout: Duration, reason: NotCommitted) -> Option<Event> {
        let envelope = tokio::time::timeout(timeout, self.rx.recv()).await.ok()??;
        let _ = envelope.ack.send(Err(reason));
        Some(envelope.event)
    }

    /// Commits events until none arrives for `quiet`, and returns how many were committed.
    pub async fn commit_until_quiet(&mut self, quiet: Duration) -> usize {
        let mut n = 0;
        while self.commit_next(quiet).await.is_some() {
            n += 1;
        }
        n
    }

    /// Cancels the trigger and returns how it ended.
    pub async fn stop(self) -> Result<(), TriggerError> {
        self.cancel.cancel();
        match self.handle.await {
            Ok(result) => result,
            Err(join) => Err(TriggerError::failed(format!("trigger task failed: {join}"))),
        }
    }

    /// Waits for the trigger to end on its own (for example after a refused delivery).
    pub async fn finished(self, timeout: Duration) -> Option<Result<(), TriggerError>> {
        match tokio::time::timeout(timeout, self.handle).await {
            Ok(Ok(result)) => Some(result),
            Ok(Err(join)) => Some(Err(TriggerError::failed(format!(
                "trigger task failed: {join}"
            )))),
            Err(_) => None,
        }
    }
}
