//! The secrets class test: canary secrets run through every provider's failure paths (a
//! setting librdkafka refuses, a typo'd key, bad credentials, an unreachable cluster or
//! endpoint, credentials in a URI) through the real binary with `RUST_LOG=debug`, and then
//! looked for everywhere the triggerer writes: the SQLite database and its `-wal`/`-shm`
//! files, the process's stdout and stderr, `dags sync`'s output and `triggers list` (table and
//! JSON). A value from `{ env = … }` must appear nowhere; a literal written in the definitions
//! is stored as written (by design: `dags sync` warns about it), so it may be in the
//! database's kwargs, and nowhere else.
//!
//! A second test runs the triggerer in-process with a provider that echoes its kwargs back
//! through every path the core reports (build error, warning, run error, panic), and looks at
//! the stored errors and the log.
//!
//! `TRIGGERER_TEST_BIN` runs the binary test against another build of the binary (the one
//! before a fix, to see the test catch the leak).
#![cfg(all(feature = "integration-kafka", feature = "integration-sqs"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use triggerer::definitions::load_str;
use triggerer::registry::ProviderRegistry;
use triggerer::triggerer::{run, TriggererOptions};
use triggerer_sdk::{
    CancellationToken, EventTrigger, KwargsError, Provider, TriggerContext, TriggerError,
};

/// The two tests take turns: one sets process environment variables, which must not race
/// with the other reading the environment to spawn processes.
static ENVIRONMENT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bin() -> String {
    std::env::var("TRIGGERER_TEST_BIN").unwrap_or_else(|_| common::BIN.to_string())
}

/// A port nothing listens on: bound, then released.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// A string no library, log line or database page contains by chance.
fn canary(kind: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{kind}Zq{:x}x{:x}", nanos, std::process::id())
}

/// `triggerer ARGS` against `db_url`.
fn triggerer(db_url: &str, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("TRIGGERER_DATABASE_URL", db_url)
        .env("RUST_LOG", "debug")
        .output()
        .expect("run triggerer")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Where a canary was found, with some context.
fn find(haystack: &[u8], needle: &str) -> Option<String> {
    let at = haystack
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())?;
    let from = at.saturating_sub(160);
    let to = (at + needle.len() + 160).min(haystack.len());
    Some(String::from_utf8_lossy(&haystack[from..to]).into_owned())
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Polls `triggers list --json` until every trigger shows failing with an error; returns the
/// rows. Fails with the rows and the log's tail after `within`.
async fn wait_until_all_fail(db_url: &str, log: &Path, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let out = triggerer(db_url, &["triggers", "list", "--json"]);
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let pending: Vec<&Value> = rows
            .iter()
            .filter(|r| r["state"] != "failing" || !r["last_error"].is_string())
            .collect();
        if !rows.is_empty() && pending.is_empty() {
            return rows;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "not every trigger showed as failing within {within:?}: {pending:#?}\nlog, newest first:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secrets_never_leave_the_environment_through_failures() {
    let _turn = ENVIRONMENT.lock().await;
    let broker = common::kafka_broker();
    let sqs = common::sqs_endpoint();
    let closed = closed_port();
    let dir = tempfile::tempdir().expect("temp dir");
    // From the environment: must be nowhere. Literal: stored as written, else nowhere.
    let env_canary = canary("envSecret");
    let lit_canary = canary("litSecret");
    let vars: Vec<(&str, String)> = vec![
        // A typo'd key: librdkafka refuses it and rdkafka's error repeats the value.
        ("SECRETS_TEST_TYPO", format!("{env_canary}-typo")),
        // Built without OpenSSL: librdkafka refuses the value, repeating it.
        ("SECRETS_TEST_SSL_KEY", format!("{env_canary}-sslkey")),
        ("SECRETS_TEST_SASL", format!("{env_canary}-sasl")),
        ("SECRETS_TEST_CLOSED", format!("{env_canary}-closed")),
        ("SECRETS_TEST_MQ", format!("{env_canary}-mq")),
        // Credentials in a broker address: librdkafka would take them for a host name.
        (
            "SECRETS_TEST_BOOTSTRAP",
            format!("svc:{env_canary}-boot@{broker}"),
        ),
        // Settings no key-based rule calls secret, echoed by the library: only the core's
        // scrubber stands between them and the stored error.
        ("SECRETS_TEST_MECH", format!("{env_canary}-mech")),
        // A missing directory (the trailing `/` says directory: a missing single file would
        // be waited for, not an error).
        (
            "SECRETS_TEST_DIR",
            format!(
                "{}/",
                dir.path().join(format!("{env_canary}-dir")).display()
            ),
        ),
        // SQS has no credential kwargs: its secrets come from the AWS chain, here the
        // process environment. Moto takes any; the closed port fails with them.
        ("AWS_ACCESS_KEY_ID", "secrets-test-key-id".to_string()),
        ("AWS_SECRET_ACCESS_KEY", format!("{env_canary}-aws-secret")),
        ("AWS_SESSION_TOKEN", format!("{env_canary}-aws-token")),
    ];

    let db = dir.path().join("secrets.db");
    let url = format!("sqlite://{}", db.display());
    let group = common::unique("secrets");
    let sasl = r#""security.protocol" = "sasl_plaintext", "sasl.mechanism" = "PLAIN", "sasl.username" = "svc""#;
    let defs = common::write_file(
        dir.path(),
        "dags.toml",
        &format!(
            r#"
[[asset]]
name = "kafka-typo"
[[asset.watcher]]
name = "w"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["t"], bootstrap_servers = "{broker}", group_id = "{group}-typo", kafka_config = {{ "sasl.pasword" = {{ env = "SECRETS_TEST_TYPO" }} }} }}

[[asset]]
name = "kafka-literal-typo"
[[asset.watcher]]
name = "w"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["t"], bootstrap_servers = "{broker}", group_id = "{group}-ltypo", kafka_config = {{ "sasl.pasword" = "{lit_canary}-typo" }} }}

[[asset]]
name = "kafka-ssl-key"
[[asset.watcher]]
name = "w"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["t"], bootstrap_servers = "{broker}", group_id = "{group}-ssl", kafka_config = {{ "ssl.key.password" = {{ env = "SECRETS_TEST_SSL_KEY" }} }} }}

