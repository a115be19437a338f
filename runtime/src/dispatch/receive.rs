//! Reading a fetched message, in the order the consumer delivered it.
//!
//! The pull loop calls [`Dispatcher::receive`] for each message before it
//! spawns the task that handles it, because spawned tasks may start in any
//! order on a multi-threaded runtime. For an ordered handler this is where
//! an event joins its key's queue, so the queue holds a key's events in
//! stream order however the tasks are scheduled.

use cloudevents::AttributesReader;
use tracing::Instrument;

use super::settle::Delivery;
use super::{Dispatcher, Held};
use crate::event::decode;
use crate::event::trace::TraceContext;
use crate::failure::DeadLetterReason;
use crate::policy::ordering::partition_key;

/// What a task is to do with a received message.
pub(super) enum Work {
    /// Dead-letter it: it is not an event the handler can take.
    Unreadable(Box<Unreadable>),
    /// Handle it (no ordering).
    Event(Held),
    /// Work the key: handle it, then the key's events queued behind it.
    Key(String, Held),
}

/// A message that never reaches the handler, and why.
pub(super) struct Unreadable {
    delivery: Delivery,
    kind: DeadLetterReason,
    reason: String,
}

impl Dispatcher {
    /// Reads `message`; `None` when it joined the queue of a key another
    /// task is working.
    pub(super) fn receive(&self, delivery: Delivery) -> Option<Work> {
        self.attempts.metrics.received.inc();
        let held = match self.read(delivery) {
            Ok(held) => held,
            Err(unreadable) => return Some(Work::Unreadable(unreadable)),
        };
        if !self.ordered() {
            return Some(Work::Event(held));
        }
        let key = partition_key(&held.input.event, &held.delivery.message().subject);
        let held = self.waiting.admit(&key, held)?;
        Some(Work::Key(key, held))
    }

    /// Decodes the event (within the handler's size limit) and opens its
    /// span in its trace.
    fn read(&self, delivery: Delivery) -> Result<Held, Box<Unreadable>> {
        let message = delivery.message();
        let limit = self.attempts.manifest.limits.max_event_size;
        let size = message.payload.len();
        let decoded = if size as u64 > limit.as_u64() {
            Err((
                DeadLetterReason::TooLarge,
                format!("the payload is {size} bytes, over the handler's limit of {limit}"),
            ))
        } else {
            decode::decode(message.headers.as_ref(), &message.payload).map_err(|reason| {
                let why = format!("not a valid CloudEvent: {reason}");
                (DeadLetterReason::InvalidEvent, why)
            })
        };
        let input = match decoded {
            Ok(input) => input,
            Err((kind, reason)) => {
                return Err(Box::new(Unreadable {
                    delivery,
                    kind,
                    reason,
                }));
            }
        };
        let spec = self.attempts.component.spec();
        let mut trace = TraceContext::for_event(&input.event);
        let span = tracing::info_span!("event",
            handler = %spec.name,
            version = %spec.version,
            event_id = %input.event.id(),
            event_type = %input.event.ty(),
            nats_subject = %message.subject,
            delivery = message.info().map(|i| i.delivered).unwrap_or_default(),
            attempt = tracing::field::Empty,
            trace_id = %trace.trace_id,
            span_id = %trace.span_id,
            parent_span_id = trace.parent_span_id.as_deref(),
        );
        trace.attach(&span);
        Ok(Held {
            delivery,
            input,
            trace,
            span,
        })
    }

    /// Dead-letters a message that never reached the handler, then settles
    /// it.
    pub(super) async fn refuse(&self, unreadable: Unreadable) {
        let Unreadable {
            delivery,
            kind,
            reason,
        } = unreadable;
        let spec = self.attempts.component.spec();
        let span = tracing::info_span!("event", handler = %spec.name,
            version = %spec.version, nats_subject = %delivery.message().subject);
        let attempts = delivery.count();
        let settlement = (self.attempts)
            .dead_letter_unread(&delivery, (kind, None), &reason, attempts)
            .instrument(span)
            .await;
        delivery.settle(settlement).await;
    }
}
