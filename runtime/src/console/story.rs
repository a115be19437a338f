//! The story of an event: found by its id, a story key's value (an order
//! id), its CloudEvents subject or its correlation id, then told whole —
//! every event of its correlation, each with what every handler did with
//! it, attempt by attempt, in the order one caused the next.
//!
//! Everything comes from the trail ([`crate::outcome::trail`]): a search
//! reads the entries whose subject token matches (the stream's subject
//! index finds them), keeps those whose value really matches (the token is
//! a hash), then reads the entries of each correlation found. Events are
//! joined into a tree by `causationid`; each handler's attempts are in the
//! order the trail received them, not by the runtimes' clocks. The event
//! itself (its data) is read from its stream while the stream still holds
//! it, and each handler's idempotency record for what it says now.
//!
//! A search costs one direct get per entry it reads (at most
//! [`MAX_ENTRIES`]), and one stream read and one record read per handler
//! for the first [`MAX_DATA`] events: fine for a story, not for a report
//! over thousands of events.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::state::{self, StoredEvent};
use crate::outcome::trail::{self, Entry, SearchBy};

/// Entries read for one search, all filters together.
pub const MAX_ENTRIES: usize = 2000;
/// Correlations told for one search.
const MAX_CHAINS: usize = 5;
/// Events whose data is read from their stream.
const MAX_DATA: usize = 50;

/// A search the console cannot make: the caller's mistake.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(
        "search for an event id, an order id or another story key, a subject or a correlation id: {0}"
    )]
    Bad(&'static str),
}

#[derive(Debug, Serialize)]
pub struct Story {
    pub query: String,
    /// Which token matched; `None` when nothing did.
    pub found_by: Option<SearchBy>,
    /// Whether the trail exists (no runtime with `[story]` on has started).
    pub trail: bool,
    /// In causal order: each event after the one that caused it.
    pub events: Vec<StoryEvent>,
    /// Whether entries were left unread past [`MAX_ENTRIES`].
    pub more: bool,
}

#[derive(Debug, Serialize)]
pub struct StoryEvent {
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: Option<String>,
    pub nats_subject: String,
    pub correlation: Option<String>,
    pub causation: Option<String>,
    pub key: Option<(String, String)>,
    /// How many causation steps from its chain's first event.
    pub depth: usize,
    /// How many of the story's events it caused (`causationid`).
    pub caused: usize,
    /// Whether the search named this event itself.
    pub matched: bool,
    pub first_seen: DateTime<Utc>,
    pub handlers: Vec<HandlerStory>,
    /// The event as stored, while its stream keeps it.
    pub stored: Option<StoredEvent>,
    #[serde(skip)]
    at: Option<(String, u64)>,
}

/// What one handler did with one event.
#[derive(Debug, Serialize)]
pub struct HandlerStory {
    pub handler: String,
    /// The last outcome told.
    pub outcome: String,
    /// What the handler's idempotency record of the event says now
    /// (`running`, `retrying`, `succeeded`, `dead_lettered`; `none` once it
    /// expired or was cleared for a replay), when it could be read.
    pub record: Option<String>,
    /// How many events its successful run emitted (those a handler took
    /// are in the story, after this one).
    pub emitted: usize,
    /// In the order the trail received them.
    pub attempts: Vec<Entry>,
}

