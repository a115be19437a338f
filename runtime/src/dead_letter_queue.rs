//! Operating on the dead-letter queue: what `eventhost dlq` does.
//!
//! Dead letters are read with direct gets (`next message on dlq.<handler>
//! after sequence N`), which need no consumer and work on NATS 2.9. A replay
//! first clears the event's idempotency record (which says it was
//! dead-lettered, so that later copies are skipped), then republishes the
//! original message to its original subject, without the headers the queue
//! added, and deletes the dead letter only once JetStream has stored the
//! replay. Its `Nats-Msg-Id` comes from the dead letter's sequence, so
//! replaying twice (a crash between publish and delete) stores the event
//! once.

use anyhow::{Context, Result};
use async_nats::HeaderMap;
use async_nats::jetstream::{self, message::StreamMessage, stream};
use chrono::{DateTime, Utc};
use cloudevents::AttributesReader;

use crate::event::decode;
use crate::ledger::record::{Record, read_record};
use crate::outcome::dead_letter::{self, header};
use crate::store::{NatsStore, kv};

/// The dead-letter queue, as an operator sees it.
pub struct DeadLetterQueue {
    js: jetstream::Context,
    stream: stream::Stream,
}

/// Why one dead letter could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LetterError {
    #[error("no dead letter at sequence {sequence}")]
    NotFound { sequence: u64 },
    #[error("dead letter {sequence} belongs to {belongs_to}, not to {wanted}")]
    OtherHandler {
        sequence: u64,
        belongs_to: String,
        wanted: String,
    },
    #[error("reading dead letter {sequence}")]
    Unreadable {
        sequence: u64,
        source: stream::DirectGetError,
    },
}

/// One stored dead letter.
#[derive(Debug)]
pub struct StoredDeadLetter {
    pub sequence: u64,
    pub stored: DateTime<Utc>,
    pub headers: HeaderMap,
    pub payload: bytes::Bytes,
}

impl StoredDeadLetter {
    /// An `Eventhost-*` header's value.
    pub fn fact(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.as_str())
    }

    /// The event's id and type, when the original was a CloudEvent.
    pub fn event_id_and_type(&self) -> Option<(String, String)> {
        let original = self.original_headers();
        let event = decode::decode(Some(&original), &self.payload).ok()?.event;
        Some((event.id().to_string(), event.ty().to_string()))
    }

    /// The headers of the original message, without what the queue added.
    pub fn original_headers(&self) -> HeaderMap {
        let mut original = HeaderMap::new();
        for (name, values) in self.headers.iter() {
            let name_str: &str = name.as_ref();
            if dead_letter::is_added_header(name_str) {
                continue;
            }
            for value in values {
                original.append(name.clone(), value.clone());
            }
        }
        original
    }
}

impl From<StreamMessage> for StoredDeadLetter {
    fn from(message: StreamMessage) -> Self {
        StoredDeadLetter {
            sequence: message.sequence,
            stored: message.time,
            headers: message.headers,
            payload: message.payload,
        }
    }
}

impl DeadLetterQueue {
    pub async fn open(js: &jetstream::Context) -> Result<Self> {
        let stream = js.get_stream(dead_letter::STREAM).await.with_context(|| {
            format!(
                "no dead-letter stream {} (has `eventhost run` ever started against this server?)",
                dead_letter::STREAM
            )
        })?;
        Ok(DeadLetterQueue {
            js: js.clone(),
            stream,
        })
    }

    /// Every dead letter of `handler`, oldest first.
    pub async fn list(&self, handler: &str) -> Result<Vec<StoredDeadLetter>> {
        Ok(self.list_up_to(handler, usize::MAX, usize::MAX).await?.0)
    }

