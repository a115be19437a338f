//! Giving up on an event: the dispatcher's side of the dead-letter queue.
//!
//! The letter itself (its headers, its subject, how it keeps the original)
//! is [`crate::outcome::dead_letter`]. Here is the order of the steps, which
//! is what makes a dead letter happen once: store the letter, then record the
//! event's outcome, then ack. A letter that cannot be stored leaves the
//! event in its stream, its failure on record, for another try.

use async_nats::jetstream::Message;
use chrono::{DateTime, Utc};

use super::Dispatcher;
use super::attempt::Next;
use crate::decode::{ContentMode, Decoded};
use crate::failure::DeadLetterReason;
use crate::metrics::Outcome;
use crate::outcome::{self, DeadLetter, Settle};
use crate::policy::dedup::Lease;

impl Dispatcher {
    /// Dead-letters a claimed event, then records its one outcome and acks.
    pub(super) async fn dead_letter_claimed(
        &self,
        message: &Message,
        input: &Decoded,
        lease: Lease,
        reason: DeadLetterReason,
        error: &str,
        attempts: u32,
    ) -> Next {
        let first_failure = lease.history.first_failure;
        let record = lease.record_ref(&self.processed);
        let letter = self.letter(
            Some(input.mode),
            reason,
            error,
            attempts,
            first_failure,
            Some(&record),
        );
        match self.store_dead_letter(message, letter).await {
            Next::Settled => {
                let version = self.version();
                if let Err(err) = self.processed.dead_lettered(lease, version, reason).await {
                    tracing::warn!(
                        error = format!("{err:#}"),
                        "could not record the dead letter"
                    );
                }
                self.ack_dead_letter(message, reason, error, attempts).await
            }
            again => {
                self.keep_failure(lease, reason, error).await;
                again
            }
        }
    }

    /// Gives up the claim on an event whose dead letter could not be
    /// stored, keeping its failure on record: the next delivery then
    /// dead-letters it with the real kind and message, not as one whose
    /// attempts ended without an outcome.
    async fn keep_failure(&self, lease: Lease, reason: DeadLetterReason, error: &str) {
        let DeadLetterReason::Failed(kind) = reason else {
            return self.release(lease).await;
        };
        if let Err(err) = self.processed.failed(lease, kind, error).await {
            tracing::warn!(error = format!("{err:#}"), "could not record the failure");
        }
    }

    /// Parks a message that never reached the handler (not a CloudEvent, too
    /// large) in the dead-letter queue, then acks it.
    pub(super) async fn dead_letter_unread(
        &self,
        message: &Message,
        reason: DeadLetterReason,
        error: &str,
        attempts: u32,
    ) -> Next {
        let letter = self.letter(None, reason, error, attempts, None, None);
        match self.store_dead_letter(message, letter).await {
            Next::Settled => self.ack_dead_letter(message, reason, error, attempts).await,
            again => again,
        }
    }

    fn letter<'a>(
        &'a self,
        mode: Option<ContentMode>,
        reason: DeadLetterReason,
        error: &'a str,
        attempts: u32,
        first_failure: Option<DateTime<Utc>>,
        record: Option<&'a str>,
    ) -> DeadLetter<'a> {
        let now = Utc::now();
        DeadLetter {
            handler: self.name(),
            version: self.version(),
            reason,
            error,
            attempts,
            first_failure: first_failure.unwrap_or(now),
            last_failure: now,
            mode,
            record,
        }
    }

    /// Stores a dead letter; if it cannot be stored the message is kept for
    /// another try.
    async fn store_dead_letter(&self, message: &Message, letter: DeadLetter<'_>) -> Next {
        match letter.publish(&self.js, message).await {
            Ok(()) => Next::Settled,
            Err(err) => {
                tracing::error!(
                    error = format!("{err:#}"),
                    kind = letter.reason.as_str(),
                    "could not store the dead letter; the event stays in its stream for now"
                );
                Next::host_trouble()
            }
        }
    }

    async fn ack_dead_letter(
        &self,
        message: &Message,
        reason: DeadLetterReason,
        error: &str,
        attempts: u32,
    ) -> Next {
        outcome::settle(message, Settle::Ack).await;
        let outcome = match reason.is_invalid_input() {
            true => Outcome::Invalid,
            false => Outcome::DeadLettered,
        };
        self.count(outcome);
        tracing::warn!(
            outcome = outcome.as_str(),
            kind = reason.as_str(),
            error,
            attempts,
            "moved to the dead-letter queue"
        );
        Next::Settled
    }
}
