//! Giving up on an event: the attempt's side of the dead-letter queue.
//!
//! The letter itself (its headers, its subject, how it keeps the original)
//! is [`crate::outcome::dead_letter`]. Here is the order of the steps, which
//! is what makes a dead letter happen once: record the decision to give up
//! (the claim is kept), store the letter, record the event's outcome, then
//! ack (the caller settles). A holder killed after storing the letter leaves
//! the decision on record, so its successor stores the same letter again
//! (the queue drops it as a duplicate) instead of running the handler: the
//! event never gets both a dead letter and a success. A letter that cannot
//! be stored leaves the event in its stream, the decision on record, for
//! another try.

use std::time::Duration;

use chrono::Utc;

use super::attempt::Attempts;
use super::settle::{Delivery, Settlement};
use crate::event::decode::{ContentMode, Decoded};
use crate::failure::{DeadLetterReason, chain};
use crate::ledger::processed::Lease;
use crate::metrics::Outcome;
use crate::outcome::DeadLetter;
use crate::outcome::trail::Step;

impl Attempts {
    /// Dead-letters a claimed event, then records its one outcome; then it
    /// is acked. `run`: the attempts made, and how long the last one ran if
    /// it ran now.
    pub(super) async fn dead_letter_claimed(
        &self,
        delivery: &Delivery,
        input: &Decoded,
        lease: Lease,
        (reason, error): (DeadLetterReason, &str),
        run: (u32, Option<Duration>),
    ) -> Settlement {
        let attempts = run.0;
        let lease = match self.processed.give_up(lease).await {
            Ok(lease) => lease,
            Err(err) => {
                tracing::warn!(
                    error = chain(&err),
                    "could not record the decision to dead-letter; the event stays in its stream for now"
                );
                return Settlement::host_trouble();
            }
        };
        let record = lease.record_ref(&self.processed);
        let mut letter = self.letter(Some(input.mode), reason, error, attempts);
        letter.first_failure = lease.history.first_failure.unwrap_or(letter.first_failure);
        letter.record = Some(&record);
        letter.given_up_at = lease.history.gave_up;
        match self.store_dead_letter(delivery, letter).await {
            Settlement::Ack => {
                crate::failpoint::hit("dead_letter.stored");
                let version = self.version();
                if let Err(err) = self.processed.dead_lettered(lease, version, reason).await {
                    tracing::warn!(error = chain(&err), "could not record the dead letter");
                }
                self.dead_lettered(delivery, Some(input), (reason, error, run))
                    .await
            }
            again => {
                // The decision stays on record, the run counted: the next
                // delivery stores the letter with the real kind, message
                // and attempts.
                if let Err(err) = self.processed.set_aside(lease).await {
                    tracing::warn!(error = chain(&err), "could not hand the event back");
                }
                again
            }
        }
    }

    /// Parks a message that never reached the handler (not a CloudEvent, too
    /// large, data that breaks its contract) in the dead-letter queue; then
    /// it is acked. `input`: the event, if it was a CloudEvent.
    pub(super) async fn dead_letter_unread(
        &self,
        delivery: &Delivery,
        (reason, input): (DeadLetterReason, Option<&Decoded>),
        error: &str,
        attempts: u32,
    ) -> Settlement {
        let letter = self.letter(input.map(|i| i.mode), reason, error, attempts);
        match self.store_dead_letter(delivery, letter).await {
            Settlement::Ack => {
                (self.dead_lettered(delivery, input, (reason, error, (attempts, None)))).await
            }
            again => again,
        }
    }

    /// A letter failing now, for the first time; a claimed event's letter
    /// adds its record.
    fn letter<'a>(
        &'a self,
        mode: Option<ContentMode>,
        reason: DeadLetterReason,
        error: &'a str,
        attempts: u32,
    ) -> DeadLetter<'a> {
        let now = Utc::now();
        DeadLetter {
            handler: self.name(),
            version: self.version(),
            reason,
            error,
            attempts,
            first_failure: now,
            last_failure: now,
            mode,
            record: None,
            given_up_at: None,
        }
    }

    /// Stores a dead letter; if it cannot be stored the message is kept for
    /// another try.
    async fn store_dead_letter(&self, delivery: &Delivery, letter: DeadLetter<'_>) -> Settlement {
        match letter.publish(&self.js, delivery.message()).await {
            Ok(()) => Settlement::Ack,
            Err(err) => {
                tracing::error!(
                    error = chain(&err),
                    kind = letter.reason.as_str(),
                    "could not store the dead letter; the event stays in its stream for now"
                );
                Settlement::host_trouble()
            }
        }
    }

    /// Counts and logs a stored dead letter; its message is acked.
    async fn dead_lettered(
        &self,
        delivery: &Delivery,
        input: Option<&Decoded>,
        (reason, error, (attempts, ran_for)): (DeadLetterReason, &str, (u32, Option<Duration>)),
    ) -> Settlement {
        // Invalid input never reached the handler: the trail says "not run".
        let (outcome, attempt) = match reason.is_invalid_input() {
            true => (Outcome::Invalid, 0),
            false => (Outcome::DeadLettered, attempts),
        };
        let mut step = Step::new(outcome, attempt).failed(reason.as_str(), error);
        step.ran_for = ran_for;
        self.settled(delivery, input, step).await;
        tracing::warn!(
            outcome = outcome.as_str(),
            kind = reason.as_str(),
            error,
            attempts,
            "moved to the dead-letter queue"
        );
        Settlement::Ack
    }
}
