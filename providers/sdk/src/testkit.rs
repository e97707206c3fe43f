//! A harness for providers' own tests: run a trigger against an in-memory sink, commit or
//! refuse its events one by one (or hold them unanswered, as a writer mid-batch), and look at
//! what it emitted — no database needed. [`run_conformance`] checks a provider against the
//! delivery contract every provider must keep (see [`ConformanceSource`]).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;

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
            trigger_id: crate::TriggerId::new(1),
            sink: EventSink::new(crate::TriggerId::new(1), "testkit", tx),
            warnings: WarningSink::new(crate::TriggerId::new(1), warnings_tx),
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

    /// Waits up to `timeout` for the next event and leaves it unanswered, as a writer that has
    /// it in a batch not committed yet. Answer it with [`commit_held`](Self::commit_held) or
    /// [`refuse_held`](Self::refuse_held); dropping it is a writer that stopped.
    pub async fn hold_next(&mut self, timeout: Duration) -> Option<Held> {
        let envelope = tokio::time::timeout(timeout, self.rx.recv()).await.ok()??;
        Some(Held { envelope })
    }

    /// Commits a held event: recorded as [`commit_next`](Self::commit_next) records.
    pub fn commit_held(&mut self, held: Held) {
        let Held { envelope } = held;
        if let Some(cp) = &envelope.event.checkpoint {
            self.checkpoint.insert(cp.key.clone(), cp.value.clone());
        }
        self.committed.push(envelope.event);
        let _ = envelope.ack.send(Ok(Committed { inserted: 1 }));
    }

    /// Answers a held event with `reason` instead of a commit.
    pub fn refuse_held(&mut self, held: Held, reason: NotCommitted) {
        let _ = held.envelope.ack.send(Err(reason));
    }

    /// Whether the trigger's task ended (it failed, or returned after a cancel).
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
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

    /// Cancels the trigger and waits up to `deadline` for it to return; `None` (and the task
    /// aborted) if it did not.
    pub async fn stop_within(self, deadline: Duration) -> Option<Result<(), TriggerError>> {
        self.cancel.cancel();
        let mut handle = self.handle;
        match tokio::time::timeout(deadline, &mut handle).await {
            Ok(Ok(result)) => Some(result),
            Ok(Err(join)) => Some(Err(TriggerError::failed(format!(
                "trigger task failed: {join}"
            )))),
            Err(_) => {
                handle.abort();
                None
            }
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

/// An event the test received and has not answered yet (see [`TestRun::hold_next`]).
#[derive(Debug)]
pub struct Held {
    envelope: Envelope,
}

impl Held {
    pub fn event(&self) -> &Event {
        &self.envelope.event
    }
}

/// How long things take at a source, for [`run_conformance`]. Generous defaults: the suite
/// waits only as long as it must, except when it watches for something that must not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Longest wait for an occurrence put into the source to reach the trigger (a consumer
    /// joining its group, a file settling).
    pub arrival: Duration,
    /// Longest wait for an acknowledgement to show at the source (offsets committed in the
    /// background, deletes in batches). Also how long the suite watches for premature ones.
    pub ack: Duration,
    /// How long a refused occurrence takes to come back on top of `arrival` (SQS: the
    /// visibility timeout).
    pub redelivery: Duration,
    /// How long a cancelled trigger may take to return.
    pub stop: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            arrival: Duration::from_secs(20),
            ack: Duration::from_secs(2),
            redelivery: Duration::ZERO,
            stop: Duration::from_secs(10),
        }
    }
}

/// A provider's real source, driven by [`run_conformance`]: the provider's test implements
/// it (a directory for files, a topic and consumer group on a broker for Kafka, a queue on an
/// endpoint for SQS, or a plugin's source). The suite only puts occurrences in, runs
/// triggers, and asks the source what it counts as acknowledged.
#[async_trait]
pub trait ConformanceSource: Send {
    /// Names the source in failures.
    fn name(&self) -> String;

    /// Switches to a fresh, empty source (a new directory, topic and group, queue) that the
    /// triggers built from now on watch. Each check starts with one.
    async fn fresh(&mut self) -> Result<(), String>;

