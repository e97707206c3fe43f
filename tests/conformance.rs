//! The SDK's provider conformance suite (`triggerer_sdk::testkit::run_conformance`) against
//! real servers: the Kafka provider on a broker (tansu from `scripts/test.sh`, or
//! TRIGGERER_TEST_KAFKA), the SQS provider on an endpoint (moto, or
//! TRIGGERER_TEST_SQS_ENDPOINT). Each source says what it counts as acknowledged from the
//! server itself: the group's committed offset, the messages left in the queue. The file
//! provider runs the same suite in its unit tests.
#![cfg(all(feature = "integration-kafka", feature = "integration-sqs"))]

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use triggerer_sdk::testkit::{run_conformance, ConformanceSource, Timing};
use triggerer_sdk::{EventTrigger, Provider};

/// One single-partition topic and one consumer group per check: a single partition makes the
/// source ordered, so the suite also checks that offsets are stored in order only.
struct Kafka {
    addr: String,
    provider: triggerer_provider_kafka::KafkaProvider,
    producer: FutureProducer,
    topic: String,
    group: String,
    /// Reads the group's committed offsets without joining it.
    offsets: Option<Arc<BaseConsumer>>,
}

impl Kafka {
    fn new(addr: String) -> Result<Self, String> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &addr)
            .set("linger.ms", "5")
            .create()
            .map_err(|e| format!("producer: {e}"))?;
        Ok(Self {
            addr,
            provider: triggerer_provider_kafka::KafkaProvider::new(),
            producer,
            topic: String::new(),
            group: String::new(),
            offsets: None,
        })
    }
}

#[async_trait]
impl ConformanceSource for Kafka {
    fn name(&self) -> String {
        format!("kafka ({})", self.addr)
    }

    async fn fresh(&mut self) -> Result<(), String> {
        self.topic = common::unique("conformance");
        self.group = common::unique("conformance-g");
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .map_err(|e| format!("admin client: {e}"))?;
        let results = admin
            .create_topics(
                &[NewTopic::new(&self.topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .map_err(|e| format!("create topic {}: {e}", self.topic))?;
        for r in results {
            r.map_err(|(topic, e)| format!("create topic {topic}: {e}"))?;
        }
        let offsets: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| format!("offset reader: {e}"))?;
        self.offsets = Some(Arc::new(offsets));
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs = json!({
            "topics": [self.topic],
            "bootstrap_servers": self.addr,
            "group_id": self.group,
            // Stored offsets show as committed soon, so the suite's windows stay short.
            "kafka_config": {
                "auto.commit.interval.ms": 100,
                "session.timeout.ms": 6000,
                "max.poll.interval.ms": 10000,
            },
        });
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        for i in 0..n {
            let payload = format!(r#"{{"n": {i}}}"#);
            let record = FutureRecord::to(&self.topic)
                .partition(0)
                .key("k")
                .payload(&payload);
            self.producer
                .send(record, Duration::from_secs(30))
                .await
                .map_err(|(e, _)| format!("produce to {}: {e}", self.topic))?;
        }
        Ok(())
    }

    /// The group's committed offset of the one partition: offsets start at 0, so it counts the
    /// messages acknowledged.
    async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
        let consumer = self.offsets.clone().ok_or("no fresh source yet")?;
        let topic = self.topic.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, 0);
            consumer.committed_offsets(tpl, Duration::from_secs(10))
        })
        .await
        .map_err(|e| format!("offset reader task: {e}"))?
        .map_err(|e| format!("committed offsets: {e}"))?;
        let offset = committed
            .elements()
            .first()
            .map(|e| e.offset())
            .unwrap_or(Offset::Invalid);
        match offset {
            Offset::Offset(n) => usize::try_from(n).map_err(|_| format!("offset {n}")),
            _ => Ok(0),
        }
    }

    fn ordered(&self) -> bool {
        true
    }

    fn timing(&self) -> Timing {
        Timing {
            // A consumer joining (or, after a failure, rejoining) its group.
            arrival: Duration::from_secs(60),
            ack: Duration::from_secs(3),
            redelivery: Duration::ZERO,
            stop: Duration::from_secs(10),
        }
    }
}

/// One queue per check; acknowledged = sent − left (visible or in flight).
struct Sqs {
    endpoint: String,
    client: aws_sdk_sqs::Client,
    provider: triggerer_provider_sqs::SqsProvider,
    queue_url: String,
    sent: usize,
}

#[async_trait]
impl ConformanceSource for Sqs {
    fn name(&self) -> String {
        format!("sqs ({})", self.endpoint)
    }

    async fn fresh(&mut self) -> Result<(), String> {
        let name = common::unique("conformance");
        self.queue_url = self
            .client
            .create_queue()
            .queue_name(&name)
            .send()
            .await
            .map_err(|e| format!("create queue {name}: {e}"))?
            .queue_url
            .ok_or_else(|| format!("no URL for queue {name}"))?;
        self.sent = 0;
        Ok(())
    }

    fn trigger(&mut self) -> Result<Box<dyn EventTrigger>, String> {
        let kwargs = json!({
            "sqs_queue": self.queue_url,
            "endpoint_url": self.endpoint,
            "region_name": "us-east-1",
            // The shortest allowed: a refused message is back this long after its receive.
            "visibility_timeout": 10,
            "wait_time_seconds": 1,
        });
        self.provider.validate(&kwargs).map_err(|e| e.to_string())?;
        self.provider.build(&kwargs).map_err(|e| e.to_string())
    }

    async fn put(&mut self, n: usize) -> Result<(), String> {
        for _ in 0..n {
            self.client
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(format!("message {}", self.sent))
                .send()
                .await
                .map_err(|e| format!("send to {}: {e}", self.queue_url))?;
            self.sent += 1;
        }
        Ok(())
    }

    async fn acknowledged(&mut self, _: &HashMap<String, String>) -> Result<usize, String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|e| format!("queue attributes of {}: {e}", self.queue_url))?;
        let mut left = 0usize;
        for (name, value) in out.attributes.unwrap_or_default() {
            let n: usize = value
                .parse()
                .map_err(|_| format!("attribute {name:?} is not a count: {value}"))?;
            left += n;
        }
        Ok(self.sent.saturating_sub(left))
    }

    fn timing(&self) -> Timing {
        Timing {
            arrival: Duration::from_secs(20),
            // Deletes go out in batches of ten or on the trigger's one-second tick.
            ack: Duration::from_secs(3),
            // The visibility timeout, from the refused receive on.
            redelivery: Duration::from_secs(15),
            stop: Duration::from_secs(10),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kafka_provider_conforms() {
    let mut source = Kafka::new(common::kafka_broker()).unwrap_or_else(|e| panic!("{e}"));
    if let Err(failures) = run_conformance(&mut source).await {
        panic!("{failures}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqs_provider_conforms() {
    let endpoint = common::sqs_endpoint();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let mut source = Sqs {
        endpoint,
        client: aws_sdk_sqs::Client::new(&conf),
        provider: triggerer_provider_sqs::SqsProvider::new(),
        queue_url: String::new(),
        sent: 0,
    };
    if let Err(failures) = run_conformance(&mut source).await {
        panic!("{failures}");
    }
}
