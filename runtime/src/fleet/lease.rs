//! Which runtime consumes an ordered handler's consumer: one at a time,
//! through a lease in a key-value bucket.
//!
//! Per-key order needs one runtime to see a consumer's events in stream
//! order. NATS 2.9 has no pinned consumers, so runtimes elect the consumer's
//! owner themselves: the lease is the key `<stream>.<consumer>` of
//! [`BUCKET`], created with a compare-and-set on "absent" and renewed every
//! [`RENEW`] by a compare-and-set on the revision the owner last wrote.
//!
//! Time is only ever measured on one clock, so machines' clocks need not
//! agree. A contender takes a lease over when its revision has not changed
//! for [`TTL`] *as the contender saw it*; the owner counts its lease as held
//! until [`TTL`] minus a margin after it *sent* its last successful renewal,
//! which is earlier. So an owner cut off from NATS stops starting events
//! before anyone else can start. A dropped [`Ownership`] deletes the lease,
//! so a clean stop hands the consumer over at once; a crash hands it over
//! after [`TTL`].
//!
//! What the new owner must do on top (rewind the consumer to its ack floor,
//! so that events the old owner held come again, first) is the
//! dispatcher's: see [`crate::dispatch`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::jetstream::config_file::{BucketDeclaration, Storage};
use crate::store::{Store, StoreError, kv};

/// The key-value bucket holding every ordered consumer's lease.
pub const BUCKET: &str = "eventhost-leases";
/// How long a lease outlives its owner's last renewal.
pub const TTL: Duration = Duration::from_secs(6);
/// How often the owner renews.
const RENEW: Duration = Duration::from_secs(2);
/// How much sooner than a contender the owner counts its lease as gone.
const MARGIN: Duration = Duration::from_secs(1);
/// How often a contender looks at a lease held by another runtime.
const WATCH: Duration = Duration::from_millis(500);

/// Creates the lease bucket if missing.
pub async fn declare(js: &jetstream::Context, replicas: usize) -> Result<()> {
    let bucket = BucketDeclaration {
        name: BUCKET.to_string(),
        history: 1,
        storage: Storage::File,
        // Leases of consumers nobody runs any more go away on their own.
        max_age: Some(Duration::from_secs(24 * 3600)),
        max_value_size: None,
    };
    crate::jetstream::declare::ensure_buckets(
        js,
        &[bucket],
        replicas,
        crate::jetstream::declare::CommitRecords::Elsewhere,
    )
    .await
}

/// The lease's value: who holds it, for `eventhost status` and for humans.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub runtime: String,
    pub host: String,
}

/// This process's side of the leases: every runtime has one.
pub struct Leases {
    store: Arc<dyn Store>,
    me: Holder,
    /// Leases held now, shared by every dispatcher of this process that
    /// consumes the same consumer (an old and a new version during reload).
    held: Mutex<HashMap<String, Weak<Ownership>>>,
}

/// A held lease. It is renewed while any clone lives; dropping the last
/// one releases it.
pub struct Ownership {
    key: String,
    /// Cancelled when the lease is lost (taken over, or not renewed in
    /// time): stop starting events.
    lost: CancellationToken,
    /// Cancelled on drop: stop renewing and delete the lease.
    release: CancellationToken,
}

impl Ownership {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        self.release.cancel();
    }
}

/// The lease key of a consumer.
pub fn key(stream: &str, consumer: &str) -> String {
    format!("{stream}.{consumer}")
}

