//! The embedded `JobStore`: jobs in a map behind a mutex. Same contract as DynamoDB, held to it by the
//! conformance suite; used by `jobctl dev` and by fast tests.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{Created, Insert, JobStore, KeyReservation, ListQuery, StoreError};
use crate::job::{Job, JobId, Millis};

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<JobId, Job>,
    /// scoped key -> (job, reservation).
    keys: HashMap<String, (JobId, KeyReservation)>,
    /// user -> counted jobs in flight.
    in_flight: HashMap<String, i64>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written job: every write is applied only
        // after all its checks passed, and none of the inserts panics.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn insert(&self, job: &Job, how: &Insert) -> Result<Created, StoreError> {
        debug_assert_eq!(job.counted, how.in_flight_cap.is_some());
        let mut st = self.state();
        if let Some(key) = &how.key
            && let Some((job_id, held)) = st.keys.get(&key.scoped_key)
            && held.expires_at >= how.now_secs
        {
            return Ok(Created::Existing {
                job_id: job_id.clone(),
                request_hash: held.request_hash.clone(),
            });
        }
        match st.jobs.get(&job.job_id) {
            // A retried insert that already landed.
            Some(stored) if stored == job => return Ok(Created::New),
            Some(_) => return Err(StoreError::AlreadyExists),
            None => {}
        }
        if let Some(cap) = how.in_flight_cap {
            let n = st.in_flight.entry(job.user_id.clone()).or_default();
            if *n >= i64::from(cap) {
                return Err(StoreError::InFlightCapReached);
            }
            *n += 1;
        }
        st.jobs.insert(job.job_id.clone(), job.clone());
        if let Some(key) = &how.key {
            st.keys
                .insert(key.scoped_key.clone(), (job.job_id.clone(), key.clone()));
        }
        Ok(Created::New)
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.state().jobs.get(id).cloned())
    }

    async fn claim(
        &self,
        id: &JobId,
        owner: &str,
        lease_expires_at: Millis,
        now: Millis,
    ) -> Result<Job, StoreError> {
        let mut st = self.state();
        let current = st.jobs.get(id).ok_or(StoreError::NotFound)?;
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
        st.jobs.insert(id.clone(), claimed.clone());
        Ok(claimed)
    }

    async fn replace(&self, from: &Job, to: &Job) -> Result<(), StoreError> {
        let mut st = self.state();
        match st.jobs.get(&to.job_id) {
            // Writing what is already stored is a no-op, as for a retried write that landed.
            Some(cur) if cur == to => Ok(()),
            Some(cur) if cur.version == from.version => {
                *st.in_flight.entry(to.user_id.clone()).or_default() += from.slot_change(to);
                st.jobs.insert(to.job_id.clone(), to.clone());
                Ok(())
            }
            Some(cur) => Err(StoreError::Conflict {
                current: Some(Box::new(cur.clone())),
            }),
            None => Err(StoreError::NotFound),
        }
    }

    async fn list(&self, user: &str, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let st = self.state();
        let mut jobs: Vec<&Job> = st
            .jobs
            .values()
            .filter(|j| j.user_id == user && query.status.is_none_or(|s| j.status == s))
            .filter(|j| {
                query
                    .after
                    .as_ref()
                    .is_none_or(|(t, id)| (j.submitted_at, &j.job_id) < (*t, id))
            })
            .collect();
        jobs.sort_by(|a, b| (b.submitted_at, &b.job_id).cmp(&(a.submitted_at, &a.job_id)));
        Ok(jobs.into_iter().take(query.limit).cloned().collect())
    }

    async fn in_flight(&self, user: &str) -> Result<i64, StoreError> {
        Ok(self.state().in_flight.get(user).copied().unwrap_or(0))
    }

    async fn stale_jobs(
        &self,
        before: Millis,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        use crate::job::JobStatus;
        let mut stale: Vec<Job> = self
            .state()
            .jobs
            .values()
            .filter(|j| {
                (j.status == JobStatus::Queued && j.updated_at < before)
                    || (j.status == JobStatus::Running
                        && j.effective_status(now) == JobStatus::DeadLetter)
            })
            .cloned()
            .collect();
        stale.sort_by_key(|j| j.updated_at);
        stale.truncate(limit);
        Ok(stale)
    }
}
