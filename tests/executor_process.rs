//! The executor's two ways of running a try, against real processes and a real HTTP server:
//! [`process::run`] through the `task-shim` of the built binary (exit statuses, the log, killing
//! a timed-out, cancelled or orphaned task's whole process group), and [`http::call`] against a
//! tiny HTTP/1.1 server on the loopback (what arrives, what counts as success, what the log
//! keeps and what it must not).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use triggerer::executor::process::{Launch, ProcessEnd};
use triggerer::executor::{http, process};
use triggerer::task::{HttpBody, HttpCall};
use triggerer_sdk::CancellationToken;

const SHIM: &str = env!("CARGO_BIN_EXE_triggerer");
/// How long a killed process may take to disappear before a test calls it a survivor.
const DEATH_WAIT: Duration = Duration::from_secs(15);
/// Far longer than any run here should take (a kill waits `KILL_GRACE`), far shorter than the
/// `sleep 600` the tests leave in a group.
const RUN_LIMIT: Duration = Duration::from_secs(60);

fn sh(script: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

/// Runs `argv` through the shim with its log in `dir`; returns how it ended, the shim's pid and
/// the log.
async fn run_in(
    dir: &Path,
    argv: &[String],
    env: &[(String, String)],
    timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> (ProcessEnd, u32, String) {
    let log_path = dir.join("task.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut shim_pid = None;
    let run = process::run(
        Launch {
            argv,
            env,
            log,
            shim: Path::new(SHIM),
        },
        timeout,
        cancel,
        |pid| shim_pid = Some(pid),
    );
    // A kill that does not work would otherwise pass once `sleep 600` ends by itself.
    let end = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("the run did not end")
        .unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    (end, shim_pid.expect("started was called"), log)
}

/// Whether `pid` is a live process (a zombie is dead: nothing may reap it in a container).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

async fn dies_within(pid: u32, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if !alive(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    !alive(pid)
}

/// The pid a script wrote to `path`, once it is there.
async fn pid_in(path: &Path) -> u32 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().parse().unwrap();
            }
        }
        assert!(Instant::now() < until, "{} never written", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A script that leaves a grandchild `sleep` in the task's group and records its pid.
fn sleeper(dir: &Path, prelude: &str) -> Vec<String> {
    let pid_file = dir.join("child.pid");
    sh(&format!(
        "{prelude} sleep 600 & echo $! > '{}'; wait",
        pid_file.display()
    ))
}

#[tokio::test]
async fn a_commands_status_and_output_land_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("TASK_GREETING".to_string(), "hello from env".to_string())];
    let (end, shim_pid, log) = run_in(
        dir.path(),
        &sh("echo \"out: $TASK_GREETING\"; echo 'err line' >&2; exit 3"),
        &env,
        None,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(end, ProcessEnd::Exited(3));
    assert!(log.contains("out: hello from env"), "{log}");
    assert!(log.contains("err line"), "{log}");
    assert!(shim_pid > 1);
    assert!(!alive(shim_pid), "the shim was reaped");

    let (end, _, _) = run_in(
        dir.path(),
        &["true".to_string()],
        &[],
        None,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(end, ProcessEnd::Exited(0));
}

#[tokio::test]
async fn a_program_that_cannot_run_exits_like_a_shell_says_why_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let missing = "/nonexistent/triggerer-no-such-program".to_string();
    let (end, _, log) = run_in(
        dir.path(),
        &[missing.clone(), "arg".into()],
        &[],
        None,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(end, ProcessEnd::Exited(127));
    assert!(
        log.contains(&format!("task-shim: cannot run `{missing}`")),
        "{log}"
    );
    assert!(log.contains("No such file or directory"), "{log}");

    let not_executable = dir.path().join("script.txt");
    std::fs::write(&not_executable, "echo hi\n").unwrap();
    let (end, _, log) = run_in(
        dir.path(),
        &[not_executable.display().to_string()],
        &[],
        None,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(end, ProcessEnd::Exited(126));
    assert!(log.contains("Permission denied"), "{log}");
}

#[tokio::test]
async fn a_command_killed_by_a_signal_reports_128_plus_n() {
    let dir = tempfile::tempdir().unwrap();
    let (end, _, _) = run_in(
        dir.path(),
        &sh("kill -KILL $$"),
        &[],
        None,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(end, ProcessEnd::Exited(128 + 9));
}

#[tokio::test]
async fn a_timed_out_command_loses_its_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let begun = Instant::now();
    let (end, shim_pid, _) = run_in(
        dir.path(),
        &sleeper(dir.path(), ""),
        &[],
        Some(Duration::from_secs(2)),
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(end, ProcessEnd::TimedOut);
    assert!(begun.elapsed() < Duration::from_secs(30));
    let grandchild = pid_in(&dir.path().join("child.pid")).await;
    assert!(
        dies_within(grandchild, DEATH_WAIT).await,
        "grandchild {grandchild} survived"
    );
    assert!(!alive(shim_pid), "the shim {shim_pid} survived");
}

#[tokio::test]
async fn what_a_finished_command_left_running_is_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("child.pid");
    let script = format!("sleep 600 & echo $! > {}; echo left", pid_file.display());
    let (end, _, _) = run_in(
        dir.path(),
        &sh(&script),
        &[],
        None,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(end, ProcessEnd::Exited(0));
    let leftover = pid_in(&pid_file).await;
    assert!(
        dies_within(leftover, DEATH_WAIT).await,
        "the background sleep {leftover} outlived its try"
    );
}

#[tokio::test]
async fn cancel_kills_the_group_even_when_it_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let cancel = CancellationToken::new();
    let pid_file = dir.path().join("child.pid");
    let trigger = {
        let cancel = cancel.clone();
        let pid_file = pid_file.clone();
        tokio::spawn(async move {
            let pid = pid_in(&pid_file).await;
            cancel.cancel();
            pid
        })
    };
    // `trap '' TERM` is inherited by the `sleep`: only the SIGKILL after the grace ends them.
    let (end, shim_pid, _) = run_in(
        dir.path(),
        &sleeper(dir.path(), "trap '' TERM;"),
        &[],
        None,
        &cancel,
    )
    .await;
    assert_eq!(end, ProcessEnd::Cancelled);
    let grandchild = trigger.await.unwrap();
    assert!(
        dies_within(grandchild, DEATH_WAIT).await,
        "grandchild {grandchild} survived"
    );
    assert!(!alive(shim_pid), "the shim {shim_pid} survived");
}

#[tokio::test]
async fn an_orphaned_shim_kills_its_task() {
    let dir = tempfile::tempdir().unwrap();
    // The shim's parent is an intermediate shell, killed with SIGKILL once the task runs: the
    // shim's parent-death signal must take the task's group down with it.
    let script = r#"
        "$SHIM" task-shim --parent $$ -- /bin/sh -c 'sleep 600 & echo $! > child.pid; wait' &
        echo $! > shim.pid
        i=0
        while [ ! -s child.pid ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
        kill -9 $$
    "#;
    let mut intermediate = std::process::Command::new("/bin/sh");
    intermediate
        .args(["-c", script])
        .env("SHIM", SHIM)
        .current_dir(dir.path());
    // Its own group, whatever the shim does: a group kill must never reach the test runner.
    std::os::unix::process::CommandExt::process_group(&mut intermediate, 0);
    let status = intermediate.status().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    let grandchild = pid_in(&dir.path().join("child.pid")).await;
    let shim_pid = pid_in(&dir.path().join("shim.pid")).await;
    assert!(
        dies_within(grandchild, DEATH_WAIT).await,
        "grandchild {grandchild} survived its executor"
    );
    assert!(
        dies_within(shim_pid, DEATH_WAIT).await,
        "the shim {shim_pid} survived its executor"
    );
}

#[tokio::test]
async fn the_shim_runs_nothing_when_its_parent_is_not_the_executor() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let output = std::process::Command::new(SHIM)
        .args(["task-shim", "--parent", "1", "--", "/bin/sh", "-c"])
        .arg(format!("touch '{}'", marker.display()))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(process::SHIM_FAILED));
    assert!(!marker.exists());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("pid 1"), "{stderr}");
}

// ---- HTTP ----

/// What the test server received.
#[derive(Debug, Default, Clone)]
struct Received {
    request_line: String,
    /// Lower-case names.
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

/// A one-connection HTTP/1.1 server answering `response` (None: never answering).
async fn server(response: Option<String>) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let received = read_request(&mut socket).await;
            record.lock().unwrap().push(received);
            match &response {
                Some(response) => {
                    socket.write_all(response.as_bytes()).await.unwrap();
                    let _ = socket.shutdown().await;
                }
                None => {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        }
    });
    (base, seen)
}

async fn read_request(socket: &mut tokio::net::TcpStream) -> Received {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-request");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .map_or(0, |v| v.parse().unwrap());
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    Received {
        request_line,
        headers,
        body,
    }
}

fn answer(status: &str, body: &str) -> Option<String> {
    Some(format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ))
}

