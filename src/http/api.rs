//! The JSON API under `/api/v1` (DESIGN §12): the lists the command line prints with `--json`
//! (the same objects), pushing an asset event, a manual run, pausing, and the OpenAPI document
//! generated from these handlers' annotations. Each handler turns a request into one store or
//! scheduler call; it must not decide what a run, a pause or an event means.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};
use triggerer_sdk::NotCommitted;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::{ApiError, ApiJson, ApiPath, ApiQuery, AppState, ErrorBody};
use crate::dag_run::DagRunState;
use crate::names;
use crate::scheduler::manual;
use crate::store::{AssetRow, DagRow, EventRow, NewEvent, Origin, RunRow, TaskRow, TriggerRow};
use crate::triggerer::writer::Pushed;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/dags", get(list_dags))
        .route("/api/v1/dags/{dag_id}", patch(patch_dag))
        .route(
            "/api/v1/dags/{dag_id}/runs",
            get(list_runs).post(trigger_run),
        )
        .route("/api/v1/dags/{dag_id}/runs/{run_id}/tasks", get(list_tasks))
        .route("/api/v1/assets", get(list_assets))
        .route(
            "/api/v1/assets/{name}/events",
            get(list_events).post(push_event),
        )
        .route("/api/v1/triggers", get(list_triggers))
}

/// The OpenAPI 3 document of this API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "triggerer",
        description = "Event-driven DAG triggering with Apache Airflow's AIP-82 semantics: DAGs, runs, \
                       task instances, assets and their events, triggers."
    ),
    paths(
        list_dags, patch_dag, list_runs, trigger_run, list_tasks, list_assets, list_events,
        push_event, list_triggers
    ),
    components(schemas(ErrorBody, PushEvent, NewRun, DagPatch)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

async fn openapi() -> Response {
    Json(ApiDoc::openapi()).into_response()
}

/// Most rows one list answer holds.
const MAX_LIMIT: u32 = 1_000;

/// `limit`/`offset` of a list (DESIGN §12).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct Page {
    /// Most rows to return (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Rows to skip.
    #[param(minimum = 0, maximum = 100000)]
    offset: Option<u32>,
}

impl Page {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.unwrap_or(100) {
            0 => Err(ApiError::bad_request("limit: must be at least 1")),
            n if n > MAX_LIMIT => Err(ApiError::bad_request(format!(
                "limit: at most {MAX_LIMIT}, got {n}"
            ))),
            n => Ok(n as usize),
        }
    }

    fn offset(&self) -> Result<usize, ApiError> {
        match self.offset.unwrap_or(0) {
            n if n > 100_000 => Err(ApiError::bad_request(format!(
                "offset: at most 100000, got {n}"
            ))),
            n => Ok(n as usize),
        }
    }

    /// How many of the newest rows to read so this page can be cut from them.
    fn newest(&self) -> Result<u64, ApiError> {
        Ok((self.limit()? + self.offset()?) as u64)
    }

    /// This page of `rows`, in their order.
    fn of<T>(&self, rows: Vec<T>) -> Result<Vec<T>, ApiError> {
        Ok(rows
            .into_iter()
            .skip(self.offset()?)
            .take(self.limit()?)
            .collect())
    }

    /// This page of `rows` read oldest first (the store's "newest N"), newest first.
    fn of_newest<T>(&self, mut rows: Vec<T>) -> Result<Vec<T>, ApiError> {
        rows.reverse();
        self.of(rows)
    }
}

