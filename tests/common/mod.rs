//! Shared test helpers: fresh stores on SQLite (always) and PostgreSQL (with the
//! `integration` feature), and the `store_test!` macro that runs one test body on both.

#![allow(dead_code)]

pub mod http;
pub mod tasks;

use std::collections::BTreeSet;
use std::path::PathBuf;

use triggerer::store::Store;

/// A fresh SQLite database in its own temporary directory (kept alive by the returned guard).
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("test.db").display());
    let store = Store::connect(&url).await.expect("open sqlite");
    (store, dir)
}

/// The server the PostgreSQL tests use: `TRIGGERER_TEST_POSTGRES_URL`, or the machine's own.
pub fn postgres_admin_url() -> String {
    std::env::var("TRIGGERER_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A fresh PostgreSQL database (a new database per test, so tests run in parallel). Fails with
/// instructions when no server is reachable: these tests never pass silently.
pub async fn postgres_store() -> (Store, String) {
    use sqlx::Connection;
    let admin_url = postgres_admin_url();
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .unwrap_or_else(|e| {
            panic!(
            "PostgreSQL is not reachable at {admin_url} ({e}). Start it with `scripts/test.sh` \
             (or `pg_ctlcluster 15 main start`), or point TRIGGERER_TEST_POSTGRES_URL at a server."
        )
        });
    let name = format!("trg_test_{}", uuid_like());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let base = admin_url
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin_url);
    let url = format!("{base}/{name}");
    let store = Store::connect(&url).await.expect("open postgres");
    (store, url)
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}_{}", std::process::id(), nanos)
}

/// Runs `$body` (an async block using `$store`) on SQLite, and on PostgreSQL when built with
/// `--features integration`.
#[macro_export]
macro_rules! store_test {
    ($name:ident, |$store:ident| $body:block) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let ($store, _guard) = $crate::common::sqlite_store().await;
                $body
            }

            #[cfg(feature = "integration-postgres")]
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let ($store, _url) = $crate::common::postgres_store().await;
                $body
            }
        }
    };
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test never leaves
/// servers running.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Kills the process now (SIGKILL: no shutdown path runs) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_triggerer");

/// `triggerer dags sync PATH` against `db_url`; panics with its stderr if it fails.
pub fn sync_definitions(db_url: &str, path: &std::path::Path) {
    let out = std::process::Command::new(BIN)
        .args(["dags", "sync"])
        .arg(path)
        .env("TRIGGERER_DATABASE_URL", db_url)
        .output()
        .expect("run triggerer dags sync");
    assert!(
        out.status.success(),
        "dags sync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `triggerer standalone` against `db_url`, logging to `log`. Heartbeats every 0.5 s
/// with a 2 s health threshold, so a process started after a `kill -9` reclaims the dead one's
/// triggers within seconds.
pub fn standalone(db_url: &str, log: &std::path::Path) -> KillOnDrop {
    standalone_with_env(db_url, log, &[])
}

/// [`standalone`] with extra environment variables for the process.
pub fn standalone_with_env(
    db_url: &str,
    log: &std::path::Path,
    vars: &[(&str, &str)],
) -> KillOnDrop {
    let log = std::fs::File::create(log).expect("log file");
    KillOnDrop(
        std::process::Command::new(BIN)
            .args([
                "standalone",
                "--heartbeat-interval",
                "0.5",
                "--health-check-threshold",
                "2",
            ])
            .env("TRIGGERER_DATABASE_URL", db_url)
            .envs(vars.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start triggerer standalone"),
    )
}

/// A TCP proxy in front of a server (PostgreSQL in the fault tests) that can play the server
/// going away: [`FaultyProxy::outage`] cuts every open connection and turns new ones away, as a
/// restarting server does, until [`FaultyProxy::restore`]. It works the same in front of the
/// machine's PostgreSQL and a docker-compose one, and leaves the server itself alone (other
/// tests share it).
pub struct FaultyProxy {
    pub port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        // Without blocking: async tests drop it on their runtime's thread.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl FaultyProxy {
    pub fn start(upstream: &str) -> Self {
        use std::sync::atomic::Ordering;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        // Bound here, served on the proxy's own runtime: usable from sync and async tests.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("proxy listener");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("proxy address").port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, cut_rx) = tokio::sync::watch::channel(0u64);
        let upstream = upstream.to_string();
        runtime.spawn({
            let down = down.clone();
            async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    // The cut generation is read BEFORE the down flag (`outage` sets the flag,
                    // then bumps the generation): a connection accepted while an outage begins
                    // is either refused here or cut below, never kept through it.
                    let generation = *cut_rx.borrow();
                    if down.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees its connection closed at once
                    }
                    let upstream = upstream.clone();
                    let mut cut_rx = cut_rx.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut_rx.wait_for(|g| *g != generation) => {}
                        }
                    });
                }
            }
        });
        Self {
            port,
            down,
            cut,
            runtime: Some(runtime),
        }
    }

    /// `url` (a postgres:// URL) pointed at this proxy instead of its own host and port.
    pub fn url_through(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let userinfo = authority
            .rsplit_once('@')
            .map(|(u, _)| format!("{u}@"))
            .unwrap_or_default();
        format!("{scheme}://{userinfo}127.0.0.1:{}/{path}", self.port)
    }

    pub fn outage(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|generation| *generation += 1);
    }

    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `host:port` of a postgres:// URL.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:5432")
    }
}

