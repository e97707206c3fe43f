//! What a user asks of the scheduler by hand — a manual run, a pause or an unpause — decided
//! once for every caller (the command line and the HTTP API). It owns the decisions a manual
//! request implies (a manual run's data interval, a resumed schedule continuing from now); the
//! store writes them.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::dag_run::DagRunType;
use crate::store::{ManualRun, Store, StoreError};

/// Creates a queued manual run of `dag_id` (Airflow's `dags trigger`); returns its run id.
/// Without `logical_date` the run is for now; its data interval is the DAG's timetable's
/// inference for a manual run.
pub async fn trigger_run(
    store: &Store,
    dag_id: &str,
    run_id: Option<String>,
    conf: Value,
    logical_date: Option<DateTime<Utc>>,
) -> Result<String, StoreError> {
    let timetable = super::timetable_for(&store.dag_timing(dag_id).await?);
    let data_interval =
        timetable.infer_manual_data_interval(logical_date.unwrap_or_else(crate::time::now));
    let run_id = store
        .create_manual_run(&ManualRun {
            dag_id: dag_id.to_string(),
            run_id,
            conf,
            logical_date,
            data_interval: Some(data_interval),
        })
        .await?;
    crate::metrics::record_dag_runs_created(DagRunType::Manual.as_str(), 1);
    Ok(run_id)
}

/// Pauses or unpauses `dag_id`. An unpaused DAG's schedule continues from now, not from where
/// it stood when paused.
pub async fn set_paused(store: &Store, dag_id: &str, paused: bool) -> Result<(), StoreError> {
    store.set_paused(dag_id, paused).await?;
    if !paused {
        super::refresh_next_dagruns(store, crate::time::now()).await?;
    }
    Ok(())
}
