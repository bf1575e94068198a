//! When to try a webhook again: the schedule and what each answer means. Pure, so the whole policy is
//! one table test.

use std::time::Duration;

use crate::clock::Millis;
use crate::queue::MAX_VISIBILITY;

/// Attempts per event, on every schedule.
pub const MAX_ATTEMPTS: u32 = 8;

/// The waits before each attempt (the first is immediate); a retry waits in its message's visibility,
/// so no step may exceed SQS's 12 hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    waits: [Duration; MAX_ATTEMPTS as usize],
}

impl Schedule {
    /// Svix's schedule: immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (≈ 27.6 h in all).
    pub fn standard() -> Self {
        let s = Duration::from_secs;
        Self {
            waits: [
                s(0),
                s(5),
                s(5 * 60),
                s(30 * 60),
                s(2 * 3600),
                s(5 * 3600),
                s(10 * 3600),
                s(10 * 3600),
            ],
        }
    }

    /// The same shape in seconds (`jobctl dev`, tests): 0, 1, 2, 3, 5, 8, 10, 10 s.
    pub fn compressed() -> Self {
        let s = Duration::from_secs;
        Self {
            waits: [s(0), s(1), s(2), s(3), s(5), s(8), s(10), s(10)],
        }
    }

    /// The wait before the attempt after `made` attempts, or `None` when none is left.
    pub fn wait_after(&self, made: u32) -> Option<Duration> {
        self.waits.get(made as usize).copied()
    }
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The receiver answered with this status (and `Retry-After`, if it sent one).
    Status {
        code: u16,
        retry_after: Option<Duration>,
    },
    /// No answer: a timeout, a refused or reset connection, an address that is not public.
    NoAnswer(String),
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// Stop for good (410 Gone, or the schedule is spent).
    GiveUp,
    RetryIn(Duration),
}

/// The policy: 2xx delivered; 410 stops; anything else — 3xx (redirects are never followed), other 4xx,
/// 429, 5xx, no answer — is retried on `schedule`, no sooner than a `Retry-After` asks, until the
/// schedule runs out. `made` counts attempts including this one.
pub fn next(answer: &Answer, made: u32, schedule: &Schedule) -> Next {
    let retry_after = match answer {
        Answer::Status { code, .. } if (200..300).contains(code) => return Next::Delivered,
        Answer::Status { code: 410, .. } => return Next::GiveUp,
        Answer::Status { retry_after, .. } => *retry_after,
        Answer::NoAnswer(_) => None,
    };
    match schedule.wait_after(made) {
        None => Next::GiveUp,
        Some(wait) => Next::RetryIn(
            wait.max(retry_after.unwrap_or_default())
                .min(MAX_VISIBILITY),
        ),
    }
}

/// A `Retry-After` value: delay seconds, or an HTTP date (`now` in epoch ms). Past dates mean now.
pub fn parse_retry_after(value: &str, now: Millis) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some(Duration::from_millis(
        (at.timestamp_millis() - now).max(0) as u64
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Answer {
        Answer::Status {
            code,
            retry_after: None,
        }
    }

    #[test]
    fn the_policy_table() {
        let s = Schedule::standard();
        let secs = Duration::from_secs;
        let cases: Vec<(Answer, u32, Next)> = vec![
            (status(200), 1, Next::Delivered),
            (status(204), 8, Next::Delivered),
            (status(410), 1, Next::GiveUp),
            (status(500), 1, Next::RetryIn(secs(5))),
            (status(503), 2, Next::RetryIn(secs(300))),
            (status(302), 1, Next::RetryIn(secs(5))),
            (status(404), 3, Next::RetryIn(secs(1800))),
            (status(429), 7, Next::RetryIn(secs(36_000))),
            (status(500), 8, Next::GiveUp),
            (
                Answer::NoAnswer("timed out".into()),
                1,
                Next::RetryIn(secs(5)),
            ),
            (
                Answer::Status {
                    code: 429,
                    retry_after: Some(secs(60)),
                },
                1,
                Next::RetryIn(secs(60)),
            ),
            (
                Answer::Status {
                    code: 503,
                    retry_after: Some(secs(1)),
                },
                2,
                Next::RetryIn(secs(300)),
            ),
            (
                Answer::Status {
                    code: 503,
                    retry_after: Some(secs(86_400)),
                },
                1,
                Next::RetryIn(MAX_VISIBILITY),
            ),
        ];
        for (answer, made, want) in cases {
            assert_eq!(next(&answer, made, &s), want, "{answer:?} after {made}");
        }
    }

    #[test]
    fn schedules_have_eight_attempts_none_longer_than_sqs_allows() {
        for s in [Schedule::standard(), Schedule::compressed()] {
            assert_eq!(s.wait_after(0), Some(Duration::ZERO));
            assert!(s.wait_after(MAX_ATTEMPTS - 1).is_some());
            assert_eq!(s.wait_after(MAX_ATTEMPTS), None);
            assert!(s.waits.iter().all(|w| *w <= MAX_VISIBILITY));
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:29:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
