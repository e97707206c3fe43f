//! Tasks and the executor (DESIGN §10) end to end, through the real binary as a user runs it:
//! a file event → an asset-triggered run → a chain of shell tasks under `standalone`; retries
//! with one log per try; trigger rules; `execution_timeout` killing a whole process tree;
//! `tasks clear` (with `--downstream`); `kill -9` and SIGTERM of an executor with a running
//! task; bad definitions and bad command lines; the HTTP operator against a tiny in-test
//! server. Each scenario runs on SQLite always and on PostgreSQL with the
//! `integration-postgres` feature (which adds two executors sharing 1,000 tasks).
//!
//! Nothing here asserts a timing: waits poll with generous deadlines and fail with the state
//! of the run, its tasks and the tails of the processes' logs.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::tasks::{with_bad_dag, Env, GOOD_DEFS};
use common::{KillOnDrop, BIN};

impl Env {
    /// Waits until the task instance is in `state`.
    fn wait_task(&self, dag: &str, run_id: &str, task_id: &str, state: &str, secs: u64) -> Value {
        let mut last = Value::Null;
        self.wait_for(
            &format!("task {dag}/{run_id}/{task_id} to be `{state}`"),
            secs,
            || {
                let tasks: Vec<Value> = serde_json::from_slice(
                    &self.run(&["tasks", "list", dag, run_id, "--json"]).stdout,
                )
                .unwrap_or_default();
                if let Some(t) = tasks.into_iter().find(|t| t["task_id"] == task_id) {
                    last = t;
                }
                last["state"] == state
            },
            || self.diagnose(dag, run_id),
        );
        last
    }
}

/// Whether process `pid` still exists (a zombie counts as gone: it runs nothing).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| !rest.starts_with('Z')),
    }
}

/// Waits up to `secs` for `pid` to be gone; whether it is.
fn gone_within(pid: u32, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// Waits until a task of `dag`/`run_id` has written a pid in the file `name`; the first.
fn wait_pid(env: &Env, name: &str, dag: &str, run_id: &str) -> u32 {
    env.wait_lines(name, 1, 30, dag, run_id);
    let line = &env.lines(name)[0];
    line.trim()
        .parse()
        .unwrap_or_else(|e| panic!("a pid, not `{line}`: {e}"))
}

/// Waits for a child to exit, at most `secs`; its status.
fn wait_exit(child: &mut KillOnDrop, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sigterm(child: &KillOnDrop) {
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success(), "kill -TERM failed");
}

// ---------------------------------------------------------------------------------------------
// 1. A file event → an asset-triggered run → a → b → c → success, by itself.
// ---------------------------------------------------------------------------------------------

fn file_event_runs_a_chain_of_tasks(env: Env) {
    let root = env.root();
    std::fs::create_dir_all(env.path("incoming")).expect("incoming dir");
    // Written before the triggerer starts: the watcher's start-up scan finds it.
    std::fs::write(env.path("incoming/o1.dat"), "order 1\n").expect("write file");
    let defs = format!(
        r#"
[[asset]]
name = "orders"
[[asset.watcher]]
name = "orders-files"
classpath = "file.FileTrigger"
kwargs = {{ filepath = "{root}/incoming/*.dat" }}

[[dag]]
dag_id = "etl"
schedule = {{ assets = "orders" }}

[[dag.task]]
task_id = "a"
shell = '''echo "hello from a"; echo "$TRIGGERER_RUN_ID" > "{root}/run_id"; printf '%s' "$TRIGGERER_TRIGGERING_ASSET_EVENTS" > "{root}/events.json"; env | grep '^TRIGGERER_' > "{root}/env.a"; echo "$TRIGGERER_TASK_ID $TRIGGERER_RUN_ID" >> "{root}/order"'''

[[dag.task]]
task_id = "b"
depends_on = ["a"]
shell = '''echo "$TRIGGERER_TASK_ID $TRIGGERER_RUN_ID" >> "{root}/order"'''

[[dag.task]]
task_id = "c"
depends_on = ["b"]
shell = '''echo "$TRIGGERER_TASK_ID $TRIGGERER_RUN_ID" >> "{root}/order"'''
"#
    );
    let _standalone = env.standalone(&defs, &[]);

    let mut run_id = String::new();
    env.wait_for(
        "an asset-triggered run of etl",
        60,
        || {
            let runs: Vec<Value> = serde_json::from_slice(
                &env.run(&["runs", "list", "--dag", "etl", "--json"]).stdout,
            )
            .unwrap_or_default();
            if let Some(r) = runs.first() {
                run_id = r["run_id"].as_str().unwrap_or_default().to_string();
            }
            !run_id.is_empty()
        },
        || env.process_logs(),
    );
    let run = env.wait_run("etl", &run_id, "success", 60);
    assert_eq!(run["run_type"], "asset_triggered", "{run}");
    let runs = env.runs("etl");
    assert_eq!(runs.len(), 1, "one file, one run: {runs:#?}");

    // The tasks ran in order, each seeing its run's id.
    assert_eq!(
        env.lines("order"),
        vec![
            format!("a {run_id}"),
            format!("b {run_id}"),
            format!("c {run_id}")
        ]
    );
    assert_eq!(env.lines("run_id"), vec![run_id.clone()]);

    // The consumed event, as the command saw it.
    let consumed = run["consumed_events"].as_array().expect("consumed_events");
    assert_eq!(consumed.len(), 1, "{run}");
    let events: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(env.path("events.json")).expect("events.json"),
    )
    .expect("TRIGGERER_TRIGGERING_ASSET_EVENTS is a JSON array");
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["id"], consumed[0], "{event}");
    assert_eq!(event["asset"], "orders", "{event}");
    assert_eq!(
        event["uri"], "orders",
        "the uri defaults to the name: {event}"
    );
    assert!(event["timestamp"].is_string(), "{event}");
    assert!(event.get("extra").is_some(), "{event}");
    let recorded = env.json(&["assets", "events", "--asset", "orders", "--json"]);
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert_eq!(recorded[0]["id"], event["id"]);

    // The rest of the context.
    let vars: Vec<String> = env.lines("env.a");
    for (name, value) in [
        ("TRIGGERER_DAG_ID", "etl"),
        ("TRIGGERER_TASK_ID", "a"),
        ("TRIGGERER_TRY_NUMBER", "1"),
    ] {
        assert!(
            vars.contains(&format!("{name}={value}")),
            "{name}={value} in the environment: {vars:#?}"
        );
    }
    assert!(
        vars.iter().any(|v| v.starts_with("TRIGGERER_CONF=")),
        "{vars:#?}"
    );

    // tasks list: every field the contract names.
    let tasks = env.tasks("etl", &run_id);
    let ids: Vec<&str> = tasks.iter().filter_map(|t| t["task_id"].as_str()).collect();
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(["a", "b", "c"]),
        "{tasks:#?}"
    );
    for t in &tasks {
        assert_eq!(t["dag_id"], "etl", "{t}");
        assert_eq!(t["run_id"], run_id.as_str(), "{t}");
        assert_eq!(t["state"], "success", "{t}");
        assert_eq!(t["try_number"], 1, "{t}");
        assert_eq!(t["operator"], "shell", "{t}");
        assert!(t["start_date"].is_string(), "{t}");
        assert!(t["end_date"].is_string(), "{t}");
        assert!(
            t["duration"].as_f64().is_some_and(|d| d >= 0.0),
            "duration in seconds: {t}"
        );
        assert!(t["hostname"].is_string(), "{t}");
        for key in ["max_tries", "trigger_id"] {
            assert!(t.get(key).is_some(), "{key} in {t}");
        }
    }
    let log = env.logs("etl", &run_id, "a", None);
    assert!(log.contains("hello from a"), "the command's stdout: {log}");
}
e2e!(
    file_event_runs_a_chain_of_tasks_to_success,
    file_event_runs_a_chain_of_tasks
);

