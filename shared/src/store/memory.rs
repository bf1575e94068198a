//! The embedded store: jobs in a map behind a mutex. Same contract as DynamoDB, held to it by the
//! conformance suite; used by `jobctl dev` and by fast tests.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use sha2::Digest;

use super::{
    CancelSignals, CancelWatch, Created, Due, DueTimers, Insert, JobClaimer, JobInserter,
    JobLister, JobReader, JobScanner, JobWriter, LimitStore, ListQuery, PageSlots, RateBuckets,
    Slice, SlotLedger, StepLister, StepStore, StoreError, WaitpointStore,
};
use crate::job::{Job, JobId, JobStatus, Millis, Slot, Watch};
use crate::json::Json;
use crate::limits::bucket;
use crate::limits::{Deferred, Hold, Rate, Take};
use crate::slots::{Layout, Ledger};
use crate::steps::{Listed, Recorded, RecordedStep, StepMeta, StepPosition, StepQuery};
use crate::waitpoint::Waitpoint;

mod threads;
mod usage;

#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// Usage items by key (`use#<owner>#<day>`, see [`crate::usage`]).
    usage: Mutex<HashMap<String, crate::usage::DayUsage>>,
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<JobId, Job>,
    /// (ledger, page) -> its members. Every write here is one step under the lock, so the pages
    /// always hold exactly the slots held.
    slots: HashMap<(Ledger, Option<u32>), BTreeSet<Slot>>,
    cancel_signals: HashSet<(JobId, u32)>,
    steps: HashMap<(JobId, String), (Json, StepMeta)>,
    waitpoints: HashMap<(JobId, String), Waitpoint>,
    /// The due index, ordered by time: (due at, job, `None` for the job's timer or the name of a
    /// completed waitpoint to check). Kept by [`State::put_job`] and the waitpoint writes, as
    /// DynamoDB keeps its `by_due` index.
    due: BTreeSet<(Millis, JobId, Option<String>)>,
    /// The sweep's part of the due index: (check time, job) of every job [`Job::watch`] gives to
    /// the sweep. Kept by [`State::put_job`].
    watched: BTreeSet<(Millis, JobId)>,
    /// (limit ledger, page) -> its holds.
    holds: HashMap<(Ledger, u32), BTreeSet<Hold>>,
    /// Rate bucket -> its `tat`.
    buckets: HashMap<String, bucket::Micros>,
    /// Conversation threads and their messages (see `threads`).
    threads: threads::Threads,
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

    /// Every finished job that finished at or after `since` (epoch ms): when, and in which status.
    /// `jobctl dev`'s throughput: the embedded store is all in its process, so it reads its records
    /// (DynamoDB has no such query; a deployed stack's throughput comes from CloudWatch).
    pub fn finished_since(&self, since: Millis) -> Vec<(Millis, JobStatus)> {
        self.state()
            .jobs
            .values()
            .filter_map(|j| Some((j.finished_at?, j.status)))
            .filter(|(at, status)| *at >= since && status.is_terminal())
            .collect()
    }

    /// Deletes a job as DynamoDB's TTL would, leaving its slot member alone (for tests).
    pub fn expire(&self, id: &JobId) {
        let mut st = self.state();
        if let Some(old) = st.jobs.remove(id) {
            st.unwatch(&old);
        }
    }
}

impl State {
    /// Stores `job`, moving its entry in the due index as [`Job::watch`] says.
    fn put_job(&mut self, job: Job) {
        if let Some(old) = self.jobs.get(&job.job_id).cloned() {
            self.unwatch(&old);
        }
        match job.watch() {
            Some(Watch::Timer(at)) => {
                self.due.insert((at, job.job_id.clone(), None));
            }
            Some(Watch::Sweep(at)) => {
                self.watched.insert((at, job.job_id.clone()));
            }
            None => {}
        }
        self.jobs.insert(job.job_id.clone(), job);
    }

    /// Takes `job`'s entry (as stored) out of the due index.
    fn unwatch(&mut self, job: &Job) {
        match job.watch() {
            Some(Watch::Timer(at)) => {
                self.due.remove(&(at, job.job_id.clone(), None));
            }
            Some(Watch::Sweep(at)) => {
                self.watched.remove(&(at, job.job_id.clone()));
            }
            None => {}
        }
    }

    fn page(&mut self, user: &str, page: Option<u32>) -> &mut BTreeSet<Slot> {
        self.slots.entry((Ledger::owner(user), page)).or_default()
    }

