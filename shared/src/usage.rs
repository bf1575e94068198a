//! Model usage per user per UTC day, and the daily token budget it is held to. Pure: the day, its
//! reset, the item's key and what it holds; the stores keep the counters
//! ([`crate::store::UsageLedger`], [`crate::store::UsageReader`]).
//!
//! One item per owner per day, `use#<owner>#<yyyy-mm-dd>`, holding per-model counters (input tokens,
//! output tokens, requests) and the day's total. The agent loop adds each model call's tokens to it
//! with one UpdateItem (`ADD`) from inside the turn's durable step, so a turn replayed from its record
//! never counts again (see `agent::budget`). The item expires [`RETENTION_DAYS`] after its day (TTL):
//! `GET /usage?day=` reaches that far back.
//!
//! The budget (`JOBKIT_MAX_TOKENS_PER_USER_PER_DAY`, 0 = off) counts input and output tokens of every
//! model together, and resets at UTC midnight.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{NaiveDate, NaiveTime, TimeDelta};
use serde::{Deserialize, Serialize};

use crate::clock::Millis;

/// How long a day's usage is kept after the day (its item's TTL), and how far back it can be read.
pub const RETENTION_DAYS: i64 = 35;

/// The prefix of usage items' keys (beside jobs, steps and the ledgers' pages in the one table).
pub const KEY_PREFIX: &str = "use#";

/// A UTC calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day(NaiveDate);

/// A `day` that is not `YYYY-MM-DD`, or not within what is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidDay {
    #[error("day must be a date written YYYY-MM-DD")]
    Malformed,
    #[error("day must be between {oldest} and {today} (usage is kept {RETENTION_DAYS} days)")]
    OutOfRange { oldest: Day, today: Day },
}

impl Day {
    /// The UTC day `at` (epoch ms) falls on.
    pub fn of(at: Millis) -> Self {
        let at = chrono::DateTime::from_timestamp_millis(at).unwrap_or_default();
        Self(at.date_naive())
    }

    /// A day written `YYYY-MM-DD`, at most [`RETENTION_DAYS`] before `now`'s and not after it.
    pub fn parse(raw: &str, now: Millis) -> Result<Self, InvalidDay> {
        // Exactly ten characters: chrono would take `2026-1-7` or a leading `+`.
        if raw.len() != 10 {
            return Err(InvalidDay::Malformed);
        }
        let day = NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .map(Self)
            .map_err(|_| InvalidDay::Malformed)?;
        let today = Self::of(now);
        let oldest = Self(today.0 - TimeDelta::days(RETENTION_DAYS));
        if day < oldest || day > today {
            return Err(InvalidDay::OutOfRange { oldest, today });
        }
        Ok(day)
    }

    /// Its first millisecond.
    pub fn starts_at(self) -> Millis {
        self.0.and_time(NaiveTime::MIN).and_utc().timestamp_millis()
    }

    /// When its budget resets: the next UTC midnight.
    pub fn resets_at(self) -> Millis {
        self.starts_at() + 86_400_000
    }

    /// When its item expires (epoch seconds, the TTL): [`RETENTION_DAYS`] after the day ends.
    pub fn expires_at(self) -> i64 {
        self.resets_at() / 1000 + RETENTION_DAYS * 86_400
    }

    /// The key of `owner`'s usage item for this day.
    pub fn key(self, owner: &str) -> String {
        format!("{KEY_PREFIX}{owner}#{self}")
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.format("%Y-%m-%d"))
    }
}

/// Whole seconds from `now` to the next UTC midnight (at least 1): a `Retry-After`.
pub fn seconds_to_reset(now: Millis) -> u64 {
    let left = Day::of(now).resets_at() - now;
    ((left + 999) / 1000).max(1) as u64
}

/// One model's counters for a day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelUsage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Model calls that answered.
    pub requests: u64,
}

impl ModelUsage {
    /// Input and output tokens together, saturating.
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// `self` with `other` added, saturating (a model may report absurd counts; they must not panic).
    #[must_use]
    pub fn plus(self, other: ModelUsage) -> ModelUsage {
        ModelUsage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            requests: self.requests.saturating_add(other.requests),
        }
    }
}

