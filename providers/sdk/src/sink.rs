//! The one way events leave a trigger: a bounded channel to the core's writer, and a
//! [`Delivery`] per event that resolves only after the database commit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};

use crate::{Committed, EmitError, Event, NotCommitted, TriggerId};

/// An event on its way to the writer, with the channel its outcome goes back on.
#[derive(Debug)]
pub struct Envelope {
    pub trigger_id: TriggerId,
    /// The short name of the provider whose trigger emitted it ([`crate::Provider::name`]),
    /// for the core's per-provider metrics.
    pub provider: &'static str,
    pub event: Event,
    pub ack: oneshot::Sender<Result<Committed, NotCommitted>>,
}

/// Handed to each running trigger. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventSink {
    trigger_id: TriggerId,
    provider: &'static str,
    tx: mpsc::Sender<Envelope>,
}

impl EventSink {
    /// A sink for `trigger_id`, a trigger of the provider named `provider`
    /// ([`crate::Provider::name`]), feeding `tx`. The core owns the receiving end.
    pub fn new(trigger_id: TriggerId, provider: &'static str, tx: mpsc::Sender<Envelope>) -> Self {
        Self {
            trigger_id,
            provider,
            tx,
        }
    }

    pub fn trigger_id(&self) -> TriggerId {
        self.trigger_id
    }

    /// The short name of the provider whose trigger this sink serves.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Queues `event` and returns at once with a [`Delivery`] to await. Waits while the queue is
    /// full (backpressure). Lets a trigger keep many events in flight and acknowledge each as
    /// its delivery resolves.
    pub async fn submit(&self, event: Event) -> Result<Delivery, EmitError> {
        let (ack, rx) = oneshot::channel();
        let envelope = Envelope {
            trigger_id: self.trigger_id,
            provider: self.provider,
            event,
            ack,
        };
        self.tx
            .send(envelope)
            .await
            .map_err(|_| NotCommitted::WriterGone)?;
        Ok(Delivery(rx))
    }

    /// Queues `event` and waits until its transaction committed.
    pub async fn emit(&self, event: Event) -> Result<Committed, EmitError> {
        Ok(self.submit(event).await?.await?)
    }
}

/// Resolves once the event's asset events are committed (or definitely will not be).
#[derive(Debug)]
#[must_use = "an event must not be acknowledged before its delivery resolved"]
pub struct Delivery(oneshot::Receiver<Result<Committed, NotCommitted>>);

impl Future for Delivery {
    type Output = Result<Committed, NotCommitted>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|outcome| match outcome {
            Ok(result) => result,
            // The writer dropped the ack without answering: it stopped mid-batch.
            Err(_) => Err(NotCommitted::WriterGone),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn a_delivery_resolves_only_when_the_writer_answers() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = EventSink::new(crate::TriggerId::new(7), "test", tx);
        let sent = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let event = Event::new(json!(1), "k").with_source_time(sent);
        let mut delivery = sink.submit(event).await.unwrap();
        let envelope = rx.recv().await.unwrap();
        assert_eq!(envelope.event.source_time, Some(sent));
        assert_eq!(envelope.trigger_id, crate::TriggerId::new(7));
        assert_eq!(envelope.provider, "test");
        assert_eq!(envelope.event.dedup_key, "k");
        // Not committed yet: the delivery is still pending.
        assert!(futures::poll!(&mut delivery).is_pending());
        envelope.ack.send(Ok(Committed { inserted: 2 })).unwrap();
        assert_eq!(delivery.await, Ok(Committed { inserted: 2 }));
    }

    #[tokio::test]
    async fn a_dropped_answer_or_writer_is_not_a_commit() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = EventSink::new(crate::TriggerId::new(1), "test", tx);
        let delivery = sink.submit(Event::new(json!(1), "k")).await.unwrap();
        drop(rx.recv().await.unwrap()); // the writer stopped mid-batch
        assert_eq!(delivery.await, Err(NotCommitted::WriterGone));
        drop(rx);
        let err = sink.emit(Event::new(json!(2), "k2")).await.unwrap_err();
        assert_eq!(err, EmitError::NotCommitted(NotCommitted::WriterGone));
    }

    #[tokio::test]
    async fn a_full_queue_makes_submit_wait() {
        let (tx, mut rx) = mpsc::channel(1);
        let sink = EventSink::new(crate::TriggerId::new(1), "test", tx);
        let _first = sink.submit(Event::new(json!(1), "a")).await.unwrap();
        let second = sink.submit(Event::new(json!(2), "b"));
        tokio::pin!(second);
        assert!(
            futures::poll!(&mut second).is_pending(),
            "backpressure, not loss"
        );
        rx.recv().await.unwrap();
        assert!(second.await.is_ok());
    }
}
