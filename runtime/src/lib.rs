//! eventhost: a WebAssembly function host for CloudEvents on NATS JetStream.
//!
//! Handlers are WebAssembly components written against the WIT contract in
//! `wit/`. The host subscribes to JetStream on their behalf and owns
//! everything that makes event handling safe; a handler holds only business
//! logic. An event travels through these modules, in this order:
//!
//! 1. [`source`]: a durable JetStream pull consumer per handler and subject;
//! 2. [`decode`]: the NATS message becomes a CloudEvent (structured or binary);
//! 3. [`policy`]: what the host does with the event after each attempt;
//! 4. [`sandbox`]: a fresh, limited component instance runs the handler;
//! 5. [`outcome`]: emitted events are completed and published, then the input
//!    is acked (or terminated, or retried).
//!
//! [`dispatch`] drives that loop for one handler; [`runtime`] loads every
//! handler from the plugins directory ([`plugins`], [`manifest`]) and runs
//! them until shutdown.

pub mod config;
pub mod decode;
pub mod dispatch;
pub mod encode;
pub mod manifest;
pub mod nats;
pub mod outcome;
pub mod plugins;
pub mod policy;
pub mod runtime;
pub mod sandbox;
pub mod source;
pub mod subject;
