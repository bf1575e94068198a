//! The handler API: what a job *kind* runs, how it reports success or each class of failure, and the
//! registry the submit function validates kinds against and the worker dispatches through.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::job::{Job, JobId, MAX_CHECKPOINT_BYTES, Millis, Progress};
use crate::worker::lease::{LeaseError, LeaseKeeper};

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a handler's run went wrong. A variant exists for each decision the worker takes differently.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The work may succeed later: the job is retried with backoff (or after `after`, when given)
    /// until its attempts run out.
    #[error("{code}: {source}")]
    Retryable {
        code: String,
        #[source]
        source: BoxError,
        after: Option<Duration>,
    },
    /// Retrying cannot help: the job fails now and its message is acknowledged.
    #[error("{code}: {source}")]
    Terminal {
        code: String,
        #[source]
        source: BoxError,
    },
    /// Not a failure: the handler stopped before the invocation's deadline (see
    /// [`JobContext::should_yield`]) and the job continues from its last checkpoint in a new message.
    #[error("yielded before the invocation deadline")]
    Yield,
    /// The handler stopped because its job's cancellation was requested (see
    /// [`JobContext::cancel_requested`]): the job ends `cancelled`.
    #[error("stopped on a cancel request")]
    Cancelled,
}

impl JobError {
    pub fn retryable(code: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Retryable {
            code: code.into(),
            source: source.into(),
            after: None,
        }
    }

    pub fn terminal(code: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Terminal {
            code: code.into(),
            source: source.into(),
        }
    }

    /// A retryable error that should not be retried before `after` (e.g. a rate limit's Retry-After).
    pub fn retry_after(
        code: impl Into<String>,
        source: impl Into<BoxError>,
        after: Duration,
    ) -> Self {
        Self::Retryable {
            code: code.into(),
            source: source.into(),
            after: Some(after),
        }
    }
}

/// A successful run: the result to store, and non-fatal warnings the owner should see.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub result: Value,
    pub warnings: Vec<String>,
}

impl From<Value> for Output {
    fn from(result: Value) -> Self {
        Self {
            result,
            warnings: Vec::new(),
        }
    }
}

impl Output {
    /// Success, with warnings (e.g. a degraded tool call the job worked around).
    pub fn with_warnings(result: Value, warnings: Vec<String>) -> Self {
        Self { result, warnings }
    }
}

/// What a running handler knows about its job, and how it talks back (checkpoints, progress). Cheap to
/// clone.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    job_id: JobId,
    kind: String,
    attempt: u32,
    max_attempts: u32,
    checkpoint: Option<Value>,
    /// When the invocation ends (epoch ms), if it does.
    deadline: Option<Millis>,
    /// How long before the deadline a handler should yield.
    yield_margin: Duration,
    /// The running attempt's writer; `None` for a detached context (handler unit tests).
    keeper: Option<Arc<LeaseKeeper>>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.inner.job_id)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

