//! The web UI at `/` (DESIGN §12): server-rendered HTML pages, from the askama templates of
//! `templates/`, that refresh themselves every few seconds — the DAGs with their schedule, next
//! run and latest run; a DAG's runs; a run's task instances and the events it consumed; the
//! triggers with their state and last error (kwargs masked); the newest asset events. It owns
//! turning the store's read models into what a page shows (times as UTC, states as colours,
//! JSON as compact text) and the HTML error page. It is read-only and must not write SQL (it
//! calls the store's read models, as the JSON API does) nor decide anything: a state shown is
//! the store's. Every value reaches the page through askama's HTML escaping; nothing from the
//! database is ever marked safe.

use std::collections::HashMap;

use askama::Template;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{ApiError, AppState};
use crate::store::{DagRow, EventRow, RunRow, StoreError, TaskRow, TriggerRow};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(dags_page))
        .route("/dags/{dag_id}", get(dag_page))
        .route("/dags/{dag_id}/runs/{run_id}", get(run_page))
        .route("/triggers", get(triggers_page))
        .route("/events", get(events_page))
}

/// Seconds between a page's refreshes (its `<meta http-equiv="refresh">`).
const REFRESH_SECS: u32 = 5;
/// Most runs a DAG's page lists.
const MAX_RUNS: u64 = 100;
/// Most events the events page lists.
const MAX_EVENTS: u64 = 100;
/// Longest JSON (an event's `extra`, a run's `conf`, kwargs) shown in a cell before it is cut.
const MAX_JSON: usize = 400;

// ---- what the pages show: pure functions of the read models --------------------------------

/// The CSS class of a run, task-instance or trigger state.
fn state_class(state: &str) -> &'static str {
    match state {
        "success" => "st-success",
        "failed" | "upstream_failed" | "failing" => "st-failed",
        "running" | "deferred" | "pushed" => "st-running",
        "queued" | "scheduled" | "unassigned" => "st-queued",
        "up_for_retry" | "orphaned" => "st-retry",
        "skipped" => "st-skipped",
        _ => "st-none",
    }
}

/// A time as UTC `YYYY-MM-DD HH:MM:SS`; `-` for none.
fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "-".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// A duration in seconds, as people read it: `4 ms`, `12.3 s`, `2m 05s`, `1h 02m`.
fn fmt_duration(secs: Option<f64>) -> String {
    let Some(secs) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".to_string();
    };
    if secs < 1.0 {
        return format!("{:.0} ms", secs * 1000.0);
    }
    if secs < 60.0 {
        return format!("{secs:.1} s");
    }
    // Whole seconds from here on; truncation is what a clock shows.
    let whole = secs as u64;
    if whole < 3600 {
        format!("{}m {:02}s", whole / 60, whole % 60)
    } else {
        format!("{}h {:02}m", whole / 3600, (whole % 3600) / 60)
    }
}

/// A DAG's `schedule` as text: a cron or preset string as it is, a table as `key: value`
/// pairs (`assets: orders & refunds`), none as `none`.
fn schedule_text(schedule: Option<&Value>) -> String {
    match schedule {
        None | Some(Value::Null) => "none".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Object(table)) => table
            .iter()
            .map(|(key, value)| match value {
                Value::String(s) => format!("{key}: {s}"),
                other => format!("{key}: {other}"),
            })
            .collect::<Vec<_>>()
            .join("; "),
        Some(other) => other.to_string(),
    }
}

/// `value` as one line of JSON, cut after `max` characters (with `…`).
fn compact_json(value: &Value, max: usize) -> String {
    let text = value.to_string();
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max).collect();
    cut.push('…');
    cut
}

/// `segment` percent-encoded for one path segment of a link (only RFC 3986's unreserved
/// characters are left as they are), so an id holding `/`, `?`, `#`, `%` or `+` links to itself.
fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn dag_href(dag_id: &str) -> String {
    format!("/dags/{}", path_segment(dag_id))
}

fn run_href(dag_id: &str, run_id: &str) -> String {
    format!("{}/runs/{}", dag_href(dag_id), path_segment(run_id))
}

/// A task instance's try as `N of M`, where `M` is `max_tries + 1`: Airflow's `max_tries`
/// counts the retries, so a task with none has one try.
fn tries_text(try_number: i64, max_tries: i64) -> String {
    format!("{try_number} of {}", max_tries.saturating_add(1))
}

