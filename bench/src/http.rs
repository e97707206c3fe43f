//! HTTP figures (DESIGN §12), through `service::serve` with the HTTP server a user gets
//! (`HttpOptions` on a free loopback port, no API tokens, a 30 s health threshold) on a fresh
//! database holding one asset and one DAG scheduled on it (so every event also writes a queue
//! row), driven over loopback by keep-alive clients sharing one `reqwest::Client` in this
//! process:
//!
//! - push throughput: `POST /api/v1/assets/{name}/events` from N clients in a closed loop, each
//!   event with its own dedup key; committed events/s (counted in the database after every
//!   answer, which must all be 201 and match the count) and the client-side latency at that
//!   saturation, with the group-commit batch sizes the server's writer settled at;
//! - push latency: the same pushes sent at a fixed rate (open loop: each at its slot, not
//!   waiting for the previous answer), from send to the 201 that says it committed;
//! - `/metrics`: a scrape while the same service also runs a triggerer with N idle file
//!   watchers (made as [`crate::density`] makes them). Until the server serves `/metrics`, the
//!   scrape is timed as `triggerer::metrics::encode()` called in this process, and says so.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use triggerer::definitions::load_str;
use triggerer::http::{ApiTokens, HttpOptions};
use triggerer::registry::ProviderRegistry;
use triggerer::service::{self, ServiceError, ServiceOptions};
use triggerer::store::Store;
use triggerer::triggerer::TriggererOptions;
use triggerer_sdk::CancellationToken;

use crate::density::cpu_times;
use crate::{percentile, progress, Args, Engine, FreshDb};

/// The asset events are pushed to.
const ASSET: &str = "pushed";

/// One asset and one DAG scheduled on it.
fn definitions() -> String {
    format!(
        "[[asset]]\nname = \"{ASSET}\"\n\n[[dag]]\ndag_id = \"on_pushed\"\nschedule = {{ assets = \"{ASSET}\" }}\nmax_active_runs = 1000000\n"
    )
}

async fn apply(store: &Store, registry: &ProviderRegistry, file: &str, text: &str) -> Result<()> {
    let plan = load_str(file, text, registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    store.apply_definitions(&plan).await?;
    Ok(())
}

/// A free port on 127.0.0.1 (bound and released: nothing else on this machine races for it).
fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}

/// A service in this process with the HTTP server (and a triggerer if asked) until
/// [`Serving::stop`].
struct Serving {
    base: String,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<Result<(), ServiceError>>,
}

impl Serving {
    async fn start(
        store: &Store,
        registry: ProviderRegistry,
        triggerer: Option<TriggererOptions>,
    ) -> Result<Self> {
        let addr = free_loopback_addr()?;
        let options = ServiceOptions {
            triggerer,
            http: Some(HttpOptions {
                addr,
                tokens: ApiTokens::default(),
                health_threshold: Duration::from_secs(30),
                is_default: false,
            }),
            ..ServiceOptions::default()
        };
        let (controls, steering) = service::controls();
        let store = store.clone();
        let handle =
            tokio::spawn(async move { service::serve(&store, &registry, options, steering).await });
        if controls.ready.await.is_err() {
            let ended = handle.await?;
            anyhow::bail!("the service ended before it was ready: {ended:?}");
        }
        Ok(Self {
            base: format!("http://{addr}"),
            shutdown: controls.shutdown,
            handle,
        })
    }

    fn events_url(&self) -> String {
        format!("{}/api/v1/assets/{ASSET}/events", self.base)
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        self.handle.await??;
        Ok(())
    }
}

/// One keep-alive client for every request of a figure.
fn client() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// One push's answer as the client saw it.
struct Answer {
    /// 0: no HTTP answer at all.
    status: u16,
    latency: Duration,
    /// The body (or the client's error) of anything but a 201.
    unexpected: Option<String>,
}

