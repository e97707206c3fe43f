//! The real binary serving HTTP (`standalone --dags DIR --http 127.0.0.1:PORT`) and a client
//! for it, shared by the HTTP API and web UI tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{KillOnDrop, BIN};

/// A running `standalone --http` and a keep-alive client for it.
pub struct HttpServer {
    pub base: String,
    pub client: reqwest::Client,
    pub process: KillOnDrop,
    pub log: PathBuf,
    /// Holds the definitions, the log and (by default) the SQLite database.
    pub dir: tempfile::TempDir,
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

impl HttpServer {
    /// Starts the binary on the definitions already written to `dir/dags` and on `db_url` (a
    /// fresh SQLite file in `dir` when `None`), with `vars` set, and waits until `/health`
    /// answers 200.
    pub async fn start(
        dir: tempfile::TempDir,
        db_url: Option<&str>,
        vars: &[(&str, &str)],
    ) -> Self {
        let dags = dir.path().join("dags");
        let db_url = db_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("test.db").display()));
        let port = free_port();
        let log = dir.path().join("triggerer.log");
        let process = KillOnDrop(
            std::process::Command::new(BIN)
                .args(["standalone", "--heartbeat-interval", "0.5"])
                .arg("--dags")
                .arg(&dags)
                .args(["--http", &format!("127.0.0.1:{port}")])
                .env("TRIGGERER_DATABASE_URL", &db_url)
                .env_remove("TRIGGERER_API_TOKENS")
                .envs(vars.iter().copied())
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("start triggerer standalone"),
        );
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client");
        let mut server = HttpServer {
            base: format!("http://127.0.0.1:{port}"),
            client,
            process,
            log,
            dir,
        };
        server.wait_for_health(200, 60).await;
        server
    }

    /// A temporary directory with `definitions` as `dags/dags.toml`, for [`HttpServer::start`].
    pub fn with_definitions(definitions: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let dags = dir.path().join("dags");
        std::fs::create_dir(&dags).expect("dags dir");
        super::write_file(&dags, "dags.toml", definitions);
        dir
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The process's log so far (its last 60 lines), for failure messages.
    pub fn log_text(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Polls `/health` until it answers `status`; fails at once if the process exited.
    pub async fn wait_for_health(&mut self, status: u16, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(exit)) = self.process.0.try_wait() {
                panic!("triggerer exited ({exit}):\n{}", self.log_text());
            }
            if let Ok(r) = self.client.get(self.url("/health")).send().await {
                if r.status().as_u16() == status {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "/health never answered {status} in {secs}s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
