//! The worker core: deliveries in, one verdict per delivery out. Written against the ports only; the
//! Lambda adapter ([`crate::lambda`]) maps an SQS event to deliveries and verdicts to a partial batch
//! response, and the local event source hands deliveries in straight from a queue.
//!
//! For each delivery, independently and concurrently (bounded): decode the body, claim the job with a
//! lease, run its handler with panics caught while heartbeating, [`decide`] what the outcome means (pure),
//! and apply that decision. A delivery gets a `Retry` verdict only when its message must come back; its
//! visibility is set first, so it comes back after the backoff rather than after the queue's long default.
//!
//! Delivery is at least once; completion is at most once: a job is completed only by the holder of its
//! lease, through a compare-and-set on the version it claimed. A duplicate delivery of a finished job is
//! acknowledged without running it; one of a job another worker is running comes back when that lease ends.

mod decide;
mod gate;
mod hide;
mod lease;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;
use tracing::Instrument;

use crate::park::resume_parked;
pub use decide::{Decision, Facts, MAX_IDLE_CONTINUATIONS, decide};
use hide::Hider;
pub use lease::{LeaseError, LeaseKeeper};

use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::handler::{Attached, HandlerRegistry, JobContext, JobError, Output};
use crate::job::{ErrorInfo, Job, JobStatus, Lane, WaitingFor};
use crate::observe;
use crate::queue::{Consumer, Delivery, JobMessage, JobSender, Lanes, MAX_VISIBILITY, WorkerQueue};
pub use crate::queue::{Invocation, Verdict};
use crate::retry::Backoff;
use crate::store::{StoreError, WorkerStore};
use crate::trace::TraceContext;
use crate::webhook::Announcer;

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
    /// How often a running job looks for a cancel request (one read of a few bytes).
    pub cancel_poll: Duration,
}

impl WorkerSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            max_attempts: c.max_attempts,
            backoff: c.backoff,
            concurrency: c.worker_concurrency,
            lease: Duration::from_secs(60),
            yield_margin: yield_margin(c.worker_timeout),
            cancel_poll: Duration::from_secs(5),
        }
    }
}

/// How long before the deadline a handler is told to yield: a minute, or a quarter of a shorter
/// invocation. A fixed minute would tell every handler of a 30-second function to yield as it starts,
/// and a job that yields before doing anything continues in a new message forever.
fn yield_margin(timeout: Duration) -> Duration {
    Duration::from_secs(60).min(timeout / 4)
}

/// What happened to one delivery; logged and counted.
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
    /// The worker was stopping: the job was given back unfinished, for another worker.
    Released,
    /// A container-only job reached the worker function (a message sent before its kind moved, say): it
    /// was sent on to the container queue, not run.
    Forwarded,
    /// The handler reached an unsettled waitpoint: the job is `waiting` on it, its message acknowledged
    /// (also a stray message of a job already waiting).
    Parked,
    /// The store or queue failed: the message comes back with backoff.
    Unavailable,
    /// A kind's limit was reached: not claimed (no attempt used), sent again for later.
    Deferred,
}

impl Outcome {
    /// Its name as a metric dimension.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Retrying => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::AlreadyFinished => "duplicate",
            Self::Busy => "busy",
            Self::Malformed => "malformed",
            Self::Missing => "missing",
            Self::LeaseLost => "lease_lost",
            Self::Continued => "continued",
            Self::Cancelled => "cancelled",
            Self::Released => "released",
            Self::Forwarded => "forwarded",
            Self::Parked => "parked",
            Self::Unavailable => "unavailable",
            Self::Deferred => "deferred",
        }
    }
}

/// What happened to a batch, in delivery order.
#[derive(Debug, Default)]
pub struct BatchResult {
    pub outcomes: Vec<Outcome>,
    pub verdicts: Vec<Verdict>,
    /// Message ids whose verdict is `Retry`: the partial batch failures.
    pub failures: Vec<String>,
}

impl AsRef<[Verdict]> for BatchResult {
    fn as_ref(&self) -> &[Verdict] {
        &self.verdicts
    }
}

