//! Rate limits as token buckets, in pure arithmetic: what a take decides, given what is stored. The
//! stores persist it ([`crate::store::RateBuckets`]); the worker's kind-level rate limits and the agent
//! loop's per-model limits both take from buckets through it.
//!
//! The bucket is kept as one number, its **theoretical arrival time** (`tat`, GCRA): the instant at
//! which the bucket would be full again. A take of `n` tokens at `now` is allowed when
//! `max(tat, now) + n·T <= now + burst·T` (`T` the interval between tokens), and moves `tat` to
//! `max(tat, now) + n·T`. One number, not (tokens, refilled at), because it lets DynamoDB apply a take
//! without reading first, in one of two conditional writes ([`Rate::idle`], [`Rate::busy`]): while
//! the bucket is busy (`tat > now`) every take is the same atomic `ADD tat n·T`, so concurrent
//! takers never conflict with each other, only with the bound.
//!
//! `tat` never goes down. So a `tat` a store instance saw earlier is a lower bound of the stored one:
//! if it already refuses a take, the stored one would refuse it for at least as long, and the take is
//! refused with no request at all.

use std::time::Duration;

/// Microseconds since the epoch: the bucket's clock (tokens of 1/3 s must not round).
pub type Micros = i64;

/// `n` tokens per `per`, bursts of up to `burst` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    pub count: u32,
    #[serde(with = "secs")]
    pub per: Duration,
    pub burst: u32,
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

/// What a take decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// The tokens are taken.
    Taken,
    /// Not enough tokens: the same take would be allowed after this long.
    Wait(Duration),
}

/// The write that applies a take, chosen from the `tat` last seen (or none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// The bucket is full (`tat <= now`, or no item): `SET tat = to`, on that condition.
    Idle { to: Micros },
    /// The bucket is in use but has room: `ADD tat cost`, on condition `now < tat <= max`.
    Busy { cost: Micros, max: Micros },
}

impl Rate {
    /// `count` per second, bursts of `count`.
    pub fn per_second(count: u32) -> Self {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` per minute, bursts of `count`.
    pub fn per_minute(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` per `per`, bursts of `count`.
    pub fn new(count: u32, per: Duration) -> Self {
        Self {
            count,
            per,
            burst: count,
        }
    }

    /// Bursts of up to `burst` tokens (at least one).
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// Whether it can ever admit anything: at least one token, over a positive time.
    pub fn is_valid(&self) -> bool {
        self.count > 0 && self.burst > 0 && !self.per.is_zero()
    }

    /// The time one token takes to come back (at least 1 µs).
    pub fn interval(&self) -> Micros {
        (self.per.as_micros() as i64 / i64::from(self.count.max(1))).max(1)
    }

    /// What `n` tokens cost in bucket time. A take larger than the burst is taken as the whole burst
    /// (it waits for a full bucket instead of forever).
    pub fn cost(&self, n: u32) -> Micros {
        self.interval() * i64::from(n.clamp(1, self.burst.max(1)))
    }

    /// The whole bucket in bucket time.
    fn depth(&self) -> Micros {
        self.interval() * i64::from(self.burst.max(1))
    }

    /// The pure take: given the stored `tat` (`None`: no item), the new `tat`, or how long to wait.
    pub fn take(&self, tat: Option<Micros>, now: Micros, n: u32) -> Result<Micros, Duration> {
        let from = tat.unwrap_or(now).max(now);
        let next = from + self.cost(n);
        if next - now <= self.depth() {
            Ok(next)
        } else {
            Err(micros(next - now - self.depth()))
        }
    }

    /// How long a take of `n` waits on a bucket whose `tat` is `tat` (zero: it would be taken).
    pub fn wait(&self, tat: Micros, now: Micros, n: u32) -> Duration {
        self.take(Some(tat), now, n).err().unwrap_or_default()
    }

    /// The conditional write that applies a take of `n` at `now`, if `seen` (a `tat` read or
    /// returned earlier; `None`: nothing known) is still right; `Err(wait)` when `seen` already
    /// refuses it (no write needed: `tat` never goes down).
    pub fn write(&self, seen: Option<Micros>, now: Micros, n: u32) -> Result<Write, Duration> {
        match seen {
            Some(tat) if tat > now => {
                self.take(Some(tat), now, n)?;
                Ok(self.busy(now, n))
            }
            _ => Ok(self.idle(now, n)),
        }
    }

    /// The write of a take on a full bucket.
    pub fn idle(&self, now: Micros, n: u32) -> Write {
        Write::Idle {
            to: now + self.cost(n),
        }
    }

    /// The write of a take on a bucket in use: allowed while `tat <= max`.
    pub fn busy(&self, now: Micros, n: u32) -> Write {
        let cost = self.cost(n);
        Write::Busy {
            cost,
            max: now + self.depth() - cost,
        }
    }
}

/// The `tat` of each bucket one store instance last saw: a lower bound of the stored one (it never
/// goes down), so a refusal it implies needs no request.
#[derive(Debug, Default)]
pub struct Seen {
    tats: std::sync::Mutex<std::collections::HashMap<String, Micros>>,
}

/// Buckets one instance remembers at most (then it forgets them all: they are only a saving).
const MAX_SEEN: usize = 4096;

impl Seen {
    pub fn get(&self, bucket: &str) -> Option<Micros> {
        self.lock().get(bucket).copied()
    }

