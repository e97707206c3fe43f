//! The command handlers: each command's steps against the store, the scheduler and the
//! service, and the parsing of flag values that are data (times, JSON). Errors are `anyhow`
//! here, at the binary's edge; everything called returns typed errors.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use super::args::{
    seconds, AssetsCommand, Command, DagsArgs, DagsCommand, RunsCommand, TriggersCommand,
};
use super::output::print_rows;
use crate::dag_run::DagRunState;
use crate::executor::ExecutorOptions;
use crate::http::{self, HttpOptions};
use crate::names;
use crate::registry::ProviderRegistry;
use crate::scheduler::{self, SchedulerOptions};
use crate::secrets;
use crate::service::{self, ServiceOptions};
use crate::store::{NewEvent, Origin, Store};
use crate::sync::{self, SyncOptions};
use crate::time::{isoformat, parse_rfc3339};
use crate::triggerer::TriggererOptions;

pub(crate) async fn dispatch(
    command: Command,
    store: &Store,
    registry: &ProviderRegistry,
) -> Result<()> {
    match command {
        Command::Dags(DagsCommand::Sync { paths, allow_empty }) => {
            let report = sync::sync(store, &paths, registry, SyncOptions { allow_empty }).await?;
            println!("synced {report}");
        }
        Command::Dags(DagsCommand::List(f)) => {
            let rows = store.list_dags().await?;
            print_rows(
                f.json,
                &rows,
                &[
                    "dag_id",
                    "schedule",
                    "is_paused",
                    "catchup",
                    "max_active_runs",
                    "next_dagrun",
                    "next_dagrun_create_after",
                ],
            )?;
        }
        Command::Dags(DagsCommand::Pause { dag_id }) => {
            scheduler::manual::set_paused(store, &dag_id, true).await?;
            println!("paused {dag_id}");
        }
        Command::Dags(DagsCommand::Unpause { dag_id }) => {
            scheduler::manual::set_paused(store, &dag_id, false).await?;
            println!("unpaused {dag_id}");
        }
        Command::Dags(DagsCommand::Trigger {
            dag_id,
            run_id,
            conf,
            logical_date,
        }) => {
            let conf = parse_json_object("--conf", conf.as_deref())?;
            let logical_date = parse_time_flag("--logical-date", logical_date.as_deref())?;
            let run_id =
                scheduler::manual::trigger_run(store, &dag_id, run_id, conf, logical_date).await?;
            println!("created run {run_id} for {dag_id} (queued)");
        }
        Command::Dags(DagsCommand::NextRuns {
            dag_id,
            n,
            now,
            json,
        }) => {
            let at = parse_time_flag("--now", now.as_deref())?;
            let runs: Vec<NextRun> = scheduler::next_runs(store, &dag_id, n, at)
                .await?
                .into_iter()
                .map(|info| NextRun {
                    logical_date: info.logical_date(),
                    data_interval_start: info.data_interval.start,
                    data_interval_end: info.data_interval.end,
                    run_after: info.run_after,
                })
                .collect();
            if runs.is_empty() && !json.json {
                println!("{dag_id} has no upcoming scheduled runs");
            } else {
                print_rows(
                    json.json,
                    &runs,
                    &[
                        "logical_date",
                        "data_interval_start",
                        "data_interval_end",
                        "run_after",
                    ],
                )?;
            }
        }
        Command::Dags(DagsCommand::Backfill {
            dag_id,
            from,
            to,
            reprocess,
        }) => {
            let from = parse_time_flag("--from", Some(&from))?.context("--from is required")?;
            let to = parse_time_flag("--to", Some(&to))?.context("--to is required")?;
            let timing = store.dag_timing(&dag_id).await?;
            // As Airflow does, a backfill stays within the DAG's own start and end dates; say
            // so rather than create runs the DAG could never have had.
            let (from, to) = within_dag_dates(&dag_id, from, to, &timing.restriction)?;
            let timetable = scheduler::timetable_for(&timing);
            let slots = scheduler::backfill_slots(&timetable, from, to, MAX_BACKFILL_RUNS)
                .map_err(|e| anyhow::anyhow!("cannot backfill {dag_id}: {e}"))?;
            let tty = std::io::stdout().is_terminal();
            let total = slots.len();
            let report = store
                .create_backfill_runs(&dag_id, &slots, reprocess, |done| {
                    if tty && (done % 50 == 0 || done == total) {
                        print!("\rbackfill {dag_id}: {done}/{total} slots");
                        let _ = std::io::Write::flush(&mut std::io::stdout());
                    }
                })
                .await?;
            if tty {
                println!();
            }
            scheduler::refresh_next_dagruns(store, crate::time::now()).await?;
            println!(
                "backfill {dag_id}: {} run(s) created, {} requeued, {} skipped (a run for the slot exists); \
                 the scheduler starts them within max_active_runs",
                report.created, report.requeued, report.skipped
            );
        }
        Command::Assets(AssetsCommand::List(f)) => {
            let rows = store.list_assets().await?;
            print_rows(
                f.json,
                &rows,
                &["id", "name", "uri", "watchers", "consumers"],
            )?;
        }
        Command::Assets(AssetsCommand::Events { asset, limit, json }) => {
            let rows = store.list_events(asset.as_deref(), limit).await?;
            print_rows(
                json.json,
                &rows,
                &["id", "asset", "timestamp", "source", "dedup_key", "extra"],
            )?;
        }
        Command::Assets(AssetsCommand::Emit {
            name,
            extra,
            dedup_key,
        }) => {
            let extra = parse_json_object("--extra", extra.as_deref())?;
            if let Some(key) = &dedup_key {
                names::check(key).map_err(|e| anyhow::anyhow!("--dedup-key: {e}"))?;
            }
            let asset_id = store.asset_id(&name).await?;
            let event = NewEvent {
                origin: Origin::Manual { asset_id },
                extra,
                dedup_key: dedup_key.clone(),
                checkpoint: None,
            };
            let outcome = store.write_events(&[event], None).await?;
            match outcome.first() {
                Some(Ok(n)) if *n > 0 => println!("recorded an asset event for {name}"),
                Some(Ok(_)) => println!(
                    "{name} already has an event with dedup key `{}`; nothing recorded",
                    dedup_key.unwrap_or_default()
                ),
                Some(Err(e)) => bail!("event not recorded: {e}"),
                None => bail!("event not recorded"),
            }
        }
        Command::Triggers(TriggersCommand::List {
            health_check_threshold,
            json: f,
        }) => {
            let threshold = seconds("--health-check-threshold", health_check_threshold)?;
            let mut rows = store
                .list_triggers_with(threshold, &registry.pushed_classpaths())
                .await?;
            for row in &mut rows {
                row.kwargs = secrets::mask(&row.kwargs);
            }
            print_rows(
                f.json,
                &rows,
                &[
                    "id",
                    "classpath",
                    "triggerer_id",
                    "state",
                    "assets",
                    "last_event_at",
                    "failure_count",
                    "last_error",
                ],
            )?;
        }
        Command::Runs(RunsCommand::List {
            dag_id,
            state,
            limit,
            json,
        }) => {
            let rows = store.list_runs(dag_id.as_deref(), state, limit).await?;
            print_rows(
                json.json,
                &rows,
                &[
                    "dag_id",
                    "run_id",
                    "run_type",
                    "state",
                    "logical_date",
                    "run_after",
                    "consumed_events",
                ],
            )?;
        }
        Command::Runs(RunsCommand::SetState {
            dag_id,
            run_id,
            state,
        }) => {
            let state: DagRunState = state.parse()?;
            store.finish_run(&dag_id, &run_id, state).await?;
            println!("{dag_id} {run_id}: {state}");
        }
        Command::Run(args) => {
            let triggerer = args.triggerer_options()?;
            let http = args.http.http_options(None, triggerer.health_threshold)?;
            let parts = Parts {
                triggerer: Some(triggerer),
                http,
                ..Parts::default()
            };
            serve(store, registry, args.dags, parts).await?
        }
        Command::Standalone(args) => {
            let triggerer = args.run.triggerer_options()?;
            let executor = args
                .executor
                .executor_options(args.run.heartbeat_interval, args.run.health_check_threshold)?;
            let http = args
                .run
                .http
                .http_options(Some(http::STANDALONE_ADDR), triggerer.health_threshold)?;
            let parts = Parts {
                triggerer: Some(triggerer),
                scheduler: Some(SchedulerOptions::default()),
                executor: Some(executor),
                http,
            };
            serve(store, registry, args.run.dags, parts).await?
        }
        Command::Executor(args) => {
            let executor = args
                .executor
                .executor_options(args.heartbeat_interval, args.health_check_threshold)?;
            let http = args.http.http_options(None, executor.health_threshold)?;
            let no_dags = DagsArgs {
                dags: None,
                allow_empty: false,
            };
            let parts = Parts {
                executor: Some(executor),
                http,
                ..Parts::default()
            };
            serve(store, registry, no_dags, parts).await?
        }
        Command::Tasks(command) => super::tasks::dispatch(command, store).await?,
        Command::Status {
            health_check_threshold,
            json,
        } => {
            let threshold = seconds("--health-check-threshold", health_check_threshold)?;
            super::tasks::status(store, threshold, json).await?
        }
        // Handled before the database is opened (`cli::run`).
        Command::TaskShim { .. } => bail!("task-shim runs only under the executor"),
        Command::Scheduler(args) => {
            let now = parse_time_flag("--now", args.now.as_deref())?;
            let options = SchedulerOptions {
                once: args.once,
                now,
                ..SchedulerOptions::default()
            };
            let http = args
                .http
                .http_options(None, TriggererOptions::default().health_threshold)?;
            let parts = Parts {
                scheduler: Some(options),
                http,
                ..Parts::default()
            };
            serve(store, registry, args.dags, parts).await?
        }
    }
    Ok(())
}