// ---------------------------------------------------------------------------------------------
// 2. Retries: fails on tries 1 and 2, succeeds on try 3; one log per try.
// ---------------------------------------------------------------------------------------------

fn retries_until_success(env: Env) {
    let root = env.root();
    let defs = format!(
        r#"
[[dag]]
dag_id = "flaky"

[[dag.task]]
task_id = "flaky"
retries = 2
retry_delay = "1s"
shell = '''n=$(cat "{root}/count" 2>/dev/null || echo 0); n=$((n + 1)); echo "$n" > "{root}/count"; echo "try $TRIGGERER_TRY_NUMBER of flaky (attempt $n)"; printf '%s' "$TRIGGERER_CONF" > "{root}/conf.json"; echo "$TRIGGERER_LOGICAL_DATE" > "{root}/logical_date"; if [ "$n" -lt 3 ]; then echo "failing on try $TRIGGERER_TRY_NUMBER" >&2; exit 1; fi'''
"#
    );
    let _standalone = env.standalone(&defs, &[]);
    env.ok(&[
        "dags",
        "trigger",
        "flaky",
        "--run-id",
        "r1",
        "--conf",
        r#"{"k": "v"}"#,
    ]);
    let run = env.wait_run("flaky", "r1", "success", 60);

    let task = env.task("flaky", "r1", "flaky");
    assert_eq!(task["state"], "success", "{task}");
    assert_eq!(task["try_number"], 3, "{task}");
    assert_eq!(env.lines("count"), vec!["3"], "three attempts, no more");

    for n in 1..=3u32 {
        let log = env.logs("flaky", "r1", "flaky", Some(n));
        assert!(
            log.contains(&format!("try {n} of flaky (attempt {n})")),
            "try {n}'s log has its own output: {log}"
        );
        for other in (1..=3u32).filter(|o| *o != n) {
            assert!(
                !log.contains(&format!("try {other} of flaky")),
                "try {n}'s log has only its own output: {log}"
            );
        }
        assert_eq!(
            log.contains(&format!("failing on try {n}")),
            n < 3,
            "stderr goes to the log too: {log}"
        );
    }
    let latest = env.logs("flaky", "r1", "flaky", None);
    assert!(
        latest.contains("try 3 of flaky") && !latest.contains("try 2 of flaky"),
        "without --try: the latest try: {latest}"
    );
    let err = env.fails(&["tasks", "logs", "flaky", "r1", "flaky", "--try", "9"]);
    assert!(
        err.contains('9') && err.contains('1') && err.contains('3'),
        "names the missing try and the tries that exist: {err}"
    );

    // The run's context.
    let conf: Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("conf.json")).expect("conf.json"))
            .expect("TRIGGERER_CONF is JSON");
    assert_eq!(conf, json!({"k": "v"}));
    if let Some(listed) = run["logical_date"].as_str() {
        let seen = env.lines("logical_date").join("");
        let parse = |t: &str| {
            chrono::DateTime::parse_from_rfc3339(t.trim())
                .unwrap_or_else(|e| panic!("RFC 3339, not `{t}`: {e}"))
        };
        assert_eq!(parse(&seen), parse(listed), "TRIGGERER_LOGICAL_DATE");
    }
}
e2e!(
    retries_fail_twice_then_succeed_with_a_log_per_try,
    retries_until_success
);

