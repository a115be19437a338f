//! The guarantees, each checked end to end: real `nats-server` processes
//! (the pinned release; three-node clusters where replication matters),
//! the real `eventhost` binary and real components built from `examples/`.
//!
//! One test binary, so wasmtime is linked once, with a module per section
//! of `docs/guarantees.md`; that page links each promise to its test. The
//! crash and soak suites are binaries of their own (`tests/crash.rs`,
//! `tests/soak.rs`): they kill runtimes on purpose and run longest.
//!
//! Run one section with a filter: `cargo test --release -p eventhost
//! --features eventhost/failpoints --test guarantees -- state::`.

#[path = "../support/mod.rs"]
mod support;

mod cli;
mod console;
mod contracts;
mod delivery;
mod fleet;
mod http;
mod languages;
mod observe;
mod operations;
mod reload;
mod sandbox;
mod state;