/// Asserts that the runs (`runs list --json`) consumed every event (`assets events --json`)
/// exactly once between them.
pub fn assert_consumed_once(
    events: &[serde_json::Value],
    runs: &[serde_json::Value],
    context: &str,
) {
    let mut consumed: Vec<i64> = runs
        .iter()
        .flat_map(|r| r["consumed_events"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_i64())
        .collect();
    let total = consumed.len();
    consumed.sort_unstable();
    consumed.dedup();
    assert_eq!(total, consumed.len(), "no event consumed twice; {context}");
    let mut ids: Vec<i64> = events.iter().filter_map(|e| e["id"].as_i64()).collect();
    ids.sort_unstable();
    assert_eq!(
        consumed, ids,
        "every event consumed by exactly one run; {context}"
    );
}

/// `prefix-PID-NANOS`: names (topics, queues, groups) no other run of the suite uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Asset events in a test's SQLite database, read while the triggerer writes them.
pub struct Events {
    pub pool: sqlx::SqlitePool,
    log: std::path::PathBuf,
}

impl Events {
    pub async fn open(url: &str, log: std::path::PathBuf) -> Self {
        let pool = sqlx::SqlitePool::connect(url).await.expect("read pool");
        Self { pool, log }
    }

    pub async fn count(&self, asset: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.name = ?",
        )
        .bind(asset)
        .fetch_one(&self.pool)
        .await
        .expect("count")
    }

    pub async fn distinct_keys(&self) -> i64 {
        sqlx::query_scalar("SELECT count(DISTINCT dedup_key) FROM asset_event")
            .fetch_one(&self.pool)
            .await
            .expect("distinct")
    }

    /// Waits until `asset` has `n` events; on a timeout, fails with the triggerer's log.
    pub async fn wait(&self, what: &str, asset: &str, n: i64, secs: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let c = self.count(asset).await;
            if c >= n {
                return;
            }
            if std::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "{what}: {c} of {n} events; log, newest first:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// Polls `triggers list --json` until the trigger `which` picks shows state `failing`, and
/// returns its row; fails the test after `within`.
pub async fn wait_for_failing(
    db_url: &str,
    within: std::time::Duration,
    which: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let out = std::process::Command::new(BIN)
            .args(["triggers", "list", "--json"])
            .env("TRIGGERER_DATABASE_URL", db_url)
            .output()
            .expect("triggers list");
        let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
        let row = rows.into_iter().find(|t| which(t)).expect("the trigger");
        if row["state"] == "failing" {
            return row;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the trigger never showed as failing within {within:?}: {row}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The Kafka-compatible broker of the tests: `TRIGGERER_TEST_KAFKA`, or the tansu
/// `scripts/test.sh` starts. Fails with how to start one when nothing listens there.
pub fn kafka_broker() -> String {
    let addr = std::env::var("TRIGGERER_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:19092".into());
    if std::net::TcpStream::connect(&addr).is_err() {
        panic!("no Kafka broker at {addr}: run `scripts/test.sh` (it starts tansu), or set TRIGGERER_TEST_KAFKA=host:port");
    }
    addr
}

/// The SQS endpoint of the tests: `TRIGGERER_TEST_SQS_ENDPOINT`, or the moto
/// `scripts/test.sh` starts. Fails with how to start one when nothing listens there.
pub fn sqs_endpoint() -> String {
    let url = std::env::var("TRIGGERER_TEST_SQS_ENDPOINT")
        .unwrap_or_else(|_| "http://127.0.0.1:15055".into());
    let url = url.trim_end_matches('/').to_string();
    let addr = url
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    if std::net::TcpStream::connect(addr).is_err() {
        panic!("no SQS endpoint at {url}: run `scripts/test.sh` (it starts moto), or set TRIGGERER_TEST_SQS_ENDPOINT");
    }
    url
}

/// The binary against one database, as a user types its commands (`RUST_LOG=warn`).
pub struct Cli {
    pub db_url: String,
}

impl Cli {
    /// Runs `triggerer ARGS`.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(BIN)
            .args(args)
            .env("TRIGGERER_DATABASE_URL", &self.db_url)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run triggerer")
    }

    /// Runs a command that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail with exit code 1; its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?} should fail; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a `--json` command that must succeed; the array it printed.
    pub fn json(&self, args: &[&str]) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(args)).expect("a JSON array")
    }
}

/// A temporary directory for a test's files (and, usually, its SQLite database) with the
/// binary pointed at a database: `workspace.ok(&[…])` runs a command.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub cli: Cli,
}

impl Workspace {
    /// A new directory with a SQLite database `t.db` in it.
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = format!("sqlite://{}", dir.path().join("t.db").display());
        Self::new(dir, db_url)
    }

    /// `dir` for the files, and the database at `db_url`.
    pub fn new(dir: tempfile::TempDir, db_url: String) -> Self {
        let cli = Cli {
            db_url: db_url.clone(),
        };
        Self { dir, db_url, cli }
    }
}

impl std::ops::Deref for Workspace {
    type Target = Cli;
    fn deref(&self) -> &Cli {
        &self.cli
    }
}

/// Polls `runs list` until the runs of `dag_id` together consumed exactly the events `events`
/// (asset event ids); fails after `secs` with the runs it saw.
pub async fn wait_for_runs_consuming(cli: &Cli, dag_id: &str, events: &BTreeSet<i64>, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let runs = cli.json(&["runs", "list", "--limit", "0", "--json"]);
        let consumed: BTreeSet<i64> = runs
            .iter()
            .filter(|r| r["dag_id"] == dag_id)
            .flat_map(|r| r["consumed_events"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_i64())
            .collect();
        if !runs.is_empty() && &consumed == events {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no run of {dag_id} consumed the events {events:?}: {runs:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