    /// A trigger of the current source, as the provider's `build` makes it from kwargs. Called
    /// again for each restart.
    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String>;

    /// Puts `n` new occurrences into the current source (files, messages).
    async fn put(&mut self, n: usize) -> Result<(), String>;

    /// How many occurrences of the current source the source itself counts as acknowledged:
    /// files whose identity the committed `checkpoint` holds, the committed offsets of the
    /// group, the messages deleted from the queue.
    async fn acknowledged(&mut self, checkpoint: &HashMap<String, String>)
        -> Result<usize, String>;

    /// Whether the source acknowledges in arrival order only (one Kafka partition): events
    /// committed after an uncommitted earlier one must not be acknowledged yet.
    fn ordered(&self) -> bool {
        false
    }

    fn timing(&self) -> Timing {
        Timing::default()
    }
}

/// What the suite checks. Every provider must keep all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Property {
    /// Nothing is acknowledged upstream before its delivery resolved to `Committed`, and what
    /// committed is acknowledged in the end.
    NoAckBeforeCommit,
    /// An occurrence whose delivery resolved to `NotCommitted` comes again: from the same run,
    /// or from a restart with the committed checkpoint, as the supervisor does.
    RedeliveryAfterNotCommitted,
    /// A cancelled trigger returns `Ok` within its deadline, even with deliveries unanswered
    /// and the core's queue full.
    StopWithinDeadline,
    /// A redelivered occurrence carries the dedup key of its first delivery; distinct
    /// occurrences carry distinct keys.
    DedupKeyKept,
}

impl std::fmt::Display for Property {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NoAckBeforeCommit => "never acknowledges before Committed",
            Self::RedeliveryAfterNotCommitted => "redelivers after NotCommitted",
            Self::StopWithinDeadline => "stops within its deadline on cancel",
            Self::DedupKeyKept => "a redelivered event keeps its dedup key",
        })
    }
}

/// One property a source broke, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {property}: {message}")]
pub struct ConformanceFailure {
    pub source_name: String,
    pub property: Property,
    pub message: String,
}

/// Every failure of a [`run_conformance`] run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", list(.0))]
pub struct ConformanceFailures(pub Vec<ConformanceFailure>);

fn list(failures: &[ConformanceFailure]) -> String {
    let mut out = format!("{} conformance failure(s):", failures.len());
    for f in failures {
        out.push_str("\n  - ");
        out.push_str(&f.to_string());
    }
    out
}

/// Occurrences put in per check: enough for order to matter, few enough for slow sources.
const OCCURRENCES: usize = 4;
/// How often the suite asks the source again while it waits for acknowledgements.
const POLL: Duration = Duration::from_millis(100);

/// Runs every check against `source` and returns all the failures, not only the first.
pub async fn run_conformance<S>(source: &mut S) -> Result<(), ConformanceFailures>
where
    S: ConformanceSource + ?Sized,
{
    let mut failures = Vec::new();
    failures.extend(
        check_no_ack_before_commit(source)
            .await
            .err()
            .unwrap_or_default(),
    );
    failures.extend(
        check_redelivery_after_not_committed(source)
            .await
            .err()
            .unwrap_or_default(),
    );
    failures.extend(
        check_stop_within_deadline(source)
            .await
            .err()
            .unwrap_or_default(),
    );
    if failures.is_empty() {
        Ok(())
    } else {
        Err(ConformanceFailures(failures))
    }
}

/// The state of one check: the failures so far, named after the source.
struct Check {
    name: String,
    failures: Vec<ConformanceFailure>,
}

impl Check {
    fn new<S: ConformanceSource + ?Sized>(source: &S) -> Self {
        Self {
            name: source.name(),
            failures: Vec::new(),
        }
    }

