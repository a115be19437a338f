//! The `eventhost` binary. See `eventhost --help`.

mod cli;

use std::io::IsTerminal;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use cli::{Cli, LogFormat};

/// Quiet by default for the dependencies; `RUST_LOG` overrides everything.
const RUNTIME_LOG_FILTER: &str = "info,async_nats=warn,wasmtime=warn,cranelift_codegen=warn";
/// The `publish` and `tail` helpers only speak up when something is wrong.
const HELPER_LOG_FILTER: &str = "warn";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = match cli.command {
        cli::Command::Run { .. } => RUNTIME_LOG_FILTER,
        _ => HELPER_LOG_FILTER,
    };
    init_logging(cli.global.log_format, filter);

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    match cli.execute(shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Logs go to stderr so that `publish` and `tail` keep stdout for data.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// SIGINT or SIGTERM starts a graceful shutdown; a second one exits at once.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!("shutdown requested: finishing in-flight events");
    shutdown.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}
