//! Writing validated definitions: one transaction that reconciles assets, triggers, watchers,
//! DAGs and their asset references with what the files say. What the files no longer define
//! stops being watched and scheduled; history (events, runs) is kept.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;

use super::{push_in_list, with_db, Result, Store, StoreError, CHUNK};

/// The PostgreSQL advisory lock key that serialises syncs (`triggerer` in ASCII, as a number).
const SYNC_LOCK_KEY: i64 = 0x7472_6967_6765_7265;

/// Everything one `dags sync` declares, already validated.
#[derive(Debug, Clone, Default)]
pub struct SyncPlan {
    pub assets: Vec<AssetPlan>,
    pub dags: Vec<DagPlan>,
    /// Whether the plan may leave none of the assets and DAGs active now (the caller's
    /// `--allow-empty`); otherwise applying such a plan fails with
    /// [`StoreError::WouldRemoveEverything`] and writes nothing.
    pub allow_removing_everything: bool,
}

#[derive(Debug, Clone)]
pub struct AssetPlan {
    pub name: String,
    pub uri: String,
    pub fileloc: String,
    pub watchers: Vec<WatcherPlan>,
}

#[derive(Debug, Clone)]
pub struct WatcherPlan {
    pub name: String,
    /// Canonical classpath (aliases resolved).
    pub classpath: String,
    /// Canonical JSON of the kwargs (keys sorted).
    pub kwargs: String,
    /// Stable identity of `(classpath, kwargs)`.
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct DagPlan {
    pub dag_id: String,
    pub fileloc: String,
    pub schedule: Option<Value>,
    pub timetable_summary: String,
    pub asset_expression: Option<String>,
    /// Asset names the expression mentions.
    pub assets: BTreeSet<String>,
    pub start_date: Option<DateTime<Utc>>,
    pub end_date: Option<DateTime<Utc>>,
    pub catchup: bool,
    pub max_active_runs: i64,
    pub is_paused_upon_creation: bool,
    /// `combine = "and"`: due slots wait for the asset condition.
    pub asset_gated: bool,
    /// `[[dag.task]]`, in the order written.
    pub tasks: Vec<crate::task::TaskSpec>,
}

/// What a sync changed, for the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub assets: usize,
    pub dags: usize,
    pub triggers_added: usize,
    pub triggers_removed: usize,
    pub assets_deactivated: usize,
    pub dags_deactivated: usize,
}

impl std::fmt::Display for SyncReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} asset(s), {} DAG(s); triggers +{} -{}; deactivated {} asset(s), {} DAG(s)",
            self.assets,
            self.dags,
            self.triggers_added,
            self.triggers_removed,
            self.assets_deactivated,
            self.dags_deactivated
        )
    }
}