[[asset]]
name = "kafka-sasl"
[[asset.watcher]]
name = "w"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["t"], bootstrap_servers = "{broker}", group_id = "{group}-sasl", kafka_config = {{ {sasl}, "sasl.password" = {{ env = "SECRETS_TEST_SASL" }}, "debug" = "security,broker,conf" }} }}

[[asset]]
name = "kafka-closed"
[[asset.watcher]]
name = "w"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["t"], bootstrap_servers = "127.0.0.1:{closed}", group_id = "{group}-closed", kafka_config = {{ {sasl}, "sasl.password" = {{ env = "SECRETS_TEST_CLOSED" }}, "debug" = "security,broker,conf" }} }}

[[asset]]
name = "kafka-closed-literal"
[[asset.watcher]]
name = "w"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["t"], bootstrap_servers = "127.0.0.1:{closed}", group_id = "{group}-lclosed", kafka_config = {{ {sasl}, "sasl.password" = "{lit_canary}-closed", "debug" = "security,broker,conf" }} }}

[[asset]]
name = "kafka-mechanism"
[[asset.watcher]]
name = "w"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["t"], bootstrap_servers = "{broker}", group_id = "{group}-mech", kafka_config = {{ "security.protocol" = "sasl_plaintext", "sasl.mechanism" = {{ env = "SECRETS_TEST_MECH" }} }} }}

[[asset]]
name = "file-missing-directory"
[[asset.watcher]]
name = "w"
classpath = "file.FileTrigger"
kwargs = {{ filepath = {{ env = "SECRETS_TEST_DIR" }} }}

[[asset]]
name = "kafka-bootstrap-credentials"
[[asset.watcher]]
name = "w"
classpath = "kafka.AwaitMessageTrigger"
kwargs = {{ topics = ["t"], bootstrap_servers = {{ env = "SECRETS_TEST_BOOTSTRAP" }}, group_id = "{group}-boot" }}

[[asset]]
name = "msgqueue-kafka-closed"
[[asset.watcher]]
name = "w"
classpath = "MessageQueueTrigger"
kwargs = {{ queue = "kafka://127.0.0.1:{closed}/t", group_id = "{group}-mq", kafka_config = {{ {sasl}, "sasl.password" = {{ env = "SECRETS_TEST_MQ" }} }} }}

