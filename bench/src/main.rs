//! `triggerer-bench`: the figures in `docs/benchmarks.md`, measured through the library on a
//! fresh database (a temporary SQLite file, or a new PostgreSQL database that is dropped after).
//! Timings are printed, never asserted: the machines are shared and noisy.
//!
//! So far it measures the scheduler (issue 6, part 4): creating the runs of 10,000 due DAGs, and
//! one pass over 100,000 DAGs when nothing is due.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use sqlx::Connection;
use triggerer::definitions::load_str;
use triggerer::registry::ProviderRegistry;
use triggerer::scheduler;
use triggerer::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Parser)]
#[command(about = "Measure triggerer; prints one line per figure")]
struct Args {
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
}

/// A fresh database, removed when dropped (PostgreSQL: dropped by [`FreshDb::remove`]).
struct FreshDb {
    store: Store,
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
                Ok(Self {
                    store: Store::connect(&format!("{base}/{name}")).await?,
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

/// `count` cron DAGs; `schedule` and `start_date` decide whether they are due.
async fn define_dags(store: &Store, count: usize, schedule: &str, start: &str) -> Result<()> {
    let mut text = String::with_capacity(count * 80);
    for i in 0..count {
        text.push_str(&format!(
            "[[dag]]\ndag_id = \"d{i:06}\"\nschedule = \"{schedule}\"\nstart_date = {start}\n"
        ));
    }
    let plan = load_str("bench.toml", &text, &ProviderRegistry::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    store.apply_definitions(&plan).await?;
    scheduler::refresh_next_dagruns(store, triggerer::time::now()).await?;
    Ok(())
}

/// Runs passes at `now` until one creates nothing; returns the runs created.
async fn create_due_runs(store: &Store, now: DateTime<Utc>, expected: usize) -> Result<usize> {
    let mut created = 0;
    loop {
        let report = scheduler::pass(store, now, None, 100).await?;
        if report.scheduled_created == 0 {
            return Ok(created);
        }
        created += report.scheduled_created;
        progress(&format!("  runs created: {created}/{expected}"));
    }
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

async fn bench_scheduler(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();

    let db = FreshDb::create(engine, &args.postgres_url, "due").await?;
    progress(&format!("{name}: defining {} due DAGs", args.due_dags));
    let setup = Instant::now();
    define_dags(
        &db.store,
        args.due_dags,
        "0 * * * *",
        "2025-01-01T00:00:00Z",
    )
    .await?;
    let setup = setup.elapsed();
    let started = Instant::now();
    let created = create_due_runs(&db.store, triggerer::time::now(), args.due_dags).await?;
    let elapsed = started.elapsed();
    progress("");
    println!(
        "{name}: scheduler: {created} runs for {} due DAGs in {:.2} s ({:.0} runs/s; definitions synced in {:.1} s)",
        args.due_dags,
        elapsed.as_secs_f64(),
        created as f64 / elapsed.as_secs_f64(),
        setup.as_secs_f64()
    );
    db.remove().await?;

    let db = FreshDb::create(engine, &args.postgres_url, "idle").await?;
    progress(&format!("{name}: defining {} idle DAGs", args.idle_dags));
    let setup = Instant::now();
    define_dags(
        &db.store,
        args.idle_dags,
        "0 0 1 1 *",
        "2099-01-01T00:00:00Z",
    )
    .await?;
    let setup = setup.elapsed();
    let mut samples = Vec::with_capacity(args.idle_passes);
    for i in 0..args.idle_passes {
        let started = Instant::now();
        let report = scheduler::pass(&db.store, triggerer::time::now(), None, 100).await?;
        samples.push(started.elapsed());
        anyhow::ensure!(!report.did_work(), "an idle pass did work: {report:?}");
        progress(&format!("  idle passes: {}/{}", i + 1, args.idle_passes));
    }
    progress("");
    let (fastest, slowest) = (
        samples.iter().min().copied().unwrap_or_default(),
        samples.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "{name}: scheduler: idle pass over {} DAGs: median {:.2} ms (min {:.2}, max {:.2}; definitions synced in {:.1} s)",
        args.idle_dags,
        median(samples).as_secs_f64() * 1e3,
        fastest.as_secs_f64() * 1e3,
        slowest.as_secs_f64() * 1e3,
        setup.as_secs_f64()
    );
    db.remove().await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for engine in args.engine.clone() {
        bench_scheduler(engine, &args).await?;
    }
    Ok(())
}
