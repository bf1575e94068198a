//! The job queue. `JobQueue` is the port; `sqs` (aws-sdk-sqs) and `memory` (embedded, SQS semantics) are
//! its adapters. Messages are small: the job id and kind; the job itself lives in the store.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_lambda_events::sqs::SqsMessage;
use serde::{Deserialize, Serialize};

use crate::handler::BoxError;
use crate::job::{JobId, Millis};

pub mod memory;
pub mod sqs;

pub use memory::MemoryQueue;
pub use sqs::SqsQueue;

/// The body of a job message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    pub job_id: JobId,
    pub kind: String,
}

impl JobMessage {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a job message always serializes")
    }

    pub fn decode(body: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(body)
    }
}

/// A message as received from a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// How many times the message has been received, this time included (SQS ApproximateReceiveCount).
    pub receive_count: u32,
    /// When the message was first sent (SQS SentTimestamp).
    pub sent_at: Millis,
}

impl ReceivedMessage {
    /// The record Lambda's SQS event source would hand the worker for this message.
    pub fn to_lambda_record(&self, queue_arn: &str) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(self.message_id.clone());
        m.receipt_handle = Some(self.receipt_handle.clone());
        m.body = Some(self.body.clone());
        m.attributes = HashMap::from([
            (
                "ApproximateReceiveCount".to_owned(),
                self.receive_count.to_string(),
            ),
            ("SentTimestamp".to_owned(), self.sent_at.to_string()),
        ]);
        m.event_source = Some("aws:sqs".to_owned());
        m.event_source_arn = Some(queue_arn.to_owned());
        m
    }
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

/// Message transport with SQS semantics: at-least-once delivery, visibility timeouts, receive counts.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Enqueues `body`, invisible for `delay` (at most 15 minutes). Returns the message id.
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError>;

    /// Receives up to `max` (1..=10) messages, waiting up to `wait` for the first. Each becomes invisible
    /// for `visibility`, or the queue's default when `None`.
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError>;

    /// Acknowledges a message: it is never delivered again.
    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError>;

    /// Makes a received message visible again after `timeout` from now (0 = at once).
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError>;

    /// Approximate number of messages waiting to be received.
    async fn depth(&self) -> Result<u64, QueueError>;
}
