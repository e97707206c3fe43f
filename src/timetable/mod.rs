//! Timetables: when a DAG's automated runs are due, with Airflow 3.3's semantics (README
//! "Schedules"). Pure functions of a schedule, the last automated run,
//! the DAG's time restriction and a clock — no I/O — so the scheduler, `dags next-runs` and
//! `dags backfill` all ask the same questions and get the same answers.
//!
//! Cron expressions are evaluated on naive wall-clock times in the DAG's time zone (as croniter
//! does) and localised the way pendulum does: a wall time skipped by a DST jump moves forward
//! by the gap; a repeated wall time takes its second occurrence. For expressions that fire every
//! hour, the step found on the wall clock is added to the absolute time instead (Airflow's
//! "fix DST" path), so no hour is run twice or skipped.

pub mod schedule;

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, Months, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::asset_expression::AssetExpr;
use schedule::{Every, EveryUnit, PRESETS};

/// `[start, end]` of a run's data. A trigger timetable's interval is a point (start == end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInterval {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl DataInterval {
    pub fn exact(at: DateTime<Utc>) -> Self {
        Self { start: at, end: at }
    }
}

/// One automated run the timetable asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DagRunInfo {
    /// The earliest wall-clock instant the run may be created (`next_dagrun_create_after`).
    pub run_after: DateTime<Utc>,
    pub data_interval: DataInterval,
}

impl DagRunInfo {
    /// Airflow's logical date: the start of the data interval.
    pub fn logical_date(&self) -> DateTime<Utc> {
        self.data_interval.start
    }

    fn interval(start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        Self {
            run_after: end,
            data_interval: DataInterval { start, end },
        }
    }
}

/// A DAG's `start_date`, `end_date` and `catchup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRestriction {
    pub earliest: Option<DateTime<Utc>>,
    pub latest: Option<DateTime<Utc>>,
    pub catchup: bool,
}

/// A cron expression in a time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct CronSchedule {
    expression: String,
    cron: croner::Cron,
    tz: Tz,
    fix_dst: bool,
}

impl CronSchedule {
    /// `expression` is a 5-field cron or a preset; `tz` an IANA name.
    pub fn new(expression: &str, tz: Tz) -> Result<Self, String> {
        let expanded = PRESETS
            .iter()
            .find(|(name, _)| *name == expression)
            .map(|(_, cron)| *cron)
            .unwrap_or(expression);
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "`{expression}` is not a cron expression: expected 5 fields (minute hour day month weekday) \
                 or a preset (@hourly, @daily, @weekly, @monthly, @quarterly, @yearly, @once, @continuous)"
            ));
        }
        let cron = croner::Cron::from_str(expanded)
            .map_err(|e| format!("`{expression}` is not a valid cron expression: {e}"))?;
        Ok(Self {
            expression: expression.to_string(),
            cron,
            tz,
            // Airflow fixes DST only for expressions that fire in every hour (croniter expands
            // all of these to `*`).
            fix_dst: matches!(fields[1], "*" | "*/1" | "0-23" | "0-23/1"),
        })
    }

    fn naive(&self, t: DateTime<Utc>) -> NaiveDateTime {
        t.with_timezone(&self.tz).naive_local()
    }

    /// Whether `t` is exactly a tick. Cron has whole seconds: a time with a fraction is never one.
    fn matches(&self, t: DateTime<Utc>) -> bool {
        t.nanosecond() == 0 && self.cron.is_time_matching(&self.naive(t)).unwrap_or(false)
    }

    /// The first tick strictly after `t`.
    pub fn next(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let naive = self.naive(t);
        let scheduled = self.cron.find_next_occurrence(&naive, false).ok()?;
        Some(if self.fix_dst {
            t + (scheduled - naive)
        } else {
            localize(scheduled, self.tz)
        })
    }

    /// The last tick strictly before `t`.
    pub fn prev(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let naive = self.naive(t);
        // The search works in whole seconds: from 10:00:00.5 the previous tick may be 10:00:00
        // itself, so search from the whole second, inclusively.
        let whole = naive.with_nanosecond(0)?;
        let scheduled = self
            .cron
            .find_previous_occurrence(&whole, whole != naive)
            .ok()?;
        Some(if self.fix_dst {
            t - (naive - scheduled)
        } else {
            localize(scheduled, self.tz)
        })
    }

    /// `t` if it is a tick, else the next tick.
    pub fn align_next(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.matches(t) {
            Some(t)
        } else {
            self.next(t)
        }
    }

    /// `t` if it is a tick, else the previous tick.
    pub fn align_prev(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if self.matches(t) {
            Some(t)
        } else {
            self.prev(t)
        }
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }
}

