//! Redis against a real server (`scripts/services.sh` `ensure_redis`, or
//! TRIGGERER_TEST_REDIS_URL): the SDK conformance suite for lists and streams (and, for
//! pub/sub, the one check that applies: it keeps nothing, so it has nothing to acknowledge);
//! then through the binary: messages, items and entries become asset events and a run; every
//! item and entry exactly once across `kill -9`; the server cut off (through a proxy) fails the
//! triggers behind it with a one-line reason and they recover by themselves, nothing lost;
//! refused credentials and a key of the wrong type fail their trigger alone.
#![cfg(feature = "integration-redis")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::Value;
use serde_json::json;
use triggerer_provider_redis::{ListConfig, ListParams};
use triggerer_sdk::testkit::{
    check_stop_within_deadline, run_conformance, ConformanceSource, Timing,
};
use triggerer_sdk::{parse_params, EventTrigger, Provider};

/// The server of the tests; fails with how to start one when nothing listens there.
fn redis_url() -> String {
    let url = std::env::var("TRIGGERER_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let addr = host_port(&url);
    if std::net::TcpStream::connect(&addr).is_err() {
        panic!("no Redis at {addr}: run `scripts/services.sh` (ensure_redis), or set TRIGGERER_TEST_REDIS_URL");
    }
    url
}

/// `host:port` of a redis:// URL.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let hp = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hp.contains(':') {
        hp.to_string()
    } else {
        format!("{hp}:6379")
    }
}

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("redis URL")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

async fn lpush(
    conn: &mut MultiplexedConnection,
    list: &str,
    items: impl IntoIterator<Item = String>,
) {
    for item in items {
        let _: i64 = redis::cmd("LPUSH")
            .arg(list)
            .arg(item)
            .query_async(conn)
            .await
            .expect("LPUSH");
    }
}

async fn xadd(conn: &mut MultiplexedConnection, stream: &str, range: std::ops::Range<usize>) {
    for i in range {
        let _: String = redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("n")
            .arg(i)
            .arg("kind")
            .arg("order")
            .query_async(conn)
            .await
            .expect("XADD");
    }
}

async fn llen(conn: &mut MultiplexedConnection, list: &str) -> usize {
    redis::cmd("LLEN")
        .arg(list)
        .query_async(conn)
        .await
        .expect("LLEN")
}

/// The processing list a list watcher with these kwargs moves its items into.
fn processing_list(kwargs: &serde_json::Value) -> String {
    let (_, list, _) = triggerer_provider_redis::providers();
    let params: ListParams = parse_params(&list, kwargs).expect("list kwargs");
    ListConfig::from_params(&params)
        .expect("list config")
        .processing[0]
        .clone()
}

/// `(pending, last delivered id)` of `group` on `stream`, or `None` before it exists.
async fn group_state(
    conn: &mut MultiplexedConnection,
    stream: &str,
    group: &str,
) -> Option<(usize, String)> {
    let reply: Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
        .ok()?;
    let groups = match reply {
        Value::Array(groups) => groups,
        _ => return None,
    };
    for g in groups {
        let fields: Vec<(Value, Value)> = match g {
            Value::Array(items) => {
                let mut it = items.into_iter();
                std::iter::from_fn(|| Some((it.next()?, it.next()?))).collect()
            }
            Value::Map(pairs) => pairs,
            _ => continue,
        };
        let text = |v: &Value| match v {
            Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
            Value::SimpleString(s) => s.clone(),
            Value::Int(n) => n.to_string(),
            _ => String::new(),
        };
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| text(k) == name)
                .map(|(_, v)| text(v))
        };
        if get("name").as_deref() == Some(group) {
            let pending = get("pending")?.parse().ok()?;
            return Some((pending, get("last-delivered-id")?));
        }
    }
    None
}

/// Entries of `stream` the group delivered and acknowledged.
async fn stream_acknowledged(conn: &mut MultiplexedConnection, stream: &str, group: &str) -> usize {
    let Some((pending, last)) = group_state(conn, stream, group).await else {
        return 0;
    };
    if last == "0-0" {
        return 0;
    }
    let delivered: Vec<Value> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg(&last)
        .query_async(conn)
        .await
        .expect("XRANGE");
    delivered.len().saturating_sub(pending)
}

struct ListSource {
    url: String,
    conn: MultiplexedConnection,
    provider: triggerer_provider_redis::ListProvider,
    list: String,
    sent: usize,
}

impl ListSource {
    fn kwargs(&self) -> serde_json::Value {
        json!({"url": self.url, "lists": [self.list]})
    }
}

#[async_trait]
impl ConformanceSource for ListSource {
    fn name(&self) -> String {
        format!("redis list ({})", self.url)
    }

