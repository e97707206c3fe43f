//! The HTTP server of the real binary (`standalone --http`), called with a real HTTP client:
//! pushes (created, deduplicated, refused), tokens and scopes, a manual run and a pause, a
//! webhook's signatures and redeliveries, and `/health` following PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use common::http::HttpServer;
use common::BIN;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

const WRITE_TOKEN: &str = "write-token-0123456789";
const READ_TOKEN: &str = "read-token-0123456789";
const WEBHOOK_SECRET: &str = "webhook-secret-for-tests";

/// Assets `orders` (pushed by hand) and `hooks` (a GitHub-style webhook), a DAG on each, with
/// one quick task.
const DEFINITIONS: &str = r#"
[[asset]]
name = "orders"

[[asset]]
name = "hooks"

[[asset.watcher]]
name = "github"
classpath = "http.WebhookTrigger"
kwargs = { path = "github", secret = { env = "TEST_WEBHOOK_SECRET" }, signature_header = "X-Hub-Signature-256", dedup_header = "X-GitHub-Delivery" }

[[dag]]
dag_id = "process_orders"
schedule = { assets = "orders" }

[[dag.task]]
task_id = "load"
shell = "echo loaded"

[[dag]]
dag_id = "on_push"
schedule = { assets = "hooks" }
"#;

/// The binary with [`DEFINITIONS`], the webhook's secret in its environment.
struct Server(HttpServer);

impl std::ops::Deref for Server {
    type Target = HttpServer;
    fn deref(&self) -> &HttpServer {
        &self.0
    }
}

impl std::ops::DerefMut for Server {
    fn deref_mut(&mut self) -> &mut HttpServer {
        &mut self.0
    }
}

impl Server {
    /// Starts it on `db_url` (a fresh SQLite file when `None`) with `vars` set.
    async fn start(db_url: Option<&str>, vars: &[(&str, &str)]) -> Server {
        let mut vars = vars.to_vec();
        vars.push(("TEST_WEBHOOK_SECRET", WEBHOOK_SECRET));
        let dir = HttpServer::with_definitions(DEFINITIONS);
        Server(HttpServer::start(dir, db_url, &vars).await)
    }

    async fn patch_dag(&self, dag_id: &str, is_paused: bool) -> (u16, Value) {
        let response = self
            .client
            .patch(self.url(&format!("/api/v1/dags/{dag_id}")))
            .json(&json!({"is_paused": is_paused}))
            .send()
            .await
            .expect("PATCH");
        answer(response).await
    }

    async fn push(&self, asset: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url(&format!("/api/v1/assets/{asset}/events")))
            .json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await;
        let response = response.unwrap_or_else(|e| panic!("push: {e}\n{}", self.log_text()));
        answer(response).await
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await;
        let response = response.unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log_text()));
        answer(response).await
    }

    async fn events(&self, asset: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/api/v1/assets/{asset}/events"), Some(WRITE_TOKEN))
            .await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().expect("a list")
    }

    async fn webhook(&self, body: &[u8], signature: Option<&str>, delivery: &str) -> (u16, Value) {
        let mut request = self
            .client
            .post(self.url("/webhooks/github"))
            .header("content-type", "application/json")
            .header("X-GitHub-Delivery", delivery)
            .body(body.to_vec());
        if let Some(signature) = signature {
            request = request.header("X-Hub-Signature-256", signature);
        }
        answer(request.send().await.expect("webhook")).await
    }
}

/// The status and JSON body of a response; every answer of the API is JSON.
async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.expect("body");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}), {content_type}: {text}"));
    assert!(
        content_type.starts_with("application/json"),
        "{status} {content_type}: {text}"
    );
    (status, body)
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no `error` in {body}"))
}

