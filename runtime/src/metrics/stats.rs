//! What a handler version has done, in a form runtimes can announce and
//! an operator console can compare: plain counts, and invocation times as
//! bucket counts.
//!
//! prometheus-client's histograms cannot be read back, and the console
//! wants a handler's p50 and p99 over the last few seconds across a fleet,
//! without scraping every runtime. So each handler version also counts its
//! invocations in the exported histogram's buckets here (one atomic add per
//! event). Runtimes announce the running totals; a reader takes the
//! difference between two announcements and reads quantiles from it, as
//! Prometheus' `histogram_quantile` does over a rate. Totals start at zero
//! when a version loads, so a difference is only taken within one version.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in seconds: 50 µs doubling to
/// ~13 s, as `eventhost_handler_duration_seconds`. One more bucket holds
/// everything slower.
pub fn latency_bounds() -> impl Iterator<Item = f64> {
    (0..LATENCY_BUCKETS as i32 - 1).map(|i| 0.00005 * 2f64.powi(i))
}

/// Finite buckets plus the one for everything slower.
pub const LATENCY_BUCKETS: usize = 20;

/// Invocation times of one handler version, by bucket.
#[derive(Debug, Default)]
pub struct LatencyCounts {
    counts: [AtomicU64; LATENCY_BUCKETS],
}

impl LatencyCounts {
    pub fn observe(&self, seconds: f64) {
        let bucket = latency_bounds()
            .position(|bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS - 1);
        self.counts[bucket].fetch_add(1, Relaxed);
    }

    pub fn totals(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Relaxed)).collect()
    }
}

/// A handler version's running totals since it loaded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HandlerStats {
    pub received: u64,
    pub succeeded: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub duplicate: u64,
    pub invalid: u64,
    /// Failed invocations, whatever became of the event after.
    pub failed: u64,
    /// Invocations per latency bucket ([`latency_bounds`], then slower).
    pub latency: Vec<u64>,
}

/// `later - earlier`, bucket by bucket; `None` if `later` is not a later
/// reading of the same totals (a count went down: another version, or a
/// restart).
pub fn difference(later: &[u64], earlier: &[u64]) -> Option<Vec<u64>> {
    if later.len() != earlier.len() {
        return None;
    }
    (later.iter().zip(earlier))
        .map(|(later, earlier)| later.checked_sub(*earlier))
        .collect()
}

/// The upper bound, in seconds, of the bucket holding the `q`-th
/// observation (`q` in 0..=1); `None` with no observation, and infinity
/// when it is slower than the last bound.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    let mut bounds = latency_bounds();
    for count in buckets {
        seen += count;
        let bound = bounds.next().unwrap_or(f64::INFINITY);
        if seen >= rank {
            return Some(bound);
        }
    }
    Some(f64::INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_observation_lands_in_the_first_bucket_that_holds_it() {
        let counts = LatencyCounts::default();
        counts.observe(0.00005);
        counts.observe(0.0001);
        counts.observe(0.00011);
        counts.observe(60.0);
        let totals = counts.totals();
        assert_eq!(&totals[..3], &[1, 1, 1]);
        assert_eq!(totals[LATENCY_BUCKETS - 1], 1);
        assert_eq!(totals.iter().sum::<u64>(), 4);
    }

    #[test]
    fn quantiles_are_read_from_the_difference_of_two_readings() {
        let counts = LatencyCounts::default();
        for _ in 0..100 {
            counts.observe(0.030); // before the window: not counted
        }
        let before = counts.totals();
        for _ in 0..98 {
            counts.observe(0.001);
        }
        counts.observe(0.5);
        counts.observe(0.5);
        let window = difference(&counts.totals(), &before).unwrap();
        assert_eq!(window.iter().sum::<u64>(), 100);
        let p50 = quantile(&window, 0.5).unwrap();
        let p99 = quantile(&window, 0.99).unwrap();
        assert!((0.001..0.0017).contains(&p50), "{p50}");
        assert!((0.5..1.0).contains(&p99), "{p99}");
        assert_eq!(quantile(&[0; LATENCY_BUCKETS], 0.5), None);
    }

    #[test]
    fn a_reset_is_no_difference() {
        assert_eq!(difference(&[1, 0], &[2, 0]), None);
        assert_eq!(difference(&[3, 1], &[2, 0]), Some(vec![1, 1]));
        assert_eq!(difference(&[3], &[2, 0]), None);
    }
}
