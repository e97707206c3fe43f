//! Behaviour tests: real directories (tempfile), the real OS watcher, the SDK's TestRun.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use triggerer_sdk::testkit::TestRun;
use triggerer_sdk::{Event, EventTrigger, NotCommitted, Provider};

use crate::{FileProvider, FileTriggerConfig, CLASSPATHS};

/// How long to wait for an event that must come. Generous: the machine may be busy.
const WAIT: Duration = Duration::from_secs(20);
/// How long nothing must arrive to conclude that no further event is coming.
const QUIET: Duration = Duration::from_millis(1500);

fn build(provider: &FileProvider, kwargs: Value) -> Box<dyn EventTrigger> {
    provider.validate(&kwargs).expect("valid kwargs");
    provider.build(&kwargs).expect("build")
}

fn start(provider: &FileProvider, kwargs: Value) -> TestRun {
    TestRun::start(build(provider, kwargs), HashMap::new(), 64)
}

fn s(path: &Path) -> String {
    path.to_str().expect("utf-8 temp path").to_owned()
}

fn path_of(event: &Event) -> String {
    event.payload["path"]
        .as_str()
        .expect("payload.path is a string")
        .to_owned()
}

fn kind_of(event: &Event) -> String {
    event.payload["event"]
        .as_str()
        .expect("payload.event is a string")
        .to_owned()
}

fn paths(events: &[Event]) -> Vec<String> {
    events.iter().map(path_of).collect()
}

fn set(paths: &[PathBuf]) -> HashSet<String> {
    paths.iter().map(|p| s(p)).collect()
}

/// Commits exactly `n` events, failing the test if one does not come in time.
async fn take(run: &mut TestRun, n: usize) -> Vec<Event> {
    let mut events = Vec::with_capacity(n);
    while events.len() < n {
        match run.commit_next(WAIT).await {
            Some(event) => events.push(event),
            None => panic!(
                "expected {n} events, got {}: {:?}",
                events.len(),
                paths(&events)
            ),
        }
    }
    events
}

/// Commits events until none arrives for a while; they are unexpected.
async fn assert_quiet(run: &mut TestRun) {
    let mut extra = Vec::new();
    while let Some(event) = run.commit_next(QUIET).await {
        extra.push(event);
    }
    assert!(
        extra.is_empty(),
        "unexpected events: {:?}",
        extra.iter().map(|e| &e.payload).collect::<Vec<_>>()
    );
}

/// Writes a probe file and waits for its event: the trigger is then subscribed and past its
/// start-up scan. Returns the events committed meanwhile, probe last.
async fn ready(run: &mut TestRun, probe: &Path) -> Vec<Event> {
    fs::write(probe, b"probe").expect("write probe");
    let want = s(probe);
    let mut events = Vec::new();
    loop {
        let event = run
            .commit_next(WAIT)
            .await
            .unwrap_or_else(|| panic!("no event for probe {want}; got {:?}", paths(&events)));
        let done = path_of(&event) == want;
        events.push(event);
        if done {
            return events;
        }
    }
}

fn write_files(dir: &Path, names: &[&str]) -> Vec<PathBuf> {
    names
        .iter()
        .map(|name| {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).expect("mkdir");
            }
            fs::write(&path, format!("content of {name}")).expect("write file");
            path
        })
        .collect()
}

async fn wait_for_watch_count(provider: &FileProvider, want: usize) {
    tokio::time::timeout(WAIT, provider.hub.settled())
        .await
        .expect("stopped triggers release their watches");
    assert_eq!(provider.hub.os_watch_count(), want, "OS watches");
}

// ---------------------------------------------------------------- kwargs

fn kwargs_error(kwargs: Value) -> triggerer_sdk::KwargsError {
    let provider = FileProvider::new();
    let err = provider
        .validate(&kwargs)
        .expect_err(&format!("kwargs {kwargs} must be rejected"));
    let built = provider.build(&kwargs);
    assert!(built.is_err(), "build must reject what validate rejects");
    err
}

#[test]
fn names_and_classpaths() {
    let provider = FileProvider::new();
    assert_eq!(provider.name(), "file");
    assert_eq!(
        provider.classpaths(),
        &[
            "file.FileTrigger",
            "airflow.providers.standard.triggers.file.FileTrigger",
            "airflow.triggers.file.FileTrigger",
        ]
    );
    assert_eq!(provider.classpaths(), CLASSPATHS);
}

#[test]
fn kwargs_accepted() {
    let provider = FileProvider::new();
    for kwargs in [
        json!({"filepath": "/data/in"}),
        json!({"filepath": "relative/dir"}),
        json!({"filepath": "/data/in/*.csv"}),
        json!({"filepath": "/data/**/*.json", "recursive": true}),
        json!({"filepath": "/data/in", "include_modified": true, "poke_interval": 5}),
        json!({"filepath": "/data/in", "poke_interval": 0.5}),
        json!({"filepath": "/data/in", "recursive": null, "poke_interval": null}),
    ] {
        provider
            .validate(&kwargs)
            .unwrap_or_else(|e| panic!("{kwargs} rejected: {e}"));
        provider.build(&kwargs).expect("build");
    }
    let config = triggerer_sdk::parse_params(
        &provider,
        &json!({
            "filepath": "/x", "recursive": true, "include_modified": true, "poke_interval": 2.5
        }),
    )
    .expect("valid");
    assert_eq!(
        config,
        FileTriggerConfig {
            filepath: "/x".into(),
            recursive: true,
            include_modified: true,
            poke_interval: Some(Duration::from_millis(2500)),
        }
    );
    let defaults =
        triggerer_sdk::parse_params(&provider, &json!({"filepath": "/x"})).expect("valid");
    assert!(!defaults.recursive && !defaults.include_modified);
    assert_eq!(defaults.poke_interval, None);
}

