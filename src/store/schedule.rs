//! Statements of time-based scheduling: the next-run bookkeeping on `dag`
//! (`next_dagrun`, its data interval, `next_dagrun_create_after`), selecting time-due DAGs,
//! creating the scheduled run of a due slot, and backfill runs. The timetable decisions come
//! from the caller (as [`SlotPolicy`]); this module only reads, locks and writes.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;

use super::NewDagRun;
use super::{push_in_list, with_db, JobId, Result, Store, StoreError, CHUNK};
use crate::dag_run::{DagRunState, DagRunType};
use crate::timetable::{DagRunInfo, DataInterval, TimeRestriction};

/// What the scheduler needs to know about a DAG's time schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct DagTiming {
    pub dag_id: String,
    pub schedule: Option<Value>,
    pub restriction: TimeRestriction,
    pub max_active_runs: i64,
    pub is_paused: bool,
    /// The stored next slot, if any.
    pub next: Option<DagRunInfo>,
}

/// How to create the run of a due slot, decided by the caller's timetable.
pub struct SlotPolicy<'a> {
    /// The slot after a run with this data interval.
    pub next_after: &'a (dyn Fn(DataInterval) -> Option<DagRunInfo> + Sync),
    /// For `combine = "and"`: whether the queued asset names satisfy the condition.
    pub gate: Option<&'a super::AssetCondition<'a>>,
    /// `max_active_runs`, lowered by the timetable where it has its own limit.
    pub max_active_runs: i64,
}

/// A due slot to create the run of, with the policy its DAG's timetable decided.
pub struct DueSlot<'a> {
    pub dag_id: &'a str,
    /// The slot as [`Store::due_dags`] read it.
    pub expected: DagRunInfo,
    pub policy: SlotPolicy<'a>,
}

/// A due DAG's row as read under its lock.
struct LockedDag {
    /// The stored slot; `None` when none is stored or the DAG is paused or stale.
    slot: Option<DagRunInfo>,
    active: i64,
    /// The data interval of a run already at the slot's logical date (the slot's where the
    /// run has none).
    existing: Option<DataInterval>,
}

/// Locks and reads the rows of `$ids` (due DAGs) on `$tx` with `$lock` (SKIP LOCKED leaves
/// out DAGs another scheduler holds): what each says now, with its active non-backfill runs
/// and any run already at the stored slot's logical date. Both scheduling paths read this way.
macro_rules! lock_due_dags {
    ($tx:expr, $ids:expr, $lock:expr) => {{
        let ids: &[&str] = $ids;
        let mut locked: HashMap<String, LockedDag> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT d.dag_id, d.is_paused, d.is_stale, d.next_dagrun_data_interval_start, \
                 d.next_dagrun_data_interval_end, d.next_dagrun_create_after, \
                 (SELECT count(*) FROM dag_run x WHERE x.dag_id = d.dag_id \
                  AND x.state IN ('queued', 'running') AND x.run_type <> 'backfill') AS active, \
                 (SELECT x.id FROM dag_run x WHERE x.dag_id = d.dag_id \
                  AND x.logical_date = d.next_dagrun_data_interval_start) AS existing_id, \
                 (SELECT x.data_interval_start FROM dag_run x WHERE x.dag_id = d.dag_id \
                  AND x.logical_date = d.next_dagrun_data_interval_start) AS existing_start, \
                 (SELECT x.data_interval_end FROM dag_run x WHERE x.dag_id = d.dag_id \
                  AND x.logical_date = d.next_dagrun_data_interval_start) AS existing_end \
                 FROM dag d WHERE d.dag_id IN ",
            );
            push_in_list(&mut qb, chunk);
            qb.push($lock);
            for row in qb.build().fetch_all(&mut *$tx).await? {
                let live =
                    !row.try_get::<bool, _>("is_paused")? && !row.try_get::<bool, _>("is_stale")?;
                let slot = next_from_row(
                    row.try_get("next_dagrun_data_interval_start")?,
                    row.try_get("next_dagrun_data_interval_end")?,
                    row.try_get("next_dagrun_create_after")?,
                )
                .filter(|_| live);
                let existing = match (slot, row.try_get::<Option<i64>, _>("existing_id")?) {
                    (Some(slot), Some(_)) => Some(DataInterval {
                        start: row
                            .try_get::<Option<DateTime<Utc>>, _>("existing_start")?
                            .unwrap_or(slot.data_interval.start),
                        end: row
                            .try_get::<Option<DateTime<Utc>>, _>("existing_end")?
                            .unwrap_or(slot.data_interval.end),
                    }),
                    _ => None,
                };
                locked.insert(
                    row.try_get("dag_id")?,
                    LockedDag {
                        slot,
                        active: row.try_get("active")?,
                        existing,
                    },
                );
            }
        }
        locked
    }};
}

