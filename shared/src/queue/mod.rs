//! The job queue: capability-shaped ports with SQS semantics, and their adapters: `sqs` (aws-sdk-sqs) and
//! `memory` (embedded, SQS semantics). Messages are small: the job id and kind; the job lives in the store.
//!
//! **Fairness.** Every job message is sent in its owner's group ([`JobSender::send_job`], the one way a
//! job's message is sent), SQS's `MessageGroupId`: on a standard queue that makes it a *fair queue*, which
//! serves tenants with fewer messages in flight first, so one owner's backlog does not hold up another's
//! jobs. The embedded queue delivers the same way ([`memory`]). `JOBKIT_FAIR_QUEUES=false` sends without
//! groups (the queue then delivers in about send order, as before fair queues).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::job::{Job, JobId, Lane, Millis};
use crate::trace::TraceContext;

mod deliveries;
pub mod memory;
pub mod sqs;

pub use deliveries::{Announcer, DeliveryMessage};

pub use memory::MemoryQueue;
pub use sqs::SqsQueue;

/// The body of a job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    pub job_id: JobId,
    pub kind: String,
    /// The job is a run of a conversation thread: the worker's gate orders it after the thread's
    /// earlier runs (see `crate::thread`), whatever its kind's limits. Absent on every other job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub thread: bool,
}

impl JobMessage {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a job message always serializes")
    }

    pub fn decode(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }

    /// The message of `job`.
    pub fn of(job: &Job) -> Self {
        Self {
            job_id: job.job_id.clone(),
            kind: job.kind.clone(),
            thread: job.thread.is_some(),
        }
    }
}

/// The longest `MessageGroupId` SQS takes.
const MAX_GROUP_LEN: usize = 128;

/// The fairness group of `owner`'s messages: the owner itself when SQS takes it as a `MessageGroupId`
/// (1 to 128 characters, ASCII letters, digits and punctuation), else a hash of it (an owner is whatever
/// the authorizer says, an IAM ARN or a display name, so it may be longer or hold spaces). A group only
/// decides whose messages are delivered first, so an owner that happens to equal another's hash costs
/// nothing but some fairness between the two.
pub fn fairness_group(owner: &str) -> Cow<'_, str> {
    let valid =
        (1..=MAX_GROUP_LEN).contains(&owner.len()) && owner.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Cow::Borrowed(owner)
    } else {
        use sha2::Digest;
        Cow::Owned(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(owner.as_bytes()))
        ))
    }
}

/// A deployment's job queues by [`Lane`]: the jobs queue, and the container queue if it has one. What
/// submit, the worker and the sweep send a job's message through, by the lane on its record.
pub struct Lanes<Q: ?Sized> {
    pub lambda: Arc<Q>,
    pub container: Option<Arc<Q>>,
}

impl<Q: ?Sized> Clone for Lanes<Q> {
    fn clone(&self) -> Self {
        Self {
            lambda: self.lambda.clone(),
            container: self.container.clone(),
        }
    }
}

impl<Q: ?Sized> Lanes<Q> {
    /// Only the jobs queue.
    pub fn new(lambda: Arc<Q>) -> Self {
        Self {
            lambda,
            container: None,
        }
    }

    /// The queue of `lane`, if the deployment has one.
    pub fn get(&self, lane: Lane) -> Option<&Arc<Q>> {
        match lane {
            Lane::Lambda => Some(&self.lambda),
            Lane::Container => self.container.as_ref(),
        }
    }
}

/// A message as a consumer receives it: from a queue (the local event source, `jobctl`), or from
/// Lambda's SQS event source (mapped in [`crate::lambda`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// How many times the message has been received, this time included (SQS ApproximateReceiveCount).
    pub receive_count: u32,
    /// When the message was first sent (SQS SentTimestamp).
    pub sent_at: Millis,
    /// The sender's W3C `traceparent` (message attribute [`crate::trace::ATTRIBUTE`]), if it sent one.
    pub trace: Option<String>,
}

/// The invocation a batch arrived in.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub request_id: String,
    /// When the invocation must end (epoch ms); `None` when nothing stops it.
    pub deadline: Option<Millis>,
}

/// A delivery's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done with: delete the message.
    Ack,
    /// Leave the message; it comes back after this delay (already set as its visibility).
    Retry(Duration),
}

/// What a queue-triggered function does with a batch: the worker (jobs) and the webhook deliverer
/// (events). Lambda's SQS adapter ([`crate::lambda`]) and the local event source ([`crate::local`])
/// drive any consumer the same way: one verdict per delivery, in order; `Retry` ones are the partial
/// batch failures.
#[async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// What the consumer reports of a batch: at least its verdicts.
    type Report: AsRef<[Verdict]> + Default + Send;

    async fn consume(&self, batch: &[Delivery], inv: &Invocation) -> Self::Report;
}

/// Why a queue call failed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The receipt handle is no longer valid (the message was deleted or received again by someone else).
    #[error("receipt handle is no longer valid")]
    StaleReceipt,
    /// The backend could not be reached or throttled us: retrying later may succeed.
    #[error("queue unavailable")]
    Unavailable {
        #[source]
        source: BoxError,
    },
}

/// The longest visibility timeout SQS accepts (12 hours).
pub const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);

