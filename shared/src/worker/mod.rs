//! Batch processing: the worker Lambda's whole job, written against the store and queue ports.
//!
//! For each SQS record, independently and concurrently (bounded): decode the body, claim the job with a
//! lease, run its handler with panics caught, persist the outcome over the claimed version, and decide the
//! message's fate. A record is reported as a batch item failure only when it must come back; its visibility
//! is set first, so it comes back after the backoff rather than after the queue's long default.
//!
//! Delivery is at least once; completion is at most once: a job is completed only by the holder of its
//! lease, through a compare-and-set on the version it claimed. A duplicate delivery of a finished job is
//! acknowledged without running it; one of a job another worker is running comes back when that lease ends.

mod backoff;
pub(crate) mod lease;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use lambda_runtime::LambdaEvent;
use tracing::Instrument;

pub use backoff::Backoff;

use crate::handler::{HandlerRegistry, JobContext, JobError, Output};
use crate::job::{ErrorInfo, Job, JobStatus, MAX_RESULT_BYTES, Millis};
use crate::queue::{JobMessage, JobQueue, MAX_VISIBILITY};
use crate::store::{JobStore, StoreError};
use crate::{config::Config, now_millis};
use lease::{LeaseError, LeaseKeeper};

/// How the worker retries and leases.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// The queue's maxReceiveCount: the attempt that reaches it is the last.
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// Jobs of one batch run at once.
    pub concurrency: usize,
    /// How long a claim or heartbeat holds the job (and hides its message). Heartbeats come every third
    /// of it, so a dead worker's job is free again within one lease.
    pub lease: Duration,
    /// How long before the invocation deadline [`JobContext::should_yield`] turns true.
    pub yield_margin: Duration,
}

impl WorkerSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            max_attempts: c.max_attempts,
            backoff: c.backoff,
            concurrency: c.worker_concurrency,
            lease: Duration::from_secs(60),
            yield_margin: Duration::from_secs(60),
        }
    }
}

/// The invocation a batch arrived in.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub request_id: String,
    /// When Lambda will stop the invocation (epoch ms); `None` outside Lambda.
    pub deadline: Option<Millis>,
}

/// What happened to one record; logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Completed,
    Failed,
    Retrying,
    DeadLettered,
    /// A duplicate delivery of a job that already reached a terminal state: acknowledged, not run.
    AlreadyFinished,
    /// Another worker holds a live lease on the job: the message comes back when the lease ends.
    Busy,
    /// The body is not a job message: comes back with backoff until redriven to the DLQ.
    Malformed,
    /// The job record does not exist: treated like a malformed message.
    Missing,
    /// The lease was lost while running (it expired and someone else claimed): that run's result is dropped.
    LeaseLost,
    /// The handler yielded before the deadline; the job continues in a new message.
    Continued,
    /// The job's owner cancelled it: it stopped (or never started) and is `cancelled`.
    Cancelled,
    /// The store or queue failed: the message comes back with backoff.
    Unavailable,
}

/// The batch response plus what happened to each record, in record order.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub response: SqsBatchResponse,
    pub outcomes: Vec<Outcome>,
}

/// The worker: dependencies built once per cold start, shared by every invocation.
pub struct Worker {
    store: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    registry: HandlerRegistry,
    settings: WorkerSettings,
}

/// A record's fate: acknowledged, or back on the queue after a delay.
type Verdict = (Outcome, Option<Duration>);

impl Worker {
    pub fn new(
        store: Arc<dyn JobStore>,
        queue: Arc<dyn JobQueue>,
        registry: HandlerRegistry,
        settings: WorkerSettings,
    ) -> Self {
        Self {
            store,
            queue,
            registry,
            settings,
        }
    }

    /// The Lambda entry point.
    pub async fn handle(
        &self,
        event: LambdaEvent<SqsEvent>,
    ) -> Result<SqsBatchResponse, lambda_runtime::Error> {
        let deadline = event
            .context
            .deadline
            .try_into()
            .ok()
            .filter(|d: &Millis| *d > 0);
        let inv = Invocation {
            request_id: event.context.request_id,
            deadline,
        };
        Ok(self.process_batch(event.payload, &inv).await.response)
    }