impl JobContext {
    /// A context not attached to a stored job: writes are accepted and dropped. For handler unit tests.
    pub fn new(
        job_id: JobId,
        kind: String,
        attempt: u32,
        max_attempts: u32,
        checkpoint: Option<Value>,
    ) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                job_id,
                kind,
                attempt,
                max_attempts,
                checkpoint,
                deadline: None,
                yield_margin: Duration::ZERO,
                keeper: None,
            }),
        }
    }

    /// The context of a claimed job, writing through `keeper`.
    pub(crate) fn attached(
        keeper: Arc<LeaseKeeper>,
        job: &Job,
        deadline: Option<Millis>,
        yield_margin: Duration,
    ) -> Self {
        Self {
            inner: Arc::new(ContextInner {
                job_id: job.job_id.clone(),
                kind: job.kind.clone(),
                attempt: job.attempts,
                max_attempts: job.max_attempts,
                checkpoint: job.checkpoint.clone(),
                deadline,
                yield_margin,
                keeper: Some(keeper),
            }),
        }
    }

    pub fn job_id(&self) -> &JobId {
        &self.inner.job_id
    }

    pub fn kind(&self) -> &str {
        &self.inner.kind
    }

    /// 1 on the first run, incremented on every retry (continuations after a yield do not count).
    pub fn attempt(&self) -> u32 {
        self.inner.attempt
    }

    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// The last checkpoint saved by an earlier attempt or continuation, if any: resume from here.
    pub fn checkpoint(&self) -> Option<&Value> {
        self.inner.checkpoint.as_ref()
    }

    /// Time left before the invocation's deadline; `None` when there is none (local runs).
    pub fn remaining(&self) -> Option<Duration> {
        let left = self.inner.deadline? - crate::now_millis();
        Some(Duration::from_millis(left.max(0) as u64))
    }

    /// Whether the deadline is close enough that the handler should save a checkpoint and return
    /// [`JobError::Yield`], to continue in a fresh invocation.
    pub fn should_yield(&self) -> bool {
        self.remaining()
            .is_some_and(|left| left <= self.inner.yield_margin)
    }

    /// Whether the job's owner asked to cancel it (`DELETE /jobs/{id}`). Seen within a heartbeat (a third
    /// of the lease); a handler that checks it between steps should return [`JobError::Cancelled`]
    /// (or use [`Self::check_cancelled`]). Any error returned after a cancel request also ends the job
    /// `cancelled`; a success is kept.
    pub fn cancel_requested(&self) -> bool {
        self.inner
            .keeper
            .as_ref()
            .is_some_and(|k| k.cancel_requested())
    }

    /// `Err(JobError::Cancelled)` once cancellation was requested, for `?` between a handler's steps.
    pub fn check_cancelled(&self) -> Result<(), JobError> {
        if self.cancel_requested() {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Saves a checkpoint (at most [`MAX_CHECKPOINT_BYTES`] serialized). A retry or continuation of the
    /// job starts with it in [`Self::checkpoint`].
    pub async fn save_checkpoint(&self, checkpoint: Value) -> Result<(), JobError> {
        if serde_json::to_vec(&checkpoint).map_or(usize::MAX, |v| v.len()) > MAX_CHECKPOINT_BYTES {
            return Err(JobError::terminal(
                "checkpoint_too_large",
                format!("a checkpoint may be at most {MAX_CHECKPOINT_BYTES} bytes"),
            ));
        }
        self.write(move |job, owner, now| job.save_checkpoint(owner, checkpoint.clone(), now))
            .await
    }

    /// Reports progress, shown to pollers of the job.
    pub async fn progress(&self, percent: u8, message: impl Into<String>) -> Result<(), JobError> {
        let progress = Progress {
            percent: percent.min(100),
            message: message.into(),
        };
        self.write(move |job, owner, now| job.report_progress(owner, progress.clone(), now))
            .await
    }

    async fn write(
        &self,
        change: impl Fn(&Job, &str, Millis) -> Result<Job, crate::job::IllegalTransition>,
    ) -> Result<(), JobError> {
        let Some(keeper) = &self.inner.keeper else {
            return Ok(());
        };
        match keeper.update(change).await {
            Ok(_) => Ok(()),
            Err(LeaseError::Lost) => Err(JobError::retryable(
                "lease_lost",
                "another attempt owns the job now",
            )),
            Err(LeaseError::Store(e)) => Err(JobError::retryable("store_unavailable", e)),
        }
    }
}

/// The work behind one job kind.
#[async_trait]
pub trait JobHandler: Send + Sync {
    async fn run(&self, input: Value, ctx: JobContext) -> Result<Output, JobError>;
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Output, JobError>> + Send>>;

/// Lets a plain async closure be a handler.
struct FnHandler<F>(F);

#[async_trait]
impl<F> JobHandler for FnHandler<F>
where
    F: Fn(Value, JobContext) -> BoxFuture + Send + Sync,
{
    async fn run(&self, input: Value, ctx: JobContext) -> Result<Output, JobError> {
        (self.0)(input, ctx).await
    }
}

/// A name that is not a valid job kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "kind must be 1-64 characters of a-z, 0-9, '_', '-' or '.', starting with a letter or digit"
)]
pub struct InvalidKind;

/// Checks a kind name: short, lowercase, URL- and log-safe.
pub fn validate_kind(kind: &str) -> Result<(), InvalidKind> {
    let ok = (1..=64).contains(&kind.len())
        && kind.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'_' | b'-' | b'.'))
        });
    if ok { Ok(()) } else { Err(InvalidKind) }
}

/// Kind -> handler. The submit function rejects kinds not in it; the worker dispatches through it. Build it
/// in one function that both binaries call, so the two can never disagree.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: BTreeMap<String, Arc<dyn JobHandler>>,
}

