//! The dead-letter queue: where an event goes when it cannot be handled.
//!
//! One JetStream stream ([`STREAM`]) holds every handler's dead letters, on
//! `dlq.<handler>`. A dead letter is the original message byte for byte (its
//! payload and its headers, minus the `Nats-*` transport headers) plus what
//! an operator needs to decide what to do, as `Eventhost-*` headers. For a
//! binary-mode CloudEvent the same facts are also extension attributes
//! (`ce-dlq*` headers), so any CloudEvents consumer of the queue sees them on
//! the event itself. A structured-mode event keeps them in headers only:
//! writing them into its JSON would change the original bytes.
//!
//! The input is acked only after JetStream has stored the dead letter, and
//! the dead letter's `Nats-Msg-Id` is derived from the event's decision to
//! give up (its record and the record's revision then) or, for a message
//! that never had a record, from the input's stream and sequence. So a
//! crash between the two steps gives a redelivery whose dead letter the
//! stream drops as a duplicate: never zero, never two, within the stream's
//! one-hour duplicate window.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, Message, stream};
use chrono::{DateTime, SecondsFormat, Utc};

use crate::event::decode::ContentMode;
use crate::event::encode::header_value;
use crate::failure::DeadLetterReason;

/// The stream holding every handler's dead letters.
pub const STREAM: &str = "EVENTHOST_DLQ";
/// Dead letters of handler `h` are stored on `dlq.h`.
pub const SUBJECT_PREFIX: &str = "dlq";
/// How long the stream remembers dead-letter ids. Longer than the default
/// two minutes so that a runtime down for a while still cannot dead-letter
/// an event twice when it comes back; dead letters are few, so the memory
/// this costs the server is small.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(60 * 60);

/// Header names. `Eventhost-*` headers are what `eventhost dlq` reads.
pub mod header {
    pub const HANDLER: &str = "Eventhost-Handler";
    pub const VERSION: &str = "Eventhost-Handler-Version";
    pub const ERROR_KIND: &str = "Eventhost-Error-Kind";
    pub const ERROR: &str = "Eventhost-Error";
    pub const ATTEMPTS: &str = "Eventhost-Attempts";
    pub const FIRST_FAILURE: &str = "Eventhost-First-Failure";
    pub const LAST_FAILURE: &str = "Eventhost-Last-Failure";
    pub const ORIGINAL_SUBJECT: &str = "Eventhost-Original-Subject";
    pub const ORIGINAL_STREAM: &str = "Eventhost-Original-Stream";
    pub const ORIGINAL_SEQUENCE: &str = "Eventhost-Original-Sequence";
    /// Where the event's idempotency record is (`<bucket>/<key>`): a replay
    /// clears it, so that the replayed event is handled afresh.
    pub const RECORD: &str = "Eventhost-Record";
    /// Prefix of the extension attributes added to binary-mode events.
    pub const EXTENSION_PREFIX: &str = "ce-dlq";
}

/// The facts a dead letter states, in the order [`DeadLetter::headers`]
/// writes them: each one's header, and its extension attribute (after
/// `ce-dlq`) on a binary-mode event.
const FACTS: [(&str, &str); 10] = [
    (header::HANDLER, "handler"),
    (header::VERSION, "version"),
    (header::ERROR_KIND, "errorkind"),
    (header::ERROR, "error"),
    (header::ATTEMPTS, "attempts"),
    (header::FIRST_FAILURE, "firstfailure"),
    (header::LAST_FAILURE, "lastfailure"),
    (header::ORIGINAL_SUBJECT, "subject"),
    (header::ORIGINAL_STREAM, "stream"),
    (header::ORIGINAL_SEQUENCE, "sequence"),
];

/// Every `Eventhost-*` header a dead letter may carry, in the order an
/// operator reads its story.
pub fn story_headers() -> impl Iterator<Item = &'static str> {
    FACTS
        .iter()
        .map(|(header, _)| *header)
        .chain([header::RECORD])
}

/// Longest error message kept: headers are not the place for megabytes.
const MAX_ERROR_LEN: usize = 2048;

