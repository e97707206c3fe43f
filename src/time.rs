//! Time as the rest of the code sees it: UTC, microsecond precision (what PostgreSQL keeps, so a
//! value read back compares equal to the one written), printed as Python's `isoformat()` does so
//! run ids look like Airflow's.

use chrono::{DateTime, SecondsFormat, Timelike, Utc};

/// Now, truncated to microseconds.
pub fn now() -> DateTime<Utc> {
    truncate(Utc::now())
}

/// Drops sub-microsecond precision.
pub fn truncate(t: DateTime<Utc>) -> DateTime<Utc> {
    let nanos = t.nanosecond();
    t.with_nanosecond(nanos - nanos % 1_000).unwrap_or(t)
}

/// `2024-01-01T00:00:00+00:00`, or with `.ffffff` when there are microseconds — Python's
/// `datetime.isoformat()` for an aware UTC datetime.
pub fn isoformat(t: DateTime<Utc>) -> String {
    if t.nanosecond() == 0 {
        t.to_rfc3339_opts(SecondsFormat::Secs, false)
    } else {
        t.to_rfc3339_opts(SecondsFormat::Micros, false)
    }
}

/// Parses an RFC 3339 time from the command line (`2024-01-01T00:00:00Z`, or with an offset).
pub fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| truncate(t.with_timezone(&Utc)))
        .map_err(|e| format!("`{s}` is not an RFC 3339 time ({e}); example: 2024-01-01T06:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isoformat_matches_python() {
        let t = parse_rfc3339("2024-01-01T00:00:00Z").unwrap();
        assert_eq!(isoformat(t), "2024-01-01T00:00:00+00:00");
        let t = parse_rfc3339("2024-01-01T00:00:00.5+01:00").unwrap();
        assert_eq!(isoformat(t), "2023-12-31T23:00:00.500000+00:00");
    }

    #[test]
    fn parse_rejects_garbage_with_example() {
        let err = parse_rfc3339("yesterday").unwrap_err();
        assert!(err.contains("yesterday") && err.contains("RFC 3339"));
    }
}
