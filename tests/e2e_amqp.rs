//! The AMQP provider against a real RabbitMQ (`scripts/services.sh` `ensure_rabbitmq`, or
//! TRIGGERER_TEST_AMQP_URL): the SDK conformance suite, with what the broker itself counts as
//! still queued (`rabbitmqctl list_queues messages`: ready plus unacknowledged); messages
//! through the binary become asset events with the documented payload and a DAG run; every
//! message is one event across `kill -9`; the broker cut off (through a proxy) fails only its
//! trigger, which recovers by itself; bad credentials, an unknown vhost and a missing queue
//! each fail their trigger alone. Every test uses queues of its own.
#![cfg(feature = "integration-amqp")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use serde_json::{json, Value};
use triggerer_sdk::testkit::{run_conformance, ConformanceSource, Timing};
use triggerer_sdk::{EventTrigger, Provider};

/// The broker of the tests; fails with how to start one when nothing listens there.
fn amqp_url() -> String {
    let url = std::env::var("TRIGGERER_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let addr = broker_addr(&url);
    if std::net::TcpStream::connect(&addr).is_err() {
        panic!(
            "no AMQP broker at {addr}: run `scripts/services.sh` (ensure_rabbitmq), or set \
             TRIGGERER_TEST_AMQP_URL=amqp://user:password@host:5672/%2f"
        );
    }
    url
}

/// The broker's `host:port` (5672 when the URL names no port).
fn broker_addr(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5672")
    }
}

/// A channel of the test's own, with publisher confirms.
async fn channel(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("test connection");
    let ch = conn.create_channel().await.expect("test channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    (conn, ch)
}

async fn declare(ch: &Channel, queue: &str) {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare queue");
}

async fn delete(ch: &Channel, queue: &str) {
    let _ = ch
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
}

/// Publishes `body` to `queue` (default exchange) and waits for the broker's confirm.
async fn publish(ch: &Channel, queue: &str, body: &[u8], properties: BasicProperties) {
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "the broker confirmed the message");
}

/// Messages `range` with message ids `PREFIX-i`, JSON, text and binary bodies in turn.
async fn publish_range(ch: &Channel, queue: &str, prefix: &str, range: std::ops::Range<usize>) {
    for i in range {
        let body: Vec<u8> = match i % 3 {
            0 => format!(r#"{{"n": {i}}}"#).into_bytes(),
            1 => format!("plain text {i}").into_bytes(),
            _ => vec![0xff, 0xfe, (i % 251) as u8],
        };
        let properties = BasicProperties::default()
            .with_message_id(format!("{prefix}-{i}").as_str().into())
            .with_delivery_mode(2);
        publish(ch, queue, &body, properties).await;
    }
}

/// What the broker counts as still in `queue`: ready plus unacknowledged
/// (`rabbitmqctl list_queues messages`), or `None` if rabbitmqctl cannot say.
fn queued(vhost: &str, queue: &str) -> Result<usize, String> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            vhost,
            "--no-table-headers",
            "name",
            "messages",
        ])
        .output()
        .map_err(|e| {
            format!(
                "rabbitmqctl ({e}): the conformance check reads the broker's own message counts \
                 with it; run the tests on the broker's machine (scripts/services.sh)"
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "rabbitmqctl list_queues: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        if fields.next() == Some(queue) {
            return fields
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("rabbitmqctl: no count in {line:?}"));
        }
    }
    Err(format!("rabbitmqctl: no queue {queue} in vhost {vhost}"))
}

/// The vhost of an amqp:// URL (`/` when it names none), percent-decoded.
fn vhost_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.split_once('/').map_or("", |(_, p)| p);
    let path = path.split('?').next().unwrap_or("");
    if path.is_empty() {
        "/".into()
    } else {
        path.replace("%2f", "/").replace("%2F", "/")
    }
}

