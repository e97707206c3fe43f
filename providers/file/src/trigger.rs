//! One running file trigger: start-up scan, live events, pending-file timers and the pipelined
//! deliveries.

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, info_span, warn, Instrument};
use triggerer_sdk::{
    CancellationToken, Event, EventSink, EventTrigger, InFlight, Settled, TriggerContext,
    TriggerError, WarningSink,
};

use crate::config::{FileTriggerConfig, Target};
use crate::watch::{ChangeKind, FsChange, Hub, Subscription};

/// Deliveries awaiting their commit before the trigger stops reading new changes.
const MAX_IN_FLIGHT: usize = 1024;
/// The settle period: a file not known to be complete (no close-after-write or rename seen) is
/// emitted once two looks this far apart see the same size and mtime. Hard links and some tools
/// never close a written descriptor on the new name; a scan cannot see a close at all.
const SETTLE: Duration = Duration::from_millis(500);
/// Checkpoint keys (and the path part of dedup keys) of paths that are not UTF-8: this prefix
/// and the standard base64 of the path's bytes. Payload paths are absolute, so no UTF-8 path
/// starts like this.
const BYTES_KEY_PREFIX: &str = "base64:";
/// Bound on the wait for in-flight deliveries when cancelled: the core's writer normally answers
/// within a batch; past this the events are redelivered after the restart anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A file's identity: a new inode, a new birth time or a new mtime is a new occurrence. The
/// birth time (statx btime, where the filesystem keeps one) tells a new file from an old one
/// even when the filesystem hands the new file the old one's inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    inode: u64,
    mtime_ns: i128,
    birth_ns: Option<i128>,
}

impl Identity {
    /// `inode:mtime_ns` or `inode:mtime_ns:birth_ns`.
    fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(':');
        let inode = parts.next()?.parse().ok()?;
        let mtime_ns = parts.next()?.parse().ok()?;
        let birth_ns = match parts.next() {
            Some(b) => Some(b.parse().ok()?),
            None => None,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            inode,
            mtime_ns,
            birth_ns,
        })
    }

    /// The file's mtime: when the source (whoever wrote the file) says the occurrence happened.
    fn mtime(&self) -> Option<SystemTime> {
        system_time(self.mtime_ns)
    }

    /// Whether `other`, seen at the same path, is another file rather than this one rewritten.
    fn is_other_file(&self, other: &Identity) -> bool {
        self.inode != other.inode
            || matches!((self.birth_ns, other.birth_ns), (Some(a), Some(b)) if a != b)
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.inode, self.mtime_ns)?;
        if let Some(birth) = self.birth_ns {
            write!(f, ":{birth}")?;
        }
        Ok(())
    }
}

/// A regular file as stat saw it.
#[derive(Debug, Clone)]
struct FileInfo {
    path: PathBuf,
    identity: Identity,
    size: u64,
}

impl FileInfo {
    fn from_metadata(path: PathBuf, meta: &std::fs::Metadata) -> Self {
        Self {
            path,
            identity: identity_of(meta),
            size: meta.len(),
        }
    }

    fn look(&self) -> Look {
        Look {
            identity: self.identity,
            size: self.size,
        }
    }
}

/// What two looks at a file must agree on before it counts as complete. The size too: an mtime
/// can stand still while a file grows (coarse timestamps, attribute caching, a file server's
/// clock), and an mtime that looks old says nothing on such filesystems either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    identity: Identity,
    size: u64,
}

/// The checkpoint key of `path`, also the path part of its dedup key: the path itself when it
/// is UTF-8, else [`BYTES_KEY_PREFIX`] and its bytes in base64, so that distinct names that read
/// the same once decoded lossily keep distinct keys.
fn path_key(path: &Path) -> Cow<'_, str> {
    match path.to_str() {
        Some(utf8) => Cow::Borrowed(utf8),
        None => Cow::Owned(format!(
            "{BYTES_KEY_PREFIX}{}",
            BASE64.encode(path.as_os_str().as_encoded_bytes())
        )),
    }
}

