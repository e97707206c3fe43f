//! Statements of the scheduler: reading what DAGs have queued, creating runs that consume
//! queued asset events, starting queued runs under `max_active_runs`, and manual runs.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use rand::distr::{Alphanumeric, SampleString};
use serde_json::Value;
use sqlx::Row;

use super::{push_in_list, with_db, JobId, Result, Store, StoreError, CHUNK};
use crate::dag_run::{DagRunState, DagRunType};
use crate::time::isoformat;
use crate::timetable::DataInterval;

/// A DAG with queued asset events, as the scheduler sees it before deciding.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedDag {
    pub dag_id: String,
    pub asset_expression: String,
    /// Names of the assets that have at least one queued event for this DAG.
    pub queued_assets: BTreeSet<String>,
    /// Runs queued or running (all types): Airflow's asset-path `max_active_runs` check.
    pub active_runs: i64,
    pub max_active_runs: i64,
}

/// A run to insert, always QUEUED (see [`super::insert_dag_runs`]).
#[derive(Debug, Clone)]
pub struct NewDagRun<'a> {
    pub dag_id: &'a str,
    pub run_id: String,
    pub run_type: DagRunType,
    pub logical_date: Option<DateTime<Utc>>,
    pub data_interval: Option<DataInterval>,
    pub run_after: DateTime<Utc>,
    pub conf: &'a Value,
    pub creating_job_id: Option<JobId>,
}

/// The conf of runs the scheduler makes: `{}`.
static EMPTY_CONF: std::sync::LazyLock<Value> =
    std::sync::LazyLock::new(|| Value::Object(Default::default()));

impl<'a> NewDagRun<'a> {
    /// A run the scheduler makes for `slot` (scheduled or backfill), with an empty conf.
    pub fn of_slot(
        dag_id: &'a str,
        run_type: DagRunType,
        slot: crate::timetable::DagRunInfo,
        creating_job_id: Option<JobId>,
    ) -> Self {
        Self {
            dag_id,
            run_id: run_type.run_id(slot.run_after),
            run_type,
            logical_date: Some(slot.logical_date()),
            data_interval: Some(slot.data_interval),
            run_after: slot.run_after,
            conf: &EMPTY_CONF,
            creating_job_id,
        }
    }
}

/// A run asked for by hand (`dags trigger`).
#[derive(Debug, Clone)]
pub struct ManualRun {
    pub dag_id: String,
    pub run_id: Option<String>,
    pub conf: Value,
    pub logical_date: Option<DateTime<Utc>>,
    /// As the DAG's timetable infers it for a manual run (`None`: the logical date alone).
    pub data_interval: Option<DataInterval>,
}

