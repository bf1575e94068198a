//! Per-model rate limits of the agent loop: requests and tokens per minute per model id, shared by every
//! worker through token buckets in the table ([`JobContext::take_tokens`], [`crate::limits::bucket`]),
//! so a model call waits for capacity instead of drawing a 429.
//!
//! - Before each model call (inside its turn's step, so a replayed turn takes nothing) one request is
//!   taken from `model-rpm#<id>` and the request's estimated input tokens from `model-tpm#<id>`; the
//!   reply's output tokens are taken after it (best effort: a take the bucket refuses is not owed).
//! - Short waits (up to [`MAX_INLINE_WAIT`], and not past the yield point) are slept in process, with
//!   jitter; a longer one parks the job with a durable sleep ([`JobContext::sleep`]: no worker, no
//!   message while it waits; the attempt is given back), and the turn takes again when it runs again.
//! - A 429 that still comes back (another client of the same account, a limit set too high) halves
//!   this process's rate for the model, which recovers linearly over [`RECOVERY`] (AIMD); the call is
//!   taken again at the lower rate, up to [`THROTTLED_RETRIES`] times before the job's own retry.
//! - Bursts: one second's worth of requests (`rpm / 60`), ten seconds' worth of tokens (`tpm / 6`), so
//!   a minute's allowance is spread over the minute rather than spent at its start.
//!
//! Configured per model id in code ([`super::Agents::with_model_limits`]) and by `JOBKIT_MODEL_LIMITS`
//! (`{"model-id": {"rpm": 500, "tpm": 200000}}`), which wins per model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::handler::{JobContext, JobError};
use crate::limits::{Rate, Take};

use super::model::{ModelReply, ModelRequest};

/// The environment variable of model limits.
pub const ENV: &str = "JOBKIT_MODEL_LIMITS";

/// The longest wait slept in process; a longer one parks the job.
pub const MAX_INLINE_WAIT: Duration = Duration::from_secs(5);

/// How long a halved rate takes to recover fully.
pub const RECOVERY: Duration = Duration::from_secs(60);

/// The lowest a 429 can push a model's rate, as a share of its limit.
const MIN_FACTOR: f64 = 1.0 / 16.0;

/// 429s one call absorbs (each lowering the rate and waiting again) before it fails its attempt.
pub const THROTTLED_RETRIES: u32 = 3;

/// One model's limits; either may be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelLimit {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens (input and output) per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
}

/// Limits by model id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelLimits(BTreeMap<String, ModelLimit>);

/// `JOBKIT_MODEL_LIMITS` does not parse, or sets a zero limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {ENV}={value:?} is invalid: {reason}")]
pub struct ModelLimitsError {
    pub value: String,
    pub reason: String,
}

impl ModelLimits {
    /// Parses `{"model-id": {"rpm": n, "tpm": n}}` (empty: none).
    pub fn parse(raw: &str) -> Result<Self, ModelLimitsError> {
        let invalid = |reason: String| ModelLimitsError {
            value: raw.to_owned(),
            reason,
        };
        if raw.trim().is_empty() {
            return Ok(Self::default());
        }
        let limits: Self = serde_json::from_str(raw).map_err(|e| invalid(e.to_string()))?;
        for (model, l) in &limits.0 {
            if l.rpm == Some(0) || l.tpm == Some(0) {
                return Err(invalid(format!(
                    "{model:?}: a limit must be at least 1 (leave it out for none)"
                )));
            }
        }
        Ok(limits)
    }

    /// From `JOBKIT_MODEL_LIMITS` (none when unset).
    pub fn from_env() -> Result<Self, ModelLimitsError> {
        Self::parse(&std::env::var(ENV).unwrap_or_default())
    }

    /// With `limit` for `model`.
    pub fn with(mut self, model: impl Into<String>, limit: ModelLimit) -> Self {
        self.0.insert(model.into(), limit);
        self
    }

