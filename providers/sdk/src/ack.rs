//! Acknowledgement helpers every provider shares, so that the delivery contract (nothing
//! acknowledged before it committed, backpressure rather than loss) is written once:
//!
//! - [`InFlight`]: the deliveries a trigger is waiting on, bounded by count, settling in any
//!   order, each carrying the provider's own token (a receipt handle, an offset, a path);
//! - [`Watermark`]: for offset-like sources (Kafka partitions), which offset may be
//!   acknowledged: deliveries settle out of order, offsets are released in order;
//! - [`InFlight::drain`]: on stop, waits for what is in flight up to a deadline and says what
//!   settled and what did not.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::stream::{FuturesUnordered, StreamExt};
use futures::FutureExt;
use tokio::time::Instant;

use crate::{Committed, Delivery, EmitError, Event, EventSink, NotCommitted};

/// A delivery that settled, with the token the provider gave it: acknowledge `token` upstream
/// only if `outcome` is `Ok`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled<T> {
    pub token: T,
    pub outcome: Result<Committed, NotCommitted>,
}

/// A delivery and its token, settling as one.
struct Tagged<T> {
    /// `None` only once the future completed: the token went out with the outcome.
    token: Option<T>,
    delivery: Delivery,
}

// The token is never pinned (it is moved out on completion) and `Delivery` is `Unpin`, so
// this holds for any `T`; it lets callers use tokens that are not `Unpin` themselves.
impl<T> Unpin for Tagged<T> {}

impl<T> Future for Tagged<T> {
    type Output = Settled<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let outcome = match Pin::new(&mut this.delivery).poll(cx) {
            Poll::Ready(outcome) => outcome,
            Poll::Pending => return Poll::Pending,
        };
        match this.token.take() {
            Some(token) => Poll::Ready(Settled { token, outcome }),
            // Polled again after completing; `FuturesUnordered` never does that.
            None => Poll::Pending,
        }
    }
}

/// The deliveries a trigger is waiting on, at most `limit` at a time.
///
/// [`submit`](Self::submit) waits while `limit` deliveries are unsettled: that wait is the
/// trigger's backpressure once the core is slower than the source. What settles meanwhile is
/// kept and handed out first by [`next`](Self::next), so call `next` in the trigger's loop
/// (it resolves at once while some are kept). `submit`, [`reserve`](Self::reserve) and `next`
/// are cancel-safe: dropping them loses no outcome, so they can sit in a `select!` next to the
/// trigger's cancellation.
pub struct InFlight<T> {
    limit: usize,
    pending: FuturesUnordered<Tagged<T>>,
    /// Settled while `reserve` waited for room, not yet handed out.
    settled: VecDeque<Settled<T>>,
}

impl<T> std::fmt::Debug for InFlight<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlight")
            .field("limit", &self.limit)
            .field("unsettled", &self.pending.len())
            .field("settled", &self.settled.len())
            .finish()
    }
}

