//! The commit in one atomic batch: an invocation's state writes and the
//! event's commit record, stored together or not at all (ADR-50).
//!
//! Used where every write of a handler lands in one replicated stream (its
//! one writable bucket, or its one event-store stream) on servers that
//! commit atomic batches safely (nats-server 2.14.4+). The batch holds:
//!
//! - each state write, conditional on the revision (or the subject's
//!   sequence) the invocation read; later appends to a subject the batch
//!   already writes follow the first, unchecked, as the server requires;
//! - the **commit record**, on subject `$EHC.<stream>.<consumer>.<record
//!   key>` of the same stream, conditional on not existing (expected
//!   sequence 0), expiring after the idempotency window (`Nats-TTL`), and
//!   carrying the emitted events still to publish.
//!
//! That one request decides the commit. Then the outputs are published
//! (deduplicated by their ids) and the event's record in its bucket is
//! marked `done`. A crash before the batch leaves nothing; a crash after it
//! leaves the commit record, which whoever takes the event over finds
//! before running the handler, and finishes: publishes the recorded
//! outputs and marks the record `done` ([`super::Interrupted::Committing`]
//! with no writes left). No plan record, no pending marks, no undo: a lost
//! race refuses the whole batch, and the handler runs again with fresh
//! state.
//!
//! Why only replicated streams: a one-server file stream stages each batch
//! in a file store of its own, about 2 ms of server CPU per batch (see
//! BENCHMARKS.md, "One decisive write per event?"); there the record
//! protocol of [`super::commit`] is many times cheaper.

use super::commit::{CommitError, Committer};
use super::processed::Lease;
use super::record::{COMMIT_HEADER, CommitPlan, CommitRecords, PlannedWrite};
use super::{LedgerError, store_error};
use crate::failpoint;
use crate::failure::{Conflict, Failure, FailureKind};
use crate::store::{Publish, StoreError};

impl Committer<'_> {
    /// Commits `plan` in one atomic batch beside its state (`records`),
    /// then publishes its outputs and marks the event's record done.
    pub(super) async fn commit_batch(
        &self,
        records: &CommitRecords,
        lease: Lease,
        plan: CommitPlan,
        version: &str,
    ) -> Result<(), CommitError> {
        let batch = match batch(records, lease.key(), &plan) {
            Ok(batch) => batch,
            Err(failure) => return Err(CommitError::Refused { lease, failure }),
        };
        if let Some(size) = batch.iter().map(|m| m.payload.len()).max()
            && size > self.max_record
        {
            let why = format!(
                "the commit record holds {size} bytes of emitted events (base64-encoded), \
                 over the {} bytes one message may hold (the server's max_payload)",
                self.max_record
            );
            let failure = Failure::new(FailureKind::LimitExceeded, why);
            return Err(CommitError::Refused { lease, failure });
        }
        failpoint::hit("batch.before");
        match self.store.publish_atomic(plan.id.clone(), batch).await {
            Ok(()) => {}
            Err(StoreError::WrongLastSequence) => {
                return Err(self.refused(records, lease, &plan).await);
            }
            Err(err) => {
                let err = store_error("committing the atomic batch")(err);
                return Err(CommitError::Unavailable(err));
            }
        }
        failpoint::hit("batch.committed");
        self.finish(lease, &plan.without_writes(), version).await
    }

    /// The batch was refused: a race lost (nothing of it is stored; run
    /// again), or the commit record exists (another holder committed this
    /// event: this one's lease is gone).
    async fn refused(
        &self,
        records: &CommitRecords,
        lease: Lease,
        plan: &CommitPlan,
    ) -> CommitError {
        // The store as the handler's metrics name it: the bucket, or the
        // event-store stream.
        let (store, what) = match &plan.writes[..] {
            [PlannedWrite::Key { bucket, .. }, ..] => (bucket, "a key of bucket"),
            _ => (&records.stream, "a subject of stream"),
        };
        match records.find(self.store, lease.key()).await {
            Ok(Some(_)) => CommitError::Unavailable(LedgerError::LeaseLost),
            Ok(None) => CommitError::Conflict {
                lease,
                lost: Conflict {
                    store: store.clone(),
                    what: format!("{what} {store:?} changed since it was read"),
                },
            },
            Err(err) => CommitError::Unavailable(store_error("reading the commit record")(err)),
        }
    }
}

