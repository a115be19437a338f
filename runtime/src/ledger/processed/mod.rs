//! Idempotency: each event gets one outcome, and its effects are applied
//! once.
//!
//! An event's identity is its CloudEvents `source` + `id` (the spec's own
//! rule), so a producer publishing the same event twice, a redelivery, and a
//! replay all map to one record. Records live in a JetStream KV bucket per
//! consumer (`processed-<consumer>`): they survive restarts, every replica
//! shares them, and the bucket's `max_age` is the retention window.
//!
//! Before invoking, a runtime *claims* the record with a compare-and-set
//! write. Only the claim holder runs the handler, so two copies of one event
//! in flight at once, in one process or in two, cannot both run. A claim is
//! a lease: it expires just before the consumer's ack wait does, which is
//! when JetStream redelivers the message of a runtime that died holding it,
//! so the successor can take over at once. Every later step (the commit
//! plan, done, failed, dead-lettered) is a compare-and-set on the revision
//! the holder last wrote: a holder whose lease was taken over cannot write.
//! See [`crate::ledger::record`] for the states.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader, Event};
use sha2::{Digest, Sha256};

use super::{LedgerError, Result, store_error};
use crate::failure::{DeadLetterReason, FailureKind};
pub use crate::ledger::record::{CommitPlan, CommitRecords, FailureHistory, Record};
use crate::store::{Store, StoreError, kv};

/// A consumer's record of processed events.
pub struct ProcessedEvents {
    store: Arc<dyn Store>,
    bucket: String,
    /// How long a claim holds before another runtime may take it over.
    lease: Duration,
    /// This process, as named in its claims.
    owner: String,
    /// Where commits made in one atomic batch are recorded, beside the
    /// state (see [`crate::ledger::batch`]); `None`: every commit takes the
    /// record protocol.
    commits: Option<CommitRecords>,
}

/// The result of trying to claim an event.
#[derive(Debug)]
pub enum Claim {
    /// This process may run the handler.
    Acquired(Lease),
    /// A commit of this event was cut off: finish it (a `committing` record)
    /// or undo it (`aborting`), without running the handler.
    Resume(Lease, Interrupted),
    /// A run already succeeded: the event must not be handled again.
    AlreadyHandled,
    /// The event was dead-lettered; it stays so until replayed.
    AlreadyDeadLettered,
    /// Another run holds the claim; try again after this long.
    Busy(Duration),
}

/// A commit found half done.
#[derive(Debug)]
pub enum Interrupted {
    Committing(CommitPlan),
    Aborting(CommitPlan),
}

/// A held claim: the record's key and the revision this holder wrote.
#[derive(Debug)]
pub struct Lease {
    key: String,
    revision: u64,
    pub history: FailureHistory,
    /// Whether taking this claim counted a run in `history.attempts` (a
    /// resumed commit does not): what [`ProcessedEvents::release`] takes back.
    counted_run: bool,
}

impl Lease {
    /// The record's key in its bucket.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Where this event's record lives: `<bucket>/<key>`.
    pub fn record_ref(&self, records: &ProcessedEvents) -> String {
        format!("{}/{}", records.bucket, self.key)
    }
}

/// What a claim finds in an event's existing record.
enum Found {
    /// The event is settled, or another run holds it: the claim's answer.
    Answer(Claim),
    /// The claim takes the record over (its holder's lease ran out, or the
    /// last attempt failed), with the history to carry on and the commit a
    /// dead holder left half done, if any.
    TakeOver(FailureHistory, Option<Interrupted>),
}