// ---------------------------------------------------------------------------------------------
// 3. Trigger rules.
// ---------------------------------------------------------------------------------------------

fn rules_dag(root: &str, dag: &str, a_exit: u8) -> String {
    format!(
        r#"
[[dag]]
dag_id = "{dag}"

[[dag.task]]
task_id = "a"
shell = "exit {a_exit}"

[[dag.task]]
task_id = "on_fail"
depends_on = ["a"]
trigger_rule = "one_failed"
shell = '''echo handled >> "{root}/{dag}.on_fail"'''

[[dag.task]]
task_id = "after"
depends_on = ["a"]
trigger_rule = "all_success"
shell = '''echo after >> "{root}/{dag}.after"'''
"#
    )
}

fn trigger_rules(env: Env) {
    let root = env.root();
    let defs = format!(
        r#"{}{}
[[dag]]
dag_id = "handled"

[[dag.task]]
task_id = "a"
shell = "exit 1"

[[dag.task]]
task_id = "cleanup"
depends_on = ["a"]
trigger_rule = "all_done"
shell = '''echo cleaned >> "{root}/handled.cleanup"'''

[[dag.task]]
task_id = "argv"
depends_on = ["cleanup"]
command = ["echo", "argv, no shell:", "$TRIGGERER_RUN_ID"]
"#,
        rules_dag(&root, "fails", 1),
        rules_dag(&root, "passes", 0),
    );
    let _standalone = env.standalone(&defs, &[]);
    for dag in ["fails", "passes", "handled"] {
        env.trigger(dag, "r1");
    }

    // a fails: one_failed runs, all_success is upstream_failed, and that leaf fails the run.
    env.wait_run("fails", "r1", "failed", 60);
    let state = |dag: &str, task: &str| env.task(dag, "r1", task)["state"].clone();
    assert_eq!(state("fails", "a"), "failed");
    assert_eq!(state("fails", "on_fail"), "success");
    assert_eq!(state("fails", "after"), "upstream_failed");
    assert_eq!(env.lines("fails.on_fail"), vec!["handled"]);
    assert!(env.lines("fails.after").is_empty(), "after never ran");
    // Marking the upstream_failed leaf success: the run is evaluated again and succeeds.
    env.ok(&["tasks", "set-state", "fails", "r1", "after", "success"]);
    env.wait_run_state("fails", "r1", "success", 30, false);
    assert_eq!(state("fails", "after"), "success");
    assert!(env.lines("fails.after").is_empty(), "marking runs nothing");

    // a succeeds: one_failed is skipped, a skipped leaf does not fail the run.
    env.wait_run("passes", "r1", "success", 60);
    assert_eq!(state("passes", "a"), "success");
    assert_eq!(state("passes", "on_fail"), "skipped");
    assert_eq!(state("passes", "after"), "success");
    assert!(env.lines("passes.on_fail").is_empty(), "on_fail never ran");
    assert_eq!(env.lines("passes.after"), vec!["after"]);

    // a fails but the only leaf (after an all_done task) succeeds: the run succeeds (Airflow's
    // leaf rule).
    env.wait_run("handled", "r1", "success", 60);
    assert_eq!(state("handled", "a"), "failed");
    assert_eq!(state("handled", "cleanup"), "success");
    assert_eq!(env.lines("handled.cleanup"), vec!["cleaned"]);
    let argv = env.task("handled", "r1", "argv");
    assert_eq!(argv["state"], "success", "{argv}");
    assert_eq!(argv["operator"], "command", "{argv}");
    let log = env.logs("handled", "r1", "argv", None);
    assert!(
        log.contains("argv, no shell: $TRIGGERER_RUN_ID"),
        "an argv runs without a shell (nothing expanded): {log}"
    );
}
e2e!(
    trigger_rules_decide_what_runs_and_how_the_run_ends,
    trigger_rules
);

