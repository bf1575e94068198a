//! Where jobs live: capability-shaped ports, their DynamoDB (`dynamo`) and embedded (`memory`) adapters,
//! and the one bounded read-modify-write loop every writer uses.
//!
//! The store never decides a transition: it persists what [`crate::job`] computed, over the version that
//! value was computed from, so a concurrent change is detected instead of overwritten.
//!
//! Each capability is one trait, and each function's port is the set its IAM policy allows (see
//! template.yaml): [`SubmitStore`] (insert, read, write), [`StatusStore`] (read, list, write, cancel
//! signals), [`WorkerStore`] (read, claim, write, read cancel signals), [`SweepStore`] (scan, read, write,
//! slots). A function handed the wrong port fails to compile, not at runtime with AccessDenied.

use async_trait::async_trait;

use crate::error::BoxError;
use crate::job::{Job, JobId, JobStatus, Millis};
use crate::json::Json;

pub mod dynamo;
pub mod memory;

pub use dynamo::DynamoStore;
pub use memory::MemoryStore;

/// Why a store call failed. Each variant is a different decision for the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A job with this id already exists (create only).
    #[error("job already exists")]
    AlreadyExists,
    /// No job with this id.
    #[error("job not found")]
    NotFound,
    /// The write's condition did not hold: someone else changed the job first, or it is not in a state the
    /// write allows. `current` is the stored job when the backend returned it.
    #[error("job changed concurrently")]
    Conflict { current: Option<Box<Job>> },
    /// The backend could not be reached or throttled us: retrying later may succeed.
    #[error("job store unavailable")]
    Unavailable {
        #[source]
        source: BoxError,
    },
    /// The owner already has as many jobs in flight as the cap allows: nothing was written.
    #[error("too many jobs in flight")]
    InFlightCapReached,
    /// A stored record could not be read back as a job.
    #[error("stored job is malformed")]
    Corrupt {
        #[source]
        source: BoxError,
    },
}

/// An idempotency key, reserved together with the job it creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReservation {
    /// The key, already scoped to its user (see [`crate::api`]): two users' equal keys never meet.
    pub scoped_key: String,
    /// Hash of the request the key is used with.
    pub request_hash: String,
    /// Epoch seconds after which the key is free again.
    pub expires_at: i64,
}

/// How [`JobInserter::insert`] stores a new job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Insert {
    /// Reserve this idempotency key for the job; if it names a job already, that job is the answer.
    pub key: Option<KeyReservation>,
    /// Take a slot of the owner's in-flight set, failing with `InFlightCapReached` when it holds this
    /// many already. Set exactly when the job is [`Job::counted`].
    pub in_flight_cap: Option<u32>,
    /// Now, in epoch seconds: keys expired before it are free.
    pub now_secs: i64,
}

/// The outcome of [`JobInserter::insert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The job was stored (and the key, if any, now names it).
    New,
    /// The key (unexpired) already names a job: nothing was written.
    Existing { job_id: JobId, request_hash: String },
}

/// A page request of [`JobLister::list`]: one owner's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub limit: usize,
    /// Start after this job (its `submitted_at` and id): the last one of the previous page.
    pub after: Option<(Millis, JobId)>,
}

/// One owner's in-flight slots: the ids of their counted jobs not yet finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    pub user_id: String,
    pub jobs: Vec<JobId>,
}

// Every method below is a single atomic operation, and safe to retry: repeating a write that already
// landed (the SDK retries when a response is lost) succeeds again instead of reporting a conflict with
// itself.

/// Reads a job (GetItem), strongly consistent.
#[async_trait]
pub trait JobReader: Send + Sync {
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError>;
}

/// Compare-and-set writes of a job (PutItem/UpdateItem).
#[async_trait]
pub trait JobWriter: Send + Sync {
    /// Replaces `from` (as read) with `to`, computed from it, if the stored version is still
    /// `from.version`; `Conflict` otherwise. The owner's in-flight slot is taken or released by
    /// [`Job::slot_change`] in the same atomic write.
    async fn replace(&self, from: &Job, to: &Job) -> Result<(), StoreError>;

    /// [`Self::replace`], creating `children` (new jobs: a completion's next stage) in the same atomic
    /// write, with the owner's slots moved for all of them: the parent's released, the children's taken.
    async fn replace_spawning(
        &self,
        from: &Job,
        to: &Job,
        children: &[Job],
    ) -> Result<(), StoreError>;
}

