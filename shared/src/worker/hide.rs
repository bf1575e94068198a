//! Keeping running jobs' messages hidden, a batch at a time.
//!
//! A message is received with the queue's long visibility (six times the function's timeout, as Lambda
//! requires). While its job runs, the worker keeps it hidden for only one and a half leases past the last
//! heartbeat, so the message of a worker that died comes back within about one lease. Those changes are
//! collected for a short window and sent as one ChangeMessageVisibilityBatch per window: a batch's jobs
//! start (and heartbeat) together, so that is one call per batch, not one per job; and a job that is
//! already finished when the window closes (most short jobs) costs no call at all. A worker that dies
//! within the first window leaves its messages to the queue's own visibility timeout.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::queue::WorkerQueue;

/// How long hide requests are collected before one batch call, at most. A second: most jobs of a batch
/// are done by then and cost no call at all (the happy path's SQS requests per job stay at send +
/// Lambda's receive and delete), while a worker that dies later than that still has its message back
/// within about one lease (60 s by default), not the queue's long visibility. Short leases get a
/// proportionally shorter window ([`Hider::new`]).
pub const HIDE_WINDOW: Duration = Duration::from_secs(1);

/// The hide requests of one invocation.
pub struct Hider {
    queue: Arc<dyn WorkerQueue>,
    visibility: Duration,
    window: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    pending: Vec<String>,
    /// Receipts whose job is finished: their fate is decided, they are not hidden again.
    done: HashSet<String>,
}

impl Hider {
    pub fn new(queue: Arc<dyn WorkerQueue>, visibility: Duration) -> Self {
        Self {
            queue,
            visibility,
            // A twelfth of the visibility it sets, so a message is always hidden well before the
            // heartbeat after next could have renewed it.
            window: HIDE_WINDOW.min(visibility / 12),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for `receipt` to be hidden in the next flush.
    pub fn hide(&self, receipt: &str) {
        self.state().pending.push(receipt.to_owned());
    }

    /// The job of `receipt` is finished: no more hiding.
    pub fn finished(&self, receipt: &str) {
        self.state().done.insert(receipt.to_owned());
    }

    /// Sends the pending changes of jobs still running, as batch calls (best effort: a message that
    /// shows up early finds its job busy and is put back).
    pub async fn flush(&self) {
        let changes: Vec<(String, Duration)> = {
            let mut st = self.state();
            let pending = std::mem::take(&mut st.pending);
            let mut seen = HashSet::new();
            pending
                .into_iter()
                .filter(|r| !st.done.contains(r) && seen.insert(r.clone()))
                .map(|r| (r, self.visibility))
                .collect()
        };
        self.queue
            .change_visibility_logged(&changes, "extend a message's visibility")
            .await;
    }

    /// Flushes every window until `until` resolves. `until` keeps running during a flush, and a flush
    /// under way is finished (not dropped mid-request) when `until` resolves.
    pub async fn run_until<F: std::future::Future>(&self, until: F) -> F::Output {
        tokio::pin!(until);
        loop {
            tokio::select! {
                out = &mut until => return out,
                () = tokio::time::sleep(self.window) => {}
            }
            let flush = self.flush();
            tokio::pin!(flush);
            let mut done = None;
            loop {
                tokio::select! {
                    out = &mut until, if done.is_none() => done = Some(out),
                    () = &mut flush => break,
                }
            }
            if let Some(out) = done {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{JobSender, MessageVisibility, QueueError};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts calls and what they carried.
    #[derive(Default)]
    struct Counting {
        calls: AtomicUsize,
        changes: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl JobSender for Counting {
        async fn send_grouped(
            &self,
            _: &str,
            _: Duration,
            _: Option<&crate::trace::TraceContext>,
            _: Option<&str>,
        ) -> Result<String, QueueError> {
            unreachable!()
        }
    }

    #[async_trait]
    impl MessageVisibility for Counting {
        async fn change_visibility(&self, _: &str, _: Duration) -> Result<(), QueueError> {
            unreachable!("changes are batched")
        }
        async fn change_visibility_batch(
            &self,
            changes: &[(String, Duration)],
        ) -> Vec<Result<(), QueueError>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut seen = self.changes.lock().unwrap();
            seen.extend(changes.iter().map(|(r, _)| r.clone()));
            changes.iter().map(|_| Ok(())).collect()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_that_start_together_are_hidden_in_one_call_and_finished_ones_not_at_all() {
        let queue = Arc::new(Counting::default());
        let hider = Hider::new(queue.clone(), Duration::from_secs(90));
        let jobs = async {
            for r in ["a", "b", "c"] {
                hider.hide(r);
            }
            hider.finished("b"); // a fast job: done before the window closes
            tokio::time::sleep(HIDE_WINDOW * 3).await;
        };
        hider.run_until(jobs).await;
        assert_eq!(queue.calls.load(Ordering::SeqCst), 1);
        assert_eq!(*queue.changes.lock().unwrap(), ["a", "c"]);

        let fast = Arc::new(Counting::default());
        let hider = Hider::new(fast.clone(), Duration::from_secs(90));
        let jobs = async {
            hider.hide("x");
            hider.finished("x");
        };
        hider.run_until(jobs).await;
        assert_eq!(
            fast.calls.load(Ordering::SeqCst),
            0,
            "a batch of short jobs costs no call"
        );
    }
}
