//! The sandbox: compiles handler components once and runs each event in a
//! fresh instance with a memory cap and a wall-clock timeout.
//!
//! Instances are never reused: a handler cannot carry state (or corruption)
//! from one event to the next, and a trap costs only that event. The price of
//! a fresh instance is kept low by compiling once and pre-resolving imports
//! ([`HandlerPre`]), so per event only the store and the instance are made.
//!
//! Runaway guests are stopped by epoch interruption: a ticker thread bumps the
//! engine's epoch every [`EPOCH_TICK`], and at each tick the guest yields to
//! the async executor (so one busy guest cannot starve the others) and is
//! interrupted once past its deadline. Time a guest spends blocked in the host
//! (a WASI sleep) is bounded by an outer `tokio::time::timeout` as well.

mod cache;
mod host;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cloudevents::event::Data;
use cloudevents::{AttributesReader, Event};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};

use crate::manifest::{HandlerManifest, Limits};
pub use cache::{CacheUse, CompiledCache};
use host::InvocationState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "handler",
        exports: { default: async },
    });
}

use bindings::eventhost::handler::types;
use bindings::{Handler, HandlerPre};

/// An event the guest asked to publish, as it gave it.
pub use types::OutgoingEvent as EmittedEvent;

/// How often the epoch advances: the granularity of timeouts and of the
/// cooperative yield of CPU-bound guests.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The shared engines and linkers. One per runtime process.
///
/// Fuel metering is a property of the whole engine and costs every call a
/// little, so handlers that set `limits.fuel` get their own engine and the
/// others do not pay for it.
pub struct Sandbox {
    unmetered: EngineSet,
    metered: EngineSet,
    cache: Option<CompiledCache>,
}

struct EngineSet {
    engine: Engine,
    linker: Linker<InvocationState>,
    /// One permit per pool slot: invocations wait for a free slot rather
    /// than fail when every slot is busy.
    slots: Arc<Semaphore>,
}

/// Instances that can exist at once per engine, across all handlers.
const POOL_SLOTS: u32 = 512;
/// Linear memory each idle slot keeps mapped: the pages a guest dirtied
/// there are reset with `memset` instead of `madvise`, so the next instance
/// in the slot takes no page faults on them. 256 KiB holds the whole memory
/// of a small handler built with a 64 KiB stack (see `examples/.cargo`);
/// larger values measured slower, because more has to be reset.
const KEEP_RESIDENT: usize = 256 << 10;

/// The pooling allocator: instances reuse pre-reserved slots (memory, tables,
/// fiber stack) instead of mapping and unmapping their own, which is most of
/// what a fresh instance costs.
fn pooling() -> PoolingAllocationConfig {
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(POOL_SLOTS)
        // A wasm32-wasip2 component holds a few core instances (the guest,
        // wit-component's shims) and tables but one memory; leave headroom.
        .total_core_instances(POOL_SLOTS * 8)
        .total_tables(POOL_SLOTS * 8)
        .total_memories(POOL_SLOTS * 2)
        .total_stacks(POOL_SLOTS)
        .linear_memory_keep_resident(KEEP_RESIDENT)
        .table_keep_resident(64 << 10);
    pool
}

impl EngineSet {
    fn new(fuel: bool) -> Result<Self> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        // Component-model async is unused; without it a call is cheaper.
        config.concurrency_support(false);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling()));
        // The pool reserves terabytes of address space up front (a 4 GiB
        // reservation per memory slot, never touched). Where that is not
        // allowed (`ulimit -v`, valgrind) run without it, only slower.
        let engine = Engine::new(&config).or_else(|err| {
            tracing::warn!(
                error = format!("{err:#}"),
                "cannot reserve the instance pool; allocating each instance on demand"
            );
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config)
        });
        let engine = engine
            .map_err(anyhow::Error::from)
            .context("creating the wasm engine")?;
        spawn_epoch_ticker(&engine);

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI")?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("linking the eventhost imports")?;
        Ok(EngineSet {
            engine,
            linker,
            slots: Arc::new(Semaphore::new(POOL_SLOTS as usize)),
        })
    }
}

impl Sandbox {
    /// A sandbox keeping compiled code in `cache`, if given.
    pub fn new(cache: Option<CompiledCache>) -> Result<Self> {
        Ok(Sandbox {
            unmetered: EngineSet::new(false)?,
            metered: EngineSet::new(true)?,
            cache,
        })
    }

