//! Read models for the CLI's `list` commands, with the field names README "Command line" lists, and the
//! small writes the CLI makes directly (pause, asset lookup for `assets emit`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::types::Json;
use sqlx::Row;

use super::{with_db, Result, Store, StoreError};
use crate::dag_run::{DagRunState, DagRunType};

#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow, utoipa::ToSchema)]
pub struct DagRow {
    pub dag_id: String,
    /// The `schedule` field as defined: a cron or preset string, a timetable table, or an
    /// asset expression.
    #[sqlx(json(nullable))]
    #[schema(value_type = Option<Value>)]
    pub schedule: Option<Value>,
    pub is_paused: bool,
    pub catchup: bool,
    pub max_active_runs: i64,
    pub next_dagrun: Option<DateTime<Utc>>,
    pub next_dagrun_create_after: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct AssetRow {
    pub id: i64,
    pub name: String,
    pub uri: String,
    pub watchers: Vec<String>,
    pub consumers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, sqlx::FromRow, utoipa::ToSchema)]
pub struct EventRow {
    pub id: i64,
    #[sqlx(rename = "name")]
    pub asset: String,
    pub uri: String,
    pub timestamp: DateTime<Utc>,
    #[sqlx(json)]
    #[schema(value_type = Object)]
    pub extra: Value,
    pub source: String,
    pub dedup_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct TriggerRow {
    pub id: i64,
    pub classpath: String,
    #[schema(value_type = Object)]
    pub kwargs: Value,
    pub hash: String,
    pub triggerer_id: Option<i64>,
    pub assets: Vec<String>,
    pub last_event_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub last_error_at: Option<DateTime<Utc>>,
    pub failure_count: i64,
    /// The owning triggerer's last heartbeat.
    pub owner_heartbeat: Option<DateTime<Utc>>,
    /// `unassigned`, `running`, `failing` (failed within the last 2 minutes, no event since: it
    /// is being restarted with backoff), `orphaned` (its owner's heartbeat is older than the
    /// health threshold: another triggerer will claim it) or `pushed` (a webhook: no triggerer
    /// runs it, the HTTP server of every process with `--http` receives its events).
    pub state: &'static str,
}

/// Restarts back off up to 60 s, so a trigger still failing has an error younger than this.
const FAILING_WINDOW: chrono::Duration = chrono::Duration::minutes(2);

fn trigger_state(
    owner: Option<i64>,
    owner_heartbeat: Option<DateTime<Utc>>,
    last_event_at: Option<DateTime<Utc>>,
    last_error_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    health_threshold: chrono::Duration,
) -> &'static str {
    if owner.is_none() {
        return "unassigned";
    }
    if owner_heartbeat.is_none_or(|beat| beat < now - health_threshold) {
        return "orphaned";
    }
    match last_error_at {
        Some(error) if error > now - FAILING_WINDOW && last_event_at.is_none_or(|e| e < error) => {
            "failing"
        }
        _ => "running",
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct RunRow {
    pub dag_id: String,
    pub run_id: String,
    pub run_type: DagRunType,
    pub state: DagRunState,
    pub logical_date: Option<DateTime<Utc>>,
    pub data_interval_start: Option<DateTime<Utc>>,
    pub data_interval_end: Option<DateTime<Utc>>,
    pub run_after: DateTime<Utc>,
    /// When the run was created (queued).
    pub queued_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub conf: Value,
    pub consumed_events: Vec<i64>,
}

/// `LIMIT` for "the newest N rows"; `0` means all.
fn limit_of(limit: u64) -> i64 {
    if limit == 0 {
        i64::MAX
    } else {
        i64::try_from(limit).unwrap_or(i64::MAX)
    }
}

/// Splits a `string_agg`/`group_concat` list joined with the unit separator (U+001F), which
/// names never contain.
fn split_list(joined: Option<String>) -> Vec<String> {
    let mut items: Vec<String> = joined
        .map(|s| s.split('\u{1f}').map(str::to_string).collect())
        .unwrap_or_default();
    items.sort();
    items
}

impl Store {
    fn list_agg(&self, expr: &str) -> String {
        match self.engine() {
            super::Engine::Sqlite => format!("group_concat({expr}, char(31))"),
            super::Engine::Postgres => format!("string_agg({expr}, chr(31))"),
        }
    }

    pub async fn list_dags(&self) -> Result<Vec<DagRow>> {
        with_db!(self, pool => {
            Ok(sqlx::query_as::<_, DagRow>(
                "SELECT dag_id, schedule, is_paused, catchup, max_active_runs, next_dagrun, \
                 next_dagrun_create_after FROM dag WHERE is_stale = FALSE ORDER BY dag_id",
            )
            .fetch_all(pool)
            .await?)
        })
    }

    /// One DAG, as [`Store::list_dags`] shows it.
    pub async fn dag_row(&self, dag_id: &str) -> Result<DagRow> {
        with_db!(self, pool => {
            sqlx::query_as::<_, DagRow>(
                "SELECT dag_id, schedule, is_paused, catchup, max_active_runs, next_dagrun, \
                 next_dagrun_create_after FROM dag WHERE is_stale = FALSE AND dag_id = $1",
            )
            .bind(dag_id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!(
                "DAG `{dag_id}` not found; `triggerer dags list` shows the DAGs"
            )))
        })
    }

    /// Pauses or unpauses a DAG. A paused DAG gets no new runs and no queued events.
    pub async fn set_paused(&self, dag_id: &str, paused: bool) -> Result<()> {
        with_db!(self, pool => {
            let n = sqlx::query("UPDATE dag SET is_paused = $1 WHERE dag_id = $2 AND is_stale = FALSE")
                .bind(paused)
                .bind(dag_id)
                .execute(pool)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "DAG `{dag_id}` not found; `triggerer dags list` shows the DAGs"
                )));
            }
            Ok(())
        })
    }

    pub async fn list_assets(&self) -> Result<Vec<AssetRow>> {
        let watchers = self.list_agg("w.name");
        let consumers = self.list_agg("r.dag_id");
        with_db!(self, pool => {
            let sql = format!(
                "SELECT a.id, a.name, a.uri, \
                 (SELECT {watchers} FROM asset_watcher w WHERE w.asset_id = a.id) AS watchers, \
                 (SELECT {consumers} FROM dag_schedule_asset_reference r WHERE r.asset_id = a.id) AS consumers \
                 FROM asset a WHERE a.is_active = TRUE ORDER BY a.name"
            );
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.into_iter()
                .map(|row| {
                    Ok(AssetRow {
                        id: row.try_get("id")?,
                        name: row.try_get("name")?,
                        uri: row.try_get("uri")?,
                        watchers: split_list(row.try_get("watchers")?),
                        consumers: split_list(row.try_get("consumers")?),
                    })
                })
                .collect()
        })
    }

    /// The id of the active asset called `name`.
    pub async fn asset_id(&self, name: &str) -> Result<i64> {
        with_db!(self, pool => {
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM asset WHERE name = $1 AND is_active = TRUE")
                .bind(name)
                .fetch_optional(pool)
                .await?;
            id.ok_or_else(|| {
                StoreError::NotFound(format!(
                    "asset `{name}` not found; `triggerer assets list` shows the assets"
                ))
            })
        })
    }

    /// The newest `limit` events (0 = all), oldest first.
    /// An asset that does not exist (active or not) is an error, not an empty list: a typo
    /// must not look like "no events".
    pub async fn list_events(&self, asset: Option<&str>, limit: u64) -> Result<Vec<EventRow>> {
        with_db!(self, pool => {
            if let Some(name) = asset {
                let known: Option<i64> = sqlx::query_scalar("SELECT id FROM asset WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?;
                if known.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "asset `{name}` not found; `triggerer assets list` shows the assets"
                    )));
                }
            }
            Ok(sqlx::query_as::<_, EventRow>(
                "SELECT * FROM (SELECT e.id, a.name, a.uri, e.timestamp, e.extra, e.source, e.dedup_key \
                 FROM asset_event e JOIN asset a ON a.id = e.asset_id \
                 WHERE ($1 IS NULL OR a.name = $1) ORDER BY e.id DESC LIMIT $2) t ORDER BY id",
            )
            .bind(asset)
            .bind(limit_of(limit))
            .fetch_all(pool)
            .await?)
        })
    }

    /// The event an asset holds under `dedup_key` (the API's answer to a push).
    pub async fn event_by_dedup_key(&self, asset_id: i64, dedup_key: &str) -> Result<EventRow> {
        with_db!(self, pool => {
            sqlx::query_as::<_, EventRow>(
                "SELECT e.id, a.name, a.uri, e.timestamp, e.extra, e.source, e.dedup_key \
                 FROM asset_event e JOIN asset a ON a.id = e.asset_id \
                 WHERE e.asset_id = $1 AND e.dedup_key = $2",
            )
            .bind(asset_id)
            .bind(dedup_key)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no event with dedup key `{dedup_key}`")))
        })
    }

    /// How many asset events are stored (benchmarks and health checks).
    pub async fn count_asset_events(&self) -> Result<i64> {
        with_db!(self, pool => {
            Ok(sqlx::query_scalar("SELECT count(*) FROM asset_event").fetch_one(pool).await?)
        })
    }

    /// Every trigger, with its state as seen now by a triggerer using `health_threshold`, none
    /// of them `pushed`: [`Self::list_triggers_with`] with no pushed classpaths, for callers
    /// that hold no registry (and know there is no webhook).
    pub async fn list_triggers(
        &self,
        health_threshold: std::time::Duration,
    ) -> Result<Vec<TriggerRow>> {
        self.list_triggers_with(health_threshold, &[]).await
    }

    /// Every trigger, with its state as seen now by a triggerer using `health_threshold`; those
    /// of `pushed_classpaths` (the registry's [`pushed_classpaths`], webhooks) are `pushed`.
    ///
    /// [`pushed_classpaths`]: crate::registry::ProviderRegistry::pushed_classpaths
    pub async fn list_triggers_with(
        &self,
        health_threshold: std::time::Duration,
        pushed_classpaths: &[&str],
    ) -> Result<Vec<TriggerRow>> {
        let assets = self.list_agg("a.name");
        let now = crate::time::now();
        let threshold =
            chrono::Duration::from_std(health_threshold).unwrap_or(chrono::Duration::MAX);
        with_db!(self, pool => {
            let sql = format!(
                "SELECT t.id, t.classpath, t.kwargs, t.hash, t.triggerer_id, t.last_event_at, \
                 t.last_error, t.last_error_at, t.failure_count, j.latest_heartbeat, \
                 (SELECT {assets} FROM asset_watcher w JOIN asset a ON a.id = w.asset_id \
                  WHERE w.trigger_id = t.id) AS assets \
                 FROM trigger t LEFT JOIN job j ON j.id = t.triggerer_id ORDER BY t.id"
            );
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            rows.into_iter()
                .map(|row| {
                    let kwargs: String = row.try_get("kwargs")?;
                    let triggerer_id = row.try_get("triggerer_id")?;
                    let owner_heartbeat = row.try_get("latest_heartbeat")?;
                    let last_event_at = row.try_get("last_event_at")?;
                    let last_error_at = row.try_get("last_error_at")?;
                    let classpath: String = row.try_get("classpath")?;
                    let state = if pushed_classpaths.contains(&classpath.as_str()) {
                        "pushed"
                    } else {
                        trigger_state(
                            triggerer_id,
                            owner_heartbeat,
                            last_event_at,
                            last_error_at,
                            now,
                            threshold,
                        )
                    };
                    Ok(TriggerRow {
                        id: row.try_get("id")?,
                        classpath,
                        kwargs: serde_json::from_str(&kwargs).unwrap_or(Value::String(kwargs)),
                        hash: row.try_get("hash")?,
                        triggerer_id,
                        assets: split_list(row.try_get("assets")?),
                        last_event_at,
                        last_error: row.try_get("last_error")?,
                        last_error_at,
                        failure_count: row.try_get("failure_count")?,
                        owner_heartbeat,
                        state,
                    })
                })
                .collect()
        })
    }

    /// The newest `limit` runs (0 = all), oldest first, with the events each consumed.
    pub async fn list_runs(
        &self,
        dag_id: Option<&str>,
        state: Option<DagRunState>,
        limit: u64,
    ) -> Result<Vec<RunRow>> {
        self.runs_where(dag_id, None, state, limit, false).await
    }

    /// Every DAG's newest run (the UI's DAG list), in one query.
    pub async fn latest_runs(&self) -> Result<Vec<RunRow>> {
        self.runs_where(None, None, None, 0, true).await
    }

    /// One run of a DAG (the API's answer to a manual run).
    pub async fn run_row(&self, dag_id: &str, run_id: &str) -> Result<RunRow> {
        self.runs_where(Some(dag_id), Some(run_id), None, 1, false)
            .await?
            .pop()
            .ok_or_else(|| StoreError::NotFound(format!("DAG `{dag_id}` has no run `{run_id}`")))
    }

    async fn runs_where(
        &self,
        dag_id: Option<&str>,
        run_id: Option<&str>,
        state: Option<DagRunState>,
        limit: u64,
        latest_per_dag: bool,
    ) -> Result<Vec<RunRow>> {
        let latest = if latest_per_dag {
            " AND r.id IN (SELECT (SELECT max(x.id) FROM dag_run x WHERE x.dag_id = d.dag_id) FROM dag d)"
        } else {
            ""
        };
        let consumed = match self.engine() {
            super::Engine::Sqlite => "group_concat(event_id, ',')",
            super::Engine::Postgres => "string_agg(event_id::text, ',')",
        };
        with_db!(self, pool => {
            // A DAG no longer defined still has its runs listed; one never defined is a typo.
            if let Some(dag_id) = dag_id {
                let known: Option<String> = sqlx::query_scalar("SELECT dag_id FROM dag WHERE dag_id = $1")
                    .bind(dag_id)
                    .fetch_optional(pool)
                    .await?;
                if known.is_none() {
                    return Err(StoreError::NotFound(format!(
                        "DAG `{dag_id}` not found; `triggerer dags list` shows the DAGs"
                    )));
                }
            }
            let sql = format!(
                "SELECT * FROM (SELECT r.id, r.dag_id, r.run_id, r.run_type, r.state, r.logical_date, \
                 r.data_interval_start, r.data_interval_end, r.run_after, r.queued_at, r.conf, \
                 (SELECT {consumed} FROM dagrun_asset_event x WHERE x.dag_run_id = r.id) AS consumed \
                 FROM dag_run r WHERE ($1 IS NULL OR r.dag_id = $1) AND ($2 IS NULL OR r.state = $2) \
                 AND ($4 IS NULL OR r.run_id = $4){latest} ORDER BY r.id DESC LIMIT $3) t ORDER BY id"
            );
            let rows = sqlx::query(&sql)
                .bind(dag_id)
                .bind(state.map(DagRunState::as_str))
                .bind(limit_of(limit))
                .bind(run_id)
                .fetch_all(pool)
                .await?;
            rows.into_iter()
                .map(|row| {
                    let consumed: Option<String> = row.try_get("consumed")?;
                    let mut consumed_events: Vec<i64> = consumed
                        .unwrap_or_default()
                        .split(',')
                        .filter_map(|s| s.parse().ok())
                        .collect();
                    consumed_events.sort_unstable();
                    Ok(RunRow {
                        dag_id: row.try_get("dag_id")?,
                        run_id: row.try_get("run_id")?,
                        run_type: row.try_get::<String, _>("run_type")?.parse()?,
                        state: row.try_get::<String, _>("state")?.parse()?,
                        logical_date: row.try_get("logical_date")?,
                        data_interval_start: row.try_get("data_interval_start")?,
                        data_interval_end: row.try_get("data_interval_end")?,
                        run_after: row.try_get("run_after")?,
                        queued_at: row.try_get("queued_at")?,
                        conf: row.try_get::<Json<Value>, _>("conf")?.0,
                        consumed_events,
                    })
                })
                .collect()
        })
    }

    /// The events of `ids` (a run's `consumed_events`), by id, each once; an id with no event
    /// is left out.
    pub async fn events_by_ids(&self, ids: &[i64]) -> Result<Vec<EventRow>> {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        ids.dedup();
        let mut events: Vec<EventRow> = Vec::with_capacity(ids.len());
        with_db!(self, pool => {
            for chunk in ids.chunks(super::CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT e.id, a.name, a.uri, e.timestamp, e.extra, e.source, e.dedup_key \
                     FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE e.id IN ",
                );
                super::push_in_list(&mut qb, chunk);
                events.extend(qb.build_query_as::<EventRow>().fetch_all(pool).await?);
            }
        });
        events.sort_by_key(|e| e.id);
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_states() {
        let now = crate::time::now();
        let secs = chrono::Duration::seconds;
        let threshold = secs(30);
        let state =
            |owner, beat, event, error| trigger_state(owner, beat, event, error, now, threshold);
        assert_eq!(state(None, None, None, None), "unassigned");
        assert_eq!(state(Some(1), Some(now - secs(31)), None, None), "orphaned");
        assert_eq!(state(Some(1), Some(now - secs(1)), None, None), "running");
        assert_eq!(
            state(Some(1), Some(now), None, Some(now - secs(5))),
            "failing"
        );
        assert_eq!(
            state(Some(1), Some(now), Some(now - secs(1)), Some(now - secs(5))),
            "running",
            "an event after the error: it recovered"
        );
        assert_eq!(
            state(Some(1), Some(now), None, Some(now - secs(600))),
            "running",
            "an old error is history"
        );
    }
}
