//! The event-store capability: `eventhost:handler/event-store`, for event
//! sourcing on JetStream.
//!
//! An aggregate's events are the messages on one subject of a stream (for
//! example `accounts.events.<id>`), read by subject with direct gets.
//! Appends are conditional on the subject's last sequence
//! (`Nats-Expected-Last-Subject-Sequence`), JetStream's own optimistic
//! concurrency per subject.
//!
//! - Manifest: `[eventstore]` with `read` and `append` subject patterns (an
//!   `append` grant includes reading) and per-invocation limits.
//! - Resolved at load: [`EventStoreGrants`], each pattern with the stream
//!   that captures it. That stream must exist and allow deletes: a commit
//!   that loses a race after some of its appends were stored deletes them.
//! - Per invocation: [`EventStoreState`] counts reads and buffers appends.
//! - Effects: [`Append`]s, which the outcome stage completes (ids, lineage),
//!   encodes and commits with the invocation's other effects.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Result, bail};
use prometheus_client::registry::Registry;
use wasmtime::component::{HasSelf, Linker};

use super::Interruption;
use super::capability::{Capability, InvocationContext, View};
use super::emit::validate_event;
use super::eventhost::handler::event_store::{self, StoredEvent};
use super::store_wait::StoreWait;
use super::types::{self, OutgoingEvent};
use super::{Effects, Written};
use crate::event::decode;
use crate::event::subject;
use crate::failure::{Conflict, Failure, FailureKind};
use crate::ledger::record::is_settled;
use crate::store::{Store, StoreResult};
pub use metrics::{EventStoreMetrics, EventStoreSeries};
pub use section::EventStoreSection;

mod metrics;
mod section;

/// One granted subject pattern and the stream holding it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectGrant {
    pub pattern: String,
    pub stream: String,
    pub append: bool,
}

/// What an `[eventstore]` section resolved to at load.
pub struct EventStoreGrants {
    pub subjects: Vec<SubjectGrant>,
    pub limits: EventStoreSection,
    pub store: Arc<dyn Store>,
}

impl EventStoreGrants {
    /// The grant covering `subject`, for appending or only reading.
    fn find(&self, subject: &str, append: bool) -> Option<&SubjectGrant> {
        let mut grants = self.subjects.iter().filter(|g| g.append || !append);
        grants.find(|g| subject::matches(&g.pattern, subject))
    }
}

/// Resolves an `[eventstore]` section: each pattern must lie within one
/// stream's subjects, and a stream appended to must allow deletes (an undone
/// commit deletes the events it had appended).
pub async fn resolve(
    section: &EventStoreSection,
    store: Arc<dyn Store>,
) -> Result<Arc<EventStoreGrants>> {
    let mut subjects = Vec::new();
    for (pattern, append) in section.patterns() {
        let no_stream = || {
            anyhow::anyhow!(
                "no JetStream stream holds every subject of event-store grant {pattern:?}; \
                 declare one in the runtime config"
            )
        };
        let stream = store
            .stream_capturing(pattern)
            .await?
            .ok_or_else(no_stream)?;
        if !stream.subjects.iter().any(|s| subject::covers(s, pattern)) {
            return Err(no_stream());
        }
        if append && stream.deny_delete {
            bail!(
                "stream {} denies deletes, so it cannot hold event-store appends (grant {pattern:?})",
                stream.name
            );
        }
        subjects.push(SubjectGrant {
            pattern: pattern.clone(),
            stream: stream.name,
            append,
        });
    }
    Ok(Arc::new(EventStoreGrants {
        subjects,
        limits: section.clone(),
        store,
    }))
}

/// Events to append to one subject, as the guest gave them.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream: String,
    pub subject: String,
    pub expected: u64,
    pub events: Vec<OutgoingEvent>,
}

/// Why an event-store call did not answer normally.
#[derive(Debug)]
pub enum EventStoreError {
    Refused(event_store::Error),
    /// The invocation must stop; the reason is in the state.
    Interrupted,
}

/// The event-store side of one invocation.
#[derive(Default)]
pub struct EventStoreState {
    grants: Option<Arc<EventStoreGrants>>,
    events_read: usize,
    appends: Vec<Append>,
    appended: usize,
    denied: u64,
    pub(super) refused: Option<Failure>,
    pub(super) interrupted: Option<Interruption>,
    /// The store read under way (see [`StoreWait`]).
    waiting: StoreWait,
}

impl EventStoreState {
    pub fn new(grants: Option<Arc<EventStoreGrants>>) -> Self {
        EventStoreState {
            grants,
            ..Default::default()
        }
    }

    /// Events read, and calls refused for want of a grant, in this
    /// invocation.
    pub fn usage(&self) -> (usize, u64) {
        (self.events_read, self.denied)
    }

    pub fn into_appends(self) -> Vec<Append> {
        self.appends
    }

