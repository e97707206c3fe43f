//! `http.HttpEventTrigger`: one request every `poll_interval`; a 2xx response whose
//! `response_check` holds becomes an event when its body differs from the one last
//! committed. The digest is the checkpoint, committed with the event, so neither a repeat of
//! the same response nor a restart (even after `kill -9`) fires again.

use async_trait::async_trait;
use base64::Engine;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::debug;
use triggerer_sdk::{nul_in_json, Event, EventTrigger, TriggerContext, TriggerError};

use crate::poll_params::{Body, PollConfig};

/// The checkpoint key: its value is `<change number>:<hex SHA-256 of the body>`.
pub const CHECKPOINT_KEY: &str = "response";

/// The largest response body read; a larger one fails the trigger.
pub const MAX_BODY: usize = 1024 * 1024;

/// The response headers copied into the payload.
pub const PAYLOAD_HEADERS: &[&str] = &["content-type", "etag", "last-modified"];

/// The last committed response: how many changes were committed, and the last one's digest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Last {
    pub changes: u64,
    pub digest: Option<String>,
}

impl Last {
    /// From the committed checkpoint (`n:hex`); anything else is no checkpoint.
    pub fn from_checkpoint(value: Option<&String>) -> Self {
        let Some((n, digest)) = value.and_then(|v| v.split_once(':')) else {
            return Self::default();
        };
        match n.parse() {
            Ok(changes) if digest.len() == 64 => Self {
                changes,
                digest: Some(digest.to_string()),
            },
            _ => Self::default(),
        }
    }
}

/// What one response means.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An event to emit, and the [`Last`] that holds once it is committed.
    Fire(Box<Event>, Last),
    /// The same body as the last committed one.
    Unchanged,
    /// `response_check` does not hold (or the body is no JSON while there is one): no event.
    CheckFalse { not_json: bool },
    /// 404: not there yet; no event.
    NotFound,
}

/// The JSONPath result is truthy: at least one node, and some node is truthy as Python sees
/// it (not `null`, `false`, `0`, `""`, `[]` or `{}`).
pub fn truthy(nodes: &[&Value]) -> bool {
    nodes.iter().any(|v| match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    })
}

/// The hex SHA-256 of `body`.
pub fn digest(body: &[u8]) -> String {
    let d = Sha256::digest(body);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The body in the payload: JSON when it parses (and holds no NUL), else UTF-8 text, else
/// base64; and which of the three.
pub fn body_value(body: &[u8]) -> (Value, &'static str) {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if nul_in_json(&v).is_none() {
            return (v, "json");
        }
    }
    match std::str::from_utf8(body) {
        Ok(text) if !text.contains('\0') => (Value::String(text.to_string()), "text"),
        _ => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            "base64",
        ),
    }
}

/// What a response (status, headers, body) means under `config`, given the last committed one.
pub fn outcome(
    config: &PollConfig,
    last: &Last,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Outcome {
    if status == StatusCode::NOT_FOUND {
        return Outcome::NotFound;
    }
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let check_result = match &config.check {
        None => Value::Null,
        Some((_, path)) => {
            let Some(json) = &json else {
                return Outcome::CheckFalse { not_json: true };
            };
            let nodes = path.query(json).all();
            if !truthy(&nodes) {
                return Outcome::CheckFalse { not_json: false };
            }
            Value::Array(nodes.into_iter().cloned().collect())
        }
    };
    let digest = digest(body);
    if last.digest.as_deref() == Some(digest.as_str()) {
        return Outcome::Unchanged;
    }
    let (body, encoding) = body_value(body);
    let selected: serde_json::Map<String, Value> = PAYLOAD_HEADERS
        .iter()
        .map(|name| {
            let v = headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.contains('\0'))
                .map_or(Value::Null, |v| Value::String(v.to_string()));
            ((*name).to_string(), v)
        })
        .collect();
    let mut check_result = check_result;
    if nul_in_json(&check_result).is_some() {
        // The body is shown as text or base64 then; the result cannot be stored as it is.
        check_result = Value::Bool(true);
    }
    let payload = json!({
        "url": config.shown_url,
        "status": status.as_u16(),
        "headers": selected,
        "body": body,
        "body_encoding": encoding,
        "check_result": check_result,
    });
    let next = Last {
        changes: last.changes + 1,
        digest: Some(digest.clone()),
    };
    let event = Event::new(
        payload,
        format!("http:{}:{}:sha256:{digest}", config.shown_url, next.changes),
    )
    .with_checkpoint(CHECKPOINT_KEY, format!("{}:{digest}", next.changes));
    Outcome::Fire(Box::new(event), next)
}