    /// The oldest dead letters of `handler`, at most `max` of them and
    /// about `max_bytes` of payload, and whether there are more.
    pub async fn list_up_to(
        &self,
        handler: &str,
        max: usize,
        max_bytes: usize,
    ) -> Result<(Vec<StoredDeadLetter>, bool)> {
        let mut bytes = 0usize;
        let subject = dead_letter::subject(handler);
        let mut letters = Vec::new();
        let mut after = 0;
        loop {
            match self
                .stream
                .direct_get_next_for_subject(subject.as_str(), Some(after + 1))
                .await
            {
                Ok(_) if letters.len() == max || bytes >= max_bytes => {
                    return Ok((letters, true));
                }
                Ok(message) => {
                    after = message.sequence;
                    bytes = bytes.saturating_add(message.payload.len());
                    letters.push(message.into());
                }
                Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => {
                    return Ok((letters, false));
                }
                Err(err) => return Err(err).context("reading the dead-letter queue"),
            }
        }
    }

    /// The dead letter at `sequence`, which must belong to `handler`.
    pub async fn get(&self, handler: &str, sequence: u64) -> Result<StoredDeadLetter, LetterError> {
        let message = match self.stream.direct_get(sequence).await {
            Ok(message) => message,
            Err(err) if err.kind() == stream::DirectGetErrorKind::NotFound => {
                return Err(LetterError::NotFound { sequence });
            }
            Err(err) => {
                return Err(LetterError::Unreadable {
                    sequence,
                    source: err,
                });
            }
        };
        let subject = dead_letter::subject(handler);
        if message.subject.as_str() != subject {
            return Err(LetterError::OtherHandler {
                sequence,
                belongs_to: message.subject.to_string(),
                wanted: subject,
            });
        }
        Ok(message.into())
    }

    /// Republishes a dead letter to its original subject, then deletes it.
    /// Returns the subject it went to.
    pub async fn replay(&self, letter: &StoredDeadLetter) -> Result<String> {
        let subject = letter
            .fact(header::ORIGINAL_SUBJECT)
            .context("the dead letter does not say its original subject")?
            .to_string();
        if let Some(record) = letter.fact(header::RECORD) {
            self.clear_record(record).await?;
        }
        let mut headers = letter.original_headers();
        let id = format!("replay-{}-{}", dead_letter::STREAM, letter.sequence);
        headers.insert("Nats-Msg-Id", id.as_str());
        self.js
            .publish_with_headers(subject.clone(), headers, letter.payload.clone())
            .await
            .with_context(|| format!("republishing dead letter {} to {subject}", letter.sequence))?
            .await
            .with_context(|| format!("no stream stored the replay on {subject}"))?;
        self.stream
            .delete_message(letter.sequence)
            .await
            .with_context(|| format!("deleting replayed dead letter {}", letter.sequence))?;
        Ok(subject)
    }

    /// Deletes the record that marks the event dead-lettered, so that the
    /// replayed copy is handled afresh. Any other state of the record (the
    /// event was handled meanwhile, or is being handled) is left alone.
    async fn clear_record(&self, record_ref: &str) -> Result<()> {
        let store = NatsStore::new(self.js.clone());
        let record = read_record(&store, record_ref)
            .await
            .with_context(|| format!("reading the idempotency record {record_ref}"))?;
        if !matches!(record, Some(Record::DeadLettered { .. })) {
            return Ok(());
        }
        let (bucket, key) = record_ref
            .split_once('/')
            .context("malformed record reference")?;
        let entry = kv::entry(&store, bucket, key).await?;
        let delete = kv::write(bucket, key, None).expect_last(entry.revision);
        use crate::store::Store as _;
        match store.publish(delete).await {
            Ok(_) | Err(crate::store::StoreError::WrongLastSequence) => Ok(()),
            Err(err) => {
                Err(err).with_context(|| format!("clearing the idempotency record {record_ref}"))
            }
        }
    }

    /// Deletes one dead letter (read with [`DeadLetterQueue::get`], so it
    /// is known to be the handler's).
    pub async fn delete(&self, letter: &StoredDeadLetter) -> Result<()> {
        self.stream
            .delete_message(letter.sequence)
            .await
            .with_context(|| format!("deleting dead letter {}", letter.sequence))?;
        Ok(())
    }

    /// Deletes every dead letter of `handler`; returns how many.
    pub async fn purge(&self, handler: &str) -> Result<u64> {
        let purged = self
            .stream
            .purge()
            .filter(dead_letter::subject(handler))
            .await
            .context("purging the dead-letter queue")?;
        Ok(purged.purged)
    }
}
