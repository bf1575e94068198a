//! `JOBKIT_LIMITS`: kinds' limits from configuration, typed and validated once at start. They
//! override what the code registered, field by field, so an operator can tighten a kind during an
//! incident by redeploying configuration only:
//!
//! ```json
//! {"summarize": {"concurrency": 20,
//!                "concurrency_keys": [{"key": "user", "limit": 2}],
//!                "rate_limits": [{"per_second": 25, "key": "/customer_id"}]}}
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::{Key, Limits, Rate, RateLimit};

/// Why `JOBKIT_LIMITS` (or a registration) cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("JOBKIT_LIMITS is not valid: {0}")]
    Malformed(String),
    #[error("limit key {0:?} is none of `user`, `model` or a JSON Pointer such as `/customer_id`")]
    BadKey(String),
    #[error("kind {kind:?}: {what} must be at least 1")]
    Zero { kind: String, what: &'static str },
    #[error("kind {kind:?}: a rate limit needs exactly one of per_second, per_minute, per_hour")]
    RatePeriod { kind: String },
    #[error("JOBKIT_LIMITS names kind {0:?}, which is not registered")]
    UnknownKind(String),
}

/// What configuration says of each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsConfig {
    kinds: BTreeMap<String, KindLimitsConfig>,
}

/// One kind's limits in configuration: each field present replaces the code's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindLimitsConfig {
    pub concurrency: Option<u32>,
    pub concurrency_keys: Option<Vec<(Key, u32)>>,
    pub rate_limits: Option<Vec<RateLimit>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKind {
    concurrency: Option<u32>,
    concurrency_keys: Option<Vec<RawKeyed>>,
    rate_limits: Option<Vec<RawRate>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyed {
    key: Key,
    limit: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    per_second: Option<u32>,
    per_minute: Option<u32>,
    per_hour: Option<u32>,
    burst: Option<u32>,
    key: Option<Key>,
}

impl LimitsConfig {
    /// Parses the variable's JSON (empty: no limits). Zero limits, bad keys, unknown fields and
    /// rates without exactly one period are refused, naming the kind.
    pub fn parse(raw: &str) -> Result<Self, LimitsError> {
        if raw.trim().is_empty() {
            return Ok(Self::default());
        }
        let kinds: BTreeMap<String, RawKind> = serde_json::from_str(raw).map_err(|e| {
            // serde's message names the bad key's error, keep it.
            LimitsError::Malformed(e.to_string())
        })?;
        let kinds = kinds
            .into_iter()
            .map(|(kind, raw)| {
                let parsed = KindLimitsConfig::from_raw(&kind, raw)?;
                Ok((kind, parsed))
            })
            .collect::<Result<_, LimitsError>>()?;
        Ok(Self { kinds })
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }

    pub fn kinds(&self) -> impl Iterator<Item = (&str, &KindLimitsConfig)> {
        self.kinds.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Refuses a configuration naming a kind `known` does not know (a typo would limit nothing).
    pub fn check_kinds(&self, known: impl Fn(&str) -> bool) -> Result<(), LimitsError> {
        match self.kinds.keys().find(|k| !known(k)) {
            Some(k) => Err(LimitsError::UnknownKind(k.clone())),
            None => Ok(()),
        }
    }
}

impl KindLimitsConfig {
    fn from_raw(kind: &str, raw: RawKind) -> Result<Self, LimitsError> {
        let zero = |what| LimitsError::Zero {
            kind: kind.to_owned(),
            what,
        };
        if raw.concurrency == Some(0) {
            return Err(zero("concurrency"));
        }
        let keys = raw
            .concurrency_keys
            .map(|keys| {
                keys.into_iter()
                    .map(|k| match k.limit {
                        0 => Err(zero("a concurrency key's limit")),
                        n => Ok((k.key, n)),
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let rates = raw
            .rate_limits
            .map(|rates| {
                rates
                    .into_iter()
                    .map(|r| {
                        let periods = [(r.per_second, 1), (r.per_minute, 60), (r.per_hour, 3600)];
                        let mut set = periods.iter().filter_map(|(n, s)| n.map(|n| (n, *s)));
                        let (Some((count, secs)), None) = (set.next(), set.next()) else {
                            return Err(LimitsError::RatePeriod {
                                kind: kind.to_owned(),
                            });
                        };
                        if count == 0 || r.burst == Some(0) {
                            return Err(zero("a rate limit"));
                        }
                        let mut rate = Rate::new(count, Duration::from_secs(secs));
                        if let Some(b) = r.burst {
                            rate = rate.with_burst(b);
                        }
                        Ok(RateLimit { rate, key: r.key })
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            concurrency: raw.concurrency,
            concurrency_keys: keys,
            rate_limits: rates,
        })
    }

    /// `code`'s limits with every field this configuration sets replaced.
    pub fn over(&self, code: &Limits) -> Limits {
        Limits {
            concurrency: self.concurrency.or(code.concurrency),
            concurrency_keys: self
                .concurrency_keys
                .clone()
                .unwrap_or_else(|| code.concurrency_keys.clone()),
            rate_limits: self
                .rate_limits
                .clone()
                .unwrap_or_else(|| code.rate_limits.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issue_example_parses_into_typed_limits() {
        let c = LimitsConfig::parse(
            r#"{"summarize": {"concurrency": 20,
                "concurrency_keys": [{"key": "user", "limit": 2}],
                "rate_limits": [{"per_second": 25, "key": "/customer_id"}]}}"#,
        )
        .unwrap();
        let (kind, k) = c.kinds().next().unwrap();
        assert_eq!(kind, "summarize");
        assert_eq!(k.concurrency, Some(20));
        assert_eq!(k.concurrency_keys, Some(vec![(Key::User, 2)]));
        assert_eq!(
            k.rate_limits,
            Some(vec![
                RateLimit::per_second(25).key(Key::Input("/customer_id".into()))
            ])
        );
        assert!(LimitsConfig::parse("  ").unwrap().is_empty());
    }

    #[test]
    fn bad_limits_are_refused_with_what_is_wrong() {
        let err = |raw: &str| LimitsConfig::parse(raw).unwrap_err().to_string();
        assert!(err(r#"{"a": {"concurrency": 0}}"#).contains("concurrency must be at least 1"));
        assert!(
            err(r#"{"a": {"concurrency_keys": [{"key": "user", "limit": 0}]}}"#)
                .contains("at least 1")
        );
        assert!(err(r#"{"a": {"rate_limits": [{"per_second": 0}]}}"#).contains("at least 1"));
        assert!(
            err(r#"{"a": {"rate_limits": [{"per_second": 1, "per_minute": 1}]}}"#)
                .contains("exactly one")
        );
        assert!(err(r#"{"a": {"rate_limits": [{"burst": 1}]}}"#).contains("exactly one"));
        assert!(
            err(r#"{"a": {"concurrency_keys": [{"key": "customer", "limit": 1}]}}"#)
                .contains("JSON Pointer")
        );
        assert!(err(r#"{"a": {"concurency": 1}}"#).contains("unknown field"));
        assert!(err(r#"[1]"#).contains("not valid"));
        let c = LimitsConfig::parse(r#"{"a": {"concurrency": 1}}"#).unwrap();
        assert_eq!(
            c.check_kinds(|k| k == "b"),
            Err(LimitsError::UnknownKind("a".into()))
        );
        assert_eq!(c.check_kinds(|k| k == "a"), Ok(()));
    }

    #[test]
    fn configuration_overrides_code_field_by_field() {
        let code = Limits {
            concurrency: Some(20),
            concurrency_keys: vec![(Key::User, 2)],
            rate_limits: vec![RateLimit::per_second(25)],
        };
        let c = LimitsConfig::parse(r#"{"a": {"concurrency": 5, "rate_limits": []}}"#).unwrap();
        let (_, k) = c.kinds().next().unwrap();
        assert_eq!(
            k.over(&code),
            Limits {
                concurrency: Some(5),
                concurrency_keys: vec![(Key::User, 2)],
                rate_limits: vec![],
            }
        );
    }
}
