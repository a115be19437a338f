//! The function host as a whole: connect, declare streams, load every
//! handler in the plugins directory, run them until shutdown.
//!
//! A handler that cannot load (bad manifest, broken component, a subject no
//! stream captures) is reported and skipped; the others still run.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;
use crate::dispatch::Dispatcher;
use crate::nats::NatsEndpoint;
use crate::plugins::{self, PluginSource};
use crate::sandbox::{CompiledCache, HandlerIdentity, Sandbox};
use crate::source::ConsumerBinding;

/// Everything `eventhost run` needs.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub plugins_dir: PathBuf,
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    pub nats: NatsEndpoint,
    pub config: RuntimeConfig,
}

/// Runs until `shutdown` is cancelled, then lets in-flight events finish and
/// settle before returning.
pub async fn run(options: RuntimeOptions, shutdown: CancellationToken) -> Result<()> {
    let client = options.nats.connect().await?;
    tracing::info!(url = %options.nats.display_url(), "connected to NATS");
    let js = jetstream::new(client.clone());
    crate::nats::ensure_streams(&js, &options.config.streams).await?;
    crate::outcome::dead_letter::ensure_stream(&js).await?;

    let sandbox = Arc::new(Sandbox::new(options.cache_dir.map(CompiledCache::new))?);
    let mut dispatchers = Vec::new();
    for found in plugins::discover(&options.plugins_dir)? {
        let loaded = match found {
            Ok(source) => load(sandbox.clone(), &js, source).await,
            Err(err) => Err(err),
        };
        match loaded {
            Ok(dispatcher) => dispatchers.push(dispatcher),
            Err(err) => tracing::error!(error = format!("{err:#}"), "handler not loaded"),
        }
    }
    if dispatchers.is_empty() {
        tracing::warn!(dir = %options.plugins_dir.display(), "no handlers loaded");
    }
    let names: Vec<&str> = dispatchers.iter().map(|d| d.name()).collect();
    tracing::info!(handlers = ?names, "runtime ready");

    let running: Vec<_> = dispatchers
        .iter()
        .map(|d| tokio::spawn(d.clone().run(shutdown.clone())))
        .collect();
    for handler in futures::future::join_all(running).await {
        handler.context("a handler task panicked")?;
    }
    // Acks are sent without waiting for the server; make sure they left.
    client
        .flush()
        .await
        .context("flushing final acks to NATS")?;
    tracing::info!("shut down cleanly");
    Ok(())
}

/// Outputs are published to JetStream and acked by it; a subject no stream
/// captures would fail every successful invocation at publish time. Refuse
/// the handler at load instead.
async fn check_publish_targets(js: &jetstream::Context, publish: &[String]) -> Result<()> {
    for subject in publish {
        js.stream_by_subject(subject.as_str())
            .await
            .with_context(|| {
                format!(
                    "no JetStream stream captures `publish` subject {subject:?}; \
                     declare one in the runtime config"
                )
            })?;
    }
    Ok(())
}

/// Compiles and checks a handler, then resolves its consumers.
async fn load(
    sandbox: Arc<Sandbox>,
    js: &jetstream::Context,
    source: PluginSource,
) -> Result<Arc<Dispatcher>> {
    let PluginSource {
        name,
        version,
        manifest,
        wasm,
        wasm_path,
    } = source;
    let context = || format!("handler {name} ({})", wasm_path.display());
    let started = std::time::Instant::now();
    let bindings = ConsumerBinding::resolve(js, &name, &manifest)
        .await
        .with_context(context)?;
    check_publish_targets(js, &manifest.publish)
        .await
        .with_context(context)?;
    let identity = HandlerIdentity::new(&name, &version, manifest);
    // Compiling takes milliseconds to seconds of CPU: keep it off the
    // executor that is running the other handlers.
    let (component, cache) = tokio::task::spawn_blocking(move || sandbox.load(&wasm, identity))
        .await
        .context("the compiler task panicked")?
        .with_context(context)?;
    tracing::info!(handler = %name, %version, compile_ms = started.elapsed().as_millis() as u64,
        compiled_cache = cache.as_str(), "handler loaded");
    Dispatcher::new(component, bindings, js.clone())
        .await
        .with_context(context)
}
