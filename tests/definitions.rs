//! Every kind of bad definition is rejected with `file:line: message` naming the asset or DAG
//! and the field.

use triggerer::definitions::{load_str, DefinitionErrors};
use triggerer::registry::builtin_providers;

fn errors(text: &str) -> DefinitionErrors {
    load_str("defs.toml", text, &builtin_providers()).expect_err("definitions must be rejected")
}

/// Asserts one error, at `line`, whose message contains every needle.
fn assert_error(text: &str, line: usize, needles: &[&str]) {
    let errs = errors(text);
    let first = &errs.0[0];
    let shown = first.to_string();
    assert_eq!(first.line, line, "{shown}");
    assert!(shown.starts_with(&format!("defs.toml:{line}: ")), "{shown}");
    for needle in needles {
        assert!(shown.contains(needle), "`{needle}` not in: {shown}");
    }
}

#[test]
fn unknown_keys() {
    assert_error(
        "[[asset]]\nname = \"a\"\nuri = \"x\"\ncolour = \"red\"\n",
        4,
        &["colour"],
    );
    assert_error(
        "[[dag]]\ndag_id = \"d\"\nschedual = \"@daily\"\n",
        3,
        &["schedual"],
    );
    assert_error("[[pipeline]]\nname = \"p\"\n", 1, &["pipeline"]);
}

#[test]
fn toml_syntax_errors_have_lines() {
    assert_error("[[asset]]\nname = \"a\"\n\nname = = 3\n", 4, &[]);
}

#[test]
fn unknown_classpath_lists_known_ones() {
    let text =
        "[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"kafka.Nope\"\n";
    assert_error(
        text,
        5,
        &[
            "asset `a`",
            "watcher `w`",
            "classpath",
            "kafka.Nope",
            "file.FileTrigger",
        ],
    );
}

#[test]
fn bad_provider_kwargs_name_the_field() {
    let text = "[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"file.FileTrigger\"\nkwargs = { recursive = \"yes\", filepath = \"/x\" }\n";
    assert_error(text, 6, &["asset `a`", "watcher `w`", "kwargs.recursive"]);
    let text = "[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"file.FileTrigger\"\n";
    assert_error(text, 3, &["kwargs.filepath"]);
}

#[test]
fn duplicate_names() {
    assert_error(
        "[[asset]]\nname = \"a\"\n[[asset]]\nname = \"a\"\n",
        4,
        &["asset `a`", "already defined at defs.toml:2"],
    );
    assert_error(
        "[[dag]]\ndag_id = \"d\"\n[[dag]]\ndag_id = \"d\"\n",
        4,
        &["dag `d`", "already defined"],
    );
    let text = "[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"file.FileTrigger\"\nkwargs = { filepath = \"/x\" }\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"file.FileTrigger\"\nkwargs = { filepath = \"/y\" }\n";
    assert_error(text, 8, &["watcher `w`", "already used"]);
    assert_error(
        "[[asset]]\nname = \"a\"\nuri = \"s3://x\"\n[[asset]]\nname = \"b\"\nuri = \"s3://x\"\n",
        6,
        &["asset `b`", "uri", "asset `a`"],
    );
}

#[test]
fn expressions() {
    let text = "[[asset]]\nname = \"a\"\n[[dag]]\ndag_id = \"d\"\nschedule = { assets = \"a & (b | a)\" }\n";
    assert_error(text, 5, &["dag `d`", "schedule", "unknown asset `b`"]);
    let text =
        "[[asset]]\nname = \"a\"\n[[dag]]\ndag_id = \"d\"\nschedule = { assets = \"a & \" }\n";
    assert_error(text, 5, &["dag `d`", "schedule", "assets", "column"]);
}

#[test]
fn schedules_and_dates() {
    assert_error(
        "[[dag]]\ndag_id = \"d\"\nschedule = \"0 25 * * *\"\n",
        3,
        &["dag `d`", "schedule", "0 25 * * *"],
    );
    assert_error(
        "[[dag]]\ndag_id = \"d\"\nschedule = { cron = \"@daily\", timezone = \"Nowhere/City\" }\n",
        3,
        &["IANA"],
    );
    assert_error(
        "[[dag]]\ndag_id = \"d\"\nstart_date = \"soon\"\n",
        3,
        &["start_date", "soon"],
    );
    assert_error(
        "[[dag]]\ndag_id = \"d\"\nstart_date = 2024-02-01\nend_date = 2024-01-01\n",
        4,
        &["end_date"],
    );
    assert_error(
        "[[dag]]\ndag_id = \"d\"\nmax_active_runs = 0\n",
        3,
        &["max_active_runs"],
    );
}

