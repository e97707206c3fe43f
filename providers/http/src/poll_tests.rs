//! `http.HttpEventTrigger`: kwargs, the check's truthiness, digests and dedup, the payload,
//! masking; and the trigger against a tiny local HTTP server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use triggerer_sdk::testkit::TestRun;
use triggerer_sdk::{parse_params, Provider};

use crate::poll::{body_value, digest, outcome, truthy, Last, Outcome};
use crate::{HttpEventProvider, PollConfig, CHECKPOINT_KEY};

fn config(kwargs: Value) -> PollConfig {
    let params = parse_params(&HttpEventProvider, &kwargs).expect("valid kwargs");
    PollConfig::from_params(&params).expect("valid config")
}

fn error(kwargs: Value) -> String {
    HttpEventProvider
        .validate(&kwargs)
        .expect_err("refused")
        .to_string()
}

#[test]
fn kwargs_errors_name_the_field() {
    for (kwargs, says) in [
        (json!({}), "kwargs.url"),
        (
            json!({"url": "not a url"}),
            "kwargs.url: `not a url` is no URL",
        ),
        (
            json!({"url": "ftp://h/x"}),
            "kwargs.url: `ftp://h/x` is not http:// or https://",
        ),
        (
            json!({"url": "http://h", "method": "FETCH"}),
            "kwargs.method: `FETCH` is not one of GET, POST",
        ),
        (
            json!({"url": "http://h", "response_check": "$.[oops"}),
            "kwargs.response_check: `$.[oops` is no JSONPath",
        ),
        (
            json!({"url": "http://h", "response_check": "status"}),
            "kwargs.response_check",
        ),
        (
            json!({"url": "http://h", "poll_interval": 0.5}),
            "kwargs.poll_interval: must be at least 1 s",
        ),
        (
            json!({"url": "http://h", "poll_interval": 0}),
            "kwargs.poll_interval",
        ),
        (json!({"url": "http://h", "timeout": -1}), "kwargs.timeout"),
        (
            json!({"url": "http://h", "headers": {"Bad Name": "x"}}),
            "kwargs.headers.Bad Name: is no HTTP header name",
        ),
        (
            json!({"url": "http://h", "headers": {"X-A": "a\nb"}}),
            "kwargs.headers.X-A: holds a character",
        ),
        (
            json!({"url": "http://h", "data": "raw"}),
            "kwargs.data: a GET request sends `data` as query parameters",
        ),
        (
            json!({"url": "http://h", "data": {"q": {"nested": 1}}}),
            "kwargs.data.q: a query parameter must be",
        ),
        (json!({"url": "http://h", "data": 5}), "kwargs.data"),
        (json!({"url": "http://h", "typo": 1}), "kwargs.typo"),
    ] {
        let e = error(kwargs.clone());
        assert!(e.contains(says), "{kwargs}: {e}");
    }
}

#[test]
fn airflow_kwargs_are_refused_with_guidance() {
    for (kwargs, says) in [
        (
            json!({"http_conn_id": "http_default", "url": "http://h"}),
            "give the full `url`",
        ),
        (
            json!({"url": "http://h", "auth_type": "basic"}),
            "Airflow connections",
        ),
        (json!({"url": "http://h", "endpoint": "v1/x"}), "full `url`"),
        (
            json!({"url": "http://h", "response_check_path": "m.check"}),
            "write `response_check`, a JSONPath",
        ),
        (
            json!({"url": "http://h", "extra_options": {}}),
            "extra options",
        ),
    ] {
        let e = error(kwargs.clone());
        assert!(e.contains(says), "{kwargs}: {e}");
    }
}

