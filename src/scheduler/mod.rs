//! The scheduler core (`triggerer scheduler`): creates the scheduled runs of time-due DAGs,
//! the asset-triggered runs of asset-ready DAGs, and starts queued runs under
//! `max_active_runs`. Time-due and asset-ready DAGs are selected by separate queries with their
//! own per-pass limits, so neither starves the other. Each pass is a function of the store and
//! a clock, so `--once --now T` replays what a live scheduler would do at T. This module decides
//! (timetables, asset expressions); the store only executes.

pub mod manual;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use triggerer_sdk::CancellationToken;

use std::collections::BTreeSet;

use crate::asset_expression::AssetExpr;
use crate::dag_run::DagRunType;
use crate::metrics;
use crate::store::JobId;
use crate::store::{
    AssetCondition, DagTiming, DueSlot, SlotOutcome, SlotPolicy, Store, StoreError,
};
use crate::timetable::schedule::timetable_of;
use crate::timetable::{DagRunInfo, Timetable};

pub use crate::store::SCHEDULER_JOB;

/// How often a live scheduler counts the task instances waiting for a slot
/// (`scheduler_tasks_executable`, `scheduler_tasks_starving`): a scan of every task
/// instance's state (about 0.1 s for a million on SQLite), too much for every pass.
const TASK_COUNT_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Run passes until nothing more is due, then return.
    pub once: bool,
    /// Freeze the clock at this instant.
    pub now: Option<DateTime<Utc>>,
    pub pass_interval: Duration,
    pub heartbeat_interval: Duration,
    /// Most scheduled runs created in one pass (Airflow's `max_dagruns_to_create_per_loop`).
    pub max_scheduled_per_pass: i64,
    /// An executor without a heartbeat for this long has no free slots, for
    /// `scheduler_tasks_starving`.
    pub health_threshold: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            once: false,
            now: None,
            pass_interval: Duration::from_secs(1),
            heartbeat_interval: Duration::from_secs(5),
            max_scheduled_per_pass: 100,
            health_threshold: Duration::from_secs(30),
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    pub scheduled_created: usize,
    /// Due slots skipped because a run for their logical date existed already.
    pub slots_advanced: usize,
    pub asset_triggered_created: usize,
    pub started: usize,
    /// Runs whose task instances were looked at because they changed.
    pub runs_advanced: usize,
    /// Task instances made `scheduled` (upstreams done, or a retry's delay over).
    pub tasks_scheduled: usize,
    /// Deferred task instances failed with `trigger timeout`.
    pub deferrals_timed_out: usize,
}

impl PassReport {
    pub fn did_work(&self) -> bool {
        self.scheduled_created
            + self.slots_advanced
            + self.asset_triggered_created
            + self.started
            + self.runs_advanced
            + self.tasks_scheduled
            + self.deferrals_timed_out
            > 0
    }
}

/// Runs scheduling passes: every `pass_interval`, and at once when `wake` is notified (the
/// writer does after each commit, so a run follows its event within a pass). `tasks_ready` is
/// notified when a pass scheduled task instances, so an executor in the process claims them
/// at once.
pub async fn run(
    store: Store,
    options: SchedulerOptions,
    shutdown: CancellationToken,
    wake: Arc<Notify>,
    tasks_ready: Arc<Notify>,
) -> Result<(), StoreError> {
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let job_id = store.create_job(SCHEDULER_JOB, &hostname, None).await?;
    info!(job_id = %job_id, "scheduler started");
    // Align every DAG's next slot with this scheduler's clock, as a DAG-processor parse would.
    refresh_next_dagruns(&store, options.now.unwrap_or_else(crate::time::now)).await?;
    // The run types a pass creates have their series from the start, at 0.
    for run_type in [DagRunType::Scheduled, DagRunType::AssetTriggered] {
        metrics::record_dag_runs_created(run_type.as_str(), 0);
    }
    // The task counts on their own task, so that no pass waits for them; stopped however
    // this function returns. A one-off `--once` is not scraped.
    let stop_counting = shutdown.child_token();
    let _stop_counting = stop_counting.clone().drop_guard();
    if !options.once {
        tokio::spawn(count_task_queue(
            store.clone(),
            options.health_threshold,
            stop_counting,
            |status| metrics::set_task_queue(status.tasks_executable, status.tasks_starving),
        ));
    }
    let mut last_heartbeat = Instant::now();
    loop {
        // Listening before the pass: a commit notified while the pass runs (`notify_waiters`
        // keeps no permit) must still wake the next wait, or it waits for the tick.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let now = options.now.unwrap_or_else(crate::time::now);
        // A pass that did work may have left more due (a catchup backlog creates one slot per
        // DAG per pass): go again at once. An idle scheduler waits for the next tick or commit.
        let busy = match pass(&store, now, Some(job_id), options.max_scheduled_per_pass).await {
            Ok(report) if report.did_work() => {
                if report.tasks_scheduled > 0 {
                    tasks_ready.notify_one();
                }
                if report.scheduled_created + report.asset_triggered_created + report.started > 0 {
                    info!(
                        scheduled = report.scheduled_created,
                        asset_triggered = report.asset_triggered_created,
                        started = report.started,
                        "scheduling pass"
                    );
                }
                true
            }
            Ok(_) if options.once => break,
            Ok(_) => false,
            Err(e) if options.once => return Err(e),
            Err(e) => {
                warn!(error = %e, "scheduling pass failed; retrying next pass");
                false
            }
        };
        if last_heartbeat.elapsed() >= options.heartbeat_interval {
            if let Err(e) = store.heartbeat(job_id).await {
                warn!(error = %e, "scheduler heartbeat failed");
            }
            last_heartbeat = Instant::now();
        }
        if shutdown.is_cancelled() {
            break;
        }
        if busy {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut woken => {}
            _ = tokio::time::sleep(options.pass_interval) => {}
        }
    }
    store.end_job(job_id).await?;
    info!("scheduler stopped");
    Ok(())
}

