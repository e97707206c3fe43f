//! What the end-to-end tests of tasks (`e2e_tasks`) and of deferral (`e2e_deferral`) share: the
//! `e2e!` macro running a scenario on SQLite and on PostgreSQL, and [`Env`], a test's directory
//! and database with the commands and waits those scenarios use (writing and syncing
//! definitions, starting processes with their logs in the directory, listing runs, tasks and
//! logs, waiting on runs, tasks, `status` and files, and what a failing wait prints).
//!
//! Every test binary includes `common`, and only those two use this module: nothing here is
//! dead code for the others.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{KillOnDrop, Workspace, BIN};

/// Runs `$scenario(env)` on a fresh SQLite database and, with the `integration-postgres`
/// feature, on a fresh PostgreSQL database.
#[macro_export]
macro_rules! e2e {
    ($name:ident, $scenario:ident) => {
        mod $name {
            #[test]
            fn sqlite() {
                super::$scenario($crate::common::tasks::Env::sqlite());
            }

            #[cfg(feature = "integration-postgres")]
            #[test]
            fn postgres() {
                super::$scenario($crate::common::tasks::Env::postgres());
            }
        }
    };
}

/// The states a run ends in.
pub const TERMINAL_RUN_STATES: [&str; 2] = ["success", "failed"];

/// Valid definitions: the DAG `good`, one task `a` that succeeds.
pub const GOOD_DEFS: &str = r#"
[[dag]]
dag_id = "good"

[[dag.task]]
task_id = "a"
shell = "true"
"#;

/// [`GOOD_DEFS`], a valid DAG `extra`, then the DAG `bad` with `tail` after its header: the
/// definitions a bad-input test syncs (and expects refused).
pub fn with_bad_dag(tail: &str) -> String {
    format!("{GOOD_DEFS}\n[[dag]]\ndag_id = \"extra\"\n\n[[dag]]\ndag_id = \"bad\"\n\n{tail}")
}

/// A test's directory (its process logs, the files its tasks write, its SQLite database) and
/// the binary pointed at its database: a [`Workspace`] with the helpers of these scenarios.
pub struct Env(Workspace);

impl std::ops::Deref for Env {
    type Target = Workspace;
    fn deref(&self) -> &Workspace {
        &self.0
    }
}

impl Env {
    /// A new directory with a SQLite database in it.
    pub fn sqlite() -> Self {
        Self(Workspace::sqlite())
    }

    /// A new directory and a fresh PostgreSQL database.
    #[cfg(feature = "integration-postgres")]
    pub fn postgres() -> Self {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let (store, url) = runtime.block_on(super::postgres_store());
        runtime.block_on(store.close());
        Self(Workspace::new(tempfile::tempdir().expect("temp dir"), url))
    }

    /// The test's directory, as text for definitions and scripts.
    pub fn root(&self) -> String {
        self.dir.path().display().to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The directory `--dags` points at.
    pub fn dags_dir(&self) -> PathBuf {
        self.path("dags")
    }

    /// Writes `text` as the definitions in [`Env::dags_dir`] (not synced).
    pub fn write_dags(&self, text: &str) -> PathBuf {
        std::fs::create_dir_all(self.dags_dir()).expect("dags dir");
        super::write_file(&self.dags_dir(), "dags.toml", text)
    }

    /// Writes and syncs `text` as the definitions.
    pub fn sync(&self, text: &str) {
        let path = self.write_dags(text);
        self.ok(&["dags", "sync", path.to_str().expect("utf-8 path")]);
    }

    /// Starts `triggerer ARGS`, its stderr (the log) in `NAME.log`.
    pub fn spawn(&self, name: &str, args: &[&str]) -> KillOnDrop {
        let log = std::fs::File::create(self.path(&format!("{name}.log"))).expect("log file");
        KillOnDrop(
            Command::new(BIN)
                .args(args)
                .env("TRIGGERER_DATABASE_URL", &self.db_url)
                // The HTTP tasks call a server on loopback: never through a proxy.
                .env("NO_PROXY", "127.0.0.1,localhost")
                .env("no_proxy", "127.0.0.1,localhost")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("start triggerer {args:?}: {e}")),
        )
    }

    /// `standalone --dags DIR EXTRA…` with a fast heartbeat, after writing and syncing `text`
    /// as the definitions (synced first: other commands run meanwhile, and two commands
    /// migrating a fresh SQLite database at once can fail).
    pub fn standalone(&self, text: &str, extra: &[&str]) -> KillOnDrop {
        self.sync(text);
        let dags = self.dags_dir();
        let mut args = vec!["standalone", "--dags", dags.to_str().expect("utf-8")];
        args.extend_from_slice(extra);
        args.extend([
            "--heartbeat-interval",
            "0.5",
            // Generous: on a loaded 2-core machine a late heartbeat must not count as death.
            "--health-check-threshold",
            "10",
        ]);
        self.spawn("standalone", &args)
    }

