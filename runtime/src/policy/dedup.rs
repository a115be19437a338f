//! Idempotency: a handler runs successfully at most once per event.
//!
//! An event's identity is its CloudEvents `source` + `id` (the spec's own
//! rule), so a producer publishing the same event twice, a redelivery, and a
//! replay all map to one key. The record lives in a JetStream KV bucket per
//! consumer (`processed-<consumer>`): it survives restarts, every replica
//! shares it, and the bucket's `max_age` is the retention window.
//!
//! Before invoking, a runtime *claims* the key with a compare-and-set write
//! (KV `create`, or `update` at the revision it read). Only the claim holder
//! runs the handler, so two copies of one event in flight at once, in one
//! process or in two, cannot both run. A claim is a lease: it expires just
//! before the consumer's ack wait does, which is when JetStream redelivers
//! the message of a runtime that died holding it, so the successor can take
//! over at once.
//! The record then moves to `done` (later copies are acked unhandled) or
//! `failed` (the failure count and first failure time, which feed the retry
//! policy and the dead letter across restarts).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader, Event};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A consumer's record of processed events.
pub struct ProcessedEvents {
    kv: kv::Store,
    /// How long a claim holds before another runtime may take it over.
    lease: Duration,
    /// This process, as named in its claims.
    owner: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Record {
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
    Done {
        version: String,
        at: DateTime<Utc>,
    },
}

/// What earlier attempts at an event left behind.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailureHistory {
    /// Failed attempts so far.
    pub failures: u32,
    pub first_failure: Option<DateTime<Utc>>,
    /// The last failure's kind and message, for a dead letter written by a
    /// later delivery than the one that failed.
    pub last_kind: Option<String>,
    pub last_error: Option<String>,
}

/// The result of trying to claim an event.
#[derive(Debug)]
pub enum Claim {
    /// This process may run the handler.
    Acquired(Lease),
    /// A run already succeeded: the event must not be handled again.
    AlreadyHandled,
    /// Another run holds the claim; try again after this long.
    Busy(Duration),
}

/// A held claim. Settle it with [`ProcessedEvents::done`],
/// [`ProcessedEvents::failed`] or [`ProcessedEvents::forget`].
#[derive(Debug)]
pub struct Lease {
    key: String,
    revision: u64,
    pub history: FailureHistory,
}

/// Compare-and-set races are retried this often before giving up.
const CLAIM_TRIES: usize = 5;

