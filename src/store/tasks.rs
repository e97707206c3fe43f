//! Statements of tasks: advancing a run's task instances (the scheduler's pass and the
//! executor's after-try step share [`advance_runs!`]), claiming scheduled task instances for an
//! executor, recording how each try ended (fenced by try number and executor), failing over
//! the tries of executors that stopped heartbeating, clearing and marking task instances, and
//! the read models of `tasks list|logs` and `status`. What a trigger rule allows is decided by
//! [`crate::task::graph`]; this module reads, locks and writes.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;

use super::{push_in_list, with_db, JobId, Result, Store, StoreError, CHUNK, TRIGGERER_JOB};
use crate::dag_run::DagRunState;
use crate::task::{graph, TaskInstanceState, TaskSpec};
use crate::time::isoformat;

/// The `job_type` of an executor process.
pub const EXECUTOR_JOB: &str = "ExecutorJob";

/// A `task_instance` row's id.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, sqlx::Type, Serialize,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct TaskInstanceId(i64);

impl std::fmt::Display for TaskInstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A try an executor claimed, with what it needs to run it.
#[derive(Debug, Clone)]
pub struct ClaimedTry {
    pub id: TaskInstanceId,
    pub dag_run_id: i64,
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    /// This try's number, from 1.
    pub try_number: u32,
    /// Tries allowed in all (Airflow's `max_tries` + 1).
    pub tries_allowed: u32,
    /// The task's current definition; `None` when the DAG no longer defines the task.
    pub spec: Option<TaskSpec>,
    pub logical_date: Option<DateTime<Utc>>,
    pub data_interval_start: Option<DateTime<Utc>>,
    pub data_interval_end: Option<DateTime<Utc>>,
    pub conf: Value,
    /// The asset events the run consumed: `id, asset, uri, timestamp, extra`.
    pub triggering_asset_events: Vec<Value>,
    /// Set when the try resumes after a deferral: the trigger's event (Airflow's
    /// `next_kwargs["event"]`).
    pub trigger_event: Option<Value>,
    /// Running time of this try before its deferrals (what `execution_timeout` counts on).
    pub ran_before: Duration,
}

/// How a try ended, as its executor saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum TryEnd {
    Success,
    /// Failed; retried after `retry_delay` while tries remain, unless `retryable` is false.
    Failed {
        retry_delay: Duration,
        retryable: bool,
    },
    /// Not the task's failure (its executor shut down): scheduled again, and the try does not
    /// count against its retries.
    HandedBack,
    /// The try gives its slot back and waits for a trigger (a new `trigger` row, which the
    /// triggerers run); when it fires, the same try is scheduled again with the event.
    Deferred(Deferral),
}

/// What a deferring try waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Deferral {
    /// Canonical classpath.
    pub classpath: String,
    /// Canonical JSON of the kwargs (`{ env = "NAME" }` references kept).
    pub kwargs: String,
    /// The trigger row's identity: unique per deferral (two tasks waiting on the same file
    /// each fire once).
    pub hash: String,
    /// When the deferral fails the task with `trigger timeout`.
    pub timeout_at: Option<DateTime<Utc>>,
}

/// A finished try, to record.
#[derive(Debug, Clone)]
pub struct EndedTry {
    pub id: TaskInstanceId,
    pub dag_run_id: i64,
    pub try_number: u32,
    pub end: TryEnd,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// One line for the try's log row (`success`, `exit status 1`, …).
    pub outcome: String,
    pub log: Vec<u8>,
}

/// What an executor reports about its tries.
#[derive(Debug, Clone)]
pub enum TryUpdate {
    Started {
        id: TaskInstanceId,
        try_number: u32,
        pid: u32,
        at: DateTime<Utc>,
    },
    Ended(EndedTry),
}

/// What recording a batch of updates did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Per update, in order: whether it was recorded (false: the try was no longer this
    /// executor's, so another took it over or a user changed its state).
    pub applied: Vec<bool>,
    /// Task instances made `scheduled` by the runs' advance.
    pub scheduled: usize,
    /// Runs that ended (their place under `max_active_runs` is free).
    pub runs_ended: usize,
}

/// One row of `tasks list`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TaskRow {
    pub dag_id: String,
    pub run_id: String,
    pub task_id: String,
    /// `none` when the task instance has no state yet.
    pub state: String,
    pub try_number: i64,
    pub max_tries: i64,
    pub operator: String,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    /// Seconds.
    pub duration: Option<f64>,
    pub hostname: Option<String>,
    pub trigger_id: Option<i64>,
}

/// One try's log.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskLog {
    pub try_number: i64,
    pub outcome: String,
    pub content: Vec<u8>,
}

/// `status`: one snapshot of the processes and the task queue.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Status {
    pub triggerers: Vec<TriggererStatus>,
    pub executors: Vec<ExecutorStatus>,
    pub deferred_tasks: i64,
    /// Scheduled task instances waiting for an executor slot.
    pub tasks_executable: i64,
    /// Of those, how many no alive executor has a free slot for now.
    pub tasks_starving: i64,
    /// Every task instance, counted by state (`none` for no state yet).
    pub task_instances: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TriggererStatus {
    pub id: JobId,
    pub hostname: String,
    pub alive: bool,
    pub latest_heartbeat: DateTime<Utc>,
    pub capacity_left: Option<i64>,
    pub triggers_running: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExecutorStatus {
    pub id: JobId,
    pub hostname: String,
    pub alive: bool,
    pub latest_heartbeat: DateTime<Utc>,
    pub open_slots: Option<i64>,
    pub queued_tasks: i64,
    pub running_tasks: i64,
}

/// What a cleared task instance becomes: no state, its tries so far kept and its retries
/// given anew (Airflow's `max_tries = try_number + retries`).
const RESET_TASK_INSTANCE: &str = "state = NULL, \
     max_tries = try_number + COALESCE((SELECT t.retries FROM dag_task t \
         WHERE t.dag_id = task_instance.dag_id AND t.task_id = task_instance.task_id), 0), \
     start_date = NULL, end_date = NULL, duration = NULL, next_retry_at = NULL, \
     queued_by_job_id = NULL, queued_dttm = NULL, pid = NULL, \
     trigger_id = NULL, trigger_timeout = NULL, next_method = NULL, next_kwargs = NULL";

fn parse_state(text: Option<String>) -> Result<Option<TaskInstanceState>> {
    Ok(text.map(|s| s.parse::<TaskInstanceState>()).transpose()?)
}

fn parse_spec(dag_id: &str, definition: Value) -> Option<TaskSpec> {
    match serde_json::from_value::<TaskSpec>(definition) {
        Ok(spec) => Some(spec),
        Err(e) => {
            tracing::warn!(%dag_id, error = %e, "a stored task definition does not parse; re-run `dags sync`");
            None
        }
    }
}

/// A task's current definition among `specs` (as [`dag_tasks!`] read them).
fn spec_of<'a>(
    specs: &'a HashMap<String, Vec<TaskSpec>>,
    dag_id: &str,
    task_id: &str,
) -> Option<&'a TaskSpec> {
    specs.get(dag_id)?.iter().find(|s| s.task_id == task_id)
}