    /// `executor` with a 1 s heartbeat and a 3 s health threshold, plus `extra`.
    pub fn executor(&self, name: &str, extra: &[&str]) -> KillOnDrop {
        let mut args = vec![
            "executor",
            "--heartbeat-interval",
            "1",
            "--health-check-threshold",
            "3",
        ];
        args.extend_from_slice(extra);
        self.spawn(name, &args)
    }

    pub fn trigger(&self, dag: &str, run_id: &str) {
        self.ok(&["dags", "trigger", dag, "--run-id", run_id]);
    }

    pub fn runs(&self, dag: &str) -> Vec<Value> {
        self.json(&["runs", "list", "--dag", dag, "--limit", "0", "--json"])
    }

    pub fn find_run(&self, dag: &str, run_id: &str) -> Option<Value> {
        self.runs(dag).into_iter().find(|r| r["run_id"] == run_id)
    }

    pub fn tasks(&self, dag: &str, run_id: &str) -> Vec<Value> {
        self.json(&["tasks", "list", dag, run_id, "--json"])
    }

    pub fn task(&self, dag: &str, run_id: &str, task_id: &str) -> Value {
        let tasks = self.tasks(dag, run_id);
        tasks
            .iter()
            .find(|t| t["task_id"] == task_id)
            .unwrap_or_else(|| panic!("task {task_id} in `tasks list {dag} {run_id}`: {tasks:#?}"))
            .clone()
    }

    /// `tasks logs DAG RUN TASK [--try N]`, which must succeed.
    pub fn logs(&self, dag: &str, run_id: &str, task_id: &str, try_number: Option<u32>) -> String {
        let n = try_number.map(|n| n.to_string());
        let mut args = vec!["tasks", "logs", dag, run_id, task_id];
        if let Some(n) = &n {
            args.extend(["--try", n.as_str()]);
        }
        self.ok(&args)
    }

