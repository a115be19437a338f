//! How often, and how far apart, a failing event is tried again.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde::Deserialize;

/// The `[retry]` table of a handler manifest.
///
/// Attempt `n` (1-based) that fails waits
/// `min(initial_backoff × multiplier^(n-1), max_backoff)`, spread by ±`jitter`
/// (a fraction) so that events failing together do not come back together.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. `1` means never retry.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Fraction of the delay added or taken away at random, in `0.0..=1.0`.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// Beyond this a NAK delay stops being a retry and becomes a parked event;
/// parking is what the dead-letter queue is for.
const LONGEST_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

impl RetryPolicy {
    pub fn validate(&self) -> Result<()> {
        ensure!(
            (1..=100).contains(&self.max_attempts),
            "`retry.max_attempts` must be between 1 and 100, got {}",
            self.max_attempts
        );
        ensure!(
            !self.initial_backoff.is_zero() && self.initial_backoff <= self.max_backoff,
            "`retry.initial_backoff` must be above zero and at most `retry.max_backoff` ({:?}), got {:?}",
            self.max_backoff,
            self.initial_backoff
        );
        ensure!(
            self.max_backoff <= LONGEST_BACKOFF,
            "`retry.max_backoff` must be at most 24h, got {:?}",
            self.max_backoff
        );
        ensure!(
            self.multiplier.is_finite() && (1.0..=10.0).contains(&self.multiplier),
            "`retry.multiplier` must be between 1.0 and 10.0, got {}",
            self.multiplier
        );
        ensure!(
            (0.0..=1.0).contains(&self.jitter),
            "`retry.jitter` must be between 0.0 and 1.0, got {}",
            self.jitter
        );
        Ok(())
    }

    /// Whether an event whose attempt number `attempt` just failed may be
    /// tried again.
    pub fn allows_another(&self, attempt: u32) -> bool {
        attempt < self.max_attempts
    }

    /// The delay before the attempt after `attempt`, without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(64) as i32;
        let secs = self.initial_backoff.as_secs_f64() * self.multiplier.powi(exponent);
        Duration::from_secs_f64(secs.min(self.max_backoff.as_secs_f64()))
    }

    /// The delay before the attempt after `attempt`, with jitter applied.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let spread = self.jitter * (2.0 * fastrand::f64() - 1.0);
        Duration::from_secs_f64((base * (1.0 + spread)).max(0.001))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = policy(0.0);
        let delays: Vec<_> = (1..=4).map(|a| p.delay_after(a).as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        assert!(p.allows_another(3));
        assert!(!p.allows_another(4));
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let p = policy(0.5);
        for _ in 0..1000 {
            let ms = p.delay_after(2).as_millis();
            assert!((100..=300).contains(&ms), "{ms}");
        }
    }

    #[test]
    fn the_longest_backoff_is_a_day() {
        let hours = |h: u64| RetryPolicy {
            max_backoff: Duration::from_secs(h * 3600),
            ..policy(0.0)
        };
        assert!(hours(24).validate().is_ok());
        assert!(hours(23).validate().is_ok());
        assert!(hours(25).validate().is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = [
            RetryPolicy {
                max_attempts: 0,
                ..policy(0.0)
            },
            RetryPolicy {
                initial_backoff: Duration::ZERO,
                ..policy(0.0)
            },
            RetryPolicy {
                initial_backoff: Duration::from_secs(1),
                ..policy(0.0)
            },
            RetryPolicy {
                multiplier: 0.5,
                ..policy(0.0)
            },
            RetryPolicy {
                multiplier: f64::NAN,
                ..policy(0.0)
            },
            RetryPolicy {
                jitter: 1.5,
                ..policy(0.0)
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
        RetryPolicy::default().validate().unwrap();
    }
}
