//! The scheduler through the real binary: Airflow's worked examples via `dags next-runs` and
//! `scheduler --once --now`, manual and backfill runs from the CLI, and (with
//! `--features integration`) two schedulers on one PostgreSQL racing for the same work.

mod common;

use std::process::Command;

use serde_json::Value;

use common::BIN;

struct Cli {
    _dir: tempfile::TempDir,
    cli: common::Cli,
}

impl std::ops::Deref for Cli {
    type Target = common::Cli;
    fn deref(&self) -> &common::Cli {
        &self.cli
    }
}

impl Cli {
    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db_url = format!("sqlite://{}", dir.path().join("t.db").display());
        Self {
            _dir: dir,
            cli: common::Cli { db_url },
        }
    }

    fn sync(&self, text: &str) {
        let path = common::write_file(self._dir.path(), "dags.toml", text);
        self.ok(&["dags", "sync", path.to_str().expect("utf-8")]);
    }
}

const EXAMPLES: &str = r#"
[[dag]]
dag_id = "interval_catchup"
schedule = { cron = "0 0 * * *", data_interval = true }
start_date = 2025-01-01T00:00:00Z
catchup = true

[[dag]]
dag_id = "interval_latest"
schedule = { cron = "0 0 * * *", data_interval = true }
start_date = 2025-01-01T00:00:00Z

[[dag]]
dag_id = "interval_end_date"
schedule = { cron = "0 0 * * *", data_interval = true }
start_date = 2025-01-01T00:00:00Z
end_date = 2025-01-02T00:00:00Z
catchup = true

[[dag]]
dag_id = "trigger_catchup"
schedule = "0 0 * * *"
start_date = 2025-01-01T00:00:00Z
catchup = true

[[dag]]
dag_id = "trigger_latest"
schedule = "0 0 * * *"
start_date = 2025-01-01T00:00:00Z

[[dag]]
dag_id = "zurich_wednesdays"
schedule = { cron = "0 1 * * 3", timezone = "Europe/Zurich" }
start_date = 2025-03-20T00:00:00Z
catchup = true
"#;

/// `dags next-runs DAG -n N [--now T] --json`.
fn next_runs(cli: &Cli, dag: &str, n: usize, now: Option<&str>) -> Vec<Value> {
    let n = n.to_string();
    let mut args = vec!["dags", "next-runs", dag, "-n", &n, "--json"];
    if let Some(now) = now {
        args.extend(["--now", now]);
    }
    cli.json(&args)
}

fn field<'a>(rows: &'a [Value], key: &str) -> Vec<&'a str> {
    rows.iter()
        .map(|r| r[key].as_str().unwrap_or("null"))
        .collect()
}

#[test]
fn next_runs_match_airflows_worked_examples() {
    let cli = Cli::sqlite();
    cli.sync(EXAMPLES);
    let now = "2025-01-03T10:00:00Z";
    let rows = next_runs(&cli, "interval_catchup", 3, Some(now));
    assert_eq!(
        field(&rows, "logical_date"),
        [
            "2025-01-01T00:00:00Z",
            "2025-01-02T00:00:00Z",
            "2025-01-03T00:00:00Z"
        ]
    );
    assert_eq!(
        field(&rows, "data_interval_end"),
        [
            "2025-01-02T00:00:00Z",
            "2025-01-03T00:00:00Z",
            "2025-01-04T00:00:00Z"
        ]
    );
    assert_eq!(
        field(&rows, "run_after"),
        [
            "2025-01-02T00:00:00Z",
            "2025-01-03T00:00:00Z",
            "2025-01-04T00:00:00Z"
        ]
    );
    let rows = next_runs(&cli, "interval_latest", 2, Some(now));
    assert_eq!(
        field(&rows, "logical_date"),
        ["2025-01-02T00:00:00Z", "2025-01-03T00:00:00Z"]
    );
    let rows = next_runs(&cli, "interval_end_date", 5, Some(now));
    assert_eq!(
        field(&rows, "logical_date"),
        ["2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"]
    );
    let rows = next_runs(&cli, "trigger_catchup", 3, Some(now));
    assert_eq!(
        field(&rows, "run_after"),
        [
            "2025-01-01T00:00:00Z",
            "2025-01-02T00:00:00Z",
            "2025-01-03T00:00:00Z"
        ]
    );
    let rows = next_runs(&cli, "trigger_latest", 3, Some(now));
    assert_eq!(
        field(&rows, "run_after"),
        [
            "2025-01-03T00:00:00Z",
            "2025-01-04T00:00:00Z",
            "2025-01-05T00:00:00Z"
        ]
    );
    // 01:00 Zurich is 00:00Z in winter and 23:00Z the day before in summer (DST from 2025-03-30).
    let rows = next_runs(&cli, "zurich_wednesdays", 3, None);
    assert_eq!(
        field(&rows, "logical_date"),
        [
            "2025-03-26T00:00:00Z",
            "2025-04-01T23:00:00Z",
            "2025-04-08T23:00:00Z"
        ]
    );
}

