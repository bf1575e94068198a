//! The embedded `JobStore`: jobs in a map behind a mutex. Same contract as DynamoDB, held to it by the
//! conformance suite; used by `jobctl dev` and by fast tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Created, JobStore, KeyReservation, StoreError};
use crate::job::{Job, JobId, Millis};

#[derive(Debug, Default)]
pub struct MemoryStore {
    jobs: Mutex<HashMap<JobId, Job>>,
    /// scoped key -> (job, reservation); under its own lock, always taken before `jobs`.
    keys: Mutex<HashMap<String, (JobId, KeyReservation)>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Job>> {
        // A panic while holding the lock cannot leave a half-written job (every write is one insert).
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn create(&self, job: &Job) -> Result<(), StoreError> {
        let mut jobs = self.jobs();
        match jobs.get(&job.job_id) {
            Some(stored) if stored == job => Ok(()),
            Some(_) => Err(StoreError::AlreadyExists),
            None => {
                jobs.insert(job.job_id.clone(), job.clone());
                Ok(())
            }
        }
    }

    async fn create_with_key(
        &self,
        job: &Job,
        key: &KeyReservation,
        now_secs: i64,
    ) -> Result<Created, StoreError> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((job_id, held)) = keys.get(&key.scoped_key)
            && held.expires_at >= now_secs
        {
            return Ok(Created::Existing {
                job_id: job_id.clone(),
                request_hash: held.request_hash.clone(),
            });
        }
        let mut jobs = self.jobs();
        if jobs.contains_key(&job.job_id) {
            return Err(StoreError::AlreadyExists);
        }
        jobs.insert(job.job_id.clone(), job.clone());
        keys.insert(key.scoped_key.clone(), (job.job_id.clone(), key.clone()));
        Ok(Created::New)
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.jobs().get(id).cloned())
    }

    async fn claim(
        &self,
        id: &JobId,
        owner: &str,
        lease_expires_at: Millis,
        now: Millis,
    ) -> Result<Job, StoreError> {
        let mut jobs = self.jobs();
        let current = jobs.get(id).ok_or(StoreError::NotFound)?;
        if current.lease_owner.as_deref() == Some(owner)
            && current.lease_expires_at == Some(lease_expires_at)
        {
            return Ok(current.clone()); // the same claim again
        }
        let claimed =
            current
                .claim(owner, lease_expires_at, now)
                .map_err(|_| StoreError::Conflict {
                    current: Some(Box::new(current.clone())),
                })?;
        jobs.insert(id.clone(), claimed.clone());
        Ok(claimed)
    }

    async fn replace(&self, job: &Job) -> Result<(), StoreError> {
        let mut jobs = self.jobs();
        match jobs.get(&job.job_id) {
            // Writing what is already stored is a no-op, as for a retried write that landed.
            Some(cur) if cur == job => Ok(()),
            Some(cur) if cur.version + 1 == job.version => {
                jobs.insert(job.job_id.clone(), job.clone());
                Ok(())
            }
            Some(cur) => Err(StoreError::Conflict {
                current: Some(Box::new(cur.clone())),
            }),
            None => Err(StoreError::NotFound),
        }
    }

    async fn stale_queued(&self, before: Millis, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut stale: Vec<Job> = self
            .jobs()
            .values()
            .filter(|j| j.status == crate::job::JobStatus::Queued && j.updated_at < before)
            .cloned()
            .collect();
        stale.sort_by_key(|j| j.updated_at);
        stale.truncate(limit);
        Ok(stale)
    }
}