[[asset]]
name = "sqs-missing-queue"
[[asset.watcher]]
name = "w"
classpath = "sqs.SqsSensorTrigger"
kwargs = {{ sqs_queue = "{sqs}/123456789012/{group}-missing", endpoint_url = "{sqs}", region_name = "us-east-1", wait_time_seconds = 1 }}

[[asset]]
name = "sqs-closed"
[[asset.watcher]]
name = "w"
classpath = "sqs.SqsSensorTrigger"
kwargs = {{ sqs_queue = "http://127.0.0.1:{closed}/123456789012/q", endpoint_url = "http://127.0.0.1:{closed}", region_name = "us-east-1", wait_time_seconds = 1 }}
"#
        ),
    );
    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let sync = triggerer(&url, &["dags", "sync", &defs.display().to_string()]);
    assert!(sync.status.success(), "dags sync: {}", text(&sync));
    outputs.push(("dags sync".into(), text(&sync).into_bytes()));

    // Credentials written into URIs: refused at sync, or else never shown. Each in a database
    // of its own, since a sync replaces what the others defined.
    let uri_cases = [
        (
            "msgqueue-uri",
            format!(
                r#"classpath = "MessageQueueTrigger"
kwargs = {{ queue = "kafka://svc:{lit_canary}-mquri@{broker}/t", group_id = "{group}-mquri" }}"#
            ),
        ),
        (
            "sqs-endpoint-uri",
            format!(
                r#"classpath = "sqs.SqsSensorTrigger"
kwargs = {{ sqs_queue = "http://127.0.0.1:{closed}/123456789012/q", endpoint_url = "http://svc:{lit_canary}-sqsuri@127.0.0.1:{closed}" }}"#
            ),
        ),
        (
            "sqs-queue-uri",
            format!(
                r#"classpath = "sqs.SqsSensorTrigger"
kwargs = {{ sqs_queue = "https://svc:{lit_canary}-squri@sqs.eu-west-1.amazonaws.com/123456789012/q" }}"#
            ),
        ),
    ];
    for (name, watcher) in &uri_cases {
        let file = common::write_file(
            dir.path(),
            &format!("{name}.toml"),
            &format!("[[asset]]\nname = \"{name}\"\n[[asset.watcher]]\nname = \"w\"\n{watcher}\n"),
        );
        let case_url = format!(
            "sqlite://{}",
            dir.path().join(format!("{name}.db")).display()
        );
        let out = triggerer(&case_url, &["dags", "sync", &file.display().to_string()]);
        outputs.push((format!("dags sync {name}"), text(&out).into_bytes()));
        if out.status.success() {
            for args in [&["triggers", "list"][..], &["triggers", "list", "--json"]] {
                let out = triggerer(&case_url, args);
                outputs.push((
                    format!("{} ({name})", args.join(" ")),
                    text(&out).into_bytes(),
                ));
            }
        }
    }
    // SQS takes its credentials from the AWS chain only: a kwarg for them is refused, and
    // sync never reads the variable.
    let file = common::write_file(
        dir.path(),
        "sqs-credentials.toml",
        &format!(
            r#"[[asset]]
name = "sqs-credentials"
[[asset.watcher]]
name = "w"
classpath = "sqs.SqsSensorTrigger"
kwargs = {{ sqs_queue = "{sqs}/123456789012/q", endpoint_url = "{sqs}", aws_secret_access_key = {{ env = "SECRETS_TEST_SASL" }} }}
"#
        ),
    );
    let case_url = format!(
        "sqlite://{}",
        dir.path().join("sqs-credentials.db").display()
    );
    let out = triggerer(&case_url, &["dags", "sync", &file.display().to_string()]);
    assert!(
        !out.status.success() && text(&out).contains("aws_secret_access_key"),
        "a credentials kwarg is refused: {}",
        text(&out)
    );
    outputs.push(("dags sync sqs-credentials".into(), text(&out).into_bytes()));

    let stdout_log = dir.path().join("triggerer.stdout");
    let stderr_log = dir.path().join("triggerer.stderr");
    let mut process = common::KillOnDrop(
        Command::new(bin())
            .args([
                "run",
                "--heartbeat-interval",
                "0.5",
                "--health-check-threshold",
                "5",
            ])
            .env("TRIGGERER_DATABASE_URL", &url)
            .env("RUST_LOG", "debug")
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::from(
                std::fs::File::create(&stdout_log).expect("stdout log"),
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&stderr_log).expect("stderr log"),
            ))
            .spawn()
            .expect("start triggerer run"),
    );
    let rows = wait_until_all_fail(&url, &stderr_log, Duration::from_secs(120)).await;
    assert_eq!(rows.len(), 12, "every watcher became a trigger: {rows:#?}");
    // Let each trigger fail and retry once more, through every restart path.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for args in [&["triggers", "list"][..], &["triggers", "list", "--json"]] {
        let out = triggerer(&url, args);
        assert!(out.status.success(), "{}", text(&out));
        outputs.push((args.join(" "), text(&out).into_bytes()));
    }
    process.kill();
    // What the failures said, as stored (scrubbed): with `--nocapture`, to see what each path
    // exercised.
    for row in &rows {
        eprintln!("{}: {}", row["assets"], row["last_error"]);
    }

    // The stored errors hold no literal either (the kwargs do, as written).
    let pool = sqlx::SqlitePool::connect(&url).await.expect("read pool");
    let errors: Vec<(i64, Option<String>)> = sqlx::query_as("SELECT id, last_error FROM trigger")
        .fetch_all(&pool)
        .await
        .expect("errors");
    pool.close().await;
    for (id, error) in &errors {
        outputs.push((
            format!("trigger {id} last_error"),
            error.clone().unwrap_or_default().into_bytes(),
        ));
    }

    let mut leaks = Vec::new();
    for path in files(dir.path()) {
        let bytes = std::fs::read(&path).expect("read");
        let name = path.display().to_string();
        if let Some(context) = find(&bytes, &env_canary) {
            leaks.push(format!("environment secret in {name}: …{context}…"));
        }
        let stored_as_written = name.ends_with(".toml") || name.contains(".db");
        if !stored_as_written {
            if let Some(context) = find(&bytes, &lit_canary) {
                leaks.push(format!("literal secret in {name}: …{context}…"));
            }
        }
    }
    for (place, bytes) in &outputs {
        for secret in [&env_canary, &lit_canary] {
            if let Some(context) = find(bytes, secret) {
                leaks.push(format!("secret in {place}: …{context}…"));
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "{} leak(s):\n{}",
        leaks.len(),
        leaks.join("\n\n")
    );
    // The test saw the failures it is about.
    let log = std::fs::read_to_string(&stderr_log).expect("log");
    assert!(log.contains("trigger failed"), "no failure was logged");
    let all_errors: String = errors
        .iter()
        .filter_map(|(_, e)| e.clone())
        .collect::<Vec<_>>()
        .join("\n");
    for expected in [
        "sasl.pasword",
        "ssl.key.password",
        "bootstrap_servers",
        "Authentication",
        "AllBrokersDown",
        "QueueDoesNotExist",
        "Connection refused",
    ] {
        assert!(
            all_errors.contains(expected),
            "an error names `{expected}`: {all_errors}"
        );
    }
    // Where the library repeated the value, the error says so with the mask.
    for asset in ["kafka-mechanism", "file-missing-directory"] {
        let row = rows
            .iter()
            .find(|r| r["assets"][0] == asset)
            .expect("the trigger");
        let error = row["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("***"), "{asset}: {error}");
    }
}

/// Puts its kwargs, secrets resolved, into whatever it reports: the build error (`mode =
/// "build"`), a warning (always), then a run error (`"fail"`) or a panic (`"panic"`), or it
/// runs on (`"warn"`).
struct EchoProvider;

struct Echo {
    mode: String,
    kwargs: String,
}

impl Provider for EchoProvider {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn classpaths(&self) -> &'static [&'static str] {
        &["test.Echo"]
    }
    fn validate(&self, _: &Value) -> Result<(), KwargsError> {
        Ok(())
    }
    fn build(&self, kwargs: &Value) -> Result<Box<dyn EventTrigger>, KwargsError> {
        let mode = kwargs["mode"].as_str().unwrap_or_default().to_string();
        if mode == "build" {
            return Err(KwargsError::new("", format!("refusing {kwargs}")));
        }
        Ok(Box::new(Echo {
            mode,
            kwargs: kwargs.to_string(),
        }))
    }
}

#[async_trait]
impl EventTrigger for Echo {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        ctx.warnings
            .warn(format!("skipped something in {}", self.kwargs));
        // Let the warning be recorded before the failure overwrites it.
        tokio::time::sleep(Duration::from_millis(300)).await;
        match self.mode.as_str() {
            "panic" => panic!("echo {}", self.kwargs),
            "fail" => Err(TriggerError::failed(format!("echo {}", self.kwargs))),
            _ => {
                ctx.cancel.cancelled().await;
                Ok(())
            }
        }
    }
}

