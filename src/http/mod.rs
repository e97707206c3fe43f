//! The HTTP server of a long-running process (`--http ADDR:PORT`, DESIGN §12): `/health`,
//! `/metrics`, the JSON API ([`api`]) with its OpenAPI document, webhooks ([`webhook`]) and
//! the web UI ([`ui`]), behind API tokens ([`auth`]). It owns listening, the routes, the
//! request limits, the JSON error shape, and its own event writer: pushes and webhook requests
//! are committed through [`crate::triggerer::writer`], the same group commit as the watchers'
//! events, and answered only after COMMIT. It must not hold logic the command line also needs
//! (that lives in the store or the scheduler, and both call it) nor write SQL.

pub mod api;
mod auth;
pub mod ui;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tracing::info;
use triggerer_sdk::CancellationToken;

use crate::registry::ProviderRegistry;
use crate::store::{Store, StoreError};
use crate::triggerer::writer::{self, Pushed, WriterHealth};

pub use auth::{ApiTokens, Scope, TokenError};

/// The largest request body taken (DESIGN §12: 413 above it).
pub const MAX_BODY: usize = 1024 * 1024;

/// Pushed events waiting for the writer; beyond this a push is answered 503 with
/// `Retry-After` instead of waiting (a client that waits too long retries anyway).
const PUSH_QUEUE: usize = 10_000;

/// `standalone`'s address when `--http` is not given.
pub const STANDALONE_ADDR: &str = "127.0.0.1:8280";

/// How the server listens and whom it lets in.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    pub tokens: ApiTokens,
    /// As the triggerer's: a trigger whose owner's heartbeat is older is shown `orphaned`.
    pub health_threshold: Duration,
    /// `addr` is `standalone`'s default, not one asked for: when another process holds it
    /// (a second `standalone` on one machine), this one runs without HTTP and says so.
    pub is_default: bool,
}

#[derive(Debug, Error)]
pub enum HttpError {
    #[error(
        "--http {addr}: refusing to listen on a non-loopback address without API tokens (anyone \
         who can reach it could push events and start runs); configure tokens with \
         TRIGGERER_API_TOKENS or --api-tokens-file, or listen on 127.0.0.1"
    )]
    Unprotected { addr: SocketAddr },
    #[error("--http {addr}: cannot listen: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// What every handler reaches.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) registry: ProviderRegistry,
    pub(crate) tokens: Arc<ApiTokens>,
    pub(crate) health_threshold: Duration,
    push: mpsc::Sender<Pushed>,
    writer_health: Arc<WriterHealth>,
}

/// A bound, not yet serving, server: binding first lets the service refuse to start (address
/// taken, no tokens) before anything else runs.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    options: HttpOptions,
}

/// Checks the address against the tokens and binds it; `None` when the default address is
/// taken (see [`HttpOptions::is_default`]).
pub async fn bind(options: HttpOptions) -> Result<Option<Server>, HttpError> {
    let addr = options.addr;
    if options.tokens.is_empty() && !addr.ip().is_loopback() {
        return Err(HttpError::Unprotected { addr });
    }
    match TcpListener::bind(addr).await {
        Ok(listener) => Ok(Some(Server { listener, options })),
        Err(e) if options.is_default && e.kind() == std::io::ErrorKind::AddrInUse => {
            tracing::warn!(
                %addr,
                "the HTTP server's default address is in use (another standalone?); running \
                 without HTTP: pass --http ADDR:PORT to serve elsewhere"
            );
            Ok(None)
        }
        Err(source) => Err(HttpError::Bind { addr, source }),
    }
}