    fn fail(&mut self, property: Property, message: impl Into<String>) {
        self.failures.push(ConformanceFailure {
            source_name: self.name.clone(),
            property,
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), Vec<ConformanceFailure>> {
        if self.failures.is_empty() {
            Ok(())
        } else {
            Err(self.failures)
        }
    }
}

/// A fresh source with `OCCURRENCES` put in and a trigger running on it with an empty
/// checkpoint and a queue of `capacity`.
async fn setup<S>(
    source: &mut S,
    check: &mut Check,
    property: Property,
    capacity: usize,
) -> Option<TestRun>
where
    S: ConformanceSource + ?Sized,
{
    if let Err(e) = source.fresh().await {
        check.fail(property, format!("cannot make a fresh source: {e}"));
        return None;
    }
    let trigger = match source.trigger() {
        Ok(t) => t,
        Err(e) => {
            check.fail(property, format!("cannot build a trigger: {e}"));
            return None;
        }
    };
    let run = TestRun::start(trigger, HashMap::new(), capacity);
    if let Err(e) = source.put(OCCURRENCES).await {
        check.fail(
            property,
            format!("cannot put occurrences into the source: {e}"),
        );
        let _ = run.stop_within(source.timing().stop).await;
        return None;
    }
    Some(run)
}

/// Holds up to `n` events, waiting at most `within` in all.
async fn hold(run: &mut TestRun, n: usize, within: Duration) -> Vec<Held> {
    let deadline = tokio::time::Instant::now() + within;
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match run.hold_next(left).await {
            Some(h) => held.push(h),
            None => break,
        }
    }
    held
}

/// Asks the source until `done` holds for its count or `within` passed; the last count.
async fn acknowledged_until<S>(
    source: &mut S,
    checkpoint: &HashMap<String, String>,
    within: Duration,
    done: impl Fn(usize) -> bool,
) -> Result<usize, String>
where
    S: ConformanceSource + ?Sized,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = source.acknowledged(checkpoint).await?;
        if done(n) || tokio::time::Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Watches the source for `within` and returns the highest count it reported: for what must
/// not happen, the suite has to look for the whole window.
async fn acknowledged_during<S>(
    source: &mut S,
    checkpoint: &HashMap<String, String>,
    within: Duration,
) -> Result<usize, String>
where
    S: ConformanceSource + ?Sized,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut most = 0;
    loop {
        most = most.max(source.acknowledged(checkpoint).await?);
        if tokio::time::Instant::now() >= deadline {
            return Ok(most);
        }
        tokio::time::sleep(POLL).await;
    }
}

fn distinct_keys(check: &mut Check, held: &[Held]) {
    let keys: HashSet<&str> = held.iter().map(|h| h.event().dedup_key.as_str()).collect();
    if keys.len() != held.len() {
        check.fail(
            Property::DedupKeyKept,
            format!(
                "{} distinct occurrences came with only {} distinct dedup keys",
                held.len(),
                keys.len()
            ),
        );
    }
}

/// Holds every event, then commits them out of order (the later half first): the source
/// must acknowledge nothing before a commit, nothing past an uncommitted earlier event when
/// it is ordered, and everything once everything committed.
pub async fn check_no_ack_before_commit<S>(source: &mut S) -> Result<(), Vec<ConformanceFailure>>
where
    S: ConformanceSource + ?Sized,
{
    const P: Property = Property::NoAckBeforeCommit;
    let mut check = Check::new(source);
    let timing = source.timing();
    let Some(mut run) = setup(source, &mut check, P, 64).await else {
        return check.finish();
    };
    let mut held = hold(&mut run, OCCURRENCES, timing.arrival).await;
    if held.len() < OCCURRENCES {
        check.fail(
            P,
            format!(
                "only {} of {OCCURRENCES} occurrences reached the trigger within {:?}",
                held.len(),
                timing.arrival
            ),
        );
    }
    distinct_keys(&mut check, &held);
    let result = async {
        let early = acknowledged_during(source, &run.checkpoint, timing.ack).await?;
        if early > 0 {
            check.fail(
                P,
                format!("{early} of {} occurrences acknowledged while none was committed", held.len()),
            );
        }
        let first = held.len() / 2;
        let later: Vec<Held> = held.drain(first..).collect();
        let later_n = later.len();
        for h in later.into_iter().rev() {
            run.commit_held(h);
        }
        if source.ordered() {
            let n = acknowledged_during(source, &run.checkpoint, timing.ack).await?;
            if n > 0 {
                check.fail(
                    P,
                    format!(
                        "{n} acknowledged while the {first} earliest occurrences were not committed \
                         (an ordered source releases in order)"
                    ),
                );
            }
        } else {
            let n = acknowledged_until(source, &run.checkpoint, timing.ack, |n| n >= later_n).await?;
            if n > later_n {
                check.fail(P, format!("{n} acknowledged while only {later_n} were committed"));
            }
        }
        let total = first + later_n;
        for h in held.drain(..) {
            run.commit_held(h);
        }
        let n = acknowledged_until(source, &run.checkpoint, timing.ack, |n| n >= total).await?;
        if n != total {
            check.fail(
                P,
                format!("{n} acknowledged {:?} after all {total} occurrences committed", timing.ack),
            );
        }
        Ok::<(), String>(())
    }
    .await;
    if let Err(e) = result {
        check.fail(P, format!("cannot ask the source: {e}"));
    }
    let _ = run.stop_within(timing.stop).await;
    check.finish()
}