impl Store {
    /// Unpaused, live, asset-scheduled DAGs with queued events, with what is queued for each.
    pub async fn queued_dags(&self) -> Result<Vec<QueuedDag>> {
        with_db!(self, pool => {
            let rows = sqlx::query(
                "SELECT d.dag_id, d.asset_expression, d.max_active_runs, a.name \
                 FROM (SELECT DISTINCT target_dag_id, asset_id FROM asset_dag_run_queue) q \
                 JOIN dag d ON d.dag_id = q.target_dag_id JOIN asset a ON a.id = q.asset_id \
                 WHERE d.is_paused = FALSE AND d.is_stale = FALSE AND d.asset_expression IS NOT NULL \
                 AND d.timetable_asset_gated = FALSE \
                 ORDER BY d.dag_id",
            )
            .fetch_all(pool)
            .await?;
            let mut by_dag: Vec<QueuedDag> = Vec::new();
            for row in rows {
                let dag_id: String = row.try_get("dag_id")?;
                if by_dag.last().map(|d| d.dag_id != dag_id).unwrap_or(true) {
                    by_dag.push(QueuedDag {
                        dag_id,
                        asset_expression: row.try_get("asset_expression")?,
                        queued_assets: BTreeSet::new(),
                        active_runs: 0,
                        max_active_runs: row.try_get("max_active_runs")?,
                    });
                }
                if let Some(dag) = by_dag.last_mut() {
                    dag.queued_assets.insert(row.try_get("name")?);
                }
            }
            // Active runs of these DAGs only: a pass must cost what is queued, not what runs.
            let mut active: HashMap<String, i64> = HashMap::new();
            let dag_ids: Vec<&str> = by_dag.iter().map(|d| d.dag_id.as_str()).collect();
            for chunk in dag_ids.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT dag_id, count(*) AS n FROM dag_run WHERE state IN ('queued', 'running') \
                     AND dag_id IN ",
                );
                push_in_list(&mut qb, chunk);
                qb.push(" GROUP BY dag_id");
                for row in qb.build().fetch_all(pool).await? {
                    active.insert(row.try_get("dag_id")?, row.try_get("n")?);
                }
            }
            for dag in &mut by_dag {
                dag.active_runs = active.get(&dag.dag_id).copied().unwrap_or(0);
            }
            Ok(by_dag)
        })
    }

    /// Creates one QUEUED asset-triggered run for `dag_id` consuming every queue row the DAG has
    /// now, if `ready` holds for the set of queued asset names (re-checked on the locked rows).
    /// Returns the new run id, or `None` when another scheduler holds the DAG or it is not ready.
    pub async fn create_asset_triggered_run(
        &self,
        dag_id: &str,
        job_id: Option<JobId>,
        ready: &super::AssetCondition<'_>,
    ) -> Result<Option<String>> {
        let lock = self.skip_locked();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            // Locking the dag row serialises schedulers per DAG; the others skip it this pass.
            let locked: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT max_active_runs FROM dag WHERE dag_id = $1 AND is_paused = FALSE{lock}"
            ))
            .bind(dag_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(max_active_runs) = locked else {
                return Ok(None);
            };
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM dag_run WHERE dag_id = $1 AND state IN ('queued', 'running')",
            )
            .bind(dag_id)
            .fetch_one(&mut *tx)
            .await?;
            if active >= max_active_runs {
                return Ok(None);
            }
            let queued = sqlx::query(
                "SELECT q.asset_event_id, q.created_at, a.name FROM asset_dag_run_queue q \
                 JOIN asset a ON a.id = q.asset_id WHERE q.target_dag_id = $1 \
                 ORDER BY q.asset_event_id",
            )
            .bind(dag_id)
            .fetch_all(&mut *tx)
            .await?;
            let mut names = BTreeSet::new();
            let mut event_ids: Vec<i64> = Vec::with_capacity(queued.len());
            let mut triggered_date: Option<DateTime<Utc>> = None;
            for row in &queued {
                names.insert(row.try_get::<String, _>("name")?);
                event_ids.push(row.try_get("asset_event_id")?);
                let created: DateTime<Utc> = row.try_get("created_at")?;
                triggered_date = Some(triggered_date.map_or(created, |t| t.max(created)));
            }
            let Some(run_after) = triggered_date else {
                return Ok(None);
            };
            if !ready(&names) {
                return Ok(None);
            }
            let suffix = Alphanumeric.sample_string(&mut rand::rng(), 8);
            let run_id = format!("{}_{suffix}", DagRunType::AssetTriggered.run_id(run_after));
            let run = NewDagRun {
                dag_id,
                run_id: run_id.clone(),
                run_type: DagRunType::AssetTriggered,
                logical_date: None,
                data_interval: None,
                run_after,
                conf: &EMPTY_CONF,
                creating_job_id: job_id,
            };
            let Some((_, dag_run_id)) =
                super::insert_dag_runs!(tx, std::slice::from_ref(&run), crate::time::now()).pop()
            else {
                return Err(StoreError::Conflict(format!(
                    "DAG `{dag_id}` already has a run with run id `{run_id}`"
                )));
            };
            super::consume_queued_events!(tx, dag_run_id, dag_id, event_ids);
            tx.commit().await?;
            Ok(Some(run_id))
        })
    }

    /// Moves queued runs whose `run_after` has come to RUNNING, oldest logical date first, while
    /// the DAG has fewer RUNNING runs than its `max_active_runs` — counted apart for backfill
    /// runs and the others, as Airflow budgets each backfill on its own. Returns how many
    /// started. The DAG rows are locked first, so two schedulers never both fill the last slot.
    pub async fn start_queued_runs(&self, now: DateTime<Utc>) -> Result<usize> {
        let lock = self.skip_locked();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            // Only DAGs with a startable run, so full DAGs never crowd the others out. The
            // uncorrelated `IN` drives the query from the queued runs (an index), so its cost
            // does not grow with the number of DAGs.
            let dags: Vec<(String, i64)> = sqlx::query_as(&format!(
                "SELECT d.dag_id, d.max_active_runs FROM dag d WHERE d.is_paused = FALSE \
                 AND d.dag_id IN (SELECT q.dag_id FROM dag_run q WHERE q.state = 'queued' AND q.run_after <= $1) \
                 AND EXISTS ( \
                   SELECT 1 FROM dag_run r WHERE r.dag_id = d.dag_id AND r.state = 'queued' AND r.run_after <= $1 \
                   AND (SELECT count(*) FROM dag_run x WHERE x.dag_id = r.dag_id AND x.state = 'running' \
                        AND (x.run_type = 'backfill') = (r.run_type = 'backfill')) < d.max_active_runs) \
                 ORDER BY d.dag_id LIMIT 500{lock}"
            ))
            .bind(now)
            .fetch_all(&mut *tx)
            .await?;
            if dags.is_empty() {
                return Ok(0);
            }
            let max_active: HashMap<String, i64> = dags.iter().cloned().collect();
            let dag_ids: Vec<String> = dags.into_iter().map(|(d, _)| d).collect();
            let mut to_start: Vec<i64> = Vec::new();
            for chunk in dag_ids.chunks(CHUNK) {
                // Counted per DAG through the (dag_id, state) index: a grouped scan over every
                // running run was chosen by PostgreSQL on a young table (no statistics yet) and
                // cost 35 ms a pass with 10,000 runs.
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT d.dag_id, \
                     (SELECT count(*) FROM dag_run x WHERE x.dag_id = d.dag_id AND x.state = 'running' \
                      AND x.run_type <> 'backfill') AS scheduled, \
                     (SELECT count(*) FROM dag_run x WHERE x.dag_id = d.dag_id AND x.state = 'running' \
                      AND x.run_type = 'backfill') AS backfill \
                     FROM dag d WHERE d.dag_id IN ",
                );
                push_in_list(&mut qb, chunk);
                let mut running: HashMap<(String, bool), i64> = HashMap::new();
                for row in qb.build().fetch_all(&mut *tx).await? {
                    let dag_id: String = row.try_get("dag_id")?;
                    running.insert((dag_id.clone(), false), row.try_get("scheduled")?);
                    running.insert((dag_id, true), row.try_get("backfill")?);
                }
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT id, dag_id, run_type = 'backfill' AS backfill FROM dag_run \
                     WHERE state = 'queued' AND run_after <= ",
                );
                qb.push_bind(now).push(" AND dag_id IN ");
                push_in_list(&mut qb, chunk);
                qb.push(" ORDER BY COALESCE(logical_date, run_after), id");
                for row in qb.build().fetch_all(&mut *tx).await? {
                    let dag_id: String = row.try_get("dag_id")?;
                    let limit = max_active.get(&dag_id).copied().unwrap_or(0);
                    let n = running.entry((dag_id, row.try_get("backfill")?)).or_insert(0);
                    if *n < limit {
                        *n += 1;
                        to_start.push(row.try_get("id")?);
                    }
                }
            }
            for chunk in to_start.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("UPDATE dag_run SET state = ");
                qb.push_bind(DagRunState::Running.as_str())
                    .push(", tasks_changed = TRUE, start_date = ")
                    .push_bind(now).push(" WHERE id IN ");
                push_in_list(&mut qb, chunk);
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(to_start.len())
        })
    }

    /// Marks a run finished (`success` or `failed`), as an executor reports it, so the DAG's
    /// `max_active_runs` frees a place. A finished run cannot be marked again.
    pub async fn finish_run(&self, dag_id: &str, run_id: &str, state: DagRunState) -> Result<()> {
        if !state.is_finished() {
            return Err(StoreError::Invalid(format!(
                "a run is finished as `success` or `failed`, not `{state}`"
            )));
        }
        let now = crate::time::now();
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let current: Option<String> =
                sqlx::query_scalar("SELECT state FROM dag_run WHERE dag_id = $1 AND run_id = $2")
                    .bind(dag_id)
                    .bind(run_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let current = current.map(|s| s.parse::<DagRunState>()).transpose()?;
            match current {
                None => {
                    return Err(StoreError::NotFound(format!(
                        "DAG `{dag_id}` has no run `{run_id}`; `triggerer runs list --dag {dag_id}` shows its runs"
                    )))
                }
                Some(done) if done.is_finished() => {
                    return Err(StoreError::Conflict(format!(
                        "run `{run_id}` of `{dag_id}` already ended ({done})"
                    )))
                }
                Some(_) => {}
            }
            sqlx::query(
                "UPDATE dag_run SET state = $1, end_date = $2, start_date = COALESCE(start_date, $2) \
                 WHERE dag_id = $3 AND run_id = $4",
            )
            .bind(state.as_str())
            .bind(now)
            .bind(dag_id)
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Creates a QUEUED manual run. Run ids and logical dates are unique per DAG; a clash is a
    /// [`StoreError::Conflict`] naming which.
    pub async fn create_manual_run(&self, run: &ManualRun) -> Result<String> {
        if let Some(id) = &run.run_id {
            crate::names::check_manual_run_id(id).map_err(|e| {
                StoreError::Invalid(format!(
                    "run id `{}`: {e}",
                    crate::names::escape_control(id)
                ))
            })?;
        }
        let now = crate::time::now();
        let run_after = run.logical_date.unwrap_or(now);
        let run_id = run
            .run_id
            .clone()
            .unwrap_or_else(|| DagRunType::Manual.run_id(run_after));
        let interval_start = run.data_interval.map(|i| i.start).or(run.logical_date);
        let interval_end = run.data_interval.map(|i| i.end).or(run.logical_date);
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            let exists: Option<String> = sqlx::query_scalar("SELECT dag_id FROM dag WHERE dag_id = $1")
                .bind(&run.dag_id)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_none() {
                return Err(StoreError::NotFound(format!(
                    "DAG `{}` not found; `triggerer dags list` shows the DAGs",
                    run.dag_id
                )));
            }
            let clash: Option<String> = sqlx::query_scalar(
                "SELECT run_id FROM dag_run WHERE dag_id = $1 AND (run_id = $2 OR logical_date = $3)",
            )
            .bind(&run.dag_id)
            .bind(&run_id)
            .bind(run.logical_date)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(existing) = clash {
                return Err(StoreError::Conflict(if existing == run_id {
                    format!("DAG `{}` already has a run with run id `{run_id}`", run.dag_id)
                } else {
                    format!(
                        "DAG `{}` already has a run for logical date {} (run id `{existing}`)",
                        run.dag_id,
                        run.logical_date.map(isoformat).unwrap_or_default()
                    )
                }));
            }
            let new = NewDagRun {
                dag_id: &run.dag_id,
                run_id: run_id.clone(),
                run_type: DagRunType::Manual,
                logical_date: run.logical_date,
                data_interval: interval_start.zip(interval_end).map(|(start, end)| DataInterval { start, end }),
                run_after,
                conf: &run.conf,
                creating_job_id: None,
            };
            if super::insert_dag_runs!(tx, std::slice::from_ref(&new), now).is_empty() {
                return Err(StoreError::Conflict(format!(
                    "DAG `{}` already has a run with run id `{run_id}`",
                    run.dag_id
                )));
            }
            tx.commit().await?;
            Ok(run_id)
        })
    }
}
