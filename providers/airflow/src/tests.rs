//! The client and the trigger against a canned Airflow: a tokio TcpListener answering each
//! request (one per connection) from a handler the test writes, recording what it received.
//! No real Airflow is needed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use triggerer_sdk::testkit::TestRun;
use triggerer_sdk::{is_sensitive_key, Provider, TriggerError, TriggerKind, TypedProvider};

use crate::{AirflowError, Client, DagRunStateParams, DagRunStateProvider, Triggered, CLASSPATHS};

const PASSWORD: &str = "pw-s3cret";
const RUN_ID: &str = "triggerer__2025-06-01T12:00:00+00:00";
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// How many `Authorization` headers came (the map keeps the last).
    authorizations: usize,
    /// As sent, percent-encoded.
    path: String,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Request {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn bearer(&self) -> Option<&str> {
        self.headers.get("authorization")?.strip_prefix("Bearer ")
    }
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

struct Fake {
    base: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    /// A server answering every request with `handler`'s status and JSON body.
    async fn start(handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("address"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let handler: Arc<Handler> = Arc::new(handler);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let record = Arc::clone(&record);
                let handler = Arc::clone(&handler);
                tokio::spawn(async move { answer(socket, &*handler, &record).await });
            }
        });
        Self { base, seen }
    }

    fn seen(&self) -> Vec<Request> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count(&self, method: &str, path_start: &str) -> usize {
        self.seen()
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(path_start))
            .count()
    }

    fn client(&self) -> Client {
        Client::new(&self.base, "admin", PASSWORD, Duration::from_secs(5)).expect("client")
    }
}

async fn answer(mut socket: TcpStream, handler: &Handler, record: &Mutex<Vec<Request>>) {
    let Some(request) = read_request(&mut socket).await else {
        return;
    };
    let (status, body) = handler(&request);
    record
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(request);
    let response = format!(
        "HTTP/1.1 {status} Canned\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = socket.write_all(response.as_bytes()).await;
    let _ = socket.shutdown().await;
}

async fn read_request(socket: &mut TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let pairs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let authorizations = pairs.iter().filter(|(k, _)| k == "authorization").count();
    let headers: BTreeMap<String, String> = pairs.into_iter().collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Request {
        method,
        authorizations,
        path,
        headers,
        body,
    })
}

/// `%XX` escapes decoded, as Airflow's server does with a path.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The login answer: token `jwt-N` for the N-th login.
fn token_answer(logins: &AtomicUsize) -> (u16, String) {
    let n = logins.fetch_add(1, Ordering::SeqCst) + 1;
    (
        201,
        json!({ "access_token": format!("jwt-{n}"), "token_type": "bearer" }).to_string(),
    )
}

fn run_path(dag_id: &str) -> String {
    format!("/api/v2/dags/{dag_id}/dagRuns")
}

#[tokio::test]
async fn logs_in_then_triggers_a_run() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/auth/token") => token_answer(&logins),
        ("POST", "/api/v2/dags/etl/dagRuns") if r.bearer() == Some("jwt-1") => (
            201,
            json!({ "dag_run_id": r.json()["dag_run_id"], "state": "queued" }).to_string(),
        ),
        _ => (500, "{}".into()),
    })
    .await;
    let client = fake.client();
    let conf = json!({ "triggering_asset_events": [{ "asset": "orders", "id": 7 }] });
    assert_eq!(
        client.trigger_dag_run("etl", RUN_ID, &conf).await,
        Ok(Triggered::Created)
    );
    // The token is cached: a second call does not log in again.
    assert_eq!(
        client.trigger_dag_run("etl", "second", &json!({})).await,
        Ok(Triggered::Created)
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/auth/token")
    );
    assert_eq!(
        seen[0].json(),
        json!({ "username": "admin", "password": PASSWORD })
    );
    assert_eq!(seen[1].path, run_path("etl"));
    assert_eq!(
        seen[1].headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert_eq!(
        seen[1].json(),
        json!({ "dag_run_id": RUN_ID, "logical_date": null, "conf": conf })
    );
    assert_eq!(seen[2].bearer(), Some("jwt-1"));
}

