//! Dead-letter queue tools: list, redrive, purge. Over the ports, so they work on SQS and on the embedded
//! queue alike.
//!
//! SQS's `StartMessageMoveTask` would move messages server-side, but emulators lack it, so redrive is
//! receive -> requeue the job -> send to the jobs queue -> delete from the DLQ, in that order: a crash at
//! any point leaves the message in the DLQ (and a re-run finishes it) or sends it twice (and the worker's
//! exactly-once completion absorbs the duplicate). It never loses one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::SharedClock;
use crate::error::BoxError;
use crate::job::{ErrorInfo, JobId, JobStatus, Millis};
use crate::queue::{Delivery, JobMessage, JobQueue};
use crate::store::{Change, JobStore, RmwError, read_modify_write};

/// One message in the DLQ, with what the job record says about it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub message_id: String,
    /// `None` when the body is not a job message.
    pub job_id: Option<JobId>,
    pub kind: Option<String>,
    pub status: Option<JobStatus>,
    pub attempts: Option<u32>,
    pub last_error: Option<ErrorInfo>,
    /// The job's owner.
    pub user_id: Option<String>,
    /// When the job ended (epoch ms), else when it last changed.
    pub dead_at: Option<Millis>,
    /// The raw body, shown for messages that are not job messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    pub moved: usize,
    /// Messages left in the DLQ: not selected, or not job messages (a poison body would only return).
    pub skipped: usize,
}

/// The DLQ tools for one stack.
pub struct DeadLetters {
    store: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    dlq: Arc<dyn JobQueue>,
    clock: SharedClock,
}

/// Conflicting writes tolerated while requeueing one job (a worker's, say) before giving up.
const REQUEUE_TRIES: usize = 5;

/// How long a scanned message stays hidden, so one pass sees each message once.
const HOLD: Duration = Duration::from_secs(30);

impl DeadLetters {
    pub fn new(
        store: Arc<dyn JobStore>,
        queue: Arc<dyn JobQueue>,
        dlq: Arc<dyn JobQueue>,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            queue,
            dlq,
            clock,
        }
    }

    /// The next messages of a pass over the DLQ, each received once (hidden for [`HOLD`]); empty once
    /// the pass has seen them all. A loop over batches rather than a visitor: the callers' futures stay
    /// `Send` (an async closure borrowing each message is not provably so), so an HTTP handler can
    /// await them.
    async fn next_batch(&self) -> Result<Vec<Delivery>, BoxError> {
        Ok(self.dlq.receive(10, Duration::ZERO, Some(HOLD)).await?)
    }

    /// Lists the DLQ. Messages are released again at once (visibility 0).
    pub async fn list(&self) -> Result<Vec<DeadLetter>, BoxError> {
        let mut seen = Vec::new();
        let mut receipts = Vec::new();
        loop {
            let batch = self.next_batch().await?;
            if batch.is_empty() {
                break;
            }
            for m in &batch {
                let msg = JobMessage::decode(&m.body).ok();
                let job = match &msg {
                    Some(msg) => self.store.get(&msg.job_id).await?,
                    None => None,
                };
                seen.push(DeadLetter {
                    message_id: m.message_id.clone(),
                    job_id: msg.as_ref().map(|m| m.job_id.clone()),
                    kind: msg.as_ref().map(|m| m.kind.clone()),
                    status: job.as_ref().map(|j| j.effective_status(self.clock.now())),
                    attempts: job.as_ref().map(|j| j.attempts),
                    user_id: job.as_ref().map(|j| j.user_id.clone()),
                    dead_at: job.as_ref().map(|j| j.finished_at.unwrap_or(j.updated_at)),
                    last_error: job.and_then(|j| j.error),
                    body: msg.is_none().then(|| m.body.clone()),
                });
                receipts.push(m.receipt_handle.clone());
            }
        }
        for r in receipts {
            self.dlq.change_visibility(&r, Duration::ZERO).await.ok();
        }
        Ok(seen)
    }

    /// Moves messages back to the jobs queue and their jobs back to `queued`: all of them, or only those
    /// of `only` when given.
    pub async fn redrive(&self, only: Option<&HashSet<JobId>>) -> Result<RedriveReport, BoxError> {
        let mut report = RedriveReport::default();
        let mut release = Vec::new();
        loop {
            let batch = self.next_batch().await?;
            if batch.is_empty() {
                break;
            }
            for m in &batch {
                let msg = JobMessage::decode(&m.body).ok();
                let selected = msg
                    .as_ref()
                    .is_some_and(|msg| only.is_none_or(|ids| ids.contains(&msg.job_id)));
                let Some(msg) = msg.filter(|_| selected) else {
                    report.skipped += 1;
                    release.push(m.receipt_handle.clone());
                    continue;
                };
                self.requeue_job(&msg.job_id).await?;
                self.queue.send(&m.body, Duration::ZERO).await?;
                self.dlq.delete(&m.receipt_handle).await?;
                report.moved += 1;
            }
        }
        for r in release {
            self.dlq.change_visibility(&r, Duration::ZERO).await.ok();
        }
        Ok(report)
    }

    /// Puts the job back to `queued` if it is dead-lettered or failed; a job already queued again (an
    /// interrupted earlier redrive) or finished is left alone.
    async fn requeue_job(&self, id: &JobId) -> Result<(), BoxError> {
        let step = |job: &crate::Job| {
            Ok::<_, ()>(match job.requeue(self.clock.now()) {
                Ok(next) => Change::Write(Box::new(next), ()),
                Err(_) => Change::Keep(()),
            })
        };
        match read_modify_write(&*self.store, id, None, REQUEUE_TRIES, step).await {
            Ok(_) | Err(RmwError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every message in the DLQ; returns how many. The job records are kept.
    pub async fn purge(&self) -> Result<usize, BoxError> {
        let mut n = 0;
        loop {
            let batch = self.next_batch().await?;
            if batch.is_empty() {
                return Ok(n);
            }
            for m in &batch {
                self.dlq.delete(&m.receipt_handle).await?;
                n += 1;
            }
        }
    }
}