fn or_dash(text: Option<&str>) -> String {
    text.map_or_else(|| "-".to_string(), str::to_string)
}

// ---- the views the templates print: every field already text --------------------------------

/// What the base template shows around every page.
struct Chrome {
    title: String,
    /// The nav entry to mark: `dags`, `triggers`, `events` or empty.
    nav: &'static str,
    refresh_secs: u32,
    now: String,
}

impl Chrome {
    fn new(title: impl Into<String>, nav: &'static str) -> Self {
        Self {
            title: title.into(),
            nav,
            refresh_secs: REFRESH_SECS,
            now: fmt_time(Some(crate::time::now())),
        }
    }
}

/// A state as a coloured badge.
struct Badge {
    text: String,
    class: &'static str,
}

impl Badge {
    fn of(state: &str) -> Self {
        Self {
            text: state.to_string(),
            class: state_class(state),
        }
    }

    fn none() -> Self {
        Self {
            text: "-".to_string(),
            class: "st-none",
        }
    }
}

struct DagView {
    dag_id: String,
    href: String,
    schedule: String,
    paused: bool,
    next_after: String,
    next_logical: String,
    latest: Badge,
    /// The latest run's link; empty when the DAG has no run.
    latest_href: String,
    latest_run_id: String,
}

impl DagView {
    fn new(dag: &DagRow, latest: Option<&RunRow>) -> Self {
        Self {
            dag_id: dag.dag_id.clone(),
            href: dag_href(&dag.dag_id),
            schedule: schedule_text(dag.schedule.as_ref()),
            paused: dag.is_paused,
            next_after: fmt_time(dag.next_dagrun_create_after),
            next_logical: fmt_time(dag.next_dagrun),
            latest: latest.map_or_else(Badge::none, |r| Badge::of(r.state.as_str())),
            latest_href: latest.map_or_else(String::new, |r| run_href(&r.dag_id, &r.run_id)),
            latest_run_id: latest.map_or_else(String::new, |r| r.run_id.clone()),
        }
    }
}

struct RunView {
    run_id: String,
    href: String,
    run_type: String,
    state: Badge,
    logical_date: String,
    data_interval: String,
    run_after: String,
    queued_at: String,
    conf: String,
    events: usize,
}

impl RunView {
    fn new(run: &RunRow) -> Self {
        let data_interval = match (run.data_interval_start, run.data_interval_end) {
            (None, None) => "-".to_string(),
            (start, end) => format!("{} → {}", fmt_time(start), fmt_time(end)),
        };
        Self {
            run_id: run.run_id.clone(),
            href: run_href(&run.dag_id, &run.run_id),
            run_type: run.run_type.as_str().to_string(),
            state: Badge::of(run.state.as_str()),
            logical_date: fmt_time(run.logical_date),
            data_interval,
            run_after: fmt_time(Some(run.run_after)),
            queued_at: fmt_time(Some(run.queued_at)),
            conf: compact_json(&run.conf, MAX_JSON * 5),
            events: run.consumed_events.len(),
        }
    }
}

struct TaskView {
    task_id: String,
    state: Badge,
    /// `1 of 3`: the try, of the tries Airflow's `max_tries` allows (it counts the retries).
    tries: String,
    /// The raw numbers, for the cell's title.
    tries_raw: String,
    operator: String,
    start: String,
    end: String,
    duration: String,
    hostname: String,
}

impl TaskView {
    fn new(task: &TaskRow) -> Self {
        Self {
            task_id: task.task_id.clone(),
            state: Badge::of(&task.state),
            tries: tries_text(task.try_number, task.max_tries),
            tries_raw: format!(
                "try_number {}, max_tries {}",
                task.try_number, task.max_tries
            ),
            operator: task.operator.clone(),
            start: fmt_time(task.start_date),
            end: fmt_time(task.end_date),
            duration: fmt_duration(task.duration),
            hostname: or_dash(task.hostname.as_deref()),
        }
    }
}

struct EventView {
    id: i64,
    asset: String,
    uri: String,
    timestamp: String,
    source: String,
    dedup_key: String,
    extra: String,
    /// The whole `extra` when the cell shows it cut; empty otherwise.
    extra_full: String,
}