impl<T> InFlight<T> {
    /// A set holding at most `limit` unsettled deliveries (at least one).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            pending: FuturesUnordered::new(),
            settled: VecDeque::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Deliveries not settled yet.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Nothing unsettled and nothing settled left to hand out.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.settled.is_empty()
    }

    /// Whether another delivery fits without waiting.
    pub fn has_room(&self) -> bool {
        self.pending.len() < self.limit
    }

    /// Adds a delivery the caller obtained itself, without waiting for room: for one source
    /// message handed to several sinks, where the caller checked [`has_room`](Self::has_room)
    /// once per message.
    pub fn push(&mut self, token: T, delivery: Delivery) {
        self.pending.push(Tagged {
            token: Some(token),
            delivery,
        });
    }

    /// Waits until another delivery fits. What settles meanwhile is kept for
    /// [`next`](Self::next).
    pub async fn reserve(&mut self) {
        while self.pending.len() >= self.limit {
            match self.pending.next().await {
                Some(settled) => self.settled.push_back(settled),
                None => break,
            }
        }
    }

    /// Waits for room, queues `event` on `sink` (waiting while the core's queue is full) and
    /// tracks its delivery under `token`. If this future is dropped before it returns, the
    /// event was not queued.
    pub async fn submit(
        &mut self,
        sink: &EventSink,
        event: Event,
        token: T,
    ) -> Result<(), EmitError> {
        self.reserve().await;
        let delivery = sink.submit(event).await?;
        self.push(token, delivery);
        Ok(())
    }

    /// The next delivery to settle, in whatever order they settle; `None` at once when nothing
    /// is in flight (so a `Some(..)` pattern in `select!` disables the branch).
    pub async fn next(&mut self) -> Option<Settled<T>> {
        if let Some(settled) = self.settled.pop_front() {
            return Some(settled);
        }
        self.pending.next().await
    }

    /// A delivery that already settled, without waiting.
    pub fn try_next(&mut self) -> Option<Settled<T>> {
        if let Some(settled) = self.settled.pop_front() {
            return Some(settled);
        }
        self.pending.next().now_or_never().flatten()
    }

    /// The tokens of the unsettled deliveries, to act on what is still waiting (extend an SQS
    /// message's visibility, say).
    pub fn unsettled_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.pending.iter_mut().filter_map(|t| t.token.as_mut())
    }

    /// Waits for the deliveries in flight until `deadline`, for a trigger that stops: the
    /// settled ones (acknowledge the committed among them) and the tokens of those still
    /// unanswered (leave them to the source's redelivery). The unanswered deliveries are
    /// dropped; a late commit of theirs is only acknowledged by the next run.
    pub async fn drain(mut self, deadline: Instant) -> Drained<T> {
        let mut settled: Vec<Settled<T>> = self.settled.drain(..).collect();
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.pending.next()).await {
                Ok(Some(s)) => settled.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let unsettled = self.pending.into_iter().filter_map(|t| t.token).collect();
        Drained { settled, unsettled }
    }
}

/// What [`InFlight::drain`] saw by its deadline.
#[derive(Debug)]
pub struct Drained<T> {
    /// Settled before the deadline (or before the drain), committed or not.
    pub settled: Vec<Settled<T>>,
    /// Still unanswered at the deadline.
    pub unsettled: Vec<T>,
}

impl<T> Drained<T> {
    /// Every delivery was answered.
    pub fn is_complete(&self) -> bool {
        self.unsettled.is_empty()
    }

    /// The tokens of the committed deliveries: what may be acknowledged now.
    pub fn committed(&self) -> impl Iterator<Item = &T> {
        self.settled
            .iter()
            .filter(|s| s.outcome.is_ok())
            .map(|s| &s.token)
    }

    /// How many settled without being committed.
    pub fn refused(&self) -> usize {
        self.settled.iter().filter(|s| s.outcome.is_err()).count()
    }
}

/// One tracked delivery of an offset, to hand back to [`Watermark::commit`] or
/// [`Watermark::refuse`]. It belongs to its key's state as of [`Watermark::track`]: after a
/// [`Watermark::reset`] of that key it no longer counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    offset: i64,
    epoch: u64,
    /// Tells this delivery from the offset's others, so that a ticket handed back twice
    /// counts once.
    serial: u64,
}

impl Ticket {
    pub fn offset(&self) -> i64 {
        self.offset
    }
}

/// For offset-like sources: per key (a Kafka topic and partition), the offset from which the
/// source must redeliver, advanced only over offsets whose every delivery committed, and only
/// in order.
///
/// The release point is Kafka's committed offset: one past the last offset of the leading run
/// of tracked offsets that all committed. Offsets never tracked (gaps: compaction, transaction
/// markers, messages before this consumer's start) do not hold it back. It never moves back:
/// an offset tracked again below it (a redelivery after a rebalance or a restart) was already
/// committed once, and its new deliveries are not waited for. An offset tracked again at or
/// above it (redelivered while its first delivery is still settling) is released only once
/// every one of its deliveries committed. A refused delivery stops the key at its offset until
/// [`reset`](Self::reset).
#[derive(Debug)]
pub struct Watermark<K> {
    lanes: HashMap<K, Lane>,
    /// Source of lane epochs: every new or reset lane gets a fresh one, so a ticket from
    /// before a reset (or from a forgotten lane) never matches again.
    epochs: u64,
    serials: u64,
}

#[derive(Debug)]
struct Lane {
    /// One past the last released offset; `None` before the first release.
    next: Option<i64>,
    /// Offset → the serials of its deliveries not committed yet (empty: all committed, an
    /// earlier offset is not). Mostly one: a message for one watcher.
    pending: BTreeMap<i64, Vec<u64>>,
    /// The lowest offset with a refused delivery: nothing from it on is released.
    refused: Option<i64>,
    epoch: u64,
}