#[async_trait::async_trait]
impl Consumer for Worker {
    type Report = BatchResult;

    async fn consume(&self, batch: &[Delivery], inv: &Invocation) -> BatchResult {
        self.process(batch, inv).await
    }
}

/// The worker: dependencies built once per cold start, shared by every invocation.
pub struct Worker {
    store: Arc<dyn WorkerStore>,
    queue: Arc<dyn WorkerQueue>,
    registry: HandlerRegistry,
    settings: WorkerSettings,
    clock: SharedClock,
    /// Turns true when the process is stopping: running jobs are given back.
    stop: watch::Receiver<bool>,
    announcer: Announcer,
    /// The lane whose queue this worker consumes (`queue`), and the deployment's queues: where
    /// follow-up jobs and misrouted jobs are sent, by their lane.
    lane: Lane,
    senders: Lanes<dyn JobSender>,
    /// What each kind's runs took lately: when a deferred job tries again.
    runtimes: gate::Runtimes,
    /// The daily token budget of each user (see [`Self::with_token_budget`]).
    token_budget: Option<crate::usage::Budget>,
}

type Graded = (Outcome, Verdict);

impl Worker {
    pub fn new(
        store: Arc<dyn WorkerStore>,
        queue: Arc<dyn WorkerQueue>,
        registry: HandlerRegistry,
        settings: WorkerSettings,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            senders: Lanes::new(queue.clone()),
            queue,
            registry,
            settings,
            clock,
            stop: watch::channel(false).1,
            announcer: Announcer::none(),
            lane: Lane::Lambda,
            runtimes: gate::Runtimes::default(),
            token_budget: None,
        }
    }

    /// Consumes `lane`'s queue (the one given to [`Self::new`]); `senders` are the deployment's queues.
    pub fn with_lanes(mut self, lane: Lane, senders: Lanes<dyn JobSender>) -> Self {
        self.lane = lane;
        self.senders = senders;
        self
    }

    /// The queue of `lane`'s jobs, if the deployment has one.
    fn sender(&self, lane: Lane) -> Option<&dyn JobSender> {
        self.senders.get(lane).map(|q| &**q)
    }

    /// Announces the webhook event of each job it finishes.
    pub fn with_announcer(mut self, announcer: Announcer) -> Self {
        self.announcer = announcer;
        self
    }

    /// Holds each user to `budget` tokens a day (see [`crate::usage`]): handlers that count model
    /// usage are told it with each count (the agent loop stops a run that crosses it).
    pub fn with_token_budget(mut self, budget: Option<crate::usage::Budget>) -> Self {
        self.token_budget = budget;
        self
    }

    /// Gives running jobs back (released, their messages visible at once) when `stop` turns true.
    pub fn with_stop(mut self, stop: watch::Receiver<bool>) -> Self {
        self.stop = stop;
        self
    }

    pub fn settings(&self) -> &WorkerSettings {
        &self.settings
    }

    /// Processes a batch; never fails as a whole.
    pub async fn process(&self, deliveries: &[Delivery], inv: &Invocation) -> BatchResult {
        // Futures built up front and boxed with an explicit `Send` bound: a closure inside the stream
        // defeats the compiler's `Send` proof (rust-lang/rust#102211), and a batch could not run on a
        // spawned task.
        let hider = Hider::new(self.queue.clone(), self.settings.lease.mul_f32(1.5));
        let hider = &hider;
        let jobs: Vec<BoxFuture<'_, (usize, Graded)>> = deliveries
            .iter()
            .enumerate()
            .map(|(i, d)| {
                Box::pin(async move {
                    let graded = self.guarded(d, inv, hider).await;
                    hider.finished(&d.receipt_handle);
                    (i, graded)
                }) as BoxFuture<'_, _>
            })
            .collect();
        let run = futures::stream::iter(jobs)
            .buffer_unordered(self.settings.concurrency.max(1))
            .collect::<Vec<_>>();
        let mut graded = hider.run_until(run).await;
        graded.sort_by_key(|(i, _)| *i);
        let mut result = BatchResult::default();
        let mut retries = Vec::new();
        for (i, (outcome, verdict)) in graded {
            let d = &deliveries[i];
            result.outcomes.push(outcome);
            result.verdicts.push(verdict);
            if let Verdict::Retry(delay) = verdict {
                retries.push((d.receipt_handle.clone(), delay));
                result.failures.push(d.message_id.clone());
            }
        }
        observe::batch(deliveries.len(), result.failures.len());
        // One call for the batch's retries. Best effort: a message whose change fails returns after the
        // queue's default visibility.
        self.queue
            .change_visibility_logged(&retries, "set a retry's visibility")
            .await;
        result
    }

    /// [`Self::process_one`], isolated: our own code does not panic on purpose, but if it ever does,
    /// only this delivery fails.
    async fn guarded(&self, d: &Delivery, inv: &Invocation, hider: &Hider) -> Graded {
        AssertUnwindSafe(self.process_one(d, inv, hider))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(message_id = %d.message_id, "worker panicked on a delivery");
                (Outcome::Unavailable, self.backoff(d.receive_count))
            })
    }

    fn backoff(&self, attempt: u32) -> Verdict {
        Verdict::Retry(self.settings.backoff.delay(attempt))
    }

    async fn process_one(&self, d: &Delivery, inv: &Invocation, hider: &Hider) -> Graded {
        let Ok(msg) = JobMessage::decode(&d.body) else {
            tracing::error!(message_id = %d.message_id, "malformed job message");
            return (Outcome::Malformed, self.backoff(d.receive_count));
        };
        let kind = observe::bounded_kind(&msg.kind, |k| self.registry.contains(k));
        // The submit's trace continues here: same trace id, the submit's span as parent.
        let parent = d.trace.as_deref().and_then(TraceContext::parse);
        let span = tracing::info_span!(
            "job",
            job_id = %msg.job_id,
            kind = %msg.kind,
            receive = d.receive_count,
            attempt = tracing::field::Empty,
            trace_id = parent.as_ref().map(|t| t.trace_id.as_str()),
            parent_span_id = parent.as_ref().map(|t| t.span_id.as_str()),
            span_id = parent.as_ref().map(|t| t.child().span_id).as_deref(),
        );
        let graded = async {
            // Only kinds with limits, and threads' runs, pay for them (see `gate`).
            let held = match (self.registry.limits(&msg.kind), msg.thread) {
                (None, false) => None,
                (limits, _) => match self.admit(limits, &msg, d, inv).await {
                    gate::Admit::Go(held) => Some(held),
                    gate::Admit::Stop(graded) => return graded,
                },
            };
            let graded = self.claim_and_run(&msg, d, inv, hider, held.as_ref()).await;
            if let Some(held) = held {
                self.give_back(held).await;
            }
            graded
        }
        .instrument(span)
        .await;
        observe::attempt(kind, graded.0.as_str());
        graded
    }

    /// Claims the job of `msg` and runs it.
    async fn claim_and_run(
        &self,
        msg: &JobMessage,
        d: &Delivery,
        inv: &Invocation,
        hider: &Hider,
        held: Option<&gate::Held>,
    ) -> Graded {
        {
            let now = self.clock.now();
            let owner = format!("{}:{:016x}", inv.request_id, rand::random::<u64>());
            let lease_until = now + self.settings.lease.as_millis() as Millis;
            match self
                .store
                .claim(&msg.job_id, &owner, lease_until, now)
                .await
            {
                Ok(job) => {
                    tracing::Span::current().record("attempt", job.attempts);
                    if job.attempts == 1 && job.continuations == 0 {
                        observe::queue_wait(&job.kind, job.submitted_at, now);
                    }
                    self.run(job, owner, d, inv, hider, held).await
                }
                Err(StoreError::NotFound) => {
                    tracing::error!("message for a job that does not exist");
                    (Outcome::Missing, self.backoff(d.receive_count))
                }
                Err(StoreError::Conflict { current: Some(job) }) => {
                    self.not_claimed(&job, now).await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim job");
                    (Outcome::Unavailable, self.backoff(d.receive_count))
                }
            }
        }
    }

    /// A delivery of a job that could not be claimed.
    async fn not_claimed(&self, job: &Job, now: Millis) -> Graded {
        if job.effective_status(now) == JobStatus::DeadLetter {
            // Every message of a dead-lettered job belongs in the DLQ, where the tools find and redrive
            // it: back at once, until SQS moves it there. A job whose runner died on its last attempt
            // is recorded dead now (best effort: reads already say so, and the sweep would).
            if let Ok(buried) = job.bury(now)
                && self.store.replace(job, &buried).await.is_ok()
            {
                self.announcer.announce(&buried).await;
            }
            tracing::info!("delivery of a dead-lettered job; on its way to the DLQ");
            return (Outcome::DeadLettered, Verdict::Retry(Duration::ZERO));
        }
        if job.status.is_terminal() {
            tracing::info!(status = %job.status, "duplicate delivery of a finished job");
            return (Outcome::AlreadyFinished, Verdict::Ack);
        }
        if job.status == JobStatus::Waiting {
            // Its resume sends a message of its own.
            tracing::info!("stray delivery of a parked job");
            return (Outcome::Parked, Verdict::Ack);
        }
        let left = job.lease_expires_at.unwrap_or(now) - now;
        let wait = Duration::from_millis(left.max(0) as u64 + 1_000).min(MAX_VISIBILITY);
        tracing::info!(
            retry_in_ms = wait.as_millis() as u64,
            "job is running elsewhere"
        );
        (Outcome::Busy, Verdict::Retry(wait))
    }

    /// Runs a claimed job, decides, applies.
    async fn run(
        &self,
        job: Job,
        owner: String,
        d: &Delivery,
        inv: &Invocation,
        hider: &Hider,
        held: Option<&gate::Held>,
    ) -> Graded {
        let before = held.and_then(|h| h.before);
        let keeper = LeaseKeeper::new(
            self.store.clone(),
            self.clock.clone(),
            owner,
            job.clone(),
            self.token_budget,
            before,
        );
        if self.lane == Lane::Lambda && job.lane == Lane::Container {
            // The worker function never runs container-only work; the container worker runs anything.
            if let Some(container) = self.sender(Lane::Container) {
                return self.forward(&keeper, &job, container, d).await;
            }
            tracing::warn!(
                "a container-only job, and no container queue to send it to: running it here"
            );
        }
        if job.cancel_requested {
            // Asked to stop before it ran (its runner died after the request): not run at all.
            return self.apply(Decision::Cancel, &keeper, &job, d).await;
        }
        let started = std::time::Instant::now();
        // Hidden while the lease is live, and half a lease more (see `hide`).
        hider.hide(&d.receipt_handle);
        let ran = match self.run_handler(&job, &keeper, d, inv, hider, held).await {
            Run::Finished(ran) => ran,
            Run::LeaseLost => return (Outcome::LeaseLost, Verdict::Ack),
            Run::Stopped => return self.release(&keeper).await,
        };
        let facts = Facts {
            receive_count: d.receive_count,
            cancel_requested: keeper.cancel_requested(),
            max_attempts: self.settings.max_attempts,
            backoff: self.settings.backoff,
            jitter: rand::random::<f64>(),
            progressed: keeper.made_progress(),
        };
        observe::handler_duration(&job.kind, started.elapsed());
        self.runtimes.ran(&job.kind, started.elapsed());
        let graded = self.apply(decide(ran, &job, facts), &keeper, &job, d).await;
        tracing::info!(outcome = ?graded.0, attempt = job.attempts, elapsed_ms = started.elapsed().as_millis() as u64, "job attempt finished");
        graded
    }

    /// Runs the handler while heartbeating (every third of a lease: the lease and the message's
    /// visibility are extended) and watching for cancel requests (every `cancel_poll`).
    async fn run_handler(
        &self,
        job: &Job,
        keeper: &Arc<LeaseKeeper>,
        d: &Delivery,
        inv: &Invocation,
        hider: &Hider,
        held: Option<&gate::Held>,
    ) -> Run {
        let Some(handler) = self.registry.get(&job.kind) else {
            return Run::Finished(Err(JobError::terminal(
                "unknown_kind",
                format!("no handler is registered for kind {:?}", job.kind),
            )));
        };
        let ctx = JobContext::attached(
            Attached {
                job_id: job.job_id.clone(),
                kind: job.kind.clone(),
                attempt: job.attempts,
                max_attempts: job.max_attempts,
                checkpoint: job.checkpoint.clone(),
                deadline: inv.deadline,
                yield_margin: self.settings.yield_margin,
                clock: self.clock.clone(),
            },
            keeper.clone(),
        );
        let partials = ctx.clone();
        let run = AssertUnwindSafe(handler.run_json(&job.input, ctx)).catch_unwind();
        tokio::pin!(run);
        let mut beat = tokio::time::interval(self.settings.lease / 3);
        beat.tick().await; // the first tick is immediate: the claim just set the lease
        let mut poll = tokio::time::interval(self.settings.cancel_poll);
        poll.tick().await;
        let mut stop = self.stop.clone();
        let stopping = async move {
            // A worker whose stop sender is gone is never stopped.
            if stop.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(stopping);
        loop {
            tokio::select! {
                ran = &mut run => {
                    let ran = ran.unwrap_or_else(|panic| {
                        observe::panicked(&job.kind);
                        Err(JobError::retryable("panic", panic_message(&panic)))
                    });
                    // A result supersedes a pending partial; any other end keeps it visible.
                    partials.end_partials(ran.is_ok()).await;
                    return Run::Finished(ran);
                }
                _ = beat.tick() => {
                    let lease = self.settings.lease.as_millis() as Millis;
                    // A Lambda's kind holds outlast its invocation already; a thread's follow the lease.
                    if let Some(held) = held {
                        self.renew_holds(held, inv.deadline.is_none()).await;
                    }
                    match keeper.update(|j, owner, now| j.heartbeat(owner, now + lease, now)).await {
                        Ok(_) => hider.hide(&d.receipt_handle),
                        Err(LeaseError::Lost) => {
                            tracing::warn!("lease lost while running; abandoning the attempt");
                            return Run::LeaseLost;
                        }
                        // The lease may still be valid; keep going and try at the next beat.
                        Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
                    }
                }
                _ = poll.tick(), if !keeper.cancel_requested() => {
                    if let Ok(true) = self.store.cancel_signalled(&job.job_id, job.redrives).await {
                        keeper.note_cancel_requested();
                    }
                }
                () = &mut stopping => return Run::Stopped,
            }
        }
    }

    /// Writes `decision` while holding the lease, and grades the delivery.
    async fn apply(
        &self,
        decision: Decision,
        keeper: &LeaseKeeper,
        job: &Job,
        d: &Delivery,
    ) -> Graded {
        let (written, graded) = match decision {
            Decision::Continue => return self.continue_later(keeper, job, d).await,
            Decision::Park {
                name,
                expires_at,
                detail,
            } => {
                return self
                    .park(
                        keeper,
                        job,
                        WaitingFor {
                            name,
                            expires_at,
                            detail,
                        },
                    )
                    .await;
            }
            Decision::Complete {
                result,
                warnings,
                pathway: None,
            } => (
                keeper
                    .update(|j, owner, now| {
                        j.complete(owner, result.clone(), warnings.clone(), now)
                    })
                    .await,
                (Outcome::Completed, Verdict::Ack),
            ),
            Decision::Complete {
                result,
                warnings,
                pathway: Some(p),
            } => {
                let lane = self.registry.lane(&p.kind);
                let invalid = if !self.registry.contains(&p.kind) {
                    Some(format!(
                        "the next stage {:?} is not a registered kind",
                        p.kind
                    ))
                } else if self.sender(lane).is_none() {
                    Some(format!(
                        "the next stage {:?} runs only on the container worker, and this deployment has no container queue",
                        p.kind
                    ))
                } else {
                    None
                };
                if let Some(message) = invalid {
                    let e = ErrorInfo::new("invalid_pathway", message, false);
                    return Box::pin(self.apply(Decision::Fail(e), keeper, job, d)).await;
                }
                let children = job.children(&p.kind, lane, &p.inputs, self.clock.now());
                let written = keeper
                    .update_spawning(
                        |j, owner, now| {
                            j.complete_into(
                                owner,
                                result.clone(),
                                warnings.clone(),
                                &p.kind,
                                &children,
                                now,
                            )
                        },
                        &children,
                    )
                    .await;
                if written.is_ok() {
                    self.start(&children, d).await;
                }
                (written, (Outcome::Completed, Verdict::Ack))
            }
            Decision::Fail(e) => (
                keeper
                    .update(|j, owner, now| j.fail(owner, JobStatus::Failed, e.clone(), now))
                    .await,
                (Outcome::Failed, Verdict::Ack),
            ),
            Decision::DeadLetter(e) => (
                keeper
                    .update(|j, owner, now| j.fail(owner, JobStatus::DeadLetter, e.clone(), now))
                    .await,
                // Back at once so SQS moves it to the DLQ on its next receive.
                (Outcome::DeadLettered, Verdict::Retry(Duration::ZERO)),
            ),
            Decision::Retry { error, after } => (
                keeper
                    .update(|j, owner, now| j.fail(owner, JobStatus::Retrying, error.clone(), now))
                    .await,
                (Outcome::Retrying, Verdict::Retry(after)),
            ),
            Decision::Cancel => (
                keeper
                    .update(|j, owner, now| j.stop_cancelled(owner, now))
                    .await,
                (Outcome::Cancelled, Verdict::Ack),
            ),
        };
        match written {
            Ok(written) => {
                if let Some(finished) = written.finished_at {
                    observe::end_to_end(&written.kind, written.submitted_at, finished);
                }
                self.announcer.announce(&written).await;
                graded
            }
            Err(LeaseError::Lost) => {
                // Someone claimed the job after our lease expired; their run decides. Our message (if it
                // is still ours) is acknowledged: the job's fate no longer depends on it.
                tracing::warn!("lease lost while running; result dropped");
                (Outcome::LeaseLost, Verdict::Ack)
            }
            Err(LeaseError::Store(e)) => {
                tracing::warn!(error = %e, "could not record the outcome; the job will run again");
                (Outcome::Unavailable, self.backoff(job.attempts))
            }
        }
    }

    /// Sends the messages of a completion's follow-up jobs, in the parent's trace. A send that fails
    /// leaves its job `queued` and untouched, which the sweep re-sends.
    async fn start(&self, children: &[Job], d: &Delivery) {
        let trace = d.trace.as_deref().and_then(TraceContext::parse);
        for child in children {
            let Some(queue) = self.sender(child.lane) else {
                continue; // checked before the children were written
            };
            if let Err(e) = queue.send_job(child, trace.as_ref()).await {
                tracing::warn!(child = %child.job_id, error = %e, "could not send a follow-up job; the sweep will");
            }
        }
    }

    /// A yield: a new message carries the job on (sent first: if we die before the job is written back
    /// to `queued`, that message finds the lease expired and claims it), then the job is suspended and
    /// this message acknowledged.
    async fn continue_later(&self, keeper: &LeaseKeeper, job: &Job, d: &Delivery) -> Graded {
        // The continuation stays in the job's trace.
        let trace = d.trace.as_deref().and_then(TraceContext::parse);
        if let Err(e) = self.queue.send_job(job, trace.as_ref()).await {
            tracing::warn!(error = %e, "could not send the continuation; retrying the attempt");
            return (Outcome::Unavailable, self.backoff(1));
        }
        let progressed = keeper.made_progress();
        match keeper
            .update(|j, owner, now| j.suspend(owner, progressed, now))
            .await
        {
            Ok(j) => tracing::info!(
                continuations = j.continuations,
                idle_continuations = j.idle_continuations,
                "job yielded; continues in a new message"
            ),
            // The continuation message finds the lease expired and resumes from the checkpoint.
            Err(e) => tracing::warn!(error = %e, "could not suspend the job"),
        }
        (Outcome::Continued, Verdict::Ack)
    }

    /// A wait: the job is parked (`waiting`, attempt given back, lease released) and its message
    /// acknowledged. Then the waitpoint is read once more: a completion that landed while the job was
    /// still running found nothing to resume and left that to us (see [`resume_parked`]).
    async fn park(&self, keeper: &LeaseKeeper, job: &Job, on: WaitingFor) -> Graded {
        let name = on.name.clone();
        let parked = match keeper
            .update(|j, owner, now| j.park(owner, on.clone(), now))
            .await
        {
            Ok(parked) => parked,
            Err(LeaseError::Lost) => return (Outcome::LeaseLost, Verdict::Ack),
            Err(LeaseError::Store(e)) => {
                tracing::warn!(error = %e, "could not park the job; the attempt runs again");
                return (Outcome::Unavailable, self.backoff(job.attempts));
            }
        };
        tracing::info!(waitpoint = %name, expires_at = on.expires_at, "job parked");
        observe::parked(&parked.kind);
        // Its `job.waiting` event, marked pending by the park itself.
        self.announcer.announce(&parked).await;
        match self.store.waitpoint(&job.job_id, &name).await {
            Ok(Some(wp)) if wp.is_settled() => {
                if let Err(e) = resume_parked(
                    &*self.store,
                    &self.senders,
                    &job.job_id,
                    &name,
                    Some(parked),
                    &self.clock,
                )
                .await
                {
                    tracing::warn!(error = %e, "could not resume a job settled while parking; the sweep will");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read the waitpoint; the sweep resumes the job if it was completed")
            }
        }
        (Outcome::Parked, Verdict::Ack)
    }

    /// A job of the other lane: its message is sent to that lane's queue (first: if we die before the
    /// release, that message finds the lease expired and claims it), the job goes back to `queued` with
    /// its attempt given back, and this message is acknowledged.
    async fn forward(
        &self,
        keeper: &LeaseKeeper,
        job: &Job,
        to: &dyn JobSender,
        d: &Delivery,
    ) -> Graded {
        let trace = d.trace.as_deref().and_then(TraceContext::parse);
        if let Err(e) = to.send_job(job, trace.as_ref()).await {
            tracing::warn!(error = %e, "could not forward the job to its queue; trying again later");
            let _ = keeper.update(|j, owner, now| j.release(owner, now)).await;
            return (Outcome::Unavailable, self.backoff(1));
        }
        if let Err(e) = keeper.update(|j, owner, now| j.release(owner, now)).await {
            tracing::warn!(error = %e, "could not release the forwarded job; it is free when its lease ends");
        }
        tracing::info!("container-only job forwarded to the container queue");
        (Outcome::Forwarded, Verdict::Ack)
    }

    /// The worker is stopping: the job goes back to `queued` (its attempt given back) and its message is
    /// visible at once, so another worker takes it without waiting for the lease to expire.
    async fn release(&self, keeper: &LeaseKeeper) -> Graded {
        if let Err(e) = keeper.update(|j, owner, now| j.release(owner, now)).await {
            tracing::warn!(error = %e, "could not release the job; it is free again when its lease ends");
        }
        tracing::info!("worker stopping: job released");
        (Outcome::Released, Verdict::Retry(Duration::ZERO))
    }
}

/// How a handler run ended.
enum Run {
    Finished(Result<Output, JobError>),
    LeaseLost,
    Stopped,
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    format!("handler panicked: {}", crate::error::panic_text(&**panic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handler_is_told_to_yield_only_near_the_end_of_any_invocation() {
        assert_eq!(
            yield_margin(Duration::from_secs(900)),
            Duration::from_secs(60)
        );
        assert_eq!(
            yield_margin(Duration::from_secs(240)),
            Duration::from_secs(60)
        );
        for secs in [1, 10, 30, 60, 120] {
            let timeout = Duration::from_secs(secs);
            assert_eq!(yield_margin(timeout), timeout / 4, "{secs} s");
        }
    }
}
