//! triggerer: an event-driven triggerer and scheduler core with Apache Airflow's AIP-82
//! semantics. External events become asset events and queue rows in SQL; queued assets become
//! DAG runs.
//!
//! # Layout
//!
//! ```text
//!  definition files --dags sync--> definitions --> store (dag, asset, trigger, asset_watcher, …)
//!  triggerer: claim triggers -> supervisor (task per trigger) -> events -> writer
//!             -> ONE transaction per batch: asset_event + asset_dag_run_queue + checkpoints
//!             -> COMMIT -> only then the trigger acknowledges its source
//!  scheduler: queued assets + asset expressions -> dag_run (queued) -> running
//! ```
//!
//! - [`cli`]: the command line (DESIGN §3); the binary's edge, the only place for `anyhow`.
//! - [`definitions`]: reading and validating TOML definitions, and syncing them as one
//!   reconciliation; `definitions::watch` re-syncs on change (`--dags`).
//! - [`asset_expression`]: `a & (b | c)`: parsing, evaluation, names.
//! - [`identity`]: a trigger's stable hash over canonical classpath and kwargs.
//! - [`names`]: what a name (asset, DAG, watcher, run id, dedup key) may be, and escaping text
//!   for a terminal.
//! - [`registry`]: the providers built in (`builtin_providers()`), looked up by classpath.
//! - [`secrets`]: `{ env = "NAME" }` references in kwargs, resolved only in the triggerer, and
//!   masking of sensitive values wherever kwargs are shown.
//! - [`triggerer`]: the triggerer process: job and heartbeat, claiming, the
//!   [`triggerer::supervisor`] and the [`triggerer::writer`].
//! - [`scheduler`]: scheduling passes: asset-triggered runs, starting queued runs.
//! - [`store`]: every SQL statement, for SQLite and PostgreSQL alike, and the migrations.
//! - [`timetable`]: Airflow's timetables (cron, delta, presets, data intervals): the next slot.
//! - [`telemetry`]: logging setup. [`time`]: UTC helpers shared by all.
//!
//! Providers live in their own crates (`providers/*`) and depend only on `triggerer-sdk`.

pub mod asset_expression;
pub mod cli;
pub mod dag_run;
pub mod definitions;
pub mod identity;
pub mod names;
pub mod registry;
pub mod scheduler;
pub mod secrets;
pub mod service;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod time;
pub mod timetable;
pub mod triggerer;
