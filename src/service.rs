//! A running service — `run` (triggerer), `scheduler`, `executor`, `standalone` (all three) —
//! as one function of which parts are switched on: the initial and watching sync of `--dags`,
//! the SQLite file watchdog, the triggerer, the scheduler, the executor and the HTTP server,
//! until told to stop. It owns their lifecycle
//! (start order, readiness, the first failure stopping the rest, a clean shutdown); it does
//! not listen to signals (the command line turns those into [`Controls`]) and decides nothing
//! the parts decide. End-to-end tests start a service in-process through it and wait for
//! [`Controls::ready`] instead of sleeping.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot, Notify};
use triggerer_sdk::CancellationToken;

use crate::executor::{self, ExecutorError, ExecutorOptions};
use crate::http::{self, HttpError, HttpOptions};
use crate::registry::ProviderRegistry;
use crate::scheduler::{self, SchedulerOptions};
use crate::store::{Store, StoreError};
use crate::sync::{watch, SyncError, SyncOptions};
use crate::triggerer::{self, TriggererOptions};

/// How often a running process checks that its SQLite file is still the one it opened.
const DATABASE_FILE_CHECK: Duration = Duration::from_secs(2);

/// Which parts run, and how.
#[derive(Debug, Clone, Default)]
pub struct ServiceOptions {
    /// `--dags PATH`: synced at start (a broken file refuses the start), then on every change
    /// and on [`Controls::reload`].
    pub dags: Option<PathBuf>,
    pub sync: SyncOptions,
    pub triggerer: Option<TriggererOptions>,
    pub scheduler: Option<SchedulerOptions>,
    pub executor: Option<ExecutorOptions>,
    /// `--http`: the API, webhooks, metrics and UI of this process.
    pub http: Option<HttpOptions>,
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error(transparent)]
    Sync(#[from] SyncError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Executor(#[from] ExecutorError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("a service task failed: {0}")]
    Task(String),
}

/// What the caller holds to steer a service.
#[derive(Debug)]
pub struct Controls {
    /// Stops it: triggers stop, in-flight events commit, triggers are handed back.
    pub shutdown: CancellationToken,
    /// Asks `--dags` to re-sync even if nothing changed (SIGHUP).
    pub reload: mpsc::UnboundedSender<()>,
    /// Resolves once the initial sync is done and every part is started.
    pub ready: oneshot::Receiver<()>,
}

/// The receiving ends of [`Controls`], handed to [`serve`].
#[derive(Debug)]
pub struct Steering {
    shutdown: CancellationToken,
    reload: mpsc::UnboundedReceiver<()>,
    ready: oneshot::Sender<()>,
}

/// A pair of ends to steer one service with.
pub fn controls() -> (Controls, Steering) {
    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    (
        Controls {
            shutdown: shutdown.clone(),
            reload: reload_tx,
            ready: ready_rx,
        },
        Steering {
            shutdown,
            reload: reload_rx,
            ready: ready_tx,
        },
    )
}

/// Runs the parts `options` switches on until `steering.shutdown` fires, one of them fails
/// (the others are then stopped), or — for `scheduler --once` — nothing more is due.
pub async fn serve(
    store: &Store,
    registry: &ProviderRegistry,
    options: ServiceOptions,
    steering: Steering,
) -> Result<(), ServiceError> {
    let Steering {
        shutdown,
        reload,
        ready,
    } = steering;
    // Bound first: an address in use or an unprotected one refuses the start before anything
    // else runs.
    let http_server = match options.http {
        Some(http_options) => http::bind(http_options).await?,
        None => None,
    };
    // The parts stop on this token, the caller's or the first failure's.
    let stop = shutdown.child_token();
    let mut tasks: tokio::task::JoinSet<(&'static str, Result<(), ServiceError>)> =
        tokio::task::JoinSet::new();
    if let Some(path) = options.dags {
        let sync = options.sync;
        let applied = watch::initial_sync(store, &path, registry, sync).await?;
        let (store, registry, stop) = (store.clone(), registry.clone(), stop.clone());
        tasks.spawn(async move {
            watch::watch(store, path, registry, sync, applied, reload, stop).await;
            ("definitions watch", Ok(()))
        });
    }
    tasks.spawn({
        let (store, stop) = (store.clone(), stop.clone());
        async move {
            let mut every = tokio::time::interval(DATABASE_FILE_CHECK);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return ("database file watchdog", Ok(())),
                    _ = every.tick() => if let Err(e) = store.check_database_file() {
                        return ("database file watchdog", Err(e.into()));
                    },
                }
            }
        }
    });
    let committed = Arc::new(Notify::new());
    // The executor wakes the triggerer when tasks deferred (their triggers are new rows).
    let deferred = Arc::new(Notify::new());
    if let Some(triggerer_options) = options.triggerer {
        let run = triggerer::run(
            store.clone(),
            registry.clone(),
            triggerer_options,
            stop.clone(),
            committed.clone(),
            deferred.clone(),
        );
        tasks.spawn(async move { ("triggerer", run.await.map_err(ServiceError::from)) });
    }
    if let Some(server) = http_server {
        let run = server.run(
            store.clone(),
            registry.clone(),
            committed.clone(),
            stop.clone(),
        );
        tasks.spawn(async move { ("http", run.await.map_err(ServiceError::from)) });
    }
    let once = options.scheduler.as_ref().is_some_and(|o| o.once);
    // The scheduler wakes the executor when it schedules task instances.
    let tasks_ready = Arc::new(Notify::new());
    if let Some(executor_options) = options.executor {
        let run = executor::run(
            store.clone(),
            registry.clone(),
            executor_options,
            stop.clone(),
            tasks_ready.clone(),
            committed.clone(),
            deferred,
        );
        tasks.spawn(async move { ("executor", run.await.map_err(ServiceError::from)) });
    }
    if let Some(scheduler_options) = options.scheduler {
        let run = scheduler::run(
            store.clone(),
            scheduler_options,
            stop.clone(),
            committed,
            tasks_ready,
        );
        tasks.spawn(async move { ("scheduler", run.await.map_err(ServiceError::from)) });
    }
    let _ = ready.send(());

    let mut failure: Option<ServiceError> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = tasks.join_next() => match done {
                Ok(("scheduler", Ok(()))) if once => break,
                Ok((_, Ok(()))) => {}
                Ok((_, Err(e))) => { failure = Some(e); break }
                Err(e) => { failure = Some(ServiceError::Task(e.to_string())); break }
            },
            else => break,
        }
    }
    stop.cancel();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((_, Err(e))) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(ServiceError::Task(e.to_string()));
            }
            Ok((_, Ok(()))) => {}
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
