//! The lease a running attempt holds on its job, and every write it makes while holding it.
//!
//! A claim leases the job for a short time ([`super::WorkerSettings::lease`]), not the whole invocation:
//! heartbeats extend it (and the message's visibility) while the handler runs, so a worker that dies is
//! noticed within one lease, not at the end of a 15-minute invocation. Every write — heartbeat,
//! checkpoint, progress, the final outcome — is a compare-and-set on the version the keeper last wrote;
//! if someone else changed the job meanwhile (a cancel request) and the lease is still ours, the change is
//! re-applied to the fresh copy; if the lease is gone, the attempt has lost the job and must stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::clock::{Millis, SharedClock};
use crate::handler::{Attempt, JobError};
use crate::job::{IllegalTransition, Job, Progress};
use crate::json::Json;
use crate::store::{Change, RmwError, StoreError, WorkerStore, read_modify_write};
use crate::thread::RunEnd;
use crate::usage::{Budget, Counted, Day, Spend};
use crate::waitpoint::Waitpoint;

/// Why a lease-holder write failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Another attempt holds the job now (our lease expired and it was claimed), or it finished.
    #[error("the lease on the job was lost")]
    Lost,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Serialises one attempt's writes to its job.
pub struct LeaseKeeper {
    store: Arc<dyn WorkerStore>,
    clock: SharedClock,
    owner: String,
    job: Mutex<Job>,
    /// The job's cancel request as last seen (a write, a heartbeat, or the cancel signal): cancelled
    /// then, which wakes whatever the handler races against it ([`crate::JobContext::until_cancelled`]).
    cancellation: CancellationToken,
    /// The daily token budget of each user, if one is set: told to the handler with each count.
    budget: Option<Budget>,
    /// Whether this attempt recorded a step or saved a checkpoint (see [`Self::made_progress`]).
    progressed: AtomicBool,
    /// How the run before this one ended, as the gate read it (a thread's run).
    before: Option<RunEnd>,
    /// How many messages this run has in its thread once it appended them: every later write of
    /// the job records it ([`crate::job::ThreadRun::said`]), the terminal one included, so the next
    /// run learns it from the read its gate makes anyway, at no write of its own.
    said: std::sync::Mutex<Option<u32>>,
}

/// Conflicts in a row before giving up: each one means another writer got in between, which for a job
/// we hold the lease on is rare (a cancel request, say).
const MAX_CONFLICTS: usize = 5;

impl LeaseKeeper {
    pub fn new(
        store: Arc<dyn WorkerStore>,
        clock: SharedClock,
        owner: String,
        claimed: Job,
        budget: Option<Budget>,
        before: Option<RunEnd>,
    ) -> Arc<Self> {
        let cancellation = CancellationToken::new();
        if claimed.cancel_requested {
            cancellation.cancel();
        }
        Arc::new(Self {
            store,
            clock,
            owner,
            cancellation,
            budget,
            job: Mutex::new(claimed),
            progressed: AtomicBool::new(false),
            before,
            said: std::sync::Mutex::new(None),
        })
    }

    /// Whether this attempt recorded a step or saved a checkpoint: something a continuation resumes
    /// from (progress reports and partial results are not).
    pub fn made_progress(&self) -> bool {
        self.progressed.load(Ordering::Relaxed)
    }

    pub fn cancel_requested(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Records that the job's owner asked to stop it (seen through the cancel signal).
    pub fn note_cancel_requested(&self) {
        self.cancellation.cancel();
    }

    /// Computes a new version with `change` (given the current job, the owner and now) and writes it.
    pub async fn update(
        &self,
        change: impl Fn(&Job, &str, Millis) -> Result<Job, IllegalTransition>,
    ) -> Result<Job, LeaseError> {
        self.update_spawning(change, &[]).await
    }

    /// [`Self::update`], creating `children` in the same write (a completion's next stage).
    pub async fn update_spawning(
        &self,
        change: impl Fn(&Job, &str, Millis) -> Result<Job, IllegalTransition>,
        children: &[Job],
    ) -> Result<Job, LeaseError> {
        let mut held = self.job.lock().await;
        let id = held.job_id.clone();
        let step = |job: &Job| {
            if job.lease_owner.as_deref() != Some(self.owner.as_str()) {
                return Err(());
            }
            if job.cancel_requested {
                self.note_cancel_requested();
            }
            let mut next = change(job, &self.owner, self.clock.now()).map_err(|_| ())?;
            let said = *self.said.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(n), Some(run)) = (said, next.thread.as_mut()) {
                run.said = Some(run.said.map_or(n, |s| s.max(n)));
            }
            Ok(if children.is_empty() {
                Change::Write(Box::new(next), ())
            } else {
                Change::Spawn(Box::new(next), children.to_vec(), ())
            })
        };
        match read_modify_write(&*self.store, &id, Some(held.clone()), MAX_CONFLICTS, step).await {
            Ok((written, ())) => {
                *held = written.clone();
                Ok(written)
            }
            Err(RmwError::Store(e)) => Err(e.into()),
            Err(RmwError::Refused(()) | RmwError::NotFound | RmwError::Contended) => {
                Err(LeaseError::Lost)
            }
        }
    }

    fn job_error(e: LeaseError) -> JobError {
        match e {
            LeaseError::Lost => {
                JobError::retryable("lease_lost", "another attempt owns the job now")
            }
            LeaseError::Store(e) => JobError::retryable("store_unavailable", e),
        }
    }
}

