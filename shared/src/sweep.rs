//! The sweep: repairs what no message will ever move again. Run on a schedule by its own function
//! (`SweepFunction` in template.yaml, the only one allowed to Scan) or by `jobctl sweep`:
//!
//! - A submit that crashed between its DynamoDB write and its SQS send leaves a `queued` job no message
//!   will bring to a worker. A retried submit with the same Idempotency-Key re-sends it (see `api`); for
//!   the rest, the sweep re-sends every job still `queued` and untouched for longer than the threshold. A
//!   job merely waiting in a deep backlog gets a duplicate message, which the worker's claim makes
//!   harmless; a lost one gets its only message.
//! - A worker that died on a job's last attempt leaves it `running` under an expired lease; SQS moves its
//!   message to the DLQ on the next receive, so no worker records the end. Reads already say
//!   `dead_letter`; the sweep writes it, which also frees the owner's in-flight slot.
//! - A terminal job's webhook event whose next attempt is long overdue lost its message (a crash right
//!   after the terminal write, a delivery function that died): the sweep announces it again, counting
//!   that as an attempt, so an event that can never be delivered still ends `failed`.
//! - Timers and resumes of parked jobs are the due task's ([`crate::due`], [`Sweeper::fire_due`]:
//!   every minute from the due index, and at the start of every sweep). The scan only finds a parked
//!   job whose item was written before the due index existed and whose time has passed.
//! - An owner's in-flight set can hold a member no job holds: a crash between a job's write and its
//!   member's add or removal (see [`crate::store`]), or a record deleted unfinished (TTL, an operator).
//!   The sweep removes such members once they are older than [`SLOT_GRACE`].

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::clock::Millis;
use crate::clock::SharedClock;
use crate::due::{DueReport, Timers};
use crate::error::BoxError;
use crate::job::{Job, JobStatus, Slot, WebhookStatus};
use crate::queue::{Announcer, JobSender, Lanes};
use crate::store::{StoreError, SweepStore};
use crate::webhook::MAX_ATTEMPTS;

/// How long a job may sit `queued` and untouched before a sweep presumes its message lost: far longer
/// than any send, and than a healthy queue's wait.
pub const SWEEP_AFTER: Duration = Duration::from_secs(15 * 60);

/// How old a member of an in-flight set must be before the sweep may remove it for want of a job holding
/// it. A member is added just before the write that makes its job hold it, in the same invocation, and
/// no Lambda invocation lasts longer than 15 minutes: past this, no write still on its way can make a
/// job hold it, so removing it never uncounts a job in flight.
pub const SLOT_GRACE: Duration = Duration::from_secs(60 * 60);

/// Jobs handled per sweep at most (the next sweep takes the rest).
pub const SWEEP_LIMIT: usize = 1000;

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Queued jobs whose message was sent again.
    pub resent: usize,
    /// Jobs whose last attempt died, recorded `dead_letter`.
    pub buried: usize,
    /// Webhook events announced again because their message was lost.
    pub reannounced: usize,
    /// In-flight slots released because their job was gone or finished.
    pub slots_released: usize,
    /// Parked jobs queued again: their waitpoint was completed, or timed out.
    pub resumed: usize,
    /// Waitpoints recorded `timed_out` (a `ctx.sleep` ends this way).
    pub timed_out: usize,
    /// Limits' concurrency holds removed because they lapsed (their worker crashed).
    pub holds_lapsed: usize,
}

/// The sweep's dependencies: exactly what its function's IAM policy allows.
pub struct Sweeper {
    pub store: Arc<dyn SweepStore>,
    /// Each queued job is re-sent to its lane's queue.
    pub queues: Lanes<dyn JobSender>,
    pub clock: SharedClock,
    pub announcer: Announcer,
    /// [`SLOT_GRACE`], but for tests that know no write is under way.
    pub slot_grace: Duration,
}

