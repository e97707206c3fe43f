//! Webhooks (DESIGN §12): `POST /webhooks/{path}` for every watcher whose trigger is pushed
//! (`http.WebhookTrigger`). This module finds the triggers serving the path, resolves their
//! secrets from this process's environment, lets each trigger's provider verify the request
//! and make its event, and commits that event for every asset the watcher feeds through the
//! server's writer before answering 2xx. It must not verify signatures itself (the provider
//! does) nor answer 2xx for anything not committed.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use triggerer_sdk::{PushRefusal, PushRefusalKind, PushRequest, TriggerId};

use super::{ApiError, ApiPath, AppState};
use crate::secrets;
use crate::triggerer::writer;

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/webhooks/{*path}", post(receive))
}

/// A webhook trigger serving the requested path, ready to judge a request.
struct Serving {
    trigger_id: TriggerId,
    provider: std::sync::Arc<dyn triggerer_sdk::Provider>,
    kwargs: Value,
}

/// Records the request's event for the webhook watcher(s) at `path`: 201 once committed, 200
/// when it was already recorded (a redelivery), 401 for a signature that does not verify, 404
/// for a path no watcher serves; nothing is recorded unless the answer is 2xx.
async fn receive(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let serving = serving(&state, &path).await?;
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.as_str().to_string(), value.as_bytes().to_vec()))
        .collect();
    let request = PushRequest {
        path: &path,
        headers: &headers,
        body: &body,
    };
    let mut refusal: Option<PushRefusal> = None;
    let mut inserted = 0u32;
    let mut dedup_keys: Vec<String> = Vec::new();
    for trigger in &serving {
        match trigger.provider.accept_push(&trigger.kwargs, &request) {
            Ok(event) => {
                let new_event = writer::trigger_event(trigger.trigger_id, &event);
                inserted += super::api::push(&state, new_event).await?;
                dedup_keys.push(event.dedup_key);
            }
            // Two watchers on one path with different secrets: the request is for whichever
            // verifies it; the refusal is answered only when none does.
            Err(e) => {
                refusal.get_or_insert(e);
            }
        }
    }
    if dedup_keys.is_empty() {
        let e = refusal.unwrap_or_else(|| PushRefusal::bad_request("no watcher took the request"));
        let status = match e.kind {
            PushRefusalKind::Unauthorized => StatusCode::UNAUTHORIZED,
            PushRefusalKind::BadRequest => StatusCode::BAD_REQUEST,
        };
        return Err(ApiError::new(status, format!("webhook `{path}`: {e}")));
    }
    let status = if inserted > 0 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({"inserted": inserted, "dedup_keys": dedup_keys})),
    ))
}

/// The pushed triggers watching an active asset whose path is `path`, with their secrets
/// resolved. A serving trigger whose secret this process cannot resolve is the operator's
/// mistake, said as such (naming the variable, never a value).
async fn serving(state: &AppState, path: &str) -> Result<Vec<Serving>, ApiError> {
    let classpaths = state.registry.pushed_classpaths();
    let mut serving = Vec::new();
    for (trigger_id, classpath, kwargs) in state
        .store
        .watched_triggers_by_classpath(&classpaths)
        .await?
    {
        let Some((_, provider)) = state.registry.resolve(&classpath) else {
            continue;
        };
        // The path never is a secret: read it with the references as placeholders, so a
        // request to another webhook does not depend on this one's variables.
        let Ok((placeholder_kwargs, _)) = secrets::with_placeholders(&kwargs) else {
            continue;
        };
        if provider.push_path(&placeholder_kwargs).as_deref() != Some(path) {
            continue;
        }
        let kwargs = secrets::resolve_from_env(&kwargs).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("webhook `{path}` cannot verify requests in this process: {e}"),
            )
        })?;
        serving.push(Serving {
            trigger_id,
            provider: provider.clone(),
            kwargs,
        });
    }
    if serving.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "no webhook watcher serves `{path}`: a watcher with classpath \
                 \"http.WebhookTrigger\" and kwargs path = \"{path}\" on an active asset does"
            ),
        ));
    }
    Ok(serving)
}
