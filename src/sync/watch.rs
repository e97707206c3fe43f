//! `--dags PATH`: sync at start, then re-sync whenever a definition file under PATH changes, or
//! when the process is told to reload (SIGHUP). A broken, half-written or emptied edit is
//! reported and leaves the last good definitions in force; a file that was only read or
//! touched writes nothing.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use triggerer_sdk::CancellationToken;

use super::{sync_snapshot, SyncError, SyncOptions};
use crate::definitions::{is_definition_file, DefinitionErrors, Snapshot};
use crate::registry::ProviderRegistry;
use crate::store::Store;

/// Changes arriving closer together than this are one edit (editors write several times); and
/// the files must read the same twice this far apart before they are applied, so that a file
/// caught between its truncation and its rewrite is not taken for the user's intent.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// How long after a failed write (the database, not the files) the same content is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Syncs `path` once; returns the error so a process can refuse to start on broken files.
/// Returns the digest of what it applied, for [`watch`].
pub async fn initial_sync(
    store: &Store,
    path: &PathBuf,
    registry: &ProviderRegistry,
    options: SyncOptions,
) -> Result<[u8; 32], SyncError> {
    let paths = std::slice::from_ref(path);
    let snapshot = Snapshot::read(paths)?;
    let report = sync_snapshot(store, &snapshot, paths, registry, options).await?;
    info!(path = %path.display(), "definitions synced: {report}");
    Ok(snapshot.digest())
}

/// Why the watcher looks at the files again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// A definition file changed: apply it if its content did.
    Changed,
    /// SIGHUP: sync even if nothing changed (a daemon's reload).
    Reload,
}

/// Re-syncs `path` on every change, and on every message on `reload`, until `shutdown`.
/// `applied` is the digest [`initial_sync`] returned.
pub async fn watch(
    store: Store,
    path: PathBuf,
    registry: ProviderRegistry,
    options: SyncOptions,
    mut applied: [u8; 32],
    mut reload: mpsc::UnboundedReceiver<()>,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher =
        match notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            // Reading the files (which every sync does) is an event too: reacting to it made
            // each sync start the next, forever.
            if event.kind.is_access() {
                return;
            }
            if event.paths.iter().any(|p| is_definition_file(p)) || event.need_rescan() {
                let _ = tx.send(());
            }
        }) {
            Ok(w) => Some(w),
            Err(e) => {
                error!(error = %e, "cannot watch definitions; only SIGHUP re-syncs them");
                None
            }
        };
    if let Some(w) = watcher.as_mut() {
        if let Err(e) = w.watch(&path, RecursiveMode::Recursive) {
            error!(path = %path.display(), error = %e, "cannot watch definitions; only SIGHUP re-syncs them");
        }
    }
    let paths = std::slice::from_ref(&path);
    let mut retry_at: Option<tokio::time::Instant> = None;
    // Without a working file watcher its channel closes at once; SIGHUP still re-syncs.
    let mut watching = true;
    loop {
        let cause = tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = rx.recv(), if watching => match changed {
                Some(()) => Cause::Changed,
                None => {
                    watching = false;
                    continue;
                }
            },
            asked = reload.recv() => match asked {
                Some(()) => Cause::Reload,
                None => return,
            },
            _ = async { tokio::time::sleep_until(retry_at.expect("guarded by the if")).await }, if retry_at.is_some() => Cause::Reload,
        };
        retry_at = None;
        let Some(snapshot) = settled_snapshot(paths, &mut rx, &shutdown).await else {
            return;
        };
        let (snapshot, digest) = match snapshot {
            Ok(settled) => settled,
            Err(errors) => {
                warn!("definitions not re-synced; the previous ones stay in force:\n{errors}");
                continue;
            }
        };
        if cause == Cause::Changed && digest == applied {
            continue;
        }
        match sync_snapshot(&store, &snapshot, paths, &registry, options).await {
            Ok(report) => {
                applied = digest;
                info!("definitions re-synced: {report}");
            }
            Err(SyncError::Store(e)) if e.is_transient() => {
                warn!(error = %e, retry_in = ?RETRY, "definitions not re-synced: the database is unavailable");
                retry_at = Some(tokio::time::Instant::now() + RETRY);
            }
            Err(SyncError::Invalid(errors)) => {
                warn!("definitions not re-synced; the previous ones stay in force:\n{errors}")
            }
            Err(e) => warn!("definitions not re-synced; the previous ones stay in force: {e}"),
        }
    }
}

/// Waits until the files stop changing, then reads them until two reads [`DEBOUNCE`] apart
/// agree. `None` on shutdown.
async fn settled_snapshot(
    paths: &[PathBuf],
    changes: &mut mpsc::UnboundedReceiver<()>,
    shutdown: &CancellationToken,
) -> Option<Result<(Snapshot, [u8; 32]), DefinitionErrors>> {
    let mut previous: Option<[u8; 32]> = None;
    loop {
        // Let the burst of writes settle.
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                more = tokio::time::timeout(DEBOUNCE, changes.recv()) => match more {
                    Ok(Some(())) => continue,
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let read = {
            let paths = paths.to_vec();
            tokio::task::spawn_blocking(move || Snapshot::read(&paths)).await
        };
        let snapshot = match read {
            Ok(snapshot) => snapshot,
            // The read panicked: say so and look again after the next pause, as for a file
            // caught mid-replace; the watch goes on.
            Err(e) => {
                error!(error = %e, "reading the definitions failed; trying again");
                previous = None;
                continue;
            }
        };
        let snapshot = match snapshot {
            Ok(s) => s,
            // Unreadable now (a file mid-replace): look again after the next pause.
            Err(_) if previous.is_none() => {
                previous = Some([0; 32]);
                continue;
            }
            Err(errors) => return Some(Err(errors)),
        };
        let digest = snapshot.digest();
        if previous == Some(digest) {
            return Some(Ok((snapshot, digest)));
        }
        previous = Some(digest);
    }
}
