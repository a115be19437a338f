//! The shape of an event's record, and of the commit plan it carries while
//! an invocation's effects are being applied.
//!
//! `committing` and `aborting` carry the whole [`CommitPlan`], so whoever
//! takes the event over after a crash finishes (or undoes) exactly the same
//! commit instead of running the handler again. A commit made in one atomic
//! batch leaves a [`CommitRecords`] entry beside its state instead.

use async_nats::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::failure::{DeadLetterReason, FailureKind};

use crate::store::{COMMIT_RECORD_PREFIX, Publish, Store, StoreError, StoreResult, kv};

/// On every message a commit writes: the commit's id.
pub const COMMIT_HEADER: &str = "Eventhost-Commit";
/// On every state write of a commit: where its record is
/// (`<bucket>/<key>`). Until that record says the commit is over, readers
/// inside eventhost treat the write as not yet there (see [`is_settled`]).
pub const PENDING_HEADER: &str = "Eventhost-Pending";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Record {
    Claimed {
        owner: String,
        until: DateTime<Utc>,
        #[serde(flatten)]
        history: FailureHistory,
    },
    Failed {
        #[serde(flatten)]
        history: FailureHistory,
    },
    Committing {
        owner: String,
        until: DateTime<Utc>,
        #[serde(flatten)]
        history: FailureHistory,
        plan: CommitPlan,
    },
    Aborting {
        owner: String,
        until: DateTime<Utc>,
        #[serde(flatten)]
        history: FailureHistory,
        plan: CommitPlan,
    },
    Done {
        version: String,
        at: DateTime<Utc>,
    },
    /// The event's one outcome was a dead letter: later copies are skipped
    /// until `eventhost dlq replay` clears this record.
    DeadLettered {
        version: String,
        at: DateTime<Utc>,
        reason: DeadLetterReason,
    },
}

impl Record {
    /// The commit this record says is under way, if any.
    pub fn commit_in_progress(&self) -> Option<&CommitPlan> {
        match self {
            Record::Committing { plan, .. } | Record::Aborting { plan, .. } => Some(plan),
            _ => None,
        }
    }
}

/// What earlier attempts at an event left behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureHistory {
    /// Runs started so far, this one included: the attempt number. Counted
    /// here rather than taken from JetStream's delivery count, which also
    /// counts the deliveries the host put back unrun (a copy waiting for
    /// another runtime's claim, the host's own trouble).
    #[serde(default)]
    pub attempts: u32,
    /// Failed attempts so far.
    pub failures: u32,
    pub first_failure: Option<DateTime<Utc>>,
    /// The last failure's kind and message, for a dead letter written by a
    /// later delivery than the one that failed.
    pub last_kind: Option<FailureKind>,
    pub last_error: Option<String>,
    /// Set once a holder decides to dead-letter the event, before the letter
    /// is stored: the record's revision at that moment. Whoever holds the
    /// event next stores the same letter (named after this decision, so the
    /// queue keeps one) instead of running the handler again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gave_up: Option<u64>,
}

impl FailureHistory {
    /// The history of an event's first run.
    pub fn first_attempt() -> Self {
        FailureHistory {
            attempts: 1,
            ..Default::default()
        }
    }

    /// Adds a failed attempt of `kind` with message `error`.
    pub fn record_failure(&mut self, kind: FailureKind, error: &str) {
        self.failures += 1;
        self.first_failure = self.first_failure.or(Some(Utc::now()));
        self.last_kind = Some(kind);
        self.last_error = Some(error.to_string());
    }
}

/// Everything a successful invocation changes, in the order it is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommitPlan {
    /// Names the commit in every message it writes (`Eventhost-Commit`) and
    /// in their `Nats-Msg-Id`s.
    pub id: String,
    /// Conditional state changes: key-value writes, then event-store appends.
    pub writes: Vec<PlannedWrite>,
    /// Published once every write is in: the emitted events.
    pub outputs: Vec<PlannedMessage>,
}

impl CommitPlan {
    /// Whether the writes must be marked pending until the commit ends:
    /// always, when there are any. Even a single write, which is the
    /// commit's decision by itself and is never undone, must not be written
    /// over by another commit while this one is unfinished, or a resumer
    /// could not tell its own applied write from a lost race: only the key's
    /// last message can be read back, and a repeated publish is answered
    /// "duplicate" by nats-server 2.9 but "wrong last sequence" by current
    /// servers.
    pub fn marks_pending(&self) -> bool {
        !self.writes.is_empty()
    }

