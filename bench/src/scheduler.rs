//! Scheduler figures: creating the runs of N due DAGs, and one pass over N DAGs when nothing is
//! due (which must cost what the due work costs, not what the number of DAGs costs).

use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use triggerer::definitions::load_str;
use triggerer::registry::ProviderRegistry;
use triggerer::scheduler;
use triggerer::store::Store;

use crate::{progress, Args, Engine, FreshDb};

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
        let report = scheduler::pass(store, now, None, max_scheduled_per_pass()).await?;
        if report.scheduled_created == 0 {
            return Ok(created);
        }
        created += report.scheduled_created;
        progress(&format!("  runs created: {created}/{expected}"));
    }
}

/// The scheduler's own per-pass cap, as `triggerer scheduler` runs it.
fn max_scheduled_per_pass() -> i64 {
    scheduler::SchedulerOptions::default().max_scheduled_per_pass
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

/// A fresh database with `count` DAGs defined; returns it and how long defining them took.
async fn database_with_dags(
    engine: Engine,
    args: &Args,
    tag: &str,
    count: usize,
    schedule: &str,
    start: &str,
) -> Result<(FreshDb, Duration)> {
    let db = FreshDb::create(engine, &args.postgres_url, tag).await?;
    progress(&format!("{engine:?}: defining {count} {tag} DAGs"));
    let setup = Instant::now();
    define_dags(&db.store, count, schedule, start).await?;
    Ok((db, setup.elapsed()))
}

pub async fn bench_scheduler(engine: Engine, args: &Args) -> Result<()> {
    let name = format!("{engine:?}").to_lowercase();

    // Hourly since 2025 without catchup: every one due at once.
    let (db, setup) = database_with_dags(
        engine,
        args,
        "due",
        args.due_dags,
        "0 * * * *",
        "2025-01-01T00:00:00Z",
    )
    .await?;
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

    // Yearly from 2099: none due.
    let (db, setup) = database_with_dags(
        engine,
        args,
        "idle",
        args.idle_dags,
        "0 0 1 1 *",
        "2099-01-01T00:00:00Z",
    )
    .await?;
    let mut samples = Vec::with_capacity(args.idle_passes);
    for i in 0..args.idle_passes {
        let started = Instant::now();
        let report = scheduler::pass(
            &db.store,
            triggerer::time::now(),
            None,
            max_scheduled_per_pass(),
        )
        .await?;
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