    pub async fn last_sequence(&mut self, subject: &str) -> Result<u64, EventStoreError> {
        let (store, stream) = self.granted(subject, false)?;
        let last = store.last(&stream, subject);
        match self.ask("reading a subject's last event", last).await? {
            None => Ok(0),
            Some(message) => {
                self.check_settled(&*store, &message.headers, (&stream, subject))
                    .await?;
                Ok(message.sequence)
            }
        }
    }

    pub async fn read(
        &mut self,
        subject: &str,
        after: u64,
        max: u32,
    ) -> Result<Vec<StoredEvent>, EventStoreError> {
        let (store, stream) = self.granted(subject, false)?;
        let limit = self.grants.as_ref().map_or(0, |g| g.limits.max_events_read);
        let mut events = Vec::new();
        let mut from = after.saturating_add(1);
        while events.len() < max as usize {
            let next = store.next(&stream, subject, from);
            let Some(message) = self.ask("reading events", next).await? else {
                break;
            };
            if self.events_read >= limit {
                let why = format!("more than `eventstore.max_events_read` ({limit}) events read");
                return Err(self.refuse(event_store::Error::LimitExceeded(why)));
            }
            self.check_settled(&*store, &message.headers, (&stream, subject))
                .await?;
            let decoded = decode::decode(Some(&message.headers), &message.payload);
            let decoded = decoded.map_err(|e| {
                let why = format!(
                    "the message at sequence {} is not a CloudEvent: {e}",
                    message.sequence
                );
                EventStoreError::Refused(event_store::Error::Invalid(why))
            })?;
            self.events_read += 1;
            events.push(StoredEvent {
                sequence: message.sequence,
                event: super::to_wit(&decoded.event, 0),
            });
            from = message.sequence + 1;
        }
        Ok(events)
    }

    pub fn append(
        &mut self,
        expected: u64,
        events: Vec<OutgoingEvent>,
    ) -> Result<(), EventStoreError> {
        let Some(subject) = events.first().map(|e| e.destination.clone()) else {
            return Ok(());
        };
        if let Some(other) = events.iter().find(|e| e.destination != subject) {
            let why = format!(
                "one append holds events for one subject; got {subject:?} and {:?}",
                other.destination
            );
            return Err(EventStoreError::Refused(event_store::Error::Invalid(why)));
        }
        let (_, stream) = self.granted(&subject, true)?;
        for event in &events {
            validate_event(event).map_err(|e| {
                EventStoreError::Refused(event_store::Error::Invalid(e.to_string()))
            })?;
        }
        let batch = self.appends.iter().position(|a| a.subject == subject);
        if let Some(batch) = batch.map(|i| &self.appends[i])
            && batch.expected != expected
        {
            let why = format!(
                "appends to {subject:?} in one invocation must expect the same sequence ({} and {expected})",
                batch.expected
            );
            return Err(EventStoreError::Refused(event_store::Error::Invalid(why)));
        }
        let limit = (self.grants.as_ref()).map_or(0, |g| g.limits.max_events_appended);
        if self.appended + events.len() > limit {
            let why =
                format!("more than `eventstore.max_events_appended` ({limit}) events appended");
            return Err(self.refuse(event_store::Error::LimitExceeded(why)));
        }
        self.appended += events.len();
        match batch {
            Some(batch) => {
                self.appends[batch].events.extend(events);
                Ok(())
            }
            None => {
                let append = Append {
                    stream,
                    subject,
                    expected,
                    events,
                };
                self.appends.push(append);
                Ok(())
            }
        }
    }

    fn granted(
        &mut self,
        subject: &str,
        append: bool,
    ) -> Result<(Arc<dyn Store>, String), EventStoreError> {
        let refused = |why: String| EventStoreError::Refused(event_store::Error::AccessDenied(why));
        if !subject::is_concrete(subject) {
            let why = format!("{subject:?} is not a concrete subject");
            return Err(EventStoreError::Refused(event_store::Error::Invalid(why)));
        }
        let found = self
            .grants
            .as_ref()
            .and_then(|g| g.find(subject, append).map(|s| (g, s)));
        match found {
            Some((grants, grant)) => Ok((grants.store.clone(), grant.stream.clone())),
            None => {
                let what = if append { "append to" } else { "read" };
                let why = format!("this handler may not {what} {subject:?} (`eventstore` grants)");
                tracing::warn!(subject, "event store: access denied: {why}");
                self.denied += 1;
                Err(refused(why))
            }
        }
    }

    async fn check_settled(
        &mut self,
        store: &dyn Store,
        headers: &async_nats::HeaderMap,
        (stream, subject): (&str, &str),
    ) -> Result<(), EventStoreError> {
        let settled = is_settled(store, headers);
        if self.ask("reading a commit's record", settled).await? {
            return Ok(());
        }
        let what = format!("{subject:?} is being appended to by a commit still under way");
        // The stream, not the subject: a metric label must be bounded.
        let conflict = Conflict {
            store: stream.to_string(),
            what,
        };
        self.interrupted = Some(Interruption::Conflict(conflict));
        Err(EventStoreError::Interrupted)
    }

