//! The one OS watcher shared by every file trigger of a provider, and the routing table that
//! fans its events out to the triggers.
//!
//! Two locks, never nested the other way round: `control` (the watcher and the set of OS
//! watches) is held while calling into notify, whose `watch`/`unwatch` block until notify's
//! thread answers; `table` (subscribers) is only held briefly and is the only lock the notify
//! callback takes. So the callback can never wait on a thread that waits on notify.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tracing::{debug, warn};
use triggerer_sdk::TriggerError;

/// Per-subscriber queue length. A trigger that falls this far behind gets a full rescan instead
/// of more events: the notify thread must never block.
const CHANNEL_CAPACITY: usize = 4096;

/// What a trigger needs to know about one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    /// A file or directory appeared (it may still be being written).
    Created,
    /// A writer closed the file: its content is complete.
    ClosedWrite,
    /// Something was renamed to this path.
    MovedIn,
    /// The path was deleted or renamed away.
    Gone,
    /// A rename the backend could not orient; the trigger stats the path to decide.
    Renamed,
}

#[derive(Debug, Clone)]
pub(crate) struct FsChange {
    pub kind: ChangeKind,
    pub path: PathBuf,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves the maps consistent (every update is a
    // single insert or remove), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A subscriber's bounded queue of changes. Not a tokio channel: one of those allocates its
/// first block (about 1 KiB here) when created, which 100,000 idle file triggers paid for
/// nothing; this queue allocates when a change arrives.
#[derive(Debug)]
struct Inbox {
    queue: Mutex<VecDeque<FsChange>>,
    capacity: usize,
    ready: Notify,
}

impl Inbox {
    fn new(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            ready: Notify::new(),
        }
    }

    /// Queues `change`; false when the queue is full (the change is dropped).
    fn push(&self, change: FsChange) -> bool {
        {
            let mut queue = lock(&self.queue);
            if queue.len() >= self.capacity {
                return false;
            }
            queue.push_back(change);
        }
        self.ready.notify_one();
        true
    }

    fn pop(&self) -> Option<FsChange> {
        lock(&self.queue).pop_front()
    }

    /// The next change. Cancel-safe: a change is taken only by the poll that returns it.
    async fn recv(&self) -> FsChange {
        loop {
            if let Some(change) = self.pop() {
                return change;
            }
            self.ready.notified().await;
        }
    }
}

/// One trigger's registration.
#[derive(Debug)]
pub(crate) struct Subscriber {
    id: u64,
    root: PathBuf,
    recursive: bool,
    inbox: Inbox,
    overflow: AtomicBool,
    wake: Notify,
}

impl Subscriber {
    fn new(id: u64, root: PathBuf, recursive: bool, capacity: usize) -> Self {
        Self {
            id,
            root,
            recursive,
            inbox: Inbox::new(capacity),
            overflow: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    fn forward(&self, change: FsChange) {
        if !self.inbox.push(change) {
            self.mark_overflow();
        }
    }

    fn mark_overflow(&self) {
        self.overflow.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

#[derive(Debug, Default)]
struct Table {
    roots: HashMap<PathBuf, Vec<Arc<Subscriber>>>,
    /// Roots that were deleted or renamed away: notify may have dropped (or kept on the moved
    /// inode) their OS watch, so the next reconcile must re-create it.
    lost: HashSet<PathBuf>,
    next_id: u64,
}

impl Table {
    /// The OS watches the current subscribers need: one per root, recursive if any of its
    /// subscribers is, none for a root already inside a recursive one. Overlapping watches
    /// would share notify's per-path entries and break each other on removal.
    fn desired(&self) -> HashMap<PathBuf, bool> {
        let mut modes: HashMap<PathBuf, bool> = self
            .roots
            .iter()
            .filter(|(_, subs)| !subs.is_empty())
            .map(|(root, subs)| (root.clone(), subs.iter().any(|s| s.recursive)))
            .collect();
        let recursive: Vec<PathBuf> = modes
            .iter()
            .filter(|(_, rec)| **rec)
            .map(|(p, _)| p.clone())
            .collect();
        modes.retain(|path, _| !recursive.iter().any(|r| r != path && path.starts_with(r)));
        modes
    }

    fn overflow_under(&self, paths: &[PathBuf]) {
        for (root, subs) in &self.roots {
            if paths.iter().any(|p| root.starts_with(p)) {
                subs.iter().for_each(|s| s.mark_overflow());
            }
        }
    }
}

/// The routing half, shared with notify's callback.
#[derive(Debug, Default)]
struct Router {
    table: Mutex<Table>,
}

impl Router {
    fn handle(&self, result: notify::Result<notify::Event>) {
        let event = match result {
            Ok(event) => event,
            Err(error) => {
                // Lost watches or a failed read: nobody can tell which files were missed.
                warn!(%error, "file watcher error; rescanning every watched directory");
                self.overflow_all();
                return;
            }
        };
        if event.need_rescan() {
            debug!("file watcher queue overflowed; rescanning every watched directory");
            self.overflow_all();
        }
        let changes = classify(&event);
        if changes.is_empty() {
            return;
        }
        let mut table = lock(&self.table);
        for change in changes {
            if matches!(change.kind, ChangeKind::Gone | ChangeKind::Renamed)
                && table.roots.contains_key(&change.path)
            {
                table.lost.insert(change.path.clone());
            }
            for (depth, ancestor) in change.path.ancestors().enumerate() {
                if let Some(subs) = table.roots.get(ancestor) {
                    for sub in subs.iter().filter(|s| depth <= 1 || s.recursive) {
                        sub.forward(change.clone());
                    }
                }
            }
        }
    }

    fn overflow_all(&self) {
        let table = lock(&self.table);
        table
            .roots
            .values()
            .flatten()
            .for_each(|s| s.mark_overflow());
    }
}

/// Keeps only what a file trigger acts on; opens, reads, attribute changes and partial writes
/// are dropped here so that they do not fill the queues.
fn classify(event: &notify::Event) -> Vec<FsChange> {
    let kind = match event.kind {
        EventKind::Create(_) => ChangeKind::Created,
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => ChangeKind::ClosedWrite,
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => ChangeKind::MovedIn,
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => ChangeKind::Gone,
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            // paths = [from, to]
            let mut changes = Vec::with_capacity(2);
            if let Some(from) = event.paths.first() {
                changes.push(FsChange {
                    kind: ChangeKind::Gone,
                    path: from.clone(),
                });
            }
            if let Some(to) = event.paths.get(1) {
                changes.push(FsChange {
                    kind: ChangeKind::MovedIn,
                    path: to.clone(),
                });
            }
            return changes;
        }
        EventKind::Modify(ModifyKind::Name(_)) => ChangeKind::Renamed,
        EventKind::Remove(_) => ChangeKind::Gone,
        _ => return Vec::new(),
    };
    event
        .paths
        .iter()
        .map(|path| FsChange {
            kind,
            path: path.clone(),
        })
        .collect()
}

/// A directory a recursive OS watch leaves out, and why (a phrase: "cannot watch it: …").
pub(crate) type Skipped = (PathBuf, String);

#[derive(Default)]
struct Control {
    watcher: Option<RecommendedWatcher>,
    /// OS watches in place: path → recursive.
    watches: HashMap<PathBuf, bool>,
    /// Per recursive OS watch, the subdirectories it leaves out.
    skipped: HashMap<PathBuf, Vec<Skipped>>,
}

impl Control {
    fn covers(&self, root: &Path, recursive: bool) -> bool {
        self.watches.get(root).is_some_and(|rec| *rec || !recursive)
            || root
                .ancestors()
                .skip(1)
                .any(|a| self.watches.get(a) == Some(&true))
    }

    /// The left-out directories a subscriber at `root` misses files in.
    fn skipped_under(&self, root: &Path, recursive: bool) -> Vec<Skipped> {
        if !recursive {
            return Vec::new();
        }
        self.skipped
            .values()
            .flatten()
            .filter(|(dir, _)| dir.starts_with(root))
            .cloned()
            .collect()
    }

    fn forget(&mut self, path: &Path) {
        self.watches.remove(path);
        self.skipped.remove(path);
    }
}

/// `error` in a phrase, without notify's list of paths (the caller names the directory).
fn describe(error: &notify::Error) -> String {
    match &error.kind {
        notify::ErrorKind::Io(e) => e.to_string(),
        notify::ErrorKind::PathNotFound => "no such file or directory".to_owned(),
        notify::ErrorKind::MaxFilesWatch => {
            "the OS limit on watches is reached (fs.inotify.max_user_watches)".to_owned()
        }
        notify::ErrorKind::Generic(message) => message.clone(),
        other => format!("{other:?}"),
    }
}

/// Adds a recursive watch on `dir` through `try_watch`, leaving out the subdirectories that
/// cannot be watched (recorded in `skipped`) instead of failing for all of them: notify gives
/// up on a whole tree at the first subdirectory it cannot watch (an unreadable one, say).
/// `Err`: `dir` itself cannot be watched, or the OS limit on watches is reached (then every
/// further attempt would fail as well).
fn watch_tree(
    dir: &Path,
    try_watch: &mut dyn FnMut(&Path) -> notify::Result<()>,
    skipped: &mut Vec<Skipped>,
) -> notify::Result<()> {
    let error = match try_watch(dir) {
        Ok(()) => return Ok(()),
        Err(error) => error,
    };
    let below = error.paths.iter().any(|p| p != dir && p.starts_with(dir));
    if !below || matches!(error.kind, notify::ErrorKind::MaxFilesWatch) {
        return Err(error);
    }
    debug!(dir = %dir.display(), error = %error, "recursive watch incomplete; watching subdirectories one by one");
    // notify kept what it added before the failure, `dir` included; a recursive watch per
    // child covers the rest (re-adding a watch only extends it).
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            skipped.push((
                dir.to_path_buf(),
                format!("cannot list its subdirectories to watch them: {e}"),
            ));
            return Ok(());
        }
    };
    for entry in entries.flatten() {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        // notify follows symlinks to directories; so must the fallback.
        let link = file_type.is_symlink();
        let is_dir =
            file_type.is_dir() || (link && std::fs::metadata(&path).is_ok_and(|m| m.is_dir()));
        if !is_dir {
            continue;
        }
        let result = if link {
            // Taken whole or not at all: through a link the tree may loop back on itself.
            try_watch(&path)
        } else {
            watch_tree(&path, try_watch, skipped)
        };
        match result {
            Ok(()) => {}
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => return Err(e),
            Err(e) if matches!(e.kind, notify::ErrorKind::PathNotFound) && !path.exists() => {
                debug!(dir = %path.display(), "subdirectory gone before it could be watched");
            }
            Err(e) => {
                let mut reason = format!("cannot watch it: {}", describe(&e));
                if let Some(at) = e.paths.iter().find(|p| **p != path) {
                    reason.push_str(&format!(" (at {})", at.display()));
                }
                skipped.push((path, reason));
            }
        }
    }
    Ok(())
}

/// The provider-wide watcher. Created empty; the OS watcher starts with the first subscriber.
pub(crate) struct Hub {
    control: Mutex<Control>,
    router: Arc<Router>,
    channel_capacity: usize,
    /// Stopped subscriptions whose OS watches are still being released.
    releasing: AtomicUsize,
}

impl Default for Hub {
    fn default() -> Self {
        Self::with_channel_capacity(CHANNEL_CAPACITY)
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("os_watches", &lock(&self.control).watches)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub fn with_channel_capacity(channel_capacity: usize) -> Self {
        Self {
            control: Mutex::default(),
            router: Arc::default(),
            channel_capacity: channel_capacity.max(1),
            releasing: AtomicUsize::new(0),
        }
    }

    /// Registers a trigger for changes under `root` (canonical) and makes sure an OS watch covers
    /// it. Blocking: call it from `spawn_blocking`.
    pub fn subscribe(
        self: &Arc<Self>,
        root: PathBuf,
        recursive: bool,
    ) -> Result<Subscription, TriggerError> {
        let (sub, nothing_lost) = {
            let mut table = lock(&self.router.table);
            table.next_id += 1;
            let sub = Arc::new(Subscriber::new(
                table.next_id,
                root.clone(),
                recursive,
                self.channel_capacity,
            ));
            table
                .roots
                .entry(root.clone())
                .or_default()
                .push(sub.clone());
            (sub, table.lost.is_empty())
        };
        // From here on the guard undoes the registration on every exit path.
        let mut subscription = Subscription {
            hub: self.clone(),
            sub,
            skipped: Vec::new(),
        };

        let mut control = lock(&self.control);
        // The common case — a directory already watched — must not cost a walk over every
        // subscriber: with 100,000 triggers that made start-up quadratic.
        if nothing_lost && control.covers(&root, recursive) {
            subscription.skipped = control.skipped_under(&root, recursive);
            return Ok(subscription);
        }
        let mut errors = self.reconcile(&mut control)?;
        if control.covers(&root, recursive) {
            subscription.skipped = control.skipped_under(&root, recursive);
            return Ok(subscription);
        }
        let reason = root
            .ancestors()
            .find_map(|a| errors.remove(a))
            .map(|e| e.to_string())
            .unwrap_or_else(|| "no watch in place".to_owned());
        drop(control);
        Err(TriggerError::failed(format!(
            "cannot watch {}: {reason}",
            root.display()
        )))
    }

    /// Stops routing to a subscriber. Fast: only the routing table. Returns whether the OS
    /// watches may have to change: the root lost its last subscriber or its last recursive one.
    fn unroute(&self, root: &Path, id: u64, recursive: bool) -> bool {
        let mut table = lock(&self.router.table);
        let Some(subs) = table.roots.get_mut(root) else {
            return true;
        };
        subs.retain(|s| s.id != id);
        if subs.is_empty() {
            table.roots.remove(root);
            return true;
        }
        recursive && !subs.iter().any(|s| s.recursive)
    }

    /// Releases the OS watches no subscriber needs any more. Blocking.
    fn release(&self) {
        let mut control = lock(&self.control);
        if let Err(e) = self.reconcile(&mut control) {
            warn!(error = %e, "file watcher: cannot update watches after a trigger stopped");
        }
    }

    /// Brings the OS watches in line with the table. Returns the watches that could not be
    /// added; their subscribers are told to rescan, which reports the problem.
    fn reconcile(
        &self,
        control: &mut Control,
    ) -> Result<HashMap<PathBuf, notify::Error>, TriggerError> {
        let (desired, lost) = {
            let mut table = lock(&self.router.table);
            (table.desired(), std::mem::take(&mut table.lost))
        };
        let mut removed = Vec::new();
        for path in lost {
            if control.watches.contains_key(&path) {
                control.forget(&path);
                if let Some(watcher) = control.watcher.as_mut() {
                    // notify usually dropped it already; then this only reports "not found".
                    let _ = watcher.unwatch(&path);
                }
                removed.push(path);
            }
        }
        let stale: Vec<PathBuf> = control
            .watches
            .iter()
            .filter(|(path, rec)| desired.get(*path) != Some(*rec))
            .map(|(path, _)| path.clone())
            .collect();
        // Removals before additions: a new recursive watch re-adds the directories a removed
        // nested watch had, whereas removing afterwards would tear them out of it.
        for path in stale {
            control.forget(&path);
            if let Some(watcher) = control.watcher.as_mut() {
                if let Err(e) = watcher.unwatch(&path) {
                    debug!(path = %path.display(), error = %e, "unwatch failed");
                }
            }
            removed.push(path);
        }

        let mut errors = HashMap::new();
        let missing: Vec<(PathBuf, bool)> = desired
            .into_iter()
            .filter(|(path, _)| !control.watches.contains_key(path))
            .collect();
        if !missing.is_empty() && control.watcher.is_none() {
            let router = self.router.clone();
            let watcher = notify::recommended_watcher(move |res| router.handle(res))
                .map_err(|e| TriggerError::failed(format!("cannot start the file watcher: {e}")))?;
            control.watcher = Some(watcher);
        }
        if let Some(watcher) = control.watcher.as_mut() {
            for (path, recursive) in missing {
                let mut skipped = Vec::new();
                let added = if recursive {
                    watch_tree(
                        &path,
                        &mut |dir| watcher.watch(dir, RecursiveMode::Recursive),
                        &mut skipped,
                    )
                } else {
                    watcher.watch(&path, RecursiveMode::NonRecursive)
                };
                match added {
                    Ok(()) => {
                        debug!(path = %path.display(), recursive, "OS watch added");
                        for (dir, reason) in &skipped {
                            warn!(dir = %dir.display(), reason, "directory left out of a recursive watch");
                        }
                        if !skipped.is_empty() {
                            control.skipped.insert(path.clone(), skipped);
                        }
                        control.watches.insert(path, recursive);
                    }
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot watch directory");
                        errors.insert(path, e);
                    }
                }
            }
        }

        // Subscribers under a removed watch were blind for a moment (or for good if it could not
        // be re-added): a rescan finds what they missed, or reports why it cannot.
        removed.extend(errors.keys().cloned());
        if !removed.is_empty() {
            lock(&self.router.table).overflow_under(&removed);
        }
        Ok(errors)
    }

