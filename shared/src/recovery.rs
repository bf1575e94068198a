//! The sweep for jobs whose message was lost: a submit that crashed between its DynamoDB write and its
//! SQS send leaves a `queued` job no message will ever bring to a worker. A retried submit with the same
//! Idempotency-Key re-sends it (see `api`); for the rest, this sweep, run on a schedule (the worker
//! function's `Sweep` event in template.yaml, or `jobctl sweep`), re-sends every job still `queued` and
//! untouched for longer than the threshold. A job merely waiting in a deep backlog gets a duplicate
//! message, which the worker's claim makes harmless; a lost one gets its only message.

use std::sync::Arc;
use std::time::Duration;

use crate::handler::BoxError;
use crate::queue::{JobMessage, JobQueue};
use crate::store::{JobStore, StoreError};

/// How long a job may sit `queued` and untouched before a sweep presumes its message lost: far longer
/// than any send, and than a healthy queue's wait.
pub const SWEEP_AFTER: Duration = Duration::from_secs(15 * 60);

/// Jobs re-sent per sweep at most (the next sweep takes the rest).
pub const SWEEP_LIMIT: usize = 1000;

/// Re-sends the messages of jobs `queued` and untouched for longer than `older_than`. Returns how many.
pub async fn resend_stale(
    store: &Arc<dyn JobStore>,
    queue: &Arc<dyn JobQueue>,
    older_than: Duration,
) -> Result<usize, BoxError> {
    let now = crate::now_millis();
    let stale = store
        .stale_queued(now - older_than.as_millis() as i64, SWEEP_LIMIT)
        .await?;
    let mut sent = 0;
    for job in stale {
        let msg = JobMessage {
            job_id: job.job_id.clone(),
            kind: job.kind.clone(),
        };
        queue.send(&msg.encode(), Duration::ZERO).await?;
        // Touch it so the next sweep does not send again at once; a worker that claimed it meanwhile
        // wins, and that is fine.
        if let Ok(touched) = job.resent(crate::now_millis()) {
            match store.replace(&job, &touched).await {
                Ok(()) | Err(StoreError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        tracing::warn!(job_id = %job.job_id, "re-sent a job that may have lost its message");
        sent += 1;
    }
    Ok(sent)
}
