//! The sandbox: compiles handler components once and runs each event in a
//! fresh instance with a memory cap and a wall-clock timeout, linked with
//! exactly the capabilities its manifest grants.
//!
//! Instances are never reused: a handler cannot carry state (or corruption)
//! from one event to the next in memory, and a trap costs only that event.
//! State that must outlive an event goes through the key-value and event-store
//! capabilities, whose changes are buffered and handed back as [`Effects`]
//! for the outcome stage to commit. The price of a fresh instance is kept low
//! by compiling once and pre-resolving imports ([`bindings::HandlerPre`]),
//! so per event only the store and the instance are made.
//!
//! Each host capability is one module with one face: its manifest section,
//! what it resolves at load, its per-invocation state, and its effects
//! ([`emit`], [`logging`], [`config`], [`keyvalue`], [`eventstore`],
//! [`http`]). A
//! capability is linked only for handlers whose manifest grants it, so a
//! component importing one it was not granted fails to load, naming the
//! import and the manifest section that would grant it.
//!
//! Runaway guests are stopped by epoch interruption: a ticker thread bumps the
//! engine's epoch every [`EPOCH_TICK`], and at each tick the guest yields to
//! the async executor and is interrupted once past its deadline. A guest
//! still running after its first tick runs only in turns with the other
//! long runners, on fewer workers than the machine has ([`turns`]), so
//! spinning guests cannot starve other handlers. Time a guest spends blocked in the host
//! (a WASI sleep, a state read) is bounded by an outer `tokio::time::timeout`.

mod bindings;
mod cache;
pub mod config;
pub mod emit;
mod engine;
pub mod eventstore;
pub mod http;
pub mod keyvalue;
mod limiter;
pub mod logging;
mod state;
mod turns;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cloudevents::event::Data;
use cloudevents::{AttributesReader, Event};
use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use crate::failure::{Conflict, Failure, FailureKind};
use crate::store::record::PlannedWrite;
use crate::trace::TraceContext;
use bindings::types;
use bindings::{Handler, HandlerPre};
pub use cache::{CacheUse, CompiledCache};
use engine::EngineSet;
use state::InvocationState;

/// An event the guest asked to publish (or append), as it gave it.
pub use types::OutgoingEvent as EmittedEvent;

/// How often the epoch advances: the granularity of timeouts and of the
/// cooperative yield of CPU-bound guests.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The shared engines. One per runtime process.
pub struct Sandbox {
    unmetered: EngineSet,
    metered: EngineSet,
    cache: Option<CompiledCache>,
}

/// Who a handler is, what bounds it runs in and what it may do.
pub struct HandlerSpec {
    pub name: String,
    /// Content hash of the component and manifest.
    pub version: String,
    pub bounds: Bounds,
    pub capabilities: Capabilities,
}

/// The resource bounds of one invocation.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub timeout: Duration,
    /// Linear memory cap in bytes, summed over the guest's memories.
    pub memory: u64,
    /// Fuel per invocation; `None`: unmetered.
    pub fuel: Option<u64>,
}

/// The capabilities a handler is granted, resolved at load.
#[derive(Clone)]
pub struct Capabilities {
    pub emit: Arc<emit::EmitGrant>,
    pub config: config::ConfigValues,
    pub keyvalue: Option<Arc<keyvalue::KeyValueGrants>>,
    pub eventstore: Option<Arc<eventstore::EventStoreGrants>>,
    pub http: Option<Arc<http::OutboundGrants>>,
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

    /// Compiles a handler (or loads it compiled from the cache) and links it
    /// with its granted capabilities: it must export `handle` and import
    /// nothing it was not granted. CPU-heavy: call it off the async executor.
    pub fn load(&self, wasm: &[u8], spec: HandlerSpec) -> Result<(HandlerComponent, CacheUse)> {
        // Checked here because wasmtime would otherwise try the bytes as WAT
        // text and report a confusing parse error.
        anyhow::ensure!(
            wasm.starts_with(b"\0asm"),
            "not a WebAssembly binary (no \\0asm header)"
        );
        let set = match spec.bounds.fuel {
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
        check_granted_imports(&set.engine, &component, &spec.capabilities)?;
        let linker = link(&set.engine, &spec.capabilities)?;
        let pre = linker
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
            spec: Arc::new(spec),
        };
        Ok((component, cache_use))
    }
}

/// WASI with nothing granted, the capabilities every handler has (under
/// both contract versions), and the state capabilities it was granted.
fn link(engine: &Engine, capabilities: &Capabilities) -> Result<Linker<InvocationState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    let mut link = || -> wasmtime::Result<()> {
        linker.instance("eventhost:handler/types@0.2.0")?;
        emit::add_to_linker(&mut linker)?;
        logging::add_to_linker(&mut linker)?;
        config::add_to_linker(&mut linker)?;
        bindings::link_v0_1(&mut linker)?;
        if capabilities.keyvalue.is_some() {
            keyvalue::add_to_linker(&mut linker)?;
        }
        if capabilities.eventstore.is_some() {
            eventstore::add_to_linker(&mut linker)?;
        }
        if capabilities.http.is_some() {
            http::add_to_linker(&mut linker)?;
        }
        Ok(())
    };
    link()
        .map_err(anyhow::Error::from)
        .context("linking the eventhost imports")?;
    Ok(linker)
}