/// The batch committing `plan` for the event of `record_key`.
fn batch(
    records: &CommitRecords,
    record_key: &str,
    plan: &CommitPlan,
) -> Result<Vec<Publish>, Failure> {
    let mut subjects: Vec<String> = Vec::new();
    let mut messages = Vec::with_capacity(plan.writes.len() + 1);
    for write in &plan.writes {
        let mut publish = write.publish();
        let expected = match write {
            PlannedWrite::Key { expected, .. } => *expected,
            // Within one batch no id is needed to recognise a repeat, and
            // one stored by an earlier commit of the event (past its
            // window) would refuse the batch as a duplicate every time.
            PlannedWrite::Event { expected, .. } => {
                publish.msg_id = None;
                expected.unwrap_or(0)
            }
        };
        // The server checks each expectation against the stream before
        // the batch, and refuses one on a subject the batch already
        // wrote: only the first write to a subject carries it.
        if !subjects.contains(&publish.subject) {
            publish.expected_last_subject_sequence = Some(expected);
            subjects.push(publish.subject.clone());
        }
        publish.headers.insert(COMMIT_HEADER, plan.id.as_str());
        messages.push(publish);
    }
    let payload = serde_json::to_vec(&plan.without_writes())
        .map_err(|e| Failure::new(FailureKind::Output, format!("encoding the record: {e}")))?;
    let ttl = records.window.as_secs().max(1).to_string();
    let record = Publish::new(records.subject(record_key), payload)
        .header("Nats-TTL", &ttl)
        .header(COMMIT_HEADER, &plan.id)
        .expect_last(0);
    messages.push(record);
    Ok(messages)
}