/// Reads the story of `query` (searched as `by`, or as each kind in turn).
pub async fn search(js: &jetstream::Context, query: &str, by: Option<SearchBy>) -> Result<Story> {
    let query = query.trim();
    checked(query)?;
    let mut story = Story {
        query: query.to_string(),
        found_by: None,
        trail: true,
        events: Vec::new(),
        more: false,
    };
    let stream = match js.get_stream(trail::STREAM).await {
        Ok(stream) => stream,
        Err(err) if crate::jetstream::stream_not_found(&err) => {
            story.trail = false;
            return Ok(story);
        }
        Err(err) => return Err(err).context("opening the trail"),
    };
    let mut reader = Reader {
        stream: &stream,
        seen: HashSet::new(),
        entries: Vec::new(),
        more: false,
    };
    for kind in by.map_or(SearchBy::ALL.to_vec(), |by| vec![by]) {
        if reader.read(kind, query).await? > 0 {
            story.found_by = Some(kind);
            break;
        }
    }
    let Some(found_by) = story.found_by else {
        return Ok(story);
    };
    let named: HashSet<EventKey> = (reader.entries.iter())
        .filter(|(_, e)| found_by.matches(e, query))
        .map(|(_, e)| (e.source.clone(), e.id.clone()))
        .collect();
    let mut chains: Vec<String> = Vec::new();
    for (_, entry) in &reader.entries {
        let chain = (entry.correlation.clone()).unwrap_or_else(|| entry.id.clone());
        if chains.contains(&chain) {
            continue;
        }
        match chains.len() < MAX_CHAINS {
            true => chains.push(chain),
            // More chains than are told: the page says the story is cut.
            false => reader.more = true,
        }
    }
    for chain in &chains {
        reader.read(SearchBy::Correlation, chain).await?;
        // The first event of a chain carries no correlation id of its own:
        // its children take its id as theirs.
        reader.read(SearchBy::Id, chain).await?;
    }
    story.more = reader.more;
    story.events = told(reader.entries, &named);
    for event in story.events.iter_mut().take(MAX_DATA) {
        event.stored = stored(js, event.at.as_ref()).await;
        for handler in &mut event.handlers {
            handler.record = record_now(js, handler).await;
        }
    }
    Ok(story)
}

/// Entries read so far, each once.
struct Reader<'a> {
    stream: &'a stream::Stream,
    seen: HashSet<u64>,
    /// With their trail sequence.
    entries: Vec<(u64, Entry)>,
    more: bool,
}

impl Reader<'_> {
    /// Reads the entries whose `by` is `value`; says how many matched.
    async fn read(&mut self, by: SearchBy, value: &str) -> Result<usize> {
        let filter = by.filter(value);
        let (mut after, mut matched) = (0, 0);
        loop {
            if self.entries.len() >= MAX_ENTRIES {
                self.more = true;
                return Ok(matched);
            }
            let next = self
                .stream
                .direct_get_next_for_subject(filter.as_str(), Some(after + 1));
            let message = match next.await {
                Ok(message) => message,
                Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => {
                    return Ok(matched);
                }
                Err(err) => return Err(err).context("reading the trail"),
            };
            after = message.sequence;
            let Ok(entry) = serde_json::from_slice::<Entry>(&message.payload) else {
                continue;
            };
            if by.matches(&entry, value) {
                matched += 1;
                if self.seen.insert(message.sequence) {
                    self.entries.push((message.sequence, entry));
                }
            }
        }
    }
}

/// An event's identity: its source and id, as CloudEvents defines it.
type EventKey = (String, String);

