//! [`JobContext`]: what a running handler knows about its job and how it talks back.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::JobError;
use super::partial::{Coalescer, MAX_PARTIAL_BYTES, Offer};
use crate::clock::{Millis, SharedClock, SystemClock};
use crate::job::{JobId, MAX_CHECKPOINT_BYTES, Progress};
use crate::json::Json;
use crate::limits::{Rate, Take};
use crate::steps::{StepKind, StepMeta};
use crate::thread::{MessageQuery, ThreadId, ThreadMessage, ThreadRun};
use crate::usage::{Counted, Spend};
use crate::waitpoint::{MAX_WAITPOINT_NAME, WaitState, Waitpoint};

/// The running attempt's side of the context: writes that need the attempt's lease, and the cancel flag.
/// Implemented by the worker; this trait is what keeps the handler API free of the worker's internals.
#[async_trait]
pub trait Attempt: Send + Sync {
    async fn save_checkpoint(&self, checkpoint: Json) -> Result<(), JobError>;
    async fn progress(&self, progress: Progress) -> Result<(), JobError>;
    /// Writes a partial result (see [`JobContext::partial`], which coalesces the calls). Without a job
    /// record to write to (a test's attempt) it goes nowhere.
    async fn partial(&self, value: Json) -> Result<(), JobError> {
        let _ = value;
        Ok(())
    }
    /// Cancelled once the job's owner asked to cancel it (seen by the worker's cancel poll, or a write).
    fn cancellation(&self) -> CancellationToken;
    /// Whether the job's owner asked to cancel it, as last seen.
    fn cancel_requested(&self) -> bool {
        self.cancellation().is_cancelled()
    }
    /// Step `name`'s recorded result, if an earlier run recorded one.
    async fn step(&self, name: &str) -> Result<Option<Json>, JobError>;
    /// Records step `name`'s result (with `meta`, in the same write) unless one is recorded; returns
    /// the one that stands.
    async fn record_step(&self, name: &str, value: Json, meta: StepMeta) -> Result<Json, JobError>;
    /// Waitpoint `name` as recorded, recording it (pending, timing out after `timeout` but never after
    /// the job's own expiry) on the first call.
    async fn waitpoint(&self, name: &str, timeout: Duration) -> Result<Waitpoint, JobError>;
    /// Adds one model call to the job owner's usage of the day (see [`JobContext::count_usage`]).
    /// Without a store (a test's attempt) nothing is counted: `None`.
    async fn count_usage(&self, spend: &Spend) -> Result<Option<Counted>, JobError> {
        let _ = spend;
        Ok(None)
    }
    /// Takes `n` tokens of `rate` from the shared bucket item `bucket` (see [`JobContext::take_tokens`]).
    /// Without a store to share (a test's attempt) there is nothing to run out of.
    async fn take_tokens(&self, bucket: &str, rate: &Rate, n: u32) -> Result<Take, JobError> {
        let _ = (bucket, rate, n);
        Ok(Take::Taken)
    }
    /// The thread run the job is, if it is one (see [`crate::thread`]). A test's attempt is none.
    async fn thread_run(&self) -> Option<ThreadRun> {
        None
    }
    /// A thread's messages (see [`crate::store::ThreadStore::messages`]).
    async fn thread_messages(
        &self,
        thread: &ThreadId,
        query: &MessageQuery,
    ) -> Result<Vec<ThreadMessage>, JobError> {
        let _ = (thread, query);
        Ok(Vec::new())
    }
    /// Messages `indices` of run `run` of a thread, read by key (see
    /// [`crate::store::ThreadStore::run_messages`]).
    async fn thread_run_messages(
        &self,
        thread: &ThreadId,
        run: u64,
        indices: std::ops::Range<u32>,
    ) -> Result<Vec<ThreadMessage>, JobError> {
        let _ = (thread, run, indices);
        Ok(Vec::new())
    }
    /// How the run before this one (a thread's run) ended, as the worker's gate read it.
    fn thread_before(&self) -> Option<crate::thread::RunEnd> {
        None
    }
    /// Appends to a thread, each message only where none is yet (see
    /// [`crate::store::ThreadStore::append_messages`]).
    async fn append_to_thread(
        &self,
        thread: &ThreadId,
        messages: &[ThreadMessage],
        expires_at: i64,
    ) -> Result<(), JobError> {
        let _ = (thread, messages, expires_at);
        Ok(())
    }
}