    /// Whether the plan changes state: only such a plan gets an id
    /// ([`crate::outcome::plan`]), and keeps it when what is left of it is
    /// its outputs (a commit made in one batch, resumed from its record).
    pub fn changed_state(&self) -> bool {
        !self.id.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "write", rename_all = "snake_case")]
pub enum PlannedWrite {
    /// Set (or, with no value, delete) a key, if its revision is still
    /// `expected`.
    Key {
        bucket: String,
        key: String,
        #[serde(with = "base64_option")]
        value: Option<Bytes>,
        expected: u64,
        /// The value to put back if the commit has to be undone.
        prior: PriorValue,
    },
    /// Append an event to a subject of an event-store stream: on condition
    /// that the subject's last sequence is `expected`, or, for `None`, that
    /// it is the previous append of this plan to the same subject.
    Event {
        stream: String,
        expected: Option<u64>,
        message: PlannedMessage,
    },
}

impl PlannedWrite {
    /// The write as a message, before any condition or id is added.
    pub fn publish(&self) -> Publish {
        match self {
            PlannedWrite::Key {
                bucket, key, value, ..
            } => kv::write(bucket, key, value.clone()),
            PlannedWrite::Event { message, .. } => Publish::from(message.clone()),
        }
    }
}

/// A key's value before the commit, as it was read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PriorValue {
    #[serde(with = "base64_option")]
    pub value: Option<Bytes>,
    pub headers: Vec<(String, String)>,
}

/// A message, encoded once so that every retry publishes the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedMessage {
    pub subject: String,
    /// Kept as a header map, the form it is published in; written into the
    /// record as (name, value) pairs.
    #[serde(with = "header_pairs")]
    pub headers: HeaderMap,
    /// Its `Nats-Msg-Id`, if it has one.
    pub msg_id: Option<String>,
    #[serde(with = "base64_bytes")]
    pub payload: Bytes,
}

/// Where one consumer's commit records live: beside its state, in the one
/// stream it writes.
#[derive(Debug, Clone)]
pub struct CommitRecords {
    pub stream: String,
    consumer: String,
    /// How long a record is kept: the idempotency window.
    pub window: Duration,
    /// Whether this runtime commits there in one batch. Records are looked
    /// for on every takeover either way: another runtime of the fleet may
    /// have left one.
    pub batch_here: bool,
}

impl CommitRecords {
    /// Records this runtime writes (and reads).
    pub fn new(stream: &str, consumer: &str, window: Duration) -> Self {
        CommitRecords {
            stream: stream.to_string(),
            consumer: consumer.to_string(),
            window,
            batch_here: true,
        }
    }

    /// Records this runtime only looks for, committing with records itself.
    pub fn read_only(self) -> Self {
        CommitRecords {
            batch_here: false,
            ..self
        }
    }

    pub fn subject(&self, record_key: &str) -> String {
        format!(
            "{COMMIT_RECORD_PREFIX}.{}.{}.{record_key}",
            self.stream, self.consumer
        )
    }

    /// The commit recorded for the event of `record_key`, if one was: its
    /// outputs, still to publish (no writes: those are in).
    pub async fn find(
        &self,
        store: &dyn Store,
        record_key: &str,
    ) -> StoreResult<Option<CommitPlan>> {
        let found = store.last(&self.stream, &self.subject(record_key)).await?;
        Ok(found.and_then(|m| serde_json::from_slice(&m.payload).ok()))
    }

    /// Whether `plan` is committed here in one batch: this runtime commits
    /// in batches, every write lands in this stream, and the writes and the
    /// record fit in one batch.
    pub fn holds(&self, plan: &CommitPlan) -> bool {
        let fits = plan.writes.len() < crate::store::batch::MAX_MESSAGES;
        self.batch_here
            && fits
            && plan.writes.iter().all(|write| match write {
                PlannedWrite::Key { bucket, .. } => kv::stream(bucket) == self.stream,
                PlannedWrite::Event { stream, .. } => *stream == self.stream,
            })
    }
}

