//! Dead-letter triage: a handler's queue filtered, one letter's whole
//! story, and replay or purge of one letter, a selection or a filter's
//! result, each reported letter by letter.
//!
//! The queue is read and changed through [`DeadLetterQueue`], exactly as
//! `eventhost dlq` does, so a replay from the page clears the event's
//! record and republishes it the same way. What became of a replayed
//! event is read from its idempotency record (the letter names it): gone
//! or claimed while it runs, `done` once handled, `dead_lettered` if it
//! failed again.
//!
//! Reading is bounded: at most [`MAX_READ`] letters (and
//! [`MAX_READ_BYTES`]) of a handler are read for one listing (the page
//! says when there are more), at most [`MAX_SHOWN`] are sent, and one
//! action takes at most [`MAX_SELECTED`].

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::auth::Operator;
use crate::dead_letter_queue::{DeadLetterQueue, StoredDeadLetter};
use crate::handler::plugins::validate_name;
use crate::ledger::record::{Record, read_record};
use crate::outcome::dead_letter::{self, header};
use crate::store::{NatsStore, kv};

/// Letters of one handler read for one listing.
pub const MAX_READ: usize = 5000;
/// Bytes of letters read for one listing or action: letters can be large.
pub const MAX_READ_BYTES: usize = 64 * 1024 * 1024;
/// Letters sent to the page at once.
pub const MAX_SHOWN: usize = 500;
/// Letters one action may take.
pub const MAX_SELECTED: usize = 1000;
/// Longest error text filter.
const MAX_TEXT: usize = 200;

/// What the operator filters a handler's queue by; every part optional
/// but the handler.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Filter {
    pub handler: String,
    /// The failure kind (`permanent`, `trap`, `schema_invalid`, …).
    #[serde(default)]
    pub kind: Option<String>,
    /// Text the error contains (letter case ignored).
    #[serde(default)]
    pub text: Option<String>,
    /// The event's CloudEvent type.
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    /// Stored longer ago than this (`10m`, `2h`).
    #[serde(default)]
    pub older_than: Option<String>,
    /// Stored more recently than this.
    #[serde(default)]
    pub newer_than: Option<String>,
}

/// A filter the console will not run, and why: the caller's mistake.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("handler: {0}")]
    Handler(String),
    #[error("{field} is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("{field}: {value:?} is not a duration such as 10m or 2h")]
    Age { field: &'static str, value: String },
    #[error("say which letters: `sequences` or `filter`, not both and not neither")]
    Selection,
    #[error("at most {MAX_SELECTED} letters per action ({0} selected)")]
    TooMany(usize),
    #[error("not a record reference (`bucket/key`): {0:?}")]
    Record(String),
}

/// A filter checked once, then matched against each letter.
struct Matcher {
    kind: Option<String>,
    text: Option<String>,
    event_type: Option<String>,
    older_than: Option<Duration>,
    newer_than: Option<Duration>,
}

impl Filter {
    fn matcher(&self) -> Result<Matcher, FilterError> {
        validate_name(&self.handler).map_err(|e| FilterError::Handler(format!("{e:#}")))?;
        let nonempty = |v: &Option<String>| v.as_ref().filter(|v| !v.trim().is_empty()).cloned();
        let text = nonempty(&self.text).map(|t| t.to_lowercase());
        for (field, value) in [
            ("text", &text),
            ("type", &self.event_type),
            ("kind", &self.kind),
        ] {
            if value.as_ref().is_some_and(|v| v.chars().count() > MAX_TEXT) {
                return Err(FilterError::TooLong {
                    field,
                    max: MAX_TEXT,
                });
            }
        }
        let age = |field: &'static str, value: &Option<String>| match nonempty(value) {
            None => Ok(None),
            Some(value) => humantime::parse_duration(value.trim())
                .map(Some)
                .map_err(|_| FilterError::Age { field, value }),
        };
        Ok(Matcher {
            kind: nonempty(&self.kind),
            text,
            event_type: nonempty(&self.event_type),
            older_than: age("older_than", &self.older_than)?,
            newer_than: age("newer_than", &self.newer_than)?,
        })
    }
}

