//! The executor (DESIGN §10): claims scheduled task instances up to its free slots, runs each
//! try ([`process`] for commands, [`http`] for HTTP calls) with the run's context, records how
//! it ended together with its log, and fails over the tries of executors that stopped
//! heartbeating. On shutdown it stops claiming, lets running tries finish within the grace
//! period, then kills them and hands them back.
//!
//! It decides nothing about dependencies (the store's after-try step and the scheduler do, by
//! [`crate::task::graph`]) and writes nothing but through the store; every write of the loop
//! is batched so that a busy executor commits once per batch of tries, not once per try.

mod defer;
pub mod http;
pub mod process;

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};
use triggerer_sdk::CancellationToken;

use crate::metrics;
use crate::registry::ProviderRegistry;
use crate::store::{
    ClaimedTry, EndedTry, JobId, Store, StoreError, TaskInstanceId, TryEnd, TryUpdate, EXECUTOR_JOB,
};
use crate::task::{Operator, TaskSpec};
use crate::time::isoformat;

/// Most bytes of a try's output kept (its end: errors come last).
pub const LOG_LIMIT: u64 = 1024 * 1024;
/// An environment value larger than this goes to a file instead: Linux refuses to start a
/// program with a single environment string over 128 KiB.
const ENV_VALUE_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// Slots: tries run at once.
    pub parallelism: usize,
    pub heartbeat_interval: Duration,
    /// An executor without a heartbeat for this long counts as dead: its tries are failed over.
    pub health_threshold: Duration,
    /// On shutdown, how long running tries may go on before they are killed and handed back.
    pub grace_period: Duration,
    /// How often to look for scheduled task instances when nothing woke the executor.
    pub poll_interval: Duration,
    /// The binary each command runs under (`triggerer task-shim`): this executable.
    pub shim: PathBuf,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        Self {
            parallelism: 32,
            heartbeat_interval: Duration::from_secs(5),
            health_threshold: Duration::from_secs(30),
            grace_period: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            shim: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("triggerer")),
        }
    }
}

#[derive(Debug, Error)]
pub enum ExecutorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the executor's log directory: {0}")]
    LogDir(std::io::Error),
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

/// What every try of this executor shares.
struct Shared {
    hostname: String,
    shim: PathBuf,
    log_dir: PathBuf,
    client: reqwest::Client,
    started: mpsc::UnboundedSender<TryUpdate>,
    /// To check the trigger a command asks to defer on.
    registry: ProviderRegistry,
}

/// A try in flight, by the id of the task running it.
struct InFlight {
    id: TaskInstanceId,
    dag_run_id: i64,
    try_number: u32,
    started_at: chrono::DateTime<chrono::Utc>,
    cancel: CancellationToken,
    /// Whether its start was reported: claimed (`queued`) until then, `running` after.
    started: bool,
}

/// Marks the try an update reports the start of as started (a try that ended meanwhile is
/// gone already, and stays gone).
fn note_start(in_flight: &mut HashMap<tokio::task::Id, InFlight>, update: &TryUpdate) {
    if let TryUpdate::Started { id, try_number, .. } = update {
        if let Some(f) = in_flight
            .values_mut()
            .find(|f| f.id == *id && f.try_number == *try_number)
        {
            f.started = true;
        }
    }
}