#[test]
fn all_errors_are_reported_in_order() {
    let text = "[[asset]]\nname = \"\"\n[[dag]]\ndag_id = \"d\"\nschedule = \"bogus\"\n[[dag]]\ndag_id = \"e\"\nmax_active_runs = -1\n";
    let errs = errors(text);
    let lines: Vec<usize> = errs.0.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 5, 8], "{errs}");
}

#[test]
fn valid_definitions_cover_every_schedule_form() {
    let text = r#"
[[asset]]
name = "orders"
uri = "kafka://localhost:9092/orders"
[[asset]]
name = "customers"
[[asset]]
name = "refunds"
[[dag]]
dag_id = "on_assets"
schedule = { assets = "orders & (customers | refunds)" }
start_date = 2024-01-01T00:00:00Z
[[dag]]
dag_id = "cron_zurich"
schedule = { cron = "0 1 * * 3", timezone = "Europe/Zurich", data_interval = true }
catchup = true
[[dag]]
dag_id = "or_time"
schedule = { cron = "0 6 * * *", assets = "orders | refunds", combine = "or" }
[[dag]]
dag_id = "and_time"
schedule = { cron = "0 6 * * *", assets = "orders", combine = "and" }
[[dag]]
dag_id = "every"
schedule = { every = "1mo" }
[[dag]]
dag_id = "daily"
schedule = "@daily"
[[dag]]
dag_id = "manual"
"#;
    let plan = load_str("defs.toml", text, &builtin_providers()).expect("valid");
    assert_eq!(plan.dags.len(), 7);
    let on_assets = &plan.dags[0];
    assert_eq!(
        on_assets.asset_expression.as_deref(),
        Some("orders & (customers | refunds)")
    );
    assert_eq!(on_assets.assets.len(), 3);
    assert_eq!(plan.assets[1].uri, "customers", "uri defaults to the name");
}