    fn move_slot(&mut self, from: &Job, to: &Job) {
        match from.slot_change(to) {
            1 => {
                self.page(&to.user_id, to.slot_page).insert(to.slot());
            }
            -1 => {
                self.page(&from.user_id, from.slot_page)
                    .remove(&from.slot());
            }
            _ => {}
        }
    }

    /// Adds `job`'s member under `cap`, as the DynamoDB store does with an exact view: on the page the
    /// job names if it holds the member already or has room, else on the page [`Layout::pick`] picks.
    /// The page taken, or `None` when every page is full.
    fn take_slot(&mut self, job: &Job, cap: u32) -> Option<u32> {
        let (ledger, layout) = (Ledger::owner(&job.user_id), Layout::new(cap));
        let load = |st: &State, p: u32| {
            st.slots
                .get(&(ledger.clone(), Some(p)))
                .map_or(0, |s| s.len() as u32)
        };
        let fits = |st: &State, p: u32| {
            load(st, p) < layout.capacity(p)
                || st.slots.get(&(ledger.clone(), Some(p))).is_some_and(|s| {
                    s.iter()
                        .any(|m| m.job_id == job.job_id && m.since == job.slot_at)
                })
        };
        let page = match job.slot_page {
            Some(p) if p < layout.pages() && fits(self, p) => p,
            _ => layout.pick(&job.job_id, |p| Some(load(self, p)), &[])?,
        };
        let mut slot = job.slot();
        slot.page = Some(page);
        self.page(&job.user_id, Some(page)).insert(slot);
        Some(page)
    }
}

#[async_trait]
impl JobInserter for MemoryStore {
    async fn insert(&self, job: &mut Job, how: &Insert) -> Result<Created, StoreError> {
        self.state().insert(job, how)
    }
}

impl State {
    /// [`JobInserter::insert`] under the lock (an insert with its thread, too: see `threads`).
    fn insert(&mut self, job: &mut Job, how: &Insert) -> Result<Created, StoreError> {
        debug_assert_eq!(job.counted, how.in_flight_cap.is_some());
        let st = self;
        match st.jobs.get(&job.job_id) {
            // A retried insert that already landed.
            Some(stored) if stored == job => return Ok(Created::New),
            // The key names a job: the cap does not matter to a retry.
            Some(stored) if how.keyed => return Ok(Created::Existing(Box::new(stored.clone()))),
            Some(_) => return Err(StoreError::AlreadyExists),
            None => {}
        }
        if let Some(cap) = how.in_flight_cap {
            job.slot_page = Some(
                st.take_slot(job, cap)
                    .ok_or(StoreError::InFlightCapReached)?,
            );
        }
        st.put_job(job.clone());
        Ok(Created::New)
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
        st.put_job(claimed.clone());
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
                st.page(&child.user_id, child.slot_page)
                    .insert(child.slot());
            }
            st.put_job(child.clone());
        }
        st.put_job(to.clone());
        Ok(())
    }

    async fn replace(&self, from: &Job, to: &Job) -> Result<(), StoreError> {
        let mut st = self.state();
        match st.jobs.get(&to.job_id) {
            // Writing what is already stored is a no-op, as for a retried write that landed.
            Some(cur) if cur == to => Ok(()),
            Some(cur) if cur.version == from.version => {
                st.move_slot(from, to);
                st.put_job(to.clone());
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
            .filter(|j| j.user_id == user && query.matches(j))
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
            .map(|(value, _)| value.clone()))
    }

    async fn record_step(
        &self,
        id: &JobId,
        name: &str,
        value: &Json,
        meta: &StepMeta,
        _expires_at: i64,
    ) -> Result<Json, StoreError> {
        Ok(self
            .state()
            .steps
            .entry((id.clone(), name.to_owned()))
            .or_insert_with(|| (value.clone(), *meta))
            .0
            .clone())
    }
}