impl Matcher {
    fn matches(&self, row: &LetterRow) -> bool {
        let age = Duration::from_secs(row.age_seconds.max(0) as u64);
        let error = row.error.as_deref().unwrap_or_default().to_lowercase();
        self.kind
            .as_ref()
            .is_none_or(|k| row.error_kind.as_ref() == Some(k))
            && self.text.as_ref().is_none_or(|t| error.contains(t))
            && (self.event_type.as_ref()).is_none_or(|t| row.event_type.as_ref() == Some(t))
            && self.older_than.is_none_or(|limit| age >= limit)
            && self.newer_than.is_none_or(|limit| age < limit)
    }
}

/// One dead letter as the queue's table shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LetterRow {
    pub sequence: u64,
    pub stored: DateTime<Utc>,
    pub age_seconds: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub attempts: Option<String>,
    pub version: Option<String>,
    /// Where the event's idempotency record is (`bucket/key`), if it had one.
    pub record: Option<String>,
}

impl LetterRow {
    fn of(letter: &StoredDeadLetter, now: DateTime<Utc>) -> Self {
        let fact = |name| letter.fact(name).map(str::to_string);
        let (event_id, event_type) = letter.event_id_and_type().unzip();
        LetterRow {
            sequence: letter.sequence,
            stored: letter.stored,
            age_seconds: (now - letter.stored).num_seconds(),
            event_id,
            event_type,
            error_kind: fact(header::ERROR_KIND),
            error: fact(header::ERROR),
            attempts: fact(header::ATTEMPTS),
            version: fact(header::VERSION),
            record: fact(header::RECORD),
        }
    }
}

/// A handler's queue, filtered.
#[derive(Debug, Serialize)]
pub struct Listing {
    pub handler: String,
    /// Letters read (all of the handler's, unless `more`).
    pub read: usize,
    /// More letters wait beyond the [`MAX_READ`] read.
    pub more: bool,
    /// Letters that match the filter (the first [`MAX_SHOWN`] are sent).
    pub matching: usize,
    pub letters: Vec<LetterRow>,
    /// The last sequence read: an action on "every match" goes no further.
    pub last_sequence: Option<u64>,
}

/// The handlers with letters waiting, and how many each.
pub async fn queues(js: &jetstream::Context) -> Result<Vec<(String, u64)>> {
    let mut depths: Vec<_> = dead_letter::depths(js).await?.into_iter().collect();
    depths.sort();
    Ok(depths)
}

pub async fn list(js: &jetstream::Context, filter: &Filter) -> Result<Listing> {
    let matcher = filter.matcher()?;
    let (rows, more) = read_rows(js, &filter.handler).await?;
    let matching: Vec<LetterRow> = rows
        .iter()
        .filter(|r| matcher.matches(r))
        .cloned()
        .collect();
    Ok(Listing {
        handler: filter.handler.clone(),
        read: rows.len(),
        more,
        matching: matching.len(),
        letters: matching.into_iter().take(MAX_SHOWN).collect(),
        last_sequence: rows.last().map(|r| r.sequence),
    })
}

async fn read_rows(js: &jetstream::Context, handler: &str) -> Result<(Vec<LetterRow>, bool)> {
    // No runtime has declared the queue yet: nothing waits in it.
    if !crate::jetstream::stream_exists(js, dead_letter::STREAM).await? {
        return Ok((Vec::new(), false));
    }
    let queue = DeadLetterQueue::open(js).await?;
    let (letters, more) = queue.list_up_to(handler, MAX_READ, MAX_READ_BYTES).await?;
    let now = Utc::now();
    Ok((
        letters.iter().map(|l| LetterRow::of(l, now)).collect(),
        more,
    ))
}

