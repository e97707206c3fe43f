//! Timetables against Airflow's documented results (reference §6.3–6.5) and against croniter +
//! pendulum (Airflow's own dependencies) for DST: the expected instants below were produced by
//! Airflow 3.3's `_get_next`/`_get_prev` logic run with croniter 7.0 and pendulum 3.3.

use super::schedule::parse;
use super::*;
use serde_json::json;

fn t(s: &str) -> DateTime<Utc> {
    crate::time::parse_rfc3339(s).unwrap()
}

fn timetable(schedule: serde_json::Value) -> Timetable {
    parse(&schedule).unwrap().timetable
}

fn cron(expr: &str, tz: &str) -> CronSchedule {
    CronSchedule::new(expr, tz.parse().unwrap()).unwrap()
}

/// The first `n` runs, each computed from the previous one, at a fixed `now`.
fn runs(tt: &Timetable, r: TimeRestriction, now: DateTime<Utc>, n: usize) -> Vec<DagRunInfo> {
    let mut out: Vec<DagRunInfo> = Vec::new();
    for _ in 0..n {
        match tt.next_dagrun_info(out.last().map(|i| i.data_interval), r, now) {
            Some(info) => out.push(info),
            None => break,
        }
    }
    out
}

fn restriction(start: &str, end: Option<&str>, catchup: bool) -> TimeRestriction {
    TimeRestriction {
        earliest: Some(t(start)),
        latest: end.map(t),
        catchup,
    }
}

fn next_chain(c: &CronSchedule, from: &str, n: usize) -> Vec<DateTime<Utc>> {
    let mut at = t(from);
    (0..n)
        .map(|_| {
            at = c.next(at).unwrap();
            at
        })
        .collect()
}

#[test]
fn weekly_cron_in_zurich_across_both_dst_changes() {
    let c = cron("0 1 * * 3", "Europe/Zurich");
    assert_eq!(
        next_chain(&c, "2025-03-20T00:00:00Z", 4),
        [
            t("2025-03-26T00:00:00Z"),
            t("2025-04-01T23:00:00Z"),
            t("2025-04-08T23:00:00Z"),
            t("2025-04-15T23:00:00Z")
        ]
    );
    assert_eq!(
        c.prev(t("2025-04-15T23:00:00Z")),
        Some(t("2025-04-08T23:00:00Z"))
    );
    assert_eq!(
        next_chain(&c, "2025-10-20T00:00:00Z", 3),
        [
            t("2025-10-21T23:00:00Z"),
            t("2025-10-29T00:00:00Z"),
            t("2025-11-05T00:00:00Z")
        ]
    );
    assert_eq!(
        c.prev(t("2025-11-05T00:00:00Z")),
        Some(t("2025-10-29T00:00:00Z"))
    );
}

#[test]
fn skipped_and_repeated_wall_times_resolve_like_airflow() {
    let c = cron("30 2 * * *", "Europe/Zurich");
    // 02:30 does not exist on 2025-03-30: it runs at 03:30 CEST (01:30Z).
    assert_eq!(
        next_chain(&c, "2025-03-29T00:00:00Z", 3),
        [
            t("2025-03-29T01:30:00Z"),
            t("2025-03-30T01:30:00Z"),
            t("2025-03-31T00:30:00Z")
        ]
    );
    assert_eq!(
        c.prev(t("2025-03-31T00:30:00Z")),
        Some(t("2025-03-30T01:30:00Z"))
    );
    // 02:30 happens twice on 2025-10-26: it runs at the second one (02:30 CET, 01:30Z).
    assert_eq!(
        next_chain(&c, "2025-10-25T00:00:00Z", 3),
        [
            t("2025-10-25T00:30:00Z"),
            t("2025-10-26T01:30:00Z"),
            t("2025-10-27T01:30:00Z")
        ]
    );
    assert_eq!(
        c.prev(t("2025-10-27T01:30:00Z")),
        Some(t("2025-10-26T01:30:00Z"))
    );
}

#[test]
fn hourly_cron_neither_skips_nor_repeats_an_hour_at_dst() {
    let c = cron("0 * * * *", "Europe/Zurich");
    assert_eq!(
        next_chain(&c, "2025-03-30T00:30:00Z", 3),
        [
            t("2025-03-30T01:00:00Z"),
            t("2025-03-30T02:00:00Z"),
            t("2025-03-30T03:00:00Z")
        ]
    );
    assert_eq!(
        next_chain(&c, "2025-10-26T00:30:00Z", 3),
        [
            t("2025-10-26T01:00:00Z"),
            t("2025-10-26T02:00:00Z"),
            t("2025-10-26T03:00:00Z")
        ]
    );
    assert_eq!(
        c.prev(t("2025-10-26T03:00:00Z")),
        Some(t("2025-10-26T02:00:00Z"))
    );
    let ny = cron("0 0 * * *", "America/New_York");
    assert_eq!(
        next_chain(&ny, "2025-03-08T12:00:00Z", 3),
        [
            t("2025-03-09T05:00:00Z"),
            t("2025-03-10T04:00:00Z"),
            t("2025-03-11T04:00:00Z")
        ]
    );
}

