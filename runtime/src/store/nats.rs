//! [`Store`] over a real JetStream, through async-nats.
//!
//! Reads use direct gets where the stream allows them (any replica answers,
//! no consumer is made) and the stream leader's message API otherwise; which
//! one a stream takes is looked up once and remembered.

use std::collections::HashMap;
use std::sync::Mutex;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, DirectGetErrorKind, Stream};
use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageError};
use async_nats::jetstream::{self, context};
use futures::StreamExt;
use futures::future::{BoxFuture, FutureExt};

use super::batch::{self, AtomicBatchErrorKind, BatchMessage};
use async_nats::header;

use super::{PubAck, Publish, Store, StoreError, StoreResult, StoredMessage, StreamShape};

/// JetStream, as handler state uses it.
pub struct NatsStore {
    js: jetstream::Context,
    streams: Mutex<HashMap<String, StreamHandle>>,
}

#[derive(Clone)]
struct StreamHandle {
    stream: Stream,
    direct: bool,
}

/// `doing` failed with the client's `err`.
fn unavailable<E: std::error::Error + Send + Sync + 'static>(
    doing: impl ToString,
) -> impl FnOnce(E) -> StoreError {
    let doing = doing.to_string();
    move |err| StoreError::unavailable(doing, err)
}

impl NatsStore {
    pub fn new(js: jetstream::Context) -> Self {
        NatsStore {
            js,
            streams: Mutex::new(HashMap::new()),
        }
    }

    async fn stream(&self, name: &str) -> StoreResult<StreamHandle> {
        if let Some(handle) = self.streams.lock().expect("never poisoned").get(name) {
            return Ok(handle.clone());
        }
        let stream = self
            .js
            .get_stream(name)
            .await
            .map_err(unavailable(format!("looking up stream {name}")))?;
        let handle = StreamHandle {
            direct: stream.cached_info().config.allow_direct,
            stream,
        };
        let mut streams = self.streams.lock().expect("never poisoned");
        streams.insert(name.to_string(), handle.clone());
        Ok(handle)
    }