/// What a handler's context writes through.
#[async_trait]
impl Attempt for LeaseKeeper {
    async fn save_checkpoint(&self, checkpoint: Json) -> Result<(), JobError> {
        self.update(|job, owner, now| job.save_checkpoint(owner, checkpoint.clone(), now))
            .await
            .map_err(Self::job_error)?;
        self.progressed.store(true, Ordering::Relaxed);
        Ok(())
    }

    async fn progress(&self, progress: Progress) -> Result<(), JobError> {
        self.update(|job, owner, now| job.report_progress(owner, progress.clone(), now))
            .await
            .map(drop)
            .map_err(Self::job_error)
    }

    async fn partial(&self, value: Json) -> Result<(), JobError> {
        self.update(|job, owner, now| job.publish_partial(owner, value.clone(), now))
            .await
            .map(drop)
            .map_err(Self::job_error)
    }

    fn cancellation(&self) -> CancellationToken {
        self.cancellation.clone()
    }

    async fn thread_run(&self) -> Option<crate::thread::ThreadRun> {
        self.job.lock().await.thread.clone()
    }

    /// Not lease-holder writes either: messages go only where none is yet, so an attempt that lost
    /// its lease writes what the next one would (the same run replays the same recorded turns).
    async fn thread_messages(
        &self,
        thread: &crate::thread::ThreadId,
        query: &crate::thread::MessageQuery,
    ) -> Result<Vec<crate::thread::ThreadMessage>, JobError> {
        self.store
            .messages(thread, query)
            .await
            .map_err(|e| JobError::retryable("store_unavailable", e))
    }

    async fn append_to_thread(
        &self,
        thread: &crate::thread::ThreadId,
        messages: &[crate::thread::ThreadMessage],
        expires_at: i64,
    ) -> Result<(), JobError> {
        self.store
            .append_messages(thread, messages, expires_at)
            .await
            .map_err(|e| JobError::retryable("store_unavailable", e))?;
        if let Some(n) = messages.iter().map(|m| m.index + 1).max() {
            let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
            *said = Some(said.map_or(n, |s| s.max(n)));
        }
        Ok(())
    }

    async fn thread_run_messages(
        &self,
        thread: &crate::thread::ThreadId,
        run: u64,
        indices: std::ops::Range<u32>,
    ) -> Result<Vec<crate::thread::ThreadMessage>, JobError> {
        self.store
            .run_messages(thread, run, indices)
            .await
            .map_err(|e| JobError::retryable("store_unavailable", e))
    }

    fn thread_before(&self) -> Option<RunEnd> {
        self.before
    }

    async fn step(&self, name: &str) -> Result<Option<Json>, JobError> {
        let id = self.job.lock().await.job_id.clone();
        self.store
            .step(&id, name)
            .await
            .map_err(|e| JobError::retryable("store_unavailable", e))
    }

    /// Not a lease-holder write: the record is first-writer-wins on its own item, so an attempt that
    /// lost its lease can only record what the next one would also see.
    async fn record_step(
        &self,
        name: &str,
        value: Json,
        meta: crate::steps::StepMeta,
    ) -> Result<Json, JobError> {
        let (id, expires_at) = {
            let job = self.job.lock().await;
            (job.job_id.clone(), job.expires_at)
        };
        let stands = self
            .store
            .record_step(&id, name, &value, &meta, expires_at)
            .await
            .map_err(|e| JobError::retryable("store_unavailable", e))?;
        // Called only for a step that ran (a recorded one is read, not recorded again).
        self.progressed.store(true, Ordering::Relaxed);
        Ok(stands)
    }

    async fn take_tokens(
        &self,
        bucket: &str,
        rate: &crate::limits::Rate,
        n: u32,
    ) -> Result<crate::limits::Take, JobError> {
        self.store
            .take_tokens(bucket, rate, n, self.clock.now())
            .await
            .map_err(|e| JobError::retryable("store_unavailable", e))
    }

    /// Not a lease-holder write either: the count is the owner's, and a call that ran was spent
    /// whoever holds the job now.
    async fn count_usage(&self, spend: &Spend) -> Result<Option<Counted>, JobError> {
        let owner = self.job.lock().await.user_id.clone();
        let day = Day::of(self.clock.now());
        let used = self
            .store
            .add_usage(&owner, day, spend)
            .await
            .map_err(|e| JobError::retryable("store_unavailable", e))?;
        Ok(Some(Counted {
            day,
            used,
            budget: self.budget,
        }))
    }

    /// Reads first: a replay (the common call once the job resumes) costs a read, not a failed
    /// conditional write. Like a step's record, not a lease-holder write.
    async fn waitpoint(
        &self,
        name: &str,
        timeout: std::time::Duration,
    ) -> Result<Waitpoint, JobError> {
        let (id, expires_at) = {
            let job = self.job.lock().await;
            (job.job_id.clone(), job.expires_at)
        };
        let unavailable = |e| JobError::retryable("store_unavailable", e);
        if let Some(wp) = self.store.waitpoint(&id, name).await.map_err(unavailable)? {
            return Ok(wp);
        }
        let now = self.clock.now();
        let due = (now + timeout.as_millis() as Millis).min(expires_at * 1000);
        self.store
            .open_waitpoint(&id, &Waitpoint::pending(name, due).opened(now), expires_at)
            .await
            .map_err(unavailable)
    }
}
