//! Deferral (DESIGN §11): what a try waits for when it gives its slot back — a `wait`
//! operator's trigger, the trigger a command asked for in its `TRIGGERER_DEFER_FILE`, or, for
//! the `airflow` operator, the Airflow run it has just triggered. Turns each into a
//! [`Deferral`] the store makes a `trigger` row of. Validates what a command wrote as strictly
//! as a sync validates a definition; must not write anything itself.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::identity::{canonical_json, trigger_hash};
use crate::registry::{ProviderRegistry, TriggerUse};
use crate::store::{ClaimedTry, Deferral};
use crate::task::{parse_duration, AirflowCall, TriggerSpec};
use crate::time::isoformat;

/// A `time.TimeDeltaTrigger` as the `time.DateTimeTrigger` of the moment it ends: a deferral
/// waits `delta` from when the task deferred, not from whenever a triggerer (re)starts the
/// trigger. Other triggers stay as they are.
#[cfg(feature = "time")]
fn absolute(
    trigger: &TriggerSpec,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(String, Value), String> {
    use triggerer_provider_time::{moment_kwargs, DATE_TIME_CLASSPATHS, TIME_DELTA_CLASSPATHS};
    if TIME_DELTA_CLASSPATHS.first() != Some(&trigger.classpath.as_str()) {
        return Ok((trigger.classpath.clone(), trigger.kwargs.clone()));
    }
    let kwargs = moment_kwargs(&trigger.kwargs, now).map_err(|e| e.to_string())?;
    Ok((DATE_TIME_CLASSPATHS[0].to_string(), kwargs))
}

/// Without the `time` feature no time trigger passes the registry's check: nothing to convert.
#[cfg(not(feature = "time"))]
fn absolute(
    trigger: &TriggerSpec,
    _now: chrono::DateTime<chrono::Utc>,
) -> Result<(String, Value), String> {
    Ok((trigger.classpath.clone(), trigger.kwargs.clone()))
}
/// The trigger the `airflow` operator waits on.
#[cfg(feature = "airflow")]
const AIRFLOW_RUN: &str = "airflow.DagRunStateTrigger";

/// `now + d`, or why not (`what` names the field).
fn later(
    now: chrono::DateTime<chrono::Utc>,
    d: Duration,
    what: &str,
) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .ok_or_else(|| format!("`{what}`: {} is too long", humantime::format_duration(d)))
}

/// What a command writes to `TRIGGERER_DEFER_FILE`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeferRequest {
    classpath: String,
    #[serde(default)]
    kwargs: Option<Value>,
    timeout: Option<String>,
}

/// The deferral of `claimed` on `trigger` (already checked), failing after `timeout`; with a
/// one-line description for the log.
pub(super) fn deferral(
    claimed: &ClaimedTry,
    trigger: &TriggerSpec,
    timeout: Option<Duration>,
) -> Result<(Deferral, String), String> {
    let now = crate::time::now();
    let (classpath, kwargs) = absolute(trigger, now)?;
    let timeout_at = match timeout {
        Some(t) => Some(later(now, t, "timeout")?),
        None => None,
    };
    // One trigger row per deferral: two tasks waiting on the same file each get their event.
    let salt = json!({
        "deferral": {
            "task_instance": claimed.id,
            "try_number": claimed.try_number,
            "at": isoformat(now),
        },
        "kwargs": kwargs,
    });
    let shown = format!(
        "{classpath} {}{}",
        crate::secrets::mask(&kwargs),
        timeout_at
            .map(|t| format!(" (timeout at {})", isoformat(t)))
            .unwrap_or_default()
    );
    Ok((
        Deferral {
            hash: trigger_hash(&classpath, &salt),
            kwargs: canonical_json(&kwargs),
            classpath,
            timeout_at,
        },
        shown,
    ))
}

/// The deferral a command asked for by writing `request` to its defer file: JSON
/// `{"classpath": …, "kwargs": …, "timeout": "30m"}`, checked by the provider as a `wait` is.
pub(super) fn requested(
    claimed: &ClaimedTry,
    registry: &ProviderRegistry,
    request: &[u8],
    default_timeout: Option<Duration>,
) -> Result<(Deferral, String), String> {
    let request: DeferRequest = serde_json::from_slice(request).map_err(|e| {
        format!(
            "the defer file is not a JSON object like {{\"classpath\": \"time.TimeDeltaTrigger\", \
             \"kwargs\": {{\"delta\": \"30s\"}}, \"timeout\": \"1h\"}}: {e}"
        )
    })?;
    let kwargs = request.kwargs.unwrap_or_else(|| json!({}));
    let (classpath, kwargs) = registry
        .check_trigger(request.classpath.trim(), &kwargs, TriggerUse::Task)
        .map_err(|e| format!("the defer file's trigger: {e}"))?;
    let timeout = match request.timeout {
        Some(t) => {
            Some(parse_duration(&t).map_err(|e| format!("the defer file's `timeout`: {e}"))?)
        }
        None => default_timeout,
    };
    let trigger = TriggerSpec {
        classpath: classpath.to_string(),
        kwargs,
    };
    deferral(claimed, &trigger, timeout)
}