// ---------------------------------------------------------------------------------------------
// 4. execution_timeout kills the whole process tree.
// ---------------------------------------------------------------------------------------------

fn execution_timeout(env: Env) {
    let root = env.root();
    let defs = format!(
        r#"
[[dag]]
dag_id = "slow"

[[dag.task]]
task_id = "sleepy"
execution_timeout = "2s"
shell = '''sleep 600 & echo $! > "{root}/child.pid"; echo "started the sleeper"; wait'''
"#
    );
    let _standalone = env.standalone(&defs, &[]);
    env.trigger("slow", "r1");
    let child = wait_pid(&env, "child.pid", "slow", "r1");
    let task = env.wait_task("slow", "r1", "sleepy", "failed", 30);
    env.wait_run("slow", "r1", "failed", 30);
    assert_eq!(task["try_number"], 1, "{task}");
    assert!(
        gone_within(child, 10),
        "the grandchild `sleep 600` (pid {child}) outlived the timeout"
    );
    let log = env.logs("slow", "r1", "sleepy", None);
    assert!(log.contains("started the sleeper"), "{log}");
    let lower = log.to_lowercase();
    assert!(
        lower.contains("timed out") || lower.contains("timeout"),
        "the log says the try timed out: {log}"
    );
}
e2e!(
    execution_timeout_fails_the_task_and_kills_its_process_tree,
    execution_timeout
);

// ---------------------------------------------------------------------------------------------
// 5. tasks clear, with and without --downstream.
// ---------------------------------------------------------------------------------------------

fn chain_dag(root: &str, dag: &str) -> String {
    format!(
        r#"
[[dag]]
dag_id = "{dag}"

[[dag.task]]
task_id = "a"
shell = '''echo "a $TRIGGERER_TRY_NUMBER" >> "{root}/a.marks"'''

[[dag.task]]
task_id = "b"
depends_on = ["a"]
shell = '''echo "b $TRIGGERER_TRY_NUMBER" >> "{root}/b.marks"'''

[[dag.task]]
task_id = "c"
depends_on = ["b"]
shell = '''echo "c $TRIGGERER_TRY_NUMBER" >> "{root}/c.marks"'''
"#
    )
}

fn clearing(env: Env) {
    let root = env.root();
    let defs = chain_dag(&root, "chain");
    let _standalone = env.standalone(&defs, &[]);
    env.trigger("chain", "r1");
    env.wait_run("chain", "r1", "success", 60);
    assert_eq!(
        (
            env.lines("a.marks"),
            env.lines("b.marks"),
            env.lines("c.marks")
        ),
        (vec!["a 1".into()], vec!["b 1".into()], vec!["c 1".into()])
    );

    // Unknown task: refused, nothing changes.
    let before = (env.find_run("chain", "r1"), env.tasks("chain", "r1"));
    let err = env.fails(&["tasks", "clear", "chain", "r1", "ghost"]);
    assert!(err.contains("ghost"), "names the unknown task: {err}");
    let err = env.fails(&["tasks", "clear", "chain", "nope", "b"]);
    assert!(err.contains("nope"), "names the unknown run: {err}");
    let err = env.fails(&["tasks", "clear", "ghost_dag", "r1", "b"]);
    assert!(err.contains("ghost_dag"), "names the unknown DAG: {err}");
    assert_eq!(
        before,
        (env.find_run("chain", "r1"), env.tasks("chain", "r1")),
        "a refused clear changes nothing"
    );

    // b alone: b runs again, c does not.
    env.ok(&["tasks", "clear", "chain", "r1", "b"]);
    let run = env.find_run("chain", "r1").expect("the run");
    assert!(
        run["state"] == "running" || env.lines("b.marks").len() == 2,
        "clearing puts the run back to running: {run}"
    );
    env.wait_lines("b.marks", 2, 60, "chain", "r1");
    env.wait_run("chain", "r1", "success", 60);
    assert_eq!(env.lines("a.marks").len(), 1, "a was not cleared");
    assert_eq!(env.lines("b.marks"), vec!["b 1", "b 2"]);
    assert_eq!(env.lines("c.marks"), vec!["c 1"], "c was not cleared");
    let b = env.task("chain", "r1", "b");
    assert_eq!(b["state"], "success", "{b}");
    assert_eq!(
        b["try_number"], 2,
        "a cleared task runs as its next try: {b}"
    );
    assert_eq!(env.task("chain", "r1", "c")["try_number"], 1);

    // b with --downstream: b and c run again.
    env.ok(&["tasks", "clear", "chain", "r1", "b", "--downstream"]);
    env.wait_lines("c.marks", 2, 60, "chain", "r1");
    env.wait_run("chain", "r1", "success", 60);
    assert_eq!(env.lines("a.marks").len(), 1, "a is upstream, not cleared");
    assert_eq!(env.lines("b.marks"), vec!["b 1", "b 2", "b 3"]);
    assert_eq!(env.lines("c.marks"), vec!["c 1", "c 2"]);
    for t in env.tasks("chain", "r1") {
        assert_eq!(t["state"], "success", "{t}");
    }

    // No task named: the whole run again.
    env.ok(&["tasks", "clear", "chain", "r1"]);
    env.wait_lines("c.marks", 3, 60, "chain", "r1");
    env.wait_run("chain", "r1", "success", 60);
    assert_eq!(env.lines("a.marks").len(), 2);
    assert_eq!(env.lines("b.marks").len(), 4);
    assert_eq!(env.lines("c.marks").len(), 3);
}
e2e!(
    clearing_runs_tasks_again_with_and_without_downstream,
    clearing
);

