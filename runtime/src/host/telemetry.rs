//! OpenTelemetry export over OTLP/HTTP, off unless an endpoint is given.
//!
//! Without `--otlp-endpoint` nothing here runs and nothing tries to connect
//! anywhere: traces are then only in the logs (the `trace_id`/`span_id`
//! fields of each event span). With it, every event span is exported, as a
//! child of the input event's `traceparent`, and the ids it is exported with
//! are the ones emitted events carry, so a collector shows a chain of
//! handlers as one trace.

use anyhow::{Context, Result};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// An exporting pipeline. Call [`Exporter::shutdown`] before exit so the
/// last batch of spans is sent.
pub struct Exporter {
    provider: SdkTracerProvider,
}

impl Exporter {
    /// Sends spans to the OTLP/HTTP collector at `endpoint` (for example
    /// `http://127.0.0.1:4318`; `/v1/traces` is appended unless present).
    pub fn otlp<S>(endpoint: &str) -> Result<(Self, impl Layer<S>)>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1/traces") {
            base.to_string()
        } else {
            format!("{base}/v1/traces")
        };
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .build()
            .with_context(|| format!("setting up OTLP export to {endpoint}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name("eventhost").build())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("eventhost"));
        Ok((Exporter { provider }, layer))
    }

    /// Flushes what is buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("warning: OTLP export did not shut down cleanly: {err}");
        }
    }
}