const NOW: &str = "2025-01-03T10:00:00Z";

fn intervals(infos: &[DagRunInfo]) -> Vec<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)> {
    infos
        .iter()
        .map(|i| (i.logical_date(), i.data_interval.end, i.run_after))
        .collect()
}

#[test]
fn cron_data_interval_worked_example() {
    let tt = timetable(json!({"cron": "0 0 * * *", "data_interval": true}));
    let day = |d: &str| t(&format!("2025-01-{d}T00:00:00Z"));
    // catchup = true: every interval from start_date.
    let got = runs(
        &tt,
        restriction("2025-01-01T00:00:00Z", None, true),
        t(NOW),
        3,
    );
    assert_eq!(
        intervals(&got),
        [
            (day("01"), day("02"), day("02")),
            (day("02"), day("03"), day("03")),
            (day("03"), day("04"), day("04"))
        ]
    );
    // catchup = false: the latest complete interval first.
    let got = runs(
        &tt,
        restriction("2025-01-01T00:00:00Z", None, false),
        t(NOW),
        3,
    );
    assert_eq!(
        intervals(&got),
        [
            (day("02"), day("03"), day("03")),
            (day("03"), day("04"), day("04")),
            (day("04"), day("05"), day("05"))
        ]
    );
    // end_date = 01-02 with catchup: two runs, then none (the check is start > end_date).
    let got = runs(
        &tt,
        restriction("2025-01-01T00:00:00Z", Some("2025-01-02T00:00:00Z"), true),
        t(NOW),
        5,
    );
    assert_eq!(
        intervals(&got),
        [
            (day("01"), day("02"), day("02")),
            (day("02"), day("03"), day("03"))
        ]
    );
    // A start_date off the grid aligns up: @hourly from 00:30 starts with [01:00, 02:00).
    let hourly = timetable(json!({"cron": "@hourly", "data_interval": true}));
    let got = runs(
        &hourly,
        restriction("2025-01-01T00:30:00Z", None, true),
        t(NOW),
        1,
    );
    assert_eq!(
        intervals(&got),
        [(
            t("2025-01-01T01:00:00Z"),
            t("2025-01-01T02:00:00Z"),
            t("2025-01-01T02:00:00Z")
        )]
    );
    // Manual runs get the last complete interval.
    assert_eq!(
        tt.infer_manual_data_interval(t(NOW)),
        DataInterval {
            start: day("02"),
            end: day("03")
        }
    );
}

#[test]
fn cron_trigger_worked_example() {
    let tt = timetable(json!("0 0 * * *"));
    let day = |d: &str| t(&format!("2025-01-{d}T00:00:00Z"));
    let points = |infos: &[DagRunInfo]| -> Vec<DateTime<Utc>> {
        infos
            .iter()
            .map(|i| {
                assert_eq!(i.data_interval.start, i.data_interval.end);
                assert_eq!(i.run_after, i.data_interval.end);
                i.run_after
            })
            .collect()
    };
    let got = runs(
        &tt,
        restriction("2025-01-01T00:00:00Z", None, true),
        t(NOW),
        3,
    );
    assert_eq!(points(&got), [day("01"), day("02"), day("03")]);
    // catchup = false: the most recent past tick, created at once, then the next ones.
    let got = runs(
        &tt,
        restriction("2025-01-01T00:00:00Z", None, false),
        t(NOW),
        3,
    );
    assert_eq!(points(&got), [day("03"), day("04"), day("05")]);
    let got = runs(
        &tt,
        restriction("2025-01-01T00:00:00Z", Some("2025-01-02T00:00:00Z"), true),
        t(NOW),
        5,
    );
    assert_eq!(points(&got), [day("01"), day("02")]);
    assert_eq!(
        tt.infer_manual_data_interval(t(NOW)),
        DataInterval::exact(t(NOW))
    );
}

#[test]
fn cron_trigger_first_run_without_start_date() {
    let tt = timetable(json!("@hourly"));
    let r = TimeRestriction {
        earliest: None,
        latest: None,
        catchup: true,
    };
    // Within the buffer (max(period/10, 5 min)) of the last tick: run it; otherwise wait.
    let info = tt
        .next_dagrun_info(None, r, t("2025-01-03T10:04:00Z"))
        .unwrap();
    assert_eq!(info.run_after, t("2025-01-03T10:00:00Z"));
    let info = tt
        .next_dagrun_info(None, r, t("2025-01-03T10:30:00Z"))
        .unwrap();
    assert_eq!(info.run_after, t("2025-01-03T11:00:00Z"));
}