#[tokio::test]
async fn a_run_that_exists_already_is_no_second_run() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (
            409,
            json!({ "detail": "Unique constraint violation" }).to_string(),
        ),
    })
    .await;
    assert_eq!(
        fake.client()
            .trigger_dag_run("etl", RUN_ID, &json!({}))
            .await,
        Ok(Triggered::AlreadyExists)
    );
}

#[tokio::test]
async fn refused_credentials_are_unauthorized() {
    for status in [401, 403] {
        let fake = Fake::start(move |_| {
            (
                status,
                json!({ "detail": "Invalid credentials" }).to_string(),
            )
        })
        .await;
        let err = fake
            .client()
            .trigger_dag_run("etl", RUN_ID, &json!({}))
            .await
            .expect_err("refused");
        let AirflowError::Unauthorized(message) = &err else {
            panic!("{err:?}");
        };
        assert!(
            message.contains(&format!(
                "refused the credentials of user `admin` (HTTP {status})"
            )),
            "{message}"
        );
        assert!(
            !message.contains('\n') && !message.contains(PASSWORD),
            "{message}"
        );
        assert_eq!(fake.count("POST", "/api"), 0, "no call without a token");
    }
}

#[tokio::test]
async fn an_expired_token_is_fetched_again_once() {
    // Only the second token is good.
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ if r.bearer() == Some("jwt-2") => (200, json!({ "state": "running" }).to_string()),
        _ => (401, json!({ "detail": "Token expired" }).to_string()),
    })
    .await;
    let client = fake.client();
    assert_eq!(
        client.dag_run_state("etl", RUN_ID).await.as_deref(),
        Ok("running")
    );
    assert_eq!(fake.count("POST", "/auth/token"), 2);
    assert_eq!(fake.count("GET", "/api"), 2);

    // A server that refuses every token: one fresh token, then Unauthorized.
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (401, json!({ "detail": "Invalid token" }).to_string()),
    })
    .await;
    let err = fake
        .client()
        .dag_run_state("etl", RUN_ID)
        .await
        .expect_err("refused");
    assert!(matches!(err, AirflowError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("refused a fresh token"), "{err}");
    assert_eq!(fake.count("POST", "/auth/token"), 2);
    assert_eq!(fake.count("GET", "/api"), 2);
}

#[tokio::test]
async fn unknown_dags_and_runs() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (404, json!({ "detail": "not found" }).to_string()),
    })
    .await;
    let client = fake.client();
    let err = client
        .trigger_dag_run("nope", RUN_ID, &json!({}))
        .await
        .expect_err("no such DAG");
    assert_eq!(
        err,
        AirflowError::UnknownDag {
            base_url: fake.base.clone(),
            dag_id: "nope".into()
        }
    );
    assert_eq!(
        err.to_string(),
        format!("Airflow at {} has no DAG `nope` (HTTP 404)", fake.base)
    );
    let err = client
        .dag_run_state("etl", RUN_ID)
        .await
        .expect_err("no such run");
    assert!(matches!(err, AirflowError::UnknownRun { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("no run `{RUN_ID}` of DAG `etl`")),
        "{err}"
    );
}

#[tokio::test]
async fn other_statuses_name_the_status_and_a_short_excerpt() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (500, format!("Internal\nServer Error\n{}", "x".repeat(1000))),
    })
    .await;
    let err = fake
        .client()
        .trigger_dag_run("etl", RUN_ID, &json!({}))
        .await
        .expect_err("500");
    let text = err.to_string();
    assert!(
        matches!(err, AirflowError::Status { status: 500, .. }),
        "{err:?}"
    );
    assert!(
        text.starts_with(&format!(
            "POST {}/api/v2/dags/etl/dagRuns: HTTP 500: Internal Server Error xxx",
            fake.base
        )),
        "{text}"
    );
    assert!(!text.contains('\n') && text.len() < 400, "{text}");
}