/// Makes `dag_task` what the plan's DAGs define, on `$tx`: tasks added, changed and removed.
/// The tasks of DAGs the files no longer define are kept, as their asset references are: their
/// runs still running go on with them.
macro_rules! write_dag_tasks {
    ($tx:expr, $plan:expr, $declared:expr) => {{
        let plan: &SyncPlan = $plan;
        let existing: Vec<(String, String, Json<Value>)> =
            sqlx::query_as("SELECT dag_id, task_id, definition FROM dag_task")
                .fetch_all(&mut *$tx)
                .await?;
        let mut existing: HashMap<(String, String), Value> = existing
            .into_iter()
            .map(|(dag_id, task_id, definition)| ((dag_id, task_id), definition.0))
            .collect();
        for dag in &plan.dags {
            for (position, task) in dag.tasks.iter().enumerate() {
                let definition = serde_json::to_value(task).map_err(|e| {
                    StoreError::Invalid(format!("task `{}` cannot be stored: {e}", task.task_id))
                })?;
                let key = (dag.dag_id.clone(), task.task_id.clone());
                if existing.remove(&key).is_some_and(|old| old == definition) {
                    continue;
                }
                sqlx::query(
                    "INSERT INTO dag_task (dag_id, task_id, operator, definition, position, retries) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (dag_id, task_id) DO UPDATE SET \
                     operator = excluded.operator, definition = excluded.definition, \
                     position = excluded.position, retries = excluded.retries",
                )
                .bind(&dag.dag_id)
                .bind(&task.task_id)
                .bind(task.operator.name().as_str())
                .bind(Json(&definition))
                .bind(i64::try_from(position).unwrap_or(i64::MAX))
                .bind(i64::from(task.retries))
                .execute(&mut *$tx)
                .await?;
            }
        }
        // What is left was defined before and is not now, for a DAG the plan declares.
        for (dag_id, task_id) in existing.into_keys() {
            if $declared.contains(dag_id.as_str()) {
                sqlx::query("DELETE FROM dag_task WHERE dag_id = $1 AND task_id = $2")
                    .bind(&dag_id)
                    .bind(&task_id)
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    }};
}

impl Store {
    /// Applies `plan` atomically: on any error nothing is written.
    pub async fn apply_definitions(&self, plan: &SyncPlan) -> Result<SyncReport> {
        let now = crate::time::now();
        let mut report = SyncReport {
            assets: plan.assets.len(),
            dags: plan.dags.len(),
            ..SyncReport::default()
        };
        let asset_lock = match self.engine() {
            super::Engine::Sqlite => None,
            super::Engine::Postgres => Some(" FOR UPDATE"),
        };
        with_db!(self, pool => {
            let mut tx = pool.begin_with(self.begin_write()).await?;
            // One sync at a time, so the last to commit defines what is active. SQLite's
            // IMMEDIATE transaction already serialises writers; PostgreSQL's READ COMMITTED
            // would let two syncs each keep what the other removed.
            if self.engine() == super::Engine::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(SYNC_LOCK_KEY)
                    .execute(&mut *tx)
                    .await?;
            }
            // What is defined now, read once: the guard below and both deactivations use it
            // (what the plan does not declare was active before it, or it is not stale).
            let active: Vec<(i64, String)> =
                sqlx::query_as("SELECT id, name FROM asset WHERE is_active = TRUE")
                    .fetch_all(&mut *tx)
                    .await?;
            let live: Vec<String> = sqlx::query_scalar("SELECT dag_id FROM dag WHERE is_stale = FALSE")
                .fetch_all(&mut *tx)
                .await?;
            let declared_assets: HashSet<&str> =
                plan.assets.iter().map(|a| a.name.as_str()).collect();
            let declared: HashSet<&str> = plan.dags.iter().map(|d| d.dag_id.as_str()).collect();
            if !plan.allow_removing_everything {
                let keeps_something = active
                    .iter()
                    .any(|(_, name)| declared_assets.contains(name.as_str()))
                    || live.iter().any(|d| declared.contains(d.as_str()));
                if !keeps_something && (!active.is_empty() || !live.is_empty()) {
                    return Err(StoreError::WouldRemoveEverything {
                        assets: active.len(),
                        dags: live.len(),
                    });
                }
            }

            // Assets: upsert the declared ones, deactivate the others.
            let mut asset_ids: HashMap<&str, i64> = HashMap::new();
            for asset in &plan.assets {
                let id: i64 = sqlx::query(
                    "INSERT INTO asset (name, uri, is_active, fileloc, created_at, updated_at) \
                     VALUES ($1, $2, TRUE, $3, $4, $4) \
                     ON CONFLICT (name) DO UPDATE SET uri = excluded.uri, is_active = TRUE, \
                     fileloc = excluded.fileloc, updated_at = excluded.updated_at RETURNING id",
                )
                .bind(&asset.name)
                .bind(&asset.uri)
                .bind(&asset.fileloc)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
                .try_get("id")?;
                asset_ids.insert(asset.name.as_str(), id);
            }
            let stale_assets: Vec<i64> = active
                .into_iter()
                .filter(|(_, name)| !declared_assets.contains(name.as_str()))
                .map(|(id, _)| id)
                .collect();
            report.assets_deactivated = stale_assets.len();
            for chunk in stale_assets.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("UPDATE asset SET is_active = FALSE, updated_at = ");
                qb.push_bind(now).push(" WHERE id IN ");
                push_in_list(&mut qb, chunk);
                qb.build().execute(&mut *tx).await?;
            }

            // Triggers: one row per distinct identity, shared by every watcher that has it.
            for asset in &plan.assets {
                for w in &asset.watchers {
                    let added = sqlx::query(
                        "INSERT INTO trigger (classpath, kwargs, hash, created_date) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (hash) DO NOTHING",
                    )
                    .bind(&w.classpath)
                    .bind(&w.kwargs)
                    .bind(&w.hash)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    report.triggers_added += usize::try_from(added).unwrap_or(0);
                }
            }
            let trigger_ids: HashMap<String, i64> =
                sqlx::query_as::<_, (String, i64)>("SELECT hash, id FROM trigger")
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .collect();

            // Watchers: make asset_watcher exactly the declared (asset, trigger, name) set.
            let mut desired: HashMap<(i64, i64), &str> = HashMap::new();
            for asset in &plan.assets {
                let asset_id = asset_ids[asset.name.as_str()];
                for w in &asset.watchers {
                    if let Some(trigger_id) = trigger_ids.get(&w.hash) {
                        desired.insert((asset_id, *trigger_id), w.name.as_str());
                    }
                }
            }
            let existing: Vec<(i64, i64, String)> =
                sqlx::query_as("SELECT asset_id, trigger_id, name FROM asset_watcher")
                    .fetch_all(&mut *tx)
                    .await?;
            let mut existing_keys = HashSet::new();
            for (asset_id, trigger_id, name) in &existing {
                existing_keys.insert((*asset_id, *trigger_id));
                match desired.get(&(*asset_id, *trigger_id)) {
                    None => {
                        sqlx::query("DELETE FROM asset_watcher WHERE asset_id = $1 AND trigger_id = $2")
                            .bind(asset_id)
                            .bind(trigger_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Some(wanted) if *wanted != name => {
                        sqlx::query("UPDATE asset_watcher SET name = $1 WHERE asset_id = $2 AND trigger_id = $3")
                            .bind(*wanted)
                            .bind(asset_id)
                            .bind(trigger_id)
                            .execute(&mut *tx)
                            .await?;
                    }
                    Some(_) => {}
                }
            }
            for ((asset_id, trigger_id), name) in &desired {
                if !existing_keys.contains(&(*asset_id, *trigger_id)) {
                    sqlx::query("INSERT INTO asset_watcher (asset_id, trigger_id, name) VALUES ($1, $2, $3)")
                        .bind(asset_id)
                        .bind(trigger_id)
                        .bind(*name)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            // A trigger no watcher references is deleted; its triggerer cancels it on its next loop.
            let removed = sqlx::query(
                "DELETE FROM trigger WHERE NOT EXISTS \
                 (SELECT 1 FROM asset_watcher w WHERE w.trigger_id = trigger.id)",
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            report.triggers_removed = usize::try_from(removed).unwrap_or(0);

            // DAGs: upsert the declared ones (pause state is the user's, kept), mark others stale.
            for dag in &plan.dags {
                sqlx::query(
                    "INSERT INTO dag (dag_id, fileloc, is_paused, is_stale, schedule, timetable_summary, \
                     asset_expression, start_date, end_date, catchup, max_active_runs, last_parsed_time, \
                     timetable_asset_gated) \
                     VALUES ($1, $2, $3, FALSE, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (dag_id) DO UPDATE SET fileloc = excluded.fileloc, is_stale = FALSE, \
                     schedule = excluded.schedule, timetable_summary = excluded.timetable_summary, \
                     asset_expression = excluded.asset_expression, start_date = excluded.start_date, \
                     end_date = excluded.end_date, catchup = excluded.catchup, \
                     max_active_runs = excluded.max_active_runs, last_parsed_time = excluded.last_parsed_time, \
                     timetable_asset_gated = excluded.timetable_asset_gated",
                )
                .bind(&dag.dag_id)
                .bind(&dag.fileloc)
                .bind(dag.is_paused_upon_creation)
                .bind(dag.schedule.as_ref().map(Json))
                .bind(&dag.timetable_summary)
                .bind(&dag.asset_expression)
                .bind(dag.start_date)
                .bind(dag.end_date)
                .bind(dag.catchup)
                .bind(dag.max_active_runs)
                .bind(now)
                .bind(dag.asset_gated)
                .execute(&mut *tx)
                .await?;
            }
            write_dag_tasks!(tx, plan, declared);
            let stale_dags: Vec<String> =
                live.into_iter().filter(|d| !declared.contains(d.as_str())).collect();
            report.dags_deactivated = stale_dags.len();
            for chunk in stale_dags.chunks(CHUNK) {
                let mut qb = sqlx::QueryBuilder::new("UPDATE dag SET is_stale = TRUE WHERE dag_id IN ");
                push_in_list(&mut qb, chunk);
                qb.build().execute(&mut *tx).await?;
            }

            // Asset references: exactly what each live DAG's expression names. A reference that
            // goes away takes its queued rows with it (Airflow deletes such stale queue rows).
            // A DAG the files no longer define keeps both: deactivating is not forgetting, and
            // when it is defined again its queued events still give it its run.
            let mut desired_refs: HashSet<(i64, &str)> = HashSet::new();
            for dag in &plan.dags {
                for name in &dag.assets {
                    if let Some(asset_id) = asset_ids.get(name.as_str()) {
                        desired_refs.insert((*asset_id, dag.dag_id.as_str()));
                    }
                }
            }
            let existing_refs: Vec<(i64, String)> =
                sqlx::query_as("SELECT asset_id, dag_id FROM dag_schedule_asset_reference")
                    .fetch_all(&mut *tx)
                    .await?;
            let mut existing_set = HashSet::new();
            for (asset_id, dag_id) in &existing_refs {
                existing_set.insert((*asset_id, dag_id.as_str()));
                if declared.contains(dag_id.as_str())
                    && !desired_refs.contains(&(*asset_id, dag_id.as_str()))
                {
                    sqlx::query("DELETE FROM dag_schedule_asset_reference WHERE asset_id = $1 AND dag_id = $2")
                        .bind(asset_id)
                        .bind(dag_id)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM asset_dag_run_queue WHERE asset_id = $1 AND target_dag_id = $2")
                        .bind(asset_id)
                        .bind(dag_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let catchup: HashSet<&str> = plan
                .dags
                .iter()
                .filter(|d| d.catchup)
                .map(|d| d.dag_id.as_str())
                .collect();
            for (asset_id, dag_id) in &desired_refs {
                if !existing_set.contains(&(*asset_id, *dag_id)) {
                    // A DAG sees the events after it started watching an asset; with catchup it
                    // also gets the asset's earlier events queued (unless it is paused).
                    if catchup.contains(dag_id) {
                        // Holding the asset row makes event writers wait for this commit, so an
                        // event is queued either here or by its writer, never by neither.
                        if let Some(lock) = asset_lock {
                            sqlx::query(&format!("SELECT id FROM asset WHERE id = $1{lock}"))
                                .bind(asset_id)
                                .execute(&mut *tx)
                                .await?;
                        }
                        // Events this DAG already consumed (before a reference came and went)
                        // are not queued again.
                        sqlx::query(
                            "INSERT INTO asset_dag_run_queue (target_dag_id, asset_event_id, asset_id, created_at) \
                             SELECT d.dag_id, e.id, e.asset_id, e.timestamp FROM asset_event e \
                             JOIN dag d ON d.dag_id = $1 WHERE e.asset_id = $2 AND d.is_paused = FALSE \
                             AND NOT EXISTS (SELECT 1 FROM dagrun_asset_event x JOIN dag_run r ON r.id = x.dag_run_id \
                                             WHERE r.dag_id = $1 AND x.event_id = e.id) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(*dag_id)
                        .bind(asset_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                    sqlx::query(
                        "INSERT INTO dag_schedule_asset_reference (asset_id, dag_id, created_at) VALUES ($1, $2, $3)",
                    )
                    .bind(asset_id)
                    .bind(*dag_id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }

            tx.commit().await?;
            Ok(report)
        })
    }
}