fn take_over(decoded: Option<serde_json::Result<Record>>) -> Found {
    let (history, interrupted) = match decoded {
        Some(Ok(Record::Done { .. })) => return Found::Answer(Claim::AlreadyHandled),
        Some(Ok(Record::DeadLettered { .. })) => return Found::Answer(Claim::AlreadyDeadLettered),
        Some(Ok(Record::Claimed { until, history, .. })) => match lease_left(until) {
            Some(left) => return Found::Answer(Claim::Busy(left)),
            None => (history, None), // Its holder died: take over.
        },
        Some(Ok(Record::Committing {
            until,
            history,
            plan,
            ..
        })) => match lease_left(until) {
            Some(left) => return Found::Answer(Claim::Busy(left)),
            None => (history, Some(Interrupted::Committing(plan))),
        },
        Some(Ok(Record::Aborting {
            until,
            history,
            plan,
            ..
        })) => match lease_left(until) {
            Some(left) => return Found::Answer(Claim::Busy(left)),
            None => (history, Some(Interrupted::Aborting(plan))),
        },
        Some(Ok(Record::Failed { history })) => (history, None),
        // Deleted (a replay), or not ours: start afresh rather than wedge.
        None | Some(Err(_)) => (FailureHistory::default(), None),
    };
    Found::TakeOver(history, interrupted)
}

/// Compare-and-set races are retried this often before giving up.
const CLAIM_TRIES: usize = 5;

/// The name of consumer `consumer`'s record bucket.
pub fn bucket_name(consumer: &str) -> String {
    format!("processed-{consumer}")
}

/// Declares (creates or reconfigures) the consumer's bucket, kept for the
/// idempotency `window`.
pub async fn declare(
    js: &jetstream::Context,
    consumer: &str,
    window: Duration,
    replicas: usize,
) -> anyhow::Result<()> {
    let bucket = bucket_name(consumer);
    crate::jetstream::declare::declare_stream(js, bucket_config(consumer, window, replicas))
        .await
        .with_context(|| format!("declaring the idempotency bucket {bucket}"))?;
    Ok(())
}

/// The record bucket's stream: on disk, each record kept for the window.
fn bucket_config(consumer: &str, window: Duration, replicas: usize) -> stream::Config {
    let bucket = bucket_name(consumer);
    let description = format!("eventhost: events consumer {consumer} has processed");
    stream::Config {
        max_age: window,
        storage: stream::StorageType::File,
        ..crate::jetstream::declare::bucket_stream(&bucket, description, replicas)
    }
}

impl ProcessedEvents {
    /// The records of `consumer`, in a bucket that must exist ([`declare`]).
    pub fn new(store: Arc<dyn Store>, consumer: &str, lease: Duration) -> Self {
        ProcessedEvents {
            store,
            bucket: bucket_name(consumer),
            lease,
            owner: format!("{}/{}", hostname(), std::process::id()),
            commits: None,
        }
    }

    /// Commits whose writes all land in `records`' stream are made in one
    /// atomic batch there, with the event's commit record.
    pub fn with_commit_records(mut self, records: Option<CommitRecords>) -> Self {
        self.commits = records;
        self
    }

    pub fn commit_records(&self) -> Option<&CommitRecords> {
        self.commits.as_ref()
    }