#[test]
fn kwargs_rejected_with_the_field_named() {
    let cases = [
        (json!({}), "filepath"),
        (json!({"filepath": null}), "filepath"),
        (json!({"filepath": ""}), "filepath"),
        (json!({"filepath": 3}), "filepath"),
        (json!({"filepath": ["/a"]}), "filepath"),
        (json!({"filepath": "/data/[abc"}), "filepath"),
        (json!({"filepath": "/data/a**b/*.csv"}), "filepath"),
        (
            json!({"filepath": "/data", "recursive": "yes"}),
            "recursive",
        ),
        (
            json!({"filepath": "/data", "include_modified": 1}),
            "include_modified",
        ),
        (
            json!({"filepath": "/data", "poke_interval": "5"}),
            "poke_interval",
        ),
        (
            json!({"filepath": "/data", "poke_interval": 0}),
            "poke_interval",
        ),
        (
            json!({"filepath": "/data", "poke_interval": -1.5}),
            "poke_interval",
        ),
        (
            json!({"filepath": "/data", "poke_interval": 1e300}),
            "poke_interval",
        ),
        (json!({"filepath": "/data", "path": "/x"}), "path"),
        (json!({"filepath": "/data", "recursiv": true}), "recursiv"),
    ];
    for (kwargs, field) in cases {
        let err = kwargs_error(kwargs.clone());
        assert_eq!(err.field, field, "{kwargs}: {err}");
        assert!(err.to_string().contains(field), "{kwargs}: {err}");
    }
    let err = kwargs_error(json!({"filepath": "/data", "recursive": "yes"}));
    assert!(err.message.contains("boolean"), "{err}");
    let err = kwargs_error(json!({"filepath": 3}));
    assert!(err.message.contains("string"), "{err}");
    let err = kwargs_error(json!("/data"));
    assert!(err.message.contains("table"), "{err}");
    let err = kwargs_error(json!({}));
    assert_eq!(
        err.to_string(),
        "kwargs.filepath: required: a directory, a file, or a glob pattern such as /data/in/*.csv"
    );
    let err = kwargs_error(json!({"filepath": "/data", "recursiv": true}));
    assert_eq!(
        err.message,
        "unknown kwarg; expected one of: filepath, recursive, include_modified, poke_interval"
    );
}

// ---------------------------------------------------------------- emission

