//! Atomic batch publish (ADR-50): messages to one stream, stored all
//! together or not at all.
//!
//! async-nats has no batch publisher yet (nats.rs #1480), so this one is
//! written on the core client, following the ADR's client design. It costs
//! one round trip: every message but the last is published without a reply
//! subject (the server stages it and answers nothing), and the last carries
//! `Nats-Batch-Commit: 1` and goes as a request, whose answer is the
//! batch's publish ack or the error that rejected all of it. Messages from
//! one connection reach the server in the order they were written, so the
//! commit arrives after the messages it commits.
//!
//! The per-message checks (`Nats-Expected-Last-Subject-Sequence`,
//! `Nats-Msg-Id`) are evaluated at the commit against the stream as it was
//! before the batch; any one failing rejects every message. A batch its
//! publisher abandons half way is dropped by the server after 10 s idle:
//! nothing of it is stored.
//!
//! Servers: atomic batches came with nats-server 2.12 and need the stream's
//! `allow_atomic`; eventhost relies on them only from 2.14.4, which fixed
//! the expected-subject-sequence checks inside a batch.

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::{Client, HeaderMap, header};
use bytes::Bytes;

/// The most messages one batch may hold (the server's default limit).
pub const MAX_MESSAGES: usize = 1000;

/// One message of a batch. Its headers may carry the checks JetStream
/// evaluates at the commit; the batch headers are added here.
#[derive(Debug, Clone)]
pub struct BatchMessage {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// A committed batch: its messages are the `count` ending at `last_sequence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchAck {
    pub stream: String,
    pub last_sequence: u64,
    pub count: u64,
}

/// Why a batch was not committed. Every kind but `Unanswered` means that
/// nothing of it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicBatchErrorKind {
    /// A batch holds 1 to [`MAX_MESSAGES`] messages.
    Size,
    /// The stream does not allow atomic batches (`allow_atomic`), or the
    /// server predates them.
    Disabled,
    /// An expectation did not hold: another writer changed a subject the
    /// batch expected unchanged, or is changing it right now.
    Conflict,
    /// A `Nats-Msg-Id` in the batch is a duplicate.
    Duplicate,
    /// Too many batches are open on the stream or the server: try again.
    TooManyInFlight,
    /// The server refused it for another reason (the source says which).
    Rejected,
    /// The batch could not be sent, or its commit went unanswered: whether
    /// it was stored is unknown.
    Unanswered,
}

impl std::fmt::Display for AtomicBatchErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Size => "an atomic batch holds 1 to 1000 messages",
            Self::Disabled => "the stream does not allow atomic batches",
            Self::Conflict => "an expected last sequence did not hold",
            Self::Duplicate => "a message id in the batch is a duplicate",
            Self::TooManyInFlight => "too many atomic batches in flight",
            Self::Rejected => "the atomic batch was rejected",
            Self::Unanswered => "the atomic batch's commit went unanswered",
        })
    }
}

pub type AtomicBatchError = async_nats::error::Error<AtomicBatchErrorKind>;

/// Publishes `messages` as one atomic batch with id `batch_id` (at most 64
/// characters, unique among the stream's open batches).
pub async fn publish_atomic(
    client: &Client,
    batch_id: &str,
    mut messages: Vec<BatchMessage>,
) -> Result<BatchAck, AtomicBatchError> {
    use AtomicBatchErrorKind as Kind;
    let count = messages.len();
    let last = match messages.pop() {
        Some(last) if count <= MAX_MESSAGES => last,
        _ => return Err(Kind::Size.into()),
    };
    let with_batch_headers = |mut headers: HeaderMap, sequence: usize| {
        headers.insert(header::NATS_BATCH_ID, batch_id);
        headers.insert(header::NATS_BATCH_SEQUENCE, sequence.to_string().as_str());
        headers
    };
    for (index, message) in messages.into_iter().enumerate() {
        let headers = with_batch_headers(message.headers, index + 1);
        (client
            .publish_with_headers(message.subject, headers, message.payload)
            .await)
            .map_err(|e| AtomicBatchError::with_source(Kind::Unanswered, e))?;
        if crate::failpoint::armed("batch.staged") {
            // The crash tests' "between the messages of a batch": the
            // server has staged this one when the runtime dies.
            let _ = client.flush().await;
            crate::failpoint::hit("batch.staged");
        }
    }
    let mut headers = with_batch_headers(last.headers, count);
    headers.insert(header::NATS_BATCH_COMMIT, header::NATS_BATCH_COMMIT_FINAL);
    let answer = client
        .request_with_headers(last.subject, headers, last.payload)
        .await
        .map_err(|e| AtomicBatchError::with_source(Kind::Unanswered, e))?;
    match serde_json::from_slice::<Response<PublishAck>>(&answer.payload) {
        Ok(Response::Ok(ack)) => Ok(BatchAck {
            stream: ack.stream,
            last_sequence: ack.sequence,
            count: ack.batch_size.unwrap_or(count as u64),
        }),
        Ok(Response::Err { error }) => Err(AtomicBatchError::with_source(
            kind_of(error.error_code()),
            error,
        )),
        Err(e) => Err(AtomicBatchError::with_source(Kind::Unanswered, e)),
    }
}

fn kind_of(code: ErrorCode) -> AtomicBatchErrorKind {
    use AtomicBatchErrorKind as Kind;
    match code {
        ErrorCode::ATOMIC_PUBLISH_DISABLED => Kind::Disabled,
        ErrorCode::STREAM_WRONG_LAST_SEQUENCE | ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT => {
            Kind::Conflict
        }
        ErrorCode::ATOMIC_PUBLISH_CONTAINS_DUPLICATE_MESSAGE
        | ErrorCode::STREAM_DUPLICATE_MESSAGE_CONFLICT => Kind::Duplicate,
        ErrorCode::ATOMIC_PUBLISH_TOO_MANY_INFLIGHT => Kind::TooManyInFlight,
        _ => Kind::Rejected,
    }
}