/// Refuses every event (the writer stopped mid-batch): nothing may be acknowledged, and every
/// occurrence must come again — from the same run, or from restarts with the committed
/// checkpoint as the supervisor makes them — with its first dedup key; once those commit,
/// everything is acknowledged.
pub async fn check_redelivery_after_not_committed<S>(
    source: &mut S,
) -> Result<(), Vec<ConformanceFailure>>
where
    S: ConformanceSource + ?Sized,
{
    const P: Property = Property::RedeliveryAfterNotCommitted;
    let mut check = Check::new(source);
    let timing = source.timing();
    let Some(mut run) = setup(source, &mut check, P, 64).await else {
        return check.finish();
    };
    let held = hold(&mut run, OCCURRENCES, timing.arrival).await;
    if held.len() < OCCURRENCES {
        check.fail(
            P,
            format!(
                "only {} of {OCCURRENCES} occurrences reached the trigger within {:?}",
                held.len(),
                timing.arrival
            ),
        );
    }
    let original: HashSet<String> = held.iter().map(|h| h.event().dedup_key.clone()).collect();
    for h in held {
        run.refuse_held(h, NotCommitted::WriterGone);
    }
    match acknowledged_during(source, &run.checkpoint, timing.ack).await {
        Ok(0) => {}
        Ok(n) => check.fail(
            Property::NoAckBeforeCommit,
            format!("{n} of {} refused occurrences acknowledged", original.len()),
        ),
        Err(e) => check.fail(P, format!("cannot ask the source: {e}")),
    }

    let deadline = tokio::time::Instant::now() + timing.redelivery + timing.arrival;
    let mut again: HashSet<String> = HashSet::new();
    let mut restarts = 0;
    while !original.is_subset(&again) && tokio::time::Instant::now() < deadline {
        if run.is_finished() {
            // The supervisor restarts a failed trigger from what was committed.
            let checkpoint = std::mem::take(&mut run.checkpoint);
            let trigger = match source.trigger() {
                Ok(t) => t,
                Err(e) => {
                    check.fail(P, format!("cannot build a trigger to restart: {e}"));
                    break;
                }
            };
            run = TestRun::start(trigger, checkpoint, 64);
            restarts += 1;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(event) = run.commit_next(left.min(Duration::from_millis(250))).await {
            again.insert(event.dedup_key);
        }
    }
    let missing: Vec<&String> = original.difference(&again).collect();
    if !missing.is_empty() {
        let new: Vec<&String> = again.difference(&original).collect();
        if new.len() >= missing.len() {
            check.fail(
                Property::DedupKeyKept,
                format!("redelivered with other dedup keys: expected {missing:?}, got {new:?}"),
            );
        } else {
            check.fail(
                P,
                format!(
                    "{} of {} refused occurrences did not come again within {:?} ({restarts} restarts); \
                     missing {missing:?}",
                    missing.len(),
                    original.len(),
                    timing.redelivery + timing.arrival
                ),
            );
        }
    } else {
        let total = original.len();
        match acknowledged_until(source, &run.checkpoint, timing.ack, |n| n >= total).await {
            Ok(n) if n == total => {}
            Ok(n) => check.fail(
                P,
                format!(
                    "{n} of {total} acknowledged {:?} after their redeliveries committed",
                    timing.ack
                ),
            ),
            Err(e) => check.fail(P, format!("cannot ask the source: {e}")),
        }
    }
    let _ = run.stop_within(timing.stop).await;
    check.finish()
}

/// Cancels a trigger that has a delivery unanswered and its queue full (a core whose writer
/// is stuck): it must still return `Ok` within its deadline, having acknowledged nothing.
pub async fn check_stop_within_deadline<S>(source: &mut S) -> Result<(), Vec<ConformanceFailure>>
where
    S: ConformanceSource + ?Sized,
{
    const P: Property = Property::StopWithinDeadline;
    let mut check = Check::new(source);
    let timing = source.timing();
    // A queue of one: the first event held, the second queued, the third waits to be.
    let Some(mut run) = setup(source, &mut check, P, 1).await else {
        return check.finish();
    };
    let held = hold(&mut run, 1, timing.arrival).await;
    if held.is_empty() {
        check.fail(
            P,
            format!(
                "no occurrence reached the trigger within {:?}",
                timing.arrival
            ),
        );
    }
    // Long enough for the trigger to fill the queue and block on it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let checkpoint = run.checkpoint.clone();
    let started = tokio::time::Instant::now();
    match run.stop_within(timing.stop).await {
        Some(Ok(())) => {}
        Some(Err(e)) => check.fail(P, format!("returned an error when cancelled: {e}")),
        None => check.fail(
            P,
            format!(
                "still running {:?} after its cancel (one delivery unanswered, its queue full)",
                timing.stop
            ),
        ),
    }
    let took = started.elapsed();
    match acknowledged_during(source, &checkpoint, timing.ack).await {
        Ok(0) => {}
        Ok(n) => check.fail(
            Property::NoAckBeforeCommit,
            format!("{n} acknowledged after a stop with nothing committed"),
        ),
        Err(e) => check.fail(P, format!("cannot ask the source: {e}")),
    }
    drop(held);
    tracing::debug!(source = %check.name, ?took, "stopped");
    check.finish()
}

#[cfg(test)]
mod tests {
    //! The suite against an in-memory source: a well-behaved trigger passes, and each way of
    //! breaking the contract is named.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use serde_json::json;

    use super::*;
    use crate::{InFlight, Settled};

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Flaw {
        None,
        /// Acknowledges as soon as the event is queued.
        AcksOnSubmit,
        /// Acknowledges refused events too.
        AcksRefused,
        /// Gives every delivery of a message a new dedup key.
        NewKeys,
        /// Ignores its cancel while the core's queue is full.
        IgnoresCancel,
    }

    /// A queue with visibility: a message handed out and not acknowledged comes back once the
    /// trigger that had it stopped.
    #[derive(Default)]
    struct Queue {
        next: usize,
        ready: VecDeque<usize>,
        acked: HashSet<usize>,
        deliveries: usize,
    }

    struct Fake {
        flaw: Flaw,
        queue: Arc<Mutex<Queue>>,
    }

    impl Fake {
        fn new(flaw: Flaw) -> Self {
            Self {
                flaw,
                queue: Arc::default(),
            }
        }
    }

    fn lock(queue: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
        queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    struct FakeTrigger {
        flaw: Flaw,
        queue: Arc<Mutex<Queue>>,
    }

    impl FakeTrigger {
        fn ack(&self, id: usize) {
            lock(&self.queue).acked.insert(id);
        }

        /// Back to the queue, as a visibility timeout would.
        fn release(&self, ids: impl IntoIterator<Item = usize>) {
            let mut q = lock(&self.queue);
            for id in ids {
                if !q.acked.contains(&id) {
                    q.ready.push_back(id);
                }
            }
        }
    }

    #[async_trait]
    impl EventTrigger for FakeTrigger {
        async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
            let mut in_flight: InFlight<usize> = InFlight::new(16);
            let result = loop {
                let next = lock(&self.queue).ready.pop_front();
                let Some(id) = next else {
                    tokio::select! {
                        biased;
                        _ = ctx.cancel.cancelled() => break Ok(()),
                        Some(Settled { token, outcome }) = in_flight.next() => match outcome {
                            Ok(_) => self.ack(token),
                            Err(e) => {
                                if self.flaw == Flaw::AcksRefused {
                                    self.ack(token);
                                }
                                self.release([token]);
                                break Err(e.into());
                            }
                        },
                        _ = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                    continue;
                };
                let key = {
                    let mut q = lock(&self.queue);
                    q.deliveries += 1;
                    match self.flaw {
                        Flaw::NewKeys => format!("fake:{id}:{}", q.deliveries),
                        _ => format!("fake:{id}"),
                    }
                };
                let event = Event::new(json!({ "id": id }), key);
                if self.flaw == Flaw::IgnoresCancel {
                    in_flight.submit(&ctx.sink, event, id).await?;
                } else {
                    tokio::select! {
                        biased;
                        _ = ctx.cancel.cancelled() => {
                            self.release([id]);
                            break Ok(());
                        }
                        submitted = in_flight.submit(&ctx.sink, event, id) => submitted?,
                    }
                }
                if self.flaw == Flaw::AcksOnSubmit {
                    self.ack(id);
                }
            };
            let drained = in_flight
                .drain(tokio::time::Instant::now() + Duration::from_secs(1))
                .await;
            for s in drained.settled {
                match s.outcome {
                    Ok(_) => self.ack(s.token),
                    Err(_) => self.release([s.token]),
                }
            }
            self.release(drained.unsettled);
            result
        }
    }

    #[async_trait]
    impl ConformanceSource for Fake {
        fn name(&self) -> String {
            format!("fake ({:?})", self.flaw)
        }

        async fn fresh(&mut self) -> Result<(), String> {
            self.queue = Arc::default();
            Ok(())
        }

        fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
            Ok(Box::new(FakeTrigger {
                flaw: self.flaw,
                queue: self.queue.clone(),
            }))
        }

        async fn put(&mut self, n: usize) -> Result<(), String> {
            let mut q = lock(&self.queue);
            for _ in 0..n {
                let id = q.next;
                q.next += 1;
                q.ready.push_back(id);
            }
            Ok(())
        }

        async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
            Ok(lock(&self.queue).acked.len())
        }

        fn timing(&self) -> Timing {
            Timing {
                arrival: Duration::from_secs(2),
                ack: Duration::from_millis(500),
                redelivery: Duration::ZERO,
                stop: Duration::from_secs(3),
            }
        }
    }

    async fn failed(flaw: Flaw) -> Vec<Property> {
        match run_conformance(&mut Fake::new(flaw)).await {
            Ok(()) => Vec::new(),
            Err(ConformanceFailures(failures)) => {
                let mut properties: Vec<Property> = failures.iter().map(|f| f.property).collect();
                properties.dedup();
                properties
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_conforming_source_passes() {
        if let Err(e) = run_conformance(&mut Fake::new(Flaw::None)).await {
            panic!("{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn each_broken_rule_is_named() {
        // Acknowledged at once, a refused message is also gone for good.
        assert!(failed(Flaw::AcksOnSubmit)
            .await
            .contains(&Property::NoAckBeforeCommit));
        assert!(failed(Flaw::AcksRefused)
            .await
            .contains(&Property::NoAckBeforeCommit));
        assert_eq!(failed(Flaw::NewKeys).await, vec![Property::DedupKeyKept]);
        assert_eq!(
            failed(Flaw::IgnoresCancel).await,
            vec![Property::StopWithinDeadline]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_say_which_source_and_what() {
        let err = run_conformance(&mut Fake::new(Flaw::AcksOnSubmit))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("fake (AcksOnSubmit): never acknowledges before Committed"),
            "{text}"
        );
    }
}
