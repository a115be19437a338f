//! The commit: a successful invocation's state changes and emitted events,
//! applied all or nothing, exactly once, without multi-message transactions
//! (NATS 2.9 has none).
//!
//! 1. **Plan.** The effects become a [`CommitPlan`]: key-value writes, each
//!    conditional on the revision the key had when the invocation first
//!    touched it, then event-store appends, each conditional on the
//!    subject's last sequence, then the emitted events, all encoded once.
//! 2. **Record the plan.** The plan is written into the event's idempotency
//!    record (`claimed → committing`, a compare-and-set on the lease). From
//!    here on the commit is never forgotten: whoever holds the event next
//!    finishes or undoes this same plan instead of running the handler.
//! 3. **Apply the writes** in plan order. Each is a publish with
//!    `Nats-Expected-Last-Subject-Sequence`, a `Nats-Msg-Id` of
//!    `<commit>-<index>`, an `Eventhost-Commit` header and
//!    `Eventhost-Pending` (where the record is). Readers inside eventhost
//!    treat a pending write as not there until the record leaves
//!    `committing` (see [`crate::ledger::record::is_settled`]), so no other
//!    commit builds on it meanwhile. Re-applying after a crash is therefore
//!    harmless on every server: a refused repeat (current servers check the
//!    expectation before the id; 2.9 acks the id as a duplicate first) is
//!    recognised as ours by its id in the message the subject ends with.
//!    With a single write, that write *is* the decision.
//! 4. **A lost race** (a key or subject changed since it was read) moves the
//!    record to `aborting`, undoes the writes already applied (a key gets its
//!    prior value back, an appended event is deleted), and hands the event
//!    back to be run again with fresh state. Nothing of it remains.
//! 5. **Publish the outputs** (deduplicated by their ids), then mark the
//!    record `done`. The caller acks the input.
//!
//! A handler that changes no state skips steps 2–4: its outputs are
//! published and the record marked `done`, as before state existed.
//!
//! **A run without a claim** ([`Committer::commit_unclaimed`]) is for a
//! handler whose every effect can be discarded (emitted events only; see
//! [`crate::sandbox::Capability::NEEDS_CLAIM`]) on a server new enough for
//! it: its outputs are published (deduplicated by their ids), then the
//! event's record is *created* `done`, conditional on there being none.
//! That one write decides which run counts. Two copies of the event in
//! flight at the same moment may both run; the one whose record write is
//! refused is discarded (its outputs were deduplicated against the other's:
//! whichever stored an output first keeps it). A crash before the record
//! leaves none: the next copy claims the event, runs it again, and its
//! outputs are deduplicated.

use bytes::Bytes;

use super::processed::{Lease, ProcessedEvents};
use super::record::{COMMIT_HEADER, CommitPlan, PENDING_HEADER, PlannedWrite};
use super::{LedgerError, store_error};
use crate::failpoint;
use crate::failure::{Conflict, Failure, FailureKind};
use crate::store::{Publish, Store, StoreError, kv, publish_all};

/// Why a commit did not complete.
#[derive(Debug)]
pub enum CommitError {
    /// A write lost an optimistic-concurrency race. Nothing of the commit
    /// remains applied, and the lease is held again: run the handler anew.
    Conflict { lease: Lease, lost: Conflict },
    /// Nothing was recorded or applied, and the lease is still held: the
    /// attempt failed (`output`: a handler that changes no state could not
    /// publish; `limit_exceeded`: the plan does not fit in one record).
    Refused { lease: Lease, failure: Failure },
    /// JetStream failed part-way. The record keeps the plan (if it was
    /// written), so whoever next holds the event finishes or undoes it.
    Unavailable(LedgerError),
}

/// What became of a run made without a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnclaimedRun {
    /// Its outputs are stored and its run recorded (or, if the record could
    /// not be written, its outputs are stored and a later copy will be
    /// deduplicated against them).
    Counted,
    /// A copy of the event in flight at the same moment recorded its run
    /// first: this run is discarded, its outputs deduplicated.
    Discarded,
}

/// Where commits write: the state and the event's record.
pub struct Committer<'a> {
    pub store: &'a dyn Store,
    pub records: &'a ProcessedEvents,
    /// The largest record the server accepts.
    pub max_record: usize,
}