/// New jobs (PutItem, UpdateItem of key and slot items).
#[async_trait]
pub trait JobInserter: Send + Sync {
    /// Stores a new job, atomically with its idempotency key and its in-flight slot when asked: either
    /// all are written or nothing is. `AlreadyExists` if its id is taken; `InFlightCapReached` if the
    /// owner is at the cap; `Existing` if the key names a job already (checked before the cap).
    async fn insert(&self, job: &Job, how: &Insert) -> Result<Created, StoreError>;

    /// The job an unexpired idempotency key names (`Created::Existing`), if any (a GetItem: a retry is
    /// answered before any write or queue check).
    async fn held_key(
        &self,
        key: &KeyReservation,
        now_secs: i64,
    ) -> Result<Option<Created>, StoreError>;

    /// Stores a new job with no key and no cap; `AlreadyExists` if its id is taken.
    async fn create(&self, job: &Job) -> Result<(), StoreError> {
        self.insert(job, &Insert::default()).await.map(|_| ())
    }
}

/// One owner's jobs (Query on the `by_user` index).
#[async_trait]
pub trait JobLister: Send + Sync {
    /// Up to `query.limit` of `user`'s jobs, newest first. A query, never a scan.
    async fn list(&self, user: &str, query: &ListQuery) -> Result<Vec<Job>, StoreError>;
}

/// The worker's claim (one conditional UpdateItem).
#[async_trait]
pub trait JobClaimer: Send + Sync {
    /// Atomically applies [`Job::claim`]: leases the job to `owner` until `lease_expires_at` and counts an
    /// attempt, if [`Job::claimable`] holds at `now`. Returns the claimed job; `Conflict` with the current
    /// job if it is not claimable; `NotFound` if it does not exist.
    async fn claim(
        &self,
        id: &JobId,
        owner: &str,
        lease_expires_at: Millis,
        now: Millis,
    ) -> Result<Job, StoreError>;
}

/// Cancel requests of running jobs, kept in a small item apart from the job, so a running attempt can
/// look for one every few seconds for the price of reading a few bytes, not the whole job record.
#[async_trait]
pub trait CancelSignals: Send + Sync {
    /// Marks `id`, in its redrive round `round`, as asked to stop (PutItem); the mark expires at
    /// `expires_at` (epoch seconds). A redriven job starts a new round, which no old mark names.
    async fn signal_cancel(
        &self,
        id: &JobId,
        round: u32,
        expires_at: i64,
    ) -> Result<(), StoreError>;
}

/// The running attempt's side of [`CancelSignals`] (GetItem).
#[async_trait]
pub trait CancelWatch: Send + Sync {
    /// Whether `id` was asked to stop in redrive round `round` (an eventually consistent read).
    async fn cancel_signalled(&self, id: &JobId, round: u32) -> Result<bool, StoreError>;
}

/// Durable step results (`ctx.step`): one small item per (job, step), apart from the job record so a
/// long agent run cannot fill the job's 400 KB item; it expires with the job (its TTL).
#[async_trait]
pub trait StepStore: Send + Sync {
    /// The recorded result of step `name` of job `id`, if any (a consistent read).
    async fn step(&self, id: &JobId, name: &str) -> Result<Option<Json>, StoreError>;

    /// Records `value` as step `name`'s result unless one is recorded already, and returns the recorded
    /// one: the first writer wins, so every attempt sees the same result.
    async fn record_step(
        &self,
        id: &JobId,
        name: &str,
        value: &Json,
        expires_at: i64,
    ) -> Result<Json, StoreError>;
}

/// In-flight slots (GetItem, Scan, UpdateItem of slot items): what the cap counts, and the sweep's repair.
#[async_trait]
pub trait SlotLedger: Send + Sync {
    /// How many slots `user` holds (the number the cap checks).
    async fn in_flight(&self, user: &str) -> Result<i64, StoreError>;
    /// Every owner's slots (a scan: for the periodic sweep only).
    async fn all_slots(&self) -> Result<Vec<Slots>, StoreError>;
    /// Releases the slots of these jobs, which are finished or gone (idempotent).
    async fn release_slots(&self, user: &str, jobs: &[JobId]) -> Result<(), StoreError>;
}

