//! The web UI (DESIGN §12) in a real browser: the binary runs `standalone --dags --http` on a
//! temporary SQLite database with examples/file-watcher (its watched folder moved into a
//! temporary directory); a dropped file becomes an asset-triggered run whose tasks all succeed,
//! a pushed event and a manual run bring names full of HTML and URL syntax; then Debian's
//! headless Chromium (`chromium`, scripts/services.sh `ensure_chromium`) loads every page and
//! the test reads the DOM it built — the run, its tasks, the consumed event, the triggers, the
//! events, the error page of an unknown DAG — and takes a screenshot of the run page into
//! `target/ui-screenshots/`.
//!
//! `cargo test --features integration-ui --test e2e_ui -- --nocapture` (prints the screenshot's
//! path).

#![cfg(feature = "integration-ui")]

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::HttpServer;
use common::BIN;
use serde_json::{json, Value};

const DAG: &str = "process_orders";
/// A pushed event's dedup key and a manual run's id: HTML, and every character a URL path
/// treats specially.
const PUSHED_KEY: &str = "refund <b>#7</b> & co";
const MANUAL_RUN: &str = "ui check <i>1</i> / a?b#c %2F+";
/// Text that would run if a page printed it unescaped.
const SCRIPT: &str =
    "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">";
/// Longest a page may take in the browser.
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(60);

/// examples/file-watcher/dags.toml with its watched folder moved to `incoming`.
fn example_definitions(incoming: &Path) -> String {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/file-watcher/dags.toml");
    let text = std::fs::read_to_string(&example).expect("examples/file-watcher/dags.toml");
    let relative = "examples/file-watcher/incoming";
    assert!(
        text.contains(&format!("filepath = \"{relative}/*.csv\"")),
        "{}: the watcher's filepath is no longer `{relative}/*.csv`; update this test",
        example.display()
    );
    text.replace(relative, &incoming.display().to_string())
}

/// `percent-encodes` a path segment as a browser's address bar would need it.
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A running `standalone --dags --http` on a temporary SQLite database, watching `incoming`.
struct Server {
    http: HttpServer,
    incoming: PathBuf,
}

impl std::ops::Deref for Server {
    type Target = HttpServer;
    fn deref(&self) -> &HttpServer {
        &self.http
    }
}

impl Server {
    async fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let incoming = dir.path().join("incoming");
        std::fs::create_dir(&incoming).expect("watched dir");
        let dags = dir.path().join("dags");
        std::fs::create_dir(&dags).expect("dags dir");
        common::write_file(&dags, "dags.toml", &example_definitions(&incoming));
        let http = HttpServer::start(dir, None, &[]).await;
        Server { http, incoming }
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.expect(path);
        assert_eq!(response.status(), 200, "GET {path}");
        response.json().await.expect("JSON")
    }

    async fn post_json(&self, path: &str, body: Value) -> Value {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect(path);
        let status = response.status();
        let body: Value = response.json().await.expect("JSON");
        assert!(status.is_success(), "POST {path}: {status} {body}");
        body
    }

    /// Polls the DAG's runs until the one `which` picks is `success`; fails at once when it
    /// fails, and after `secs` with the runs and the log.
    async fn wait_for_success(
        &self,
        what: &str,
        secs: u64,
        which: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let runs = self.get_json(&format!("/api/v1/dags/{DAG}/runs")).await;
            let run = runs
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| which(r))
                .cloned();
            match run.as_ref().map(|r| r["state"].as_str()) {
                Some(Some("success")) => return run.unwrap(),
                Some(Some("failed")) => panic!("{what} failed: {run:?}\n{}", self.log_text()),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not succeed within {secs} s; runs: {runs}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The page at `path` as the server answers it: its status and content type.
    async fn fetch(&self, path: &str) -> (u16, String) {
        let response = self.client.get(self.url(path)).send().await.expect(path);
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (response.status().as_u16(), content_type)
    }

    /// The page at `path` as the browser built it; checks it is a 200 HTML page of the UI.
    async fn page(&self, path: &str) -> String {
        let (status, content_type) = self.fetch(path).await;
        assert_eq!(status, 200, "GET {path}:\n{}", self.log_text());
        assert!(
            content_type.starts_with("text/html"),
            "GET {path}: {content_type}"
        );
        let dom = dump_dom(&self.url(path));
        assert_ui_page(path, &dom);
        dom
    }
}

