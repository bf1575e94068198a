//! The embedded store: jobs in a map behind a mutex. Same contract as DynamoDB, held to it by the
//! conformance suite; used by `jobctl dev` and by fast tests.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;

use super::{
    CancelSignals, CancelWatch, Created, Insert, JobClaimer, JobInserter, JobLister, JobReader,
    JobScanner, JobWriter, KeyReservation, ListQuery, SlotLedger, Slots, StepStore, StoreError,
};
use crate::job::{Job, JobId, JobStatus, Millis};
use crate::json::Json;

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<JobId, Job>,
    /// scoped key -> (job, reservation).
    keys: HashMap<String, (JobId, KeyReservation)>,
    /// user -> their counted jobs in flight.
    slots: HashMap<String, BTreeSet<JobId>>,
    cancel_signals: HashSet<(JobId, u32)>,
    steps: HashMap<(JobId, String), Json>,
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

    /// Deletes a job as DynamoDB's TTL would, leaving its key and slot items alone (for tests).
    pub fn expire(&self, id: &JobId) {
        self.state().jobs.remove(id);
    }
}

impl State {
    fn move_slot(&mut self, from: &Job, to: &Job) {
        let slots = self.slots.entry(to.user_id.clone()).or_default();
        match from.slot_change(to) {
            1 => {
                slots.insert(to.job_id.clone());
            }
            -1 => {
                slots.remove(&to.job_id);
            }
            _ => {}
        }
    }
}

#[async_trait]
impl JobInserter for MemoryStore {
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
            let slots = st.slots.entry(job.user_id.clone()).or_default();
            if slots.len() >= cap as usize {
                return Err(StoreError::InFlightCapReached);
            }
            slots.insert(job.job_id.clone());
        }
        st.jobs.insert(job.job_id.clone(), job.clone());
        if let Some(key) = &how.key {
            st.keys
                .insert(key.scoped_key.clone(), (job.job_id.clone(), key.clone()));
        }
        Ok(Created::New)
    }

    async fn held_key(
        &self,
        key: &KeyReservation,
        now_secs: i64,
    ) -> Result<Option<Created>, StoreError> {
        Ok(self
            .state()
            .keys
            .get(&key.scoped_key)
            .filter(|(_, held)| held.expires_at >= now_secs)
            .map(|(job_id, held)| Created::Existing {
                job_id: job_id.clone(),
                request_hash: held.request_hash.clone(),
            }))
    }
}

#[async_trait]
impl JobReader for MemoryStore {
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        Ok(self.state().jobs.get(id).cloned())
    }
}

#[async_trait]
impl JobClaimer for MemoryStore {
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
}

#[async_trait]
impl JobWriter for MemoryStore {
    async fn replace_spawning(
        &self,
        from: &Job,
        to: &Job,
        children: &[Job],
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        match st.jobs.get(&to.job_id) {
            Some(cur) if cur == to => return Ok(()),
            Some(cur) if cur.version == from.version => {}
            Some(cur) => {
                return Err(StoreError::Conflict {
                    current: Some(Box::new(cur.clone())),
                });
            }
            None => return Err(StoreError::NotFound),
        }
        if let Some(taken) = children.iter().find(|c| st.jobs.contains_key(&c.job_id)) {
            return Err(StoreError::Corrupt {
                source: format!("follow-up job {} exists already", taken.job_id).into(),
            });
        }
        st.move_slot(from, to);
        for child in children {
            if child.holds_slot() {
                st.slots
                    .entry(child.user_id.clone())
                    .or_default()
                    .insert(child.job_id.clone());
            }
            st.jobs.insert(child.job_id.clone(), child.clone());
        }
        st.jobs.insert(to.job_id.clone(), to.clone());
        Ok(())
    }

    async fn replace(&self, from: &Job, to: &Job) -> Result<(), StoreError> {
        let mut st = self.state();
        match st.jobs.get(&to.job_id) {
            // Writing what is already stored is a no-op, as for a retried write that landed.
            Some(cur) if cur == to => Ok(()),
            Some(cur) if cur.version == from.version => {
                st.move_slot(from, to);
                st.jobs.insert(to.job_id.clone(), to.clone());
                Ok(())
            }
            Some(cur) => Err(StoreError::Conflict {
                current: Some(Box::new(cur.clone())),
            }),
            None => Err(StoreError::NotFound),
        }
    }
}

#[async_trait]
impl JobLister for MemoryStore {
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
}

#[async_trait]
impl CancelSignals for MemoryStore {
    async fn signal_cancel(
        &self,
        id: &JobId,
        round: u32,
        _expires_at: i64,
    ) -> Result<(), StoreError> {
        self.state().cancel_signals.insert((id.clone(), round));
        Ok(())
    }
}

#[async_trait]
impl StepStore for MemoryStore {
    async fn step(&self, id: &JobId, name: &str) -> Result<Option<Json>, StoreError> {
        Ok(self
            .state()
            .steps
            .get(&(id.clone(), name.to_owned()))
            .cloned())
    }

    async fn record_step(
        &self,
        id: &JobId,
        name: &str,
        value: &Json,
        _expires_at: i64,
    ) -> Result<Json, StoreError> {
        Ok(self
            .state()
            .steps
            .entry((id.clone(), name.to_owned()))
            .or_insert_with(|| value.clone())
            .clone())
    }
}

#[async_trait]
impl CancelWatch for MemoryStore {
    async fn cancel_signalled(&self, id: &JobId, round: u32) -> Result<bool, StoreError> {
        Ok(self.state().cancel_signals.contains(&(id.clone(), round)))
    }
}

#[async_trait]
impl SlotLedger for MemoryStore {
    async fn in_flight(&self, user: &str) -> Result<i64, StoreError> {
        Ok(self.state().slots.get(user).map_or(0, |s| s.len() as i64))
    }

    async fn all_slots(&self) -> Result<Vec<Slots>, StoreError> {
        Ok(self
            .state()
            .slots
            .iter()
            .filter(|(_, jobs)| !jobs.is_empty())
            .map(|(user, jobs)| Slots {
                user_id: user.clone(),
                jobs: jobs.iter().cloned().collect(),
            })
            .collect())
    }

    async fn release_slots(&self, user: &str, jobs: &[JobId]) -> Result<(), StoreError> {
        if let Some(slots) = self.state().slots.get_mut(user) {
            for id in jobs {
                slots.remove(id);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl JobScanner for MemoryStore {
    async fn stale_jobs(
        &self,
        before: Millis,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut stale: Vec<Job> = self
            .state()
            .jobs
            .values()
            .filter(|j| {
                (j.status == JobStatus::Queued && j.updated_at < before)
                    || (j.status == JobStatus::Running
                        && j.effective_status(now) == JobStatus::DeadLetter)
                    || j.webhook_overdue(before)
            })
            .cloned()
            .collect();
        stale.sort_by_key(|j| j.updated_at);
        stale.truncate(limit);
        Ok(stale)
    }
}
