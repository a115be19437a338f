//! The trail: one small entry per attempt outcome, the index behind "the
//! story of an event" (the console's `/ui/story`, `eventhost story`).
//!
//! Every outcome a handler's metrics count (succeeded, retried,
//! dead-lettered, duplicate, invalid) is also written, as a JSON [`Entry`],
//! to the stream [`STREAM`] on
//!
//! ```text
//! trail.<id>.<correlation>.<key>.<subject>.<handler>
//! ```
//!
//! where each of the four middle tokens is a short hash of the event's id,
//! its `correlationid`, the value of its first story key (a data field the
//! runtime config names, such as `order_id`) and its CloudEvents `subject`
//! (`_` when it has none). A search is then a subject filter with one token
//! fixed: the stream's subject index answers it without reading unrelated
//! entries, and no second store has to be kept in step.
//!
//! The trail is what happened, told after the fact; it is never what
//! decides anything. So an entry is published without waiting for
//! JetStream's answer (a core publish: no round trip, no ack to wait for on
//! the event's path), and an entry lost to a crash or an outage only leaves
//! a gap in a story, never a wrong effect. Its cost per event is one more
//! stored message of a few hundred bytes (see BENCHMARKS.md); entries
//! expire after `[story] max_age` (by default the idempotency window) and
//! the stream drops its oldest past `[story] max_bytes`.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, Message, stream};
use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader, Data, Event};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::jetstream::config_file::StoryConfig;
use crate::ledger::ProcessedEvents;
use crate::metrics::Outcome;

/// The stream holding the trail.
pub const STREAM: &str = "EVENTHOST_TRAIL";
/// Entries are stored on `trail.<id>.<correlation>.<key>.<subject>.<handler>`.
pub const SUBJECT_PREFIX: &str = "trail";
/// The token of an attribute the event does not have.
const ABSENT: &str = "_";
/// Errors are cut to this many bytes: the dead letter keeps the whole one.
const MAX_ERROR: usize = 512;

/// The trail's stream, as `config` shapes it.
fn stream_config(config: &StoryConfig, replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        description: Some("eventhost: what became of each event, per handler".into()),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::File,
        max_age: config.max_age,
        max_bytes: i64::try_from(config.max_bytes.as_u64()).unwrap_or(i64::MAX),
        discard: stream::DiscardPolicy::Old,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    }
}
/// Creates the trail's stream, or updates it to the config's shape.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &StoryConfig,
    copies: usize,
) -> Result<()> {
    if !config.enabled {
        return Ok(());
    }
    crate::jetstream::declare::declare_stream(js, stream_config(config, copies))
        .await
        .with_context(|| {
            format!("declaring the trail stream {STREAM} on {SUBJECT_PREFIX}.> (does another stream capture it?)")
        })
}

/// One attempt's outcome at one event, as the trail keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: Option<String>,
    pub correlation: Option<String>,
    pub causation: Option<String>,
    /// The story key the event was found to have: (field, value).
    pub key: Option<(String, String)>,
    pub handler: String,
    pub version: String,
    pub runtime: String,
    pub attempt: u32,
    /// An [`Outcome`]'s name.
    pub outcome: String,
    /// The failure's kind or the dead letter's reason.
    pub kind: Option<String>,
    pub error: Option<String>,
    /// How long the handler ran, when it ran.
    pub duration_us: Option<u64>,
    /// How many events it emitted (their ids follow from the input's:
    /// [`crate::outcome::outputs::emitted_event_id`]).
    pub emitted: usize,
    pub at: DateTime<Utc>,
    /// Where the input is stored.
    pub stream: Option<String>,
    pub sequence: Option<u64>,
    pub nats_subject: String,
    /// The handler's idempotency record of the event (`<bucket>/<key>`):
    /// what it says now, read when the story is told.
    #[serde(default)]
    pub record: Option<String>,
}

/// Who tells an outcome: the handler, its version, and the bucket of its
/// idempotency records.
#[derive(Debug, Clone, Copy)]
pub struct Teller<'a> {
    pub handler: &'a str,
    pub version: &'a str,
    pub records: &'a str,
}

/// What an attempt came to, as its caller knows it.
#[derive(Debug, Clone, Copy)]
pub struct Step<'a> {
    pub outcome: Outcome,
    pub attempt: u32,
    /// The failure's kind or the dead letter's reason, and its message.
    pub failure: Option<(&'static str, &'a str)>,
    pub ran_for: Option<Duration>,
    pub emitted: usize,
}