/// A running `http.HttpEventTrigger`.
pub struct PollTrigger {
    pub(crate) config: PollConfig,
}

impl PollTrigger {
    fn fail(&self, what: impl std::fmt::Display) -> TriggerError {
        TriggerError::failed(format!(
            "http {} {}: {what}",
            self.config.method, self.config.shown_url
        ))
    }

    /// One request: its status, headers and body (at most [`MAX_BODY`] bytes).
    async fn request(
        &self,
        client: &reqwest::Client,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>), TriggerError> {
        let c = &self.config;
        let mut req = client.request(c.method.clone(), &c.url).timeout(c.timeout);
        for (name, value) in &c.headers {
            req = req.header(name.clone(), value.clone());
        }
        req = match &c.body {
            Body::None => req,
            Body::Query(pairs) => req.query(pairs),
            Body::Json(v) => {
                let has_type = c
                    .headers
                    .iter()
                    .any(|(n, _)| n == reqwest::header::CONTENT_TYPE);
                let req = req.body(v.to_string());
                if has_type {
                    req
                } else {
                    req.header(reqwest::header::CONTENT_TYPE, "application/json")
                }
            }
            Body::Raw(s) => req.body(s.clone()),
        };
        let mut response = req.send().await.map_err(|e| self.fail(describe(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.fail(format!("reading the body: {}", describe(&e))))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(self.fail(format!(
                    "the response body is larger than {} KiB",
                    MAX_BODY / 1024
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, headers, body))
    }
}

/// A reqwest error in one line, without its URL (which may hold secrets; the caller names the
/// shown one).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_redirect() {
        "too many redirects"
    } else if e.is_body() || e.is_decode() {
        "the body could not be read"
    } else {
        "the request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !text.is_empty() && !causes.contains(&text) {
            causes.push(text);
        }
        source = s.source();
    }
    let text = if causes.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", causes.join(": "))
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[async_trait]
impl EventTrigger for PollTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("triggerer/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| self.fail(format!("cannot build an HTTP client: {}", describe(&e))))?;
        let mut last = Last::from_checkpoint(ctx.checkpoint.get(CHECKPOINT_KEY));
        let mut warned_not_json: Option<String> = None;
        let mut ticks = tokio::time::interval(self.config.poll_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                _ = ticks.tick() => {}
            }
            let (status, headers, body) = tokio::select! {
                _ = ctx.cancel.cancelled() => return Ok(()),
                r = self.request(&client) => r?,
            };
            if !(status.is_success() || status == StatusCode::NOT_FOUND) {
                return Err(self.fail(format!(
                    "answered {}{}",
                    status.as_u16(),
                    status
                        .canonical_reason()
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default()
                )));
            }
            match outcome(&self.config, &last, status, &headers, &body) {
                Outcome::Fire(event, next) => {
                    tokio::select! {
                        _ = ctx.cancel.cancelled() => return Ok(()),
                        r = ctx.sink.emit(*event) => { r?; }
                    }
                    last = next;
                }
                Outcome::CheckFalse { not_json: true } => {
                    let d = digest(&body);
                    if warned_not_json.as_deref() != Some(d.as_str()) {
                        ctx.warnings.warn(format!(
                            "http {} {}: the response is no JSON, so `response_check` cannot hold",
                            self.config.method, self.config.shown_url
                        ));
                        warned_not_json = Some(d);
                    }
                }
                other => debug!(url = %self.config.shown_url, outcome = ?other, "no event"),
            }
        }
    }
}
