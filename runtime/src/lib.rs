//! eventhost: a WebAssembly function host for CloudEvents on NATS JetStream.
//!
//! Handlers are WebAssembly components written against the WIT contract in
//! `wit/`. The host subscribes to JetStream on their behalf and owns
//! everything that makes event handling safe; a handler holds only business
//! logic. An event travels through these modules, in this order:
//!
//! 1. [`source`]: a durable JetStream pull consumer per handler and subject;
//! 2. [`event::decode`]: the NATS message becomes a CloudEvent (structured
//!    or binary), whose data [`contract`] checks against its type's schema
//!    before each attempt;
//! 3. [`policy`]: idempotency, per-key ordering, and retry with backoff;
//! 4. [`sandbox`]: a fresh, limited component instance runs the handler;
//! 5. [`outcome`]: state and emitted events are committed, or the event is
//!    parked in the dead-letter queue; then the input is acked (or NAKed for
//!    a retry).
//!
//! [`dispatch`] drives that loop for one handler. [`host`] is the runtime as
//! a whole: it loads every handler ([`handler`]: manifest and component)
//! from the plugins directory or a deploy bucket, follows them while running (hot reload), serves
//! `/metrics` ([`metrics`]), health and the handler list over HTTP, and runs
//! until shutdown. [`fleet`] is what runtimes share through NATS (deploys,
//! announcements, per-key leases); [`jetstream`] connects and declares
//! streams; [`store`] is the part of JetStream that state is built on.
//! [`dead_letter_queue`] is the operator's side of the dead-letter queue
//! (`eventhost dlq`), [`projection`] the rebuild of a read model, [`catalog`]
//! the event flow the manifests declare (`eventhost catalog`), [`console`]
//! the operator's web pages (`/ui`, `eventhost console`).

pub mod catalog;
pub mod console;
pub mod contract;
pub mod dead_letter_queue;
pub mod dispatch;
pub mod event;
pub mod failpoint;
pub mod failure;
pub mod fleet;
pub mod handler;
pub mod host;
pub mod jetstream;
pub mod ledger;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod projection;
pub mod sandbox;
pub mod source;
pub mod store;
