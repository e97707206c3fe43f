//! The MQTT provider against a real Mosquitto: the machine's (`scripts/services.sh`
//! `ensure_mosquitto`, or TRIGGERER_TEST_MQTT_URL), and private ones the tests start on free
//! ports when they need a setting of their own (`$SYS` every second, passwords). Every message
//! becomes one asset event and a run; a `kill -9` mid-stream and a broker cut off mid-stream
//! lose and repeat nothing; bad credentials fail their trigger alone.
#![cfg(feature = "integration-mqtt")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, SubscribeFilter};
use serde_json::json;
use triggerer_sdk::testkit::{run_conformance, ConformanceSource, Timing};
use triggerer_sdk::{EventTrigger, Provider};

/// The shared broker: `host`, `port`. Fails with how to start one when nothing listens there.
fn shared_broker() -> (String, u16) {
    let url =
        std::env::var("TRIGGERER_TEST_MQTT_URL").unwrap_or_else(|_| "mqtt://127.0.0.1:1883".into());
    let broker = triggerer_provider_mqtt::parse_url(&url)
        .unwrap_or_else(|e| panic!("TRIGGERER_TEST_MQTT_URL={url}: {e}"));
    if std::net::TcpStream::connect((broker.host.as_str(), broker.port)).is_err() {
        panic!(
            "no MQTT broker at {url}: run `scripts/test.sh` (it starts Mosquitto), or set \
             TRIGGERER_TEST_MQTT_URL=mqtt://host:port"
        );
    }
    (broker.host, broker.port)
}

/// A client id no other run uses, within MQTT 3.1.1's 23 characters.
fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    format!("{prefix}{mixed:x}").chars().take(23).collect()
}

/// Polls `eventloop` until `done` says so; panics on an error or after 30 s.
async fn poll_until(
    eventloop: &mut rumqttc::EventLoop,
    what: &str,
    mut done: impl FnMut(&Event) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, eventloop.poll()).await {
            Ok(Ok(event)) => {
                if done(&event) {
                    return;
                }
            }
            Ok(Err(e)) => panic!("{what}: {e}"),
            Err(_) => panic!("{what}: timed out"),
        }
    }
}