/// Reads the record named by `record_ref` (`<bucket>/<key>`), in any
/// consumer's bucket.
pub async fn read_record(store: &dyn Store, record_ref: &str) -> StoreResult<Option<Record>> {
    let Some((bucket, key)) = record_ref.split_once('/') else {
        let why = format!("malformed record reference {record_ref:?}");
        return Err(StoreError::refused("reading a record", why));
    };
    let entry = kv::entry(store, bucket, key).await?;
    Ok(entry.value.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Whether a message may be read as committed: it carries no pending mark,
/// or the commit that wrote it is over. A commit that is undone removes its
/// writes before its record moves on, so a pending write still standing
/// after its commit ended belongs to a commit that was applied.
pub async fn is_settled(store: &dyn Store, headers: &HeaderMap) -> StoreResult<bool> {
    let Some(record_ref) = headers.get(PENDING_HEADER) else {
        return Ok(true);
    };
    let commit = headers.get(COMMIT_HEADER).map(|v| v.as_str());
    let record = read_record(store, record_ref.as_str()).await?;
    let under_way = record.as_ref().and_then(Record::commit_in_progress);
    Ok(under_way.is_none_or(|plan| Some(plan.id.as_str()) != commit))
}

pub fn headers_to_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (name, values) in headers.iter() {
        for value in values {
            pairs.push((name.to_string(), value.as_str().to_string()));
        }
    }
    pairs
}

pub fn pairs_to_headers(pairs: &[(String, String)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(name.as_str(), value.as_str());
    }
    headers
}

mod header_pairs {
    use super::*;

    pub fn serialize<S: serde::Serializer>(headers: &HeaderMap, s: S) -> Result<S::Ok, S::Error> {
        headers_to_pairs(headers).serialize(s)
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HeaderMap, D::Error> {
        let pairs = Vec::<(String, String)>::deserialize(d)?;
        Ok(pairs_to_headers(&pairs))
    }
}

mod base64_bytes {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        Ok(bytes.into())
    }
}

mod base64_option {
    use super::*;

    pub fn serialize<S: serde::Serializer>(bytes: &Option<Bytes>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => super::base64_bytes::serialize(bytes, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Bytes>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        let decode = |t: String| base64::engine::general_purpose::STANDARD.decode(t);
        let bytes = text.map(decode).transpose();
        Ok(bytes.map_err(serde::de::Error::custom)?.map(Bytes::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_committing_record_round_trips_with_binary_values() {
        let plan = CommitPlan {
            id: "c1".into(),
            writes: vec![PlannedWrite::Key {
                bucket: "b".into(),
                key: "k".into(),
                value: Some(Bytes::from_static(&[0, 159, 146, 150])),
                expected: 7,
                prior: PriorValue::default(),
            }],
            outputs: vec![PlannedMessage {
                subject: "out".into(),
                headers: {
                    let mut headers = HeaderMap::new();
                    headers.insert("ce-type", "t");
                    headers
                },
                msg_id: Some("x".into()),
                payload: Bytes::from_static(b"{}"),
            }],
        };
        let record = Record::Committing {
            owner: "h/1".into(),
            until: Utc::now(),
            history: FailureHistory {
                last_kind: Some(FailureKind::Conflict),
                ..Default::default()
            },
            plan: plan.clone(),
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"state\":\"committing\""), "{json}");
        assert!(json.contains("\"last_kind\":\"conflict\""), "{json}");
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back.commit_in_progress(), Some(&plan));
        let output = &back.commit_in_progress().unwrap().outputs[0];
        assert_eq!(output.headers.get("ce-type").map(|v| v.as_str()), Some("t"));
        assert!(plan.marks_pending(), "a single write is pending too");
        let outputs_only = CommitPlan {
            writes: vec![],
            ..plan
        };
        assert!(!outputs_only.marks_pending());
    }

    #[test]
    fn records_written_before_typed_kinds_still_read() {
        // A `failed` record as the 0.1 runtime wrote it.
        let old = r#"{"state":"failed","failures":2,"first_failure":null,"last_kind":"trap","last_error":"boom"}"#;
        let Record::Failed { history } = serde_json::from_str(old).unwrap() else {
            panic!("not failed")
        };
        assert_eq!(history.last_kind, Some(FailureKind::Trap));
    }
}
