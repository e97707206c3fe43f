//! The command line (README "Command line"): the binary's edge, the only place for `anyhow`.
//! [`args`] is its shape, [`commands`] the handlers, [`output`] what it prints.

mod args;
mod commands;
mod output;
mod tasks;

use anyhow::{Context, Result};

pub use args::Cli;
pub use output::exit_message;

use crate::registry::builtin_providers;
use crate::secrets;
use crate::store::Store;
use crate::telemetry;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> Result<()> {
    // The shim runs once per task try: no logging set-up, no database.
    if let args::Command::TaskShim { parent, argv } = &cli.command {
        std::process::exit(crate::executor::process::shim(*parent, argv).await);
    }
    telemetry::init(cli.log_format);
    telemetry::install_panic_hook();
    let store = Store::connect(&cli.database_url).await.with_context(|| {
        format!(
            "cannot open database {}",
            secrets::redact_uri(&cli.database_url)
        )
    })?;
    let registry = builtin_providers();
    let result = commands::dispatch(cli.command, &store, &registry).await;
    store.close().await;
    result
}