/// Clearing a task that is running is refused, and it keeps running.
fn clearing_running_task(env: Env) {
    let root = env.root();
    let defs = format!(
        r#"
[[dag]]
dag_id = "hold"

[[dag.task]]
task_id = "long"
shell = '''echo $$ >> "{root}/started"; sleep 30; echo done >> "{root}/marks"'''
"#
    );
    let _standalone = env.standalone(&defs, &[]);
    env.trigger("hold", "r1");
    let pid = wait_pid(&env, "started", "hold", "r1");
    env.wait_task("hold", "r1", "long", "running", 10);
    let err = env.fails(&["tasks", "clear", "hold", "r1", "long"]);
    assert!(err.contains("long"), "names the running task: {err}");
    let err = env.fails(&["tasks", "clear", "hold", "r1"]);
    assert!(
        err.contains("long"),
        "clearing all includes the running one: {err}"
    );
    let task = env.task("hold", "r1", "long");
    assert_eq!(task["state"], "running", "{task}");
    assert_eq!(task["try_number"], 1, "{task}");
    assert_eq!(env.lines("started").len(), 1);

    // Marking it failed: its executor stops it, and the run ends failed.
    env.ok(&["tasks", "set-state", "hold", "r1", "long", "failed"]);
    env.wait_run_state("hold", "r1", "failed", 30, false);
    assert!(
        gone_within(pid, 15),
        "the marked task's process (pid {pid}) was stopped"
    );
    assert!(env.lines("marks").is_empty(), "it never finished");
    let task = env.task("hold", "r1", "long");
    assert_eq!(
        task["state"], "failed",
        "its result is not recorded over the mark: {task}"
    );
}
e2e!(
    clearing_a_running_task_is_refused_and_marking_it_stops_it,
    clearing_running_task
);

// ---------------------------------------------------------------------------------------------
// 6. kill -9 of an executor with a running task: another takes over, success recorded once.
// ---------------------------------------------------------------------------------------------

fn one_slow_task(root: &str, dag: &str, retries: u32, sleep: u32) -> String {
    format!(
        r#"
[[dag]]
dag_id = "{dag}"

[[dag.task]]
task_id = "slow"
retries = {retries}
retry_delay = "1s"
shell = '''echo $$ >> "{root}/started"; sleep {sleep}; echo done >> "{root}/marks"'''
"#
    )
}

/// Syncs [`one_slow_task`], starts a scheduler and `executor-a` (with `extra`) and triggers the
/// run `r1`: the scheduler, the executor and the pid of the first try, once it started.
fn start_one_slow_task(
    env: &Env,
    dag: &str,
    retries: u32,
    sleep: u32,
    extra: &[&str],
) -> (KillOnDrop, KillOnDrop, u32) {
    env.sync(&one_slow_task(&env.root(), dag, retries, sleep));
    let scheduler = env.spawn("scheduler", &["scheduler"]);
    let a = env.executor("executor-a", extra);
    env.trigger(dag, "r1");
    let first = wait_pid(env, "started", dag, "r1");
    (scheduler, a, first)
}

/// Starts `executor-b`, which runs the task of [`start_one_slow_task`] again to success: its
/// second start and the only one that finished. The task.
fn finish_on_executor_b(env: &Env, dag: &str) -> Value {
    let _b = env.executor("executor-b", &[]);
    env.wait_run(dag, "r1", "success", 60);
    let task = env.task(dag, "r1", "slow");
    assert_eq!(task["state"], "success", "{task}");
    assert_eq!(env.lines("started").len(), 2, "{:?}", env.lines("started"));
    assert_eq!(
        env.lines("marks"),
        vec!["done"],
        "only the second try finished"
    );
    task
}

fn kill_9_failover(env: Env) {
    let (_scheduler, mut a, first) = start_one_slow_task(&env, "victim", 1, 4, &[]);

    a.kill(); // SIGKILL: no shutdown path runs
    assert!(
        gone_within(first, 10),
        "the dead executor's task (pid {first}) was killed with it"
    );
    // Gone because it was killed, not because it finished its `sleep 4`.
    assert!(
        env.lines("marks").is_empty(),
        "the first try (pid {first}) outlived its executor's kill -9 and finished: {:?}",
        env.lines("marks")
    );
    let task = finish_on_executor_b(&env, "victim");
    assert_eq!(task["try_number"], 2, "the lost try counts: {task}");
}
e2e!(kill_9_of_an_executor_fails_its_task_over, kill_9_failover);

