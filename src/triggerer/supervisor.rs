//! The supervisor: one tokio task per assigned trigger, in one [`JoinSet`]. It starts what was
//! assigned, cancels what was taken away (aborting it if it has not stopped within a grace
//! period), and restarts a trigger that failed, ended or panicked, with exponential backoff,
//! while every other trigger goes on. It records each failure on the trigger row so
//! `triggers list` shows it. It must not touch events: those go from the trigger straight to
//! the writer.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{error, info, warn};
use triggerer_sdk::{
    CancellationToken, EmitError, Envelope, EventSink, NotCommitted, TriggerContext, TriggerError,
    TriggerId, Warning, WarningSink,
};

use crate::metrics;
use crate::registry::ProviderRegistry;
use crate::secrets;
use crate::store::{AssignedTrigger, Store};

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A trigger that ran this long before failing starts its backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// How a trigger task ended, reported back to the supervisor.
#[derive(Debug)]
pub struct Finished {
    trigger_id: TriggerId,
    generation: u64,
    outcome: Result<Result<(), TriggerError>, tokio::task::JoinError>,
}

/// What a trigger task reports to the supervisor.
#[derive(Debug)]
pub enum Report {
    Finished(Finished),
    Warning(Warning),
}

struct Running {
    generation: u64,
    cancel: CancellationToken,
    abort: AbortHandle,
    started: Instant,
    /// Takes this start's secrets out of its errors and warnings.
    scrubber: secrets::Scrubber,
}

struct Backoff {
    failures: u32,
    retry_at: Instant,
}

pub struct Supervisor {
    registry: ProviderRegistry,
    store: Store,
    events: mpsc::Sender<Envelope>,
    running: HashMap<TriggerId, Running>,
    backoff: HashMap<TriggerId, Backoff>,
    /// How many triggers the last complete [`Supervisor::reconcile`] was given; `None` when
    /// one could not finish, so the next loop reads the assignment again.
    assigned: Option<usize>,
    generation: u64,
    /// Every trigger task, running or stopping; a panic surfaces here as a `JoinError`, never
    /// as a dead supervisor.
    tasks: JoinSet<Result<(), TriggerError>>,
    /// Which trigger start (trigger id, generation) each task is.
    task_of: HashMap<tokio::task::Id, (TriggerId, u64)>,
    /// Triggers cancelled because they were taken away, with when to abort them if they
    /// have not stopped by then (a trigger stuck in a blocking call must not run on).
    stopping: HashMap<tokio::task::Id, (AbortHandle, Instant)>,
    /// How long a cancelled trigger may take to finish its acknowledgements.
    grace: Duration,
    warnings_tx: mpsc::UnboundedSender<Warning>,
    /// What running triggers skipped; [`Supervisor::next_report`] reads it.
    warnings_rx: mpsc::UnboundedReceiver<Warning>,
}

