//! SQS against a real endpoint (moto from `scripts/test.sh`, or TRIGGERER_TEST_SQS_ENDPOINT):
//! every message becomes exactly one asset event across `kill -9`, and is deleted only after.
#![cfg(feature = "integration")]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

fn endpoint() -> String {
    let url = std::env::var("TRIGGERER_TEST_SQS_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:15055".into());
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    if std::net::TcpStream::connect(addr).is_err() {
        panic!("no SQS endpoint at {url}: run `scripts/test.sh` (it starts moto), or set TRIGGERER_TEST_SQS_ENDPOINT");
    }
    url
}

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
    let endpoint = endpoint();
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
