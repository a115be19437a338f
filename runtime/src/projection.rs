//! Read-model generations, and rebuilding a projection from its source
//! stream while the current generation keeps serving reads.
//!
//! A handler's read-write buckets and its consumer are addressed through a
//! *generation*: generation 0 is the names in the manifest; generation `n`
//! stores bucket `b` in `b_g<n>` and consumes with `<consumer>_g<n>`. The
//! current generation of each handler is one record in the
//! [`GENERATIONS_BUCKET`] (`handler.<name>`), so a swap is a single write:
//! a runtime never sees a new bucket with an old consumer.
//!
//! `eventhost projection rebuild <handler>` ([`rebuild`]) creates the next
//! generation's buckets, runs the handler over its subjects from the start of
//! the stream into them (a fresh durable consumer, so events are handled
//! exactly once there too), and once it has caught up writes the record and
//! asks every runtime to reload. The generation is part of the handler's
//! version, so the reload swaps it in like any new version: the old one
//! finishes what it holds, the new one carries on from its consumer.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer::pull};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::dispatch::{Dispatcher, Services};
use crate::handler::grants;
use crate::handler::manifest::HandlerManifest;
use crate::metrics::Metrics;
use crate::sandbox::{HandlerSpec, Sandbox};
use crate::source::ConsumerBinding;
use crate::store::{NatsStore, Publish, Store, StoreError, kv};

/// Where each handler's current generation is recorded.
pub const GENERATIONS_BUCKET: &str = "eventhost-generations";

/// A handler's state generation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub number: u32,
    /// The durable consumer name this generation consumes with.
    pub consumer: String,
    /// Granted bucket name → the bucket holding it in this generation.
    pub buckets: BTreeMap<String, String>,
}

impl Generation {
    /// Where bucket `name` lives in this generation.
    pub fn physical(&self, name: &str) -> String {
        self.buckets
            .get(name)
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }

    /// Applies the generation to a handler's manifest and version.
    pub fn apply(&self, manifest: &mut HandlerManifest, version: &mut String) {
        if self.number > 0 {
            manifest.consumer = Some(self.consumer.clone());
            version.push_str(&format!("-g{}", self.number));
        }
    }
}

/// Creates the generations bucket if it is missing.
pub async fn declare(js: &jetstream::Context, replicas: usize) -> Result<()> {
    let name = GENERATIONS_BUCKET;
    let description = "eventhost: the current state generation of each handler".into();
    let config = crate::jetstream::declare::bucket_stream(name, description, replicas);
    crate::jetstream::declare::declare_stream(js, config)
        .await
        .context("declaring the generations bucket")?;
    Ok(())
}

/// The current generation of `handler` and its record's revision; the
/// default (generation 0) when none was recorded. The bucket must exist
/// ([`declare`]; the runtime declares it at start).
pub async fn current(store: &dyn Store, handler: &str) -> Result<(Generation, u64)> {
    let entry = kv::entry(store, GENERATIONS_BUCKET, &format!("handler.{handler}"))
        .await
        .context("reading the handler's generation")?;
    let generation = match &entry.value {
        Some(value) => serde_json::from_slice(value).context("a malformed generation record")?,
        None => Generation::default(),
    };
    Ok((generation, entry.revision))
}

/// The bucket holding `bucket` now, whichever handler's generation moved it.
pub async fn resolve_bucket(js: &jetstream::Context, bucket: &str) -> Result<String> {
    let Ok(store) = js.get_key_value(GENERATIONS_BUCKET).await else {
        return Ok(bucket.to_string());
    };
    let mut keys = store.keys().await?;
    use futures::StreamExt;
    while let Some(key) = keys.next().await {
        let Some(value) = store.get(key?).await? else {
            continue;
        };
        let generation: Generation = serde_json::from_slice(&value)?;
        if let Some(physical) = generation.buckets.get(bucket) {
            return Ok(physical.clone());
        }
    }
    Ok(bucket.to_string())
}

/// How far a rebuild has come.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Events not yet delivered to the rebuild, and delivered but unsettled.
    pub pending: u64,
    pub unsettled: u64,
}

