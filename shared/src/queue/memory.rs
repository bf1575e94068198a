//! The embedded `JobQueue`, reproducing the SQS semantics the kit relies on: visibility timeouts, a fresh
//! receipt handle per receive (older handles stop working), ApproximateReceiveCount, delayed sends and
//! redrive to a dead-letter queue once a message has been received maxReceiveCount times.
//! Time is `tokio::time`, so tests can pause and advance it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::{
    Delivery, JobSender, MessageVisibility, QueueDepth, QueueError, QueueReceiver, QueueStats,
};
use crate::job::Millis;
use crate::trace::TraceContext;

#[derive(Debug)]
struct Message {
    id: String,
    body: String,
    trace: Option<String>,
    sent_at: Millis,
    visible_at: Instant,
    receive_count: u32,
    /// The handle of the latest receive; `None` until first received.
    receipt: Option<String>,
}

/// An in-process queue. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct MemoryQueue {
    messages: Mutex<Vec<Message>>,
    arrived: Notify,
    default_visibility: Duration,
    redrive: Option<(Arc<MemoryQueue>, u32)>,
}

fn handle() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl MemoryQueue {
    /// A queue with this default visibility timeout and no dead-letter queue.
    pub fn new(default_visibility: Duration) -> Self {
        Self {
            messages: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            default_visibility,
            redrive: None,
        }
    }

    /// Moves a message to `dlq` instead of delivering it a `max_receive_count + 1`-th time, as SQS does.
    pub fn with_dead_letter_queue(mut self, dlq: Arc<MemoryQueue>, max_receive_count: u32) -> Self {
        self.redrive = Some((dlq, max_receive_count));
        self
    }

    fn messages(&self) -> std::sync::MutexGuard<'_, Vec<Message>> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(
        &self,
        body: String,
        trace: Option<String>,
        sent_at: Millis,
        delay: Duration,
    ) -> String {
        let id = handle();
        self.messages().push(Message {
            id: id.clone(),
            body,
            trace,
            sent_at,
            visible_at: Instant::now() + delay,
            receive_count: 0,
            receipt: None,
        });
        self.arrived.notify_waiters();
        id
    }

    /// One non-blocking receive pass. Returns the messages and, when none was visible, the earliest
    /// instant one becomes visible.
    fn take_visible(&self, max: usize, visibility: Duration) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut msgs = self.messages();
        let mut i = 0;
        while i < msgs.len() && out.len() < max {
            let m = &mut msgs[i];
            if m.visible_at > now {
                i += 1;
                continue;
            }
            if let Some((dlq, max_receives)) = &self.redrive
                && m.receive_count >= *max_receives
            {
                // Moved with its original send time and receive count, as SQS does.
                let m = msgs.remove(i);
                dlq.push_moved(m);
                continue;
            }
            m.receive_count += 1;
            m.visible_at = now + visibility;
            let receipt = handle();
            m.receipt = Some(receipt.clone());
            out.push(Delivery {
                message_id: m.id.clone(),
                receipt_handle: receipt,
                body: m.body.clone(),
                receive_count: m.receive_count,
                sent_at: m.sent_at,
                trace: m.trace.clone(),
            });
            i += 1;
        }
        let next = if out.is_empty() {
            msgs.iter().map(|m| m.visible_at).min()
        } else {
            None
        };
        (out, next)
    }

    fn push_moved(&self, mut m: Message) {
        m.visible_at = Instant::now();
        m.receipt = None;
        self.messages().push(m);
        self.arrived.notify_waiters();
    }

    fn with_receipt<T>(
        &self,
        receipt: &str,
        f: impl FnOnce(&mut Vec<Message>, usize) -> T,
    ) -> Option<T> {
        let mut msgs = self.messages();
        let i = msgs
            .iter()
            .position(|m| m.receipt.as_deref() == Some(receipt))?;
        Some(f(&mut msgs, i))
    }
}

#[async_trait]
impl JobSender for MemoryQueue {
    async fn send_traced(
        &self,
        body: &str,
        delay: Duration,
        trace: Option<&TraceContext>,
    ) -> Result<String, QueueError> {
        let now = chrono::Utc::now().timestamp_millis();
        Ok(self.push(
            body.to_owned(),
            trace.map(ToString::to_string),
            now,
            delay.min(Duration::from_secs(900)),
        ))
    }
}

#[async_trait]
impl QueueReceiver for MemoryQueue {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait.min(Duration::from_secs(20));
        let visibility = visibility.unwrap_or(self.default_visibility);
        loop {
            // Register interest before looking, so a send between the look and the wait is not missed.
            let arrived = self.arrived.notified();
            let (got, next_visible) = self.take_visible(max.clamp(1, 10) as usize, visibility);
            let now = Instant::now();
            if !got.is_empty() || now >= deadline {
                return Ok(got);
            }
            let wake = next_visible.map_or(deadline, |t| t.min(deadline));
            let _ = tokio::time::timeout_at(wake, arrived).await;
        }
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        // Only the latest receive's handle deletes. SQS accepts an older handle and leaves the message
        // alone; so do we.
        self.with_receipt(receipt_handle, |msgs, i| msgs.remove(i));
        Ok(())
    }

    /// A receive takes its messages only as it returns (in [`Self::take_visible`], under the lock).
    fn abandoned_receive_takes_nothing(&self) -> bool {
        true
    }
}

#[async_trait]
impl MessageVisibility for MemoryQueue {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let now = Instant::now();
        let changed = self.with_receipt(receipt_handle, |msgs, i| {
            let m = &mut msgs[i];
            let in_flight = m.visible_at > now;
            if in_flight {
                m.visible_at = now + timeout.min(super::MAX_VISIBILITY);
            }
            in_flight
        });
        if changed == Some(true) {
            if timeout.is_zero() {
                self.arrived.notify_waiters();
            }
            Ok(())
        } else {
            Err(QueueError::StaleReceipt)
        }
    }
}

#[async_trait]
impl QueueDepth for MemoryQueue {
    async fn depth(&self) -> Result<u64, QueueError> {
        let now = Instant::now();
        Ok(self
            .messages()
            .iter()
            .filter(|m| m.visible_at <= now)
            .count() as u64)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = Instant::now();
        let msgs = self.messages();
        let count = |f: &dyn Fn(&Message) -> bool| msgs.iter().filter(|m| f(m)).count() as u64;
        let oldest = msgs.iter().map(|m| m.sent_at).min();
        Ok(QueueStats {
            waiting: count(&|m| m.visible_at <= now),
            in_flight: count(&|m| m.visible_at > now && m.receipt.is_some()),
            delayed: count(&|m| m.visible_at > now && m.receipt.is_none()),
            oldest_age_secs: oldest
                .map(|t| ((chrono::Utc::now().timestamp_millis() - t).max(0) / 1000) as u64),
        })
    }
}