/// Says goodbye and waits for the DISCONNECT to go out.
async fn disconnect(client: AsyncClient, mut eventloop: rumqttc::EventLoop) {
    client.disconnect().await.expect("disconnect");
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Makes the persistent session of `client_id` with `topics` subscribed, then leaves it, so
/// that the broker keeps what is published from now on for the trigger that will use it.
async fn create_session(
    (host, port): (&str, u16),
    client_id: &str,
    topics: &[&str],
    credentials: Option<(&str, &str)>,
) {
    create_session_at(
        (host, port),
        client_id,
        topics,
        credentials,
        QoS::AtLeastOnce,
    )
    .await;
}

/// [`create_session`] subscribed at `qos`.
async fn create_session_at(
    (host, port): (&str, u16),
    client_id: &str,
    topics: &[&str],
    credentials: Option<(&str, &str)>,
    qos: QoS,
) {
    let mut options = MqttOptions::new(client_id, host, port);
    options.set_clean_session(false);
    if let Some((u, p)) = credentials {
        options.set_credentials(u, p);
    }
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client
        .subscribe_many(
            topics
                .iter()
                .map(|t| SubscribeFilter::new(t.to_string(), qos)),
        )
        .await
        .expect("subscribe");
    poll_until(&mut eventloop, "create the session", |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
    disconnect(client, eventloop).await;
}

/// Publishes every payload to `topic` at QoS 1 and waits for the broker's PUBACKs.
async fn publish(
    addr: (&str, u16),
    topic: &str,
    payloads: Vec<Vec<u8>>,
    credentials: Option<(&str, &str)>,
) {
    publish_at(addr, topic, payloads, credentials, QoS::AtLeastOnce).await;
}

/// Publishes every payload to `topic` at `qos` (1 or 2) and waits for the broker to confirm
/// each (PUBACK, or PUBCOMP at QoS 2).
async fn publish_at(
    (host, port): (&str, u16),
    topic: &str,
    payloads: Vec<Vec<u8>>,
    credentials: Option<(&str, &str)>,
    qos: QoS,
) {
    let mut options = MqttOptions::new(unique_id("pub"), host, port);
    if let Some((u, p)) = credentials {
        options.set_credentials(u, p);
    }
    let n = payloads.len();
    let (client, mut eventloop) = AsyncClient::new(options, n + 10);
    for p in payloads {
        client.publish(topic, qos, false, p).await.expect("publish");
    }
    let mut acked = 0;
    poll_until(&mut eventloop, "publish", |e| {
        if matches!(
            e,
            Event::Incoming(Packet::PubAck(_)) | Event::Incoming(Packet::PubComp(_))
        ) {
            acked += 1;
        }
        acked >= n
    })
    .await;
    disconnect(client, eventloop).await;
}

/// `{"n": i}` for even `i`, `text i` for odd ones: distinct payloads, JSON and text.
fn payloads(range: std::ops::Range<usize>) -> Vec<Vec<u8>> {
    range
        .map(|i| {
            if i % 2 == 0 {
                format!(r#"{{"n": {i}}}"#).into_bytes()
            } else {
                format!("text {i}").into_bytes()
            }
        })
        .collect()
}

/// A Mosquitto of the test's own on a free port, with `extra` configuration.
struct Mosquitto {
    port: u16,
    _process: common::KillOnDrop,
    dir: tempfile::TempDir,
}

impl Mosquitto {
    fn start(extra: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                // `user root`: started as root, mosquitto would otherwise drop to its own user,
                // which cannot read the test's private files.
                "listener {port} 127.0.0.1\npersistence false\nuser root\n{}\n",
                extra(dir.path())
            ),
        )
        .expect("config");
        let process = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `mosquitto` ({e}): run `scripts/test.sh`, which installs it")
            });
        let mut process = common::KillOnDrop(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = process.0.try_wait() {
                panic!("mosquitto exited ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            port,
            _process: process,
            dir,
        }
    }

    fn addr(&self) -> (&'static str, u16) {
        ("127.0.0.1", self.port)
    }
}

/// The conformance suite on a private Mosquitto that logs every packet. What counts as
/// acknowledged is what the broker itself says it received: its log's `Received PUBACK from
/// CLIENT` lines for the check's session (a fresh client id per check). The session is made
/// before anything is published, so no message depends on how fast the trigger subscribes.
/// (Mosquitto's `$SYS/broker/store/messages/count` was tried first: it does not drop when an
/// in-flight message is acknowledged, so it cannot tell.)
struct Mqtt {
    broker: Mosquitto,
    provider: triggerer_provider_mqtt::MqttProvider,
    topic: String,
    client_id: String,
    sent: usize,
    /// 1 or 2: subscribed and published at it.
    qos: QoS,
}

impl Mqtt {
    fn new(qos: QoS) -> Self {
        Self {
            broker: Mosquitto::start(|dir| {
                format!(
                    "allow_anonymous true\nlog_type all\nlog_dest file {}",
                    dir.join("mosquitto.log").display()
                )
            }),
            provider: triggerer_provider_mqtt::MqttProvider::new(),
            topic: String::new(),
            client_id: String::new(),
            sent: 0,
            qos,
        }
    }

    /// The acknowledgements the broker logged as received from the current session's client
    /// id: PUBACKs at QoS 1, PUBRECs (the first answer of QoS 2's exchange) at QoS 2.
    fn pubacks(&self) -> Result<usize, String> {
        let log = std::fs::read_to_string(self.broker.dir.path().join("mosquitto.log"))
            .map_err(|e| format!("the broker's log: {e}"))?;
        let packet = if self.qos == QoS::ExactlyOnce {
            "PUBREC"
        } else {
            "PUBACK"
        };
        let needle = format!("Received {packet} from {} ", self.client_id);
        Ok(log.lines().filter(|l| l.contains(&needle)).count())
    }
}

#[async_trait]
impl ConformanceSource for Mqtt {
    fn name(&self) -> String {
        format!("mqtt (127.0.0.1:{})", self.broker.port)
    }

    async fn fresh(&mut self) -> Result<(), String> {
        self.topic = common::unique("conformance");
        self.client_id = unique_id("conf");
        self.sent = 0;
        create_session_at(
            self.broker.addr(),
            &self.client_id,
            &[&self.topic],
            None,
            self.qos,
        )
        .await;
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs = json!({
            "url": format!("mqtt://127.0.0.1:{}", self.broker.port),
            "topics": [self.topic],
            "client_id": self.client_id,
            "qos": self.qos as u8,
        });
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        publish_at(
            self.broker.addr(),
            &self.topic,
            payloads(self.sent..self.sent + n),
            None,
            self.qos,
        )
        .await;
        self.sent += n;
        Ok(())
    }

    async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
        self.pubacks()
    }

    /// PUBACKs go out in arrival order.
    fn ordered(&self) -> bool {
        true
    }

    fn timing(&self) -> Timing {
        Timing {
            arrival: Duration::from_secs(20),
            ack: Duration::from_secs(3),
            redelivery: Duration::ZERO,
            stop: Duration::from_secs(10),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_provider_conforms() {
    let mut source = Mqtt::new(QoS::AtLeastOnce);
    if let Err(failures) = run_conformance(&mut source).await {
        panic!("{failures}");
    }
}

/// QoS 2: the PUBREC that ends the broker's redeliveries is held until the commit, as the
/// PUBACK is at QoS 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_provider_conforms_at_qos_2() {
    let mut source = Mqtt::new(QoS::ExactlyOnce);
    if let Err(failures) = run_conformance(&mut source).await {
        panic!("{failures}");
    }
}

/// `triggerer standalone --dags DIR`, heartbeating as [`common::standalone`] does.
fn standalone(db_url: &str, dags: &Path, log: &Path, vars: &[(&str, &str)]) -> common::KillOnDrop {
    let log = std::fs::File::create(log).expect("log file");
    common::KillOnDrop(
        Command::new(common::BIN)
            .arg("standalone")
            .arg("--dags")
            .arg(dags)
            .args([
                "--heartbeat-interval",
                "0.5",
                "--health-check-threshold",
                "2",
            ])
            .env("TRIGGERER_DATABASE_URL", db_url)
            .env("RUST_LOG", "info,sqlx=warn")
            .envs(vars.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start triggerer standalone"),
    )
}

/// The payloads stored for `asset`, as `(value, value_encoding)` in JSON text.
async fn stored_values(pool: &sqlx::SqlitePool, asset: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT json_extract(e.extra, '$.payload.value'), json_extract(e.extra, '$.payload.value_encoding') \
         FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ? ORDER BY e.id",
    )
    .bind(asset)
    .fetch_all(pool)
    .await
    .expect("values")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_asset_events_with_the_documented_payload_and_runs() {
    let broker = shared_broker();
    let addr = (broker.0.as_str(), broker.1);
    let base = common::unique("e2e");
    let client_id = unique_id("e2e");
    let url = format!("mqtt://{}:{}", addr.0, addr.1);
    // The URI form: `mqtt://host:port/FILTER`, with the derived client id.
    let queue_filter = format!("{base}/uri/#");
    let derived = triggerer_provider_mqtt::derived_client_id(
        &triggerer_provider_mqtt::parse_url(&url).expect("url"),
        std::slice::from_ref(&queue_filter),
        1,
    );
    create_session(addr, &client_id, &[&format!("{base}/+/temperature")], None).await;
    create_session(addr, &derived, &[&queue_filter], None).await;

    let ws = common::Workspace::sqlite();
    let dags = ws.dir.path().join("dags");
    std::fs::create_dir_all(&dags).expect("dags dir");
    common::write_file(
        &dags,
        "mqtt.toml",
        &format!(
            r#"
[[asset]]
name = "temperatures"
[[asset.watcher]]
name = "sensors"
classpath = "mqtt.AwaitMessageTrigger"
kwargs = {{ url = "{url}", topics = ["{base}/+/temperature"], client_id = "{client_id}" }}

[[asset]]
name = "by-uri"
[[asset.watcher]]
name = "uri"
classpath = "MessageQueueTrigger"
kwargs = {{ queue = "{url}/{queue_filter}" }}

[[dag]]
dag_id = "on_temperature"
schedule = {{ assets = "temperatures" }}
max_active_runs = 100000
"#
        ),
    );
    publish(
        addr,
        &format!("{base}/kitchen/temperature"),
        vec![br#"{"c": 21.5}"#.to_vec()],
        None,
    )
    .await;
    publish(
        addr,
        &format!("{base}/attic/temperature"),
        vec![b"hot".to_vec(), vec![0xff, 0xfe]],
        None,
    )
    .await;
    // Not matched by the filter (two levels).
    publish(
        addr,
        &format!("{base}/a/b/temperature"),
        vec![b"no".to_vec()],
        None,
    )
    .await;
    publish(addr, &format!("{base}/uri/x/y"), payloads(0..3), None).await;

    let log = ws.dir.path().join("run.log");
    ws.ok(&["dags", "sync", dags.to_str().expect("utf-8 path")]);
    let _triggerer = standalone(&ws.db_url, &dags, &log, &[]);
    let events = common::Events::open(&ws.db_url, log).await;
    events.wait("temperatures", "temperatures", 3, 60).await;
    events.wait("by-uri", "by-uri", 3, 60).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        events.count("temperatures").await,
        3,
        "the unmatched topic is not an event"
    );

    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT json_extract(e.extra, '$.payload') FROM asset_event e JOIN asset a ON a.id = e.asset_id \
         WHERE a.name = 'temperatures' ORDER BY e.id",
    )
    .fetch_all(&events.pool)
    .await
    .expect("payloads");
    let payloads: Vec<serde_json::Value> = rows
        .iter()
        .map(|(p,)| serde_json::from_str(p).expect("json"))
        .collect();
    let kitchen = payloads
        .iter()
        .find(|p| p["topic"] == format!("{base}/kitchen/temperature"))
        .expect("the kitchen message");
    assert_eq!(kitchen["value"], json!({"c": 21.5}));
    assert_eq!(kitchen["value_encoding"], "json");
    assert_eq!(kitchen["qos"], 1);
    assert_eq!(kitchen["retain"], false);
    assert_eq!(kitchen["dup"], false);
    assert!(
        kitchen["packet_id"].as_u64().is_some_and(|id| id > 0),
        "{kitchen}"
    );
    let encodings: BTreeSet<String> = payloads
        .iter()
        .map(|p| p["value_encoding"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        encodings,
        BTreeSet::from(["base64".into(), "json".into(), "text".into()])
    );
    assert!(payloads.iter().any(|p| p["value"] == "hot"));
    assert!(payloads.iter().any(|p| p["value"] == "//4="));
    let keys: Vec<(String,)> = sqlx::query_as("SELECT dedup_key FROM asset_event")
        .fetch_all(&events.pool)
        .await
        .expect("keys");
    let session = format!("mqtt:{}:{}/{client_id}/", addr.0, addr.1);
    assert_eq!(
        keys.iter().filter(|(k,)| k.starts_with(&session)).count(),
        3,
        "{keys:?}"
    );
    let uri_session = format!("mqtt:{}:{}/{derived}/", addr.0, addr.1);
    assert_eq!(
        keys.iter()
            .filter(|(k,)| k.starts_with(&uri_session))
            .count(),
        3,
        "{keys:?}"
    );

    // The scheduler (standalone runs it) makes a run per event of the scheduled asset.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = ws.json(&["runs", "list", "--dag", "on_temperature", "--json"]);
        let consumed: usize = runs
            .iter()
            .map(|r| r["consumed_events"].as_array().map_or(0, Vec::len))
            .sum();
        if consumed >= 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no runs for the MQTT events: {runs:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let triggers = ws.json(&["triggers", "list", "--json"]);
    assert!(
        triggers
            .iter()
            .filter(|t| t["classpath"] == "mqtt.AwaitMessageTrigger")
            .count()
            >= 2,
        "both watchers run as mqtt triggers: {triggers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_and_repeats_nothing() {
    let broker = shared_broker();
    let addr = (broker.0.as_str(), broker.1);
    let topic = common::unique("kill9");
    let client_id = unique_id("kill");
    create_session(addr, &client_id, &[&topic], None).await;
    // Mosquitto queues up to 1000 messages for an absent session (`max_queued_messages`):
    // fewer are published while the triggerer is dead.
    publish(addr, &topic, payloads(0..300), None).await;

    let ws = common::Workspace::sqlite();
    let dags = ws.dir.path().join("dags");
    std::fs::create_dir_all(&dags).expect("dags dir");
    common::write_file(
        &dags,
        "mqtt.toml",
        &format!(
            r#"
[[asset]]
name = "stream"
[[asset.watcher]]
name = "topic"
classpath = "mqtt.AwaitMessageTrigger"
kwargs = {{ url = "mqtt://{}:{}", topics = ["{topic}"], client_id = "{client_id}" }}
"#,
            addr.0, addr.1
        ),
    );
    let log1 = ws.dir.path().join("run1.log");
    ws.ok(&["dags", "sync", dags.to_str().expect("utf-8 path")]);
    let mut first = standalone(&ws.db_url, &dags, &log1, &[]);
    let events = common::Events::open(&ws.db_url, log1).await;
    events.wait("the queued ones", "stream", 300, 60).await;
    // A publisher still at work when the triggerer dies: 10 messages every 75 ms.
    let producing = tokio::spawn({
        let (host, port, topic) = (addr.0.to_string(), addr.1, topic.clone());
        async move {
            for from in (300..700).step_by(10) {
                publish((&host, port), &topic, payloads(from..from + 10), None).await;
                tokio::time::sleep(Duration::from_millis(75)).await;
            }
        }
    });
    events.wait("mid-stream", "stream", 350, 60).await;
    first.kill(); // SIGKILL: events committed and not yet acknowledged come again
    let at_kill = events.count("stream").await;
    assert!(
        !producing.is_finished(),
        "the kill must land mid-stream ({at_kill} events then)"
    );
    producing.await.expect("publisher");
    publish(addr, &topic, payloads(700..800), None).await;
    let log2 = ws.dir.path().join("run2.log");
    let _second = standalone(&ws.db_url, &dags, &log2, &[]);
    let events = common::Events::open(&ws.db_url, log2).await;
    events.wait("after the restart", "stream", 800, 120).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // repeats would show now
    assert_eq!(
        events.count("stream").await,
        800,
        "every message exactly once"
    );
    assert_eq!(events.distinct_keys().await, 800);
    let values: BTreeSet<(String, String)> = stored_values(&events.pool, "stream")
        .await
        .into_iter()
        .collect();
    assert_eq!(values.len(), 800, "800 distinct payloads");
    let dups: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM asset_event WHERE json_extract(extra, '$.payload.dup') = 1",
    )
    .fetch_one(&events.pool)
    .await
    .expect("dups");
    eprintln!(
        "{at_kill} events when the triggerer was killed; 800 after the restart, {dups} of them \
         from redeliveries (dup) of messages not committed before the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_cut_off_mid_stream_shows_failing_and_recovers_losing_nothing() {
    let broker = shared_broker();
    let addr = (broker.0.as_str(), broker.1);
    let proxy = common::FaultyProxy::start(&format!("{}:{}", addr.0, addr.1));
    let topic = common::unique("outage");
    let client_id = unique_id("cut");
    create_session(addr, &client_id, &[&topic], None).await;
    publish(addr, &topic, payloads(0..200), None).await;

    let ws = common::Workspace::sqlite();
    let dags = ws.dir.path().join("dags");
    std::fs::create_dir_all(&dags).expect("dags dir");
    common::write_file(
        &dags,
        "mqtt.toml",
        &format!(
            r#"
[[asset]]
name = "stream"
[[asset.watcher]]
name = "topic"
classpath = "mqtt.AwaitMessageTrigger"
kwargs = {{ url = "mqtt://127.0.0.1:{}", topics = ["{topic}"], client_id = "{client_id}" }}
"#,
            proxy.port
        ),
    );
    let log = ws.dir.path().join("run.log");
    ws.ok(&["dags", "sync", dags.to_str().expect("utf-8 path")]);
    let _triggerer = standalone(&ws.db_url, &dags, &log, &[]);
    let events = common::Events::open(&ws.db_url, log).await;
    events.wait("before the outage", "stream", 200, 60).await;

    proxy.outage();
    let row = common::wait_for_failing(&ws.db_url, Duration::from_secs(60), |t| {
        t["classpath"] == "mqtt.AwaitMessageTrigger"
    })
    .await;
    let error = row["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains(&format!("127.0.0.1:{}", proxy.port)) && !error.contains('\n'),
        "a one-line reason naming the broker: {error:?}"
    );
    // Published while the trigger cannot reach the broker: kept for its session.
    publish(addr, &topic, payloads(200..400), None).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
    events.wait("after the outage", "stream", 400, 120).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events.count("stream").await, 400, "none lost, none twice");
    assert_eq!(events.distinct_keys().await, 400);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let triggers = ws.json(&["triggers", "list", "--json"]);
        let t = triggers
            .iter()
            .find(|t| t["classpath"] == "mqtt.AwaitMessageTrigger")
            .expect("the trigger");
        if t["state"] != "failing" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still failing after recovery: {t}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("outage seen in `triggers list`: {error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_their_trigger_alone() {
    let passwd = Command::new("mosquitto_passwd")
        .arg("-h")
        .output()
        .map(|_| ())
        .map_err(|e| e.to_string());
    passwd.unwrap_or_else(|e| panic!("`mosquitto_passwd` is needed ({e}): install mosquitto"));
    let broker = Mosquitto::start(|dir| {
        let file = dir.join("passwd");
        let out = Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&file)
            .args(["watcher", "s3cret-pw"])
            .output()
            .expect("mosquitto_passwd");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        format!("allow_anonymous false\npassword_file {}", file.display())
    });
    let addr = broker.addr();
    let creds = Some(("watcher", "s3cret-pw"));
    let good_topic = common::unique("good");
    let good_id = unique_id("good");
    create_session(addr, &good_id, &[&good_topic], creds).await;

    let ws = common::Workspace::sqlite();
    let dags = ws.dir.path().join("dags");
    std::fs::create_dir_all(&dags).expect("dags dir");
    common::write_file(
        &dags,
        "mqtt.toml",
        &format!(
            r#"
[[asset]]
name = "good"
[[asset.watcher]]
name = "right-password"
classpath = "mqtt.AwaitMessageTrigger"
kwargs = {{ url = {{ env = "MQTT_GOOD_URL" }}, topics = ["{good_topic}"], client_id = "{good_id}" }}

[[asset]]
name = "bad"
[[asset.watcher]]
name = "wrong-password"
classpath = "mqtt.AwaitMessageTrigger"
kwargs = {{ url = "mqtt://watcher:wrong-pw@127.0.0.1:{port}", topics = ["bad/#"] }}
"#,
            port = addr.1
        ),
    );
    let good_url = format!("mqtt://watcher:s3cret-pw@127.0.0.1:{}", addr.1);
    let log = ws.dir.path().join("run.log");
    ws.ok(&["dags", "sync", dags.to_str().expect("utf-8 path")]);
    let _triggerer = standalone(&ws.db_url, &dags, &log, &[("MQTT_GOOD_URL", &good_url)]);
    let row = common::wait_for_failing(&ws.db_url, Duration::from_secs(60), |t| {
        t["kwargs"]["topics"] == json!(["bad/#"])
    })
    .await;
    let error = row["last_error"].as_str().unwrap_or_default().to_string();
    assert!(
        (error.contains("bad user name or password") || error.contains("not authorized"))
            && error.contains("the broker refused the connection")
            && !error.contains('\n'),
        "a one-line reason: {error:?}"
    );
    assert!(
        !error.contains("wrong-pw"),
        "the password is never shown: {error}"
    );
    // The other watcher is not touched.
    publish(addr, &good_topic, payloads(0..20), creds).await;
    let events = common::Events::open(&ws.db_url, log.clone()).await;
    events.wait("the good watcher", "good", 20, 60).await;
    let triggers = ws.json(&["triggers", "list", "--json"]);
    let good = triggers
        .iter()
        .find(|t| t["kwargs"]["client_id"] == good_id)
        .expect("the good trigger");
    assert_ne!(good["state"], "failing", "{good}");
    let shown = serde_json::to_string(&triggers).expect("json");
    assert!(
        !shown.contains("wrong-pw") && !shown.contains("s3cret-pw"),
        "{shown}"
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !logged.contains("wrong-pw") && !logged.contains("s3cret-pw"),
        "the log shows a password"
    );
    eprintln!("bad credentials: {error}");
}