impl<'a> Step<'a> {
    pub fn new(outcome: Outcome, attempt: u32) -> Self {
        Step {
            outcome,
            attempt,
            failure: None,
            ran_for: None,
            emitted: 0,
        }
    }

    pub fn failed(mut self, kind: &'static str, error: &'a str) -> Self {
        self.failure = Some((kind, error));
        self
    }

    pub fn ran(mut self, ran_for: Duration, emitted: usize) -> Self {
        self.ran_for = Some(ran_for);
        self.emitted = emitted;
        self
    }
}

/// Writes a runtime's entries; [`Trail::off`] writes none.
#[derive(Clone)]
pub struct Trail {
    client: Option<async_nats::Client>,
    keys: std::sync::Arc<[String]>,
    runtime: String,
}

impl Trail {
    /// A trail written through `client` for `runtime`, as `config` says.
    pub fn new(client: async_nats::Client, config: &StoryConfig, runtime: &str) -> Self {
        Trail {
            client: config.enabled.then_some(client),
            keys: config.keys.clone().into(),
            runtime: runtime.to_string(),
        }
    }

    pub fn off() -> Self {
        Trail {
            client: None,
            keys: std::sync::Arc::new([]),
            runtime: String::new(),
        }
    }

    /// Writes `step` of `who` at `input`, delivered as
    /// `message`. Never waits for JetStream, never fails the event: a lost
    /// entry is logged at debug level and leaves a gap in a story.
    pub async fn record(&self, who: Teller<'_>, input: &Event, message: &Message, step: Step<'_>) {
        let Some(client) = &self.client else { return };
        let entry = self.entry(who, input, message, step);
        let subject = subject_of(&entry);
        let payload = match serde_json::to_vec(&entry) {
            Ok(payload) => payload,
            Err(err) => return tracing::debug!(error = %err, "could not encode a trail entry"),
        };
        if let Err(err) = client.publish(subject, payload.into()).await {
            tracing::debug!(error = %err, "could not write a trail entry");
        }
    }

    fn entry(&self, who: Teller<'_>, input: &Event, message: &Message, step: Step<'_>) -> Entry {
        let info = message.info().ok();
        let extension = |name: &str| input.extension(name).map(|v| v.to_string());
        let (kind, error) = match step.failure {
            Some((kind, error)) => (Some(kind.to_string()), Some(cut(error, MAX_ERROR))),
            None => (None, None),
        };
        Entry {
            id: input.id().to_string(),
            source: input.source().to_string(),
            event_type: input.ty().to_string(),
            subject: input.subject().map(str::to_string),
            correlation: extension("correlationid"),
            causation: extension("causationid"),
            key: key_of(input, &self.keys),
            handler: who.handler.to_string(),
            version: who.version.to_string(),
            runtime: self.runtime.clone(),
            attempt: step.attempt,
            outcome: step.outcome.as_str().to_string(),
            kind,
            error,
            duration_us: step
                .ran_for
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            emitted: step.emitted,
            at: Utc::now(),
            stream: info.as_ref().map(|i| i.stream.to_string()),
            sequence: info.as_ref().map(|i| i.stream_sequence),
            nats_subject: message.subject.to_string(),
            record: Some(format!("{}/{}", who.records, ProcessedEvents::key(input))),
        }
    }
}

/// The first of `keys` the event's JSON data has, as text.
pub fn key_of(event: &Event, keys: &[String]) -> Option<(String, String)> {
    if keys.is_empty() {
        return None;
    }
    let parsed;
    let data = match event.data()? {
        Data::Json(value) => value,
        Data::Binary(bytes) => {
            parsed = serde_json::from_slice::<serde_json::Value>(bytes).ok()?;
            &parsed
        }
        Data::String(text) => {
            parsed = serde_json::from_str::<serde_json::Value>(text).ok()?;
            &parsed
        }
    };
    keys.iter().find_map(|key| {
        let pointer = format!("/{}", key.replace('.', "/"));
        let value = match data.pointer(&pointer)? {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Number(number) => number.to_string(),
            serde_json::Value::Bool(flag) => flag.to_string(),
            _ => return None,
        };
        Some((key.clone(), value))
    })
}

/// What a search fixes: one of the entry subject's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchBy {
    Id,
    Correlation,
    Key,
    Subject,
}

