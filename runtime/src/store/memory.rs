//! An in-memory [`Store`] with JetStream's semantics, for tests.
//!
//! It keeps the two publish checks the state guarantees rest on, in either
//! order a supported server uses ([`CheckOrder`]): nats-server 2.9 acks a
//! repeated `Nats-Msg-Id` as a duplicate with the original's sequence before
//! it checks the expected last subject sequence; current servers (2.15.1,
//! pinned by `tests/guarantees/state/counts.rs`) check the expectation first, so a repeat of
//! an applied conditional write is refused as a wrong sequence. The commit
//! must be right under both, and its tests run under both.
//! [`MemoryStore::cut_after`] lets a test stop the store after a number of
//! writes, which is what a runtime killed at that point of a commit leaves
//! behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use chrono::Utc;
use futures::future::{BoxFuture, FutureExt};

use super::{PubAck, Publish, Store, StoreError, StoreResult, StoredMessage, StreamShape, kv};
use crate::event::subject;

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

/// Which of a publish's two checks the modelled server makes first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CheckOrder {
    /// nats-server 2.9: a duplicate id is acked before any expectation.
    #[default]
    DuplicateFirst,
    /// Current servers (seen on 2.15.1): the expectation is checked first.
    ExpectationFirst,
}

#[derive(Default)]
struct Inner {
    order: CheckOrder,
    streams: Vec<MemoryStream>,
    /// Writes allowed before the store stops answering; `None`: no limit.
    writes_left: Option<usize>,
    writes: usize,
    /// Reads never answer, as through a frozen node.
    silent: bool,
}

struct MemoryStream {
    name: String,
    subjects: Vec<String>,
    /// Messages kept per subject (a bucket's history); `None`: all.
    per_subject: Option<usize>,
    messages: BTreeMap<u64, StoredMessage>,
    last_sequence: u64,
    ids: HashMap<String, u64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// A store that checks a publish's conditions in `order`.
    pub fn with_order(order: CheckOrder) -> Self {
        let store = Self::default();
        store.lock().order = order;
        store
    }

    /// A stream capturing `subjects` (wildcards allowed).
    pub fn add_stream(&self, name: &str, subjects: &[&str]) {
        self.add(name, subjects, None);
    }

    /// A key-value bucket keeping one value per key, shaped to hold commit
    /// records beside its keys as on a cluster.
    pub fn add_bucket(&self, bucket: &str) {
        let stream = kv::stream(bucket);
        let keys = format!("$KV.{bucket}.>");
        let records = super::commit_records_subjects(&stream);
        self.add(&stream, &[&keys, &records], Some(1));
    }

    fn add(&self, name: &str, subjects: &[&str], per_subject: Option<usize>) {
        self.lock().streams.push(MemoryStream {
            name: name.to_string(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            per_subject,
            messages: BTreeMap::new(),
            last_sequence: 0,
            ids: HashMap::new(),
        });
    }

    /// Lets `writes` more publishes or deletes through, then fails every
    /// operation as if the connection (or the process) were gone.
    pub fn cut_after(&self, writes: usize) {
        self.lock().writes_left = Some(writes);
    }

    /// Leaves every read of a subject's last message unanswered, as a
    /// frozen node does.
    pub fn silence(&self) {
        self.lock().silent = true;
    }

    /// Answers again after [`MemoryStore::cut_after`].
    pub fn reconnect(&self) {
        self.lock().writes_left = None;
    }

    /// Forgets every `Nats-Msg-Id`, as a stream does once its duplicate
    /// window has passed.
    pub fn forget_ids(&self) {
        for stream in &mut self.lock().streams {
            stream.ids.clear();
        }
    }

    /// Publishes and deletes done so far.
    pub fn writes(&self) -> usize {
        self.lock().writes
    }

    /// Every message `stream` holds now, oldest first.
    pub fn messages(&self, stream: &str) -> Vec<StoredMessage> {
        let inner = self.lock();
        let stream = inner.streams.iter().find(|s| s.name == stream);
        stream
            .map(|s| s.messages.values().cloned().collect())
            .unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("never poisoned")
    }
}

impl Inner {
    fn check_connected(&self) -> StoreResult<()> {
        match self.writes_left {
            Some(0) => Err(StoreError::refused("writing", "connection cut by the test")),
            _ => Ok(()),
        }
    }

