//! Reading a fetched message, in the order the consumer delivered it.
//!
//! The pull loop calls [`Dispatcher::receive`] for each message before it
//! spawns the task that handles it, because spawned tasks may start in any
//! order on a multi-threaded runtime. For an ordered handler this is where
//! an event joins its key's queue, so the queue holds a key's events in
//! stream order however the tasks are scheduled.

use async_nats::jetstream::Message;
use cloudevents::AttributesReader;
use tracing::Instrument;

use super::attempt::Next;
use super::{Dispatcher, Held, delivery_count};
use crate::decode;
use crate::failure::DeadLetterReason;
use crate::outcome::{self, Settle};
use crate::policy::ordering::partition_key;
use crate::trace::TraceContext;

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
    message: Message,
    kind: DeadLetterReason,
    reason: String,
}

impl Dispatcher {
    /// Reads `message`; `None` when it joined the queue of a key another
    /// task is working.
    pub(super) fn receive(&self, message: Message) -> Option<Work> {
        self.metrics.received.inc();
        let held = match self.read(message) {
            Ok(held) => held,
            Err(unreadable) => return Some(Work::Unreadable(unreadable)),
        };
        if !self.ordered() {
            return Some(Work::Event(held));
        }
        let key = partition_key(&held.input.event, &held.message.subject);
        let held = self.waiting.admit(&key, held)?;
        Some(Work::Key(key, held))
    }

    /// Decodes the event (within the handler's size limit) and opens its
    /// span in its trace.
    fn read(&self, message: Message) -> Result<Held, Box<Unreadable>> {
        let limit = self.manifest.limits.max_event_size;
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
                    message,
                    kind,
                    reason,
                }));
            }
        };
        let spec = self.component.spec();
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
            message,
            input,
            trace,
            span,
        })
    }

    /// Dead-letters a message that never reached the handler.
    pub(super) async fn refuse(&self, unreadable: Box<Unreadable>) {
        let Unreadable {
            message,
            kind,
            reason,
        } = *unreadable;
        let spec = self.component.spec();
        let span = tracing::info_span!("event", handler = %spec.name,
            version = %spec.version, nats_subject = %message.subject);
        let attempts = delivery_count(&message);
        let next = self
            .dead_letter_unread(&message, kind, &reason, attempts)
            .instrument(span)
            .await;
        if let Next::Again { delay, .. } = next {
            outcome::settle(&message, Settle::Retry { delay }).await;
        }
    }
}