/// Everything about one dead letter.
#[derive(Debug, Serialize)]
pub struct LetterStory {
    pub handler: String,
    #[serde(flatten)]
    pub row: LetterRow,
    /// Every `Eventhost-*` fact the letter states, by header.
    pub facts: Vec<(String, String)>,
    /// The original message's headers.
    pub headers: Vec<(String, String)>,
    /// The original payload: JSON when it is JSON, else text.
    pub payload: serde_json::Value,
    /// What the event's record says now.
    pub record_state: Option<String>,
}

pub async fn story(js: &jetstream::Context, handler: &str, sequence: u64) -> Result<LetterStory> {
    validate_name(handler).map_err(|e| FilterError::Handler(format!("{e:#}")))?;
    let queue = DeadLetterQueue::open(js).await?;
    let letter = queue.get(handler, sequence).await?;
    let row = LetterRow::of(&letter, Utc::now());
    let facts = (dead_letter::story_headers())
        .filter_map(|name| Some((name.to_string(), letter.fact(name)?.to_string())))
        .collect();
    let headers = (letter.original_headers().iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.to_string()))
        })
        .collect();
    let payload = serde_json::from_slice(&letter.payload)
        .unwrap_or_else(|_| String::from_utf8_lossy(&letter.payload).into_owned().into());
    // Best effort: a letter's story stands without its record's state.
    let record_state = match &row.record {
        Some(record) => Some(match outcome_of(js, record).await {
            Ok(fate) => fate.state,
            Err(err) => format!("unknown ({err:#})"),
        }),
        None => None,
    };
    Ok(LetterStory {
        handler: handler.to_string(),
        row,
        facts,
        headers,
        payload,
        record_state,
    })
}

/// Which letters an action takes: these sequences, or every letter the
/// filter matches (the handler is the filter's).
#[derive(Debug, Deserialize)]
pub struct Selection {
    #[serde(default)]
    pub handler: Option<String>,
    #[serde(default)]
    pub sequences: Option<Vec<u64>>,
    #[serde(default)]
    pub filter: Option<Filter>,
    /// With a filter: take no letter stored after this sequence (the last
    /// one the operator's listing read).
    #[serde(default)]
    pub up_to: Option<u64>,
}

/// What an action did, letter by letter.
#[derive(Debug, Default, Serialize)]
pub struct ActionReport {
    pub done: Vec<Done>,
    pub failed: Vec<NotDone>,
}

#[derive(Debug, Serialize)]
pub struct Done {
    pub sequence: u64,
    pub event_id: Option<String>,
    /// Where a replay went.
    pub subject: Option<String>,
    /// Where to read the replayed event's fate.
    pub record: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NotDone {
    pub sequence: u64,
    pub error: String,
}

/// The two things an operator does to dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replay,
    Purge,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Replay => "replay",
            Action::Purge => "purge",
        }
    }
}

/// Replays or purges the selected letters, one by one: a letter that
/// fails (or is gone meanwhile) is reported and the others still go.
/// The action is logged before it starts and letter by letter, so an
/// action cut short (a closed tab) still says who did what.
pub async fn act(
    js: &jetstream::Context,
    operator: &Operator,
    action: Action,
    selection: &Selection,
) -> Result<ActionReport> {
    let queue = DeadLetterQueue::open(js).await?;
    let (handler, chosen) = selected(&queue, selection).await?;
    tracing::info!(operator = %operator.0, action = action.as_str(), %handler,
        letters = chosen.len(), "console action on dead letters starting");
    let mut report = ActionReport::default();
    for letter in chosen {
        let letter = match letter {
            Ok(letter) => letter,
            Err(not_done) => {
                report.failed.push(not_done);
                continue;
            }
        };
        let event_id = letter.event_id_and_type().map(|(id, _)| id);
        let record = letter.fact(header::RECORD).map(str::to_string);
        let result = match action {
            Action::Replay => queue.replay(&letter).await.map(Some),
            Action::Purge => queue.delete(&letter).await.map(|()| None),
        };
        let sequence = letter.sequence;
        tracing::info!(operator = %operator.0, action = action.as_str(), %handler, sequence,
            ok = result.is_ok(), "console action on a dead letter");
        match result {
            Ok(subject) => report.done.push(Done {
                sequence,
                event_id,
                subject,
                record: record.filter(|_| action == Action::Replay),
            }),
            Err(err) => report.failed.push(NotDone {
                sequence,
                error: format!("{err:#}"),
            }),
        }
    }
    let sequences: Vec<u64> = report.done.iter().map(|d| d.sequence).collect();
    tracing::info!(operator = %operator.0, action = action.as_str(), %handler,
        done = report.done.len(), failed = report.failed.len(), ?sequences,
        "console action on dead letters");
    Ok(report)
}

