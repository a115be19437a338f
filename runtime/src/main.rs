//! The `eventhost` binary. See `eventhost --help`.

mod cli;

use std::io::IsTerminal;

use clap::Parser;
use eventhost::host::telemetry::Exporter;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use cli::{Cli, LogFormat};

/// Quiet by default for the dependencies; `RUST_LOG` overrides everything.
const RUNTIME_LOG_FILTER: &str = "info,async_nats=warn,wasmtime=warn,cranelift_codegen=warn";
/// The `publish` and `tail` helpers only speak up when something is wrong.
const HELPER_LOG_FILTER: &str = "warn";
/// `invoke` shows the guest's own log lines, every level.
const INVOKE_LOG_FILTER: &str = "warn,guest=trace";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let (filter, otlp) = match &cli.command {
        cli::Command::Run(args) => (RUNTIME_LOG_FILTER, args.otlp_endpoint.clone()),
        cli::Command::Invoke(_) => (INVOKE_LOG_FILTER, None),
        _ => (HELPER_LOG_FILTER, None),
    };
    let exporter = match init_logging(cli.global.log_format, filter, otlp.as_deref()) {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("error: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };

    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = cli.execute(shutdown).await;
    if let Some(exporter) = exporter {
        // Blocking: the exporter sends its last batch over HTTP.
        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
    }
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr (so that `publish` and `tail` keep stdout for data), and
/// exports spans over OTLP when an endpoint is given.
fn init_logging(
    format: LogFormat,
    default_filter: &str,
    otlp: Option<&str>,
) -> anyhow::Result<Option<Exporter>> {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let fmt = match format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            // An event's span is a root, so the span list only repeated
            // the current span, doubling every line.
            .with_span_list(false)
            .boxed(),
    };
    let (exporter, otel) = match otlp {
        Some(endpoint) => {
            let (exporter, layer) = Exporter::otlp(endpoint)?;
            (Some(exporter), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    Ok(exporter)
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