#[test]
fn message_queue_trigger_resolves_to_the_provider_serving_it() {
    let text = r#"
[[asset]]
name = "by_uri"
[[asset.watcher]]
name = "w"
classpath = "airflow.providers.common.messaging.triggers.msg_queue.MessageQueueTrigger"
kwargs = { queue = "file:///data/in/*.csv" }

[[asset]]
name = "by_scheme"
[[asset.watcher]]
name = "w"
classpath = "MessageQueueTrigger"
kwargs = { scheme = "file", filepath = "/data/in/*.csv" }

[[asset]]
name = "direct"
[[asset.watcher]]
name = "w"
classpath = "file.FileTrigger"
kwargs = { filepath = "/data/in/*.csv" }
"#;
    let plan = load_str("defs.toml", text, &builtin_providers()).expect("valid");
    let watchers: Vec<_> = plan.assets.iter().map(|a| &a.watchers[0]).collect();
    // As in Airflow, the stored trigger is the concrete one: all three are one trigger.
    assert!(watchers.iter().all(|w| w.classpath == "file.FileTrigger"));
    assert!(watchers.iter().all(|w| w.hash == watchers[0].hash));
    assert_eq!(watchers[0].kwargs, r#"{"filepath":"/data/in/*.csv"}"#);
}

#[test]
fn message_queue_trigger_errors_name_the_scheme_or_uri() {
    let watcher = |kwargs: &str| {
        format!("[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"MessageQueueTrigger\"\nkwargs = {kwargs}\n")
    };
    assert_error(
        &watcher("{ scheme = \"zmq\" }"),
        6,
        &[
            "asset `a`",
            "watcher `w`",
            "kwargs.scheme",
            "`zmq`",
            "not served",
        ],
    );
    assert_error(
        &watcher("{ queue = \"zmq://localhost:5672/orders\" }"),
        6,
        &[
            "kwargs.queue",
            "zmq://localhost:5672/orders",
            "not served",
            "file, kafka",
        ],
    );
    // Served by the kafka provider, whose own check names its field and the URI.
    assert_error(
        &watcher("{ queue = \"kafka://localhost:9092\" }"),
        6,
        &["kwargs.topics", "kafka://localhost:9092"],
    );
    let plan = load_str(
        "defs.toml",
        &watcher("{ queue = \"kafka://localhost:9092/orders\", group_id = \"g\" }"),
        &builtin_providers(),
    )
    .expect("a kafka:// queue resolves to the kafka provider");
    assert_eq!(
        plan.assets[0].watchers[0].classpath,
        "kafka.AwaitMessageTrigger"
    );
    assert_error(
        &watcher("{ topics = [\"x\"] }"),
        6,
        &["kwargs.queue", "needs"],
    );
    assert_error(
        &watcher("{ queue = \"file:///in\", filepath = \"/x\" }"),
        6,
        &["kwargs.filepath", "queue"],
    );
}

#[test]
fn environment_references_are_stored_as_references_and_validated_where_unset() {
    let text = r#"
[[asset]]
name = "orders"
[[asset.watcher]]
name = "direct"
classpath = "kafka.AwaitMessageTrigger"
kwargs = { topics = ["orders"], bootstrap_servers = "b:9092", kafka_config = { "sasl.username" = "svc", "sasl.password" = { env = "TRIGGERER_TEST_UNSET_SECRET" } } }

[[asset]]
name = "orders-by-uri"
[[asset.watcher]]
name = "via-uri"
classpath = "MessageQueueTrigger"
kwargs = { queue = "kafka://b:9092/orders", kafka_config = { "sasl.username" = "svc", "sasl.password" = { env = "TRIGGERER_TEST_UNSET_SECRET" } } }
"#;
    let plan = load_str("defs.toml", text, &builtin_providers()).expect("valid");
    for asset in &plan.assets {
        let kwargs: serde_json::Value =
            serde_json::from_str(&asset.watchers[0].kwargs).expect("json");
        assert_eq!(
            kwargs["kafka_config"]["sasl.password"],
            serde_json::json!({"env": "TRIGGERER_TEST_UNSET_SECRET"}),
            "{}: the reference is stored, not a value",
            asset.name
        );
    }
    assert_eq!(
        plan.assets[0].watchers[0].hash, plan.assets[1].watchers[0].hash,
        "the URI form and the direct form are one trigger, reference included"
    );
}

#[test]
fn environment_references_that_cannot_work_are_rejected_with_their_place() {
    let watcher = |kwargs: &str| {
        format!("[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"MessageQueueTrigger\"\nkwargs = {kwargs}\n")
    };
    assert_error(
        &watcher(
            r#"{ queue = "kafka://b:9092/t", kafka_config = { "sasl.password" = { env = "not a name" } } }"#,
        ),
        6,
        &["asset `a`", "kafka_config.sasl.password", "variable name"],
    );
}

/// A DAG `d` with the given `[[dag.task]]` text; the DAG header takes lines 1–2.
fn dag_with(tasks: &str) -> String {
    format!("[[dag]]\ndag_id = \"d\"\n{tasks}")
}

#[test]
fn tasks_are_read_in_order_with_defaults() {
    let plan = load_str(
        "defs.toml",
        &dag_with(
            "[[dag.task]]\ntask_id = \"b\"\ndepends_on = [\"a\"]\nhttp = { url = \"http://x/load\", method = \"post\", expect_status = 201 }\n\
             [[dag.task]]\ntask_id = \"a\"\ncommand = [\"true\"]\nretries = 2\nretry_delay = \"30s\"\nexecution_timeout = \"1h30m\"\n",
        ),
        &builtin_providers(),
    )
    .expect("valid");
    let tasks = &plan.dags[0].tasks;
    assert_eq!(tasks.len(), 2);
    assert_eq!(tasks[0].task_id, "b");
    assert_eq!(tasks[0].depends_on, vec!["a"]);
    match &tasks[0].operator {
        triggerer::task::Operator::Http(call) => {
            assert_eq!(call.method, "POST");
            assert!(call.accepts(201) && !call.accepts(200));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(tasks[1].retries, 2);
    assert_eq!(tasks[1].retry_delay, std::time::Duration::from_secs(30));
    assert_eq!(
        tasks[1].execution_timeout,
        Some(std::time::Duration::from_secs(5400))
    );
    assert_eq!(tasks[0].retry_delay, std::time::Duration::from_secs(300));
}

#[test]
fn task_errors_name_dag_task_and_field() {
    // Duplicate task ids point at the first.
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\n[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\n"),
        7,
        &["dag `d`", "task `a`", "already used by the task at line 4"],
    );
    // An unknown upstream names the known tasks.
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\ndepends_on = [\"nope\"]\n"),
        6,
        &[
            "task `a`",
            "`depends_on`: unknown task `nope`",
            "this DAG's tasks are a",
        ],
    );
    // A cycle is named around.
    assert_error(
        &dag_with(
            "[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\ndepends_on = [\"b\"]\n\
             [[dag.task]]\ntask_id = \"b\"\nshell = \"true\"\ndepends_on = [\"a\"]\n",
        ),
        3,
        &["cycle", "a → b → a"],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\ndepends_on = [\"a\"]\n"),
        3,
        &["cycle", "a → a"],
    );
    // One operator, exactly.
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\ncommand = [\"true\"]\n"),
        5,
        &["has both `command` and `shell`", "exactly one operator"],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nretries = 1\n"),
        3,
        &["task `a`", "needs an operator"],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\ncommand = []\n"),
        5,
        &["`command` must name a program"],
    );
    // Fields.
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\nretry_delay = \"soon\"\n"),
        6,
        &["task `a`", "`retry_delay`", "`soon` is not a duration"],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\nretries = -1\n"),
        6,
        &["`retries` must be between 0 and 1000"],
    );
    assert_error(
        &dag_with(
            "[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\ntrigger_rule = \"all_failed\"\n",
        ),
        6,
        &["unknown rule `all_failed`", "one_failed"],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\ncolour = 1\n"),
        6,
        &["colour"],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nhttp = { url = \"ftp://x/y\" }\n"),
        5,
        &["`http.url`", "scheme `ftp`"],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nhttp = { url = \"http://x/\", expect_status = [200, 999] }\n"),
        5,
        &["`http.expect_status`", "999"],
    );
    assert_error(
        &dag_with(
            "[[dag.task]]\ntask_id = \"a\"\nhttp = { url = \"http://x/\", method = \"GE T\" }\n",
        ),
        5,
        &["`http.method`"],
    );
    assert_error(
        &dag_with(
            "[[dag.task]]\ntask_id = \"a\"\nwait = { classpath = \"time.TimeDeltaTrigger\" }\n",
        ),
        5,
        &["task `a`", "`wait`", "delta"],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nwait = { classpath = \"nope.Trigger\" }\n"),
        5,
        &[
            "`wait`",
            "unknown classpath `nope.Trigger`",
            "time.DateTimeTrigger",
        ],
    );
    assert_error(
        &dag_with("[[dag.task]]\ntask_id = \"a\"\nshell = \"true\"\nresume = []\n"),
        6,
        &["`resume` must name a program"],
    );
    // A one-shot trigger cannot watch an asset.
    assert_error(
        "[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"time.DateTimeTrigger\"\nkwargs = { moment = \"2030-01-01T00:00:00Z\" }\n",
        5,
        &["fires once", "task's `wait`"],
    );
}