/// What to do with a due slot, as decided from its DAG's locked row.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decision {
    /// Another scheduler holds the DAG, it is paused or stale, or its slot moved meanwhile.
    Skip,
    AtMaxActiveRuns,
    /// A run at the slot's logical date exists (manual or backfill), with this data interval:
    /// move the slot past it.
    MoveOn(DataInterval),
    /// Create the slot's scheduled run.
    Create(DagRunInfo),
}

/// The one decision both scheduling paths make for a due slot `expected`, read as `locked`
/// (`None`: not locked, so another scheduler has it). Pure, so the single and the batched path
/// cannot drift apart.
fn decide(locked: Option<&LockedDag>, expected: DagRunInfo, max_active_runs: i64) -> Decision {
    let Some(row) = locked else {
        return Decision::Skip;
    };
    let Some(slot) = row.slot.filter(|s| *s == expected) else {
        return Decision::Skip;
    };
    if row.active >= max_active_runs {
        return Decision::AtMaxActiveRuns;
    }
    match row.existing {
        Some(interval) => Decision::MoveOn(interval),
        None => Decision::Create(slot),
    }
}

/// What happened to a due slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    Created(String),
    /// A run for the slot's logical date existed (manual or backfill): the slot moved on.
    AlreadyExisted,
    /// Another run (of `run_type`) already has the slot's run id: the slot was skipped and moved
    /// on, with no run for it.
    RunIdTaken {
        run_id: String,
        run_type: DagRunType,
    },
    /// Another scheduler holds the DAG, it was paused, or the slot changed meanwhile.
    Skipped,
    /// `max_active_runs` is reached.
    AtMaxActiveRuns,
    /// The asset condition of an asset-and-time DAG does not hold yet: the slot waits.
    WaitingForAssets,
}

/// What `dags backfill` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BackfillReport {
    pub created: usize,
    pub skipped: usize,
    pub requeued: usize,
}

fn next_from_row(
    row_start: Option<DateTime<Utc>>,
    row_end: Option<DateTime<Utc>>,
    after: Option<DateTime<Utc>>,
) -> Option<DagRunInfo> {
    Some(DagRunInfo {
        run_after: after?,
        data_interval: DataInterval {
            start: row_start?,
            end: row_end?,
        },
    })
}

macro_rules! dag_timing_from_row {
    ($row:expr) => {{
        let row = $row;
        DagTiming {
            dag_id: row.try_get("dag_id")?,
            schedule: row
                .try_get::<Option<Json<Value>>, _>("schedule")?
                .map(|j| j.0),
            restriction: TimeRestriction {
                earliest: row.try_get("start_date")?,
                latest: row.try_get("end_date")?,
                catchup: row.try_get("catchup")?,
            },
            max_active_runs: row.try_get("max_active_runs")?,
            is_paused: row.try_get("is_paused")?,
            next: next_from_row(
                row.try_get("next_dagrun_data_interval_start")?,
                row.try_get("next_dagrun_data_interval_end")?,
                row.try_get("next_dagrun_create_after")?,
            ),
        }
    }};
}

const TIMING_COLUMNS: &str =
    "dag_id, schedule, start_date, end_date, catchup, max_active_runs, is_paused, \
     next_dagrun_data_interval_start, next_dagrun_data_interval_end, next_dagrun_create_after";

impl Store {
    /// One live DAG's timing, or a [`StoreError::NotFound`] naming it.
    pub async fn dag_timing(&self, dag_id: &str) -> Result<DagTiming> {
        with_db!(self, pool => {
            let row = sqlx::query(&format!(
                "SELECT {TIMING_COLUMNS} FROM dag WHERE dag_id = $1 AND is_stale = FALSE"
            ))
            .bind(dag_id)
            .fetch_optional(pool)
            .await?;
            match row {
                Some(row) => Ok(dag_timing_from_row!(row)),
                None => Err(StoreError::NotFound(format!(
                    "DAG `{dag_id}` not found; `triggerer dags list` shows the DAGs"
                ))),
            }
        })
    }