/// One model call to count: its model and tokens (`requests` 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spend {
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Spend {
    /// As counters: one request.
    pub fn counters(&self) -> ModelUsage {
        ModelUsage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            requests: 1,
        }
    }
}

/// An owner's usage of one day, by model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DayUsage {
    pub models: BTreeMap<String, ModelUsage>,
    /// Every model's tokens together: what the budget counts (kept as its own counter, so the worker's
    /// `ADD` returns it).
    pub total_tokens: u64,
}

impl DayUsage {
    /// Adds one model call (the embedded store's `ADD`); the new total.
    pub fn add(&mut self, spend: &Spend) -> u64 {
        let counters = spend.counters();
        let entry = self.models.entry(spend.model.clone()).or_default();
        *entry = entry.plus(counters);
        self.total_tokens = self.total_tokens.saturating_add(counters.tokens());
        self.total_tokens
    }
}

/// The daily token budget of each user, when one is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Tokens (input and output, every model) per user per UTC day; at least 1.
    pub limit: u64,
}

impl Budget {
    /// From the configured number: 0 is no budget.
    pub fn from_limit(limit: u64) -> Option<Self> {
        (limit > 0).then_some(Self { limit })
    }

    /// Whether a user who used `used` tokens today may not start another agent run: at or over.
    pub fn exhausted(&self, used: u64) -> bool {
        used >= self.limit
    }

    /// Tokens left today.
    pub fn remaining(&self, used: u64) -> u64 {
        self.limit.saturating_sub(used)
    }
}

/// A model call counted: the day it counted on, the owner's tokens that day after it, and the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub day: Day,
    pub used: u64,
    pub budget: Option<Budget>,
}

impl Counted {
    /// Whether the owner is at or over the budget now.
    pub fn exhausted(&self) -> bool {
        self.budget.is_some_and(|b| b.exhausted(self.used))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: Millis = 1_796_644_800_000; // 2026-12-07T12:00:00Z

    #[test]
    fn a_day_is_the_utc_date_and_resets_at_the_next_midnight() {
        let day = Day::of(NOON);
        assert_eq!(day.to_string(), "2026-12-07");
        assert_eq!(day.resets_at() - NOON, 12 * 3_600_000);
        assert_eq!(seconds_to_reset(NOON), 12 * 3600);
        assert_eq!(seconds_to_reset(day.resets_at() - 1), 1);
        assert_eq!(Day::of(day.resets_at()).to_string(), "2026-12-08");
        assert_eq!(day.key("ada"), "use#ada#2026-12-07");
        assert_eq!(day.expires_at(), day.resets_at() / 1000 + 35 * 86_400);
    }

    #[test]
    fn a_day_parses_within_retention_only() {
        assert_eq!(Day::parse("2026-12-07", NOON).unwrap(), Day::of(NOON));
        assert!(Day::parse("2026-11-02", NOON).is_ok());
        for bad in [
            "2026-13-01",
            "2026-1-07",
            "yesterday",
            "",
            "+2026-12-07",
            "2026-12-07x",
        ] {
            assert_eq!(Day::parse(bad, NOON), Err(InvalidDay::Malformed), "{bad}");
        }
        for far in ["2026-11-01", "2026-12-08", "1970-01-01"] {
            assert!(
                matches!(Day::parse(far, NOON), Err(InvalidDay::OutOfRange { .. })),
                "{far}"
            );
        }
    }

    #[test]
    fn usage_adds_by_model_and_saturates() {
        let mut u = DayUsage::default();
        let spend = |model: &str, i| Spend {
            model: model.into(),
            input_tokens: i,
            output_tokens: 3,
        };
        assert_eq!(u.add(&spend("a", 10)), 13);
        assert_eq!(u.add(&spend("b", 10)), 26);
        assert_eq!(u.add(&spend("a", u64::MAX)), u64::MAX);
        assert_eq!(u.models["a"].requests, 2);
        assert_eq!(u.models["a"].input_tokens, u64::MAX);
        assert_eq!(u.models["b"].tokens(), 13);
        let b = Budget::from_limit(20).unwrap();
        assert!(!b.exhausted(19) && b.exhausted(20) && b.exhausted(21));
        assert_eq!(b.remaining(26), 0);
        assert_eq!(Budget::from_limit(0), None);
    }
}