    /// Compiles a handler (or loads it compiled from the cache) and checks it
    /// against the `handler` world: it must export `handle` and import
    /// nothing the host does not provide. CPU-heavy: call it off the async
    /// executor.
    pub fn load(
        &self,
        wasm: &[u8],
        identity: HandlerIdentity,
    ) -> Result<(HandlerComponent, CacheUse)> {
        // Checked here because wasmtime would otherwise try the bytes as WAT
        // text and report a confusing parse error.
        anyhow::ensure!(
            wasm.starts_with(b"\0asm"),
            "not a WebAssembly binary (no \\0asm header)"
        );
        let set = match identity.limits().fuel {
            Some(_) => &self.metered,
            None => &self.unmetered,
        };
        let (component, cache_use) = match &self.cache {
            Some(cache) => cache.load(&set.engine, wasm)?,
            None => {
                let component = Component::new(&set.engine, wasm)
                    .map_err(anyhow::Error::from)
                    .context("not a valid WebAssembly component")?;
                (component, CacheUse::Disabled)
            }
        };
        let pre = set
            .linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component needs imports eventhost does not provide")?;
        let pre = HandlerPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not implement the eventhost:handler/handler world")?;
        let component = HandlerComponent {
            engine: set.engine.clone(),
            slots: set.slots.clone(),
            pre,
            identity: Arc::new(identity),
        };
        Ok((component, cache_use))
    }
}

/// Advances the epoch until the engine is dropped.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("eventhost-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("spawning the epoch thread");
}

/// Who a handler is and what it may do: what the host imports consult.
#[derive(Debug)]
pub struct HandlerIdentity {
    pub name: String,
    /// Content hash of the component and manifest.
    pub version: String,
    pub manifest: HandlerManifest,
    /// `manifest.config` rendered once as the strings `config.get` returns.
    config: BTreeMap<String, String>,
}

impl HandlerIdentity {
    pub fn new(name: &str, version: &str, manifest: HandlerManifest) -> Self {
        HandlerIdentity {
            name: name.to_string(),
            version: version.to_string(),
            config: manifest.config_strings(),
            manifest,
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.manifest.limits
    }
}

/// A compiled, import-checked handler, ready to instantiate per event.
pub struct HandlerComponent {
    engine: Engine,
    slots: Arc<Semaphore>,
    pre: HandlerPre<InvocationState>,
    identity: Arc<HandlerIdentity>,
}

/// What one invocation produced.
#[derive(Debug)]
pub struct Invocation {
    /// The emitted events, in order, or why the invocation failed (in which
    /// case nothing it emitted may be published).
    pub result: Result<Vec<EmittedEvent>, Failure>,
    pub elapsed: Duration,
    /// The part of `elapsed` spent creating the instance.
    pub instantiation: Duration,
    /// Peak linear memory of the instance, in bytes.
    pub peak_memory: usize,
}

/// Why an invocation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The handler returned `handler-error::retryable`.
    Retryable,
    /// The handler returned `handler-error::permanent`.
    Permanent,
    /// The guest trapped (a panic, an unreachable, an out-of-bounds access).
    Trap,
    /// The guest ran past `limits.timeout`.
    Timeout,
    /// The guest tried to grow its memory past `limits.memory`.
    MemoryLimit,
    /// The guest used up `limits.fuel`.
    Fuel,
    /// The guest emitted to a subject outside its manifest, or an invalid event.
    EmitRefused,
    /// The guest succeeded, but the host could not store what it emitted.
    /// Set by the host after the sandbox, never by it.
    Output,
}