impl fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl HandlerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in kinds: `echo` and `sleep`.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register("echo", Echo).expect("valid kind");
        r.register("sleep", Sleep).expect("valid kind");
        r
    }

    /// Adds (or replaces) the handler of `kind`.
    pub fn register(
        &mut self,
        kind: &str,
        handler: impl JobHandler + 'static,
    ) -> Result<&mut Self, InvalidKind> {
        validate_kind(kind)?;
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        Ok(self)
    }

    /// Adds an async closure as the handler of `kind`.
    pub fn register_fn<F, Fut>(&mut self, kind: &str, f: F) -> Result<&mut Self, InvalidKind>
    where
        F: Fn(Value, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Output, JobError>> + Send + 'static,
    {
        self.register(
            kind,
            FnHandler(move |input, ctx| Box::pin(f(input, ctx)) as BoxFuture),
        )
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn JobHandler>> {
        self.handlers.get(kind).cloned()
    }

    pub fn contains(&self, kind: &str) -> bool {
        self.handlers.contains_key(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

/// `echo`: returns its input unchanged.
pub struct Echo;

#[async_trait]
impl JobHandler for Echo {
    async fn run(&self, input: Value, _ctx: JobContext) -> Result<Output, JobError> {
        Ok(input.into())
    }
}

/// `sleep`: waits `input.ms` milliseconds (stopping early if cancelled), then succeeds or, when told to,
/// fails.
///
/// Input: `{"ms": 100, "fail": "retryable" | "terminal" | "panic", "times": 2}`. With `fail`, the first
/// `times` attempts fail that way (every attempt when `times` is absent); later attempts succeed. Used by
/// the tests and demos to drive every outcome the worker handles.
pub struct Sleep;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SleepInput {
    #[serde(default)]
    ms: u64,
    fail: Option<FailMode>,
    times: Option<u32>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum FailMode {
    Retryable,
    Terminal,
    Panic,
}

/// How often a sleeping `sleep` looks for a cancel request.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// The longest `sleep` accepted: a demo handler should not pin a worker for long.
const SLEEP_MAX_MS: u64 = 15 * 60 * 1000;

#[async_trait]
impl JobHandler for Sleep {
    async fn run(&self, input: Value, ctx: JobContext) -> Result<Output, JobError> {
        let args: SleepInput =
            serde_json::from_value(input).map_err(|e| JobError::terminal("invalid_input", e))?;
        if args.ms > SLEEP_MAX_MS {
            return Err(JobError::terminal(
                "invalid_input",
                format!("ms must be at most {SLEEP_MAX_MS}"),
            ));
        }
        // In slices, so a cancel request stops it within one.
        let until = tokio::time::Instant::now() + Duration::from_millis(args.ms);
        loop {
            ctx.check_cancelled()?;
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(SLEEP_SLICE)).await;
        }
        let failing = args
            .fail
            .filter(|_| args.times.is_none_or(|t| ctx.attempt() <= t));
        match failing {
            None => Ok(json!({"slept_ms": args.ms, "attempt": ctx.attempt()}).into()),
            Some(FailMode::Retryable) => Err(JobError::retryable(
                "sleep_failed",
                "told to fail retryably",
            )),
            Some(FailMode::Terminal) => Err(JobError::terminal(
                "sleep_failed",
                "told to fail terminally",
            )),
            Some(FailMode::Panic) => panic!("sleep handler told to panic"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(attempt: u32) -> JobContext {
        JobContext::new(JobId::generate(0), "sleep".into(), attempt, 5, None)
    }

    #[test]
    fn kinds_are_validated() {
        for ok in ["echo", "a", "agent.run-v2", "x_1"] {
            assert_eq!(validate_kind(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Echo", "-x", "a b", "é", &"a".repeat(65)] {
            assert_eq!(validate_kind(bad), Err(InvalidKind), "{bad}");
        }
    }

    #[test]
    fn the_registry_knows_the_builtins_and_rejects_bad_names() {
        let mut r = HandlerRegistry::with_builtins();
        assert_eq!(r.kinds().collect::<Vec<_>>(), ["echo", "sleep"]);
        assert!(r.register("Bad Kind", Echo).is_err());
        r.register_fn("double", |v, _| async move {
            Ok(json!(v.as_i64().unwrap_or(0) * 2).into())
        })
        .unwrap();
        assert!(r.contains("double"));
    }

    #[tokio::test]
    async fn closures_run_as_handlers() {
        let mut r = HandlerRegistry::new();
        r.register_fn("double", |v, _| async move {
            Ok(json!(v.as_i64().unwrap_or(0) * 2).into())
        })
        .unwrap();
        let out = r
            .get("double")
            .unwrap()
            .run(json!(21), ctx(1))
            .await
            .unwrap();
        assert_eq!(out.result, json!(42));
    }

    #[tokio::test]
    async fn echo_returns_its_input() {
        let out = Echo.run(json!({"x": [1, 2]}), ctx(1)).await.unwrap();
        assert_eq!(out, Output::from(json!({"x": [1, 2]})));
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_fails_the_first_n_attempts_then_succeeds() {
        let input = json!({"ms": 5, "fail": "retryable", "times": 2});
        for attempt in 1..=2 {
            let e = Sleep.run(input.clone(), ctx(attempt)).await.unwrap_err();
            assert!(matches!(e, JobError::Retryable { .. }));
        }
        let ok = Sleep.run(input, ctx(3)).await.unwrap();
        assert_eq!(ok.result["attempt"], 3);
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_can_fail_terminally_and_rejects_bad_input() {
        let e = Sleep
            .run(json!({"fail": "terminal"}), ctx(1))
            .await
            .unwrap_err();
        assert!(matches!(e, JobError::Terminal { ref code, .. } if code == "sleep_failed"));
        for bad in [
            json!({"ms": "ten"}),
            json!({"ms": SLEEP_MAX_MS + 1}),
            json!({"nap": 1}),
        ] {
            let e = Sleep.run(bad, ctx(1)).await.unwrap_err();
            assert!(matches!(e, JobError::Terminal { ref code, .. } if code == "invalid_input"));
        }
    }
}