/// Runs the executor until `shutdown` fires and its tries are finished or handed back.
/// `tasks_ready` wakes it when the scheduler in this process scheduled task instances, and
/// `committed` when the triggerer in this process committed (a deferred task may have resumed);
/// it notifies `committed` itself when a batch ended runs (the scheduler's wake), and `deferred`
/// when a batch deferred tasks (the triggerer's wake, to claim their triggers at once).
pub async fn run(
    store: Store,
    registry: ProviderRegistry,
    options: ExecutorOptions,
    shutdown: CancellationToken,
    tasks_ready: Arc<Notify>,
    committed: Arc<Notify>,
    deferred: Arc<Notify>,
) -> Result<(), ExecutorError> {
    let hostname = gethostname::gethostname().to_string_lossy().into_owned();
    let job_id = store
        .create_job(EXECUTOR_JOB, &hostname, Some(options.parallelism))
        .await?;
    let log_dir = tempfile::Builder::new()
        .prefix("triggerer-executor-")
        .tempdir()
        .map_err(ExecutorError::LogDir)?;
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        hostname: hostname.clone(),
        shim: options.shim.clone(),
        log_dir: log_dir.path().to_path_buf(),
        client: http::client()?,
        started: started_tx,
        registry,
    });
    info!(job_id = %job_id, parallelism = options.parallelism, "executor started");

    // Fires when the grace period after shutdown is over: every try still running is killed.
    let kill = CancellationToken::new();
    let mut tries: JoinSet<EndedTry> = JoinSet::new();
    let mut in_flight: HashMap<tokio::task::Id, InFlight> = HashMap::new();
    let mut pending: Vec<TryUpdate> = Vec::new();
    // The heartbeat beats on its own task: a main loop busy with slow batches must not make a
    // live executor look dead (its tries would be failed over while they run).
    let beating = CancellationToken::new();
    let heart = tokio::spawn(beat(
        store.clone(),
        job_id,
        options.heartbeat_interval,
        beating.clone(),
    ));
    let counter = tokio::spawn(crate::scheduler::count_task_queue(
        store.clone(),
        options.health_threshold,
        beating.clone(),
        |status| metrics::set_deferred_tasks(status.deferred_tasks),
    ));
    let mut look_after_tick = tokio::time::interval(options.heartbeat_interval);
    let mut deadline: Option<Instant> = None;
    let mut store_failing = false;
    // This executor's part of the process's gauges; dropped (taken back) when it stops.
    let mut gauges = metrics::ExecutorGauges::new();
    loop {
        // Listening before the work below: a commit notified meanwhile still wakes the wait.
        let committed_meanwhile = committed.notified();
        tokio::pin!(committed_meanwhile);
        committed_meanwhile.as_mut().enable();
        if !pending.is_empty() {
            let deferring = pending.iter().any(|u| {
                matches!(
                    u,
                    TryUpdate::Ended(EndedTry {
                        end: TryEnd::Deferred(_),
                        ..
                    })
                )
            });
            match store.record_tries(job_id, &hostname, &pending).await {
                Ok(recorded) => {
                    if deferring {
                        deferred.notify_one();
                    }
                    for (update, applied) in pending.iter().zip(&recorded.applied) {
                        if let (TryUpdate::Ended(e), false) = (update, applied) {
                            warn!(task_instance = %e.id, try_number = e.try_number, outcome = %e.outcome,
                                  "a try's end was not recorded: it was no longer this executor's (failed over, cleared or marked)");
                        }
                    }
                    pending.clear();
                    // The scheduler starts queued runs in the places ended runs freed.
                    if recorded.runs_ended > 0 {
                        committed.notify_waiters();
                    }
                    store_failing = false;
                }
                Err(e) => {
                    // Nothing is lost: the batch is kept and written once the database answers.
                    if !store_failing {
                        warn!(error = %e, tries = pending.len(), "recording tries failed; retrying");
                    }
                    store_failing = true;
                }
            }
        }
        if deadline.is_none() && !store_failing {
            let free = options.parallelism.saturating_sub(tries.len());
            match store.claim_task_instances(job_id, &hostname, free).await {
                Ok(claimed) => {
                    for claimed in claimed {
                        let cancel = kill.child_token();
                        let flight = InFlight {
                            id: claimed.id,
                            dag_run_id: claimed.dag_run_id,
                            try_number: claimed.try_number,
                            started_at: crate::time::now(),
                            cancel: cancel.clone(),
                            started: false,
                        };
                        let handle = tries.spawn(run_try(claimed, shared.clone(), cancel));
                        in_flight.insert(handle.id(), flight);
                    }
                }
                Err(e) => warn!(error = %e, "claiming task instances failed; retrying"),
            }
        }
        if deadline.is_some() && tries.is_empty() && pending.is_empty() {
            break;
        }
        // Before each wait: what a scrape meanwhile sees. No slot is open once stopping.
        let running = in_flight.values().filter(|f| f.started).count();
        let open = match deadline {
            None => options.parallelism.saturating_sub(tries.len()),
            Some(_) => 0,
        };
        gauges.set(open, in_flight.len() - running, running);
        let retry_soon = store_failing.then(|| Duration::from_secs(1));
        tokio::select! {
            Some(done) = tries.join_next_with_id(), if !tries.is_empty() => {
                pending.extend(ended(done, &mut in_flight).map(TryUpdate::Ended));
            }
            Some(update) = started_rx.recv() => {
                note_start(&mut in_flight, &update);
                pending.push(update);
            }
            _ = look_after_tick.tick() => {
                look_after(&store, job_id, &options, &in_flight).await;
            }
            _ = tasks_ready.notified(), if deadline.is_none() => {}
            // A triggerer's commit may have fired a deferred task's trigger.
            _ = &mut committed_meanwhile, if deadline.is_none() => {}
            _ = tokio::time::sleep(retry_soon.unwrap_or(options.poll_interval)), if deadline.is_none() || store_failing => {}
            _ = shutdown.cancelled(), if deadline.is_none() => {
                info!(running = tries.len(), grace_period = ?options.grace_period,
                      "executor stopping: no more claims; running tries may finish within the grace period");
                deadline = Some(Instant::now() + options.grace_period);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !kill.is_cancelled() => {
                warn!(running = tries.len(), "grace period over: killing the running tries and handing them back");
                kill.cancel();
            }
        }
        // Whatever else is ready joins this batch.
        while let Ok(update) = started_rx.try_recv() {
            note_start(&mut in_flight, &update);
            pending.push(update);
        }
        while let Some(done) = tries.try_join_next_with_id() {
            pending.extend(ended(done, &mut in_flight).map(TryUpdate::Ended));
        }
    }
    drop(gauges);
    beating.cancel();
    let _ = heart.await;
    let _ = counter.await;
    store.end_job(job_id).await?;
    info!("executor stopped");
    Ok(())
}

