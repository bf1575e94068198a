//! Threads in the embedded store: the same contract as `dynamo/threads.rs`, each call one step under
//! the store's lock.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;

use super::MemoryStore;
use crate::job::Job;
use crate::store::{Created, Insert, StoreError, ThreadStore};
use crate::thread::{MessageQuery, SEQ_SPAN, Thread, ThreadId, ThreadMessage};

/// Threads, and each thread's messages by [`ThreadMessage::seq`].
#[derive(Debug, Default)]
pub(super) struct Threads {
    threads: HashMap<ThreadId, Thread>,
    messages: HashMap<ThreadId, BTreeMap<u64, ThreadMessage>>,
}

impl Threads {
    fn append(&mut self, thread: &ThreadId, message: &ThreadMessage) {
        self.messages
            .entry(thread.clone())
            .or_default()
            .entry(message.seq())
            .or_insert_with(|| message.clone());
    }
}

#[async_trait]
impl ThreadStore for MemoryStore {
    async fn create_thread(&self, thread: &Thread) -> Result<(), StoreError> {
        let mut st = self.state();
        if st.threads.threads.contains_key(&thread.thread_id) {
            return Err(StoreError::AlreadyExists);
        }
        st.threads
            .threads
            .insert(thread.thread_id.clone(), thread.clone());
        Ok(())
    }

    async fn thread(&self, id: &ThreadId) -> Result<Option<Thread>, StoreError> {
        Ok(self.state().threads.threads.get(id).cloned())
    }

    async fn insert_run(
        &self,
        job: &mut Job,
        how: &Insert,
        thread: &Thread,
        message: &ThreadMessage,
    ) -> Result<Created, StoreError> {
        let mut st = self.state();
        // A job stored already is the answer (a retried submit), whatever the thread did since.
        let existed = st.jobs.contains_key(&job.job_id);
        if !existed {
            let now_secs = job.submitted_at / 1000;
            let current = st.threads.threads.get(&thread.thread_id);
            if current.is_none_or(|t| t.last_job != thread.last_job || t.expires_at <= now_secs) {
                return Err(StoreError::Conflict { current: None });
            }
        }
        let created = st.insert(job, how)?;
        if !existed {
            let linked = thread.linking(&job.job_id);
            st.threads.threads.insert(linked.thread_id.clone(), linked);
            st.threads.append(&thread.thread_id, message);
        }
        Ok(created)
    }

    async fn append_messages(
        &self,
        thread: &ThreadId,
        messages: &[ThreadMessage],
        _expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut st = self.state();
        for m in messages {
            st.threads.append(thread, m);
        }
        Ok(())
    }

    async fn messages(
        &self,
        thread: &ThreadId,
        query: &MessageQuery,
    ) -> Result<Vec<ThreadMessage>, StoreError> {
        let st = self.state();
        let Some(all) = st.threads.messages.get(thread) else {
            return Ok(Vec::new());
        };
        let from = query.after.map_or(0, |a| a + 1);
        let to = query.before.unwrap_or(u64::MAX);
        if from >= to {
            return Ok(Vec::new());
        }
        let range = all.range(from..to).map(|(_, m)| m.clone());
        Ok(if query.newest_first {
            range.rev().take(query.limit).collect()
        } else {
            range.take(query.limit).collect()
        })
    }

    async fn run_messages(
        &self,
        thread: &ThreadId,
        run: u64,
        indices: std::ops::Range<u32>,
    ) -> Result<Vec<ThreadMessage>, StoreError> {
        let st = self.state();
        let Some(all) = st.threads.messages.get(thread) else {
            return Ok(Vec::new());
        };
        let seq = |i: u32| run * SEQ_SPAN + u64::from(i);
        Ok(all
            .range(seq(indices.start)..seq(indices.end.max(indices.start)))
            .map(|(_, m)| m.clone())
            .collect())
    }
}
