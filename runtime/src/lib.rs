//! eventhost: a WebAssembly function host for CloudEvents on NATS JetStream.
//!
//! Handlers are WebAssembly components written against the WIT contract in
//! `wit/`. The host subscribes to JetStream on their behalf and owns
//! everything that makes event handling safe; a handler holds only business
//! logic. An event travels through these modules, in this order:
//!
//! 1. [`source`]: a durable JetStream pull consumer per handler and subject;
//! 2. [`decode`]: the NATS message becomes a CloudEvent (structured or binary);
//! 3. [`policy`]: idempotency, per-key ordering, and retry with backoff;
//! 4. [`sandbox`]: a fresh, limited component instance runs the handler;
//! 5. [`outcome`]: emitted events are published, or the event is parked in
//!    the dead-letter queue; then the input is acked (or NAKed for a retry).
//!
//! [`dispatch`] drives that loop for one handler; [`runtime`] loads every
//! handler from the plugins directory ([`plugins`], [`manifest`]), follows
//! the directory while running (hot reload), serves `/metrics` ([`metrics`]),
//! health and the handler list over HTTP, and runs until shutdown. Each
//! event is a span in its W3C trace ([`trace`]), exported over OTLP when
//! asked ([`telemetry`]). [`dlq`] is the operator's side of the dead-letter
//! queue (`eventhost dlq`).

pub mod config;
pub mod decode;
pub mod dispatch;
pub mod dlq;
pub mod encode;
pub mod failpoint;
pub mod failure;
pub mod fleet;
pub mod manifest;
pub mod metrics;
pub mod nats;
pub mod outcome;
pub mod plugins;
pub mod policy;
pub mod projection;
pub mod runtime;
pub mod sandbox;
pub mod server;
pub mod source;
pub mod store;
pub mod subject;
pub mod telemetry;
pub mod trace;
