//! The `triggerer` binary: parse the command line, run it, map failures to exit code 1.

use clap::Parser;

fn main() {
    let cli = triggerer::cli::Cli::parse();
    // The task shim runs once per task try and only waits on one child: a runtime on this
    // thread starts faster than a pool of workers (about 0.6 ms a try).
    let runtime = if cli.is_task_shim() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(error) = runtime.block_on(triggerer::cli::run(cli)) {
        eprintln!("{}", triggerer::cli::exit_message(&error));
        std::process::exit(1);
    }
}
