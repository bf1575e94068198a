//! Kind-level flow control: how many jobs of a kind run at once (in all, and per key), and how fast
//! they start (token buckets). Declared in code at registration and in configuration
//! (`JOBKIT_LIMITS`, which wins), enforced by the worker before it claims a job, across every worker
//! instance: the counters are items in the table.
//!
//! - **Concurrency** is a ledger of holds ([`crate::slots`]: pages of members, each add conditional on
//!   its page's room) under `lim#<hash of kind[, key, value]>`. A hold is the member `{job}@{until}`:
//!   it carries its own end, so a crashed worker's hold frees itself — a writer that finds a page full
//!   drops the expired members and tries again, and the sweep drops what is left.
//! - **Rates** are token buckets ([`bucket`]), one item `rate#<hash of kind[, key, value]>`, one
//!   conditional write per take (none when this instance already knows the bucket is empty).
//! - A job that would exceed a limit is **deferred** ([`Deferred`]): not claimed, no attempt used, its
//!   message sent again with a delay of about when a slot frees (with jitter) and this one
//!   acknowledged. Not a visibility change: SQS counts every receive of a message towards the DLQ, so a
//!   job deferred often would be dead-lettered without ever running.
//!
//! What a job holds: a concurrency hold only while it runs. A parked (`waiting`) or retrying job holds
//! none; it takes one again when it runs again.

pub mod bucket;
mod config;
mod holds;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::Digest;

pub use bucket::{Rate, Take};
pub use config::{KindLimitsConfig, LimitsConfig, LimitsError};
pub use holds::{HOLD_PREFIX, Hold};

use crate::job::Job;
use crate::json::Json;
use crate::slots::Ledger;

/// What a limit counts per: the whole kind ([`Limits::concurrency`]) or one of these.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// The job's owner.
    User,
    /// A value in the job's input, by JSON Pointer (RFC 6901), e.g. `/customer_id`.
    Input(String),
    /// The model the job calls: for the `agent` kind, its agent's model; else the input's `/model`.
    Model,
}

impl Key {
    /// Parses `user`, `model` or a JSON Pointer (`/customer_id`).
    pub fn parse(s: &str) -> Result<Self, LimitsError> {
        match s {
            "user" => Ok(Self::User),
            "model" => Ok(Self::Model),
            p if p.starts_with('/') => {
                // RFC 6901: `~` is only ever `~0` or `~1`.
                let mut chars = p.chars().peekable();
                while let Some(c) = chars.next() {
                    if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
                        return Err(LimitsError::BadKey(s.to_owned()));
                    }
                }
                Ok(Self::Input(p.to_owned()))
            }
            _ => Err(LimitsError::BadKey(s.to_owned())),
        }
    }

    /// The key's value for `job` (`None`: the job has none, so this limit does not apply to it).
    fn value(&self, job: &Job, model: &dyn Fn(&Json) -> Option<String>) -> Option<String> {
        match self {
            Self::User => Some(job.user_id.clone()),
            Self::Model => model(&job.input),
            Self::Input(pointer) => match job.input.to_value().pointer(pointer)? {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            },
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User => f.write_str("user"),
            Self::Model => f.write_str("model"),
            Self::Input(p) => f.write_str(p),
        }
    }
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A rate limit: tokens of [`Rate`], one per job start, per key value (or for the whole kind).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: Rate,
    pub key: Option<Key>,
}

impl RateLimit {
    /// `n` job starts per second (bursts of `n`).
    pub fn per_second(n: u32) -> Self {
        Self::new(Rate::per_second(n))
    }

    /// `n` job starts per minute (bursts of `n`).
    pub fn per_minute(n: u32) -> Self {
        Self::new(Rate::per_minute(n))
    }

    pub fn new(rate: Rate) -> Self {
        Self { rate, key: None }
    }

    /// Counted per value of `key` instead of for the whole kind.
    pub fn key(mut self, key: Key) -> Self {
        self.key = Some(key);
        self
    }

    /// Bursts of up to `n` starts.
    pub fn burst(mut self, n: u32) -> Self {
        self.rate = self.rate.with_burst(n);
        self
    }
}

