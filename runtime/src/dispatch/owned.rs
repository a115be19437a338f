//! Consuming an ordered handler's consumer while holding its lease.
//!
//! Each stretch of ownership is a *term*. A term starts by rewinding the
//! consumer to its ack floor when anything past it was delivered: what the
//! previous owner held unacked (in flight, waiting behind its key, or handed
//! back with a delayed NAK) would otherwise come back only after its ack
//! wait or delay, behind later events of the same keys. Rewound, those
//! events come first, in stream order; the ones that were in fact handled
//! are recognised by their idempotency records and skipped, and one the old
//! owner is still running is held back by its claim until it settles.
//!
//! A term ends when the lease is lost or at shutdown. Its token stands in
//! for the shutdown token of the events it took, so their keys' waiting
//! events are handed back and no new attempt starts; attempts already
//! running finish and settle, and only then is the lease released.

use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Dispatcher;
use crate::fleet::lease::{self, Leases};

/// Pause before trying again after a term could not start.
const RETRY: Duration = Duration::from_secs(1);

impl Dispatcher {
    pub(super) async fn pull_owned(
        self: Arc<Self>,
        leases: &Arc<Leases>,
        binding: usize,
        permits: Arc<Semaphore>,
        shutdown: CancellationToken,
    ) {
        let key = {
            let b = &self.bindings[binding];
            lease::key(&b.stream, &b.durable)
        };
        while !shutdown.is_cancelled() {
            // Standing by for the lease is this replica's job: ready.
            self.consuming[binding].store(true, AtomicOrdering::Relaxed);
            let Some((ownership, fresh)) = leases.acquire(&key, &shutdown).await else {
                return;
            };
            // Shared with the version this one replaces, in this process:
            // nobody else held the consumer, so there is nothing to rewind
            // (and the other version is still pulling from it).
            let rewound = match fresh {
                true => self.bindings[binding].rewind(&self.attempts.js).await,
                false => Ok(()),
            };
            if let Err(err) = rewound {
                tracing::warn!(handler = self.name(), lease = %key, error = format!("{err:#}"),
                    "cannot rewind the consumer for a new term; trying again");
                drop(ownership);
                tokio::time::sleep(RETRY).await;
                continue;
            }
            let term = shutdown.child_token();
            let ended = term.clone();
            let watch = ownership.clone();
            let watcher = tokio::spawn(async move {
                watch.lost().await;
                ended.cancel();
            });
            tracing::info!(handler = self.name(), lease = %key, "consuming as the lease holder");
            let taken = TaskTracker::new();
            self.consume(binding, permits.clone(), &taken, term).await;
            taken.close();
            taken.wait().await;
            watcher.abort();
            if ownership.is_lost() {
                tracing::warn!(handler = self.name(), lease = %key,
                    "lease lost: stopped taking events; another runtime continues");
            }
            drop(ownership);
        }
    }
}