/// How long [`JobContext::wait_for`] waits, and what it shows while it waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaitFor {
    timeout: Duration,
    detail: Option<Json>,
}

/// The most a waitpoint's [`WaitFor::detail`] may take, serialized: it is kept on the job's record and
/// shown with every read of the job.
pub const MAX_WAIT_DETAIL_BYTES: usize = 8 * 1024;

impl WaitFor {
    /// Wait at most `timeout` (capped by the job's TTL: a job is deleted when it expires). When it
    /// passes, `wait_for` returns [`JobError::WaitTimedOut`].
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout,
            detail: None,
        }
    }

    /// Shows `detail` (any JSON, at most [`MAX_WAIT_DETAIL_BYTES`] serialized, else the job fails
    /// `invalid_waitpoint`) to whoever completes the waitpoint: `GET /jobs/{id}` has it in
    /// `waiting_for.detail` while the job waits (an agent's approval shows the tool and its input).
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(Json::from(detail));
        self
    }
}

/// The most a step's result may take, serialized (each step is its own item, under DynamoDB's 400 KB).
pub const MAX_STEP_BYTES: usize = 64 * 1024;

/// The longest step name (it is part of the step item's key).
pub const MAX_STEP_NAME: usize = 200;

/// The most follow-up jobs one completion may start (fan-out), all created in its one transaction.
pub const MAX_FAN_OUT: usize = 10;

/// The next stage a handler asked for: a kind, and one input per follow-up job.
#[derive(Debug, Clone, PartialEq)]
pub struct Pathway {
    pub kind: String,
    pub inputs: Vec<Json>,
}

/// What a running handler knows about its job, and how it talks back (checkpoints, progress, warnings).
/// Cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    inner: Arc<Inner>,
}

struct Inner {
    job_id: JobId,
    kind: String,
    attempt: u32,
    max_attempts: u32,
    checkpoint: Option<Json>,
    /// When the invocation ends (epoch ms), if it does.
    deadline: Option<Millis>,
    /// How long before the deadline a handler should yield.
    yield_margin: Duration,
    clock: SharedClock,
    /// The running attempt; `None` for a detached context (handler unit tests).
    attempt_handle: Option<Arc<dyn Attempt>>,
    /// The attempt's cancel request (never cancelled for a detached context).
    cancellation: CancellationToken,
    warnings: Mutex<Vec<String>>,
    /// A detached context's steps (handler unit tests): kept for the context's life.
    local_steps: Mutex<HashMap<String, Json>>,
    pathway: Mutex<Option<Pathway>>,
    /// When this context last recorded a step (epoch ms): see [`JobContext::record_time`].
    last_recorded: std::sync::atomic::AtomicI64,
    /// The attempt's partial results (see [`JobContext::partial`]). Held across each partial write,
    /// so writes land in the order they were published.
    partials: tokio::sync::Mutex<Coalescer>,
}

impl fmt::Debug for JobContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobContext")
            .field("job_id", &self.inner.job_id)
            .field("attempt", &self.inner.attempt)
            .finish_non_exhaustive()
    }
}

/// How a worker attaches a context to a claimed job.
pub struct Attached {
    pub job_id: JobId,
    pub kind: String,
    pub attempt: u32,
    pub max_attempts: u32,
    pub checkpoint: Option<Json>,
    pub deadline: Option<Millis>,
    pub yield_margin: Duration,
    pub clock: SharedClock,
}

