//! The store call a capability is waiting on, remembered until it answers.
//!
//! A guest's state read is a request to JetStream made during the
//! invocation. When NATS does not answer (a frozen or partitioned node
//! routes the read nowhere), the invocation's deadline ends it, and the
//! future is dropped in the middle of the call. Counted as the guest's
//! timeout, that would use up one of the event's attempts for the host's
//! trouble, and a long enough outage would dead-letter events whose
//! handlers did nothing wrong. A call still waiting when the invocation
//! ends, having waited for half the invocation's time or more, is therefore
//! reported as [`Interruption::StoreUnavailable`]: the event goes back
//! without counting an attempt, as when the store answers with an error.
//! A call cut off sooner is the guest's timeout: a handler that spends its
//! time on many quick reads must still run out of attempts.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::Interruption;
use crate::store::{StoreError, StoreResult};

/// The call under way, if one is: what it asked (for the log), and since
/// when.
#[derive(Debug, Default)]
pub struct StoreWait {
    call: Option<(&'static str, Instant)>,
    /// How long a call must have waited to be the store's trouble.
    patience: Duration,
}

/// Why a call left waiting failed.
#[derive(Debug, thiserror::Error)]
#[error("no answer before the invocation's deadline")]
struct NoAnswer;

impl StoreWait {
    /// For an invocation of `started..deadline`.
    pub fn new(started: Instant, deadline: Instant) -> Self {
        StoreWait {
            call: None,
            patience: deadline.saturating_duration_since(started) / 2,
        }
    }

    /// Awaits `call`, remembered as `doing` until it answers.
    pub async fn on<T>(
        &mut self,
        doing: &'static str,
        call: impl Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        self.call = Some((doing, Instant::now()));
        let answer = call.await;
        self.call = None;
        answer
    }

    /// The call an invocation was cut off in, as the store's trouble, if
    /// it had waited long enough to be.
    pub fn cut_off(&mut self) -> Option<Interruption> {
        let (doing, since) = self.call.take()?;
        (since.elapsed() >= self.patience)
            .then(|| Interruption::StoreUnavailable(StoreError::unavailable(doing, NoAnswer)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Cuts a call that never answers off after `after`.
    async fn cut_after(wait: &mut StoreWait, after: Duration) {
        let never = wait.on("reading a key", std::future::pending::<StoreResult<()>>());
        assert!(tokio::time::timeout(after, never).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_wait_cut_off_is_the_stores_trouble_a_short_one_the_guests() {
        let started = Instant::now();
        let mut wait = StoreWait::new(started, started + Duration::from_secs(4));
        let answered = wait.on("reading", async { Ok(1) }).await;
        assert_eq!(answered, Ok(1));
        assert!(wait.cut_off().is_none(), "nothing was waiting");

        cut_after(&mut wait, Duration::from_secs(2)).await;
        let Some(Interruption::StoreUnavailable(why)) = wait.cut_off() else {
            panic!("a call cut off after half the invocation was not reported");
        };
        assert!(why.to_string().contains("reading a key"), "{why}");
        assert!(wait.cut_off().is_none(), "reported once");

        cut_after(&mut wait, Duration::from_millis(1999)).await;
        assert!(
            wait.cut_off().is_none(),
            "a quick read cut off is the guest's timeout"
        );
    }
}