impl Committer<'_> {
    /// Applies `plan` for the event held by `lease`, then records it done
    /// for handler `version`.
    pub async fn commit(
        &self,
        lease: Lease,
        plan: CommitPlan,
        version: &str,
    ) -> Result<(), CommitError> {
        if plan.writes.is_empty() {
            // Nothing is recorded: the outputs are published as they are.
            let outputs = plan.outputs.into_iter().map(Publish::from);
            if let Err(err) = publish_all(self.store, outputs).await {
                let why = format!(
                    "the outputs were not stored: {:#}",
                    anyhow::Error::from(err)
                );
                let failure = Failure::new(FailureKind::Output, why);
                return Err(CommitError::Refused { lease, failure });
            }
            failpoint::hit("commit.published");
            return self.done(lease, version, false).await;
        }
        if let Some(records) = self.records.commit_records()
            && records.holds(&plan)
        {
            return self.commit_batch(records, lease, plan, version).await;
        }
        let size = serde_json::to_vec(&plan).map_or(usize::MAX, |v| v.len());
        if size > self.max_record {
            let why = format!(
                "the commit holds {size} bytes of state changes and events (base64-encoded), \
                 over the {} bytes one record may hold (the server's max_payload)",
                self.max_record
            );
            let failure = Failure::new(FailureKind::LimitExceeded, why);
            return Err(CommitError::Refused { lease, failure });
        }
        let lease = self
            .records
            .begin_commit(lease, &plan)
            .await
            .map_err(CommitError::Unavailable)?;
        failpoint::hit("commit.planned");
        self.finish(lease, &plan, version).await
    }

    /// Commits a run made without a claim: its outputs, then its record,
    /// created only if the event has none. `Err` is the attempt's failure:
    /// a plan with state writes (which needs a claim), or outputs the
    /// store did not take.
    pub async fn commit_unclaimed(
        &self,
        record_key: &str,
        plan: CommitPlan,
        version: &str,
    ) -> Result<UnclaimedRun, Failure> {
        if !plan.writes.is_empty() {
            let why = "state changes were made by a run without a claim; the handler's \
                       grants should have made it claim the event";
            return Err(Failure::new(FailureKind::Output, why));
        }
        let outputs = plan.outputs.into_iter().map(Publish::from);
        if let Err(err) = publish_all(self.store, outputs).await {
            let err = anyhow::Error::from(err);
            let why = format!("the outputs were not stored: {err:#}");
            return Err(Failure::new(FailureKind::Output, why));
        }
        failpoint::hit("unclaimed.published");
        let counted = match self.records.record_unclaimed_run(record_key, version).await {
            Ok(counted) => counted,
            Err(err) => {
                let err = anyhow::Error::from(err);
                tracing::warn!(error = format!("{err:#}"), "could not record the success");
                true
            }
        };
        failpoint::hit("unclaimed.recorded");
        Ok(match counted {
            true => UnclaimedRun::Counted,
            false => UnclaimedRun::Discarded,
        })
    }

    /// Applies a recorded plan (again): the writes, then the outputs.
    pub async fn finish(
        &self,
        lease: Lease,
        plan: &CommitPlan,
        version: &str,
    ) -> Result<(), CommitError> {
        match self.apply_writes(plan).await {
            Ok(()) => {}
            Err(Applied::Lost(lost)) => {
                let lease = self.abort(lease, plan).await?;
                return Err(CommitError::Conflict { lease, lost });
            }
            Err(Applied::Unavailable(err)) => return Err(CommitError::Unavailable(err)),
        }
        failpoint::hit("commit.applied");
        let outputs = plan.outputs.iter().cloned().map(Publish::from);
        (publish_all(self.store, outputs).await)
            .map_err(store_error("publishing the outputs"))
            .map_err(CommitError::Unavailable)?;
        failpoint::hit("commit.published");
        self.done(lease, version, plan.changed_state()).await
    }

    /// Undoes whatever of `plan` is applied, then holds the event again so
    /// that the handler can run anew.
    pub async fn abort(&self, lease: Lease, plan: &CommitPlan) -> Result<Lease, CommitError> {
        let lease = self
            .records
            .begin_abort(lease, plan)
            .await
            .map_err(CommitError::Unavailable)?;
        failpoint::hit("commit.aborting");
        self.undo_and_renew(lease, plan).await
    }

    /// Undoes an aborting plan and holds the event again.
    pub async fn undo_and_renew(
        &self,
        lease: Lease,
        plan: &CommitPlan,
    ) -> Result<Lease, CommitError> {
        self.undo(plan).await.map_err(CommitError::Unavailable)?;
        self.records
            .renew(lease)
            .await
            .map_err(CommitError::Unavailable)
    }

    async fn done(
        &self,
        lease: Lease,
        version: &str,
        changed_state: bool,
    ) -> Result<(), CommitError> {
        // Without state changes the effects are all in: a failure here only
        // means a later copy of the event runs again and its outputs are
        // deduplicated. With state changes, the input must not be acked: on
        // the record protocol its writes stay pending (unreadable to other
        // commits) until a later copy of the event finds `committing` and
        // finishes the plan; after a batch, its record would stay claimed,
        // and a copy arriving past the outputs' duplicate window would
        // publish them again when it resumes.
        if let Err(err) = self.records.done(lease, version).await {
            if changed_state {
                return Err(CommitError::Unavailable(err));
            }
            let err = anyhow::Error::from(err);
            tracing::warn!(error = format!("{err:#}"), "could not record the success");
        }
        failpoint::hit("commit.done");
        Ok(())
    }

    async fn apply_writes(&self, plan: &CommitPlan) -> Result<(), Applied> {
        // The sequence of the last event this plan stored per subject: the
        // next append to that subject expects it.
        let mut chain: Vec<(String, u64)> = Vec::new();
        for (index, write) in plan.writes.iter().enumerate() {
            let (publish, expected) = self.publish_of(plan, index, write, &chain);
            let sequence = match self.store.publish(publish).await {
                Ok(ack) => ack.sequence,
                Err(StoreError::WrongLastSequence) => {
                    // Applied before, beyond the duplicate window? Else lost.
                    let id = write_id(plan, index);
                    match self.find_applied(write, &id, expected).await? {
                        Some(sequence) => sequence,
                        None => return Err(Applied::Lost(lost_race(write))),
                    }
                }
                Err(err) => return Err(err.into()),
            };
            if let PlannedWrite::Event { message, .. } = write {
                set_chain(&mut chain, &message.subject, sequence);
            }
            failpoint::hit("commit.wrote");
        }
        Ok(())
    }

    /// The publish that applies write `index`, and the sequence it expects.
    fn publish_of(
        &self,
        plan: &CommitPlan,
        index: usize,
        write: &PlannedWrite,
        chain: &[(String, u64)],
    ) -> (Publish, u64) {
        let mut publish = write.publish();
        let expected = match write {
            PlannedWrite::Key { expected, .. } => *expected,
            PlannedWrite::Event {
                expected, message, ..
            } => {
                let previous = chain.iter().find(|(s, _)| *s == message.subject);
                expected.or(previous.map(|(_, seq)| *seq)).unwrap_or(0)
            }
        };
        publish.msg_id = Some(write_id(plan, index));
        publish.expected_last_subject_sequence = Some(expected);
        publish.headers.insert(COMMIT_HEADER, plan.id.as_str());
        if plan.marks_pending() {
            let record = self.records.bucket();
            let pending = format!("{record}/{}", plan_record_key(plan));
            publish.headers.insert(PENDING_HEADER, pending.as_str());
        }
        (publish, expected)
    }

    /// The sequence at which write `index` of this plan is stored, if it is.
    async fn find_applied(
        &self,
        write: &PlannedWrite,
        id: &str,
        expected: u64,
    ) -> Result<Option<u64>, Applied> {
        let ours = |headers: &async_nats::HeaderMap| {
            headers.get("Nats-Msg-Id").map(|v| v.as_str()) == Some(id)
        };
        match write {
            PlannedWrite::Key { bucket, key, .. } => {
                let entry = kv::entry(self.store, bucket, key).await?;
                Ok(ours(&entry.headers).then_some(entry.revision))
            }
            PlannedWrite::Event {
                stream, message, ..
            } => {
                let next = self.store.next(stream, &message.subject, expected + 1);
                let found = next.await?;
                Ok(found.filter(|m| ours(&m.headers)).map(|m| m.sequence))
            }
        }
    }

    /// Takes back every write of `plan` that is stored, newest first. A key
    /// someone else has written since keeps their value.
    async fn undo(&self, plan: &CommitPlan) -> Result<(), LedgerError> {
        let undoing = || store_error("undoing a write of an aborted commit");
        for (index, write) in plan.writes.iter().enumerate().rev() {
            let id = write_id(plan, index);
            match write {
                PlannedWrite::Key {
                    bucket, key, prior, ..
                } => {
                    let entry = (kv::entry(self.store, bucket, key).await).map_err(undoing())?;
                    if entry.header("Nats-Msg-Id") != Some(id.as_str()) {
                        continue;
                    }
                    let restore = restore_prior(bucket, key, prior.value.clone(), &prior.headers)
                        .msg_id(format!("{id}-undo"))
                        .expect_last(entry.revision);
                    match self.store.publish(restore).await {
                        Ok(_) | Err(StoreError::WrongLastSequence) => {}
                        Err(err) => return Err(undoing()(err)),
                    }
                }
                PlannedWrite::Event {
                    stream, message, ..
                } => {
                    // The plan's events on a subject follow its expectation;
                    // look for this one among the messages after it.
                    let mut from = first_expected(plan, &message.subject) + 1;
                    let next = |from| self.store.next(stream, &message.subject, from);
                    while let Some(found) = next(from).await.map_err(undoing())? {
                        if found.header("Nats-Msg-Id") == Some(id.as_str()) {
                            let deleted = self.store.delete(stream, found.sequence).await;
                            deleted.map_err(undoing())?;
                            break;
                        }
                        from = found.sequence + 1;
                    }
                }
            }
            failpoint::hit("commit.undid");
        }
        Ok(())
    }
}

