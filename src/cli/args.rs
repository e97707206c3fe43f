//! The command line's shape (README "Command line"): every command, flag and default, as clap
//! reads them, and the checks of flag values that need no database. Nothing here runs.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::dag_run::DagRunState;
use crate::executor::ExecutorOptions;
use crate::http::{ApiTokens, HttpOptions};
use crate::telemetry::LogFormat;
use crate::triggerer::TriggererOptions;

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

impl Cli {
    /// Whether this is the executor's `task-shim`, which runs no service and opens no database.
    pub fn is_task_shim(&self) -> bool {
        matches!(self.command, Command::TaskShim { .. })
    }
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
    /// Run the executor: runs scheduled task instances in its slots.
    Executor(ExecutorArgs),
    /// Run triggerer, scheduler and executor in one process.
    Standalone(StandaloneArgs),
    /// Task instances of a run: list, logs, clear, mark.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// One snapshot of triggerers, executors and the task queue.
    Status {
        /// A process silent for longer counts as dead; use the value the processes run with.
        #[arg(long, env = "TRIGGERER_HEALTH_CHECK_THRESHOLD", default_value_t = 30.0)]
        health_check_threshold: f64,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// What the executor runs each task command under (its process group's keeper); not for
    /// people.
    #[command(name = "task-shim", hide = true)]
    TaskShim {
        /// The executor's pid: when it dies, the task's process group is killed.
        #[arg(long)]
        parent: u32,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
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
pub enum TasksCommand {
    /// List a run's task instances, in definition order.
    List {
        dag_id: String,
        run_id: String,
        #[command(flatten)]
        json: JsonFlag,
    },
    /// Print a try's log (default: the latest try).
    Logs {
        dag_id: String,
        run_id: String,
        task_id: String,
        /// The try number, from 1.
        #[arg(long = "try")]
        try_number: Option<u32>,
    },
    /// Run task instances again: the named ones (all when none is named), with --downstream
    /// also every task below them. The run goes back to running.
    Clear {
        dag_id: String,
        run_id: String,
        task_ids: Vec<String>,
        /// Also clear the tasks downstream of the named ones.
        #[arg(long)]
        downstream: bool,
    },
    /// Mark a task instance success or failed; the run is evaluated again.
    SetState {
        dag_id: String,
        run_id: String,
        task_id: String,
        #[arg(value_parser = ["success", "failed"])]
        state: String,
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
        #[arg(long, value_enum)]
        state: Option<DagRunState>,
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

/// `--http ADDR:PORT` and who may call it (DESIGN §12).
#[derive(Debug, Args)]
pub struct HttpArgs {
    /// Serve /health, /metrics, the JSON API, webhooks and the web UI on ADDR:PORT (`off`: not
    /// at all). `standalone` serves 127.0.0.1:8280 unless told otherwise; the others serve
    /// nothing. A non-loopback address needs API tokens.
    #[arg(long, env = "TRIGGERER_HTTP", value_name = "ADDR:PORT")]
    pub http: Option<String>,
    /// A file of API tokens, one `name:scope:token` per line (scope `read` or `write`), in
    /// addition to those of the TRIGGERER_API_TOKENS variable (comma-separated).
    #[arg(long, env = "TRIGGERER_API_TOKENS_FILE", value_name = "PATH")]
    pub api_tokens_file: Option<PathBuf>,
}

impl HttpArgs {
    /// The server's options: `None` when `--http` is off (or not given and `default` is none).
    pub(crate) fn http_options(
        &self,
        default: Option<&str>,
        health_threshold: std::time::Duration,
    ) -> Result<Option<HttpOptions>> {
        let is_default = self.http.is_none();
        let Some(addr) = self.http.as_deref().or(default) else {
            return Ok(None);
        };
        if addr.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let addr: std::net::SocketAddr = addr.parse().map_err(|_| {
            anyhow::anyhow!(
                "--http: expected ADDR:PORT such as 127.0.0.1:8280 or 0.0.0.0:8280 (or `off`), got `{}`",
                addr.escape_default()
            )
        })?;
        let env = std::env::var("TRIGGERER_API_TOKENS").ok();
        let tokens = ApiTokens::load(env.as_deref(), self.api_tokens_file.as_deref())?;
        Ok(Some(HttpOptions {
            addr,
            tokens,
            health_threshold,
            is_default,
        }))
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub dags: DagsArgs,
    #[command(flatten)]
    pub http: HttpArgs,
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
    pub(crate) fn triggerer_options(&self) -> Result<TriggererOptions> {
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

/// The executor's slots and shutdown, shared by `executor` and `standalone`.
#[derive(Debug, Args)]
pub struct ExecutorFlags {
    /// Most task tries run at once (executor slots).
    #[arg(long, env = "TRIGGERER_PARALLELISM", default_value_t = 32)]
    pub parallelism: usize,
    /// Seconds running tries may go on after SIGTERM before they are killed and handed back.
    #[arg(long, env = "TRIGGERER_GRACE_PERIOD", default_value_t = 30.0)]
    pub grace_period: f64,
}

impl ExecutorFlags {
    pub(crate) fn executor_options(
        &self,
        heartbeat_interval: f64,
        health_check_threshold: f64,
    ) -> Result<ExecutorOptions> {
        if self.parallelism == 0 {
            bail!("--parallelism: must be at least 1");
        }
        Ok(ExecutorOptions {
            parallelism: self.parallelism,
            grace_period: seconds("--grace-period", self.grace_period)?,
            heartbeat_interval: seconds("--heartbeat-interval", heartbeat_interval)?,
            health_threshold: seconds("--health-check-threshold", health_check_threshold)?,
            ..ExecutorOptions::default()
        })
    }
}

#[derive(Debug, Args)]
pub struct ExecutorArgs {
    #[command(flatten)]
    pub executor: ExecutorFlags,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Seconds between heartbeats of this process's job row.
    #[arg(long, env = "TRIGGERER_HEARTBEAT_INTERVAL", default_value_t = 5.0)]
    pub heartbeat_interval: f64,
    /// Seconds without a heartbeat after which an executor counts as dead and its running
    /// tries are failed over (retried while retries remain).
    #[arg(long, env = "TRIGGERER_HEALTH_CHECK_THRESHOLD", default_value_t = 30.0)]
    pub health_check_threshold: f64,
}

#[derive(Debug, Args)]
pub struct StandaloneArgs {
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub executor: ExecutorFlags,
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    #[command(flatten)]
    pub dags: DagsArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Run passes until nothing more is due, then exit.
    #[arg(long)]
    pub once: bool,
    /// Freeze the clock at this RFC 3339 time.
    #[arg(long)]
    pub now: Option<String>,
}

/// A positive, finite number of seconds from `flag`.
pub(crate) fn seconds(flag: &str, v: f64) -> Result<std::time::Duration> {
    if v.is_finite() && v > 0.0 {
        Ok(std::time::Duration::from_secs_f64(v))
    } else {
        bail!("{flag}: must be a positive number of seconds, got {v}")
    }
}
