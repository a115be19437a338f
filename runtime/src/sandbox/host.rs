//! The host side of one invocation: the store's data, the WIT imports the
//! guest calls (`emit`, `log`, `config.get`) and the memory limiter.
//!
//! A fresh [`InvocationState`] is made for every event, so nothing a guest
//! does can leak into the next event.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::HandlerIdentity;
use super::bindings::eventhost::handler::{config, emitter, logging, types};
use crate::decode::validate_attribute_name;
use crate::subject;

/// Most events one invocation may emit.
const MAX_EMITTED_EVENTS: usize = 1000;
/// Most data bytes, summed, one invocation may emit.
const MAX_EMITTED_BYTES: usize = 16 << 20;
/// How much of a guest's stderr (its panic message, say) is kept for the log.
const STDERR_CAPACITY: usize = 16 << 10;

/// Attributes the host owns or that have their own field in `outgoing-event`;
/// a guest may not smuggle them in as extensions.
const RESERVED_EXTENSIONS: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "causationid",
];

pub struct InvocationState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) stderr: MemoryOutputPipe,
    pub(super) memory: MemoryLimiter,
    pub(super) identity: Arc<HandlerIdentity>,
    pub(super) deadline: Instant,
    pub(super) timed_out: bool,
    pub(super) emitted: Vec<types::OutgoingEvent>,
    emitted_bytes: usize,
    /// Set when an `emit` was refused: the invocation fails even if the guest
    /// ignores the error, so a handler cannot half-succeed.
    pub(super) refused_emit: Option<String>,
}

impl InvocationState {
    pub fn new(identity: Arc<HandlerIdentity>, deadline: Instant) -> Self {
        // Nothing is granted: no preopened directories, environment, args,
        // network or stdin. Clocks and randomness are WASI's defaults.
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        let memory = MemoryLimiter::new(identity.limits().memory.as_u64() as usize);
        InvocationState {
            wasi,
            table: ResourceTable::new(),
            stderr,
            memory,
            identity,
            deadline,
            timed_out: false,
            emitted: Vec::new(),
            emitted_bytes: 0,
            refused_emit: None,
        }
    }

    /// What was emitted so far, leaving the state as if nothing had been.
    pub(super) fn take_emitted(&mut self) -> Vec<types::OutgoingEvent> {
        self.emitted_bytes = 0;
        std::mem::take(&mut self.emitted)
    }

    fn check_emit(&self, event: &types::OutgoingEvent) -> Result<usize, types::EmitError> {
        use types::EmitError::*;
        let destination = &event.destination;
        let concrete = subject::validate(destination).is_ok()
            && !destination.split('.').any(|t| t == "*" || t == ">");
        if !concrete || !self.identity.manifest.may_publish(destination) {
            return Err(DestinationNotAllowed(format!(
                "{destination:?} is not in this handler's `publish` list"
            )));
        }
        if event.type_.is_empty() {
            return Err(InvalidEvent("`type` must not be empty".into()));
        }
        if [&event.id, &event.source]
            .into_iter()
            .flatten()
            .any(String::is_empty)
        {
            return Err(InvalidEvent(
                "`id` and `source` must not be empty when set".into(),
            ));
        }
        if let Some(time) = &event.time {
            chrono::DateTime::parse_from_rfc3339(time)
                .map_err(|e| InvalidEvent(format!("`time` {time:?} is not RFC 3339: {e}")))?;
        }
        if let Some(schema) = &event.dataschema {
            url::Url::parse(schema)
                .map_err(|e| InvalidEvent(format!("`dataschema` {schema:?}: {e}")))?;
        }
        for (name, _) in &event.extensions {
            validate_attribute_name(name).map_err(InvalidEvent)?;
            if RESERVED_EXTENSIONS.contains(&name.as_str()) {
                return Err(InvalidEvent(format!("extension {name:?} is reserved")));
            }
        }
        let size = event.data.as_ref().map_or(0, Vec::len);
        if self.emitted.len() >= MAX_EMITTED_EVENTS {
            return Err(LimitExceeded(format!(
                "more than {MAX_EMITTED_EVENTS} events"
            )));
        }
        if self.emitted_bytes + size > MAX_EMITTED_BYTES {
            return Err(LimitExceeded(format!(
                "more than {MAX_EMITTED_BYTES} bytes of data"
            )));
        }
        Ok(size)
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

impl types::Host for InvocationState {}

impl emitter::Host for InvocationState {
    fn emit(&mut self, event: types::OutgoingEvent) -> Result<(), types::EmitError> {
        match self.check_emit(&event) {
            Ok(size) => {
                self.emitted_bytes += size;
                self.emitted.push(event);
                Ok(())
            }
            Err(err) => {
                let message = format!("emit refused: {err}");
                tracing::warn!(destination = %event.destination, "{message}");
                self.refused_emit.get_or_insert(message);
                Err(err)
            }
        }
    }
}

impl logging::Host for InvocationState {
    fn log(&mut self, level: types::Level, message: String) {
        // Runs inside the invocation's span, which carries the handler name,
        // version and event id.
        use types::Level::*;
        match level {
            Trace => tracing::trace!(target: "guest", "{message}"),
            Debug => tracing::debug!(target: "guest", "{message}"),
            Info => tracing::info!(target: "guest", "{message}"),
            Warn => tracing::warn!(target: "guest", "{message}"),
            Error => tracing::error!(target: "guest", "{message}"),
        }
    }
}

impl config::Host for InvocationState {
    fn get(&mut self, key: String) -> Option<String> {
        self.identity.config.get(&key).cloned()
    }
}

/// Caps the guest's linear memory summed over all its memories
/// (`StoreLimits` caps each memory separately) and records the peak.
pub struct MemoryLimiter {
    cap: usize,
    total: usize,
    pub(super) peak: usize,
    pub(super) exceeded: bool,
}

impl MemoryLimiter {
    fn new(cap: usize) -> Self {
        MemoryLimiter {
            cap,
            total: 0,
            peak: 0,
            exceeded: false,
        }
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let next = self.total - current.min(self.total) + desired;
        if next > self.cap {
            self.exceeded = true;
            return Ok(false);
        }
        self.total = next;
        self.peak = self.peak.max(next);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