impl Leases {
    pub fn new(store: Arc<dyn Store>, runtime: &str, host: &str) -> Arc<Self> {
        Arc::new(Leases {
            store,
            me: Holder {
                runtime: runtime.to_string(),
                host: host.to_string(),
            },
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The leases this process holds now.
    pub fn held(&self) -> Vec<String> {
        let held = self.held.lock().expect("never poisoned");
        let live = held.iter().filter(|(_, o)| o.strong_count() > 0);
        let mut keys: Vec<String> = live.map(|(k, _)| k.clone()).collect();
        keys.sort();
        keys
    }

    /// Waits until this process holds the lease `key` (or `stop` is
    /// cancelled: `None`). The flag says whether it was taken just now,
    /// rather than shared with another dispatcher of this process that
    /// already held it.
    pub async fn acquire(
        self: &Arc<Self>,
        key: &str,
        stop: &CancellationToken,
    ) -> Option<(Arc<Ownership>, bool)> {
        if let Some(shared) = self.shared(key) {
            return Some((shared, false));
        }
        // The revision another holder last wrote, and when it was first seen.
        let mut seen: Option<(u64, Instant)> = None;
        loop {
            let sent = Instant::now();
            match self.try_take(key, &mut seen).await {
                Ok(Some(revision)) => return Some((self.hold(key, revision, sent), true)),
                Ok(None) => {}
                Err(err) => tracing::warn!(lease = key, error = %err, "cannot read a lease"),
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(WATCH) => {}
            }
        }
    }

    /// Another dispatcher of this process already holds it.
    fn shared(&self, key: &str) -> Option<Arc<Ownership>> {
        let held = self.held.lock().expect("never poisoned");
        let ownership = held.get(key)?.upgrade()?;
        (!ownership.is_lost()).then_some(ownership)
    }

    /// Takes the lease if it is free, or its holder stopped renewing it:
    /// the revision written, or `None` while someone else holds it.
    async fn try_take(
        &self,
        key: &str,
        seen: &mut Option<(u64, Instant)>,
    ) -> Result<Option<u64>, StoreError> {
        let entry = kv::entry(&*self.store, BUCKET, key).await?;
        let free = entry.value.is_none();
        let expired = match *seen {
            Some((revision, since)) if revision == entry.revision => since.elapsed() >= TTL,
            _ => {
                if seen.is_none() && !free {
                    let holder = (entry.value.as_ref())
                        .and_then(|v| serde_json::from_slice::<Holder>(v).ok());
                    tracing::info!(lease = key, holder = ?holder.map(|h| h.runtime),
                        "waiting for the lease");
                }
                *seen = Some((entry.revision, Instant::now()));
                false
            }
        };
        if !free && !expired {
            return Ok(None);
        }
        match self.write(key, entry.revision).await {
            Ok(revision) => {
                if !free {
                    tracing::info!(lease = key, "took over a lease its holder stopped renewing");
                }
                Ok(Some(revision))
            }
            Err(StoreError::WrongLastSequence) => Ok(None),
            Err(err) => Err(err),
        }
    }

    async fn write(&self, key: &str, expected: u64) -> Result<u64, StoreError> {
        let value = serde_json::to_vec(&self.me).expect("serialisable");
        let write = kv::write(BUCKET, key, Some(value.into())).expect_last(expected);
        Ok(self.store.publish(write).await?.sequence)
    }

    /// Records a lease just taken and starts renewing it.
    fn hold(self: &Arc<Self>, key: &str, revision: u64, sent: Instant) -> Arc<Ownership> {
        let ownership = Arc::new(Ownership {
            key: key.to_string(),
            lost: CancellationToken::new(),
            release: CancellationToken::new(),
        });
        let mut held = self.held.lock().expect("never poisoned");
        held.retain(|_, o| o.strong_count() > 0);
        held.insert(key.to_string(), Arc::downgrade(&ownership));
        let renewal = Renewal {
            leases: self.clone(),
            key: key.to_string(),
            revision,
            valid_until: sent + TTL - MARGIN,
            lost: ownership.lost.clone(),
            release: ownership.release.clone(),
        };
        tokio::spawn(renewal.run());
        tracing::info!(lease = key, "holding the lease");
        ownership
    }
}

/// The task that keeps one lease alive, and lets it go.
struct Renewal {
    leases: Arc<Leases>,
    key: String,
    revision: u64,
    valid_until: Instant,
    lost: CancellationToken,
    release: CancellationToken,
}

impl Renewal {
    async fn run(mut self) {
        loop {
            tokio::select! {
                _ = self.release.cancelled() => return self.let_go().await,
                _ = self.lost.cancelled() => return,
                _ = tokio::time::sleep(RENEW) => {}
            }
            let sent = Instant::now();
            let renewed = tokio::time::timeout_at(
                self.valid_until,
                self.leases.write(&self.key, self.revision),
            )
            .await;
            match renewed {
                Ok(Ok(revision)) => {
                    self.revision = revision;
                    self.valid_until = sent + TTL - MARGIN;
                    continue;
                }
                Ok(Err(StoreError::WrongLastSequence)) => {
                    tracing::warn!(lease = %self.key, "lease taken over by another runtime");
                }
                Ok(Err(err)) if Instant::now() < self.valid_until => {
                    tracing::warn!(lease = %self.key, error = %err, "cannot renew a lease; retrying");
                    continue;
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::warn!(lease = %self.key, "lease not renewed in time; letting it go");
                }
            }
            self.lost.cancel();
            return;
        }
    }

    /// Deletes the lease, if it is still ours, so a successor needs not
    /// wait for it to expire.
    async fn let_go(self) {
        if self.lost.is_cancelled() {
            return;
        }
        self.lost.cancel();
        let delete = kv::write(BUCKET, &self.key, None).expect_last(self.revision);
        match self.leases.store.publish(delete).await {
            Ok(_) => tracing::info!(lease = %self.key, "released the lease"),
            Err(err) => tracing::warn!(lease = %self.key, error = %err,
                "could not release the lease; it expires on its own"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn store() -> Arc<dyn Store> {
        let store = MemoryStore::new();
        store.add_bucket(BUCKET);
        Arc::new(store)
    }

    #[tokio::test(start_paused = true)]
    async fn one_holder_at_a_time_and_a_dead_one_is_taken_over_after_the_ttl() {
        let store = store();
        let (a, b) = (
            Leases::new(store.clone(), "a", "h"),
            Leases::new(store.clone(), "b", "h"),
        );
        let never = CancellationToken::new();
        let (held, _) = a.acquire("S.c", &never).await.expect("free lease");
        assert_eq!(a.held(), ["S.c"]);
        // b waits while a renews.
        let waiting = tokio::time::timeout(TTL * 3, b.acquire("S.c", &never)).await;
        assert!(waiting.is_err(), "b took a lease a was renewing");
        // a dies without releasing: its renewal stops, the lease stays.
        held.lost.cancel();
        std::mem::forget(held);
        a.held.lock().unwrap().clear();
        let started = Instant::now();
        let (b_holds, fresh) = b.acquire("S.c", &never).await.expect("taken over");
        assert!(fresh);
        assert!(started.elapsed() >= TTL - RENEW, "{:?}", started.elapsed());
        assert!(!b_holds.is_lost());
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_is_taken_at_once_and_the_old_holder_learns_it_lost() {
        let store = store();
        let (a, b) = (
            Leases::new(store.clone(), "a", "h"),
            Leases::new(store.clone(), "b", "h"),
        );
        let never = CancellationToken::new();
        let (first, _) = a.acquire("S.c", &never).await.unwrap();
        let (again, fresh) = a.acquire("S.c", &never).await.unwrap();
        assert!(!fresh);
        assert!(Arc::ptr_eq(&first, &again), "one process shares its lease");
        drop((first, again));
        let started = Instant::now();
        let (b_holds, _) = b.acquire("S.c", &never).await.unwrap();
        assert!(started.elapsed() < TTL, "{:?}", started.elapsed());

        // a writes over b's lease by hand: b's next renewal finds out.
        let entry = kv::entry(&*store, BUCKET, "S.c").await.unwrap();
        a.write("S.c", entry.revision).await.unwrap();
        tokio::time::timeout(RENEW * 2, b_holds.lost())
            .await
            .expect("b saw it lost the lease");
    }
}
