//! Several triggerers on one PostgreSQL, through the real binary: 1,000 triggers spread evenly
//! over 3 processes; `kill -9` of one moves its triggers to the others within the health
//! threshold plus a few claim loops; SIGTERM exits 0 and hands its triggers over at once; files
//! written throughout become exactly one event each. And PostgreSQL going away mid-stream (a
//! proxy cuts every connection for longer than the health threshold): the triggerer and the
//! scheduler reconnect and carry on, none lost, none twice.
#![cfg(feature = "integration-postgres")]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{KillOnDrop, BIN};

const TRIGGERS: usize = 1_000;

struct Cluster {
    dir: tempfile::TempDir,
    db_url: String,
}

impl Cluster {
    fn json(&self, args: &[&str]) -> Vec<Value> {
        common::Cli {
            db_url: self.db_url.clone(),
        }
        .json(args)
    }

    /// `triggerer run` with a 0.5 s heartbeat and a 2 s health threshold.
    fn start_triggerer(&self, name: &str) -> KillOnDrop {
        self.start(
            name,
            &self.db_url,
            &[
                "run",
                "--heartbeat-interval",
                "0.5",
                "--health-check-threshold",
                "2",
            ],
        )
    }

    fn start(&self, name: &str, db_url: &str, args: &[&str]) -> KillOnDrop {
        let log = std::fs::File::create(self.log(name)).expect("log file");
        KillOnDrop(
            Command::new(BIN)
                .args(args)
                .env("TRIGGERER_DATABASE_URL", db_url)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start triggerer"),
        )
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// The job id a triggerer logged when it started.
    fn job_id(&self, name: &str) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(self.log(name)).unwrap_or_default();
            let id = log
                .lines()
                .find(|l| l.contains("triggerer started"))
                .and_then(|l| l.split("job_id=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|id| id.parse().ok());
            if let Some(id) = id {
                return id;
            }
            assert!(Instant::now() < deadline, "{name} never started:\n{log}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Triggers per owning job (`None`: unowned).
    fn owners(&self) -> HashMap<Option<i64>, usize> {
        let mut owners = HashMap::new();
        for t in self.json(&["triggers", "list", "--json"]) {
            *owners.entry(t["triggerer_id"].as_i64()).or_default() += 1;
        }
        owners
    }

    /// Waits until every trigger is owned by one of `jobs`; returns how long that took.
    fn wait_owned_by(&self, jobs: &[i64], within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let owners = self.owners();
            let owned: usize = jobs
                .iter()
                .map(|j| owners.get(&Some(*j)).copied().unwrap_or(0))
                .sum();
            if owned == TRIGGERS {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "after {within:?} only {owned} of {TRIGGERS} triggers are owned by {jobs:?}: {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn wait_owned_by_one(&self, job: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.owners().contains_key(&Some(job)) {
            assert!(
                Instant::now() < deadline,
                "job {job} never claimed the trigger"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn event_keys(&self) -> Vec<String> {
        self.json(&["assets", "events", "--limit", "0", "--json"])
            .iter()
            .map(|e| e["dedup_key"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

/// Writes files round-robin over the trigger directories until stopped.
struct Producer {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Producer {
    fn start(root: &Path, dirs: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicUsize::new(0));
        let root = root.to_path_buf();
        let thread = std::thread::spawn({
            let (stop, written) = (stop.clone(), written.clone());
            move || {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let path = root
                        .join(format!("d{}", n % dirs))
                        .join(format!("f{n:06}.dat"));
                    std::fs::write(&path, n.to_string()).expect("write file");
                    n += 1;
                    written.store(n, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
        Self {
            stop,
            written,
            thread: Some(thread),
        }
    }

    fn written(&self) -> usize {
        self.written.load(Ordering::Relaxed)
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("producer thread");
        }
        self.written()
    }
}

#[test]
fn three_triggerers_share_a_thousand_triggers_and_survive_kill_9_and_sigterm() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (store, db_url) = runtime.block_on(common::postgres_store());
    runtime.block_on(store.close());
    let cluster = Cluster {
        dir: tempfile::tempdir().expect("temp dir"),
        db_url,
    };
    let root = cluster.dir.path().join("watch");
    let mut defs = String::from("[[asset]]\nname = \"landing\"\n");
    for i in 0..TRIGGERS {
        std::fs::create_dir_all(root.join(format!("d{i}"))).expect("dir");
        defs.push_str(&format!(
            "[[asset.watcher]]\nname = \"d{i}\"\nclasspath = \"file.FileTrigger\"\nkwargs = {{ filepath = \"{}/d{i}/*.dat\" }}\n",
            root.display()
        ));
    }
    let defs = common::write_file(cluster.dir.path(), "dags.toml", &defs);
    common::sync_definitions(&cluster.db_url, &defs);

    let names = ["t1", "t2", "t3"];
    let mut processes: Vec<KillOnDrop> = names.iter().map(|n| cluster.start_triggerer(n)).collect();
    let jobs: Vec<i64> = names.iter().map(|n| cluster.job_id(n)).collect();
    let spread_in = cluster.wait_owned_by(&jobs, Duration::from_secs(60));
    let owners = cluster.owners();
    let shares: Vec<usize> = jobs.iter().map(|j| owners[&Some(*j)]).collect();
    let fair = TRIGGERS as f64 / 3.0;
    for (name, share) in names.iter().zip(&shares) {
        assert!(
            (*share as f64 - fair).abs() <= 0.2 * fair,
            "{name} runs {share} triggers; each should run {fair:.0} ± 20 %: {shares:?}"
        );
    }

    let producer = Producer::start(&root, TRIGGERS);
    std::thread::sleep(Duration::from_secs(2));

    // kill -9: no release, no goodbye. The others see its heartbeat go stale and claim.
    processes[0].kill();
    let failover = cluster.wait_owned_by(&jobs[1..], Duration::from_secs(15));

    // SIGTERM: a clean exit that hands its triggers back at once.
    let pid = processes[1].0.id().to_string();
    let terminated = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = loop {
        if let Some(exit) = processes[1].0.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            terminated.elapsed() < Duration::from_secs(20),
            "SIGTERM: no exit within 20 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let exited_in = terminated.elapsed();
    assert!(exit.success(), "SIGTERM exit status: {exit}");
    let released = cluster.owners();
    assert_eq!(
        released.get(&Some(jobs[1])),
        None,
        "its triggers are released as it exits: {released:?}"
    );
    let handover = cluster.wait_owned_by(&jobs[2..], Duration::from_secs(30));

    std::thread::sleep(Duration::from_secs(2));
    let written = producer.finish();

    let deadline = Instant::now() + Duration::from_secs(60);
    let keys = loop {
        let keys = cluster.event_keys();
        if keys.len() >= written || Instant::now() > deadline {
            break keys;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let distinct: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "no file became two events");
    assert_eq!(
        keys.len(),
        written,
        "every file written throughout became an event; log of the survivor:\n{}",
        std::fs::read_to_string(cluster.log("t3"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "spread over 3 in {spread_in:?}: {shares:?}; kill -9 → all owned by the other 2 in \
         {failover:?}; SIGTERM → exit 0 in {exited_in:?}, all owned by the last in {handover:?}; \
         {written} files → {} events",
        keys.len()
    );
}

#[test]
fn postgres_going_away_mid_stream_loses_and_repeats_nothing() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (store, db_url) = runtime.block_on(common::postgres_store());
    runtime.block_on(store.close());
    let proxy = common::FaultyProxy::start(&common::host_port(&db_url));
    let through_proxy = proxy.url_through(&db_url);
    let cluster = Cluster {
        dir: tempfile::tempdir().expect("temp dir"),
        db_url,
    };
    let root = cluster.dir.path().join("watch");
    std::fs::create_dir_all(root.join("d0")).expect("dir");
    let defs = common::write_file(
        cluster.dir.path(),
        "dags.toml",
        &format!(
            r#"
[[asset]]
name = "landing"
[[asset.watcher]]
name = "files"
classpath = "file.FileTrigger"
kwargs = {{ filepath = "{}/d0/*.dat" }}

[[dag]]
dag_id = "ingest"
schedule = {{ assets = "landing" }}
max_active_runs = 100000
"#,
            root.display()
        ),
    );
    common::sync_definitions(&cluster.db_url, &defs);
    let mut triggerer = cluster.start(
        "run",
        &through_proxy,
        &[
            "run",
            "--heartbeat-interval",
            "0.5",
            "--health-check-threshold",
            "2",
        ],
    );
    let mut scheduler = cluster.start("scheduler", &through_proxy, &["scheduler"]);
    let job = cluster.job_id("run");
    cluster.wait_owned_by_one(job);
    std::thread::sleep(Duration::from_millis(500)); // the watch is set up right after the claim

    let producer = Producer::start(&root, 1);
    std::thread::sleep(Duration::from_secs(2));
    let before_outage = cluster.event_keys().len();
    proxy.outage(); // longer than the 2 s health threshold: the triggerer stops its triggers
    std::thread::sleep(Duration::from_secs(6));
    let during_outage = cluster.event_keys().len();
    proxy.restore();
    std::thread::sleep(Duration::from_secs(3));
    let written = producer.finish();

    let deadline = Instant::now() + Duration::from_secs(90);
    let (events, runs) = loop {
        let events = cluster.json(&["assets", "events", "--limit", "0", "--json"]);
        let runs = cluster.json(&["runs", "list", "--limit", "0", "--json"]);
        let consumed: usize = runs
            .iter()
            .map(|r| r["consumed_events"].as_array().map_or(0, Vec::len))
            .sum();
        if (events.len() >= written && consumed >= events.len()) || Instant::now() > deadline {
            break (events, runs);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let tail = |name: &str| {
        std::fs::read_to_string(cluster.log(name))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        triggerer.0.try_wait().expect("wait").is_none(),
        "the triggerer kept running:\n{}",
        tail("run")
    );
    assert!(
        scheduler.0.try_wait().expect("wait").is_none(),
        "the scheduler kept running:\n{}",
        tail("scheduler")
    );
    let keys: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["dedup_key"].as_str())
        .collect();
    assert_eq!(keys.len(), events.len(), "no file became two events");
    assert_eq!(
        events.len(),
        written,
        "every file became an event; triggerer log:\n{}",
        tail("run")
    );
    common::assert_consumed_once(
        &events,
        &runs,
        &format!("scheduler log:\n{}", tail("scheduler")),
    );
    // Cut off for longer than the health threshold, it stopped its triggers itself (others
    // would have claimed them), and ran them again once the database answered.
    let log = std::fs::read_to_string(cluster.log("run")).unwrap_or_default();
    let stopped = log
        .find("no heartbeat within the health threshold; stopping all triggers")
        .unwrap_or_else(|| panic!("the triggerer never stopped its triggers:\n{}", tail("run")));
    assert!(
        log[stopped..].contains("trigger started"),
        "the trigger ran again after the outage:\n{}",
        tail("run")
    );
    eprintln!(
        "{written} files → {} events ({before_outage} before the outage, {during_outage} when \
         it ended), consumed once each by {} runs",
        events.len(),
        runs.len()
    );
}
