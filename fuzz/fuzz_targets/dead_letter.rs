//! Dead letters, written as the runtime writes them and read back as
//! `eventhost dlq` reads them. The input is a few bytes of facts (mode,
//! attempts, sequence, times), an error line, a subject line, then the
//! original message as text (see `eventhost_fuzz::message`).
//!
//! Properties: writing never panics; every fact reads back as written; the
//! original headers come back unchanged (minus NATS' own); an original
//! CloudEvent is still recognised, and a binary-mode one carries the facts
//! as extensions that decode to the same values.
#![no_main]

use chrono::{DateTime, Utc};
use cloudevents::AttributesReader;
use eventhost::dead_letter_queue::StoredDeadLetter;
use eventhost::event::decode::{ContentMode, decode};
use eventhost::failure::DeadLetterReason;
use eventhost::outcome::dead_letter::{DeadLetter, header};
use eventhost_fuzz::{header_pairs, message};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;

/// What the queue writes, lower-cased: `Eventhost-*` facts and, on a
/// binary-mode event, the same facts as `ce-dlq*` extensions.
const QUEUE_HEADERS: &[&str] = &[
    "eventhost-handler",
    "eventhost-handler-version",
    "eventhost-error-kind",
    "eventhost-error",
    "eventhost-attempts",
    "eventhost-first-failure",
    "eventhost-last-failure",
    "eventhost-original-subject",
    "eventhost-original-stream",
    "eventhost-original-sequence",
    "eventhost-record",
    "ce-dlqhandler",
    "ce-dlqversion",
    "ce-dlqerrorkind",
    "ce-dlqerror",
    "ce-dlqattempts",
    "ce-dlqfirstfailure",
    "ce-dlqlastfailure",
    "ce-dlqsubject",
    "ce-dlqstream",
    "ce-dlqsequence",
];

/// A failure time: the runtime's clock, so between 1970 and 9999.
fn time(millis: i64) -> DateTime<Utc> {
    const YEAR_10000: i64 = 253_402_300_800_000;
    DateTime::from_timestamp_millis(millis.rem_euclid(YEAR_10000)).unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let mut facts = Unstructured::new(data);
    let mode = facts.int_in_range(0..=2u8).unwrap_or(0);
    let attempts: u32 = facts.arbitrary().unwrap_or(0);
    let sequence: u64 = facts.arbitrary().unwrap_or(0);
    let first = time(facts.arbitrary().unwrap_or(0));
    let last = time(facts.arbitrary().unwrap_or(0));
    let rest = facts.take_rest();
    let mut lines = rest.splitn(3, |&b| b == b'\n');
    let error = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let subject = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    // A NATS subject has no whitespace or control characters.
    if subject.is_empty() || subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return;
    }
    let (original, payload) = message(lines.next().unwrap_or_default());
    let original_event = decode(Some(&original), payload).ok();
    let mode = match mode {
        0 => None,
        1 => Some(ContentMode::Structured),
        _ => Some(ContentMode::Binary),
    };
    let letter = DeadLetter {
        handler: "fuzzed",
        version: "0123456789ab",
        reason: DeadLetterReason::InvalidEvent,
        error: &error,
        attempts,
        first_failure: first,
        last_failure: last,
        mode,
        record: Some("processed-fuzzed/0123abcd"),
        given_up_at: Some(sequence),
    };
    let headers = letter.headers(Some(&original), &subject, "ORDERS", sequence);
    let stored = StoredDeadLetter {
        sequence: 1,
        stored: Utc::now(),
        headers,
        payload: payload.to_vec().into(),
    };

    assert_eq!(stored.fact(header::HANDLER), Some("fuzzed"));
    assert_eq!(
        stored.fact(header::ORIGINAL_SUBJECT),
        Some(subject.as_str())
    );
    let sequence_text = sequence.to_string();
    assert_eq!(
        stored.fact(header::ORIGINAL_SEQUENCE),
        Some(sequence_text.as_str())
    );
    let attempts_text = attempts.to_string();
    assert_eq!(stored.fact(header::ATTEMPTS), Some(attempts_text.as_str()));
    let error_fact = stored.fact(header::ERROR).expect("the error is kept");
    assert!(!error_fact.contains(['\r', '\n']));
    assert!(error_fact.len() <= 2048 + '…'.len_utf8());
    for name in [header::FIRST_FAILURE, header::LAST_FAILURE] {
        let text = stored.fact(name).expect("failure times are kept");
        DateTime::parse_from_rfc3339(text).expect("failure times are RFC 3339");
    }

    // The names the queue writes are its own (and NATS' are the server's);
    // every other header of the original must come back for a replay.
    let mut expected = header_pairs(&original);
    expected
        .retain(|(name, _)| !name.starts_with("nats-") && !QUEUE_HEADERS.contains(&name.as_str()));
    assert_eq!(
        header_pairs(&stored.original_headers()),
        expected,
        "a replay would not republish the original headers"
    );

    let Some(original_event) = original_event else {
        return;
    };
    let event = &original_event.event;
    assert_eq!(
        stored.event_id_and_type(),
        Some((event.id().to_string(), event.ty().to_string()))
    );
    if mode == Some(ContentMode::Binary) && original_event.mode == ContentMode::Binary {
        let seen = decode(Some(&stored.headers), &stored.payload)
            .expect("the dead letter is still a CloudEvent");
        let extension = |name: &str| seen.event.extension(name).map(|v| v.to_string());
        assert_eq!(extension("dlqerror").as_deref(), Some(error_fact));
        assert_eq!(extension("dlqsubject"), Some(subject.clone()));
        assert_eq!(extension("dlqattempts"), Some(attempts_text));
        assert_eq!(seen.event.id(), event.id());
    }
});