/// The record of a finished try; a try whose task panicked fails (and is retried). `None`
/// only for a task that is not a try of this executor, which cannot happen: every spawned try
/// is in `in_flight`.
fn ended(
    done: Result<(tokio::task::Id, EndedTry), tokio::task::JoinError>,
    in_flight: &mut HashMap<tokio::task::Id, InFlight>,
) -> Option<EndedTry> {
    match done {
        Ok((id, ended)) => {
            in_flight.remove(&id);
            Some(ended)
        }
        Err(e) => {
            let f = in_flight.remove(&e.id())?;
            let message =
                format!("[triggerer] the executor's try failed inside the executor: {e}\n");
            warn!(error = %e, "a try failed inside the executor");
            Some(EndedTry {
                id: f.id,
                dag_run_id: f.dag_run_id,
                try_number: f.try_number,
                end: TryEnd::Failed {
                    retry_delay: Duration::ZERO,
                    retryable: true,
                },
                started_at: f.started_at,
                ended_at: crate::time::now(),
                outcome: "failed: the executor's try panicked".into(),
                log: message.into_bytes(),
            })
        }
    }
}

/// Heartbeats the executor's job every `interval` until `stop`.
async fn beat(store: Store, job_id: JobId, interval: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => if let Err(e) = store.heartbeat(job_id).await {
                warn!(error = %e, "executor heartbeat failed");
            },
        }
    }
}