/// Jobs nothing will move again (Scan): for the periodic sweep only.
#[async_trait]
pub trait JobScanner: Send + Sync {
    /// Up to `limit` jobs the sweep must look at (see [`crate::sweep`]): still `queued` and not
    /// updated since `before` (a lost message?), or `running` on their last attempt under a lease
    /// expired at `now` (a dead runner).
    async fn stale_jobs(
        &self,
        before: Millis,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;
}

/// The submit function's port: insert, read (replays), write (a failed enqueue).
pub trait SubmitStore: JobInserter + JobReader + JobWriter {}
impl<T: JobInserter + JobReader + JobWriter + ?Sized> SubmitStore for T {}

/// The status function's port: read, list, and cancel (a write and a signal).
pub trait StatusStore: JobReader + JobLister + JobWriter + CancelSignals {}
impl<T: JobReader + JobLister + JobWriter + CancelSignals + ?Sized> StatusStore for T {}

/// The worker's port: claim, read, write, and watch for cancel signals.
pub trait WorkerStore: JobClaimer + JobReader + JobWriter + CancelWatch + StepStore {}
impl<T: JobClaimer + JobReader + JobWriter + CancelWatch + StepStore + ?Sized> WorkerStore for T {}

/// The webhook delivery function's port: read the job, record attempts.
pub trait DeliveryStore: JobReader + JobWriter {}
impl<T: JobReader + JobWriter + ?Sized> DeliveryStore for T {}

/// The sweep's port: scan, read, write, and repair slots.
pub trait SweepStore: JobScanner + JobReader + JobWriter + SlotLedger {}
impl<T: JobScanner + JobReader + JobWriter + SlotLedger + ?Sized> SweepStore for T {}

/// Every capability: what an adapter implements and what a bundle holds.
pub trait JobStore: SubmitStore + StatusStore + WorkerStore + SweepStore + DeliveryStore {}
impl<T: SubmitStore + StatusStore + WorkerStore + SweepStore + DeliveryStore + ?Sized> JobStore
    for T
{
}

/// What a read-modify-write step decided about the job it was shown.
pub enum Change<T> {
    /// Write this new version (computed from the one shown), then return `T`.
    Write(Box<Job>, T),
    /// Write this new version and create these jobs with it ([`JobWriter::replace_spawning`]).
    Spawn(Box<Job>, Vec<Job>, T),
    /// Nothing to write: return `T`.
    Keep(T),
}

/// Why [`read_modify_write`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RmwError<E> {
    /// The step refused the job as it is.
    #[error("refused")]
    Refused(E),
    #[error("job not found")]
    NotFound,
    /// Other writers kept changing the job.
    #[error("the job kept changing")]
    Contended,
    #[error(transparent)]
    Store(StoreError),
}

/// Writes every conflict loop of the kit: shows `step` the job (`current`, else read by `id`), writes
/// its new version with a compare-and-set, and on a conflict shows it the fresh job again, at most
/// `tries` times.
pub async fn read_modify_write<S, T, E>(
    store: &S,
    id: &JobId,
    mut current: Option<Job>,
    tries: usize,
    mut step: impl FnMut(&Job) -> Result<Change<T>, E>,
) -> Result<(Job, T), RmwError<E>>
where
    S: JobReader + JobWriter + ?Sized,
{
    for _ in 0..tries.max(1) {
        let job = match current.take() {
            Some(job) => job,
            None => store
                .get(id)
                .await
                .map_err(RmwError::Store)?
                .ok_or(RmwError::NotFound)?,
        };
        match step(&job).map_err(RmwError::Refused)? {
            Change::Keep(t) => return Ok((job, t)),
            Change::Write(next, t) => match store.replace(&job, &next).await {
                Ok(()) => return Ok((*next, t)),
                Err(StoreError::Conflict { current: fresh }) => current = fresh.map(|j| *j),
                Err(StoreError::NotFound) => return Err(RmwError::NotFound),
                Err(e) => return Err(RmwError::Store(e)),
            },
            Change::Spawn(next, children, t) => {
                match store.replace_spawning(&job, &next, &children).await {
                    Ok(()) => return Ok((*next, t)),
                    Err(StoreError::Conflict { current: fresh }) => current = fresh.map(|j| *j),
                    Err(StoreError::NotFound) => return Err(RmwError::NotFound),
                    Err(e) => return Err(RmwError::Store(e)),
                }
            }
        }
    }
    Err(RmwError::Contended)
}