    /// The store's answer to `call`; a failure, or no answer before the
    /// deadline, interrupts the invocation as the store's trouble.
    async fn ask<T>(
        &mut self,
        doing: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> Result<T, EventStoreError> {
        let answer = self.waiting.on(doing, call).await;
        answer.map_err(|err| {
            self.interrupted = Some(Interruption::StoreUnavailable(err));
            EventStoreError::Interrupted
        })
    }

    fn refuse(&mut self, error: event_store::Error) -> EventStoreError {
        let message = match &error {
            event_store::Error::LimitExceeded(m) => m.clone(),
            other => format!("{other:?}"),
        };
        tracing::warn!("event store: {message}");
        let failure = Failure::new(FailureKind::LimitExceeded, message);
        self.refused.get_or_insert(failure);
        EventStoreError::Refused(error)
    }
}

impl event_store::Host for EventStoreState {
    async fn last_sequence(&mut self, subject: String) -> Result<u64, EventStoreError> {
        EventStoreState::last_sequence(self, &subject).await
    }

    async fn read(
        &mut self,
        subject: String,
        after: u64,
        max: u32,
    ) -> Result<Vec<StoredEvent>, EventStoreError> {
        EventStoreState::read(self, &subject, after, max).await
    }

    async fn append(
        &mut self,
        expected_last_sequence: u64,
        events: Vec<types::OutgoingEvent>,
    ) -> Result<(), EventStoreError> {
        EventStoreState::append(self, expected_last_sequence, events)
    }

    fn convert_error(&mut self, err: EventStoreError) -> wasmtime::Result<event_store::Error> {
        match err {
            EventStoreError::Refused(error) => Ok(error),
            EventStoreError::Interrupted => Err(wasmtime::format_err!(
                "the invocation was interrupted by the host"
            )),
        }
    }
}

/// Links the event store for a handler granted subjects.
/// The event-store capability.
pub struct EventStore;

impl Capability for EventStore {
    type Grant = EventStoreGrants;
    type State = EventStoreState;
    const GRANTED_BY: Option<&'static str> =
        Some("[eventstore] (the subjects it may read and append to)");
    const IMPORTS: &'static [&'static str] = &["eventhost:handler/event-store@"];
    const NEEDS_CLAIM: bool = true;

    fn state(grant: Option<&Arc<EventStoreGrants>>, call: &InvocationContext) -> EventStoreState {
        EventStoreState {
            waiting: StoreWait::new(call.started.into(), call.deadline.into()),
            ..EventStoreState::new(grant.cloned())
        }
    }

    fn add_to_linker<T: View<Self>>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
        fn get<T: View<EventStore>>(t: &mut T) -> &mut EventStoreState {
            View::<EventStore>::state(t)
        }
        event_store::add_to_linker::<_, HasSelf<EventStoreState>>(linker, get::<T>)?;
        Ok(())
    }

    fn take_refusal(state: &mut EventStoreState) -> Option<Failure> {
        state.refused.take()
    }

    fn take_interruption(state: &mut EventStoreState) -> Option<Interruption> {
        state.interrupted.take().or_else(|| state.waiting.cut_off())
    }

    fn hand_over(state: &mut EventStoreState, effects: &mut Effects) {
        effects.appends = std::mem::take(state).into_appends();
    }

    /// (events read, calls refused for want of a grant)
    type Usage = (usize, u64);
    type Metrics = EventStoreMetrics;
    type Series = EventStoreSeries;

    fn usage(state: &EventStoreState) -> (usize, u64) {
        state.usage()
    }

    fn register(metrics: &EventStoreMetrics, registry: &mut Registry) {
        metrics.register(registry);
    }

    fn series(
        metrics: &EventStoreMetrics,
        handler: &str,
        _: Option<&EventStoreGrants>,
    ) -> EventStoreSeries {
        metrics.series(handler)
    }

    fn record(series: &EventStoreSeries, &(read, denied): &(usize, u64)) {
        series.read.inc_by(read as u64);
        series.denied.inc_by(denied);
    }

    fn committed(series: &EventStoreSeries, written: &Written) {
        series.appended.inc_by(written.appended);
    }

    fn stores(grant: &EventStoreGrants) -> Vec<String> {
        grant.subjects.iter().map(|s| s.stream.clone()).collect()
    }

    fn written_streams(grant: &EventStoreGrants) -> Vec<String> {
        let appended = grant.subjects.iter().filter(|s| s.append);
        appended.map(|s| s.stream.clone()).collect()
    }
}

#[cfg(test)]
mod tests;