    async fn publish_message(&self, message: Publish) -> StoreResult<PubAck> {
        let mut publish = PublishMessage::build()
            .payload(message.payload)
            .headers(message.headers);
        if let Some(id) = &message.msg_id {
            publish = publish.message_id(id);
        }
        if let Some(sequence) = message.expected_last_subject_sequence {
            publish = publish.expected_last_subject_sequence(sequence);
        }
        let subject = message.subject;
        let refused = |err| classify_publish_error(err, &subject);
        let ack = self
            .js
            .send_publish(subject.clone(), publish)
            .await
            .map_err(refused)?
            .await
            .map_err(refused)?;
        Ok(PubAck {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn find(
        &self,
        stream: &str,
        subject: &str,
        from: Option<u64>,
    ) -> StoreResult<Option<StoredMessage>> {
        let handle = self.stream(stream).await?;
        let found = if handle.direct {
            let found = match from {
                Some(from) => {
                    let next = handle
                        .stream
                        .direct_get_next_for_subject(subject, Some(from));
                    next.await
                }
                None => handle.stream.direct_get_last_for_subject(subject).await,
            };
            match found {
                Ok(message) => Some(message),
                Err(err) if err.kind() == DirectGetErrorKind::NotFound => None,
                Err(err) => return Err(unavailable(format!("reading {subject}"))(err)),
            }
        } else {
            let builder = handle.stream.raw_message_builder();
            let found = match from {
                Some(from) => {
                    let next = builder.sequence(from).next_by_subject(subject.to_string());
                    next.send().await
                }
                None => builder.last_by_subject(subject.to_string()).send().await,
            };
            match found {
                Ok(message) => Some(message),
                Err(err) if not_found(&err) => None,
                Err(err) => return Err(unavailable(format!("reading {subject}"))(err)),
            }
        };
        Ok(found.map(stored))
    }
}

/// What a refused or failed publish means to the state code. Lost races are
/// conflicts, whichever way the server words them: 10071 (wrong last
/// sequence) and 10164 (a write to that subject is in flight, nats-server
/// 2.11+; async-nats reports it as a generic error). Everything else,
/// 10163 (a new stream leader not caught up yet) among it, is the store
/// being unavailable for now: the host's trouble, tried again later. The
/// server's error code stays in the message of what is not a conflict.
pub(super) fn classify_publish_error(err: context::PublishError, subject: &str) -> StoreError {
    if err.kind() == PublishErrorKind::WrongLastSequence {
        return StoreError::WrongLastSequence;
    }
    let code = std::error::Error::source(&err)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .map(|error| error.error_code());
    match code {
        Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE)
        | Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT) => StoreError::WrongLastSequence,
        Some(ErrorCode(code)) => {
            let doing = format!("publishing to {subject} (JetStream error {code})");
            StoreError::unavailable(doing, err)
        }
        None => StoreError::unavailable(format!("publishing to {subject}"), err),
    }
}

/// Tries of a batch the server refuses for having too many open.
const BATCH_TRIES: u64 = 5;

/// A message of a batch, with its conditions as headers.
fn batch_message(message: Publish) -> BatchMessage {
    let mut headers = message.headers;
    if let Some(id) = &message.msg_id {
        headers.insert(header::NATS_MESSAGE_ID, id.as_str());
    }
    if let Some(sequence) = message.expected_last_subject_sequence {
        let sequence = sequence.to_string();
        headers.insert(
            header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            sequence.as_str(),
        );
    }
    BatchMessage {
        subject: message.subject,
        headers,
        payload: message.payload,
    }
}

fn not_found(err: &RawMessageError) -> bool {
    match err.kind() {
        LastRawMessageErrorKind::NoMessageFound => true,
        LastRawMessageErrorKind::JetStream(e) => e.error_code() == ErrorCode::NO_MESSAGE_FOUND,
        _ => false,
    }
}

fn stored(message: StreamMessage) -> StoredMessage {
    StoredMessage {
        subject: message.subject.to_string(),
        sequence: message.sequence,
        headers: message.headers,
        payload: message.payload,
        time: message.time,
    }
}

impl Store for NatsStore {
    fn publish(&self, message: Publish) -> BoxFuture<'_, StoreResult<PubAck>> {
        self.publish_message(message).boxed()
    }

