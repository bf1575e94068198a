//! Retry delays, a leaf of the module graph: exponential backoff with full jitter (AWS Architecture Blog,
//! "Exponential Backoff and Jitter"): spreading retries uniformly over [0, cap] keeps a burst of failures
//! from retrying in lockstep.

use std::time::Duration;

/// Backoff parameters: the cap for attempt n is `min(max, base * 2^(n-1))`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self { base, max }
    }

    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn cap(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay after failed attempt `attempt`, drawn from `[0, cap]` by `unit` in `[0, 1)`.
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        self.cap(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay after failed attempt `attempt`, with random full jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        base: Duration::from_secs(2),
        max: Duration::from_secs(60),
    };

    #[test]
    fn the_cap_doubles_per_attempt_up_to_the_max() {
        let caps: Vec<u64> = (1..=7).map(|a| B.cap(a).as_secs()).collect();
        assert_eq!(caps, [2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(B.cap(0), Duration::from_secs(2));
        assert_eq!(B.cap(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_cap() {
        assert_eq!(B.delay_with(3, 0.0), Duration::ZERO);
        assert_eq!(B.delay_with(3, 0.5), Duration::from_secs(4));
        assert_eq!(B.delay_with(3, 7.0), Duration::from_secs(8));
        for _ in 0..1000 {
            assert!(B.delay(4) <= Duration::from_secs(16));
        }
    }
}