// ---------------------------------------------------------------------------------------------
// 8. SIGTERM of an executor: exits 0 after the grace period, hands its task back.
// ---------------------------------------------------------------------------------------------

fn sigterm_hand_back(env: Env) {
    let (_scheduler, mut a, first) =
        start_one_slow_task(&env, "graceful", 0, 6, &["--grace-period", "1"]);

    let status = env.wait_status("status to show the executor running one task", 15, |s| {
        s["executors"].as_array().is_some_and(|e| {
            e.iter()
                .any(|x| x["alive"] == true && x["running_tasks"] == 1)
        })
    });
    for key in [
        "triggerers",
        "deferred_tasks",
        "tasks_executable",
        "tasks_starving",
    ] {
        assert!(status.get(key).is_some(), "{key} in {status:#}");
    }
    let executor = &status["executors"][0];
    for key in ["id", "hostname", "open_slots", "queued_tasks"] {
        assert!(executor.get(key).is_some(), "{key} in {executor}");
    }

    sigterm(&a);
    let exit = wait_exit(&mut a, 15).unwrap_or_else(|| {
        panic!(
            "no exit within 15 s of SIGTERM\n{}",
            env.diagnose("graceful", "r1")
        )
    });
    assert!(
        exit.success(),
        "SIGTERM exits 0, got {exit}\n{}",
        env.process_logs()
    );
    assert!(
        gone_within(first, 10),
        "the task (pid {first}) was killed after the grace period"
    );
    assert!(
        env.lines("marks").is_empty(),
        "the first try never finished"
    );
    let task = env.task("graceful", "r1", "slow");
    let state = task["state"].as_str().unwrap_or_default();
    assert!(
        !["running", "success", "failed", "upstream_failed"].contains(&state),
        "handed back, to run again: {task}"
    );

    finish_on_executor_b(&env, "graceful");
}
e2e!(
    sigterm_of_an_executor_hands_its_task_back,
    sigterm_hand_back
);

// ---------------------------------------------------------------------------------------------
// 9. Bad definitions and bad command lines.
// ---------------------------------------------------------------------------------------------

struct BadCase {
    what: &'static str,
    /// The bad DAG's tasks (appended after a valid extra DAG and the bad DAG's header).
    tasks: &'static str,
    /// Lines containing one of these may carry the error.
    lines_with: &'static [&'static str],
    /// Each entry: one of these is in the message.
    words: &'static [&'static [&'static str]],
}

const BAD_CASES: &[BadCase] = &[
    BadCase {
        what: "a cycle",
        tasks: "[[dag.task]] # ta\ntask_id = \"a\"\nshell = \"true\"\ndepends_on = [\"b\"]\n\n[[dag.task]] # tb\ntask_id = \"b\"\nshell = \"true\"\ndepends_on = [\"a\"]\n",
        lines_with: &["# ta", "# tb", "task_id", "depends_on", "shell"],
        words: &[&["a → b → a", "b → a → b"]],
    },
    BadCase {
        what: "an unknown task in depends_on",
        tasks: "[[dag.task]] # ta\ntask_id = \"a\"\nshell = \"true\"\ndepends_on = [\"ghost\"]\n",
        lines_with: &["depends_on", "# ta"],
        words: &[&["ghost"]],
    },
    BadCase {
        what: "a duplicate task_id",
        tasks: "[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\n\n[[dag.task]] # again\ntask_id = \"a\" # again\nshell = \"true\"\n",
        lines_with: &["# again"],
        words: &[&["a"], &["already", "duplicate", "twice"]],
    },
    BadCase {
        what: "two operators",
        tasks: "[[dag.task]] # ta\ntask_id = \"a\"\nshell = \"true\"\ncommand = [\"true\"]\n",
        lines_with: &["# ta", "shell", "command", "task_id"],
        words: &[&["shell"], &["command"]],
    },
    BadCase {
        what: "no operator",
        tasks: "[[dag.task]] # ta\ntask_id = \"a\"\nretries = 1\n",
        lines_with: &["# ta", "task_id", "retries"],
        words: &[&["command", "shell", "http", "operator"]],
    },
    BadCase {
        what: "a bad duration",
        tasks: "[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\nretry_delay = \"soon\"\n",
        lines_with: &["retry_delay"],
        words: &[&["retry_delay"], &["soon"]],
    },
    BadCase {
        what: "an unknown field in a task",
        tasks: "[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\nretires = 2\n",
        lines_with: &["retires"],
        words: &[&["retires"]],
    },
    BadCase {
        what: "a bad trigger_rule",
        tasks: "[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\ntrigger_rule = \"sometimes\"\n",
        lines_with: &["trigger_rule"],
        words: &[&["trigger_rule", "trigger rule"], &["sometimes"]],
    },
    BadCase {
        what: "negative retries",
        tasks: "[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\nretries = -1\n",
        lines_with: &["retries"],
        words: &[&["retries"]],
    },
];

