//! The event store: an aggregate's events on one subject, read in order
//! and appended on condition that nobody appended since.
//!
//! ```no_run
//! use eventhost_sdk::{Emit, Event, HandlerError, events};
//!
//! fn handle(event: Event) -> Result<(), HandlerError> {
//!     let subject = "accounts.events.a1";
//!     let history = events::read(subject, 0)?;
//!     let version = history.last().map_or(0, |stored| stored.sequence);
//!     let opened = Emit::new(subject, "com.example.account.opened").json(&"a1")?;
//!     events::append(version, [opened])
//! }
//! # eventhost_sdk::export_handler!(handle);
//! ```
//!
//! Appends are buffered and committed with the invocation's other effects.
//! If another event reached the subject after `expected` was read, the host
//! runs the handler again with fresh state.

use crate::__bindings::eventhost::handler::event_store;
use crate::{Emit, Event, HandlerError};

/// Events read per call to the host.
const PAGE: u32 = 256;

/// An event as the stream holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    /// Its stream sequence: what to expect when appending after it.
    pub sequence: u64,
    pub event: Event,
}

/// The sequence of the last event on `subject`; 0 if it has none.
pub fn last_sequence(subject: &str) -> Result<u64, HandlerError> {
    event_store::last_sequence(subject).map_err(error)
}

/// Every event on `subject` after sequence `after` (0: from the start).
pub fn read(subject: &str, after: u64) -> Result<Vec<Stored>, HandlerError> {
    let mut events = Vec::new();
    let mut after = after;
    loop {
        let page = event_store::read(subject, after, PAGE).map_err(error)?;
        let full = page.len() == PAGE as usize;
        for stored in page {
            after = stored.sequence;
            events.push(Stored {
                sequence: stored.sequence,
                event: Event::from_wit(stored.event),
            });
        }
        if !full {
            return Ok(events);
        }
    }
}

/// Appends `events` (built with [`Emit::new`] for the aggregate's subject),
/// if the subject's last sequence is still `expected`.
pub fn append(expected: u64, events: impl IntoIterator<Item = Emit>) -> Result<(), HandlerError> {
    let events: Vec<_> = events.into_iter().map(Emit::into_outgoing).collect();
    event_store::append(expected, &events).map_err(error)
}

fn error(error: event_store::Error) -> HandlerError {
    let why = match error {
        event_store::Error::AccessDenied(m) => format!("access denied: {m}"),
        event_store::Error::Invalid(m) => format!("invalid: {m}"),
        event_store::Error::LimitExceeded(m) => format!("limit exceeded: {m}"),
    };
    HandlerError::permanent(format_args!("event store: {why}"))
}
