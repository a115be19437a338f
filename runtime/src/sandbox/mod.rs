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
//! Each host capability is one module with one face, the [`Capability`]
//! trait ([`capability`]): its manifest section, what it resolves at load,
//! its per-invocation state, how it links, and its effects ([`emit`],
//! [`logging`], [`config`], [`keyvalue`], [`eventstore`], [`http`]). The
//! list of them is in [`state`], the only place that names them all. A
//! capability is linked only for handlers whose manifest grants it, so a
//! component importing one it was not granted fails to load, naming the
//! import and the manifest section that would grant it.
//!
//! The WIT contract's host bindings are generated here, at the root of the
//! sandbox, because every capability implements a part of them. Components
//! built against `eventhost:handler@0.1.0` import the same emitter, logging
//! and config interfaces under the 0.1.0 names, with types of the same
//! shape (0.2.0 only added interfaces); each of those capabilities links
//! its functions under both names ([`v0_1`]), and the 0.1.0 `handle`
//! export type-checks against 0.2.0's.
//!
//! Runaway guests are stopped by epoch interruption: a ticker thread bumps the
//! engine's epoch every [`EPOCH_TICK`], and at each tick the guest yields to
//! the async executor and is interrupted once past its deadline. A guest
//! still running after its first tick runs only in turns with the other
//! long runners, on fewer workers than the machine has ([`turns`]), so
//! spinning guests cannot starve other handlers. Time a guest spends blocked in the host
//! (a WASI sleep, a state read) is bounded by an outer `tokio::time::timeout`.

mod cache;
pub mod capability;
pub mod config;
pub mod emit;
mod engine;
pub mod eventstore;
pub mod http;
mod instance;
pub mod keyvalue;
mod limiter;
pub mod logging;
pub mod secrets;
mod state;
mod store_wait;
mod turns;

use std::time::Duration;

use anyhow::{Context, Result};
use cloudevents::AttributesReader;
use cloudevents::event::Data;
use wasmtime::component::Component;

use crate::failure::{Conflict, Failure};
use crate::ledger::record::PlannedWrite;
pub use cache::{CacheUse, CompiledCache};
pub use capability::Capability;
use engine::EngineSet;
pub use instance::{HandlerComponent, ReusedInstance};
pub use state::{Capabilities, CapabilityMetrics, CapabilitySeries, Usage};

// The state capabilities (`wasi:keyvalue`, the event store) are async,
// because they read JetStream, and trappable, because a read that finds
// another commit under way must stop the invocation (it is re-run) rather
// than answer. Their WIT errors are produced from the capabilities' own
// error types, which carry those stops.
wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: {
        "wasi:keyvalue": async | trappable,
        "eventhost:handler/event-store": async | trappable,
    },
    exports: { default: async },
    with: {
        "wasi:keyvalue/store.bucket": keyvalue::BucketRef,
    },
    trappable_error_type: {
        "wasi:keyvalue/store.error" => keyvalue::KvError,
        "eventhost:handler/event-store.error" => eventstore::EventStoreError,
    },
});

pub use self::eventhost::handler::types;

/// An event the guest asked to publish (or append), as it gave it.
pub use types::OutgoingEvent as EmittedEvent;

/// The released contract version whose interface names are still served.
pub const V0_1: &str = "0.1.0";

/// The 0.1.0 name of `interface`.
pub fn v0_1(interface: &str) -> String {
    format!("eventhost:handler/{interface}@{V0_1}")
}

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
        state::check_granted_imports(&set.engine, &component, &spec.capabilities)?;
        let linker = state::link(&set.engine, &spec.capabilities)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .context("the component needs imports eventhost does not provide")?;
        let pre = HandlerPre::new(pre)
            .map_err(anyhow::Error::from)
            .context("the component does not implement the eventhost:handler/handler world")?;
        let component = HandlerComponent::new(&set.engine, set.slots.clone(), pre, spec);
        Ok((component, cache_use))
    }
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
    /// What the capabilities were used for.
    pub usage: Usage,
}

/// What a commit changed, for the capabilities' metrics once it has.
#[derive(Debug, Default)]
pub struct Written {
    /// (physical bucket, value bytes) per key written.
    pub keys: Vec<(String, u64)>,
    /// Events appended to the event store.
    pub appended: u64,
    /// Events published.
    pub emitted: usize,
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
    StoreUnavailable(crate::store::StoreError),
}

/// The CloudEvent as the WIT `event` record.
pub(crate) fn to_wit(event: &cloudevents::Event, attempt: u32) -> types::Event {
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
