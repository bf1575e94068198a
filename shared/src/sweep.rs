//! The sweep: repairs what no message will ever move again. Run on a schedule by its own function
//! (`SweepFunction` in template.yaml) or by `jobctl sweep`.
//!
//! **What it reads**: only the jobs whose *check time* has come ([`Job::sweep_at`], see
//! [`Job::watch`]), from the due index ([`crate::store::JobScanner::to_check`]), never the table. A
//! job gets its check time when it is created ([`SWEEP_AFTER`] on) and keeps it through every write
//! until it ends, so its index entry is written twice in its life (its insert and its end) and never
//! on the hot path; a finished job leaves the index (unless its webhook event is pending) and is
//! never read again. When the sweep finds a job healthy at its check time (a long run under a live
//! lease, a deferred job), it moves the check on ([`Job::next_check`]): a long-running job is read
//! once per [`SWEEP_AFTER`] of its run. So a sweep costs what is in flight, not what is kept: the
//! bill no longer grows with retention or the table's size. The ledger pages are listed the same
//! way (see `store/dynamo/watch.rs`). Records written before check times existed are found by a
//! slice of the table per run ([`LEGACY_SLICES`]): within a day.
//!
//! **What it repairs**:
//!
//! - A submit that crashed between its DynamoDB write and its SQS send leaves a `queued` job no message
//!   will bring to a worker. A retried submit with the same Idempotency-Key re-sends it (see `api`); for
//!   the rest, the sweep re-sends every job still `queued` and untouched for longer than the threshold. A
//!   job merely waiting in a deep backlog gets a duplicate message, which the worker's claim makes
//!   harmless; a lost one gets its only message.
//! - A worker that died on a job's last attempt leaves it `running` under an expired lease; SQS moves its
//!   message to the DLQ on the next receive, so no worker records the end. Reads already say
//!   `dead_letter`; the sweep writes it at the job's next check, which also frees the owner's in-flight
//!   slot: within [`SWEEP_AFTER`] of the lease's end (at the lease's end when no heartbeat moved it: see
//!   [`Job::next_check`]). The claim does not move the check time, to keep the index off the hot path.
//! - A terminal job's webhook event whose next attempt is long overdue lost its message (a crash right
//!   after the terminal write, a delivery function that died): the sweep announces it again, counting
//!   that as an attempt, so an event that can never be delivered still ends `failed`.
//! - Timers and resumes of parked jobs are the due task's ([`crate::due`], [`Sweeper::fire_due`]:
//!   every minute from the due index, and at the start of every sweep). The sweep fires the timer of
//!   a parked job whose `job.waiting` event is pending (the sweep's until it is delivered, see
//!   [`Job::watch`]) or whose record was written before the due index existed.
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

pub use crate::job::SWEEP_AFTER;

/// How often the sweep runs when deployed (`SweepSchedule` in template.yaml): what a slice of
/// [`LEGACY_SLICES`] is chosen by.
pub const SWEEP_PERIOD: Duration = Duration::from_secs(5 * 60);

/// Records written before check times existed carry none, so no Query finds them: each run scans
/// one segment of the table out of this many (a parallel scan's `Segment`, chosen by the run's time),
/// so every record is read once a day (288 runs of [`SWEEP_PERIOD`]) and a job in flight across the
/// upgrade is repaired within a day at worst, then watched like any other. The same slice prunes the
/// limits' lapsed holds (see [`crate::store::JobScanner::slice`]). Each item is read once a day
/// instead of twice every run: 288 times less.
pub const LEGACY_SLICES: u32 = 288;

/// How old a member of an in-flight set must be before the sweep may remove it for want of a job holding
/// it. A member is added just before the write that makes its job hold it, in the same invocation, and
/// no Lambda invocation lasts longer than 15 minutes: past this, no write still on its way can make a
/// job hold it, so removing it never uncounts a job in flight.
pub const SLOT_GRACE: Duration = Duration::from_secs(60 * 60);

/// Jobs checked per sweep at most (the next sweep takes the rest, earliest check first): with a
/// check per [`SWEEP_AFTER`] of a long job's run, enough for ~3,000 jobs running longer than that at
/// once.
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
    /// Limits' concurrency holds removed because they lapsed (their worker crashed), from the pages
    /// of the run's slice.
    pub holds_lapsed: usize,
    /// Jobs read because their check time had come (or, written before check times, found by the
    /// run's slice of the table).
    pub checked: usize,
    /// Of those, healthy jobs whose next check was moved on.
    pub postponed: usize,
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
    /// [`LEGACY_SLICES`], but 1 for tests that want the whole table looked at in one run.
    pub legacy_slices: u32,
}

/// What checking one job did.
#[derive(Debug, Clone, Copy, Default)]
struct Checked {
    resent: bool,
    buried: bool,
    reannounced: bool,
    timed_out: bool,
    resumed: bool,
    postponed: bool,
}