/// Runs `triggerer ARGS` and kills it if it has not exited within `secs`: exit status and
/// stderr.
fn run_bounded(env: &Env, args: &[&str], secs: u64) -> (Option<i32>, String) {
    let err_path = env.path(&format!("{}.err", common::unique("bounded")));
    let err = std::fs::File::create(&err_path).expect("stderr file");
    let mut child = KillOnDrop(
        Command::new(BIN)
            .args(args)
            .env("TRIGGERER_DATABASE_URL", &env.db_url)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("run triggerer"),
    );
    let status = wait_exit(&mut child, secs)
        .unwrap_or_else(|| panic!("{args:?} still running after {secs} s: it should refuse"));
    (
        status.code(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    )
}

fn bad_input(env: Env) {
    env.sync(GOOD_DEFS);
    let before = env.json(&["dags", "list", "--json"]);
    for case in BAD_CASES {
        let text = with_bad_dag(case.tasks);
        let bad_start = text.find("dag_id = \"bad\"").expect("bad dag");
        let first_bad_line = text[..bad_start].lines().count();
        let accepted: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(i, line)| {
                i + 1 > first_bad_line && case.lines_with.iter().any(|w| line.contains(w))
            })
            .map(|(i, _)| i + 1)
            .collect();
        env.assert_sync_refused(case.what, &text, &accepted, case.words, &before);
    }

    // Bad command lines.
    env.trigger("good", "r1");
    let err = env.fails(&["tasks", "list", "ghost", "r1"]);
    assert!(err.contains("ghost"), "names the unknown DAG: {err}");
    let err = env.fails(&["tasks", "list", "good", "nope"]);
    assert!(err.contains("nope"), "names the unknown run: {err}");
    let err = env.fails(&["tasks", "logs", "good", "r1", "zzz"]);
    assert!(err.contains("zzz"), "names the unknown task: {err}");
    env.fails(&["tasks", "logs", "good", "r1", "a", "--try", "9"]);
    let err = env.fails(&["tasks", "set-state", "good", "r1", "zzz", "success"]);
    assert!(err.contains("zzz"), "names the unknown task: {err}");
    let err = env.fails(&["tasks", "clear", "good", "r1", "zzz"]);
    assert!(err.contains("zzz"), "names the unknown task: {err}");
    let out = env.run(&["tasks", "set-state", "good", "r1", "a", "bogus"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error: {err}");
    assert!(
        err.contains("bogus") && err.contains("success") && err.contains("failed"),
        "names the bad state and the good ones: {err}"
    );
    let (code, err) = run_bounded(&env, &["executor", "--parallelism", "0"], 20);
    assert_eq!(code, Some(1), "executor --parallelism 0: {err}");
    assert!(err.contains("--parallelism"), "{err}");
    let (code, err) = run_bounded(&env, &["standalone", "--parallelism", "0"], 20);
    assert_eq!(code, Some(1), "standalone --parallelism 0: {err}");
    assert!(err.contains("--parallelism"), "{err}");
    let (code, err) = run_bounded(&env, &["executor", "--grace-period", "-1"], 20);
    assert_ne!(code, Some(0), "executor --grace-period -1: {err}");
    assert_eq!(
        env.json(&["dags", "list", "--json"]),
        before,
        "nothing changed the definitions"
    );
}
e2e!(bad_definitions_and_bad_command_lines_are_refused, bad_input);

// ---------------------------------------------------------------------------------------------
// 10. The HTTP operator against a tiny server.
// ---------------------------------------------------------------------------------------------

/// An HTTP/1.1 server on loopback: `/fail…` answers 500, anything else 201. Keeps every
/// request (head and body) it received.
struct TinyHttp {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl TinyHttp {
    fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let kept = kept.clone();
                std::thread::spawn(move || Self::answer(stream, &kept));
            }
        });
        Self { port, requests }
    }

    fn answer(mut stream: std::net::TcpStream, kept: &Mutex<Vec<String>>) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request = String::from_utf8_lossy(&buf).to_string();
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        kept.lock().expect("requests").push(request);
        let (status, body) = if path.starts_with("/fail") {
            ("500 Internal Server Error", "boom")
        } else {
            ("201 Created", "{\"created\": true}")
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes());
        let _ = stream.flush();
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("requests").clone()
    }
}

