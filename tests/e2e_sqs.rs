//! SQS against a real endpoint (moto from `scripts/test.sh`, or TRIGGERER_TEST_SQS_ENDPOINT):
//! every message becomes exactly one asset event across `kill -9`, and is deleted only after.
#![cfg(feature = "integration-sqs")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

async fn client(endpoint: &str) -> aws_sdk_sqs::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .load()
        .await;
    aws_sdk_sqs::Client::new(&conf)
}

async fn queue_with(client: &aws_sdk_sqs::Client, name: &str, messages: usize) -> String {
    let url = client
        .create_queue()
        .queue_name(name)
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("url");
    for chunk in (0..messages).collect::<Vec<_>>().chunks(10) {
        let entries = chunk
            .iter()
            .map(|i| {
                let body = if i % 2 == 0 {
                    format!(r#"{{"order": {i}}}"#)
                } else {
                    format!("order {i}")
                };
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(body)
                    .build()
                    .expect("entry")
            })
            .collect();
        let out = client
            .send_message_batch()
            .queue_url(&url)
            .set_entries(Some(entries))
            .send()
            .await
            .expect("send");
        assert!(out.failed.is_empty());
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_messages_with_kill_9_become_exactly_two_thousand_events() {
    let endpoint = common::sqs_endpoint();
    let sqs = client(&endpoint).await;
    let tag = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    let orders = queue_with(&sqs, &format!("orders-{tag}"), 2_000).await;
    let refunds = queue_with(&sqs, &format!("refunds-{tag}"), 100).await;

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let defs = common::write_file(
        dir.path(),
        "dags.toml",
        &format!(
            r#"
[[asset]]
name = "orders"
[[asset.watcher]]
name = "orders-queue"
classpath = "airflow.providers.amazon.aws.triggers.sqs.SqsSensorTrigger"
kwargs = {{ sqs_queue = "{orders}", endpoint_url = "{endpoint}", region_name = "us-east-1", visibility_timeout = 10 }}

[[asset]]
name = "refunds"
[[asset.watcher]]
name = "refunds-queue"
classpath = "MessageQueueTrigger"
kwargs = {{ scheme = "sqs", sqs_queue = "{refunds}", endpoint_url = "{endpoint}", region_name = "us-east-1", visibility_timeout = 10 }}
"#
        ),
    );
    common::sync_definitions(&url, &defs);
    let start = |log: &str| common::standalone(&url, &dir.path().join(log));
    let pool = sqlx::SqlitePool::connect(&url).await.expect("read pool");
    let count = |asset: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = $1")
                .bind(asset)
                .fetch_one(&pool)
                .await
                .expect("count")
        }
    };
    let wait_for = |asset: &'static str, n: i64, secs: u64| async move {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let c = count(asset).await;
            if c >= n {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "timed out at {c} of {n} {asset} events"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let mut first = start("run1.log");
    let before_kill = wait_for("orders", 500, 300).await;
    first.kill(); // SIGKILL: received, uncommitted messages come back after their visibility timeout
    let mut second = start("run2.log");
    wait_for("orders", 2_000, 600).await;
    wait_for("refunds", 100, 300).await;
    tokio::time::sleep(Duration::from_secs(12)).await; // past a visibility timeout: repeats would show now
    second.kill();

    assert_eq!(
        count("orders").await,
        2_000,
        "exactly one event per message"
    );
    assert_eq!(
        count("refunds").await,
        100,
        "MessageQueueTrigger scheme = \"sqs\" works"
    );
    let keys: BTreeSet<String> = sqlx::query_scalar("SELECT dedup_key FROM asset_event")
        .fetch_all(&pool)
        .await
        .expect("keys")
        .into_iter()
        .collect();
    assert_eq!(keys.len(), 2_100);
    assert!(keys.iter().all(|k| k.starts_with("sqs:")));
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&orders)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(
            aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
        )
        .send()
        .await
        .expect("attributes");
    let left: i64 = attrs
        .attributes()
        .map(|a| a.values().filter_map(|v| v.parse::<i64>().ok()).sum())
        .unwrap_or(-1);
    assert_eq!(left, 0, "every committed message was deleted");
    eprintln!("{before_kill} events committed before kill -9; 2000 + 100 after restart");
}

async fn send(client: &aws_sdk_sqs::Client, queue: &str, bodies: impl IntoIterator<Item = String>) {
    for body in bodies {
        client
            .send_message()
            .queue_url(queue)
            .message_body(body)
            .message_attributes(
                "raw",
                aws_sdk_sqs::types::MessageAttributeValue::builder()
                    .data_type("Binary")
                    .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0xff, 0x00, 0xfe]))
                    .build()
                    .expect("attribute"),
            )
            .send()
            .await
            .expect("send");
    }
}

