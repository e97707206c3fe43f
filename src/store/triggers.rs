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
    /// `capacity` in total and `max_per_loop` in this call. Triggers of `skip_classpaths` (the
    /// pushed ones, webhooks, which no triggerer runs) are never claimed.
    pub async fn assign_unassigned(
        &self,
        job_id: JobId,
        capacity: usize,
        max_per_loop: usize,
        alive_since: DateTime<Utc>,
        skip_classpaths: &[&str],
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
                     AND j.latest_heartbeat > $2)){skip} \
                 ORDER BY CASE WHEN EXISTS (SELECT 1 FROM task_instance ti WHERE ti.trigger_id = t.id) THEN 0 ELSE 1 END, \
                 t.created_date, t.id LIMIT $3{lock}",
                skip = not_in_classpaths(skip_classpaths, 4),
            );
            let mut query = sqlx::query_scalar(&sql)
                .bind(TRIGGERER_JOB)
                .bind(alive_since)
                .bind(limit);
            for classpath in skip_classpaths {
                query = query.bind(*classpath);
            }
            let ids: Vec<i64> = query.fetch_all(&mut *tx).await?;
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

    /// The triggers of `classpaths` that watch at least one active asset, by id, with their
    /// kwargs as stored (environment references unresolved): what the HTTP server serves
    /// webhooks for (`classpaths` being the registry's pushed ones).
    pub async fn watched_triggers_by_classpath(
        &self,
        classpaths: &[&str],
    ) -> Result<Vec<(TriggerId, String, Value)>> {
        if classpaths.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders = (1..=classpaths.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "SELECT t.id, t.classpath, t.kwargs FROM trigger t \
             WHERE t.classpath IN ({placeholders}) \
             AND EXISTS (SELECT 1 FROM asset_watcher w JOIN asset a ON a.id = w.asset_id \
                         WHERE w.trigger_id = t.id AND a.is_active = TRUE) \
             ORDER BY t.id"
        );
        with_db!(self, pool => {
            let mut query = sqlx::query(&sql);
            for classpath in classpaths {
                query = query.bind(*classpath);
            }
            query
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|row| {
                    let kwargs: String = row.try_get("kwargs")?;
                    Ok((
                        TriggerId::new(row.try_get("id")?),
                        row.try_get("classpath")?,
                        // As `triggers_for`: a row that does not parse is refused when used.
                        serde_json::from_str(&kwargs).unwrap_or(Value::String(kwargs)),
                    ))
                })
                .collect()
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

/// ` AND t.classpath NOT IN ($first, …)` for `classpaths` (bound from parameter `first` on), or
/// nothing when there are none.
fn not_in_classpaths(classpaths: &[&str], first: usize) -> String {
    if classpaths.is_empty() {
        return String::new();
    }
    let placeholders = (first..first + classpaths.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(" AND t.classpath NOT IN ({placeholders})")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::store::{AssetPlan, SyncPlan, WatcherPlan};

    const WEBHOOK: &str = "http.WebhookTrigger";

    fn asset(name: &str, classpath: &str, kwargs: Value) -> AssetPlan {
        AssetPlan {
            name: name.into(),
            uri: name.into(),
            fileloc: "defs.toml".into(),
            watchers: vec![WatcherPlan {
                name: "w".into(),
                classpath: classpath.into(),
                kwargs: kwargs.to_string(),
                hash: format!("hash-{name}"),
            }],
        }
    }

    fn plan(assets: Vec<AssetPlan>) -> SyncPlan {
        SyncPlan {
            assets,
            ..SyncPlan::default()
        }
    }

    /// A pushed trigger is never claimed, is `pushed` in the listing, and is served while it
    /// watches an active asset.
    async fn pushed_triggers_are_served_not_claimed(store: Store) {
        let hook_kwargs = json!({ "path": "github", "secret": { "env": "GH_SECRET" } });
        let file = asset("files", "file.FileTrigger", json!({ "filepath": "/in" }));
        let hook = asset("pushes", WEBHOOK, hook_kwargs.clone());
        store
            .apply_definitions(&plan(vec![file.clone(), hook]))
            .await
            .expect("sync");
        let job = store
            .create_job(TRIGGERER_JOB, "h", None)
            .await
            .expect("job");
        let alive_since = crate::time::now() - chrono::Duration::seconds(30);
        let claim = store
            .assign_unassigned(job, 10, 50, alive_since, &[WEBHOOK])
            .await
            .expect("claim");
        assert_eq!(
            claim,
            Claim {
                claimed: 1,
                owned: 1
            }
        );
        let owned = store.triggers_for(job).await.expect("owned");
        assert_eq!(owned.len(), 1);
        assert_eq!(owned[0].classpath, "file.FileTrigger");

        let served = store
            .watched_triggers_by_classpath(&[WEBHOOK, "other.Pushed"])
            .await
            .expect("served");
        assert_eq!(served.len(), 1);
        assert_eq!(served[0].1, WEBHOOK);
        assert_eq!(served[0].2, hook_kwargs, "kwargs as stored, reference kept");
        assert!(store
            .watched_triggers_by_classpath(&[])
            .await
            .expect("none asked")
            .is_empty());

        let threshold = Duration::from_secs(30);
        let rows = store
            .list_triggers_with(threshold, &[WEBHOOK])
            .await
            .expect("list");
        let state = |rows: &[crate::store::TriggerRow], classpath: &str| {
            rows.iter()
                .find(|r| r.classpath == classpath)
                .map(|r| r.state)
        };
        assert_eq!(state(&rows, WEBHOOK), Some("pushed"));
        assert_eq!(state(&rows, "file.FileTrigger"), Some("running"));
        let rows = store.list_triggers(threshold).await.expect("list");
        assert_eq!(state(&rows, WEBHOOK), Some("unassigned"), "not told");

        // Its asset no longer defined: nothing serves it.
        store
            .apply_definitions(&plan(vec![file]))
            .await
            .expect("sync");
        assert!(store
            .watched_triggers_by_classpath(&[WEBHOOK])
            .await
            .expect("served")
            .is_empty());
    }

    /// Without the skip list the same claim takes the webhook: the skip is what kept it out.
    async fn the_skip_list_is_what_keeps_them_out(store: Store) {
        let hook = asset("pushes", WEBHOOK, json!({ "path": "gh", "secret": "s" }));
        store
            .apply_definitions(&plan(vec![hook]))
            .await
            .expect("sync");
        let job = store
            .create_job(TRIGGERER_JOB, "h", None)
            .await
            .expect("job");
        let alive_since = crate::time::now() - chrono::Duration::seconds(30);
        let skip = ["other.Pushed", WEBHOOK];
        let claim = store
            .assign_unassigned(job, 10, 50, alive_since, &skip)
            .await
            .expect("claim");
        assert_eq!(claim.claimed, 0);
        let claim = store
            .assign_unassigned(job, 10, 50, alive_since, &[])
            .await
            .expect("claim");
        assert_eq!(claim.claimed, 1);
    }

    async fn sqlite() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        (Store::connect(&url).await.expect("open sqlite"), dir)
    }

    #[tokio::test]
    async fn sqlite_pushed_triggers_are_served_not_claimed() {
        let (store, _dir) = sqlite().await;
        pushed_triggers_are_served_not_claimed(store).await;
    }

    #[tokio::test]
    async fn sqlite_the_skip_list_is_what_keeps_them_out() {
        let (store, _dir) = sqlite().await;
        the_skip_list_is_what_keeps_them_out(store).await;
    }

    /// A fresh PostgreSQL database, as `tests/common` makes them.
    #[cfg(feature = "integration-postgres")]
    async fn postgres() -> Store {
        use sqlx::Connection;
        let admin_url = std::env::var("TRIGGERER_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string());
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {admin_url} ({e})"));
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!("trg_unit_{}_{nanos}", std::process::id());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let base = admin_url.rsplit_once('/').map_or(&*admin_url, |(b, _)| b);
        Store::connect(&format!("{base}/{name}"))
            .await
            .expect("open postgres")
    }

    #[cfg(feature = "integration-postgres")]
    #[tokio::test]
    async fn postgres_pushed_triggers_are_served_not_claimed() {
        pushed_triggers_are_served_not_claimed(postgres().await).await;
    }

    #[cfg(feature = "integration-postgres")]
    #[tokio::test]
    async fn postgres_the_skip_list_is_what_keeps_them_out() {
        the_skip_list_is_what_keeps_them_out(postgres().await).await;
    }
}