/// Joins `entries` (with their trail sequence) into events, each after the
/// one that caused it. The trail's order, not the runtimes' clocks, orders
/// the attempts.
fn told(mut entries: Vec<(u64, Entry)>, named: &HashSet<EventKey>) -> Vec<StoryEvent> {
    entries.sort_by_key(|(sequence, _)| *sequence);
    let mut events: BTreeMap<EventKey, StoryEvent> = BTreeMap::new();
    for (_, entry) in entries {
        let key = (entry.source.clone(), entry.id.clone());
        let event = events.entry(key.clone()).or_insert_with(|| StoryEvent {
            id: entry.id.clone(),
            source: entry.source.clone(),
            event_type: entry.event_type.clone(),
            subject: entry.subject.clone(),
            nats_subject: entry.nats_subject.clone(),
            correlation: entry.correlation.clone(),
            causation: entry.causation.clone(),
            key: entry.key.clone(),
            depth: 0,
            caused: 0,
            matched: named.contains(&key),
            first_seen: entry.at,
            handlers: Vec::new(),
            stored: None,
            at: entry.stream.clone().zip(entry.sequence),
        });
        event.first_seen = event.first_seen.min(entry.at);
        match (event.handlers.iter_mut()).find(|h| h.handler == entry.handler) {
            Some(handler) => handler.attempts.push(entry),
            None => event.handlers.push(HandlerStory {
                handler: entry.handler.clone(),
                outcome: String::new(),
                record: None,
                emitted: 0,
                attempts: vec![entry],
            }),
        }
    }
    for handler in events.values_mut().flat_map(|e| &mut e.handlers) {
        // A copy redelivered after the event was handled ends in a
        // `duplicate`: the outcome that decided the event is the one told.
        let decisive = ["succeeded", "dead_lettered", "invalid"];
        let attempts = &handler.attempts;
        let outcome = (attempts.iter().rev())
            .find(|a| decisive.contains(&a.outcome.as_str()))
            .or(attempts.last());
        handler.outcome = outcome.map(|a| a.outcome.clone()).unwrap_or_default();
        handler.emitted = (attempts.iter())
            .filter(|a| a.outcome == "succeeded")
            .map(|a| a.emitted)
            .max()
            .unwrap_or(0);
    }
    in_causal_order(events)
}

/// Roots first (by when they were first seen), each followed by what it
/// caused, depth first.
fn in_causal_order(mut events: BTreeMap<EventKey, StoryEvent>) -> Vec<StoryEvent> {
    // `causationid` names an id only: the first event with it is the cause.
    let mut by_id: HashMap<String, EventKey> = HashMap::new();
    for key in events.keys() {
        by_id.entry(key.1.clone()).or_insert_with(|| key.clone());
    }
    let mut children: BTreeMap<Option<EventKey>, Vec<(DateTime<Utc>, EventKey)>> = BTreeMap::new();
    for (key, event) in &events {
        let cause = event.causation.as_ref().and_then(|c| by_id.get(c));
        let parent = cause.filter(|parent| *parent != key).cloned();
        children
            .entry(parent)
            .or_default()
            .push((event.first_seen, key.clone()));
    }
    for list in children.values_mut() {
        list.sort();
    }
    let mut ordered = Vec::with_capacity(events.len());
    let roots = children.get(&None).into_iter().flatten().rev();
    let mut stack: Vec<(EventKey, usize)> = roots.map(|(_, key)| (key.clone(), 0)).collect();
    while let Some((key, depth)) = stack.pop() {
        let Some(mut event) = events.remove(&key) else {
            continue;
        };
        let caused = children
            .get(&Some(key))
            .map(Vec::as_slice)
            .unwrap_or_default();
        event.depth = depth;
        event.caused = caused.len();
        for (_, child) in caused.iter().rev() {
            stack.push((child.clone(), depth + 1));
        }
        ordered.push(event);
    }
    // A cycle of causation (a handler that names its own output as cause)
    // leaves events no root reaches: told last, rather than lost.
    ordered.extend(events.into_values());
    ordered
}

/// What `handler`'s record of the event says now.
async fn record_now(js: &jetstream::Context, handler: &HandlerStory) -> Option<String> {
    let record = handler.attempts.last()?.record.as_deref()?;
    let fate = super::dlq::outcome_of(js, record).await.ok()?;
    // No record is "waiting" to a replay just made; here it is gone.
    Some(match fate.state.as_str() {
        "waiting" => "none".to_string(),
        _ => fate.state,
    })
}

/// The event as its stream stores it, if it still does.
async fn stored(js: &jetstream::Context, at: Option<&(String, u64)>) -> Option<StoredEvent> {
    let (stream, sequence) = at?;
    // A handle, not the stream's info: one request per event, not two.
    let stream = js.get_stream_no_info(stream).await.ok()?;
    let message = stream.get_raw_message(*sequence).await.ok()?;
    Some(state::stored_event(message, false))
}

