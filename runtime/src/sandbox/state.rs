//! The store data of one invocation: WASI with nothing granted, the memory
//! limiter, and one state per capability.
//!
//! A fresh [`InvocationState`] is made for every event, so nothing a guest
//! does can leak into the next event. Each capability's state lives in its
//! own field and is linked (see [`super::Sandbox::load`]) with a projection
//! onto that field: a capability sees only its own state.

use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::config::ConfigValues;
use super::emit::EmitState;
use super::eventstore::EventStoreState;
use super::http::{Caller, HttpState};
use super::keyvalue::KeyValueState;
use super::limiter::MemoryLimiter;
use super::logging::Logging;
use super::turns::Turn;
use super::{Capabilities, Interruption};
use crate::failure::Failure;

/// How much of a guest's stderr (its panic message, say) is kept for the log.
const STDERR_CAPACITY: usize = 16 << 10;

pub struct InvocationState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) stderr: MemoryOutputPipe,
    pub(super) memory: MemoryLimiter,
    pub(super) started: Instant,
    pub(super) deadline: Instant,
    pub(super) timed_out: bool,
    /// Held only while the guest runs as a long runner (see `turns`).
    pub(super) turn: Turn,
    pub(super) emit: EmitState,
    pub(super) logging: Logging,
    pub(super) config: ConfigValues,
    pub(super) keyvalue: KeyValueState,
    pub(super) events: EventStoreState,
    pub(super) http: HttpState,
}

impl InvocationState {
    pub fn new(
        capabilities: &Capabilities,
        memory_cap: usize,
        started: Instant,
        deadline: Instant,
        caller: Caller,
    ) -> Self {
        // Nothing is granted: no preopened directories, environment, args,
        // network or stdin. Clocks and randomness are WASI's defaults.
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        InvocationState {
            wasi,
            table: ResourceTable::new(),
            stderr,
            memory: MemoryLimiter::new(memory_cap),
            started,
            deadline,
            timed_out: false,
            turn: Turn::default(),
            emit: EmitState::new(capabilities.emit.clone()),
            logging: Logging {
                redactor: capabilities.config.redactor().clone(),
            },
            config: capabilities.config.clone(),
            keyvalue: KeyValueState::new(capabilities.keyvalue.clone()),
            events: EventStoreState::new(capabilities.eventstore.clone()),
            http: HttpState::new(capabilities.http.clone(), caller, deadline),
        }
    }

    /// The first refusal a capability made: it fails the invocation
    /// whatever the guest returned.
    pub(super) fn refusal(&mut self) -> Option<Failure> {
        (self.emit.refused.take())
            .or_else(|| self.keyvalue.refused.take())
            .or_else(|| self.events.refused.take())
            .or_else(|| self.http.take_refusal())
    }

    /// The resource table (shared by WASI and wasi:http, whose streams are
    /// WASI's) beside the HTTP state.
    pub(super) fn table_and_http(&mut self) -> (&mut ResourceTable, &mut HttpState) {
        (&mut self.table, &mut self.http)
    }

    /// Why a capability stopped the invocation, if one did.
    pub(super) fn interruption(&mut self) -> Option<Interruption> {
        (self.keyvalue.interrupted.take()).or_else(|| self.events.interrupted.take())
    }
}

impl WasiView for InvocationState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
