//! The command line (DESIGN §3): argument parsing and the command handlers, printing tables or
//! `--json` arrays. This is the binary's edge, so errors are `anyhow` here; everything below it
//! returns typed errors.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use triggerer_sdk::CancellationToken;

use crate::definitions::{self, watch, SyncError, SyncOptions};
use crate::names;
use crate::registry::{builtin_providers, ProviderRegistry};
use crate::scheduler::{self, SchedulerOptions};
use crate::secrets;
use crate::store::{ManualRun, NewEvent, Origin, Store};
use crate::telemetry::{self, LogFormat};
use crate::time::{isoformat, parse_rfc3339};
use crate::triggerer::{self, TriggererOptions};

#[derive(Debug, Parser)]
#[command(
    name = "triggerer",
    version,
    about = "Event-driven triggerer and scheduler (Airflow AIP-82 semantics)"
)]
pub struct Cli {
    /// Database URL: sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(
        long,
        global = true,
        env = "TRIGGERER_DATABASE_URL",
        default_value = "sqlite://triggerer.db"
    )]
    pub database_url: String,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "TRIGGERER_LOG_FORMAT",
        value_enum,
        default_value = "human"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// DAG definitions and runs.
    #[command(subcommand)]
    Dags(DagsCommand),
    /// Assets and their events.
    #[command(subcommand)]
    Assets(AssetsCommand),
    /// Watcher triggers.
    #[command(subcommand)]
    Triggers(TriggersCommand),
    /// DAG runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Run the triggerer process.
    Run(RunArgs),
    /// Run the scheduler.
    Scheduler(SchedulerArgs),
    /// Run triggerer and scheduler in one process.
    Standalone(RunArgs),
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print one JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DagsCommand {
    /// Parse, validate and write definition files (all-or-nothing).
    Sync {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Accept finding no definition file, or removing every asset and DAG now defined.
        #[arg(long)]
        allow_empty: bool,
    },
    /// List DAGs.
    List(JsonFlag),
    /// Pause a DAG: no new runs, no queued events.
    Pause { dag_id: String },
    /// Unpause a DAG.
    Unpause { dag_id: String },
    /// Print the next N runs the timetable will create.
    NextRuns {
        dag_id: String,
        #[arg(short = 'n', long = "num", default_value_t = 5)]
        n: usize,
        /// Compute as of this RFC 3339 time instead of from the stored next slot.
        #[arg(long)]
        now: Option<String>,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Create backfill runs for every slot with a logical date in [--from, --to].
    Backfill {
        dag_id: String,
        /// RFC 3339 time.
        #[arg(long)]
        from: String,
        /// RFC 3339 time.
        #[arg(long)]
        to: String,
        /// Queue finished runs of the range again instead of skipping them.
        #[arg(long)]
        reprocess: bool,
    },
    /// Create a manual run.
    Trigger {
        dag_id: String,
        #[arg(long)]
        run_id: Option<String>,
        /// Run configuration, a JSON object.
        #[arg(long)]
        conf: Option<String>,
        /// RFC 3339 time.
        #[arg(long)]
        logical_date: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AssetsCommand {
    /// List assets.
    List(JsonFlag),
    /// List asset events, oldest first.
    Events {
        #[arg(long)]
        asset: Option<String>,
        /// Show the newest N events (0 = all).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Record an asset event by hand.
    Emit {
        name: String,
        /// The event's extra, a JSON object.
        #[arg(long)]
        extra: Option<String>,
        /// Events with the same key for the same asset are recorded once.
        #[arg(long)]
        dedup_key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TriggersCommand {
    /// List triggers with owner, state, last event and last error.
    List {
        /// A triggerer silent for longer counts as dead (its triggers show as `orphaned`);
        /// use the value the triggerers run with.
        #[arg(long, env = "TRIGGERER_HEALTH_CHECK_THRESHOLD", default_value_t = 30.0)]
        health_check_threshold: f64,
        #[command(flatten)]
        json: JsonFlag,
    },
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Mark a queued or running run finished (what an executor reports), freeing its place
    /// under max_active_runs.
    SetState {
        dag_id: String,
        run_id: String,
        #[arg(value_parser = ["success", "failed"])]
        state: String,
    },
    /// List DAG runs, oldest first.
    List {
        #[arg(long = "dag")]
        dag_id: Option<String>,
        #[arg(long, value_parser = ["queued", "running", "success", "failed"])]
        state: Option<String>,
        /// Show the newest N runs (0 = all).
        #[arg(long, default_value_t = 100)]
        limit: u64,
        #[command(flatten)]
        json: JsonFlag,
    },
}

/// `--dags PATH` and how its syncs treat removals.
#[derive(Debug, Args)]
pub struct DagsArgs {
    /// Sync definitions from PATH at start, whenever they change, and on SIGHUP.
    #[arg(long)]
    pub dags: Option<PathBuf>,
    /// With --dags: accept finding no definition file, or removing every asset and DAG.
    #[arg(long, requires = "dags")]
    pub allow_empty: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub dags: DagsArgs,
    /// Most triggers this process runs.
    #[arg(long, env = "TRIGGERER_CAPACITY", default_value_t = 1000)]
    pub capacity: usize,
    /// Most triggers claimed in one assignment loop (Airflow's `max_trigger_to_select_per_loop`),
    /// so one process starting first does not take everything from the others.
    #[arg(long, env = "TRIGGERER_MAX_TRIGGERS_PER_LOOP", default_value_t = 50)]
    pub max_triggers_per_loop: usize,
    /// Seconds between heartbeats of this process's job row.
    #[arg(long, env = "TRIGGERER_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    pub heartbeat_interval: f64,
    /// Seconds without a heartbeat after which a triggerer counts as dead and its triggers
    /// are claimed by others.
    #[arg(long, env = "TRIGGERER_HEALTH_CHECK_THRESHOLD", default_value_t = 30.0)]
    pub health_check_threshold: f64,
}

impl RunArgs {
    fn triggerer_options(&self) -> Result<TriggererOptions> {
        if self.capacity == 0 {
            bail!("--capacity: must be at least 1");
        }
        if self.max_triggers_per_loop == 0 {
            bail!("--max-triggers-per-loop: must be at least 1");
        }
        Ok(TriggererOptions {
            capacity: self.capacity,
            max_triggers_per_loop: self.max_triggers_per_loop,
            heartbeat_interval: seconds("--heartbeat-interval", self.heartbeat_interval)?,
            health_threshold: seconds("--health-check-threshold", self.health_check_threshold)?,
            ..TriggererOptions::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub dags: DagsArgs,
    /// Run passes until nothing more is due, then exit.
    #[arg(long)]
    pub once: bool,
    /// Freeze the clock at this RFC 3339 time.
    #[arg(long)]
    pub now: Option<String>,
}

/// A positive, finite number of seconds from `flag`.
fn seconds(flag: &str, v: f64) -> Result<std::time::Duration> {
    if v.is_finite() && v > 0.0 {
        Ok(std::time::Duration::from_secs_f64(v))
    } else {
        bail!("{flag}: must be a positive number of seconds, got {v}")
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    telemetry::init(cli.log_format);
    telemetry::install_panic_hook();
    let store = Store::connect(&cli.database_url).await.with_context(|| {
        format!(
            "cannot open database {}",
            secrets::redact_uri(&cli.database_url)
        )
    })?;
    let registry = builtin_providers();
    let result = dispatch(cli.command, &store, &registry).await;
    store.close().await;
    result
}

async fn dispatch(command: Command, store: &Store, registry: &ProviderRegistry) -> Result<()> {
    match command {
        Command::Dags(DagsCommand::Sync { paths, allow_empty }) => {
            let report =
                definitions::sync(store, &paths, registry, SyncOptions { allow_empty }).await?;
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
            store.set_paused(&dag_id, true).await?;
            println!("paused {dag_id}");
        }
        Command::Dags(DagsCommand::Unpause { dag_id }) => {
            store.set_paused(&dag_id, false).await?;
            // Its schedule continues from now, not from where it stood when paused.
            scheduler::refresh_next_dagruns(store, crate::time::now()).await?;
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
            let timetable = scheduler::timetable_for(&store.dag_timing(&dag_id).await?);
            let data_interval =
                timetable.infer_manual_data_interval(logical_date.unwrap_or_else(crate::time::now));
            let run = ManualRun {
                dag_id: dag_id.clone(),
                run_id,
                conf,
                logical_date,
                data_interval: Some(data_interval),
            };
            let run_id = store.create_manual_run(&run).await?;
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
            let mut rows = store.list_triggers(threshold).await?;
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
            let rows = store
                .list_runs(dag_id.as_deref(), state.as_deref(), limit)
                .await?;
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
            store.finish_run(&dag_id, &run_id, &state).await?;
            println!("{dag_id} {run_id}: {state}");
        }
        Command::Run(args) => {
            let options = args.triggerer_options()?;
            serve(store, registry, args.dags, Some(options), None).await?
        }
        Command::Standalone(args) => {
            let options = args.triggerer_options()?;
            serve(
                store,
                registry,
                args.dags,
                Some(options),
                Some(SchedulerOptions::default()),
            )
            .await?
        }
        Command::Scheduler(args) => {
            let now = parse_time_flag("--now", args.now.as_deref())?;
            let options = SchedulerOptions {
                once: args.once,
                now,
                ..SchedulerOptions::default()
            };
            serve(store, registry, args.dags, None, Some(options)).await?
        }
    }
    Ok(())
}

/// How often a running process checks that its SQLite file is still the one it opened.
const DATABASE_FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs a triggerer, a scheduler, or both (whichever has options), until SIGINT or
/// SIGTERM — or, for `scheduler --once`, until nothing more is due. SIGHUP re-syncs `--dags`.
async fn serve(
    store: &Store,
    registry: &ProviderRegistry,
    dags: DagsArgs,
    triggerer_options: Option<TriggererOptions>,
    scheduler_options: Option<SchedulerOptions>,
) -> Result<()> {
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
    let reload = dags.dags.is_some().then_some(reload_tx);
    if let Some(path) = dags.dags {
        let options = SyncOptions {
            allow_empty: dags.allow_empty,
        };
        let applied = watch::initial_sync(store, &path, registry, options).await?;
        tasks.spawn({
            let (store, registry, shutdown) = (store.clone(), registry.clone(), shutdown.clone());
            async move {
                watch::watch(store, path, registry, options, applied, reload_rx, shutdown).await;
                Ok(())
            }
        });
    }
    tasks.spawn({
        let (store, shutdown) = (store.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(DATABASE_FILE_CHECK);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = every.tick() => store.check_database_file()?,
                }
            }
        }
    });
    let committed = Arc::new(Notify::new());
    let once = scheduler_options.as_ref().is_some_and(|o| o.once);
    if let Some(options) = triggerer_options {
        tasks.spawn(triggerer::run(
            store.clone(),
            registry.clone(),
            options,
            shutdown.clone(),
            committed.clone(),
        ));
    }
    let mut scheduler_task = scheduler_options.map(|options| {
        tokio::spawn(scheduler::run(
            store.clone(),
            options,
            shutdown.clone(),
            committed.clone(),
        ))
    });

    let mut signals = Signals::new()?;
    let mut failure: Option<anyhow::Error> = None;
    loop {
        tokio::select! {
            signal = signals.next() => match signal {
                Signal::Stop => break,
                Signal::Reload => match &reload {
                    Some(reload) => {
                        tracing::info!("SIGHUP: re-syncing the definitions");
                        let _ = reload.send(());
                    }
                    None => tracing::info!("SIGHUP: nothing to reload (no --dags)"),
                },
            },
            done = async { scheduler_task.as_mut().expect("guarded by the if").await }, if scheduler_task.is_some() => {
                scheduler_task = None;
                match done {
                    Ok(Ok(())) if once => break,
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => { failure = Some(e.into()); break }
                    Err(e) => { failure = Some(anyhow::anyhow!("scheduler task failed: {e}")); break }
                }
            }
            Some(done) = tasks.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => { failure = Some(e.into()); break }
                Err(e) => { failure = Some(anyhow::anyhow!("task failed: {e}")); break }
            },
        }
    }
    shutdown.cancel();
    if let Some(task) = scheduler_task {
        if let Ok(Err(e)) = task.await {
            failure.get_or_insert(e.into());
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(e)) = done {
            failure.get_or_insert(e.into());
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
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

/// Prints `rows` as one JSON array, or as a table of `columns`.
fn print_rows<T: Serialize>(json: bool, rows: &[T], columns: &[&str]) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(rows)?);
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let value = serde_json::to_value(row).unwrap_or(Value::Null);
            columns
                .iter()
                .map(|c| cell(value.get(*c).unwrap_or(&Value::Null)))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = columns.iter().map(|c| c.len()).collect();
    let max_width = if std::io::stdout().is_terminal() {
        60
    } else {
        usize::MAX
    };
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count()).min(max_width);
        }
    }
    let line = |items: &[String]| {
        items
            .iter()
            .zip(&widths)
            .map(|(s, w)| {
                let s: String = s.chars().take(*w).collect();
                format!("{s:<w$}")
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!(
        "{}",
        line(&columns.iter().map(|c| c.to_string()).collect::<Vec<_>>())
    );
    for row in &cells {
        println!("{}", line(row));
    }
    Ok(())
}

fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => match s.parse::<DateTime<Utc>>() {
            Ok(t) => isoformat(t),
            // A name from before names were checked, a payload, an error text: never raw.
            Err(_) => names::escape_control(s).into_owned(),
        },
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Maps a failure to what the process prints as it exits: definition errors as their
/// `file:line: message` lines; anything else as `error: ` and its chain of causes, each cause
/// once (our errors already quote their source's text, so `{:#}` printed it up to three times).
pub fn exit_message(error: &anyhow::Error) -> String {
    if let Some(SyncError::Invalid(errors)) = error.downcast_ref::<SyncError>() {
        return errors.to_string();
    }
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    format!("error: {}", names::escape_control(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cells_escape_control_characters() {
        assert_eq!(
            cell(&serde_json::json!("a\u{1b}[2Jb\nc")),
            "a\\u{1b}[2Jb\\nc"
        );
        assert_eq!(cell(&serde_json::json!(["x\ty", "z"])), "x\\ty,z");
        assert_eq!(cell(&serde_json::json!("plain")), "plain");
    }

    #[test]
    fn exit_messages_print_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let error = anyhow::Error::new(io)
            .context("error communicating with database: Connection refused")
            .context("cannot open database postgres://h/db");
        assert_eq!(
            exit_message(&error),
            "error: cannot open database postgres://h/db: error communicating with database: Connection refused"
        );
    }

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
