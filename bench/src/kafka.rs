//! Kafka figures: throughput (a backlog of messages → committed asset events and queue rows,
//! with the group-commit batch size it settles at) and latency (produced → committed at a fixed
//! rate, and committed → asset-triggered run queued). The broker is the test broker
//! (`scripts/services.sh` starts tansu); its own read rate is measured first, so a figure
//! limited by the broker says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use tokio::sync::Notify;
use triggerer::definitions::load_str;
use triggerer::scheduler::{self, SchedulerOptions};
use triggerer::store::Store;
use triggerer::triggerer::TriggererOptions;
use triggerer_sdk::CancellationToken;

use crate::{percentile, progress, Args, Engine, FreshDb};

/// Fails early, naming the broker, when nothing listens there.
pub fn check_broker(addr: &str) -> Result<()> {
    std::net::TcpStream::connect(addr).with_context(|| {
        format!("no Kafka broker at {addr}: run `scripts/bench.sh` (it starts tansu) or pass --kafka host:port")
    })?;
    Ok(())
}

async fn create_topic(addr: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .create()?;
    for result in admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        result.map_err(|(topic, e)| anyhow::anyhow!("cannot create topic {topic}: {e}"))?;
    }
    Ok(())
}

fn producer(addr: &str, linger_ms: u32) -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("linger.ms", linger_ms.to_string())
        .create()?)
}