impl SearchBy {
    pub const ALL: [SearchBy; 4] = [
        SearchBy::Id,
        SearchBy::Key,
        SearchBy::Subject,
        SearchBy::Correlation,
    ];

    /// The subject filter of the entries whose `self` is `value`.
    pub fn filter(self, value: &str) -> String {
        let token = token(value);
        let mut tokens = ["*"; 5];
        tokens[self.position()] = &token;
        format!("{SUBJECT_PREFIX}.{}", tokens.join("."))
    }

    /// Whether `entry` really has `value` (a filter matches a hash).
    pub fn matches(self, entry: &Entry, value: &str) -> bool {
        match self {
            SearchBy::Id => entry.id == value,
            SearchBy::Correlation => entry.correlation.as_deref() == Some(value),
            SearchBy::Key => entry.key.as_ref().is_some_and(|(_, v)| v == value),
            SearchBy::Subject => entry.subject.as_deref() == Some(value),
        }
    }

    fn position(self) -> usize {
        match self {
            SearchBy::Id => 0,
            SearchBy::Correlation => 1,
            SearchBy::Key => 2,
            SearchBy::Subject => 3,
        }
    }
}

/// The subject `entry` is stored on.
pub fn subject_of(entry: &Entry) -> String {
    let optional = |value: Option<&str>| value.map_or(ABSENT.to_string(), token);
    format!(
        "{SUBJECT_PREFIX}.{}.{}.{}.{}.{}",
        token(&entry.id),
        optional(entry.correlation.as_deref()),
        optional(entry.key.as_ref().map(|(_, v)| v.as_str())),
        optional(entry.subject.as_deref()),
        entry.handler,
    )
}

/// A value as one subject token: 64 bits of its SHA-256, in hex. Any text
/// becomes a valid token; a collision only adds an entry the reader drops.
fn token(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    format!("{}…", &text[..text.floor_char_boundary(max)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::EventBuilder;

    fn order(data: serde_json::Value) -> Event {
        cloudevents::EventBuilderV10::new()
            .id("e-1")
            .source("/shop")
            .ty("com.example.order.created")
            .data("application/json", data)
            .build()
            .unwrap()
    }

    #[test]
    fn the_first_key_the_data_has_is_the_events_key() {
        let keys = ["order.id".to_string(), "order_id".to_string()];
        let event = order(serde_json::json!({"order_id": "o-1", "total": 3}));
        assert_eq!(
            key_of(&event, &keys),
            Some(("order_id".into(), "o-1".into()))
        );
        let nested = order(serde_json::json!({"order": {"id": 7}, "order_id": "o-1"}));
        assert_eq!(
            key_of(&nested, &keys),
            Some(("order.id".into(), "7".into()))
        );
        assert_eq!(key_of(&order(serde_json::json!({"other": 1})), &keys), None);
        assert_eq!(key_of(&event, &[]), None);
    }

    #[test]
    fn each_search_fixes_its_own_token() {
        let entry = Entry {
            id: "e-1".into(),
            source: "/shop".into(),
            event_type: "t".into(),
            subject: None,
            correlation: Some("c-1".into()),
            causation: None,
            key: Some(("order_id".into(), "o-1".into())),
            handler: "payment".into(),
            version: "1".into(),
            runtime: "r".into(),
            attempt: 1,
            outcome: "succeeded".into(),
            kind: None,
            error: None,
            duration_us: None,
            emitted: 0,
            at: Utc::now(),
            stream: None,
            sequence: None,
            nats_subject: "orders.created".into(),
            record: None,
        };
        let subject = subject_of(&entry);
        let tokens: Vec<&str> = subject.split('.').collect();
        assert_eq!(tokens.len(), 6, "{subject}");
        assert_eq!(tokens[4], ABSENT, "no CloudEvents subject");
        assert_eq!(tokens[5], "payment");
        for (by, value) in [
            (SearchBy::Id, "e-1"),
            (SearchBy::Correlation, "c-1"),
            (SearchBy::Key, "o-1"),
        ] {
            let filter = by.filter(value);
            let fixed: Vec<&str> = filter.split('.').collect();
            assert!(
                (fixed.iter().zip(&tokens)).all(|(f, t)| *f == "*" || f == t),
                "{filter} matches {subject}"
            );
            assert!(by.matches(&entry, value));
            assert!(!by.matches(&entry, "other"));
            assert_ne!(by.filter("other"), filter);
        }
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("ééééé", 3), "é…");
    }
}