pub fn subject(handler: &str) -> String {
    format!("{SUBJECT_PREFIX}.{handler}")
}

/// How many dead letters wait, per handler name.
pub async fn depths(js: &jetstream::Context) -> Result<std::collections::HashMap<String, u64>> {
    use futures::StreamExt as _;
    let stream = match js.get_stream(STREAM).await {
        Ok(stream) => stream,
        // No runtime has declared it yet: no letter waits.
        Err(err) if crate::jetstream::stream_not_found(&err) => return Ok(Default::default()),
        Err(err) => return Err(err).context("opening the dead-letter stream"),
    };
    let prefix = format!("{SUBJECT_PREFIX}.");
    let mut subjects = (stream.info_with_subjects(format!("{prefix}>")).await)
        .context("listing the dead-letter stream's subjects")?;
    let mut depths = std::collections::HashMap::new();
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.context("listing the dead-letter stream's subjects")?;
        if let Some(handler) = subject.strip_prefix(&prefix) {
            depths.insert(handler.to_string(), count as u64);
        }
    }
    Ok(depths)
}

/// The dead-letter stream's shape.
fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.to_string(),
        description: Some("eventhost: events no handler could handle".into()),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        storage: stream::StorageType::File,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        num_replicas: replicas,
        ..Default::default()
    }
}

/// Creates the dead-letter stream, or updates it to this shape.
pub async fn ensure_stream(js: &jetstream::Context, replicas: usize) -> Result<()> {
    crate::jetstream::declare::declare_stream(js, stream_config(replicas))
        .await
    .with_context(|| {
        format!("declaring the dead-letter stream {STREAM} on {SUBJECT_PREFIX}.> (does another stream capture it?)")
    })?;
    Ok(())
}

/// Why a dead letter was not stored: the message stays in its stream, to
/// be dead-lettered again on its next delivery.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("the message has no JetStream metadata: {0}")]
    NoMetadata(String),
    #[error("publishing the dead letter")]
    Publish(#[source] jetstream::context::PublishError),
    #[error("JetStream did not store the dead letter")]
    Unconfirmed(#[source] jetstream::context::PublishError),
}

/// Why and how an event failed, as the dead letter tells it.
#[derive(Debug)]
pub struct DeadLetter<'a> {
    pub handler: &'a str,
    pub version: &'a str,
    /// Why: `permanent`, `timeout`, `invalid_event`…
    pub reason: DeadLetterReason,
    pub error: &'a str,
    pub attempts: u32,
    pub first_failure: DateTime<Utc>,
    pub last_failure: DateTime<Utc>,
    /// The input's content mode, when it was a CloudEvent at all.
    pub mode: Option<ContentMode>,
    /// The event's idempotency record, when it has one.
    pub record: Option<&'a str>,
    /// The record's revision when the event was given up (see
    /// [`crate::ledger::record::FailureHistory::gave_up`]): with the record,
    /// it names the letter, so every holder that stores it stores one.
    pub given_up_at: Option<u64>,
}

