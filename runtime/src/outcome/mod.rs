//! The last stage: what becomes of an input message once the policy has
//! decided.
//!
//! - [`outputs`]: a successful invocation's emitted (and appended) events
//!   are completed and encoded;
//! - [`commit`]: its state changes and emitted events are applied all or
//!   nothing, exactly once, before the input is acked;
//! - [`dead_letter`]: an event that cannot be handled is parked, byte for
//!   byte and with its story, before the input is acked;
//! - [`settle`]: the ack or delayed NAK that tells JetStream.

pub mod commit;
pub mod dead_letter;
pub mod outputs;
pub mod plan;

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};

pub use commit::{CommitError, Committer};
pub use dead_letter::DeadLetter;

/// How the input message is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Handled (or dead-lettered): remove it from the consumer.
    Ack,
    /// Deliver it again after `delay`, to this or another replica. JetStream
    /// keeps the message meanwhile, so a crash loses nothing.
    Retry { delay: Duration },
}

/// Sends the settlement to JetStream. A failure here is logged but not
/// fatal: the message is then redelivered after its ack wait, and the
/// idempotency record makes that harmless.
pub async fn settle(message: &Message, how: Settle) {
    let kind = match how {
        Settle::Ack => AckKind::Ack,
        Settle::Retry { delay } => AckKind::Nak(Some(delay)),
    };
    if let Err(err) = message.ack_with(kind).await {
        tracing::warn!(error = %err, ?how, "could not settle the message; it will be redelivered");
    }
}

/// Resets the message's ack timer: it is held on purpose (waiting behind an
/// earlier event with the same key, or for an in-place retry).
pub async fn keep_alive(message: &Message) {
    if let Err(err) = message.ack_with(AckKind::Progress).await {
        tracing::debug!(error = %err, "could not extend the ack wait of a held message");
    }
}
