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
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::contract::{ContractSection, blast};
use crate::dispatch::{Dispatcher, Services};
use crate::handler::grants;
use crate::handler::plugins::{self, Discovered, PluginSource};
use crate::metrics::NameLabels;
use crate::projection::{self, Generation};
use crate::sandbox::{HandlerSpec, Sandbox};
use crate::source::ConsumerBinding;

/// Every handler this process knows of, by name, shared with the admin
/// server. Locked only for moments, never across an await.
pub type Board = Arc<Mutex<BTreeMap<String, Slot>>>;

/// One handler name's state.
#[derive(Default)]
pub struct Slot {
    /// The version serving now, if any loaded.
    pub current: Option<Arc<Dispatcher>>,
    stop: Option<CancellationToken>,
    /// Why the last load or reload of this name was refused.
    pub refused: Option<String>,
}

/// What one reconcile pass did.
#[derive(Debug, Default)]
struct Pass {
    started: bool,
    /// The handlers refused for their blast radius ([`WouldBreakFlow`]).
    blocked: BTreeSet<String>,
}

/// A version refused because it would break a running handler.
#[derive(Debug, thiserror::Error)]
#[error(
    "refused: this version would break the event flow ({0}); deploy the readers first, or change the pins in `[contract]`"
)]
struct WouldBreakFlow(String);

/// Every handler this process runs.
pub struct HandlerSet {
    sandbox: Arc<Sandbox>,
    services: Services,
    /// Cancelled at shutdown; every handler's stop token is a child of it.
    shutdown: CancellationToken,
    board: Board,
    /// Every dispatcher's task, replaced versions still draining included.
    tasks: TaskTracker,
}

impl HandlerSet {
    pub fn new(sandbox: Arc<Sandbox>, services: Services, shutdown: CancellationToken) -> Self {
        HandlerSet {
            sandbox,
            services,
            shutdown,
            board: Board::default(),
            tasks: TaskTracker::new(),
        }
    }

    /// The shared view of the handlers, for the admin server.
    pub fn board(&self) -> Board {
        self.board.clone()
    }

    /// The running handlers' names.
    pub fn names(&self) -> Vec<String> {
        let board = self.board.lock().expect("never poisoned");
        let running = board.iter().filter(|(_, slot)| slot.current.is_some());
        running.map(|(name, _)| name.clone()).collect()
    }

    fn current_version(&self, name: &str) -> Option<String> {
        let board = self.board.lock().expect("never poisoned");
        let current = board.get(name)?.current.as_ref()?;
        Some(current.version().to_string())
    }

    /// Reads the event contracts' folder again; the old ones stay in force
    /// if it cannot be read.
    pub fn reload_contracts(&self) {
        if let Err(err) = self.services.contracts.reload() {
            tracing::error!(error = %err, "cannot read the event contracts; the ones in force stay");
        }
    }

    /// Starts, replaces and stops handlers to match `dir`. A version
    /// refused for its blast radius may be fine once a handler later in
    /// the same pass has started (a reader moved to the new version), so
    /// a pass that started one and refused one so is followed by another,
    /// of those alone; each extra pass starts a new version, so they end.
    pub async fn reconcile(&mut self, dir: &Path) {
        let mut only = None;
        loop {
            let pass = self.reconcile_pass(dir, only.as_ref()).await;
            if !pass.started || pass.blocked.is_empty() {
                return;
            }
            tracing::info!(handlers = ?pass.blocked,
                "looking again at the handlers refused for their blast radius, now that others have started");
            only = Some(pass.blocked);
        }
    }

    /// One look at `dir`; with `only`, at those handlers alone.
    async fn reconcile_pass(&mut self, dir: &Path, only: Option<&BTreeSet<String>>) -> Pass {
        let mut pass = Pass::default();
        let found = match plugins::discover(dir) {
            Ok(found) => found,
            Err(err) => {
                tracing::error!(
                    error = format!("{err:#}"),
                    "cannot read the plugins directory"
                );
                return pass;
            }
        };
        let present: BTreeSet<String> = found.iter().map(|d| d.name.clone()).collect();
        for Discovered { name, source } in found {
            if only.is_some_and(|only| !only.contains(&name)) {
                continue;
            }
            let current = self.current_version(&name);
            let source = match source {
                Ok(source) => self.with_generation(source).await,
                Err(err) => Err(err),
            };
            let loaded = match source {
                Ok((source, _)) if current.as_deref() == Some(&source.version) => continue,
                Ok((source, generation)) => self.load(source, generation).await,
                Err(err) => Err(err),
            };
            let err = match loaded {
                Ok(dispatcher) => {
                    self.start(dispatcher);
                    pass.started = true;
                    continue;
                }
                Err(err) => {
                    if err.downcast_ref::<WouldBreakFlow>().is_some() {
                        pass.blocked.insert(name.clone());
                    }
                    format!("{err:#}")
                }
            };
            match &current {
                Some(version) => tracing::error!(handler = %name, %version, error = %err,
                    "new version refused; the running version keeps serving"),
                None => tracing::error!(error = %err, "handler not loaded"),
            }
            self.services
                .metrics
                .reload_failures
                .get_or_create(&NameLabels::new(&name))
                .inc();
            let mut board = self.board.lock().expect("never poisoned");
            board.entry(name).or_default().refused = Some(err);
        }
        let mut board = self.board.lock().expect("never poisoned");
        board.retain(|name, slot| {
            if present.contains(name) {
                return true;
            }
            if let (Some(gone), Some(stop)) = (&slot.current, &slot.stop) {
                tracing::info!(handler = %name, version = %gone.version(),
                    "handler removed; finishing its in-flight events");
                stop.cancel();
            }
            false
        });
        pass
    }

