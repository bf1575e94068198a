//! Lambda's SQS event source, for local runs (`jobctl dev`) and tests: receive a batch, hand its
//! deliveries to a [`Consumer`] (the worker core, the webhook deliverer) as one invocation (with the
//! function's timeout as its deadline), delete the messages whose verdict is `Ack`. No Lambda event is
//! made up: the consumer takes deliveries as they come from the queue. [`Pollers`] says how a source
//! that feeds a worker holding jobs must stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

use crate::clock::SharedClock;
use crate::queue::{Consumer, Delivery, Invocation, JobQueue, QueueError, Verdict};
use crate::worker::Worker;

/// Polls a queue and feeds a consumer (by default the worker), honouring its verdicts.
pub struct EventSource<C: Consumer = Worker> {
    queue: Arc<dyn JobQueue>,
    consumer: Arc<C>,
    clock: SharedClock,
    batch_size: u32,
    wait: Duration,
    timeout: Option<Duration>,
    visibility: Option<Duration>,
    /// With [`Self::with_independent_deliveries`]: the deliveries that may be under way at once.
    independent: Option<Arc<Semaphore>>,
}

impl<C: Consumer> EventSource<C> {
    pub fn new(
        queue: Arc<dyn JobQueue>,
        consumer: Arc<C>,
        clock: SharedClock,
        batch_size: u32,
    ) -> Self {
        Self {
            queue,
            consumer,
            clock,
            batch_size: batch_size.clamp(1, 10),
            wait: Duration::from_secs(1),
            timeout: None,
            visibility: None,
            independent: None,
        }
    }

    /// Hands each delivery to the consumer on its own as soon as it is received, with at most `limit`
    /// under way across the pollers: none waits for its batch-mates (its verdict, a retry's delay
    /// included, is applied when it has one), and a poller receives again while they run, as long as
    /// fewer than `limit` are under way. How `jobctl dev` delivers webhooks: a receiver that hangs holds
    /// up its own delivery, not its batch-mates' nor the next events.
    pub fn with_independent_deliveries(mut self, limit: usize) -> Self {
        self.independent = Some(Arc::new(Semaphore::new(limit.max(1))));
        self
    }

    /// Receives with this visibility timeout instead of the queue's default.
    pub fn with_visibility(mut self, visibility: Duration) -> Self {
        self.visibility = Some(visibility);
        self
    }

    /// Gives each invocation a deadline `timeout` after it starts, like the function's Timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long one receive waits for a first message (long polling).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// One receive -> invoke -> delete cycle. Returns the deliveries and the consumer's report.
    pub async fn poll_once(&self) -> Result<(Vec<Delivery>, C::Report), QueueError> {
        let batch = self.receive().await?;
        let result = self.invoke(&batch).await;
        Ok((batch, result))
    }

    async fn receive(&self) -> Result<Vec<Delivery>, QueueError> {
        self.receive_up_to(self.batch_size).await
    }

    async fn receive_up_to(&self, max: u32) -> Result<Vec<Delivery>, QueueError> {
        self.queue.receive(max, self.wait, self.visibility).await
    }

    /// Hands a batch to the consumer as one invocation and deletes the acknowledged messages.
    async fn invoke(&self, batch: &[Delivery]) -> C::Report {
        if batch.is_empty() {
            return C::Report::default();
        }
        let inv = Invocation {
            request_id: format!("local-{:016x}", rand::random::<u64>()),
            deadline: self
                .timeout
                .map(|t| self.clock.now() + t.as_millis() as i64),
        };
        let result = self.consumer.consume(batch, &inv).await;
        for (d, verdict) in batch.iter().zip(result.as_ref()) {
            if *verdict == Verdict::Ack
                && let Err(e) = self.queue.delete(&d.receipt_handle).await
            {
                // Not fatal: the message comes back and the consumer acknowledges it again.
                tracing::warn!(message_id = %d.message_id, error = %e, "could not delete a processed message");
            }
        }
        result
    }

    /// Starts `concurrency` pollers (like concurrent Lambda invocations), each receiving a batch and
    /// handing it to the consumer until [`Pollers::stop_receiving`].
    pub fn start(self: Arc<Self>, concurrency: usize) -> Arc<Pollers> {
        let pollers = Arc::new(Pollers {
            state: watch::channel(PollerState::default()).0,
        });
        let cancel_safe = self.queue.abandoned_receive_takes_nothing();
        for _ in 0..concurrency.max(1) {
            let (me, pollers) = (self.clone(), pollers.clone());
            pollers.state.send_modify(|s| s.live += 1);
            tokio::spawn(async move {
                // Counted down however the task ends (a panic included), so `finished` never hangs.
                let _live = Live(&pollers);
                me.poll(&pollers, cancel_safe).await;
            });
        }
        pollers
    }