/// A queue that does not exist yet fails only its watcher, with the reason in `triggers list`,
/// and recovers without a restart once it is created; an endpoint cut off (through a proxy)
/// fails only the watchers behind it, and they catch up when it is back. Bodies that are big
/// or not JSON, and binary attributes, are stored as they came. None lost, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_queue_and_endpoint_outage_fail_alone_and_recover() {
    let endpoint = common::sqs_endpoint();
    let sqs = client(&endpoint).await;
    let proxy = common::FaultyProxy::start(&common::host_port(&endpoint));
    let proxied = format!("http://127.0.0.1:{}", proxy.port);
    let tag = common::unique("q");
    let behind_proxy = queue_with(&sqs, &format!("proxied-{tag}"), 40).await;
    let big = "x".repeat(200_000);
    send(
        &sqs,
        &behind_proxy,
        [
            big.clone(),
            r#"{"broken": "#.to_string(),
            String::new() + " ",
        ],
    )
    .await;
    // The URL the queue will have once it exists (moto's account id).
    let later_name = format!("later-{tag}");
    let later = behind_proxy.replace(&format!("proxied-{tag}"), &later_name);

    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("s.db").display());
    let defs = common::write_file(
        dir.path(),
        "dags.toml",
        &format!(
            r#"
[[asset]]
name = "proxied"
[[asset.watcher]]
name = "through-proxy"
classpath = "sqs.SqsSensorTrigger"
kwargs = {{ sqs_queue = "{behind_proxy}", endpoint_url = "{proxied}", region_name = "us-east-1", wait_time_seconds = 1, visibility_timeout = 10 }}

[[asset]]
name = "later"
[[asset.watcher]]
name = "not-yet-created"
classpath = "sqs.SqsSensorTrigger"
kwargs = {{ sqs_queue = "{later}", endpoint_url = "{endpoint}", region_name = "us-east-1", wait_time_seconds = 1, visibility_timeout = 10 }}
"#
        ),
    );
    common::sync_definitions(&url, &defs);
    let log = dir.path().join("run.log");
    let _triggerer = common::standalone(&url, &log);
    let events = common::Events::open(&url, log).await;
    let pool = &events.pool;
    let failing = |queue: String| {
        common::wait_for_failing(&url, Duration::from_secs(60), move |t| {
            t["kwargs"]["sqs_queue"] == queue.as_str()
        })
    };

    events.wait("proxied", "proxied", 43, 120).await;
    let missing = failing(later.clone()).await;
    assert_eq!(missing["state"], "failing", "{missing}");
    assert!(
        missing["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(&later_name)),
        "the error names the queue: {missing}"
    );
    let stored: Vec<(String, String)> = sqlx::query_as(
        "SELECT json_extract(extra, '$.payload.body'), \
         json_extract(extra, '$.payload.message_attributes.raw.binary_value') \
         FROM asset_event WHERE length(json_extract(extra, '$.payload.body')) >= 100000 \
         OR json_extract(extra, '$.payload.body') = '{\"broken\": '",
    )
    .fetch_all(pool)
    .await
    .expect("poison rows");
    assert_eq!(
        stored.len(),
        2,
        "the 200 kB body and the broken JSON are events"
    );
    assert!(stored.iter().any(|(body, _)| body == &big));
    assert!(
        stored.iter().all(|(_, raw)| raw == "/wD+"),
        "binary attribute kept"
    );

    // The queue appears: the failing watcher recovers on its own.
    let created = sqs
        .create_queue()
        .queue_name(&later_name)
        .send()
        .await
        .expect("create queue")
        .queue_url
        .expect("url");
    assert_eq!(created, later);
    send(&sqs, &later, (0..10).map(|i| format!("later {i}"))).await;
    events.wait("later", "later", 10, 120).await;

    // The proxied endpoint goes away: only its watcher fails; the other goes on.
    proxy.outage();
    send(
        &sqs,
        &behind_proxy,
        (0..20).map(|i| format!("during outage {i}")),
    )
    .await;
    let cut = failing(behind_proxy.clone()).await;
    assert_eq!(cut["state"], "failing", "{cut}");
    send(&sqs, &later, (10..15).map(|i| format!("later {i}"))).await;
    events.wait("later", "later", 15, 60).await;
    proxy.restore();
    events.wait("proxied", "proxied", 63, 180).await;
    tokio::time::sleep(Duration::from_secs(12)).await; // past a visibility timeout: repeats show
    assert_eq!(events.count("proxied").await, 63, "none lost, none twice");
    assert_eq!(events.count("later").await, 15, "none lost, none twice");
    assert_eq!(events.distinct_keys().await, 78);
    eprintln!(
        "missing queue: {}; endpoint cut: {}",
        missing["last_error"], cut["last_error"]
    );
}
