//! The writer: the one task that turns trigger events into committed asset events. It drains
//! the bounded event channel in batches (group commit: one transaction per batch), and only
//! after COMMIT answers each event's delivery, which is when the trigger may acknowledge its
//! source. It never drops an event: on a database outage (or a full disk) it retries the same
//! batch while the full channel makes every trigger wait, and says so through
//! [`WriterHealth`], so the triggerer stops heartbeating and others can take over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};
use triggerer_sdk::{CancellationToken, Committed, Envelope, NotCommitted};

use crate::store::JobId;
use crate::store::{NewEvent, Origin, Store, StoreError};

/// Most events in one transaction. Large enough to amortise a commit, small enough that one
/// batch's latency stays low.
pub const MAX_BATCH: usize = 1_000;

/// Whether the writer's events are committing. Shared with the triggerer loop.
#[derive(Debug, Default)]
pub struct WriterHealth {
    failing: Mutex<Option<Failing>>,
}

/// Since when the current batch has been failing, and the last reason.
#[derive(Debug, Clone)]
pub struct Failing {
    pub since: Instant,
    pub error: String,
}

impl WriterHealth {
    /// `Some` while a batch is waiting for the database to take it.
    pub fn failing(&self) -> Option<Failing> {
        self.lock().clone()
    }

    fn set_failing(&self, error: &StoreError) {
        let mut failing = self.lock();
        let since = failing.as_ref().map_or_else(Instant::now, |f| f.since);
        *failing = Some(Failing {
            since,
            error: error.to_string(),
        });
    }

    fn set_ok(&self) {
        *self.lock() = None;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Failing>> {
        // A poisoned lock only means a panic elsewhere mid-update of this plain value.
        self.failing.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running writer.
pub struct Writer {
    pub handle: JoinHandle<()>,
    pub health: Arc<WriterHealth>,
    /// Cancel to make a writer stuck on an unavailable database give up its batch (answered
    /// [`NotCommitted::WriterGone`]: not acknowledged, so the source redelivers it) and stop.
    pub give_up: CancellationToken,
}

/// Starts the writer for triggerer `job_id`. It stops once every sender is dropped and the
/// channel is drained. `committed` is notified after each commit (the scheduler listens).
pub fn spawn(
    store: Store,
    job_id: JobId,
    channel_capacity: usize,
    committed: Arc<Notify>,
) -> (mpsc::Sender<Envelope>, Writer) {
    let (tx, rx) = mpsc::channel(channel_capacity);
    let health = Arc::new(WriterHealth::default());
    let give_up = CancellationToken::new();
    let context = Context {
        store,
        job_id,
        health: health.clone(),
        give_up: give_up.clone(),
    };
    let handle = tokio::spawn(run(context, rx, committed));
    (
        tx,
        Writer {
            handle,
            health,
            give_up,
        },
    )
}

struct Context {
    store: Store,
    job_id: JobId,
    health: Arc<WriterHealth>,
    give_up: CancellationToken,
}

async fn run(cx: Context, mut rx: mpsc::Receiver<Envelope>, committed: Arc<Notify>) {
    let mut batch: Vec<Envelope> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let events: Vec<NewEvent> = batch.iter().map(to_new_event).collect();
        let Some(outcome) = write_with_retry(&cx, &events).await else {
            warn!(
                events = batch.len() + rx.len(),
                "event writer gave up: the database did not take the events before shutdown; \
                 they were not acknowledged and their sources will deliver them again"
            );
            // Dropping the acks answers WriterGone to every waiting trigger.
            return;
        };
        let n = batch.len();
        for (envelope, result) in batch.drain(..).zip(outcome) {
            // A trigger that stopped waiting no longer cares; the event is committed anyway.
            let _ = envelope
                .ack
                .send(result.map(|inserted| Committed { inserted }));
        }
        debug!(events = n, "batch committed");
        committed.notify_waiters();
    }
}

fn to_new_event(envelope: &Envelope) -> NewEvent {
    NewEvent {
        origin: Origin::Trigger(envelope.trigger_id),
        extra: json!({"from_trigger": true, "payload": envelope.event.payload}),
        dedup_key: Some(envelope.event.dedup_key.clone()),
        checkpoint: envelope.event.checkpoint.clone(),
    }
}

/// Writes `events`, retrying transient failures for as long as they last (`None` if told to
/// give up first). When the database refuses the batch itself, each event is written alone so
/// one bad event cannot hold back the others; that event alone is answered
/// [`NotCommitted::Rejected`].
async fn write_with_retry(
    cx: &Context,
    events: &[NewEvent],
) -> Option<Vec<Result<u32, NotCommitted>>> {
    Some(match write_until_not_transient(cx, events).await? {
        Ok(outcome) => outcome,
        Err(e) if events.len() == 1 => vec![Err(NotCommitted::Rejected(e.to_string()))],
        Err(e) => {
            warn!(error = %e, events = events.len(), "batch refused; writing its events one by one");
            let mut outcome = Vec::with_capacity(events.len());
            for event in events {
                match write_until_not_transient(cx, std::slice::from_ref(event)).await? {
                    Ok(mut one) => outcome.append(&mut one),
                    Err(e) => outcome.push(Err(NotCommitted::Rejected(e.to_string()))),
                }
            }
            outcome
        }
    })
}

async fn write_until_not_transient(
    cx: &Context,
    events: &[NewEvent],
) -> Option<Result<Vec<Result<u32, NotCommitted>>, StoreError>> {
    let mut delay = Duration::from_millis(100);
    loop {
        match cx.store.write_events(events, Some(cx.job_id)).await {
            Err(e) if e.is_transient() => {
                // The outcome of a commit lost mid-flight is unknown; writing the same batch
                // again is safe because every event carries its dedup key.
                warn!(error = %e, retry_in = ?delay, "database unavailable; retrying the batch");
                cx.health.set_failing(&e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cx.give_up.cancelled() => return None,
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => {
                cx.health.set_ok();
                return Some(other);
            }
        }
    }
}