/// Which parts a command runs.
#[derive(Default)]
struct Parts {
    triggerer: Option<TriggererOptions>,
    scheduler: Option<SchedulerOptions>,
    executor: Option<ExecutorOptions>,
    http: Option<HttpOptions>,
}

/// Runs a service until SIGINT or SIGTERM (or, for `scheduler --once`, until nothing more is
/// due); SIGHUP re-syncs `--dags`.
async fn serve(
    store: &Store,
    registry: &ProviderRegistry,
    dags: DagsArgs,
    parts: Parts,
) -> Result<()> {
    let has_dags = dags.dags.is_some();
    let options = ServiceOptions {
        dags: dags.dags,
        sync: SyncOptions {
            allow_empty: dags.allow_empty,
        },
        triggerer: parts.triggerer,
        scheduler: parts.scheduler,
        executor: parts.executor,
        http: parts.http,
    };
    let (controls, steering) = service::controls();
    let mut signals = Signals::new()?;
    let service::Controls {
        shutdown, reload, ..
    } = controls;
    let listener = tokio::spawn(async move {
        loop {
            match signals.next().await {
                Signal::Stop => {
                    shutdown.cancel();
                    return;
                }
                Signal::Reload if has_dags => {
                    tracing::info!("SIGHUP: re-syncing the definitions");
                    let _ = reload.send(());
                }
                Signal::Reload => tracing::info!("SIGHUP: nothing to reload (no --dags)"),
            }
        }
    });
    let served = service::serve(store, registry, options, steering).await;
    listener.abort();
    Ok(served?)
}