/// The path a checkpoint key stands for (the inverse of [`path_key`]).
fn path_from_key(key: &str) -> Option<PathBuf> {
    let Some(encoded) = key.strip_prefix(BYTES_KEY_PREFIX) else {
        return Some(PathBuf::from(key));
    };
    let bytes = BASE64.decode(encoded).ok()?;
    Some(PathBuf::from(os_string_from_bytes(bytes)))
}

#[cfg(unix)]
fn os_string_from_bytes(bytes: Vec<u8>) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(bytes)
}

#[cfg(not(unix))]
fn os_string_from_bytes(bytes: Vec<u8>) -> OsString {
    // Paths elsewhere are not raw bytes; a key this build wrote is UTF-8 there anyway.
    OsString::from(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(unix)]
fn identity_of(meta: &std::fs::Metadata) -> Identity {
    use std::os::unix::fs::MetadataExt;
    Identity {
        inode: meta.ino(),
        mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        birth_ns: birth_ns(meta),
    }
}

/// The file's birth time, where the OS and filesystem report one.
fn birth_ns(meta: &std::fs::Metadata) -> Option<i128> {
    let created = meta.created().ok()?;
    let since = created.duration_since(UNIX_EPOCH).ok()?;
    Some(since.as_nanos() as i128)
}

#[cfg(not(unix))]
fn identity_of(meta: &std::fs::Metadata) -> Identity {
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    Identity {
        inode: 0,
        mtime_ns,
        birth_ns: birth_ns(meta),
    }
}

/// The instant `ns` nanoseconds from the Unix epoch (before it when negative); `None` when
/// `SystemTime` cannot hold it.
fn system_time(ns: i128) -> Option<SystemTime> {
    let since = Duration::new(
        u64::try_from(ns.unsigned_abs() / 1_000_000_000).ok()?,
        (ns.unsigned_abs() % 1_000_000_000) as u32,
    );
    if ns >= 0 {
        UNIX_EPOCH.checked_add(since)
    } else {
        UNIX_EPOCH.checked_sub(since)
    }
}

fn rfc3339(mtime_ns: i128) -> String {
    let secs = mtime_ns.div_euclid(1_000_000_000);
    let nanos = mtime_ns.rem_euclid(1_000_000_000);
    i64::try_from(secs)
        .ok()
        .and_then(|s| DateTime::<Utc>::from_timestamp(s, nanos as u32))
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Stats `path`, following symlinks. `None` when it vanished in the meantime.
fn stat(path: &Path) -> Option<std::fs::Metadata> {
    match std::fs::metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) => {
            debug!(path = %path.display(), error = %e, "file vanished before it could be read");
            None
        }
    }
}

/// A single-file target whose path is now a directory: it was waiting for a name that turned
/// out to be a directory, so the restart must resolve `filepath` afresh (as a directory).
fn became_directory(path: &Path) -> Halt {
    Halt::Failed(TriggerError::failed(format!(
        "filepath {} is now a directory; restarting to watch it as one",
        path.display()
    )))
}

/// Why a trigger stopped reading.
enum Halt {
    Cancelled,
    Failed(TriggerError),
}

impl From<TriggerError> for Halt {
    fn from(e: TriggerError) -> Self {
        Self::Failed(e)
    }
}

/// A file's delivery settled. Its checkpoint is the file's acknowledgement, committed with the
/// event by the core: nothing to do upstream when it committed.
fn settle(settled: Settled<PathBuf>) -> Result<(), Halt> {
    // A refusal means the checkpoint in the database is behind ours: stop, and let the restart
    // reload the committed one so that the refused files are emitted again.
    settled
        .outcome
        .map(|_| ())
        .map_err(|e| Halt::Failed(TriggerError::from(e)))
}

/// Submits events without waiting for their commits, up to `MAX_IN_FLIGHT` at a time.
struct Emitter {
    sink: EventSink,
    cancel: CancellationToken,
    in_flight: InFlight<PathBuf>,
}