/// Reads the task queue's counts ([`Store::status`]) every [`TASK_COUNT_INTERVAL`] and hands
/// them to `record` (a metric's setter) until `stop`. On its own task: the count reads every
/// task instance's state (about 0.1 s for a million on SQLite), which no pass or claim may wait
/// for. The scheduler's `scheduler_tasks_*` and the executor's `executor_deferred_tasks` use it.
pub async fn count_task_queue(
    store: Store,
    health_threshold: Duration,
    stop: CancellationToken,
    record: fn(&crate::store::Status),
) {
    let mut tick = tokio::time::interval(TASK_COUNT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let alive_since = crate::time::now()
            - chrono::Duration::from_std(health_threshold).unwrap_or(chrono::Duration::MAX);
        let counted = tokio::select! {
            _ = stop.cancelled() => return,
            counted = store.status(alive_since) => counted,
        };
        match counted {
            Ok(status) => record(&status),
            // The parts' own queries say so when the database is down.
            Err(e) => debug!(error = %e, "counting task instances failed"),
        }
    }
}

/// The timetable of a stored DAG; a schedule that no longer parses (written by another
/// version) is logged and treated as no schedule until the next sync.
pub fn timetable_for(dag: &DagTiming) -> Timetable {
    timetable_of(dag.schedule.as_ref()).unwrap_or_else(|e| {
        warn!(dag_id = %dag.dag_id, error = %e, "stored schedule does not parse; re-run `dags sync`");
        Timetable::Null
    })
}

/// Recomputes every DAG's next slot from its latest automated run at `now` (what Airflow's
/// DAG processor does on each parse). A due slot of an asset-and-time DAG is kept: it waits for
/// its assets and is never skipped.
pub async fn refresh_next_dagruns(store: &Store, now: DateTime<Utc>) -> Result<(), StoreError> {
    let last = store.last_automated_intervals(None).await?;
    let mut updates = Vec::new();
    for dag in store.dag_timings().await? {
        let timetable = timetable_for(&dag);
        let waiting =
            timetable.asset_gate().is_some() && dag.next.is_some_and(|slot| slot.run_after <= now);
        if waiting {
            continue;
        }
        let next = timetable.next_dagrun_info(last.get(&dag.dag_id).copied(), dag.restriction, now);
        if next != dag.next {
            updates.push((dag.dag_id, next));
        }
    }
    store.set_next_dagruns(&updates).await
}

/// The slot each due DAG should get a run for now, in `due` order (`None`: none). Without
/// catchup the stored slot is first re-aligned with `now` (a slot left behind while the DAG was
/// blocked or paused is replaced by the latest one, as Airflow's continual re-parsing does) and
/// the new slot stored; an asset-and-time slot is never re-aligned: it waits for its assets.
async fn realign_due_slots(
    store: &Store,
    due: &[(DagTiming, Timetable)],
    now: DateTime<Utc>,
) -> Result<Vec<Option<DagRunInfo>>, StoreError> {
    let realigned = |dag: &DagTiming, timetable: &Timetable| {
        !dag.restriction.catchup && timetable.asset_gate().is_none() && dag.next.is_some()
    };
    let ids: Vec<&str> = due
        .iter()
        .filter(|(dag, timetable)| realigned(dag, timetable))
        .map(|(dag, _)| dag.dag_id.as_str())
        .collect();
    let last = if ids.is_empty() {
        Default::default()
    } else {
        store.last_automated_intervals(Some(&ids)).await?
    };
    let mut slots = Vec::with_capacity(due.len());
    let mut moved = Vec::new();
    for (dag, timetable) in due {
        if !realigned(dag, timetable) {
            slots.push(dag.next);
            continue;
        }
        let fresh =
            timetable.next_dagrun_info(last.get(&dag.dag_id).copied(), dag.restriction, now);
        if fresh != dag.next {
            moved.push((dag.dag_id.clone(), fresh));
        }
        slots.push(fresh.filter(|f| f.run_after <= now));
    }
    if !moved.is_empty() {
        store.set_next_dagruns(&moved).await?;
    }
    Ok(slots)
}

