//! Settling a message: the one place that tells JetStream what became of
//! it (ack, or a delayed NAK).
//!
//! Every message a pull hands over is wrapped in a [`Delivery`] at once, and
//! only [`Delivery::settle`] acks or NAKs it. It takes the delivery by value,
//! so the compiler sees to it that no message is settled twice; a delivery
//! dropped unsettled is logged as a bug (JetStream then redelivers it after
//! its ack wait, and the idempotency record makes that harmless). The
//! stages before it (claim, run, commit, dead letter) return a
//! [`Settlement`] and never touch the message's acknowledgement.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};

use crate::policy::HOST_RETRY_DELAY;

/// What becomes of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settlement {
    /// Handled, a duplicate, or dead-lettered: remove it from the consumer.
    Ack,
    /// Deliver it again after `delay`, to this or another replica. JetStream
    /// keeps the message meanwhile, so a crash loses nothing. `failed` says
    /// whether the handler failed (an attempt was used up) or the host could
    /// not proceed.
    Retry { delay: Duration, failed: bool },
}

impl Settlement {
    /// The host's own trouble: try again soon, without counting an attempt.
    pub(super) fn host_trouble() -> Settlement {
        Settlement::Retry {
            delay: HOST_RETRY_DELAY,
            failed: false,
        }
    }

    /// Hand the message back unattempted, after `delay`.
    pub(super) fn hand_back(delay: Duration) -> Settlement {
        Settlement::Retry {
            delay,
            failed: false,
        }
    }
}

/// A message taken from a consumer and not yet settled.
pub(super) struct Delivery {
    message: Message,
    settled: bool,
}

impl Delivery {
    pub(super) fn new(message: Message) -> Self {
        Delivery {
            message,
            settled: false,
        }
    }

    pub(super) fn message(&self) -> &Message {
        &self.message
    }

    /// JetStream's delivery count (1 on the first delivery).
    pub(super) fn count(&self) -> u32 {
        let delivered = self.message.info().map(|i| i.delivered).unwrap_or(1);
        u32::try_from(delivered).unwrap_or(u32::MAX).max(1)
    }

    /// Resets the ack timer: the message is held on purpose (waiting behind
    /// an earlier event with its key, or for an in-place retry).
    pub(super) async fn keep_alive(&self) {
        keep_alive(&self.message).await
    }

    /// Tells JetStream what became of the message. A failure to say so is
    /// logged, not fatal: the message is then redelivered after its ack
    /// wait, and the idempotency record makes that harmless.
    pub(super) async fn settle(mut self, settlement: Settlement) {
        self.settled = true;
        let kind = match settlement {
            Settlement::Ack => AckKind::Ack,
            Settlement::Retry { delay, .. } => AckKind::Nak(Some(delay)),
        };
        if let Err(err) = self.message.ack_with(kind).await {
            tracing::warn!(error = %err, ?settlement, "could not settle the message; it will be redelivered");
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            tracing::error!(
                subject = %self.message.subject,
                "a message was dropped without being settled (a bug); JetStream redelivers it after its ack wait"
            );
        }
    }
}

/// Resets a held message's ack timer (see [`Delivery::keep_alive`]).
pub(super) async fn keep_alive(message: &Message) {
    if let Err(err) = message.ack_with(AckKind::Progress).await {
        tracing::debug!(error = %err, "could not extend the ack wait of a held message");
    }
}