impl Supervisor {
    /// `grace`: how long a trigger that was taken away may take to stop before it is aborted.
    pub fn new(
        registry: ProviderRegistry,
        store: Store,
        events: mpsc::Sender<Envelope>,
        grace: Duration,
    ) -> Self {
        let (warnings_tx, warnings_rx) = mpsc::unbounded_channel();
        Self {
            registry,
            store,
            events,
            running: HashMap::new(),
            backoff: HashMap::new(),
            assigned: None,
            generation: 0,
            tasks: JoinSet::new(),
            task_of: HashMap::new(),
            stopping: HashMap::new(),
            grace,
            warnings_tx,
            warnings_rx,
        }
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Triggers that failed and now wait out their restart backoff (not running).
    pub fn failing(&self) -> usize {
        self.backoff
            .keys()
            .filter(|id| !self.running.contains_key(id))
            .count()
    }

    /// Whether the assignment must be read again: the database says this process owns `owned`
    /// triggers and the last reconcile saw another number, or a failed trigger's backoff is over.
    pub fn needs_refresh(&self, owned: usize) -> bool {
        let now = Instant::now();
        self.assigned != Some(owned)
            || self
                .backoff
                .iter()
                .any(|(id, b)| b.retry_at <= now && !self.running.contains_key(id))
    }

    /// Forgets what the last reconcile saw, so [`Supervisor::needs_refresh`] holds until the
    /// next complete one (call before reading the assignment: a failed read must not leave a
    /// changed set looking unchanged).
    pub fn forget_assignment(&mut self) {
        self.assigned = None;
    }

    /// Makes the running set match `assigned`: cancels the rest, starts the missing ones whose
    /// backoff has passed.
    pub async fn reconcile(&mut self, assigned: &[AssignedTrigger]) {
        self.assigned = Some(assigned.len());
        let wanted: HashSet<TriggerId> = assigned.iter().map(|t| t.id).collect();
        let gone: Vec<TriggerId> = self
            .running
            .keys()
            .filter(|id| !wanted.contains(id))
            .copied()
            .collect();
        let deadline = Instant::now() + self.grace;
        for id in gone {
            if let Some(run) = self.running.remove(&id) {
                info!(trigger_id = %id, "trigger unassigned; cancelling");
                run.cancel.cancel();
                self.stopping.insert(run.abort.id(), (run.abort, deadline));
            }
        }
        self.backoff.retain(|id, _| wanted.contains(id));

        let now = Instant::now();
        let to_start: Vec<&AssignedTrigger> = assigned
            .iter()
            .filter(|t| !self.running.contains_key(&t.id))
            .filter(|t| self.backoff.get(&t.id).is_none_or(|b| b.retry_at <= now))
            .collect();
        if to_start.is_empty() {
            return;
        }
        let ids: Vec<TriggerId> = to_start.iter().map(|t| t.id).collect();
        let mut checkpoints = match self.store.load_checkpoints(&ids).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot load trigger checkpoints; starting them next loop");
                self.assigned = None;
                return;
            }
        };
        for trigger in to_start {
            let checkpoint = checkpoints.remove(&trigger.id).unwrap_or_default();
            self.start(trigger, checkpoint).await;
        }
    }

    async fn start(&mut self, trigger: &AssignedTrigger, checkpoint: HashMap<String, String>) {
        // Secrets live only here: resolved per start, never stored or logged. Whatever text
        // comes back from this start passes the scrubber first, since libraries echo settings.
        let resolved = secrets::resolve_from_env(&trigger.kwargs);
        let scrubber = match &resolved {
            Ok(kwargs) => secrets::Scrubber::new(&trigger.kwargs, kwargs),
            Err(_) => secrets::Scrubber::new(&trigger.kwargs, &trigger.kwargs),
        };
        let built = match self.registry.resolve(&trigger.classpath) {
            Some((_, provider)) => resolved
                .map_err(|e| format!("cannot build trigger: {e}"))
                .and_then(|kwargs| {
                    provider
                        .build(&kwargs)
                        .map(|built| (provider.name(), built))
                        .map_err(|e| format!("cannot build trigger: {e}"))
                }),
            None => Err(format!(
                "classpath `{}` is not built into this triggerer (known: {})",
                trigger.classpath,
                self.registry.canonical_classpaths().join(", ")
            )),
        };
        let (provider, event_trigger) = match built {
            Ok(t) => t,
            Err(message) => {
                self.failed(trigger.id, &scrubber, &message, None).await;
                return;
            }
        };
        self.generation += 1;
        let generation = self.generation;
        let cancel = CancellationToken::new();
        let ctx = TriggerContext {
            trigger_id: trigger.id,
            sink: EventSink::new(trigger.id, provider, self.events.clone()),
            warnings: WarningSink::new(trigger.id, self.warnings_tx.clone()),
            checkpoint,
            cancel: cancel.clone(),
        };
        let trigger_id = trigger.id;
        metrics::provider_started(provider);
        let abort = self.tasks.spawn(event_trigger.run(ctx));
        self.task_of.insert(abort.id(), (trigger_id, generation));
        info!(trigger_id = %trigger_id, classpath = %trigger.classpath, "trigger started");
        secrets::register_running(generation, &scrubber);
        self.running.insert(
            trigger.id,
            Running {
                generation,
                cancel,
                abort,
                started: Instant::now(),
                scrubber,
            },
        );
    }

    /// Waits for the next thing a trigger task reports: its end, or a warning.
    pub async fn next_report(&mut self) -> Report {
        loop {
            let joined = tokio::select! {
                Some(joined) = self.tasks.join_next_with_id() => joined,
                Some(warning) = self.warnings_rx.recv() => return Report::Warning(warning),
            };
            let (id, outcome) = match joined {
                Ok((id, result)) => (id, Ok(result)),
                Err(error) => (error.id(), Err(error)),
            };
            self.stopping.remove(&id);
            if let Some((trigger_id, generation)) = self.task_of.remove(&id) {
                return Report::Finished(Finished {
                    trigger_id,
                    generation,
                    outcome,
                });
            }
        }
    }

    /// Aborts the triggers that were taken away and have not stopped within the grace period.
    pub fn abort_overdue(&mut self) {
        let now = Instant::now();
        self.stopping.retain(|_, (abort, deadline)| {
            if *deadline > now {
                return true;
            }
            warn!("a trigger taken away did not stop within its grace period; aborting it");
            abort.abort();
            false
        });
    }

    /// Handles what [`Supervisor::next_report`] returned.
    pub async fn on_report(&mut self, report: Report) {
        match report {
            Report::Finished(finished) => self.on_finished(finished).await,
            Report::Warning(warning) => self.on_warning(warning).await,
        }
    }

    /// Logs a warning and shows it in `triggers list`, unless the trigger is no longer ours.
    async fn on_warning(&mut self, warning: Warning) {
        let Some(run) = self.running.get(&warning.trigger_id) else {
            return;
        };
        let message = run.scrubber.scrub(&warning.message);
        warn!(trigger_id = %warning.trigger_id, warning = %message, "trigger warning");
        if let Err(e) = self
            .store
            .record_trigger_warning(warning.trigger_id, &message)
            .await
        {
            warn!(trigger_id = %warning.trigger_id, error = %e, "cannot record the trigger warning");
        }
    }

    /// Handles a trigger task's end: anything but a cancellation we asked for is a failure.
    async fn on_finished(&mut self, finished: Finished) {
        secrets::unregister_running(finished.generation);
        let Some(run) = self.running.get(&finished.trigger_id) else {
            return; // cancelled by us; nothing to restart
        };
        if run.generation != finished.generation {
            return; // a previous incarnation
        }
        let ran_for = run.started.elapsed();
        let scrubber = run.scrubber.clone();
        self.running.remove(&finished.trigger_id);
        let message = match finished.outcome {
            // Removed or reassigned between two loops: not a failure. The next reconcile
            // decides whether it runs here again.
            Ok(Err(TriggerError::Emit(EmitError::NotCommitted(NotCommitted::Fenced)))) => {
                info!(
                    trigger_id = %finished.trigger_id,
                    "trigger no longer owned by this triggerer; stopped"
                );
                // It may be ours again by the next loop with the count unchanged: read anew.
                self.assigned = None;
                return;
            }
            Ok(Ok(())) => {
                "trigger stopped without being cancelled; event triggers must run until cancelled"
                    .to_string()
            }
            Ok(Err(e)) => e.to_string(),
            Err(join) if join.is_panic() => {
                let payload = join.into_panic();
                let text = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".into());
                format!("trigger panicked: {text}")
            }
            Err(join) => format!("trigger task ended: {join}"),
        };
        self.failed(finished.trigger_id, &scrubber, &message, Some(ran_for))
            .await;
    }

    /// Every failure is recorded and logged here, and only after `scrubber` took its secrets
    /// out: error text is where libraries echo the settings they refused.
    async fn failed(
        &mut self,
        trigger_id: TriggerId,
        scrubber: &secrets::Scrubber,
        message: &str,
        ran_for: Option<Duration>,
    ) {
        let message = scrubber.scrub(message);
        let healthy = ran_for.is_some_and(|d| d >= HEALTHY_RUN);
        let failures = match self.backoff.get(&trigger_id) {
            Some(b) if !healthy => b.failures + 1,
            _ => 1,
        };
        let delay = MIN_BACKOFF
            .saturating_mul(1u32 << (failures - 1).min(6))
            .min(MAX_BACKOFF);
        error!(trigger_id = %trigger_id, failures, retry_in = ?delay, error = %message, "trigger failed");
        self.backoff.insert(
            trigger_id,
            Backoff {
                failures,
                retry_at: Instant::now() + delay,
            },
        );
        if let Err(e) = self
            .store
            .record_trigger_failure(trigger_id, &message)
            .await
        {
            warn!(trigger_id = %trigger_id, error = %e, "cannot record the trigger failure");
        }
    }

    /// Cancels every trigger and waits up to the grace period for them to finish their
    /// acknowledgements; aborts those still running then.
    pub async fn shutdown(&mut self) {
        for run in self.running.values() {
            run.cancel.cancel();
        }
        let deadline = Instant::now() + self.grace;
        while !self.tasks.is_empty() {
            match tokio::time::timeout_at(deadline, self.tasks.join_next_with_id()).await {
                Ok(Some(Ok((id, _)))) => {
                    self.task_of.remove(&id);
                }
                Ok(Some(Err(error))) => {
                    self.task_of.remove(&error.id());
                }
                Ok(None) => break,
                Err(_) => {
                    for (trigger_id, _) in self.task_of.values() {
                        warn!(trigger_id = %trigger_id, "trigger did not stop in time; aborting it");
                    }
                    self.tasks.shutdown().await;
                    break;
                }
            }
        }
        for (_, run) in self.running.drain() {
            secrets::unregister_running(run.generation);
        }
        self.task_of.clear();
        self.stopping.clear();
    }
}