fn github_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_is_created_once_and_bad_requests_are_refused_naming_why() {
    let server = Server::start(None, &[]).await;

    let (status, first) = server
        .push(
            "orders",
            json!({"extra": {"batch": 7}, "dedup_key": "batch-7"}),
            None,
        )
        .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["asset"], "orders");
    assert_eq!(first["extra"], json!({"batch": 7}));
    assert_eq!(first["dedup_key"], "batch-7");

    let (status, again) = server
        .push(
            "orders",
            json!({"extra": {"batch": 7}, "dedup_key": "batch-7"}),
            None,
        )
        .await;
    assert_eq!(status, 200, "the same dedup key again: {again}");
    assert_eq!(again["id"], first["id"], "the stored event comes back");
    assert_eq!(server.events("orders").await.len(), 1, "still one event");

    let (status, body) = server.push("nope", json!({}), None).await;
    assert_eq!(status, 404);
    assert!(error_of(&body).contains("`nope`"), "{body}");

    let broken = server
        .client
        .post(server.url("/api/v1/assets/orders/events"))
        .header("content-type", "application/json")
        .body("{\"extra\": ")
        .send()
        .await
        .expect("push");
    let (status, body) = answer(broken).await;
    assert_eq!(status, 400, "{body}");
    assert!(!error_of(&body).is_empty());

    let (status, body) = server.push("orders", json!({"extra": [1, 2]}), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("extra"), "names the field: {body}");

    let (status, body) = server
        .push("orders", json!({"dedup_key": "bad\u{7}key"}), None)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("dedup_key"), "{body}");

    let big = json!({"extra": {"blob": "x".repeat(1536 * 1024)}});
    let (status, body) = server.push("orders", big, None).await;
    assert_eq!(status, 413, "{body}");

    assert_eq!(
        server.events("orders").await.len(),
        1,
        "no refused push recorded anything"
    );

    // The pushed event queued process_orders, whose run consumes it and succeeds.
    let run = wait_for_run(&server, "process_orders", |r| r["state"] == "success").await;
    assert_eq!(run["run_type"], "asset_triggered");
    assert_eq!(run["consumed_events"], json!([first["id"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_decide_who_reads_and_who_writes() {
    let tokens = format!("ci:write:{WRITE_TOKEN},grafana:read:{READ_TOKEN}");
    let server = Server::start(None, &[("TRIGGERER_API_TOKENS", &tokens)]).await;

    let (status, body) = server.push("orders", json!({}), None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.get("/api/v1/dags", None).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server
        .push("orders", json!({}), Some("not-a-token-at-all"))
        .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = server.push("orders", json!({}), Some(READ_TOKEN)).await;
    assert_eq!(status, 403, "a read token cannot push: {body}");
    assert!(error_of(&body).contains("write"), "{body}");
    assert!(
        server.events("orders").await.is_empty(),
        "nothing refused was recorded"
    );

    let (status, body) = server.get("/api/v1/dags", Some(READ_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.push("orders", json!({}), Some(WRITE_TOKEN)).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.get("/health", None).await;
    assert_eq!(status, 200, "/health is open: {body}");
}

#[test]
fn a_non_loopback_address_without_tokens_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(BIN)
        .args(["standalone", "--http", "0.0.0.0:0"])
        .env(
            "TRIGGERER_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("t.db").display()),
        )
        .env_remove("TRIGGERER_API_TOKENS")
        .output()
        .expect("run standalone");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--http 0.0.0.0:0"), "{stderr}");
    assert!(stderr.contains("TRIGGERER_API_TOKENS"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_run_and_a_pause_through_the_api() {
    let server = Server::start(None, &[]).await;

    let response = server
        .client
        .post(server.url("/api/v1/dags/process_orders/runs"))
        .json(&json!({"run_id": "from_api", "conf": {"who": "test"}}))
        .send()
        .await
        .expect("trigger");
    let (status, run) = answer(response).await;
    assert_eq!(status, 201, "{run}");
    assert_eq!(run["run_id"], "from_api");
    assert_eq!(run["run_type"], "manual");
    assert_eq!(run["conf"], json!({"who": "test"}));
    let done = wait_for_run(&server, "process_orders", |r| {
        r["run_id"] == "from_api" && r["state"] == "success"
    })
    .await;
    assert_eq!(done["conf"], json!({"who": "test"}));

    let again = server
        .client
        .post(server.url("/api/v1/dags/process_orders/runs"))
        .json(&json!({"run_id": "from_api"}))
        .send()
        .await
        .expect("trigger");
    let (status, body) = answer(again).await;
    assert_eq!(status, 409, "{body}");

    let unknown = server
        .client
        .post(server.url("/api/v1/dags/no_such_dag/runs"))
        .json(&json!({}))
        .send()
        .await
        .expect("trigger");
    let (status, body) = answer(unknown).await;
    assert_eq!(status, 404, "{body}");
    assert!(error_of(&body).contains("no_such_dag"), "{body}");

    let (status, dag) = server.patch_dag("process_orders", true).await;
    assert_eq!(status, 200, "{dag}");
    assert_eq!(dag["is_paused"], true);
    let (_, dags) = server.get("/api/v1/dags", None).await;
    let listed = dags
        .as_array()
        .and_then(|d| d.iter().find(|d| d["dag_id"] == "process_orders"))
        .cloned()
        .expect("listed");
    assert_eq!(listed["is_paused"], true);

    // A paused DAG queues nothing: this event makes no run, now or after the unpause.
    let (status, _) = server
        .push("orders", json!({"dedup_key": "while-paused"}), None)
        .await;
    assert_eq!(status, 201);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, runs) = server.get("/api/v1/dags/process_orders/runs", None).await;
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(1),
        "only the manual run: {runs}"
    );

    let (status, dag) = server.patch_dag("process_orders", false).await;
    assert_eq!(status, 200, "{dag}");
    assert_eq!(dag["is_paused"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_webhook_is_one_event_and_a_bad_signature_records_nothing() {
    let server = Server::start(None, &[]).await;
    let body = br#"{"action": "opened", "number": 42}"#;

    let (status, answer_body) = server
        .webhook(
            body,
            Some(&github_signature(WEBHOOK_SECRET, body)),
            "delivery-1",
        )
        .await;
    assert_eq!(status, 201, "{answer_body}");
    let events = server.events("hooks").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["extra"]["payload"]["body"]["number"], 42);
    assert_eq!(events[0]["extra"]["payload"]["delivery"], "delivery-1");

    let (status, answer_body) = server
        .webhook(
            body,
            Some(&github_signature(WEBHOOK_SECRET, body)),
            "delivery-1",
        )
        .await;
    assert_eq!(status, 200, "a redelivery: {answer_body}");
    assert_eq!(server.events("hooks").await.len(), 1, "still one event");

    let (status, answer_body) = server
        .webhook(
            body,
            Some(&github_signature("not-the-secret", body)),
            "delivery-2",
        )
        .await;
    assert_eq!(status, 401, "{answer_body}");
    assert!(
        !answer_body.to_string().contains(WEBHOOK_SECRET),
        "never the secret: {answer_body}"
    );
    let (status, _) = server.webhook(body, None, "delivery-3").await;
    assert_eq!(status, 401, "no signature");
    let (status, _) = server
        .webhook(
            b"{\"tampered\": true}",
            Some(&github_signature(WEBHOOK_SECRET, body)),
            "delivery-4",
        )
        .await;
    assert_eq!(status, 401, "a signature of another body");
    assert_eq!(
        server.events("hooks").await.len(),
        1,
        "nothing recorded for them"
    );

    let unknown = server
        .client
        .post(server.url("/webhooks/gitlab"))
        .body("{}")
        .send()
        .await
        .expect("webhook");
    let (status, body) = answer(unknown).await;
    assert_eq!(status, 404, "{body}");
    assert!(error_of(&body).contains("gitlab"), "{body}");

    let run = wait_for_run(&server, "on_push", |_| true).await;
    assert_eq!(run["run_type"], "asset_triggered");
    assert_eq!(run["consumed_events"], json!([events[0]["id"]]));
}

/// Polls a DAG's runs until one matches.
async fn wait_for_run(server: &Server, dag_id: &str, matches: impl Fn(&Value) -> bool) -> Value {
    // Generous: a loaded CI machine runs the task's process slowly.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, runs) = server
            .get(&format!("/api/v1/dags/{dag_id}/runs"), Some(WRITE_TOKEN))
            .await;
        assert_eq!(status, 200, "{runs}");
        if let Some(run) = runs.as_array().and_then(|r| r.iter().find(|r| matches(r))) {
            return run.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no matching run of {dag_id} in 90s: {runs}\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(feature = "integration-postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_postgres_is_cut_off_and_200_after() {
    let (store, url) = common::postgres_store().await;
    store.close().await;
    let proxy = common::FaultyProxy::start(&common::host_port(&url));
    let mut server = Server::start(Some(&proxy.url_through(&url)), &[]).await;
    // Every part is past its start (a part's start needs the database; its loop outlives an
    // outage): a pushed event's run has succeeded.
    let (status, body) = server
        .push("orders", json!({"dedup_key": "before"}), None)
        .await;
    assert_eq!(status, 201, "{body}");
    wait_for_run(&server, "process_orders", |r| r["state"] == "success").await;

    proxy.outage();
    server.wait_for_health(503, 20).await;
    let (status, body) = server.get("/health", None).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(!error_of(&body).is_empty(), "says why: {body}");

    proxy.restore();
    server.wait_for_health(200, 30).await;
    let (status, body) = server
        .push("orders", json!({"dedup_key": "after"}), None)
        .await;
    assert_eq!(status, 201, "pushes commit again: {body}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        server.process.0.try_wait().ok().flatten().is_none(),
        "the outage stopped the process:\n{}",
        server.log_text()
    );
}

/// `schemathesis` (PyPI; `scripts/services.sh` `ensure_schemathesis` installs it) against the
/// OpenAPI document the server serves: every operation, generated and mutated requests, and
/// stateful sequences; no answer may be a 5xx or differ from the document (status, content
/// type, body schema). With a write token: auth is tested above.
#[cfg(feature = "integration-openapi")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_off_the_schema() {
    let tokens = format!("ci:write:{WRITE_TOKEN}");
    let server = Server::start(None, &[("TRIGGERER_API_TOKENS", &tokens)]).await;
    let schemathesis = std::env::var("TRIGGERER_TEST_SCHEMATHESIS").unwrap_or_else(|_| {
        format!(
            "{}/.services/schemathesis/bin/schemathesis",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    assert!(
        std::path::Path::new(&schemathesis).exists(),
        "{schemathesis} is missing: run `. scripts/services.sh; ensure_schemathesis` (or \
         scripts/test.sh), or point TRIGGERER_TEST_SCHEMATHESIS at a schemathesis binary"
    );
    let url = server.url("/api/v1/openapi.json");
    let out = tokio::process::Command::new(&schemathesis)
        .args(["run", &url])
        .args(["--header", &format!("Authorization: Bearer {WRITE_TOKEN}")])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance",
        ])
        // A fixed seed: the same requests every run, so a failure reproduces. One worker:
        // hypothesis 6.170 describing its strategies from two threads at once fails with
        // "AST constructor recursion depth mismatch", a runtime error of the tool's own.
        .args([
            "--seed",
            "20261201",
            "--max-examples",
            "40",
            "--workers",
            "2",
        ])
        .env("NO_COLOR", "1")
        // Its report cache (.schemathesis/) goes with the test's directory.
        .current_dir(server.path())
        .output()
        .await
        .expect("run schemathesis");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found issues:\n{report}");
    assert!(report.contains("No issues found"), "{report}");
    assert!(
        report.contains("9 selected / 9 total"),
        "every operation: {report}"
    );
}
