//! The delivery policy: which events run, in what order, and what becomes
//! of an event after an attempt.
//!
//! - [`ordering`]: events sharing a partition key run one at a time;
//! - [`retry`]: failed attempts are retried with backoff, up to a limit.
//!
//! Whether an event already has its outcome is the ledger's
//! ([`crate::ledger`]). Keeping these decisions here, apart from the
//! mechanics of publishing and acking in [`crate::outcome`], is what keeps
//! each of them small.

pub mod ordering;
pub mod retry;

use std::time::Duration;

pub use retry::RetryPolicy;

use crate::failure::Failure;

/// How long to wait before trying again after the host's own trouble (the
/// idempotency bucket or the dead-letter stream unreachable). Not a failed
/// attempt: the handler was never at fault.
pub const HOST_RETRY_DELAY: Duration = Duration::from_secs(1);

/// How often an invocation is run again after losing an optimistic
/// concurrency race, before the losses count as a failed attempt (kind
/// `conflict`). Lost races are not the handler's fault, so they do not use
/// up attempts; a key fought over that hard is worth backing off from.
pub const MAX_CONFLICT_RERUNS: u32 = 10;

/// The pause before re-running after the `n`-th lost race (1-based): short
/// and jittered, so that racing replicas fall out of step.
pub fn conflict_delay(n: u32) -> Duration {
    let base = 5u64 << n.min(6);
    Duration::from_millis(base / 2 + fastrand::u64(0..=base))
}

/// What happens to an event after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this delay.
    Retry(Duration),
    /// Give up: park it in the dead-letter queue.
    DeadLetter,
}

/// The verdict on attempt number `attempt` failing with `failure`.
pub fn after_failure(retry: &RetryPolicy, failure: &Failure, attempt: u32) -> Verdict {
    if failure.kind.is_permanent() || !retry.allows_another(attempt) {
        Verdict::DeadLetter
    } else {
        Verdict::Retry(retry.delay_after(attempt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::FailureKind;

    fn failure(kind: FailureKind) -> Failure {
        Failure::new(kind, "x")
    }

    #[test]
    fn conflict_delays_grow_stay_in_their_band_and_stop_growing() {
        for n in 1..=10 {
            let base = 5u64 << n.min(6);
            for _ in 0..200 {
                let ms = conflict_delay(n).as_millis() as u64;
                assert!((base / 2..=base / 2 + base).contains(&ms), "{n}: {ms}");
            }
        }
    }

    #[test]
    fn permanent_failures_skip_the_remaining_attempts() {
        let retry = RetryPolicy::default();
        for kind in [
            FailureKind::Permanent,
            FailureKind::EmitRefused,
            FailureKind::LimitExceeded,
        ] {
            assert_eq!(
                after_failure(&retry, &failure(kind), 1),
                Verdict::DeadLetter
            );
        }
        for kind in [
            FailureKind::Retryable,
            FailureKind::Trap,
            FailureKind::Timeout,
            FailureKind::MemoryLimit,
            FailureKind::Fuel,
            FailureKind::Conflict,
            FailureKind::Output,
        ] {
            assert!(matches!(
                after_failure(&retry, &failure(kind), 1),
                Verdict::Retry(_)
            ));
            assert_eq!(
                after_failure(&retry, &failure(kind), retry.max_attempts),
                Verdict::DeadLetter
            );
        }
    }
}
