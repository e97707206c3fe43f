//! `http.HttpEventTrigger` through the binary (`dags sync`, then `standalone`), against a tiny
//! HTTP server this test runs and whose response it changes: a new response is one event
//! with the documented payload, and a run; the same response again is none, also after a
//! `kill -9` and a restart (the digest is committed with the event); a falsy
//! `response_check` is none; an unreachable URL fails its own trigger with a one-line reason
//! while the other watchers keep working. No external service, but its own lane.
//!
//! The SDK conformance suite does not apply: it puts messages on a source and checks that
//! each is acknowledged only after its commit and redelivered when not committed, and a
//! polled URL has neither messages to count nor anything to acknowledge. What it protects
//! (nothing lost or repeated across a refused commit or a restart) is checked here and in the
//! crate's tests through the committed checkpoint.
#![cfg(feature = "integration-http-poll")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every request with the current body (200, JSON, an ETag), counting requests.
#[derive(Clone)]
struct Server {
    body: Arc<Mutex<String>>,
    requests: Arc<Mutex<usize>>,
    url: String,
}

impl Server {
    async fn start(body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/status", listener.local_addr().expect("addr"));
        let server = Self {
            body: Arc::new(Mutex::new(body.to_string())),
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
                    *s.requests.lock().unwrap() += 1;
                    let body = s.body.lock().unwrap().clone();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\netag: \"{}\"\r\n\
                         content-length: {}\r\nconnection: close\r\n\r\n",
                        body.len(),
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

    fn set(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_string();
    }

    fn requests(&self) -> usize {
        *self.requests.lock().unwrap()
    }

    /// Waits until `n` more requests than now were answered (each one a poll that saw the
    /// current body).
    async fn wait_polls(&self, n: usize) {
        let target = self.requests() + n;
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.requests() < target {
            assert!(Instant::now() < deadline, "the trigger stopped polling");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_responses_fire_once_across_kill_9_and_a_dead_url_fails_alone() {
    let server = Server::start(r#"{"ready": true, "v": 1}"#).await;
    let gated = Server::start(r#"{"ready": false}"#).await;
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dead = format!("http://127.0.0.1:{dead_port}/status");
    let ws = common::Workspace::sqlite();
    let defs = common::write_file(
        ws.dir.path(),
        "dags.toml",
        &format!(
            r#"
[[asset]]
name = "status"
[[asset.watcher]]
name = "status-poll"
classpath = "airflow.providers.http.triggers.http.HttpEventTrigger"
kwargs = {{ url = "{}", poll_interval = 1, response_check = "$.ready", headers = {{ Authorization = "Bearer lit3ral-t0ken" }} }}

[[asset]]
name = "gated"
[[asset.watcher]]
name = "gated-poll"
classpath = "http.HttpEventTrigger"
kwargs = {{ url = "{}", poll_interval = 1, response_check = "$.ready" }}

[[asset]]
name = "down"
[[asset.watcher]]
name = "down-poll"
classpath = "http.HttpEventTrigger"
kwargs = {{ url = "{dead}", poll_interval = 1, timeout = 2 }}

[[dag]]
dag_id = "on_status"
schedule = {{ assets = "status" }}
"#,
            server.url, gated.url
        ),
    );
    common::sync_definitions(&ws.db_url, &defs);
    let log = ws.dir.path().join("run.log");
    let mut triggerer = common::standalone(&ws.db_url, &log);
    let events = common::Events::open(&ws.db_url, log.clone()).await;
    events.wait("the first response", "status", 1, 60).await;

    // The event's payload, as documented.
    let all = ws.json(&["assets", "events", "--limit", "0", "--json"]);
    let first = all
        .iter()
        .find(|e| e["asset"] == "status")
        .expect("the status event");
    assert_eq!(
        first["extra"]["payload"],
        json!({
            "url": server.url,
            "status": 200,
            "headers": {"content-type": "application/json", "etag": "\"23\"", "last-modified": null},
            "body": {"ready": true, "v": 1},
            "body_encoding": "json",
            "check_result": [true],
        })
    );
    let key = first["dedup_key"].as_str().expect("a dedup key");
    assert!(
        key.starts_with(&format!("http:{}:1:sha256:", server.url)),
        "{key}"
    );

    // The unreachable URL fails its trigger alone, with a one-line reason.
    let row = common::wait_for_failing(&ws.db_url, Duration::from_secs(60), |t| {
        t["kwargs"]["url"] == dead.as_str()
    })
    .await;
    let reason = row["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("http GET {dead}: cannot connect")) && !reason.contains('\n'),
        "{row}"
    );
    // The literal Authorization header is masked where kwargs are shown.
    let rows = ws.json(&["triggers", "list", "--json"]);
    let status_row = rows
        .iter()
        .find(|t| t["kwargs"]["url"] == server.url.as_str())
        .expect("the status trigger");
    assert!(
        !status_row.to_string().contains("lit3ral-t0ken"),
        "{status_row}"
    );

    // The same response, polled again and again: no new event.
    server.wait_polls(3).await;
    assert_eq!(events.count("status").await, 1);

    // A new response: one more event, while the dead URL keeps failing.
    server.set(r#"{"ready": true, "v": 2}"#);
    events.wait("the second response", "status", 2, 60).await;
    server.wait_polls(3).await;
    assert_eq!(events.count("status").await, 2);

    // kill -9, and a restart with the same response: the committed digest holds.
    triggerer.kill();
    let before = server.requests();
    let _again = common::standalone(&ws.db_url, &ws.dir.path().join("again.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.requests() < before + 4 {
        assert!(
            Instant::now() < deadline,
            "the restarted triggerer never polled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        events.count("status").await,
        2,
        "no event again after kill -9"
    );

    // And it still fires on the next change.
    server.set(r#"{"ready": true, "v": 3}"#);
    events.wait("after the restart", "status", 3, 60).await;

    // A falsy check never made an event, though it was polled all along.
    assert!(gated.requests() >= 3, "the gated URL was polled");
    assert_eq!(events.count("gated").await, 0);
    assert_eq!(events.count("down").await, 0);
    assert_eq!(events.distinct_keys().await, 3);

    // The DAG on `status` ran on its events.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let runs = ws.json(&["runs", "list", "--limit", "0", "--json"]);
        if runs.iter().any(|r| r["dag_id"] == "on_status") {
            break;
        }
        assert!(Instant::now() < deadline, "no run of on_status: {runs:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