impl EventView {
    fn new(event: &EventRow) -> Self {
        let extra = compact_json(&event.extra, MAX_JSON);
        let full = event.extra.to_string();
        Self {
            id: event.id,
            asset: event.asset.clone(),
            uri: event.uri.clone(),
            timestamp: fmt_time(Some(event.timestamp)),
            source: event.source.clone(),
            dedup_key: or_dash(event.dedup_key.as_deref()),
            extra_full: if full == extra { String::new() } else { full },
            extra,
        }
    }
}

struct TriggerView {
    id: i64,
    classpath: String,
    state: Badge,
    assets: String,
    triggerer_id: String,
    last_event_at: String,
    failure_count: i64,
    /// Empty when the trigger has no error.
    last_error: String,
    last_error_at: String,
    kwargs: String,
}

impl TriggerView {
    /// `trigger` as [`super::triggers`] gives it: kwargs already masked.
    fn new(trigger: &TriggerRow) -> Self {
        Self {
            id: trigger.id,
            classpath: trigger.classpath.clone(),
            state: Badge::of(trigger.state),
            assets: if trigger.assets.is_empty() {
                "-".to_string()
            } else {
                trigger.assets.join(", ")
            },
            triggerer_id: trigger
                .triggerer_id
                .map_or_else(|| "-".to_string(), |id| id.to_string()),
            last_event_at: fmt_time(trigger.last_event_at),
            failure_count: trigger.failure_count,
            last_error: trigger.last_error.clone().unwrap_or_default(),
            last_error_at: fmt_time(trigger.last_error_at),
            kwargs: compact_json(&trigger.kwargs, MAX_JSON),
        }
    }
}

// ---- the templates ---------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "dags.html")]
struct DagsPage {
    page: Chrome,
    dags: Vec<DagView>,
}

/// The DAG's own row when it is still defined (a DAG removed from the definitions keeps its
/// runs).
struct DagSummary {
    schedule: String,
    paused: bool,
    max_active_runs: i64,
    catchup: bool,
    next_after: String,
    next_logical: String,
}

#[derive(Template)]
#[template(path = "dag.html")]
struct DagPage {
    page: Chrome,
    dag_id: String,
    dag: Option<DagSummary>,
    runs: Vec<RunView>,
    max_runs: u64,
}

#[derive(Template)]
#[template(path = "run.html")]
struct RunPage {
    page: Chrome,
    dag_id: String,
    dag_href: String,
    run: RunView,
    tasks: Vec<TaskView>,
    events: Vec<EventView>,
}

#[derive(Template)]
#[template(path = "triggers.html")]
struct TriggersPage {
    page: Chrome,
    triggers: Vec<TriggerView>,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    page: Chrome,
    events: Vec<EventView>,
    max_events: u64,
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    page: Chrome,
    status: u16,
    reason: String,
    message: String,
}

/// A page, or the HTML page of what went wrong, with its status.
struct UiError {
    status: StatusCode,
    message: String,
}

impl From<StoreError> for UiError {
    fn from(e: StoreError) -> Self {
        // The JSON API's statuses: 404 for what is unknown, 503 for a database away, ….
        let ApiError {
            status, message, ..
        } = ApiError::from(e);
        Self { status, message }
    }
}

impl From<PathRejection> for UiError {
    fn from(rejection: PathRejection) -> Self {
        Self {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let reason = self
            .status
            .canonical_reason()
            .unwrap_or("Error")
            .to_string();
        let page = ErrorPage {
            page: Chrome::new(format!("{} {reason}", self.status.as_u16()), ""),
            status: self.status.as_u16(),
            reason,
            message: self.message,
        };
        match page.render() {
            Ok(body) => (self.status, Html(body)).into_response(),
            Err(_) => (self.status, page.message).into_response(),
        }
    }
}

type PageResult = Result<Html<String>, UiError>;

fn html(template: &impl Template) -> PageResult {
    template.render().map(Html).map_err(|e| UiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("the page could not be rendered: {e}"),
    })
}

// ---- the handlers: read, shape, render -------------------------------------------------------

