//! Time, injected. A leaf: everything that reads the time takes a [`Clock`], so the pure code takes
//! `now` as an argument and tests can run on tokio's paused time ([`TokioClock`]).

use std::fmt;
use std::sync::Arc;

/// Milliseconds since the Unix epoch. Stored as a number so DynamoDB conditions can compare it.
pub type Millis = i64;

/// A source of the current time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Now, in epoch milliseconds.
    fn now(&self) -> Millis;
}

/// A clock that can be shared by every part of a process.
pub type SharedClock = Arc<dyn Clock>;

/// The wall clock: what the deployed functions and `jobctl` use.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        chrono::Utc::now().timestamp_millis()
    }
}

/// The wall clock at its creation, advanced by tokio's clock since: under `tokio::time::pause()` it
/// moves only when tokio's time does, so lease expiries can be tested without waiting.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    wall_at_start: Millis,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> Self {
        Self {
            wall_at_start: SystemClock.now(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Millis {
        self.wall_at_start + self.start.elapsed().as_millis() as Millis
    }
}

/// The wall clock as a shared clock.
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now() - t0, 90_000);
    }
}