impl CommitPlan {
    /// What is left of a plan once its writes are in: the outputs.
    pub fn without_writes(&self) -> CommitPlan {
        CommitPlan {
            id: self.id.clone(),
            writes: Vec::new(),
            outputs: self.outputs.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use cloudevents::{EventBuilder, EventBuilderV10};

    use super::*;
    use crate::ledger::processed::{Claim, Interrupted, ProcessedEvents, bucket_name};
    use crate::ledger::record::{PENDING_HEADER, PlannedMessage, PriorValue, Record};
    use crate::store::{MemoryStore, Store, kv};

    const LEASE: Duration = Duration::from_millis(20);

    fn world() -> (Arc<MemoryStore>, ProcessedEvents) {
        let store = Arc::new(MemoryStore::new());
        store.add_bucket("state");
        store.add_bucket(&bucket_name("c"));
        store.add_stream("OUT", &["out.>"]);
        let records = CommitRecords::new("KV_state", "c", Duration::from_secs(60));
        let processed =
            ProcessedEvents::new(store.clone(), "c", LEASE).with_commit_records(Some(records));
        (store, processed)
    }

    fn event() -> cloudevents::Event {
        let event = EventBuilderV10::new().id("e1").source("/t").ty("t");
        event.build().unwrap()
    }

    async fn lease(processed: &ProcessedEvents) -> Lease {
        match processed.claim(&event()).await.unwrap() {
            Claim::Acquired(lease) => lease,
            other => panic!("not acquired: {other:?}"),
        }
    }

    fn plan(lease: &Lease, key: &str, expected: u64) -> CommitPlan {
        let output = PlannedMessage {
            subject: "out.a".into(),
            headers: Default::default(),
            msg_id: Some("out-1".into()),
            payload: Bytes::from_static(b"o1"),
        };
        CommitPlan {
            id: super::super::commit::new_commit_id(lease.key()),
            writes: vec![PlannedWrite::Key {
                bucket: "state".into(),
                key: key.into(),
                value: Some(Bytes::from_static(b"2")),
                expected,
                prior: PriorValue::default(),
            }],
            outputs: vec![output],
        }
    }

    fn committer<'a>(store: &'a MemoryStore, processed: &'a ProcessedEvents) -> Committer<'a> {
        Committer {
            store,
            records: processed,
            max_record: 1 << 20,
        }
    }

    async fn record(store: &MemoryStore) -> Record {
        let key = ProcessedEvents::key(&event());
        let entry = kv::entry(store, &bucket_name("c"), &key).await.unwrap();
        serde_json::from_slice(&entry.value.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_commit_is_one_write_of_state_and_record_then_the_outputs_and_done() {
        let (store, processed) = world();
        let lease = lease(&processed).await;
        let key = lease.key().to_string();
        let plan = plan(&lease, "a", 0);
        let writes = store.writes();
        let committer = committer(&store, &processed);
        committer.commit(lease, plan, "v1").await.unwrap();
        // The batch, the output, `done`: no plan record, no second write.
        assert_eq!(store.writes() - writes, 3);
        let entry = kv::entry(&*store, "state", "a").await.unwrap();
        assert_eq!(entry.value.as_deref(), Some(&b"2"[..]));
        assert_eq!(
            entry.header(PENDING_HEADER),
            None,
            "nothing to mark pending"
        );
        let records = processed.commit_records().unwrap();
        let recorded = records.find(&*store, &key).await.unwrap().unwrap();
        assert!(recorded.writes.is_empty() && recorded.outputs.len() == 1);
        assert!(matches!(record(&store).await, Record::Done { .. }));
        assert_eq!(store.messages("OUT").len(), 1);
    }

    #[tokio::test]
    async fn a_lost_race_stores_nothing_of_the_batch_and_holds_the_event_again() {
        let (store, processed) = world();
        let lease = lease(&processed).await;
        let key = lease.key().to_string();
        let plan = plan(&lease, "a", 0);
        let other = kv::write("state", "a", Some(Bytes::from_static(b"9")));
        store.publish(other).await.unwrap();
        let result = committer(&store, &processed)
            .commit(lease, plan, "v1")
            .await;
        assert!(
            matches!(result, Err(CommitError::Conflict { .. })),
            "{result:?}"
        );
        let entry = kv::entry(&*store, "state", "a").await.unwrap();
        assert_eq!(entry.value.as_deref(), Some(&b"9"[..]));
        let records = processed.commit_records().unwrap();
        assert!(records.find(&*store, &key).await.unwrap().is_none());
        assert!(store.messages("OUT").is_empty());
    }

    #[tokio::test]
    async fn a_holder_dead_after_the_batch_leaves_its_successor_the_outputs_to_finish() {
        let (store, processed) = world();
        let lease = lease(&processed).await;
        let plan = plan(&lease, "a", 0);
        store.cut_after(1); // the batch lands; the runtime dies
        let result = committer(&store, &processed)
            .commit(lease, plan, "v1")
            .await;
        assert!(matches!(result, Err(CommitError::Unavailable(_))));
        store.reconnect();
        tokio::time::sleep(LEASE * 2).await;
        let Claim::Resume(lease, Interrupted::Committing(found)) =
            processed.claim(&event()).await.unwrap()
        else {
            panic!("the successor did not find the commit")
        };
        assert!(
            found.writes.is_empty(),
            "the writes are in: only outputs are left"
        );
        committer(&store, &processed)
            .finish(lease, &found, "v1")
            .await
            .unwrap();
        assert_eq!(store.messages("OUT").len(), 1);
        assert!(matches!(record(&store).await, Record::Done { .. }));
        let entry = kv::entry(&*store, "state", "a").await.unwrap();
        assert_eq!(entry.value.as_deref(), Some(&b"2"[..]));
    }
}