    /// Runs `dispatcher`, retiring the version it replaces.
    fn start(&mut self, dispatcher: Arc<Dispatcher>) {
        let name = dispatcher.name().to_string();
        let stop = self.shutdown.child_token();
        self.tasks.spawn(dispatcher.clone().run(stop.clone()));
        let mut board = self.board.lock().expect("never poisoned");
        let slot = board.entry(name.clone()).or_default();
        slot.refused = None;
        // Both reload series exist from the first load, at zero, so that
        // "no reload failed" is told apart from "not exported".
        let labels = NameLabels::new(&name);
        let _created = self.services.metrics.reloads.get_or_create(&labels);
        let _created = self.services.metrics.reload_failures.get_or_create(&labels);
        let old_stop = slot.stop.replace(stop);
        if let Some(old) = slot.current.replace(dispatcher.clone()) {
            tracing::info!(handler = %name, from = %old.version(), to = %dispatcher.version(),
                "handler reloaded");
            self.services
                .metrics
                .reloads
                .get_or_create(&NameLabels::new(&name))
                .inc();
            if old.consumer() != dispatcher.consumer() {
                // A new state generation: the old one's consumers feed
                // nothing any more once it has drained.
                self.tasks
                    .spawn(retire_consumers(self.services.js.clone(), old));
            }
        }
        if let Some(old_stop) = old_stop {
            old_stop.cancel();
        }
    }

    /// The handler with its state generation applied: a rebuilt read model
    /// moves its buckets and consumer, and changes the handler's version.
    async fn with_generation(
        &self,
        mut source: PluginSource,
    ) -> Result<(PluginSource, Generation)> {
        let writes_state = source.manifest.keyvalue.as_ref();
        if writes_state.is_none_or(|kv| kv.read_write.is_empty()) {
            return Ok((source, Generation::default()));
        }
        let (generation, _) = projection::current(&*self.services.store, &source.name).await?;
        generation.apply(&mut source.manifest, &mut source.version);
        Ok((source, generation))
    }

    /// Compiles and checks a handler, resolves its grants and consumers.
    async fn load(&self, source: PluginSource, generation: Generation) -> Result<Arc<Dispatcher>> {
        let PluginSource {
            name,
            version,
            manifest,
            wasm,
            wasm_path,
        } = source;
        let context = || format!("handler {name} ({})", wasm_path.display());
        let started = std::time::Instant::now();
        let js = &self.services.js;
        let bindings = ConsumerBinding::resolve(js, &name, &manifest)
            .await
            .with_context(context)?;
        check_publish_targets(js, &manifest.publish)
            .await
            .with_context(context)?;
        self.check_blast_radius(&name, &manifest.contract)
            .with_context(context)?;
        let store = self.services.store.clone();
        let physical = |bucket: &str| generation.physical(bucket);
        let capabilities = grants::resolve(
            &name,
            &manifest,
            self.services.contracts.clone(),
            store,
            &physical,
        )
        .await
        .with_context(context)?;
        let spec = HandlerSpec {
            name: name.clone(),
            version: version.clone(),
            bounds: manifest.bounds(),
            capabilities,
        };
        // Compiling takes milliseconds to seconds of CPU: keep it off the
        // executor that is running the other handlers.
        let sandbox = self.sandbox.clone();
        let (component, cache) = tokio::task::spawn_blocking(move || sandbox.load(&wasm, spec))
            .await
            .context("the compiler task panicked")?
            .with_context(context)?;
        tracing::info!(handler = %name, %version, compile_ms = started.elapsed().as_millis() as u64,
            compiled_cache = cache.as_str(), "handler loaded");
        Dispatcher::new(component, manifest, bindings, &self.services)
            .await
            .with_context(context)
    }

    /// Refuses a version that would break a running handler: what it emits
    /// must be readable by their pinned versions, and what they emit by it
    /// ([`blast`]). At start, handlers load in name order, each checked
    /// against the ones already running.
    fn check_blast_radius(&self, name: &str, section: &ContractSection) -> Result<()> {
        let running: Vec<(String, ContractSection)> = {
            let board = self.board.lock().expect("never poisoned");
            (board.iter())
                .filter_map(|(other, slot)| {
                    Some((
                        other.clone(),
                        slot.current.as_ref()?.manifest().contract.clone(),
                    ))
                })
                .collect()
        };
        let contracts = self.services.contracts.current();
        let findings = blast::blast_radius(&contracts, name, section, &running);
        if findings.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = findings.iter().map(ToString::to_string).collect();
        Err(WouldBreakFlow(list.join("; ")).into())
    }

    /// Waits for every handler, replaced versions included, to drain. Call
    /// after cancelling the shutdown token.
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Deletes a replaced generation's durable consumers once its dispatcher
/// has finished what it held.
async fn retire_consumers(js: jetstream::Context, old: Arc<Dispatcher>) {
    old.stopped().await;
    for binding in old.bindings() {
        match js
            .delete_consumer_from_stream(&binding.durable, &binding.stream)
            .await
        {
            Ok(_) => tracing::info!(handler = %old.name(), consumer = %binding.durable,
                "deleted the consumer of a replaced state generation"),
            Err(err) => tracing::warn!(consumer = %binding.durable, error = %err,
                "could not delete the consumer of a replaced state generation"),
        }
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
