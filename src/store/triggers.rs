//! Statements of the triggerer process: its `job` row and heartbeat, claiming triggers
//! (Airflow's `assign_unassigned`), reading what it owns, and recording trigger failures.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;

use super::{push_in_list, with_db, Result, Store, CHUNK};
use triggerer_sdk::TriggerId;

/// A `job` row's id: one running triggerer or scheduler process. It crosses the triggerer,
/// the scheduler and the store (claims, fencing, the runs a scheduler created), so it has a type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, sqlx::Type, serde::Serialize)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct JobId(pub(crate) i64);

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

pub const TRIGGERER_JOB: &str = "TriggererJob";

/// Failures after which a deferred task's trigger fails its task (restarts back off from 1 s,
/// doubling: about 15 s of trying).
pub const TASK_TRIGGER_FAILURES: i64 = 5;
pub const SCHEDULER_JOB: &str = "SchedulerJob";

/// A trigger this triggerer owns and must run.
#[derive(Debug, Clone, PartialEq)]
pub struct AssignedTrigger {
    pub id: TriggerId,
    pub classpath: String,
    pub kwargs: Value,
}

/// What one [`Store::assign_unassigned`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Triggers claimed by this call.
    pub claimed: usize,
    /// Triggers this triggerer owns after it.
    pub owned: usize,
}

impl Store {
    /// Registers a running process (`TriggererJob`, `SchedulerJob`, `ExecutorJob`), with its
    /// capacity (triggers, or executor slots) where it has one, and returns its job id.
    pub async fn create_job(
        &self,
        job_type: &str,
        hostname: &str,
        capacity: Option<usize>,
    ) -> Result<JobId> {
        let now = crate::time::now();
        with_db!(self, pool => {
            let row = sqlx::query(
                "INSERT INTO job (job_type, state, hostname, start_date, latest_heartbeat, capacity) \
                 VALUES ($1, 'running', $2, $3, $3, $4) RETURNING id",
            )
            .bind(job_type)
            .bind(hostname)
            .bind(now)
            .bind(capacity.map(|c| i64::try_from(c).unwrap_or(i64::MAX)))
            .fetch_one(pool)
            .await?;
            Ok(row.try_get("id")?)
        })
    }

    pub async fn heartbeat(&self, job_id: JobId) -> Result<()> {
        let now = crate::time::now();
        with_db!(self, pool => {
            sqlx::query("UPDATE job SET latest_heartbeat = $1 WHERE id = $2")
                .bind(now)
                .bind(job_id)
                .execute(pool)
                .await?;
            Ok(())
        })
    }

    /// Marks the job ended and hands its triggers back at once, so another triggerer can pick
    /// them up without waiting for the health threshold.
    pub async fn end_job(&self, job_id: JobId) -> Result<()> {
        let now = crate::time::now();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            sqlx::query("UPDATE job SET end_date = $1, state = 'success' WHERE id = $2")
                .bind(now)
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE trigger SET triggerer_id = NULL WHERE triggerer_id = $1")
                .bind(job_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Airflow's `Trigger.assign_unassigned` for watcher triggers: claims, oldest first, triggers
    /// that have no owner or whose owner is not alive (no heartbeat since `alive_since`), up to
    /// `capacity` in total and `max_per_loop` in this call.
    pub async fn assign_unassigned(
        &self,
        job_id: JobId,
        capacity: usize,
        max_per_loop: usize,
        alive_since: DateTime<Utc>,
    ) -> Result<Claim> {
        let lock = self.skip_locked();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let owned: i64 = sqlx::query("SELECT count(*) AS n FROM trigger WHERE triggerer_id = $1")
                .bind(job_id)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            let owned = usize::try_from(owned).unwrap_or(usize::MAX);
            let room = capacity.saturating_sub(owned);
            let limit = i64::try_from(room.min(max_per_loop)).unwrap_or(i64::MAX);
            if limit == 0 {
                return Ok(Claim { claimed: 0, owned });
            }
            let sql = format!(
                "SELECT t.id FROM trigger t \
                 WHERE (EXISTS (SELECT 1 FROM asset_watcher w WHERE w.trigger_id = t.id) \
                        OR EXISTS (SELECT 1 FROM task_instance ti WHERE ti.trigger_id = t.id AND ti.state = 'deferred')) \
                 AND (t.triggerer_id IS NULL OR t.triggerer_id NOT IN ( \
                     SELECT j.id FROM job j WHERE j.end_date IS NULL AND j.job_type = $1 \
                     AND j.latest_heartbeat > $2)) \
                 ORDER BY CASE WHEN EXISTS (SELECT 1 FROM task_instance ti WHERE ti.trigger_id = t.id) THEN 0 ELSE 1 END, \
                 t.created_date, t.id LIMIT $3{lock}"
            );
            let ids: Vec<i64> = sqlx::query_scalar(&sql)
                .bind(TRIGGERER_JOB)
                .bind(alive_since)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            for chunk in ids.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("UPDATE trigger SET triggerer_id = ");
                qb.push_bind(job_id).push(" WHERE id IN ");
                push_in_list(&mut qb, chunk);
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(Claim { claimed: ids.len(), owned: owned + ids.len() })
        })
    }