/// Pushes event `seq` (dedup key `{tag}-{seq}`) and reads the whole answer.
async fn push(client: &reqwest::Client, url: &str, tag: &str, seq: usize) -> Answer {
    let body = serde_json::json!({
        "extra": {"seq": seq, "source": "bench"},
        "dedup_key": format!("{tag}-{seq:07}"),
    });
    let sent = Instant::now();
    let answered = async {
        let response = client.post(url).json(&body).send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    }
    .await;
    let latency = sent.elapsed();
    match answered {
        Ok((201, _)) => Answer {
            status: 201,
            latency,
            unexpected: None,
        },
        Ok((status, text)) => Answer {
            status,
            latency,
            unexpected: Some(text),
        },
        Err(e) => Answer {
            status: 0,
            latency,
            unexpected: Some(format!("{e:#}")),
        },
    }
}

/// The answers of a figure.
#[derive(Default)]
struct Tally {
    created: usize,
    latencies_ms: Vec<f64>,
    /// Answers other than 201, by status (0: no answer).
    others: BTreeMap<u16, usize>,
    /// The first few of them.
    samples: Vec<String>,
}

impl Tally {
    fn add(&mut self, answer: Answer) {
        self.latencies_ms.push(answer.latency.as_secs_f64() * 1e3);
        match answer.unexpected {
            None => self.created += 1,
            Some(body) => {
                *self.others.entry(answer.status).or_default() += 1;
                if self.samples.len() < 5 {
                    self.samples.push(format!("{}: {body}", answer.status));
                }
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.created += other.created;
        self.latencies_ms.extend(other.latencies_ms);
        for (status, n) in other.others {
            *self.others.entry(status).or_default() += n;
        }
        for s in other.samples {
            if self.samples.len() < 5 {
                self.samples.push(s);
            }
        }
    }

    /// Every answer a 201, and as many events stored as 201s.
    fn check(&self, sent: usize, stored: i64) -> Result<()> {
        if self.others.is_empty() && self.created == sent && stored as usize == self.created {
            return Ok(());
        }
        anyhow::bail!(
            "{sent} pushes: {} answered 201, others by status {:?} (0 = no answer), {stored} events stored; first of them: {:#?}",
            self.created,
            self.others,
            self.samples
        )
    }

    /// p50 / p99 / max in ms.
    fn quantiles(&mut self) -> (f64, f64, f64) {
        self.latencies_ms.sort_by(f64::total_cmp);
        (
            percentile(&self.latencies_ms, 0.5),
            percentile(&self.latencies_ms, 0.99),
            self.latencies_ms.last().copied().unwrap_or(0.0),
        )
    }
}

/// A sample of `name` (no labels, or the first series) in OpenMetrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let rest = if let Some(labelled) = rest.strip_prefix('{') {
            labelled.split_once('}')?.1
        } else {
            rest
        };
        rest.strip_prefix(' ')?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// The process's writers so far (every writer of this process records into one registry):
/// batches, events in them, and seconds their transactions took.
#[derive(Clone, Copy, Default)]
struct WriterTotals {
    batches: f64,
    events: f64,
    commits: f64,
    commit_seconds: f64,
}

impl WriterTotals {
    fn now() -> Self {
        let text = triggerer::metrics::encode();
        let at = |name: &str| sample(&text, name).unwrap_or(0.0);
        Self {
            batches: at("triggerer_write_batch_size_count"),
            events: at("triggerer_write_batch_size_sum"),
            commits: at("triggerer_commit_seconds_count"),
            commit_seconds: at("triggerer_commit_seconds_sum"),
        }
    }