#[tokio::test]
async fn path_segments_are_percent_encoded() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (200, json!({ "state": "queued" }).to_string()),
    })
    .await;
    let odd = "manual/a b?c#d%e";
    let client = fake.client();
    for run_id in [RUN_ID, odd] {
        assert_eq!(
            client.dag_run_state("my.dag", run_id).await.as_deref(),
            Ok("queued")
        );
    }
    let paths: Vec<String> = fake
        .seen()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths.len(), 2);
    for (path, run_id) in paths.iter().zip([RUN_ID, odd]) {
        let (dir, last) = path.rsplit_once('/').expect("a path");
        assert_eq!(dir, "/api/v2/dags/my.dag/dagRuns");
        assert!(!last.contains(['/', ' ', '?', '#']), "{last}");
        assert_eq!(percent_decode(last), run_id);
    }
}

#[tokio::test]
async fn a_password_never_appears_in_an_error() {
    // A server that echoes what it received, as a validation error might.
    let fake = Fake::start(|r| {
        (
            422,
            json!({ "detail": [{ "input": r.json(), "msg": "bad" }] }).to_string(),
        )
    })
    .await;
    let addr = fake.base.trim_start_matches("http://").to_string();
    let with_userinfo = format!("http://svc:{PASSWORD}@{addr}");
    for password in [PASSWORD.to_string(), format!("q\"uo\\te{PASSWORD}")] {
        let client = Client::new(
            &with_userinfo,
            "admin",
            password.as_str(),
            Duration::from_secs(5),
        )
        .expect("client");
        assert!(!format!("{client:?}").contains(PASSWORD));
        let err = client
            .trigger_dag_run("etl", RUN_ID, &json!({}))
            .await
            .expect_err("422");
        let text = err.to_string();
        assert!(
            matches!(err, AirflowError::Status { status: 422, .. }),
            "{err:?}"
        );
        assert!(
            !text.contains(PASSWORD) && !text.contains("uo\\\\te"),
            "{text}"
        );
        assert!(!text.contains("svc:"), "userinfo is dropped: {text}");
        assert!(
            text.contains("\"username\":\"admin\""),
            "the rest stays: {text}"
        );
    }

    // Nothing listening: a connection error.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let client = Client::new(
        &format!("http://svc:{PASSWORD}@127.0.0.1:{closed}"),
        "admin",
        PASSWORD,
        Duration::from_secs(5),
    )
    .expect("client");
    let err = client.token().await.expect_err("refused");
    let text = err.to_string();
    assert!(matches!(err, AirflowError::Request { .. }), "{err:?}");
    assert!(!text.contains(PASSWORD), "{text}");
    assert!(
        text.contains(&format!("POST http://127.0.0.1:{closed}/auth/token failed")),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");

    let err = Client::new(
        &format!("ftp://svc:{PASSWORD}@h"),
        "admin",
        PASSWORD,
        Duration::from_secs(5),
    )
    .expect_err("no http URL");
    assert!(!err.to_string().contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn userinfo_in_base_url_sends_no_second_authorization() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (200, json!({ "state": "running" }).to_string()),
    })
    .await;
    let addr = fake.base.trim_start_matches("http://");
    let client = Client::new(
        &format!("http://svc:{PASSWORD}@{addr}"),
        "admin",
        PASSWORD,
        Duration::from_secs(5),
    )
    .expect("client");
    assert_eq!(client.base_url(), fake.base);
    assert_eq!(
        client.dag_run_state("etl", RUN_ID).await.as_deref(),
        Ok("running")
    );
    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].authorizations, 0, "the login sends none");
    assert_eq!(seen[1].authorizations, 1, "only the bearer");
    assert_eq!(seen[1].bearer(), Some("jwt-1"));
}