impl JobContext {
    /// A context not attached to a stored job: writes are accepted and dropped. For handler unit tests.
    pub fn new(
        job_id: JobId,
        kind: String,
        attempt: u32,
        max_attempts: u32,
        checkpoint: Option<Json>,
    ) -> Self {
        Self::build(
            Attached {
                job_id,
                kind,
                attempt,
                max_attempts,
                checkpoint,
                deadline: None,
                yield_margin: Duration::ZERO,
                clock: Arc::new(SystemClock),
            },
            None,
        )
    }

    /// The context of a claimed job, writing through `handle`.
    pub fn attached(a: Attached, handle: Arc<dyn Attempt>) -> Self {
        Self::build(a, Some(handle))
    }

    fn build(a: Attached, handle: Option<Arc<dyn Attempt>>) -> Self {
        let cancellation = handle
            .as_ref()
            .map_or_else(CancellationToken::new, |h| h.cancellation());
        Self {
            inner: Arc::new(Inner {
                cancellation,
                job_id: a.job_id,
                kind: a.kind,
                attempt: a.attempt,
                max_attempts: a.max_attempts,
                checkpoint: a.checkpoint,
                deadline: a.deadline,
                yield_margin: a.yield_margin,
                clock: a.clock,
                attempt_handle: handle,
                warnings: Mutex::new(Vec::new()),
                local_steps: Mutex::new(HashMap::new()),
                pathway: Mutex::new(None),
                last_recorded: std::sync::atomic::AtomicI64::new(0),
                partials: tokio::sync::Mutex::new(Coalescer::default()),
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

    /// The last checkpoint saved by an earlier attempt or continuation, decoded: resume from here.
    /// `None` on a first run; a checkpoint that does not decode as `T` fails the job (`invalid_checkpoint`).
    pub fn checkpoint<T: DeserializeOwned>(&self) -> Result<Option<T>, JobError> {
        self.inner
            .checkpoint
            .as_ref()
            .map(|c| c.decode())
            .transpose()
            .map_err(|e| JobError::terminal("invalid_checkpoint", e))
    }

    /// Time left before the invocation's deadline; `None` when there is none.
    pub fn remaining(&self) -> Option<Duration> {
        let left = self.inner.deadline? - self.inner.clock.now();
        Some(Duration::from_millis(left.max(0) as u64))
    }

    /// Whether the deadline is close enough that the handler should save a checkpoint and return
    /// [`JobError::Yield`], to continue in a fresh invocation.
    pub fn should_yield(&self) -> bool {
        self.remaining()
            .is_some_and(|left| left <= self.inner.yield_margin)
    }

    /// Whether the job's owner asked to cancel it (`DELETE /jobs/{id}`), seen within a few seconds. A
    /// handler that checks it between steps should return [`JobError::Cancelled`] (or use
    /// [`Self::check_cancelled`]). Any error returned after a cancel request also ends the job
    /// `cancelled`; a success is kept.
    pub fn cancel_requested(&self) -> bool {
        self.inner.cancellation.is_cancelled()
    }

    /// Resolves once the job's owner asked to cancel it (seen within a few seconds, like
    /// [`Self::cancel_requested`]); never for a detached context. For racing a long await of your own;
    /// [`Self::until_cancelled`] does it for you.
    pub async fn cancelled(&self) {
        self.inner.cancellation.cancelled().await
    }

    /// Runs `work` unless cancellation is requested first: then `work` is dropped where it stands (or
    /// never started, if the request came before) and the answer is [`JobError::Cancelled`], so a handler
    /// stuck in a long call (a model turn, a slow API) still stops within a few seconds of the request.
    /// Dropping `work` mid-flight is what a crash would do to it: an effect it started may or may not
    /// have happened (see [`Self::step_key`]). Durable steps run their bodies this way.
    pub async fn until_cancelled<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, JobError>>,
    ) -> Result<T, JobError> {
        tokio::select! {
            // Cancellation first: once it is requested, no new work starts.
            biased;
            () = self.cancelled() => Err(JobError::Cancelled),
            done = work => done,
        }
    }

    /// Counts one model call's tokens in the job owner's usage of the day (`GET /usage`, the daily
    /// token budget: [`crate::usage`]), one write; returns the owner's tokens that day after it and
    /// the budget, `None` for a detached context. Call it inside the step that made the call, after
    /// the call: a replayed step then never counts again, while a call that really ran twice (a crash
    /// before its step was recorded) is spent twice and counted twice. The agent loop counts its own
    /// turns.
    pub async fn count_usage(&self, spend: &Spend) -> Result<Option<Counted>, JobError> {
        match &self.inner.attempt_handle {
            Some(a) => a.count_usage(spend).await,
            None => Ok(None),
        }
    }

    /// Takes `n` tokens of `rate` from the token bucket named `name`, one item in the table shared by
    /// every worker ([`crate::limits::bucket`]; one conditional write, none when this process already
    /// knows the bucket is empty): [`Take::Taken`], or [`Take::Wait`] with how long until the same take
    /// would be allowed (nothing taken then). For calls to a rate-limited service; the agent loop's
    /// per-model limits take from theirs. A detached context (handler unit tests) is never refused.
    pub async fn take_tokens(&self, name: &str, rate: &Rate, n: u32) -> Result<Take, JobError> {
        match &self.inner.attempt_handle {
            Some(a) => {
                a.take_tokens(&crate::limits::named_bucket(name), rate, n)
                    .await
            }
            None => Ok(Take::Taken),
        }
    }

    /// The thread run this job is, if it is one (the agent loop's conversations).
    pub(crate) async fn thread_run(&self) -> Option<ThreadRun> {
        self.inner.attempt_handle.as_ref()?.thread_run().await
    }

    /// A thread's messages, as the store lists them.
    pub(crate) async fn thread_messages(
        &self,
        thread: &ThreadId,
        query: &MessageQuery,
    ) -> Result<Vec<ThreadMessage>, JobError> {
        match &self.inner.attempt_handle {
            Some(a) => a.thread_messages(thread, query).await,
            None => Ok(Vec::new()),
        }
    }

    /// Messages `indices` of run `run` of a thread, read by key.
    pub(crate) async fn thread_run_messages(
        &self,
        thread: &ThreadId,
        run: u64,
        indices: std::ops::Range<u32>,
    ) -> Result<Vec<ThreadMessage>, JobError> {
        match &self.inner.attempt_handle {
            Some(a) => a.thread_run_messages(thread, run, indices).await,
            None => Ok(Vec::new()),
        }
    }

    /// How the run before this one ended, as the worker's gate read it (`None`: unknown).
    pub(crate) fn thread_before(&self) -> Option<crate::thread::RunEnd> {
        self.inner.attempt_handle.as_ref()?.thread_before()
    }

    /// Appends `messages` to the thread of `run`; a message already in its place stays as it is.
    pub(crate) async fn append_to_thread(
        &self,
        run: &ThreadRun,
        messages: &[ThreadMessage],
    ) -> Result<(), JobError> {
        match &self.inner.attempt_handle {
            Some(a) => {
                a.append_to_thread(&run.thread, messages, run.expires_at)
                    .await
            }
            None => Ok(()),
        }
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
    pub async fn save_checkpoint<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), JobError> {
        let checkpoint =
            Json::encode(value).map_err(|e| JobError::terminal("invalid_checkpoint", e))?;
        if checkpoint.len() > MAX_CHECKPOINT_BYTES {
            return Err(JobError::terminal(
                "checkpoint_too_large",
                format!("a checkpoint may be at most {MAX_CHECKPOINT_BYTES} bytes"),
            ));
        }
        match &self.inner.attempt_handle {
            Some(a) => a.save_checkpoint(checkpoint).await,
            None => Ok(()),
        }
    }

    /// Reports progress, shown to pollers of the job.
    pub async fn progress(&self, percent: u8, message: impl Into<String>) -> Result<(), JobError> {
        let progress = Progress {
            percent: percent.min(100),
            message: message.into(),
        };
        match &self.inner.attempt_handle {
            Some(a) => a.progress(progress).await,
            None => Ok(()),
        }
    }

    /// Publishes a partial result (any JSON, at most [`MAX_PARTIAL_BYTES`] serialized): `GET /jobs/{id}`
    /// shows the latest as `partial`, and the job's stream sends each as a `partial` event. Writes are
    /// coalesced: at most one per [`super::PARTIAL_INTERVAL`] (a second) per attempt, the latest value
    /// winning; one published within the second after a write is written at the second's end (or
    /// superseded by a later one). When the handler returns, a pending partial is dropped if the job
    /// completes (its result supersedes it) and written otherwise (a retry, a yield, a wait: the page
    /// keeps showing what was done). Each write costs what a progress report does. A value too large
    /// fails the call with `partial_too_large` (terminal, nothing written): propagate it and the job
    /// fails, or ignore it and publish something smaller.
    pub async fn partial<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), JobError> {
        let value = Json::encode(value).map_err(|e| JobError::terminal("invalid_partial", e))?;
        if value.len() > MAX_PARTIAL_BYTES {
            return Err(JobError::terminal(
                "partial_too_large",
                format!(
                    "a partial result is {} bytes; at most {MAX_PARTIAL_BYTES}",
                    value.len()
                ),
            ));
        }
        let Some(a) = &self.inner.attempt_handle else {
            return Ok(());
        };
        let mut partials = self.inner.partials.lock().await;
        match partials.offer(value, self.inner.clock.now()) {
            Offer::Write(value) => a.partial(value).await,
            Offer::Hold { flush_in: Some(ms) } => {
                let ctx = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms.max(0) as u64)).await;
                    ctx.flush_partial().await;
                });
                Ok(())
            }
            Offer::Hold { flush_in: None } => Ok(()),
        }
    }

    /// Writes the pending partial, if one is left when its flush is due.
    async fn flush_partial(&self) {
        let Some(a) = &self.inner.attempt_handle else {
            return;
        };
        let mut partials = self.inner.partials.lock().await;
        if let Some(value) = partials.due(self.inner.clock.now())
            && let Err(e) = a.partial(value).await
        {
            // Not the handler's failure: the next partial or the outcome write tells the rest.
            tracing::warn!(error = %e, "could not write a partial result");
        }
    }

    /// The handler returned: a pending partial is dropped when `superseded` (the job completes with a
    /// result), else written before the outcome is. Nothing is published after this.
    pub(crate) async fn end_partials(&self, superseded: bool) {
        let Some(a) = &self.inner.attempt_handle else {
            return;
        };
        let mut partials = self.inner.partials.lock().await;
        if let Some(value) = partials.end().filter(|_| !superseded)
            && let Err(e) = a.partial(value).await
        {
            tracing::warn!(error = %e, "could not write the last partial result");
        }
    }

    /// A durable step: runs `body` once per job and records its result; on a later attempt or
    /// continuation the recorded result is returned and `body` does not run again. A cancel request
    /// stops a running body (and keeps one from starting): the step answers [`JobError::Cancelled`]
    /// and records nothing (see [`Self::until_cancelled`]).
    ///
    /// What holds where: a step whose result was recorded never runs again, whatever happens to later
    /// attempts. A crash *between* a step's effect and its record (the process dies inside `body`, or
    /// before the record lands) runs `body` again on the next attempt: hand [`Self::step_key`] to
    /// external APIs that honour idempotency keys, and the effect still happens once. Results are at
    /// most [`MAX_STEP_BYTES`] serialized (else the job fails terminally with `step_too_large`, naming the
    /// step); a result that no longer decodes as `T` fails it with `invalid_step`. Names must be unique
    /// within the job and stable across attempts (a loop uses `format!("turn-{i}")`).
    pub async fn step<T, F>(&self, name: &str, body: F) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: std::future::Future<Output = Result<T, JobError>>,
    {
        self.step_as(StepKind::Step, name, body).await
    }

    /// [`Self::step`], recorded as `kind` (the agent loop's model turns and tool calls), so a job's list
    /// of steps can tell them apart without guessing from names.
    pub(crate) async fn step_as<T, F>(
        &self,
        kind: StepKind,
        name: &str,
        body: F,
    ) -> Result<T, JobError>
    where
        T: Serialize + DeserializeOwned,
        F: std::future::Future<Output = Result<T, JobError>>,
    {
        check_name("step", name, MAX_STEP_NAME)?;
        let decode = |json: Json| {
            json.decode::<T>().map_err(|e| {
                JobError::terminal(
                    "invalid_step",
                    format!("step {name:?}: recorded result does not decode: {e}"),
                )
            })
        };
        if let Some(recorded) = self.recorded_step(name).await? {
            return decode(recorded);
        }
        let started_at = self.inner.clock.now();
        let value = self.until_cancelled(body).await?;
        let meta = StepMeta {
            kind,
            started_at,
            recorded_at: self.record_time(),
        };
        let json = Json::encode(&value).map_err(|e| JobError::terminal("invalid_step", e))?;
        if json.len() > MAX_STEP_BYTES {
            return Err(JobError::terminal(
                "step_too_large",
                format!(
                    "step {name:?}: its result is {} bytes; a step result may be at most {MAX_STEP_BYTES}",
                    json.len()
                ),
            ));
        }
        let stands = match &self.inner.attempt_handle {
            Some(a) => a.record_step(name, json, meta).await?,
            None => self
                .local_steps()
                .entry(name.to_owned())
                .or_insert(json)
                .clone(),
        };
        decode(stands)
    }

    /// The time a step's record is listed at: now, but after every step this context recorded before,
    /// so steps recorded within one millisecond (an agent's turn and its quick tool call) list in the
    /// order they ran, not by name. Off by a millisecond or so at most.
    fn record_time(&self) -> Millis {
        use std::sync::atomic::Ordering;
        let now = self.inner.clock.now();
        let prev = self
            .inner
            .last_recorded
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .expect("the update always applies");
        now.max(prev + 1)
    }

    /// Waits for waitpoint `name` to be completed (`POST /jobs/{id}/waitpoints/{name}` with a JSON body)
    /// and returns its payload, decoded. The first call records the waitpoint and returns
    /// [`JobError::Wait`]: propagate it with `?` and the job parks, costing nothing while it waits. Once
    /// completed, the job runs again from the start, its finished steps replay, and this call returns
    /// the payload (a payload that does not decode as `T` fails the job with `invalid_waitpoint`). When
    /// the timeout passes first, it returns [`JobError::WaitTimedOut`]. Names follow the rules of
    /// [`Self::step`]'s: unique within the job (steps and waitpoints apart), stable across attempts.
    pub async fn wait_for<T: DeserializeOwned>(
        &self,
        name: &str,
        how: WaitFor,
    ) -> Result<T, JobError> {
        if let Some(d) = how
            .detail
            .as_ref()
            .filter(|d| d.len() > MAX_WAIT_DETAIL_BYTES)
        {
            return Err(JobError::terminal(
                "invalid_waitpoint",
                format!(
                    "waitpoint {name:?}: its detail is {} bytes; at most {MAX_WAIT_DETAIL_BYTES}",
                    d.len()
                ),
            ));
        }
        let wp = self.waitpoint(name, how.timeout).await?;
        match wp.state {
            WaitState::Completed => wp
                .payload
                .unwrap_or_else(|| Json::from(serde_json::Value::Null))
                .decode()
                .map_err(|e| {
                    JobError::terminal(
                        "invalid_waitpoint",
                        format!("waitpoint {name:?}: its payload does not decode: {e}"),
                    )
                }),
            WaitState::TimedOut => Err(JobError::WaitTimedOut {
                name: name.to_owned(),
            }),
            WaitState::Pending => Err(JobError::Wait {
                name: name.to_owned(),
                expires_at: wp.expires_at,
                detail: how.detail,
            }),
        }
    }

    /// A durable sleep of any length: the job parks on waitpoint `name` (see [`Self::wait_for`]) and runs
    /// again once `duration` has passed, replaying its finished steps; this call then returns `Ok`.
    /// Completing the waitpoint early wakes it early.
    pub async fn sleep(&self, name: &str, duration: Duration) -> Result<(), JobError> {
        let wp = self.waitpoint(name, duration).await?;
        match wp.state {
            WaitState::Completed | WaitState::TimedOut => Ok(()),
            WaitState::Pending => Err(JobError::Wait {
                name: name.to_owned(),
                expires_at: wp.expires_at,
                detail: None,
            }),
        }
    }

    async fn waitpoint(&self, name: &str, timeout: Duration) -> Result<Waitpoint, JobError> {
        check_name("waitpoint", name, MAX_WAITPOINT_NAME)?;
        match &self.inner.attempt_handle {
            Some(a) => a.waitpoint(name, timeout).await,
            // A detached context has no store to wait in: it is always at the first call.
            None => Ok(Waitpoint::pending(
                name,
                self.inner.clock.now() + timeout.as_millis() as Millis,
            )),
        }
    }

    /// A stable idempotency key for step `name` of this job (`<job id>:<name>`), the same on every attempt:
    /// hand it to an external API so a crash between its effect and the step's record does not repeat
    /// the effect.
    pub fn step_key(&self, name: &str) -> String {
        format!("{}:{name}", self.inner.job_id)
    }

    async fn recorded_step(&self, name: &str) -> Result<Option<Json>, JobError> {
        match &self.inner.attempt_handle {
            Some(a) => a.step(name).await,
            None => Ok(self.local_steps().get(name).cloned()),
        }
    }

    fn local_steps(&self) -> std::sync::MutexGuard<'_, HashMap<String, Json>> {
        self.inner
            .local_steps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Starts stage `kind` with `input` when this job completes (a stage pathway): the follow-up job is
    /// created in the same write that records the completion, owned and counted like this one, and
    /// linked both ways (`parent_id`, `pathway` / `next`). Called several times, it fans out: up to
    /// [`MAX_FAN_OUT`] jobs, all of one kind. Nothing starts if the job does not complete.
    pub fn then<T: Serialize + ?Sized>(&self, kind: &str, input: &T) -> Result<(), JobError> {
        let input = Json::encode(input).map_err(|e| JobError::terminal("invalid_pathway", e))?;
        let mut pathway = self.inner.pathway.lock().unwrap_or_else(|p| p.into_inner());
        let p = pathway.get_or_insert_with(|| Pathway {
            kind: kind.to_owned(),
            inputs: Vec::new(),
        });
        if p.kind != kind {
            return Err(JobError::terminal(
                "invalid_pathway",
                format!(
                    "one completion starts one next stage: {:?} was already chosen, not {kind:?}",
                    p.kind
                ),
            ));
        }
        if p.inputs.len() >= MAX_FAN_OUT {
            return Err(JobError::terminal(
                "invalid_pathway",
                format!("a completion starts at most {MAX_FAN_OUT} follow-up jobs"),
            ));
        }
        p.inputs.push(input);
        Ok(())
    }

    pub(super) fn take_pathway(&self) -> Option<Pathway> {
        self.inner
            .pathway
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Records a non-fatal problem the job worked around; shown with its result.
    pub fn warn(&self, warning: impl Into<String>) {
        self.warnings().push(warning.into());
    }

    pub(super) fn take_warnings(&self) -> Vec<String> {
        std::mem::take(&mut *self.warnings())
    }

    fn warnings(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.inner
            .warnings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Refuses a step or waitpoint name that is empty or too long to be part of its item's key.
fn check_name(what: &str, name: &str, max: usize) -> Result<(), JobError> {
    if name.is_empty() || name.len() > max {
        return Err(JobError::terminal(
            format!("invalid_{what}_name"),
            format!("a {what} name has 1 to {max} bytes; got {}", name.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attempt whose steps live in memory and whose cancel request the test makes.
    #[derive(Default)]
    struct Fake {
        cancellation: CancellationToken,
        steps: Mutex<HashMap<String, Json>>,
    }

    #[async_trait]
    impl Attempt for Fake {
        async fn save_checkpoint(&self, _: Json) -> Result<(), JobError> {
            Ok(())
        }
        async fn progress(&self, _: Progress) -> Result<(), JobError> {
            Ok(())
        }
        fn cancellation(&self) -> CancellationToken {
            self.cancellation.clone()
        }
        async fn step(&self, name: &str) -> Result<Option<Json>, JobError> {
            Ok(self.steps.lock().unwrap().get(name).cloned())
        }
        async fn waitpoint(&self, _: &str, _: Duration) -> Result<Waitpoint, JobError> {
            unimplemented!("these tests make no waitpoint")
        }
        async fn record_step(
            &self,
            name: &str,
            value: Json,
            _: StepMeta,
        ) -> Result<Json, JobError> {
            Ok(self
                .steps
                .lock()
                .unwrap()
                .entry(name.into())
                .or_insert(value)
                .clone())
        }
    }

    fn attached(attempt: Arc<Fake>) -> JobContext {
        JobContext::attached(
            Attached {
                job_id: JobId::generate(0),
                kind: "k".into(),
                attempt: 1,
                max_attempts: 5,
                checkpoint: None,
                deadline: None,
                yield_margin: Duration::ZERO,
                clock: Arc::new(SystemClock),
            },
            attempt,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancel_request_stops_a_running_step_and_keeps_new_ones_from_starting() {
        let attempt = Arc::new(Fake::default());
        let ctx = attached(attempt.clone());
        assert_eq!(ctx.step("done", async { Ok(1) }).await.unwrap(), 1);
        // A step stuck in a call that takes an hour stops when the request is seen.
        let hung = ctx.step("hung", async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(2)
        });
        let cancel = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            attempt.cancellation.cancel();
        };
        let started = tokio::time::Instant::now();
        let (stopped, ()) = tokio::join!(hung, cancel);
        assert!(matches!(stopped, Err(JobError::Cancelled)), "{stopped:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(ctx.cancel_requested());
        // Nothing was recorded for it; a new body does not start; a recorded step still replays.
        assert!(!attempt.steps.lock().unwrap().contains_key("hung"));
        let ran = std::sync::atomic::AtomicBool::new(false);
        let next = ctx.step("next", async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(3)
        });
        assert!(matches!(next.await, Err(JobError::Cancelled)));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(ctx.step("done", async { Ok(9) }).await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_detached_context_is_never_cancelled() {
        let ctx = JobContext::new(JobId::generate(0), "k".into(), 1, 5, None);
        assert!(!ctx.cancel_requested());
        assert_eq!(ctx.until_cancelled(async { Ok(7) }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_wait_carries_its_detail_and_an_oversized_detail_fails_the_job() {
        let ctx = JobContext::new(JobId::generate(0), "k".into(), 1, 5, None);
        let how =
            WaitFor::timeout(Duration::from_secs(60)).detail(serde_json::json!({"tool": "t"}));
        match ctx.wait_for::<serde_json::Value>("approve", how).await {
            Err(JobError::Wait { name, detail, .. }) => {
                assert_eq!(name, "approve");
                assert_eq!(detail, Some(Json::from(serde_json::json!({"tool": "t"}))));
            }
            other => panic!("{other:?}"),
        }
        let big = "x".repeat(MAX_WAIT_DETAIL_BYTES);
        let how = WaitFor::timeout(Duration::from_secs(60)).detail(serde_json::json!(big));
        let e = ctx
            .wait_for::<serde_json::Value>("approve", how)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, JobError::Terminal { code, .. } if code == "invalid_waitpoint"),
            "{e:?}"
        );
    }
}