/// Rebuilds handler `name` (its `.wasm` and `.toml` in `plugins`) into a new
/// generation, swaps it in, and returns it.
pub async fn rebuild(
    js: &jetstream::Context,
    plugins: &Path,
    name: &str,
    mut progress: impl FnMut(Progress),
) -> Result<Generation> {
    let source = crate::handler::plugins::read(&plugins.join(format!("{name}.wasm")))?;
    let owned = source
        .manifest
        .keyvalue
        .as_ref()
        .map(|kv| kv.read_write.clone());
    let owned = owned.unwrap_or_default();
    if owned.is_empty() {
        bail!("handler {name} writes no key-value bucket: there is no read model to rebuild");
    }
    let replicas = declared_replicas(js).await;
    declare(js, replicas).await?;
    let store: Arc<dyn Store> = Arc::new(NatsStore::new(js.clone()));
    let (old, revision) = current(&*store, name).await?;
    let number = old.number + 1;
    let base = source.manifest.consumer_name(name);
    let next = Generation {
        number,
        consumer: format!("{base}_g{number}"),
        buckets: (owned.iter())
            .map(|b| (b.clone(), format!("{b}_g{number}")))
            .collect(),
    };
    for bucket in &owned {
        copy_bucket_shape(js, &old.physical(bucket), &next.physical(bucket)).await?;
    }

    let (mut manifest, mut version) = (source.manifest.clone(), source.version.clone());
    next.apply(&mut manifest, &mut version);
    let services = Services {
        js: js.clone(),
        store,
        metrics: Arc::new(Metrics::new()),
        replicas,
        // A rebuild replays a read model's events once, alone: the claims
        // cost it nothing worth saving.
        unclaimed_runs: false,
        atomic_commits: false,
        // The rebuild is the only consumer of the new generation's
        // consumers: no lease to hold.
        leases: None,
        // It replays events that were accepted when they came: checking
        // them against today's contracts could dead-letter history.
        contracts: Default::default(),
        // A rebuild's runs are not events' stories: the first runs were.
        trail: crate::outcome::trail::Trail::off(),
    };
    let store = services.store.clone();
    let dispatcher = load(&services, name, &version, &manifest, &next, &source.wasm).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(dispatcher.clone().run(stop.clone()));
    let caught_up = wait_until_caught_up(js, dispatcher.bindings(), &mut progress).await;
    stop.cancel();
    let _ = running.await;
    caught_up?;

    let record = serde_json::to_vec(&next)?;
    let key = format!("handler.{name}");
    let write = kv::write(GENERATIONS_BUCKET, &key, Some(record.into())).expect_last(revision);
    match store.publish(write).await {
        Ok(_) => {}
        Err(StoreError::WrongLastSequence) => bail!("another rebuild of {name} finished first"),
        Err(err) => return Err(err).context("recording the new generation"),
    }
    let client = js.client();
    let reload = Publish::new(crate::fleet::RELOAD_SUBJECT, "");
    client
        .publish(reload.subject, reload.payload)
        .await
        .context("asking the runtimes to reload")?;
    client.flush().await?;
    Ok(next)
}

/// The replicas the runtimes gave the generations bucket (1 when no runtime
/// declared it yet): a rebuild's buckets get as many.
async fn declared_replicas(js: &jetstream::Context) -> usize {
    match js.get_stream(kv::stream(GENERATIONS_BUCKET)).await {
        Ok(mut stream) => stream
            .info()
            .await
            .map_or(1, |info| info.config.num_replicas.max(1)),
        Err(_) => 1,
    }
}

/// Compiles the handler against the new generation's buckets and consumer.
async fn load(
    services: &Services,
    name: &str,
    version: &str,
    manifest: &HandlerManifest,
    generation: &Generation,
    wasm: &[u8],
) -> Result<Arc<Dispatcher>> {
    let (js, store) = (&services.js, services.store.clone());
    let bindings = ConsumerBinding::resolve(js, name, manifest).await?;
    let physical = |bucket: &str| generation.physical(bucket);
    let capabilities =
        grants::resolve(name, manifest, services.contracts.clone(), store, &physical).await?;
    let spec = HandlerSpec {
        name: name.to_string(),
        version: version.to_string(),
        bounds: manifest.bounds(),
        capabilities,
    };
    let sandbox = Sandbox::new(None)?;
    let (component, _) = sandbox.load(wasm, spec)?;
    Dispatcher::new(component, manifest.clone(), bindings, services).await
}

/// Makes `to` a bucket of the same shape as `from` (history, age, storage).
async fn copy_bucket_shape(js: &jetstream::Context, from: &str, to: &str) -> Result<()> {
    let mut existing = js
        .get_stream(kv::stream(from))
        .await
        .with_context(|| format!("looking up bucket {from}"))?;
    let mut config = existing.info().await?.config.clone();
    config.name = kv::stream(to);
    config.subjects = vec![format!("$KV.{to}.>")];
    config.description = Some(format!(
        "eventhost: key-value bucket {to} (rebuilt from {from})"
    ));
    crate::jetstream::declare::declare_stream(js, config)
        .await
        .with_context(|| format!("creating bucket {to}"))?;
    Ok(())
}

/// Waits until every consumer of the rebuild has delivered and settled all
/// it has, twice in a row (a moment of quiet, not a lull between pulls).
async fn wait_until_caught_up(
    js: &jetstream::Context,
    bindings: &[ConsumerBinding],
    progress: &mut impl FnMut(Progress),
) -> Result<()> {
    let mut quiet = 0;
    while quiet < 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut total = Progress {
            pending: 0,
            unsettled: 0,
        };
        for binding in bindings {
            let stream = js.get_stream(&binding.stream).await?;
            // The rebuild's dispatcher creates its consumers as it starts.
            let consumer = stream.get_consumer::<pull::Config>(&binding.durable).await;
            let Ok(mut consumer) = consumer else {
                total.pending += 1;
                continue;
            };
            let info = consumer.info().await?;
            total.pending += info.num_pending;
            total.unsettled += info.num_ack_pending as u64;
        }
        progress(total);
        quiet = if total.pending + total.unsettled == 0 {
            quiet + 1
        } else {
            0
        };
    }
    Ok(())
}
