//! The running time triggers: sleep until the moment by the wall clock, then fire once. This
//! module owns the wait; it must not emit more than one event per run, nor outlive its cancel.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::json;
use triggerer_sdk::{
    fire_once, CancellationToken, Event, EventTrigger, TriggerContext, TriggerError,
};

use crate::{format_moment, params};

/// The longest the wait sleeps before it looks at the wall clock again: after a suspend, or a
/// clock set forward, a trigger fires at most this late.
pub const MAX_NAP: Duration = Duration::from_secs(30);

/// A running `time.DateTimeTrigger`.
#[derive(Debug, Clone)]
pub struct DateTimeTrigger {
    moment: DateTime<Utc>,
}

impl DateTimeTrigger {
    pub fn new(moment: DateTime<Utc>) -> Self {
        Self { moment }
    }
}

/// A running `time.TimeDeltaTrigger`.
#[derive(Debug, Clone)]
pub struct TimeDeltaTrigger {
    delta: Duration,
}

impl TimeDeltaTrigger {
    pub fn new(delta: Duration) -> Self {
        Self { delta }
    }
}

#[async_trait]
impl EventTrigger for DateTimeTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        fire_at(self.moment, ctx).await
    }
}

#[async_trait]
impl EventTrigger for TimeDeltaTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let moment = params::add(Utc::now(), self.delta).ok_or_else(|| {
            TriggerError::failed(format!(
                "delta {} ends after the last representable moment",
                humantime::format_duration(self.delta)
            ))
        })?;
        fire_at(moment, ctx).await
    }
}

/// Waits for `moment`, then fires; returns `Ok` at once when cancelled first.
async fn fire_at(moment: DateTime<Utc>, ctx: TriggerContext) -> Result<(), TriggerError> {
    if !sleep_until(moment, &ctx.cancel).await {
        return Ok(());
    }
    let shown = format_moment(moment);
    let event = Event::new(json!({ "moment": shown }), format!("moment:{shown}"));
    fire_once(ctx, event).await
}

/// Sleeps until the wall clock reaches `moment` (`true`), or `cancel` fires (`false`). The
/// time left is taken from the wall clock before every nap, and no nap is longer than
/// [`MAX_NAP`].
async fn sleep_until(moment: DateTime<Utc>, cancel: &CancellationToken) -> bool {
    loop {
        // Negative (the moment has passed) does not convert.
        let left = match (moment - Utc::now()).to_std() {
            Ok(left) if !left.is_zero() => left,
            _ => return true,
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return false,
            () = tokio::time::sleep(left.min(MAX_NAP)) => {}
        }
    }
}
