//! Storage faults under a running `triggerer standalone` on SQLite, through the real binary: a
//! disk that fills up mid-stream (a small tmpfs, so the test needs root, as CI has) and a
//! database file deleted or replaced underneath the process.
//!
//! Before the fixes, a full disk left every connection "at non-zero transaction depth": no
//! event was recorded even after space came back, while the heartbeat went on and the triggers
//! looked `running`; and a deleted file went on taking commits that were lost at exit.

#![cfg(feature = "integration-root")]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::KillOnDrop;

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: PathBuf, size: &str) -> Self {
        std::fs::create_dir_all(&path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the full-disk test mounts a small tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { path }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn cli(db_url: &str, args: &[&str]) -> Vec<Value> {
    common::Cli {
        db_url: db_url.to_string(),
    }
    .json(args)
}

fn definitions(incoming: &Path) -> String {
    format!(
        "[[asset]]\nname = \"landing\"\n[[asset.watcher]]\nname = \"files\"\n\
         classpath = \"file.FileTrigger\"\nkwargs = {{ filepath = \"{}/*.dat\" }}\n\
         [[dag]]\ndag_id = \"ingest\"\nschedule = {{ assets = \"landing\" }}\nmax_active_runs = 100000\n",
        incoming.display()
    )
}

/// Long names make each event a few hundred bytes, so a burst must grow the database.
fn create_files(dir: &Path, range: std::ops::Range<usize>) {
    let pad = "x".repeat(180);
    for i in range {
        std::fs::write(dir.join(format!("f{i:05}-{pad}.dat")), b"row\n").expect("write");
    }
}

/// Fills the file system holding `dir` with one file, until it refuses more.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 * 1024];
    loop {
        if file
            .write_all(&chunk)
            .and_then(|_| file.sync_all())
            .is_err()
        {
            break;
        }
    }
    // Then the last bytes a 64 KiB chunk did not fit in.
    while file
        .write_all(&[0u8; 512])
        .and_then(|_| file.sync_all())
        .is_ok()
    {}
    path
}

fn wait_until(what: &str, log: &Path, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "timed out waiting for {what}; log, newest first:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn events(db_url: &str) -> Vec<Value> {
    cli(db_url, &["assets", "events", "--limit", "0", "--json"])
}

fn trigger_state(db_url: &str) -> String {
    let triggers = cli(
        db_url,
        &[
            "triggers",
            "list",
            "--json",
            "--health-check-threshold",
            "2",
        ],
    );
    triggers[0]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A file watcher on `dir/incoming` synced into `db_url`, and `standalone` running it (logging
/// to `dir/run.log`) until its trigger runs.
fn standalone_watching_files(dir: &Path, db_url: &str) -> (PathBuf, PathBuf, KillOnDrop) {
    let incoming = dir.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let defs = common::write_file(dir, "dags.toml", &definitions(&incoming));
    common::sync_definitions(db_url, &defs);
    let log = dir.join("run.log");
    let child = common::standalone(db_url, &log);
    wait_until("the trigger to run", &log, Duration::from_secs(30), || {
        trigger_state(db_url) == "running"
    });
    (incoming, log, child)
}

#[test]
fn a_full_disk_pauses_the_heartbeat_and_every_event_is_recorded_once_space_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let disk = Tmpfs::mount(dir.path().join("disk"), "6m");
    let db_url = format!("sqlite://{}", disk.path.join("t.db").display());
    let (incoming, log, mut child) = standalone_watching_files(dir.path(), &db_url);
    create_files(&incoming, 0..50);
    wait_until("the first 50 events", &log, Duration::from_secs(30), || {
        events(&db_url).len() == 50
    });

    let filler = fill(&disk.path);
    create_files(&incoming, 50..1_050);
    wait_until(
        "the writer to report the full disk",
        &log,
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("events cannot be committed; heartbeat paused")
        },
    );
    // No heartbeat: after the health threshold others (none here) may take its trigger.
    wait_until(
        "the trigger to show as orphaned",
        &log,
        Duration::from_secs(30),
        || trigger_state(&db_url) == "orphaned",
    );
    assert!(child.0.try_wait().unwrap().is_none(), "it keeps running");

    std::fs::remove_file(filler).expect("free the disk");
    wait_until(
        "all 1,050 events after space returned",
        &log,
        Duration::from_secs(120),
        || events(&db_url).len() >= 1_050,
    );
    let events = events(&db_url);
    let keys: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["dedup_key"].as_str().unwrap())
        .collect();
    assert_eq!(events.len(), 1_050, "every event once");
    assert_eq!(keys.len(), 1_050);
    wait_until(
        "the trigger to run again",
        &log,
        Duration::from_secs(30),
        || trigger_state(&db_url) == "running",
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("events commit again; heartbeat resumed"));
    assert!(
        !log_text.contains("non-zero transaction depth"),
        "{log_text}"
    );

    // The scheduler recovered too: the queued events became runs.
    wait_until(
        "the runs of every event",
        &log,
        Duration::from_secs(60),
        || {
            let runs = cli(&db_url, &["runs", "list", "--limit", "0", "--json"]);
            runs.iter()
                .map(|r| r["consumed_events"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
                == 1_050
        },
    );

    // And it stops cleanly, handing its trigger back.
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM after recovery exits 0");
    let triggers = cli(&db_url, &["triggers", "list", "--json"]);
    assert!(triggers[0]["triggerer_id"].is_null(), "{triggers:?}");
}

fn exits_saying(child: &mut KillOnDrop, log: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running after its database file was {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains(&format!("was {what} while this process had it open")),
        "{log}"
    );
}

#[test]
fn a_database_file_deleted_or_replaced_under_a_running_process_stops_it() {
    for what in ["deleted", "replaced by another file"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("t.db");
        let db_url = format!("sqlite://{}", db.display());
        let (_, log, mut child) = standalone_watching_files(dir.path(), &db_url);
        if what == "deleted" {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
            }
        } else {
            std::fs::copy(&db, dir.path().join("copy.db")).unwrap();
            std::fs::rename(dir.path().join("copy.db"), &db).unwrap();
        }
        exits_saying(&mut child, &log, what);
    }
}
