//! The one face every host capability shows the sandbox, as Spin's factors
//! and wasmtime-wasi's context and view do it.
//!
//! A capability (emit, logging, config, key-value, event store, HTTP) is a
//! module with a unit type implementing [`Capability`]: the grant it
//! resolved at load, its state in one invocation, the imports it serves and
//! how it links them (through a [`View`] of the store's data, so it never
//! names the sandbox's own types), what it refuses or interrupts, what it
//! hands to the commit, and its metrics: the families it registers, one
//! handler's series of them, and what an invocation and a commit used. The
//! sandbox's centre (`state`) lists the capabilities once and loops over
//! them; it names none of their parts.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;
use wasmtime::component::Linker;
use wasmtime_wasi::WasiView;
use wasmtime_wasi_http::WasiHttpView;

use cloudevents::AttributesReader;

use super::secrets::Redactor;
use super::{Effects, Interruption, Written};
use crate::event::trace::TraceContext;
use crate::failure::Failure;

/// A host capability.
pub trait Capability: Sized + 'static {
    /// What a handler was granted, resolved at load.
    type Grant: Send + Sync + 'static;
    /// Its state in one invocation: fresh for every event.
    type State: Send + 'static;

    /// The manifest section that grants it, named when a component imports
    /// it without the grant. `None`: every handler has it.
    const GRANTED_BY: Option<&'static str>;
    /// The start of every import name it serves (`wasi:keyvalue/`).
    const IMPORTS: &'static [&'static str];
    /// Whether a handler granted it must claim each event before running
    /// it. A run without a claim may run beside a copy of its event, which
    /// is harmless only while every effect can be discarded at the commit
    /// (emitted events: deduplicated by id). Effects that leave NATS (HTTP
    /// calls) cannot be; state changes could be, but their commit takes
    /// the claim's lease (also when it is one atomic batch).
    const NEEDS_CLAIM: bool = false;

    /// A fresh state for one invocation (`grant`: `None` if not granted).
    fn state(grant: Option<&Arc<Self::Grant>>, invocation: &InvocationContext<'_>) -> Self::State;

    /// Links its host functions; each reaches this capability's state only,
    /// through the [`View`].
    fn add_to_linker<T: View<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()>;

    /// The refusal that fails the invocation whatever the guest returned
    /// (a forbidden emit, say), if it made one.
    fn take_refusal(_state: &mut Self::State) -> Option<Failure> {
        None
    }

    /// Why it stopped the invocation for the host's reasons (state being
    /// committed by someone else, JetStream not answering), if it did.
    fn take_interruption(_state: &mut Self::State) -> Option<Interruption> {
        None
    }

    /// Adds what the invocation buffered to what the commit applies; called
    /// only when the guest succeeded.
    fn hand_over(_state: &mut Self::State, _effects: &mut Effects) {}

    /// What one invocation used it for, for its metrics (`()`: nothing
    /// counted).
    type Usage: Default + std::fmt::Debug + Send + 'static;
    /// Its metric families, made once per runtime (`()`: none).
    type Metrics: Default + Clone + Send + Sync + 'static;
    /// One handler version's series of them.
    type Series: Default + Send + Sync + 'static;

    /// What the invocation used, taken when it ends.
    fn usage(_state: &Self::State) -> Self::Usage {
        Self::Usage::default()
    }

    /// Registers its families with the runtime's registry.
    fn register(_metrics: &Self::Metrics, _registry: &mut Registry) {}

    /// Handler `handler`'s series; those its grant names exist from here on,
    /// at zero, so "none yet" is told apart from "not exported".
    fn series(
        _metrics: &Self::Metrics,
        _handler: &str,
        _grant: Option<&Self::Grant>,
    ) -> Self::Series {
        Self::Series::default()
    }

    /// Counts what one invocation used.
    fn record(_series: &Self::Series, _usage: &Self::Usage) {}

    /// Counts what a commit changed on its behalf.
    fn committed(_series: &Self::Series, _written: &Written) {}

    /// The stores (buckets, streams) it keeps a handler's state in, as
    /// metric labels name them: given a store's physical name, the label.
    fn store_label(_grant: &Self::Grant, _physical: &str) -> Option<String> {
        None
    }

    /// Every store its grant names, by label.
    fn stores(_grant: &Self::Grant) -> Vec<String> {
        Vec::new()
    }

    /// The streams its grant lets a commit write state to, by physical
    /// name: where a commit in one atomic batch would go.
    fn written_streams(_grant: &Self::Grant) -> Vec<String> {
        Vec::new()
    }
}

/// What the store's data offers capability `C`: `C`'s own state, and
/// WASI's resource table and HTTP context (wasi:http's bodies are WASI
/// streams, so they share one table).
pub trait View<C: Capability>: WasiView + WasiHttpView + Send + 'static {
    fn state(&mut self) -> &mut C::State;
}

/// What every capability may know of the invocation it serves. Borrowed:
/// a capability copies only what it needs, and only when granted (this is
/// made once per event).
#[derive(Debug, Clone, Copy)]
pub struct InvocationContext<'a> {
    pub started: Instant,
    /// When the invocation times out: calls that wait (HTTP) end by then.
    pub deadline: Instant,
    /// The event being handled (`None`: no event, as in a benchmark's
    /// reused instance).
    pub event: Option<&'a cloudevents::Event>,
    /// The handling's span, named in calls leaving the host.
    pub trace: Option<&'a TraceContext>,
    /// Removes the handler's secrets from what a guest sends out.
    pub redactor: &'a Redactor,
}

/// The event an invocation handles, as calls leaving the host name it.
#[derive(Debug, Clone, Default)]
pub struct EventContext {
    pub source: String,
    pub id: String,
    /// W3C `traceparent` of the handling span.
    pub traceparent: Option<String>,
}

impl EventContext {
    /// The invocation's event, owned.
    pub fn of(invocation: &InvocationContext<'_>) -> Self {
        let Some(event) = invocation.event else {
            return EventContext::default();
        };
        EventContext {
            source: event.source().to_string(),
            id: event.id().to_string(),
            traceparent: invocation.trace.map(TraceContext::traceparent),
        }
    }
}

/// A handler's use of one store: a granted bucket (by the name its grant
/// gives it) or an event-store stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub handler: String,
    pub store: String,
}

impl StoreLabels {
    pub fn new(handler: &str, store: &str) -> Self {
        StoreLabels {
            handler: handler.to_string(),
            store: store.to_string(),
        }
    }
}
