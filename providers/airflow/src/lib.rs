//! The `airflow` provider: the bridge to a real Apache Airflow 3 deployment (DESIGN §11). It
//! owns a small client of Airflow's public REST API ([`Client`]: log in for a JWT, trigger a DAG
//! run under a chosen `dag_run_id`, read a run's state) and the one-shot trigger
//! `airflow.DagRunStateTrigger`, on which a task that triggered an Airflow run defers until that
//! run is over. It must not depend on the triggerer core, decide task states, or show a
//! password anywhere (errors, `Debug`, logs).
//!
//! Classpath: `airflow.DagRunStateTrigger` only. Airflow's own `DagStateTrigger` (in
//! `airflow.triggers.external_task`) is no alias: it reads Airflow's metadata database for
//! runs of the same deployment, by logical dates or run ids and a list of states; this one asks
//! a remote Airflow's API for one run.
//!
//! | kwarg           | type   | default  | meaning |
//! |-----------------|--------|----------|---------|
//! | `base_url`      | string | required | Airflow's API server, `http://airflow:8080` (with the path prefix Airflow is served under, if any). Userinfo in it is ignored (masked in messages): the JWT is the only credential sent. |
//! | `dag_id`        | string | required | The DAG in Airflow. |
//! | `dag_run_id`    | string | required | The run in Airflow (any characters; each URL path segment is percent-encoded). |
//! | `username`      | string | required | The Airflow user to log in as (`POST /auth/token`). |
//! | `password`      | string | required | Its password; a sensitive kwarg (masked wherever kwargs are shown), best given as `{ env = "NAME" }`, which the core resolves before it builds the trigger. |
//! | `poll_interval` | string or number | `"5s"` | How often to ask for the run's state: a duration (`5s`, `1m`) or seconds; shorter than 1 s counts as 1 s. |
//!
//! The trigger polls `GET /api/v2/dags/{dag_id}/dagRuns/{dag_run_id}` (the first poll at once)
//! until the run's `state` is `success` or `failed`, then fires once with
//! [`triggerer_sdk::fire_once`]: payload `{"dag_id", "dag_run_id", "state"}`, dedup key
//! `airflow:{dag_id}:{dag_run_id}:{state}`. Refused credentials, an unknown DAG or run (404), an
//! unexpected status and network errors all end the run with [`TriggerError::Failed`] naming
//! the cause: the core restarts it with backoff and, past its limit, fails the task with that
//! reason. Triggers of one provider that log in to the same Airflow as the same user share one
//! client and so one token, fetched again once when a call is answered 401.
//!
//! [`TriggerError::Failed`]: triggerer_sdk::TriggerError::Failed

mod client;
mod params;
mod trigger;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use triggerer_sdk::{EventTrigger, KwargsError, Refusal, TriggerKind, TypedProvider};

pub use client::{http_client, parse_base_url, AirflowError, Client, Triggered, BODY_EXCERPT};
pub use params::{DagRunStateParams, DEFAULT_POLL_INTERVAL, MIN_POLL_INTERVAL};
pub use trigger::{DagRunStateTrigger, FINAL_STATES, REQUEST_TIMEOUT};

use trigger::Clients;

/// The classpaths of [`DagRunStateProvider`], canonical first.
pub const CLASSPATHS: &[&str] = &["airflow.DagRunStateTrigger"];

/// The `airflow` provider. One per process: its triggers share HTTP connections and tokens.
#[derive(Debug, Default)]
pub struct DagRunStateProvider {
    clients: Arc<Clients>,
}

impl DagRunStateProvider {
    pub fn new() -> Self {
        Self::default()
    }
}

impl TypedProvider for DagRunStateProvider {
    type Params = DagRunStateParams;
    const NAME: &'static str = "airflow";
    const KIND: TriggerKind = TriggerKind::OneShot;
    const CLASSPATHS: &'static [&'static str] = CLASSPATHS;
    const HINTS: &'static [(&'static str, &'static str)] = params::HINTS;
    const REFUSED: &'static [Refusal] = &[Refusal {
        kwargs: &["conn_id", "airflow_conn_id", "http_conn_id"],
        instead: "Airflow connections are not available here: set base_url, username and \
                  password (as { env = \"NAME\" })",
    }];

    fn check(&self, params: &DagRunStateParams) -> Result<(), KwargsError> {
        params.check()
    }

    fn build_trigger(
        &self,
        params: DagRunStateParams,
    ) -> Result<Box<dyn EventTrigger>, KwargsError> {
        Ok(Box::new(DagRunStateTrigger::new(
            self.clients.clone(),
            params,
        )))
    }
}
