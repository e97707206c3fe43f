//! A client of the Apache Airflow 3 public REST API, just what the triggerer needs: a JWT from
//! `POST /auth/token`, triggering a DAG run with a chosen `dag_run_id`, and reading a run's
//! state. It owns the token (cached, fetched again once when a call is answered 401) and the
//! wording of every failure: one line, the base URL's userinfo password masked, the password
//! never shown even when a server echoes it back. It must not retry beyond that one token
//! refresh (its callers decide: the trigger's supervisor backs off, a task retries), nor log a
//! credential.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};
use thiserror::Error;
use triggerer_sdk::redact_uri;
use url::Url;

/// The most of a response body an error message quotes.
pub const BODY_EXCERPT: usize = 200;

/// What went wrong talking to Airflow. Every message is one line and holds no password.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AirflowError {
    /// `base_url` is no http(s) URL (`url` is shown with its password masked).
    #[error("base_url `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    /// The HTTP client could not be built (TLS roots, say).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The credentials were refused (401/403 from `/auth/token`), a fresh token was refused
    /// too, or the user may not do what was asked (403).
    #[error("{0}")]
    Unauthorized(String),
    /// Triggering a run of a DAG that Airflow does not have (404).
    #[error("Airflow at {base_url} has no DAG `{dag_id}` (HTTP 404)")]
    UnknownDag { base_url: String, dag_id: String },
    /// Reading a run that Airflow does not have (404; the DAG itself may be missing).
    #[error("Airflow at {base_url} has no run `{dag_run_id}` of DAG `{dag_id}` (HTTP 404)")]
    UnknownRun {
        base_url: String,
        dag_id: String,
        dag_run_id: String,
    },
    /// Any other status than the call expects; `body` is a short excerpt of the answer.
    #[error("{what}: HTTP {status}: {body}")]
    Status {
        what: String,
        status: u16,
        body: String,
    },
    /// No answer: connection refused, DNS, TLS, a timeout.
    #[error("{what} failed: {detail}")]
    Request { what: String, detail: String },
    /// An answer that is not what Airflow sends (no JSON, no `access_token`, no `state`).
    #[error("{what}: unexpected answer: {detail}")]
    Response { what: String, detail: String },
}

/// How [`Client::trigger_dag_run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triggered {
    /// Airflow created the run (200 or 201).
    Created,
    /// A run with that `dag_run_id` exists already (409): a retried call, which never starts a
    /// second run.
    AlreadyExists,
}

/// A client of one Airflow deployment, logged in as one user. Cheap to share behind an `Arc`;
/// calls may run concurrently.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    /// `base` as messages show it: its password masked.
    shown: String,
    username: String,
    password: String,
    timeout: Duration,
    token: Mutex<Option<String>>,
    /// Held while logging in for a call, so that concurrent calls log in once.
    login: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base_url", &self.shown)
            .field("username", &self.username)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
}

#[derive(Deserialize)]
struct DagRunAnswer {
    state: Option<String>,
}

/// `text` as an Airflow base URL: http or https, with a host, no query or fragment. Errors
/// show the URL with its password masked.
pub fn parse_base_url(text: &str) -> Result<Url, AirflowError> {
    let bad = |reason: String| AirflowError::BadUrl {
        url: redact_uri(text),
        reason,
    };
    let url = Url::parse(text.trim()).map_err(|e| bad(format!("not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(format!(
            "must be an http or https URL, not `{}`",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host".into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment".into()));
    }
    Ok(url)
}