#[tokio::test(flavor = "multi_thread")]
async fn every_new_file_is_emitted_once_with_its_payload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let mut run = start(&provider, json!({"filepath": s(dir.path())}));
    ready(&mut run, &dir.path().join("probe")).await;

    let names: Vec<String> = (0..200).map(|i| format!("file-{i:03}.dat")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let written = write_files(dir.path(), &name_refs);
    let events = take(&mut run, 200).await;
    assert_quiet(&mut run).await;

    let keys: HashSet<&str> = events.iter().map(|e| e.dedup_key.as_str()).collect();
    assert_eq!(keys.len(), 200, "dedup keys must be distinct");
    assert_eq!(
        events.iter().map(path_of).collect::<HashSet<_>>(),
        set(&written)
    );
    for event in &events {
        let path = path_of(event);
        let meta = fs::metadata(&path).expect("stat");
        let mtime_ns = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
        assert_eq!(kind_of(event), "created", "{}", event.payload);
        assert_eq!(event.payload["size"], json!(meta.len()));
        assert_eq!(event.source_time, Some(meta.modified().expect("mtime")));
        let name = Path::new(&path)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("name");
        assert_eq!(meta.len() as usize, format!("content of {name}").len());
        let mtime = event.payload["mtime"].as_str().expect("mtime string");
        let parsed = chrono::DateTime::parse_from_rfc3339(mtime).expect("RFC 3339 mtime");
        assert_eq!(parsed.offset().local_minus_utc(), 0, "{mtime} is not UTC");
        let parsed_ns = i128::from(parsed.timestamp()) * 1_000_000_000
            + i128::from(parsed.timestamp_subsec_nanos());
        assert_eq!(parsed_ns, mtime_ns, "{mtime}");
        // The birth time, where the filesystem keeps one, ends the identity.
        let birth = meta
            .created()
            .ok()
            .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map(|d| format!(":{}", d.as_nanos()))
            .unwrap_or_default();
        assert_eq!(
            event.dedup_key,
            format!("file:{path}:{}:{mtime_ns}{birth}", meta.ino())
        );
        let checkpoint = event.checkpoint.as_ref().expect("checkpoint");
        assert_eq!(checkpoint.key, path);
        assert_eq!(
            checkpoint.value,
            format!("{}:{mtime_ns}{birth}", meta.ino())
        );
    }
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn glob_emits_only_matching_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let provider = FileProvider::new();
    let pattern = format!("{}/*.csv", s(dir.path()));
    let mut run = start(&provider, json!({"filepath": pattern}));
    ready(&mut run, &dir.path().join("probe.csv")).await;

    // Non-matching first: had any been emitted, it would come before the matching ones.
    write_files(
        dir.path(),
        &["notes.txt", "sub/deep.csv", ".hidden.csv", "csv"],
    );
    let matching = write_files(dir.path(), &["a.csv", "b.csv"]);
    let events = take(&mut run, 2).await;
    assert_eq!(
        paths(&events).into_iter().collect::<HashSet<_>>(),
        set(&matching)
    );
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn double_star_glob_watches_subdirectories() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("a/b")).expect("mkdir");
    let provider = FileProvider::new();
    let pattern = format!("{}/**/*.json", s(dir.path()));
    let mut run = start(&provider, json!({"filepath": pattern}));
    ready(&mut run, &dir.path().join("probe.json")).await;

    write_files(dir.path(), &["a/skip.txt", "a/b/skip.csv"]);
    let matching = write_files(
        dir.path(),
        &[
            "top.json",
            "a/one.json",
            "a/b/two.json",
            "new/dir/three.json",
        ],
    );
    let events = take(&mut run, 4).await;
    assert_eq!(
        paths(&events).into_iter().collect::<HashSet<_>>(),
        set(&matching)
    );
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn non_recursive_ignores_subdirectories() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir(dir.path().join("sub")).expect("mkdir");
    let provider = FileProvider::new();
    let mut run = start(&provider, json!({"filepath": s(dir.path())}));
    ready(&mut run, &dir.path().join("probe")).await;

    write_files(dir.path(), &["sub/inner.txt", "fresh/inner.txt"]);
    let top = write_files(dir.path(), &["top.txt"]);
    let events = take(&mut run, 1).await;
    assert_eq!(
        paths(&events).into_iter().collect::<HashSet<_>>(),
        set(&top)
    );
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn recursive_includes_subdirectories_even_new_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let existing = write_files(dir.path(), &["old/before.txt"]);
    let provider = FileProvider::new();
    let mut run = start(
        &provider,
        json!({"filepath": s(dir.path()), "recursive": true}),
    );
    let first = take(&mut run, 1).await.remove(0);
    assert_eq!(path_of(&first), s(&existing[0]));
    assert_eq!(kind_of(&first), "existing");
    ready(&mut run, &dir.path().join("probe")).await;

    let created = write_files(
        dir.path(),
        &["top.txt", "old/inner.txt", "new/a.txt", "new/deeper/b.txt"],
    );
    let events = take(&mut run, 4).await;
    assert_eq!(
        paths(&events).into_iter().collect::<HashSet<_>>(),
        set(&created)
    );
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn renamed_in_and_hard_linked_files_are_emitted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let mut run = start(&provider, json!({"filepath": s(dir.path())}));
    ready(&mut run, &dir.path().join("probe")).await;

    let staged = write_files(outside.path(), &["moved.txt", "linked.txt"]);
    fs::rename(&staged[0], dir.path().join("moved.txt")).expect("rename");
    // A hard link produces a create but no close-after-write: the quiet-period fallback.
    fs::hard_link(&staged[1], dir.path().join("linked.txt")).expect("link");
    let events = take(&mut run, 2).await;
    assert_eq!(
        paths(&events).into_iter().collect::<HashSet<_>>(),
        set(&[dir.path().join("moved.txt"), dir.path().join("linked.txt")])
    );
    assert!(events.iter().all(|e| kind_of(e) == "created"));
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_recreated_at_the_same_path_is_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let mut run = start(&provider, json!({"filepath": s(dir.path())}));
    ready(&mut run, &dir.path().join("probe")).await;

    let path = write_files(dir.path(), &["again.txt"]).remove(0);
    let first = take(&mut run, 1).await.remove(0);
    fs::remove_file(&path).expect("remove");
    // The filesystem may hand the freed inode to the new file.
    fs::write(&path, b"second version, longer").expect("rewrite");
    let second = take(&mut run, 1).await.remove(0);
    assert_eq!(path_of(&second), s(&path));
    assert_eq!(kind_of(&second), "created");
    assert_ne!(first.dedup_key, second.dedup_key);
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overflowing_queue_loses_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two queued changes at most: almost everything below goes through overflow rescans.
    let provider = FileProvider::with_channel_capacity(2);
    let mut run = start(&provider, json!({"filepath": s(dir.path())}));
    ready(&mut run, &dir.path().join("probe")).await;

    let names: Vec<String> = (0..300).map(|i| format!("burst-{i:03}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let written = write_files(dir.path(), &name_refs);
    let events = take(&mut run, 300).await;
    assert_eq!(
        paths(&events).into_iter().collect::<HashSet<_>>(),
        set(&written)
    );
    let keys: HashSet<&str> = events.iter().map(|e| e.dedup_key.as_str()).collect();
    assert_eq!(keys.len(), 300);
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------- restart

#[tokio::test(flavor = "multi_thread")]
async fn restart_emits_exactly_the_files_that_appeared_while_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = write_files(dir.path(), &["before-1", "before-2", "before-3"]);
    let provider = FileProvider::new();
    let kwargs = json!({"filepath": s(dir.path())});

    let mut run = start(&provider, kwargs.clone());
    let first = take(&mut run, 3).await;
    assert_eq!(
        paths(&first).into_iter().collect::<HashSet<_>>(),
        set(&before)
    );
    assert!(first.iter().all(|e| kind_of(e) == "existing"), "{first:?}");
    let live = write_files(dir.path(), &["live-1", "live-2"]);
    let second = take(&mut run, 2).await;
    assert_eq!(
        paths(&second).into_iter().collect::<HashSet<_>>(),
        set(&live)
    );
    assert_quiet(&mut run).await;
    let checkpoint = run.checkpoint.clone();
    assert_eq!(checkpoint.len(), 5);
    run.stop().await.expect("clean stop");

    let down = write_files(dir.path(), &["down-1", "down-2", "down-3"]);
    // Rewritten in place while down (same inode): a modification, not a new file.
    fs::write(&before[0], b"rewritten while down").expect("rewrite");

    let mut run = TestRun::start(build(&provider, kwargs.clone()), checkpoint, 64);
    let third = take(&mut run, 3).await;
    assert_eq!(
        paths(&third).into_iter().collect::<HashSet<_>>(),
        set(&down)
    );
    assert!(third.iter().all(|e| kind_of(e) == "existing"), "{third:?}");
    assert_quiet(&mut run).await;
    let checkpoint = run.checkpoint.clone();
    run.stop().await.expect("clean stop");

    // Nothing changed: nothing to emit.
    let mut run = TestRun::start(build(&provider, kwargs), checkpoint, 64);
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_replaced_while_down_under_a_reused_inode_is_new() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_files(dir.path(), &["daily.csv"]).remove(0);
    let provider = FileProvider::new();
    let kwargs = json!({"filepath": s(dir.path())});
    let mut run = start(&provider, kwargs.clone());
    take(&mut run, 1).await;
    let mut checkpoint = run.checkpoint.clone();
    run.stop().await.expect("clean stop");
    let key = s(&file);
    let committed = checkpoint[&key].clone();
    let parts: Vec<&str> = committed.split(':').collect();
    if parts.len() < 3 {
        return; // this filesystem keeps no birth time; the create-event path covers it live
    }
    // The committed identity is that of an earlier file: same inode number (the filesystem
    // reused it), another birth time and mtime. The file now at the path is a new one.
    let birth: i128 = parts[2].parse().expect("birth");
    let mtime: i128 = parts[1].parse().expect("mtime");
    checkpoint.insert(
        key,
        format!(
            "{}:{}:{}",
            parts[0],
            mtime - 1_000_000_000,
            birth - 1_000_000_000
        ),
    );
    let mut run = TestRun::start(build(&provider, kwargs), checkpoint, 64);
    let events = take(&mut run, 1).await;
    assert_eq!(kind_of(&events[0]), "existing");
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_whose_mtime_is_reset_after_writing_is_emitted_once() {
    // `tar x`/`unzip` into a new subdirectory: each file is written, closed, then given its
    // original mtime; the new directory's rescan must not report it a second time.
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let mut run = start(
        &provider,
        json!({"filepath": s(dir.path()), "recursive": true}),
    );
    ready(&mut run, &dir.path().join("probe")).await;
    let sub = dir.path().join("unpacked");
    fs::create_dir(&sub).expect("mkdir");
    let file = sub.join("data.csv");
    fs::write(&file, b"a,b\n").expect("write");
    // Reported on close; the tool resets the mtime before the new directory's follow-up scan.
    let events = take(&mut run, 1).await;
    assert_eq!(path_of(&events[0]), s(&file));
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(old))
        .expect("set mtime");
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_delivery_fails_the_run_and_restart_emits_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let kwargs = json!({"filepath": s(dir.path())});
    let mut run = start(&provider, kwargs.clone());
    ready(&mut run, &dir.path().join("probe")).await;
    let checkpoint = run.checkpoint.clone();

    let path = write_files(dir.path(), &["refused.txt"]).remove(0);
    let refused = run
        .refuse_next(WAIT, NotCommitted::Fenced)
        .await
        .expect("an event to refuse");
    assert_eq!(path_of(&refused), s(&path));
    let ended = run
        .finished(WAIT)
        .await
        .expect("run must end after a refusal");
    let err = ended.expect_err("run must fail after a refusal");
    assert!(err.to_string().contains("no longer assigned"), "{err}");

    let mut run = TestRun::start(build(&provider, kwargs), checkpoint, 64);
    let again = take(&mut run, 1).await.remove(0);
    assert_eq!(again.dedup_key, refused.dedup_key);
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------- sharing

#[tokio::test(flavor = "multi_thread")]
async fn triggers_on_one_directory_share_the_watch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let kwargs = json!({"filepath": s(dir.path())});
    let mut a = start(&provider, kwargs.clone());
    let mut b = start(&provider, kwargs);
    // One probe, so that each trigger has exactly one event before the real ones.
    ready(&mut a, &dir.path().join("probe")).await;
    let probe = take(&mut b, 1).await.remove(0);
    assert_eq!(path_of(&probe), s(&dir.path().join("probe")));
    assert_eq!(provider.hub.os_watch_count(), 1);

    let names: Vec<String> = (0..20).map(|i| format!("shared-{i}")).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let written = set(&write_files(dir.path(), &name_refs));
    let got_a: HashSet<String> = paths(&take(&mut a, 20).await).into_iter().collect();
    let got_b: HashSet<String> = paths(&take(&mut b, 20).await).into_iter().collect();
    assert_eq!(got_a, written);
    assert_eq!(got_b, written);
    assert_quiet(&mut a).await;
    assert_quiet(&mut b).await;

    a.stop().await.expect("clean stop");
    assert_eq!(provider.hub.subscriber_count(), 1);
    // The remaining trigger keeps the shared watch.
    wait_for_watch_count(&provider, 1).await;
    let later = write_files(dir.path(), &["after-a-stopped-1", "after-a-stopped-2"]);
    let got_b: HashSet<String> = paths(&take(&mut b, 2).await).into_iter().collect();
    assert_eq!(got_b, set(&later));
    assert_quiet(&mut b).await;

    b.stop().await.expect("clean stop");
    assert_eq!(provider.hub.subscriber_count(), 0);
    wait_for_watch_count(&provider, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nested_trigger_keeps_working_when_the_covering_one_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("sub");
    fs::create_dir(&sub).expect("mkdir");
    let provider = FileProvider::new();
    let mut outer = start(
        &provider,
        json!({"filepath": s(dir.path()), "recursive": true}),
    );
    ready(&mut outer, &dir.path().join("probe-outer")).await;
    let mut inner = start(&provider, json!({"filepath": s(&sub)}));
    ready(&mut inner, &sub.join("probe-inner")).await;
    take(&mut outer, 1).await; // the inner probe
                               // The recursive watch of the outer directory covers the inner one.
    assert_eq!(provider.hub.os_watch_count(), 1);

    outer.stop().await.expect("clean stop");
    wait_for_watch_count(&provider, 1).await;
    let later = write_files(&sub, &["after-outer-stopped"]);
    let got = take(&mut inner, 1).await;
    assert_eq!(paths(&got).into_iter().collect::<HashSet<_>>(), set(&later));
    assert_quiet(&mut inner).await;
    inner.stop().await.expect("clean stop");
    wait_for_watch_count(&provider, 0).await;
}

// ---------------------------------------------------------------- modifications

/// Appends to `path` and gives it an mtime clearly different from the current one, so that the
/// test does not depend on the filesystem's timestamp granularity.
fn modify(path: &Path) {
    use std::io::Write;
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(b" and more").expect("append");
    file.set_modified(SystemTime::now() + Duration::from_secs(60))
        .expect("set mtime");
    // Dropping the handle closes it: the close-after-write the trigger reacts to.
}

#[tokio::test(flavor = "multi_thread")]
async fn include_modified_emits_rewrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let mut run = start(
        &provider,
        json!({"filepath": s(dir.path()), "include_modified": true}),
    );
    ready(&mut run, &dir.path().join("probe")).await;

    let path = write_files(dir.path(), &["data.txt"]).remove(0);
    let created = take(&mut run, 1).await.remove(0);
    assert_eq!(kind_of(&created), "created");
    modify(&path);
    let modified = take(&mut run, 1).await.remove(0);
    assert_eq!(path_of(&modified), s(&path));
    assert_eq!(kind_of(&modified), "modified");
    assert_ne!(modified.dedup_key, created.dedup_key);
    assert_eq!(
        modified.payload["size"],
        json!(fs::metadata(&path).expect("stat").len())
    );
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_include_modified_rewrites_are_ignored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let mut run = start(&provider, json!({"filepath": s(dir.path())}));
    ready(&mut run, &dir.path().join("probe")).await;

    let path = write_files(dir.path(), &["data.txt"]).remove(0);
    take(&mut run, 1).await;
    modify(&path);
    // Events are handled in order: a modification event would come before the sentinel's.
    let sentinel = write_files(dir.path(), &["sentinel.txt"]).remove(0);
    let next = take(&mut run, 1).await.remove(0);
    assert_eq!(path_of(&next), s(&sentinel));
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------- a single file

#[tokio::test(flavor = "multi_thread")]
async fn a_single_file_not_there_yet_is_waited_for_and_emitted_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("ready.flag");
    let provider = FileProvider::new();
    let mut run = start(&provider, json!({"filepath": s(&flag)}));
    // Its neighbours, a longer name and a writer's temporary file are not it.
    write_files(
        dir.path(),
        &["other.flag", "ready.flag2", ".ready.flag.tmp"],
    );
    fs::write(&flag, b"go").expect("write flag");
    let event = take(&mut run, 1).await.remove(0);
    assert_eq!(path_of(&event), s(&flag));
    // Created before or after the trigger subscribed: either way it is the one event.
    assert!(
        ["created", "existing"].contains(&kind_of(&event).as_str()),
        "{}",
        event.payload
    );
    // Rewritten in place: a modification, not emitted without include_modified.
    modify(&flag);
    assert_quiet(&mut run).await;

    // A new file at the path later is a new event.
    fs::remove_file(&flag).expect("rm flag");
    fs::write(dir.path().join("ready.flag.tmp"), b"again").expect("write tmp");
    fs::rename(dir.path().join("ready.flag.tmp"), &flag).expect("rename into place");
    let again = take(&mut run, 1).await.remove(0);
    assert_eq!(path_of(&again), s(&flag));
    assert_eq!(kind_of(&again), "created");
    assert_ne!(again.dedup_key, event.dedup_key);
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_file_present_at_start_is_emitted_once_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A hidden name is emitted too: the user spelled it.
    let flag = write_files(dir.path(), &[".done"]).remove(0);
    write_files(dir.path(), &["unrelated.txt"]);
    let provider = FileProvider::new();
    let kwargs = json!({"filepath": s(&flag), "include_modified": true});
    let mut run = start(&provider, kwargs.clone());
    let event = take(&mut run, 1).await.remove(0);
    assert_eq!(path_of(&event), s(&flag));
    assert_eq!(kind_of(&event), "existing");
    assert_quiet(&mut run).await;
    let checkpoint = run.checkpoint.clone();
    run.stop().await.expect("clean stop");

    // The committed checkpoint holds it: a restart emits nothing, a rewrite is a modification.
    let mut run = TestRun::start(build(&provider, kwargs), checkpoint, 64);
    assert_quiet(&mut run).await;
    modify(&flag);
    let modified = take(&mut run, 1).await.remove(0);
    assert_eq!(path_of(&modified), s(&flag));
    assert_eq!(kind_of(&modified), "modified");
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_single_file_path_that_becomes_a_directory_is_watched_as_one_after_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("incoming");
    let provider = FileProvider::new();
    let kwargs = json!({"filepath": s(&path)});
    let mut run = start(&provider, kwargs.clone());
    // Give the trigger time to subscribe; the start-up scan would see the directory anyway.
    assert_quiet(&mut run).await;
    fs::create_dir(&path).expect("mkdir");
    let ended = run.finished(WAIT).await.expect("run must end");
    let err = ended.expect_err("the trigger restarts to watch the directory");
    assert!(err.to_string().contains("is now a directory"), "{err}");
    // What the supervisor's restart does: now a directory, watched as one.
    let mut run = start(&provider, kwargs);
    ready(&mut run, &path.join("probe")).await;
    run.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------- errors

#[tokio::test(flavor = "multi_thread")]
async fn missing_directory_fails_naming_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("does-not-exist");
    let provider = FileProvider::new();
    for kwargs in [
        // Without the `/`, a missing path is a single file waited for (below).
        json!({"filepath": format!("{}/", s(&missing))}),
        json!({"filepath": format!("{}/*.csv", s(&missing))}),
        // A single file's directory must exist.
        json!({"filepath": format!("{}/ready.flag", s(&missing))}),
    ] {
        let run = start(&provider, kwargs.clone());
        let ended = run.finished(WAIT).await.expect("run must end");
        let err = ended.expect_err("a missing directory is an error");
        assert!(
            err.to_string().contains(&s(&missing)),
            "{kwargs}: error does not name the path: {err}"
        );
    }
    assert_eq!(provider.hub.os_watch_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_watched_directory_fails_the_run() {
    let parent = tempfile::tempdir().expect("tempdir");
    let dir = parent.path().join("watched");
    fs::create_dir(&dir).expect("mkdir");
    let provider = FileProvider::new();
    let mut run = start(&provider, json!({"filepath": s(&dir)}));
    ready(&mut run, &dir.join("probe")).await;
    fs::remove_dir_all(&dir).expect("rm -r");
    let ended = run.finished(WAIT).await.expect("run must end");
    let err = ended.expect_err("a deleted directory is an error");
    assert!(err.to_string().contains(&s(&dir)), "{err}");

    // Once it is back, a restart watches it again.
    fs::create_dir(&dir).expect("mkdir");
    let mut run = start(&provider, json!({"filepath": s(&dir)}));
    ready(&mut run, &dir.join("probe-2")).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn periodic_rescan_emits_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let mut run = start(
        &provider,
        json!({"filepath": s(dir.path()), "poke_interval": 0.2}),
    );
    ready(&mut run, &dir.path().join("probe")).await;
    let written = write_files(dir.path(), &["x", "y"]);
    let events = take(&mut run, 2).await;
    assert_eq!(
        paths(&events).into_iter().collect::<HashSet<_>>(),
        set(&written)
    );
    // Several rescans run during the quiet period.
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

// ---------------------------------------------------------------- completeness

/// A writer appending to one open descriptor over about 1.2 s.
struct SlowWriter {
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set after the last byte is written, just before the descriptor is closed: an event seen
    /// while it is still false was emitted for an incomplete file.
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

const SLOW_CHUNKS: usize = 12;
const SLOW_CHUNK: usize = 64 * 1024;

impl SlowWriter {
    /// Writes `path` (appending to it when `append`) and pins its mtime to `mtime` after every
    /// chunk: what a filesystem with coarse timestamps, or a file server whose clock is behind
    /// ours (NFS, where `poke_interval` is used), shows of a growing file. The size grows while
    /// the mtime stands still and looks old, so neither a stable mtime nor an old one may be
    /// taken to mean that the file is complete.
    fn start(path: PathBuf, mtime: SystemTime, append: bool) -> Self {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let started = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (started_w, done_w) = (started.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            let mut file = fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(append)
                .truncate(!append)
                .open(&path)
                .expect("open for writing");
            for i in 0..SLOW_CHUNKS {
                if i > 0 {
                    std::thread::sleep(Duration::from_millis(100));
                }
                file.write_all(&[b'x'; SLOW_CHUNK]).expect("write chunk");
                file.set_modified(mtime).expect("pin mtime");
                started_w.store(true, Ordering::SeqCst);
            }
            done_w.store(true, Ordering::SeqCst);
            let size = file.metadata().expect("stat").len();
            drop(file);
            size
        });
        Self {
            started,
            done,
            handle,
        }
    }

    fn wait_started(&self) {
        while !self.started.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Takes the next event, checks that it came after the writer was done and describes the
    /// whole file, and returns it.
    async fn expect_event(self, run: &mut TestRun, path: &Path) -> Event {
        let event = run
            .commit_next(WAIT)
            .await
            .unwrap_or_else(|| panic!("no event for {}", path.display()));
        let done = self.done.load(std::sync::atomic::Ordering::SeqCst);
        let size = self.handle.join().expect("writer thread");
        assert!(
            done,
            "event before the writer was done (file of {size} bytes): {}",
            event.payload
        );
        assert_eq!(path_of(&event), s(path), "{}", event.payload);
        assert_eq!(event.payload["size"], json!(size), "{}", event.payload);
        event
    }
}

/// With `extra` kwargs: a file growing when the trigger starts, one appearing while it watches
/// and (with `include_modified`) that file appended to again each give exactly one event, once
/// complete.
async fn a_growing_file_gets_one_event_once_complete(extra: Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let mut kwargs = json!({"filepath": s(dir.path())});
    for (key, value) in extra.as_object().expect("kwargs object") {
        kwargs[key] = value.clone();
    }
    let include_modified = kwargs["include_modified"] == json!(true);
    let an_hour_ago = SystemTime::now() - Duration::from_secs(3600);

    let at_start = dir.path().join("growing-at-start.bin");
    let writer = SlowWriter::start(at_start.clone(), an_hour_ago, false);
    writer.wait_started();
    let mut run = start(&provider, kwargs);
    writer.expect_event(&mut run, &at_start).await;
    let probe = ready(&mut run, &dir.path().join("probe")).await;
    assert_eq!(paths(&probe), vec![s(&dir.path().join("probe"))]);

    let path = dir.path().join("slow.bin");
    let writer = SlowWriter::start(path.clone(), an_hour_ago, false);
    let created = writer.expect_event(&mut run, &path).await;
    assert_eq!(kind_of(&created), "created");

    if include_modified {
        let writer = SlowWriter::start(path.clone(), an_hour_ago + Duration::from_secs(60), true);
        let modified = writer.expect_event(&mut run, &path).await;
        assert_eq!(kind_of(&modified), "modified");
        assert_ne!(modified.dedup_key, created.dedup_key);
    }
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_emits_a_growing_file_once_complete() {
    a_growing_file_gets_one_event_once_complete(json!({"poke_interval": 0.2})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn include_modified_emits_a_growing_file_once_complete() {
    a_growing_file_gets_one_event_once_complete(json!({"include_modified": true})).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_with_include_modified_emits_a_growing_file_once_complete() {
    a_growing_file_gets_one_event_once_complete(
        json!({"poke_interval": 0.2, "include_modified": true}),
    )
    .await;
}

// ---------------------------------------------------------------- unreadable subdirectories

/// Set in the copy of the test binary that [`rerun_unprivileged`] starts.
const UNPRIVILEGED_CHILD: &str = "TRIGGERER_FILE_TEST_UNPRIVILEGED_CHILD";

/// Whether a directory without permissions is really unreadable to this process (not for root,
/// whose CAP_DAC_OVERRIDE ignores permission bits).
fn permissions_enforced() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = tempfile::tempdir().expect("tempdir");
    let locked = probe.path().join("locked");
    fs::create_dir(&locked).expect("mkdir");
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod 000");
    let enforced = fs::read_dir(&locked).is_err();
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    enforced
}

/// Runs test `name` of this binary again as user and group 65534 (nobody), where permission
/// bits apply, and checks that it passed there. A process cannot drop root's privileges for
/// one test in place; a child process can start without them.
fn rerun_unprivileged(name: &str) {
    use std::os::unix::process::CommandExt;
    assert!(
        std::env::var_os(UNPRIVILEGED_CHILD).is_none(),
        "still privileged in the unprivileged child"
    );
    let exe = std::env::current_exe().expect("test binary path");
    let output = std::process::Command::new(&exe)
        .args(["--exact", name, "--nocapture", "--test-threads", "1"])
        .env(UNPRIVILEGED_CHILD, "1")
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} as uid 65534: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} as uid 65534: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_subdirectory_is_skipped_with_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    if !permissions_enforced() {
        let name = concat!(
            module_path!(),
            "::an_unreadable_subdirectory_is_skipped_with_a_warning"
        );
        let name = name.split_once("::").map_or(name, |(_, rest)| rest);
        tokio::task::spawn_blocking({
            let name = name.to_owned();
            move || rerun_unprivileged(&name)
        })
        .await
        .expect("unprivileged run");
        return;
    }
    let provider = FileProvider::new();
    for kwargs_for in [
        (|root: &Path| json!({"filepath": s(root), "recursive": true})) as fn(&Path) -> Value,
        |root: &Path| json!({"filepath": format!("{}/**/*.txt", s(root))}),
        |root: &Path| json!({"filepath": s(root), "recursive": true, "poke_interval": 0.2}),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let existing = write_files(dir.path(), &["a/old.txt"]);
        let locked = dir.path().join("locked");
        write_files(dir.path(), &["locked/secret.txt", "locked/deeper/x.txt"]);
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod 000");
        let kwargs = kwargs_for(dir.path());

        let mut run = start(&provider, kwargs.clone());
        let Some(first) = run.commit_next(WAIT).await else {
            let ended = run.finished(WAIT).await;
            panic!("{kwargs}: no event for the readable file; the run ended with {ended:?}");
        };
        assert_eq!(path_of(&first), s(&existing[0]), "{kwargs}");
        ready(&mut run, &dir.path().join("probe.txt")).await;
        let created = write_files(dir.path(), &["a/b/new.txt", "c/new.txt"]);
        let events = take(&mut run, 2).await;
        assert_eq!(
            paths(&events).into_iter().collect::<HashSet<_>>(),
            set(&created),
            "{kwargs}"
        );
        let warnings = run.warnings();
        assert!(
            !warnings.is_empty(),
            "{kwargs}: no warning about {}",
            s(&locked)
        );
        for warning in &warnings {
            assert!(
                warning.contains(&s(&locked)) && warning.contains("Permission denied"),
                "{kwargs}: warning does not name the directory and the OS error: {warning}"
            );
        }
        // Rescans (poke_interval) meet the directory again: told once, not at every rescan.
        assert_quiet(&mut run).await;
        assert_eq!(
            run.warnings(),
            Vec::<String>::new(),
            "{kwargs}: repeated warnings"
        );
        run.stop().await.expect("clean stop");
        wait_for_watch_count(&provider, 0).await;
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).expect("chmod 755");
    }
}

// ---------------------------------------------------------------- non-UTF-8 names

#[tokio::test(flavor = "multi_thread")]
async fn non_utf8_names_keep_their_bytes() {
    use base64::Engine;
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = FileProvider::new();
    let kwargs = json!({"filepath": s(dir.path())});
    let mut run = start(&provider, kwargs.clone());
    let probe = ready(&mut run, &dir.path().join("probe")).await.remove(0);
    assert!(
        probe.payload.get("path_bytes_b64").is_none(),
        "a UTF-8 name needs no bytes field: {}",
        probe.payload
    );

    // Both names read `bad\u{FFFD}.txt` when decoded lossily; as hard links of one file they
    // also share inode, mtime and birth time: only the bytes tell them apart.
    let a = dir.path().join(OsStr::from_bytes(b"bad\xff.txt"));
    let b = dir.path().join(OsStr::from_bytes(b"bad\xfe.txt"));
    fs::write(&a, b"bytes").expect("write");
    fs::hard_link(&a, &b).expect("link");
    let events = take(&mut run, 2).await;
    let mut got = HashSet::new();
    for event in &events {
        let encoded = event.payload["path_bytes_b64"]
            .as_str()
            .unwrap_or_else(|| panic!("no path_bytes_b64: {}", event.payload));
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("standard base64");
        let path = PathBuf::from(OsStr::from_bytes(&bytes));
        assert_eq!(path_of(event), path.to_string_lossy(), "{}", event.payload);
        assert!(fs::metadata(&path).is_ok(), "not a usable path: {path:?}");
        got.insert(path);
    }
    assert_eq!(got, HashSet::from([a.clone(), b.clone()]));
    let keys: HashSet<&str> = events.iter().map(|e| e.dedup_key.as_str()).collect();
    assert_eq!(keys.len(), 2, "dedup keys must differ: {keys:?}");
    let checkpoint = run.checkpoint.clone();
    assert_eq!(checkpoint.len(), 3, "{checkpoint:?}");
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");

    // The committed checkpoint recognises both files: a restart emits nothing.
    let mut run = TestRun::start(build(&provider, kwargs), checkpoint, 64);
    assert_quiet(&mut run).await;
    run.stop().await.expect("clean stop");
}