    /// Number of OS watches in place (tests check that triggers share them).
    #[cfg(test)]
    pub fn os_watch_count(&self) -> usize {
        lock(&self.control).watches.len()
    }

    /// Number of registered subscribers.
    #[cfg(test)]
    pub fn subscriber_count(&self) -> usize {
        lock(&self.router.table).roots.values().map(Vec::len).sum()
    }

    /// Waits until stopped subscriptions have released their OS watches.
    #[cfg(test)]
    pub async fn settled(&self) {
        while self.releasing.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

/// A trigger's registration; dropping it unregisters and releases the OS watch if it was the
/// last user.
#[derive(Debug)]
pub(crate) struct Subscription {
    hub: Arc<Hub>,
    sub: Arc<Subscriber>,
    skipped: Vec<Skipped>,
}

impl Subscription {
    /// Subdirectories under the root that the OS watch leaves out (canonical paths), and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// A handle on the overflow flag.
    pub fn overflow_signal(&self) -> OverflowSignal {
        OverflowSignal(self.sub.clone())
    }

    /// The next change under the root (cancel-safe).
    pub async fn recv(&self) -> FsChange {
        self.sub.inbox.recv().await
    }

    /// A change already queued, if any.
    pub fn try_recv(&self) -> Option<FsChange> {
        self.sub.inbox.pop()
    }
}

/// Set when events were (or may have been) lost for a subscriber: it must rescan.
#[derive(Debug, Clone)]
pub(crate) struct OverflowSignal(Arc<Subscriber>);

impl OverflowSignal {
    /// Clears and returns the flag.
    pub fn take(&self) -> bool {
        self.0.overflow.swap(false, Ordering::SeqCst)
    }

    /// Resolves once the flag is set, and clears it.
    pub async fn wait(&self) {
        loop {
            if self.take() {
                return;
            }
            self.0.wake.notified().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self
            .hub
            .unroute(&self.sub.root, self.sub.id, self.sub.recursive)
        {
            return; // others still need the same watch
        }
        let hub = self.hub.clone();
        hub.releasing.fetch_add(1, Ordering::SeqCst);
        let release = move || {
            hub.release();
            hub.releasing.fetch_sub(1, Ordering::SeqCst);
        };
        // Unwatching (and re-watching a tree that was nested in this one) blocks on notify's
        // thread and may walk a directory tree: keep it off the async workers when possible.
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(release);
            }
            Err(_) => release(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, Flag, RemoveKind};

    fn register(router: &Router, root: &str, recursive: bool, capacity: usize) -> Arc<Subscriber> {
        let mut table = lock(&router.table);
        table.next_id += 1;
        let sub = Arc::new(Subscriber::new(
            table.next_id,
            PathBuf::from(root),
            recursive,
            capacity,
        ));
        table
            .roots
            .entry(PathBuf::from(root))
            .or_default()
            .push(sub.clone());
        sub
    }

    fn event(kind: EventKind, paths: &[&str]) -> notify::Result<notify::Event> {
        let mut event = notify::Event::new(kind);
        for path in paths {
            event = event.add_path(PathBuf::from(path));
        }
        Ok(event)
    }

    fn drain(sub: &Subscriber) -> Vec<(ChangeKind, String)> {
        let mut out = Vec::new();
        while let Some(change) = sub.inbox.pop() {
            out.push((change.kind, change.path.display().to_string()));
        }
        out
    }

    #[test]
    fn routes_by_root_and_depth() {
        let router = Router::default();
        let flat = register(&router, "/w", false, 16);
        let deep = register(&router, "/w", true, 16);
        let other = register(&router, "/other", true, 16);
        let close = EventKind::Access(AccessKind::Close(AccessMode::Write));
        router.handle(event(close, &["/w/a"]));
        router.handle(event(close, &["/w/sub/b"]));
        router.handle(event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            &["/w/c"],
        ));
        router.handle(event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/w/sub/x", "/w/y"],
        ));
        assert_eq!(
            drain(&flat),
            vec![
                (ChangeKind::ClosedWrite, "/w/a".into()),
                (ChangeKind::MovedIn, "/w/y".into()),
            ]
        );
        assert_eq!(
            drain(&deep),
            vec![
                (ChangeKind::ClosedWrite, "/w/a".into()),
                (ChangeKind::ClosedWrite, "/w/sub/b".into()),
                (ChangeKind::Gone, "/w/sub/x".into()),
                (ChangeKind::MovedIn, "/w/y".into()),
            ]
        );
        assert!(drain(&other).is_empty());
    }

    #[test]
    fn full_queue_or_rescan_flag_sets_overflow() {
        let router = Router::default();
        let small = register(&router, "/w", false, 1);
        let idle = register(&router, "/v", false, 16);
        router.handle(event(EventKind::Create(CreateKind::File), &["/w/a"]));
        assert!(!small.overflow.load(Ordering::SeqCst));
        router.handle(event(EventKind::Create(CreateKind::File), &["/w/b"]));
        assert!(
            small.overflow.load(Ordering::SeqCst),
            "a full queue must set the flag"
        );
        assert!(!idle.overflow.load(Ordering::SeqCst));

        router.handle(Ok(
            notify::Event::new(EventKind::Other).set_flag(Flag::Rescan)
        ));
        assert!(
            idle.overflow.load(Ordering::SeqCst),
            "a rescan flag reaches everyone"
        );
        idle.overflow.store(false, Ordering::SeqCst);
        router.handle(Err(notify::Error::generic("boom")));
        assert!(
            idle.overflow.load(Ordering::SeqCst),
            "an error reaches everyone"
        );
    }

    #[test]
    fn removed_root_is_marked_lost() {
        let router = Router::default();
        let _sub = register(&router, "/w", false, 16);
        router.handle(event(EventKind::Remove(RemoveKind::File), &["/w/file"]));
        router.handle(event(EventKind::Remove(RemoveKind::Folder), &["/w"]));
        let table = lock(&router.table);
        assert_eq!(table.lost, HashSet::from([PathBuf::from("/w")]));
    }

    /// notify's recursive watch as seen from outside: it fails for a whole tree, naming the
    /// first directory it cannot watch.
    fn fake_notify<'a>(
        unwatchable: &'a [PathBuf],
        calls: &'a mut Vec<PathBuf>,
    ) -> impl FnMut(&Path) -> notify::Result<()> + 'a {
        move |dir: &Path| {
            calls.push(dir.to_path_buf());
            match unwatchable.iter().find(|bad| bad.starts_with(dir)) {
                Some(bad) => {
                    Err(notify::Error::io(std::io::Error::from_raw_os_error(13))
                        .add_path(bad.clone()))
                }
                None => Ok(()),
            }
        }
    }