#[async_trait]
impl StepLister for MemoryStore {
    async fn steps(&self, id: &JobId, query: &StepQuery) -> Result<Vec<Listed>, StoreError> {
        let st = self.state();
        let steps =
            st.steps
                .iter()
                .filter(|((job, _), _)| job == id)
                .map(|((_, name), (value, meta))| Listed {
                    position: StepPosition {
                        at: meta.recorded_at,
                        waitpoint: false,
                        name: name.clone(),
                    },
                    entry: Recorded::Step(RecordedStep {
                        name: name.clone(),
                        value: value.clone(),
                        meta: Some(*meta),
                    }),
                });
        // As on DynamoDB, a waitpoint without an open time has no place in the list.
        let waitpoints = st
            .waitpoints
            .iter()
            .filter(|((job, _), _)| job == id)
            .filter_map(|(_, wp)| {
                Some(Listed {
                    position: StepPosition {
                        at: wp.opened_at?,
                        waitpoint: true,
                        name: wp.name.clone(),
                    },
                    entry: Recorded::Waitpoint(wp.clone()),
                })
            });
        let mut all: Vec<Listed> = steps
            .chain(waitpoints)
            .filter(|l| query.after.as_ref().is_none_or(|after| l.position > *after))
            .collect();
        all.sort_by(|a, b| a.position.cmp(&b.position));
        all.truncate(query.limit);
        Ok(all)
    }
}

#[async_trait]
impl WaitpointStore for MemoryStore {
    async fn waitpoint(&self, id: &JobId, name: &str) -> Result<Option<Waitpoint>, StoreError> {
        Ok(self
            .state()
            .waitpoints
            .get(&(id.clone(), name.to_owned()))
            .cloned())
    }

    async fn open_waitpoint(
        &self,
        id: &JobId,
        wp: &Waitpoint,
        _expires_at: i64,
    ) -> Result<Waitpoint, StoreError> {
        Ok(self
            .state()
            .waitpoints
            .entry((id.clone(), wp.name.clone()))
            .or_insert_with(|| wp.clone())
            .clone())
    }

