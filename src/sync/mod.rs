//! Syncing definitions (`dags sync`, `--dags`): read and validate the files
//! ([`crate::definitions`]), write the plan as one reconciliation
//! ([`Store::apply_definitions`]), then align every DAG's next scheduled slot with its
//! (possibly new) schedule ([`crate::scheduler::refresh_next_dagruns`]). It owns the refusals
//! that protect a running system from a bad sync; [`watch`] re-syncs on change and on SIGHUP.
//! It must not parse definitions or decide schedules itself.

pub mod watch;

use std::path::PathBuf;

use thiserror::Error;

use crate::definitions::{DefinitionErrors, Snapshot};
use crate::registry::ProviderRegistry;
use crate::store::{Store, StoreError, SyncReport};

#[derive(Debug, Error)]
pub enum SyncError {
    #[error("{0}")]
    Invalid(#[from] DefinitionErrors),
    #[error(
        "{0}: no definition file (*.toml) found; nothing was changed (pass --allow-empty to \
         remove every asset and DAG)"
    )]
    NoDefinitionFiles(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How careful a sync is with what it would remove.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncOptions {
    /// Accept a sync that finds no definition file, or that would leave none of the assets and
    /// DAGs now defined. Without it such a sync is refused: it is what an empty or half-written
    /// file, or a mistyped path, looks like.
    pub allow_empty: bool,
}

/// Loads and writes the definitions under `paths`, then aligns every DAG's next scheduled
/// slot with its (possibly new) schedule. Nothing is written if anything is wrong.
pub async fn sync(
    store: &Store,
    paths: &[PathBuf],
    registry: &ProviderRegistry,
    options: SyncOptions,
) -> Result<SyncReport, SyncError> {
    let snapshot = Snapshot::read(paths)?;
    sync_snapshot(store, &snapshot, paths, registry, options).await
}

/// [`sync`] of what was already read from `paths`.
pub async fn sync_snapshot(
    store: &Store,
    snapshot: &Snapshot,
    paths: &[PathBuf],
    registry: &ProviderRegistry,
    options: SyncOptions,
) -> Result<SyncReport, SyncError> {
    if snapshot.files() == 0 && !options.allow_empty {
        return Err(SyncError::NoDefinitionFiles(display_paths(paths)));
    }
    let mut plan = snapshot.validate(registry)?;
    plan.allow_removing_everything = options.allow_empty;
    let report = store.apply_definitions(&plan).await?;
    crate::scheduler::refresh_next_dagruns(store, crate::time::now()).await?;
    Ok(report)
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