#[test]
fn good_kwargs_and_defaults() {
    let c = config(json!({"url": " http://h/x "}));
    assert_eq!(c.url, "http://h/x");
    assert_eq!(c.method, reqwest::Method::GET);
    assert_eq!(c.poll_interval, Duration::from_secs(60));
    assert_eq!(c.timeout, Duration::from_secs(30));
    assert!(c.check.is_none());
    let c = config(json!({
        "url": "https://h/x", "method": "post", "poll_interval": 1.5, "timeout": 2,
        "data": {"a": 1}, "response_check": "$.ready",
    }));
    assert_eq!(c.method, reqwest::Method::POST);
    assert_eq!(c.poll_interval, Duration::from_millis(1500));
    assert!(matches!(c.body, crate::poll_params::Body::Json(_)));
    // Airflow writes unset kwargs as null.
    let c = config(json!({"url": "http://h", "headers": null, "data": null, "method": "GET"}));
    assert!(c.headers.is_empty() && c.body == crate::poll_params::Body::None);
    // At sync time references are placeholders: let through.
    HttpEventProvider
        .validate(
            &json!({"url": "${env:STATUS_URL}", "headers": {"Authorization": "${env:TOKEN}"}}),
        )
        .expect("placeholders pass");
    assert!(HttpEventProvider
        .classpaths()
        .contains(&"airflow.providers.http.triggers.http.HttpEventTrigger"));
}

#[test]
fn sensitive_headers_and_url_secrets_are_masked() {
    let kwargs = json!({
        "url": "https://user:hunter22@h/x?token=tok123&page=2",
        "headers": {"Authorization": "Bearer s3cr3t", "X-Api-Key": "k3y", "Accept": "application/json"},
    });
    let params = parse_params(&HttpEventProvider, &kwargs).expect("valid");
    let c = PollConfig::from_params(&params).expect("valid");
    for shown in [format!("{params:?}"), format!("{c:?}")] {
        for secret in ["hunter22", "tok123", "s3cr3t", "k3y"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("application/json"), "{shown}");
        assert!(shown.contains("page=2"), "{shown}");
    }
    assert_eq!(c.shown_url, "https://user:***@h/x?token=***&page=2");
    assert!(crate::is_sensitive_header("authorization"));
    assert!(crate::is_sensitive_header("Proxy-Authorization"));
    assert!(crate::is_sensitive_header("Cookie"));
    assert!(!crate::is_sensitive_header("Accept"));
    // An error about a bad header value does not show the value.
    let e = error(json!({"url": "http://h", "headers": {"Authorization": "Bearer x\ny"}}));
    assert!(!e.contains("Bearer"), "{e}");
}

#[test]
fn check_truthiness_is_pythons() {
    let (t, f) = (json!(true), json!(false));
    let (one, zero, s, empty_s) = (json!(1), json!(0), json!("x"), json!(""));
    let (arr, empty_arr, obj, empty_obj, null) = (
        json!([0]),
        json!([]),
        json!({"a": 1}),
        json!({}),
        Value::Null,
    );
    for yes in [&t, &one, &s, &arr, &obj] {
        assert!(truthy(&[yes]), "{yes}");
    }
    for no in [&f, &zero, &empty_s, &empty_arr, &empty_obj, &null] {
        assert!(!truthy(&[no]), "{no}");
    }
    assert!(!truthy(&[]), "nothing selected");
    assert!(truthy(&[&f, &one]), "some node truthy");
}

fn json_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("etag", HeaderValue::from_static("\"v1\""));
    h
}