/// How long the try after `try_number` of a task waits (none for a task no longer defined).
fn retry_delay(
    specs: &HashMap<String, Vec<TaskSpec>>,
    dag_id: &str,
    task_id: &str,
    try_number: u32,
) -> Duration {
    spec_of(specs, dag_id, task_id).map_or(Duration::ZERO, |s| s.retry_delay_after(try_number))
}

fn try_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// Reads the current task definitions of `$dag_ids` on `$conn`, in definition order.
macro_rules! dag_tasks {
    ($conn:expr, $dag_ids:expr) => {{
        let dag_ids: Vec<&str> = $dag_ids;
        let mut specs: HashMap<String, Vec<TaskSpec>> = HashMap::new();
        for chunk in dag_ids.chunks(CHUNK) {
            let mut qb =
                sqlx::QueryBuilder::new("SELECT dag_id, definition FROM dag_task WHERE dag_id IN ");
            push_in_list(&mut qb, chunk);
            qb.push(" ORDER BY dag_id, position");
            for row in qb.build().fetch_all(&mut *$conn).await? {
                let dag_id: String = row.try_get("dag_id")?;
                let definition: Json<Value> = row.try_get("definition")?;
                if let Some(spec) = parse_spec(&dag_id, definition.0) {
                    specs.entry(dag_id).or_default().push(spec);
                }
            }
        }
        specs
    }};
}

/// Locks the `dag_run` rows `$ids` on `$tx` (in id order, so two executors never deadlock):
/// what a run's task instances become is decided by one transaction at a time.
macro_rules! lock_runs {
    ($tx:expr, $store:expr, $ids:expr) => {{
        let lock = $store.lock_rows();
        let mut ids: Vec<i64> = $ids;
        ids.sort_unstable();
        ids.dedup();
        if !lock.is_empty() {
            for chunk in ids.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("SELECT id FROM dag_run WHERE id IN ");
                push_in_list(&mut qb, chunk);
                qb.push(" ORDER BY id").push(lock);
                qb.build().fetch_all(&mut *$tx).await?;
            }
        }
        ids
    }};
}

/// Advances the running runs among `$run_ids` on `$tx` (their rows locked by the caller):
/// task instances whose upstreams allow it become `scheduled`, those that can no longer run
/// `upstream_failed` or `skipped`, and a run whose tasks all ended gets its final state. Clears
/// the runs' `tasks_changed`. Evaluates to how many task instances were scheduled and how many
/// runs ended.
macro_rules! advance_runs {
    ($tx:expr, $run_ids:expr, $now:expr) => {{
        let run_ids: &[i64] = $run_ids;
        let now: DateTime<Utc> = $now;
        let mut scheduled = 0usize;
        let mut ended = 0usize;
        for chunk in run_ids.chunks(CHUNK) {
            let mut qb = sqlx::QueryBuilder::new(
                "SELECT ti.id, ti.dag_run_id, ti.dag_id, ti.task_id, ti.state FROM task_instance ti \
                 JOIN dag_run r ON r.id = ti.dag_run_id WHERE r.state = 'running' AND ti.dag_run_id IN ",
            );
            push_in_list(&mut qb, chunk);
            let mut runs: HashMap<i64, (String, HashMap<String, (TaskInstanceId, Option<TaskInstanceState>)>)> =
                HashMap::new();
            for row in qb.build().fetch_all(&mut *$tx).await? {
                let run: i64 = row.try_get("dag_run_id")?;
                let dag_id: String = row.try_get("dag_id")?;
                let state = parse_state(row.try_get("state")?)?;
                runs.entry(run)
                    .or_insert_with(|| (dag_id, HashMap::new()))
                    .1
                    .insert(row.try_get("task_id")?, (row.try_get("id")?, state));
            }
            let dag_ids: BTreeSet<&str> = runs.values().map(|(d, _)| d.as_str()).collect();
            let specs = dag_tasks!($tx, dag_ids.into_iter().collect());
            let mut to: HashMap<TaskInstanceState, Vec<TaskInstanceId>> = HashMap::new();
            let mut finished: HashMap<DagRunState, Vec<i64>> = HashMap::new();
            for (run, (dag_id, tis)) in &runs {
                let Some(tasks) = specs.get(dag_id) else { continue };
                let states: HashMap<String, Option<TaskInstanceState>> =
                    tis.iter().map(|(task, (_, state))| (task.clone(), *state)).collect();
                let advance = graph::advance(tasks, &states);
                for (state, ids) in [
                    (TaskInstanceState::Scheduled, &advance.scheduled),
                    (TaskInstanceState::UpstreamFailed, &advance.upstream_failed),
                    (TaskInstanceState::Skipped, &advance.skipped),
                ] {
                    to.entry(state)
                        .or_default()
                        .extend(ids.iter().filter_map(|task| tis.get(task).map(|(id, _)| *id)));
                }
                if let Some(state) = advance.run_state {
                    finished.entry(state).or_default().push(*run);
                }
            }
            for (state, ids) in &to {
                for ids in ids.chunks(CHUNK) {
                    let mut qb = sqlx::QueryBuilder::new("UPDATE task_instance SET state = ");
                    qb.push_bind(state.as_str()).push(", updated_at = ").push_bind(now);
                    if state.is_finished() {
                        qb.push(", end_date = ").push_bind(now);
                    }
                    qb.push(" WHERE state IS NULL AND id IN ");
                    push_in_list(&mut qb, ids);
                    let n = qb.build().execute(&mut *$tx).await?.rows_affected();
                    if *state == TaskInstanceState::Scheduled {
                        scheduled += usize::try_from(n).unwrap_or(0);
                    }
                }
            }
            for (state, ids) in &finished {
                let mut qb = sqlx::QueryBuilder::new("UPDATE dag_run SET state = ");
                qb.push_bind(state.as_str())
                    .push(", end_date = ")
                    .push_bind(now)
                    .push(" WHERE state = 'running' AND id IN ");
                push_in_list(&mut qb, ids);
                let n = qb.build().execute(&mut *$tx).await?.rows_affected();
                ended += usize::try_from(n).unwrap_or(0);
            }
            let mut qb = sqlx::QueryBuilder::new(
                "UPDATE dag_run SET tasks_changed = FALSE WHERE tasks_changed = TRUE AND id IN ",
            );
            push_in_list(&mut qb, chunk);
            qb.build().execute(&mut *$tx).await?;
        }
        (scheduled, ended)
    }};
}

