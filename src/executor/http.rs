//! The `http` operator (DESIGN §10): one HTTP request per try, judged by its status. It owns
//! the executor's one HTTP client, resolving `{ env = "NAME" }` header values at call time, and
//! the readable account of the exchange written to the task log: method, URL with any password
//! masked, status, time taken and the response body (capped), never a header value.
//!
//! It must not touch the database or decide task states: it says whether the call succeeded
//! and why not, and the executor decides what that means for the try.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Method;
use serde_json::Value;
use thiserror::Error;

use crate::secrets::{self, redact_uri, SecretError};
use crate::task::{HttpBody, HttpCall};

/// The most of a response body the log keeps.
pub const BODY_LOG_CAP: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// One HTTP client for the whole executor (connection reuse).
pub fn client() -> Result<reqwest::Client, HttpError> {
    reqwest::Client::builder()
        .user_agent(concat!("triggerer/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(HttpError::Client)
}

/// Makes the call and writes an account of it to `log`. `Ok` when `call.accepts` the status;
/// otherwise a one-line reason (the status and what was expected, the timeout, or the
/// connection error), with any URL password masked.
///
/// A failure to write `log` is not the call's failure: the request may have done its work
/// (a POST that loaded data), and failing the try for a lost log line would repeat it.
pub async fn call(
    client: &reqwest::Client,
    call: &HttpCall,
    log: &mut (dyn Write + Send),
) -> Result<(), String> {
    let shown_url = redact_uri(&call.url);
    let what = format!("{} {shown_url}", call.method);
    let method = Method::from_bytes(call.method.as_bytes())
        .map_err(|_| format!("`{}` is not an HTTP method", call.method))?;
    let headers = resolve_headers(&call.headers)?;

    let _ = writeln!(log, "> {what}");
    if !headers.is_empty() {
        let names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        let _ = writeln!(log, "> headers (values not shown): {}", names.join(", "));
    }
    let mut request = client
        .request(method, &call.url)
        .timeout(call.timeout)
        .headers(headers);
    request = match &call.body {
        HttpBody::Empty => request,
        HttpBody::Json(value) => {
            let _ = writeln!(log, "> JSON body");
            request.json(value)
        }
        HttpBody::Text(text) => {
            let _ = writeln!(log, "> body of {} bytes", text.len());
            request.body(text.clone())
        }
    };

    let begun = Instant::now();
    let mut response = match request.send().await {
        Ok(response) => response,
        Err(e) => {
            let reason = failure(&what, call.timeout, e);
            let _ = writeln!(log, "! {reason}");
            return Err(reason);
        }
    };
    let status = response.status();
    let _ = writeln!(log, "< {status} ({} ms)", begun.elapsed().as_millis());

    // The rest of the body is read (and counted) rather than dropped, so that the log can say
    // how much was cut and the connection can be reused; `call.timeout` bounds it.
    let mut kept: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let body_error = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                total = total.saturating_add(chunk.len() as u64);
                let room = BODY_LOG_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    if !kept.is_empty() {
        let _ = log.write_all(String::from_utf8_lossy(&kept).as_bytes());
        if !kept.ends_with(b"\n") {
            let _ = writeln!(log);
        }
    }
    let cut = total.saturating_sub(kept.len() as u64);
    if cut > 0 {
        let _ = writeln!(
            log,
            "[response body cut: {cut} of {total} bytes not shown; the log keeps {BODY_LOG_CAP}]"
        );
    }
    if let Some(e) = body_error {
        let reason = format!(
            "{what} answered {status} but reading its body failed: {}",
            failure_detail(call.timeout, e)
        );
        let _ = writeln!(log, "! {reason}");
        return Err(reason);
    }

    if call.accepts(status.as_u16()) {
        return Ok(());
    }
    let expected = if call.expect_status.is_empty() {
        "2xx".to_string()
    } else {
        let codes: Vec<String> = call.expect_status.iter().map(u16::to_string).collect();
        codes.join(", ")
    };
    let reason = format!("{what} answered {status}; expected {expected}");
    let _ = writeln!(log, "! {reason}");
    Err(reason)
}

/// The headers to send, with references resolved from this process's environment.
fn resolve_headers(headers: &BTreeMap<String, Value>) -> Result<HeaderMap, String> {
    let stored = Value::Object(headers.clone().into_iter().collect());
    let resolved = secrets::resolve_from_env(&stored).map_err(|e| match e {
        SecretError::NotSet { path, name } => {
            format!("header `{path}`: environment variable `{name}` is not set in the executor")
        }
        SecretError::NotUnicode { path, name } => {
            format!("header `{path}`: environment variable `{name}` is not valid UTF-8")
        }
        other => format!("headers: {other}"),
    })?;
    let Value::Object(resolved) = resolved else {
        return Err("headers: not a table".into());
    };
    let mut map = HeaderMap::with_capacity(resolved.len());
    for (name, value) in resolved {
        let text = match value {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "header `{name}`: must be a string or `{{ env = \"NAME\" }}`"
                ))
            }
        };
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("`{name}` is not a valid header name"))?;
        // The error would not name the value anyway; it must stay out of the log.
        let mut value = HeaderValue::from_str(&text)
            .map_err(|_| format!("header `{name}`: the value is not a valid header value"))?;
        value.set_sensitive(true);
        map.insert(header, value);
    }
    Ok(map)
}

/// A one-line reason for a request that got no response.
fn failure(what: &str, timeout: Duration, error: reqwest::Error) -> String {
    format!("{what} failed: {}", failure_detail(timeout, error))
}

/// The error as a timeout, or as its chain of causes, without the URL (reqwest's
/// `for url (…)` would carry the password the caller masked).
fn failure_detail(timeout: Duration, error: reqwest::Error) -> String {
    if error.is_timeout() {
        return format!("no answer within the timeout of {}", show_duration(timeout));
    }
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(e) = cause {
        let part = e.to_string();
        // hyper and reqwest often repeat their source's text in their own.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = e.source();
    }
    redact_uri(&text)
}

fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 || !ms.is_multiple_of(1000) {
        format!("{ms} ms")
    } else {
        format!("{} s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_values_must_be_text_and_never_show_in_errors() {
        let headers: BTreeMap<String, Value> = [("X-Bad".to_string(), json!(["a"]))].into();
        let err = resolve_headers(&headers).unwrap_err();
        assert!(err.contains("X-Bad"), "{err}");
        let headers: BTreeMap<String, Value> =
            [("X-Newline".to_string(), json!("sec\nret-value"))].into();
        let err = resolve_headers(&headers).unwrap_err();
        assert!(
            err.contains("X-Newline") && !err.contains("ret-value"),
            "{err}"
        );
        let headers: BTreeMap<String, Value> = [
            ("X-Count".to_string(), json!(3)),
            ("X-On".to_string(), json!(true)),
        ]
        .into();
        let map = resolve_headers(&headers).unwrap();
        assert_eq!(map["x-count"], "3");
        assert!(map["x-on"].is_sensitive());
    }

    #[test]
    fn timeouts_read_as_written() {
        assert_eq!(show_duration(Duration::from_millis(300)), "300 ms");
        assert_eq!(show_duration(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(show_duration(Duration::from_secs(60)), "60 s");
    }
}