/// Runs `chromium` headless with a fresh profile and `args`, killing it (and what it started)
/// after [`CHROMIUM_TIMEOUT`]; its stdout.
fn chromium(args: &[String]) -> String {
    use std::os::unix::process::CommandExt as _;
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--window-size=1366,900",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `chromium` ({e}): install it with `apt-get install -y chromium` \
                 (scripts/services.sh ensure_chromium does)"
            )
        });
    let pgid = rustix::process::Pid::from_child(&child);
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + CHROMIUM_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Its helper processes share its group: end them all, whether it hung or not.
    let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match status {
        None => panic!(
            "chromium {args:?} did not finish within {CHROMIUM_TIMEOUT:?}; killed it. stderr:\n{stderr}"
        ),
        Some(status) if !status.success() => {
            panic!("chromium {args:?} failed ({status}); stderr:\n{stderr}")
        }
        Some(_) => stdout,
    }
}

fn dump_dom(url: &str) -> String {
    let dom = chromium(&["--dump-dom".to_string(), url.to_string()]);
    assert!(
        dom.contains("</html>"),
        "chromium dumped no document for {url}: {dom}"
    );
    dom
}

/// What every page of the UI has: the nav, the refresh, no script.
fn assert_ui_page(path: &str, dom: &str) {
    for needle in [
        r#"<meta http-equiv="refresh" content="5">"#,
        r#"<a href="/""#,
        r#"<a href="/triggers""#,
        r#"<a href="/events""#,
        "refreshes itself every 5 s",
    ] {
        assert!(dom.contains(needle), "{path}: no `{needle}` in\n{dom}");
    }
    assert!(
        !dom.contains("<script") && !dom.contains("<img") && !dom.contains("pwned</title>"),
        "{path}: a value reached the page unescaped:\n{dom}"
    );
}

/// `text` as it appears in a serialized DOM's text nodes.
fn in_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn assert_shows(path: &str, dom: &str, what: &[&str]) {
    for needle in what {
        let escaped = in_text(needle);
        assert!(
            dom.contains(&escaped),
            "{path}: the page does not show `{needle}` (as `{escaped}`):\n{dom}"
        );
    }
}