/// Ends try `$try_number` of task instance `$id` on `$tx` as `$end` says, if it is still that
/// try, still queued or running, and still held by `$holder` (an executor's job id, -1 for
/// none): the fence that records a try's end once. Evaluates to whether it was recorded.
macro_rules! end_try {
    ($tx:expr, $id:expr, $try_number:expr, $holder:expr, $end:expr, $started:expr, $now:expr) => {{
        let end: &TryEnd = $end;
        let now: DateTime<Utc> = $now;
        let started: DateTime<Utc> = $started;
        let duration = (now - started).num_microseconds().unwrap_or(0) as f64 / 1e6;
        let fence = " WHERE id = $1 AND try_number = $2 AND COALESCE(queued_by_job_id, -1) = $3 \
                     AND state IN ('queued', 'running')";
        let holder: i64 = $holder;
        let n = match end {
            TryEnd::Success => sqlx::query(&format!(
                "UPDATE task_instance SET state = 'success', start_date = COALESCE(start_date, $4), \
                 end_date = $5, duration = COALESCE(duration, 0) + $6, updated_at = $5{fence}"
            ))
            .bind($id)
            .bind(i64::from($try_number))
            .bind(holder)
            .bind(started)
            .bind(now)
            .bind(duration)
            .execute(&mut *$tx)
            .await?,
            TryEnd::Failed { retry_delay, retryable } => {
                let retry_at = now
                    + chrono::Duration::from_std(*retry_delay).unwrap_or(chrono::Duration::days(1));
                sqlx::query(&format!(
                    "UPDATE task_instance SET \
                     state = CASE WHEN $7 AND try_number <= max_tries THEN 'up_for_retry' ELSE 'failed' END, \
                     next_retry_at = CASE WHEN $7 AND try_number <= max_tries THEN $8 ELSE NULL END, \
                     start_date = COALESCE(start_date, $4), end_date = $5, duration = COALESCE(duration, 0) + $6, \
                     updated_at = $5{fence}"
                ))
                .bind($id)
                .bind(i64::from($try_number))
                .bind(holder)
                .bind(started)
                .bind(now)
                .bind(duration)
                .bind(*retryable)
                .bind(retry_at)
                .execute(&mut *$tx)
                .await?
            }
            TryEnd::HandedBack => sqlx::query(&format!(
                "UPDATE task_instance SET state = 'scheduled', max_tries = max_tries + 1, \
                 queued_by_job_id = NULL, pid = NULL, start_date = NULL, end_date = NULL, \
                 duration = NULL, updated_at = $4{fence}"
            ))
            .bind($id)
            .bind(i64::from($try_number))
            .bind(holder)
            .bind(now)
            .execute(&mut *$tx)
            .await?,
            TryEnd::Deferred(deferral) => {
                let n = sqlx::query(&format!(
                    "UPDATE task_instance SET state = 'deferred', trigger_timeout = $4, \
                     next_method = 'execute_complete', next_kwargs = NULL, queued_by_job_id = NULL, pid = NULL, \
                     start_date = COALESCE(start_date, $5), duration = COALESCE(duration, 0) + $6, \
                     updated_at = $7{fence}"
                ))
                .bind($id)
                .bind(i64::from($try_number))
                .bind(holder)
                .bind(deferral.timeout_at)
                .bind(started)
                .bind(duration)
                .bind(now)
                .execute(&mut *$tx)
                .await?;
                if n.rows_affected() == 1 {
                    let trigger_id: i64 = sqlx::query_scalar(
                        "INSERT INTO trigger (classpath, kwargs, hash, created_date) VALUES ($1, $2, $3, $4) RETURNING id",
                    )
                    .bind(&deferral.classpath)
                    .bind(&deferral.kwargs)
                    .bind(&deferral.hash)
                    .bind(now)
                    .fetch_one(&mut *$tx)
                    .await?;
                    sqlx::query("UPDATE task_instance SET trigger_id = $1 WHERE id = $2")
                        .bind(trigger_id)
                        .bind($id)
                        .execute(&mut *$tx)
                        .await?;
                }
                n
            }
        };
        n.rows_affected() == 1
    }};
}

/// Fails deferred task instance `$id` waiting on trigger `$trigger_id` (retried while tries
/// remain), removes the trigger and notes `$reason` in the try's log, on `$tx`. Evaluates to
/// the run to advance when it was still waiting on that trigger.
macro_rules! fail_deferred {
    ($tx:expr, $id:expr, $trigger_id:expr, $retry_delay:expr, $reason:expr, $now:expr) => {{
        let now: DateTime<Utc> = $now;
        let retry_at = now + chrono::Duration::from_std($retry_delay).unwrap_or(chrono::Duration::days(1));
        let failed: Option<(i64, i64)> = sqlx::query_as(
            "UPDATE task_instance SET \
             state = CASE WHEN try_number <= max_tries THEN 'up_for_retry' ELSE 'failed' END, \
             next_retry_at = CASE WHEN try_number <= max_tries THEN $1 ELSE NULL END, \
             trigger_id = NULL, trigger_timeout = NULL, next_method = NULL, next_kwargs = NULL, \
             end_date = $2, updated_at = $2 WHERE id = $3 AND state = 'deferred' AND trigger_id = $4 \
             RETURNING dag_run_id, try_number",
        )
        .bind(retry_at)
        .bind(now)
        .bind($id)
        .bind($trigger_id)
        .fetch_optional(&mut *$tx)
        .await?;
        sqlx::query("DELETE FROM trigger WHERE id = $1")
            .bind($trigger_id)
            .execute(&mut *$tx)
            .await?;
        match failed {
            Some((run, try_number)) => {
                let reason: &str = $reason;
                let note = format!("[triggerer] failed: {reason}\n");
                append_log!($tx, $id, try_u32(try_number), None::<String>, format!("failed: {reason}"), note.as_bytes(), now);
                Some(run)
            }
            None => None,
        }
    }};
}

