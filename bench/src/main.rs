//! `triggerer-bench`: the figures in `docs/benchmarks.md`, measured through the library on a
//! fresh database (a temporary SQLite file, or a new PostgreSQL database that is dropped after).
//! Timings are printed, never asserted: the machines are shared and noisy.
//!
//! - [`density`]: N idle file watchers in one triggerer (start-up time, memory, idle CPU);
//! - [`kafka`]: events/s from a Kafka backlog to committed asset events, and produce → commit →
//!   run latency at a fixed rate;
//! - [`scheduler`]: runs for N due DAGs, and one pass over N DAGs when nothing is due;
//! - [`tasks`]: tasks/s through a scheduler and an executor, upstream success → downstream
//!   process latency at a fixed rate, and an idle pass over 1,000,000 finished task instances;
//! - [`deferral`]: 100,000 deferred `wait` tasks in one triggerer (memory, idle CPU, open
//!   executor slots), and trigger fired → resumed command latency;
//! - [`http`]: events/s pushed through `POST /api/v1/assets/{name}/events` by keep-alive
//!   clients, send → 201 latency at a fixed rate, and a `/metrics` scrape with 100,000 triggers
//!   running.
//!
//! `scripts/bench.sh` starts what it needs (PostgreSQL, the Kafka test broker) and runs it.

mod deferral;
mod density;
mod http;
mod kafka;
mod scheduler;
mod tasks;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use sqlx::Connection;
use triggerer::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Density,
    Kafka,
    Scheduler,
    Tasks,
    Deferral,
    Http,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Parser)]
#[command(about = "Measure triggerer; prints one line per figure")]
struct Args {
    /// What to measure (everything by default).
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Part::Density, Part::Kafka, Part::Scheduler, Part::Tasks, Part::Deferral, Part::Http])]
    part: Vec<Part>,
    /// Watcher counts for the density figures.
    #[arg(long, num_args = 1.., default_values_t = [1_000, 10_000, 100_000])]
    watchers: Vec<usize>,
    /// Seconds of idling over which the idle CPU is measured.
    #[arg(long, default_value_t = 10)]
    idle_seconds: u64,
    /// Which engines to measure (both by default).
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Engine::Sqlite, Engine::Postgres])]
    engine: Vec<Engine>,
    /// A PostgreSQL server URL whose user may create databases.
    #[arg(
        long,
        env = "TRIGGERER_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    postgres_url: String,
    /// DAGs that are all due at once.
    #[arg(long, default_value_t = 10_000)]
    due_dags: usize,
    /// DAGs defined when nothing is due.
    #[arg(long, default_value_t = 100_000)]
    idle_dags: usize,
    /// Idle passes to time (the median is reported).
    #[arg(long, default_value_t = 21)]
    idle_passes: usize,
    /// The Kafka broker for the throughput and latency figures.
    #[arg(long, env = "TRIGGERER_TEST_KAFKA", default_value = "127.0.0.1:19092")]
    kafka: String,
    /// Messages in the throughput backlog.
    #[arg(long, default_value_t = 200_000)]
    messages: usize,
    /// Partitions of the throughput topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Messages per second for the latency figures.
    #[arg(long, default_value_t = 1_000)]
    rate: u32,
    /// How long messages are produced at `rate`.
    #[arg(long, default_value_t = 20)]
    latency_seconds: u64,
    /// `fetch.wait.max.ms` of the latency consumers. tansu answers a fetch only when this
    /// expires (Kafka answers as soon as data arrives), so its 500 ms default would be measured.
    #[arg(long, default_value_t = 10)]
    fetch_wait_ms: u32,
    /// Manual runs for the task throughput figure.
    #[arg(long, default_value_t = 1_000)]
    task_runs: usize,
    /// Independent `true` tasks a run for the task throughput figure.
    #[arg(long, default_value_t = 10)]
    tasks_per_run: usize,
    /// `max_active_runs` of the throughput DAG (default: none set, so 16).
    #[arg(long)]
    task_max_active_runs: Option<i64>,
    /// Runs per second (of two chained tasks each) for the task latency figure.
    #[arg(long, default_value_t = 25)]
    task_rate: u32,
    /// How long runs are triggered at `task_rate`.
    #[arg(long, default_value_t = 20)]
    task_latency_seconds: u32,
    /// Finished task instances in the table for the idle-pass figure.
    #[arg(long, default_value_t = 1_000_000)]
    finished_task_instances: usize,
    /// Deferred `wait` tasks held by one triggerer for the deferral density figure.
    #[arg(long, default_value_t = 100_000)]
    deferred: usize,
    /// Deferring runs (at 20 a second) for the resume latency figure.
    #[arg(long, default_value_t = 200)]
    resume_runs: usize,
    /// Events pushed over HTTP for the push throughput figure.
    #[arg(long, default_value_t = 100_000)]
    pushes: usize,
    /// Keep-alive HTTP clients pushing in a closed loop for the push throughput figure.
    #[arg(long, default_value_t = 64)]
    push_clients: usize,
    /// Pushes per second for the push latency figure.
    #[arg(long, default_value_t = 1_000)]
    push_rate: u32,
    /// How long events are pushed at `push_rate`.
    #[arg(long, default_value_t = 10)]
    push_latency_seconds: u64,
    /// File watchers running while `/metrics` is scraped.
    #[arg(long, default_value_t = 100_000)]
    scrape_triggers: usize,
    /// `/metrics` scrapes to time (the median is reported).
    #[arg(long, default_value_t = 21)]
    scrapes: usize,
}