    /// Processes a batch; never fails as a whole. Records without a message id cannot be reported and are
    /// only logged (Lambda would treat an empty item identifier as a failure of the entire batch).
    pub async fn process_batch(&self, event: SqsEvent, inv: &Invocation) -> BatchResult {
        // Futures built up front and boxed with an explicit `Send` bound: a closure inside the stream
        // defeats the compiler's `Send` proof (rust-lang/rust#102211), and a batch could not run on a
        // spawned task.
        let jobs: Vec<BoxFuture<'_, (usize, Verdict)>> = event
            .records
            .iter()
            .enumerate()
            .map(|(i, rec)| {
                Box::pin(async move { (i, self.guarded(rec, inv).await) }) as BoxFuture<'_, _>
            })
            .collect();
        let verdicts: Vec<(usize, Verdict)> = futures::stream::iter(jobs)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect()
            .await;

        let mut ordered = verdicts;
        ordered.sort_by_key(|(i, _)| *i);
        let mut result = BatchResult::default();
        for (i, (outcome, retry_in)) in ordered {
            let rec = &event.records[i];
            result.outcomes.push(outcome);
            let Some(delay) = retry_in else { continue };
            let Some(id) = rec.message_id.as_deref().filter(|id| !id.is_empty()) else {
                tracing::error!("record without a message id cannot be reported as failed");
                continue;
            };
            if let Some(receipt) = rec.receipt_handle.as_deref() {
                // Best effort: if it fails, the message returns after the queue's default visibility.
                if let Err(e) = self.queue.change_visibility(receipt, delay).await {
                    tracing::warn!(message_id = id, error = %e, "could not set retry visibility");
                }
            }
            result.response.add_failure(id);
        }
        result
    }