impl Server {
    /// The address actually bound (`:0` picks a free port).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `stop` fires; then answers the requests in flight, lets the writer commit
    /// what it holds, and returns.
    pub async fn run(
        self,
        store: Store,
        registry: ProviderRegistry,
        committed: Arc<Notify>,
        stop: CancellationToken,
    ) -> Result<(), HttpError> {
        if let Some(addr) = self.local_addr() {
            info!(%addr, "HTTP server listening");
        }
        let (push, writer) = writer::spawn::<Pushed>(store.clone(), None, PUSH_QUEUE, committed);
        // Pushed events' series exists from the start, at 0.
        crate::metrics::provider_started(writer::PUSHED_PROVIDER);
        let state = AppState {
            store,
            registry,
            tokens: Arc::new(self.options.tokens),
            health_threshold: self.options.health_threshold,
            push,
            writer_health: writer.health.clone(),
        };
        let served = axum::serve(self.listener, router(state))
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        // The router (and with it the last push sender) is gone: the writer drains and ends.
        // Only a database that stays down keeps it; then its pushes were never answered 2xx.
        let writer::Writer {
            handle, give_up, ..
        } = writer;
        let abort = handle.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .is_err()
        {
            give_up.cancel();
            abort.abort();
        }
        served.map_err(HttpError::Serve)
    }
}

/// Every route, with its limits and the token check.
fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api::routes())
        .merge(webhook::routes())
        .merge(ui::routes())
        .fallback(unknown_route)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// `GET /metrics`: this process's metrics, in the Prometheus (OpenMetrics) text format.
async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode(),
    )
        .into_response()
}

/// Longest a health check waits for the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health`: 200 while the database answers (and this process's events commit); 503 with
/// the reason otherwise.
async fn health(State(state): State<AppState>) -> Response {
    let unavailable = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "error": reason})),
        )
            .into_response()
    };
    match tokio::time::timeout(HEALTH_TIMEOUT, state.store.ping()).await {
        Err(_) => unavailable(format!(
            "the database did not answer within {}s",
            HEALTH_TIMEOUT.as_secs()
        )),
        Ok(Err(e)) => unavailable(e.to_string()),
        Ok(Ok(())) => match state.writer_health.failing() {
            Some(failing) => unavailable(format!(
                "pushed events are not committing: {}",
                failing.error
            )),
            None => Json(json!({"status": "ok"})).into_response(),
        },
    }
}

async fn unknown_route(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}; GET /api/v1/openapi.json lists the API",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Every error answer: `{"error": "…"}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

/// The error body, as the OpenAPI document describes it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    /// What went wrong, naming the field, asset, DAG or run concerned.
    pub error: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 503 with `Retry-After`: the caller should come back, nothing was recorded.
    pub(crate) fn busy(message: impl Into<String>, retry_after_secs: u64) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            retry_after: Some(retry_after_secs),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Conflict(_) => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            e if e.is_transient() => return ApiError::busy(e.to_string(), 5),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// axum's extractors, answering their refusals (bad JSON naming the field, a body over
/// [`MAX_BODY`], a bad query parameter) in the API's error shape.
macro_rules! api_extractor {
    ($(#[$doc:meta])* $name:ident, $rejection:ty) => {
        $(#[$doc])*
        pub(crate) struct $name<T>(pub T);

        impl From<$rejection> for ApiError {
            fn from(rejection: $rejection) -> Self {
                ApiError::new(rejection.status(), rejection.body_text())
            }
        }
    };
}

/// A JSON body; a body that is no JSON or not of the expected shape is 400 (naming the field),
/// one over [`MAX_BODY`] 413, one not declared `application/json` 415.
pub(crate) struct ApiJson<T>(pub T);

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = match rejection.status() {
            StatusCode::UNPROCESSABLE_ENTITY => StatusCode::BAD_REQUEST,
            other => other,
        };
        ApiError::new(status, rejection.body_text())
    }
}

api_extractor!(
    /// Query parameters.
    ApiQuery,
    QueryRejection
);
api_extractor!(
    /// Path parameters.
    ApiPath,
    PathRejection
);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let Json(value) = Json::<T>::from_request(request, state).await?;
        Ok(ApiJson(value))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) =
            axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(ApiQuery(value))
    }
}

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(value) =
            axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(ApiPath(value))
    }
}

/// The triggers as every caller shows them: kwargs masked.
pub(crate) async fn triggers(
    state: &AppState,
) -> Result<Vec<crate::store::TriggerRow>, StoreError> {
    let mut rows = state
        .store
        .list_triggers_with(state.health_threshold, &state.registry.pushed_classpaths())
        .await?;
    for row in &mut rows {
        row.kwargs = crate::secrets::mask(&row.kwargs);
    }
    Ok(rows)
}