fn params(base_url: &str, poll_interval: Duration) -> DagRunStateParams {
    DagRunStateParams {
        base_url: base_url.into(),
        dag_id: "etl".into(),
        dag_run_id: RUN_ID.into(),
        username: "admin".into(),
        password: PASSWORD.into(),
        poll_interval,
    }
}

fn start(params: DagRunStateParams) -> TestRun {
    let trigger = DagRunStateProvider::default()
        .build_trigger(params)
        .expect("build");
    TestRun::start(trigger, HashMap::new(), 4)
}

#[tokio::test]
async fn a_run_that_finishes_fires_once_with_its_state() {
    let logins = AtomicUsize::new(0);
    let polls = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => {
            let state = match polls.fetch_add(1, Ordering::SeqCst) {
                0 => "queued",
                1 => "running",
                _ => "success",
            };
            (200, json!({ "dag_id": "etl", "state": state }).to_string())
        }
    })
    .await;
    let mut run = start(params(&fake.base, Duration::from_millis(50)));
    let event = run.commit_next(WAIT).await.expect("fires");
    assert_eq!(
        event.payload,
        json!({ "dag_id": "etl", "dag_run_id": RUN_ID, "state": "success" })
    );
    assert_eq!(event.dedup_key, format!("airflow:etl:{RUN_ID}:success"));
    assert!(
        run.commit_next(Duration::from_millis(500)).await.is_none(),
        "once"
    );
    assert_eq!(fake.count("GET", "/api"), 3, "no poll after the end");
    assert_eq!(fake.count("POST", "/auth/token"), 1);
    assert!(!run.is_finished(), "waits for its removal");
    run.stop_within(WAIT)
        .await
        .expect("stops")
        .expect("returns Ok");
}

#[tokio::test]
async fn a_failed_run_fires_too() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (200, json!({ "state": "failed" }).to_string()),
    })
    .await;
    // Through kwargs, as the core builds it: the first poll is at once.
    let provider = DagRunStateProvider::default();
    let kwargs = json!({
        "base_url": fake.base, "dag_id": "etl", "dag_run_id": RUN_ID,
        "username": "admin", "password": PASSWORD, "poll_interval": "1m",
    });
    provider.validate(&kwargs).expect("valid");
    let mut run = TestRun::start(provider.build(&kwargs).expect("build"), HashMap::new(), 4);
    let event = run.commit_next(WAIT).await.expect("fires");
    assert_eq!(event.payload["state"], "failed");
    assert_eq!(event.dedup_key, format!("airflow:etl:{RUN_ID}:failed"));
    run.stop_within(WAIT).await.expect("stops").expect("Ok");
}

