//! The writer: the one task that turns submitted events into committed asset events — a
//! triggerer's from its triggers, an HTTP server's from pushes and webhooks ([`Submission`]).
//! It drains the bounded event channel in batches (group commit: one transaction per batch),
//! and only after COMMIT answers each event's delivery, which is when the trigger may
//! acknowledge its source and the HTTP server may answer 2xx. It never drops an event: on a database outage (or a full disk) it retries the same
//! batch while the full channel makes every trigger wait, and says so through
//! [`WriterHealth`], so the triggerer stops heartbeating and others can take over.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::json;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, warn};
use triggerer_sdk::{CancellationToken, Committed, Envelope, Event, NotCommitted, TriggerId};

use crate::metrics;
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

/// What the writer commits: an event, and whom to answer once it is durable (or is not).
pub trait Submission: Send + 'static {
    fn new_event(&self) -> NewEvent;
    /// Who made it: the short name of the trigger's provider, `http` for a push. The
    /// `provider` label of `triggerer_events_committed_total`.
    fn provider(&self) -> &'static str;
    /// When its source says the occurrence happened, if it says (for
    /// `triggerer_event_age_at_commit_seconds`).
    fn source_time(&self) -> Option<SystemTime>;
    fn answer(self, outcome: Result<Committed, NotCommitted>);
}

/// The `provider` label of events pushed to the HTTP server (pushes and webhooks).
pub const PUSHED_PROVIDER: &str = "http";

/// What trigger `trigger_id`'s `event` is written as: one asset event for every asset the
/// trigger watches, its payload under `extra.payload` (whether a triggerer ran the trigger or
/// the HTTP server received it for a webhook).
pub fn trigger_event(trigger_id: TriggerId, event: &Event) -> NewEvent {
    NewEvent {
        origin: Origin::Trigger(trigger_id),
        extra: json!({"from_trigger": true, "payload": event.payload}),
        dedup_key: Some(event.dedup_key.clone()),
        checkpoint: event.checkpoint.clone(),
    }
}

/// A trigger's event, for every asset the trigger watches.
impl Submission for Envelope {
    fn new_event(&self) -> NewEvent {
        trigger_event(self.trigger_id, &self.event)
    }

    fn provider(&self) -> &'static str {
        self.provider
    }

    fn source_time(&self) -> Option<SystemTime> {
        self.event.source_time
    }

    fn answer(self, outcome: Result<Committed, NotCommitted>) {
        // A trigger that stopped waiting no longer cares; the event is committed anyway.
        let _ = self.ack.send(outcome);
    }
}

/// An event pushed to the HTTP server (the API's push, a webhook's request), answered to the
/// request waiting for it.
#[derive(Debug)]
pub struct Pushed {
    pub event: NewEvent,
    pub answer: oneshot::Sender<Result<Committed, NotCommitted>>,
}

impl Submission for Pushed {
    fn new_event(&self) -> NewEvent {
        self.event.clone()
    }

    fn provider(&self) -> &'static str {
        PUSHED_PROVIDER
    }

    fn source_time(&self) -> Option<SystemTime> {
        None
    }

    fn answer(self, outcome: Result<Committed, NotCommitted>) {
        // A client that hung up gets no answer; its event is committed anyway, and its retry
        // with the same dedup key finds it.
        let _ = self.answer.send(outcome);
    }
}