    async fn fresh(&mut self) -> Result<(), String> {
        self.list = common::unique("conformance-list");
        self.sent = 0;
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs = self.kwargs();
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        let items: Vec<String> = (self.sent..self.sent + n)
            .map(|i| format!("item {i}"))
            .collect();
        lpush(&mut self.conn, &self.list, items).await;
        self.sent += n;
        Ok(())
    }

    /// Sent − left in the list − held in the processing list.
    async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
        let left = llen(&mut self.conn, &self.list).await;
        let processing = processing_list(&self.kwargs());
        let held = llen(&mut self.conn, &processing).await;
        Ok(self.sent.saturating_sub(left + held))
    }

    fn timing(&self) -> Timing {
        Timing {
            arrival: Duration::from_secs(10),
            ack: Duration::from_secs(2),
            redelivery: Duration::ZERO,
            stop: Duration::from_secs(10),
        }
    }
}

struct StreamSource {
    url: String,
    conn: MultiplexedConnection,
    provider: triggerer_provider_redis::StreamProvider,
    stream: String,
    sent: usize,
}

#[async_trait]
impl ConformanceSource for StreamSource {
    fn name(&self) -> String {
        format!("redis stream ({})", self.url)
    }

    async fn fresh(&mut self) -> Result<(), String> {
        self.stream = common::unique("conformance-stream");
        self.sent = 0;
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs = json!({"url": self.url, "streams": [self.stream], "group": "g"});
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        xadd(&mut self.conn, &self.stream, self.sent..self.sent + n).await;
        self.sent += n;
        Ok(())
    }

    /// Entries up to the group's last delivered id, less those still pending.
    async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
        Ok(stream_acknowledged(&mut self.conn, &self.stream, "g").await)
    }

    fn ordered(&self) -> bool {
        false
    }

    fn timing(&self) -> Timing {
        Timing {
            arrival: Duration::from_secs(10),
            // Commits are acknowledged between reads, which block up to 0.5 s.
            ack: Duration::from_secs(3),
            redelivery: Duration::ZERO,
            stop: Duration::from_secs(10),
        }
    }
}

/// Pub/sub: a message published while nobody listens is gone, so `put` publishes each one
/// until a subscriber received it; nothing is ever acknowledged (there is nothing to).
struct PubSubSource {
    url: String,
    provider: triggerer_provider_redis::PubSubProvider,
    channel: String,
}

#[async_trait]
impl ConformanceSource for PubSubSource {
    fn name(&self) -> String {
        format!("redis pub/sub ({})", self.url)
    }

