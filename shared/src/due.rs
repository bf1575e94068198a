//! The due task: fires the timers of parked jobs (waitpoint timeouts, `ctx.sleep`, delayed starts) and
//! checks that completed waitpoints' jobs were resumed, from the due index (see
//! [`crate::store::DueTimers`]). Deployed, the sweep function runs it every minute (its `due` task);
//! `jobctl dev` and `jobctl run` every second. So a timer fires within a minute of its time on AWS,
//! and reading what is due is a Query per index shard: a parked job is never read before its time.
//!
//! What it does with each due item:
//! - a parked job whose time has passed ([`wake`]): its pending waitpoint is recorded `timed_out`
//!   (a completion that wins that race stands), then the job is resumed ([`resume_parked`]); a
//!   delayed start (no waitpoint item) is resumed. A crash in between leaves the job parked and due:
//!   the next run finishes it.
//! - a completed waitpoint ([`Due::Resume`]): its job is resumed if it is still parked on it (the
//!   completion crashed before resuming it, or the worker that was parking the job crashed before
//!   reading the waitpoint again); a job still running may be about to park on it, so it is looked at
//!   again next run; otherwise the waitpoint leaves the index. Resuming is a compare-and-set only one
//!   caller wins, so racing the completion route or the worker resumes the job once.

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use crate::clock::{Millis, SharedClock};
use crate::error::BoxError;
use crate::job::{Job, JobStatus, START_TIMER};
use crate::park::resume_parked;
use crate::queue::{JobSender, Lanes};
use crate::store::{Due, StoreError, SweepStore};
use crate::waitpoint::{WaitState, Waitpoint};

/// Due items handled by one run at most (the next run takes the rest).
pub const DUE_LIMIT: usize = 1000;

/// Due items handled at once: a burst of timers due together is fired in seconds, not minutes.
const FIRE_CONCURRENCY: usize = 16;

/// What a run of the due task did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DueReport {
    /// Due items read from the index.
    pub due: usize,
    /// Waitpoints recorded `timed_out` (a `ctx.sleep` ends this way).
    pub timed_out: usize,
    /// Parked jobs queued again: their timer passed, or their waitpoint's completion had not resumed
    /// them.
    pub resumed: usize,
    /// Items that failed (a store or queue error); they stay due and the next run tries again.
    pub failed: usize,
}

/// What waking one parked job did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Woke {
    pub timed_out: bool,
    pub resumed: bool,
}

/// The due task's dependencies (a part of the sweep's: see [`crate::sweep::Sweeper::fire_due`]).
pub struct Timers<'a> {
    pub store: &'a Arc<dyn SweepStore>,
    pub queues: &'a Lanes<dyn JobSender>,
    pub clock: &'a SharedClock,
}

impl Timers<'_> {
    /// Fires what is due now (up to [`DUE_LIMIT`] items). An item that fails is counted and left
    /// due; the others go on.
    pub async fn fire_due(&self) -> Result<DueReport, BoxError> {
        let now = self.clock.now();
        let due = self.store.due(now, DUE_LIMIT).await?;
        let mut report = DueReport {
            due: due.len(),
            ..DueReport::default()
        };
        let mut fired = futures::stream::iter(due)
            .map(|d| self.fire(d, now))
            .buffer_unordered(FIRE_CONCURRENCY);
        while let Some(outcome) = fired.next().await {
            match outcome {
                Ok(woke) => {
                    report.timed_out += usize::from(woke.timed_out);
                    report.resumed += usize::from(woke.resumed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a due timer could not be fired; the next run retries");
                    report.failed += 1;
                }
            }
        }
        Ok(report)
    }

    async fn fire(&self, due: Due, now: Millis) -> Result<Woke, StoreError> {
        match due {
            Due::Timer(job) => self.wake(&job, now).await,
            Due::Resume { job_id, waitpoint } => {
                let woke = match self.store.get(&job_id).await? {
                    Some(job) if job.waits_on(&waitpoint) => {
                        tracing::warn!(job_id = %job_id, waitpoint = %waitpoint, "a job parked on a completed waitpoint; resuming it");
                        self.wake(&job, now).await?
                    }
                    // Maybe about to park on it: look again next run.
                    Some(job) if job.status == JobStatus::Running => return Ok(Woke::default()),
                    _ => Woke::default(),
                };
                self.store.clear_due(&job_id, &waitpoint).await?;
                Ok(woke)
            }
        }
    }

    /// A parked job: resumed if its waitpoint is settled (a completion that crashed before resuming
    /// it), or once its time has passed at `now` (recorded `timed_out` first; a completion that wins
    /// that race stands). A pending waitpoint not yet due is left alone.
    pub async fn wake(&self, job: &Job, now: Millis) -> Result<Woke, StoreError> {
        let mut woke = Woke::default();
        let Some(on) = &job.waiting_for else {
            return Ok(woke);
        };
        let wp = if on.name == START_TIMER && job.started_at.is_none() {
            None // a delayed start: a timer with no item
        } else {
            self.store.waitpoint(&job.job_id, &on.name).await?
        };
        match &wp {
            None if on.expires_at > now => return Ok(woke),
            None if on.name != START_TIMER => {
                tracing::error!(job_id = %job.job_id, waitpoint = %on.name, "a parked job whose waitpoint is gone; resuming it");
            }
            _ => {}
        }
        if let Some(wp) = wp.filter(|wp| !wp.is_settled()) {
            if wp.expires_at > now {
                return Ok(woke);
            }
            let timed_out = Waitpoint {
                state: WaitState::TimedOut,
                settled_at: Some(now),
                ..wp
            };
            if self
                .store
                .settle_waitpoint(&job.job_id, &timed_out)
                .await?
                .is_none()
            {
                tracing::info!(job_id = %job.job_id, waitpoint = %on.name, "waitpoint timed out");
                crate::observe::wait_timed_out(&job.kind);
                woke.timed_out = true;
            }
        }
        woke.resumed = resume_parked(
            &**self.store,
            self.queues,
            &job.job_id,
            &on.name,
            Some(job.clone()),
            self.clock,
        )
        .await?
        .is_some();
        Ok(woke)
    }
}