/// What a signal asks of a running service.
enum Signal {
    /// SIGINT, SIGTERM: stop, handing triggers back.
    Stop,
    /// SIGHUP: re-read the definitions (a daemon's reload), never an unclean exit.
    Reload,
}

/// The signals a service listens to, installed once (so none is missed between two waits).
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
                term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
                hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    async fn next(&mut self) -> Signal {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.int.recv() => Signal::Stop,
                _ = self.term.recv() => Signal::Stop,
                _ = self.hup.recv() => Signal::Reload,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Signal::Stop
        }
    }
}

/// `[from, to]` narrowed to the DAG's `start_date`/`end_date`, with a note for each bound
/// moved; an error when nothing of the range is left.
fn within_dag_dates(
    dag_id: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    restriction: &crate::timetable::TimeRestriction,
) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let mut range = (from, to);
    if let Some(start) = restriction.earliest.filter(|start| from < *start) {
        if to < start {
            bail!(
                "cannot backfill {dag_id}: the range ends before the DAG's start_date {}",
                isoformat(start)
            );
        }
        println!(
            "backfill {dag_id}: --from is before the DAG's start_date; starting at {}",
            isoformat(start)
        );
        range.0 = start;
    }
    if let Some(end) = restriction.latest.filter(|end| to > *end) {
        if range.0 > end {
            bail!(
                "cannot backfill {dag_id}: the range starts after the DAG's end_date {}",
                isoformat(end)
            );
        }
        println!(
            "backfill {dag_id}: --to is after the DAG's end_date; stopping at {}",
            isoformat(end)
        );
        range.1 = end;
    }
    Ok(range)
}

