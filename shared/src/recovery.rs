//! The sweep for jobs nothing will ever move again, run on a schedule (the worker function's `Sweep`
//! event in template.yaml, or `jobctl sweep`):
//!
//! - A submit that crashed between its DynamoDB write and its SQS send leaves a `queued` job no message
//!   will bring to a worker. A retried submit with the same Idempotency-Key re-sends it (see `api`); for
//!   the rest, the sweep re-sends every job still `queued` and untouched for longer than the threshold. A
//!   job merely waiting in a deep backlog gets a duplicate message, which the worker's claim makes
//!   harmless; a lost one gets its only message.
//! - A worker that died on a job's last attempt leaves it `running` under an expired lease; SQS moves its
//!   message to the DLQ on the next receive, so no worker records the end. Reads already say
//!   `dead_letter`; the sweep writes it, which also frees the owner's in-flight slot.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::handler::BoxError;
use crate::job::JobStatus;
use crate::queue::{JobMessage, JobQueue};
use crate::store::{JobStore, StoreError};

/// How long a job may sit `queued` and untouched before a sweep presumes its message lost: far longer
/// than any send, and than a healthy queue's wait.
pub const SWEEP_AFTER: Duration = Duration::from_secs(15 * 60);

/// Jobs handled per sweep at most (the next sweep takes the rest).
pub const SWEEP_LIMIT: usize = 1000;

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Queued jobs whose message was sent again.
    pub resent: usize,
    /// Jobs whose last attempt died, recorded `dead_letter`.
    pub buried: usize,
}

/// Re-sends the messages of jobs `queued` and untouched for longer than `older_than`, and records
/// `dead_letter` for jobs whose last attempt's lease expired.
pub async fn sweep(
    store: &Arc<dyn JobStore>,
    queue: &Arc<dyn JobQueue>,
    older_than: Duration,
) -> Result<SweepReport, BoxError> {
    let now = crate::now_millis();
    let stale = store
        .stale_jobs(now - older_than.as_millis() as i64, now, SWEEP_LIMIT)
        .await?;
    // Either write may lose to a worker that got there first: that is fine, the job moved on.
    let lost_race = |r: Result<(), StoreError>| match r {
        Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e),
    };
    let mut report = SweepReport::default();
    for job in stale {
        if job.status == JobStatus::Running {
            if let Ok(dead) = job.bury(crate::now_millis()) {
                lost_race(store.replace(&job, &dead).await)?;
                tracing::warn!(job_id = %job.job_id, "recorded a job whose last attempt died as dead_letter");
                report.buried += 1;
            }
            continue;
        }
        let msg = JobMessage {
            job_id: job.job_id.clone(),
            kind: job.kind.clone(),
        };
        queue.send(&msg.encode(), Duration::ZERO).await?;
        // Touch it so the next sweep does not send again at once.
        if let Ok(touched) = job.resent(crate::now_millis()) {
            lost_race(store.replace(&job, &touched).await)?;
        }
        tracing::warn!(job_id = %job.job_id, "re-sent a job that may have lost its message");
        report.resent += 1;
    }
    Ok(report)
}
