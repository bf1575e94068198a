//! The deliveries queue's message, and the one way to send it. Here, beside the job queue, so every
//! writer of a terminal state (worker, status API, sweep) can announce an event without depending on the
//! delivery machinery in [`crate::webhook`].

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::JobSender;
use crate::job::{Job, JobId, WebhookStatus};

/// The body of a deliveries-queue message: which event of which job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryMessage {
    pub job_id: JobId,
    pub event_id: String,
}

/// Sends the delivery request of a job's pending event (step 2 above). Cheap to clone.
#[derive(Clone, Default)]
pub struct Announcer {
    queue: Option<Arc<dyn JobSender>>,
}

impl Announcer {
    pub fn new(deliveries: Arc<dyn JobSender>) -> Self {
        Self {
            queue: Some(deliveries),
        }
    }

    /// No deliveries queue: nothing is announced (a deployment without webhooks refuses `callback_url`
    /// at submit, so no job here has an event).
    pub fn none() -> Self {
        Self::default()
    }

    /// Requests delivery of `job`'s event if one is pending. A failed send is logged, not returned: the
    /// job is recorded, and the sweep re-announces what was not sent.
    pub async fn announce(&self, job: &Job) {
        let (Some(queue), Some(webhook)) = (&self.queue, &job.webhook) else {
            return;
        };
        if webhook.status != WebhookStatus::Pending {
            return;
        }
        let message = DeliveryMessage {
            job_id: job.job_id.clone(),
            event_id: webhook.event_id.clone(),
        };
        let body = serde_json::to_string(&message).expect("a delivery message serializes");
        if let Err(e) = queue.send(&body, Duration::ZERO).await {
            tracing::warn!(job_id = %job.job_id, error = %e, "could not announce a webhook event; the sweep will");
        }
    }
}
