//! End to end through the real binary, as a user runs it: file watchers → asset events →
//! asset-triggered runs, with `kill -9` in the middle of a stream of 1,000 files. On SQLite
//! always; on PostgreSQL too with `--features integration`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FILES: usize = 1_000;

type Env = common::Workspace;

impl Env {
    fn standalone(&self, log: &str) -> common::KillOnDrop {
        common::standalone(&self.db_url, &self.dir.path().join(log))
    }

    fn incoming(&self) -> PathBuf {
        self.dir.path().join("incoming")
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if check() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = std::fs::read_to_string(self.dir.path().join("run2.log"))
            .or_else(|_| std::fs::read_to_string(self.dir.path().join("run1.log")))
            .unwrap_or_default();
        panic!(
            "timed out waiting for {what}; log tail:\n{}",
            log.lines().rev().take(30).collect::<Vec<_>>().join("\n")
        );
    }

    fn trigger_owned(&self) -> bool {
        self.json(&["triggers", "list", "--json"])
            .iter()
            .all(|t| !t["triggerer_id"].is_null())
    }
}

fn definitions(incoming: &Path) -> String {
    format!(
        r#"
[[asset]]
name = "landing"
[[asset.watcher]]
name = "landing-files"
classpath = "file.FileTrigger"
kwargs = {{ filepath = "{0}/*.dat" }}

# Same classpath and kwargs (keys in another order, Airflow alias): shares the trigger.
[[asset]]
name = "audit"
[[asset.watcher]]
name = "audit-files"
classpath = "airflow.providers.standard.triggers.file.FileTrigger"
kwargs = {{ filepath = "{0}/*.dat" }}

[[dag]]
dag_id = "ingest"
schedule = {{ assets = "landing & audit" }}
max_active_runs = 100000
"#,
        incoming.display()
    )
}

fn create_files(dir: &Path, range: std::ops::Range<usize>) {
    for i in range {
        std::fs::write(dir.join(format!("f{i:04}.dat")), format!("row {i}\n")).expect("write file");
    }
}

fn run_scenario(db_url: String) {
    let env = Env::new(tempfile::tempdir().expect("temp dir"), db_url);
    std::fs::create_dir_all(env.incoming()).expect("incoming dir");
    let defs = common::write_file(env.dir.path(), "dags.toml", &definitions(&env.incoming()));
    let out = env.run(&["dags", "sync", defs.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let triggers = env.json(&["triggers", "list", "--json"]);
    assert_eq!(
        triggers.len(),
        1,
        "two identical watchers share one trigger: {triggers:?}"
    );

    let mut first = env.standalone("run1.log");
    env.wait_for("the trigger to be claimed", Duration::from_secs(30), || {
        env.trigger_owned()
    });
    std::thread::sleep(Duration::from_millis(500)); // the watch is set up right after the claim

    create_files(&env.incoming(), 0..FILES / 2);
    first.kill(); // SIGKILL: no shutdown path runs
    let committed_before_restart = env
        .json(&["assets", "events", "--limit", "0", "--json"])
        .len();
    create_files(&env.incoming(), FILES / 2..FILES);

    let mut second = env.standalone("run2.log");
    let expected = 2 * FILES; // one event per file for each of the two assets
    env.wait_for("every file's events", Duration::from_secs(120), || {
        env.json(&["assets", "events", "--limit", "0", "--json"])
            .len()
            >= expected
    });
    env.wait_for(
        "every event to be consumed by a run",
        Duration::from_secs(60),
        || {
            let consumed: usize = env
                .json(&["runs", "list", "--limit", "0", "--json"])
                .iter()
                .map(|r| r["consumed_events"].as_array().map_or(0, Vec::len))
                .sum();
            consumed >= expected
        },
    );
    std::thread::sleep(Duration::from_secs(2)); // anything extra would show up now
    second.kill();

    let events = env.json(&["assets", "events", "--limit", "0", "--json"]);
    assert_eq!(
        events.len(),
        expected,
        "exactly one event per file and asset, none lost, none twice"
    );
    for asset in ["landing", "audit"] {
        let paths: BTreeSet<&str> = events
            .iter()
            .filter(|e| e["asset"] == asset)
            .filter_map(|e| e["extra"]["payload"]["path"].as_str())
            .collect();
        assert_eq!(paths.len(), FILES, "{asset}: one event per distinct file");
        assert!(events
            .iter()
            .filter(|e| e["asset"] == asset)
            .all(|e| e["extra"]["from_trigger"] == true));
    }
    let runs = env.json(&["runs", "list", "--limit", "0", "--json"]);
    common::assert_consumed_once(&events, &runs, "after kill -9 and restart");
    assert!(runs
        .iter()
        .all(|r| r["run_type"] == "asset_triggered" && r["dag_id"] == "ingest"));
    eprintln!(
        "{} events ({} committed before kill -9), {} runs",
        events.len(),
        committed_before_restart,
        runs.len()
    );
}

#[test]
fn thousand_files_with_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("e2e.db").display());
    run_scenario(url);
}

#[cfg(feature = "integration-postgres")]
#[test]
fn thousand_files_with_kill_9_on_postgres() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (store, url) = runtime.block_on(common::postgres_store());
    runtime.block_on(store.close());
    run_scenario(url);
}