impl DeadLetter<'_> {
    /// Stores the dead letter of `message` and waits for JetStream to confirm.
    pub async fn publish(
        &self,
        js: &jetstream::Context,
        message: &Message,
    ) -> Result<(), DeadLetterError> {
        let info = message
            .info()
            .map_err(|e| DeadLetterError::NoMetadata(e.to_string()))?;
        let (stream, sequence) = (info.stream.to_string(), info.stream_sequence);
        let headers = self.headers(
            message.headers.as_ref(),
            &message.subject,
            &stream,
            sequence,
        );
        let ack = js
            .publish_with_headers(subject(self.handler), headers, message.payload.clone())
            .await
            .map_err(DeadLetterError::Publish)?;
        ack.await.map_err(DeadLetterError::Unconfirmed)?;
        Ok(())
    }

    /// The dead letter's headers for a message that arrived on `subject`
    /// with `original` headers, stored in `stream` at `sequence`. Public so
    /// that the fuzz targets can write dead letters without a server.
    pub fn headers(
        &self,
        original: Option<&HeaderMap>,
        subject: &str,
        stream: &str,
        sequence: u64,
    ) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(original) = original {
            for (name, values) in original.iter() {
                // The queue's own names, in any case, are written below: an
                // original's `Ce-dlqattempts` beside our `ce-dlqattempts`
                // would make the letter an ambiguous CloudEvent.
                if is_added_header(name.as_ref()) {
                    continue;
                }
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        let error = one_line(self.error);
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
        let values = [
            self.handler.to_string(),
            self.version.to_string(),
            self.reason.as_str().to_string(),
            error,
            self.attempts.to_string(),
            time(self.first_failure),
            time(self.last_failure),
            subject.to_string(),
            stream.to_string(),
            sequence.to_string(),
        ];
        for ((name, extension), value) in FACTS.into_iter().zip(values) {
            if self.mode == Some(ContentMode::Binary) {
                let ce_name = format!("{}{extension}", header::EXTENSION_PREFIX);
                headers.insert(ce_name.as_str(), header_value(&value).as_str());
            }
            headers.insert(name, value.as_str());
        }
        if let Some(record) = self.record {
            headers.insert(header::RECORD, record);
        }
        let id = match (self.record, self.given_up_at) {
            (Some(record), Some(revision)) => format!("dlq-{record}-{revision}"),
            _ => format!("dlq-{stream}-{sequence}-{}", self.handler),
        };
        headers.insert("Nats-Msg-Id", id.as_str());
        headers
    }
}

/// Header values cannot hold line breaks, and should not hold a novel.
fn one_line(text: &str) -> String {
    let mut line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.len() > MAX_ERROR_LEN {
        line.truncate(line.floor_char_boundary(MAX_ERROR_LEN));
        line.push('…');
    }
    line
}

