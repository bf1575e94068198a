//! Where jobs live. `JobStore` is the port; `dynamo` (aws-sdk-dynamodb) and `memory` (embedded) are its
//! adapters. The store never decides a transition: it persists what [`crate::job`] computed, over the
//! version that value was computed from, so a concurrent change is detected instead of overwritten.

use async_trait::async_trait;

use crate::handler::BoxError;
use crate::job::{Job, JobId, Millis};

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

/// The outcome of [`JobStore::create_with_key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// The job was stored and the key now names it.
    New,
    /// The key (unexpired) already names a job: nothing was written.
    Existing { job_id: JobId, request_hash: String },
}

/// Persistence of job records. Every method is a single atomic operation on one job, and safe to retry:
/// repeating a write that already landed (the SDK retries when a response is lost) succeeds again instead
/// of reporting a conflict with itself.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Stores a new job; `AlreadyExists` if its id is taken.
    async fn create(&self, job: &Job) -> Result<(), StoreError>;

    /// Stores a new job and reserves `key` for it, atomically: either both are written or neither. If the
    /// key is reserved and unexpired at `now_secs`, returns the job it names instead.
    async fn create_with_key(
        &self,
        job: &Job,
        key: &KeyReservation,
        now_secs: i64,
    ) -> Result<Created, StoreError>;

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

    /// Replaces the stored job with `job` if the stored version is `job.version - 1` (compare-and-set).
    /// `Conflict` otherwise.
    async fn replace(&self, job: &Job) -> Result<(), StoreError>;

    /// Up to `limit` jobs still `queued` and not updated since `before`: candidates for a lost message.
    /// A full scan on DynamoDB: meant for a periodic sweep, not for a request path.
    async fn stale_queued(&self, before: Millis, limit: usize) -> Result<Vec<Job>, StoreError>;
}