/// A component importing a state capability its manifest does not grant is
/// refused with the section that would grant it, rather than with the
/// linker's "no matching implementation".
fn check_granted_imports(
    engine: &Engine,
    component: &Component,
    capabilities: &Capabilities,
) -> Result<()> {
    let component_type = component.component_type();
    for (name, _) in component_type.imports(engine) {
        let section = if name.starts_with("wasi:keyvalue/") && capabilities.keyvalue.is_none() {
            "[keyvalue] (the buckets it may open)"
        } else if name.starts_with("eventhost:handler/event-store@")
            && capabilities.eventstore.is_none()
        {
            "[eventstore] (the subjects it may read and append to)"
        } else if name.starts_with("wasi:http/") && capabilities.http.is_none() {
            "[http] (the origins it may call)"
        } else {
            continue;
        };
        bail!(
            "the component imports {name}, which its manifest does not grant: add a {section} section"
        );
    }
    Ok(())
}

/// A compiled, linked handler, ready to instantiate per event.
pub struct HandlerComponent {
    engine: Engine,
    slots: Arc<Semaphore>,
    pre: HandlerPre<InvocationState>,
    spec: Arc<HandlerSpec>,
}

/// What one invocation produced.
#[derive(Debug)]
pub struct Invocation {
    /// What the handler asked for, or why it produced nothing: in that case
    /// nothing it emitted or wrote may take effect.
    pub result: Result<Effects, Stop>,
    pub elapsed: Duration,
    /// The part of `elapsed` spent creating the instance.
    pub instantiation: Duration,
    /// Peak linear memory of the instance, in bytes.
    pub peak_memory: usize,
    /// Key-value use per bucket (name, usage).
    pub keyvalue: Vec<(String, keyvalue::BucketUsage)>,
    /// Event-store events read, and calls refused for want of a grant.
    pub events_read: usize,
    pub events_denied: u64,
    /// Outbound HTTP requests, sent or refused.
    pub http: Vec<http::HttpCall>,
}

/// A successful invocation's effects, still buffered.
#[derive(Debug, Default)]
pub struct Effects {
    pub emitted: Vec<EmittedEvent>,
    /// Key-value writes, each conditional on the revision first read.
    pub writes: Vec<PlannedWrite>,
    pub appends: Vec<eventstore::Append>,
}

impl Effects {
    /// Whether committing needs more than publishing the emitted events.
    pub fn changes_state(&self) -> bool {
        !self.writes.is_empty() || !self.appends.is_empty()
    }
}

/// Why an invocation produced no effects.
#[derive(Debug)]
pub enum Stop {
    /// The attempt failed (the guest's doing): the retry policy decides.
    Failed(Failure),
    /// The host stopped it: run it again, without counting an attempt.
    Interrupted(Interruption),
}

/// Why the host stopped an invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interruption {
    /// It read state that another commit is changing right now.
    Conflict(Conflict),
    /// JetStream did not answer a state read.
    StoreUnavailable(String),
}

impl HandlerComponent {
    pub fn spec(&self) -> &HandlerSpec {
        &self.spec
    }

    /// Runs `event` (attempt number `attempt`) through a fresh instance;
    /// `trace` is the handling's span, named in outbound calls.
    /// Never panics and never returns an error of its own: every way a guest
    /// can fail becomes a [`Stop`].
    pub async fn invoke(
        &self,
        event: &Event,
        attempt: u32,
        trace: Option<&TraceContext>,
    ) -> Invocation {
        // Waiting for a slot is not the guest's time: it starts the clock
        // only once it has one. The semaphore is never closed.
        let _slot = self.slots.acquire().await.expect("never closed");
        let started = Instant::now();
        let timeout = self.spec.bounds.timeout;
        // Only outbound calls need to know who calls.
        let caller = match self.spec.capabilities.http {
            Some(_) => http::Caller {
                source: event.source().to_string(),
                id: event.id().to_string(),
                traceparent: trace.map(TraceContext::traceparent),
            },
            None => http::Caller::default(),
        };
        let mut store = self.new_store(started, started + timeout, caller);

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
        let keyvalue = state.keyvalue.usage();
        let (events_read, events_denied) = state.events.usage();
        let http = state.http.calls();
        let result = self
            .verdict(outcome, &mut state)
            .map_err(|stop| match stop {
                // A failure's message goes to the log and the dead letter.
                Stop::Failed(mut failure) => {
                    let redacted = state.config.redactor().redact(&failure.message);
                    if let std::borrow::Cow::Owned(clean) = redacted {
                        failure.message = clean;
                    }
                    Stop::Failed(failure)
                }
                interrupted => interrupted,
            });
        Invocation {
            result,
            elapsed: started.elapsed(),
            instantiation,
            peak_memory: state.memory.peak,
            keyvalue,
            events_read,
            events_denied,
            http,
        }
    }

