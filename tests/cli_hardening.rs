//! The command line as a careless or hostile user drives it, through the real binary on SQLite:
//! syncs that would wipe everything, symlink loops, `--dags` re-syncing, SIGHUP, reserved and
//! empty ids, control characters, and the smaller traps of the hardening probe. Each test names
//! the defect it guards against.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{KillOnDrop, BIN};

type Env = common::Workspace;

impl Env {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn names(&self, what: &str, field: &str) -> Vec<String> {
        self.json(&[what, "list", "--json"])
            .iter()
            .map(|row| row[field].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// `triggerer standalone --dags DIR` with extra arguments, logging to `log`.
    fn serve(&self, dags: &Path, extra: &[&str], log: &str) -> KillOnDrop {
        let log = std::fs::File::create(self.path(log)).expect("log file");
        KillOnDrop(
            Command::new(BIN)
                .arg("standalone")
                .arg("--dags")
                .arg(dags)
                .args(extra)
                .env("TRIGGERER_DATABASE_URL", &self.db_url)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start standalone"),
        )
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn wait_for_log(&self, name: &str, what: &str, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log(name);
            if log.matches(what).count() >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{what}` never appeared {count} time(s) in the log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

const TWO_DAGS: &str = r#"
[[asset]]
name = "orders"
[[dag]]
dag_id = "on_orders"
schedule = { assets = "orders" }
[[dag]]
dag_id = "by_hand"
"#;

fn send(child: &KillOnDrop, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn wait_exit(child: &mut KillOnDrop, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the process did not exit within {within:?}");
}

#[test]
fn syncs_that_would_remove_everything_are_refused_and_change_nothing() {
    let env = Env::sqlite();
    let defs = common::write_file(env.dir.path(), "dags.toml", TWO_DAGS);
    env.ok(&["dags", "sync", defs.to_str().unwrap()]);
    env.ok(&["assets", "emit", "orders", "--dedup-key", "e1"]);

    // An empty file, a directory without definitions, and the mistyped neighbour directory.
    let empty = common::write_file(env.dir.path(), "empty.toml", "");
    let bare = env.path("bare");
    std::fs::create_dir_all(bare.join("sub")).unwrap();
    std::fs::write(bare.join("notes.txt"), "not a definition").unwrap();
    let other = env.path("other");
    std::fs::create_dir_all(&other).unwrap();
    common::write_file(&other, "x.toml", "[[asset]]\nname = \"unrelated\"\n");
    for (target, expected) in [
        (&empty, "would remove every asset and DAG"),
        (&bare, "no definition file (*.toml) found"),
        (&other, "would remove every asset and DAG"),
    ] {
        let err = env.fails(&["dags", "sync", target.to_str().unwrap()]);
        assert!(
            err.contains(expected) && err.contains("--allow-empty"),
            "{err}"
        );
    }
    assert_eq!(env.names("dags", "dag_id"), ["by_hand", "on_orders"]);
    assert_eq!(env.names("assets", "name"), ["orders"]);

    // The queued event is still there: the scheduler turns it into a run.
    env.ok(&["scheduler", "--once"]);
    let runs = env.json(&["runs", "list", "--dag", "on_orders", "--json"]);
    assert_eq!(runs.len(), 1, "{runs:?}");

    // Asked for, the empty sync goes through.
    let out = env.ok(&["dags", "sync", "--allow-empty", empty.to_str().unwrap()]);
    assert!(out.contains("deactivated 1 asset(s), 2 DAG(s)"), "{out}");
    assert!(env.names("dags", "dag_id").is_empty());
}

#[test]
fn symlink_loops_in_a_definitions_directory_are_followed_once() {
    let env = Env::sqlite();
    let dags = env.path("dags");
    std::fs::create_dir_all(dags.join("team")).unwrap();
    common::write_file(&dags, "a.toml", "[[asset]]\nname = \"a\"\n");
    common::write_file(&dags.join("team"), "b.toml", "[[dag]]\ndag_id = \"b\"\n");
    // Two loops (one back to the root, one to itself) and a second way to the same file.
    std::os::unix::fs::symlink(&dags, dags.join("team/up")).unwrap();
    std::os::unix::fs::symlink(dags.join("team"), dags.join("team/self")).unwrap();
    std::os::unix::fs::symlink(dags.join("a.toml"), dags.join("team/a-again.toml")).unwrap();

    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(["dags", "sync"])
            .arg(&dags)
            .env("TRIGGERER_DATABASE_URL", &env.db_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(30)),
        Some(0),
        "dags sync must finish"
    );
    let out = env.ok(&["assets", "list", "--json"]);
    let assets: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(assets.len(), 1, "{assets:?}");
    assert_eq!(env.names("dags", "dag_id"), ["b"]);
}

#[test]
fn dags_watch_syncs_once_per_real_change_and_sighup_reloads() {
    let env = Env::sqlite();
    let dags = env.path("dags");
    std::fs::create_dir_all(&dags).unwrap();
    let file = common::write_file(&dags, "dags.toml", TWO_DAGS);
    let mut child = env.serve(&dags, &[], "serve.log");
    env.wait_for_log(
        "serve.log",
        "definitions synced",
        1,
        Duration::from_secs(20),
    );

    // One edit: one re-sync, and none after it (each sync reading the files used to start
    // the next, forever).
    std::fs::write(&file, format!("{TWO_DAGS}\n[[dag]]\ndag_id = \"third\"\n")).unwrap();
    env.wait_for_log(
        "serve.log",
        "definitions re-synced",
        1,
        Duration::from_secs(20),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        env.log("serve.log")
            .matches("definitions re-synced")
            .count(),
        1
    );
    assert_eq!(
        env.names("dags", "dag_id"),
        ["by_hand", "on_orders", "third"]
    );

    // Rewritten with the same content, or truncated and rewritten at once: nothing written,
    // nothing deactivated meanwhile.
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, &text).unwrap();
    std::fs::write(&file, "").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    std::fs::write(&file, &text).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        env.log("serve.log")
            .matches("definitions re-synced")
            .count(),
        1
    );
    assert_eq!(env.names("dags", "dag_id").len(), 3);

    // Emptied for good: refused, the definitions stay.
    std::fs::write(&file, "").unwrap();
    env.wait_for_log(
        "serve.log",
        "would remove every asset and DAG",
        1,
        Duration::from_secs(20),
    );
    assert_eq!(env.names("dags", "dag_id").len(), 3);
    std::fs::write(&file, &text).unwrap();

    // SIGHUP re-syncs even without a change, and the process goes on.
    send(&child, "HUP");
    env.wait_for_log(
        "serve.log",
        "SIGHUP: re-syncing",
        1,
        Duration::from_secs(10),
    );
    env.wait_for_log(
        "serve.log",
        "definitions re-synced",
        2,
        Duration::from_secs(20),
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP must not stop it"
    );

    // SIGTERM still stops it cleanly.
    send(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
}

#[test]
fn sighup_without_dags_is_logged_and_ignored() {
    let env = Env::sqlite();
    let log = std::fs::File::create(env.path("run.log")).unwrap();
    let mut child = KillOnDrop(
        Command::new(BIN)
            .arg("run")
            .env("TRIGGERER_DATABASE_URL", &env.db_url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    env.wait_for_log("run.log", "triggerer started", 1, Duration::from_secs(20));
    send(&child, "HUP");
    env.wait_for_log(
        "run.log",
        "SIGHUP: nothing to reload",
        1,
        Duration::from_secs(10),
    );
    assert!(child.0.try_wait().unwrap().is_none());
    send(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0));
    assert!(env.log("run.log").contains("its triggers are released"));
}

#[test]
fn reserved_or_empty_run_ids_and_dedup_keys_are_refused() {
    let env = Env::sqlite();
    let defs = common::write_file(env.dir.path(), "dags.toml", TWO_DAGS);
    env.ok(&["dags", "sync", defs.to_str().unwrap()]);
    for run_id in [
        "scheduled__2030-01-01T00:00:00+00:00",
        "backfill__x",
        "asset_triggered__y",
        "",
        "  ",
    ] {
        let err = env.fails(&["dags", "trigger", "by_hand", "--run-id", run_id]);
        assert!(err.contains("run id"), "{run_id:?}: {err}");
    }
    let err = env.fails(&["assets", "emit", "orders", "--dedup-key", ""]);
    assert!(err.contains("--dedup-key: must not be empty"), "{err}");
    assert!(env.json(&["runs", "list", "--json"]).is_empty());
    assert!(env.json(&["assets", "events", "--json"]).is_empty());
    env.ok(&["dags", "trigger", "by_hand", "--run-id", "mine"]);
}

#[test]
fn control_characters_are_refused_in_names_and_escaped_in_output_sqlite() {
    control_characters_are_refused_in_names_and_escaped_in_output(Env::sqlite());
}

/// PostgreSQL refused a NUL with a raw driver error and no `file:line`.
#[cfg(feature = "integration-postgres")]
#[test]
fn control_characters_are_refused_in_names_and_escaped_in_output_postgres() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (store, db_url) = runtime.block_on(common::postgres_store());
    runtime.block_on(store.close());
    let dir = tempfile::tempdir().expect("temp dir");
    control_characters_are_refused_in_names_and_escaped_in_output(Env::new(dir, db_url));
}

fn control_characters_are_refused_in_names_and_escaped_in_output(env: Env) {
    for (text, line) in [
        ("[[asset]]\nname = \"a\\u001b[31mred\"\n", 2),
        ("\n[[dag]]\ndag_id = \"two\\nlines\"\n", 3),
        (
            "[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\\tx\"\nclasspath = \"file.FileTrigger\"\nkwargs = { filepath = \"/tmp/x\" }\n",
            4,
        ),
        (
            "[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"file.FileTrigger\"\nkwargs = { filepath = \"/tmp/x\\u0000y\" }\n",
            6,
        ),
    ] {
        let defs = common::write_file(env.dir.path(), "bad.toml", text);
        let err = env.fails(&["dags", "sync", defs.to_str().unwrap()]);
        assert!(
            err.contains(&format!("bad.toml:{line}:")),
            "{text:?} gave: {err}"
        );
        assert!(
            !err.contains('\u{1b}') && !err.contains('\0') && err.trim_end().lines().count() == 1,
            "printed raw: {err:?}"
        );
    }
    // Text from elsewhere (an event's extra) is escaped in tables; JSON escapes by itself.
    let defs = common::write_file(env.dir.path(), "dags.toml", TWO_DAGS);
    env.ok(&["dags", "sync", defs.to_str().unwrap()]);
    env.ok(&[
        "assets",
        "emit",
        "orders",
        "--extra",
        r#"{"note": "\u001b[2J\nforged"}"#,
    ]);
    let table = env.ok(&["assets", "events"]);
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert_eq!(table.lines().count(), 2, "one header, one row: {table}");
    let err = env.fails(&[
        "assets",
        "emit",
        "orders",
        "--extra",
        r#"{"a": ["x\u0000y"]}"#,
    ]);
    assert!(err.contains("`a.0` holds a NUL character"), "{err}");
    assert_eq!(env.json(&["assets", "events", "--json"]).len(), 1);
}

#[test]
fn smaller_traps_give_clear_errors() {
    let env = Env::sqlite();
    let defs = common::write_file(
        env.dir.path(),
        "dags.toml",
        "[[asset]]\nname = \"orders\"\n[[dag]]\ndag_id = \"daily\"\nschedule = \"@daily\"\nstart_date = 2025-01-10T00:00:00Z\n",
    );
    env.ok(&["dags", "sync", defs.to_str().unwrap()]);

    // Unknown names are errors, not empty tables.
    let err = env.fails(&["assets", "events", "--asset", "nosuch"]);
    assert!(err.contains("asset `nosuch` not found"), "{err}");
    let err = env.fails(&["runs", "list", "--dag", "nosuch"]);
    assert!(err.contains("DAG `nosuch` not found"), "{err}");

    // An integer JSON cannot keep exactly is refused, not rounded.
    let err = env.fails(&[
        "assets",
        "emit",
        "orders",
        "--extra",
        r#"{"id": 123456789012345678901234567890}"#,
    ]);
    assert!(err.contains("too large to keep exactly"), "{err}");
    env.ok(&[
        "assets",
        "emit",
        "orders",
        "--extra",
        r#"{"id": 9007199254740993, "f": 1.5e300, "s": "123456789012345678901234567890"}"#,
    ]);
    let events = env.json(&["assets", "events", "--json"]);
    assert_eq!(events[0]["extra"]["id"], 9007199254740993u64);

    // A backfill starting before start_date says where it really starts.
    let out = env.ok(&[
        "dags",
        "backfill",
        "daily",
        "--from",
        "2025-01-01T00:00:00Z",
        "--to",
        "2025-01-12T00:00:00Z",
    ]);
    assert!(
        out.contains("--from is before the DAG's start_date; starting at 2025-01-10"),
        "{out}"
    );
    let runs = env.json(&["runs", "list", "--dag", "daily", "--json"]);
    assert!(
        runs.iter()
            .all(|r| r["logical_date"].as_str().unwrap() >= "2025-01-10"),
        "{runs:?}"
    );
    let err = env.fails(&[
        "dags",
        "backfill",
        "daily",
        "--from",
        "2024-01-01T00:00:00Z",
        "--to",
        "2024-02-01T00:00:00Z",
    ]);
    assert!(err.contains("ends before the DAG's start_date"), "{err}");

    // `sqlite://` with no path is refused instead of half-working.
    let out = Command::new(BIN)
        .args(["dags", "list"])
        .env("TRIGGERER_DATABASE_URL", "sqlite://")
        .current_dir(env.dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use sqlite://PATH"));

    // A PostgreSQL port nobody listens on: saying so (not "pool timed out" after a wait),
    // each cause once.
    let out = Command::new(BIN)
        .args(["dags", "list"])
        .env(
            "TRIGGERER_DATABASE_URL",
            "postgres://postgres@127.0.0.1:1/none",
        )
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.to_lowercase().contains("connection refused"), "{err}");
    assert!(!err.contains("pool timed out"), "{err}");
    assert_eq!(
        err.to_lowercase().matches("connection refused").count(),
        1,
        "{err}"
    );
}

/// Commands started at once on a database that does not exist yet all migrate it: SQLite's
/// migrations take no lock, and the loser of the race used to fail ("table job already
/// exists") about one time in four.
#[test]
fn commands_racing_on_a_new_sqlite_database_all_succeed() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("new.db").display());
        let children: Vec<_> = (0..4)
            .map(|_| {
                Command::new(BIN)
                    .args(["--database-url", &url, "runs", "list"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