/// Each heartbeat interval: failing over dead executors' tries, and stopping tries of this
/// executor that a user marked or cleared meanwhile.
async fn look_after(
    store: &Store,
    job_id: JobId,
    options: &ExecutorOptions,
    in_flight: &HashMap<tokio::task::Id, InFlight>,
) {
    let alive_since = crate::time::now()
        - chrono::Duration::from_std(options.health_threshold).unwrap_or(chrono::Duration::MAX);
    match store.fail_over_task_instances(alive_since).await {
        Ok(0) => {}
        Ok(n) => info!(
            runs = n,
            "failed over the tries of executors that stopped heartbeating"
        ),
        Err(e) => warn!(error = %e, "failing over dead executors' tries failed"),
    }
    let held: Vec<(TaskInstanceId, u32)> =
        in_flight.values().map(|f| (f.id, f.try_number)).collect();
    match store.tries_taken_away(job_id, &held).await {
        Ok(gone) => {
            for f in in_flight.values().filter(|f| gone.contains(&f.id)) {
                info!(task_instance = %f.id, try_number = f.try_number,
                      "the try was marked, cleared or failed over elsewhere: stopping it");
                f.cancel.cancel();
            }
        }
        Err(e) => warn!(error = %e, "checking this executor's tries failed"),
    }
}

/// Runs one try to its end and returns what to record.
async fn run_try(claimed: ClaimedTry, shared: Arc<Shared>, cancel: CancellationToken) -> EndedTry {
    let started_at = crate::time::now();
    let log_path = shared
        .log_dir
        .join(format!("{}-{}.log", claimed.id, claimed.try_number));
    let (end, outcome) = match std::fs::File::create(&log_path) {
        Ok(mut log) => {
            let _ = writeln!(
                log,
                "[triggerer] {} {} {}: try {} of {} on {}, started {}",
                claimed.dag_id,
                claimed.run_id,
                claimed.task_id,
                claimed.try_number,
                claimed.tries_allowed,
                shared.hostname,
                isoformat(started_at)
            );
            let (end, outcome) = match &claimed.spec {
                None => (
                    TryEnd::Failed {
                        retry_delay: Duration::ZERO,
                        retryable: false,
                    },
                    format!(
                        "failed: DAG `{}` no longer defines task `{}`",
                        claimed.dag_id, claimed.task_id
                    ),
                ),
                Some(spec) => operate(&claimed, spec, &shared, &mut log, &log_path, &cancel).await,
            };
            let elapsed = (crate::time::now() - started_at).num_milliseconds() as f64 / 1000.0;
            let _ = writeln!(log, "[triggerer] {outcome} after {elapsed:.3} s");
            (end, outcome)
        }
        Err(e) => (
            TryEnd::Failed {
                retry_delay: claimed
                    .spec
                    .as_ref()
                    .map_or(Duration::ZERO, |s| s.retry_delay_after(claimed.try_number)),
                retryable: true,
            },
            format!(
                "failed: cannot create the try's log file {}: {e}",
                log_path.display()
            ),
        ),
    };
    let log = read_log(&log_path).unwrap_or_else(|e| {
        format!("[triggerer] {outcome}; the log could not be read back: {e}\n").into_bytes()
    });
    let _ = std::fs::remove_file(&log_path);
    EndedTry {
        id: claimed.id,
        dag_run_id: claimed.dag_run_id,
        try_number: claimed.try_number,
        end,
        started_at,
        ended_at: crate::time::now(),
        outcome,
        log,
    }
}