    async fn settle_waitpoint(
        &self,
        id: &JobId,
        to: &Waitpoint,
    ) -> Result<Option<Waitpoint>, StoreError> {
        let mut st = self.state();
        let current = st
            .waitpoints
            .get_mut(&(id.clone(), to.name.clone()))
            .ok_or(StoreError::NotFound)?;
        if current == to {
            return Ok(None); // the same write again
        }
        if current.is_settled() {
            return Ok(Some(current.clone()));
        }
        *current = to.clone();
        if let Some(at) = to.repair_at() {
            st.due.insert((at, id.clone(), Some(to.name.clone())));
        }
        Ok(None)
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
    async fn in_flight(&self, user: &str, _cap: u32) -> Result<i64, StoreError> {
        let ledger = Ledger::owner(user);
        Ok(self
            .state()
            .slots
            .iter()
            .filter(|((l, _), _)| *l == ledger)
            .map(|(_, s)| s.len() as i64)
            .sum())
    }

    async fn all_slots(&self) -> Result<Vec<PageSlots>, StoreError> {
        Ok(self
            .state()
            .slots
            .iter()
            .filter(|(_, slots)| !slots.is_empty())
            .map(|((ledger, page), slots)| PageSlots {
                ledger: ledger.clone(),
                page: *page,
                slots: slots.iter().cloned().collect(),
            })
            .collect())
    }

    async fn release_slots(&self, ledger: &Ledger, slots: &[Slot]) -> Result<(), StoreError> {
        let mut st = self.state();
        for slot in slots {
            if let Some(held) = st.slots.get_mut(&(ledger.clone(), slot.page)) {
                held.remove(slot);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl LimitStore for MemoryStore {
    async fn hold(
        &self,
        ledger: &Ledger,
        cap: u32,
        hold: &Hold,
        now: Millis,
    ) -> Result<Option<u32>, StoreError> {
        let layout = Layout::new(cap);
        let mut st = self.state();
        // Lapsed holds do not count: cleared first, as a DynamoDB writer clears a full page.
        for page in 0..layout.pages() {
            if let Some(h) = st.holds.get_mut(&(ledger.clone(), page)) {
                h.retain(|h| !h.expired(now));
            }
        }
        let load = |st: &State, p: u32| {
            st.holds
                .get(&(ledger.clone(), p))
                .map_or(0, |h| h.len() as u32)
        };
        let Some(page) = layout.pick(&hold.job_id, |p| Some(load(&st, p)), &[]) else {
            return Ok(None);
        };
        st.holds
            .entry((ledger.clone(), page))
            .or_default()
            .insert(hold.clone());
        Ok(Some(page))
    }

    async fn unhold(&self, ledger: &Ledger, page: u32, hold: &Hold) -> Result<(), StoreError> {
        if let Some(h) = self.state().holds.get_mut(&(ledger.clone(), page)) {
            h.remove(hold);
        }
        Ok(())
    }

    async fn renew_hold(
        &self,
        ledger: &Ledger,
        page: u32,
        old: &Hold,
        new: &Hold,
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        let h = st.holds.entry((ledger.clone(), page)).or_default();
        h.insert(new.clone());
        h.remove(old);
        Ok(())
    }

    async fn holders(&self, ledger: &Ledger, _cap: u32, now: Millis) -> Result<u32, StoreError> {
        Ok(Hold::live(
            self.state()
                .holds
                .iter()
                .filter(|((l, _), _)| l == ledger)
                .flat_map(|(_, h)| h),
            now,
        ))
    }

    async fn note_deferred(
        &self,
        id: &JobId,
        deferred: &Deferred,
        now: Millis,
    ) -> Result<(), StoreError> {
        if let Some(job) = self.state().jobs.get_mut(id)
            && matches!(job.status, JobStatus::Queued | JobStatus::Retrying)
        {
            job.deferred = Some(deferred.clone());
            job.updated_at = now;
        }
        Ok(())
    }
}

#[async_trait]
impl RateBuckets for MemoryStore {
    async fn take_tokens(
        &self,
        bucket: &str,
        rate: &Rate,
        n: u32,
        now: Millis,
    ) -> Result<Take, StoreError> {
        let mut st = self.state();
        let tat = st.buckets.get(bucket).copied();
        Ok(match rate.take(tat, bucket::at(now), n) {
            Ok(next) => {
                st.buckets.insert(bucket.to_owned(), next);
                Take::Taken
            }
            Err(wait) => Take::Wait(wait),
        })
    }
}

#[async_trait]
impl JobScanner for MemoryStore {
    async fn to_check(&self, until: Millis, limit: usize) -> Result<Vec<Job>, StoreError> {
        let st = self.state();
        // Ordered by check time: what is due comes first.
        Ok(st
            .watched
            .iter()
            .take_while(|(at, _)| *at <= until)
            .take(limit)
            .filter_map(|(_, id)| st.jobs.get(id).cloned())
            .collect())
    }

    async fn slice(
        &self,
        slice: u32,
        slices: u32,
        now: Millis,
        limit: usize,
    ) -> Result<Slice, StoreError> {
        // Each record in one slice, always the same: a hash of its key.
        let in_slice = |key: &str| {
            let hash = sha2::Sha256::digest(key.as_bytes());
            u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % slices.max(1) == slice
        };
        let mut st = self.state();
        let mut holds_lapsed = 0;
        for ((ledger, page), h) in st.holds.iter_mut() {
            if in_slice(&ledger.key(Some(*page))) {
                let before = h.len();
                h.retain(|h| !h.expired(now));
                holds_lapsed += before - h.len();
            }
        }
        // Only a job stored without a check time (a test's record "from before") can be here.
        let jobs = st
            .jobs
            .values()
            .filter(|j| j.sweep_at.is_none() && j.watch().is_none())
            .filter(|j| j.event_pending() || !j.status.is_terminal())
            .filter(|j| in_slice(j.job_id.as_str()))
            .take(limit)
            .cloned()
            .collect();
        Ok(Slice { jobs, holds_lapsed })
    }
}

#[async_trait]
impl DueTimers for MemoryStore {
    async fn due(&self, now: Millis, limit: usize) -> Result<Vec<Due>, StoreError> {
        let st = self.state();
        // Ordered by time: what is due comes first.
        Ok(st
            .due
            .iter()
            .take_while(|(at, _, _)| *at <= now)
            .take(limit)
            .filter_map(|(_, id, name)| match name {
                Some(name) => Some(Due::Resume {
                    job_id: id.clone(),
                    waitpoint: name.clone(),
                }),
                None => st.jobs.get(id).cloned().map(|j| Due::Timer(Box::new(j))),
            })
            .collect())
    }

    async fn clear_due(&self, id: &JobId, name: &str) -> Result<(), StoreError> {
        let mut st = self.state();
        let at = st
            .waitpoints
            .get(&(id.clone(), name.to_owned()))
            .and_then(Waitpoint::repair_at);
        if let Some(at) = at {
            st.due.remove(&(at, id.clone(), Some(name.to_owned())));
        }
        Ok(())
    }
}