    /// The triggers this triggerer owns now.
    pub async fn triggers_for(&self, job_id: JobId) -> Result<Vec<AssignedTrigger>> {
        with_db!(self, pool => {
            let rows = sqlx::query(
                "SELECT id, classpath, kwargs FROM trigger WHERE triggerer_id = $1 ORDER BY id",
            )
            .bind(job_id)
            .fetch_all(pool)
            .await?;
            rows.into_iter()
                .map(|row| {
                    let kwargs: String = row.try_get("kwargs")?;
                    Ok(AssignedTrigger {
                        id: TriggerId::new(row.try_get("id")?),
                        classpath: row.try_get("classpath")?,
                        // kwargs are written by `dags sync` as canonical JSON; a row that does
                        // not parse is reported by the supervisor when it builds the trigger.
                        kwargs: serde_json::from_str(&kwargs).unwrap_or(Value::String(kwargs)),
                    })
                })
                .collect()
        })
    }

    /// The committed checkpoint pairs of each of `trigger_ids`.
    pub async fn load_checkpoints(
        &self,
        trigger_ids: &[TriggerId],
    ) -> Result<HashMap<TriggerId, HashMap<String, String>>> {
        let trigger_ids: Vec<i64> = trigger_ids.iter().map(|id| id.get()).collect();
        let mut out: HashMap<TriggerId, HashMap<String, String>> = HashMap::new();
        with_db!(self, pool => {
            for chunk in trigger_ids.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT trigger_id, key, value FROM trigger_checkpoint WHERE trigger_id IN ",
                );
                push_in_list(&mut qb, chunk);
                for row in qb.build().fetch_all(pool).await? {
                    out.entry(TriggerId::new(row.try_get("trigger_id")?))
                        .or_default()
                        .insert(row.try_get("key")?, row.try_get("value")?);
                }
            }
            Ok(out)
        })
    }

    /// Records why a trigger failed; shown by `triggers list`. A deferred task's trigger that
    /// has failed [`TASK_TRIGGER_FAILURES`] times fails its task with the error (a watcher's
    /// goes on being restarted: the asset still needs watching).
    pub async fn record_trigger_failure(&self, trigger_id: TriggerId, error: &str) -> Result<()> {
        let now = crate::time::now();
        let failures: Option<i64> = with_db!(self, pool => {
            sqlx::query_scalar(
                "UPDATE trigger SET last_error = $1, last_error_at = $2, \
                 failure_count = failure_count + 1 WHERE id = $3 RETURNING failure_count",
            )
            .bind(error)
            .bind(now)
            .bind(trigger_id.get())
            .fetch_optional(pool)
            .await?
        });
        if failures.is_some_and(|n| n >= TASK_TRIGGER_FAILURES) {
            let reason =
                format!("its trigger failed {TASK_TRIGGER_FAILURES} times; last error: {error}");
            self.fail_task_trigger(trigger_id.get(), &reason).await?;
        }
        Ok(())
    }

    /// Shows a warning as the trigger's `last_error` (`warning: …`) without counting a failure
    /// or touching `last_error_at`, so the trigger does not show as failing.
    pub async fn record_trigger_warning(&self, trigger_id: TriggerId, warning: &str) -> Result<()> {
        let text = format!("warning: {warning}");
        with_db!(self, pool => {
            sqlx::query("UPDATE trigger SET last_error = $1 WHERE id = $2")
                .bind(&text)
                .bind(trigger_id.get())
                .execute(pool)
                .await?;
            Ok(())
        })
    }
}