/// An HTTP client as [`Client::new`] builds one; build one and hand it to
/// [`Client::with_http`] to share its connections (and its TLS roots, read once) among clients.
pub fn http_client() -> Result<reqwest::Client, AirflowError> {
    reqwest::Client::builder()
        .user_agent(concat!("triggerer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AirflowError::Client(chain(&e.without_url())))
}

impl Client {
    /// A client of the Airflow at `base_url` (`http://airflow:8080`, or with a path prefix
    /// when Airflow is served under one), logging in as `username`. Userinfo in `base_url` is
    /// dropped: the JWT is the only credential sent. `timeout` bounds each request, its answer
    /// included. No I/O beyond building the HTTP client.
    pub fn new(
        base_url: &str,
        username: impl Into<String>,
        password: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, AirflowError> {
        let base = parse_base_url(base_url)?;
        Self::with_http(http_client()?, base, username, password, timeout)
    }

    /// As [`Client::new`], with a shared HTTP client and an already parsed base URL.
    pub fn with_http(
        http: reqwest::Client,
        base: Url,
        username: impl Into<String>,
        password: impl Into<String>,
        timeout: Duration,
    ) -> Result<Self, AirflowError> {
        let mut base = base;
        if base.cannot_be_a_base() {
            return Err(AirflowError::BadUrl {
                url: redact_uri(base.as_str()),
                reason: "must be an http or https URL".into(),
            });
        }
        // Airflow 3 authenticates with the JWT alone; reqwest would turn userinfo into a
        // second `Authorization` header (Basic) next to the Bearer one.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let shown = redact_uri(base.as_str().trim_end_matches('/'));
        Ok(Self {
            http,
            base,
            shown,
            username: username.into(),
            password: password.into(),
            timeout,
            token: Mutex::new(None),
            login: tokio::sync::Mutex::new(()),
        })
    }

    /// The base URL as messages show it (password masked, no trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.shown
    }

    /// Logs in: `POST {base_url}/auth/token` with the username and password, for a JWT. The
    /// token is kept for the calls that follow. 401/403 → [`AirflowError::Unauthorized`].
    pub async fn token(&self) -> Result<String, AirflowError> {
        let url = self.url(&["auth", "token"]);
        let what = self.what("POST", &url);
        let body = json!({ "username": self.username, "password": self.password });
        let request = self.http.post(url).timeout(self.timeout).json(&body);
        let response = self.send(&what, request).await?;
        let status = response.status();
        if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            return Err(AirflowError::Unauthorized(format!(
                "Airflow at {} refused the credentials of user `{}` (HTTP {}); check username \
                 and password",
                self.shown,
                self.username,
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(self.status_error(what, response).await);
        }
        let answer: TokenAnswer = self.json(&what, response).await?;
        if answer.access_token.is_empty() {
            return Err(AirflowError::Response {
                what,
                detail: "`access_token` is empty".into(),
            });
        }
        *self.token.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(answer.access_token.clone());
        Ok(answer.access_token)
    }

    /// Triggers a run of `dag_id` with `dag_run_id` and `conf`, no logical date
    /// (`POST {base_url}/api/v2/dags/{dag_id}/dagRuns`). A run that exists already (409) is
    /// [`Triggered::AlreadyExists`]; an unknown DAG (404) is [`AirflowError::UnknownDag`].
    pub async fn trigger_dag_run(
        &self,
        dag_id: &str,
        dag_run_id: &str,
        conf: &Value,
    ) -> Result<Triggered, AirflowError> {
        let url = self.url(&["api", "v2", "dags", dag_id, "dagRuns"]);
        let what = self.what("POST", &url);
        let body = json!({ "dag_run_id": dag_run_id, "logical_date": null, "conf": conf });
        let response = self
            .authorized(&what, |token| {
                self.http
                    .post(url.clone())
                    .bearer_auth(token)
                    .timeout(self.timeout)
                    .json(&body)
            })
            .await?;
        match response.status() {
            StatusCode::OK | StatusCode::CREATED => Ok(Triggered::Created),
            StatusCode::CONFLICT => Ok(Triggered::AlreadyExists),
            StatusCode::NOT_FOUND => Err(AirflowError::UnknownDag {
                base_url: self.shown.clone(),
                dag_id: dag_id.to_string(),
            }),
            _ => Err(self.status_error(what, response).await),
        }
    }

    /// The state of a run (`GET {base_url}/api/v2/dags/{dag_id}/dagRuns/{dag_run_id}`):
    /// `queued`, `running`, `success` or `failed` in Airflow 3. 404 is
    /// [`AirflowError::UnknownRun`].
    pub async fn dag_run_state(
        &self,
        dag_id: &str,
        dag_run_id: &str,
    ) -> Result<String, AirflowError> {
        let url = self.url(&["api", "v2", "dags", dag_id, "dagRuns", dag_run_id]);
        let what = self.what("GET", &url);
        let response = self
            .authorized(&what, |token| {
                self.http
                    .get(url.clone())
                    .bearer_auth(token)
                    .timeout(self.timeout)
            })
            .await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(AirflowError::UnknownRun {
                    base_url: self.shown.clone(),
                    dag_id: dag_id.to_string(),
                    dag_run_id: dag_run_id.to_string(),
                })
            }
            _ => return Err(self.status_error(what, response).await),
        }
        let answer: DagRunAnswer = self.json(&what, response).await?;
        answer.state.ok_or_else(|| AirflowError::Response {
            what,
            detail: "the run has no `state`".into(),
        })
    }

    /// `base` with `segments` appended, each percent-encoded as a path segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// `METHOD url` with the password masked, for messages.
    fn what(&self, method: &str, url: &Url) -> String {
        format!("{method} {}", self.scrub(url.as_str()))
    }

    /// Sends a call with the cached token (logging in first when there is none); on a 401,
    /// logs in again and sends it once more. A second 401, or a 403, is
    /// [`AirflowError::Unauthorized`].
    async fn authorized(
        &self,
        what: &str,
        request: impl Fn(&str) -> RequestBuilder,
    ) -> Result<Response, AirflowError> {
        let token = self.bearer(None).await?;
        let mut response = self.send(what, request(&token)).await?;
        if response.status() == StatusCode::UNAUTHORIZED {
            // Expired, or the server restarted with another signing key.
            let token = self.bearer(Some(&token)).await?;
            response = self.send(what, request(&token)).await?;
        }
        match response.status() {
            StatusCode::UNAUTHORIZED => Err(AirflowError::Unauthorized(format!(
                "{what}: Airflow at {} refused a fresh token of user `{}` (HTTP 401)",
                self.shown, self.username
            ))),
            StatusCode::FORBIDDEN => Err(AirflowError::Unauthorized(format!(
                "{what}: user `{}` is not allowed to do this (HTTP 403)",
                self.username
            ))),
            _ => Ok(response),
        }
    }

    /// The cached token, unless it is `refused`; otherwise a new one, from one login however
    /// many calls want one at the same time.
    async fn bearer(&self, refused: Option<&str>) -> Result<String, AirflowError> {
        let usable = || {
            let cached = self.token.lock().unwrap_or_else(PoisonError::into_inner);
            cached
                .clone()
                .filter(|token| Some(token.as_str()) != refused)
        };
        if let Some(token) = usable() {
            return Ok(token);
        }
        let _login = self.login.lock().await;
        // Another call may have logged in while this one waited.
        if let Some(token) = usable() {
            return Ok(token);
        }
        self.token().await
    }

    async fn send(&self, what: &str, request: RequestBuilder) -> Result<Response, AirflowError> {
        request
            .send()
            .await
            .map_err(|e| self.request_error(what, e))
    }

    fn request_error(&self, what: &str, error: reqwest::Error) -> AirflowError {
        let detail = if error.is_timeout() {
            format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )
        } else {
            // reqwest's `for url (…)` would carry the userinfo password.
            self.scrub(&chain(&error.without_url()))
        };
        AirflowError::Request {
            what: what.to_string(),
            detail,
        }
    }

    async fn status_error(&self, what: String, response: Response) -> AirflowError {
        let status = response.status().as_u16();
        // Masked before it is cut: a cut could leave part of a password unrecognised.
        let body = match response.text().await {
            Ok(text) => excerpt(&self.scrub(&text)),
            Err(e) => format!(
                "(body unreadable: {})",
                self.scrub(&chain(&e.without_url()))
            ),
        };
        AirflowError::Status { what, status, body }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        response: Response,
    ) -> Result<T, AirflowError> {
        let text = response
            .text()
            .await
            .map_err(|e| self.request_error(what, e))?;
        serde_json::from_str(&text).map_err(|e| AirflowError::Response {
            what: what.to_string(),
            detail: self.scrub(&format!(
                "{e}; the answer begins {}",
                excerpt(&self.scrub(&text))
            )),
        })
    }

    /// `text` with any URI password and the password itself masked (also as a JSON string
    /// writes it, for an answer that echoes the login request), on one line.
    fn scrub(&self, text: &str) -> String {
        let mut text = redact_uri(text);
        if !self.password.is_empty() {
            text = text.replace(&self.password, "***");
            let quoted = serde_json::to_string(&self.password).unwrap_or_default();
            if let Some(escaped) = quoted.strip_prefix('"').and_then(|q| q.strip_suffix('"')) {
                if escaped != self.password {
                    text = text.replace(escaped, "***");
                }
            }
        }
        one_line(&text)
    }
}

/// An error and its causes, each once (hyper and reqwest often repeat their source's text).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    text
}