impl Emitter {
    fn new(sink: EventSink, cancel: CancellationToken) -> Self {
        Self {
            sink,
            cancel,
            in_flight: InFlight::new(MAX_IN_FLIGHT),
        }
    }

    async fn submit(&mut self, event: Event, path: PathBuf) -> Result<(), Halt> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return Err(Halt::Cancelled),
            _ = self.in_flight.reserve() => {}
        }
        // A refusal that came in while waiting for room stops the trigger before it emits more.
        while let Some(settled) = self.in_flight.try_next() {
            settle(settled)?;
        }
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(Halt::Cancelled),
            submitted = self.in_flight.submit(&self.sink, event, path) => {
                submitted.map_err(|e| Halt::Failed(TriggerError::from(e)))
            }
        }
    }

    async fn drain(self) {
        let in_flight = self.in_flight.len();
        let drained = self.in_flight.drain(Instant::now() + DRAIN_TIMEOUT).await;
        for settled in &drained.settled {
            if let Err(e) = &settled.outcome {
                debug!(path = %settled.token.display(), error = %e, "event not committed while stopping; it is emitted again after the restart");
            }
        }
        if !drained.is_complete() {
            warn!(
                in_flight,
                left = drained.unsettled.len(),
                "stopping with deliveries still unanswered"
            );
        }
    }
}

/// A file to emit once complete: a close-after-write, or a look one settle period after the
/// last one seeing it unchanged.
#[derive(Debug, Clone, Copy)]
struct Pending {
    deadline: Instant,
    /// The file when last looked at.
    last: Look,
    /// Time between looks.
    settle: Duration,
    /// A create or rename event was seen in this run: the file is new even if an old one with
    /// the same inode (inodes get reused) was emitted before.
    created: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    File(PathBuf),
    /// Rescan a directory that appeared: files written into it before notify added its watch
    /// produce no event.
    Dir(PathBuf),
}

/// Per-run state.
struct Watch {
    target: Arc<Target>,
    include_modified: bool,
    /// Settle period of files found by a scan. With `poke_interval`, at least that: polling is
    /// for filesystems that send no notifications, mostly network ones, where two looks in quick
    /// succession may both be answered from the client's attribute cache.
    scan_settle: Duration,
    warnings: WarningSink,
    /// Directories a scan could not list, reported once until a full scan lists them again.
    unlisted: HashSet<PathBuf>,
    /// path → identity last submitted (committed or in flight).
    emitted: HashMap<PathBuf, Identity>,
    pending: HashMap<PathBuf, Pending>,
    dir_rescans: HashMap<PathBuf, Instant>,
    /// Deadlines of `pending` and `dir_rescans`; an entry whose deadline no longer matches its
    /// map is stale and skipped.
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
}

impl Watch {
    fn new(
        target: Arc<Target>,
        config: &FileTriggerConfig,
        warnings: WarningSink,
        checkpoint: HashMap<String, String>,
    ) -> Self {
        let emitted = checkpoint
            .into_iter()
            .filter_map(
                |(key, value)| match (path_from_key(&key), Identity::parse(&value)) {
                    (Some(path), Some(identity)) => Some((path, identity)),
                    _ => {
                        warn!(key, value, "ignoring a malformed checkpoint entry");
                        None
                    }
                },
            )
            .collect();
        Self {
            target,
            include_modified: config.include_modified,
            scan_settle: config.poke_interval.map_or(SETTLE, |poke| poke.max(SETTLE)),
            warnings,
            unlisted: HashSet::new(),
            emitted,
            pending: HashMap::new(),
            dir_rescans: HashMap::new(),
            timers: BinaryHeap::new(),
        }
    }

