//! The part of JetStream that handler state is built on, behind one trait.
//!
//! Key-value buckets, the event store, the idempotency records and the
//! commit of an invocation's effects all reduce to four operations on
//! streams: a conditional, deduplicated publish; reading the last (or the
//! next) message on a subject; deleting a message by sequence; and listing
//! a key-value bucket's keys. [`Store`] is exactly that, so the capability
//! code and the commit protocol are written once and run against
//! [`NatsStore`] in production and against [`MemoryStore`] in unit tests,
//! where a test can also cut the connection after any number of writes to
//! see what a crash at that point leaves behind.
//!
//! The two conditions JetStream checks on a publish are the whole basis of
//! exactly-once state: a `Nats-Msg-Id` seen within the stream's duplicate
//! window is acked as a duplicate with the sequence of the original; and
//! `Nats-Expected-Last-Subject-Sequence` refuses the message unless the
//! subject's last message has that sequence (0: the subject is empty).
//! Which check comes first changed between server versions (see
//! [`CheckOrder`]; `tests/state.rs` pins it on each supported server), so
//! nothing may rest on the order: a commit recognises its own writes by
//! reading them back, never by the answer to a repeated publish.

pub mod kv;
mod memory;
mod nats;
pub mod record;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

pub use memory::{CheckOrder, MemoryStore};
pub use nats::NatsStore;

/// A message to store.
#[derive(Debug, Clone, Default)]
pub struct Publish {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// `Nats-Msg-Id`: a repeat within the stream's duplicate window is acked
    /// as a duplicate of the first, not stored again.
    pub msg_id: Option<String>,
    /// `Nats-Expected-Last-Subject-Sequence`: store it only if the subject's
    /// last message has this sequence (0: only if the subject is empty).
    pub expected_last_subject_sequence: Option<u64>,
}

impl Publish {
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        Publish {
            subject: subject.into(),
            payload: payload.into(),
            ..Default::default()
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.insert(name, value);
        self
    }

    pub fn msg_id(mut self, id: impl Into<String>) -> Self {
        self.msg_id = Some(id.into());
        self
    }

    pub fn expect_last(mut self, sequence: u64) -> Self {
        self.expected_last_subject_sequence = Some(sequence);
        self
    }
}

/// JetStream's answer to a stored publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// The message's stream sequence; for a duplicate, the original's.
    pub sequence: u64,
    pub duplicate: bool,
}

/// A message as a stream holds it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub subject: String,
    pub sequence: u64,
    pub headers: HeaderMap,
    pub payload: Bytes,
    pub time: DateTime<Utc>,
}

impl StoredMessage {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }
}

/// Why a store operation failed. Callers branch on it: a wrong sequence is
/// a lost race (a conflict), anything else is the store being unreachable
/// or refusing, which is the host's trouble and worth trying again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("the subject's last sequence is not the one expected")]
    WrongLastSequence,
    #[error("JetStream: {0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The JetStream operations handler state needs. Object-safe, so a handler's
/// capabilities hold an `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Stores a message on the stream that captures its subject.
    fn publish(&self, message: Publish) -> BoxFuture<'_, StoreResult<PubAck>>;

    /// The last message on `subject` in `stream`.
    fn last<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<StoredMessage>>>;

    /// The first message on `subject` in `stream` at or after `from`.
    fn next<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
        from: u64,
    ) -> BoxFuture<'a, StoreResult<Option<StoredMessage>>>;

    /// Deletes the message at `sequence`; deleting one that is gone is fine.
    fn delete<'a>(&'a self, stream: &'a str, sequence: u64) -> BoxFuture<'a, StoreResult<()>>;

    /// The keys of key-value bucket `bucket` whose last operation is a put.
    fn keys<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>>;
}
