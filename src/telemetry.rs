//! Logging setup: human-readable by default, one JSON object per line with `--log-format json`
//! or `TRIGGERER_LOG_FORMAT=json`; the level from `RUST_LOG` (default `info`). Also the panic
//! hook, since a panic's message is printed before anything else could scrub it.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second init (tests) is harmless; keep the first.
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Replaces Rust's panic hook with one that prints the same line, with the secrets of the
/// running triggers removed from the message (a provider's panic may quote its settings; the
/// supervisor records it scrubbed, but the default hook printed it first, raw). Backtraces
/// are printed as the default hook would, when `RUST_BACKTRACE` asks for them.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "Box<dyn Any>".into());
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_default();
        eprintln!(
            "thread '{}' panicked at {location}:\n{}",
            thread.name().unwrap_or("<unnamed>"),
            crate::secrets::scrub_running(&message)
        );
        let backtrace = std::backtrace::Backtrace::capture();
        if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
            eprintln!("stack backtrace:\n{backtrace}");
        }
    }));
}