/// Adds to try `$try_number`'s log: a try that deferred and resumed writes its log in parts,
/// and a late report of a failed-over try adds what it saw after the failover's note. The
/// outcome is the latest part's.
macro_rules! append_log {
    ($tx:expr, $id:expr, $try_number:expr, $hostname:expr, $outcome:expr, $content:expr, $now:expr) => {{
        let content: &[u8] = $content;
        let existing: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT content FROM task_instance_log WHERE task_instance_id = $1 AND try_number = $2",
        )
        .bind($id)
        .bind(i64::from($try_number))
        .fetch_optional(&mut *$tx)
        .await?;
        match existing {
            None => sqlx::query(
                "INSERT INTO task_instance_log (task_instance_id, try_number, hostname, outcome, content, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind($id)
            .bind(i64::from($try_number))
            .bind($hostname)
            .bind($outcome)
            .bind(content)
            .bind($now)
            .execute(&mut *$tx)
            .await?,
            Some(mut all) => {
                all.extend_from_slice(content);
                sqlx::query(
                    "UPDATE task_instance_log SET content = $1, outcome = $2 WHERE task_instance_id = $3 AND try_number = $4",
                )
                .bind(all)
                .bind($outcome)
                .bind($id)
                .bind(i64::from($try_number))
                .execute(&mut *$tx)
                .await?
            }
        };
    }};
}

/// The error for a task run `$run` does not have, naming the tasks it has.
macro_rules! unknown_task {
    ($conn:expr, $run:expr, $dag_id:expr, $run_id:expr, $task_id:expr) => {{
        let tasks: Vec<String> =
            sqlx::query_scalar("SELECT task_id FROM task_instance WHERE dag_run_id = $1 ORDER BY id")
                .bind($run)
                .fetch_all(&mut *$conn)
                .await?;
        StoreError::NotFound(if tasks.is_empty() {
            format!(
                "run `{}` of `{}` has no tasks (its DAG defined no [[dag.task]] when it was created)",
                $run_id, $dag_id
            )
        } else {
            format!(
                "run `{}` of `{}` has no task `{}`; its tasks are {}",
                $run_id,
                $dag_id,
                $task_id,
                tasks.join(", ")
            )
        })
    }};
}

/// A run by its DAG and run id (its row locked with `$lock`), for the task commands; the error
/// names what is unknown.
macro_rules! find_run {
    ($tx:expr, $lock:expr, $dag_id:expr, $run_id:expr) => {{
        let lock: &str = $lock;
        let found: Option<(i64, String)> = sqlx::query_as(&format!(
            "SELECT id, state FROM dag_run WHERE dag_id = $1 AND run_id = $2{lock}"
        ))
        .bind($dag_id)
        .bind($run_id)
        .fetch_optional(&mut *$tx)
        .await?;
        match found {
            Some((id, state)) => (id, state.parse::<DagRunState>()?),
            None => {
                let dag: Option<String> =
                    sqlx::query_scalar("SELECT dag_id FROM dag WHERE dag_id = $1")
                        .bind($dag_id)
                        .fetch_optional(&mut *$tx)
                        .await?;
                return Err(StoreError::NotFound(match dag {
                    None => format!("DAG `{}` not found; `triggerer dags list` shows the DAGs", $dag_id),
                    Some(_) => format!(
                        "DAG `{}` has no run `{}`; `triggerer runs list --dag {}` shows its runs",
                        $dag_id, $run_id, $dag_id
                    ),
                }));
            }
        }
    }};
}