#[test]
fn broken_definitions_exit_1_and_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}", dir.path().join("t.db").display());
    let env = Env::new(dir, db_url);
    let good = common::write_file(
        env.dir.path(),
        "good.toml",
        &definitions(Path::new("/tmp/x")),
    );
    assert!(env
        .run(&["dags", "sync", good.to_str().unwrap()])
        .status
        .success());
    let snapshot = |env: &Env| {
        (
            env.json(&["dags", "list", "--json"]),
            env.json(&["assets", "list", "--json"]),
            env.json(&["triggers", "list", "--json"]),
        )
    };
    let before = snapshot(&env);
    let broken = common::write_file(
        env.dir.path(),
        "broken.toml",
        "[[asset]]\nname = \"landing\"\n\n[[dag]]\ndag_id = \"ingest\"\nschedule = { assets = \"landing & nowhere\" }\n",
    );
    let out = env.run(&["dags", "sync", broken.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "{}:6: dag `ingest`: `schedule`: unknown asset `nowhere`",
        broken.display()
    );
    assert!(stderr.contains(&expected), "stderr: {stderr}");
    assert_eq!(
        before,
        snapshot(&env),
        "a failed sync leaves the database as it was"
    );
}

#[test]
fn cli_errors_are_clear() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}", dir.path().join("t.db").display());
    let env = Env::new(dir, db_url);
    let out = env.run(&["dags", "trigger", "ghost"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DAG `ghost` not found"));
    let out = env.run(&["assets", "emit", "ghost", "--extra", "{}"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("asset `ghost` not found"));
    let out = env.run(&["runs", "list", "--state", "sleeping"]);
    assert!(!out.status.success());
}

/// `{ env = "NAME" }` in kwargs: stored and listed as the reference, resolved only by the
/// triggerer process; an unset variable fails only its own trigger, naming the variable; a
/// literal secret is masked in listings and warned about at sync.
#[test]
fn environment_references_resolve_only_in_the_triggerer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = format!("sqlite://{}", dir.path().join("t.db").display());
    let env = Env::new(dir, db_url);
    std::fs::create_dir_all(env.incoming()).expect("incoming dir");
    let defs = common::write_file(
        env.dir.path(),
        "dags.toml",
        r#"
[[asset]]
name = "landing"
[[asset.watcher]]
name = "from-env"
classpath = "file.FileTrigger"
kwargs = { filepath = { env = "TRG_TEST_LANDING_GLOB" } }

[[asset]]
name = "unset"
[[asset.watcher]]
name = "from-unset-env"
classpath = "file.FileTrigger"
kwargs = { filepath = { env = "TRG_TEST_NEVER_SET" } }

[[asset]]
name = "orders"
[[asset.watcher]]
name = "kafka-with-literal-password"
classpath = "kafka.AwaitMessageTrigger"
kwargs = { topics = ["o"], bootstrap_servers = "127.0.0.1:1", kafka_config = { "sasl.password" = "hunter2" } }
"#,
    );
    let out = env.run(&["dags", "sync", defs.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warned = String::from_utf8_lossy(&out.stderr);
    assert!(
        warned.contains("kwargs `kafka_config.sasl.password` is a literal secret")
            && !warned.contains("hunter2"),
        "sync warns about the literal secret without printing it: {warned}"
    );

    let glob = format!("{}/*.dat", env.incoming().display());
    let _triggerer = common::standalone_with_env(
        &env.db_url,
        &env.dir.path().join("run1.log"),
        &[("TRG_TEST_LANDING_GLOB", glob.as_str())],
    );
    env.wait_for("the triggers to start", Duration::from_secs(30), || {
        env.trigger_owned()
    });
    create_files(&env.incoming(), 0..3);
    env.wait_for(
        "3 events from the referenced glob",
        Duration::from_secs(30),
        || {
            env.json(&["assets", "events", "--asset", "landing", "--json"])
                .len()
                == 3
        },
    );
    env.wait_for(
        "the unset variable's error",
        Duration::from_secs(30),
        || {
            env.json(&["triggers", "list", "--json"]).iter().any(|t| {
                t["last_error"].as_str().is_some_and(|e| {
                    e.contains(
                        "kwargs `filepath`: environment variable `TRG_TEST_NEVER_SET` is not set",
                    )
                })
            })
        },
    );

    let triggers = env.json(&["triggers", "list", "--json"]);
    let by_asset = |asset: &str| {
        triggers
            .iter()
            .find(|t| {
                t["assets"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|n| n == asset))
            })
            .unwrap_or_else(|| panic!("a trigger for {asset}: {triggers:?}"))
            .clone()
    };
    assert_eq!(
        by_asset("landing")["kwargs"],
        serde_json::json!({"filepath": {"env": "TRG_TEST_LANDING_GLOB"}}),
        "the database holds the reference, not its value"
    );
    assert_eq!(
        by_asset("orders")["kwargs"]["kafka_config"]["sasl.password"],
        "***"
    );
    assert_eq!(by_asset("landing")["state"], "running");
    assert_eq!(by_asset("unset")["state"], "failing");
    let human = env.run(&["triggers", "list"]);
    assert!(!String::from_utf8_lossy(&human.stdout).contains("hunter2"));
}
