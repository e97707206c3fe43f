//! The kwargs of `http.HttpEventTrigger`, parsed without I/O (validation runs at `dags sync`,
//! with environment references still `${env:NAME}` placeholders: a placeholder `url` or
//! header value is let through, and checked again with its value when the trigger is built).
//! Sensitive header values (see [`is_sensitive_header`]) never show: not in `Debug`, not in
//! an error.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;
use serde_json_path::JsonPath;
use triggerer_sdk::de::{null_as_default, Seconds, Trimmed};
use triggerer_sdk::{is_sensitive_key, KwargsError, Refusal};

/// `poll_interval` when not given (Airflow's default).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest `poll_interval`.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// `timeout` when not given: for the whole request, body included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How an environment reference arrives at `dags sync`.
const PLACEHOLDER: &str = "${env:";

pub(crate) const HINTS: &[(&str, &str)] = &[
    (
        "url",
        "the full URL to poll, e.g. `https://api.example.com/v1/status` (or { env = \"NAME\" })",
    ),
    ("method", "one of GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"),
    (
        "headers",
        "a table of header names to values, e.g. { Authorization = { env = \"API_TOKEN\" } }",
    ),
    (
        "data",
        "a table (query parameters for GET/HEAD/DELETE/OPTIONS, a JSON body otherwise) or a string (the raw body)",
    ),
    (
        "response_check",
        "a JSONPath (RFC 9535) that must be truthy on the JSON response, e.g. `$.status` or `$[?@.state == 'done']`",
    ),
    ("poll_interval", "a number of seconds >= 1, e.g. 60"),
    ("timeout", "a number of seconds > 0, e.g. 30"),
];

pub(crate) const REFUSED: &[Refusal] = &[
    Refusal {
        kwargs: &["http_conn_id", "auth_type"],
        instead: "Airflow connections are not available here: give the full `url` (with \
                  `{ env = \"NAME\" }` for a secret one) and any credentials as `headers`, e.g. \
                  `headers = { Authorization = { env = \"API_TOKEN\" } }`",
    },
    Refusal {
        kwargs: &["endpoint"],
        instead: "there is no connection to put an endpoint below: give the full `url`",
    },
    Refusal {
        kwargs: &["response_check_path"],
        instead: "Python callables cannot run here: write `response_check`, a JSONPath that \
                  must be truthy on the JSON response (e.g. `$.status` or \
                  `$[?@.state == 'done']`)",
    },
    Refusal {
        kwargs: &["extra_options"],
        instead: "requests' extra options are not available here: use `timeout`, `headers` \
                  and `data`",
    },
];

/// Header names whose values are secrets: the SDK's vocabulary (`Authorization`,
/// `X-Auth-Token`, …) plus the usual API-key and cookie headers.
pub fn is_sensitive_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    is_sensitive_key(&lower)
        || lower.contains("api-key")
        || lower.contains("apikey")
        || lower.contains("cookie")
        || lower.contains("auth")
}

/// Kwargs of one `http.HttpEventTrigger`, as written. `Debug` masks sensitive header values.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table with `url` (and optionally `method`, `headers`, `data`, \
                 `response_check`, `poll_interval`, `timeout`)"
)]
pub struct PollParams {
    pub url: Trimmed,
    #[serde(default)]
    pub method: Option<Trimmed>,
    /// `null` (as Airflow serializes an unset one) is none.
    #[serde(default, deserialize_with = "null_as_default")]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub response_check: Option<Trimmed>,
    #[serde(default)]
    pub poll_interval: Option<Seconds>,
    #[serde(default)]
    pub timeout: Option<Seconds>,
}

impl fmt::Debug for PollParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollParams")
            .field("url", &shown_url(&self.url.0))
            .field("method", &self.method.as_ref().map(|m| &m.0))
            .field("headers", &masked_headers(&self.headers))
            .field("data", &self.data.as_ref().map(|_| "…"))
            .field(
                "response_check",
                &self.response_check.as_ref().map(|c| &c.0),
            )
            .field("poll_interval", &self.poll_interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Headers for display: sensitive values as `***`.
pub(crate) fn masked_headers(headers: &BTreeMap<String, String>) -> BTreeMap<&str, &str> {
    headers
        .iter()
        .map(|(k, v)| {
            let shown = if is_sensitive_header(k) {
                "***"
            } else {
                v.as_str()
            };
            (k.as_str(), shown)
        })
        .collect()
}

/// What the request body is.
#[derive(Clone, PartialEq)]
pub enum Body {
    None,
    /// A table sent as query parameters (GET, HEAD, DELETE, OPTIONS).
    Query(Vec<(String, String)>),
    /// A table (or other JSON) sent as `application/json`.
    Json(Value),
    /// A string sent as written.
    Raw(String),
}

/// Params checked and ready to run.
#[derive(Clone)]
pub struct PollConfig {
    /// As given (with its secrets): what is requested.
    pub url: String,
    /// With userinfo passwords and sensitive query values masked: what is shown and stored.
    pub shown_url: String,
    pub method: Method,
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    pub body: Body,
    pub check: Option<(String, JsonPath)>,
    pub poll_interval: Duration,
    pub timeout: Duration,
}

impl fmt::Debug for PollConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PollConfig")
            .field("url", &self.shown_url)
            .field("method", &self.method)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(k, v)| {
                        let shown = if is_sensitive_header(k.as_str()) {
                            "***"
                        } else {
                            v.to_str().unwrap_or("<bytes>")
                        };
                        (k.as_str(), shown)
                    })
                    .collect::<Vec<_>>(),
            )
            .field("response_check", &self.check.as_ref().map(|(s, _)| s))
            .field("poll_interval", &self.poll_interval)
            .field("timeout", &self.timeout)
            .finish()
    }
}

const METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl PollConfig {
    /// Checks `params`: every error names its kwarg. A placeholder (`${env:NAME}`) `url` or
    /// header value passes; its value is checked when the trigger is built.
    pub fn from_params(params: &PollParams) -> Result<Self, KwargsError> {
        let url = params.url.0.clone();
        if !url.contains(PLACEHOLDER) {
            let parsed = reqwest::Url::parse(&url).map_err(|e| {
                KwargsError::new(
                    "url",
                    format!(
                        "`{}` is no URL ({e}); write one such as `https://api.example.com/status`",
                        shown_url(&url)
                    ),
                )
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(KwargsError::new(
                    "url",
                    format!("`{}` is not http:// or https://", shown_url(&url)),
                ));
            }
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(KwargsError::new("url", "has no host"));
            }
        }
        let method = match &params.method {
            None => Method::GET,
            Some(m) => {
                let upper = m.0.to_ascii_uppercase();
                if !METHODS.contains(&upper.as_str()) {
                    return Err(KwargsError::new(
                        "method",
                        format!("`{}` is not one of {}", m.0, METHODS.join(", ")),
                    ));
                }
                Method::from_bytes(upper.as_bytes())
                    .map_err(|_| KwargsError::new("method", "is no HTTP method"))?
            }
        };
        let mut headers = Vec::with_capacity(params.headers.len());
        for (name, value) in &params.headers {
            let field = format!("headers.{name}");
            let header_name = reqwest::header::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| {
                    KwargsError::new(
                        field.clone(),
                        "is no HTTP header name (letters, digits and `-`, as in `Accept`)",
                    )
                })?;
            let header_value = reqwest::header::HeaderValue::from_str(value).map_err(|_| {
                KwargsError::new(
                    field.clone(),
                    "holds a character no header value may (a control character or a line break)",
                )
            })?;
            let mut header_value = header_value;
            header_value.set_sensitive(is_sensitive_header(name));
            headers.push((header_name, header_value));
        }
        let body =
            match &params.data {
                None | Some(Value::Null) => Body::None,
                Some(Value::String(s)) => {
                    if sends_query(&method) {
                        return Err(KwargsError::new(
                            "data",
                            format!(
                            "a {method} request sends `data` as query parameters: give a table, \
                             or put the parameters in `url`"
                        ),
                        ));
                    }
                    Body::Raw(s.clone())
                }
                Some(Value::Object(map)) if sends_query(&method) => {
                    let mut pairs = Vec::with_capacity(map.len());
                    for (k, v) in map {
                        let v = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(n) => n.to_string(),
                            Value::Bool(b) => b.to_string(),
                            _ => {
                                return Err(KwargsError::new(
                                    format!("data.{k}"),
                                    "a query parameter must be a string, a number or a boolean",
                                ))
                            }
                        };
                        pairs.push((k.clone(), v));
                    }
                    Body::Query(pairs)
                }
                Some(v @ (Value::Object(_) | Value::Array(_))) => Body::Json(v.clone()),
                Some(_) => return Err(KwargsError::new(
                    "data",
                    "expected a table (query parameters or a JSON body) or a string (the raw body)",
                )),
            };
        let check = match &params.response_check {
            None => None,
            Some(Trimmed(expr)) => {
                let path = JsonPath::parse(expr).map_err(|e| {
                    KwargsError::new(
                        "response_check",
                        format!(
                            "`{expr}` is no JSONPath (RFC 9535): {}",
                            one_line(&e.to_string())
                        ),
                    )
                })?;
                Some((expr.clone(), path))
            }
        };
        let poll_interval = params.poll_interval.map_or(DEFAULT_POLL_INTERVAL, |s| s.0);
        if poll_interval < MIN_POLL_INTERVAL {
            return Err(KwargsError::new(
                "poll_interval",
                format!(
                    "must be at least {} s, got {} s",
                    MIN_POLL_INTERVAL.as_secs(),
                    poll_interval.as_secs_f64()
                ),
            ));
        }
        let timeout = params.timeout.map_or(DEFAULT_TIMEOUT, |s| s.0);
        Ok(Self {
            shown_url: shown_url(&url),
            url,
            method,
            headers,
            body,
            check,
            poll_interval,
            timeout,
        })
    }
}

/// Whether `method` sends a table `data` as query parameters (as Airflow's hook does for GET).
fn sends_query(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    )
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `url` as shown and stored: a userinfo password as `***`, and the value of every query
/// parameter with a sensitive name (`token`, `api_key`, `sig`…) as `***`.
pub fn shown_url(url: &str) -> String {
    let redacted = triggerer_sdk::redact_uri(url);
    let Some((head, rest)) = redacted.split_once('?') else {
        return redacted;
    };
    let (query, fragment) = match rest.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (rest, None),
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, v))
                if !v.is_empty()
                    && (is_sensitive_header(k)
                        || matches!(
                            k.to_ascii_lowercase().as_str(),
                            "key" | "sig" | "signature" | "access_token" | "code"
                        )) =>
            {
                format!("{k}=***")
            }
            _ => pair.to_string(),
        })
        .collect();
    let mut out = format!("{head}?{}", query.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}