    /// Every live DAG's timing.
    pub async fn dag_timings(&self) -> Result<Vec<DagTiming>> {
        with_db!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {TIMING_COLUMNS} FROM dag WHERE is_stale = FALSE ORDER BY dag_id"
            ))
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(|row| Ok(dag_timing_from_row!(row))).collect()
        })
    }

    /// Unpaused DAGs whose next slot may be created at `now`, earliest first, at most `limit`.
    /// DAGs at `max_active_runs`, and asset-and-time DAGs with nothing queued, are left out, so
    /// slots that cannot run never crowd out DAGs that can.
    pub async fn due_dags(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<DagTiming>> {
        with_db!(self, pool => {
            let rows = sqlx::query(&format!(
                "SELECT {TIMING_COLUMNS} FROM dag WHERE is_paused = FALSE AND is_stale = FALSE \
                 AND next_dagrun_create_after IS NOT NULL AND next_dagrun_create_after <= $1 \
                 AND (timetable_asset_gated = FALSE OR EXISTS \
                     (SELECT 1 FROM asset_dag_run_queue q WHERE q.target_dag_id = dag.dag_id)) \
                 AND (SELECT count(*) FROM dag_run x WHERE x.dag_id = dag.dag_id \
                      AND x.state IN ('queued', 'running') AND x.run_type <> 'backfill') < max_active_runs \
                 ORDER BY next_dagrun_create_after, dag_id LIMIT $2"
            ))
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            rows.into_iter().map(|row| Ok(dag_timing_from_row!(row))).collect()
        })
    }

    /// The data interval of each DAG's latest automated (scheduled or backfill) run — of every
    /// DAG, or of `dag_ids`: what timetables continue from.
    pub async fn last_automated_intervals(
        &self,
        dag_ids: Option<&[&str]>,
    ) -> Result<HashMap<String, DataInterval>> {
        let chunks: Vec<Option<&[&str]>> = match dag_ids {
            None => vec![None],
            Some(ids) => ids.chunks(CHUNK).map(Some).collect(),
        };
        let mut out = HashMap::new();
        with_db!(self, pool => {
            for chunk in chunks {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT r.dag_id, r.data_interval_start, r.data_interval_end FROM dag_run r \
                     JOIN (SELECT dag_id, max(logical_date) AS latest FROM dag_run \
                           WHERE run_type IN ('scheduled', 'backfill') AND logical_date IS NOT NULL",
                );
                if let Some(ids) = chunk {
                    qb.push(" AND dag_id IN ");
                    push_in_list(&mut qb, ids);
                }
                qb.push(" GROUP BY dag_id) m ON m.dag_id = r.dag_id AND m.latest = r.logical_date");
                for row in qb.build().fetch_all(pool).await? {
                    let start: Option<DateTime<Utc>> = row.try_get("data_interval_start")?;
                    let end: Option<DateTime<Utc>> = row.try_get("data_interval_end")?;
                    if let (Some(start), Some(end)) = (start, end) {
                        out.insert(row.try_get("dag_id")?, DataInterval { start, end });
                    }
                }
            }
            Ok(out)
        })
    }

    /// Stores each DAG's next slot (`None` clears it).
    pub async fn set_next_dagruns(&self, updates: &[(String, Option<DagRunInfo>)]) -> Result<()> {
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            for (dag_id, info) in updates {
                super::store_next_dagrun!(&mut *tx, dag_id, *info);
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Creates the SCHEDULED run of `dag_id`'s due slot `expected` (as [`Store::due_dags`] read
    /// it), under the DAG's row lock, and moves the slot on. Several schedulers may call this at
    /// once: one wins; the others find the slot moved and skip, so none creates a slot early.
    pub async fn create_scheduled_run(
        &self,
        dag_id: &str,
        expected: DagRunInfo,
        policy: &SlotPolicy<'_>,
        job_id: Option<JobId>,
    ) -> Result<SlotOutcome> {
        let lock = self.skip_locked();
        let now = crate::time::now();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let locked = lock_due_dags!(tx, &[dag_id], lock);
            let (outcome, interval) = match decide(locked.get(dag_id), expected, policy.max_active_runs) {
                Decision::Skip => return Ok(SlotOutcome::Skipped),
                Decision::AtMaxActiveRuns => return Ok(SlotOutcome::AtMaxActiveRuns),
                Decision::MoveOn(interval) => (SlotOutcome::AlreadyExisted, interval),
                Decision::Create(slot) => {
                    let mut consumed: Vec<i64> = Vec::new();
                    if let Some(gate) = policy.gate {
                        let queued = sqlx::query(
                            "SELECT q.asset_event_id, a.name FROM asset_dag_run_queue q \
                             JOIN asset a ON a.id = q.asset_id WHERE q.target_dag_id = $1",
                        )
                        .bind(dag_id)
                        .fetch_all(&mut *tx)
                        .await?;
                        let mut names = BTreeSet::new();
                        for row in &queued {
                            names.insert(row.try_get::<String, _>("name")?);
                            consumed.push(row.try_get("asset_event_id")?);
                        }
                        if !gate(&names) {
                            return Ok(SlotOutcome::WaitingForAssets);
                        }
                    }
                    let run = NewDagRun::of_slot(dag_id, DagRunType::Scheduled, slot, job_id);
                    let id = run.run_id.clone();
                    // The logical date is free (the locked read said so); a run made by hand
                    // with this id (manual run ids may not use the prefix now, but older
                    // databases may hold one) makes the insert do nothing: the slot is skipped,
                    // or inserting would fail on every pass and the schedule never move.
                    let Some((_, dag_run_id)) =
                        super::insert_dag_runs!(tx, std::slice::from_ref(&run), now).pop()
                    else {
                        let run_type: String = sqlx::query_scalar(
                            "SELECT run_type FROM dag_run WHERE dag_id = $1 AND run_id = $2",
                        )
                        .bind(dag_id)
                        .bind(&id)
                        .fetch_one(&mut *tx)
                        .await?;
                        super::store_next_dagrun!(&mut *tx, dag_id, (policy.next_after)(slot.data_interval));
                        tx.commit().await?;
                        return Ok(SlotOutcome::RunIdTaken { run_id: id, run_type: run_type.parse()? });
                    };
                    super::consume_queued_events!(tx, dag_run_id, dag_id, consumed);
                    (SlotOutcome::Created(id), slot.data_interval)
                }
            };
            super::store_next_dagrun!(&mut *tx, dag_id, (policy.next_after)(interval));
            tx.commit().await?;
            Ok(outcome)
        })
    }

    /// [`Store::create_scheduled_run`] for many DAGs in ONE transaction and a constant number
    /// of statements (lock and read all, insert all runs, move all slots), which is what lets
    /// a scheduler create thousands of runs a second. Outcomes come back in `slots` order.
    /// DAGs with an asset gate must go through [`Store::create_scheduled_run`].
    ///
    /// Should a run's logical date or id be taken by a run created outside the DAG lock (a
    /// manual run), nothing is written and [`StoreError::Conflict`] comes back: the caller then
    /// creates the pass's runs one DAG at a time, where that DAG's slot moves on past the run
    /// or its error is reported — a batch must not hide it.
    pub async fn create_scheduled_runs(
        &self,
        slots: &[DueSlot<'_>],
        job_id: Option<JobId>,
    ) -> Result<Vec<SlotOutcome>> {
        if slots.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(gated) = slots.iter().find(|s| s.policy.gate.is_some()) {
            return Err(StoreError::Conflict(format!(
                "dag `{}` has an asset gate: create its run with create_scheduled_run",
                gated.dag_id
            )));
        }
        let lock = self.skip_locked();
        let now = crate::time::now();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let ids: Vec<&str> = slots.iter().map(|s| s.dag_id).collect();
            let locked = lock_due_dags!(tx, &ids, lock);

            // Decide in memory: (index into slots, run id to create or None, next slot).
            let mut outcomes: Vec<SlotOutcome> = Vec::with_capacity(slots.len());
            let mut creates: Vec<(usize, String)> = Vec::new();
            let mut moves: Vec<(usize, Option<DagRunInfo>)> = Vec::new();
            for (i, due) in slots.iter().enumerate() {
                match decide(locked.get(due.dag_id), due.expected, due.policy.max_active_runs) {
                    Decision::Skip => outcomes.push(SlotOutcome::Skipped),
                    Decision::AtMaxActiveRuns => outcomes.push(SlotOutcome::AtMaxActiveRuns),
                    Decision::MoveOn(interval) => {
                        moves.push((i, (due.policy.next_after)(interval)));
                        outcomes.push(SlotOutcome::AlreadyExisted);
                    }
                    Decision::Create(slot) => {
                        let id = DagRunType::Scheduled.run_id(slot.run_after);
                        creates.push((i, id.clone()));
                        outcomes.push(SlotOutcome::Created(id));
                    }
                }
            }

            let runs: Vec<NewDagRun<'_>> = creates
                .iter()
                .map(|(i, _)| {
                    NewDagRun::of_slot(slots[*i].dag_id, DagRunType::Scheduled, slots[*i].expected, job_id)
                })
                .collect();
            let inserted: HashSet<String> = super::insert_dag_runs!(tx, &runs, now)
                .into_iter()
                .map(|(dag_id, _)| dag_id)
                .collect();
            let taken: Vec<&str> = creates
                .iter()
                .map(|(i, _)| slots[*i].dag_id)
                .filter(|dag_id| !inserted.contains(*dag_id))
                .collect();
            if !taken.is_empty() {
                // Rolled back here, not by dropping: a dropped PostgreSQL transaction sends its
                // ROLLBACK only when its connection is next used, so the DAG rows stayed locked
                // and the one-DAG-at-a-time retry, on another connection, skipped them all.
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "the scheduled run of {} DAG(s) conflicts with an existing run (first: `{}`)",
                    taken.len(),
                    taken[0]
                )));
            }
            for (i, _) in &creates {
                moves.push((*i, (slots[*i].policy.next_after)(slots[*i].expected.data_interval)));
            }

            for chunk in moves.chunks(CHUNK / 5) {
                let mut qb = sqlx::QueryBuilder::new(
                    "UPDATE dag SET next_dagrun = v.column2, next_dagrun_data_interval_start = v.column3, \
                     next_dagrun_data_interval_end = v.column4, next_dagrun_create_after = v.column5 FROM (",
                );
                qb.push_values(chunk, |mut b, (i, info)| {
                    b.push_bind(slots[*i].dag_id)
                        .push_bind(info.map(|i| i.logical_date()))
                        .push_bind(info.map(|i| i.data_interval.start))
                        .push_bind(info.map(|i| i.data_interval.end))
                        .push_bind(info.map(|i| i.run_after));
                });
                qb.push(") AS v WHERE dag.dag_id = v.column1");
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(outcomes)
        })
    }

    /// Creates a QUEUED backfill run for each slot whose logical date has no run yet; with
    /// `reprocess`, finished runs of those slots are queued again. One transaction.
    pub async fn create_backfill_runs(
        &self,
        dag_id: &str,
        slots: &[DagRunInfo],
        reprocess: bool,
        mut progress: impl FnMut(usize),
    ) -> Result<BackfillReport> {
        let now = crate::time::now();
        let mut report = BackfillReport::default();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            for (i, slot) in slots.iter().enumerate() {
                let existing: Option<(i64, String)> = sqlx::query_as(
                    "SELECT id, state FROM dag_run WHERE dag_id = $1 AND logical_date = $2",
                )
                .bind(dag_id)
                .bind(slot.logical_date())
                .fetch_optional(&mut *tx)
                .await?;
                match existing {
                    Some((id, state))
                        if reprocess
                            && state.parse::<DagRunState>().is_ok_and(DagRunState::is_finished) =>
                    {
                        sqlx::query(
                            "UPDATE dag_run SET state = 'queued', queued_at = $1, start_date = NULL, \
                             end_date = NULL WHERE id = $2",
                        )
                        .bind(now)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query(&Store::reset_task_instances_sql())
                            .bind(now)
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        report.requeued += 1;
                    }
                    Some(_) => report.skipped += 1,
                    None => {
                        let run = NewDagRun::of_slot(dag_id, DagRunType::Backfill, *slot, None);
                        if super::insert_dag_runs!(tx, std::slice::from_ref(&run), now).is_empty() {
                            report.skipped += 1;
                        } else {
                            report.created += 1;
                        }
                    }
                }
                progress(i + 1);
            }
            tx.commit().await?;
            Ok(report)
        })
    }
}