    fn count_write(&mut self) -> StoreResult<()> {
        self.check_connected()?;
        if let Some(left) = &mut self.writes_left {
            *left -= 1;
        }
        self.writes += 1;
        Ok(())
    }

    fn stream(&mut self, name: &str) -> StoreResult<&mut MemoryStream> {
        self.streams
            .iter_mut()
            .find(|s| s.name == name)
            .ok_or_else(|| StoreError::refused(format!("looking up stream {name}"), "not found"))
    }

    fn publish(&mut self, message: Publish) -> StoreResult<PubAck> {
        self.count_write()?;
        self.store(message)
    }

    /// Stores `message` as JetStream would, without counting a write.
    fn store(&mut self, message: Publish) -> StoreResult<PubAck> {
        let stream = self
            .streams
            .iter_mut()
            .find(|s| {
                s.subjects
                    .iter()
                    .any(|p| subject::matches(p, &message.subject))
            })
            .ok_or_else(|| {
                StoreError::refused(
                    format!("publishing to {}", message.subject),
                    "no stream captures it",
                )
            })?;
        let duplicate = message.msg_id.as_ref().and_then(|id| stream.ids.get(id));
        let duplicate = duplicate.map(|&sequence| PubAck {
            sequence,
            duplicate: true,
        });
        let wrong_sequence = message
            .expected_last_subject_sequence
            .is_some_and(|expected| stream.last_on(&message.subject) != expected);
        match (self.order, duplicate, wrong_sequence) {
            (CheckOrder::DuplicateFirst, Some(ack), _) => return Ok(ack),
            (_, _, true) => return Err(StoreError::WrongLastSequence),
            (CheckOrder::ExpectationFirst, Some(ack), false) => return Ok(ack),
            (_, None, false) => {}
        }
        stream.last_sequence += 1;
        let sequence = stream.last_sequence;
        let mut headers = message.headers;
        if let Some(id) = message.msg_id {
            // The server keeps the id as the message's header.
            headers.insert("Nats-Msg-Id", id.as_str());
            stream.ids.insert(id, sequence);
        }
        let stored = StoredMessage {
            subject: message.subject,
            sequence,
            headers,
            payload: message.payload,
            time: Utc::now(),
        };
        stream.trim(&stored.subject);
        stream.messages.insert(sequence, stored);
        Ok(PubAck {
            sequence,
            duplicate: false,
        })
    }
}

impl Inner {
    /// As JetStream commits a batch: every expectation checked against the
    /// stream before it, then all stored, as one write.
    fn publish_atomic(&mut self, messages: Vec<Publish>) -> StoreResult<()> {
        self.count_write()?;
        for message in &messages {
            let Some(expected) = message.expected_last_subject_sequence else {
                continue;
            };
            let stream = self
                .streams
                .iter()
                .find(|s| (s.subjects.iter()).any(|p| subject::matches(p, &message.subject)));
            if stream.is_some_and(|s| s.last_on(&message.subject) != expected) {
                return Err(StoreError::WrongLastSequence);
            }
        }
        messages.into_iter().try_for_each(|message| {
            let message = Publish {
                expected_last_subject_sequence: None,
                ..message
            };
            self.store(message).map(|_| ())
        })
    }
}

impl MemoryStream {
    fn last_on(&self, subject: &str) -> u64 {
        let on_subject = self.messages.values().rev().find(|m| m.subject == subject);
        on_subject.map_or(0, |m| m.sequence)
    }

    /// Makes room for one more message on `subject`.
    fn trim(&mut self, subject: &str) {
        let Some(keep) = self.per_subject else { return };
        let on_subject: Vec<u64> = (self.messages.values())
            .filter(|m| m.subject == subject)
            .map(|m| m.sequence)
            .collect();
        let excess = (on_subject.len() + 1).saturating_sub(keep);
        for sequence in &on_subject[..excess] {
            self.messages.remove(sequence);
        }
    }
}

impl Store for MemoryStore {
    fn publish(&self, message: Publish) -> BoxFuture<'_, StoreResult<PubAck>> {
        let result = self.lock().publish(message);
        async move { result }.boxed()
    }