impl Sweeper {
    /// Re-sends the messages of jobs `queued` and untouched for longer than `older_than`, records
    /// `dead_letter` for jobs whose last attempt's lease expired, and releases orphaned slots.
    pub async fn sweep(&self, older_than: Duration) -> Result<SweepReport, BoxError> {
        let now = self.clock.now();
        let stale = self
            .store
            .stale_jobs(now - older_than.as_millis() as i64, now, SWEEP_LIMIT)
            .await?;
        // Either write may lose to a worker that got there first: that is fine, the job moved on.
        let lost_race = |r: Result<(), StoreError>| match r {
            Ok(()) | Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        };
        let due = self.fire_due().await?;
        let mut report = SweepReport {
            timed_out: due.timed_out,
            resumed: due.resumed,
            ..SweepReport::default()
        };
        for job in stale {
            let now = self.clock.now();
            match job.status {
                JobStatus::Running => {
                    if let Ok(dead) = job.bury(now) {
                        lost_race(self.store.replace(&job, &dead).await)?;
                        tracing::warn!(job_id = %job.job_id, "recorded a job whose last attempt died as dead_letter");
                        self.announcer.announce(&dead).await;
                        report.buried += 1;
                    }
                }
                JobStatus::Queued => {
                    let Some(queue) = self.queues.get(job.lane) else {
                        tracing::error!(job_id = %job.job_id, "a queued container-only job, and no container queue to send it to");
                        continue;
                    };
                    queue.send_job(&job, None).await?;
                    // Touch it so the next sweep does not send again at once.
                    if let Ok(touched) = job.resent(now) {
                        lost_race(self.store.replace(&job, &touched).await)?;
                    }
                    tracing::warn!(job_id = %job.job_id, "re-sent a job that may have lost its message");
                    report.resent += 1;
                }
                JobStatus::Waiting => {
                    // Its `job.waiting` event, if the worker died before announcing it.
                    if job.webhook_overdue(now - older_than.as_millis() as i64) {
                        lost_race(self.reannounce(&job, now, &mut report).await)?;
                    }
                    // Its timer, only for a job written before the due index existed (see
                    // `JobScanner`); the due task fires every other one.
                    let woke = self.timers().wake(&job, now).await?;
                    report.timed_out += usize::from(woke.timed_out);
                    report.resumed += usize::from(woke.resumed);
                }
                _ => lost_race(self.reannounce(&job, now, &mut report).await)?,
            }
        }
        report.slots_released = self.release_orphaned_slots().await?;
        // A lapsed hold already does not count when a writer finds its page full; removing it here
        // keeps pages small and `jobctl stats` honest.
        report.holds_lapsed = self.store.prune_holds(now).await?;
        Ok(report)
    }

    /// Announces `job`'s pending webhook event again (its message was lost), counting that as an attempt.
    async fn reannounce(
        &self,
        job: &Job,
        now: Millis,
        report: &mut SweepReport,
    ) -> Result<(), StoreError> {
        let Some(again) = reannounced(job, now) else {
            return Ok(());
        };
        self.store.replace(job, &again).await?;
        tracing::warn!(job_id = %job.job_id, "re-announced a webhook event whose message was lost");
        self.announcer.announce(&again).await;
        report.reannounced += 1;
        Ok(())
    }

    /// The due task (see [`crate::due`]): fires the timers due now and checks completed waitpoints'
    /// resumes, from the due index. Run every minute on its own, and by every [`Self::sweep`].
    pub async fn fire_due(&self) -> Result<DueReport, BoxError> {
        self.timers().fire_due().await
    }

    fn timers(&self) -> Timers<'_> {
        Timers {
            store: &self.store,
            queues: &self.queues,
            clock: &self.clock,
        }
    }

    /// Removes every member older than the grace that no job holds (its job is gone, finished, or
    /// holds a newer member). Exact against concurrent writers: see [`SLOT_GRACE`].
    pub async fn release_orphaned_slots(&self) -> Result<usize, BoxError> {
        let now = self.clock.now();
        let grace = self.slot_grace.as_millis() as i64;
        let mut released = 0;
        for page in self.store.all_slots().await? {
            let mut orphans = Vec::new();
            // Members written before slots were stamped count as old.
            let old = |s: &Slot| s.since.is_none_or(|t| t * 1000 + grace <= now);
            for slot in page.slots.into_iter().filter(old) {
                // Held only by its job, on the page the job names.
                match self.store.get(&slot.job_id).await? {
                    Some(job) if job.holds(&slot) => {}
                    _ => orphans.push(slot),
                }
            }
            if !orphans.is_empty() {
                tracing::warn!(
                    orphans = orphans.len(),
                    page = ?page.page,
                    "released in-flight slots no job holds"
                );
                self.store.release_slots(&page.ledger, &orphans).await?;
                released += orphans.len();
            }
        }
        Ok(released)
    }
}

/// `job` with its overdue webhook event counted as a lost attempt and due now — or given up when that
/// was the last attempt (a delivery function that dies on every try must not be announced forever).
fn reannounced(job: &Job, now: Millis) -> Option<Job> {
    let mut state = job.webhook.clone()?;
    state.attempts += 1;
    state.last_status = None;
    state.last_error = Some("lost: the delivery did not report back; announced again".into());
    if state.attempts >= MAX_ATTEMPTS {
        state.status = WebhookStatus::Failed;
        state.next_attempt_at = None;
    } else {
        state.next_attempt_at = Some(now);
    }
    job.with_webhook(state, now).ok()
}