impl Store {
    /// Retried task instances whose delay is over become `scheduled` again.
    pub async fn retry_due_task_instances(&self, now: DateTime<Utc>) -> Result<usize> {
        with_db!(self, pool => {
            let n = sqlx::query(
                "UPDATE task_instance SET state = 'scheduled', updated_at = $1 \
                 WHERE state = 'up_for_retry' AND next_retry_at <= $1",
            )
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected();
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    /// Advances the runs whose task instances changed (at most 500 a call; another scheduler's
    /// runs are skipped). Returns how many runs were looked at and task instances scheduled.
    pub async fn advance_changed_runs(&self, now: DateTime<Utc>) -> Result<(usize, usize)> {
        let lock = self.skip_locked();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let ids: Vec<i64> = sqlx::query_scalar(&format!(
                "SELECT id FROM dag_run WHERE tasks_changed ORDER BY id LIMIT 500{lock}"
            ))
            .fetch_all(&mut *tx)
            .await?;
            if ids.is_empty() {
                return Ok((0, 0));
            }
            let (scheduled, _) = advance_runs!(tx, &ids, now);
            tx.commit().await?;
            Ok((ids.len(), scheduled))
        })
    }

    /// Claims up to `limit` scheduled task instances for executor `job_id` (oldest first;
    /// another executor's claims are skipped, not waited for) and starts their next try. A
    /// paused DAG's task instances wait, as Airflow's scheduler leaves them unqueued.
    pub async fn claim_task_instances(
        &self,
        job_id: JobId,
        hostname: &str,
        limit: usize,
    ) -> Result<Vec<ClaimedTry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let lock = self.skip_locked();
        let now = crate::time::now();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let picked: Vec<(TaskInstanceId, Option<Json<Value>>, Option<f64>)> = sqlx::query_as(&format!(
                "SELECT id, next_kwargs, duration FROM task_instance WHERE state = 'scheduled' \
                 AND dag_id IN (SELECT dag_id FROM dag WHERE is_paused = FALSE) ORDER BY id LIMIT $1{lock}"
            ))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
            let ids: Vec<TaskInstanceId> = picked.iter().map(|(id, _, _)| *id).collect();
            // A resumed try (its deferral fired) goes on as the same try, with the event.
            let resumed: HashMap<TaskInstanceId, (Value, f64)> = picked
                .into_iter()
                .filter_map(|(id, event, ran)| event.map(|e| (id, (e.0, ran.unwrap_or(0.0)))))
                .collect();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut qb = sqlx::QueryBuilder::new(
                "UPDATE task_instance SET state = 'queued', \
                 try_number = CASE WHEN next_method IS NULL THEN try_number + 1 ELSE try_number END, \
                 start_date = CASE WHEN next_method IS NULL THEN NULL ELSE start_date END, \
                 duration = CASE WHEN next_method IS NULL THEN NULL ELSE duration END, \
                 next_method = NULL, next_kwargs = NULL, queued_dttm = ",
            );
            qb.push_bind(now)
                .push(", queued_by_job_id = ")
                .push_bind(job_id)
                .push(", hostname = ")
                .push_bind(hostname)
                .push(", pid = NULL, end_date = NULL, next_retry_at = NULL, updated_at = ")
                .push_bind(now)
                .push(" WHERE state = 'scheduled' AND id IN ");
            push_in_list(&mut qb, &ids);
            qb.push(" RETURNING id, dag_run_id, dag_id, run_id, task_id, try_number, max_tries");
            let claimed = qb.build().fetch_all(&mut *tx).await?;
            let mut tries: Vec<ClaimedTry> = Vec::with_capacity(claimed.len());
            for row in claimed {
                tries.push(ClaimedTry {
                    id: row.try_get("id")?,
                    dag_run_id: row.try_get("dag_run_id")?,
                    dag_id: row.try_get("dag_id")?,
                    run_id: row.try_get("run_id")?,
                    task_id: row.try_get("task_id")?,
                    try_number: try_u32(row.try_get("try_number")?),
                    tries_allowed: try_u32(row.try_get::<i64, _>("max_tries")?.saturating_add(1)),
                    spec: None,
                    logical_date: None,
                    data_interval_start: None,
                    data_interval_end: None,
                    conf: Value::Object(Default::default()),
                    triggering_asset_events: Vec::new(),
                    trigger_event: None,
                    ran_before: Duration::ZERO,
                });
            }
            tries.sort_by_key(|t| t.id);
            let run_ids: BTreeSet<i64> = tries.iter().map(|t| t.dag_run_id).collect();
            let run_ids: Vec<i64> = run_ids.into_iter().collect();
            let dag_ids: BTreeSet<&str> = tries.iter().map(|t| t.dag_id.as_str()).collect();
            let specs = dag_tasks!(tx, dag_ids.into_iter().collect());
            // Per run: logical date, data interval start and end, conf.
            type RunContext = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, Option<DateTime<Utc>>, Value);
            let mut runs: HashMap<i64, RunContext> = HashMap::new();
            let mut events: HashMap<i64, Vec<Value>> = HashMap::new();
            for chunk in run_ids.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT id, logical_date, data_interval_start, data_interval_end, conf FROM dag_run WHERE id IN ",
                );
                push_in_list(&mut qb, chunk);
                for row in qb.build().fetch_all(&mut *tx).await? {
                    let conf: Json<Value> = row.try_get("conf")?;
                    runs.insert(
                        row.try_get("id")?,
                        (
                            row.try_get("logical_date")?,
                            row.try_get("data_interval_start")?,
                            row.try_get("data_interval_end")?,
                            conf.0,
                        ),
                    );
                }
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT x.dag_run_id, e.id, a.name, a.uri, e.timestamp, e.extra FROM dagrun_asset_event x \
                     JOIN asset_event e ON e.id = x.event_id JOIN asset a ON a.id = e.asset_id \
                     WHERE x.dag_run_id IN ",
                );
                push_in_list(&mut qb, chunk);
                qb.push(" ORDER BY x.dag_run_id, e.id");
                for row in qb.build().fetch_all(&mut *tx).await? {
                    let timestamp: DateTime<Utc> = row.try_get("timestamp")?;
                    let extra: Json<Value> = row.try_get("extra")?;
                    events.entry(row.try_get("dag_run_id")?).or_default().push(serde_json::json!({
                        "id": row.try_get::<i64, _>("id")?,
                        "asset": row.try_get::<String, _>("name")?,
                        "uri": row.try_get::<String, _>("uri")?,
                        "timestamp": isoformat(timestamp),
                        "extra": extra.0,
                    }));
                }
            }
            tx.commit().await?;
            for t in &mut tries {
                t.spec = spec_of(&specs, &t.dag_id, &t.task_id).cloned();
                if let Some((logical, start, end, conf)) = runs.get(&t.dag_run_id) {
                    t.logical_date = *logical;
                    t.data_interval_start = *start;
                    t.data_interval_end = *end;
                    t.conf = conf.clone();
                }
                t.triggering_asset_events = events.get(&t.dag_run_id).cloned().unwrap_or_default();
                if let Some((event, ran)) = resumed.get(&t.id) {
                    t.trigger_event = Some(event.clone());
                    t.ran_before = Duration::try_from_secs_f64(*ran).unwrap_or_default();
                }
            }
            Ok(tries)
        })
    }

    /// Records what executor `job_id` reports, in one transaction, and advances the runs whose
    /// tries ended (Airflow's mini scheduler: a downstream task is scheduled in the commit that
    /// records its upstream's success).
    pub async fn record_tries(
        &self,
        job_id: JobId,
        hostname: &str,
        updates: &[TryUpdate],
    ) -> Result<Recorded> {
        let now = crate::time::now();
        let holder: i64 = job_id.0;
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let ended_runs: Vec<i64> = updates
                .iter()
                .filter_map(|u| match u {
                    TryUpdate::Ended(e) => Some(e.dag_run_id),
                    TryUpdate::Started { .. } => None,
                })
                .collect();
            lock_runs!(tx, self, ended_runs);
            let mut recorded = Recorded::default();
            let mut touched: Vec<i64> = Vec::new();
            for update in updates {
                let applied = match update {
                    TryUpdate::Started { id, try_number, pid, at } => {
                        sqlx::query(
                            "UPDATE task_instance SET state = 'running', pid = $1, start_date = COALESCE(start_date, $2), updated_at = $2 \
                             WHERE id = $3 AND try_number = $4 AND queued_by_job_id = $5 AND state = 'queued'",
                        )
                        .bind(i64::from(*pid))
                        .bind(*at)
                        .bind(*id)
                        .bind(i64::from(*try_number))
                        .bind(job_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1
                    }
                    TryUpdate::Ended(e) => {
                        let applied =
                            end_try!(tx, e.id, e.try_number, holder, &e.end, e.started_at, e.ended_at);
                        let outcome = if applied {
                            e.outcome.clone()
                        } else {
                            format!("{} (not recorded: the try was no longer this executor's)", e.outcome)
                        };
                        append_log!(tx, e.id, e.try_number, hostname, outcome, &e.log, now);
                        if applied {
                            touched.push(e.dag_run_id);
                        }
                        applied
                    }
                };
                recorded.applied.push(applied);
            }
            touched.sort_unstable();
            touched.dedup();
            (recorded.scheduled, recorded.runs_ended) = advance_runs!(tx, &touched, now);
            tx.commit().await?;
            Ok(recorded)
        })
    }

    /// Fails the tries held by executors that stopped heartbeating (none since `alive_since`)
    /// or ended without recording them — retried while retries remain — and advances their
    /// runs. Any executor may call this; each try is failed over once.
    pub async fn fail_over_task_instances(&self, alive_since: DateTime<Utc>) -> Result<usize> {
        let now = crate::time::now();
        with_db!(self, pool => {
            let orphans = sqlx::query(
                "SELECT ti.id, ti.dag_run_id, ti.dag_id, ti.task_id, ti.try_number, ti.queued_by_job_id, \
                 ti.hostname, ti.start_date, ti.queued_dttm FROM task_instance ti \
                 WHERE ti.state IN ('queued', 'running') AND (ti.queued_by_job_id IS NULL OR ti.queued_by_job_id NOT IN ( \
                     SELECT j.id FROM job j WHERE j.job_type = $1 AND j.end_date IS NULL AND j.latest_heartbeat > $2))",
            )
            .bind(EXECUTOR_JOB)
            .bind(alive_since)
            .fetch_all(pool)
            .await?;
            if orphans.is_empty() {
                return Ok(0);
            }
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let mut run_ids = Vec::with_capacity(orphans.len());
            let mut dag_ids: BTreeSet<String> = BTreeSet::new();
            for row in &orphans {
                run_ids.push(row.try_get::<i64, _>("dag_run_id")?);
                dag_ids.insert(row.try_get("dag_id")?);
            }
            lock_runs!(tx, self, run_ids);
            let specs = dag_tasks!(tx, dag_ids.iter().map(String::as_str).collect());
            let mut touched: Vec<i64> = Vec::new();
            for row in &orphans {
                let id: TaskInstanceId = row.try_get("id")?;
                let try_number = try_u32(row.try_get("try_number")?);
                let holder: Option<i64> = row.try_get("queued_by_job_id")?;
                let dag_id: String = row.try_get("dag_id")?;
                let task_id: String = row.try_get("task_id")?;
                let end = TryEnd::Failed {
                    retry_delay: retry_delay(&specs, &dag_id, &task_id, try_number),
                    retryable: spec_of(&specs, &dag_id, &task_id).is_some(),
                };
                let started: DateTime<Utc> = row
                    .try_get::<Option<DateTime<Utc>>, _>("start_date")?
                    .or(row.try_get("queued_dttm")?)
                    .unwrap_or(now);
                if end_try!(tx, id, try_number, holder.unwrap_or(-1), &end, started, now) {
                    let hostname: Option<String> = row.try_get("hostname")?;
                    let who = match holder {
                        Some(job) => format!("executor job {job} on {}", hostname.as_deref().unwrap_or("an unknown host")),
                        None => "no executor".to_string(),
                    };
                    let note = format!(
                        "[triggerer] {who} stopped heartbeating while it held this try; the try \
                         counts as failed and its output was not kept\n"
                    );
                    append_log!(tx, id, try_number, hostname, "failed: its executor stopped heartbeating", note.as_bytes(), now);
                    touched.push(row.try_get("dag_run_id")?);
                    tracing::warn!(%dag_id, %task_id, try_number, %who, "failed over a try whose executor stopped heartbeating");
                }
            }
            touched.sort_unstable();
            touched.dedup();
            advance_runs!(tx, &touched, now);
            tx.commit().await?;
            Ok(touched.len())
        })
    }

    /// Deferred task instances whose `trigger_timeout` passed: failed with `trigger timeout`
    /// (retried while tries remain), as Airflow's scheduler does; their triggers are removed.
    /// Returns how many.
    pub async fn time_out_deferrals(&self, now: DateTime<Utc>) -> Result<usize> {
        with_db!(self, pool => {
            let due: Vec<(TaskInstanceId, i64, i64, String, String, i64)> = sqlx::query_as(
                "SELECT id, trigger_id, dag_run_id, dag_id, task_id, try_number FROM task_instance \
                 WHERE state = 'deferred' AND trigger_timeout <= $1 AND trigger_id IS NOT NULL",
            )
            .bind(now)
            .fetch_all(pool)
            .await?;
            if due.is_empty() {
                return Ok(0);
            }
            let mut tx = pool.begin_with(self.begin_write()).await?;
            lock_runs!(tx, self, due.iter().map(|d| d.2).collect());
            let dag_ids: BTreeSet<&str> = due.iter().map(|d| d.3.as_str()).collect();
            let specs = dag_tasks!(tx, dag_ids.into_iter().collect());
            let mut touched = Vec::new();
            for (id, trigger_id, _, dag_id, task_id, try_number) in &due {
                let delay = retry_delay(&specs, dag_id, task_id, try_u32(*try_number));
                if let Some(run) = fail_deferred!(tx, *id, *trigger_id, delay, "trigger timeout", now) {
                    touched.push(run);
                }
            }
            touched.sort_unstable();
            touched.dedup();
            advance_runs!(tx, &touched, now);
            tx.commit().await?;
            Ok(due.len())
        })
    }

    /// Fails the task deferred on `trigger_id` because its trigger keeps failing (`reason`
    /// says how). Nothing happens for a watcher's trigger.
    pub async fn fail_task_trigger(&self, trigger_id: i64, reason: &str) -> Result<bool> {
        let now = crate::time::now();
        with_db!(self, pool => {
            let waiting: Option<(TaskInstanceId, i64, String, String, i64)> = sqlx::query_as(
                "SELECT id, dag_run_id, dag_id, task_id, try_number FROM task_instance \
                 WHERE state = 'deferred' AND trigger_id = $1",
            )
            .bind(trigger_id)
            .fetch_optional(pool)
            .await?;
            let Some((id, run, dag_id, task_id, try_number)) = waiting else {
                return Ok(false);
            };
            let mut tx = pool.begin_with(self.begin_write()).await?;
            lock_runs!(tx, self, vec![run]);
            let specs = dag_tasks!(tx, vec![dag_id.as_str()]);
            let delay = retry_delay(&specs, &dag_id, &task_id, try_u32(try_number));
            let failed = fail_deferred!(tx, id, trigger_id, delay, reason, now);
            if let Some(run) = failed {
                advance_runs!(tx, &[run], now);
            }
            tx.commit().await?;
            Ok(failed.is_some())
        })
    }

    /// Tries of `job_id` that are no longer its to run (marked or cleared by a user, failed
    /// over): its executor stops them.
    pub async fn tries_taken_away(
        &self,
        job_id: JobId,
        held: &[(TaskInstanceId, u32)],
    ) -> Result<Vec<TaskInstanceId>> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<TaskInstanceId> = held.iter().map(|(id, _)| *id).collect();
        let mut still: std::collections::HashSet<(TaskInstanceId, i64)> = Default::default();
        with_db!(self, pool => {
            for chunk in ids.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT id, try_number FROM task_instance WHERE state IN ('queued', 'running') AND queued_by_job_id = ",
                );
                qb.push_bind(job_id).push(" AND id IN ");
                push_in_list(&mut qb, chunk);
                for row in qb.build().fetch_all(pool).await? {
                    still.insert((row.try_get("id")?, row.try_get("try_number")?));
                }
            }
        });
        Ok(held
            .iter()
            .filter(|(id, n)| !still.contains(&(*id, i64::from(*n))))
            .map(|(id, _)| *id)
            .collect())
    }

    /// The task instances of a run, in definition order.
    pub async fn list_task_instances(&self, dag_id: &str, run_id: &str) -> Result<Vec<TaskRow>> {
        with_db!(self, pool => {
            let mut conn = pool.acquire().await?;
            let (run, _) = find_run!(conn, "", dag_id, run_id);
            let rows = sqlx::query(
                "SELECT ti.dag_id, ti.run_id, ti.task_id, ti.state, ti.try_number, ti.max_tries, ti.operator, \
                 ti.start_date, ti.end_date, ti.duration, ti.hostname, ti.trigger_id FROM task_instance ti \
                 LEFT JOIN dag_task t ON t.dag_id = ti.dag_id AND t.task_id = ti.task_id \
                 WHERE ti.dag_run_id = $1 ORDER BY COALESCE(t.position, 1000000000), ti.id",
            )
            .bind(run)
            .fetch_all(&mut *conn)
            .await?;
            rows.into_iter()
                .map(|row| {
                    Ok(TaskRow {
                        dag_id: row.try_get("dag_id")?,
                        run_id: row.try_get("run_id")?,
                        task_id: row.try_get("task_id")?,
                        state: TaskInstanceState::name(parse_state(row.try_get("state")?)?).to_string(),
                        try_number: row.try_get("try_number")?,
                        max_tries: row.try_get("max_tries")?,
                        operator: row.try_get("operator")?,
                        start_date: row.try_get("start_date")?,
                        end_date: row.try_get("end_date")?,
                        duration: row.try_get("duration")?,
                        hostname: row.try_get("hostname")?,
                        trigger_id: row.try_get("trigger_id")?,
                    })
                })
                .collect()
        })
    }

    /// The log of try `try_number` (default: the latest) of a task instance.
    pub async fn task_log(
        &self,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        try_number: Option<u32>,
    ) -> Result<TaskLog> {
        with_db!(self, pool => {
            let mut conn = pool.acquire().await?;
            let (run, _) = find_run!(conn, "", dag_id, run_id);
            let ti: Option<(TaskInstanceId, Option<String>, i64)> = sqlx::query_as(
                "SELECT id, state, try_number FROM task_instance WHERE dag_run_id = $1 AND task_id = $2",
            )
            .bind(run)
            .bind(task_id)
            .fetch_optional(&mut *conn)
            .await?;
            let Some((ti, state, current)) = ti else {
                return Err(unknown_task!(conn, run, dag_id, run_id, task_id));
            };
            let tries: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
                "SELECT try_number, outcome, content FROM task_instance_log WHERE task_instance_id = $1 ORDER BY try_number",
            )
            .bind(ti)
            .fetch_all(&mut *conn)
            .await?;
            let wanted = try_number.map(i64::from);
            let found = match wanted {
                Some(n) => tries.iter().find(|(t, _, _)| *t == n),
                None => tries.last(),
            };
            match found {
                Some((n, outcome, content)) => Ok(TaskLog {
                    try_number: *n,
                    outcome: outcome.clone(),
                    content: content.clone(),
                }),
                None => {
                    let state = TaskInstanceState::name(parse_state(state)?);
                    let kept: Vec<String> = tries.iter().map(|(t, _, _)| t.to_string()).collect();
                    Err(StoreError::NotFound(match (wanted, kept.is_empty()) {
                        (_, true) if current > 0 => format!(
                            "task `{task_id}` of run `{run_id}` is on try {current} ({state}); its log is kept when the try ends"
                        ),
                        (_, true) => format!("task `{task_id}` of run `{run_id}` has not run yet ({state})"),
                        (Some(n), false) => format!(
                            "task `{task_id}` of run `{run_id}` has no log of try {n}; logs are kept for tries {}",
                            kept.join(", ")
                        ),
                        (None, false) => format!("task `{task_id}` of run `{run_id}` has no log"),
                    }))
                }
            }
        })
    }

    /// Clears task instances of a run so they run again (`tasks clear`): `task_ids` (all when
    /// empty), with `downstream` everything below them. A queued or running one is refused.
    /// The run goes back to running. Returns the task ids cleared.
    pub async fn clear_task_instances(
        &self,
        dag_id: &str,
        run_id: &str,
        task_ids: &[String],
        downstream: bool,
    ) -> Result<Vec<String>> {
        let now = crate::time::now();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let (run, _) = find_run!(tx, self.lock_rows(), dag_id, run_id);
            let tis: Vec<(TaskInstanceId, String, Option<String>, i64)> = sqlx::query_as(
                "SELECT id, task_id, state, try_number FROM task_instance WHERE dag_run_id = $1 ORDER BY id",
            )
            .bind(run)
            .fetch_all(&mut *tx)
            .await?;
            if tis.is_empty() {
                return Err(StoreError::Invalid(format!(
                    "run `{run_id}` of `{dag_id}` has no tasks to clear (its DAG defined no [[dag.task]] when it was created)"
                )));
            }
            let known: Vec<&str> = tis.iter().map(|(_, t, _, _)| t.as_str()).collect();
            for task in task_ids {
                if !known.contains(&task.as_str()) {
                    return Err(StoreError::NotFound(format!(
                        "run `{run_id}` of `{dag_id}` has no task `{task}`; its tasks are {}",
                        known.join(", ")
                    )));
                }
            }
            let mut targets: Vec<String> = if task_ids.is_empty() {
                known.iter().map(|t| t.to_string()).collect()
            } else {
                task_ids.to_vec()
            };
            if downstream && !task_ids.is_empty() {
                let specs = dag_tasks!(tx, vec![dag_id]);
                let tasks = specs.get(dag_id).map(Vec::as_slice).unwrap_or_default();
                for task in graph::downstream_of(tasks, task_ids) {
                    if known.contains(&task.as_str()) && !targets.contains(&task) {
                        targets.push(task);
                    }
                }
            }
            let mut ids = Vec::with_capacity(targets.len());
            for (id, task, state, try_number) in &tis {
                if !targets.contains(task) {
                    continue;
                }
                let state = parse_state(state.clone())?;
                if matches!(
                    state,
                    Some(TaskInstanceState::Queued | TaskInstanceState::Running | TaskInstanceState::Deferred)
                ) {
                    return Err(StoreError::Conflict(format!(
                        "task `{task}` of run `{run_id}` is {} (try {try_number}); clear it once that try has ended, \
                         or mark it with `tasks set-state`", TaskInstanceState::name(state)
                    )));
                }
                ids.push(*id);
            }
            for chunk in ids.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(format!("UPDATE task_instance SET {RESET_TASK_INSTANCE}, updated_at = "));
                qb.push_bind(now).push(" WHERE id IN ");
                push_in_list(&mut qb, chunk);
                qb.build().execute(&mut *tx).await?;
            }
            sqlx::query(
                "UPDATE dag_run SET state = CASE WHEN state = 'queued' THEN 'queued' ELSE 'running' END, \
                 end_date = NULL, start_date = COALESCE(start_date, $1), tasks_changed = TRUE WHERE id = $2",
            )
            .bind(now)
            .bind(run)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            targets.sort_by_key(|t| known.iter().position(|k| k == t));
            Ok(targets)
        })
    }

    /// Marks a task instance `success` or `failed` (`tasks set-state`). A try in flight is
    /// taken from its executor (its result will not be recorded; the executor stops it). The
    /// run is evaluated again, going back to running if it had ended.
    pub async fn set_task_instance_state(
        &self,
        dag_id: &str,
        run_id: &str,
        task_id: &str,
        state: TaskInstanceState,
    ) -> Result<Option<TaskInstanceState>> {
        if !matches!(
            state,
            TaskInstanceState::Success | TaskInstanceState::Failed
        ) {
            return Err(StoreError::Invalid(format!(
                "a task instance is marked `success` or `failed`, not `{state}`"
            )));
        }
        let now = crate::time::now();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let (run, _) = find_run!(tx, self.lock_rows(), dag_id, run_id);
            let ti: Option<(TaskInstanceId, Option<String>)> = sqlx::query_as(
                "SELECT id, state FROM task_instance WHERE dag_run_id = $1 AND task_id = $2",
            )
            .bind(run)
            .bind(task_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((ti, previous)) = ti else {
                return Err(unknown_task!(tx, run, dag_id, run_id, task_id));
            };
            let previous = parse_state(previous)?;
            // A deferred task's trigger goes with its deferral.
            sqlx::query(
                "DELETE FROM trigger WHERE id = (SELECT trigger_id FROM task_instance WHERE id = $1)",
            )
            .bind(ti)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE task_instance SET state = $1, end_date = $2, start_date = COALESCE(start_date, $2), \
                 queued_by_job_id = NULL, next_retry_at = NULL, trigger_id = NULL, trigger_timeout = NULL, \
                 next_method = NULL, next_kwargs = NULL, updated_at = $2 WHERE id = $3",
            )
            .bind(state.as_str())
            .bind(now)
            .bind(ti)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE dag_run SET state = CASE WHEN state IN ('success', 'failed') THEN 'running' ELSE state END, \
                 end_date = NULL, tasks_changed = TRUE WHERE id = $1",
            )
            .bind(run)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(previous)
        })
    }

    /// Requeued runs (`dags backfill --reprocess`) start their tasks over.
    pub(crate) fn reset_task_instances_sql() -> String {
        format!(
            "UPDATE task_instance SET {RESET_TASK_INSTANCE}, updated_at = $1 WHERE dag_run_id = $2"
        )
    }

    /// One snapshot for `status`: processes alive since `alive_since` count as alive.
    pub async fn status(&self, alive_since: DateTime<Utc>) -> Result<Status> {
        with_db!(self, pool => {
            let jobs = sqlx::query(
                "SELECT j.id, j.job_type, j.hostname, j.latest_heartbeat, j.capacity, \
                 (SELECT count(*) FROM trigger t WHERE t.triggerer_id = j.id) AS triggers, \
                 (SELECT count(*) FROM task_instance ti WHERE ti.queued_by_job_id = j.id AND ti.state = 'queued') AS queued, \
                 (SELECT count(*) FROM task_instance ti WHERE ti.queued_by_job_id = j.id AND ti.state = 'running') AS running \
                 FROM job j WHERE j.end_date IS NULL AND j.job_type IN ($1, $2) ORDER BY j.id",
            )
            .bind(TRIGGERER_JOB)
            .bind(EXECUTOR_JOB)
            .fetch_all(pool)
            .await?;
            let mut status = Status {
                triggerers: Vec::new(),
                executors: Vec::new(),
                deferred_tasks: 0,
                tasks_executable: 0,
                tasks_starving: 0,
                task_instances: Default::default(),
            };
            for row in jobs {
                let heartbeat: DateTime<Utc> = row.try_get("latest_heartbeat")?;
                let alive = heartbeat > alive_since;
                let capacity: Option<i64> = row.try_get("capacity")?;
                let job_type: String = row.try_get("job_type")?;
                if job_type == TRIGGERER_JOB {
                    let running: i64 = row.try_get("triggers")?;
                    status.triggerers.push(TriggererStatus {
                        id: row.try_get("id")?,
                        hostname: row.try_get("hostname")?,
                        alive,
                        latest_heartbeat: heartbeat,
                        capacity_left: capacity.map(|c| (c - running).max(0)),
                        triggers_running: running,
                    });
                } else {
                    let queued: i64 = row.try_get("queued")?;
                    let running: i64 = row.try_get("running")?;
                    status.executors.push(ExecutorStatus {
                        id: row.try_get("id")?,
                        hostname: row.try_get("hostname")?,
                        alive,
                        latest_heartbeat: heartbeat,
                        open_slots: capacity.map(|c| (c - queued - running).max(0)),
                        queued_tasks: queued,
                        running_tasks: running,
                    });
                }
            }
            let counts: Vec<(Option<String>, i64)> =
                sqlx::query_as("SELECT state, count(*) FROM task_instance GROUP BY state")
                    .fetch_all(pool)
                    .await?;
            for (state, n) in counts {
                let state = parse_state(state)?;
                match state {
                    Some(TaskInstanceState::Scheduled) => status.tasks_executable = n,
                    Some(TaskInstanceState::Deferred) => status.deferred_tasks = n,
                    _ => {}
                }
                status.task_instances.insert(TaskInstanceState::name(state).to_string(), n);
            }
            let open: i64 = status
                .executors
                .iter()
                .filter(|e| e.alive)
                .map(|e| e.open_slots.unwrap_or(0))
                .sum();
            status.tasks_starving = (status.tasks_executable - open).max(0);
            Ok(status)
        })
    }
}