fn http_tasks(env: Env) {
    let server = TinyHttp::start();
    let port = server.port;
    let defs = format!(
        r#"
[[dag]]
dag_id = "http_ok"

[[dag.task]]
task_id = "load"
http = {{ method = "POST", url = "http://127.0.0.1:{port}/load", json = {{ a = 1 }}, expect_status = [201], timeout = "5s", headers = {{ Authorization = "Bearer x" }} }}

[[dag]]
dag_id = "http_bad"

[[dag.task]]
task_id = "load"
http = {{ method = "POST", url = "http://127.0.0.1:{port}/fail", json = {{ a = 2 }}, timeout = "5s" }}
"#
    );
    let _standalone = env.standalone(&defs, &[]);
    env.trigger("http_ok", "r1");
    env.trigger("http_bad", "r1");

    env.wait_run("http_ok", "r1", "success", 60);
    let task = env.task("http_ok", "r1", "load");
    assert_eq!(task["state"], "success", "{task}");
    assert_eq!(task["operator"], "http", "{task}");
    let log = env.logs("http_ok", "r1", "load", None);
    assert!(log.contains("201"), "the log shows the status: {log}");
    let requests = server.requests();
    let load = requests
        .iter()
        .find(|r| r.starts_with("POST /load "))
        .unwrap_or_else(|| panic!("a POST /load: {requests:#?}"));
    let lower = load.to_lowercase();
    assert!(
        lower.contains("authorization: bearer x"),
        "the header: {load}"
    );
    assert!(
        lower.contains("content-type: application/json"),
        "json is sent as JSON: {load}"
    );
    let body = load.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    assert_eq!(
        serde_json::from_str::<Value>(body).ok(),
        Some(json!({"a": 1})),
        "the body: {load}"
    );

    env.wait_run("http_bad", "r1", "failed", 60);
    let task = env.task("http_bad", "r1", "load");
    assert_eq!(task["state"], "failed", "{task}");
    let log = env.logs("http_bad", "r1", "load", None);
    assert!(log.contains("500"), "the log shows the status: {log}");
    assert_eq!(
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("POST /fail "))
            .count(),
        1,
        "retries = 0: one call"
    );
}
e2e!(
    http_tasks_succeed_on_the_expected_status_and_fail_on_500,
    http_tasks
);

// ---------------------------------------------------------------------------------------------
// 7. PostgreSQL: two executors and a scheduler share 1,000 tasks, each run exactly once.
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "integration-postgres")]
#[test]
fn two_executors_share_a_thousand_tasks_on_postgres() {
    const RUNS: usize = 100;
    const TASKS: usize = 10;
    let env = Env::postgres();
    let root = env.root();
    let mut defs = String::from("[[dag]]\ndag_id = \"many\"\nmax_active_runs = 1000\n");
    for t in 0..TASKS {
        defs.push_str(&format!(
            "\n[[dag.task]]\ntask_id = \"t{t}\"\nshell = '''echo \"$TRIGGERER_DAG_ID $TRIGGERER_RUN_ID $TRIGGERER_TASK_ID\" >> \"{root}/marks\"'''\n"
        ));
    }
    env.sync(&defs);
    let _scheduler = env.spawn("scheduler", &["scheduler"]);
    // Default heartbeat and health threshold: 1,000 short tasks on 2 cores can delay a
    // heartbeat by seconds, and an executor presumed dead has its tries failed over.
    let _a = env.spawn("executor-a", &["executor", "--parallelism", "16"]);
    let _b = env.spawn("executor-b", &["executor", "--parallelism", "16"]);
    let started = Instant::now();
    let run_ids: Vec<String> = (0..RUNS).map(|r| format!("r{r:03}")).collect();
    for id in &run_ids {
        env.trigger("many", id);
    }
    env.wait_all_success("many", &run_ids, 300);
    let elapsed = started.elapsed();
    let marks = env.lines("marks");
    let distinct: BTreeSet<&String> = marks.iter().collect();
    let expected: BTreeSet<String> = (0..RUNS)
        .flat_map(|r| (0..TASKS).map(move |t| format!("many r{r:03} t{t}")))
        .collect();
    assert_eq!(distinct.len(), marks.len(), "no task ran twice");
    assert_eq!(marks.len(), RUNS * TASKS, "every task ran");
    assert_eq!(
        distinct.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    let mut tries = 0;
    for r in [0, RUNS / 2, RUNS - 1] {
        for t in env.tasks("many", &format!("r{r:03}")) {
            assert_eq!(t["state"], "success", "{t}");
            tries += t["try_number"].as_u64().unwrap_or(0);
        }
    }
    assert_eq!(tries as usize, 3 * TASKS, "one try each");
    // Who ran what (reported, not asserted: one executor may be faster to claim).
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let shares: Vec<(Option<i64>, i64)> = runtime.block_on(async {
        let pool = sqlx::PgPool::connect(&env.db_url).await.expect("connect");
        let rows = sqlx::query_as(
            "SELECT queued_by_job_id, count(*) FROM task_instance GROUP BY 1 ORDER BY 1",
        )
        .fetch_all(&pool)
        .await
        .unwrap_or_default();
        pool.close().await;
        rows
    });
    eprintln!(
        "{} tasks in {} runs done by 2 executors in {elapsed:?}; tasks per executor job: \
         {shares:?}",
        marks.len(),
        RUNS
    );
}