/// What an answer says, shortly: Airflow's `detail` when it is a string, else the start of the
/// body, on one line, at most [`BODY_EXCERPT`] characters.
fn excerpt(body: &str) -> String {
    let detail = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| match v.get("detail") {
            Some(Value::String(detail)) => Some(detail.clone()),
            _ => None,
        });
    let text = one_line(detail.as_deref().unwrap_or(body));
    if text.is_empty() {
        return "(empty body)".into();
    }
    match text.char_indices().nth(BODY_EXCERPT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Runs of whitespace (newlines included) as one space, trimmed.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert!(parse_base_url("http://airflow:8080").is_ok());
        assert!(parse_base_url(" https://example.com/airflow/ ").is_ok());
        let e = parse_base_url("ftp://u:pw-s3cret@h/")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "base_url `ftp://u:***@h/`: must be an http or https URL, not `ftp`"
        );
        let e = parse_base_url("airflow:8080").unwrap_err().to_string();
        assert!(e.contains("must be an http or https URL"), "{e}");
        let e = parse_base_url("not a url").unwrap_err().to_string();
        assert!(e.contains("not a URL"), "{e}");
        let e = parse_base_url("http://h/?x=1").unwrap_err().to_string();
        assert!(e.contains("query"), "{e}");
    }

    #[test]
    fn segments_are_percent_encoded_and_the_prefix_kept() {
        let client =
            Client::new("http://h:8080/prefix/", "u", "p", Duration::from_secs(1)).expect("client");
        let url = client.url(&["api", "v2", "dags", "d", "dagRuns", "a/b c?d#e%f"]);
        assert_eq!(
            url.as_str(),
            "http://h:8080/prefix/api/v2/dags/d/dagRuns/a%2Fb%20c%3Fd%23e%25f"
        );
        assert_eq!(client.base_url(), "http://h:8080/prefix");
    }

    #[test]
    fn excerpts_are_short_single_lines() {
        assert_eq!(
            excerpt(r#"{"detail": "DAG paused\n now"}"#),
            "DAG paused now"
        );
        assert_eq!(excerpt("  "), "(empty body)");
        let long = "line\n".repeat(100);
        let e = excerpt(&long);
        assert!(!e.contains('\n'));
        assert_eq!(e.chars().count(), BODY_EXCERPT + 1);
    }
}
