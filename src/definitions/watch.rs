//! `--dags PATH`: sync at start, then re-sync whenever a definition file under PATH changes.
//! A broken edit is reported and leaves the last good definitions in force.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use triggerer_sdk::CancellationToken;

use super::{sync, SyncError};
use crate::registry::ProviderRegistry;
use crate::store::Store;

/// Changes arriving closer together than this are one edit (editors write several times).
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Syncs `path` once; returns the error so a process can refuse to start on broken files.
pub async fn initial_sync(
    store: &Store,
    path: &PathBuf,
    registry: &ProviderRegistry,
) -> Result<(), SyncError> {
    let report = sync(store, std::slice::from_ref(path), registry).await?;
    info!(path = %path.display(), ?report, "definitions synced");
    Ok(())
}

/// Re-syncs `path` on every change until `shutdown`.
pub async fn watch(
    store: Store,
    path: PathBuf,
    registry: ProviderRegistry,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                if event.paths.iter().any(|p| super::is_definition_file(p)) || event.need_rescan() {
                    let _ = tx.send(());
                }
            }
        }) {
            Ok(w) => w,
            Err(e) => {
                error!(error = %e, "cannot watch definitions; changes need a restart");
                return;
            }
        };
    if let Err(e) = watcher.watch(&path, RecursiveMode::Recursive) {
        error!(path = %path.display(), error = %e, "cannot watch definitions; changes need a restart");
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.recv() => if changed.is_none() { return },
        }
        // Let the burst of writes settle, then sync once.
        while tokio::time::timeout(DEBOUNCE, rx.recv())
            .await
            .is_ok_and(|m| m.is_some())
        {}
        match sync(&store, std::slice::from_ref(&path), &registry).await {
            Ok(report) => info!(?report, "definitions re-synced"),
            Err(SyncError::Invalid(errors)) => {
                warn!("definitions not re-synced; the previous ones stay in force:\n{errors}")
            }
            Err(e) => warn!(error = %e, "definitions not re-synced"),
        }
    }
}