/// The Airflow run id for this task's run: the same for every try, so a retried call is
/// answered 409 and starts nothing, and different for every task and run of ours. Not our run
/// id as it is: Airflow refuses a manual run whose id starts with a run type's prefix
/// (`scheduled__`, `asset_triggered__`, …) and ids outside `[A-Za-z0-9_.~:+-]` or over 250
/// characters; such characters become `-`, and an id that had to change or be cut keeps a
/// digest of the original so that two never collide.
#[cfg_attr(not(feature = "airflow"), allow(dead_code))]
fn airflow_run_id(claimed: &ClaimedTry) -> String {
    let original = format!(
        "triggerer__{}__{}__{}",
        claimed.dag_id, claimed.task_id, claimed.run_id
    );
    let allowed = |c: char| c.is_ascii_alphanumeric() || "_.~:+-".contains(c);
    let mut id: String = original
        .chars()
        .map(|c| if allowed(c) { c } else { '-' })
        .collect();
    while id.contains("..") {
        id = id.replace("..", ".-");
    }
    if id == original && id.len() <= 250 {
        return id;
    }
    let digest = &trigger_hash("airflow_run_id", &Value::String(original))[..12];
    id.truncate(236);
    format!("{id}__{digest}")
}

/// Without the `airflow` feature there is no Airflow client to call.
#[cfg(not(feature = "airflow"))]
pub(super) async fn start_airflow_run(
    _claimed: &ClaimedTry,
    _call: &AirflowCall,
    _timeout: Option<Duration>,
    _log: &mut std::fs::File,
) -> Result<Deferral, String> {
    Err("this build has no `airflow` feature; rebuild with it to run `airflow` tasks".into())
}

/// The `airflow` operator's first stage: triggers the Airflow run whose id is this run's (a
/// retried try is answered 409 and starts nothing), then defers on its state.
#[cfg(feature = "airflow")]
pub(super) async fn start_airflow_run(
    claimed: &ClaimedTry,
    call: &AirflowCall,
    timeout: Option<Duration>,
    log: &mut std::fs::File,
) -> Result<Deferral, String> {
    use std::io::Write;

    let credentials = crate::secrets::resolve_from_env(&json!({
        "username": call.username,
        "password": call.password,
    }))
    .map_err(|e| format!("Airflow credentials: {e}"))?;
    let text = |key: &str| {
        credentials
            .get(key)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("Airflow `{key}` is not a string"))
    };
    let mut conf = match &call.conf {
        Value::Object(map) => map.clone(),
        _ => Default::default(),
    };
    conf.insert(
        "triggering_asset_events".into(),
        Value::Array(claimed.triggering_asset_events.clone()),
    );
    conf.insert(
        "triggerer".into(),
        json!({ "dag_id": claimed.dag_id, "run_id": claimed.run_id, "task_id": claimed.task_id }),
    );
    let client = triggerer_provider_airflow::Client::new(
        &call.base_url,
        &text("username")?,
        &text("password")?,
        crate::task::DEFAULT_HTTP_TIMEOUT,
    )
    .map_err(|e| e.to_string())?;
    let airflow_run_id = airflow_run_id(claimed);
    let triggered = client
        .trigger_dag_run(&call.dag_id, &airflow_run_id, &Value::Object(conf))
        .await
        .map_err(|e| e.to_string())?;
    let _ = writeln!(
        log,
        "[triggerer] Airflow DAG `{}` run `{}` at {}: {}",
        call.dag_id,
        airflow_run_id,
        crate::secrets::redact_uri(&call.base_url),
        match triggered {
            triggerer_provider_airflow::Triggered::Created => "triggered",
            triggerer_provider_airflow::Triggered::AlreadyExists =>
                "already triggered by an earlier try; waiting for it",
        }
    );
    let trigger = TriggerSpec {
        classpath: AIRFLOW_RUN.to_string(),
        // Credentials as the definition wrote them: references are resolved by the triggerer.
        kwargs: json!({
            "base_url": call.base_url,
            "dag_id": call.dag_id,
            "dag_run_id": airflow_run_id,
            "username": call.username,
            "password": call.password,
            "poll_interval": humantime::format_duration(call.poll_interval).to_string(),
        }),
    };
    let (deferral, shown) = deferral(claimed, &trigger, timeout)?;
    let _ = writeln!(log, "[triggerer] deferred: waiting for {shown}");
    Ok(deferral)
}