    fn since(self, before: Self) -> String {
        let batches = self.batches - before.batches;
        let commits = self.commits - before.commits;
        format!(
            "{batches:.0} batches of {:.1} events on average, a transaction {:.2} ms on average",
            (self.events - before.events) / batches.max(1.0),
            (self.commit_seconds - before.commit_seconds) * 1e3 / commits.max(1.0)
        )
    }
}

/// The sizes of the batches the stored events were written in (the writer stamps every event
/// of a batch with the batch's time): median / p90 / max.
async fn batch_sizes(store: &Store) -> Result<String> {
    let mut batches: BTreeMap<DateTime<Utc>, usize> = BTreeMap::new();
    for e in store.list_events(None, 0).await? {
        *batches.entry(e.timestamp).or_default() += 1;
    }
    let mut sizes: Vec<f64> = batches.values().map(|&n| n as f64).collect();
    sizes.sort_by(f64::total_cmp);
    Ok(format!(
        "batch size median {:.0} / p90 {:.0} / max {:.0}",
        percentile(&sizes, 0.5),
        percentile(&sizes, 0.9),
        percentile(&sizes, 1.0)
    ))
}

/// The machine's CPU time so far: busy and in all, in clock ticks (`/proc/stat`).
fn machine_cpu() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .context("no cpu line in /proc/stat")?
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// What this process and the whole machine used between two readings.
struct Cpu {
    own: Duration,
    machine: (u64, u64),
}

impl Cpu {
    fn now() -> Result<Self> {
        Ok(Self {
            own: cpu_times("/proc/self/stat")?.0,
            machine: machine_cpu()?,
        })
    }

    fn since(&self, before: &Cpu, wall: Duration) -> String {
        let busy = (self.machine.0 - before.machine.0) as f64 * 100.0
            / (self.machine.1 - before.machine.1).max(1) as f64;
        format!(
            "CPU of this process (server and clients) {:.2} cores, the whole machine busy {busy:.0} %",
            (self.own.saturating_sub(before.own)).as_secs_f64() / wall.as_secs_f64()
        )
    }
}

/// `pushes` events from `clients` keep-alive clients in a closed loop.
pub async fn bench_push_throughput(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let (count, clients) = (args.pushes, args.push_clients.max(1));
    let db = FreshDb::create(engine, &args.postgres_url, "httppush").await?;
    let registry = triggerer::registry::builtin_providers();
    apply(&db.store, &registry, "http.toml", &definitions()).await?;
    let serving = Serving::start(&db.store, registry, None).await?;
    let url = Arc::new(serving.events_url());
    let client = client()?;

    let next = Arc::new(AtomicUsize::new(0));
    let writer_before = WriterTotals::now();
    let cpu_before = Cpu::now()?;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        set.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let seq = next.fetch_add(1, Ordering::Relaxed);
                if seq >= count {
                    return tally;
                }
                tally.add(push(&client, &url, "throughput", seq).await);
            }
        });
    }
    let mut tally = Tally::default();
    let mut draw = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            done = set.join_next() => match done {
                Some(t) => tally.merge(t?),
                None => break,
            },
            _ = draw.tick() => progress(&format!(
                "{name}: http: pushed {}/{count}",
                next.load(Ordering::Relaxed).min(count)
            )),
        }
    }
    let elapsed = started.elapsed();
    let cpu = Cpu::now()?.since(&cpu_before, elapsed);
    let writer = WriterTotals::now().since(writer_before);
    let stored = db.store.count_asset_events().await?;
    tally.check(count, stored)?;
    let batches = batch_sizes(&db.store).await?;
    serving.stop().await?;
    progress("");
    let (p50, p99, max) = tally.quantiles();
    println!(
        "{name}: http: push throughput: {count} events POSTed by {clients} keep-alive clients in a closed loop, all 201, {stored} stored: {:.0} events/s committed ({:.2} s); latency p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; writer: {writer}, {batches}; {cpu}",
        stored as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
    db.remove().await
}