    /// What to emit for a file in state `info`, if anything. `live`: found through an event
    /// rather than a scan; `created`: its appearance was seen in this run.
    fn label(&self, info: &FileInfo, created: bool, live: bool) -> Option<&'static str> {
        let appeared = if live || created {
            "created"
        } else {
            "existing"
        };
        match self.emitted.get(&info.path) {
            // Same identity: same dedup key, the database would keep one anyway.
            Some(prev) if *prev == info.identity => None,
            None => Some(appeared),
            Some(prev) if prev.is_other_file(&info.identity) => Some(appeared),
            // Without a birth time a reused inode looks like a rewrite: trust a create event.
            // With one, the identity already told, and a later rescan of the same file (its
            // mtime set by the tool that wrote it) is a modification, not a second creation.
            Some(prev)
                if created && (prev.birth_ns.is_none() || info.identity.birth_ns.is_none()) =>
            {
                Some("created")
            }
            Some(_) => self.include_modified.then_some("modified"),
        }
    }

    async fn emit(
        &mut self,
        em: &mut Emitter,
        info: &FileInfo,
        label: &'static str,
    ) -> Result<(), Halt> {
        let path = info.path.to_string_lossy();
        let key = path_key(&info.path);
        let identity = info.identity;
        let mut payload = json!({
            "path": path,
            "size": info.size,
            "mtime": rfc3339(identity.mtime_ns),
            "event": label,
        });
        if info.path.to_str().is_none() {
            // `path` lost bytes in decoding: these are the name a consumer can open.
            payload["path_bytes_b64"] = BASE64
                .encode(info.path.as_os_str().as_encoded_bytes())
                .into();
        }
        let mut event = Event::new(payload, format!("file:{key}:{identity}"))
            .with_checkpoint(key.into_owned(), identity.to_string());
        event.source_time = identity.mtime();
        debug!(path = %path, event = label, %identity, "file event");
        // Recorded before the commit so that a second event for the same file while this one is
        // in flight is recognised as a duplicate.
        self.emitted.insert(info.path.clone(), identity);
        em.submit(event, info.path.clone()).await
    }

    fn schedule_file(&mut self, path: PathBuf, last: Look, settle: Duration, created: bool) {
        let deadline = Instant::now() + settle;
        self.pending.insert(
            path.clone(),
            Pending {
                deadline,
                last,
                settle,
                created,
            },
        );
        self.timers.push(Reverse((deadline, Timer::File(path))));
    }

    fn schedule_dir(&mut self, path: PathBuf) {
        let deadline = Instant::now() + SETTLE;
        self.dir_rescans.insert(path.clone(), deadline);
        self.timers.push(Reverse((deadline, Timer::Dir(path))));
    }

    fn is_current(&self, deadline: Instant, timer: &Timer) -> bool {
        match timer {
            Timer::File(path) => self.pending.get(path).map(|p| p.deadline) == Some(deadline),
            Timer::Dir(path) => self.dir_rescans.get(path) == Some(&deadline),
        }
    }

    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, timer))) = self.timers.peek() {
            if self.is_current(*deadline, timer) {
                return Some(*deadline);
            }
            self.timers.pop();
        }
        None
    }

    /// Walks `start` (the root, or a directory that appeared under it) off the async workers.
    /// `Err`: `start` itself cannot be listed.
    async fn walk(&self, start: PathBuf) -> Result<Result<Walked, io::Error>, TriggerError> {
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || walk(&target, &start))
            .await
            .map_err(|e| TriggerError::failed(format!("directory scan task failed: {e}")))
    }

    /// Tells about directories a scan skipped, each once: a poke_interval rescan meeting them
    /// again is no news. `full`: the scan covered the whole tree, so a directory it listed fine
    /// is forgotten and reported again if it becomes unreadable again.
    fn report_unlisted(&mut self, unlisted: Vec<(PathBuf, io::Error)>, full: bool) {
        let mut now = HashSet::with_capacity(unlisted.len());
        for (dir, error) in unlisted {
            if !self.unlisted.contains(&dir) {
                warn!(dir = %dir.display(), %error, "skipping unreadable directory");
                self.warnings.warn(format!(
                    "skipping directory {}: cannot list it: {error}",
                    dir.display()
                ));
            }
            now.insert(dir);
        }
        if full {
            self.unlisted = now;
        } else {
            self.unlisted.extend(now);
        }
    }

    /// Takes the files of `infos` not emitted before to the settle check: a scan cannot tell a
    /// finished file from one a writer is still at, whatever its mtime says.
    fn absorb(&mut self, infos: Vec<FileInfo>, created: bool) {
        for info in infos {
            if self.pending.contains_key(&info.path)
                || self.label(&info, created, created).is_none()
            {
                continue;
            }
            let look = info.look();
            self.schedule_file(info.path, look, self.scan_settle, created);
        }
    }

    async fn full_scan(&mut self) -> Result<(), Halt> {
        if let Some(file) = self.target.single_file() {
            if file.is_dir() {
                return Err(became_directory(file));
            }
        }
        let walked = self.walk(self.target.root.clone()).await?.map_err(|e| {
            TriggerError::io(format!("cannot list {}", self.target.root.display()), e)
        })?;
        debug!(root = %self.target.root.display(), files = walked.files.len(), "scanned");
        self.report_unlisted(walked.unlisted, true);
        self.absorb(walked.files, false);
        Ok(())
    }

    /// After lost events the queued ones are stale: a full rescan replaces them. Removals are
    /// still applied, as a scan cannot see what is gone (and a file recreated at a removed path
    /// must count as new).
    async fn rescan_after_overflow(
        &mut self,
        sub: &Subscription,
        em: &mut Emitter,
    ) -> Result<(), Halt> {
        debug!(root = %self.target.root.display(), "events lost; rescanning");
        while let Some(change) = sub.try_recv() {
            if matches!(change.kind, ChangeKind::Gone | ChangeKind::Renamed) {
                self.on_change(em, change).await?;
            }
        }
        self.full_scan().await
    }

    async fn scan_new_dir(&mut self, dir: PathBuf) -> Result<(), Halt> {
        match self.walk(dir.clone()).await? {
            Ok(walked) => {
                self.report_unlisted(walked.unlisted, false);
                self.absorb(walked.files, true);
            }
            // Gone again: its removal event tells the rest.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!(dir = %dir.display(), "new directory gone before its scan");
            }
            Err(e) => self.report_unlisted(vec![(dir, e)], false),
        }
        Ok(())
    }

    async fn on_change(&mut self, em: &mut Emitter, change: FsChange) -> Result<(), Halt> {
        if change.path == self.target.watch_root
            && matches!(change.kind, ChangeKind::Gone | ChangeKind::Renamed)
        {
            // Its OS watch went with it: a restart re-creates the watch (or reports that the
            // directory is missing) and rescans.
            return Err(Halt::Failed(TriggerError::failed(format!(
                "watched directory {} was removed or moved away",
                self.target.root.display()
            ))));
        }
        let Some(path) = self.target.to_user_path(&change.path) else {
            return Ok(());
        };
        let kind = match change.kind {
            ChangeKind::Renamed if path.exists() => ChangeKind::MovedIn,
            ChangeKind::Renamed => ChangeKind::Gone,
            kind => kind,
        };
        match kind {
            ChangeKind::Gone => {
                self.pending.remove(&path);
                // A file later appearing at this path is new, whatever its inode.
                self.emitted.remove(&path);
            }
            ChangeKind::Created | ChangeKind::MovedIn => {
                if !self.target.recursive_watch && !self.target.matches(&path) {
                    return Ok(());
                }
                let Some(meta) = stat(&path) else {
                    self.pending.remove(&path);
                    return Ok(());
                };
                if meta.is_dir() {
                    if self.target.single_file() == Some(path.as_path()) {
                        return Err(became_directory(&path));
                    }
                    self.on_new_dir(path).await?;
                } else if meta.is_file() && self.target.matches(&path) {
                    let info = FileInfo::from_metadata(path, &meta);
                    if kind == ChangeKind::Created {
                        // Not complete yet: wait for the close-after-write (or the settle check).
                        // The OS notifies about this tree, so looks are not served from a cache.
                        let look = info.look();
                        self.schedule_file(info.path, look, SETTLE, true);
                    } else {
                        // A rename is atomic: the file is complete under its new name.
                        self.pending.remove(&info.path);
                        if let Some(label) = self.label(&info, true, true) {
                            self.emit(em, &info, label).await?;
                        }
                    }
                }
            }
            ChangeKind::ClosedWrite => {
                if !self.target.matches(&path) {
                    return Ok(());
                }
                let pending = self.pending.remove(&path);
                let Some(meta) = stat(&path) else {
                    return Ok(());
                };
                if !meta.is_file() {
                    return Ok(());
                }
                let info = FileInfo::from_metadata(path, &meta);
                let created = pending.is_some_and(|p| p.created);
                if let Some(label) = self.label(&info, created, true) {
                    self.emit(em, &info, label).await?;
                }
            }
            ChangeKind::Renamed => {}
        }
        Ok(())
    }

    async fn on_new_dir(&mut self, dir: PathBuf) -> Result<(), Halt> {
        let Some(depth) = self.target.depth_of(&dir) else {
            return Ok(());
        };
        let name = dir.file_name().unwrap_or_default();
        if depth == 0 || !self.target.descends_into(name, depth) {
            return Ok(());
        }
        // Now for latency, and once more after notify has surely added the new directory's
        // watch, for files written in between.
        self.scan_new_dir(dir.clone()).await?;
        self.schedule_dir(dir);
        Ok(())
    }

    async fn on_timers(&mut self, em: &mut Emitter) -> Result<(), Halt> {
        let now = Instant::now();
        while let Some(Reverse((deadline, _))) = self.timers.peek() {
            if *deadline > now {
                break;
            }
            let Some(Reverse((deadline, timer))) = self.timers.pop() else {
                break;
            };
            if !self.is_current(deadline, &timer) {
                continue;
            }
            match timer {
                Timer::Dir(dir) => {
                    self.dir_rescans.remove(&dir);
                    self.scan_new_dir(dir).await?;
                }
                Timer::File(path) => {
                    let Some(pending) = self.pending.remove(&path) else {
                        continue;
                    };
                    let Some(meta) = stat(&path) else {
                        continue;
                    };
                    if !meta.is_file() {
                        continue;
                    }
                    let info = FileInfo::from_metadata(path, &meta);
                    let look = info.look();
                    if look != pending.last {
                        // Still being written: look again one settle period from now.
                        self.schedule_file(info.path, look, pending.settle, pending.created);
                    } else if let Some(label) = self.label(&info, pending.created, pending.created)
                    {
                        self.emit(em, &info, label).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn run(
        &mut self,
        sub: &Subscription,
        em: &mut Emitter,
        poke_interval: Option<Duration>,
    ) -> Result<(), Halt> {
        let overflow = sub.overflow_signal();
        // Subscribed before this scan: a file appearing during it is seen by one or the other.
        self.full_scan().await?;
        let mut ticker = poke_interval.map(|period| {
            let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        loop {
            if overflow.take() {
                self.rescan_after_overflow(sub, em).await?;
            }
            let deadline = self.next_deadline();
            let can_read = em.in_flight.has_room();
            tokio::select! {
                biased;
                _ = em.cancel.cancelled() => return Err(Halt::Cancelled),
                Some(settled) = em.in_flight.next(), if !em.in_flight.is_empty() => settle(settled)?,
                _ = overflow.wait() => self.rescan_after_overflow(sub, em).await?,
                change = sub.recv(), if can_read => self.on_change(em, change).await?,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.on_timers(em).await?;
                }
                _ = async { if let Some(t) = ticker.as_mut() { t.tick().await; } }, if ticker.is_some() => {
                    self.full_scan().await?;
                }
            }
        }
    }
}

/// What a walk found.
#[derive(Debug, Default)]
struct Walked {
    /// The regular files the target matches.
    files: Vec<FileInfo>,
    /// Subdirectories that could not be listed, and why.
    unlisted: Vec<(PathBuf, io::Error)>,
}

/// Lists the regular files under `start` that the target matches. Blocking. `Err`: `start`
/// itself cannot be listed; a subdirectory that cannot be is skipped (and reported), as one
/// unreadable subdirectory must not stop the whole trigger.
fn walk(target: &Target, start: &Path) -> Result<Walked, io::Error> {
    let mut walked = Walked::default();
    let Some(start_depth) = target.depth_of(start) else {
        return Ok(walked);
    };
    let mut dirs = vec![(start.to_path_buf(), start_depth)];
    while let Some((dir, depth)) = dirs.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if dir == start => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                walked.unlisted.push((dir, e));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    debug!(dir = %dir.display(), error = %e, "directory entry unreadable");
                    continue;
                }
            };
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            // Symlinked directories are not followed: they could loop.
            if file_type.is_dir() {
                if target.descends_into(&name, depth + 1) {
                    dirs.push((entry.path(), depth + 1));
                }
                continue;
            }
            if !target.may_match_name(&name) {
                continue;
            }
            let path = entry.path();
            if !target.matches(&path) {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    walked.files.push(FileInfo::from_metadata(path, &meta))
                }
                Ok(_) => {}
                Err(e) => debug!(path = %path.display(), error = %e, "file vanished during scan"),
            }
        }
    }
    Ok(walked)
}

