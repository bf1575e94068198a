//! Concurrency holds: a running job's member of a limit's ledger, carrying its own end.

use std::fmt;

use crate::job::{JobId, Millis};

pub use crate::slots::HOLD_PREFIX;

/// One job's hold on a concurrency limit: the member `{job_id}@{until}` (`until` in epoch ms, when
/// the hold lapses if its holder never gives it back: a crashed worker's hold frees itself). Two
/// attempts of one job (a duplicate delivery) hold different members, so one giving its own back
/// never frees the other's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hold {
    pub job_id: JobId,
    pub until: Millis,
}

impl Hold {
    /// Parses a stored member; `None` for anything a store did not write.
    pub fn parse(member: &str) -> Option<Self> {
        let (id, until) = member.split_once('@')?;
        Some(Self {
            job_id: JobId::parse(id).ok()?,
            until: until.parse().ok()?,
        })
    }

    /// Whether it has lapsed at `now`.
    pub fn expired(&self, now: Millis) -> bool {
        self.until < now
    }

    /// Whether a stored member is a lapsed hold (members that are not holds are left alone).
    pub fn lapsed(member: &str, now: Millis) -> bool {
        Self::parse(member).is_some_and(|h| h.expired(now))
    }

    /// The members of a page that are holds lapsed at `now`: what a full page is cleared of, and
    /// what the sweep prunes.
    pub fn lapsed_of(members: &[String], now: Millis) -> Vec<String> {
        members
            .iter()
            .filter(|m| Self::lapsed(m, now))
            .cloned()
            .collect()
    }

    /// How many of `holds` are live at `now`: what a limit counts.
    pub fn live<H: std::borrow::Borrow<Hold>>(
        holds: impl IntoIterator<Item = H>,
        now: Millis,
    ) -> u32 {
        holds
            .into_iter()
            .filter(|h| !h.borrow().expired(now))
            .count() as u32
    }
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.job_id, self.until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::{Ledger, PAGE_CAPACITY};

    #[test]
    fn holds_round_trip_and_lapse_after_their_end() {
        let h = Hold {
            job_id: JobId::generate(1_700_000_000_000),
            until: 1_700_000_060_000,
        };
        assert_eq!(Hold::parse(&h.to_string()), Some(h.clone()));
        assert!(!h.expired(h.until) && h.expired(h.until + 1));
        assert!(!Hold::lapsed("not-a-hold", i64::MAX));
    }

    /// DynamoDB's item size: a full page of holds, with the longest key, bills one write unit.
    #[test]
    fn a_full_page_of_holds_is_billed_one_write_unit() {
        let key = Ledger::limit(&"k".repeat(4096)).key(Some(416));
        let member = Hold {
            job_id: JobId::generate(1_700_000_000_000),
            until: 4_102_444_800_000, // 2100: thirteen digits
        }
        .to_string();
        let size =
            "job_id".len() + key.len() + "slots".len() + PAGE_CAPACITY as usize * member.len();
        assert!(size <= 1024, "{size} bytes");
    }
}
