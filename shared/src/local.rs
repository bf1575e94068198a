//! Lambda's SQS event source, for local runs (`jobctl dev`) and tests: receive a batch, hand its
//! deliveries to a [`Consumer`] (the worker core, the webhook deliverer) as one invocation (with the
//! function's timeout as its deadline), delete the messages whose verdict is `Ack`. No Lambda event is
//! made up: the consumer takes deliveries as they come from the queue.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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
        }
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
        self.queue
            .receive(self.batch_size, self.wait, self.visibility)
            .await
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

    /// Runs `concurrency` pollers (like concurrent Lambda invocations) until `shutdown` resolves; then
    /// stops receiving and lets the batches under way finish (the worker releases its jobs if its stop
    /// signal fires first). Receives under way finish too (at most the long poll's wait), and what they
    /// bring is handed back.
    pub async fn run(self: Arc<Self>, concurrency: usize, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let pollers: Vec<_> = (0..concurrency.max(1))
            .map(|_| {
                let me = self.clone();
                let stop = stop_rx.clone();
                tokio::spawn(async move {
                    while !*stop.borrow() {
                        // A long poll is not cut short by the stop: the queue would still deliver to
                        // the abandoned request (a message released by this very worker among them),
                        // and that message would stay hidden for its whole visibility timeout. What
                        // arrives after the stop is handed back at once instead.
                        let received = me.receive().await;
                        if *stop.borrow() {
                            if let Ok(batch) = &received {
                                let back: Vec<(String, Duration)> = batch
                                    .iter()
                                    .map(|d| (d.receipt_handle.clone(), Duration::ZERO))
                                    .collect();
                                me.queue
                                    .change_visibility_logged(
                                        &back,
                                        "hand back a message received while stopping",
                                    )
                                    .await;
                            }
                            break;
                        }
                        match received {
                            Ok(batch) => {
                                me.invoke(&batch).await;
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "receive failed; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                })
            })
            .collect();
        shutdown.await;
        let _ = stop_tx.send(true);
        for p in pollers {
            let _ = p.await;
        }
    }
}
