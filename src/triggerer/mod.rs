//! The triggerer process (`triggerer run`): registers a `job`, heartbeats, claims triggers up
//! to its capacity (Airflow's `assign_unassigned`), and keeps the [`supervisor`] in step with
//! what it owns, once per loop. Events flow from the triggers through the [`writer`]. This
//! module decides *when*; the store decides nothing and the supervisor owns the tasks.

pub mod supervisor;
pub mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info, warn};
use triggerer_sdk::CancellationToken;

use crate::metrics;
use crate::registry::ProviderRegistry;
use crate::store::{JobId, Store, StoreError};
use supervisor::Supervisor;

pub use crate::store::TRIGGERER_JOB;

#[derive(Debug, Clone)]
pub struct TriggererOptions {
    /// Most triggers this process runs (Airflow's `[triggerer] capacity`).
    pub capacity: usize,
    /// Most triggers claimed in one loop, so one process does not grab everything at once.
    pub max_triggers_per_loop: usize,
    pub loop_interval: Duration,
    pub heartbeat_interval: Duration,
    /// A triggerer whose heartbeat is older than this is dead; its triggers are claimed by others.
    pub health_threshold: Duration,
    /// Events waiting for the writer before triggers must wait (backpressure).
    pub channel_capacity: usize,
    /// How long shutdown waits for triggers to finish their acknowledgements.
    pub shutdown_grace: Duration,
}

impl Default for TriggererOptions {
    fn default() -> Self {
        Self {
            capacity: 1_000,
            max_triggers_per_loop: 50,
            loop_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(5),
            health_threshold: Duration::from_secs(30),
            channel_capacity: 10_000,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Runs a triggerer until `shutdown` fires, then stops its triggers, commits what is in flight,
/// hands its triggers back and ends its job.
pub async fn run(
    store: Store,
    registry: ProviderRegistry,
    options: TriggererOptions,
    shutdown: CancellationToken,
    committed: Arc<Notify>,
    deferred: Arc<Notify>,
) -> Result<(), StoreError> {
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let job_id = store
        .create_job(TRIGGERER_JOB, &hostname, Some(options.capacity))
        .await?;
    info!(job_id = %job_id, capacity = options.capacity, "triggerer started");

    let (events, writer) = writer::spawn(
        store.clone(),
        Some(job_id),
        options.channel_capacity,
        committed,
    );
    let mut reported_failing = false;
    // Webhooks' triggers are the HTTP server's: never claimed here.
    let pushed = registry.pushed_classpaths();
    let mut supervisor = Supervisor::new(registry, store.clone(), events, options.shutdown_grace);
    let mut ticker = tokio::time::interval(options.loop_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heartbeat: Option<Instant> = None;
    let mut last_heartbeat_ok = Instant::now();
    let mut last_report = Instant::now();
    // This triggerer's part of the process's gauges; dropped (taken back) when it stops.
    let mut gauges = metrics::TriggererGauges::new();

    loop {
        // Before each wait: whatever the last round changed is what a scrape meanwhile sees.
        gauges.set(supervisor.running(), options.capacity, supervisor.failing());
        tokio::select! {
            _ = shutdown.cancelled() => break,
            report = supervisor.next_report() => supervisor.on_report(report).await,
            // A task deferred in this process: its trigger is claimed now, not at the next tick
            // (a 1 s delay would be most of a short deferral's latency).
            _ = deferred.notified() => {
                if writer.health.failing().is_none() && last_heartbeat_ok.elapsed() <= options.health_threshold {
                    if let Err(e) = sync_assignment(&store, &mut supervisor, job_id, &options, &pushed).await {
                        warn!(error = %e, "cannot refresh trigger assignment; keeping the current set");
                    }
                }
            }
            _ = ticker.tick() => {
                supervisor.abort_overdue();
                // A triggerer whose events cannot commit is not alive in any way that matters:
                // without a heartbeat its triggers go to a triggerer that can write (or, alone,
                // are stopped), instead of looking `running` while nothing is recorded.
                let failing = writer.health.failing();
                match &failing {
                    Some(f) if !reported_failing => {
                        error!(
                            since = ?f.since.elapsed(),
                            error = %f.error,
                            "events cannot be committed; heartbeat paused until the database takes writes again"
                        );
                        reported_failing = true;
                    }
                    None if reported_failing => {
                        info!("events commit again; heartbeat resumed");
                        reported_failing = false;
                    }
                    _ => {}
                }
                if failing.is_none()
                    && last_heartbeat.is_none_or(|t| t.elapsed() >= options.heartbeat_interval)
                {
                    match store.heartbeat(job_id).await {
                        Ok(()) => last_heartbeat_ok = Instant::now(),
                        Err(e) => warn!(error = %e, "heartbeat failed"),
                    }
                    last_heartbeat = Some(Instant::now());
                }
                if last_heartbeat_ok.elapsed() > options.health_threshold {
                    // Others consider us dead and will run our triggers: stop ours first.
                    if supervisor.running() > 0 {
                        warn!("no heartbeat within the health threshold; stopping all triggers");
                        supervisor.reconcile(&[]).await;
                    }
                    continue;
                }
                if let Err(e) = sync_assignment(&store, &mut supervisor, job_id, &options, &pushed).await {
                    warn!(error = %e, "cannot refresh trigger assignment; keeping the current set");
                }
                if last_report.elapsed() >= Duration::from_secs(60) {
                    info!(running = supervisor.running(), capacity = options.capacity, "triggers running");
                    last_report = Instant::now();
                }
            }
        }
    }

    info!("triggerer stopping");
    supervisor.shutdown().await;
    drop(gauges);
    // Dropping the supervisor drops the last event sender: the writer drains and exits. One
    // still failing after the grace gives up: its events were never acknowledged.
    drop(supervisor);
    let writer::Writer {
        handle: mut writer_task,
        give_up,
        ..
    } = writer;
    let ended = match tokio::time::timeout(options.shutdown_grace, &mut writer_task).await {
        Ok(ended) => ended,
        Err(_) => {
            give_up.cancel();
            writer_task.await
        }
    };
    if let Err(e) = ended {
        warn!(error = %e, "event writer ended abnormally");
    }
    store.end_job(job_id).await?;
    info!(job_id = %job_id, "triggerer stopped; its triggers are released");
    Ok(())
}

async fn sync_assignment(
    store: &Store,
    supervisor: &mut Supervisor,
    job_id: JobId,
    options: &TriggererOptions,
    pushed: &[&str],
) -> Result<(), StoreError> {
    let threshold = chrono::Duration::from_std(options.health_threshold)
        .unwrap_or_else(|_| chrono::Duration::seconds(30));
    let alive_since = crate::time::now() - threshold;
    let claim = store
        .assign_unassigned(
            job_id,
            options.capacity,
            options.max_triggers_per_loop,
            alive_since,
            pushed,
        )
        .await?;
    if claim.claimed > 0 {
        info!(claimed = claim.claimed, "claimed triggers");
    }
    // Trigger rows never change, and only this process adds to its own set (by claiming), so
    // an unchanged count with nothing claimed means an unchanged set: re-reading (and parsing)
    // every owned trigger each second is what made 100,000 idle watchers cost half a core.
    if claim.claimed == 0 && !supervisor.needs_refresh(claim.owned) {
        return Ok(());
    }
    supervisor.forget_assignment();
    let assigned = store.triggers_for(job_id).await?;
    supervisor.reconcile(&assigned).await;
    Ok(())
}
