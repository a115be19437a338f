//! The function host as a whole: connect, declare streams, load every
//! handler in the plugins directory, run them until shutdown, and follow the
//! directory while running (hot reload).
//!
//! A handler that cannot load (bad manifest, broken component, a subject no
//! stream captures) is reported and skipped; the others still run. A broken
//! new version of a running handler is refused the same way, and the running
//! version keeps serving.

mod admin;
mod handlers;
mod reload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::nats::NatsEndpoint;
use crate::sandbox::{CompiledCache, Sandbox};
use crate::store::NatsStore;
use handlers::HandlerSet;
pub(crate) use handlers::resolve_capabilities;
pub use reload::RELOAD_SUBJECT;

/// Everything `eventhost run` needs.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub plugins_dir: PathBuf,
    /// Where compiled components are cached; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Reload when the plugins directory changes.
    pub watch: bool,
    /// Where the admin HTTP server listens; `None` serves none.
    pub admin_addr: Option<SocketAddr>,
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

    crate::nats::ensure_buckets(&js, &options.config.buckets).await?;
    crate::projection::declare(&js).await?;

    let sandbox = Arc::new(Sandbox::new(options.cache_dir.map(CompiledCache::new))?);
    let metrics = Arc::new(Metrics::new());
    let store = Arc::new(NatsStore::new(js.clone()));
    let mut handlers = HandlerSet::new(
        sandbox,
        js.clone(),
        store,
        metrics.clone(),
        shutdown.clone(),
    );
    // Up before the handlers load, so probes see "not ready" rather than
    // nothing while components compile.
    let admin_stop = CancellationToken::new();
    let admin = match options.admin_addr {
        Some(addr) => {
            let state = admin::AdminState {
                metrics,
                board: handlers.board(),
                client: client.clone(),
                js,
            };
            Some(admin::serve(addr, state, admin_stop.clone()).await?)
        }
        None => None,
    };
    handlers.reconcile(&options.plugins_dir).await;
    if handlers.names().is_empty() {
        tracing::warn!(dir = %options.plugins_dir.display(), "no handlers loaded");
    }
    tracing::info!(handlers = ?handlers.names(), watch = options.watch, "runtime ready");

    let mut triggers =
        reload::Triggers::start(&client, options.plugins_dir.clone(), options.watch).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            trigger = triggers.next() => {
                tracing::info!(trigger, "reloading plugins");
                handlers.reconcile(&options.plugins_dir).await;
            }
        }
    }
    drop(triggers);
    handlers.wait().await;
    admin_stop.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // Acks are sent without waiting for the server; make sure they left.
    client
        .flush()
        .await
        .context("flushing final acks to NATS")?;
    tracing::info!("shut down cleanly");
    Ok(())
}
