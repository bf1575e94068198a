//! The embedded `JobQueue`, reproducing the SQS semantics the kit relies on: visibility timeouts, a fresh
//! receipt handle per receive (older handles stop working), ApproximateReceiveCount, delayed sends and
//! redrive to a dead-letter queue once a message has been received maxReceiveCount times.
//! Time is `tokio::time`, so tests can pause and advance it.
//!
//! **Fair delivery**, as an SQS fair queue's (messages sent with a group, `MessageGroupId`): each message
//! a receive takes comes from the group with the fewest messages in flight (received and not yet deleted
//! or visible again), the oldest of that group; ties go to the group whose next message is oldest. So a
//! tenant with a backlog and its jobs running does not hold up another's first job, and with one group
//! (or none) the order is the send order, as before. SQS measures the same thing (a tenant's share of the
//! messages in flight) but only approximately; here it is exact, so tests can rely on it.

use std::collections::HashMap;
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
    /// Its fairness group (`None`: sent without one; such messages share one group here).
    group: Option<String>,
}

impl Message {
    /// Received and neither deleted nor visible again (running, or hidden for a retry's backoff).
    fn in_flight(&self, now: Instant) -> bool {
        self.visible_at > now && self.receipt.is_some()
    }
}

/// An in-process queue. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct MemoryQueue {
    messages: Mutex<Vec<Message>>,
    arrived: Notify,
    default_visibility: Duration,
    redrive: Option<(Arc<MemoryQueue>, u32)>,
    /// Whether sends keep their group (see [`Self::with_groups`]).
    groups: bool,
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
            groups: true,
        }
    }

    /// Whether sends keep their group, as [`super::SqsQueue::with_groups`]; true unless told otherwise.
    /// Off, every message is in one group: delivered in send order, as before fair queues.
    pub fn with_groups(mut self, groups: bool) -> Self {
        self.groups = groups;
        self
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
        group: Option<String>,
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
            group: group.filter(|_| self.groups),
        });
        self.arrived.notify_waiters();
        id
    }

    /// One non-blocking receive pass. Returns the messages and, when none was visible, the earliest
    /// instant one becomes visible.
    fn take_visible(&self, max: usize, visibility: Duration) -> (Vec<Delivery>, Option<Instant>) {
        let now = Instant::now();
        let mut msgs = self.messages();
        if let Some((dlq, max_receives)) = &self.redrive {
            // A message received max_receives times is moved rather than delivered again, with its
            // original send time and receive count, as SQS does.
            let mut i = 0;
            while i < msgs.len() {
                if msgs[i].visible_at <= now && msgs[i].receive_count >= *max_receives {
                    dlq.push_moved(msgs.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        let mut out = Vec::new();
        for i in fair_picks(&msgs, now, max) {
            let m = &mut msgs[i];
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

/// The indices of up to `max` visible messages of `msgs` (in send order) a receive takes, in the order
/// it takes them: each from the group with the fewest in flight (the ones taken before it counted), the
/// group's oldest; ties to the oldest message.
fn fair_picks(msgs: &[Message], now: Instant, max: usize) -> Vec<usize> {
    #[derive(Default)]
    struct Group {
        in_flight: usize,
        /// Its visible messages' indices, oldest first (reversed: the next is popped off the end).
        visible: Vec<usize>,
    }
    let mut groups: HashMap<Option<&str>, Group> = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        let g = groups.entry(m.group.as_deref()).or_default();
        if m.visible_at <= now {
            g.visible.push(i);
        } else if m.in_flight(now) {
            g.in_flight += 1;
        }
    }
    let mut groups: Vec<Group> = groups
        .into_values()
        .filter(|g| !g.visible.is_empty())
        .map(|mut g| {
            g.visible.reverse();
            g
        })
        .collect();
    let mut picks = Vec::new();
    while picks.len() < max {
        let Some(g) = groups
            .iter_mut()
            .filter(|g| !g.visible.is_empty())
            .min_by_key(|g| (g.in_flight, g.visible.last().copied()))
        else {
            break;
        };
        picks.extend(g.visible.pop());
        g.in_flight += 1;
    }
    picks
}

#[async_trait]
impl JobSender for MemoryQueue {
    async fn send_grouped(
        &self,
        body: &str,
        delay: Duration,
        trace: Option<&TraceContext>,
        group: Option<&str>,
    ) -> Result<String, QueueError> {
        let now = chrono::Utc::now().timestamp_millis();
        Ok(self.push(
            body.to_owned(),
            trace.map(ToString::to_string),
            group.map(str::to_owned),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueReceiver;

    const VIS: Duration = Duration::from_secs(30);

    async fn send(q: &MemoryQueue, body: &str, group: &str) {
        q.send_grouped(body, Duration::ZERO, None, Some(group))
            .await
            .unwrap();
    }

    async fn take(q: &MemoryQueue, max: u32) -> Vec<String> {
        let got = q.receive(max, Duration::ZERO, Some(VIS)).await.unwrap();
        got.into_iter().map(|d| d.body).collect()
    }

    #[tokio::test]
    async fn a_quiet_group_is_served_before_a_busy_groups_backlog() {
        let q = MemoryQueue::new(VIS);
        for i in 0..20 {
            send(&q, &format!("a{i}"), "A").await;
        }
        assert_eq!(take(&q, 5).await, ["a0", "a1", "a2", "a3", "a4"]);
        for i in 0..3 {
            send(&q, &format!("b{i}"), "B").await;
        }
        // A has 5 in flight and B none: B's three first, though sent after 15 of A's.
        assert_eq!(
            take(&q, 10).await,
            ["b0", "b1", "b2", "a5", "a6", "a7", "a8", "a9", "a10", "a11"]
        );
    }

    #[tokio::test]
    async fn groups_alternate_when_balanced_and_each_keeps_its_order() {
        let q = MemoryQueue::new(VIS);
        for body in ["a0", "a1", "a2"] {
            send(&q, body, "A").await;
        }
        for body in ["b0", "b1", "b2"] {
            send(&q, body, "B").await;
        }
        send(&q, "c0", "C").await;
        assert_eq!(
            take(&q, 10).await,
            ["a0", "b0", "c0", "a1", "b1", "a2", "b2"]
        );
        // One message a receive: the same order, turn by turn.
        let q = MemoryQueue::new(VIS);
        for (body, group) in [("a0", "A"), ("a1", "A"), ("b0", "B"), ("b1", "B")] {
            send(&q, body, group).await;
        }
        let mut order = Vec::new();
        for _ in 0..4 {
            order.extend(take(&q, 1).await);
        }
        assert_eq!(order, ["a0", "b0", "a1", "b1"]);
    }

    #[tokio::test]
    async fn without_groups_the_order_is_the_send_order() {
        let q = MemoryQueue::new(VIS).with_groups(false);
        for (body, group) in [("a0", "A"), ("a1", "A"), ("a2", "A"), ("b0", "B")] {
            send(&q, body, group).await;
        }
        assert_eq!(take(&q, 1).await, ["a0"]);
        assert_eq!(take(&q, 10).await, ["a1", "a2", "b0"]);
        // Messages sent without a group share one, in send order.
        let q = MemoryQueue::new(VIS);
        for body in ["x0", "x1"] {
            q.send(body, Duration::ZERO).await.unwrap();
        }
        send(&q, "b0", "B").await;
        assert_eq!(take(&q, 1).await, ["x0"]);
        assert_eq!(take(&q, 10).await, ["b0", "x1"]);
    }

    #[tokio::test]
    async fn a_message_back_from_flight_frees_its_groups_share_and_is_taken_in_order() {
        let q = MemoryQueue::new(VIS);
        for body in ["a0", "a1", "a2"] {
            send(&q, body, "A").await;
        }
        send(&q, "b0", "B").await;
        let first = q.receive(1, Duration::ZERO, Some(VIS)).await.unwrap();
        assert_eq!(first[0].body, "a0");
        // a0 comes back (a retry): A has none in flight again, and a0 is A's oldest.
        q.change_visibility(&first[0].receipt_handle, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(take(&q, 2).await, ["a0", "b0"]);
        let again = q.receive(1, Duration::ZERO, Some(VIS)).await.unwrap();
        assert_eq!((again[0].body.as_str(), again[0].receive_count), ("a1", 1));
    }

    #[tokio::test]
    async fn the_dead_letter_queue_takes_a_grouped_message_after_its_last_receive() {
        let dlq = Arc::new(MemoryQueue::new(VIS));
        let q = MemoryQueue::new(VIS).with_dead_letter_queue(dlq.clone(), 2);
        send(&q, "poison", "A").await;
        send(&q, "b0", "B").await;
        for _ in 0..2 {
            let got = q.receive(10, Duration::ZERO, Some(VIS)).await.unwrap();
            let poison = got.iter().find(|d| d.body == "poison").unwrap();
            q.change_visibility(&poison.receipt_handle, Duration::ZERO)
                .await
                .unwrap();
        }
        assert!(take(&q, 10).await.is_empty(), "b0 in flight, poison moved");
        let moved = dlq.receive(10, Duration::ZERO, None).await.unwrap();
        // Moved with its receive count: the DLQ's receive is its third.
        assert_eq!(
            (moved[0].body.as_str(), moved[0].receive_count),
            ("poison", 3)
        );
    }
}