/// A search term: bounded, printable.
fn checked(query: &str) -> Result<(), SearchError> {
    match query {
        "" => Err(SearchError::Bad("the search is empty")),
        q if q.len() > 512 => Err(SearchError::Bad("the search is longer than 512 bytes")),
        q if q.chars().any(char::is_control) => {
            Err(SearchError::Bad("the search holds control characters"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, causation: Option<&str>, handler: &str, outcome: &str, at: i64) -> Entry {
        Entry {
            id: id.into(),
            source: "/shop".into(),
            event_type: "t".into(),
            subject: None,
            correlation: Some("root".into()),
            causation: causation.map(str::to_string),
            key: None,
            handler: handler.into(),
            version: "1".into(),
            runtime: "r".into(),
            attempt: 1,
            outcome: outcome.into(),
            kind: None,
            error: None,
            duration_us: None,
            emitted: 0,
            at: DateTime::from_timestamp(at, 0).unwrap(),
            stream: None,
            sequence: None,
            nats_subject: "s".into(),
            record: None,
        }
    }

    /// `entry` with the trail sequence `at`.
    fn at(entry: Entry) -> (u64, Entry) {
        (entry.at.timestamp() as u64, entry)
    }

    #[test]
    fn events_follow_their_causes_and_attempts_their_order() {
        let mut succeeded = entry("root", None, "payment", "succeeded", 3);
        succeeded.emitted = 2;
        let entries = vec![
            at(entry("paid", Some("root"), "notification", "succeeded", 5)),
            at(entry("other-root", None, "payment", "succeeded", 1)),
            at(succeeded),
            at(entry("root", None, "payment", "retried", 2)),
            at(entry("root", None, "inventory", "succeeded", 4)),
            // A copy redelivered after the event was handled.
            at(entry("root", None, "payment", "duplicate", 6)),
        ];
        let named = HashSet::from([("/shop".to_string(), "root".to_string())]);
        let events = told(entries, &named);
        let order: Vec<(&str, usize)> = events.iter().map(|e| (e.id.as_str(), e.depth)).collect();
        assert_eq!(order, [("other-root", 0), ("root", 0), ("paid", 1)]);
        let root = &events[1];
        assert!(root.matched && !events[0].matched);
        assert_eq!(root.caused, 1);
        let handlers: Vec<&str> = root.handlers.iter().map(|h| h.handler.as_str()).collect();
        assert_eq!(handlers, ["payment", "inventory"], "by first attempt");
        let payment = &root.handlers[0];
        assert_eq!(payment.outcome, "succeeded", "the decisive outcome");
        let outcomes: Vec<&str> = (payment.attempts.iter())
            .map(|a| a.outcome.as_str())
            .collect();
        assert_eq!(outcomes, ["retried", "succeeded", "duplicate"]);
        assert_eq!(payment.emitted, 2);
    }

    #[test]
    fn one_id_from_two_sources_is_two_events() {
        let mut elsewhere = entry("1", None, "h", "succeeded", 2);
        elsewhere.source = "/billing".into();
        let entries = vec![at(entry("1", None, "h", "succeeded", 1)), at(elsewhere)];
        let events = told(entries, &HashSet::new());
        let sources: Vec<&str> = events.iter().map(|e| e.source.as_str()).collect();
        assert_eq!(sources, ["/shop", "/billing"]);
    }

    #[test]
    fn a_causation_cycle_is_still_told() {
        let entries = vec![
            at(entry("a", Some("b"), "h", "succeeded", 1)),
            at(entry("b", Some("a"), "h", "succeeded", 2)),
        ];
        assert_eq!(told(entries, &HashSet::new()).len(), 2);
    }

    #[test]
    fn bad_searches_are_refused() {
        for bad in ["", &"x".repeat(513), "a\u{7}b"] {
            assert!(checked(bad).is_err(), "{bad:?}");
        }
        assert!(checked("o-1005").is_ok());
    }
}
