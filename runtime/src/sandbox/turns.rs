//! Long-running guests take turns on part of the machine.
//!
//! Guests run on the tokio workers that also do every handler's NATS I/O,
//! and a guest gives its worker back only at an epoch tick. Yielding alone
//! is not enough: sixteen spinning guests of one handler each hold a worker
//! for a whole tick per round, so every step of every other handler's event
//! waits behind them (measured: a well-behaved handler beside a spinning one
//! fell to 1% of its throughput).
//!
//! So a guest still running after its first tick becomes a long runner:
//! from then on it runs only while it holds a [`Turn`], one of
//! `workers - 1` permits (at least one), and at each later tick it hands
//! the turn back and queues for the next (the semaphore is fair: first
//! come, first served). However many guests spin, the other workers stay
//! free for I/O and for the short invocations that are nearly all of them,
//! which never take a turn at all. While other invocations keep starting,
//! a long runner also rests two ticks, still holding its turn, before
//! handing it on: long runners then use at most a third of their workers,
//! and when nothing else is running they use them all. (Measured on 2
//! cores, `tests/guarantees/sandbox/hostile.rs`: a well-behaved handler kept 0.01x of its
//! throughput beside spinning guests with only yields, 0.3x with turns,
//! 0.5x to 0.8x with a rest of one tick.) A
//! turn is released when the invocation ends, however it ends, because it
//! lives in the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::EPOCH_TICK;

/// The permits long runners share, one set per process.
static TURNS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    Arc::new(Semaphore::new(workers.saturating_sub(1).max(1)))
});

/// How long a long runner rests between turns while other work arrives.
const REST: Duration = EPOCH_TICK.saturating_mul(2);

/// When the last invocation started, in ticks since [`EPOCH`].
static LAST_START: AtomicU64 = AtomicU64::new(0);
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn ticks_at(at: Instant) -> u64 {
    let ticks = at.saturating_duration_since(*EPOCH).as_millis() / EPOCH_TICK.as_millis();
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Notes that an invocation starts at `at` (one relaxed store per event,
/// on the clock reading the invocation already took).
pub fn invocation_started(at: Instant) {
    LAST_START.store(ticks_at(at), Ordering::Relaxed);
}

/// Whether other work arrived within the last two ticks.
fn others_starting() -> bool {
    rests(ticks_at(Instant::now()), LAST_START.load(Ordering::Relaxed))
}

/// Whether a long runner rests before its next turn at tick `now`: only
/// while invocations keep starting (the last one at most two ticks ago), so
/// a CPU-heavy handler alone on the runtime runs without pauses.
fn rests(now: u64, last_start: u64) -> bool {
    now.saturating_sub(last_start) <= 2
}

/// The turn an invocation holds, if it is a long runner between two ticks.
#[derive(Clone, Default)]
pub struct Turn(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl Turn {
    /// Hands back the turn held (if any) and waits for the next one; run as
    /// the yield at an epoch tick.
    pub async fn next(self) {
        if others_starting() {
            tokio::time::sleep(REST).await;
        }
        drop(self.take());
        // The semaphore is never closed.
        if let Ok(permit) = TURNS.clone().acquire_owned().await {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
        }
    }

    fn take(&self) -> Option<OwnedSemaphorePermit> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_runner_rests_only_while_other_invocations_start() {
        assert!(rests(100, 100));
        assert!(rests(102, 100));
        assert!(!rests(103, 100));
        assert!(!rests(100, 0), "alone since start");
        // A start read after `now` was taken (another thread) is recent.
        assert!(rests(100, 101));
    }

    #[tokio::test]
    async fn long_runners_queue_for_the_turns_in_order() {
        let permits = TURNS.available_permits();
        let turns: Vec<Turn> = (0..permits + 1).map(|_| Turn::default()).collect();
        for turn in &turns[..permits] {
            turn.clone().next().await;
        }
        assert_eq!(TURNS.available_permits(), 0);
        // One more long runner waits until a holder hands its turn on.
        let waiting = tokio::spawn(turns[permits].clone().next());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        turns[0].take();
        waiting.await.unwrap();
        assert!(turns[permits].take().is_some());
    }
}