/// Starts a writer. With `fence = Some(job_id)` (a triggerer's writer) a trigger's events are
/// written only while the trigger is that triggerer's; `None` (the HTTP server's) writes them
/// for whoever receives them. It stops once every sender is dropped and the channel is
/// drained. `committed` is notified after each commit (the scheduler listens).
pub fn spawn<S: Submission>(
    store: Store,
    fence: Option<JobId>,
    channel_capacity: usize,
    committed: Arc<Notify>,
) -> (mpsc::Sender<S>, Writer) {
    let (tx, rx) = mpsc::channel(channel_capacity);
    let health = Arc::new(WriterHealth::default());
    let give_up = CancellationToken::new();
    let context = Context {
        store,
        fence,
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
    fence: Option<JobId>,
    health: Arc<WriterHealth>,
    give_up: CancellationToken,
}

async fn run<S: Submission>(cx: Context, mut rx: mpsc::Receiver<S>, committed: Arc<Notify>) {
    let mut batch: Vec<S> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let events: Vec<NewEvent> = batch.iter().map(Submission::new_event).collect();
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
        metrics::record_batch(n);
        metrics::record_committed(
            batch
                .iter()
                .zip(&outcome)
                .filter(|(_, result)| result.is_ok())
                .map(|(submission, _)| (submission.provider(), submission.source_time())),
            SystemTime::now(),
        );
        for (submission, result) in batch.drain(..).zip(outcome) {
            submission.answer(result.map(|inserted| Committed { inserted }));
        }
        debug!(events = n, "batch committed");
        committed.notify_waiters();
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
        let started = Instant::now();
        let written = cx.store.write_events(events, cx.fence).await;
        if written.is_ok() {
            metrics::record_commit(started.elapsed());
        }
        match written {
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    use async_trait::async_trait;
    use serde_json::{json, Value};
    use triggerer_sdk::{
        Event, EventSink, EventTrigger, KwargsError, Provider, TriggerContext, TriggerError,
        TriggerId,
    };

    use super::*;
    use crate::registry::ProviderRegistry;

    /// A provider only for its classpath: these tests hand the writer events themselves.
    struct Named;

    struct Idle;

    impl Provider for Named {
        fn name(&self) -> &'static str {
            "writer-test"
        }
        fn classpaths(&self) -> &'static [&'static str] {
            &["test.WriterMetrics"]
        }
        fn validate(&self, _: &Value) -> Result<(), KwargsError> {
            Ok(())
        }
        fn build(&self, _: &Value) -> Result<Box<dyn EventTrigger>, KwargsError> {
            Ok(Box::new(Idle))
        }
    }

    #[async_trait]
    impl EventTrigger for Idle {
        async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
            ctx.cancel.cancelled().await;
            Ok(())
        }
    }

    /// The samples of the process's metrics: `name{labels}` → value.
    fn samples() -> HashMap<String, f64> {
        crate::metrics::encode()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(series, value)| (series.to_string(), value.parse().expect("a number")))
            .collect()
    }

    fn get(samples: &HashMap<String, f64>, series: &str) -> f64 {
        samples.get(series).copied().unwrap_or(0.0)
    }

    #[tokio::test]
    async fn committed_events_are_counted_by_provider_and_aged_by_their_source_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let store = Store::connect(&url).await.expect("open sqlite");
        let mut registry = ProviderRegistry::default();
        registry.register(Named).expect("register");
        let defs = r#"
[[asset]]
name = "a"
[[asset.watcher]]
name = "w"
classpath = "test.WriterMetrics"
"#;
        let plan = crate::definitions::load_str("defs.toml", defs, &registry).expect("valid");
        store.apply_definitions(&plan).await.expect("sync");
        let trigger = store
            .list_triggers(Duration::from_secs(30))
            .await
            .expect("triggers")
            .into_iter()
            .find(|t| t.classpath == "test.WriterMetrics")
            .expect("the watcher's trigger");

        let (tx, writer) = spawn::<Envelope>(store, None, 16, Arc::new(Notify::new()));
        let sink = EventSink::new(TriggerId::new(trigger.id), "writer-test", tx.clone());
        let counted = "triggerer_events_committed_total{provider=\"writer-test\"}";
        let before = samples();

        let sent = SystemTime::now() - Duration::from_secs(3);
        let old = Event::new(json!({"n": 1}), "k1").with_source_time(sent);
        assert_eq!(sink.emit(old.clone()).await, Ok(Committed { inserted: 1 }));
        assert_eq!(
            sink.emit(Event::new(json!({"n": 2}), "k2")).await,
            Ok(Committed { inserted: 1 })
        );
        // A duplicate commits (nothing inserted) and counts; a fenced event does not.
        assert_eq!(sink.emit(old).await, Ok(Committed { inserted: 0 }));
        let stranger = EventSink::new(TriggerId::new(trigger.id + 1000), "writer-test", tx);
        assert!(stranger.emit(Event::new(json!({}), "k3")).await.is_err());

        let after = samples();
        let delta = |series: &str| get(&after, series) - get(&before, series);
        assert_eq!(get(&after, counted), 3.0, "{counted}");
        // Only events with a source time are aged: both 3 s old, over the 2.5 s bucket.
        let age = "triggerer_event_age_at_commit_seconds";
        assert!(delta(&format!("{age}_count")) >= 2.0);
        assert!(
            delta(&format!("{age}_bucket{{le=\"+Inf\"}}"))
                - delta(&format!("{age}_bucket{{le=\"2.5\"}}"))
                >= 2.0
        );
        assert!(delta("triggerer_write_batch_size_count") >= 4.0);
        assert!(delta("triggerer_commit_seconds_count") >= 4.0);

        drop((sink, stranger));
        writer
            .handle
            .await
            .expect("the writer stops when its senders are gone");
    }
}
