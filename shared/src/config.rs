//! Typed configuration, read once at start from environment variables (set by template.yaml) and
//! validated there, so a bad deployment fails its first invocation with a message naming the variable.

use std::time::Duration;

use crate::retry::Backoff;

/// Everything the functions need to know about their deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `JOBKIT_TABLE`: the jobs table.
    pub table: String,
    /// `JOBKIT_QUEUE_URL`: the jobs queue.
    pub queue_url: String,
    /// `JOBKIT_DLQ_URL`: the dead-letter queue, for the DLQ tools (optional for the functions).
    pub dlq_url: Option<String>,
    /// `JOBKIT_CONTAINER_QUEUE_URL`: the queue of container-only kinds, which `jobctl worker --container`
    /// consumes. Without it, submitting such a kind is refused (nothing would run it).
    pub container_queue_url: Option<String>,
    /// `JOBKIT_CONTAINER_DLQ_URL`: the container queue's dead-letter queue, for the DLQ tools.
    pub container_dlq_url: Option<String>,
    /// `JOBKIT_MAX_ATTEMPTS` (default 5): the queue's maxReceiveCount, mirrored.
    pub max_attempts: u32,
    /// `JOBKIT_JOB_TTL_DAYS` (default 7): how long finished job records are kept.
    pub job_ttl: Duration,
    /// `JOBKIT_RETRY_BASE_SECS` (2) and `JOBKIT_RETRY_MAX_SECS` (900): retry backoff.
    pub backoff: Backoff,
    /// `JOBKIT_WORKER_CONCURRENCY` (default 10): jobs of one batch run at once.
    pub worker_concurrency: usize,
    /// `JOBKIT_MAX_QUEUE_DEPTH` (default 10000; 0 = no bound): submit answers 429 at this queue depth.
    pub max_queue_depth: u64,
    /// `JOBKIT_MAX_IN_FLIGHT_PER_USER` (default 100; 0 = no cap): jobs one user may have in flight.
    pub max_in_flight_per_user: u32,
    /// `JOBKIT_MAX_TOKENS_PER_USER_PER_DAY` (default 0 = off): model tokens (input and output, every
    /// model) one user may spend a UTC day; past it agent submits answer 429 and a run stops after
    /// the turn that crossed it (see [`crate::usage`]).
    pub max_tokens_per_user_per_day: u64,
    /// The stack's signing secret (page cursors): `JOBKIT_SIGNING_SECRET` (the value, for local runs)
    /// or `JOBKIT_SIGNING_SECRET_ARN` (a Secrets Manager secret, read once per cold start).
    pub signing_secret: Option<SecretSource>,
    /// `JOBKIT_DELIVERIES_QUEUE_URL`: the webhook deliveries queue. Without it, `callback_url` is refused
    /// at submit (nothing would deliver it).
    pub deliveries_queue_url: Option<String>,
    /// The webhook signing secrets (`whsec_…`, two during a rotation, space-separated):
    /// `JOBKIT_WEBHOOK_SECRET` (the value) or `JOBKIT_WEBHOOK_SECRET_ARN` (Secrets Manager). Only the
    /// delivery function reads it.
    pub webhook_secret: Option<SecretSource>,
    /// `JOBKIT_EVENTS_URL`: the events endpoint's base URL (the events function's Function URL); `GET
    /// /jobs/{id}` then hands out `events_url`s.
    pub events_url: Option<String>,
    /// `JOBKIT_API_URL`: the API's public base URL (API Gateway's endpoint); `GET /jobs/{id}` and the
    /// `job.waiting` webhook event then hand out waitpoints' `complete_url`s under it.
    pub api_url: Option<String>,
    /// `JOBKIT_METRICS_NAMESPACE` (default `jobkit`): the CloudWatch namespace of the kit's metrics.
    pub metrics_namespace: String,
    /// `JOBKIT_SERVICE` (default `jobkit`): the `Service` dimension on every metric (the stack's name).
    pub service: String,
    /// `JOBKIT_WORKER_TIMEOUT_SECS` (default 900): the worker function's timeout, so local runs give each
    /// invocation the same deadline.
    pub worker_timeout: Duration,
    /// `JOBKIT_FAIR_QUEUES` (default true): job messages carry their owner's group (`MessageGroupId`), so
    /// the queue serves tenants fairly (see [`crate::queue`]). `false` sends without it.
    pub fair_queues: bool,
    /// Kinds' limits from `JOBKIT_LIMITS` (JSON, see [`crate::limits`]): they override the code's.
    pub limits: crate::limits::LimitsConfig,
}

