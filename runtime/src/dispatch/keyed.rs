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

use async_nats::jetstream::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::attempt::Next;
use super::{Dispatcher, Held, KEEP_ALIVE};
use crate::outcome::{self, Settle};
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
            let finished = self
                .in_order(&held, &permits, &mut permit, shutdown)
                .instrument(span)
                .await;
            if !finished || shutdown.is_cancelled() {
                // Hand back what is left of this key, in order.
                let handed_back = if finished { None } else { Some(held) };
                let delay = PULL_EXPIRES;
                for held in handed_back
                    .into_iter()
                    .chain(std::iter::from_fn(|| self.waiting.next(key)))
                {
                    outcome::settle(&held.message, Settle::Retry { delay }).await;
                }
                return;
            }
            match self.waiting.next(key) {
                Some(next) => held = next,
                None => return,
            }
        }
    }

    /// Attempts `held` until it is settled, waiting out each backoff in
    /// place. Returns `false` if shutdown cut a wait short.
    async fn in_order(
        &self,
        held: &Held,
        permits: &Arc<Semaphore>,
        permit: &mut Option<OwnedSemaphorePermit>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut failed = 0;
        loop {
            if permit.is_none() {
                *permit = Some(permits.clone().acquire_owned().await.expect("never closed"));
            }
            match self
                .attempt(&held.message, &held.input, &held.trace, failed)
                .await
            {
                Next::Settled => return true,
                Next::Again {
                    delay,
                    failed: attempt_failed,
                } => {
                    failed += u32::from(attempt_failed);
                    // Other keys may use the permit while this one waits.
                    *permit = None;
                    if !hold(&held.message, delay, shutdown).await {
                        return false;
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
                .for_each_waiting(|held| waiting.push(held.message.clone()));
            for message in &waiting {
                outcome::keep_alive(message).await;
            }
        }
    }
}

/// Waits `delay` while keeping `message` from being redelivered. Returns
/// `false` if `shutdown` came first.
async fn hold(message: &Message, delay: Duration, shutdown: &CancellationToken) -> bool {
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
        outcome::keep_alive(message).await;
    }
}