/// Whether a header is one the dead-letter queue added (so a replay strips
/// it, and `dlq show` lists it apart). Only the names the queue writes and
/// NATS' own count: a producer's header that merely starts the same way
/// (`Eventhost-Tenant`, a `ce-dlqpriority` extension) is the original's.
pub fn is_added_header(name: &str) -> bool {
    let ours = |candidate: &str| candidate.eq_ignore_ascii_case(name);
    name.to_ascii_lowercase().starts_with("nats-")
        || ours(header::RECORD)
        || FACTS.iter().any(|(header, extension)| {
            ours(header) || ours(&format!("{}{extension}", header::EXTENSION_PREFIX))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A letter of handler `h`, version `v`, failed at time 0; tests set
    /// the fields they are about.
    fn test_letter() -> DeadLetter<'static> {
        let time = DateTime::from_timestamp_millis(0).unwrap();
        DeadLetter {
            handler: "h",
            version: "v",
            reason: DeadLetterReason::InvalidEvent,
            error: "e",
            attempts: 1,
            first_failure: time,
            last_failure: time,
            mode: None,
            record: None,
            given_up_at: None,
        }
    }

    #[test]
    fn letters_are_kept_on_disk_per_handler_and_their_ids_for_an_hour() {
        assert_eq!(subject("payment"), "dlq.payment");
        let config = stream_config(3);
        assert_eq!(config.name, STREAM);
        assert!(config.description.is_some());
        assert!(config.allow_direct, "`eventhost dlq` reads by direct get");
        assert_eq!(config.subjects, ["dlq.>"]);
        assert_eq!(config.duplicate_window, Duration::from_secs(3600));
        assert_eq!(config.storage, stream::StorageType::File);
        assert_eq!(config.num_replicas, 3);
    }

    #[test]
    fn errors_become_one_bounded_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
        // Cut at the last character boundary within the limit (a 3-byte
        // character straddles it here).
        let long = "€".repeat(MAX_ERROR_LEN);
        let line = one_line(&long);
        let kept = MAX_ERROR_LEN / 3 * 3;
        assert_eq!(line, format!("{}…", &long[..kept]));
        // Exactly at the limit: kept whole.
        let full = "a".repeat(MAX_ERROR_LEN);
        assert_eq!(one_line(&full), full);
    }

    #[test]
    fn added_headers_are_recognised() {
        for name in ["Eventhost-Error", "ce-dlqattempts", "Nats-Msg-Id"] {
            assert!(is_added_header(name), "{name}");
        }
        for name in ["ce-id", "Content-Type", "ce-type"] {
            assert!(!is_added_header(name), "{name}");
        }
    }

    /// Found by the dead_letter fuzz target: an original binary event
    /// carrying `Ce-dlqattempts` got our `ce-dlqattempts` beside it, two
    /// values of one attribute in different cases, which the decoder
    /// refuses: the letter was no longer a CloudEvent.
    #[test]
    fn an_original_header_with_one_of_the_queues_names_in_another_case_is_replaced() {
        let mut original = HeaderMap::new();
        original.insert("Ce-dlqattempts", "2.0");
        original.insert("EVENTHOST-ERROR", "theirs");
        original.insert("ce-specversion", "1.0");
        original.insert("ce-id", "o-1");
        original.insert("ce-source", "/t");
        original.insert("ce-type", "t");
        let letter = DeadLetter {
            error: "ours",
            attempts: 3,
            mode: Some(ContentMode::Binary),
            ..test_letter()
        };
        let headers = letter.headers(Some(&original), "orders.created", "ORDERS", 7);
        let values = |wanted: &str| -> Vec<String> {
            let named = headers.iter().filter(|(n, _)| {
                let n: &str = n.as_ref();
                n.eq_ignore_ascii_case(wanted)
            });
            named
                .flat_map(|(_, v)| v.iter().map(|v| v.to_string()))
                .collect()
        };
        assert_eq!(values("ce-dlqattempts"), ["3"]);
        assert_eq!(values("eventhost-error"), ["ours"]);
        let decoded =
            crate::event::decode::decode(Some(&headers), b"").expect("still a CloudEvent");
        assert_eq!(
            decoded
                .event
                .extension("dlqattempts")
                .map(|v| v.to_string()),
            Some("3".into())
        );
    }

    /// Found by the dead_letter fuzz target: an original header named
    /// `Eventhost-Original-Streamce-id` was taken for one the queue added
    /// (it starts with `Eventhost-`), so a replay would have dropped it; a
    /// binary event's `ce-dlq…` extension was lost the same way.
    #[test]
    fn a_replay_keeps_producer_headers_that_look_like_the_queues() {
        let mut original = HeaderMap::new();
        for name in [
            "Eventhost-Original-Streamce-id",
            "Eventhost-Tenant",
            "ce-dlqpriority",
        ] {
            original.insert(name, "kept");
        }
        original.insert("Nats-Msg-Id", "o-1");
        let letter = DeadLetter {
            mode: Some(ContentMode::Binary),
            record: Some("b/k"),
            given_up_at: Some(7),
            ..test_letter()
        };
        let headers = letter.headers(Some(&original), "orders.created", "ORDERS", 7);
        let mut kept = Vec::new();
        for (name, _) in headers.iter() {
            let name: &str = name.as_ref();
            if !is_added_header(name) {
                kept.push(name.to_string());
            }
        }
        kept.sort();
        assert_eq!(
            kept,
            [
                "Eventhost-Original-Streamce-id",
                "Eventhost-Tenant",
                "ce-dlqpriority"
            ]
        );
    }

    #[test]
    fn a_given_up_event_names_its_letter_after_the_decision_not_the_delivery() {
        let letter = |given_up_at| DeadLetter {
            record: Some("processed-h/k"),
            given_up_at,
            ..test_letter()
        };
        let id = |letter: DeadLetter, sequence| {
            let headers = letter.headers(None, "orders.created", "ORDERS", sequence);
            headers.get("Nats-Msg-Id").unwrap().to_string()
        };
        // Two copies of one event (two stream sequences), one decision.
        assert_eq!(id(letter(Some(7)), 1), "dlq-processed-h/k-7");
        assert_eq!(id(letter(Some(7)), 2), "dlq-processed-h/k-7");
        // After a replay the event is given up anew: a new letter.
        assert_ne!(id(letter(Some(9)), 1), id(letter(Some(7)), 1));
        assert_eq!(id(letter(None), 3), "dlq-ORDERS-3-h");
    }
}