#[test]
fn a_passing_check_fires_once_per_body_and_the_payload_has_its_shape() {
    let c = config(
        json!({"url": "http://h/status?api_key=abc", "response_check": "$.jobs[?@.state == 'done']"}),
    );
    let body = br#"{"jobs": [{"id": 1, "state": "done"}, {"id": 2, "state": "running"}]}"#;
    let Outcome::Fire(event, next) =
        outcome(&c, &Last::default(), StatusCode::OK, &json_headers(), body)
    else {
        panic!("fires")
    };
    let d = digest(body);
    assert_eq!(
        next,
        Last {
            changes: 1,
            digest: Some(d.clone())
        }
    );
    assert_eq!(
        event.payload,
        json!({
            "url": "http://h/status?api_key=***",
            "status": 200,
            "headers": {"content-type": "application/json", "etag": "\"v1\"", "last-modified": null},
            "body": {"jobs": [{"id": 1, "state": "done"}, {"id": 2, "state": "running"}]},
            "body_encoding": "json",
            "check_result": [{"id": 1, "state": "done"}],
        })
    );
    assert_eq!(
        event.dedup_key,
        format!("http:http://h/status?api_key=***:1:sha256:{d}")
    );
    let cp = event.checkpoint.clone().expect("a checkpoint");
    assert_eq!(
        (cp.key.as_str(), cp.value.clone()),
        (CHECKPOINT_KEY, format!("1:{d}"))
    );
    // The same body again: nothing; read back from the committed checkpoint: nothing.
    assert_eq!(
        outcome(&c, &next, StatusCode::OK, &json_headers(), body),
        Outcome::Unchanged
    );
    let restored = Last::from_checkpoint(Some(&cp.value));
    assert_eq!(restored, next);
    assert_eq!(
        outcome(&c, &restored, StatusCode::OK, &json_headers(), body),
        Outcome::Unchanged
    );
    // Another body fires as change 2, with its own key.
    let other = br#"{"jobs": [{"id": 3, "state": "done"}]}"#;
    let Outcome::Fire(e2, n2) = outcome(&c, &next, StatusCode::OK, &json_headers(), other) else {
        panic!("fires")
    };
    assert_eq!(n2.changes, 2);
    assert_ne!(e2.dedup_key, event.dedup_key);
    // And the first body back again is a third change, not a duplicate of the first.
    let Outcome::Fire(e3, _) = outcome(&c, &n2, StatusCode::OK, &json_headers(), body) else {
        panic!("fires")
    };
    assert_ne!(e3.dedup_key, event.dedup_key);
}