/// Pushes at `push_rate` a second for `push_latency_seconds`, each sent at its slot.
pub async fn bench_push_latency(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let rate = args.push_rate.max(1);
    let total = (u64::from(rate) * args.push_latency_seconds) as usize;
    let db = FreshDb::create(engine, &args.postgres_url, "httplatency").await?;
    let registry = triggerer::registry::builtin_providers();
    apply(&db.store, &registry, "http.toml", &definitions()).await?;
    let serving = Serving::start(&db.store, registry, None).await?;
    let url = Arc::new(serving.events_url());
    let client = client()?;

    let period = Duration::from_secs(1) / rate;
    let writer_before = WriterTotals::now();
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let mut set = tokio::task::JoinSet::new();
    let mut late_ms: Vec<f64> = Vec::with_capacity(total);
    for seq in 0..total {
        let slot = start + period * seq as u32;
        tokio::time::sleep_until(slot).await;
        late_ms.push(slot.elapsed().as_secs_f64() * 1e3);
        let (client, url) = (client.clone(), url.clone());
        set.spawn(async move { push(&client, &url, "latency", seq).await });
        if seq % 500 == 0 {
            progress(&format!(
                "{name}: http: latency: sent {seq}/{total} at {rate}/s"
            ));
        }
    }
    let sent_over = start.elapsed();
    let mut tally = Tally::default();
    while let Some(answer) = set.join_next().await {
        tally.add(answer?);
    }
    let writer = WriterTotals::now().since(writer_before);
    let stored = db.store.count_asset_events().await?;
    tally.check(total, stored)?;
    let batches = batch_sizes(&db.store).await?;
    serving.stop().await?;
    progress("");
    late_ms.sort_by(f64::total_cmp);
    let (p50, p99, max) = tally.quantiles();
    println!(
        "{name}: http: push latency: {total} events POSTed at {rate}/s (open loop, sent over {:.2} s; sends behind their slot p99 {:.1} ms, max {:.1} ms), all 201, {stored} stored: send → 201 (committed) p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms; writer: {writer}, {batches}",
        sent_over.as_secs_f64(),
        percentile(&late_ms, 0.99),
        late_ms.last().copied().unwrap_or(0.0),
    );
    db.remove().await
}

/// `watchers` file watchers on one asset, one per file over 100 directories under `root`, as
/// [`crate::density`] makes them: each one's start-up scan emits one event.
fn file_watchers(root: &std::path::Path, watchers: usize) -> Result<String> {
    let mut text = String::with_capacity(watchers * 120);
    text.push_str("[[asset]]\nname = \"landing\"\n");
    for i in 0..watchers {
        let dir = root.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("f{i:06}.dat")), b"x")?;
        text.push_str(&format!(
            "[[asset.watcher]]\nname = \"w{i}\"\nclasspath = \"file.FileTrigger\"\nkwargs = {{ filepath = \"{}/f{i:06}.*\" }}\n",
            dir.display()
        ));
    }
    Ok(text)
}

/// Waits on a thread of its own until `url` holds `n` asset events (retrying failed counts
/// until `deadline`); resolves to when it saw them.
fn count_until(
    url: String,
    n: usize,
    deadline: Instant,
    name: String,
) -> tokio::sync::oneshot::Receiver<Result<Instant>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let counted = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| {
                runtime.block_on(async {
                    let store = Store::connect(&url).await.context("a pool for counting")?;
                    let mut last_error = None;
                    loop {
                        match store.count_asset_events().await {
                            Ok(events) if events as usize >= n => break,
                            Ok(events) => {
                                progress(&format!("{name}: http: {events}/{n} watchers started"))
                            }
                            Err(e) => last_error = Some(e),
                        }
                        if Instant::now() > deadline {
                            store.close().await;
                            anyhow::bail!(
                                "not all {n} watchers started within 600 s (last error counting: {last_error:?})"
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let seen = Instant::now();
                    store.close().await;
                    Ok(seen)
                })
            });
        let _ = tx.send(counted);
    });
    rx
}

/// The longest a 100 ms sleep on this runtime overslept while it watched: how long the
/// runtime went without polling its tasks.
struct RuntimeStalls {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<Duration>,
}

impl RuntimeStalls {
    fn watch() -> Self {
        let stop = CancellationToken::new();
        let handle = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut worst = Duration::ZERO;
                while !stop.is_cancelled() {
                    let asleep = Instant::now();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    worst = worst.max(asleep.elapsed().saturating_sub(Duration::from_millis(100)));
                }
                worst
            }
        });
        Self { stop, handle }
    }

    async fn stop(self) -> Duration {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

/// How the scrape is taken: over HTTP, or (until the server serves `/metrics`) by encoding the
/// registry in this process.
enum Scrape {
    Http(reqwest::Client, String),
    InProcess,
}

impl Scrape {
    /// The body and how long it took.
    async fn take(&self) -> Result<(String, Duration)> {
        let started = Instant::now();
        let body = match self {
            Scrape::Http(client, url) => {
                let response = client.get(url).send().await?;
                let status = response.status();
                let body = response.text().await?;
                anyhow::ensure!(status.is_success(), "GET /metrics: {status}: {body}");
                body
            }
            Scrape::InProcess => triggerer::metrics::encode(),
        };
        Ok((body, started.elapsed()))
    }

    fn describe(&self) -> &'static str {
        match self {
            Scrape::Http(..) => "GET /metrics over loopback",
            Scrape::InProcess => {
                "triggerer::metrics::encode() in-process (the server has no /metrics route yet)"
            }
        }
    }
}