    /// The record key for an event: a hash, because `source` and `id` may
    /// hold characters KV keys cannot.
    pub fn key(event: &Event) -> String {
        let mut hash = Sha256::new();
        hash.update(event.source().as_bytes());
        hash.update([0]);
        hash.update(event.id().as_bytes());
        let digest = hash.finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub async fn claim(&self, event: &Event) -> Result<Claim> {
        let key = Self::key(event);
        for _ in 0..CLAIM_TRIES {
            let history = FailureHistory::first_attempt();
            let fresh = self.encode(&self.claimed(history.clone()))?;
            match self.write(&key, fresh, 0).await {
                Ok(revision) => {
                    return Ok(Claim::Acquired(Lease {
                        key,
                        revision,
                        history,
                        counted_run: true,
                    }));
                }
                Err(StoreError::WrongLastSequence) => {}
                Err(err) => return Err(store_error("claiming the event in its record")(err)),
            }
            let entry = (kv::entry(&*self.store, &self.bucket, &key).await)
                .map_err(store_error("reading the event's record"))?;
            let decoded = entry.value.as_ref().map(|v| serde_json::from_slice(v));
            let (history, interrupted) = match take_over(decoded) {
                Found::TakeOver(history, interrupted) => (history, interrupted),
                Found::Answer(claim) => return Ok(claim),
            };
            // A holder that committed in one batch and died before `done`
            // left its commit record beside the state: finish that commit.
            let interrupted = match (interrupted, &self.commits) {
                (None, Some(commits)) => (commits.find(&*self.store, &key).await)
                    .map_err(store_error("reading the event's commit record"))?
                    .map(Interrupted::Committing),
                (interrupted, _) => interrupted,
            };
            // A run starts (or started, and ended without an outcome): an
            // attempt. Resuming a commit is not one.
            let mut history = history;
            if interrupted.is_none() {
                history.attempts += 1;
            }
            let record = match &interrupted {
                None => self.claimed(history.clone()),
                Some(Interrupted::Committing(plan)) => self.committing(history.clone(), plan),
                Some(Interrupted::Aborting(plan)) => self.aborting(history.clone(), plan),
            };
            match self
                .write(&key, self.encode(&record)?, entry.revision)
                .await
            {
                Ok(revision) => {
                    let lease = Lease {
                        key,
                        revision,
                        history,
                        counted_run: interrupted.is_none(),
                    };
                    return Ok(match interrupted {
                        None => Claim::Acquired(lease),
                        Some(interrupted) => Claim::Resume(lease, interrupted),
                    });
                }
                Err(StoreError::WrongLastSequence) => continue,
                Err(err) => return Err(store_error("taking over an expired claim")(err)),
            }
        }
        Err(LedgerError::Contended(CLAIM_TRIES))
    }

    /// Whether the record of key `key` exists (a deleted one, after a
    /// dead-letter replay, does not). A run without a claim starts only
    /// where there is none: a record means the event was handled, dead-lettered, failed
    /// before or is held, and the claim decides what comes next.
    pub async fn has_record(&self, key: &str) -> Result<bool> {
        let entry = kv::entry(&*self.store, &self.bucket, key)
            .await
            .map_err(store_error("reading the event's record"))?;
        Ok(entry.value.is_some())
    }

    /// Records a run made without a claim as done, if the event has no
    /// record yet: `false` if it has one, because a copy of the event in
    /// flight at the same moment recorded its run first.
    pub async fn record_unclaimed_run(&self, key: &str, version: &str) -> Result<bool> {
        let record = Record::Done {
            version: version.to_string(),
            at: Utc::now(),
        };
        let value = self.encode(&record)?;
        let mut expected = 0;
        for _ in 0..CLAIM_TRIES {
            match self.write(key, value.clone(), expected).await {
                Ok(_) => return Ok(true),
                Err(StoreError::WrongLastSequence) => {}
                Err(err) => {
                    return Err(store_error("recording the run in the event's record")(err));
                }
            }
            let entry = (kv::entry(&*self.store, &self.bucket, key).await)
                .map_err(store_error("reading the event's record"))?;
            if entry.value.is_some() {
                return Ok(false);
            }
            // Deleted (a replay): the deletion is the subject's last message.
            expected = entry.revision;
        }
        Err(LedgerError::Contended(CLAIM_TRIES))
    }

    /// Writes the commit plan: from here on the commit is finished or undone
    /// by whoever holds the event, never forgotten.
    pub async fn begin_commit(&self, lease: Lease, plan: &CommitPlan) -> Result<Lease> {
        let record = self.committing(lease.history.clone(), plan);
        self.advance(lease, &record).await
    }

    /// The commit lost a race after some of its writes were applied: they
    /// must be undone before anything else happens to the event.
    pub async fn begin_abort(&self, lease: Lease, plan: &CommitPlan) -> Result<Lease> {
        let record = self.aborting(lease.history.clone(), plan);
        self.advance(lease, &record).await
    }

    /// Holds the event again, with a fresh lease, to run the handler anew
    /// (after an undone commit, or to wait out a conflict).
    pub async fn renew(&self, lease: Lease) -> Result<Lease> {
        let record = self.claimed(lease.history.clone());
        self.advance(lease, &record).await
    }

    /// The handler succeeded and everything it produced is stored.
    pub async fn done(&self, lease: Lease, version: &str) -> Result<()> {
        let record = Record::Done {
            version: version.to_string(),
            at: Utc::now(),
        };
        self.advance(lease, &record).await.map(drop)
    }

    /// The attempt failed with `kind`/`error` and the event will be retried.
    pub async fn failed(&self, lease: Lease, kind: FailureKind, error: &str) -> Result<()> {
        let mut history = lease.history.clone();
        history.record_failure(kind, error);
        self.hand_back(lease, history).await
    }

    /// Records the decision to dead-letter the event, before its letter is
    /// stored, keeping the claim: a holder that dies after storing the
    /// letter leaves this decision to its successor, which stores the same
    /// letter and never runs the handler again. Returns the lease with the
    /// decision in its history (already there if a predecessor made it).
    pub async fn give_up(&self, lease: Lease) -> Result<Lease> {
        if lease.history.gave_up.is_some() {
            return Ok(lease);
        }
        let mut history = lease.history.clone();
        history.gave_up = Some(lease.revision);
        let record = self.claimed(history.clone());
        let lease = self.advance(lease, &record).await?;
        Ok(Lease { history, ..lease })
    }

    /// Gives the claim up without counting an attempt (the host, not the
    /// handler, could not finish): the run this claim started is taken
    /// back out of the count, so host trouble never uses up retries.
    pub async fn release(&self, lease: Lease) -> Result<()> {
        let mut history = lease.history.clone();
        if lease.counted_run {
            history.attempts = history.attempts.saturating_sub(1);
        }
        self.hand_back(lease, history).await
    }

    /// Gives the claim up with the history as it is: the run stays counted
    /// and a decision to give up stays on record, for the next delivery to
    /// carry out at once (a dead letter that could not be stored).
    pub async fn set_aside(&self, lease: Lease) -> Result<()> {
        let history = lease.history.clone();
        self.hand_back(lease, history).await
    }

    /// Ends this holder's claim with `history` on record (`failed`): the
    /// next delivery takes the event over at once.
    async fn hand_back(&self, lease: Lease, history: FailureHistory) -> Result<()> {
        self.advance(lease, &Record::Failed { history })
            .await
            .map(drop)
    }

    /// The event was dead-lettered: later copies are skipped until a replay
    /// deletes this record.
    pub async fn dead_lettered(
        &self,
        lease: Lease,
        version: &str,
        reason: DeadLetterReason,
    ) -> Result<()> {
        let record = Record::DeadLettered {
            version: version.to_string(),
            at: Utc::now(),
            reason,
        };
        self.advance(lease, &record).await.map(drop)
    }

    async fn advance(&self, lease: Lease, record: &Record) -> Result<Lease> {
        let value = self.encode(record)?;
        let revision = match self.write(&lease.key, value, lease.revision).await {
            Ok(revision) => revision,
            Err(StoreError::WrongLastSequence) => return Err(LedgerError::LeaseLost),
            Err(err) => return Err(store_error("recording a step in the event's record")(err)),
        };
        Ok(Lease { revision, ..lease })
    }

    async fn write(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, StoreError> {
        let publish = kv::write(&self.bucket, key, Some(value)).expect_last(expected);
        Ok(self.store.publish(publish).await?.sequence)
    }

    fn encode(&self, record: &Record) -> Result<Bytes> {
        let bytes = serde_json::to_vec(record).map_err(LedgerError::Encode)?;
        Ok(bytes.into())
    }

    fn until(&self) -> DateTime<Utc> {
        Utc::now() + self.lease
    }

    fn claimed(&self, history: FailureHistory) -> Record {
        let owner = self.owner.clone();
        Record::Claimed {
            owner,
            until: self.until(),
            history,
        }
    }

    fn committing(&self, history: FailureHistory, plan: &CommitPlan) -> Record {
        let (owner, plan) = (self.owner.clone(), plan.clone());
        Record::Committing {
            owner,
            until: self.until(),
            history,
            plan,
        }
    }

    fn aborting(&self, history: FailureHistory, plan: &CommitPlan) -> Record {
        let (owner, plan) = (self.owner.clone(), plan.clone());
        Record::Aborting {
            owner,
            until: self.until(),
            history,
            plan,
        }
    }
}

/// How long a lease that ends at `until` still holds, if it does.
fn lease_left(until: DateTime<Utc>) -> Option<Duration> {
    let left = (until - Utc::now()).to_std().unwrap_or_default();
    (!left.is_zero()).then_some(left)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[cfg(test)]
mod tests;