#[test]
fn scheduler_once_at_a_frozen_clock_creates_airflows_runs() {
    let cli = Cli::sqlite();
    cli.sync(EXAMPLES);
    cli.ok(&["scheduler", "--once", "--now", "2025-01-03T10:00:00Z"]);
    let runs = cli.json(&["runs", "list", "--limit", "0", "--json"]);
    let of = |dag: &str| -> Vec<(String, String, String)> {
        runs.iter()
            .filter(|r| r["dag_id"] == dag)
            .map(|r| {
                assert_eq!(r["run_type"], "scheduled");
                (
                    r["logical_date"].as_str().unwrap().to_string(),
                    r["data_interval_end"].as_str().unwrap().to_string(),
                    r["run_id"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    assert_eq!(
        of("interval_catchup"),
        [
            s(
                "2025-01-01T00:00:00Z",
                "2025-01-02T00:00:00Z",
                "scheduled__2025-01-02T00:00:00+00:00"
            ),
            s(
                "2025-01-02T00:00:00Z",
                "2025-01-03T00:00:00Z",
                "scheduled__2025-01-03T00:00:00+00:00"
            ),
        ]
    );
    assert_eq!(
        of("interval_latest"),
        [s(
            "2025-01-02T00:00:00Z",
            "2025-01-03T00:00:00Z",
            "scheduled__2025-01-03T00:00:00+00:00"
        )]
    );
    assert_eq!(
        of("interval_end_date"),
        [
            s(
                "2025-01-01T00:00:00Z",
                "2025-01-02T00:00:00Z",
                "scheduled__2025-01-02T00:00:00+00:00"
            ),
            s(
                "2025-01-02T00:00:00Z",
                "2025-01-03T00:00:00Z",
                "scheduled__2025-01-03T00:00:00+00:00"
            ),
        ]
    );
    assert_eq!(of("trigger_catchup").len(), 3);
    assert_eq!(
        of("trigger_latest"),
        [s(
            "2025-01-03T00:00:00Z",
            "2025-01-03T00:00:00Z",
            "scheduled__2025-01-03T00:00:00+00:00"
        )]
    );
    assert!(of("zurich_wednesdays").is_empty());
    // Running it again at the same instant creates nothing more.
    cli.ok(&["scheduler", "--once", "--now", "2025-01-03T10:00:00Z"]);
    assert_eq!(
        cli.json(&["runs", "list", "--limit", "0", "--json"]).len(),
        runs.len()
    );
    let dags = cli.json(&["dags", "list", "--json"]);
    let latest = dags
        .iter()
        .find(|d| d["dag_id"] == "interval_latest")
        .unwrap();
    assert_eq!(latest["next_dagrun"], "2025-01-03T00:00:00Z");
    assert_eq!(latest["next_dagrun_create_after"], "2025-01-04T00:00:00Z");
}

#[test]
fn manual_and_backfill_runs_from_the_cli() {
    let cli = Cli::sqlite();
    cli.sync(EXAMPLES);
    cli.ok(&[
        "dags",
        "trigger",
        "interval_latest",
        "--conf",
        "{\"x\": 1}",
        "--logical-date",
        "2025-01-03T10:00:00Z",
    ]);
    let run = &cli.json(&["runs", "list", "--dag", "interval_latest", "--json"])[0];
    assert_eq!(run["run_type"], "manual");
    assert_eq!(run["data_interval_start"], "2025-01-02T00:00:00Z");
    assert_eq!(run["conf"]["x"], 1);
    let dup = cli.run(&[
        "dags",
        "trigger",
        "interval_latest",
        "--run-id",
        run["run_id"].as_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already has a run with run id"));
    let bad = cli.run(&["dags", "trigger", "interval_latest", "--conf", "{nope"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--conf: not valid JSON"));

    let out = cli.ok(&[
        "dags",
        "backfill",
        "trigger_latest",
        "--from",
        "2024-12-01T00:00:00Z",
        "--to",
        "2025-01-31T00:00:00Z",
    ]);
    // The DAG starts on 2025-01-01: the backfill says so and starts there.
    assert!(
        out.contains("starting at 2025-01-01") && out.contains("31 run(s) created"),
        "{out}"
    );
    let out = cli.ok(&[
        "dags",
        "backfill",
        "trigger_latest",
        "--from",
        "2025-01-01T00:00:00Z",
        "--to",
        "2025-01-31T00:00:00Z",
    ]);
    assert!(
        out.contains("0 run(s) created") && out.contains("31 skipped"),
        "{out}"
    );
    let backfills = cli.json(&[
        "runs",
        "list",
        "--dag",
        "trigger_latest",
        "--limit",
        "0",
        "--json",
    ]);
    assert_eq!(
        backfills
            .iter()
            .filter(|r| r["run_type"] == "backfill")
            .count(),
        31
    );
    let manual_only = cli.run(&[
        "dags",
        "backfill",
        "nope",
        "--from",
        "2024-12-01T00:00:00Z",
        "--to",
        "2024-12-02T00:00:00Z",
    ]);
    assert!(String::from_utf8_lossy(&manual_only.stderr).contains("DAG `nope` not found"));
}

#[cfg(feature = "integration-postgres")]
#[test]
fn two_schedulers_on_postgres_consume_every_event_once() {
    use std::collections::BTreeSet;
    use std::time::{Duration, Instant};
    use triggerer::store::{NewEvent, Origin};

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (store, url) = runtime.block_on(common::postgres_store());
    let dir = tempfile::tempdir().expect("temp dir");
    let cli = Cli {
        _dir: dir,
        cli: common::Cli {
            db_url: url.clone(),
        },
    };
    cli.sync(
        r#"
[[asset]]
name = "orders"
[[dag]]
dag_id = "on_orders"
schedule = { assets = "orders" }
max_active_runs = 100000
[[dag]]
dag_id = "hourly_backlog"
schedule = "@hourly"
start_date = 2025-01-01T00:00:00Z
end_date = 2025-01-05T23:00:00Z
catchup = true
max_active_runs = 100000
"#,
    );
    let spawn = |name: &str| {
        let log = std::fs::File::create(cli._dir.path().join(name)).expect("log");
        common::KillOnDrop(
            Command::new(BIN)
                .args(["scheduler"])
                .env("TRIGGERER_DATABASE_URL", &url)
                .stderr(log)
                .spawn()
                .expect("scheduler"),
        )
    };
    let mut schedulers = [spawn("s1.log"), spawn("s2.log")];
    let asset_id = runtime.block_on(store.asset_id("orders")).expect("asset");
    for batch in 0..100 {
        let events: Vec<NewEvent> = (0..10)
            .map(|i| NewEvent {
                origin: Origin::Manual { asset_id },
                extra: serde_json::json!({}),
                dedup_key: Some(format!("m{batch}-{i}")),
                checkpoint: None,
            })
            .collect();
        runtime
            .block_on(store.write_events(&events, None))
            .expect("write");
        std::thread::sleep(Duration::from_millis(10));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let consumed = loop {
        let runs = cli.json(&[
            "runs",
            "list",
            "--dag",
            "on_orders",
            "--limit",
            "0",
            "--json",
        ]);
        let consumed: Vec<i64> = runs
            .iter()
            .flat_map(|r| r["consumed_events"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_i64())
            .collect();
        let hourly = cli
            .json(&[
                "runs",
                "list",
                "--dag",
                "hourly_backlog",
                "--limit",
                "0",
                "--json",
            ])
            .len();
        if consumed.len() >= 1000 && hourly >= 120 {
            break consumed;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {} events consumed, {hourly} hourly runs",
            consumed.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    std::thread::sleep(Duration::from_secs(2));
    for s in &mut schedulers {
        s.kill();
    }
    let unique: BTreeSet<i64> = consumed.iter().copied().collect();
    assert_eq!(consumed.len(), 1000, "every event consumed exactly once");
    assert_eq!(unique.len(), 1000);
    let all = cli.json(&["runs", "list", "--limit", "0", "--json"]);
    let run_ids: BTreeSet<(String, String)> = all
        .iter()
        .map(|r| (r["dag_id"].to_string(), r["run_id"].to_string()))
        .collect();
    assert_eq!(run_ids.len(), all.len(), "no duplicate run ids");
    let hourly: Vec<&Value> = all
        .iter()
        .filter(|r| r["dag_id"] == "hourly_backlog")
        .collect();
    assert_eq!(hourly.len(), 120, "each backlog slot created once");
    let logs = std::fs::read_to_string(cli._dir.path().join("s1.log")).unwrap_or_default()
        + &std::fs::read_to_string(cli._dir.path().join("s2.log")).unwrap_or_default();
    assert!(
        !logs.contains("duplicate key"),
        "a scheduler hit a unique violation:\n{logs}"
    );
    runtime.block_on(store.close());
}