/// Enqueues messages (SendMessage).
#[async_trait]
pub trait JobSender: Send + Sync {
    /// Enqueues `body`, invisible for `delay` (at most 15 minutes). Returns the message id.
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        self.send_traced(body, delay, None).await
    }

    /// [`Self::send`], carrying `trace` (see [`crate::trace`]).
    async fn send_traced(
        &self,
        body: &str,
        delay: Duration,
        trace: Option<&TraceContext>,
    ) -> Result<String, QueueError> {
        self.send_grouped(body, delay, trace, None).await
    }

    /// [`Self::send_traced`], in fairness group `group` (SQS `MessageGroupId`; see the module's doc).
    async fn send_grouped(
        &self,
        body: &str,
        delay: Duration,
        trace: Option<&TraceContext>,
        group: Option<&str>,
    ) -> Result<String, QueueError>;

    /// Enqueues `job`'s message, now, in its owner's group. Every job message is sent through here or
    /// [`Self::send_job_delayed`] (submit, resumes, the sweep's re-sends, follow-up stages,
    /// continuations, forwards, deferrals, DLQ redrives), so none misses its group.
    async fn send_job(
        &self,
        job: &Job,
        trace: Option<&TraceContext>,
    ) -> Result<String, QueueError> {
        self.send_job_delayed(job, Duration::ZERO, trace).await
    }

    /// [`Self::send_job`], invisible for `delay` (at most 15 minutes).
    async fn send_job_delayed(
        &self,
        job: &Job,
        delay: Duration,
        trace: Option<&TraceContext>,
    ) -> Result<String, QueueError> {
        let body = JobMessage::of(job).encode();
        let group = fairness_group(&job.user_id);
        self.send_grouped(&body, delay, trace, Some(&group)).await
    }
}

/// Reads the backlog (GetQueueAttributes).
#[async_trait]
pub trait QueueDepth: Send + Sync {
    /// Approximate number of messages waiting to be received.
    async fn depth(&self) -> Result<u64, QueueError>;

    /// The whole backlog, for operators (`jobctl stats`).
    async fn stats(&self) -> Result<QueueStats, QueueError> {
        Ok(QueueStats {
            waiting: self.depth().await?,
            ..QueueStats::default()
        })
    }
}

/// A queue's backlog, approximately (SQS's own counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// Visible, waiting to be received.
    pub waiting: u64,
    /// Received and not yet deleted: being worked on (or waiting out a retry's delay).
    pub in_flight: u64,
    /// Sent with a delay that has not passed.
    pub delayed: u64,
    /// Age of the oldest message, when the queue can tell (SQS reports it to CloudWatch only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_age_secs: Option<u64>,
}

/// Hides received messages for longer, or hands them back (ChangeMessageVisibility, and its batch form).
#[async_trait]
pub trait MessageVisibility: Send + Sync {
    /// Makes a received message visible again after `timeout` from now (0 = at once).
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError>;

    /// Several changes at once (SQS takes ten a request): one result per change, in order.
    async fn change_visibility_batch(
        &self,
        changes: &[(String, Duration)],
    ) -> Vec<Result<(), QueueError>> {
        let mut results = Vec::with_capacity(changes.len());
        for (receipt, timeout) in changes {
            results.push(self.change_visibility(receipt, *timeout).await);
        }
        results
    }

    /// [`Self::change_visibility_batch`], best effort: a change that fails is logged (`what` failed),
    /// and its message comes back at the queue's default visibility instead.
    async fn change_visibility_logged(&self, changes: &[(String, Duration)], what: &str) {
        if changes.is_empty() {
            return;
        }
        let results = self.change_visibility_batch(changes).await;
        for (result, (receipt, _)) in results.into_iter().zip(changes) {
            if let Err(e) = result {
                tracing::warn!(receipt = %receipt, error = %e, "could not {what}");
            }
        }
    }
}

/// Consumes messages (ReceiveMessage, DeleteMessage): what Lambda's event source does for a function.
#[async_trait]
pub trait QueueReceiver: Send + Sync {
    /// Receives up to `max` (1..=10) messages, waiting up to `wait` for the first. Each becomes invisible
    /// for `visibility`, or the queue's default when `None`.
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Acknowledges a message: it is never delivered again.
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError>;

    /// Whether a `receive` dropped before it returns has taken nothing. True of the embedded queue,
    /// which takes its messages in one step as it returns. Not of SQS: it still delivers to a long poll
    /// whose caller has gone, and those messages stay hidden for their visibility timeout with the
    /// receive counted. When false, a receive under way is waited for rather than abandoned.
    fn abandoned_receive_takes_nothing(&self) -> bool {
        false
    }
}

/// The submit function's port: send, and read the depth for backpressure.
pub trait SubmitQueue: JobSender + QueueDepth {}
impl<T: JobSender + QueueDepth + ?Sized> SubmitQueue for T {}

/// The worker's port: continuations are sent; retries and heartbeats change visibility.
pub trait WorkerQueue: JobSender + MessageVisibility {}
impl<T: JobSender + MessageVisibility + ?Sized> WorkerQueue for T {}

/// Every capability: what an adapter implements and what a bundle holds.
pub trait JobQueue: SubmitQueue + WorkerQueue + QueueReceiver {}
impl<T: SubmitQueue + WorkerQueue + QueueReceiver + ?Sized> JobQueue for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_sqs_takes_is_its_own_group_and_any_other_is_hashed() {
        assert_eq!(fairness_group("user-1"), "user-1");
        let arn = "arn:aws:iam::123456789012:role/service!{x}";
        assert_eq!(fairness_group(arn), arn);
        let at_limit = "u".repeat(MAX_GROUP_LEN);
        assert_eq!(fairness_group(&at_limit), at_limit.as_str());
        for owner in ["", "Ada Lovelace", "zoë", &"u".repeat(MAX_GROUP_LEN + 1)] {
            let group = fairness_group(owner);
            assert!(group.starts_with("sha256:") && group.len() == 71, "{group}");
            assert!(group.bytes().all(|b| b.is_ascii_graphic()));
            assert_eq!(group, fairness_group(owner), "stable");
        }
        assert_ne!(fairness_group("a b"), fairness_group("a  b"));
    }
}
