//! NATS JetStream against a real server (`nats-server -js` from `scripts/services.sh`
//! `ensure_nats`, or TRIGGERER_TEST_NATS_URL): the SDK's conformance suite, then the binary —
//! messages become asset events and runs, exactly once across `kill -9`, a server cut off
//! (through `common::FaultyProxy`) shows the trigger `failing` and it recovers by itself, and a
//! trigger with bad credentials or a stream that cannot be created fails alone. Every test uses
//! its own streams.
#![cfg(feature = "integration-nats")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;
use serde_json::{json, Value};
use triggerer_sdk::testkit::{run_conformance, ConformanceSource, Timing};
use triggerer_sdk::{EventTrigger, Provider};

/// The server of the tests; fails with how to start one when nothing listens there.
fn nats_url() -> String {
    let url =
        std::env::var("TRIGGERER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let addr = url
        .trim_start_matches("nats://")
        .trim_end_matches('/')
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    if std::net::TcpStream::connect(&addr).is_err() {
        panic!(
            "no NATS server at {url}: run `scripts/test.sh` (scripts/services.sh `ensure_nats` \
             starts nats-server -js), or set TRIGGERER_TEST_NATS_URL"
        );
    }
    url
}

/// A stream name no other run uses (JetStream names have no `.`).
fn unique_stream(prefix: &str) -> String {
    common::unique(prefix).replace('.', "-")
}

async fn js(url: &str) -> jetstream::Context {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    jetstream::new(client)
}

async fn create_stream(js: &jetstream::Context, name: &str, subjects: &[String]) {
    js.create_stream(jetstream::stream::Config {
        name: name.to_string(),
        subjects: subjects.to_vec(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create stream {name}: {e}"));
}

/// Publishes each payload to `subject` and waits for the stream's acknowledgement.
async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payloads: impl IntoIterator<Item = Vec<u8>>,
) {
    for payload in payloads {
        js.publish(subject.to_string(), payload.into())
            .await
            .expect("publish")
            .await
            .expect("stream acknowledged the publish");
    }
}

/// `(num_pending, num_ack_pending)` of a consumer: both 0 once everything was acknowledged.
async fn consumer_backlog(js: &jetstream::Context, stream: &str, durable: &str) -> (u64, usize) {
    let stream = js.get_stream(stream).await.expect("stream");
    let info = stream.consumer_info(durable).await.expect("consumer info");
    (info.num_pending, info.num_ack_pending)
}

/// One stream and durable consumer per check; acknowledged = published − not yet delivered −
/// delivered and not acknowledged, as the server's consumer info counts them.
struct Nats {
    url: String,
    js: jetstream::Context,
    provider: triggerer_provider_nats::NatsProvider,
    stream: String,
    sent: usize,
}

#[async_trait]
impl ConformanceSource for Nats {
    fn name(&self) -> String {
        format!("nats ({})", self.url)
    }

    async fn fresh(&mut self) -> Result<(), String> {
        if !self.stream.is_empty() {
            let _ = self.js.delete_stream(&self.stream).await;
        }
        self.stream = unique_stream("conformance");
        self.js
            .create_stream(jetstream::stream::Config {
                name: self.stream.clone(),
                subjects: vec![format!("{}.msgs", self.stream)],
                ..Default::default()
            })
            .await
            .map_err(|e| format!("create stream {}: {e}", self.stream))?;
        self.sent = 0;
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs = json!({ "url": self.url, "stream": self.stream, "ack_wait": 30 });
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        for _ in 0..n {
            self.js
                .publish(
                    format!("{}.msgs", self.stream),
                    format!(r#"{{"n": {}}}"#, self.sent).into(),
                )
                .await
                .map_err(|e| format!("publish: {e}"))?
                .await
                .map_err(|e| format!("publish ack: {e}"))?;
            self.sent += 1;
        }
        Ok(())
    }

    async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| format!("stream {}: {e}", self.stream))?;
        let info = match stream.consumer_info("triggerer").await {
            Ok(info) => info,
            // Not created yet by the trigger: nothing acknowledged.
            Err(_) => return Ok(0),
        };
        let left = usize::try_from(info.num_pending).unwrap_or(usize::MAX) + info.num_ack_pending;
        Ok(self.sent.saturating_sub(left))
    }

    fn timing(&self) -> Timing {
        Timing {
            arrival: Duration::from_secs(20),
            ack: Duration::from_secs(3),
            // A refused message is NAKed with a 6 s delay (past the stopping run's pull).
            redelivery: Duration::from_secs(10),
            stop: Duration::from_secs(10),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_provider_conforms() {
    let url = nats_url();
    let mut source = Nats {
        js: js(&url).await,
        url,
        provider: triggerer_provider_nats::NatsProvider::new(),
        stream: String::new(),
        sent: 0,
    };
    let result = run_conformance(&mut source).await;
    let _ = source.js.delete_stream(&source.stream).await;
    if let Err(failures) = result {
        panic!("{failures}");
    }
}

/// `triggerer standalone --dags DIR` with the test's heartbeat settings and extra environment.
fn standalone_dags(
    ws: &common::Workspace,
    dags: &std::path::Path,
    log: &str,
    vars: &[(&str, &str)],
) -> common::KillOnDrop {
    let log = std::fs::File::create(ws.dir.path().join(log)).expect("log file");
    common::KillOnDrop(
        std::process::Command::new(common::BIN)
            .args([
                "standalone",
                "--heartbeat-interval",
                "0.5",
                "--health-check-threshold",
                "2",
            ])
            .arg("--dags")
            .arg(dags)
            .env("TRIGGERER_DATABASE_URL", &ws.db_url)
            .envs(vars.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start triggerer standalone"),
    )
}

/// Polls until `done` holds, failing with the log's tail after `within`.
async fn wait_until(
    what: &str,
    within: Duration,
    log: &std::path::Path,
    mut done: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "timed out waiting for {what}; log, newest first:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Through the binary: a watcher whose `url` comes from `{ env = … }` and whose stream it
/// creates from `subjects`, and a `MessageQueueTrigger` on `nats://host:port/STREAM` of an
/// existing stream. JSON, text and binary data with headers become events with the documented
/// payload, and the DAG scheduled on the asset runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_asset_events_with_the_documented_payload_and_a_run() {
    let url = nats_url();
    let js = js(&url).await;
    let created = unique_stream("e2e-created");
    let existing = unique_stream("e2e-existing");
    create_stream(&js, &existing, &[format!("{existing}.>")]).await;
    let ws = common::Workspace::sqlite();
    let dags = ws.dir.path().join("dags");
    std::fs::create_dir(&dags).expect("dags dir");
    let host = url.trim_start_matches("nats://");
    common::write_file(
        &dags,
        "dags.toml",
        &format!(
            r#"
[[asset]]
name = "nats_orders"
[[asset.watcher]]
name = "orders-stream"
classpath = "nats.JetStreamTrigger"
kwargs = {{ url = {{ env = "E2E_NATS_URL" }}, stream = "{created}", subjects = ["{created}.orders.*"], durable = "etl" }}

[[asset]]
name = "nats_queue"
[[asset.watcher]]
name = "via-queue"
classpath = "MessageQueueTrigger"
kwargs = {{ queue = "nats://{host}/{existing}" }}

[[dag]]
dag_id = "on_nats_orders"
schedule = {{ assets = "nats_orders" }}
"#
        ),
    );
    let log = ws.dir.path().join("run.log");
    let _triggerer = standalone_dags(&ws, &dags, "run.log", &[("E2E_NATS_URL", &url)]);

    // The watcher creates its stream; wait for it, then publish.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while js.get_stream(&created).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the trigger never created stream {created}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Trace-Id", "t-1");
    headers.append("tag", "a");
    headers.append("tag", "b");
    js.publish_with_headers(
        format!("{created}.orders.eu"),
        headers,
        r#"{"order": 1}"#.into(),
    )
    .await
    .expect("publish")
    .await
    .expect("publish ack");
    publish(
        &js,
        &format!("{created}.orders.us"),
        [b"plain order".to_vec(), vec![0xff, 0x00, 0xfe]],
    )
    .await;
    publish(
        &js,
        &format!("{existing}.x"),
        (0..5).map(|i| format!("q{i}").into_bytes()),
    )
    .await;

    wait_until("3 + 5 events", Duration::from_secs(90), &log, || {
        ws.json(&["assets", "events", "--limit", "0", "--json"])
            .len()
            >= 8
    })
    .await;
    let all = ws.json(&["assets", "events", "--limit", "0", "--json"]);
    assert_eq!(all.len(), 8, "{all:#?}");
    let payloads: Vec<&Value> = all.iter().map(|e| &e["extra"]["payload"]).collect();
    let of = |seq: u64, stream: &str| {
        payloads
            .iter()
            .find(|p| p["sequence"] == seq && p["stream"] == stream)
            .copied()
            .unwrap_or_else(|| panic!("no event for {stream}/{seq}: {payloads:#?}"))
    };
    let first = of(1, &created);
    assert_eq!(first["subject"], format!("{created}.orders.eu"));
    assert_eq!(first["data"], json!({"order": 1}));
    assert_eq!(first["data_encoding"], "json");
    assert_eq!(first["headers"]["Trace-Id"], "t-1");
    assert_eq!(first["headers"]["tag"], json!(["a", "b"]));
    assert_eq!(first["delivered"], 1);
    assert!(
        first["timestamp"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000_000),
        "{first}"
    );
    let text = of(2, &created);
    assert_eq!(
        (text["data"].clone(), text["data_encoding"].clone()),
        (json!("plain order"), json!("text"))
    );
    let binary = of(3, &created);
    assert_eq!(
        (binary["data"].clone(), binary["data_encoding"].clone()),
        (json!("/wD+"), json!("base64"))
    );
    assert_eq!(of(5, &existing)["data"], "q4");
    let keys: BTreeSet<&str> = all.iter().filter_map(|e| e["dedup_key"].as_str()).collect();
    assert!(
        keys.contains(format!("nats:{created}/1").as_str()),
        "{keys:?}"
    );
    assert!(
        keys.contains(format!("nats:{existing}/5").as_str()),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 8);

    wait_until(
        "a run of on_nats_orders",
        Duration::from_secs(60),
        &log,
        || {
            !ws.json(&["runs", "list", "--dag", "on_nats_orders", "--json"])
                .is_empty()
        },
    )
    .await;
    // Everything acknowledged: nothing pending on either consumer.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let a = consumer_backlog(&js, &created, "etl").await;
        let b = consumer_backlog(&js, &existing, "triggerer").await;
        if a == (0, 0) && b == (0, 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all acknowledged: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The stream the trigger created has the subjects it was given.
    let info = js
        .get_stream(&created)
        .await
        .expect("stream")
        .cached_info()
        .clone();
    assert_eq!(info.config.subjects, vec![format!("{created}.orders.*")]);
    let _ = js.delete_stream(&created).await;
    let _ = js.delete_stream(&existing).await;
}

fn definitions(dir: &std::path::Path, watchers: &str) -> std::path::PathBuf {
    common::write_file(dir, "dags.toml", watchers)
}

/// `kill -9` of the triggerer mid-stream, messages published while it is down, a restart:
/// every message becomes exactly one event, and every one is acknowledged in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_gives_every_message_exactly_once() {
    let url = nats_url();
    let js = js(&url).await;
    let stream = unique_stream("e2e-kill");
    let subject = format!("{stream}.in");
    create_stream(&js, &stream, std::slice::from_ref(&subject)).await;
    publish(
        &js,
        &subject,
        (0..2_000).map(|i| format!(r#"{{"n": {i}}}"#).into_bytes()),
    )
    .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let defs = definitions(
        dir.path(),
        &format!(
            r#"
[[asset]]
name = "kill"
[[asset.watcher]]
name = "kill-stream"
classpath = "nats.JetStreamTrigger"
kwargs = {{ url = "{url}", stream = "{stream}", ack_wait = 5, max_ack_pending = 200 }}
"#
        ),
    );
    common::sync_definitions(&db, &defs);
    let log1 = dir.path().join("run1.log");
    let events = common::Events::open(&db, log1.clone()).await;
    let mut first = common::standalone(&db, &log1);
    events.wait("before kill -9", "kill", 100, 120).await;
    first.kill(); // SIGKILL: delivered, unacknowledged messages come back after ack_wait
    let before = events.count("kill").await;
    assert!(
        before < 2_000,
        "killed mid-stream ({before} of 2000 already in)"
    );
    publish(
        &js,
        &subject,
        (2_000..2_500).map(|i| format!("text {i}").into_bytes()),
    )
    .await;
    let log2 = dir.path().join("run2.log");
    let events = common::Events::open(&db, log2.clone()).await;
    let mut second = common::standalone(&db, &log2);
    events.wait("after restart", "kill", 2_500, 300).await;
    tokio::time::sleep(Duration::from_secs(8)).await; // past ack_wait: repeats would show now
    assert_eq!(
        events.count("kill").await,
        2_500,
        "exactly one event per message"
    );
    assert_eq!(events.distinct_keys().await, 2_500);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let backlog = consumer_backlog(&js, &stream, "triggerer").await;
        if backlog == (0, 0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all acknowledged: {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    second.kill();
    eprintln!("{before} events committed before kill -9; 2500 after restart");
    let _ = js.delete_stream(&stream).await;
}

/// The server cut off (through a proxy) mid-stream: the trigger shows `failing` with a one-line
/// reason naming the server, recovers by itself once it is back, and nothing is lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cut_off_fails_the_trigger_and_it_recovers_with_nothing_lost() {
    let url = nats_url();
    let js = js(&url).await;
    let upstream = url
        .trim_start_matches("nats://")
        .trim_end_matches('/')
        .to_string();
    let proxy = common::FaultyProxy::start(&upstream);
    let proxied = format!("nats://127.0.0.1:{}", proxy.port);
    let stream = unique_stream("e2e-cut");
    let subject = format!("{stream}.in");
    create_stream(&js, &stream, std::slice::from_ref(&subject)).await;
    publish(
        &js,
        &subject,
        (0..20).map(|i| format!("before {i}").into_bytes()),
    )
    .await;

    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let defs = definitions(
        dir.path(),
        &format!(
            r#"
[[asset]]
name = "cut"
[[asset.watcher]]
name = "through-proxy"
classpath = "nats.JetStreamTrigger"
kwargs = {{ url = "{proxied}", stream = "{stream}", ack_wait = 5 }}
"#
        ),
    );
    common::sync_definitions(&db, &defs);
    let log = dir.path().join("run.log");
    let events = common::Events::open(&db, log.clone()).await;
    let _triggerer = common::standalone(&db, &log);
    events.wait("before the outage", "cut", 20, 120).await;

    proxy.outage();
    publish(
        &js,
        &subject,
        (0..20).map(|i| format!("during {i}").into_bytes()),
    )
    .await;
    let row = common::wait_for_failing(&db, Duration::from_secs(90), |t| {
        t["kwargs"]["stream"] == stream.as_str()
    })
    .await;
    let reason = row["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        !reason.is_empty() && !reason.contains('\n'),
        "a one-line reason: {row}"
    );
    assert!(
        reason.contains(&format!("127.0.0.1:{}", proxy.port)),
        "the reason names the server: {row}"
    );
    proxy.restore();
    events.wait("after the outage", "cut", 40, 180).await;
    tokio::time::sleep(Duration::from_secs(8)).await; // past ack_wait: repeats would show now
    assert_eq!(events.count("cut").await, 40, "none lost, none twice");
    assert_eq!(events.distinct_keys().await, 40);
    eprintln!("while cut off: {reason}");
    let _ = js.delete_stream(&stream).await;
}

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Bad credentials (against a second, password-protected `nats-server` the test starts) and a
/// stream that cannot be created (its subjects overlap an existing stream's) each fail their
/// own trigger, with a one-line reason that holds no password, while another watcher keeps
/// working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_an_uncreatable_stream_fail_their_trigger_alone() {
    let url = nats_url();
    let js = js(&url).await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "--user", "app", "--pass", "right-pass"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("auth-server.log")).expect("log"))
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start nats-server for the bad-credentials check ({e}): install it (Debian package `nats-server`, as scripts/services.sh `ensure_nats` does)")
        });
    let _server = common::KillOnDrop(server);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the password-protected nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let good = unique_stream("e2e-good");
    let taken = unique_stream("e2e-taken");
    let overlapping = unique_stream("e2e-overlap");
    create_stream(&js, &good, &[format!("{good}.in")]).await;
    create_stream(&js, &taken, &[format!("{taken}.>")]).await;
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let defs = definitions(
        dir.path(),
        &format!(
            r#"
[[asset]]
name = "good"
[[asset.watcher]]
name = "working"
classpath = "nats.JetStreamTrigger"
kwargs = {{ url = "{url}", stream = "{good}" }}

[[asset]]
name = "denied"
[[asset.watcher]]
name = "wrong-password"
classpath = "nats.JetStreamTrigger"
kwargs = {{ url = {{ env = "E2E_BAD_NATS_URL" }}, stream = "DENIED", subjects = ["denied.>"] }}

[[asset]]
name = "overlap"
[[asset.watcher]]
name = "cannot-create"
classpath = "nats.JetStreamTrigger"
kwargs = {{ url = "{url}", stream = "{overlapping}", subjects = ["{taken}.orders"] }}
"#
        ),
    );
    common::sync_definitions(&db, &defs);
    let log = dir.path().join("run.log");
    let events = common::Events::open(&db, log.clone()).await;
    let bad_url = format!("nats://app:wrong-pass@127.0.0.1:{port}");
    let _triggerer = common::standalone_with_env(&db, &log, &[("E2E_BAD_NATS_URL", &bad_url)]);

    let denied = common::wait_for_failing(&db, Duration::from_secs(60), |t| {
        t["kwargs"]["stream"] == "DENIED"
    })
    .await;
    let reason = denied["last_error"].as_str().unwrap_or_default();
    assert!(!reason.contains('\n'), "one line: {denied}");
    assert!(
        reason.to_lowercase().contains("authori"),
        "says the credentials were refused: {denied}"
    );
    assert!(
        !denied.to_string().contains("wrong-pass"),
        "no password shown: {denied}"
    );
    let cannot = common::wait_for_failing(&db, Duration::from_secs(60), |t| {
        t["kwargs"]["stream"] == overlapping.as_str()
    })
    .await;
    let reason = cannot["last_error"].as_str().unwrap_or_default();
    assert!(!reason.contains('\n'), "one line: {cannot}");
    eprintln!(
        "bad credentials: {}; cannot create: {reason}",
        denied["last_error"]
    );
    assert!(
        reason.contains(&overlapping) && reason.contains("overlap"),
        "names the stream and why: {cannot}"
    );

    // The other watcher works all along.
    publish(
        &js,
        &format!("{good}.in"),
        (0..10).map(|i| format!("ok {i}").into_bytes()),
    )
    .await;
    events.wait("the working watcher", "good", 10, 60).await;
    assert_eq!(events.count("denied").await, 0);
    assert_eq!(events.count("overlap").await, 0);
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!log_text.contains("wrong-pass"), "no password in the log");
    for s in [good, taken] {
        let _ = js.delete_stream(&s).await;
    }
}
