//! Where jobs live. `JobStore` is the port; `dynamo` (aws-sdk-dynamodb) and `memory` (embedded) are its
//! adapters. The store never decides a transition: it persists what [`crate::job`] computed, over the
//! version that value was computed from, so a concurrent change is detected instead of overwritten.

use async_trait::async_trait;

use crate::handler::BoxError;
use crate::job::{Job, JobId, JobStatus, Millis};

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

/// How [`JobStore::insert`] stores a new job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Insert {
    /// Reserve this idempotency key for the job; if it names a job already, that job is the answer.
    pub key: Option<KeyReservation>,
    /// Take a slot of the owner's in-flight count, failing with `InFlightCapReached` when it holds this
    /// many already. Set exactly when the job is [`Job::counted`].
    pub in_flight_cap: Option<u32>,
    /// Now, in epoch seconds: keys expired before it are free.
    pub now_secs: i64,
}

/// The outcome of [`JobStore::insert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The job was stored (and the key, if any, now names it).
    New,
    /// The key (unexpired) already names a job: nothing was written.
    Existing { job_id: JobId, request_hash: String },
}

/// A page request of [`JobStore::list`]: one owner's jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    pub limit: usize,
    /// Start after this job (its `submitted_at` and id): the last one of the previous page.
    pub after: Option<(Millis, JobId)>,
}

/// Persistence of job records. Every method is a single atomic operation on one job, and safe to retry:
/// repeating a write that already landed (the SDK retries when a response is lost) succeeds again instead
/// of reporting a conflict with itself.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new job, atomically with its idempotency key and its in-flight slot when asked: either
    /// all are written or nothing is. `AlreadyExists` if its id is taken; `InFlightCapReached` if the
    /// owner is at the cap; `Existing` if the key names a job already (checked before the cap).
    async fn insert(&self, job: &Job, how: &Insert) -> Result<Created, StoreError>;

    /// Stores a new job with no key and no cap; `AlreadyExists` if its id is taken.
    async fn create(&self, job: &Job) -> Result<(), StoreError> {
        self.insert(job, &Insert::default()).await.map(|_| ())
    }

    /// Reads a job, strongly consistent.
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError>;

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

    /// Replaces `from` (as read) with `to`, computed from it, if the stored version is still
    /// `from.version` (compare-and-set); `Conflict` otherwise. The owner's in-flight count moves by
    /// [`Job::slot_change`] in the same atomic write.
    async fn replace(&self, from: &Job, to: &Job) -> Result<(), StoreError>;

    /// Up to `query.limit` of `user`'s jobs, newest first. A query, never a scan (the `by_user` index).
    async fn list(&self, user: &str, query: &ListQuery) -> Result<Vec<Job>, StoreError>;

    /// How many of `user`'s counted jobs are in flight (the counter the cap checks).
    async fn in_flight(&self, user: &str) -> Result<i64, StoreError>;

    /// Up to `limit` jobs the sweep must look at (see [`crate::recovery`]): still `queued` and not
    /// updated since `before` (a lost message?), or `running` on their last attempt under a lease
    /// expired at `now` (a dead runner). A full scan on DynamoDB: for a periodic sweep, not a request.
    async fn stale_jobs(
        &self,
        before: Millis,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError>;
}