/// The letters a selection names, read whole; one that cannot be had is
/// its report line already.
async fn selected(
    queue: &DeadLetterQueue,
    selection: &Selection,
) -> Result<(String, Vec<Result<StoredDeadLetter, NotDone>>)> {
    match (&selection.sequences, &selection.filter) {
        (Some(sequences), None) => {
            let handler = selection.handler.clone().unwrap_or_default();
            validate_name(&handler).map_err(|e| FilterError::Handler(format!("{e:#}")))?;
            let sequences: BTreeSet<u64> = sequences.iter().copied().collect();
            if sequences.len() > MAX_SELECTED {
                return Err(FilterError::TooMany(sequences.len()).into());
            }
            let mut letters = Vec::new();
            for sequence in sequences {
                let letter = (queue.get(&handler, sequence).await).map_err(|err| NotDone {
                    sequence,
                    error: err.to_string(),
                });
                letters.push(letter);
            }
            Ok((handler, letters))
        }
        (None, Some(filter)) => {
            let matcher = filter.matcher()?;
            let (letters, _) = queue
                .list_up_to(&filter.handler, MAX_READ, MAX_READ_BYTES)
                .await?;
            let now = Utc::now();
            // Letters stored after the operator's listing are not theirs to
            // take: `up_to` is the last sequence that listing read.
            let seen =
                |l: &StoredDeadLetter| selection.up_to.is_none_or(|up_to| l.sequence <= up_to);
            let chosen: Vec<_> = (letters.into_iter())
                .filter(|l| seen(l) && matcher.matches(&LetterRow::of(l, now)))
                .map(Ok)
                .collect();
            if chosen.len() > MAX_SELECTED {
                return Err(FilterError::TooMany(chosen.len()).into());
            }
            Ok((filter.handler.clone(), chosen))
        }
        _ => Err(FilterError::Selection.into()),
    }
}

/// What an event's record says, for a replayed letter's new fate.
#[derive(Debug, Serialize)]
pub struct Fate {
    pub record: String,
    /// `waiting` (no record: not taken yet), `running`, `succeeded`,
    /// `dead_lettered` (failed again: a new letter waits), `retrying`.
    pub state: String,
}

pub async fn outcome_of(js: &jetstream::Context, record_ref: &str) -> Result<Fate> {
    let valid = record_ref.split_once('/').is_some_and(|(bucket, key)| {
        kv::validate_bucket(bucket).is_ok() && kv::validate_key(key).is_ok()
    });
    if !valid {
        return Err(FilterError::Record(record_ref.to_string()).into());
    }
    let store = NatsStore::new(js.clone());
    let record = (read_record(&store, record_ref).await)
        .with_context(|| format!("reading the record {record_ref}"))?;
    let state = match record {
        None => "waiting",
        Some(Record::Claimed { .. } | Record::Committing { .. } | Record::Aborting { .. }) => {
            "running"
        }
        Some(Record::Failed { .. }) => "retrying",
        Some(Record::Done { .. }) => "succeeded",
        Some(Record::DeadLettered { .. }) => "dead_lettered",
    };
    Ok(Fate {
        record: record_ref.to_string(),
        state: state.to_string(),
    })
}