    /// `status --json`: one object.
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).expect("status --json: one object")
    }

    /// The lines of a file the tasks write (none when it does not exist yet).
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The last lines of every process log in the test's directory.
    pub fn process_logs(&self) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        let mut out = String::new();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(25)..];
            out.push_str(&format!(
                "\n--- {} (last {} lines) ---\n{}\n",
                log.display(),
                tail.len(),
                tail.join("\n")
            ));
        }
        out
    }

    /// What a failing wait prints: the run, its tasks, their latest logs, the triggers, the
    /// status and the process logs.
    pub fn diagnose(&self, dag: &str, run_id: &str) -> String {
        let mut out = String::new();
        let text = |args: &[&str]| {
            let o = self.run(args);
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        out.push_str(&format!(
            "runs list: {}\n",
            text(&["runs", "list", "--dag", dag, "--limit", "0", "--json"])
        ));
        let tasks = self.run(&["tasks", "list", dag, run_id, "--json"]);
        out.push_str(&format!(
            "tasks list {dag} {run_id}: {}{}\n",
            String::from_utf8_lossy(&tasks.stdout),
            String::from_utf8_lossy(&tasks.stderr)
        ));
        let listed: Vec<Value> = serde_json::from_slice(&tasks.stdout).unwrap_or_default();
        for t in listed {
            let task_id = t["task_id"].as_str().unwrap_or_default();
            out.push_str(&format!(
                "--- tasks logs {task_id} ---\n{}\n",
                text(&["tasks", "logs", dag, run_id, task_id])
            ));
        }
        out.push_str(&format!(
            "triggers list: {}\n",
            text(&["triggers", "list", "--json"])
        ));
        out.push_str(&format!("status: {}\n", text(&["status", "--json"])));
        out.push_str(&self.process_logs());
        out
    }

    /// Polls until `check` holds; fails after `secs` with `diagnose()`.
    pub fn wait_for(
        &self,
        what: &str,
        secs: u64,
        mut check: impl FnMut() -> bool,
        diagnose: impl Fn() -> String,
    ) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if check() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {secs} s waiting for {what}\n{}",
                    diagnose()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until the run is in `state`; fails at once when it ends in the other end state.
    pub fn wait_run(&self, dag: &str, run_id: &str, state: &str, secs: u64) -> Value {
        self.wait_run_state(dag, run_id, state, secs, true)
    }

    /// Waits until the run is in `state`; with `fail_fast`, fails at once when it ended in the
    /// other end state (without: it may still be on its way, as after `tasks set-state`).
    pub fn wait_run_state(
        &self,
        dag: &str,
        run_id: &str,
        state: &str,
        secs: u64,
        fail_fast: bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(run) = self.find_run(dag, run_id) {
                let now = run["state"].as_str().unwrap_or_default();
                if now == state {
                    return run;
                }
                if fail_fast && TERMINAL_RUN_STATES.contains(&now) {
                    panic!(
                        "run {dag}/{run_id} ended `{now}`, expected `{state}`\n{}",
                        self.diagnose(dag, run_id)
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "run {dag}/{run_id} not `{state}` within {secs} s\n{}",
                    self.diagnose(dag, run_id)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until every run of `dag` in `run_ids` has ended; fails when one did not succeed.
    /// A timeout prints the runs by state, those not ended, the lines of `marks` (the file the
    /// scenarios' tasks append to) and the diagnosis of the first run not ended.
    pub fn wait_all_success(&self, dag: &str, run_ids: &[String], secs: u64) {
        let last: std::cell::RefCell<Vec<Value>> = Default::default();
        self.wait_for(
            &format!("{} runs of {dag} to end", run_ids.len()),
            secs,
            || {
                let runs: Vec<Value> = serde_json::from_slice(
                    &self
                        .run(&["runs", "list", "--dag", dag, "--limit", "0", "--json"])
                        .stdout,
                )
                .unwrap_or_default();
                let ended = pending_runs(&runs, run_ids).is_empty();
                *last.borrow_mut() = runs;
                ended
            },
            || {
                let last = last.borrow();
                let pending = pending_runs(&last, run_ids);
                format!(
                    "runs by state: {:?}; not ended: {pending:?}; marks: {:?}\n{}",
                    by_state(&last),
                    self.lines("marks"),
                    self.diagnose(dag, pending.first().map_or("none", |s| s.as_str()))
                )
            },
        );
        let last = last.into_inner();
        let failed: Vec<&Value> = last.iter().filter(|r| r["state"] != "success").collect();
        assert!(
            failed.is_empty(),
            "every run succeeds: {failed:#?}\n{}",
            self.diagnose(dag, failed[0]["run_id"].as_str().unwrap_or_default())
        );
    }

    /// Waits until `status --json` satisfies `check`; the status it saw.
    pub fn wait_status(&self, what: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
        let seen = std::cell::RefCell::new(Value::Null);
        self.wait_for(
            what,
            secs,
            || {
                let out = self.run(&["status", "--json"]);
                let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                let ok = check(&status);
                *seen.borrow_mut() = status;
                ok
            },
            || {
                format!(
                    "last status: {:#}\ntriggers: {}\n{}",
                    seen.borrow(),
                    String::from_utf8_lossy(&self.run(&["triggers", "list", "--json"]).stdout),
                    self.process_logs()
                )
            },
        );
        seen.into_inner()
    }

    /// Waits until the file `name` has at least `n` lines.
    pub fn wait_lines(&self, name: &str, n: usize, secs: u64, dag: &str, run_id: &str) {
        self.wait_for(
            &format!("{n} line(s) in {name}"),
            secs,
            || self.lines(name).len() >= n,
            || {
                format!(
                    "{name}: {:?}\n{}",
                    self.lines(name),
                    self.diagnose(dag, run_id)
                )
            },
        );
    }

    /// Syncs `text` (written as `bad.toml` in the test's directory), which must be refused
    /// (`what` it is wrong with): exit 1, a `file:line: message` at one of `lines`, one of each
    /// entry of `words` in the message, and the definitions unchanged from `before` (`dags list
    /// --json`).
    pub fn assert_sync_refused(
        &self,
        what: &str,
        text: &str,
        lines: &[usize],
        words: &[&[&str]],
        before: &[Value],
    ) {
        let path = super::write_file(self.dir.path(), "bad.toml", text);
        let out = self.run(&["dags", "sync", path.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: sync must fail with exit 1; stderr: {stderr}\n{text}"
        );
        let at = |line: &usize| format!("{}:{line}: ", path.display());
        assert!(
            lines.iter().any(|l| stderr.contains(&at(l))),
            "{what}: `file:line: message` at one of lines {lines:?}; stderr: {stderr}\n{text}"
        );
        for alternatives in words {
            assert!(
                alternatives.iter().any(|w| stderr.contains(w)),
                "{what}: one of {alternatives:?} in the message: {stderr}"
            );
        }
        assert_eq!(
            self.json(&["dags", "list", "--json"]),
            before,
            "{what}: a failed sync writes nothing"
        );
    }
}

/// Run states and how many runs are in each.
pub fn by_state(runs: &[Value]) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for r in runs {
        *m.entry(r["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

/// The runs of `run_ids` not ended in `runs`.
pub fn pending_runs(runs: &[Value], run_ids: &[String]) -> Vec<String> {
    run_ids
        .iter()
        .filter(|id| {
            !runs.iter().any(|r| {
                r["run_id"] == id.as_str()
                    && TERMINAL_RUN_STATES.contains(&r["state"].as_str().unwrap_or(""))
            })
        })
        .cloned()
        .collect()
}
