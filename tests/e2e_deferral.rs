//! Deferrable tasks (DESIGN §10 "Deferral from a command", §11) end to end, through the real
//! binary as a user runs it: 30 `shell` tasks deferring on files of their own under
//! `standalone --parallelism 2` (no slot held, each resumed once); a `time.TimeDeltaTrigger`
//! deferral resuming with its event in `TRIGGERER_TRIGGER_EVENT` (and a `resume = [argv…]`);
//! a `wait` or a defer file that outlives its `timeout` (with and without a retry); `kill -9`
//! of the triggerer holding 20 task triggers; bad `wait` definitions and bad defer files; a
//! deferred task holding no slot under `--parallelism 1`; `kill -9` of the executor a task
//! deferred on. Each scenario runs on SQLite always and on PostgreSQL with the
//! `integration-postgres` feature.
//!
//! Waits poll with generous deadlines and fail with the state of the runs, their tasks, their
//! logs and the tails of the processes' logs. The only timing asserted is a lower bound (a 2 s
//! deferral does not resume before 1.5 s) and orderings recorded by the tasks themselves.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use common::tasks::{with_bad_dag, Env, GOOD_DEFS};

impl Env {
    /// `triggers list --json`.
    fn triggers(&self) -> Vec<Value> {
        self.json(&["triggers", "list", "--json"])
    }

    /// Writes the file a task's file trigger waits for, complete when it appears: written
    /// under a hidden name (which the trigger skips), then renamed into place.
    fn land(&self, name: &str, text: &str) {
        let hidden = self.path(&format!("in/.{name}.tmp"));
        std::fs::write(&hidden, text).expect("write file");
        std::fs::rename(&hidden, self.path(&format!("in/{name}"))).expect("rename into place");
    }
}

/// Seconds since the epoch, as `date +%s.%N` writes them.
fn epoch_in(env: &Env, name: &str) -> f64 {
    let lines = env.lines(name);
    let line = lines
        .first()
        .unwrap_or_else(|| panic!("{name} was written: {lines:?}"));
    line.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{name}: seconds since the epoch, not `{line}`: {e}"))
}

fn rfc3339_epoch(t: &str) -> f64 {
    let t = chrono::DateTime::parse_from_rfc3339(t)
        .unwrap_or_else(|e| panic!("an RFC 3339 moment, not `{t}`: {e}"));
    t.timestamp() as f64 + f64::from(t.timestamp_subsec_nanos()) / 1e9
}

