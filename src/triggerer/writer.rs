//! The writer: the one task that turns trigger events into committed asset events. It drains
//! the bounded event channel in batches (group commit: one transaction per batch), and only
//! after COMMIT answers each event's delivery, which is when the trigger may acknowledge its
//! source. It never drops an event: on a database outage it retries the same batch while the
//! full channel makes every trigger wait.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use triggerer_sdk::{Committed, Envelope, NotCommitted};

use crate::store::{NewEvent, Origin, Store, StoreError};

/// Most events in one transaction. Large enough to amortise a commit, small enough that one
/// batch's latency stays low.
pub const MAX_BATCH: usize = 1_000;

/// Starts the writer for triggerer `job_id`. It stops once every sender is dropped and the
/// channel is drained. `committed` is notified after each commit (the scheduler listens).
pub fn spawn(
    store: Store,
    job_id: i64,
    channel_capacity: usize,
    committed: Arc<Notify>,
) -> (mpsc::Sender<Envelope>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(channel_capacity);
    let handle = tokio::spawn(run(store, job_id, rx, committed));
    (tx, handle)
}

async fn run(store: Store, job_id: i64, mut rx: mpsc::Receiver<Envelope>, committed: Arc<Notify>) {
    let mut batch: Vec<Envelope> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let events: Vec<NewEvent> = batch.iter().map(to_new_event).collect();
        let outcome = write_with_retry(&store, job_id, &events).await;
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

/// Writes `events`, retrying transient failures for as long as they last. When the database
/// refuses the batch itself, each event is written alone so one bad event cannot hold back the
/// others; that event alone is answered [`NotCommitted::Rejected`].
async fn write_with_retry(
    store: &Store,
    job_id: i64,
    events: &[NewEvent],
) -> Vec<Result<u32, NotCommitted>> {
    match write_until_not_transient(store, job_id, events).await {
        Ok(outcome) => outcome,
        Err(e) if events.len() == 1 => vec![Err(NotCommitted::Rejected(e.to_string()))],
        Err(e) => {
            warn!(error = %e, events = events.len(), "batch refused; writing its events one by one");
            let mut outcome = Vec::with_capacity(events.len());
            for event in events {
                match write_until_not_transient(store, job_id, std::slice::from_ref(event)).await {
                    Ok(mut one) => outcome.append(&mut one),
                    Err(e) => outcome.push(Err(NotCommitted::Rejected(e.to_string()))),
                }
            }
            outcome
        }
    }
}

async fn write_until_not_transient(
    store: &Store,
    job_id: i64,
    events: &[NewEvent],
) -> Result<Vec<Result<u32, NotCommitted>>, StoreError> {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.write_events(events, Some(job_id)).await {
            Err(e) if e.is_transient() => {
                // The outcome of a commit lost mid-flight is unknown; writing the same batch
                // again is safe because every event carries its dedup key.
                warn!(error = %e, retry_in = ?delay, "database unavailable; retrying the batch");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}