#[test]
fn a_webhook_watcher_syncs_with_its_secret_as_a_reference() {
    let text = r#"
[[asset]]
name = "pushes"
[[asset.watcher]]
name = "github"
classpath = "http.WebhookTrigger"
kwargs = { path = "github", secret = { env = "GH_SECRET" }, signature_header = "X-Hub-Signature-256", dedup_header = "X-GitHub-Delivery" }
"#;
    let plan = load_str("defs.toml", text, &builtin_providers()).expect("valid");
    let watcher = &plan.assets[0].watchers[0];
    assert_eq!(watcher.classpath, "http.WebhookTrigger");
    let kwargs: serde_json::Value = serde_json::from_str(&watcher.kwargs).expect("json");
    assert_eq!(
        kwargs,
        serde_json::json!({
            "path": "github",
            "secret": { "env": "GH_SECRET" },
            "signature_header": "X-Hub-Signature-256",
            "dedup_header": "X-GitHub-Delivery",
        }),
        "stored as written, the reference and not a placeholder"
    );
}

#[test]
fn webhook_errors_name_the_kwarg_or_where_it_cannot_go() {
    let watcher = |kwargs: &str| {
        format!("[[asset]]\nname = \"a\"\n[[asset.watcher]]\nname = \"w\"\nclasspath = \"http.WebhookTrigger\"\nkwargs = {kwargs}\n")
    };
    assert_error(
        &watcher(r#"{ path = "/github", secret = { env = "GH_SECRET" } }"#),
        6,
        &["asset `a`", "watcher `w`", "kwargs.path", "`github`"],
    );
    assert_error(
        &watcher(r#"{ path = "a/../b", secret = "s" }"#),
        6,
        &["kwargs.path", "`..`"],
    );
    assert_error(
        &watcher(r#"{ path = "github" }"#),
        6,
        &["kwargs.secret", "required"],
    );
    assert_error(
        &watcher(r#"{ path = "github", secret = "s", dedup = "X-GitHub-Delivery" }"#),
        6,
        &["kwargs.dedup", "unknown kwarg", "dedup_header"],
    );
    // No triggerer runs a webhook, so it cannot be what a task waits for.
    assert_error(
        &dag_with(
            "[[dag.task]]\ntask_id = \"a\"\nwait = { classpath = \"http.WebhookTrigger\", kwargs = { path = \"gh\", secret = \"s\" } }\n",
        ),
        5,
        &["task `a`", "http.WebhookTrigger", "only watch an asset"],
    );
}
