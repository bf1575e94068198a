//! The lease a running attempt holds on its job, and every write it makes while holding it.
//!
//! A claim leases the job for a short time ([`super::WorkerSettings::lease`]), not the whole invocation:
//! heartbeats extend it (and the message's visibility) while the handler runs, so a worker that dies is
//! noticed within one lease, not at the end of a 15-minute invocation. Every write — heartbeat,
//! checkpoint, progress, the final outcome — is a compare-and-set on the version the keeper last wrote;
//! if someone else changed the job meanwhile and the lease is still ours, the change is re-applied to the
//! fresh copy; if the lease is gone, the attempt has lost the job and must stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Mutex;

use crate::job::{IllegalTransition, Job, Millis};
use crate::store::{JobStore, StoreError};

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
    store: Arc<dyn JobStore>,
    owner: String,
    job: Mutex<Job>,
    /// Mirrors the latest known job's `cancel_requested`, readable without waiting for a write.
    cancel_requested: AtomicBool,
}

/// Conflicts in a row before giving up: each one means another writer got in between, which for a job
/// we hold the lease on is rare (a cancel request, say).
const MAX_CONFLICTS: usize = 5;

impl LeaseKeeper {
    pub fn new(store: Arc<dyn JobStore>, owner: String, claimed: Job) -> Arc<Self> {
        Arc::new(Self {
            store,
            owner,
            cancel_requested: AtomicBool::new(claimed.cancel_requested),
            job: Mutex::new(claimed),
        })
    }

    /// Whether the job's owner asked to cancel it, as of the last write or heartbeat (a cancel request
    /// changes the job's version, so the next heartbeat re-reads it).
    pub fn cancel_requested(&self) -> bool {
        self.cancel_requested.load(Ordering::Relaxed)
    }

    /// Computes a new version with `change` (given the owner and the current job) and writes it.
    pub async fn update(
        &self,
        change: impl Fn(&Job, &str, Millis) -> Result<Job, IllegalTransition>,
    ) -> Result<Job, LeaseError> {
        let mut job = self.job.lock().await;
        for _ in 0..MAX_CONFLICTS {
            let next =
                change(&job, &self.owner, crate::now_millis()).map_err(|_| LeaseError::Lost)?;
            match self.store.replace(&job, &next).await {
                Ok(()) => {
                    *job = next.clone();
                    return Ok(next);
                }
                Err(StoreError::Conflict { .. }) => {
                    // Someone else wrote; if the lease is still ours, apply the change to their version.
                    match self.store.get(&job.job_id).await? {
                        Some(fresh)
                            if fresh.lease_owner.as_deref() == Some(self.owner.as_str()) =>
                        {
                            self.cancel_requested
                                .store(fresh.cancel_requested, Ordering::Relaxed);
                            *job = fresh
                        }
                        _ => return Err(LeaseError::Lost),
                    }
                }
                Err(StoreError::NotFound) => return Err(LeaseError::Lost),
                Err(e) => return Err(e.into()),
            }
        }
        Err(LeaseError::Lost)
    }
}