/// `GET /`: the DAGs, each with its latest run.
async fn dags_page(State(state): State<AppState>) -> PageResult {
    let dags = state.store.list_dags().await?;
    let latest: HashMap<String, RunRow> = state
        .store
        .latest_runs()
        .await?
        .into_iter()
        .map(|run| (run.dag_id.clone(), run))
        .collect();
    let views: Vec<DagView> = dags
        .iter()
        .map(|dag| DagView::new(dag, latest.get(&dag.dag_id)))
        .collect();
    html(&DagsPage {
        page: Chrome::new("DAGs", "dags"),
        dags: views,
    })
}

/// `GET /dags/{dag_id}`: the DAG's newest runs, newest first; 404 for a DAG never defined.
async fn dag_page(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> PageResult {
    let Path(dag_id) = path?;
    let mut runs = state.store.list_runs(Some(&dag_id), None, MAX_RUNS).await?;
    runs.reverse();
    let dag = match state.store.dag_row(&dag_id).await {
        Ok(dag) => Some(DagSummary {
            schedule: schedule_text(dag.schedule.as_ref()),
            paused: dag.is_paused,
            max_active_runs: dag.max_active_runs,
            catchup: dag.catchup,
            next_after: fmt_time(dag.next_dagrun_create_after),
            next_logical: fmt_time(dag.next_dagrun),
        }),
        Err(StoreError::NotFound(_)) => None,
        Err(e) => return Err(e.into()),
    };
    html(&DagPage {
        page: Chrome::new(format!("DAG {dag_id}"), "dags"),
        dag,
        runs: runs.iter().map(RunView::new).collect(),
        max_runs: MAX_RUNS,
        dag_id,
    })
}

/// `GET /dags/{dag_id}/runs/{run_id}`: the run, its task instances, the events it consumed.
async fn run_page(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> PageResult {
    let Path((dag_id, run_id)) = path?;
    let run = state.store.run_row(&dag_id, &run_id).await?;
    let tasks = state.store.list_task_instances(&dag_id, &run_id).await?;
    let events = state.store.events_by_ids(&run.consumed_events).await?;
    html(&RunPage {
        page: Chrome::new(format!("Run {run_id} of {dag_id}"), "dags"),
        dag_href: dag_href(&dag_id),
        dag_id,
        run: RunView::new(&run),
        tasks: tasks.iter().map(TaskView::new).collect(),
        events: events.iter().map(EventView::new).collect(),
    })
}

/// `GET /triggers`: every trigger, kwargs masked.
async fn triggers_page(State(state): State<AppState>) -> PageResult {
    let triggers = super::triggers(&state).await?;
    html(&TriggersPage {
        page: Chrome::new("Triggers", "triggers"),
        triggers: triggers.iter().map(TriggerView::new).collect(),
    })
}

/// `GET /events`: the newest asset events, newest first.
async fn events_page(State(state): State<AppState>) -> PageResult {
    let mut events = state.store.list_events(None, MAX_EVENTS).await?;
    events.reverse();
    html(&EventsPage {
        page: Chrome::new("Asset events", "events"),
        events: events.iter().map(EventView::new).collect(),
        max_events: MAX_EVENTS,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;
    use serde_json::json;

    #[test]
    fn states_have_their_colours() {
        assert_eq!(state_class("success"), "st-success");
        for failed in ["failed", "upstream_failed", "failing"] {
            assert_eq!(state_class(failed), "st-failed", "{failed}");
        }
        for running in ["running", "deferred", "pushed"] {
            assert_eq!(state_class(running), "st-running", "{running}");
        }
        for waiting in ["queued", "scheduled", "unassigned"] {
            assert_eq!(state_class(waiting), "st-queued", "{waiting}");
        }
        assert_eq!(state_class("up_for_retry"), "st-retry");
        assert_eq!(state_class("orphaned"), "st-retry");
        assert_eq!(state_class("skipped"), "st-skipped");
        assert_eq!(state_class("none"), "st-none");
        assert_eq!(state_class("<anything else>"), "st-none");
    }

    #[test]
    fn every_run_and_task_state_has_a_colour() {
        for state in [
            crate::dag_run::DagRunState::Queued,
            crate::dag_run::DagRunState::Running,
            crate::dag_run::DagRunState::Success,
            crate::dag_run::DagRunState::Failed,
        ] {
            assert_ne!(state_class(state.as_str()), "st-none", "{state}");
        }
        for state in crate::task::TaskInstanceState::ALL {
            assert_ne!(state_class(state.as_str()), "st-none", "{state}");
        }
    }

    #[test]
    fn times_are_utc_to_the_second() {
        let t = Utc.with_ymd_and_hms(2024, 3, 9, 7, 5, 1).unwrap()
            + chrono::Duration::milliseconds(987);
        assert_eq!(fmt_time(Some(t)), "2024-03-09 07:05:01");
        assert_eq!(fmt_time(None), "-");
    }

    #[test]
    fn durations_read_as_people_read_them() {
        assert_eq!(fmt_duration(None), "-");
        assert_eq!(fmt_duration(Some(-1.0)), "-");
        assert_eq!(fmt_duration(Some(f64::NAN)), "-");
        assert_eq!(fmt_duration(Some(0.0)), "0 ms");
        assert_eq!(fmt_duration(Some(0.0042)), "4 ms");
        assert_eq!(fmt_duration(Some(1.04)), "1.0 s");
        assert_eq!(fmt_duration(Some(12.34)), "12.3 s");
        assert_eq!(fmt_duration(Some(125.9)), "2m 05s");
        assert_eq!(fmt_duration(Some(3725.0)), "1h 02m");
    }

    #[test]
    fn tries_count_the_first_try() {
        assert_eq!(tries_text(1, 0), "1 of 1");
        assert_eq!(tries_text(2, 2), "2 of 3");
        assert_eq!(tries_text(0, 1), "0 of 2");
    }

    #[test]
    fn schedules_read_as_text() {
        assert_eq!(schedule_text(None), "none");
        assert_eq!(schedule_text(Some(&Value::Null)), "none");
        assert_eq!(schedule_text(Some(&json!("@daily"))), "@daily");
        assert_eq!(
            schedule_text(Some(&json!({"assets": "orders & refunds"}))),
            "assets: orders & refunds"
        );
        assert_eq!(
            schedule_text(Some(&json!({"cron": "0 * * * *", "events": {"batch": 10}}))),
            "cron: 0 * * * *; events: {\"batch\":10}"
        );
    }

    #[test]
    fn json_is_compact_and_cut() {
        assert_eq!(compact_json(&json!({"a": [1, 2]}), 100), "{\"a\":[1,2]}");
        assert_eq!(compact_json(&json!("ééééé"), 3), "\"éé…");
    }

    #[test]
    fn links_encode_their_segments() {
        assert_eq!(path_segment("process_orders"), "process_orders");
        assert_eq!(
            run_href("d", "manual__2024-01-01T00:00:00+00:00"),
            "/dags/d/runs/manual__2024-01-01T00%3A00%3A00%2B00%3A00"
        );
        assert_eq!(path_segment("a/b?c#d%e f"), "a%2Fb%3Fc%23d%25e%20f");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn pages_escape_what_they_show() {
        let dag = DagRow {
            dag_id: "<script>alert(1)</script>".into(),
            schedule: Some(json!({"assets": "a & \"b\""})),
            is_paused: true,
            catchup: false,
            max_active_runs: 16,
            next_dagrun: None,
            next_dagrun_create_after: None,
        };
        let page = DagsPage {
            page: Chrome::new("DAGs", "dags"),
            dags: vec![DagView::new(&dag, None)],
        }
        .render()
        .unwrap();
        assert!(!page.contains("<script>"), "{page}");
        assert!(
            page.contains("&#60;script&#62;") || page.contains("&lt;script&gt;"),
            "{page}"
        );
        assert!(!page.contains("a & \"b\""), "{page}");
        assert!(
            page.contains(r#"<meta http-equiv="refresh" content="5">"#),
            "{page}"
        );
        assert!(
            page.contains("/dags/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"),
            "{page}"
        );
    }

    #[test]
    fn the_error_page_names_what_is_missing() {
        let response =
            UiError::from(StoreError::NotFound("DAG `nope` not found".into())).into_response();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let page = ErrorPage {
            page: Chrome::new("404 Not Found", ""),
            status: 404,
            reason: "Not Found".into(),
            message: "DAG `<nope>` not found".into(),
        }
        .render()
        .unwrap();
        assert!(page.contains("404"), "{page}");
        assert!(
            page.contains("&#60;nope&#62;") || page.contains("&lt;nope&gt;"),
            "{page}"
        );
    }
}