/// A naive wall time in `tz` as UTC, the way pendulum's `convert` resolves it: a skipped time
/// moves forward by the gap (read with the offset in force before the jump); a repeated time
/// takes the later occurrence.
pub fn localize(naive: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, second) => {
            first.with_timezone(&Utc).max(second.with_timezone(&Utc))
        }
        LocalResult::None => {
            let before = tz.offset_from_utc_datetime(&(naive - Duration::hours(24)));
            let offset = chrono::Offset::fix(&before);
            Utc.from_utc_datetime(&(naive - offset))
        }
    }
}

/// A step of `every = "…"`, added in UTC for fixed units and on the calendar for months/years.
fn add_every(t: DateTime<Utc>, every: Every, times: i32) -> Option<DateTime<Utc>> {
    let n = i64::from(every.count) * i64::from(times);
    let fixed = |secs: i64| t.checked_add_signed(Duration::seconds(n.checked_mul(secs)?));
    match every.unit {
        EveryUnit::Seconds => fixed(1),
        EveryUnit::Minutes => fixed(60),
        EveryUnit::Hours => fixed(3_600),
        EveryUnit::Days => fixed(86_400),
        EveryUnit::Weeks => fixed(604_800),
        EveryUnit::Months | EveryUnit::Years => {
            let months = if every.unit == EveryUnit::Years {
                n * 12
            } else {
                n
            };
            let m = Months::new(u32::try_from(months.unsigned_abs()).ok()?);
            if months >= 0 {
                t.checked_add_months(m)
            } else {
                t.checked_sub_months(m)
            }
        }
    }
}

fn every_seconds(every: Every) -> Option<i64> {
    let unit = match every.unit {
        EveryUnit::Seconds => 1,
        EveryUnit::Minutes => 60,
        EveryUnit::Hours => 3_600,
        EveryUnit::Days => 86_400,
        EveryUnit::Weeks => 604_800,
        EveryUnit::Months | EveryUnit::Years => return None,
    };
    Some(i64::from(every.count) * unit)
}

/// The schedule of a DAG, as a timetable.
#[derive(Debug, Clone, PartialEq)]
pub enum Timetable {
    /// No schedule: manual runs only (`NullTimetable`).
    Null,
    /// `@once` (`OnceTimetable`).
    Once,
    /// `@continuous` (`ContinuousTimetable`): one run after another, one active at a time.
    Continuous,
    /// A cron string (`CronTriggerTimetable`): a run at each tick, its interval a point.
    CronTrigger(CronSchedule),
    /// `data_interval = true` (`CronDataIntervalTimetable`): a run after each interval ends.
    CronDataInterval(CronSchedule),
    /// `every = "…"` (`DeltaTriggerTimetable`).
    DeltaTrigger(Every),
    /// `every = "…"`, `data_interval = true` (`DeltaDataIntervalTimetable`).
    DeltaDataInterval(Every),
    /// `assets = "…"` alone (`AssetTriggeredTimetable`): runs come from the asset path only.
    Assets(AssetExpr),
    /// `combine = "or"` (`AssetOrTimeSchedule`): scheduled runs plus independent asset runs.
    AssetOrTime(Box<Timetable>, AssetExpr),
    /// `combine = "and"` (`AssetAndTimeSchedule`): a due slot waits for the asset condition,
    /// then one scheduled run consumes the queued events.
    AssetAndTime(Box<Timetable>, AssetExpr),
}

impl Timetable {
    /// The asset condition of the asset-triggered path (plain assets, or "or" schedules).
    pub fn asset_triggered(&self) -> Option<&AssetExpr> {
        match self {
            Timetable::Assets(e) | Timetable::AssetOrTime(_, e) => Some(e),
            _ => None,
        }
    }