impl FailureKind {
    /// The snake_case name used in logs (and, later, metric labels).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Permanent => "permanent",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::MemoryLimit => "memory_limit",
            FailureKind::Fuel => "fuel",
            FailureKind::EmitRefused => "emit_refused",
            FailureKind::Output => "output",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl HandlerComponent {
    pub fn identity(&self) -> &HandlerIdentity {
        &self.identity
    }

    /// Runs `event` (attempt number `attempt`) through a fresh instance.
    /// Never panics and never returns an error of its own: every way a guest
    /// can fail becomes a [`Failure`].
    pub async fn invoke(&self, event: &Event, attempt: u32) -> Invocation {
        // Waiting for a slot is not the guest's time: it starts the clock
        // only once it has one. The semaphore is never closed.
        let _slot = self.slots.acquire().await.expect("never closed");
        let started = Instant::now();
        let timeout = self.identity.limits().timeout;
        let mut store = self.new_store(started + timeout);

        let input = to_wit(event, attempt);
        let mut instantiation = Duration::ZERO;
        let call = async {
            let handler = self.pre.instantiate_async(&mut store).await?;
            instantiation = started.elapsed();
            handler.call_handle(&mut store, &input).await
        };
        // The epoch callback stops guest code on time; this also bounds time
        // spent inside host calls such as a WASI sleep.
        let outcome = tokio::time::timeout(timeout + EPOCH_TICK * 2, call).await;

        let mut state = store.into_data();
        let fail = |kind, message: String| Err(Failure { kind, message });
        let result = match outcome {
            // A refused emit fails the invocation whatever the guest returned.
            _ if let Some(refused) = state.refused_emit.take() => {
                fail(FailureKind::EmitRefused, refused)
            }
            Err(_) => fail(
                FailureKind::Timeout,
                format!("still running after {timeout:?}"),
            ),
            Ok(Ok(Ok(()))) => Ok(state.take_emitted()),
            Ok(Ok(Err(types::HandlerError::Retryable(m)))) => fail(FailureKind::Retryable, m),
            Ok(Ok(Err(types::HandlerError::Permanent(m)))) => fail(FailureKind::Permanent, m),
            Ok(Err(_)) if state.timed_out => fail(
                FailureKind::Timeout,
                format!("interrupted after {timeout:?}"),
            ),
            Ok(Err(_)) if state.memory.exceeded => fail(
                FailureKind::MemoryLimit,
                format!(
                    "tried to grow memory past {}",
                    self.identity.limits().memory
                ),
            ),
            Ok(Err(trap)) if trap.downcast_ref() == Some(&wasmtime::Trap::OutOfFuel) => fail(
                FailureKind::Fuel,
                format!(
                    "used up its fuel ({})",
                    self.identity.limits().fuel.unwrap_or_default()
                ),
            ),
            Ok(Err(trap)) => fail(FailureKind::Trap, describe_trap(&trap, &state)),
        };
        Invocation {
            result,
            elapsed: started.elapsed(),
            instantiation,
            peak_memory: state.memory.peak,
        }
    }
}

impl HandlerComponent {
    /// A store for one invocation: fresh state, the memory cap, fuel if
    /// metered, and an epoch callback that yields every tick and interrupts
    /// the guest after `deadline`.
    fn new_store(&self, deadline: Instant) -> Store<InvocationState> {
        let state = InvocationState::new(self.identity.clone(), deadline);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        if let Some(fuel) = self.identity.limits().fuel {
            store
                .set_fuel(fuel)
                .expect("handlers with fuel limits load into the metered engine");
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            if Instant::now() >= ctx.data().deadline {
                ctx.data_mut().timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// One instance kept for many calls. The runtime never does this (see
    /// the module docs); it exists so the sandbox benchmark can show what a
    /// fresh instance per event costs against reusing one.
    pub async fn reused_instance(&self) -> Result<ReusedInstance> {
        let far = Instant::now() + Duration::from_secs(24 * 60 * 60);
        let mut store = self.new_store(far);
        let handler = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(anyhow::Error::from)
            .context("instantiating the handler")?;
        Ok(ReusedInstance { store, handler })
    }
}

/// See [`HandlerComponent::reused_instance`].
pub struct ReusedInstance {
    store: Store<InvocationState>,
    handler: Handler,
}

impl ReusedInstance {
    /// Calls `handle` on the kept instance; returns what it emitted.
    pub async fn call(&mut self, event: &Event) -> Result<Vec<EmittedEvent>> {
        let input = to_wit(event, 1);
        let result = self
            .handler
            .call_handle(&mut self.store, &input)
            .await
            .map_err(anyhow::Error::from)
            .context("the guest trapped")?;
        let emitted = self.store.data_mut().take_emitted();
        result.map_err(|e| anyhow::anyhow!("the handler failed: {e:?}"))?;
        Ok(emitted)
    }
}

/// The trap, plus what the guest wrote to stderr (a Rust panic message, say).
fn describe_trap(trap: &wasmtime::Error, state: &InvocationState) -> String {
    let stderr = state.stderr.contents();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    let trap = format!("{trap:#}");
    let first_line = trap.lines().next().unwrap_or("trap");
    if stderr.is_empty() {
        first_line.to_string()
    } else {
        format!("{first_line}; guest stderr: {stderr}")
    }
}

/// The CloudEvent as the WIT `event` record.
fn to_wit(event: &Event, attempt: u32) -> types::Event {
    types::Event {
        id: event.id().to_string(),
        source: event.source().to_string(),
        specversion: event.specversion().to_string(),
        type_: event.ty().to_string(),
        datacontenttype: event.datacontenttype().map(String::from),
        dataschema: event.dataschema().map(|u| u.to_string()),
        subject: event.subject().map(String::from),
        time: event.time().map(|t| t.to_rfc3339()),
        extensions: event
            .iter_extensions()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect(),
        data: event.data().map(|data| match data {
            Data::Binary(bytes) => bytes.clone(),
            Data::String(s) => s.clone().into_bytes(),
            Data::Json(value) => value.to_string().into_bytes(),
        }),
        attempt,
    }
}