#[test]
fn delta_timetables() {
    let trigger = timetable(json!({"every": "1d"}));
    let got = runs(
        &trigger,
        restriction("2025-01-01T00:00:00Z", None, false),
        t(NOW),
        2,
    );
    assert_eq!(
        got.iter().map(|i| i.run_after).collect::<Vec<_>>(),
        [t(NOW), t("2025-01-04T10:00:00Z")]
    );
    let got = runs(
        &trigger,
        restriction("2025-01-01T00:00:00Z", None, true),
        t(NOW),
        2,
    );
    assert_eq!(
        got.iter().map(|i| i.run_after).collect::<Vec<_>>(),
        [t("2025-01-01T00:00:00Z"), t("2025-01-02T00:00:00Z")]
    );

    let interval = timetable(json!({"every": "1d", "data_interval": true}));
    let got = runs(
        &interval,
        restriction("2025-01-01T00:00:00Z", None, true),
        t(NOW),
        2,
    );
    assert_eq!(
        intervals(&got),
        [
            (
                t("2025-01-01T00:00:00Z"),
                t("2025-01-02T00:00:00Z"),
                t("2025-01-02T00:00:00Z")
            ),
            (
                t("2025-01-02T00:00:00Z"),
                t("2025-01-03T00:00:00Z"),
                t("2025-01-03T00:00:00Z")
            ),
        ]
    );
    // Without catchup: the latest complete day on the epoch grid.
    let got = runs(
        &interval,
        restriction("2025-01-01T00:00:00Z", None, false),
        t(NOW),
        1,
    );
    assert_eq!(
        intervals(&got),
        [(
            t("2025-01-02T00:00:00Z"),
            t("2025-01-03T00:00:00Z"),
            t("2025-01-03T00:00:00Z")
        )]
    );
    assert_eq!(
        interval.infer_manual_data_interval(t(NOW)),
        DataInterval {
            start: t("2025-01-02T10:00:00Z"),
            end: t(NOW)
        }
    );
    // Calendar months step on the calendar.
    let monthly = timetable(json!({"every": "1mo", "data_interval": true}));
    let got = runs(
        &monthly,
        restriction("2025-01-31T00:00:00Z", None, true),
        t("2025-06-01T00:00:00Z"),
        2,
    );
    assert_eq!(got[0].data_interval.end, t("2025-02-28T00:00:00Z"));
}

#[test]
fn once_continuous_null_and_assets() {
    let once = timetable(json!("@once"));
    let r = restriction("2025-01-01T00:00:00Z", None, false);
    let got = runs(&once, r, t(NOW), 3);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].run_after, t("2025-01-01T00:00:00Z"));

    let continuous = timetable(json!("@continuous"));
    assert_eq!(continuous.active_runs_limit(), Some(1));
    let first = continuous.next_dagrun_info(None, r, t(NOW)).unwrap();
    assert_eq!(
        first.data_interval,
        DataInterval {
            start: t("2025-01-01T00:00:00Z"),
            end: t(NOW)
        }
    );
    let later = t("2025-01-03T11:00:00Z");
    let second = continuous
        .next_dagrun_info(Some(first.data_interval), r, later)
        .unwrap();
    assert_eq!(
        second.data_interval,
        DataInterval {
            start: t(NOW),
            end: later
        }
    );

    assert_eq!(Timetable::Null.next_dagrun_info(None, r, t(NOW)), None);
    let assets = timetable(json!({"assets": "a"}));
    assert_eq!(assets.next_dagrun_info(None, r, t(NOW)), None);
    assert!(!assets.is_periodic());
    let or = timetable(json!({"cron": "0 6 * * *", "assets": "a", "combine": "or"}));
    assert!(or.asset_triggered().is_some() && or.asset_gate().is_none());
    assert_eq!(
        runs(&or, r, t(NOW), 1)[0].run_after,
        t("2025-01-03T06:00:00Z")
    );
    let and = timetable(json!({"cron": "0 6 * * *", "assets": "a", "combine": "and"}));
    assert!(and.asset_triggered().is_none() && and.asset_gate().is_some());
    assert_eq!(
        runs(&and, r, t(NOW), 1)[0].run_after,
        t("2025-01-03T06:00:00Z")
    );
}

#[test]
fn fractions_of_a_second_are_between_ticks() {
    let c = cron("0 * * * *", "UTC");
    let just_after = t("2025-01-03T10:00:00.500000Z");
    assert_eq!(c.prev(just_after), Some(t("2025-01-03T10:00:00Z")));
    assert_eq!(c.align_prev(just_after), Some(t("2025-01-03T10:00:00Z")));
    assert_eq!(c.next(just_after), Some(t("2025-01-03T11:00:00Z")));
    assert_eq!(c.align_next(just_after), Some(t("2025-01-03T11:00:00Z")));
    // Without catchup, a sync in the first second of an hour still picks whole-hour slots.
    let tt = timetable(json!({"cron": "@hourly", "data_interval": true}));
    let info = tt
        .next_dagrun_info(
            None,
            restriction("2025-01-01T00:00:00Z", None, false),
            just_after,
        )
        .unwrap();
    assert_eq!(info.logical_date(), t("2025-01-03T09:00:00Z"));
}

#[test]
fn every_hour_spelled_as_a_range_gets_the_dst_fix() {
    let c = cron("0 0-23 * * *", "Europe/Zurich");
    assert_eq!(
        next_chain(&c, "2025-10-26T00:30:00Z", 3),
        [
            t("2025-10-26T01:00:00Z"),
            t("2025-10-26T02:00:00Z"),
            t("2025-10-26T03:00:00Z")
        ]
    );
}