/// Creates the runs of the due DAGs' `slots`: those without an asset gate all at once
/// ([`Store::create_scheduled_runs`]), asset-and-time DAGs one by one (each reads its queue).
/// Should the batch be refused, its DAGs are retried one by one so that one DAG's error (say,
/// a run id taken a moment earlier) does not hold up the others.
async fn create_due_runs(
    store: &Store,
    due: &[(DagTiming, Timetable)],
    slots: &[Option<DagRunInfo>],
    now: DateTime<Utc>,
    job_id: Option<JobId>,
) -> Result<Vec<(usize, Result<SlotOutcome, StoreError>)>, StoreError> {
    let next_after: Vec<_> = due
        .iter()
        .map(|(dag, timetable)| {
            let restriction = dag.restriction;
            move |interval| timetable.next_dagrun_info(Some(interval), restriction, now)
        })
        .collect();
    let gates: Vec<_> = due
        .iter()
        .map(|(_, timetable)| {
            let expr = timetable.asset_gate();
            move |names: &BTreeSet<String>| expr.is_some_and(|e| e.evaluate(names))
        })
        .collect();
    // The batch as two lists: its slots go to the store as they are, its indices come back.
    let (mut batch_index, mut batch): (Vec<usize>, Vec<DueSlot<'_>>) = (Vec::new(), Vec::new());
    let mut one_by_one: Vec<(usize, DueSlot<'_>)> = Vec::new();
    for (i, ((dag, timetable), slot)) in due.iter().zip(slots).enumerate() {
        let Some(expected) = *slot else { continue };
        let due_slot = DueSlot {
            dag_id: &dag.dag_id,
            expected,
            policy: SlotPolicy {
                next_after: &next_after[i],
                gate: timetable
                    .asset_gate()
                    .map(|_| &gates[i] as &AssetCondition<'_>),
                max_active_runs: timetable
                    .active_runs_limit()
                    .map_or(dag.max_active_runs, |l| l.min(dag.max_active_runs)),
            },
        };
        if due_slot.policy.gate.is_some() {
            one_by_one.push((i, due_slot));
        } else {
            batch_index.push(i);
            batch.push(due_slot);
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len() + one_by_one.len());
    match store.create_scheduled_runs(&batch, job_id).await {
        Ok(created) => outcomes.extend(batch_index.into_iter().zip(created.into_iter().map(Ok))),
        Err(e) if e.is_transient() => return Err(e),
        Err(e) => {
            info!(error = %e, dags = batch.len(), "creating this pass's runs together failed; creating them one by one");
            one_by_one.extend(batch_index.into_iter().zip(batch));
        }
    }
    for (i, due_slot) in one_by_one {
        let outcome = store
            .create_scheduled_run(due_slot.dag_id, due_slot.expected, &due_slot.policy, job_id)
            .await;
        outcomes.push((i, outcome));
    }
    Ok(outcomes)
}

/// The next `n` automated runs of `dag` from its stored next slot (or, with `at`, recomputed
/// at that instant from its latest automated run).
pub async fn next_runs(
    store: &Store,
    dag_id: &str,
    n: usize,
    at: Option<DateTime<Utc>>,
) -> Result<Vec<DagRunInfo>, StoreError> {
    let dag = store.dag_timing(dag_id).await?;
    let timetable = timetable_for(&dag);
    let now = at.unwrap_or_else(crate::time::now);
    let first = match at {
        Some(at) => {
            let last = store
                .last_automated_intervals(Some(&[dag_id]))
                .await?
                .remove(dag_id);
            timetable.next_dagrun_info(last, dag.restriction, at)
        }
        None => dag.next,
    };
    let mut out: Vec<DagRunInfo> = first.into_iter().collect();
    while out.len() < n {
        let Some(prev) = out.last() else { break };
        match timetable.next_dagrun_info(Some(prev.data_interval), dag.restriction, now) {
            Some(info) if info.run_after > prev.run_after => out.push(info),
            _ => break,
        }
    }
    out.truncate(n);
    Ok(out)
}

/// The slots of `timetable` whose logical dates fall in `[from, to]`, at most `limit`.
pub fn backfill_slots(
    timetable: &Timetable,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<DagRunInfo>, String> {
    if !timetable.is_periodic() || matches!(timetable, Timetable::Once | Timetable::Continuous) {
        return Err("this DAG has no periodic time schedule to backfill (cron or every)".into());
    }
    if to < from {
        return Err("--to is before --from".into());
    }
    let restriction = crate::timetable::TimeRestriction {
        earliest: Some(from),
        latest: Some(to),
        catchup: true,
    };
    let mut slots: Vec<DagRunInfo> = Vec::new();
    while let Some(info) =
        timetable.next_dagrun_info(slots.last().map(|s| s.data_interval), restriction, to)
    {
        if info.logical_date() > to || slots.last().is_some_and(|s| info.run_after <= s.run_after) {
            break;
        }
        if slots.len() == limit {
            return Err(format!(
                "the range holds more than {limit} runs; backfill a shorter range"
            ));
        }
        slots.push(info);
    }
    Ok(slots)
}

/// One scheduling pass at `now`: scheduled runs of time-due DAGs (at most `max_scheduled`),
/// asset-triggered runs of every asset-ready DAG, queued runs started, retries whose delay is
/// over scheduled, and the task instances of runs that changed advanced (which also ends runs
/// whose tasks all ended).
pub async fn pass(
    store: &Store,
    now: DateTime<Utc>,
    job_id: Option<JobId>,
    max_scheduled: i64,
) -> Result<PassReport, StoreError> {
    let started = std::time::Instant::now();
    let report = run_pass(store, now, job_id, max_scheduled).await;
    metrics::record_pass(started.elapsed());
    report
}

async fn run_pass(
    store: &Store,
    now: DateTime<Utc>,
    job_id: Option<JobId>,
    max_scheduled: i64,
) -> Result<PassReport, StoreError> {
    let mut report = PassReport::default();
    let due: Vec<(DagTiming, Timetable)> = store
        .due_dags(now, max_scheduled)
        .await?
        .into_iter()
        .map(|dag| {
            let timetable = timetable_for(&dag);
            (dag, timetable)
        })
        .collect();
    let slots = realign_due_slots(store, &due, now).await?;
    for (i, outcome) in create_due_runs(store, &due, &slots, now, job_id).await? {
        let dag_id = &due[i].0.dag_id;
        match outcome {
            Ok(SlotOutcome::Created(run_id)) => {
                info!(%dag_id, %run_id, "scheduled run created");
                report.scheduled_created += 1;
                metrics::record_dag_runs_created(DagRunType::Scheduled.as_str(), 1);
            }
            Ok(SlotOutcome::AlreadyExisted) => {
                info!(%dag_id, "a run for the due slot exists; moved to the next slot");
                report.slots_advanced += 1;
            }
            Ok(SlotOutcome::RunIdTaken { run_id, run_type }) => {
                warn!(%dag_id, %run_id, %run_type, "the due slot's run id is taken by another run; skipped the slot and moved to the next");
                report.slots_advanced += 1;
            }
            Ok(
                SlotOutcome::Skipped | SlotOutcome::AtMaxActiveRuns | SlotOutcome::WaitingForAssets,
            ) => {}
            // One DAG's failure (say, a manual run that took the slot's logical date a moment
            // earlier) must not hold up the others.
            Err(e) if !e.is_transient() => {
                warn!(%dag_id, error = %e, "cannot create the scheduled run; retrying next pass")
            }
            Err(e) => return Err(e),
        }
    }
    for dag in store.queued_dags().await? {
        if dag.active_runs >= dag.max_active_runs {
            continue;
        }
        let expr = match AssetExpr::parse(&dag.asset_expression) {
            Ok(expr) => expr,
            Err(e) => {
                warn!(dag_id = %dag.dag_id, error = %e, "stored asset expression does not parse; re-run `dags sync`");
                continue;
            }
        };
        if !expr.evaluate(&dag.queued_assets) {
            continue;
        }
        let ready = |names: &std::collections::BTreeSet<String>| expr.evaluate(names);
        if let Some(run_id) = store
            .create_asset_triggered_run(&dag.dag_id, job_id, &ready)
            .await?
        {
            info!(dag_id = %dag.dag_id, %run_id, "asset-triggered run created");
            report.asset_triggered_created += 1;
            metrics::record_dag_runs_created(DagRunType::AssetTriggered.as_str(), 1);
        }
    }
    report.started = store.start_queued_runs(now).await?;
    report.tasks_scheduled = store.retry_due_task_instances(now).await?;
    report.deferrals_timed_out = store.time_out_deferrals(now).await?;
    let (runs, scheduled) = store.advance_changed_runs(now).await?;
    report.runs_advanced = runs;
    report.tasks_scheduled += scheduled;
    Ok(report)
}