fn http_call(method: &str, url: String) -> HttpCall {
    HttpCall {
        method: method.into(),
        url,
        headers: BTreeMap::new(),
        body: HttpBody::Empty,
        expect_status: vec![],
        timeout: Duration::from_secs(20),
    }
}

#[tokio::test]
async fn an_http_call_sends_method_path_json_and_env_headers() {
    const SECRET: &str = "s3cr3t-header-value";
    std::env::set_var("TRIGGERER_TEST_HTTP_TOKEN", format!("Bearer {SECRET}"));
    let (base, seen) = server(answer("201 Created", "{\"id\": 7}")).await;
    let mut call = http_call("POST", format!("{base}/load?day=1"));
    call.headers = [
        (
            "Authorization".to_string(),
            json!({"env": "TRIGGERER_TEST_HTTP_TOKEN"}),
        ),
        ("X-Plain".to_string(), json!("plain-value")),
    ]
    .into();
    call.body = HttpBody::Json(json!({"rows": [1, 2], "name": "x"}));
    call.expect_status = vec![201];
    let mut log = Vec::new();
    let result = http::call(&http::client().unwrap(), &call, &mut log).await;
    assert_eq!(result, Ok(()));

    let received = seen.lock().unwrap()[0].clone();
    assert_eq!(received.request_line, "POST /load?day=1 HTTP/1.1");
    assert_eq!(
        received.headers.get("authorization").map(String::as_str),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(
        received.headers.get("x-plain").map(String::as_str),
        Some("plain-value")
    );
    assert_eq!(
        received.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
    assert_eq!(body, json!({"rows": [1, 2], "name": "x"}));

    let log = String::from_utf8(log).unwrap();
    assert!(log.contains(&format!("POST {base}/load?day=1")), "{log}");
    assert!(log.contains("201 Created"), "{log}");
    assert!(log.contains("{\"id\": 7}"), "{log}");
    assert!(
        log.contains("authorization"),
        "header names are shown: {log}"
    );
    assert!(
        !log.contains(SECRET),
        "a header value reached the log: {log}"
    );
    assert!(
        !log.contains("plain-value"),
        "a header value reached the log: {log}"
    );
}

#[tokio::test]
async fn an_http_call_fails_on_a_status_it_does_not_expect() {
    let client = http::client().unwrap();
    let (base, _) = server(answer("500 Internal Server Error", "database down")).await;
    let mut log = Vec::new();
    let err = http::call(
        &client,
        &http_call("POST", format!("{base}/load")),
        &mut log,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err,
        format!("POST {base}/load answered 500 Internal Server Error; expected 2xx")
    );
    let log = String::from_utf8(log).unwrap();
    assert!(log.contains("database down"), "{log}");

    let (base, _) = server(answer("200 OK", "")).await;
    let mut call = http_call("GET", format!("{base}/"));
    call.expect_status = vec![201, 202];
    let err = http::call(&client, &call, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.ends_with("answered 200 OK; expected 201, 202"), "{err}");

    // A header reference to an unset variable fails before anything is sent.
    let mut call = http_call("GET", format!("{base}/"));
    call.headers = [(
        "Authorization".to_string(),
        json!({"env": "TRIGGERER_TEST_HTTP_UNSET"}),
    )]
    .into();
    let err = http::call(&client, &call, &mut Vec::new())
        .await
        .unwrap_err();
    assert!(err.contains("TRIGGERER_TEST_HTTP_UNSET"), "{err}");
}

#[tokio::test]
async fn an_http_call_to_a_silent_server_times_out() {
    let (base, seen) = server(None).await;
    let mut call = http_call("GET", format!("{base}/slow"));
    call.timeout = Duration::from_millis(300);
    let mut log = Vec::new();
    let begun = Instant::now();
    let err = http::call(&http::client().unwrap(), &call, &mut log)
        .await
        .unwrap_err();
    assert!(begun.elapsed() < Duration::from_secs(20));
    assert!(err.contains("timeout of 300 ms"), "{err}");
    assert!(err.starts_with(&format!("GET {base}/slow")), "{err}");
    assert_eq!(seen.lock().unwrap().len(), 1, "the request arrived");
    assert!(String::from_utf8(log).unwrap().contains("300 ms"));
}

#[tokio::test]
async fn an_http_call_never_shows_the_urls_password() {
    let client = http::client().unwrap();
    let (base, seen) = server(answer("204 No Content", "")).await;
    let url = base.replacen("http://", "http://svc:pw-s3cret@", 1);
    let mut log = Vec::new();
    let result = http::call(&client, &http_call("DELETE", format!("{url}/x")), &mut log).await;
    assert_eq!(result, Ok(()));
    let log = String::from_utf8(log).unwrap();
    assert!(!log.contains("pw-s3cret"), "{log}");
    assert!(log.contains("svc:***@"), "{log}");
    // reqwest turns the userinfo into basic auth.
    let received = seen.lock().unwrap()[0].clone();
    assert!(received.headers.contains_key("authorization"));

    // Nothing listens on a port just freed: a connection error, password masked.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let mut log = Vec::new();
    let err = http::call(
        &client,
        &http_call("GET", format!("http://svc:pw-s3cret@127.0.0.1:{closed}/x")),
        &mut log,
    )
    .await
    .unwrap_err();
    assert!(!err.contains("pw-s3cret"), "{err}");
    assert!(err.contains("svc:***@"), "{err}");
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(!String::from_utf8(log).unwrap().contains("pw-s3cret"));
}

#[tokio::test]
async fn a_long_response_body_is_cut_in_the_log() {
    let body = "x".repeat(http::BODY_LOG_CAP + 1000);
    let (base, _) = server(answer("200 OK", &body)).await;
    let mut log = Vec::new();
    let result = http::call(
        &http::client().unwrap(),
        &http_call("GET", format!("{base}/big")),
        &mut log,
    )
    .await;
    assert_eq!(result, Ok(()));
    let log = String::from_utf8(log).unwrap();
    assert!(log.len() < http::BODY_LOG_CAP + 1000, "{}", log.len());
    assert!(
        log.contains(&format!("cut: 1000 of {} bytes", body.len())),
        "{}",
        &log[log.len() - 200..]
    );
}
