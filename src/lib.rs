//! triggerer: an event-driven triggerer and scheduler core with Apache Airflow's AIP-82
//! semantics. External events become asset events and queue rows in SQL; queued assets become
//! DAG runs, whose tasks an executor runs.
//!
//! # Layout
//!
//! ```text
//!  definition files --sync--> definitions (validate) --> store (dag, asset, trigger, …)
//!  triggerer: claim triggers -> supervisor (task per trigger) -> events -> writer
//!             -> ONE transaction per batch: asset_event + asset_dag_run_queue + checkpoints
//!             -> COMMIT -> only then the trigger acknowledges its source
//!  scheduler: timetables + queued assets -> dag_run (queued, + task_instance rows) -> running
//!             -> task instances whose upstreams allow it -> scheduled
//!  executor:  claim scheduled task instances (slots) -> run each try -> ONE commit per batch:
//!             try ends (fenced) + logs + downstream scheduled + finished runs
//! ```
//!
//! Modules, from the edge inwards (each depends only on those below it; see
//! `docs/architecture.md`, and `scripts/module-cycles.py` checks it):
//! - [`cli`]: the command line; the binary's edge, the only place for `anyhow`.
//! - [`service`]: a running `run`/`scheduler`/`executor`/`standalone`: starting its parts,
//!   readiness, shutdown.
//! - [`http`]: `--http`: `/health`, `/metrics`, the JSON API and its OpenAPI document, pushed
//!   events and webhooks (committed through the event writer), the web UI, API tokens.
//! - [`sync`]: writing validated definitions and aligning schedules; `sync::watch` re-syncs
//!   `--dags` on change and on SIGHUP.
//! - [`triggerer`]: the triggerer process: job and heartbeat, claiming, the
//!   [`triggerer::supervisor`] and the [`triggerer::writer`].
//! - [`executor`]: the executor process: claiming task instances up to its slots, running each
//!   try ([`executor::process`] for commands, [`executor::http`] for HTTP calls), recording
//!   how it ended, failing over dead executors' tries.
//! - [`scheduler`]: scheduling passes: time-due and asset-triggered runs, starting queued runs,
//!   retries and the task instances of runs that changed.
//! - [`definitions`]: reading and validating TOML definitions into a plan.
//! - [`registry`]: the providers built in (`builtin_providers()`), looked up by classpath.
//! - [`store`]: every SQL statement, for SQLite and PostgreSQL alike, and the migrations.
//! - [`task`]: task definitions, task-instance states, trigger rules; [`task::graph`] decides
//!   what of a run may run next and how it ends.
//! - [`timetable`]: Airflow's timetables (cron, delta, presets, data intervals) and the
//!   `schedule` field that names them: the next slot, as pure functions.
//! - [`asset_expression`]: `a & (b | c)`: parsing, evaluation, names.
//! - [`identity`]: a trigger's stable hash over canonical classpath and kwargs.
//! - [`secrets`]: `{ env = "NAME" }` references in kwargs, resolved only in the triggerer;
//!   masking of sensitive values wherever kwargs are shown; scrubbing secrets out of errors.
//! - [`names`]: what a name (asset, DAG, watcher, run id, dedup key) may be, and escaping text
//!   for a terminal. [`dag_run`]: run states and run types.
//! - [`telemetry`]: logging setup and the panic hook. [`time`]: UTC helpers shared by all.
//! - [`metrics`]: the process's Prometheus registry (DESIGN §12.1), which every service records
//!   into and `/metrics` encodes.
//!
//! Providers live in their own crates (`providers/*`) and depend only on `triggerer-sdk`.

pub mod asset_expression;
pub mod cli;
pub mod dag_run;
pub mod definitions;
pub mod executor;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod names;
pub mod registry;
pub mod scheduler;
pub mod secrets;
pub mod service;
pub mod store;
pub mod sync;
pub mod task;
pub mod telemetry;
pub mod time;
pub mod timetable;
pub mod triggerer;
