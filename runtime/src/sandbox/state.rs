//! The store data of one invocation, and the list of capabilities.
//!
//! [`capabilities!`] below is the one place that lists the host's
//! capabilities. From that list it makes what the rest of the sandbox loops
//! over: the grants a handler resolved at load ([`Capabilities`]), every
//! capability's state in one invocation, the linking of what is granted,
//! the check that a component imports nothing it was not granted, and the
//! collection of refusals, interruptions, effects, usage and metrics. Adding a
//! capability is one module implementing [`Capability`] and one line here.
//!
//! A fresh [`InvocationState`] is made for every event, so nothing a guest
//! does can leak into the next event. Each capability reaches only its own
//! state, through its [`View`].

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use prometheus_client::registry::Registry;
use wasmtime::Engine;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtxView, WasiHttpView};

use super::capability::{Capability, InvocationContext, View};
use super::config::Config;
use super::emit::Emit;
use super::eventstore::EventStore;
use super::http::Http;
use super::keyvalue::KeyValue;
use super::limiter::MemoryLimiter;
use super::logging::Logging;
use super::turns::Turn;
use super::{Effects, Interruption, Written, v0_1};
use crate::failure::Failure;

/// How much of a guest's stderr (its panic message, say) is kept for the log.
const STDERR_CAPACITY: usize = 16 << 10;

macro_rules! capabilities {
    ($($field:ident: $capability:ty),* $(,)?) => {
        /// What a handler is granted, resolved at load: one grant per
        /// capability, `None` where its manifest grants nothing.
        #[derive(Clone, Default)]
        pub struct Capabilities {
            $(pub $field: Option<Arc<<$capability as Capability>::Grant>>,)*
        }

        /// Every capability's state in one invocation.
        struct States {
            $($field: <$capability as Capability>::State,)*
        }

        impl States {
            fn new(grants: &Capabilities, invocation: &InvocationContext) -> Self {
                States {
                    $($field: <$capability>::state(grants.$field.as_ref(), invocation),)*
                }
            }
        }

        impl InvocationState {
            /// The first refusal a capability made: it fails the invocation
            /// whatever the guest returned.
            pub(super) fn take_refusal(&mut self) -> Option<Failure> {
                None$(.or_else(|| <$capability>::take_refusal(&mut self.capabilities.$field)))*
            }

            /// Why a capability stopped the invocation, if one did.
            pub(super) fn take_interruption(&mut self) -> Option<Interruption> {
                None$(.or_else(|| <$capability>::take_interruption(&mut self.capabilities.$field)))*
            }

            /// What the capabilities buffered, for the commit.
            pub(super) fn hand_over(&mut self) -> Effects {
                let mut effects = Effects::default();
                $(<$capability>::hand_over(&mut self.capabilities.$field, &mut effects);)*
                effects
            }

            /// What the invocation used, for the metrics.
            pub(super) fn usage(&self) -> Usage {
                Usage {
                    $($field: <$capability>::usage(&self.capabilities.$field),)*
                }
            }
        }

        /// What one invocation used the capabilities for.
        #[derive(Debug, Default)]
        pub struct Usage {
            $($field: <$capability as Capability>::Usage,)*
        }

        /// Every capability's metric families, made once per runtime.
        #[derive(Clone, Default)]
        pub struct CapabilityMetrics {
            $($field: <$capability as Capability>::Metrics,)*
        }

        impl CapabilityMetrics {
            pub fn register(&self, registry: &mut Registry) {
                $(<$capability>::register(&self.$field, registry);)*
            }

            /// Handler `handler`'s series, those its `grants` name made now.
            pub fn series(&self, handler: &str, grants: &Capabilities) -> CapabilitySeries {
                CapabilitySeries {
                    $($field: <$capability>::series(&self.$field, handler, grants.$field.as_deref()),)*
                }
            }
        }

        /// One handler version's series of every capability's metrics.
        pub struct CapabilitySeries {
            $($field: <$capability as Capability>::Series,)*
        }

        impl CapabilitySeries {
            /// Counts what one invocation used.
            pub fn record(&self, usage: &Usage) {
                $(<$capability>::record(&self.$field, &usage.$field);)*
            }

            /// Counts what a commit changed.
            pub fn committed(&self, written: &Written) {
                $(<$capability>::committed(&self.$field, written);)*
            }
        }

        impl Capabilities {
            /// The metric label of a store (bucket, stream) named by its
            /// physical name: the name its grant gives it, which a rebuilt
            /// read model's new generation keeps.
            pub fn store_label(&self, physical: &str) -> String {
                None$(.or_else(|| self.$field.as_deref().and_then(|g| <$capability>::store_label(g, physical))))*
                    .unwrap_or_else(|| physical.to_string())
            }

            /// Whether a granted capability needs each event claimed
            /// before it runs ([`Capability::NEEDS_CLAIM`]).
            pub fn need_claim(&self) -> bool {
                false $(|| (<$capability>::NEEDS_CLAIM && self.$field.is_some()))*
            }

            /// Every store the grants name, by label.
            pub fn stores(&self) -> Vec<String> {
                let mut stores = Vec::new();
                $(stores.extend(self.$field.as_deref().map(<$capability>::stores).unwrap_or_default());)*
                stores
            }

            /// The streams the grants let a commit write state to, by
            /// physical name, each once.
            pub fn written_streams(&self) -> Vec<String> {
                let mut streams = Vec::new();
                $(streams.extend(self.$field.as_deref().map(<$capability>::written_streams).unwrap_or_default());)*
                streams.sort();
                streams.dedup();
                streams
            }
        }

        /// Links every capability `grants` grants, and those every handler has.
        fn add_granted(linker: &mut Linker<InvocationState>, grants: &Capabilities) -> wasmtime::Result<()> {
            $(
                if grants.$field.is_some() || <$capability>::GRANTED_BY.is_none() {
                    <$capability>::add_to_linker(linker)?;
                }
            )*
            Ok(())
        }

        /// The manifest section that would grant `import`, if it needs one
        /// that `grants` lacks.
        fn missing_grant(import: &str, grants: &Capabilities) -> Option<&'static str> {
            $(
                if grants.$field.is_none()
                    && <$capability>::IMPORTS.iter().any(|p| import.starts_with(p))
                {
                    if let Some(section) = <$capability>::GRANTED_BY {
                        return Some(section);
                    }
                }
            )*
            None
        }

        $(
            impl View<$capability> for InvocationState {
                fn state(&mut self) -> &mut <$capability as Capability>::State {
                    &mut self.capabilities.$field
                }
            }
        )*
    };
}