impl ProcessedEvents {
    /// Opens (creating or reconfiguring) the consumer's bucket.
    pub async fn open(
        js: &jetstream::Context,
        consumer: &str,
        window: Duration,
        lease: Duration,
    ) -> Result<Self> {
        let bucket = format!("processed-{consumer}");
        // The stream a KV bucket is made of, declared by hand: async-nats'
        // own bucket creation first queries account info in a shape NATS
        // 2.9 does not answer with.
        js.create_or_update_stream(stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(format!(
                "eventhost: events consumer {consumer} has processed"
            )),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            max_age: window,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .with_context(|| format!("declaring the idempotency bucket {bucket}"))?;
        let kv = js
            .get_key_value(&bucket)
            .await
            .with_context(|| format!("opening the idempotency bucket {bucket}"))?;
        Ok(ProcessedEvents {
            kv,
            lease,
            owner: format!("{}/{}", hostname(), std::process::id()),
        })
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

    pub async fn claim(&self, event: &Event) -> Result<Claim> {
        let key = Self::key(event);
        for _ in 0..CLAIM_TRIES {
            let fresh = self.claimed(FailureHistory::default())?;
            match self.kv.create(&key, fresh).await {
                Ok(revision) => {
                    return Ok(Claim::Acquired(Lease {
                        key,
                        revision,
                        history: FailureHistory::default(),
                    }));
                }
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(err) => {
                    return Err(err).context("claiming the event in the idempotency bucket");
                }
            }
            let Some(entry) = self
                .kv
                .entry(&key)
                .await
                .context("reading the idempotency record")?
            else {
                continue; // Expired between the two calls: create again.
            };
            let history = match serde_json::from_slice::<Record>(&entry.value) {
                Ok(Record::Done { .. }) => return Ok(Claim::AlreadyHandled),
                Ok(Record::Claimed { until, history, .. }) => {
                    let left = (until - Utc::now()).to_std().unwrap_or_default();
                    if !left.is_zero() {
                        return Ok(Claim::Busy(left));
                    }
                    history // Its holder died: take over.
                }
                Ok(Record::Failed { history, .. }) => history,
                // Not ours, or deleted: start afresh rather than wedge.
                Err(_) => FailureHistory::default(),
            };
            let value = self.claimed(history.clone())?;
            match self.kv.update(&key, value, entry.revision).await {
                Ok(revision) => {
                    return Ok(Claim::Acquired(Lease {
                        key,
                        revision,
                        history,
                    }));
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => return Err(err).context("taking over an expired claim"),
            }
        }
        bail!("the idempotency record kept changing under {CLAIM_TRIES} claim attempts")
    }

    /// The handler succeeded and its outputs are stored.
    pub async fn done(&self, lease: Lease, version: &str) -> Result<()> {
        let record = Record::Done {
            version: version.to_string(),
            at: Utc::now(),
        };
        self.settle(lease, &record).await
    }

    /// The attempt failed with `kind`/`error` and the event will be retried.
    pub async fn failed(&self, lease: Lease, kind: &str, error: &str) -> Result<()> {
        let history = FailureHistory {
            failures: lease.history.failures + 1,
            first_failure: lease.history.first_failure.or(Some(Utc::now())),
            last_kind: Some(kind.to_string()),
            last_error: Some(error.to_string()),
        };
        self.settle(lease, &Record::Failed { history }).await
    }

    /// Gives the claim up without counting an attempt (the host, not the
    /// handler, could not finish: the dead-letter stream was unreachable).
    pub async fn release(&self, lease: Lease) -> Result<()> {
        let history = lease.history.clone();
        self.settle(lease, &Record::Failed { history }).await
    }

    /// The event was dead-lettered: drop the record, so that a replay of it
    /// is handled afresh.
    pub async fn forget(&self, lease: Lease) -> Result<()> {
        self.kv
            .delete_expect_revision(&lease.key, Some(lease.revision))
            .await
            .context("clearing the idempotency record")
    }

    async fn settle(&self, lease: Lease, record: &Record) -> Result<()> {
        let value = Bytes::from(serde_json::to_vec(record)?);
        self.kv
            .update(&lease.key, value, lease.revision)
            .await
            .context("recording the outcome in the idempotency bucket (the claim expired?)")?;
        Ok(())
    }

    fn claimed(&self, history: FailureHistory) -> Result<Bytes> {
        let until = Utc::now() + self.lease;
        let record = Record::Claimed {
            owner: self.owner.clone(),
            until,
            history,
        };
        Ok(Bytes::from(serde_json::to_vec(&record)?))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::{EventBuilder, EventBuilderV10};

    fn event(source: &str, id: &str) -> Event {
        EventBuilderV10::new()
            .id(id)
            .source(source)
            .ty("t")
            .build()
            .unwrap()
    }

    #[test]
    fn the_key_is_source_and_id() {
        let key = ProcessedEvents::key(&event("/a", "1"));
        assert_eq!(key.len(), 32);
        assert_eq!(key, ProcessedEvents::key(&event("/a", "1")));
        assert_ne!(key, ProcessedEvents::key(&event("/b", "1")));
        // The separator keeps ("/a1", "") and ("/a", "1") apart.
        assert_ne!(key, ProcessedEvents::key(&event("/a1", "")));
    }

    #[test]
    fn records_round_trip() {
        let record = Record::Failed {
            history: FailureHistory {
                failures: 2,
                first_failure: Some(Utc::now()),
                last_kind: Some("trap".into()),
                last_error: Some("boom".into()),
            },
        };
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"state\":\"failed\""), "{json}");
        let Record::Failed { history, .. } = serde_json::from_str(&json).unwrap() else {
            panic!("{json}")
        };
        assert_eq!(history.failures, 2);
    }
}