impl Sweeper {
    /// Re-sends the messages of jobs `queued` and untouched for longer than `older_than`, records
    /// `dead_letter` for jobs whose last attempt's lease expired, re-announces lost webhook events,
    /// releases orphaned slots and prunes lapsed holds.
    pub async fn sweep(&self, older_than: Duration) -> Result<SweepReport, BoxError> {
        let now = self.clock.now();
        let older = older_than.as_millis() as Millis;
        // A job's check time is never later than [`SWEEP_AFTER`] past the moment it can first need
        // repair (see `Job::next_check`): a shorter threshold (tests, `jobctl sweep --older-than`)
        // looks that much further ahead.
        let until = now + (SWEEP_AFTER.as_millis() as Millis - older).max(0);
        let due = self.fire_due().await?;
        let due_jobs = self.store.to_check(until, SWEEP_LIMIT).await?;
        let slices = self.legacy_slices.max(1);
        let slice = (now / SWEEP_PERIOD.as_millis() as Millis).rem_euclid(i64::from(slices));
        let sliced = self
            .store
            .slice(slice as u32, slices, now, SWEEP_LIMIT)
            .await?;
        // A job the slice found has no index entry: it gets one (its check moves) whatever its time.
        let jobs: Vec<(Job, bool)> = (due_jobs.into_iter().map(|j| (j, false)))
            .chain(sliced.jobs.into_iter().map(|j| (j, true)))
            .collect();
        let mut report = SweepReport {
            timed_out: due.timed_out,
            resumed: due.resumed,
            // A lapsed hold already does not count when a writer finds its page full; removing it
            // (once a day) keeps pages small.
            holds_lapsed: sliced.holds_lapsed,
            checked: jobs.len(),
            ..SweepReport::default()
        };
        // One at a time, as the sweep always did: a backlog of queued jobs past a short threshold
        // (tests, `jobctl sweep --older-than`) is re-sent at the pace of one send at a time, never in
        // a flood of duplicates that would deepen the backlog it repairs.
        for (job, unlisted) in jobs {
            let c = self.check(&job, now - older, unlisted).await?;
            report.resent += usize::from(c.resent);
            report.buried += usize::from(c.buried);
            report.reannounced += usize::from(c.reannounced);
            report.timed_out += usize::from(c.timed_out);
            report.resumed += usize::from(c.resumed);
            report.postponed += usize::from(c.postponed);
        }
        report.slots_released = self.release_orphaned_slots().await?;
        Ok(report)
    }

    /// Repairs `job` if it needs it (`before`: a queued job untouched since then lost its message, a
    /// webhook event due before then lost its announcement); else, if its check time has come (or it
    /// has no index entry: `unlisted`), moves that on.
    async fn check(&self, job: &Job, before: Millis, unlisted: bool) -> Result<Checked, BoxError> {
        let now = self.clock.now();
        let mut did = Checked::default();
        match job.status {
            JobStatus::Running => {
                if let Ok(dead) = job.bury(now) {
                    lost_race(self.store.replace(job, &dead).await)?;
                    tracing::warn!(job_id = %job.job_id, "recorded a job whose last attempt died as dead_letter");
                    self.announcer.announce(&dead).await;
                    did.buried = true;
                    return Ok(did);
                }
            }
            JobStatus::Queued if job.updated_at < before => {
                let Some(queue) = self.queues.get(job.lane) else {
                    tracing::error!(job_id = %job.job_id, "a queued container-only job, and no container queue to send it to");
                    return Ok(did);
                };
                queue.send_job(job, None).await?;
                // Touch it so the next sweep does not send again at once.
                if let Ok(touched) = job.resent(now) {
                    lost_race(self.store.replace(job, &touched).await)?;
                }
                tracing::warn!(job_id = %job.job_id, "re-sent a job that may have lost its message");
                did.resent = true;
                return Ok(did);
            }
            JobStatus::Waiting => {
                // Its `job.waiting` event, if the worker died before announcing it.
                if job.webhook_overdue(before) {
                    did.reannounced = lost_race(self.reannounce(job, now).await)?.unwrap_or(false);
                }
                // Its timer: while its event is pending, or for a record written before the due
                // index existed; the due task fires every other one.
                let woke = self.timers().wake(job, now).await?;
                (did.timed_out, did.resumed) = (woke.timed_out, woke.resumed);
                if did.reannounced || did.resumed {
                    return Ok(did);
                }
            }
            _ if job.webhook_overdue(before) => {
                did.reannounced = lost_race(self.reannounce(job, now).await)?.unwrap_or(false);
                return Ok(did);
            }
            _ => {}
        }
        // Healthy: look again when it could next need it (a job found before its check time, by a
        // shorter threshold, keeps it).
        let moved = job.swept(job.next_check(now));
        if (unlisted || job.sweep_at.is_none_or(|at| at <= now)) && moved.watch().is_some() {
            lost_race(self.store.replace(job, &moved).await)?;
            did.postponed = true;
        }
        Ok(did)
    }

    /// Announces `job`'s pending webhook event again (its message was lost), counting that as an attempt.
    /// Whether it did (`false`: the event was not pending after all).
    async fn reannounce(&self, job: &Job, now: Millis) -> Result<bool, StoreError> {
        let Some(again) = reannounced(job, now) else {
            return Ok(false);
        };
        self.store.replace(job, &again).await?;
        tracing::warn!(job_id = %job.job_id, "re-announced a webhook event whose message was lost");
        self.announcer.announce(&again).await;
        Ok(true)
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

/// A write that lost to another writer (a worker that got there first) is fine: the job moved on.
/// `None` for that.
fn lost_race<T>(r: Result<T, StoreError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(StoreError::Conflict { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `job` with its overdue webhook event counted as a lost attempt and due now — or given up when that
/// was the last attempt (a delivery function that dies on every try must not be announced forever).
/// Its check moves on with it.
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
    let mut again = job.with_webhook(state, now).ok()?;
    again.sweep_at = Some(again.next_check(now));
    Some(again)
}