/// Where the screenshots go: `target/ui-screenshots/` of the target directory the binary is in.
fn screenshot_dir() -> PathBuf {
    let target = Path::new(BIN)
        .ancestors()
        .nth(2)
        .expect("the target directory of the binary")
        .to_path_buf();
    let dir = target.join("ui-screenshots");
    std::fs::create_dir_all(&dir).expect("create target/ui-screenshots");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_renders_in_chromium() {
    let server = Server::start().await;

    // An event for `refunds` (no watcher) full of HTML; with the file's `orders` event it
    // makes `reconcile` run too.
    let pushed = server
        .post_json(
            "/api/v1/assets/refunds/events",
            json!({"dedup_key": PUSHED_KEY, "extra": {"note": SCRIPT}}),
        )
        .await;
    assert_eq!(pushed["dedup_key"], PUSHED_KEY);

    // A file in the watched folder: an asset-triggered run of the DAG, every task succeeding.
    let file_name = "orders-ui-1.csv";
    common::write_file(&server.incoming, file_name, "id,amount\n1,250\n");
    let run = server
        .wait_for_success("the file's asset-triggered run", 90, |r| {
            r["run_type"] == "asset_triggered"
        })
        .await;
    let run_id = run["run_id"].as_str().expect("run_id").to_string();
    let event_ids: Vec<i64> = run["consumed_events"]
        .as_array()
        .expect("consumed_events")
        .iter()
        .filter_map(Value::as_i64)
        .collect();
    assert_eq!(event_ids.len(), 1, "one file, one event: {run}");
    let events = server.get_json("/api/v1/assets/orders/events").await;
    let event = events
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["id"].as_i64() == Some(event_ids[0]))
        .cloned()
        .unwrap_or_else(|| panic!("event {} among {events}", event_ids[0]));
    let dedup_key = event["dedup_key"]
        .as_str()
        .expect("a file event has a dedup key");
    let run_path = format!("/dags/{DAG}/runs/{}", segment(&run_id));
    let tasks = server
        .get_json(&format!(
            "/api/v1/dags/{DAG}/runs/{}/tasks",
            segment(&run_id)
        ))
        .await;
    let task_ids: Vec<&str> = tasks
        .as_array()
        .expect("tasks")
        .iter()
        .filter_map(|t| t["task_id"].as_str())
        .collect();
    assert!(!task_ids.is_empty(), "the example's DAG has tasks");

    // A manual run whose id needs escaping in HTML and encoding in a link.
    server
        .post_json(
            &format!("/api/v1/dags/{DAG}/runs"),
            json!({"run_id": MANUAL_RUN, "conf": {"why": SCRIPT}}),
        )
        .await;
    server
        .wait_for_success("the manual run", 90, |r| r["run_id"] == MANUAL_RUN)
        .await;

    // The DAGs.
    let dom = server.page("/").await;
    assert_shows("/", &dom, &[DAG, "reconcile", "assets: orders", "success"]);
    assert!(
        dom.contains(&format!(r#"href="/dags/{DAG}""#)),
        "/: no link to the DAG:\n{dom}"
    );
    assert!(
        dom.contains("st-success"),
        "/: the latest run's state in green:\n{dom}"
    );

    // The DAG's runs: both, each linking to its page.
    let path = format!("/dags/{DAG}");
    let dom = server.page(&path).await;
    assert_shows(
        &path,
        &dom,
        &[&run_id, MANUAL_RUN, "asset_triggered", "manual", "success"],
    );
    let manual_href = format!(r#"href="/dags/{DAG}/runs/{}""#, segment(MANUAL_RUN));
    assert!(
        dom.contains(&manual_href),
        "{path}: no `{manual_href}`:\n{dom}"
    );

    // The run: its state, every task succeeded, the event it consumed.
    let dom = server.page(&run_path).await;
    let mut expected = vec![run_id.as_str(), "success", "orders", dedup_key, file_name];
    expected.extend(&task_ids);
    assert_shows(&run_path, &dom, &expected);
    let task_successes = dom
        .matches(r#"<span class="st st-success">success</span>"#)
        .count();
    assert_eq!(
        task_successes,
        task_ids.len() + 1,
        "{run_path}: the run and each of its {} tasks shown `success`:\n{dom}",
        task_ids.len()
    );
    assert!(
        dom.contains(&format!("Consumed asset events ({})", event_ids.len())),
        "{run_path}: the consumed events' count:\n{dom}"
    );

    // The manual run's page, reached through the link the DAG's page gave.
    let path = format!("/dags/{DAG}/runs/{}", segment(MANUAL_RUN));
    let dom = server.page(&path).await;
    assert_shows(
        &path,
        &dom,
        &[MANUAL_RUN, "manual", "This run consumed no asset event."],
    );
    assert!(
        dom.contains(&in_text(&serde_json::to_string(SCRIPT).unwrap())),
        "{path}: the conf, as text:\n{dom}"
    );

    // The triggers: the file watcher, running, feeding `orders`; its kwargs.
    let dom = server.page("/triggers").await;
    assert_shows(
        "/triggers",
        &dom,
        &[
            "file.FileTrigger",
            "orders",
            "running",
            &server.incoming.display().to_string(),
        ],
    );

    // The events, newest first: the pushed one (escaped) and the file's.
    let dom = server.page("/events").await;
    assert_shows(
        "/events",
        &dom,
        &["orders", "refunds", dedup_key, file_name, PUSHED_KEY],
    );
    assert!(
        dom.contains(&in_text(&serde_json::to_string(SCRIPT).unwrap())),
        "/events: the pushed extra, as text:\n{dom}"
    );
    let file_at = dom.find(&in_text(dedup_key)).expect("the file's event");
    let pushed_at = dom.find(&in_text(PUSHED_KEY)).expect("the pushed event");
    assert!(
        file_at < pushed_at,
        "/events: the newest (the file's) first"
    );

    // An unknown DAG: an HTML 404 naming it.
    let (status, content_type) = server.fetch("/dags/no_such_dag").await;
    assert_eq!(status, 404);
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let dom = dump_dom(&server.url("/dags/no_such_dag"));
    assert_ui_page("/dags/no_such_dag", &dom);
    assert_shows("/dags/no_such_dag", &dom, &["404 Not Found", "no_such_dag"]);

    // A screenshot of the run page.
    let png = screenshot_dir().join("run.png");
    let _ = std::fs::remove_file(&png);
    chromium(&[
        format!("--screenshot={}", png.display()),
        server.url(&run_path),
    ]);
    let bytes =
        std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is no PNG",
        png.display()
    );
    assert!(
        bytes.len() > 20_000,
        "{}: {} bytes is too small for a page with tables",
        png.display(),
        bytes.len()
    );
    println!("screenshot of the run page: {}", png.display());
}