/// A log destination the test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_the_core_reports_through_is_scrubbed() {
    let _turn = ENVIRONMENT.lock().await;
    let log = Captured::default();
    let writer = log.clone();
    // The only subscriber in this binary: the other test logs from child processes.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("the test's log subscriber");

    let env_canary = canary("envEcho");
    let lit_canary = canary("litEcho");
    for (name, suffix) in [
        ("SECRETS_ECHO_BUILD", "build"),
        ("SECRETS_ECHO_WARN", "warn"),
        ("SECRETS_ECHO_FAIL", "fail"),
        ("SECRETS_ECHO_PANIC", "panic"),
    ] {
        std::env::set_var(name, format!("{env_canary}-{suffix}"));
    }
    let defs = format!(
        r#"
[[asset]]
name = "build"
[[asset.watcher]]
name = "w"
classpath = "test.Echo"
kwargs = {{ mode = "build", value = {{ env = "SECRETS_ECHO_BUILD" }} }}

[[asset]]
name = "warn"
[[asset.watcher]]
name = "w"
classpath = "test.Echo"
kwargs = {{ mode = "warn", "sasl.pasword" = {{ env = "SECRETS_ECHO_WARN" }} }}

[[asset]]
name = "fail"
[[asset.watcher]]
name = "w"
classpath = "test.Echo"
kwargs = {{ mode = "fail", nested = [{{ value = {{ env = "SECRETS_ECHO_FAIL" }} }}], api_token = "{lit_canary}-token" }}

[[asset]]
name = "panic"
[[asset.watcher]]
name = "w"
classpath = "test.Echo"
kwargs = {{ mode = "panic", value = {{ env = "SECRETS_ECHO_PANIC" }}, endpoint = "http://svc:{lit_canary}-uri@127.0.0.1:9" }}
"#
    );
    let (store, _guard) = common::sqlite_store().await;
    let mut registry = ProviderRegistry::default();
    registry.register(EchoProvider).expect("register");
    store
        .apply_definitions(&load_str("defs.toml", &defs, &registry).expect("definitions"))
        .await
        .expect("sync");
    let shutdown = CancellationToken::new();
    let process = tokio::spawn(run(
        store.clone(),
        registry,
        TriggererOptions {
            loop_interval: Duration::from_millis(100),
            ..TriggererOptions::default()
        },
        shutdown.clone(),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    ));

    // Each trigger reported what it was made to: a failure (twice, through a restart), or
    // the warning.
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = store
            .list_triggers(Duration::from_secs(30))
            .await
            .expect("list");
        let reported = |t: &triggerer::store::TriggerRow| match t.kwargs["mode"].as_str() {
            Some("warn") => t
                .last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("warning:")),
            _ => t.failure_count >= 2,
        };
        if rows.len() == 4 && rows.iter().all(reported) {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "not every path was reported: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    shutdown.cancel();
    process
        .await
        .expect("triggerer task")
        .expect("clean shutdown");

    let log =
        String::from_utf8_lossy(&log.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    let mut leaks = Vec::new();
    for row in &rows {
        let error = row.last_error.clone().unwrap_or_default();
        for secret in [&env_canary, &lit_canary] {
            if error.contains(secret.as_str()) {
                leaks.push(format!("trigger {:?}: {error}", row.assets));
            }
        }
    }
    for secret in [&env_canary, &lit_canary] {
        if let Some(context) = find(log.as_bytes(), secret) {
            leaks.push(format!("log: …{context}…"));
        }
    }
    assert!(leaks.is_empty(), "{}", leaks.join("\n"));
    // The secrets were there to leak, and were masked.
    for row in &rows {
        let error = row.last_error.clone().unwrap_or_default();
        assert!(error.contains("***"), "{:?}: {error}", row.assets);
    }
    assert!(
        log.contains("trigger warning") && log.contains("trigger failed"),
        "{log}"
    );
}