/// Runs the task's operator; the try's end and a one-line outcome.
async fn operate(
    claimed: &ClaimedTry,
    spec: &TaskSpec,
    shared: &Shared,
    log: &mut std::fs::File,
    log_path: &Path,
    cancel: &CancellationToken,
) -> (TryEnd, String) {
    let failed = TryEnd::Failed {
        retry_delay: spec.retry_delay_after(claimed.try_number),
        retryable: true,
    };
    // `execution_timeout` counts running time across deferrals.
    let limit = spec
        .execution_timeout
        .map(|t| t.saturating_sub(claimed.ran_before));
    let timeout_reached = |d: Option<Duration>| {
        format!(
            "failed: execution_timeout ({}) reached; the task was stopped",
            humantime::format_duration(d.unwrap_or_default())
        )
    };
    if limit.is_some_and(|l| l.is_zero()) {
        return (failed, timeout_reached(spec.execution_timeout));
    }
    let started = |pid: u32| {
        let _ = shared.started.send(TryUpdate::Started {
            id: claimed.id,
            try_number: claimed.try_number,
            pid,
            at: crate::time::now(),
        });
    };
    let event = claimed.trigger_event.as_ref();
    if let Some(event) = event {
        let _ = writeln!(log, "[triggerer] resumed: the trigger fired with {event}");
    }
    let argv: Vec<String> = match (&spec.operator, event) {
        (Operator::Command { argv }, None) => argv.clone(),
        (Operator::Shell { script }, None) => vec!["/bin/sh".into(), "-c".into(), script.clone()],
        (Operator::Command { argv }, Some(_)) => {
            spec.resume.clone().unwrap_or_else(|| argv.clone())
        }
        (Operator::Shell { script }, Some(_)) => spec
            .resume
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into(), script.clone()]),
        (Operator::Http(call), _) => {
            started(std::process::id());
            let limit = limit.unwrap_or(Duration::MAX);
            return tokio::select! {
                result = tokio::time::timeout(limit, http::call(&shared.client, call, log)) => match result {
                    Ok(Ok(())) => (TryEnd::Success, "success".into()),
                    Ok(Err(reason)) => (failed, format!("failed: {reason}")),
                    Err(_) => (failed, timeout_reached(spec.execution_timeout)),
                },
                _ = cancel.cancelled() => (TryEnd::HandedBack, "handed back: the executor stopped".into()),
            };
        }
        (Operator::Wait(trigger), None) => {
            started(std::process::id());
            return match defer::deferral(claimed, trigger, spec.timeout) {
                Ok((deferral, shown)) => {
                    let _ = writeln!(log, "[triggerer] deferred: waiting for {shown}");
                    (TryEnd::Deferred(deferral), "deferred".into())
                }
                Err(reason) => (failed, format!("failed: {reason}")),
            };
        }
        (Operator::Wait(_), Some(_)) => return (TryEnd::Success, "success".into()),
        (Operator::Airflow(call), None) => {
            started(std::process::id());
            return match defer::start_airflow_run(claimed, call, spec.timeout, log).await {
                Ok(deferral) => (TryEnd::Deferred(deferral), "deferred".into()),
                Err(reason) => (failed, format!("failed: {reason}")),
            };
        }
        (Operator::Airflow(call), Some(event)) => {
            let state = event
                .get("state")
                .and_then(|s| s.as_str())
                .unwrap_or("unknown");
            return if state == "success" {
                (TryEnd::Success, "success".into())
            } else {
                // Retrying would find the same Airflow run (its id is this run's): it stays failed.
                (
                    TryEnd::Failed {
                        retry_delay: Duration::ZERO,
                        retryable: false,
                    },
                    format!(
                        "failed: the Airflow run {} of DAG `{}` ended {state}",
                        claimed.run_id, call.dag_id
                    ),
                )
            };
        }
    };
    let defer_file = log_path.with_extension("defer.json");
    let mut env = match run_context(claimed, log_path) {
        Ok(env) => env,
        Err(e) => {
            return (
                failed,
                format!("failed: cannot prepare the run context: {e}"),
            )
        }
    };
    env.push((
        "TRIGGERER_DEFER_FILE".to_string(),
        defer_file.display().to_string(),
    ));
    if let Some(event) = event {
        env.push(("TRIGGERER_TRIGGER_EVENT".to_string(), event.to_string()));
    }
    let log_file = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return (failed, format!("failed: cannot share the log file: {e}")),
    };
    let launch = process::Launch {
        argv: &argv,
        env: &env,
        log: log_file,
        shim: &shared.shim,
    };
    let ended = process::run(launch, limit, cancel, started).await;
    let requested = std::fs::read(&defer_file).ok();
    let _ = std::fs::remove_file(&defer_file);
    match ended {
        Ok(process::ProcessEnd::Exited(0)) => {
            match requested.filter(|r| !r.iter().all(u8::is_ascii_whitespace)) {
                None => (TryEnd::Success, "success".into()),
                Some(request) => {
                    match defer::requested(claimed, &shared.registry, &request, spec.timeout) {
                        Ok((deferral, shown)) => {
                            let _ = writeln!(log, "[triggerer] deferred: waiting for {shown}");
                            (TryEnd::Deferred(deferral), "deferred".into())
                        }
                        Err(reason) => (failed, format!("failed: {reason}")),
                    }
                }
            }
        }
        Ok(process::ProcessEnd::Exited(code)) if code > 128 && code < 160 => {
            (failed, format!("failed: killed by signal {}", code - 128))
        }
        Ok(process::ProcessEnd::Exited(code)) => (failed, format!("failed: exit status {code}")),
        Ok(process::ProcessEnd::TimedOut) => (failed, timeout_reached(spec.execution_timeout)),
        Ok(process::ProcessEnd::Cancelled) => (
            TryEnd::HandedBack,
            "handed back: the executor stopped it".into(),
        ),
        Err(e) => (failed, format!("failed: {e}")),
    }
}