/// One queue per check; acknowledged = published − what the broker still holds.
struct Rabbit {
    url: String,
    provider: triggerer_provider_amqp::AmqpProvider,
    _conn: Connection,
    channel: Channel,
    queue: String,
    sent: usize,
}

#[async_trait]
impl ConformanceSource for Rabbit {
    fn name(&self) -> String {
        format!("amqp ({})", triggerer_sdk::redact_uri(&self.url))
    }

    async fn fresh(&mut self) -> Result<(), String> {
        if !self.queue.is_empty() {
            delete(&self.channel, &self.queue).await;
        }
        self.queue = common::unique("conformance");
        declare(&self.channel, &self.queue).await;
        self.sent = 0;
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs = json!({ "url": self.url, "queue": self.queue, "prefetch": 16 });
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        for _ in 0..n {
            let id = format!("{}-{}", self.queue, self.sent);
            publish(
                &self.channel,
                &self.queue,
                format!(r#"{{"n": {}}}"#, self.sent).as_bytes(),
                BasicProperties::default().with_message_id(id.as_str().into()),
            )
            .await;
            self.sent += 1;
        }
        Ok(())
    }

    async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
        let (vhost, queue) = (vhost_of(&self.url), self.queue.clone());
        let left = tokio::task::spawn_blocking(move || queued(&vhost, &queue))
            .await
            .map_err(|e| format!("rabbitmqctl task: {e}"))??;
        Ok(self.sent.saturating_sub(left))
    }