    fn publish_atomic(
        &self,
        _batch_id: String,
        messages: Vec<Publish>,
    ) -> BoxFuture<'_, StoreResult<()>> {
        let result = self.lock().publish_atomic(messages);
        async move { result }.boxed()
    }

    fn last<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<StoredMessage>>> {
        if self.lock().silent {
            return futures::future::pending().boxed();
        }
        let result = (|| {
            let mut inner = self.lock();
            inner.check_connected()?;
            let stream = inner.stream(stream)?;
            let found = stream
                .messages
                .values()
                .rev()
                .find(|m| m.subject == subject);
            Ok(found.cloned())
        })();
        async move { result }.boxed()
    }

    fn next<'a>(
        &'a self,
        stream: &'a str,
        subject: &'a str,
        from: u64,
    ) -> BoxFuture<'a, StoreResult<Option<StoredMessage>>> {
        let result = (|| {
            let mut inner = self.lock();
            inner.check_connected()?;
            let stream = inner.stream(stream)?;
            let found = stream
                .messages
                .range(from..)
                .map(|(_, m)| m)
                .find(|m| subject::matches(subject, &m.subject));
            Ok(found.cloned())
        })();
        async move { result }.boxed()
    }

    fn delete<'a>(&'a self, stream: &'a str, sequence: u64) -> BoxFuture<'a, StoreResult<()>> {
        let result = (|| {
            let mut inner = self.lock();
            inner.count_write()?;
            inner.stream(stream)?.messages.remove(&sequence);
            Ok(())
        })();
        async move { result }.boxed()
    }

    fn keys<'a>(&'a self, bucket: &'a str) -> BoxFuture<'a, StoreResult<Vec<String>>> {
        let result = (|| {
            let mut inner = self.lock();
            inner.check_connected()?;
            let prefix = format!("$KV.{bucket}.");
            let stream = inner.stream(&kv::stream(bucket))?;
            let mut last: BTreeMap<&str, &StoredMessage> = BTreeMap::new();
            for message in stream.messages.values() {
                last.insert(&message.subject, message);
            }
            let live = last.into_iter().filter(|(_, m)| {
                !matches!(m.header(kv::OPERATION_HEADER), Some("DEL") | Some("PURGE"))
            });
            Ok(live
                .filter_map(|(s, _)| s.strip_prefix(&prefix).map(String::from))
                .collect())
        })();
        async move { result }.boxed()
    }

    fn stream_capturing<'a>(
        &'a self,
        pattern: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<StreamShape>>> {
        let inner = self.lock();
        let found = (inner.streams.iter())
            .find(|s| s.subjects.iter().any(|c| subject::covers(c, pattern)))
            .map(|s| StreamShape {
                name: s.name.clone(),
                subjects: s.subjects.clone(),
                deny_delete: false,
                atomic_commits: true,
            });
        async move { Ok(found) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn duplicates_are_recognised_before_expectations() {
        // What nats-server 2.9.10 does, and what a redo of a commit relies on.
        let store = MemoryStore::new();
        store.add_stream("S", &["s.>"]);
        let first = Publish::new("s.a", "1").msg_id("m1").expect_last(0);
        let ack = store.publish(first.clone()).await.unwrap();
        store
            .publish(
                Publish::new("s.a", "2")
                    .msg_id("m2")
                    .expect_last(ack.sequence),
            )
            .await
            .unwrap();
        let again = store.publish(first).await.unwrap();
        assert_eq!(
            again,
            PubAck {
                sequence: ack.sequence,
                duplicate: true
            }
        );
    }

    #[tokio::test]
    async fn a_cut_store_fails_everything() {
        let store = MemoryStore::new();
        store.add_stream("S", &["s.>"]);
        store.cut_after(1);
        store.publish(Publish::new("s.a", "1")).await.unwrap();
        assert!(store.publish(Publish::new("s.a", "2")).await.is_err());
        assert!(store.last("S", "s.a").await.is_err());
        store.reconnect();
        let last = store.last("S", "s.a").await.unwrap().unwrap();
        assert_eq!(&last.payload[..], b"1");
        assert_eq!(store.writes(), 1);
    }
}