    /// [`Self::process_record`], isolated: our own code does not panic on purpose, but if it ever does,
    /// only this record fails.
    async fn guarded(&self, rec: &SqsMessage, inv: &Invocation) -> Verdict {
        AssertUnwindSafe(self.process_record(rec, inv))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(message_id = ?rec.message_id, "worker panicked on a record");
                (
                    Outcome::Unavailable,
                    Some(self.settings.backoff.delay(receive_count(rec))),
                )
            })
    }

    async fn process_record(&self, rec: &SqsMessage, inv: &Invocation) -> Verdict {
        let attempt_no = receive_count(rec);
        let backoff = || Some(self.settings.backoff.delay(attempt_no));
        let Some(msg) = rec.body.as_deref().and_then(|b| JobMessage::decode(b).ok()) else {
            tracing::error!(message_id = ?rec.message_id, "malformed job message");
            return (Outcome::Malformed, backoff());
        };
        let span = tracing::info_span!("job", job_id = %msg.job_id, kind = %msg.kind, receive = attempt_no);
        async {
            let now = now_millis();
            let owner = format!("{}:{:016x}", inv.request_id, rand::random::<u64>());
            let lease_until = now + self.settings.lease.as_millis() as Millis;
            match self
                .store
                .claim(&msg.job_id, &owner, lease_until, now)
                .await
            {
                Ok(job) if job.cancel_requested => {
                    // Its cancellation was requested before it ran (its runner died after the
                    // request): recorded `cancelled` without running the handler.
                    let keeper = LeaseKeeper::new(self.store.clone(), owner, job);
                    self.record_cancelled(&keeper, 1).await
                }
                Ok(job) => self.run(job, owner, rec, inv).await,
                Err(StoreError::NotFound) => {
                    tracing::error!("message for a job that does not exist");
                    (Outcome::Missing, backoff())
                }
                Err(StoreError::Conflict { current: Some(job) })
                    if job.effective_status(now) == JobStatus::DeadLetter =>
                {
                    // Every message of a dead-lettered job belongs in the DLQ, where the tools find and
                    // redrive it: back at once, until SQS moves it there. A job whose runner died on
                    // its last attempt is recorded dead now (best effort: reads already say so).
                    if let Ok(buried) = job.bury(now) {
                        let _ = self.store.replace(&job, &buried).await;
                    }
                    tracing::info!("delivery of a dead-lettered job; on its way to the DLQ");
                    (Outcome::DeadLettered, Some(Duration::ZERO))
                }
                Err(StoreError::Conflict { current: Some(job) }) if job.status.is_terminal() => {
                    tracing::info!(status = %job.status, "duplicate delivery of a finished job");
                    (Outcome::AlreadyFinished, None)
                }
                Err(StoreError::Conflict { current: Some(job) })
                    if job.status == JobStatus::Running =>
                {
                    let left = job.lease_expires_at.unwrap_or(now) - now;
                    let wait =
                        Duration::from_millis(left.max(0) as u64 + 1_000).min(MAX_VISIBILITY);
                    tracing::info!(
                        retry_in_ms = wait.as_millis() as u64,
                        "job is running elsewhere"
                    );
                    (Outcome::Busy, Some(wait))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim job");
                    (Outcome::Unavailable, backoff())
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Keeps the message hidden while the lease is live, and half a lease more (best effort: if it shows
    /// up early, the next receiver finds the job busy and puts it back).
    async fn hide(&self, rec: &SqsMessage) {
        if let Some(receipt) = rec.receipt_handle.as_deref() {
            let _ = self
                .queue
                .change_visibility(receipt, self.settings.lease.mul_f32(1.5))
                .await;
        }
    }

    /// Runs the handler while heartbeating: every third of a lease, the lease and the message's
    /// visibility are extended. Returns `None` if the lease was lost (the run is abandoned).
    async fn run_handler(
        &self,
        job: &Job,
        keeper: &Arc<LeaseKeeper>,
        rec: &SqsMessage,
        inv: &Invocation,
    ) -> Option<Result<Output, JobError>> {
        let Some(handler) = self.registry.get(&job.kind) else {
            return Some(Err(JobError::terminal(
                "unknown_kind",
                format!("no handler is registered for kind {:?}", job.kind),
            )));
        };
        let ctx = JobContext::attached(
            keeper.clone(),
            job,
            inv.deadline,
            self.settings.yield_margin,
        );
        let run = AssertUnwindSafe(handler.run(job.input.clone(), ctx)).catch_unwind();
        tokio::pin!(run);
        let mut beat = tokio::time::interval(self.settings.lease / 3);
        beat.tick().await; // the first tick is immediate: the claim just set the lease
        loop {
            tokio::select! {
                ran = &mut run => {
                    return Some(ran.unwrap_or_else(|panic| Err(JobError::retryable("panic", panic_message(&panic)))));
                }
                _ = beat.tick() => {
                    let lease = self.settings.lease.as_millis() as Millis;
                    match keeper.update(|j, owner, now| j.heartbeat(owner, now + lease, now)).await {
                        Ok(_) => self.hide(rec).await,
                        Err(LeaseError::Lost) => {
                            tracing::warn!("lease lost while running; abandoning the attempt");
                            return None;
                        }
                        // The lease may still be valid; keep going and try at the next beat.
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                    }
                }
            }
        }
    }

    /// Runs a claimed job and records its outcome.
    async fn run(&self, job: Job, owner: String, rec: &SqsMessage, inv: &Invocation) -> Verdict {
        let started = std::time::Instant::now();
        let receive_count = receive_count(rec);
        self.hide(rec).await;
        let keeper = LeaseKeeper::new(self.store.clone(), owner, job.clone());
        let Some(ran) = self.run_handler(&job, &keeper, rec, inv).await else {
            return (Outcome::LeaseLost, None);
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // The attempt that reaches maxReceiveCount is the last one SQS delivers: the job is dead-lettered
        // now, before SQS moves the message, so its record says why.
        let last_attempt = job.attempts.max(receive_count) >= self.settings.max_attempts;
        let cancelled =
            matches!(ran, Err(JobError::Cancelled)) || (ran.is_err() && keeper.cancel_requested());
        if cancelled {
            // The owner asked it to stop and it did: whatever error it stopped with, it is cancelled.
            return self.record_cancelled(&keeper, job.attempts).await;
        }
        if let Err(JobError::Yield) = ran {
            return self.continue_later(&keeper, rec).await;
        }
        let fail = |to, code: String, message: String, retryable| {
            let e = error_info(code, message, retryable);
            move |j: &Job, owner: &str, now| j.fail(owner, to, e.clone(), now)
        };
        let (written, verdict) = match ran {
            Ok(out)
                if serde_json::to_vec(&out.result).map_or(0, |v| v.len()) > MAX_RESULT_BYTES =>
            {
                let f = fail(
                    JobStatus::Failed,
                    "result_too_large".into(),
                    format!("result exceeds {MAX_RESULT_BYTES} bytes"),
                    false,
                );
                (keeper.update(f).await, (Outcome::Failed, None))
            }
            Ok(out) => (
                keeper
                    .update(|j, owner, now| {
                        j.complete(owner, out.result.clone(), out.warnings.clone(), now)
                    })
                    .await,
                (Outcome::Completed, None),
            ),
            Err(JobError::Terminal { code, source }) => (
                keeper
                    .update(fail(JobStatus::Failed, code, source.to_string(), false))
                    .await,
                (Outcome::Failed, None),
            ),
            Err(JobError::Retryable { code, source, .. }) if last_attempt => (
                keeper
                    .update(fail(JobStatus::DeadLetter, code, source.to_string(), true))
                    .await,
                // Back at once so SQS moves it to the DLQ on its next receive.
                (Outcome::DeadLettered, Some(Duration::ZERO)),
            ),
            Err(JobError::Retryable {
                code,
                source,
                after,
            }) => {
                let delay = after.unwrap_or_else(|| self.settings.backoff.delay(job.attempts));
                (
                    keeper
                        .update(fail(JobStatus::Retrying, code, source.to_string(), true))
                        .await,
                    (Outcome::Retrying, Some(delay.min(MAX_VISIBILITY))),
                )
            }
            Err(JobError::Yield | JobError::Cancelled) => unreachable!("handled above"),
        };
        match written {
            Ok(_) => {
                tracing::info!(outcome = ?verdict.0, attempt = job.attempts, elapsed_ms, "job attempt finished");
                verdict
            }
            Err(LeaseError::Lost) => {
                // Someone claimed the job after our lease expired; their run decides. Our message (if it
                // is still ours) is acknowledged: the job's fate no longer depends on it.
                tracing::warn!(elapsed_ms, "lease lost while running; result dropped");
                (Outcome::LeaseLost, None)
            }
            Err(LeaseError::Store(e)) => {
                tracing::warn!(error = %e, "could not record the outcome; the job will run again");
                (
                    Outcome::Unavailable,
                    Some(self.settings.backoff.delay(job.attempts)),
                )
            }
        }
    }

    /// Records `cancelled` for a job the keeper holds; if that cannot be written now, the message
    /// comes back after the backoff for attempt `attempt`.
    async fn record_cancelled(&self, keeper: &LeaseKeeper, attempt: u32) -> Verdict {
        match keeper
            .update(|j, owner, now| j.stop_cancelled(owner, now))
            .await
        {
            Ok(_) => (Outcome::Cancelled, None),
            Err(LeaseError::Lost) => (Outcome::LeaseLost, None),
            Err(LeaseError::Store(_)) => (
                Outcome::Unavailable,
                Some(self.settings.backoff.delay(attempt)),
            ),
        }
    }

    /// A yield: a new message carries the job on (sent first: if we die before the job is written back
    /// to `queued`, that message finds the lease expired and claims it), then the job is suspended and
    /// this message acknowledged.
    async fn continue_later(&self, keeper: &LeaseKeeper, rec: &SqsMessage) -> Verdict {
        let body = rec.body.clone().unwrap_or_default();
        if let Err(e) = self.queue.send(&body, Duration::ZERO).await {
            tracing::warn!(error = %e, "could not send the continuation; retrying the attempt");
            return (Outcome::Unavailable, Some(self.settings.backoff.delay(1)));
        }
        match keeper.update(|j, owner, now| j.suspend(owner, now)).await {
            Ok(j) => {
                tracing::info!(
                    continuations = j.continuations,
                    "job yielded; continues in a new message"
                );
                (Outcome::Continued, None)
            }
            Err(e) => {
                // The continuation message finds the lease expired and resumes from the checkpoint.
                tracing::warn!(error = %e, "could not suspend the job");
                (Outcome::Continued, None)
            }
        }
    }
}

fn error_info(code: impl Into<String>, message: String, retryable: bool) -> ErrorInfo {
    ErrorInfo {
        code: code.into(),
        message,
        retryable,
    }
}

/// The record's ApproximateReceiveCount (1 when absent).
fn receive_count(rec: &SqsMessage) -> u32 {
    rec.attributes
        .get("ApproximateReceiveCount")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "handler panicked".to_owned());
    format!("handler panicked: {text}")
}