/// Why applying the writes stopped.
enum Applied {
    Lost(Conflict),
    Unavailable(LedgerError),
}

impl From<StoreError> for Applied {
    fn from(err: StoreError) -> Self {
        Applied::Unavailable(store_error("applying the writes of a commit")(err))
    }
}

fn lost_race(write: &PlannedWrite) -> Conflict {
    match write {
        PlannedWrite::Key { bucket, key, .. } => Conflict {
            store: bucket.clone(),
            what: format!("key {key:?} of bucket {bucket:?} changed since it was read"),
        },
        PlannedWrite::Event {
            stream, message, ..
        } => Conflict {
            store: stream.clone(),
            what: format!("{:?} was appended to since it was read", message.subject),
        },
    }
}

/// The prior value of a key, as a write: its headers without the transport
/// ones (a restored `Nats-Msg-Id` would be deduplicated away).
fn restore_prior(
    bucket: &str,
    key: &str,
    value: Option<Bytes>,
    headers: &[(String, String)],
) -> Publish {
    let mut publish = kv::write(bucket, key, value);
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        if !lower.starts_with("nats-") && lower != kv::OPERATION_HEADER.to_ascii_lowercase() {
            publish.headers.append(name.as_str(), value.as_str());
        }
    }
    publish
}

/// What the first write of `plan` to `subject` expects.
fn first_expected(plan: &CommitPlan, subject: &str) -> u64 {
    let first = plan.writes.iter().find_map(|w| match w {
        PlannedWrite::Event {
            expected, message, ..
        } if message.subject == subject => *expected,
        _ => None,
    });
    first.unwrap_or(0)
}

fn set_chain(chain: &mut Vec<(String, u64)>, subject: &str, sequence: u64) {
    match chain.iter_mut().find(|(s, _)| s == subject) {
        Some((_, last)) => *last = sequence,
        None => chain.push((subject.to_string(), sequence)),
    }
}

/// The `Nats-Msg-Id` of write `index` of `plan`.
fn write_id(plan: &CommitPlan, index: usize) -> String {
    format!("{}-{index}", plan.id)
}

/// The record key is the commit id's prefix: see [`new_commit_id`].
fn plan_record_key(plan: &CommitPlan) -> &str {
    plan.id.split_once('.').map_or(&plan.id, |(key, _)| key)
}

/// A fresh commit id for the event whose record key is `record_key`:
/// `<record key>.<random>`, so a pending mark can name the record.
pub fn new_commit_id(record_key: &str) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{record_key}.{}", &random[..12])
}

#[cfg(test)]
mod tests;