/// A fresh database, removed when dropped (PostgreSQL: dropped by [`FreshDb::remove`]).
struct FreshDb {
    store: Store,
    url: String,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl FreshDb {
    async fn create(engine: Engine, postgres_url: &str, tag: &str) -> Result<Self> {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                Ok(Self {
                    store: Store::connect(&url).await?,
                    url,
                    _dir: Some(dir),
                    postgres: None,
                })
            }
            Engine::Postgres => {
                let name = format!("trg_bench_{}_{tag}", std::process::id());
                let mut admin = sqlx::PgConnection::connect(postgres_url)
                    .await
                    .with_context(|| format!("cannot connect to {postgres_url}"))?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await?;
                let base = postgres_url
                    .rsplit_once('/')
                    .map_or(postgres_url, |(b, _)| b);
                let url = format!("{base}/{name}");
                Ok(Self {
                    store: Store::connect(&url).await?,
                    url,
                    _dir: None,
                    postgres: Some((postgres_url.to_string(), name)),
                })
            }
        }
    }

    async fn remove(self) -> Result<()> {
        self.store.close().await;
        if let Some((admin_url, name)) = self.postgres {
            let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
        }
        Ok(())
    }
}

/// A progress line, redrawn in place on a terminal (and left out of logs).
fn progress(line: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r\x1b[2K{line}");
    }
}

/// The `q` quantile (0..=1) of `sorted` by nearest rank; 0 when empty.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.part.contains(&Part::Kafka) {
        kafka::check_broker(&args.kafka)?;
    }
    for engine in args.engine.clone() {
        if args.part.contains(&Part::Density) {
            for &watchers in &args.watchers {
                density::bench_density(engine, watchers, &args).await?;
            }
        }
        if args.part.contains(&Part::Kafka) {
            // Latency first: tansu keeps every topic in memory and its fetch latency tail
            // grows once a throughput backlog sits in it.
            kafka::bench_latency(engine, &args).await?;
            kafka::bench_throughput(engine, &args).await?;
        }
        if args.part.contains(&Part::Scheduler) {
            scheduler::bench_scheduler(engine, &args).await?;
        }
        if args.part.contains(&Part::Tasks) {
            tasks::bench_throughput(engine, &args).await?;
            tasks::bench_latency(engine, &args).await?;
            tasks::bench_idle_pass(engine, &args).await?;
        }
        if args.part.contains(&Part::Deferral) {
            deferral::bench_deferred_density(engine, &args).await?;
            deferral::bench_resume_latency(engine, &args).await?;
        }
        if args.part.contains(&Part::Http) {
            http::bench_push_throughput(engine, &args).await?;
            http::bench_push_latency(engine, &args).await?;
            http::bench_metrics_scrape(engine, &args).await?;
        }
    }
    Ok(())
}