    /// Records a `tat` read or written (the larger one stands).
    pub fn saw(&self, bucket: &str, tat: Micros) {
        let mut tats = self.lock();
        if tats.len() >= MAX_SEEN && !tats.contains_key(bucket) {
            tats.clear();
        }
        let t = tats.entry(bucket.to_owned()).or_insert(tat);
        *t = (*t).max(tat);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Micros>> {
        self.tats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn micros(us: Micros) -> Duration {
    Duration::from_micros(us.max(0) as u64)
}

/// Milliseconds (the kit's clock) as bucket time.
pub fn at(now_ms: i64) -> Micros {
    now_ms.saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Micros = 1_700_000_000_000_000;
    const SEC: Micros = 1_000_000;

    /// Applies takes one after another as a store would, from no item.
    fn run(rate: &Rate, times: &[Micros]) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&t| match rate.take(tat, t, 1) {
                Ok(next) => {
                    tat = Some(next);
                    true
                }
                Err(_) => false,
            })
            .collect()
    }

    #[test]
    fn a_full_bucket_admits_its_burst_at_once_then_one_per_interval() {
        let rate = Rate::per_second(5);
        let burst = run(&rate, &[NOW; 7]);
        assert_eq!(burst, [true, true, true, true, true, false, false]);
        let mut tat = None;
        for _ in 0..5 {
            tat = Some(rate.take(tat, NOW, 1).unwrap());
        }
        assert_eq!(
            rate.take(tat, NOW, 1),
            Err(Duration::from_millis(200)),
            "one token comes back every fifth of a second"
        );
        assert!(rate.take(tat, NOW + SEC / 5, 1).is_ok());
    }

    #[test]
    fn over_any_window_no_more_than_burst_plus_rate_times_window_are_admitted() {
        let rate = Rate::per_second(10).with_burst(3);
        // A taker every 10 ms for 5 s: 10/s is admitted, plus the first burst.
        let times: Vec<Micros> = (0..500).map(|i| NOW + i * 10_000).collect();
        let admitted = run(&rate, &times).iter().filter(|a| **a).count();
        assert!((50..=53).contains(&admitted), "{admitted}");
    }

    #[test]
    fn a_take_larger_than_the_burst_waits_for_a_full_bucket_not_forever() {
        let rate = Rate::per_minute(1000);
        assert!(
            rate.take(None, NOW, 5000).is_ok(),
            "a full bucket admits it"
        );
        let tat = rate.take(None, NOW, 5000).unwrap();
        assert_eq!(rate.wait(tat, NOW, 5000), Duration::from_secs(60));
    }

    #[test]
    fn the_write_follows_what_was_seen_and_a_refusal_seen_needs_no_write() {
        let rate = Rate::per_second(2);
        assert_eq!(
            rate.write(None, NOW, 1),
            Ok(Write::Idle { to: NOW + SEC / 2 })
        );
        assert_eq!(rate.write(Some(NOW - SEC), NOW, 1), Ok(rate.idle(NOW, 1)));
        assert_eq!(
            rate.write(Some(NOW + SEC / 2), NOW, 1),
            Ok(Write::Busy {
                cost: SEC / 2,
                max: NOW + SEC / 2
            })
        );
        assert_eq!(
            rate.write(Some(NOW + SEC), NOW, 1),
            Err(Duration::from_millis(500))
        );
    }

    #[test]
    fn rates_without_tokens_or_time_are_invalid() {
        assert!(Rate::per_second(1).is_valid());
        assert!(!Rate::per_second(0).is_valid());
        assert!(!Rate::new(1, Duration::ZERO).is_valid());
        assert_eq!(Rate::new(3, Duration::from_secs(1)).interval(), 333_333);
    }
}
