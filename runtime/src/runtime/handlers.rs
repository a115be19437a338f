//! The set of running handlers, and how it follows the plugins directory.
//!
//! [`HandlerSet::reconcile`] makes what runs match what the directory holds:
//! a new pair starts a handler, a changed one (a new content hash) replaces
//! it, a removed one stops. A replacement is compiled and checked against
//! the WIT world *before* it takes over; if that fails, the running version
//! keeps serving. The swap starts the new version's dispatcher on the same
//! durable consumer and then tells the old one to stop: it finishes what it
//! holds while the new one takes fresh events. The two never handle the same
//! event twice, because JetStream hands each message to one of them and the
//! idempotency claim guards the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::Dispatcher;
use crate::plugins::{self, Discovered, PluginSource};
use crate::sandbox::{HandlerIdentity, Sandbox};
use crate::source::ConsumerBinding;

/// Every handler this process runs.
pub struct HandlerSet {
    sandbox: Arc<Sandbox>,
    js: jetstream::Context,
    /// Cancelled at shutdown; every handler's stop token is a child of it.
    shutdown: CancellationToken,
    running: BTreeMap<String, Running>,
    /// Every dispatcher's task, replaced versions still draining included.
    tasks: TaskTracker,
}

struct Running {
    version: String,
    stop: CancellationToken,
}

impl HandlerSet {
    pub fn new(sandbox: Arc<Sandbox>, js: jetstream::Context, shutdown: CancellationToken) -> Self {
        HandlerSet {
            sandbox,
            js,
            shutdown,
            running: BTreeMap::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// The running handlers' names.
    pub fn names(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Starts, replaces and stops handlers to match `dir`.
    pub async fn reconcile(&mut self, dir: &Path) {
        let found = match plugins::discover(dir) {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(
                    error = format!("{err:#}"),
                    "cannot read the plugins directory"
                );
                return;
            }
        };
        let present: BTreeSet<String> = found.iter().map(|d| d.name.clone()).collect();
        for Discovered { name, source } in found {
            let current = self.running.get(&name).map(|r| r.version.clone());
            let loaded = match source {
                Ok(source) if current.as_deref() == Some(&source.version) => continue,
                Ok(source) => load(self.sandbox.clone(), &self.js, source).await,
                Err(err) => Err(err),
            };
            match (loaded, current) {
                (Ok(dispatcher), _) => self.start(dispatcher),
                (Err(err), Some(version)) => tracing::error!(handler = %name, %version,
                    error = format!("{err:#}"),
                    "new version refused; the running version keeps serving"),
                (Err(err), None) => {
                    tracing::error!(error = format!("{err:#}"), "handler not loaded")
                }
            }
        }
        let removed: Vec<String> = self
            .running
            .keys()
            .filter(|name| !present.contains(*name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(gone) = self.running.remove(&name) {
                tracing::info!(handler = %name, version = %gone.version,
                    "handler removed; finishing its in-flight events");
                gone.stop.cancel();
            }
        }
    }

    /// Runs `dispatcher`, retiring the version it replaces.
    fn start(&mut self, dispatcher: Arc<Dispatcher>) {
        let name = dispatcher.name().to_string();
        let version = dispatcher.version().to_string();
        let stop = self.shutdown.child_token();
        self.tasks.spawn(dispatcher.run(stop.clone()));
        let replaced = self.running.insert(
            name.clone(),
            Running {
                version: version.clone(),
                stop,
            },
        );
        if let Some(old) = replaced {
            tracing::info!(handler = %name, from = %old.version, to = %version, "handler reloaded");
            old.stop.cancel();
        }
    }

    /// Waits for every handler, replaced versions included, to drain. Call
    /// after cancelling the shutdown token.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
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
