//! The contract between the triggerer core and its providers.
//!
//! A *provider* (one crate under `providers/`) answers to one or more classpaths, validates the
//! kwargs of a trigger without any I/O, and builds an [`EventTrigger`]: repeatable (a watcher,
//! or a deferred task's wait) or, by its [`TriggerKind`], one-shot (a task's wait only); or, as
//! a webhook's, its triggers are [`TriggerKind::Pushed`]: nothing runs them, the core's HTTP
//! server hands it each request ([`PushRequest`]) for the event it stands for. It implements
//! [`TypedProvider`]: its kwargs are a serde type (built from the rules in [`de`]), parsed by
//! one function with errors naming the full path; the core holds it as a [`Provider`]. The core runs every
//! trigger in its own task and hands it a [`TriggerContext`]: an [`EventSink`] to emit through,
//! the trigger's last committed checkpoint, and a cancellation token.
//!
//! Delivery contract, which every provider must keep:
//! - an event is acknowledged upstream (offset stored, message deleted, file marked done) only
//!   after its [`Delivery`] resolved to [`Committed`]: the database transaction holding its asset
//!   events has committed;
//! - every event carries a dedup key that is stable across redeliveries, so a redelivered event
//!   inserts nothing twice;
//! - [`EventSink::submit`] waits while the core's queue is full: that wait *is* backpressure.
//!   Nothing is ever dropped.
//!
//! This crate knows nothing of SQL, brokers or the CLI; providers depend on it and on nothing
//! of the core.

pub mod ack;
pub mod de;
mod error;
mod event;
mod id;
mod kwargs;
mod provider;
mod sensitive;
mod sink;
#[cfg(feature = "testkit")]
pub mod testkit;
mod warning;

pub use ack::{Drained, InFlight, Settled, Ticket, Watermark};
pub use error::{EmitError, KwargsError, NotCommitted, TriggerError};
pub use event::{nul_in_json, Checkpoint, Committed, Event};
pub use id::TriggerId;
pub use kwargs::parse_kwargs;
pub use provider::{
    fire_once, parse_params, EventTrigger, Provider, PushRefusal, PushRefusalKind, PushRequest,
    Refusal, TriggerContext, TriggerKind, TypedProvider,
};
pub use sensitive::{is_sensitive_key, redact_uri, uri_passwords};
pub use sink::{Delivery, Envelope, EventSink};
pub use warning::{Warning, WarningSink};

/// Re-exported so providers and the core agree on one cancellation type.
pub use tokio_util::sync::CancellationToken;