    /// The condition a due slot waits for (`combine = "and"`).
    pub fn asset_gate(&self) -> Option<&AssetExpr> {
        match self {
            Timetable::AssetAndTime(_, e) => Some(e),
            _ => None,
        }
    }

    /// The time part that creates scheduled runs, if any.
    fn time_part(&self) -> &Timetable {
        match self {
            Timetable::AssetOrTime(inner, _) | Timetable::AssetAndTime(inner, _) => inner,
            other => other,
        }
    }

    /// Most runs active at once, whatever `max_active_runs` says (`@continuous`: 1).
    pub fn active_runs_limit(&self) -> Option<i64> {
        matches!(self.time_part(), Timetable::Continuous).then_some(1)
    }

    /// Whether this timetable creates scheduled runs at all.
    pub fn is_periodic(&self) -> bool {
        !matches!(self.time_part(), Timetable::Null | Timetable::Assets(_))
    }

    /// The next automated run after `last` (the data interval of the latest scheduled or
    /// backfill run), or `None` when there is none (no schedule, past `end_date`, `@once` done).
    pub fn next_dagrun_info(
        &self,
        last: Option<DataInterval>,
        restriction: TimeRestriction,
        now: DateTime<Utc>,
    ) -> Option<DagRunInfo> {
        match self.time_part() {
            Timetable::Null | Timetable::Assets(_) => None,
            Timetable::Once => {
                if last.is_some() {
                    return None;
                }
                let run_after = restriction.earliest.unwrap_or(now);
                if restriction.latest.is_some_and(|l| run_after > l) {
                    return None;
                }
                Some(DagRunInfo::interval(run_after, run_after))
            }
            Timetable::Continuous => {
                let start_date = restriction.earliest.unwrap_or(now);
                let interval = match last {
                    Some(last) if last.end > now => DataInterval {
                        start: start_date,
                        end: start_date + (last.end - last.start),
                    },
                    Some(last) => DataInterval {
                        start: last.end,
                        end: now,
                    },
                    None => DataInterval {
                        start: start_date,
                        end: start_date.max(now),
                    },
                };
                if restriction.latest.is_some_and(|l| interval.end > l) {
                    return None;
                }
                Some(DagRunInfo::interval(interval.start, interval.end))
            }
            Timetable::CronDataInterval(cron) => {
                data_interval_next(&Steps::Cron(cron), last, restriction, now)
            }
            Timetable::DeltaDataInterval(every) => {
                data_interval_next(&Steps::Every(*every), last, restriction, now)
            }
            Timetable::CronTrigger(cron) => {
                trigger_next(&Steps::Cron(cron), last, restriction, now)
            }
            Timetable::DeltaTrigger(every) => {
                trigger_next(&Steps::Every(*every), last, restriction, now)
            }
            Timetable::AssetOrTime(..) | Timetable::AssetAndTime(..) => None,
        }
    }

    /// The data interval of a manual run at `run_after` (`infer_manual_data_interval`).
    pub fn infer_manual_data_interval(&self, run_after: DateTime<Utc>) -> DataInterval {
        match self.time_part() {
            Timetable::CronDataInterval(cron) => {
                let end = cron.align_prev(run_after).unwrap_or(run_after);
                let start = cron.prev(end).unwrap_or(end);
                DataInterval { start, end }
            }
            Timetable::DeltaDataInterval(every) => DataInterval {
                start: add_every(run_after, *every, -1).unwrap_or(run_after),
                end: run_after,
            },
            _ => DataInterval::exact(run_after),
        }
    }
}

/// The two ways of stepping: cron ticks, or a fixed/calendar delta.
enum Steps<'a> {
    Cron(&'a CronSchedule),
    Every(Every),
}