    async fn fresh(&mut self) -> Result<(), String> {
        self.channel = common::unique("conformance-channel");
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs = json!({"url": self.url, "channels": [self.channel]});
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        let mut conn = connect(&self.url).await;
        let channel = self.channel.clone();
        tokio::spawn(async move {
            for i in 0..n {
                let deadline = Instant::now() + Duration::from_secs(20);
                while Instant::now() < deadline {
                    let receivers: i64 = redis::cmd("PUBLISH")
                        .arg(&channel)
                        .arg(format!("message {i}"))
                        .query_async(&mut conn)
                        .await
                        .unwrap_or(0);
                    if receivers > 0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Ok(())
    }

    async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
        Ok(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_and_stream_triggers_conform() {
    let url = redis_url();
    let (_, list, stream) = triggerer_provider_redis::providers();
    let mut lists = ListSource {
        conn: connect(&url).await,
        url: url.clone(),
        provider: list,
        list: String::new(),
        sent: 0,
    };
    let mut streams = StreamSource {
        conn: connect(&url).await,
        url: url.clone(),
        provider: stream,
        stream: String::new(),
        sent: 0,
    };
    let (a, b) = tokio::join!(run_conformance(&mut lists), run_conformance(&mut streams));
    let failures: Vec<String> = [a.err(), b.err()]
        .into_iter()
        .flatten()
        .map(|f| f.to_string())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Pub/sub cannot pass the acknowledgement checks (it has nothing to acknowledge, and an
/// uncommitted message is never delivered again): only stopping within the deadline applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pubsub_trigger_stops_within_its_deadline() {
    let url = redis_url();
    let (pubsub, _, _) = triggerer_provider_redis::providers();
    let mut source = PubSubSource {
        url,
        provider: pubsub,
        channel: String::new(),
    };
    if let Err(failures) = check_stop_within_deadline(&mut source).await {
        panic!("{failures:?}");
    }
}

/// A test's database and definitions, and the binary on them.
struct Env {
    dir: tempfile::TempDir,
    db_url: String,
    cli: common::Cli,
}

impl Env {
    fn new(defs: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = format!("sqlite://{}", dir.path().join("r.db").display());
        let path = common::write_file(dir.path(), "dags.toml", defs);
        common::sync_definitions(&db_url, &path);
        let cli = common::Cli {
            db_url: db_url.clone(),
        };
        Self { dir, db_url, cli }
    }

    fn start(&self, log: &str) -> common::KillOnDrop {
        common::standalone(&self.db_url, &self.dir.path().join(log))
    }

    async fn events(&self, log: &str) -> common::Events {
        common::Events::open(&self.db_url, self.dir.path().join(log)).await
    }
}

/// Publishes `message` until a subscriber received it; then `rest` once each.
async fn publish_when_subscribed(conn: &mut MultiplexedConnection, channel: &str, rest: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(r#"{"probe": true}"#)
            .query_async(conn)
            .await
            .expect("PUBLISH");
        if receivers > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "nobody subscribed to {channel}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in rest {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(m)
            .query_async(conn)
            .await
            .expect("PUBLISH");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_items_and_entries_become_asset_events_and_a_run() {
    let url = redis_url();
    let hp = host_port(&url);
    let mut conn = connect(&url).await;
    let list = common::unique("jobs");
    let stream = common::unique("events");
    let channel = common::unique("news");
    let env = Env::new(&format!(
        r#"
[[asset]]
name = "jobs"
[[asset.watcher]]
name = "jobs-list"
classpath = "airflow.providers.redis.triggers.redis_list_await_message.AwaitMessageFromListTrigger"
kwargs = {{ url = "{url}", lists = ["{list}"] }}

[[asset]]
name = "events"
[[asset.watcher]]
name = "events-stream"
classpath = "MessageQueueTrigger"
kwargs = {{ queue = "redis+stream://{hp}/{stream}" }}

[[asset]]
name = "news"
[[asset.watcher]]
name = "news-channel"
classpath = "MessageQueueTrigger"
kwargs = {{ scheme = "redis+pubsub", url = "{url}", channels = ["{channel}"] }}

[[dag]]
dag_id = "on_jobs"
schedule = {{ assets = "jobs" }}
"#
    ));
    lpush(
        &mut conn,
        &list,
        [
            r#"{"job": 1}"#.to_string(),
            "plain text".to_string(),
            "plain text".to_string(),
        ],
    )
    .await;
    xadd(&mut conn, &stream, 0..3).await;
    let _triggerer = env.start("run.log");
    let events = env.events("run.log").await;
    events.wait("list items", "jobs", 3, 60).await;
    events.wait("stream entries", "events", 3, 60).await;
    publish_when_subscribed(&mut conn, &channel, &["hello".to_string()]).await;
    events.wait("pub/sub messages", "news", 2, 60).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let all = env
        .cli
        .json(&["assets", "events", "--limit", "0", "--json"]);
    let of = |asset: &str| -> Vec<serde_json::Value> {
        all.iter()
            .filter(|e| e["asset"] == asset)
            .map(|e| e["extra"]["payload"].clone())
            .collect()
    };
    let jobs = of("jobs");
    assert_eq!(
        jobs.len(),
        3,
        "two identical items are two events: {jobs:?}"
    );
    assert!(jobs.iter().all(|p| p["list"] == list.as_str()));
    assert!(jobs
        .iter()
        .any(|p| p["data"] == json!({"job": 1}) && p["data_encoding"] == "json"));
    assert_eq!(
        jobs.iter()
            .filter(|p| p["data"] == "plain text" && p["data_encoding"] == "text")
            .count(),
        2
    );
    let entries = of("events");
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|p| p["stream"] == stream.as_str()
        && p["fields"]["kind"] == "order"
        && p["binary_fields"] == json!([])));
    let news = of("news");
    assert_eq!(news.len(), 2, "{news:?}");
    assert!(news
        .iter()
        .any(|p| p["channel"] == channel.as_str() && p["data"] == "hello"));
    let keys: Vec<&str> = all.iter().filter_map(|e| e["dedup_key"].as_str()).collect();
    assert!(keys.iter().any(|k| k.starts_with("redis+list:")));
    assert!(keys.iter().any(|k| k.starts_with("redis+pubsub:")));
    assert!(keys
        .iter()
        .any(|k| k.starts_with(&format!("redis+stream:{hp}/0/{stream}/"))));
    assert_eq!(llen(&mut conn, &list).await, 0);
    let processing = processing_list(&json!({"url": url, "lists": [list]}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while llen(&mut conn, &processing).await > 0 {
        assert!(
            Instant::now() < deadline,
            "committed items left in {processing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The DAG on `jobs` ran, on jobs' events.
    let job_ids: BTreeSet<i64> = all
        .iter()
        .filter(|e| e["asset"] == "jobs")
        .filter_map(|e| e["id"].as_i64())
        .collect();
    common::wait_for_runs_consuming(&env.cli, "on_jobs", &job_ids, 60).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_items_and_stream_entries_exactly_once_across_kill_9() {
    const N: usize = 2_000;
    let url = redis_url();
    let mut conn = connect(&url).await;
    let list = common::unique("kill-list");
    let stream = common::unique("kill-stream");
    let env = Env::new(&format!(
        r#"
[[asset]]
name = "items"
[[asset.watcher]]
name = "items-list"
classpath = "redis.AwaitMessageFromListTrigger"
kwargs = {{ url = "{url}", lists = ["{list}"] }}

[[asset]]
name = "entries"
[[asset.watcher]]
name = "entries-stream"
classpath = "redis.StreamTrigger"
kwargs = {{ url = "{url}", streams = ["{stream}"] }}
"#
    ));
    const FIRST: usize = 300;
    const CHUNK: usize = 50;
    let item = |i: usize| format!(r#"{{"item": {i}}}"#);
    lpush(&mut conn, &list, (0..FIRST).map(item)).await;
    xadd(&mut conn, &stream, 0..FIRST).await;
    // The rest arrives while the triggerer runs, is killed and restarts.
    let producer = tokio::spawn({
        let (url, list, stream) = (url.clone(), list.clone(), stream.clone());
        async move {
            let mut conn = connect(&url).await;
            for from in (FIRST..N).step_by(CHUNK) {
                lpush(&mut conn, &list, (from..from + CHUNK).map(item)).await;
                xadd(&mut conn, &stream, from..from + CHUNK).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }
    });

    let mut first = env.start("run1.log");
    let events = env.events("run1.log").await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while events.count("items").await < 200 || events.count("entries").await < 200 {
        assert!(Instant::now() < deadline, "too slow before the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill(); // SIGKILL mid-stream: items taken and entries read, not all committed
    let before = (events.count("items").await, events.count("entries").await);
    assert!(
        before.0 < N as i64 && before.1 < N as i64,
        "the kill came too late to test anything: {before:?}"
    );
    producer.await.expect("producer");
    let _second = env.start("run2.log");
    let events = env.events("run2.log").await;
    events
        .wait("items after restart", "items", N as i64, 180)
        .await;
    events
        .wait("entries after restart", "entries", N as i64, 180)
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await; // repeats would show now

    assert_eq!(events.count("items").await, N as i64, "one event per item");
    assert_eq!(
        events.count("entries").await,
        N as i64,
        "one event per entry"
    );
    assert_eq!(events.distinct_keys().await, 2 * N as i64);
    let payloads: Vec<i64> = sqlx::query_scalar(
        "SELECT json_extract(e.extra, '$.payload.data.item') FROM asset_event e \
         JOIN asset a ON a.id = e.asset_id WHERE a.name = 'items'",
    )
    .fetch_all(&events.pool)
    .await
    .expect("items");
    let distinct: BTreeSet<&i64> = payloads.iter().collect();
    assert_eq!(distinct.len(), N, "every item, each once");
    // Acknowledged at the source: nothing left in the list, the processing list or pending.
    assert_eq!(llen(&mut conn, &list).await, 0);
    let processing = processing_list(&json!({"url": url, "lists": [list]}));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = llen(&mut conn, &processing).await;
        let pending = group_state(&mut conn, &stream, "triggerer")
            .await
            .map_or(usize::MAX, |(p, _)| p);
        if held == 0 && pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left unacknowledged: {held} held, {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("{before:?} events before kill -9; {N} + {N} after restart");
}

/// A trigger's row in `triggers list --json` by classpath.
fn by_classpath(classpath: &'static str) -> impl Fn(&serde_json::Value) -> bool {
    move |t| t["classpath"] == classpath
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_off_fails_its_triggers_with_a_reason_and_they_recover() {
    let url = redis_url();
    let mut conn = connect(&url).await;
    let proxy = common::FaultyProxy::start(&host_port(&url));
    let proxied = format!("redis://127.0.0.1:{}", proxy.port);
    let list = common::unique("cut-list");
    let stream = common::unique("cut-stream");
    let channel = common::unique("cut-channel");
    let env = Env::new(&format!(
        r#"
[[asset]]
name = "items"
[[asset.watcher]]
name = "items-list"
classpath = "redis.AwaitMessageFromListTrigger"
kwargs = {{ url = "{proxied}", lists = ["{list}"] }}

[[asset]]
name = "entries"
[[asset.watcher]]
name = "entries-stream"
classpath = "redis.StreamTrigger"
kwargs = {{ url = "{proxied}", streams = ["{stream}"] }}

[[asset]]
name = "news"
[[asset.watcher]]
name = "news-channel"
classpath = "redis.AwaitMessageTrigger"
kwargs = {{ url = "{proxied}", channels = ["{channel}"] }}
"#
    ));
    lpush(&mut conn, &list, (0..50).map(|i| format!("before {i}"))).await;
    xadd(&mut conn, &stream, 0..50).await;
    let _triggerer = env.start("run.log");
    let events = env.events("run.log").await;
    events.wait("before the outage", "items", 50, 60).await;
    events.wait("before the outage", "entries", 50, 60).await;
    publish_when_subscribed(&mut conn, &channel, &[]).await;
    events.wait("before the outage", "news", 1, 60).await;

    proxy.outage();
    lpush(&mut conn, &list, (0..50).map(|i| format!("during {i}"))).await;
    xadd(&mut conn, &stream, 50..100).await;
    for classpath in [
        "redis.AwaitMessageFromListTrigger",
        "redis.StreamTrigger",
        "redis.AwaitMessageTrigger",
    ] {
        let row = common::wait_for_failing(
            &env.db_url,
            Duration::from_secs(60),
            by_classpath(classpath),
        )
        .await;
        let reason = row["last_error"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("redis 127.0.0.1:") && !reason.contains('\n'),
            "a one-line reason naming the server: {row}"
        );
    }
    proxy.restore();
    events.wait("after the outage", "items", 100, 120).await;
    events.wait("after the outage", "entries", 100, 120).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(events.count("items").await, 100, "none lost, none twice");
    assert_eq!(events.count("entries").await, 100, "none lost, none twice");
    // Pub/sub subscribes again by itself (what was published meanwhile is gone).
    publish_when_subscribed(&mut conn, &channel, &[]).await;
    events.wait("after the outage", "news", 2, 60).await;
    assert_eq!(events.distinct_keys().await, 202);
    let rows = env.cli.json(&["triggers", "list", "--json"]);
    assert!(
        rows.iter().all(|t| t["state"] != "failing"),
        "recovered by themselves: {rows:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_a_wrong_type_fail_their_trigger_alone() {
    let url = redis_url();
    let hp = host_port(&url);
    let mut conn = connect(&url).await;
    let list = common::unique("creds-list");
    let not_a_list = common::unique("a-string");
    let _: () = redis::cmd("SET")
        .arg(&not_a_list)
        .arg("x")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let stream = common::unique("creds-stream");
    let env = Env::new(&format!(
        r#"
[[asset]]
name = "refused"
[[asset.watcher]]
name = "wrong-password"
classpath = "redis.AwaitMessageFromListTrigger"
kwargs = {{ url = "redis://nobody:hunter2secret@{hp}", lists = ["{list}"] }}

[[asset]]
name = "wrongtype"
[[asset.watcher]]
name = "string-key"
classpath = "redis.AwaitMessageFromListTrigger"
kwargs = {{ url = "{url}", lists = ["{not_a_list}"] }}

[[asset]]
name = "entries"
[[asset.watcher]]
name = "entries-stream"
classpath = "redis.StreamTrigger"
kwargs = {{ url = "{url}", streams = ["{stream}"] }}
"#
    ));
    lpush(&mut conn, &list, (0..5).map(|i| format!("item {i}"))).await;
    let _triggerer = env.start("run.log");
    let events = env.events("run.log").await;
    let refused = common::wait_for_failing(&env.db_url, Duration::from_secs(60), |t| {
        t["assets"].to_string().contains("refused")
    })
    .await;
    let reason = refused["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.to_lowercase().contains("authentication failed")
            && !reason.contains('\n')
            && !reason.contains("hunter2"),
        "a one-line reason, without the password: {refused}"
    );
    let wrongtype = common::wait_for_failing(&env.db_url, Duration::from_secs(60), |t| {
        t["assets"].to_string().contains("wrongtype")
    })
    .await;
    let reason = wrongtype["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("WRONGTYPE") && reason.contains(&not_a_list) && !reason.contains('\n'),
        "{wrongtype}"
    );
    // The other watcher keeps working meanwhile.
    xadd(&mut conn, &stream, 0..5).await;
    events.wait("the healthy watcher", "entries", 5, 60).await;
    assert_eq!(events.count("refused").await, 0);
    assert_eq!(
        llen(&mut conn, &list).await,
        5,
        "nothing taken with refused credentials"
    );
}