/// The DAGs, by `dag_id` (as `dags list --json`).
#[utoipa::path(get, path = "/api/v1/dags", tag = "dags", params(Page),
    responses((status = 200, body = Vec<DagRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_dags(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<DagRow>>, ApiError> {
    Ok(Json(page.of(state.store.list_dags().await?)?))
}

/// A DAG's pause state.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DagPatch {
    /// `true` pauses the DAG (no new runs, no queued events); `false` resumes it from now.
    is_paused: bool,
}

/// Pauses or unpauses a DAG (as `dags pause` / `dags unpause`).
#[utoipa::path(patch, path = "/api/v1/dags/{dag_id}", tag = "dags",
    params(("dag_id" = String, Path)), request_body = DagPatch,
    responses((status = 200, body = DagRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn patch_dag(
    State(state): State<AppState>,
    ApiPath(dag_id): ApiPath<String>,
    ApiJson(body): ApiJson<DagPatch>,
) -> Result<Json<DagRow>, ApiError> {
    manual::set_paused(&state.store, &dag_id, body.is_paused).await?;
    Ok(Json(state.store.dag_row(&dag_id).await?))
}

/// Filters of a DAG's runs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct RunsQuery {
    /// Only runs in this state.
    state: Option<DagRunState>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    #[param(minimum = 0, maximum = 100000)]
    offset: Option<u32>,
}

/// A DAG's runs, newest first (the objects of `runs list --json`).
#[utoipa::path(get, path = "/api/v1/dags/{dag_id}/runs", tag = "runs",
    params(("dag_id" = String, Path), RunsQuery),
    responses((status = 200, body = Vec<RunRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_runs(
    State(state): State<AppState>,
    ApiPath(dag_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<Json<Vec<RunRow>>, ApiError> {
    let page = Page {
        limit: query.limit,
        offset: query.offset,
    };
    let rows = state
        .store
        .list_runs(Some(&dag_id), query.state, page.newest()?)
        .await?;
    Ok(Json(page.of_newest(rows)?))
}

/// A manual run (as `dags trigger`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewRun {
    /// The run id; by default `manual__<logical date>`. Not blank, no control characters, not
    /// starting with a prefix the scheduler gives its runs (`scheduled__`, `asset_triggered__`,
    /// `backfill__`).
    #[schema(
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    run_id: Option<String>,
    /// The run's `conf`, a JSON object.
    #[schema(value_type = Option<Object>)]
    conf: Option<Map<String, Value>>,
    /// RFC 3339; by default now.
    logical_date: Option<DateTime<Utc>>,
}

/// Creates a queued manual run; the scheduler starts it under `max_active_runs`.
#[utoipa::path(post, path = "/api/v1/dags/{dag_id}/runs", tag = "runs",
    params(("dag_id" = String, Path)), request_body = NewRun,
    responses((status = 201, body = RunRow), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)))]
async fn trigger_run(
    State(state): State<AppState>,
    ApiPath(dag_id): ApiPath<String>,
    ApiJson(body): ApiJson<NewRun>,
) -> Result<(StatusCode, Json<RunRow>), ApiError> {
    let conf = Value::Object(body.conf.unwrap_or_default());
    refuse_nul("conf", &conf)?;
    let run_id =
        manual::trigger_run(&state.store, &dag_id, body.run_id, conf, body.logical_date).await?;
    Ok((
        StatusCode::CREATED,
        Json(state.store.run_row(&dag_id, &run_id).await?),
    ))
}

/// A run's task instances, in the DAG's order (as `tasks list --json`).
#[utoipa::path(get, path = "/api/v1/dags/{dag_id}/runs/{run_id}/tasks", tag = "runs",
    params(("dag_id" = String, Path), ("run_id" = String, Path), Page),
    responses((status = 200, body = Vec<TaskRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_tasks(
    State(state): State<AppState>,
    ApiPath((dag_id, run_id)): ApiPath<(String, String)>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<TaskRow>>, ApiError> {
    let rows = state.store.list_task_instances(&dag_id, &run_id).await?;
    Ok(Json(page.of(rows)?))
}

/// The assets, by name (as `assets list --json`).
#[utoipa::path(get, path = "/api/v1/assets", tag = "assets", params(Page),
    responses((status = 200, body = Vec<AssetRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_assets(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<AssetRow>>, ApiError> {
    Ok(Json(page.of(state.store.list_assets().await?)?))
}

/// An asset's events, newest first (as `assets events --json`).
#[utoipa::path(get, path = "/api/v1/assets/{name}/events", tag = "assets",
    params(("name" = String, Path), Page),
    responses((status = 200, body = Vec<EventRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_events(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<EventRow>>, ApiError> {
    let rows = state.store.list_events(Some(&name), page.newest()?).await?;
    Ok(Json(page.of_newest(rows)?))
}

/// An asset event to record.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PushEvent {
    /// The event's `extra`, a JSON object.
    #[schema(value_type = Option<Object>)]
    extra: Option<Map<String, Value>>,
    /// Identifies the occurrence: the asset keeps one event per key, so a retry records
    /// nothing twice. Without it, every push is a new event. Not blank, no control characters.
    #[schema(
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    dedup_key: Option<String>,
}

/// Records an asset event through the same writer as the watchers': 201 with the event once
/// committed; 200 with the stored event when the asset already has one with this dedup key;
/// 503 with `Retry-After` when the writer cannot take more (nothing recorded).
#[utoipa::path(post, path = "/api/v1/assets/{name}/events", tag = "assets",
    params(("name" = String, Path)), request_body = PushEvent,
    responses((status = 201, body = EventRow), (status = 200, body = EventRow), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn push_event(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<PushEvent>,
) -> Result<(StatusCode, Json<EventRow>), ApiError> {
    let extra = Value::Object(body.extra.unwrap_or_default());
    refuse_nul("extra", &extra)?;
    if let Some(key) = &body.dedup_key {
        names::check(key).map_err(|e| ApiError::bad_request(format!("dedup_key: {e}")))?;
    }
    let asset_id = state.store.asset_id(&name).await?;
    // A key of its own even when none was given, so that the writer's retry of a commit whose
    // answer was lost cannot record it twice.
    let dedup_key = body
        .dedup_key
        .unwrap_or_else(|| format!("push:{:032x}", rand::random::<u128>()));
    let event = NewEvent {
        origin: Origin::Manual { asset_id },
        extra,
        dedup_key: Some(dedup_key.clone()),
        checkpoint: None,
    };
    let committed = push(&state, event).await?;
    let row = state.store.event_by_dedup_key(asset_id, &dedup_key).await?;
    let status = if committed > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(row)))
}

/// Seconds a refused push is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// Hands `event` to the server's writer and waits for its commit; returns how many asset
/// events it inserted (0: all were already there). Refuses at once, recording nothing, while
/// the writer is full or its commits are failing.
pub(super) async fn push(state: &AppState, event: NewEvent) -> Result<u32, ApiError> {
    if let Some(failing) = state.writer_health.failing() {
        return Err(ApiError::busy(
            format!(
                "events are not committing now ({}); nothing was recorded",
                failing.error
            ),
            RETRY_AFTER_SECS,
        ));
    }
    let (answer, committed) = oneshot::channel();
    match state.push.try_send(Pushed { event, answer }) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            return Err(ApiError::busy(
                "the event writer is saturated; nothing was recorded, try again",
                RETRY_AFTER_SECS,
            ))
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return Err(ApiError::busy(
                "the server is shutting down; nothing was recorded",
                RETRY_AFTER_SECS,
            ))
        }
    }
    match committed.await {
        Ok(Ok(c)) => Ok(c.inserted),
        Ok(Err(NotCommitted::Rejected(e))) => Err(ApiError::bad_request(format!(
            "the database refused the event: {e}"
        ))),
        Ok(Err(e)) => Err(ApiError::busy(
            format!("event not recorded: {e}"),
            RETRY_AFTER_SECS,
        )),
        Err(_) => Err(ApiError::busy(
            "the server stopped before the event committed; it was not recorded",
            RETRY_AFTER_SECS,
        )),
    }
}

/// The triggers, by id, with kwargs masked (as `triggers list --json`).
#[utoipa::path(get, path = "/api/v1/triggers", tag = "triggers", params(Page),
    responses((status = 200, body = Vec<TriggerRow>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_triggers(
    State(state): State<AppState>,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<Vec<TriggerRow>>, ApiError> {
    Ok(Json(page.of(super::triggers(&state).await?)?))
}

/// PostgreSQL cannot store a NUL character in JSON: refuse it naming where it is.
fn refuse_nul(field: &str, value: &Value) -> Result<(), ApiError> {
    match names::nul_in_json(value) {
        Some(path) if path.is_empty() => Err(ApiError::bad_request(format!(
            "{field}: holds a NUL character"
        ))),
        Some(path) => Err(ApiError::bad_request(format!(
            "{field}.{path}: holds a NUL character"
        ))),
        None => Ok(()),
    }
}