#[tokio::test]
async fn errors_end_the_run_for_the_supervisor() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (404, json!({ "detail": "not found" }).to_string()),
    })
    .await;
    let run = start(params(&fake.base, Duration::from_millis(50)));
    match run.finished(WAIT).await {
        Some(Err(TriggerError::Failed(message))) => {
            assert!(
                message.contains(&format!("has no run `{RUN_ID}`")),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }

    let refusing = Fake::start(|_| (401, "{}".into())).await;
    let run = start(params(&refusing.base, Duration::from_millis(50)));
    match run.finished(WAIT).await {
        Some(Err(TriggerError::Failed(message))) => {
            assert!(message.contains("refused the credentials"), "{message}");
            assert!(!message.contains(PASSWORD), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_cancel_ends_the_polling_promptly() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (200, json!({ "state": "running" }).to_string()),
    })
    .await;
    let mut run = start(params(&fake.base, Duration::from_secs(60)));
    assert!(run.commit_next(Duration::from_millis(500)).await.is_none());
    let started = std::time::Instant::now();
    run.stop_within(WAIT).await.expect("stops").expect("Ok");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(fake.count("GET", "/api"), 1);
}

#[tokio::test]
async fn triggers_of_one_login_share_a_token() {
    let logins = AtomicUsize::new(0);
    let fake = Fake::start(move |r| match r.path.as_str() {
        "/auth/token" => token_answer(&logins),
        _ => (200, json!({ "state": "success" }).to_string()),
    })
    .await;
    let provider = DagRunStateProvider::default();
    let mut runs: Vec<TestRun> = (0..3)
        .map(|_| {
            let trigger = provider
                .build_trigger(params(&fake.base, Duration::from_secs(1)))
                .expect("build");
            TestRun::start(trigger, HashMap::new(), 4)
        })
        .collect();
    for run in &mut runs {
        run.commit_next(WAIT).await.expect("fires");
    }
    assert_eq!(fake.count("POST", "/auth/token"), 1);
    for run in runs {
        run.stop_within(WAIT).await.expect("stops").expect("Ok");
    }
}

#[test]
fn kwargs() {
    let provider = DagRunStateProvider::default();
    assert_eq!(provider.classpaths(), CLASSPATHS);
    assert_eq!(provider.kind(), TriggerKind::OneShot);
    assert!(is_sensitive_key("password"));
    let ok = json!({
        "base_url": "http://airflow:8080", "dag_id": "etl", "dag_run_id": RUN_ID,
        "username": "admin", "password": "${env:AIRFLOW_PASSWORD}",
    });
    provider.validate(&ok).expect("valid");
    let parsed: DagRunStateParams = triggerer_sdk::parse_params(&provider, &ok).expect("valid");
    assert_eq!(parsed.poll_interval, Duration::from_secs(5));
    assert!(!format!("{parsed:?}").contains("AIRFLOW_PASSWORD"));

    let with = |key: &str, value: Value| {
        let mut kwargs = ok.clone();
        kwargs[key] = value;
        kwargs
    };
    let err = |kwargs: Value| provider.validate(&kwargs).expect_err("refused");
    provider
        .validate(&with("base_url", json!("${env:AIRFLOW_URL}")))
        .expect("a placeholder is checked at build time");
    provider
        .validate(&with("poll_interval", json!(30)))
        .expect("seconds");
    provider
        .validate(&with("poll_interval", Value::Null))
        .expect("null is the default");

    let e = err(with("base_url", json!("airflow:8080")));
    assert_eq!(e.field, "base_url");
    assert!(e.message.contains("http or https"), "{e}");
    let e = err(with("base_url", json!(format!("ftp://u:{PASSWORD}@h"))));
    assert!(!e.to_string().contains(PASSWORD), "{e}");
    let e = err(with("poll_interval", json!("often")));
    assert_eq!(e.field, "poll_interval");
    assert!(e.message.contains("`often` is not a duration"), "{e}");
    for short in [json!("100ms"), json!(0), json!(0.25)] {
        let parsed: DagRunStateParams =
            triggerer_sdk::parse_params(&provider, &with("poll_interval", short)).expect("valid");
        assert_eq!(parsed.poll_interval, Duration::from_secs(1), "at least 1 s");
    }
    let e = err(with("poll_interval", json!(-1)));
    assert_eq!(e.field, "poll_interval");
    let e = err(with("password", json!("")));
    assert_eq!(e.field, "password");
    let e = err(with("password", json!(true)));
    assert_eq!(e.field, "password");
    let mut missing = ok.clone();
    missing.as_object_mut().map(|m| m.remove("dag_run_id"));
    let e = err(missing);
    assert_eq!(e.field, "dag_run_id");
    assert!(e.message.starts_with("required"), "{e}");
    let e = err(with("states", json!(["success"])));
    assert_eq!(e.field, "states");
    assert!(e.message.contains("unknown kwarg"), "{e}");
    let e = err(with("airflow_conn_id", json!("airflow_default")));
    assert!(e.message.contains("connections are not available"), "{e}");
}