/// The executors `status` lists as alive.
fn alive_executors(status: &Value) -> Vec<Value> {
    status["executors"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|x| x["alive"] == true)
                .cloned()
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

/// A DAG whose one `shell` task defers itself on the file `ROOT/in/<run id>.ready`; on
/// resume it appends its run id to `ROOT/marks` and keeps the trigger's event in
/// `ROOT/events/<run id>.json`.
fn file_deferring_dag(root: &str, dag: &str) -> String {
    format!(
        r#"
[[dag]]
dag_id = "{dag}"
max_active_runs = 100

[[dag.task]]
task_id = "t"
shell = '''
if [ -n "$TRIGGERER_TRIGGER_EVENT" ]; then
  echo "resumed $TRIGGERER_RUN_ID try $TRIGGERER_TRY_NUMBER"
  printf '%s\n' "$TRIGGERER_TRIGGER_EVENT" > "{root}/events/$TRIGGERER_RUN_ID.json"
  echo "$TRIGGERER_RUN_ID" >> "{root}/marks"
else
  echo "deferring $TRIGGERER_RUN_ID try $TRIGGERER_TRY_NUMBER"
  printf '{{"classpath": "file.FileTrigger", "kwargs": {{"filepath": "%s/in/%s.ready"}}}}' "{root}" "$TRIGGERER_RUN_ID" > "$TRIGGERER_DEFER_FILE"
fi
'''
"#
    )
}

/// After every run of `dag` in `run_ids` succeeded: each resumed exactly once, with the file
/// event of its own file, as try 1, and no trigger is left.
fn assert_each_resumed_once(env: &Env, dag: &str, run_ids: &[String]) {
    let root = env.root();
    let marks = env.lines("marks");
    let distinct: BTreeSet<&String> = marks.iter().collect();
    assert_eq!(
        distinct.len(),
        marks.len(),
        "no task resumed twice: {marks:?}"
    );
    assert_eq!(
        distinct.into_iter().cloned().collect::<BTreeSet<String>>(),
        run_ids.iter().cloned().collect::<BTreeSet<String>>(),
        "every task resumed"
    );
    for id in run_ids {
        let text = std::fs::read_to_string(env.path(&format!("events/{id}.json")))
            .unwrap_or_else(|e| panic!("{id} kept its trigger event: {e}"));
        let event: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!("TRIGGERER_TRIGGER_EVENT of {id} is JSON, not `{text}`: {e}")
        });
        assert_eq!(
            event["path"],
            format!("{root}/in/{id}.ready"),
            "{id} resumed on its own file: {event}"
        );
    }
    for id in [
        &run_ids[0],
        &run_ids[run_ids.len() / 2],
        &run_ids[run_ids.len() - 1],
    ] {
        let task = env.task(dag, id, "t");
        assert_eq!(task["state"], "success", "{task}");
        assert_eq!(
            task["try_number"], 1,
            "a deferral keeps the try number: {task}"
        );
        let log = env.logs(dag, id, "t", None);
        assert!(
            log.contains(&format!("deferring {id} try 1"))
                && log.contains(&format!("resumed {id} try 1")),
            "the try's log has both segments: {log}"
        );
    }
    let triggers = env.triggers();
    assert!(
        triggers.is_empty(),
        "a task trigger fires once and is removed: {triggers:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 1. 30 deferred tasks under `standalone --parallelism 2`: no slot held, each resumed once.
// ---------------------------------------------------------------------------------------------

fn thirty_deferred_file_tasks(env: Env) {
    const RUNS: usize = 30;
    let root = env.root();
    std::fs::create_dir_all(env.path("in")).expect("in dir");
    std::fs::create_dir_all(env.path("events")).expect("events dir");
    let _standalone = env.standalone(&file_deferring_dag(&root, "files"), &["--parallelism", "2"]);
    let run_ids: Vec<String> = (0..RUNS).map(|r| format!("r{r:02}")).collect();
    for id in &run_ids {
        env.trigger("files", id);
    }

    let status = env.wait_status("30 deferred tasks and both slots open", 60, |s| {
        let executors = alive_executors(s);
        s["deferred_tasks"] == RUNS
            && executors.len() == 1
            && executors[0]["open_slots"] == 2
            && executors[0]["running_tasks"] == 0
    });
    assert_eq!(status["tasks_executable"], 0, "{status:#}");
    assert_eq!(status["tasks_starving"], 0, "{status:#}");
    assert!(env.lines("marks").is_empty(), "nothing resumed yet");
    for id in [&run_ids[0], &run_ids[RUNS - 1]] {
        let task = env.task("files", id, "t");
        assert_eq!(task["state"], "deferred", "{task}");
        assert!(
            task["trigger_id"].is_i64(),
            "a deferred task names its trigger: {task}"
        );
        let run = env.find_run("files", id).expect("the run");
        assert_eq!(
            run["state"], "running",
            "a deferred task's run is running: {run}"
        );
    }
    let triggers = env.triggers();
    assert_eq!(
        triggers.len(),
        RUNS,
        "one trigger per deferred task: {triggers:#?}"
    );
    let filepaths: BTreeSet<String> = triggers
        .iter()
        .map(|t| {
            assert_eq!(t["classpath"], "file.FileTrigger", "{t}");
            assert_eq!(
                t["assets"].as_array().map(Vec::len),
                Some(0),
                "a task's trigger feeds no asset: {t}"
            );
            t["kwargs"]["filepath"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let expected: BTreeSet<String> = run_ids
        .iter()
        .map(|id| format!("{root}/in/{id}.ready"))
        .collect();
    assert_eq!(filepaths, expected, "each trigger waits for its run's file");

    for id in &run_ids {
        env.land(&format!("{id}.ready"), id);
    }
    env.wait_all_success("files", &run_ids, 60);
    assert_each_resumed_once(&env, "files", &run_ids);
    let status = env.status();
    assert_eq!(status["deferred_tasks"], 0, "{status:#}");
}
e2e!(
    thirty_deferred_tasks_hold_no_slot_and_each_resumes_once,
    thirty_deferred_file_tasks
);

// ---------------------------------------------------------------------------------------------
// 2. A TimeDelta deferral: resumes ~2 s later with the event, same try, one log.
// ---------------------------------------------------------------------------------------------

fn time_delta_deferral(env: Env) {
    let root = env.root();
    let defs = format!(
        r#"
[[dag]]
dag_id = "nap"

[[dag.task]]
task_id = "t"
shell = '''
if [ -n "$TRIGGERER_TRIGGER_EVENT" ]; then
  date +%s.%N > "{root}/resumed_at"
  printf '%s' "$TRIGGERER_TRIGGER_EVENT" > "{root}/event.json"
  echo "second segment, try $TRIGGERER_TRY_NUMBER"
else
  echo "first segment, try $TRIGGERER_TRY_NUMBER"
  echo '{{"classpath": "time.TimeDeltaTrigger", "kwargs": {{"delta": "2s"}}}}' > "$TRIGGERER_DEFER_FILE"
  date +%s.%N > "{root}/deferred_at"
fi
'''

[[dag]]
dag_id = "nap_resume"

[[dag.task]]
task_id = "t"
command = ["sh", "-c", "echo 'the command, deferring'; echo '{{\"classpath\": \"time.DateTimeTrigger\", \"kwargs\": {{\"moment\": \"2020-01-01T00:00:00Z\"}}}}' > \"$TRIGGERER_DEFER_FILE\""]
resume = ["sh", "-c", "echo \"resume argv, try $TRIGGERER_TRY_NUMBER\"; printf '%s' \"$TRIGGERER_TRIGGER_EVENT\" > {root}/resume_event.json"]
"#
    );
    let _standalone = env.standalone(&defs, &["--parallelism", "2"]);
    env.trigger("nap", "r1");
    env.trigger("nap_resume", "r1");
    env.wait_lines("deferred_at", 1, 30, "nap", "r1");

    // While it waits (2 s: seen unless the machine stalls, so only checked when seen).
    let task = env.task("nap", "r1", "t");
    if task["state"] == "deferred" {
        assert!(task["trigger_id"].is_i64(), "{task}");
        assert!(
            task["end_date"].is_null(),
            "not ended while deferred: {task}"
        );
    } else {
        eprintln!("note: the deferral was over before it could be seen: {task}");
    }

    env.wait_run("nap", "r1", "success", 60);
    let deferred_at = epoch_in(&env, "deferred_at");
    let resumed_at = epoch_in(&env, "resumed_at");
    let waited = resumed_at - deferred_at;
    assert!(
        (1.5..30.0).contains(&waited),
        "a 2 s deferral resumed after {waited:.3} s"
    );
    let text = std::fs::read_to_string(env.path("event.json")).expect("event.json");
    let event: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("TRIGGERER_TRIGGER_EVENT is JSON, not `{text}`: {e}"));
    let moment = event["moment"]
        .as_str()
        .unwrap_or_else(|| panic!("the event has a `moment`: {event}"));
    let moment = rfc3339_epoch(moment);
    assert!(
        (1.5..30.0).contains(&(moment - deferred_at)),
        "the moment is ~2 s after the deferral: {event}, deferred at {deferred_at}"
    );
    assert!(
        resumed_at + 0.5 >= moment,
        "not resumed before the moment: {event}, resumed at {resumed_at}"
    );

    let task = env.task("nap", "r1", "t");
    assert_eq!(task["state"], "success", "{task}");
    assert_eq!(task["try_number"], 1, "a deferral keeps the try: {task}");
    assert!(task["trigger_id"].is_null(), "the trigger is gone: {task}");
    let log = env.logs("nap", "r1", "t", None);
    let first = log
        .find("first segment, try 1")
        .unwrap_or_else(|| panic!("the first segment in the log: {log}"));
    let second = log
        .find("second segment, try 1")
        .unwrap_or_else(|| panic!("the second segment in the log: {log}"));
    assert!(first < second, "the segments in order: {log}");
    assert_eq!(
        env.logs("nap", "r1", "t", Some(1)),
        log,
        "both segments are try 1's log"
    );

    // `resume = [argv…]` runs instead of the command; a moment already past fires at once.
    env.wait_run("nap_resume", "r1", "success", 60);
    let text = std::fs::read_to_string(env.path("resume_event.json")).expect("resume_event.json");
    let event: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("TRIGGERER_TRIGGER_EVENT is JSON, not `{text}`: {e}"));
    let moment = event["moment"]
        .as_str()
        .unwrap_or_else(|| panic!("the event has a `moment`: {event}"));
    assert_eq!(
        rfc3339_epoch(moment),
        rfc3339_epoch("2020-01-01T00:00:00Z"),
        "the DateTimeTrigger's moment: {event}"
    );
    let log = env.logs("nap_resume", "r1", "t", None);
    assert_eq!(
        log.matches("the command, deferring").count(),
        1,
        "the command ran once, the resume argv after it: {log}"
    );
    assert!(log.contains("resume argv, try 1"), "{log}");
    let task = env.task("nap_resume", "r1", "t");
    assert_eq!(task["try_number"], 1, "{task}");
    assert_eq!(task["operator"], "command", "{task}");
    assert!(env.triggers().is_empty(), "{:#?}", env.triggers());
}
e2e!(
    a_time_delta_deferral_resumes_with_its_event_in_the_same_try,
    time_delta_deferral
);

// ---------------------------------------------------------------------------------------------
// 3. A `wait` that outlives its `timeout`: failed with `trigger timeout`; retried once.
// ---------------------------------------------------------------------------------------------

fn wait_timeout(env: Env) {
    let root = env.root();
    std::fs::create_dir_all(env.path("in")).expect("in dir");
    let defs = format!(
        r#"
[[dag]]
dag_id = "never"

[[dag.task]]
task_id = "w"
wait = {{ classpath = "file.FileTrigger", kwargs = {{ filepath = "{root}/in/never.ready" }} }}
timeout = "2s"

[[dag.task]]
task_id = "after"
depends_on = ["w"]
shell = '''echo after >> "{root}/after"'''

[[dag]]
dag_id = "never_retried"

[[dag.task]]
task_id = "w"
wait = {{ classpath = "file.FileTrigger", kwargs = {{ filepath = "{root}/in/never-either.ready" }} }}
timeout = "2s"
retries = 1
retry_delay = "1s"

[[dag]]
dag_id = "never_shell"

[[dag.task]]
task_id = "t"
shell = '''if [ -n "$TRIGGERER_TRIGGER_EVENT" ]; then echo resumed >> "{root}/resumed"; else printf '{{"classpath": "file.FileTrigger", "kwargs": {{"filepath": "%s/in/nor-this.ready"}}, "timeout": "2s"}}' "{root}" > "$TRIGGERER_DEFER_FILE"; fi'''
"#
    );
    let _standalone = env.standalone(&defs, &["--parallelism", "2"]);
    env.trigger("never", "r1");
    env.trigger("never_retried", "r1");
    env.trigger("never_shell", "r1");

    env.wait_run("never", "r1", "failed", 60);
    let task = env.task("never", "r1", "w");
    assert_eq!(task["state"], "failed", "{task}");
    assert_eq!(task["try_number"], 1, "{task}");
    assert_eq!(task["operator"], "wait", "{task}");
    let log = env.logs("never", "r1", "w", None);
    assert!(
        log.contains("trigger timeout"),
        "the reason in the log: {log}"
    );
    let after = env.task("never", "r1", "after");
    assert_eq!(after["state"], "upstream_failed", "{after}");
    assert!(env.lines("after").is_empty(), "after never ran");

    env.wait_run("never_retried", "r1", "failed", 60);
    let task = env.task("never_retried", "r1", "w");
    assert_eq!(task["state"], "failed", "{task}");
    assert_eq!(task["try_number"], 2, "retries = 1: two tries: {task}");
    for n in 1..=2 {
        let log = env.logs("never_retried", "r1", "w", Some(n));
        assert!(
            log.contains("trigger timeout"),
            "try {n} timed out, says its log: {log}"
        );
    }
    // The timeout a defer file names.
    env.wait_run("never_shell", "r1", "failed", 60);
    let task = env.task("never_shell", "r1", "t");
    assert_eq!(task["state"], "failed", "{task}");
    assert_eq!(task["try_number"], 1, "{task}");
    let log = env.logs("never_shell", "r1", "t", None);
    assert!(
        log.contains("trigger timeout"),
        "the reason in the log: {log}"
    );
    assert!(
        env.lines("resumed").is_empty(),
        "a timed-out deferral never resumes"
    );

    let triggers = env.triggers();
    assert!(
        triggers.is_empty(),
        "a timed-out deferral's trigger is removed: {triggers:#?}"
    );
    assert_eq!(env.status()["deferred_tasks"], 0);
}
e2e!(
    a_wait_that_outlives_its_timeout_fails_and_is_retried,
    wait_timeout
);

// ---------------------------------------------------------------------------------------------
// 4. kill -9 of the triggerer holding 20 task triggers: another takes them, each resumes once.
// ---------------------------------------------------------------------------------------------

fn kill_9_triggerer(env: Env) {
    const RUNS: usize = 20;
    let root = env.root();
    std::fs::create_dir_all(env.path("in")).expect("in dir");
    std::fs::create_dir_all(env.path("events")).expect("events dir");
    env.sync(&file_deferring_dag(&root, "files"));
    let triggerer_args = [
        "run",
        "--heartbeat-interval",
        "1",
        "--health-check-threshold",
        "3",
    ];
    let _scheduler = env.spawn("scheduler", &["scheduler"]);
    let _executor = env.executor("executor", &[]);
    let mut a = env.spawn("triggerer-a", &triggerer_args);
    let run_ids: Vec<String> = (0..RUNS).map(|r| format!("r{r:02}")).collect();
    for id in &run_ids {
        env.trigger("files", id);
    }

    env.wait_status("20 deferred tasks", 60, |s| s["deferred_tasks"] == RUNS);
    let mut owner = Value::Null;
    env.wait_for(
        "20 task triggers, all owned by triggerer A",
        30,
        || {
            let triggers = env.triggers();
            owner = triggers
                .first()
                .map(|t| t["triggerer_id"].clone())
                .unwrap_or(Value::Null);
            triggers.len() == RUNS
                && owner.is_i64()
                && triggers.iter().all(|t| t["triggerer_id"] == owner)
        },
        || format!("{:#?}\n{}", env.triggers(), env.process_logs()),
    );
    let status = env.status();
    let triggerers = status["triggerers"].as_array().cloned().unwrap_or_default();
    assert_eq!(triggerers.len(), 1, "{status:#}");
    assert_eq!(triggerers[0]["id"], owner, "A's job owns them: {status:#}");
    assert_eq!(triggerers[0]["triggers_running"], RUNS, "{status:#}");

    a.kill(); // SIGKILL: no shutdown path runs, its triggers are not handed back
              // Half the files land while no triggerer runs: B finds them when it starts their triggers.
    for id in &run_ids[..RUNS / 2] {
        env.land(&format!("{id}.ready"), id);
    }
    let _b = env.spawn("triggerer-b", &triggerer_args);
    env.wait_for(
        "triggerer B to own the remaining triggers",
        60,
        || {
            let triggers = env.triggers();
            !triggers.is_empty()
                && triggers
                    .iter()
                    .all(|t| t["triggerer_id"].is_i64() && t["triggerer_id"] != owner)
        },
        || format!("{:#?}\n{}", env.triggers(), env.process_logs()),
    );
    // The other half once B watches them.
    for id in &run_ids[RUNS / 2..] {
        env.land(&format!("{id}.ready"), id);
    }
    env.wait_all_success("files", &run_ids, 60);
    assert_each_resumed_once(&env, "files", &run_ids);
}
e2e!(
    kill_9_of_the_triggerer_hands_its_task_triggers_to_another,
    kill_9_triggerer
);

// ---------------------------------------------------------------------------------------------
// 5. Bad input: a `wait` on an unknown classpath or with bad kwargs is a sync error; a bad
//    defer file fails its task and everything else goes on.
// ---------------------------------------------------------------------------------------------

/// A bad `wait` task: its lines after `task_id`, appended to valid DAGs as the DAG `bad`.
struct BadWait {
    what: &'static str,
    lines: &'static str,
    /// Each entry: one of these is in the message.
    words: &'static [&'static [&'static str]],
}

const BAD_WAITS: &[BadWait] = &[
    BadWait {
        what: "an unknown classpath",
        lines: "wait = { classpath = \"nosuch.MysteryTrigger\", kwargs = { a = 1 } }\n",
        words: &[&["nosuch.MysteryTrigger"], &["classpath"]],
    },
    BadWait {
        what: "a file trigger without its filepath",
        lines: "wait = { classpath = \"file.FileTrigger\", kwargs = { recursive = true } }\n",
        words: &[&["filepath"]],
    },
    BadWait {
        what: "a TimeDelta without a usable delta",
        lines: "wait = { classpath = \"time.TimeDeltaTrigger\", kwargs = { delta = \"soon\" } }\n",
        words: &[&["delta"]],
    },
    BadWait {
        what: "a bad timeout",
        lines: "wait = { classpath = \"time.TimeDeltaTrigger\", kwargs = { delta = \"1s\" } } # w\ntimeout = \"whenever\"\n",
        words: &[&["timeout"], &["whenever"]],
    },
    BadWait {
        what: "a `resume` on a wait",
        lines: "wait = { classpath = \"time.TimeDeltaTrigger\", kwargs = { delta = \"1s\" } } # w\nresume = [\"true\"]\n",
        words: &[&["resume"]],
    },
];

fn bad_input(env: Env) {
    env.sync(GOOD_DEFS);
    let before = env.json(&["dags", "list", "--json"]);
    for case in BAD_WAITS {
        let text = with_bad_dag(&format!("[[dag.task]]\ntask_id = \"w\"\n{}", case.lines));
        let bad_lines: Vec<usize> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| {
                ["wait = ", "timeout = ", "resume = "]
                    .iter()
                    .any(|p| l.starts_with(p))
            })
            .map(|(i, _)| i + 1)
            .collect();
        env.assert_sync_refused(case.what, &text, &bad_lines, case.words, &before);
    }

    // At run time: defer files that are not JSON, name an unknown classpath or bad kwargs fail
    // their task with a one-line reason; the executor's other tasks go on.
    let root = env.root();
    let defs = format!(
        r#"{GOOD_DEFS}
[[dag]]
dag_id = "garbage"

[[dag.task]]
task_id = "t"
shell = '''echo "before the bad defer file"; echo 'this is not json {{' > "$TRIGGERER_DEFER_FILE"'''

[[dag]]
dag_id = "unknown"

[[dag.task]]
task_id = "t"
shell = '''echo '{{"classpath": "nosuch.MysteryTrigger", "kwargs": {{}}}}' > "$TRIGGERER_DEFER_FILE"'''

[[dag]]
dag_id = "badkwargs"

[[dag.task]]
task_id = "t"
shell = '''echo '{{"classpath": "time.TimeDeltaTrigger", "kwargs": {{"delta": "soon"}}}}' > "$TRIGGERER_DEFER_FILE"'''

[[dag]]
dag_id = "fine"

[[dag.task]]
task_id = "t"
shell = '''echo "$TRIGGERER_RUN_ID" >> "{root}/fine"'''
"#
    );
    let _standalone = env.standalone(&defs, &["--parallelism", "1"]);
    for dag in ["garbage", "unknown", "badkwargs", "fine"] {
        env.trigger(dag, "r1");
    }
    for (dag, words) in [
        ("garbage", &["defer file"][..]),
        ("unknown", &["nosuch.MysteryTrigger"][..]),
        ("badkwargs", &["delta"][..]),
    ] {
        env.wait_run(dag, "r1", "failed", 60);
        let task = env.task(dag, "r1", "t");
        assert_eq!(task["state"], "failed", "{task}");
        assert_eq!(task["try_number"], 1, "{task}");
        let log = env.logs(dag, "r1", "t", None);
        for w in words {
            assert!(log.contains(w), "{dag}: the reason names `{w}`: {log}");
        }
        let reasons: Vec<&str> = log.lines().filter(|l| l.contains("failed")).collect();
        assert_eq!(reasons.len(), 1, "{dag}: a one-line reason: {log}");
        if dag == "garbage" {
            assert!(log.contains("before the bad defer file"), "{log}");
        }
    }
    env.wait_run("fine", "r1", "success", 60);
    // And after them, on the same (one-slot) executor.
    env.trigger("fine", "r2");
    env.wait_run("fine", "r2", "success", 60);
    assert_eq!(env.lines("fine"), vec!["r1", "r2"]);
    let status = env.status();
    let executors = alive_executors(&status);
    assert_eq!(executors.len(), 1, "{status:#}");
    assert_eq!(executors[0]["open_slots"], 1, "{status:#}");
    assert_eq!(status["deferred_tasks"], 0, "{status:#}");
    assert!(env.triggers().is_empty(), "{:#?}", env.triggers());
}
e2e!(
    bad_waits_are_sync_errors_and_bad_defer_files_fail_only_their_task,
    bad_input
);

// ---------------------------------------------------------------------------------------------
// 6. A deferred task holds no slot: under --parallelism 1 another task runs meanwhile.
// ---------------------------------------------------------------------------------------------

fn deferred_holds_no_slot(env: Env) {
    let root = env.root();
    let defs = format!(
        r#"
[[dag]]
dag_id = "sleeper"

[[dag.task]]
task_id = "t"
shell = '''
if [ -n "$TRIGGERER_TRIGGER_EVENT" ]; then
  date +%s.%N > "{root}/resumed_at"
else
  echo '{{"classpath": "time.TimeDeltaTrigger", "kwargs": {{"delta": "3s"}}}}' > "$TRIGGERER_DEFER_FILE"
  date +%s.%N > "{root}/deferred_at"
fi
'''

[[dag]]
dag_id = "plain"

[[dag.task]]
task_id = "t"
shell = '''date +%s.%N > "{root}/plain_at"'''
"#
    );
    let _standalone = env.standalone(&defs, &["--parallelism", "1"]);
    env.trigger("sleeper", "r1");
    env.wait_lines("deferred_at", 1, 30, "sleeper", "r1");
    env.trigger("plain", "r1");
    env.wait_run("plain", "r1", "success", 60);
    let sleeper = env.task("sleeper", "r1", "t");
    env.wait_run("sleeper", "r1", "success", 60);

    let deferred_at = epoch_in(&env, "deferred_at");
    let plain_at = epoch_in(&env, "plain_at");
    let resumed_at = epoch_in(&env, "resumed_at");
    assert!(
        deferred_at < plain_at && plain_at < resumed_at,
        "the plain task ran while the other was deferred, on the one slot: deferred at \
         {deferred_at}, plain ran at {plain_at}, resumed at {resumed_at}\n{}",
        env.process_logs()
    );
    assert!(
        resumed_at - deferred_at >= 2.5,
        "a 3 s deferral resumed after {:.3} s",
        resumed_at - deferred_at
    );
    if sleeper["state"] != "deferred" {
        eprintln!(
            "note: the sleeper was `{}` when plain was seen done",
            sleeper["state"]
        );
    }
    let task = env.task("sleeper", "r1", "t");
    assert_eq!(task["try_number"], 1, "{task}");
    let status = env.status();
    let executors = alive_executors(&status);
    assert_eq!(executors.len(), 1, "{status:#}");
    assert_eq!(executors[0]["open_slots"], 1, "{status:#}");
}
e2e!(
    a_deferred_task_holds_no_executor_slot,
    deferred_holds_no_slot
);

// ---------------------------------------------------------------------------------------------
// 7. A deferred task is no executor's: `kill -9` of the executor it deferred on loses nothing.
// ---------------------------------------------------------------------------------------------

fn deferred_survives_its_executor(env: Env) {
    let root = env.root();
    std::fs::create_dir_all(env.path("in")).expect("in dir");
    std::fs::create_dir_all(env.path("events")).expect("events dir");
    env.sync(&file_deferring_dag(&root, "files"));
    let _scheduler = env.spawn("scheduler", &["scheduler"]);
    let _triggerer = env.spawn("triggerer", &["run", "--heartbeat-interval", "1"]);
    let mut a = env.executor("executor-a", &[]);
    let run_ids: Vec<String> = (0..3).map(|r| format!("r{r:02}")).collect();
    for id in &run_ids {
        env.trigger("files", id);
    }
    env.wait_status("3 deferred tasks", 60, |s| s["deferred_tasks"] == 3);
    a.kill(); // SIGKILL while its tasks are deferred
    let _b = env.executor("executor-b", &[]);
    // Past A's health threshold: had A's deferred tasks counted as its tries, they would be
    // failed over by now.
    env.wait_for(
        "executor A counted as dead, B alive",
        30,
        || {
            let s: Value = serde_json::from_str(&env.ok(&[
                "status",
                "--json",
                "--health-check-threshold",
                "3",
            ]))
            .expect("status --json");
            s["executors"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x["alive"] == false))
                && alive_executors(&s).len() == 1
        },
        || env.process_logs(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let status = env.status();
    assert_eq!(
        status["deferred_tasks"], 3,
        "a deferred task holds no executor: it stays deferred when the executor it deferred on dies: {status:#}\n{}",
        env.diagnose("files", "r00")
    );
    for id in &run_ids {
        env.land(&format!("{id}.ready"), id);
    }
    env.wait_all_success("files", &run_ids, 60);
    assert_each_resumed_once(&env, "files", &run_ids);
}
e2e!(
    a_deferred_task_survives_the_kill_9_of_its_executor,
    deferred_survives_its_executor
);