impl Lane {
    fn new(epoch: u64) -> Self {
        Self {
            next: None,
            pending: BTreeMap::new(),
            refused: None,
            epoch,
        }
    }

    fn is_released(&self, offset: i64) -> bool {
        self.next.is_some_and(|next| offset < next)
    }

    /// Releases the leading run of fully committed offsets; the new release point if it moved.
    fn release(&mut self) -> Option<i64> {
        let mut advanced = None;
        while let Some((&offset, waiting)) = self.pending.first_key_value() {
            if !waiting.is_empty() || self.refused.is_some_and(|r| offset >= r) {
                break;
            }
            self.pending.remove(&offset);
            advanced = Some(offset.saturating_add(1));
        }
        let next = advanced?;
        if self.next.is_some_and(|n| next <= n) {
            return None;
        }
        self.next = Some(next);
        Some(next)
    }
}

impl<K> Default for Watermark<K> {
    fn default() -> Self {
        Self {
            lanes: HashMap::new(),
            epochs: 0,
            serials: 0,
        }
    }
}

impl<K: Eq + Hash + Clone> Watermark<K> {
    pub fn new() -> Self {
        Self::default()
    }

    fn lane(&mut self, key: K) -> &mut Lane {
        let epochs = &mut self.epochs;
        self.lanes.entry(key).or_insert_with(|| {
            *epochs += 1;
            Lane::new(*epochs)
        })
    }

    /// One delivery of `offset` handed out: the key is held at `offset` until it commits.
    /// Call once per delivery (a message handed to three watchers is tracked three times).
    pub fn track(&mut self, key: K, offset: i64) -> Ticket {
        self.serials += 1;
        let serial = self.serials;
        let lane = self.lane(key);
        if !lane.is_released(offset) {
            lane.pending.entry(offset).or_default().push(serial);
        }
        Ticket {
            offset,
            epoch: lane.epoch,
            serial,
        }
    }

    /// An offset nothing waits for (no watcher wanted the message): released as soon as the
    /// offsets before it are. Returns the new release point if it moved.
    pub fn pass(&mut self, key: K, offset: i64) -> Option<i64> {
        let lane = self.lane(key);
        if lane.is_released(offset) {
            return None;
        }
        lane.pending.entry(offset).or_default();
        lane.release()
    }

    /// A delivery committed. Returns the new release point (the offset to resume from) if it
    /// moved; acknowledge up to there.
    pub fn commit(&mut self, key: &K, ticket: Ticket) -> Option<i64> {
        let lane = self.lanes.get_mut(key)?;
        if lane.epoch != ticket.epoch {
            return None;
        }
        let waiting = lane.pending.get_mut(&ticket.offset)?;
        // Absent: released already (a redelivery below the release point), or handed back
        // before.
        let at = waiting.iter().position(|s| *s == ticket.serial)?;
        waiting.swap_remove(at);
        lane.release()
    }

    /// A delivery was not committed: nothing from its offset on is released for this key
    /// until [`reset`](Self::reset), whatever commits later.
    pub fn refuse(&mut self, key: &K, ticket: Ticket) {
        let Some(lane) = self.lanes.get_mut(key) else {
            return;
        };
        if lane.epoch != ticket.epoch || lane.is_released(ticket.offset) {
            // An earlier delivery of the same offset committed: nothing is lost.
            return;
        }
        lane.refused = Some(lane.refused.map_or(ticket.offset, |r| r.min(ticket.offset)));
    }

    /// The source rewinds this key (a seek back to the committed offset): what was pending or
    /// refused is forgotten, the deliveries still settling no longer count, and the offsets are
    /// tracked again as they come. The release point stays.
    pub fn reset(&mut self, key: &K) {
        if let Some(lane) = self.lanes.get_mut(key) {
            self.epochs += 1;
            lane.epoch = self.epochs;
            lane.pending.clear();
            lane.refused = None;
        }
    }

    /// Drops the key altogether (a partition this consumer no longer owns): its release point
    /// starts afresh if it is tracked again, and tickets from before no longer count.
    pub fn forget(&mut self, key: &K) {
        self.lanes.remove(key);
    }

    /// The key's release point: the offset the source must redeliver from.
    pub fn released(&self, key: &K) -> Option<i64> {
        self.lanes.get(key).and_then(|lane| lane.next)
    }

