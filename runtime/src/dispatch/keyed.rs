//! `ordering = "key"`: a key's events one after another.
//!
//! The task that receives a key's first event works that key: it handles the
//! event, then every event that queued up behind it meanwhile (see
//! [`crate::policy::ordering`]). A failed event is retried in place after its
//! backoff, its ack timer kept alive, while the key's later events wait;
//! other keys go on, and the waiting task gives its permit back. Shutdown
//! hands back what is left of the key, in order.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::settle::{self, Delivery, Settlement};
use super::{Dispatcher, Held, KEEP_ALIVE};
use crate::source::PULL_EXPIRES;

impl Dispatcher {
    /// Handles `held`, whose key this task now works, and then every event
    /// that queues up behind it for `key`, one at a time.
    pub(super) async fn work_key(
        &self,
        key: &str,
        held: Held,
        permits: Arc<Semaphore>,
        permit: OwnedSemaphorePermit,
        shutdown: &CancellationToken,
    ) {
        let mut held = held;
        let mut permit = Some(permit);
        loop {
            let span = held.span.clone();
            let settlement = self
                .in_order(&held, &permits, &mut permit, shutdown)
                .instrument(span)
                .await;
            let finished = settlement == Settlement::Ack;
            held.delivery.settle(settlement).await;
            if !finished || shutdown.is_cancelled() {
                // Hand back what is left of this key, in order.
                while let Some(held) = self.waiting.next(key) {
                    let delay = PULL_EXPIRES;
                    held.delivery.settle(Settlement::hand_back(delay)).await;
                }
                return;
            }
            match self.waiting.next(key) {
                Some(next) => held = next,
                None => return,
            }
        }
    }

    /// Attempts `held` until it is handled, waiting out each backoff in
    /// place: [`Settlement::Ack`], or the hand-back if shutdown cut a wait
    /// short.
    async fn in_order(
        &self,
        held: &Held,
        permits: &Arc<Semaphore>,
        permit: &mut Option<OwnedSemaphorePermit>,
        shutdown: &CancellationToken,
    ) -> Settlement {
        let mut failed = 0;
        loop {
            if permit.is_none() {
                *permit = Some(permits.clone().acquire_owned().await.expect("never closed"));
            }
            let attempt = self
                .attempts
                .attempt(&held.delivery, &held.input, &held.trace, failed);
            match attempt.await {
                Settlement::Ack => return Settlement::Ack,
                Settlement::Retry {
                    delay,
                    failed: attempt_failed,
                } => {
                    failed += u32::from(attempt_failed);
                    // Other keys may use the permit while this one waits.
                    *permit = None;
                    if !hold(&held.delivery, delay, shutdown).await {
                        return Settlement::hand_back(PULL_EXPIRES);
                    }
                }
            }
        }
    }

    /// Resets the ack timers of events waiting for their key, until `stop`.
    pub(super) async fn keep_waiting_alive(self: Arc<Self>, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(KEEP_ALIVE) => {}
            }
            let mut waiting = Vec::new();
            self.waiting
                .for_each_waiting(|held| waiting.push(held.delivery.message().clone()));
            for message in &waiting {
                settle::keep_alive(message).await;
            }
        }
    }
}

/// Waits `delay` while keeping `delivery` from being redelivered. Returns
/// `false` if `shutdown` came first.
async fn hold(delivery: &Delivery, delay: Duration, shutdown: &CancellationToken) -> bool {
    let until = tokio::time::Instant::now() + delay;
    loop {
        let now = tokio::time::Instant::now();
        if now >= until {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep((until - now).min(KEEP_ALIVE)) => {}
        }
        delivery.keep_alive().await;
    }
}