/// Most runs one `dags backfill` creates; a larger range is split by the user.
const MAX_BACKFILL_RUNS: usize = 10_000;

/// One row of `dags next-runs`.
#[derive(Debug, Serialize)]
struct NextRun {
    logical_date: DateTime<Utc>,
    data_interval_start: DateTime<Utc>,
    data_interval_end: DateTime<Utc>,
    run_after: DateTime<Utc>,
}

fn parse_time_flag(flag: &str, text: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    text.map(parse_rfc3339)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

fn parse_json_object(flag: &str, text: Option<&str>) -> Result<Value> {
    let Some(text) = text else {
        return Ok(Value::Object(Default::default()));
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("{flag}: not valid JSON ({e}): {text}"))?;
    if !value.is_object() {
        bail!("{flag}: must be a JSON object such as '{{\"key\": \"value\"}}', got {text}");
    }
    if let Some(path) = names::nul_in_json(&value) {
        bail!("{flag}: `{path}` holds a NUL character (\\u0000), which the database cannot store");
    }
    if let Some(number) = inexact_integer(text) {
        bail!(
            "{flag}: the integer {number} is too large to keep exactly (JSON numbers are kept \
             as 64-bit values); write it as a string, \"{number}\""
        );
    }
    Ok(value)
}

/// The first integer literal in the JSON `text` outside 64 bits, which would be stored as a
/// rounded float. `text` is known to be valid JSON.
fn inexact_integer(text: &str) -> Option<&str> {
    let bytes = text.as_bytes();
    let (mut i, mut in_string) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            b'-' | b'0'..=b'9' if !in_string => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let literal = &text[start..i];
                let integer = !literal.contains(['.', 'e', 'E']);
                if integer && literal.parse::<i64>().is_err() && literal.parse::<u64>().is_err() {
                    return Some(literal);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_beyond_64_bits_are_found() {
        assert_eq!(
            inexact_integer(r#"{"a": 123456789012345678901234}"#),
            Some("123456789012345678901234")
        );
        assert_eq!(
            inexact_integer(r#"{"a": -9223372036854775808, "b": 18446744073709551615}"#),
            None
        );
        assert_eq!(
            inexact_integer(r#"{"a": "123456789012345678901234", "b": 1e400, "c": 1.25}"#),
            None
        );
        assert_eq!(
            inexact_integer(r#"{"a\"": 1, "b": [99999999999999999999]}"#),
            Some("99999999999999999999")
        );
    }

    #[test]
    fn json_flags_must_be_objects() {
        assert!(parse_json_object("--conf", Some("[1]")).is_err());
        assert!(parse_json_object("--conf", Some("{bad"))
            .unwrap_err()
            .to_string()
            .contains("--conf"));
        assert_eq!(
            parse_json_object("--conf", None).unwrap(),
            serde_json::json!({})
        );
    }
}