/// A file trigger, built by [`FileProvider`](crate::FileProvider) from validated kwargs.
#[derive(Debug)]
pub struct FileTrigger {
    hub: Arc<Hub>,
    config: FileTriggerConfig,
}

impl FileTrigger {
    pub(crate) fn new(hub: Arc<Hub>, config: FileTriggerConfig) -> Self {
        Self { hub, config }
    }

    /// The kwargs this trigger was built from.
    pub fn config(&self) -> &FileTriggerConfig {
        &self.config
    }
}

#[async_trait]
impl EventTrigger for FileTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let FileTrigger { hub, config } = *self;
        let TriggerContext {
            trigger_id,
            sink,
            warnings,
            checkpoint,
            cancel,
        } = ctx;

        let resolve = config.clone();
        let target = tokio::task::spawn_blocking(move || Target::resolve(&resolve))
            .await
            .map_err(|e| TriggerError::failed(format!("filepath resolution task failed: {e}")))??;
        let target = Arc::new(target);

        let (watch_root, recursive) = (target.watch_root.clone(), target.recursive_watch);
        let subscription =
            tokio::task::spawn_blocking(move || hub.subscribe(watch_root, recursive))
                .await
                .map_err(|e| TriggerError::failed(format!("watch task failed: {e}")))??;
        info!(
            trigger_id = %trigger_id,
            root = %target.root.display(),
            recursive,
            "watching for files"
        );

        for (dir, reason) in subscription.skipped() {
            let dir = target.to_user_path(dir).unwrap_or_else(|| dir.clone());
            warnings.warn(format!("skipping directory {}: {reason}", dir.display()));
        }

        let mut watch = Watch::new(target, &config, warnings, checkpoint);
        let mut emitter = Emitter::new(sink, cancel);
        let outcome = watch
            .run(&subscription, &mut emitter, config.poke_interval)
            .instrument(info_span!("file_trigger", trigger_id = %trigger_id))
            .await;
        // Stop receiving before waiting on the deliveries.
        drop(subscription);
        match outcome {
            Ok(()) | Err(Halt::Cancelled) => {
                emitter.drain().await;
                Ok(())
            }
            Err(Halt::Failed(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_time_is_the_mtime_to_the_nanosecond() {
        let identity = Identity {
            inode: 7,
            mtime_ns: 1_700_000_000_123_456_789,
            birth_ns: None,
        };
        assert_eq!(
            identity.mtime(),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789))
        );
        assert_eq!(system_time(0), Some(UNIX_EPOCH));
        assert_eq!(
            system_time(-1_500_000_000),
            Some(UNIX_EPOCH - Duration::from_millis(1_500))
        );
        assert_eq!(system_time(i128::MAX), None);
    }
}