    /// Offsets tracked and not released yet, over all keys.
    pub fn pending(&self) -> usize {
        self.lanes.values().map(|lane| lane.pending.len()).sum()
    }

    /// Whether a refused delivery holds the key.
    pub fn is_refused(&self, key: &K) -> bool {
        self.lanes
            .get(key)
            .is_some_and(|lane| lane.refused.is_some())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::Envelope;

    const OK: Result<Committed, NotCommitted> = Ok(Committed { inserted: 1 });

    fn sink(capacity: usize) -> (EventSink, mpsc::Receiver<Envelope>) {
        let (tx, rx) = mpsc::channel(capacity);
        (EventSink::new(crate::TriggerId::new(1), "test", tx), rx)
    }

    fn event(key: &str) -> Event {
        Event::new(json!(key), key)
    }

    #[tokio::test(start_paused = true)]
    async fn deliveries_settle_in_any_order_with_their_tokens() {
        let (sink, mut rx) = sink(8);
        let mut set = InFlight::new(8);
        for token in ["a", "b", "c"] {
            set.submit(&sink, event(token), token).await.unwrap();
        }
        let envelopes: Vec<Envelope> = (0..3).map(|_| rx.try_recv().unwrap()).collect();
        assert_eq!(set.len(), 3);
        assert!(set.try_next().is_none(), "nothing answered yet");
        let mut envelopes = envelopes.into_iter();
        let (a, b, c) = (
            envelopes.next().unwrap(),
            envelopes.next().unwrap(),
            envelopes.next().unwrap(),
        );
        c.ack.send(OK).unwrap();
        assert_eq!(
            set.next().await,
            Some(Settled {
                token: "c",
                outcome: OK
            })
        );
        a.ack.send(Err(NotCommitted::Fenced)).unwrap();
        assert_eq!(
            set.next().await,
            Some(Settled {
                token: "a",
                outcome: Err(NotCommitted::Fenced)
            })
        );
        drop(b); // the writer stopped without answering
        assert_eq!(
            set.next().await,
            Some(Settled {
                token: "b",
                outcome: Err(NotCommitted::WriterGone)
            })
        );
        assert!(set.is_empty());
        assert_eq!(set.next().await, None, "an empty set ends at once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_set_makes_submit_wait_and_keeps_what_settled_meanwhile() {
        let (sink, mut rx) = sink(8);
        let mut set = InFlight::new(2);
        set.submit(&sink, event("1"), 1).await.unwrap();
        set.submit(&sink, event("2"), 2).await.unwrap();
        assert!(!set.has_room());
        {
            let third = set.submit(&sink, event("3"), 3);
            tokio::pin!(third);
            assert!(
                futures::poll!(&mut third).is_pending(),
                "backpressure, not loss"
            );
            let first = rx.recv().await.unwrap();
            first.ack.send(OK).unwrap();
            third.await.unwrap();
        }
        assert_eq!(set.len(), 2);
        // What settled while submit waited comes out first.
        assert_eq!(
            set.try_next(),
            Some(Settled {
                token: 1,
                outcome: OK
            })
        );
        assert!(set.try_next().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_submit_dropped_while_waiting_for_room_loses_no_outcome() {
        let (sink, mut rx) = sink(8);
        let mut set = InFlight::new(1);
        set.submit(&sink, event("1"), 1).await.unwrap();
        let first = rx.recv().await.unwrap();
        let answer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            first.ack.send(OK).unwrap();
        });
        // Cancelled after the first delivery settled inside reserve(), before anything else.
        let raced = tokio::time::timeout(Duration::from_secs(2), async {
            set.reserve().await;
            std::future::pending::<()>().await
        })
        .await;
        assert!(raced.is_err());
        answer.await.unwrap();
        assert_eq!(
            set.next().await,
            Some(Settled {
                token: 1,
                outcome: OK
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_sink_makes_submit_wait_too() {
        let (sink, mut rx) = sink(1);
        let mut set = InFlight::new(10);
        set.submit(&sink, event("1"), 1).await.unwrap();
        {
            let second = set.submit(&sink, event("2"), 2);
            tokio::pin!(second);
            assert!(futures::poll!(&mut second).is_pending());
            rx.recv().await.unwrap();
            second.await.unwrap();
        }
        drop(rx);
        let err = set.submit(&sink, event("3"), 3).await.unwrap_err();
        assert_eq!(err, EmitError::NotCommitted(NotCommitted::WriterGone));
        assert_eq!(set.len(), 2, "the refused submit tracks nothing");
    }

    #[tokio::test(start_paused = true)]
    async fn unsettled_tokens_can_be_updated_in_place() {
        let (sink, mut rx) = sink(8);
        let mut set = InFlight::new(8);
        set.submit(&sink, event("a"), ("a", 0)).await.unwrap();
        set.submit(&sink, event("b"), ("b", 0)).await.unwrap();
        rx.recv().await.unwrap().ack.send(OK).unwrap();
        assert_eq!(set.next().await.map(|s| s.token), Some(("a", 0)));
        for token in set.unsettled_mut() {
            token.1 += 1;
        }
        let b = rx.recv().await.unwrap();
        b.ack.send(OK).unwrap();
        assert_eq!(set.next().await.map(|s| s.token), Some(("b", 1)));
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_until_its_deadline_and_reports_what_did_not_settle() {
        let (sink, mut rx) = sink(8);
        let mut set = InFlight::new(8);
        for token in 1..=4 {
            set.submit(&sink, event(&token.to_string()), token)
                .await
                .unwrap();
        }
        let answers: Vec<Envelope> = (0..4).map(|_| rx.try_recv().unwrap()).collect();
        let mut answers = answers.into_iter();
        let (one, two, three, four) = (
            answers.next().unwrap(),
            answers.next().unwrap(),
            answers.next().unwrap(),
            answers.next().unwrap(),
        );
        one.ack.send(OK).unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            two.ack.send(Err(NotCommitted::WriterGone)).unwrap();
            tokio::time::sleep(Duration::from_secs(1)).await;
            three.ack.send(OK).unwrap();
            // `four` is answered only after the deadline.
            tokio::time::sleep(Duration::from_secs(10)).await;
            let _ = four.ack.send(OK);
        });
        let start = Instant::now();
        let drained = set.drain(start + Duration::from_secs(5)).await;
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(5),
            "it waits up to the deadline"
        );
        let mut committed: Vec<i32> = drained.committed().copied().collect();
        committed.sort_unstable();
        assert_eq!(committed, vec![1, 3]);
        assert_eq!(drained.refused(), 1);
        assert_eq!(drained.unsettled, vec![4]);
        assert!(!drained.is_complete());
    }

    #[tokio::test(start_paused = true)]
    async fn drain_ends_as_soon_as_everything_settled() {
        let (sink, mut rx) = sink(8);
        let mut set = InFlight::new(8);
        set.submit(&sink, event("1"), 1).await.unwrap();
        let first = rx.recv().await.unwrap();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            first.ack.send(OK).unwrap();
        });
        let start = Instant::now();
        let drained = set.drain(start + Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(300));
        assert!(drained.is_complete());
        assert_eq!(drained.committed().count(), 1);
    }

    type Partition = (&'static str, i32);
    const P0: Partition = ("t", 0);
    const P1: Partition = ("t", 1);

    #[test]
    fn offsets_settle_out_of_order_and_release_in_order() {
        let mut marks = Watermark::new();
        let tickets: Vec<Ticket> = (0..4).map(|o| marks.track(P0, o)).collect();
        assert_eq!(
            marks.commit(&P0, tickets[2]),
            None,
            "0 and 1 are not committed"
        );
        assert_eq!(marks.commit(&P0, tickets[1]), None);
        assert_eq!(marks.released(&P0), None);
        // Kafka's committed offset: one past the last contiguous commit.
        assert_eq!(marks.commit(&P0, tickets[0]), Some(3));
        assert_eq!(marks.commit(&P0, tickets[3]), Some(4));
        assert_eq!(marks.released(&P0), Some(4));
        assert_eq!(marks.pending(), 0);
    }

    #[test]
    fn keys_are_independent() {
        let mut marks = Watermark::new();
        let a = marks.track(P0, 0);
        let b = marks.track(P1, 0);
        assert_eq!(marks.commit(&P1, b), Some(1));
        assert_eq!(marks.released(&P0), None);
        assert_eq!(marks.commit(&P0, a), Some(1));
    }

    #[test]
    fn gaps_do_not_hold_the_release_point() {
        let mut marks = Watermark::new();
        // A compacted partition: 5, 9, 10 (6–8 gone), starting mid-partition.
        let t5 = marks.track(P0, 5);
        let t9 = marks.track(P0, 9);
        let t10 = marks.track(P0, 10);
        assert_eq!(marks.commit(&P0, t10), None);
        assert_eq!(marks.commit(&P0, t9), None);
        assert_eq!(marks.commit(&P0, t5), Some(11));
    }

    #[test]
    fn every_delivery_of_an_offset_must_commit() {
        let mut marks = Watermark::new();
        // One message, three watchers.
        let tickets: Vec<Ticket> = (0..3).map(|_| marks.track(P0, 7)).collect();
        assert_eq!(marks.commit(&P0, tickets[0]), None);
        assert_eq!(marks.commit(&P0, tickets[1]), None);
        // A ticket handed back twice counts once.
        assert_eq!(marks.commit(&P0, tickets[1]), None);
        assert_eq!(marks.commit(&P0, tickets[2]), Some(8));
    }

    #[test]
    fn an_offset_nobody_waits_for_passes_in_order() {
        let mut marks = Watermark::new();
        let t0 = marks.track(P0, 0);
        assert_eq!(marks.pass(P0, 1), None, "0 is not committed");
        assert_eq!(marks.commit(&P0, t0), Some(2));
        assert_eq!(marks.pass(P0, 2), Some(3));
    }

    #[test]
    fn a_refusal_holds_the_key_whatever_commits_later() {
        let mut marks = Watermark::new();
        let t0 = marks.track(P0, 0);
        let t1 = marks.track(P0, 1);
        let t2 = marks.track(P0, 2);
        marks.refuse(&P0, t1);
        assert!(marks.is_refused(&P0));
        assert_eq!(marks.commit(&P0, t2), None);
        assert_eq!(marks.commit(&P0, t0), Some(1), "up to the refused offset");
        assert_eq!(marks.pass(P0, 3), None);
        assert_eq!(marks.released(&P0), Some(1));
    }

    #[test]
    fn a_redelivery_below_the_release_point_is_not_waited_for() {
        let mut marks = Watermark::new();
        let first: Vec<Ticket> = (0..3).map(|o| marks.track(P0, o)).collect();
        for t in &first {
            marks.commit(&P0, *t);
        }
        assert_eq!(marks.released(&P0), Some(3));
        // A rebalance: the group's committed offset lagged; 1 and 2 come again, then 3.
        let again1 = marks.track(P0, 1);
        let again2 = marks.track(P0, 2);
        let t3 = marks.track(P0, 3);
        assert_eq!(marks.commit(&P0, t3), Some(4), "1 and 2 committed before");
        // Their late answers change nothing, refused or not; it never moves back.
        marks.refuse(&P0, again1);
        assert!(!marks.is_refused(&P0));
        assert_eq!(marks.commit(&P0, again2), None);
        assert_eq!(marks.released(&P0), Some(4));
    }

    #[test]
    fn a_redelivery_while_in_flight_waits_for_both() {
        let mut marks = Watermark::new();
        let first = marks.track(P0, 0);
        let again = marks.track(P0, 0);
        assert_eq!(marks.commit(&P0, again), None);
        assert_eq!(marks.commit(&P0, first), Some(1));
    }

    #[test]
    fn a_reset_forgets_what_was_pending_and_ignores_stale_tickets() {
        let mut marks = Watermark::new();
        let t0 = marks.track(P0, 0);
        assert_eq!(marks.commit(&P0, t0), Some(1));
        let t1 = marks.track(P0, 1);
        let t2 = marks.track(P0, 2);
        marks.refuse(&P0, t1);
        // The consumer seeks back to the committed offset, 1.
        marks.reset(&P0);
        assert!(!marks.is_refused(&P0));
        let again1 = marks.track(P0, 1);
        // The old delivery of 2 answers late: it no longer counts, so it cannot release 2
        // before its redelivery committed.
        assert_eq!(marks.commit(&P0, t2), None);
        let again2 = marks.track(P0, 2);
        assert_eq!(marks.commit(&P0, again2), None);
        assert_eq!(marks.commit(&P0, again1), Some(3));
    }

    #[test]
    fn a_forgotten_key_starts_afresh_and_old_tickets_do_not_match() {
        let mut marks = Watermark::new();
        let old = marks.track(P0, 5);
        marks.forget(&P0);
        assert_eq!(marks.released(&P0), None);
        let new = marks.track(P0, 5);
        assert_ne!(old, new);
        assert_eq!(marks.commit(&P0, old), None);
        assert_eq!(marks.commit(&P0, new), Some(6));
    }
}
