//! `triggerer-bench`: the figures in `docs/benchmarks.md`, measured through the library on a
//! fresh database (a temporary SQLite file, or a new PostgreSQL database that is dropped after).
//! Timings are printed, never asserted: the machines are shared and noisy.
//!
//! So far it measures watcher density (N file watchers in one triggerer: time until all have
//! started, resident memory, idle CPU) and the scheduler (creating the runs of 10,000 due DAGs,
//! and one pass over 100,000 DAGs when nothing is due).

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
enum Part {
    Density,
    Scheduler,
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
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Part::Density, Part::Scheduler])]
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

/// This process's resident memory (bytes) and CPU time used so far.
fn rss_and_cpu() -> Result<(u64, Duration)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name (which may hold spaces): utime is the 14th, stime the 15th.
    let after = stat
        .rsplit_once(')')
        .map_or(stat.as_str(), |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Linux reports these in clock ticks of 1/100 s (USER_HZ).
    let cpu = Duration::from_millis((ticks(11) + ticks(12)) * 10);
    Ok((rss_kib * 1024, cpu))
}

/// N file watchers, one per file, over 100 directories, in one triggerer: each trigger's start-up
/// scan finds its file and emits one event, so N committed events mean N started watchers.
async fn bench_density(engine: Engine, watchers: usize, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();
    let db = FreshDb::create(engine, &args.postgres_url, &format!("density{watchers}")).await?;
    let files = tempfile::tempdir()?;
    let mut text = String::with_capacity(watchers * 120);
    text.push_str("[[asset]]\nname = \"landing\"\n");
    for i in 0..watchers {
        let dir = files.path().join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("f{i:06}.dat")), b"x")?;
        // A glob that matches this one file: each watcher is its own trigger.
        text.push_str(&format!(
            "[[asset.watcher]]\nname = \"w{i}\"\nclasspath = \"file.FileTrigger\"\nkwargs = {{ filepath = \"{}/f{i:06}.*\" }}\n",
            dir.display()
        ));
    }
    let registry = triggerer::registry::builtin_providers();
    let plan = load_str("density.toml", &text, &registry).map_err(|e| anyhow::anyhow!("{e}"))?;
    db.store.apply_definitions(&plan).await?;

    let (rss_before, _) = rss_and_cpu()?;
    let options = triggerer::triggerer::TriggererOptions {
        capacity: watchers,
        max_triggers_per_loop: watchers,
        ..Default::default()
    };
    let shutdown = triggerer_sdk::CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(triggerer::triggerer::run(
        db.store.clone(),
        registry,
        options,
        shutdown.clone(),
        std::sync::Arc::new(tokio::sync::Notify::new()),
    ));
    let deadline = started + Duration::from_secs(600);
    loop {
        let events: i64 = db.store.count_asset_events().await?;
        progress(&format!("{name}: {watchers} watchers: {events} started"));
        if events as usize >= watchers {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {events} of {watchers} watchers started within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_running = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await; // let the last commits settle
    let (_, cpu_before) = rss_and_cpu()?;
    let idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let (rss, cpu_after) = rss_and_cpu()?;
    let idle_cpu = (cpu_after - cpu_before).as_secs_f64() / idle.elapsed().as_secs_f64();
    progress("");
    println!(
        "{name}: density: {watchers} file watchers all started in {:.2} s; resident {:.0} MiB ({:.0} MiB more than before they started); idle CPU {:.1} % of one core",
        all_running.as_secs_f64(),
        rss as f64 / 1048576.0,
        rss.saturating_sub(rss_before) as f64 / 1048576.0,
        idle_cpu * 100.0
    );
    shutdown.cancel();
    task.await??;
    db.remove().await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    for engine in args.engine.clone() {
        if args.part.contains(&Part::Density) {
            for &watchers in &args.watchers {
                bench_density(engine, watchers, &args).await?;
            }
        }
        if args.part.contains(&Part::Scheduler) {
            bench_scheduler(engine, &args).await?;
        }
    }
    Ok(())
}
