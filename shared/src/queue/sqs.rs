//! `JobQueue` on SQS. Translation only: requests, message attributes and SDK errors into [`QueueError`].

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::SdkError;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    MessageSystemAttributeNameForSends, MessageSystemAttributeValue, QueueAttributeName,
};

use crate::trace::{ATTRIBUTE, TraceContext};

use super::{
    Delivery, JobSender, MessageVisibility, QueueDepth, QueueError, QueueReceiver, QueueStats,
};

/// One SQS queue, by URL.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    client: Client,
    url: String,
    /// Whether sends carry their fairness group as `MessageGroupId` (see [`Self::with_groups`]).
    groups: bool,
}

fn unavailable<E, R>(e: SdkError<E, R>) -> QueueError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    QueueError::Unavailable { source: e.into() }
}

/// SQS takes whole seconds; round up so a requested delay is never shortened.
fn secs(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s).unwrap_or(i32::MAX)
}

impl SqsQueue {
    pub fn new(client: Client, url: impl Into<String>) -> Self {
        Self {
            client,
            url: url.into(),
            groups: true,
        }
    }

    /// Whether sends carry their group (`MessageGroupId`, which makes a standard queue a fair queue);
    /// true unless told otherwise. Off: the queue delivers without regard to tenants, as before fair
    /// queues (`JOBKIT_FAIR_QUEUES=false`: for a comparison, or an SQS look-alike that refuses the field).
    pub fn with_groups(mut self, groups: bool) -> Self {
        self.groups = groups;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The queue's ARN (what Lambda puts in `eventSourceARN`).
    pub async fn arn(&self) -> Result<String, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out
            .attributes
            .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
            .unwrap_or_default())
    }
}

#[async_trait]
impl JobSender for SqsQueue {
    async fn send_grouped(
        &self,
        body: &str,
        delay: Duration,
        trace: Option<&TraceContext>,
        group: Option<&str>,
    ) -> Result<String, QueueError> {
        let mut req = self
            .client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .delay_seconds(secs(delay).min(900))
            .set_message_group_id(group.filter(|_| self.groups).map(str::to_owned));
        if let Some(t) = trace {
            let text = |v: String| {
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(v)
                    .build()
                    .expect("data type and value are set")
            };
            req = req.message_attributes(ATTRIBUTE, text(t.to_string()));
            // X-Ray links the worker's invocation to this trace (with active tracing on).
            req = req.message_system_attributes(
                MessageSystemAttributeNameForSends::AwsTraceHeader,
                MessageSystemAttributeValue::builder()
                    .data_type("String")
                    .string_value(t.xray_header())
                    .build()
                    .expect("data type and value are set"),
            );
        }
        let out = req.send().await.map_err(unavailable)?;
        Ok(out.message_id.unwrap_or_default())
    }
}

#[async_trait]
impl QueueReceiver for SqsQueue {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        visibility: Option<Duration>,
    ) -> Result<Vec<Delivery>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(secs(wait).min(20))
            .set_visibility_timeout(visibility.map(secs))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_attribute_names(ATTRIBUTE)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                let attr = |name: MessageSystemAttributeName| {
                    m.attributes.as_ref().and_then(|a| a.get(&name)).cloned()
                };
                Delivery {
                    receive_count: attr(MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(1),
                    sent_at: attr(MessageSystemAttributeName::SentTimestamp)
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    trace: m
                        .message_attributes
                        .as_ref()
                        .and_then(|a| a.get(ATTRIBUTE))
                        .and_then(|v| v.string_value.clone()),
                    message_id: m.message_id.unwrap_or_default(),
                    receipt_handle: m.receipt_handle.unwrap_or_default(),
                    body: m.body.unwrap_or_default(),
                }
            })
            .collect())
    }

    async fn delete(&self, receipt_handle: &str) -> Result<(), QueueError> {
        let res = self
            .client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_receipt_handle_is_invalid()) =>
            {
                Err(QueueError::StaleReceipt)
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl MessageVisibility for SqsQueue {
    async fn change_visibility(
        &self,
        receipt_handle: &str,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        let res = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(secs(timeout.min(super::MAX_VISIBILITY)))
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error().is_some_and(|s| {
                    s.is_receipt_handle_is_invalid() || s.is_message_not_inflight()
                }) =>
            {
                Err(QueueError::StaleReceipt)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn change_visibility_batch(
        &self,
        changes: &[(String, Duration)],
    ) -> Vec<Result<(), QueueError>> {
        let mut results = Vec::with_capacity(changes.len());
        for chunk in changes.chunks(10) {
            let entries: Vec<ChangeMessageVisibilityBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .map(|(i, (receipt, timeout))| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(secs((*timeout).min(super::MAX_VISIBILITY)))
                        .build()
                        .expect("id and receipt are set")
                })
                .collect();
            let res = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            match res {
                Ok(out) => {
                    let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
                    results.extend((0..chunk.len()).map(|i| {
                        if failed.contains(&i.to_string().as_str()) {
                            Err(QueueError::StaleReceipt)
                        } else {
                            Ok(())
                        }
                    }));
                }
                Err(e) => {
                    let reason = aws_sdk_sqs::error::DisplayErrorContext(&e).to_string();
                    results.extend(chunk.iter().map(|_| {
                        Err(QueueError::Unavailable {
                            source: reason.clone().into(),
                        })
                    }));
                }
            }
        }
        results
    }
}

impl SqsQueue {
    /// The approximate counts `names` asks for, in order (0 where SQS gives none).
    async fn counts(&self, names: &[QueueAttributeName]) -> Result<Vec<u64>, QueueError> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(unavailable)?;
        let attrs = out.attributes.unwrap_or_default();
        Ok(names
            .iter()
            .map(|n| attrs.get(n).and_then(|v| v.parse().ok()).unwrap_or(0))
            .collect())
    }
}

#[async_trait]
impl QueueDepth for SqsQueue {
    async fn depth(&self) -> Result<u64, QueueError> {
        Ok(self
            .counts(&[QueueAttributeName::ApproximateNumberOfMessages])
            .await?[0])
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        use QueueAttributeName as A;
        let c = self
            .counts(&[
                A::ApproximateNumberOfMessages,
                A::ApproximateNumberOfMessagesNotVisible,
                A::ApproximateNumberOfMessagesDelayed,
            ])
            .await?;
        Ok(QueueStats {
            waiting: c[0],
            in_flight: c[1],
            delayed: c[2],
            oldest_age_secs: None,
        })
    }
}