/// Where a secret comes from.
#[derive(Clone, PartialEq)]
pub enum SecretSource {
    Value(String),
    SecretsManager { arn: String },
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Value(..)"),
            Self::SecretsManager { arn } => write!(f, "SecretsManager({arn})"),
        }
    }
}

/// A variable that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is not set")]
    Missing(&'static str),
    #[error("environment variable {name}={value:?} is invalid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get`, so tests need not touch the process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let required = |name: &'static str| {
            get(name)
                .filter(|v| !v.is_empty())
                .ok_or(ConfigError::Missing(name))
        };
        let number =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                let Some(raw) = get(name).filter(|v| !v.is_empty()) else {
                    return Ok(default);
                };
                let invalid = |reason: String| ConfigError::Invalid {
                    name,
                    value: raw.clone(),
                    reason,
                };
                let n: u64 = raw.trim().parse().map_err(|e| invalid(format!("{e}")))?;
                if (min..=max).contains(&n) {
                    Ok(n)
                } else {
                    Err(invalid(format!("must be between {min} and {max}")))
                }
            };
        // A secret's value (local runs), else its Secrets Manager ARN (deployed).
        let secret = |value: &str, arn: &str| {
            get(value)
                .filter(|v| !v.is_empty())
                .map(SecretSource::Value)
                .or_else(|| {
                    get(arn)
                        .filter(|v| !v.is_empty())
                        .map(|arn| SecretSource::SecretsManager { arn })
                })
        };
        let flag = |name: &'static str, default: bool| -> Result<bool, ConfigError> {
            match get(name).filter(|v| !v.is_empty()) {
                None => Ok(default),
                Some(raw) => match raw.trim().to_ascii_lowercase().as_str() {
                    "true" | "1" => Ok(true),
                    "false" | "0" => Ok(false),
                    _ => Err(ConfigError::Invalid {
                        name,
                        value: raw,
                        reason: "must be true or false".into(),
                    }),
                },
            }
        };
        let base = number("JOBKIT_RETRY_BASE_SECS", 2, 0, 43_200)?;
        let max = number("JOBKIT_RETRY_MAX_SECS", 900, base.max(1), 43_200)?;
        Ok(Self {
            table: required("JOBKIT_TABLE")?,
            queue_url: required("JOBKIT_QUEUE_URL")?,
            dlq_url: get("JOBKIT_DLQ_URL").filter(|v| !v.is_empty()),
            container_queue_url: get("JOBKIT_CONTAINER_QUEUE_URL").filter(|v| !v.is_empty()),
            container_dlq_url: get("JOBKIT_CONTAINER_DLQ_URL").filter(|v| !v.is_empty()),
            max_attempts: number("JOBKIT_MAX_ATTEMPTS", 5, 1, 1000)? as u32,
            job_ttl: Duration::from_secs(number("JOBKIT_JOB_TTL_DAYS", 7, 1, 3650)? * 86_400),
            backoff: Backoff::new(Duration::from_secs(base), Duration::from_secs(max)),
            worker_concurrency: number("JOBKIT_WORKER_CONCURRENCY", 10, 1, 1000)? as usize,
            max_queue_depth: number("JOBKIT_MAX_QUEUE_DEPTH", 10_000, 0, 1 << 40)?,
            // The owner's slots live in one item (400 KB): 10,000 job ids fit.
            max_in_flight_per_user: number("JOBKIT_MAX_IN_FLIGHT_PER_USER", 100, 0, 10_000)? as u32,
            max_tokens_per_user_per_day: number(
                "JOBKIT_MAX_TOKENS_PER_USER_PER_DAY",
                0,
                0,
                u64::MAX,
            )?,
            signing_secret: secret("JOBKIT_SIGNING_SECRET", "JOBKIT_SIGNING_SECRET_ARN"),
            deliveries_queue_url: get("JOBKIT_DELIVERIES_QUEUE_URL").filter(|v| !v.is_empty()),
            webhook_secret: secret("JOBKIT_WEBHOOK_SECRET", "JOBKIT_WEBHOOK_SECRET_ARN"),
            events_url: get("JOBKIT_EVENTS_URL").filter(|v| !v.is_empty()),
            api_url: get("JOBKIT_API_URL").filter(|v| !v.is_empty()),
            metrics_namespace: get("JOBKIT_METRICS_NAMESPACE")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "jobkit".into()),
            service: get("JOBKIT_SERVICE")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "jobkit".into()),
            worker_timeout: Duration::from_secs(number("JOBKIT_WORKER_TIMEOUT_SECS", 900, 1, 900)?),
            fair_queues: flag("JOBKIT_FAIR_QUEUES", true)?,
            limits: {
                let raw = get("JOBKIT_LIMITS").unwrap_or_default();
                crate::limits::LimitsConfig::parse(&raw).map_err(|e| ConfigError::Invalid {
                    name: "JOBKIT_LIMITS",
                    value: raw.clone(),
                    reason: e.to_string(),
                })?
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] = [("JOBKIT_TABLE", "jobs"), ("JOBKIT_QUEUE_URL", "http://q")];

    #[test]
    fn defaults_apply_when_only_the_resources_are_set() {
        let c = load(&BASE).unwrap();
        assert_eq!(c.max_attempts, 5);
        assert_eq!(c.job_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(
            c.backoff,
            Backoff::new(Duration::from_secs(2), Duration::from_secs(900))
        );
        assert_eq!(c.worker_concurrency, 10);
        assert_eq!(c.dlq_url, None);
        assert_eq!((c.max_queue_depth, c.max_in_flight_per_user), (10_000, 100));
        assert!(c.fair_queues);
    }

    #[test]
    fn fair_queues_can_be_turned_off_and_nonsense_is_named() {
        let with = |v: &'static str| {
            let mut vars = BASE.to_vec();
            vars.push(("JOBKIT_FAIR_QUEUES", v));
            load(&vars)
        };
        assert!(!with("false").unwrap().fair_queues);
        assert!(with("TRUE").unwrap().fair_queues);
        assert!(matches!(
            with("maybe"),
            Err(ConfigError::Invalid {
                name: "JOBKIT_FAIR_QUEUES",
                ..
            })
        ));
    }

    #[test]
    fn a_missing_resource_is_named() {
        assert_eq!(
            load(&BASE[..1]),
            Err(ConfigError::Missing("JOBKIT_QUEUE_URL"))
        );
        assert_eq!(
            load(&[("JOBKIT_TABLE", ""), BASE[1]]),
            Err(ConfigError::Missing("JOBKIT_TABLE"))
        );
    }

    #[test]
    fn bad_numbers_are_rejected_with_the_variable_and_reason() {
        let mut vars = BASE.to_vec();
        vars.push(("JOBKIT_MAX_ATTEMPTS", "many"));
        assert!(matches!(
            load(&vars),
            Err(ConfigError::Invalid {
                name: "JOBKIT_MAX_ATTEMPTS",
                ..
            })
        ));
        let mut vars = BASE.to_vec();
        vars.push(("JOBKIT_WORKER_CONCURRENCY", "0"));
        let err = load(&vars).unwrap_err().to_string();
        assert!(
            err.contains("JOBKIT_WORKER_CONCURRENCY") && err.contains("between 1 and 1000"),
            "{err}"
        );
        let mut vars = BASE.to_vec();
        vars.extend([
            ("JOBKIT_RETRY_BASE_SECS", "10"),
            ("JOBKIT_RETRY_MAX_SECS", "5"),
        ]);
        assert!(matches!(
            load(&vars),
            Err(ConfigError::Invalid {
                name: "JOBKIT_RETRY_MAX_SECS",
                ..
            })
        ));
    }
}
