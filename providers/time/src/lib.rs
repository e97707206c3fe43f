//! The `time` provider: two one-shot triggers for deferred tasks, the triggerer's take on
//! Airflow's `DateTimeTrigger` and `TimeDeltaTrigger`. It owns their kwargs and the wait itself;
//! it must not repeat (both are [`TriggerKind::OneShot`]: one event, then they wait to be
//! removed), keep any state between starts, or depend on the triggerer core.
//!
//! Classpaths:
//! - `time.DateTimeTrigger` (canonical), `airflow.triggers.temporal.DateTimeTrigger`,
//!   `airflow.providers.standard.triggers.temporal.DateTimeTrigger` ([`DateTimeProvider`]);
//! - `time.TimeDeltaTrigger` (canonical), `airflow.triggers.temporal.TimeDeltaTrigger`,
//!   `airflow.providers.standard.triggers.temporal.TimeDeltaTrigger` ([`TimeDeltaProvider`]).
//!
//! | trigger           | kwarg    | type   | meaning |
//! |-------------------|----------|--------|---------|
//! | `DateTimeTrigger` | `moment` | string | An RFC 3339 date and time with its UTC offset (`2025-06-01T12:00:00Z`, `2025-06-01T14:00:00+02:00`); a TOML datetime with an offset is one too. Fires at that moment, at once if it has passed. |
//! | `TimeDeltaTrigger`| `delta`  | string | A duration such as `30s`, `5m`, `1h`, `2d` or `1h30m` (at most 100 years). Fires that long after the trigger starts. |
//!
//! No other kwarg is accepted (Airflow's `end_from_trigger` included: a deferred task resumes
//! here in any case).
//!
//! When a task defers on a `TimeDeltaTrigger`, the core stores it as a `DateTimeTrigger` with
//! the absolute moment (now + `delta`, see [`moment_kwargs`]), so that a triggerer restart, or
//! the trigger moving to another triggerer, does not start the delay again. A
//! `TimeDeltaTrigger` run as such counts from each start of its run.
//!
//! Both fire with [`triggerer_sdk::fire_once`]: payload `{"moment": "<RFC 3339, UTC>"}`
//! (for a `TimeDeltaTrigger`, the moment its delay ended) and dedup key `moment:<the same>`.
//!
//! The wait follows the wall clock: the time left is computed from it when the trigger starts,
//! and computed again each time the trigger wakes, which it does at least every
//! [`MAX_NAP`] (tokio's timers run on the monotonic clock, which stands still while the machine
//! is suspended, and does not follow a clock set forward or back). A cancel ends the wait at
//! once.

mod params;
mod trigger;

#[cfg(test)]
mod tests;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use triggerer_sdk::{parse_params, EventTrigger, KwargsError, TriggerKind, TypedProvider};

pub use params::{DateTimeParams, TimeDeltaParams, MAX_DELTA};
pub use trigger::{DateTimeTrigger, TimeDeltaTrigger, MAX_NAP};

/// The classpaths of [`DateTimeProvider`], canonical first.
pub const DATE_TIME_CLASSPATHS: &[&str] = &[
    "time.DateTimeTrigger",
    "airflow.triggers.temporal.DateTimeTrigger",
    "airflow.providers.standard.triggers.temporal.DateTimeTrigger",
];

/// The classpaths of [`TimeDeltaProvider`], canonical first.
pub const TIME_DELTA_CLASSPATHS: &[&str] = &[
    "time.TimeDeltaTrigger",
    "airflow.triggers.temporal.TimeDeltaTrigger",
    "airflow.providers.standard.triggers.temporal.TimeDeltaTrigger",
];

/// `time.DateTimeTrigger`: fires once at a moment.
#[derive(Debug, Default, Clone, Copy)]
pub struct DateTimeProvider;

/// `time.TimeDeltaTrigger`: fires once, a duration after it starts.
#[derive(Debug, Default, Clone, Copy)]
pub struct TimeDeltaProvider;

impl TypedProvider for DateTimeProvider {
    type Params = DateTimeParams;
    const NAME: &'static str = "datetime";
    const KIND: TriggerKind = TriggerKind::OneShot;
    const CLASSPATHS: &'static [&'static str] = DATE_TIME_CLASSPATHS;
    const HINTS: &'static [(&'static str, &'static str)] = &[("moment", params::MOMENT_HINT)];

    fn build_trigger(&self, params: DateTimeParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(DateTimeTrigger::new(params.moment)))
    }
}

impl TypedProvider for TimeDeltaProvider {
    type Params = TimeDeltaParams;
    const NAME: &'static str = "timedelta";
    const KIND: TriggerKind = TriggerKind::OneShot;
    const CLASSPATHS: &'static [&'static str] = TIME_DELTA_CLASSPATHS;
    const HINTS: &'static [(&'static str, &'static str)] = &[("delta", params::DELTA_HINT)];

    fn build_trigger(&self, params: TimeDeltaParams) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(TimeDeltaTrigger::new(params.delta)))
    }
}

/// A moment as the payload, the dedup key and [`moment_kwargs`] write it: RFC 3339 in UTC
/// (`2025-06-01T12:00:00Z`, fractions of a second only when there are some).
pub fn format_moment(moment: DateTime<Utc>) -> String {
    moment.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The kwargs of the `DateTimeTrigger` that a `TimeDeltaTrigger` with `delta_kwargs`, deferred
/// on at `now`, stands for: `{"moment": now + delta}`. Checks `delta_kwargs` as validation does.
pub fn moment_kwargs(delta_kwargs: &Value, now: DateTime<Utc>) -> Result<Value, KwargsError> {
    let params = parse_params(&TimeDeltaProvider, delta_kwargs)?;
    let moment = params::add(now, params.delta)
        .ok_or_else(|| KwargsError::new("delta", "ends after the last representable moment"))?;
    Ok(json!({ "moment": format_moment(moment) }))
}
