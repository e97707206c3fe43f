//! `airflow.DagRunStateTrigger` running: polls one Airflow run's state until it is `success`
//! or `failed`, then fires once. It owns the poll loop and the [`Clients`] its provider shares
//! among triggers (one HTTP client; one [`Client`], so one token, per deployment and login). It
//! must not decide what an error means for the task (it returns it, and the supervisor backs
//! off), nor ever emit twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use triggerer_sdk::{fire_once, Event, EventTrigger, TriggerContext, TriggerError};

use crate::client::{http_client, parse_base_url, AirflowError, Client};
use crate::params::DagRunStateParams;

/// How long one request to Airflow may take, its answer included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The states in which an Airflow run is over.
pub const FINAL_STATES: &[&str] = &["success", "failed"];

/// `(base_url, username, password)`.
type Login = (String, String, String);

/// The clients of one provider's triggers: triggers that log in to the same Airflow as the
/// same user share one [`Client`], so a triggerer starting many of them logs in once.
#[derive(Default)]
pub(crate) struct Clients {
    http: Mutex<Option<reqwest::Client>>,
    by_login: Mutex<HashMap<Login, Weak<Client>>>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let logins = self
            .by_login
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("Clients").field("logins", &logins).finish()
    }
}

impl Clients {
    /// The client for `params`' login, made when no live trigger holds one.
    fn get(&self, params: &DagRunStateParams) -> Result<Arc<Client>, AirflowError> {
        let login = (
            params.base_url.clone(),
            params.username.clone(),
            params.password.clone(),
        );
        let mut by_login = self.by_login.lock().unwrap_or_else(PoisonError::into_inner);
        by_login.retain(|_, client| client.strong_count() > 0);
        if let Some(client) = by_login.get(&login).and_then(Weak::upgrade) {
            return Ok(client);
        }
        let http = {
            let mut http = self.http.lock().unwrap_or_else(PoisonError::into_inner);
            match &*http {
                Some(client) => client.clone(),
                None => http.insert(http_client()?).clone(),
            }
        };
        let client = Arc::new(Client::with_http(
            http,
            parse_base_url(&params.base_url)?,
            params.username.clone(),
            params.password.clone(),
            REQUEST_TIMEOUT,
        )?);
        by_login.insert(login, Arc::downgrade(&client));
        Ok(client)
    }
}

/// One running `airflow.DagRunStateTrigger`.
pub struct DagRunStateTrigger {
    clients: Arc<Clients>,
    params: DagRunStateParams,
}

impl std::fmt::Debug for DagRunStateTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DagRunStateTrigger")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl DagRunStateTrigger {
    pub(crate) fn new(clients: Arc<Clients>, params: DagRunStateParams) -> Self {
        Self { clients, params }
    }
}

#[async_trait]
impl EventTrigger for DagRunStateTrigger {
    async fn run(self: Box<Self>, ctx: TriggerContext) -> Result<(), TriggerError> {
        let failed = |e: AirflowError| TriggerError::failed(e.to_string());
        let client = self.clients.get(&self.params).map_err(failed)?;
        let DagRunStateParams {
            dag_id,
            dag_run_id,
            poll_interval,
            ..
        } = self.params;
        loop {
            let state = tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Ok(()),
                state = client.dag_run_state(&dag_id, &dag_run_id) => state.map_err(failed)?,
            };
            if FINAL_STATES.contains(&state.as_str()) {
                let event = Event::new(
                    json!({ "dag_id": dag_id, "dag_run_id": dag_run_id, "state": state }),
                    format!("airflow:{dag_id}:{dag_run_id}:{state}"),
                );
                return fire_once(ctx, event).await;
            }
            tracing::debug!(%dag_id, %dag_run_id, %state, "Airflow run not finished yet");
            tokio::select! {
                biased;
                () = ctx.cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(poll_interval) => {}
            }
        }
    }
}