capabilities! {
    emit: Emit,
    logging: Logging,
    config: Config,
    keyvalue: KeyValue,
    eventstore: EventStore,
    http: Http,
}

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
    capabilities: States,
}

impl InvocationState {
    pub fn new(grants: &Capabilities, memory_cap: usize, invocation: &InvocationContext) -> Self {
        // Nothing is granted: no preopened directories, environment, args,
        // network or stdin. Clocks and randomness are WASI's defaults.
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder().stderr(stderr.clone()).build();
        InvocationState {
            wasi,
            table: ResourceTable::new(),
            stderr,
            memory: MemoryLimiter::new(memory_cap),
            started: invocation.started,
            deadline: invocation.deadline,
            timed_out: false,
            turn: Turn::default(),
            capabilities: States::new(grants, invocation),
        }
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

impl WasiHttpView for InvocationState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let http = &mut self.capabilities.http;
        WasiHttpCtxView {
            ctx: &mut http.ctx,
            table: &mut self.table,
            hooks: &mut http.hooks,
        }
    }
}

/// WASI with nothing granted, the capabilities every handler has, and
/// those its manifest grants.
pub(super) fn link(engine: &Engine, grants: &Capabilities) -> Result<Linker<InvocationState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(anyhow::Error::from)
        .context("linking WASI")?;
    let mut link = || -> wasmtime::Result<()> {
        // Types only: components import them for the records the
        // capabilities' functions take, under both contract versions.
        linker.instance("eventhost:handler/types@0.2.0")?;
        linker.instance(&v0_1("types"))?;
        add_granted(&mut linker, grants)
    };
    link()
        .map_err(anyhow::Error::from)
        .context("linking the eventhost imports")?;
    Ok(linker)
}

/// A component importing a capability its manifest does not grant is
/// refused with the section that would grant it, rather than with the
/// linker's "no matching implementation".
pub(super) fn check_granted_imports(
    engine: &Engine,
    component: &Component,
    grants: &Capabilities,
) -> Result<()> {
    for (import, _) in component.component_type().imports(engine) {
        if let Some(section) = missing_grant(import, grants) {
            bail!(
                "the component imports {import}, which its manifest does not grant: add a {section} section"
            );
        }
    }
    Ok(())
}