    /// These limits over `code`'s: a model these name takes these.
    pub fn over(self, mut code: Self) -> Self {
        code.0.extend(self.0);
        code
    }

    pub fn get(&self, model: &str) -> Option<&ModelLimit> {
        self.0
            .get(model)
            .filter(|l| l.rpm.is_some() || l.tpm.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A model's rate, lowered after a 429: its share of the limit, as of `at`.
#[derive(Debug, Clone, Copy)]
struct Slowdown {
    factor: f64,
    at: Instant,
}

impl Slowdown {
    /// The share now: recovering linearly to 1 over [`RECOVERY`].
    fn factor(&self, now: Instant) -> f64 {
        let recovered = now.duration_since(self.at).as_secs_f64() / RECOVERY.as_secs_f64();
        (self.factor + recovered).min(1.0)
    }
}

/// What the agent loop's model calls take from: the limits and this process's slowdowns.
#[derive(Debug, Default)]
pub(super) struct Throttle {
    limits: ModelLimits,
    slowdowns: Mutex<HashMap<String, Slowdown>>,
}

/// A rough count of a request's input tokens (about 4 bytes a token), for the take before the call.
fn estimate_tokens(request: &ModelRequest) -> u32 {
    let bytes = serde_json::to_string(request).map_or(0, |s| s.len());
    u32::try_from(bytes / 4).unwrap_or(u32::MAX).max(1)
}

impl Throttle {
    pub(super) fn new(limits: ModelLimits) -> Self {
        Self {
            limits,
            slowdowns: Mutex::default(),
        }
    }

    pub(super) fn limits(&self) -> &ModelLimits {
        &self.limits
    }

    fn slowdowns(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slowdown>> {
        self.slowdowns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This process's share of `model`'s limits now.
    fn factor(&self, model: &str) -> f64 {
        self.slowdowns()
            .get(model)
            .map_or(1.0, |s| s.factor(Instant::now()))
    }

    /// A 429 came back: halve the share (not below [`MIN_FACTOR`]).
    fn lower(&self, model: &str) {
        let now = Instant::now();
        let factor = (self.factor(model) / 2.0).max(MIN_FACTOR);
        self.slowdowns()
            .insert(model.to_owned(), Slowdown { factor, at: now });
        tracing::warn!(
            model,
            share = factor,
            "the model throttled a call within its limits; lowering the rate"
        );
    }

    /// The request and token buckets' rates for `model` at this process's share.
    fn rates(&self, model: &str, limit: &ModelLimit) -> (Option<Rate>, Option<Rate>) {
        let share = self.factor(model);
        let scaled = |n: u32| ((f64::from(n) * share) as u32).max(1);
        let minute = Duration::from_secs(60);
        let requests = limit.rpm.map(|n| {
            let n = scaled(n);
            Rate::new(n, minute).with_burst(n / 60)
        });
        let tokens = limit.tpm.map(|n| {
            let n = scaled(n);
            Rate::new(n, minute).with_burst(n / 6)
        });
        (requests, tokens)
    }

    /// Waits until `request` may be sent to its model (see the module's doc). `name` names this call's
    /// durable sleeps (stable across attempts: the turn).
    async fn acquire(
        &self,
        ctx: &JobContext,
        request: &ModelRequest,
        name: &str,
    ) -> Result<(), JobError> {
        let model = request.model.as_str();
        let Some(limit) = self.limits.get(model).copied() else {
            return Ok(());
        };
        let tokens = estimate_tokens(request);
        let mut have_request = false;
        let mut parks = 0;
        loop {
            let (requests, token_rate) = self.rates(model, &limit);
            let mut wait = None;
            if let (Some(rate), false) = (requests, have_request) {
                match ctx
                    .take_tokens(&format!("model-rpm#{model}"), &rate, 1)
                    .await?
                {
                    Take::Taken => have_request = true,
                    Take::Wait(w) => wait = Some(w),
                }
            }
            if let (Some(rate), None) = (token_rate, wait) {
                match ctx
                    .take_tokens(&format!("model-tpm#{model}"), &rate, tokens)
                    .await?
                {
                    Take::Taken => return Ok(()),
                    Take::Wait(w) => wait = Some(w),
                }
            }
            let Some(wait) = wait else {
                return Ok(());
            };
            // Short: slept here, with up to a tenth more so waiters do not all come back at once.
            let wait = wait.mul_f64(1.0 + rand::random::<f64>() / 10.0);
            let room = ctx.remaining().is_none_or(|r| r > wait * 2);
            if wait <= MAX_INLINE_WAIT && room {
                ctx.until_cancelled(async {
                    tokio::time::sleep(wait).await;
                    Ok(())
                })
                .await?;
                continue;
            }
            // Long: the job parks. A replay finds the sleeps it already took settled and goes on.
            parks += 1;
            tracing::info!(
                model,
                wait_ms = wait.as_millis() as u64,
                "model rate limit: parking the job until there is capacity"
            );
            ctx.sleep(&format!("{name}-rate-{parks}"), wait).await?;
            have_request = false;
        }
    }

    /// Calls `call` for `request` within its model's limits: takes capacity first, and on a 429
    /// lowers the rate and takes again, up to [`THROTTLED_RETRIES`] times. Without limits for the
    /// model, just the call.
    pub(super) async fn call<F, Fut>(
        &self,
        ctx: &JobContext,
        request: &ModelRequest,
        name: &str,
        call: F,
    ) -> Result<ModelReply, JobError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<ModelReply, super::ModelError>>,
    {
        let model = request.model.as_str();
        let Some(limit) = self.limits.get(model).copied() else {
            return call().await.map_err(JobError::from);
        };
        let mut throttled = 0;
        loop {
            self.acquire(ctx, request, name).await?;
            match call().await {
                Ok(reply) => {
                    self.settle(ctx, model, &limit, &reply).await;
                    return Ok(reply);
                }
                Err(e @ super::ModelError::Throttled { .. }) if throttled < THROTTLED_RETRIES => {
                    throttled += 1;
                    self.lower(model);
                    tracing::debug!(error = %e, throttled, "retrying a throttled model call");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// After a reply: its output tokens are taken too (best effort; what the bucket refuses is not
    /// owed: the estimate before the call was of the input only).
    async fn settle(&self, ctx: &JobContext, model: &str, limit: &ModelLimit, reply: &ModelReply) {
        let (_, Some(rate)) = self.rates(model, limit) else {
            return;
        };
        let out = u32::try_from(reply.usage.output_tokens).unwrap_or(u32::MAX);
        if out > 0
            && let Err(e) = ctx
                .take_tokens(&format!("model-tpm#{model}"), &rate, out)
                .await
        {
            tracing::warn!(error = %e, "could not count a reply's tokens");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{Attached, Attempt};
    use crate::job::{JobId, Progress};
    use crate::json::Json;
    use crate::waitpoint::Waitpoint;
    use async_trait::async_trait;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn limits_parse_refuse_zero_and_configuration_wins_per_model() {
        let env = ModelLimits::parse(r#"{"a": {"rpm": 60}, "b": {"tpm": 1000}}"#).unwrap();
        assert_eq!(env.get("a").unwrap().rpm, Some(60));
        assert!(env.get("c").is_none());
        assert!(ModelLimits::parse("").unwrap().is_empty());
        for bad in [r#"{"a": {"rpm": 0}}"#, r#"{"a": {"rps": 1}}"#, "[1]"] {
            let e = ModelLimits::parse(bad).unwrap_err();
            assert!(e.to_string().contains(ENV), "{e}");
        }
        let code = ModelLimits::default()
            .with(
                "a",
                ModelLimit {
                    rpm: Some(1),
                    tpm: Some(5),
                },
            )
            .with(
                "z",
                ModelLimit {
                    rpm: Some(2),
                    tpm: None,
                },
            );
        let both = env.over(code);
        assert_eq!(
            both.get("a"),
            Some(&ModelLimit {
                rpm: Some(60),
                tpm: None
            })
        );
        assert_eq!(both.get("z").unwrap().rpm, Some(2));
    }

    #[test]
    fn a_429_halves_the_share_which_recovers_over_time() {
        let t = Throttle::new(ModelLimits::default());
        assert_eq!(t.factor("m"), 1.0);
        t.lower("m");
        t.lower("m");
        assert!((t.factor("m") - 0.25).abs() < 0.01);
        let limit = ModelLimit {
            rpm: Some(600),
            tpm: Some(60_000),
        };
        let (requests, tokens) = t.rates("m", &limit);
        assert_eq!((requests.unwrap().count, requests.unwrap().burst), (150, 2));
        assert_eq!(
            (tokens.unwrap().count, tokens.unwrap().burst),
            (15_000, 2_500)
        );
        // Recovered linearly: a quarter of RECOVERY later, half the limit.
        t.slowdowns().get_mut("m").unwrap().at -= RECOVERY / 4;
        assert!((t.factor("m") - 0.5).abs() < 0.01);
        for _ in 0..10 {
            t.lower("m");
        }
        assert!(t.factor("m") >= MIN_FACTOR);
    }

    /// An attempt whose buckets always say "wait a minute", and whose waitpoints are all pending.
    #[derive(Default)]
    struct Empty {
        takes: AtomicU32,
    }

    #[async_trait]
    impl Attempt for Empty {
        async fn save_checkpoint(&self, _: Json) -> Result<(), JobError> {
            Ok(())
        }
        async fn progress(&self, _: Progress) -> Result<(), JobError> {
            Ok(())
        }
        fn cancellation(&self) -> tokio_util::sync::CancellationToken {
            tokio_util::sync::CancellationToken::new()
        }
        async fn step(&self, _: &str) -> Result<Option<Json>, JobError> {
            Ok(None)
        }
        async fn record_step(
            &self,
            _: &str,
            value: Json,
            _: crate::steps::StepMeta,
        ) -> Result<Json, JobError> {
            Ok(value)
        }
        async fn waitpoint(&self, name: &str, _: Duration) -> Result<Waitpoint, JobError> {
            Ok(Waitpoint::pending(name, 0))
        }
        async fn take_tokens(&self, _: &str, _: &Rate, _: u32) -> Result<Take, JobError> {
            self.takes.fetch_add(1, Ordering::SeqCst);
            Ok(Take::Wait(Duration::from_secs(60)))
        }
    }

    #[tokio::test]
    async fn a_long_wait_parks_the_job_instead_of_calling_or_spinning() {
        let attempt = Arc::new(Empty::default());
        let ctx = JobContext::attached(
            Attached {
                job_id: JobId::generate(0),
                kind: "agent".into(),
                attempt: 1,
                max_attempts: 5,
                checkpoint: None,
                deadline: None,
                yield_margin: Duration::ZERO,
                clock: Arc::new(crate::clock::SystemClock),
            },
            attempt.clone(),
        );
        let t = Throttle::new(ModelLimits::default().with(
            "m",
            ModelLimit {
                rpm: Some(1),
                tpm: None,
            },
        ));
        let request = ModelRequest {
            model: "m".into(),
            system: String::new(),
            messages: Vec::new(),
            tools: Vec::new(),
        };
        let calls = AtomicU32::new(0);
        let got = t
            .call(&ctx, &request, "turn-1", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(super::super::ModelError::Unavailable("never called".into()))
            })
            .await;
        assert!(
            matches!(&got, Err(JobError::Wait { name, .. }) if name == "turn-1-rate-1"),
            "{got:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(
            attempt.takes.load(Ordering::SeqCst),
            1,
            "one take, then parked"
        );
    }
}