    fn publish_atomic(
        &self,
        batch_id: String,
        messages: Vec<Publish>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        async move {
            let messages: Vec<_> = messages.into_iter().map(batch_message).collect();
            let client = self.js.client();
            let mut tries = 1;
            let committed = loop {
                let committed = batch::publish_atomic(&client, &batch_id, messages.clone()).await;
                match committed {
                    // The server holds 50 open batches per stream: under
                    // load, wait a moment for one to close.
                    Err(err)
                        if err.kind() == AtomicBatchErrorKind::TooManyInFlight
                            && tries < BATCH_TRIES =>
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(20 * tries)).await;
                        tries += 1;
                    }
                    committed => break committed,
                }
            };
            match committed {
                Ok(_) => Ok(()),
                Err(err) => match err.kind() {
                    // A duplicate id is a race too: a write of this batch
                    // was made by another holder.
                    AtomicBatchErrorKind::Conflict | AtomicBatchErrorKind::Duplicate => {
                        Err(StoreError::WrongLastSequence)
                    }
                    _ => Err(unavailable(format!("committing atomic batch {batch_id}"))(
                        err,
                    )),
                },
            }
        }
        .boxed()
    }

    fn last<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<StoredMessage>>> {
        self.find(stream, subject, None).boxed()
    }

    fn next<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
        from: u64,
    ) -> BoxFuture<'a, StoreResult<Option<StoredMessage>>> {
        self.find(stream, subject, Some(from.max(1))).boxed()
    }

    fn delete<'a>(&'a self, stream: &'a str, sequence: u64) -> BoxFuture<'a, StoreResult<()>> {
        async move {
            let handle = self.stream(stream).await?;
            match handle.stream.delete_message(sequence).await {
                Ok(_) => Ok(()),
                Err(err) => match err.kind() {
                    DeleteMessageErrorKind::JetStream(e)
                        if e.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                    {
                        Ok(())
                    }
                    _ => Err(unavailable(format!(
                        "deleting message {sequence} of {stream}"
                    ))(err)),
                },
            }
        }
        .boxed()
    }

    fn keys<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        async move {
            let listing = format!("listing the keys of bucket {bucket}");
            let kv = self.js.get_key_value(bucket).await;
            let mut keys =
                (kv.map_err(unavailable(&listing))?.keys().await).map_err(unavailable(&listing))?;
            let mut all = Vec::new();
            while let Some(key) = keys.next().await {
                all.push(key.map_err(unavailable(&listing))?);
            }
            all.sort();
            Ok(all)
        }
        .boxed()
    }

    fn stream_capturing<'a>(
        &'a self,
        pattern: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<StreamShape>>> {
        async move {
            // "No stream" is an answer; a failed request is not. Taking it
            // for one would leave a handler without its commit records'
            // lookups (a takeover could then run a committed event again).
            let name = match self.js.stream_by_subject(pattern).await {
                Ok(name) => name,
                Err(e) => match e.kind() {
                    GetStreamByNameErrorKind::NotFound
                    | GetStreamByNameErrorKind::InvalidSubject => return Ok(None),
                    _ => return Err(unavailable(format!("finding the stream of {pattern}"))(e)),
                },
            };
            let reading = format!("reading stream {name}");
            let mut stream = (self.js.get_stream(&name).await).map_err(unavailable(&reading))?;
            let config = &stream.info().await.map_err(unavailable(&reading))?.config;
            Ok(Some(StreamShape {
                name,
                subjects: config.subjects.clone(),
                deny_delete: config.deny_delete,
                atomic_commits: config.allow_atomic_publish && config.allow_message_ttl,
            }))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A publish error as async-nats builds it from the server's answer.
    fn refused(answer: &str) -> context::PublishError {
        let error: jetstream::Error = serde_json::from_str(answer).unwrap();
        let kind = match error.error_code() {
            ErrorCode::STREAM_WRONG_LAST_SEQUENCE => PublishErrorKind::WrongLastSequence,
            _ => PublishErrorKind::Other,
        };
        context::PublishError::with_source(kind, error)
    }

    #[test]
    fn lost_races_are_conflicts_in_every_wording() {
        for answer in [
            r#"{"code":400,"err_code":10071,"description":"wrong last sequence: 7"}"#,
            r#"{"code":400,"err_code":10164,"description":"wrong last sequence: 7 (in-flight)"}"#,
        ] {
            assert_eq!(
                classify_publish_error(refused(answer), "s"),
                StoreError::WrongLastSequence,
                "{answer}"
            );
        }
    }

    #[test]
    fn a_leader_not_caught_up_is_retryable_host_trouble_with_its_code() {
        let answer = r#"{"code":503,"err_code":10163,"description":"expected last sequence per subject temporarily unavailable"}"#;
        let error = classify_publish_error(refused(answer), "s");
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
        assert!(error.to_string().contains("10163"), "{error}");
    }

    #[test]
    fn an_unknown_refusal_keeps_its_code() {
        let answer = r#"{"code":400,"err_code":10999,"description":"something new"}"#;
        let error = classify_publish_error(refused(answer), "s");
        assert!(matches!(error, StoreError::Unavailable { .. }), "{error:?}");
        assert!(error.to_string().contains("10999"), "{error}");
        let timed_out = context::PublishError::new(PublishErrorKind::TimedOut);
        assert!(matches!(
            classify_publish_error(timed_out, "s"),
            StoreError::Unavailable { .. }
        ));
    }
}