/// `scrapes` scrapes while one triggerer of the service runs `scrape_triggers` file watchers.
pub async fn bench_metrics_scrape(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let n = args.scrape_triggers;
    let db = FreshDb::create(engine, &args.postgres_url, "httpmetrics").await?;
    let files = tempfile::tempdir()?;
    let registry = triggerer::registry::builtin_providers();
    progress(&format!("{name}: http: defining {n} file watchers"));
    apply(
        &db.store,
        &registry,
        "watchers.toml",
        &file_watchers(files.path(), n)?,
    )
    .await?;
    let options = TriggererOptions {
        capacity: n,
        max_triggers_per_loop: n,
        ..TriggererOptions::default()
    };
    // Counted from a thread, runtime and pool of its own: while 100,000 triggers start, the
    // service's runtime (this one) can go seconds without polling a task, and a count on it
    // timed out in the pool's acquire; the service's pool must not be taken either.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(600);
    let counted = count_until(db.url.clone(), n, deadline, name.clone());
    let stalls = RuntimeStalls::watch();
    let serving = Serving::start(&db.store, registry, Some(options))
        .await
        .context("starting the service")?;
    let mut counted = std::pin::pin!(counted);
    let seen = loop {
        tokio::select! {
            done = &mut counted => break done??,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                if serving.handle.is_finished() {
                    let ended = serving.handle.await?;
                    anyhow::bail!("the service ended before its {n} watchers all started: {ended:?}");
                }
            }
        }
    };
    let all_running = seen - started;
    let stalled = stalls.stop().await;

    let client = client()?;
    let url = format!("{}/metrics", serving.base);
    let probe = client.get(&url).send().await?;
    let scrape = if probe.status() == reqwest::StatusCode::NOT_FOUND {
        Scrape::InProcess
    } else {
        Scrape::Http(client, url)
    };
    drop(probe);
    // The gauge follows the supervisor; wait until it shows every watcher.
    let running = loop {
        let (body, _) = scrape.take().await?;
        let running = sample(&body, "triggerer_triggers_running").unwrap_or(0.0);
        if running as usize >= n || Instant::now() > deadline {
            break running;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut took: Vec<f64> = Vec::with_capacity(args.scrapes);
    let mut size = 0;
    let mut last = 0.0;
    for i in 0..args.scrapes.max(1) {
        let (body, elapsed) = scrape.take().await?;
        took.push(elapsed.as_secs_f64() * 1e3);
        size = body.len();
        last = sample(&body, "triggerer_triggers_running").unwrap_or(0.0);
        progress(&format!("{name}: http: scrape {}/{}", i + 1, args.scrapes));
    }
    took.sort_by(f64::total_cmp);
    serving
        .stop()
        .await
        .context("the service with the triggerer")?;
    db.remove().await?;
    progress("");
    println!(
        "{name}: http: /metrics with {n} file watchers running (all started in {:.1} s; the runtime's longest stall meanwhile {:.1} s): {} scrapes by {}: median {:.2} ms, max {:.2} ms; body {size} bytes; triggerer_triggers_running {last:.0} (before timing {running:.0})",
        all_running.as_secs_f64(),
        stalled.as_secs_f64(),
        took.len(),
        scrape.describe(),
        took[took.len() / 2],
        took.last().copied().unwrap_or(0.0),
    );
    anyhow::ensure!(
        last as usize == n,
        "triggerer_triggers_running read {last}, not {n}"
    );
    Ok(())
}