impl Steps<'_> {
    fn next(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron(c) => c.next(t),
            Steps::Every(e) => add_every(t, *e, 1),
        }
    }

    fn prev(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron(c) => c.prev(t),
            Steps::Every(e) => add_every(t, *e, -1),
        }
    }

    /// Deltas have no grid: every instant is aligned.
    fn align_next(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron(c) => c.align_next(t),
            Steps::Every(_) => Some(t),
        }
    }

    fn align_prev(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Steps::Cron(c) => c.align_prev(t),
            Steps::Every(_) => Some(t),
        }
    }

    /// Without catchup, the start of the latest *complete* interval before `now` (bounded below
    /// by the aligned `earliest`).
    fn skip_to_latest(
        &self,
        earliest: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let new_start = match self {
            Steps::Cron(_) => {
                let last_start = self.prev(now)?;
                if self.next(last_start)? == now {
                    last_start
                } else {
                    self.prev(last_start)?
                }
            }
            Steps::Every(every) => {
                let rounded = match every_seconds(*every) {
                    // Fixed deltas round down on the epoch grid.
                    Some(secs) => {
                        let ts = now.timestamp();
                        Utc.timestamp_opt(ts - ts.rem_euclid(secs), 0).single()?
                    }
                    // Calendar deltas step from the anchor (start_date, or now) one period at a
                    // time to the last boundary not after now.
                    None => {
                        let anchor = earliest.unwrap_or(now);
                        let mut boundary = anchor;
                        let mut i = 1;
                        while let Some(next) = add_every(anchor, *every, i) {
                            if next > now {
                                break;
                            }
                            boundary = next;
                            i += 1;
                        }
                        boundary
                    }
                };
                self.prev(rounded)?
            }
        };
        match earliest {
            None => Some(new_start),
            Some(e) => Some(new_start.max(self.align_next(e)?)),
        }
    }
}

/// `_DataIntervalTimetable.next_dagrun_info`.
fn data_interval_next(
    steps: &Steps<'_>,
    last: Option<DataInterval>,
    restriction: TimeRestriction,
    now: DateTime<Utc>,
) -> Option<DagRunInfo> {
    let earliest = if !restriction.catchup {
        steps.skip_to_latest(restriction.earliest, now)
    } else {
        match restriction.earliest {
            Some(e) => Some(steps.align_next(e)?),
            None => None,
        }
    };
    let start = match last {
        None => earliest?,
        Some(last) => {
            let mut start = steps.align_prev(last.end)?;
            if let Some(e) = earliest {
                start = start.max(e);
            }
            if start <= last.start {
                // The schedule changed under an existing run: move on rather than repeat it.
                start = steps.next(start)?;
                if start <= last.start {
                    return None;
                }
            }
            start
        }
    };
    if restriction.latest.is_some_and(|l| start > l) {
        return None;
    }
    Some(DagRunInfo::interval(start, steps.next(start)?))
}

/// `_TriggerTimetable.next_dagrun_info` with a zero interval.
fn trigger_next(
    steps: &Steps<'_>,
    last: Option<DataInterval>,
    restriction: TimeRestriction,
    now: DateTime<Utc>,
) -> Option<DagRunInfo> {
    let first_run = |now: DateTime<Utc>| -> Option<DateTime<Utc>> {
        match steps {
            Steps::Every(_) => Some(now),
            Steps::Cron(_) => {
                // Run the latest tick only if it passed recently (a tenth of the period, at
                // least five minutes); otherwise wait for the next one.
                let prev = steps.align_prev(now)?;
                let next = steps.align_next(now)?;
                let period = steps.next(prev)? - prev;
                let buffer = (period / 10).max(Duration::minutes(5));
                Some(if now - prev <= buffer { prev } else { next })
            }
        }
    };
    let t = if restriction.catchup {
        match (last, restriction.earliest) {
            (Some(last), _) => steps.next(last.end)?,
            (None, None) => first_run(now)?,
            (None, Some(e)) => steps.align_next(e)?,
        }
    } else {
        let mut candidates = vec![steps.align_prev(now)?];
        match (last, restriction.earliest) {
            (Some(last), _) => candidates.push(steps.next(last.end)?),
            (None, None) => candidates.push(first_run(now)?),
            (None, Some(_)) => {}
        }
        if let Some(e) = restriction.earliest {
            candidates.push(steps.align_next(e)?);
        }
        candidates.into_iter().max()?
    };
    if restriction.latest.is_some_and(|l| l < t) {
        return None;
    }
    Some(DagRunInfo::interval(t, t))
}

#[cfg(test)]
mod tests;
