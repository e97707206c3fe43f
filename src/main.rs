//! The `triggerer` binary: parse the command line, run it, map failures to exit code 1.

use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = triggerer::cli::Cli::parse();
    if let Err(error) = triggerer::cli::run(cli).await {
        eprintln!("{}", triggerer::cli::exit_message(&error));
        std::process::exit(1);
    }
}