#[test]
fn a_falsy_check_a_non_json_body_and_404_are_no_event() {
    let c = config(json!({"url": "http://h", "response_check": "$.ready"}));
    let h = json_headers();
    let last = Last::default();
    assert_eq!(
        outcome(&c, &last, StatusCode::OK, &h, br#"{"ready": false}"#),
        Outcome::CheckFalse { not_json: false }
    );
    assert_eq!(
        outcome(&c, &last, StatusCode::OK, &h, br#"{"other": 1}"#),
        Outcome::CheckFalse { not_json: false }
    );
    assert_eq!(
        outcome(&c, &last, StatusCode::OK, &h, b"<html>"),
        Outcome::CheckFalse { not_json: true }
    );
    assert_eq!(
        outcome(&c, &last, StatusCode::NOT_FOUND, &h, b"{}"),
        Outcome::NotFound
    );
    // Without a check, any body counts; text stays text.
    let c = config(json!({"url": "http://h"}));
    let Outcome::Fire(e, _) = outcome(&c, &last, StatusCode::OK, &HeaderMap::new(), b"plain")
    else {
        panic!("fires")
    };
    assert_eq!(e.payload["body"], "plain");
    assert_eq!(e.payload["body_encoding"], "text");
    assert_eq!(e.payload["check_result"], Value::Null);
}

#[test]
fn bodies_that_cannot_be_stored_as_they_are_are_encoded() {
    assert_eq!(body_value(br#"{"a":1}"#), (json!({"a": 1}), "json"));
    assert_eq!(
        body_value(br#"{"a":"\u0000"}"#),
        (json!(r#"{"a":"\u0000"}"#), "text")
    );
    assert_eq!(body_value(b"a\0b"), (json!("YQBi"), "base64"));
    assert_eq!(body_value(&[0xff, 0xfe]), (json!("//4="), "base64"));
    assert_eq!(
        Last::from_checkpoint(Some(&"garbage".to_string())),
        Last::default()
    );
    assert_eq!(Last::from_checkpoint(None), Last::default());
}

/// A server answering every request with the current `(status, body)`, remembering each
/// request's head.
#[derive(Clone)]
struct Server {
    reply: Arc<Mutex<(u16, String)>>,
    requests: Arc<Mutex<Vec<String>>>,
    url: String,
}

impl Server {
    async fn start(status: u16, body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/status", listener.local_addr().expect("addr"));
        let server = Self {
            reply: Arc::new(Mutex::new((status, body.to_string()))),
            requests: Arc::default(),
            url,
        };
        let s = server.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    s.requests
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&buf).into_owned());
                    let (status, body) = s.reply.lock().unwrap().clone();
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = conn.write_all(head.as_bytes()).await;
                    let _ = conn.write_all(body.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        server
    }

    fn set(&self, status: u16, body: &str) {
        *self.reply.lock().unwrap() = (status, body.to_string());
    }
}

fn start(kwargs: Value, checkpoint: HashMap<String, String>) -> TestRun {
    HttpEventProvider.validate(&kwargs).expect("valid");
    TestRun::start(
        HttpEventProvider.build(&kwargs).expect("built"),
        checkpoint,
        8,
    )
}

#[tokio::test]
async fn the_trigger_polls_fires_on_change_only_and_resumes_from_its_checkpoint() {
    let server = Server::start(200, r#"{"ready": true, "v": 1}"#).await;
    let kwargs = json!({
        "url": server.url, "poll_interval": 1, "response_check": "$.ready",
        "method": "POST", "data": {"q": "x"},
        "headers": {"Authorization": "Bearer s3cr3t", "X-Trace": "t-1"},
    });
    let mut run = start(kwargs.clone(), HashMap::new());
    let first = run
        .commit_next(Duration::from_secs(5))
        .await
        .expect("first event");
    assert_eq!(first.payload["body"], json!({"ready": true, "v": 1}));
    assert_eq!(first.payload["check_result"], json!([true]));
    // The same response for two more polls: nothing.
    assert!(run.commit_next(Duration::from_millis(2500)).await.is_none());
    server.set(200, r#"{"ready": false, "v": 2}"#);
    assert!(
        run.commit_next(Duration::from_millis(2500)).await.is_none(),
        "falsy check"
    );
    server.set(200, r#"{"ready": true, "v": 3}"#);
    let second = run
        .commit_next(Duration::from_secs(5))
        .await
        .expect("second event");
    assert_eq!(second.payload["body"]["v"], 3);
    let checkpoint = run.checkpoint.clone();
    run.stop().await.expect("stops cleanly");
    {
        let requests = server.requests.lock().unwrap();
        let req = requests
            .first()
            .expect("requests made")
            .to_ascii_lowercase();
        assert!(req.starts_with("post /status "), "{req}");
        assert!(req.contains("authorization: bearer s3cr3t"), "{req}");
        assert!(req.contains("x-trace: t-1"), "{req}");
        assert!(req.contains("content-type: application/json"), "{req}");
    }
    // A restart from the committed checkpoint with the same response: nothing.
    let mut again = start(kwargs, checkpoint);
    assert!(again
        .commit_next(Duration::from_millis(2500))
        .await
        .is_none());
    again.stop().await.expect("stops cleanly");
}

#[tokio::test]
async fn a_5xx_and_an_unreachable_url_fail_the_trigger_in_one_line() {
    let server = Server::start(503, "down").await;
    let run = start(
        json!({"url": server.url, "poll_interval": 1}),
        HashMap::new(),
    );
    let e = run
        .finished(Duration::from_secs(5))
        .await
        .expect("fails")
        .expect_err("an error");
    let e = e.to_string();
    assert!(
        e.starts_with("http GET http://127.0.0.1:")
            && e.ends_with("answered 503 Service Unavailable"),
        "{e}"
    );

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let run = start(
        json!({"url": format!("http://user:pw9876@127.0.0.1:{port}/x?token=t0k"), "poll_interval": 1, "timeout": 2}),
        HashMap::new(),
    );
    let e = run
        .finished(Duration::from_secs(5))
        .await
        .expect("fails")
        .expect_err("an error");
    let e = e.to_string();
    assert!(e.contains("cannot connect"), "{e}");
    assert!(
        !e.contains('\n') && !e.contains("pw9876") && !e.contains("t0k"),
        "{e}"
    );
}

#[tokio::test]
async fn a_non_json_body_under_a_check_is_a_warning_once_and_no_event() {
    let server = Server::start(200, "<html>").await;
    let mut run = start(
        json!({"url": server.url, "poll_interval": 1, "response_check": "$.ready"}),
        HashMap::new(),
    );
    assert!(run.commit_next(Duration::from_millis(2500)).await.is_none());
    let warnings = run.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("no JSON"), "{warnings:?}");
    run.stop().await.expect("stops");
}