    /// One poller's loop: receive, invoke, until the pollers stop receiving.
    async fn poll(self: &Arc<Self>, pollers: &Arc<Pollers>, cancel_safe: bool) {
        let mut state = pollers.state.subscribe();
        loop {
            // Independent deliveries: room for at least one before receiving, and no more received
            // than there is room for (a message received and left waiting would have its retry
            // schedule stretched).
            let mut room = match &self.independent {
                Some(limit) => tokio::select! {
                    room = limit.clone().acquire_owned() => {
                        let mut room = room.expect("the semaphore is never closed");
                        while room.num_permits() < self.batch_size as usize
                            && let Ok(more) = limit.clone().try_acquire_owned()
                        {
                            room.merge(more);
                        }
                        Some(room)
                    }
                    _ = state.wait_for(|s| s.stopping) => break,
                },
                None => None,
            };
            // The check and the count in one step: once `stop_receiving` is seen, no receive
            // starts, so "no receive open" stays true once reached.
            let opened = pollers.state.send_if_modified(|s| {
                let open = !s.stopping;
                s.open += usize::from(open);
                open
            });
            if !opened {
                break;
            }
            let max = room
                .as_ref()
                .map_or(self.batch_size, |r| r.num_permits() as u32);
            let received = if cancel_safe {
                // Nothing is taken by a receive dropped under way: stop at once, without receiving
                // (and so without counting a receive of) anything more.
                tokio::select! {
                    received = self.receive_up_to(max) => Some(received),
                    _ = state.wait_for(|s| s.stopping) => None,
                }
            } else {
                // A long poll is not cut short by the stop: the queue would still deliver to the
                // abandoned request, and what it delivered would stay hidden for its whole visibility
                // timeout, its receive counted. It is waited for and what it brings handed back.
                Some(self.receive_up_to(max).await)
            };
            let mut stopping = false;
            pollers.state.send_modify(|s| {
                s.open -= 1;
                stopping = s.stopping;
            });
            match received {
                None => break,
                Some(Ok(batch)) if stopping => {
                    // Received after the stop: back at once, for whoever runs next. (SQS has counted
                    // the receive; with no receive open when the worker releases its jobs, none of
                    // those is among them.)
                    let back: Vec<(String, Duration)> = batch
                        .iter()
                        .map(|d| (d.receipt_handle.clone(), Duration::ZERO))
                        .collect();
                    self.queue
                        .change_visibility_logged(
                            &back,
                            "hand back a message received while stopping",
                        )
                        .await;
                    break;
                }
                Some(Ok(batch)) => match room.as_mut() {
                    Some(room) => {
                        for d in batch {
                            let permit = room.split(1);
                            let (me, pollers) = (self.clone(), pollers.clone());
                            pollers.state.send_modify(|s| s.live += 1);
                            tokio::spawn(async move {
                                let _live = Live(&pollers);
                                let _permit = permit;
                                me.invoke(std::slice::from_ref(&d)).await;
                            });
                        }
                    }
                    None => {
                        self.invoke(&batch).await;
                    }
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "receive failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = state.wait_for(|s| s.stopping) => {}
                    }
                }
            }
        }
    }
}

/// The pollers of an [`EventSource`], and how they stop.
///
/// Stopping a worker that holds jobs is ordered: stop receiving, wait until no receive is open, only
/// then let the worker release its running jobs ([`crate::worker::Worker::with_stop`]). A job released
/// while another poller's long poll is still open is received by that poll and handed back, and again by
/// the next one: with ten pollers, a released message passed maxReceiveCount within seconds and went to
/// the DLQ while its job said `queued`.
pub struct Pollers {
    state: watch::Sender<PollerState>,
}

#[derive(Debug, Default, Clone, Copy)]
struct PollerState {
    /// No receive starts any more.
    stopping: bool,
    /// Receives under way.
    open: usize,
    /// Pollers (and independent deliveries) not yet ended.
    live: usize,
}

struct Live<'a>(&'a Pollers);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.state.send_modify(|s| s.live -= 1);
    }
}

impl Pollers {
    /// From now on no poller starts a receive; each ends once its batch under way (if any) is done.
    pub fn stop_receiving(&self) {
        self.state.send_modify(|s| s.stopping = true);
    }

    /// Resolves once [`Self::stop_receiving`] was called and no receive is open any more: those that
    /// were open have returned and what they brought is being handed back. From then on nothing this
    /// process does receives a message again, so messages made visible now stay in the queue.
    pub async fn receives_closed(&self) {
        let _ = self
            .state
            .subscribe()
            .wait_for(|s| s.stopping && s.open == 0)
            .await;
    }

    /// Resolves once every poller has ended (after [`Self::stop_receiving`]: their batches are done).
    pub async fn finished(&self) {
        let _ = self.state.subscribe().wait_for(|s| s.live == 0).await;
    }
}