/// Produces `count` small JSON messages over `partitions` as fast as the broker takes them.
async fn produce_backlog(addr: &str, topic: &str, partitions: i32, count: usize) -> Result<()> {
    let producer = producer(addr, 5)?;
    let mut sends = Vec::with_capacity(1_000);
    for i in 0..count {
        let producer = producer.clone();
        let topic = topic.to_string();
        sends.push(async move {
            let key = format!("k{i}");
            let value = format!(r#"{{"order": {i}, "amount": 42.5}}"#);
            let record = FutureRecord::to(&topic)
                .partition(i as i32 % partitions)
                .key(&key)
                .payload(&value);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if sends.len() == 1_000 {
            for r in futures::future::join_all(sends.drain(..)).await {
                r.context("produce")?;
            }
            progress(&format!("  produced {}/{count}", i + 1));
        }
    }
    for r in futures::future::join_all(sends).await {
        r.context("produce")?;
    }
    Ok(())
}

/// How fast a bare librdkafka consumer reads `count` messages: the ceiling the broker sets.
async fn broker_read_rate(addr: &str, topic: &str, count: usize) -> Result<f64> {
    let consumer = baseline_consumer(addr, topic, 500)?;
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    for read in 0..count {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .with_context(|| {
                format!("the baseline consumer read only {read} of {count} messages in 60 s")
            })??;
        drop(message);
        first.get_or_insert_with(Instant::now);
        if read % 10_000 == 0 {
            progress(&format!("  broker baseline: {read}/{count}"));
        }
    }
    let from = first.unwrap_or(started);
    Ok(count as f64 / from.elapsed().as_secs_f64())
}

/// When a bare librdkafka consumer received each of `count` timed messages (µs since the epoch,
/// by `seq`): the floor the broker and client set under the triggerer's latency.
async fn broker_receive_times(
    consumer: StreamConsumer,
    count: usize,
) -> Result<std::collections::HashMap<i64, (i64, i64)>> {
    let mut received = std::collections::HashMap::with_capacity(count);
    while received.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("the baseline consumer got nothing for 60 s")??;
        let received_us = Utc::now().timestamp_micros();
        let timed = message
            .payload()
            .and_then(|v| serde_json::from_slice::<serde_json::Value>(v).ok())
            .and_then(|v| Some((v["seq"].as_i64()?, v["sent_us"].as_i64()?)));
        if let Some((seq, sent_us)) = timed {
            received.insert(seq, (sent_us, received_us));
        }
    }
    Ok(received)
}

fn baseline_consumer(addr: &str, topic: &str, fetch_wait_ms: u32) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", addr)
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("group.id", format!("{topic}-baseline"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

/// One asset watching `topic` and one DAG scheduled on it (so every event also writes a queue row).
fn definitions(addr: &str, topic: &str, group: &str, fetch_wait_ms: u32) -> String {
    format!(
        r#"
[[asset]]
name = "stream"
[[asset.watcher]]
name = "stream-topic"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["{topic}"], bootstrap_servers = "{addr}", group_id = "{group}", kafka_config = {{ "fetch.wait.max.ms" = {fetch_wait_ms} }} }}

[[dag]]
dag_id = "on_stream"
schedule = {{ assets = "stream" }}
max_active_runs = 1000000
"#
    )
}

/// A triggerer (and optionally a scheduler) running in this process on `db`.
struct Running {
    shutdown: CancellationToken,
    committed: Arc<Notify>,
    tasks: Vec<tokio::task::JoinHandle<Result<(), triggerer::store::StoreError>>>,
}

impl Running {
    async fn start(store: &Store, text: &str, with_scheduler: bool) -> Result<Self> {
        let registry = triggerer::registry::builtin_providers();
        let plan = load_str("kafka.toml", text, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
        store.apply_definitions(&plan).await?;
        let shutdown = CancellationToken::new();
        let committed = Arc::new(Notify::new());
        let mut tasks = vec![tokio::spawn(triggerer::triggerer::run(
            store.clone(),
            registry,
            TriggererOptions::default(),
            shutdown.clone(),
            committed.clone(),
            // No executor here: no task defers.
            std::sync::Arc::new(tokio::sync::Notify::new()),
        ))];
        if with_scheduler {
            tasks.push(tokio::spawn(scheduler::run(
                store.clone(),
                SchedulerOptions::default(),
                shutdown.clone(),
                committed.clone(),
                // No executor here: nothing waits for scheduled task instances.
                std::sync::Arc::new(tokio::sync::Notify::new()),
            )));
        }
        Ok(Self {
            shutdown,
            committed,
            tasks,
        })
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}

/// Waits until `store` holds `count` asset events, drawing progress; `None` after `limit`.
/// Polls the newest event id (an index lookup) rather than `count(*)`, whose cost grows with
/// the table and which, every 20 ms, took a PostgreSQL backend's worth of CPU from the writer.
/// Ids are dense here: a fresh database and no duplicate deliveries.
async fn wait_for_events(store: &Store, count: usize, limit: Duration) -> Result<Option<Instant>> {
    let deadline = Instant::now() + limit;
    loop {
        let newest = store
            .list_events(None, 1)
            .await?
            .first()
            .map_or(0, |e| e.id);
        progress(&format!("  committed {newest}/{count}"));
        if newest as usize >= count {
            return Ok(Some(Instant::now()));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn bench_throughput(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let addr = &args.kafka;
    let topic = format!("bench-throughput-{}-{name}", std::process::id());
    let count = args.messages;
    create_topic(addr, &topic, args.partitions).await?;
    progress(&format!("{name}: producing {count} messages"));
    let produced = Instant::now();
    produce_backlog(addr, &topic, args.partitions, count).await?;
    let produce_rate = count as f64 / produced.elapsed().as_secs_f64();
    let baseline = broker_read_rate(addr, &topic, count).await?;

    let db = FreshDb::create(engine, &args.postgres_url, "throughput").await?;
    let started = Instant::now();
    let running = Running::start(
        &db.store,
        &definitions(addr, &topic, &format!("{topic}-triggerer"), 500),
        false,
    )
    .await?;
    let first = wait_for_events(&db.store, 1, Duration::from_secs(60))
        .await?
        .context("no event committed within 60 s of start")?;
    let last = wait_for_events(&db.store, count, Duration::from_secs(600))
        .await?
        .with_context(|| format!("not all {count} messages were committed within 600 s"))?;
    running.stop().await?;
    progress("");

    let events = db.store.list_events(None, 0).await?;
    let distinct: std::collections::HashSet<_> =
        events.iter().filter_map(|e| e.dedup_key.as_ref()).collect();
    anyhow::ensure!(
        events.len() == count && distinct.len() == count,
        "{} events ({} distinct) for {count} messages",
        events.len(),
        distinct.len()
    );
    // The writer stamps every event of a batch with the batch's time: equal stamps = one batch.
    let mut batches: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for e in &events {
        *batches.entry(e.timestamp).or_default() += 1;
    }
    let mut sizes: Vec<f64> = batches.values().map(|&n| n as f64).collect();
    sizes.sort_by(f64::total_cmp);
    let steady = (count - 1) as f64 / (last - first).as_secs_f64();
    println!(
        "{name}: kafka throughput: {count} messages ({} partitions) → {count} asset events + queue rows: \
         {steady:.0} events/s after the first commit ({:.0}/s including start-up {:.2} s); \
         {} batches, size median {:.0}, p90 {:.0}, max {:.0}; broker baseline: produced {produce_rate:.0}/s, \
         bare consumer read {baseline:.0}/s",
        args.partitions,
        count as f64 / (last - started).as_secs_f64(),
        (first - started).as_secs_f64(),
        sizes.len(),
        percentile(&sizes, 0.5),
        percentile(&sizes, 0.9),
        percentile(&sizes, 1.0),
    );
    db.remove().await
}

/// Produces `total` messages at `rate` per second, each carrying its send time (µs).
async fn produce_at_rate(addr: &str, topic: &str, rate: u32, total: usize) -> Result<()> {
    let producer = producer(addr, 0)?;
    let period = Duration::from_secs(1) / rate;
    let start = tokio::time::Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(start + period * i as u32).await;
        let sent_us = Utc::now().timestamp_micros();
        let producer = producer.clone();
        let topic = topic.to_string();
        sends.spawn(async move {
            let value = format!(r#"{{"seq": {i}, "sent_us": {sent_us}}}"#);
            let key = format!("k{i}");
            let record = FutureRecord::to(&topic).key(&key).payload(&value);
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(e, _)| e)
        });
        if i % 1_000 == 0 {
            progress(&format!("  produced {i}/{total} at {rate}/s"));
        }
    }
    while let Some(r) = sends.join_next().await {
        r?.context("produce")?;
    }
    Ok(())
}

/// Records when each commit became visible: (time, highest event id then). The next wake-up is
/// armed before the read, so a commit during the read is not missed.
async fn observe_commits(
    store: Store,
    committed: Arc<Notify>,
    stop: CancellationToken,
) -> Vec<(DateTime<Utc>, i64)> {
    let mut seen = Vec::new();
    let mut last = 0;
    loop {
        let wake = committed.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let at = Utc::now();
        if let Ok(newest) = store.list_events(None, 1).await {
            if let Some(e) = newest.first().filter(|e| e.id > last) {
                last = e.id;
                seen.push((at, last));
            }
        }
        tokio::select! {
            _ = wake => {}
            _ = stop.cancelled() => return seen,
        }
    }
}

pub async fn bench_latency(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let addr = &args.kafka;
    let topic = format!("bench-latency-{}-{name}", std::process::id());
    create_topic(addr, &topic, 1).await?;
    let db = FreshDb::create(engine, &args.postgres_url, "latency").await?;
    let running = Running::start(
        &db.store,
        &definitions(
            addr,
            &topic,
            &format!("{topic}-triggerer"),
            args.fetch_wait_ms,
        ),
        true,
    )
    .await?;
    // A first message, so the consumer has joined its group before the clock starts.
    let warm_up = producer(addr, 0)?;
    warm_up
        .send(
            FutureRecord::to(&topic).key("warm-up").payload("{}"),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    wait_for_events(&db.store, 1, Duration::from_secs(60))
        .await?
        .context("the warm-up message was not committed within 60 s")?;
    let total = args.rate as usize * args.latency_seconds as usize;
    let baseline = tokio::spawn(broker_receive_times(
        baseline_consumer(addr, &topic, args.fetch_wait_ms)?,
        total,
    ));
    let stop = CancellationToken::new();
    let observer = tokio::spawn(observe_commits(
        db.store.clone(),
        running.committed.clone(),
        stop.clone(),
    ));
    // Both consumers have joined their groups before the first timed message.
    tokio::time::sleep(Duration::from_secs(3)).await;
    progress(&format!("{name}: producing at {}/s", args.rate));
    produce_at_rate(addr, &topic, args.rate, total).await?;
    wait_for_events(&db.store, total + 1, Duration::from_secs(120))
        .await?
        .with_context(|| format!("not all {total} messages were committed within 120 s"))?;
    // Let the scheduler queue the run that consumes the last events.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let commits = observer.await?;
    let baseline = baseline.await??;
    running.stop().await?;
    progress("");

    let events = db.store.list_events(None, 0).await?;
    let commit_of = |id: i64| -> Option<DateTime<Utc>> {
        let i = commits.partition_point(|&(_, max)| max < id);
        commits.get(i).map(|&(at, _)| at)
    };
    let mut produce_to_commit = Vec::new();
    let mut added = Vec::new();
    let mut committed_at = std::collections::HashMap::new();
    for e in &events {
        let value = &e.extra["payload"]["value"];
        let (Some(seq), Some(sent_us)) = (value["seq"].as_i64(), value["sent_us"].as_i64()) else {
            continue; // the warm-up message
        };
        let at = commit_of(e.id).with_context(|| format!("no commit seen for event {}", e.id))?;
        committed_at.insert(e.id, at);
        produce_to_commit.push((at.timestamp_micros() - sent_us) as f64 / 1e3);
        // What the triggerer adds over a bare consumer of the same message: broker stalls,
        // which both see, cancel out.
        if let Some((_, bare_received_us)) = baseline.get(&seq) {
            added.push((at.timestamp_micros() - bare_received_us) as f64 / 1e3);
        }
    }
    // From the event's batch time (taken just before its transaction, so this over-states by
    // the commit's own duration) to the run that consumed it being queued.
    let batch_time: std::collections::HashMap<i64, DateTime<Utc>> =
        events.iter().map(|e| (e.id, e.timestamp)).collect();
    let mut commit_to_run = Vec::new();
    let runs = db.store.list_runs(Some("on_stream"), None, 0).await?;
    for run in &runs {
        for id in run
            .consumed_events
            .iter()
            .filter(|id| committed_at.contains_key(id))
        {
            if let Some(at) = batch_time.get(id) {
                commit_to_run
                    .push((run.queued_at - *at).num_microseconds().unwrap_or(0) as f64 / 1e3);
            }
        }
    }
    anyhow::ensure!(
        produce_to_commit.len() == total && commit_to_run.len() == total,
        "{} of {total} messages committed, {} consumed by a run",
        produce_to_commit.len(),
        commit_to_run.len()
    );
    produce_to_commit.sort_by(f64::total_cmp);
    added.sort_by(f64::total_cmp);
    let mut bare: Vec<f64> = baseline
        .values()
        .map(|(sent, received)| (received - sent) as f64 / 1e3)
        .collect();
    bare.sort_by(f64::total_cmp);
    commit_to_run.sort_by(f64::total_cmp);
    println!(
        "{name}: kafka latency at {}/s for {} s ({total} messages, fetch.wait.max.ms {}): produced → committed p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; \
         committed → asset-triggered run queued p50 {:.1} ms, p99 {:.1} ms ({} runs); bare consumer received p50 {:.1} ms, p99 {:.1} ms; \
         added by the triggerer over the bare consumer p50 {:.1} ms, p99 {:.1} ms",
        args.rate,
        args.latency_seconds,
        args.fetch_wait_ms,
        percentile(&produce_to_commit, 0.5),
        percentile(&produce_to_commit, 0.99),
        percentile(&produce_to_commit, 1.0),
        percentile(&commit_to_run, 0.5),
        percentile(&commit_to_run, 0.99),
        runs.len(),
        percentile(&bare, 0.5),
        percentile(&bare, 0.99),
        percentile(&added, 0.5),
        percentile(&added, 0.99),
    );
    db.remove().await
}