    fn timing(&self) -> Timing {
        Timing {
            arrival: Duration::from_secs(20),
            // Acks go out as commits settle; rabbitmqctl takes about a second to answer.
            ack: Duration::from_secs(4),
            // A channel closed by a failed trigger requeues its deliveries at once.
            redelivery: Duration::ZERO,
            // The trigger waits up to 5 s for deliveries in flight when it stops.
            stop: Duration::from_secs(10),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_provider_conforms() {
    let url = amqp_url();
    let (conn, channel) = channel(&url).await;
    let mut source = Rabbit {
        url,
        provider: triggerer_provider_amqp::AmqpProvider::new(),
        _conn: conn,
        channel,
        queue: String::new(),
        sent: 0,
    };
    let result = run_conformance(&mut source).await;
    delete(&source.channel, &source.queue).await;
    if let Err(failures) = result {
        panic!("{failures}");
    }
    assert_eq!(
        source.provider.connections(),
        0,
        "the shared connection closes with its last trigger"
    );
}

/// `triggerer standalone --dags DIR` with fast heartbeats, logging to `log`.
fn standalone_with_dags(
    db_url: &str,
    dags: &Path,
    log: &Path,
    vars: &[(&str, &str)],
) -> common::KillOnDrop {
    let log = std::fs::File::create(log).expect("log file");
    common::KillOnDrop(
        std::process::Command::new(common::BIN)
            .args([
                "standalone",
                "--heartbeat-interval",
                "0.5",
                "--health-check-threshold",
                "2",
                "--dags",
            ])
            .arg(dags)
            .env("TRIGGERER_DATABASE_URL", db_url)
            .envs(vars.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start triggerer standalone"),
    )
}

fn cli(db_url: &str) -> common::Cli {
    common::Cli {
        db_url: db_url.to_string(),
    }
}

/// Messages through the binary: the documented payload (JSON, text and binary bodies,
/// headers, routing, `message_id`, `timestamp`), a `{ env = … }` URL, a `MessageQueueTrigger`
/// URI, and a DAG run that consumes the events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_asset_events_with_the_documented_payload_and_a_run() {
    let url = amqp_url();
    let (_conn, ch) = channel(&url).await;
    let orders = common::unique("orders");
    let refunds = common::unique("refunds");
    declare(&ch, &orders).await;
    declare(&ch, &refunds).await;
    let mut headers = FieldTable::default();
    headers.insert("tenant".into(), AMQPValue::LongString("acme".into()));
    headers.insert("attempt".into(), AMQPValue::LongInt(2));
    headers.insert(
        "trace".into(),
        AMQPValue::LongString(LongString::from(vec![0xffu8, 0x00])),
    );
    publish(
        &ch,
        &orders,
        br#"{"order": 1}"#,
        BasicProperties::default()
            .with_message_id("order-1".into())
            .with_timestamp(1_700_000_000)
            .with_content_type("application/json".into())
            .with_correlation_id("c-1".into())
            .with_headers(headers),
    )
    .await;
    publish(
        &ch,
        &orders,
        b"plain text",
        BasicProperties::default().with_message_id("order-2".into()),
    )
    .await;
    publish(
        &ch,
        &orders,
        &[0xde, 0xad, 0xbe, 0xef],
        BasicProperties::default().with_message_id("order-3".into()),
    )
    .await;
    // No message_id: an event all the same, keyed by its delivery.
    publish(&ch, &orders, b"anonymous", BasicProperties::default()).await;
    for i in 0..5 {
        publish(
            &ch,
            &refunds,
            format!(r#"{{"refund": {i}}}"#).as_bytes(),
            BasicProperties::default().with_message_id(format!("refund-{i}").as_str().into()),
        )
        .await;
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let dags = dir.path().join("dags");
    std::fs::create_dir_all(&dags).expect("dags dir");
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    // `amqp://user:pass@host:port/VHOST/QUEUE`: the vhost of the test URL, then the queue.
    let base = url.split('?').next().unwrap_or(&url).trim_end_matches('/');
    let base = if base.matches('/').count() >= 3 {
        base.to_string()
    } else {
        format!("{base}/%2f")
    };
    let queue_uri = format!("{base}/{refunds}");
    common::write_file(
        &dags,
        "amqp.toml",
        &format!(
            r#"
[[asset]]
name = "orders"
[[asset.watcher]]
name = "orders-queue"
classpath = "amqp.AwaitMessageTrigger"
kwargs = {{ url = {{ env = "TEST_AMQP_URL" }}, queue = "{orders}", prefetch = 10 }}

[[asset]]
name = "refunds"
[[asset.watcher]]
name = "refunds-by-uri"
classpath = "MessageQueueTrigger"
kwargs = {{ queue = "{queue_uri}" }}

[[dag]]
dag_id = "ship"
schedule = {{ assets = "orders" }}
max_active_runs = 100
"#
        ),
    );
    let log = dir.path().join("run.log");
    let _triggerer = standalone_with_dags(&db, &dags, &log, &[("TEST_AMQP_URL", &url)]);
    // The database is created by the process: wait for it before opening a pool on it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("a.db").exists() {
        assert!(Instant::now() < deadline, "the database was never created");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = common::Events::open(&db, log).await;
    events.wait("orders", "orders", 4, 120).await;
    events.wait("refunds", "refunds", 5, 120).await;

    let cli = cli(&db);
    let listed = cli.json(&[
        "assets", "events", "--asset", "orders", "--limit", "0", "--json",
    ]);
    assert_eq!(listed.len(), 4, "{listed:?}");
    let by_id = |id: &str| -> Value {
        listed
            .iter()
            .find(|e| e["extra"]["payload"]["message_id"] == id)
            .unwrap_or_else(|| panic!("no event for {id}: {listed:?}"))["extra"]["payload"]
            .clone()
    };
    let first = by_id("order-1");
    assert_eq!(first["body"], json!({"order": 1}));
    assert_eq!(first["body_encoding"], "json");
    assert_eq!(first["queue"], orders.as_str());
    assert_eq!(first["exchange"], "");
    assert_eq!(first["routing_key"], orders.as_str());
    assert_eq!(first["redelivered"], false);
    assert_eq!(first["timestamp"], 1_700_000_000);
    assert_eq!(first["content_type"], "application/json");
    assert_eq!(first["correlation_id"], "c-1");
    assert_eq!(first["headers"]["tenant"], "acme");
    assert_eq!(first["headers"]["attempt"], 2);
    assert_eq!(first["headers"]["trace"], "/wA=");
    let text = by_id("order-2");
    assert_eq!(
        (text["body"].clone(), text["body_encoding"].clone()),
        (json!("plain text"), json!("text"))
    );
    assert_eq!(text["timestamp"], Value::Null);
    let binary = by_id("order-3");
    assert_eq!(
        (binary["body"].clone(), binary["body_encoding"].clone()),
        (json!("3q2+7w=="), json!("base64"))
    );
    let keys: BTreeSet<String> = listed
        .iter()
        .filter_map(|e| e["dedup_key"].as_str().map(str::to_string))
        .collect();
    let vhost = triggerer_sdk_encode(&vhost_of(&url));
    assert!(
        keys.contains(&format!("amqp:{vhost}/{orders}/id:order-1")),
        "{keys:?}"
    );
    assert!(
        keys.iter()
            .any(|k| k.starts_with(&format!("amqp:{vhost}/{orders}/delivery:"))),
        "the message without an id is keyed by its delivery: {keys:?}"
    );
    let anonymous = listed
        .iter()
        .find(|e| e["extra"]["payload"]["message_id"].is_null())
        .expect("the anonymous message");
    assert_eq!(anonymous["extra"]["payload"]["body"], "anonymous");

    // The DAG runs on the orders.
    let deadline = Instant::now() + Duration::from_secs(60);
    let runs = loop {
        let runs = cli.json(&["runs", "list", "--dag", "ship", "--limit", "0", "--json"]);
        let consumed: usize = runs
            .iter()
            .map(|r| r["consumed_events"].as_array().map_or(0, Vec::len))
            .sum();
        if consumed >= 4 {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "no run consumed the orders: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(
        runs.iter().all(|r| r["run_type"] == "asset_triggered"),
        "{runs:?}"
    );
    common::assert_consumed_once(&listed, &runs, "orders");

    // Everything committed was acknowledged: the broker holds nothing of either queue.
    let deadline = Instant::now() + Duration::from_secs(10);
    for queue in [&orders, &refunds] {
        loop {
            let left = queued(&vhost_of(&url), queue).expect("rabbitmqctl");
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{left} messages of {queue} not acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    delete(&ch, &orders).await;
    delete(&ch, &refunds).await;
}

/// The dedup key's encoding of a vhost (`/` → `%2F`).
fn triggerer_sdk_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'/' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn definitions(dir: &Path, watchers: &[(&str, String)]) -> std::path::PathBuf {
    let mut text = String::new();
    for (asset, kwargs) in watchers {
        text.push_str(&format!(
            "[[asset]]\nname = \"{asset}\"\n[[asset.watcher]]\nname = \"{asset}-queue\"\n\
             classpath = \"amqp.AwaitMessageTrigger\"\nkwargs = {kwargs}\n\n"
        ));
    }
    common::write_file(dir, "dags.toml", &text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_thousand_messages_with_kill_9_become_exactly_three_thousand_events() {
    let url = amqp_url();
    let (_conn, ch) = channel(&url).await;
    let queue = common::unique("kill9");
    declare(&ch, &queue).await;
    publish_range(&ch, &queue, &queue, 0..2_000).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("k.db").display());
    let defs = definitions(
        dir.path(),
        &[(
            "orders",
            format!(r#"{{ url = "{url}", queue = "{queue}" }}"#),
        )],
    );
    common::sync_definitions(&db, &defs);
    let events = common::Events::open(&db, dir.path().join("run2.log")).await;
    let mut first = common::standalone(&db, &dir.path().join("run1.log"));
    events.wait("before kill -9", "orders", 400, 120).await;
    first.kill(); // SIGKILL mid-stream: the unacknowledged deliveries are requeued
    let at_kill = events.count("orders").await;
    assert!(
        at_kill < 2_000,
        "killed mid-stream ({at_kill} of 2000 already)"
    );
    publish_range(&ch, &queue, &queue, 2_000..3_000).await;
    let _second = common::standalone(&db, &dir.path().join("run2.log"));
    events.wait("after restart", "orders", 3_000, 300).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // repeats would show now
    assert_eq!(
        events.count("orders").await,
        3_000,
        "exactly one event per message"
    );
    assert_eq!(events.distinct_keys().await, 3_000);
    let redelivered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM asset_event WHERE json_extract(extra, '$.payload.redelivered')",
    )
    .fetch_one(&events.pool)
    .await
    .expect("redelivered");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = queued(&vhost_of(&url), &queue).expect("rabbitmqctl");
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} messages not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eprintln!(
        "{at_kill} events before kill -9; 3000 after restart, {redelivered} of them from redeliveries"
    );
    delete(&ch, &queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_cut_off_fails_the_trigger_which_recovers_by_itself_losing_nothing() {
    let url = amqp_url();
    let (_conn, ch) = channel(&url).await;
    let proxy = common::FaultyProxy::start(&broker_addr(&url));
    let proxied = proxy.url_through(&url);
    let cut = common::unique("cut");
    let direct = common::unique("direct");
    declare(&ch, &cut).await;
    declare(&ch, &direct).await;
    publish_range(&ch, &cut, &cut, 0..200).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("p.db").display());
    let defs = definitions(
        dir.path(),
        &[
            (
                "cut",
                format!(r#"{{ url = "{proxied}", queue = "{cut}" }}"#),
            ),
            (
                "direct",
                format!(r#"{{ url = "{url}", queue = "{direct}" }}"#),
            ),
        ],
    );
    common::sync_definitions(&db, &defs);
    let log = dir.path().join("run.log");
    let _triggerer = common::standalone(&db, &log);
    let events = common::Events::open(&db, log).await;
    events.wait("before the outage", "cut", 200, 120).await;

    proxy.outage();
    publish_range(&ch, &cut, &cut, 200..300).await;
    let failing = common::wait_for_failing(&db, Duration::from_secs(60), |t| {
        t["kwargs"]["queue"] == cut.as_str()
    })
    .await;
    let error = failing["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        !error.is_empty() && !error.contains('\n'),
        "one line: {error:?}"
    );
    assert!(
        error.contains(&format!("127.0.0.1:{}", proxy.port)) && error.contains(&cut),
        "the error names the broker and the queue: {error}"
    );
    // The other watcher, on its own connection, is not touched.
    publish_range(&ch, &direct, &direct, 0..20).await;
    events
        .wait("the direct queue during the outage", "direct", 20, 60)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();

    publish_range(&ch, &cut, &cut, 300..400).await;
    events.wait("after the outage", "cut", 400, 180).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(events.count("cut").await, 400, "none lost, none twice");
    assert_eq!(events.count("direct").await, 20);
    assert_eq!(events.distinct_keys().await, 420);
    eprintln!("outage shown as: {error}");
    delete(&ch, &cut).await;
    delete(&ch, &direct).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_unknown_vhost_and_missing_queue_each_fail_alone() {
    let url = amqp_url();
    let (_conn, ch) = channel(&url).await;
    let good = common::unique("good");
    let creds = common::unique("creds");
    let vhost = common::unique("vhost");
    let missing = common::unique("missing");
    declare(&ch, &good).await;
    declare(&ch, &creds).await;
    declare(&ch, &vhost).await;
    let addr = broker_addr(&url);
    let wrong_password = format!("amqp://guest:wrong-secret-pw@{addr}/%2f");
    let user = url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .map_or("guest:guest".to_string(), |(userinfo, _)| {
            userinfo.to_string()
        });
    let unknown_vhost = format!("amqp://{user}@{addr}/no-such-vhost-{}", std::process::id());

    let dir = tempfile::tempdir().expect("temp dir");
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    let defs = definitions(
        dir.path(),
        &[
            ("good", format!(r#"{{ url = "{url}", queue = "{good}" }}"#)),
            (
                "creds",
                format!(r#"{{ url = "{wrong_password}", queue = "{creds}" }}"#),
            ),
            (
                "vhost",
                format!(r#"{{ url = "{unknown_vhost}", queue = "{vhost}" }}"#),
            ),
            (
                "missing",
                format!(r#"{{ url = "{url}", queue = "{missing}" }}"#),
            ),
        ],
    );
    common::sync_definitions(&db, &defs);
    let log = dir.path().join("run.log");
    let _triggerer = common::standalone(&db, &log);
    let events = common::Events::open(&db, log.clone()).await;
    let failing = |queue: String| {
        common::wait_for_failing(&db, Duration::from_secs(60), move |t| {
            t["kwargs"]["queue"] == queue.as_str()
        })
    };
    let mut reasons = Vec::new();
    for (queue, expect) in [
        (&creds, "ACCESS_REFUSED"),
        (&vhost, "NOT_ALLOWED"),
        (&missing, "does not exist"),
    ] {
        let row = failing(queue.clone()).await;
        let error = row["last_error"].as_str().unwrap_or_default().to_string();
        assert!(!error.contains('\n'), "one line: {error:?}");
        assert!(
            error.contains(expect),
            "{queue}: expected {expect:?} in {error}"
        );
        assert!(
            !error.contains("wrong-secret-pw"),
            "the password is never shown: {error}"
        );
        reasons.push(error);
    }
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logged.contains("wrong-secret-pw"),
        "the password is never logged"
    );
    // The good watcher works meanwhile.
    publish_range(&ch, &good, &good, 0..10).await;
    events.wait("the good queue", "good", 10, 60).await;
    // The missing queue appears: its watcher recovers on its own (restart with backoff).
    declare(&ch, &missing).await;
    publish_range(&ch, &missing, &missing, 0..5).await;
    events
        .wait("the queue once declared", "missing", 5, 120)
        .await;
    assert_eq!(events.count("creds").await, 0);
    assert_eq!(events.count("vhost").await, 0);
    for reason in &reasons {
        eprintln!("failing: {reason}");
    }
    for queue in [&good, &creds, &vhost, &missing] {
        delete(&ch, queue).await;
    }
}

/// Watchers of one URL share one connection (a channel each); another URL has its own; the
/// connections close with their last trigger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_of_one_url_share_one_connection() {
    let url = amqp_url();
    let (_conn, ch) = channel(&url).await;
    // The same broker under another URL: a connection of its own.
    let other_url = format!("{}?heartbeat=30", url.split('?').next().unwrap_or(&url));
    let provider = triggerer_provider_amqp::AmqpProvider::new();
    let mut runs = Vec::new();
    let mut queues = Vec::new();
    for i in 0..6 {
        let queue = common::unique(&format!("shared{i}"));
        declare(&ch, &queue).await;
        let url = if i == 5 { &other_url } else { &url };
        let kwargs = json!({ "url": url, "queue": queue });
        runs.push(triggerer_sdk::testkit::TestRun::start(
            provider.build(&kwargs).expect("build"),
            HashMap::new(),
            16,
        ));
        queues.push(queue);
    }
    for queue in &queues {
        publish_range(&ch, queue, queue, 0..1).await;
    }
    for (run, queue) in runs.iter_mut().zip(&queues) {
        let event = run
            .commit_next(Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("no event from {queue}"));
        assert_eq!(event.payload["queue"], queue.as_str());
    }
    assert_eq!(provider.connections(), 2, "one per URL, for 6 watchers");
    for run in runs {
        run.stop().await.expect("clean stop");
    }
    assert_eq!(provider.connections(), 0, "closed with their last trigger");
    for queue in &queues {
        delete(&ch, queue).await;
    }
}
