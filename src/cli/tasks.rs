//! The `tasks` and `status` commands: a run's task instances, their logs, clearing and
//! marking them, and one snapshot of the processes and the task queue.

use std::io::Write;

use anyhow::Result;

use super::args::TasksCommand;
use super::output::print_rows;
use crate::store::Store;
use crate::task::TaskInstanceState;

pub(crate) async fn dispatch(command: TasksCommand, store: &Store) -> Result<()> {
    match command {
        TasksCommand::List {
            dag_id,
            run_id,
            json,
        } => {
            let rows = store.list_task_instances(&dag_id, &run_id).await?;
            print_rows(
                json.json,
                &rows,
                &[
                    "task_id",
                    "state",
                    "try_number",
                    "operator",
                    "start_date",
                    "end_date",
                    "duration",
                    "hostname",
                ],
            )?;
        }
        TasksCommand::Logs {
            dag_id,
            run_id,
            task_id,
            try_number,
        } => {
            let log = store
                .task_log(&dag_id, &run_id, &task_id, try_number)
                .await?;
            // The output as the task wrote it, bytes and all: it is the task's, not ours.
            let mut out = std::io::stdout().lock();
            out.write_all(&log.content)?;
            out.flush()?;
        }
        TasksCommand::Clear {
            dag_id,
            run_id,
            task_ids,
            downstream,
        } => {
            let cleared = store
                .clear_task_instances(&dag_id, &run_id, &task_ids, downstream)
                .await?;
            println!(
                "cleared {} task instance(s) of {dag_id} {run_id}: {}; they run again",
                cleared.len(),
                cleared.join(", ")
            );
        }
        TasksCommand::SetState {
            dag_id,
            run_id,
            task_id,
            state,
        } => {
            let state: TaskInstanceState = state.parse()?;
            let previous = store
                .set_task_instance_state(&dag_id, &run_id, &task_id, state)
                .await?;
            println!(
                "{dag_id} {run_id} {task_id}: {} -> {state}",
                TaskInstanceState::name(previous)
            );
        }
    }
    Ok(())
}

pub(crate) async fn status(
    store: &Store,
    health_threshold: std::time::Duration,
    json: bool,
) -> Result<()> {
    let alive_since = crate::time::now()
        - chrono::Duration::from_std(health_threshold).unwrap_or(chrono::Duration::MAX);
    let status = store.status(alive_since).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("triggerers:");
    print_rows(
        false,
        &status.triggerers,
        &[
            "id",
            "hostname",
            "alive",
            "capacity_left",
            "triggers_running",
            "latest_heartbeat",
        ],
    )?;
    println!("\nexecutors:");
    print_rows(
        false,
        &status.executors,
        &[
            "id",
            "hostname",
            "alive",
            "open_slots",
            "queued_tasks",
            "running_tasks",
            "latest_heartbeat",
        ],
    )?;
    println!(
        "\ntasks: {} executable, {} starving (no open slot), {} deferred",
        status.tasks_executable, status.tasks_starving, status.deferred_tasks
    );
    let by_state: Vec<String> = status
        .task_instances
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    if !by_state.is_empty() {
        println!("task instances: {}", by_state.join(", "));
    }
    Ok(())
}
