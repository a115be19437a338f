//! Delivery: retry with backoff, the dead-letter queue, per-key ordering,
//! exactly-once handling and outputs, attempts and the idempotency window,
//! and the pull under every handler.

mod attempts;
mod once;
mod outputs;
mod policy;
mod pull;
