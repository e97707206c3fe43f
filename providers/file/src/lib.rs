//! The `file` provider: emits one event per file that appears in a watched directory, the
//! triggerer's take on Airflow's `FileTrigger`. It owns one OS file watcher (inotify on Linux,
//! through `notify`) shared by all its triggers, with reference-counted watches and a routing
//! table that fans notifications out to the triggers; each trigger owns only its own scan state.
//!
//! Classpaths: `file.FileTrigger` (canonical), `airflow.providers.standard.triggers.file.FileTrigger`,
//! `airflow.triggers.file.FileTrigger`. For the common message-queue trigger it serves the
//! scheme `file` and `queue` URIs `file://PATH` (PATH becomes `filepath`).
//!
//! | kwarg              | type            | default  | meaning |
//! |--------------------|-----------------|----------|---------|
//! | `filepath`         | string          | required | A directory (every regular file directly in it), a single file (`/data/in/ready.flag`: that file, whether it is there yet or not), or a glob pattern matched against the full path (`/data/in/*.csv`, `/data/**/*.json`). Relative paths are resolved against the triggerer's working directory when the trigger starts. The directory (for a single file: its parent; for a glob: its longest wildcard-free prefix) must exist. |
//! | `recursive`        | bool            | `false`  | Also files in subdirectories. For a glob it lets `*` and `?` match across `/`; a `**` in the pattern implies recursive watching anyway. Ignored for a single file. |
//! | `include_modified` | bool            | `false`  | Also emit when an already emitted file is rewritten in place (same inode, new mtime), with `"event": "modified"`. |
//! | `poke_interval`    | number (s) > 0  | none     | Also rescan every `poke_interval` seconds: a safety net for filesystems that send no notifications (NFS, some FUSE mounts). Accepted for Airflow compatibility; values below 0.1 s count as 0.1 s. |
//!
//! Names starting with `.` are skipped (as Python's glob does unless the pattern spells the dot):
//! writers commonly write a hidden temporary file and rename it into place.
//!
//! What `filepath` names is decided when the trigger starts: a pattern with `*`, `?`
//! or `[` is a glob; otherwise an existing directory, or any path ending in `/`, is a directory;
//! any other path is a single file, waited for in its parent directory (which must exist, as a
//! missing directory is more often a typo than something to wait for; the supervisor retries
//! it with backoff). A single file is emitted once it is complete, like any file, and again only
//! as a new file at that path (or, with `include_modified`, rewritten). If a directory appears
//! at a single file's path, the trigger fails with `filepath … is now a directory` so that its
//! restart watches it as the directory it turned out to be.
//!
//! Delivery guarantee: a file's identity is its inode, its mtime in nanoseconds and, where the
//! filesystem keeps one, its birth time (so a new file that got a deleted file's inode number is
//! still new); the dedup key is `file:{path key}:{inode}:{mtime_ns}[:{birth_ns}]` and the
//! checkpoint maps the path key to `{inode}:{mtime_ns}[:{birth_ns}]`, committed with the event.
//! The path key is the absolute path, or for a path that is not valid UTF-8 `base64:` and the
//! standard base64 of its bytes (absolute paths start with `/`, so the two cannot collide).
//! The payload is
//! `{"path", "size", "mtime" (RFC 3339, UTC), "event": "created" | "modified" | "existing"}`,
//! plus `"path_bytes_b64"` (standard base64 of the path's raw bytes) only when the path is not
//! valid UTF-8: `path` then shows the invalid bytes as U+FFFD and is not a usable path.
//! A file is emitted once it is complete: on close-after-write, on a rename into the tree, or
//! once two looks one settle period apart see the same size and mtime (both: an mtime can stand
//! still, or look old, while a file grows on a filesystem with coarse timestamps, attribute
//! caching or another clock). The settle period is 500 ms; for a file found by a scan (at
//! start, by a `poke_interval` rescan, after lost events), which cannot see a close, it is
//! `poke_interval` when that is longer, as network filesystems may answer two quick looks from
//! their attribute cache. A writer pausing longer than that is indistinguishable from a finished
//! one. A file counts as new when a create or rename was seen for it in this run (inodes get
//! reused), or when its path is absent from the checkpoint or has another inode; a new mtime
//! alone is a modification, emitted only with `include_modified`. At start, the trigger
//! subscribes, then scans, and emits (as `"existing"`) every matching file its committed
//! checkpoint does not hold: a restart emits exactly the files that appeared while it was down.
//! When events may have been lost (queue overflow, inotify overflow, watcher errors), it rescans.
//! Deliveries are pipelined; a refused one makes the trigger fail so that the supervisor restarts
//! it from its committed checkpoint. A missing, unreadable or deleted watch directory (for a
//! single file: its parent) is an error naming the path (the supervisor retries with backoff). A subdirectory that cannot be listed
//! or watched (permissions, say) is skipped with a warning (`TriggerContext::warnings`) naming
//! it and the OS error, once per run (again only if it was readable in between); the rest of the
//! tree is watched and emits. Files under a skipped directory are not seen, except by scans if
//! it becomes readable later.
//!
//! What it must not do: open, move or delete the files it reports (it only stats them and lists
//! directories), block notify's thread (its callback only routes, with `try_send`), emit a file
//! before it is complete when the OS says so, or depend on the triggerer core.

mod config;
mod trigger;
mod watch;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use serde_json::{Map, Value};
use triggerer_sdk::{EventTrigger, KwargsError, TypedProvider};

pub use config::FileTriggerConfig;
pub use trigger::FileTrigger;

use watch::Hub;

/// The classpaths of [`FileProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &[
    "file.FileTrigger",
    "airflow.providers.standard.triggers.file.FileTrigger",
    "airflow.triggers.file.FileTrigger",
];

/// The `file` provider. One per process: it holds the OS watcher its triggers share.
#[derive(Debug, Default)]
pub struct FileProvider {
    hub: Arc<Hub>,
}

impl FileProvider {
    pub fn new() -> Self {
        Self::default()
    }

    /// A provider whose triggers fall back to rescanning after only `capacity` queued changes.
    #[cfg(test)]
    fn with_channel_capacity(capacity: usize) -> Self {
        Self {
            hub: Arc::new(Hub::with_channel_capacity(capacity)),
        }
    }
}

impl TypedProvider for FileProvider {
    type Params = FileTriggerConfig;
    const NAME: &'static str = "file";
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const SCHEMES: &'static [&'static str] = &["file"];
    const HINTS: &'static [(&'static str, &'static str)] = &[("filepath", config::FILEPATH_HINT)];

    fn check(&self, params: &FileTriggerConfig) -> Result<(), KwargsError> {
        params.check()
    }

    /// `file:///data/in/*.csv` (or `file://relative/dir`) is `filepath`; other kwargs as given.
    fn queue_params(
        &self,
        queue: &str,
        kwargs: &Map<String, Value>,
    ) -> Option<Result<Map<String, Value>, KwargsError>> {
        let path = queue.strip_prefix("file://")?;
        if kwargs.contains_key("filepath") {
            return Some(Err(KwargsError::new(
                "filepath",
                "is given by the `queue` URI; set one or the other",
            )));
        }
        let mut merged = kwargs.clone();
        merged.insert("filepath".into(), Value::String(path.to_string()));
        Some(Ok(merged))
    }

    fn build_trigger(
        &self,
        config: FileTriggerConfig,
    ) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(FileTrigger::new(self.hub.clone(), config)))
    }
}
