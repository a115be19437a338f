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
//! [`CheckOrder`]; `tests/guarantees/state/counts.rs` pins it on each supported server), so
//! nothing may rest on the order: a commit recognises its own writes by
//! reading them back, never by the answer to a repeated publish.

pub mod batch;
pub mod kv;
mod memory;
mod nats;

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::future::{BoxFuture, try_join_all};

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
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("the subject's last sequence is not the one expected")]
    WrongLastSequence,
    /// `doing` is what the store was asked; `cause` is the client's (or
    /// server's) own error, kept whole.
    #[error("JetStream, {doing}")]
    Unavailable {
        doing: String,
        #[source]
        cause: Cause,
    },
}

/// The error under a [`StoreError`], shared so the error stays `Clone`.
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

impl StoreError {
    /// JetStream failed while `doing` something, with `cause`.
    pub fn unavailable(
        doing: impl Into<String>,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        StoreError::Unavailable {
            doing: doing.into(),
            cause: Arc::new(cause),
        }
    }

    /// A failure the store itself describes (the in-memory store, say).
    pub fn refused(doing: impl Into<String>, why: impl Into<String>) -> Self {
        Self::unavailable(doing, Refusal(why.into()))
    }
}

impl Eq for StoreError {}

/// A failure with only a description.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl PartialEq for StoreError {
    /// Two errors are the same kind of failure: the causes are not compared.
    fn eq(&self, other: &Self) -> bool {
        matches!(
            (self, other),
            (StoreError::WrongLastSequence, StoreError::WrongLastSequence)
                | (
                    StoreError::Unavailable { .. },
                    StoreError::Unavailable { .. }
                )
        )
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The JetStream operations handler state needs. Object-safe, so a handler's
/// capabilities hold an `Arc<dyn Store>`.
pub trait Store: Send + Sync + 'static {
    /// Stores a message on the stream that captures its subject.
    fn publish(&self, message: Publish) -> BoxFuture<'_, StoreResult<PubAck>>;

    /// Stores `messages`, all on one stream, as one atomic batch named
    /// `batch_id`: every message or none (see [`batch`]).
    /// Each expectation is checked against the stream as it was before the
    /// batch; one failing refuses all with [`StoreError::WrongLastSequence`].
    fn publish_atomic(
        &self,
        batch_id: String,
        messages: Vec<Publish>,
    ) -> BoxFuture<'_, StoreResult<()>>;

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

    /// The stream that stores `subject` (a pattern: the stream capturing
    /// it), if there is one. Grants are checked against it at load.
    fn stream_capturing<'a>(
        &'a self,
        subject: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<StreamShape>>>;
}

/// What a grant checks about a stream at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamShape {
    pub name: String,
    /// The subjects it captures (wildcards allowed).
    pub subjects: Vec<String>,
    /// Whether it refuses deletes (an appended event could not be undone).
    pub deny_delete: bool,
    /// Whether it takes atomic batches and per-message TTLs: what a commit
    /// in one batch, with its record beside the state, needs.
    pub atomic_commits: bool,
}

/// The prefix of every commit record's subject (see
/// [`crate::ledger::batch`]). Key-value clients read `$KV.<bucket>.>` and
/// event-store readers their own subjects: neither sees these.
pub const COMMIT_RECORD_PREFIX: &str = "$EHC";

/// The subjects stream `stream` must also capture to hold its commit
/// records.
pub fn commit_records_subjects(stream: &str) -> String {
    format!("{COMMIT_RECORD_PREFIX}.{stream}.>")
}

/// Publishes `messages` and waits until JetStream has stored every one.
/// Publishes are pipelined: all are sent, then all acks awaited.
pub async fn publish_all(
    store: &dyn Store,
    messages: impl IntoIterator<Item = Publish>,
) -> StoreResult<()> {
    let mut messages: Vec<Publish> = messages.into_iter().collect();
    if messages.len() > 1 && crate::failpoint::armed("outputs.between") {
        // The crash tests' "between two outputs": the first is stored, the
        // others are not, when the runtime dies.
        store.publish(messages.remove(0)).await?;
        crate::failpoint::hit("outputs.between");
    }
    let stored = messages.into_iter().map(|message| store.publish(message));
    try_join_all(stored).await?;
    Ok(())
}
