//! The kwargs of the two time triggers, parsed without I/O (validation runs at `dags sync`):
//! a moment in RFC 3339 with its UTC offset, a delta as a duration string. Each error says what
//! was written and what to write instead. This module must not read the clock: whether a
//! moment has passed is the trigger's business, when it runs.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The longest `delta` accepted, 100 years of 365.25 days (humantime's `y`): longer is a slip,
/// not a wait.
pub const MAX_DELTA: Duration = Duration::from_secs(36_525 * 86_400);

/// What `moment` takes, for the message when it is missing or no string.
pub(crate) const MOMENT_HINT: &str =
    "an RFC 3339 date and time with its UTC offset, such as 2025-06-01T12:00:00Z";

/// What `delta` takes, for the message when it is missing or no string.
pub(crate) const DELTA_HINT: &str = "a duration such as `30s`, `5m`, `1h` or `2d`";

/// Kwargs of `time.DateTimeTrigger`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `moment`, an RFC 3339 date and time such as 2025-06-01T12:00:00Z"
)]
pub struct DateTimeParams {
    /// When to fire.
    #[serde(deserialize_with = "moment")]
    pub moment: DateTime<Utc>,
}

/// Kwargs of `time.TimeDeltaTrigger`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `delta`, a duration such as `30s`, `5m`, `1h` or `2d`"
)]
pub struct TimeDeltaParams {
    /// How long after the trigger starts to fire (at most [`MAX_DELTA`]).
    #[serde(deserialize_with = "delta")]
    pub delta: Duration,
}

/// `at + delta`, or `None` past the last moment chrono represents.
pub(crate) fn add(at: DateTime<Utc>, delta: Duration) -> Option<DateTime<Utc>> {
    at.checked_add_signed(TimeDelta::from_std(delta).ok()?)
}

/// `text` for a message: as written, cut when long (a value pasted into the wrong kwarg).
fn shown(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("`{}…`", &text[..cut]),
        None => format!("`{text}`"),
    }
}

/// An RFC 3339 date and time as UTC; a date and time without an offset is refused with how to
/// add one (Airflow refuses a naive moment too).
pub(crate) fn parse_moment(text: &str) -> Result<DateTime<Utc>, String> {
    let trimmed = text.trim();
    match DateTime::parse_from_rfc3339(trimmed) {
        Ok(moment) => Ok(moment.with_timezone(&Utc)),
        Err(e) => {
            let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
                .iter()
                .any(|format| NaiveDateTime::parse_from_str(trimmed, format).is_ok());
            if naive {
                Err(format!(
                    "{} has no UTC offset; add one, as in `{trimmed}Z` or `{trimmed}+02:00`",
                    shown(text)
                ))
            } else {
                Err(format!(
                    "{} is not an RFC 3339 date and time ({e}); write one such as \
                     `2025-06-01T12:00:00Z`",
                    shown(text)
                ))
            }
        }
    }
}

/// A duration as the core's `parse_duration` reads it, at most [`MAX_DELTA`].
pub(crate) fn parse_delta(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(format!("must be {DELTA_HINT}"));
    }
    let delta = humantime::parse_duration(trimmed).map_err(|e| {
        format!(
            "{} is not a duration ({e}); write one such as `30s`, `5m`, `1h` or `2d`",
            shown(text)
        )
    })?;
    if delta > MAX_DELTA {
        return Err(format!("{} is longer than 100 years", shown(text)));
    }
    Ok(delta)
}

/// A visitor of one string, handed to `parse`; `expecting` is what a value of another type
/// is told.
struct StrVisitor<F> {
    expecting: &'static str,
    parse: F,
}

impl<T, F> Visitor<'_> for StrVisitor<F>
where
    F: FnOnce(&str) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.parse)(v).map_err(E::custom)
    }
}

fn moment<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    d.deserialize_str(StrVisitor {
        expecting: "an RFC 3339 date and time",
        parse: parse_moment,
    })
}

fn delta<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_str(StrVisitor {
        expecting: "a duration",
        parse: parse_delta,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn moments_are_read_as_utc() {
        let want = Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0).single();
        assert_eq!(parse_moment("2025-06-01T12:00:00Z").ok(), want);
        assert_eq!(parse_moment(" 2025-06-01T14:00:00+02:00 ").ok(), want);
        let e = parse_moment("2025-06-01T12:00:00").unwrap_err();
        assert!(e.contains("no UTC offset"), "{e}");
        assert!(e.contains("`2025-06-01T12:00:00Z`"), "{e}");
        let e = parse_moment("tomorrow").unwrap_err();
        assert!(
            e.starts_with("`tomorrow` is not an RFC 3339 date and time"),
            "{e}"
        );
        let long = "x".repeat(200);
        let e = parse_moment(&long).unwrap_err();
        assert!(e.len() < 200, "{e}");
    }

    #[test]
    fn deltas_as_the_core_writes_them() {
        assert_eq!(parse_delta("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_delta("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_delta("2d"), Ok(Duration::from_secs(2 * 86_400)));
        assert_eq!(parse_delta("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_delta("0s"), Ok(Duration::ZERO));
        assert!(parse_delta("soon").unwrap_err().contains("`soon`"));
        assert!(parse_delta("  ").is_err());
        assert!(parse_delta("200years")
            .unwrap_err()
            .contains("longer than 100 years"));
        assert_eq!(
            parse_delta("100years").map(|d| d <= MAX_DELTA),
            Ok(true),
            "humantime's year is 365.25 days"
        );
    }
}