/// A kind's limits. Empty (the default) costs nothing: the worker claims as it always has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    /// At most this many jobs of the kind run at once, over all workers.
    pub concurrency: Option<u32>,
    /// And at most this many per value of each key.
    pub concurrency_keys: Vec<(Key, u32)>,
    pub rate_limits: Vec<RateLimit>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.concurrency.is_none()
            && self.concurrency_keys.is_empty()
            && self.rate_limits.is_empty()
    }

    /// The concrete counters `job` of `kind` must get through, in the order they are taken.
    pub fn gates(
        &self,
        kind: &str,
        job: &Job,
        model: &dyn Fn(&Json) -> Option<String>,
    ) -> Vec<Gate> {
        let mut gates = Vec::new();
        if let Some(cap) = self.concurrency {
            gates.push(Gate::concurrency(kind, None, cap));
        }
        for (key, cap) in &self.concurrency_keys {
            if let Some(value) = key.value(job, model) {
                gates.push(Gate::concurrency(kind, Some((key, &value)), *cap));
            }
        }
        for limit in &self.rate_limits {
            let value = match &limit.key {
                Some(key) => match key.value(job, model) {
                    Some(v) => Some((key, v)),
                    None => continue,
                },
                None => None,
            };
            gates.push(Gate {
                counter: Counter::Rate {
                    bucket: bucket_key(kind, value.as_ref().map(|(k, v)| (*k, v.as_str()))),
                    rate: limit.rate,
                },
                label: label(value.as_ref().map(|(k, _)| *k)),
            });
        }
        gates
    }
}

/// One counter a job must get through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub counter: Counter,
    /// What `GET /jobs/{id}` names as the key it waits on: `kind`, `user`, `model` or the pointer.
    pub label: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Counter {
    /// A hold on a page of `ledger`, whose holders are capped at `cap`.
    Concurrency { ledger: Ledger, cap: u32 },
    /// A token of the bucket item `bucket`.
    Rate { bucket: String, rate: Rate },
}

impl Gate {
    fn concurrency(kind: &str, key: Option<(&Key, &str)>, cap: u32) -> Self {
        Self {
            counter: Counter::Concurrency {
                ledger: Ledger::limit(&scope(kind, key)),
                cap,
            },
            label: label(key.map(|(k, _)| k)),
        }
    }

    pub fn reason(&self) -> DeferReason {
        match self.counter {
            Counter::Concurrency { .. } => DeferReason::Concurrency,
            Counter::Rate { .. } => DeferReason::Rate,
        }
    }
}

fn label(key: Option<&Key>) -> String {
    key.map_or_else(|| "kind".to_owned(), ToString::to_string)
}

/// What a counter is named after: the kind, and the key and its value.
fn scope(kind: &str, key: Option<(&Key, &str)>) -> String {
    match key {
        None => kind.to_owned(),
        Some((k, v)) => format!("{kind}\u{0}{k}\u{0}{v}"),
    }
}

/// The prefix of rate buckets' item keys.
pub const BUCKET_PREFIX: &str = "rate#";

/// The item key of a rate bucket: hashed, so a key value (an email, say) says nothing in the table.
pub fn bucket_key(kind: &str, key: Option<(&Key, &str)>) -> String {
    named_bucket(&scope(kind, key))
}

/// The item key of the bucket named `name` (other users of buckets, e.g. the agent loop's per-model
/// limits, name theirs so they cannot collide with a kind's).
pub fn named_bucket(name: &str) -> String {
    let hash = sha2::Sha256::digest(name.as_bytes());
    format!("{BUCKET_PREFIX}{}", hex::encode(&hash[..16]))
}

// On the job record (a field of it), so defined there.
pub use crate::job::{DeferReason, Deferred};

/// Each kind's limits, as registered in code and then overridden by configuration.
pub type KindLimits = BTreeMap<String, Limits>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;

    fn job(input: serde_json::Value) -> Job {
        Job::new(
            NewJob {
                user_id: "alice".into(),
                kind: "summarize".into(),
                input: Json::encode(&input).unwrap(),
                max_attempts: 3,
                ttl_secs: 60,
                callback_url: None,
                counted: false,
            },
            1,
        )
    }

    #[test]
    fn keys_parse_from_names_and_json_pointers_and_reject_the_rest() {
        assert_eq!(Key::parse("user").unwrap(), Key::User);
        assert_eq!(Key::parse("model").unwrap(), Key::Model);
        assert_eq!(Key::parse("/a~1b/0").unwrap(), Key::Input("/a~1b/0".into()));
        for bad in ["", "customer_id", "/a~2", "/a~", "User"] {
            assert!(Key::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_job_meets_one_gate_per_limit_whose_key_it_has() {
        let limits = Limits {
            concurrency: Some(20),
            concurrency_keys: vec![(Key::User, 2), (Key::Input("/missing".into()), 1)],
            rate_limits: vec![RateLimit::per_second(25).key(Key::Input("/customer_id".into()))],
        };
        let no_model = |_: &Json| None;
        let a = limits.gates(
            "summarize",
            &job(serde_json::json!({"customer_id": 7})),
            &no_model,
        );
        let labels: Vec<&str> = a.iter().map(|g| g.label.as_str()).collect();
        assert_eq!(labels, ["kind", "user", "/customer_id"]);
        let b = limits.gates(
            "summarize",
            &job(serde_json::json!({"customer_id": 8})),
            &no_model,
        );
        assert_eq!(a[..2], b[..2], "same kind and user: same ledgers");
        assert_ne!(a[2], b[2], "another customer: another bucket");
        assert!(Limits::default().is_empty());
    }
}