/// The run's context as environment variables (DESIGN §10); the triggering events go to a file
/// named by `TRIGGERER_TRIGGERING_ASSET_EVENTS_FILE` when too large for the environment.
fn run_context(c: &ClaimedTry, log_path: &Path) -> std::io::Result<Vec<(String, String)>> {
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(isoformat).unwrap_or_default();
    let mut env = vec![
        ("TRIGGERER_DAG_ID".to_string(), c.dag_id.clone()),
        ("TRIGGERER_RUN_ID".to_string(), c.run_id.clone()),
        ("TRIGGERER_TASK_ID".to_string(), c.task_id.clone()),
        ("TRIGGERER_TRY_NUMBER".to_string(), c.try_number.to_string()),
        ("TRIGGERER_LOGICAL_DATE".to_string(), time(c.logical_date)),
        (
            "TRIGGERER_DATA_INTERVAL_START".to_string(),
            time(c.data_interval_start),
        ),
        (
            "TRIGGERER_DATA_INTERVAL_END".to_string(),
            time(c.data_interval_end),
        ),
        ("TRIGGERER_CONF".to_string(), c.conf.to_string()),
    ];
    let events = serde_json::Value::Array(c.triggering_asset_events.clone()).to_string();
    if events.len() <= ENV_VALUE_LIMIT {
        env.push(("TRIGGERER_TRIGGERING_ASSET_EVENTS".to_string(), events));
    } else {
        let path = log_path.with_extension("events.json");
        std::fs::write(&path, events)?;
        env.push((
            "TRIGGERER_TRIGGERING_ASSET_EVENTS_FILE".to_string(),
            path.display().to_string(),
        ));
    }
    Ok(env)
}

/// The try's log, its last [`LOG_LIMIT`] bytes when longer (with a note of what was cut).
fn read_log(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    let mut out = Vec::new();
    if len > LOG_LIMIT {
        out.extend_from_slice(
            format!(
                "[triggerer] the first {} bytes of this try's output were cut; the last {} follow\n",
                len - LOG_LIMIT,
                LOG_LIMIT
            )
            .as_bytes(),
        );
        file.seek(SeekFrom::Start(len - LOG_LIMIT))?;
    }
    file.read_to_end(&mut out)?;
    let _ = std::fs::remove_file(path.with_extension("events.json"));
    Ok(out)
}
