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

pub async fn bench_scheduler(engine: Engine, args: &Args) -> Result<()> {
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
