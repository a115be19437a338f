//! Host bindings for the `eventhost:handler@0.2.0` world, generated from
//! `wit/`, and the aliases that keep `@0.1.0` components loading.
//!
//! The state capabilities (`wasi:keyvalue`, the event store) are async,
//! because they read JetStream, and trappable, because a read that finds
//! another commit under way must stop the invocation (it is re-run) rather
//! than answer. Their WIT errors are produced from the capabilities' own
//! error types, which carry those stops.
//!
//! Components built against `eventhost:handler@0.1.0` import the same
//! emitter, logging and config interfaces under the 0.1.0 names, with types
//! of the same shape (0.2.0 only added interfaces). Component types are
//! structural, so the 0.2.0 host functions are linked under the 0.1.0 names
//! as they are, and the 0.1.0 `handle` export type-checks against 0.2.0's.

use wasmtime::Result;
use wasmtime::component::Linker;

use super::state::InvocationState;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: {
        "wasi:keyvalue": async | trappable,
        "eventhost:handler/event-store": async | trappable,
    },
    exports: { default: async },
    with: {
        "wasi:keyvalue/store.bucket": super::keyvalue::BucketRef,
    },
    trappable_error_type: {
        "wasi:keyvalue/store.error" => super::keyvalue::KvError,
        "eventhost:handler/event-store.error" => super::eventstore::EventStoreError,
    },
});

pub use self::eventhost::handler::types;

/// The contract version every component must target one of.
pub const V0_1: &str = "0.1.0";

/// Links the 0.1.0 names of the interfaces 0.2.0 kept unchanged.
pub fn link_v0_1(linker: &mut Linker<InvocationState>) -> Result<()> {
    let name = |interface: &str| format!("eventhost:handler/{interface}@{V0_1}");
    // Types only; components import it for the records the others use.
    linker.instance(&name("types"))?;
    linker.instance(&name("emitter"))?.func_wrap(
        "emit",
        |mut store, (event,): (types::OutgoingEvent,)| {
            let state: &mut InvocationState = store.data_mut();
            Ok((state.emit.emit(event),))
        },
    )?;
    linker.instance(&name("logging"))?.func_wrap(
        "log",
        |store, (level, message): (types::Level, String)| {
            let state: &InvocationState = store.data();
            state.logging.log(level, &message);
            Ok(())
        },
    )?;
    linker
        .instance(&name("config"))?
        .func_wrap("get", |store, (key,): (String,)| {
            let state: &InvocationState = store.data();
            Ok((state.config.get(&key),))
        })?;
    Ok(())
}