    fn verdict(
        &self,
        outcome: Result<
            wasmtime::Result<Result<(), types::HandlerError>>,
            tokio::time::error::Elapsed,
        >,
        state: &mut InvocationState,
    ) -> Result<Effects, Stop> {
        let failed = |kind, message: String| Err(Stop::Failed(Failure::new(kind, message)));
        let bounds = &self.spec.bounds;
        // A refusal fails the invocation whatever the guest returned.
        if let Some(refused) = state.refusal() {
            return Err(Stop::Failed(refused));
        }
        if let Some(interruption) = state.interruption() {
            return Err(Stop::Interrupted(interruption));
        }
        let stopped = match outcome {
            Ok(Ok(Ok(()))) => {
                return Ok(Effects {
                    emitted: state.emit.take(),
                    writes: std::mem::take(&mut state.keyvalue).into_writes(),
                    appends: std::mem::take(&mut state.events).into_appends(),
                });
            }
            Ok(Ok(Err(types::HandlerError::Retryable(m)))) => {
                return failed(FailureKind::Retryable, m);
            }
            Ok(Ok(Err(types::HandlerError::Permanent(m)))) => {
                return failed(FailureKind::Permanent, m);
            }
            Err(_) => Failure::new(
                FailureKind::Timeout,
                format!("still running after {:?}", bounds.timeout),
            ),
            Ok(Err(_)) if state.timed_out => Failure::new(
                FailureKind::Timeout,
                format!("interrupted after {:?}", bounds.timeout),
            ),
            Ok(Err(trap)) if trap.downcast_ref() == Some(&wasmtime::Trap::OutOfFuel) => {
                Failure::new(
                    FailureKind::Fuel,
                    format!("used up its fuel ({})", bounds.fuel.unwrap_or_default()),
                )
            }
            Ok(Err(trap)) => Failure::new(FailureKind::Trap, describe_trap(&trap, state)),
        };
        // A refused growth is why a guest fails afterwards: it aborts, or
        // keeps asking until its time or its fuel is up.
        match state.memory.refusal() {
            Some(refusal) => failed(
                FailureKind::MemoryLimit,
                format!("{refusal}; then {stopped}"),
            ),
            None => Err(Stop::Failed(stopped)),
        }
    }

    /// A store for one invocation: fresh state, the memory cap, fuel if
    /// metered, and an epoch callback that yields every tick (queueing for
    /// a turn after the first) and interrupts the guest after `deadline`.
    fn new_store(
        &self,
        started: Instant,
        deadline: Instant,
        caller: http::Caller,
    ) -> Store<InvocationState> {
        let bounds = &self.spec.bounds;
        let memory = usize::try_from(bounds.memory).unwrap_or(usize::MAX);
        turns::invocation_started(started);
        let caps = &self.spec.capabilities;
        let state = InvocationState::new(caps, memory, started, deadline, caller);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        if let Some(fuel) = bounds.fuel {
            store
                .set_fuel(fuel)
                .expect("handlers with fuel limits load into the metered engine");
        }
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|mut ctx| {
            let now = Instant::now();
            if now >= ctx.data().deadline {
                ctx.data_mut().timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // Past its first tick a guest runs only in turns (see `turns`).
            if now < ctx.data().started + EPOCH_TICK {
                return Ok(UpdateDeadline::Yield(1));
            }
            let turn = ctx.data().turn.clone();
            Ok(UpdateDeadline::YieldCustom(1, Box::pin(turn.next())))
        });
        store
    }

    /// One instance kept for many calls. The runtime never does this (see
    /// the module docs); it exists so the sandbox benchmark can show what a
    /// fresh instance per event costs against reusing one.
    pub async fn reused_instance(&self) -> Result<ReusedInstance> {
        let now = Instant::now();
        let far = now + Duration::from_secs(24 * 60 * 60);
        let mut store = self.new_store(now, far, http::Caller::default());
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
        let emitted = self.store.data_mut().emit.take();
        result.map_err(|e| anyhow::anyhow!("the handler failed: {e:?}"))?;
        Ok(emitted)
    }
}

/// The trap, plus what the guest wrote to stderr (a Rust panic message, say).
fn describe_trap(trap: &wasmtime::Error, state: &InvocationState) -> String {
    let stderr = state.stderr.contents();
    let stderr = String::from_utf8_lossy(&stderr);
    let stderr = stderr.trim();
    // The outermost message is wasmtime's "error while executing at wasm
    // backtrace"; the reason is the trap code (or the innermost cause).
    let reason = match trap.downcast_ref::<wasmtime::Trap>() {
        Some(code) => code.to_string(), // "wasm trap: …"
        None => trap.root_cause().to_string(),
    };
    if stderr.is_empty() {
        reason
    } else {
        format!("{reason}; guest stderr: {stderr}")
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
