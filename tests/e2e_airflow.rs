//! The `airflow` operator against a real Apache Airflow 3 (DESIGN §11), through the binary:
//! our task triggers an Airflow DAG run over the REST API, waits deferred, and ends as that
//! run ends; a retried call starts no second Airflow run; bad credentials and unknown DAGs
//! fail the task with a reason. `scripts/test.sh` starts Airflow (`ensure_airflow` in
//! scripts/services.sh); the feature is `integration-airflow`.

#![cfg(feature = "integration-airflow")]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

struct Airflow {
    url: String,
    username: String,
    password: String,
}

fn airflow() -> Airflow {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run the suite with scripts/test.sh, or start Airflow with \
                 `. scripts/services.sh; ensure_airflow` (it exports TRIGGERER_TEST_AIRFLOW_URL, \
                 _USERNAME and _PASSWORD)"
            )
        })
    };
    Airflow {
        url: var("TRIGGERER_TEST_AIRFLOW_URL"),
        username: var("TRIGGERER_TEST_AIRFLOW_USERNAME"),
        password: var("TRIGGERER_TEST_AIRFLOW_PASSWORD"),
    }
}

impl Airflow {
    /// The runs Airflow has of `dag_id` whose id starts with `prefix`.
    async fn runs(&self, dag_id: &str, prefix: &str) -> Vec<Value> {
        let client = triggerer_provider_airflow::Client::new(
            &self.url,
            self.username.clone(),
            self.password.clone(),
            Duration::from_secs(10),
        )
        .expect("client");
        let token = client.token().await.expect("an Airflow token");
        let body: Value = reqwest::Client::new()
            .get(format!(
                "{}/api/v2/dags/{dag_id}/dagRuns?limit=100",
                self.url
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("list Airflow runs")
            .json()
            .await
            .expect("JSON");
        body["dag_runs"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|r| {
                r["dag_run_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with(prefix))
            })
            .collect()
    }
}

fn definitions(a: &Airflow, dag_id: &str) -> String {
    let task = |task_id: &str, airflow_dag: &str, password: &str| {
        format!(
            "[[dag.task]]\ntask_id = \"{task_id}\"\ntimeout = \"2m\"\n\
             airflow = {{ base_url = \"{}\", dag_id = \"{airflow_dag}\", username = {{ env = \"TEST_AF_USER\" }}, \
             password = {password}, poll_interval = \"1s\", conf = {{ source = \"e2e\" }} }}\n",
            a.url
        )
    };
    let env_password = "{ env = \"TEST_AF_PASSWORD\" }";
    format!(
        "[[dag]]\ndag_id = \"{dag_id}\"\n{}{}{}{}",
        task("ok", "triggerer_succeeds", env_password),
        task("bad", "triggerer_fails", env_password),
        task("unknown", "no_such_dag", env_password),
        task("refused", "triggerer_succeeds", "\"not-the-password\""),
    )
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn states(w: &common::Workspace, dag_id: &str) -> Vec<(String, String)> {
    w.json(&["tasks", "list", dag_id, "r1", "--json"])
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().unwrap_or_default().to_string(),
                t["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn state_of(w: &common::Workspace, dag_id: &str, task: &str) -> String {
    states(w, dag_id)
        .into_iter()
        .find(|(t, _)| t == task)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_runs_drive_our_tasks_and_a_retry_starts_no_second_run() {
    let a = airflow();
    let w = common::Workspace::sqlite();
    // A DAG id of its own per test run: Airflow's database outlives our temporary one.
    let dag_id = format!("bridge_{}", common::unique("r"));
    let defs = common::write_file(w.dir.path(), "dags.toml", &definitions(&a, &dag_id));
    common::sync_definitions(&w.db_url, &defs);
    w.ok(&["dags", "trigger", &dag_id, "--run-id", "r1"]);
    let _service = common::standalone_with_env(
        &w.db_url,
        &w.dir.path().join("standalone.log"),
        &[
            ("TEST_AF_USER", &a.username),
            ("TEST_AF_PASSWORD", &a.password),
        ],
    );
    let finished = |s: &str| ["success", "failed", "upstream_failed"].contains(&s);
    wait_for(
        "every airflow task to end",
        Duration::from_secs(120),
        || states(&w, &dag_id).iter().all(|(_, s)| finished(s)),
    );
    let log = |task: &str| w.ok(&["tasks", "logs", &dag_id, "r1", task]);
    assert_eq!(state_of(&w, &dag_id, "ok"), "success", "{}", log("ok"));
    assert_eq!(state_of(&w, &dag_id, "bad"), "failed", "{}", log("bad"));
    assert!(log("bad").contains("ended failed"), "{}", log("bad"));
    assert_eq!(state_of(&w, &dag_id, "unknown"), "failed");
    assert!(log("unknown").contains("no_such_dag"), "{}", log("unknown"));
    assert_eq!(state_of(&w, &dag_id, "refused"), "failed");
    let refused = log("refused");
    assert!(
        refused.to_lowercase().contains("credentials") || refused.contains("401"),
        "{refused}"
    );
    assert!(!refused.contains("not-the-password"), "{refused}");
    assert!(
        !log("ok").contains(&a.password),
        "the password reached the log"
    );

    // Airflow has exactly one run for our task, with our conf and the run's context.
    let prefix = format!("triggerer__{dag_id}__ok__");
    let runs = a.runs("triggerer_succeeds", &prefix).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["state"], "success");
    assert_eq!(runs[0]["conf"]["source"], "e2e");
    assert_eq!(runs[0]["conf"]["triggerer"]["run_id"], "r1");
    assert!(runs[0]["conf"]["triggering_asset_events"].is_array());

    // Running the task again asks Airflow again: answered 409, it waits on the same run.
    w.ok(&["tasks", "clear", &dag_id, "r1", "ok"]);
    wait_for(
        "the cleared task to end again",
        Duration::from_secs(60),
        || {
            let rows = w.json(&["tasks", "list", &dag_id, "r1", "--json"]);
            rows.iter().any(|t| {
                t["task_id"] == "ok"
                    && t["state"] == "success"
                    && t["try_number"].as_i64() == Some(2)
            })
        },
    );
    assert!(
        w.ok(&["tasks", "logs", &dag_id, "r1", "ok", "--try", "2"])
            .contains("already triggered"),
        "{}",
        log("ok")
    );
    assert_eq!(a.runs("triggerer_succeeds", &prefix).await.len(), 1);
}