    #[test]
    fn a_recursive_watch_leaves_out_only_the_directories_it_cannot_watch() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for sub in ["a/b", "locked/inner", "c/deep/locked-too", "c/deep/fine"] {
            std::fs::create_dir_all(root.join(sub)).expect("mkdir");
        }
        let unwatchable = [root.join("locked"), root.join("c/deep/locked-too")];
        let mut calls = Vec::new();
        let mut skipped = Vec::new();
        watch_tree(
            root,
            &mut fake_notify(&unwatchable, &mut calls),
            &mut skipped,
        )
        .expect("the root itself can be watched");
        let skipped_dirs: HashSet<PathBuf> = skipped.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(skipped_dirs, HashSet::from(unwatchable.clone()));
        for (dir, reason) in &skipped {
            assert!(
                reason.contains("Permission denied"),
                "{}: {reason}",
                dir.display()
            );
        }
        // Each watchable part is covered by one recursive watch; nothing below a left-out
        // directory is tried.
        for covered in ["a", "c/deep/fine"] {
            assert!(
                calls.contains(&root.join(covered)),
                "{covered} not watched: {calls:?}"
            );
        }
        assert!(!calls
            .iter()
            .any(|c| c.starts_with(root.join("locked/inner"))));

        // The root itself, or the watch limit, is an error for the whole watch.
        let mut calls = Vec::new();
        let err = watch_tree(
            root,
            &mut fake_notify(&[root.to_path_buf()], &mut calls),
            &mut skipped,
        )
        .expect_err("an unwatchable root fails");
        assert_eq!(err.paths, vec![root.to_path_buf()]);
        let mut limit = |_: &Path| {
            Err(notify::Error::new(notify::ErrorKind::MaxFilesWatch).add_path(root.join("a/b")))
        };
        let err = watch_tree(root, &mut limit, &mut Vec::new()).expect_err("limit reached");
        assert!(matches!(err.kind, notify::ErrorKind::MaxFilesWatch));
    }

    #[test]
    fn desired_watches_skip_roots_inside_recursive_ones() {
        let router = Router::default();
        let _subs = [
            register(&router, "/a", false, 1),
            register(&router, "/a", true, 1),
            register(&router, "/a/b", false, 1),
            register(&router, "/c", false, 1),
            register(&router, "/c/d", true, 1),
            register(&router, "/ab", false, 1),
        ];
        let desired = lock(&router.table).desired();
        assert_eq!(
            desired,
            HashMap::from([
                (PathBuf::from("/a"), true),
                (PathBuf::from("/c"), false),
                (PathBuf::from("/c/d"), true),
                (PathBuf::from("/ab"), false),
            ])
        );
    }
}
