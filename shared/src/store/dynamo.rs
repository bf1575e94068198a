//! `JobStore` on DynamoDB. Translation only: requests, attribute mapping (serde_dynamo over the job's
//! storage form) and SDK errors into [`StoreError`]. One item per job, keyed by `job_id`.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
};
use std::collections::HashMap;

use super::{Created, JobStore, KeyReservation, StoreError};
use crate::job::{Job, JobId, JobStatus, Millis};

/// Jobs in one DynamoDB table (see `JobsTable` in template.yaml).
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
}

type Item = HashMap<String, AttributeValue>;

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// The error for a failed condition: `Conflict` with the stored job, or `NotFound` if there is none.
    /// Some emulators do not return the old item with the failure, so it is read when missing.
    async fn conflict(&self, id: &JobId, old: Option<Item>) -> StoreError {
        let current = match old {
            Some(item) => from_item(item).map(Some),
            None => self.get(id).await,
        };
        match current {
            Ok(Some(job)) => StoreError::Conflict {
                current: Some(Box::new(job)),
            },
            Ok(None) => StoreError::NotFound,
            Err(e) => e,
        }
    }

    fn key(id: &JobId) -> Item {
        HashMap::from([("job_id".to_owned(), AttributeValue::S(id.to_string()))])
    }
}

fn to_item(job: &Job) -> Item {
    serde_dynamo::to_item(job).expect("a job always maps to an item")
}

fn from_item(item: Item) -> Result<Job, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt { source: e.into() })
}

fn unavailable<E, R>(e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StoreError::Unavailable { source: e.into() }
}

fn status(s: JobStatus) -> AttributeValue {
    AttributeValue::S(s.as_str().to_owned())
}

fn num(n: impl ToString) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn create(&self, job: &Job) -> Result<(), StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(job)))
            .condition_expression("attribute_not_exists(job_id)")
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                // The SDK retries a write whose response was lost; if the first try landed, it is ours.
                match self.get(&job.job_id).await? {
                    Some(stored) if stored == *job => Ok(()),
                    _ => Err(StoreError::AlreadyExists),
                }
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn create_with_key(
        &self,
        job: &Job,
        key: &KeyReservation,
        now_secs: i64,
    ) -> Result<Created, StoreError> {
        // One transaction: the job and its key item, each conditional. The key item lives in the same
        // table under a partition key no job id can take (`idem#...`), so no second table is needed.
        let key_id = format!("idem#{}", key.scoped_key);
        let key_item = HashMap::from([
            ("job_id".to_owned(), AttributeValue::S(key_id.clone())),
            (
                "target_job_id".to_owned(),
                AttributeValue::S(job.job_id.to_string()),
            ),
            (
                "request_hash".to_owned(),
                AttributeValue::S(key.request_hash.clone()),
            ),
            ("expires_at".to_owned(), num(key.expires_at)),
        ]);
        let put_job = Put::builder()
            .table_name(&self.table)
            .set_item(Some(to_item(job)))
            .condition_expression("attribute_not_exists(job_id)")
            .build()
            .expect("table and item are set");
        let put_key = Put::builder()
            .table_name(&self.table)
            .set_item(Some(key_item))
            .condition_expression("attribute_not_exists(job_id) OR expires_at < :now")
            .expression_attribute_values(":now", num(now_secs))
            .build()
            .expect("table and item are set");
        let res = self
            .client
            .transact_write_items()
            // Makes the SDK's retries of this transaction idempotent (for 10 minutes).
            .client_request_token(job.job_id.to_string())
            .transact_items(TransactWriteItem::builder().put(put_job).build())
            .transact_items(TransactWriteItem::builder().put(put_key).build())
            .send()
            .await;
        let reasons = match res {
            Ok(_) => return Ok(Created::New),
            Err(e) => match e.into_service_error() {
                TransactWriteItemsError::TransactionCanceledException(c) => c.cancellation_reasons,
                other => {
                    return Err(StoreError::Unavailable {
                        source: other.into(),
                    });
                }
            },
        };
        let failed = |i: usize| {
            reasons
                .as_ref()
                .and_then(|r| r.get(i))
                .and_then(|r| r.code.as_deref())
                .is_some_and(|c| c == "ConditionalCheckFailed")
        };
        if failed(0) {
            // Our own transaction, retried by the SDK after its response was lost (emulators ignore the
            // request token), finds the job it wrote: it landed.
            return match self.get(&job.job_id).await? {
                Some(stored) if stored == *job => Ok(Created::New),
                _ => Err(StoreError::AlreadyExists),
            };
        }
        // The key is taken (or the emulator gave no reasons): read who holds it.
        let held = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("job_id", AttributeValue::S(key_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?
            .item
            .ok_or_else(|| StoreError::Conflict { current: None })?;
        let text = |k: &str| match held.get(k) {
            Some(AttributeValue::S(s)) => Ok(s.clone()),
            _ => Err(StoreError::Corrupt {
                source: format!("idempotency item lacks {k}").into(),
            }),
        };
        let job_id = JobId::parse(&text("target_job_id")?)
            .map_err(|e| StoreError::Corrupt { source: e.into() })?;
        Ok(Created::Existing {
            job_id,
            request_hash: text("request_hash")?,
        })
    }

    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.item.map(from_item).transpose()
    }

    async fn claim(
        &self,
        id: &JobId,
        owner: &str,
        lease_expires_at: Millis,
        now: Millis,
    ) -> Result<Job, StoreError> {
        // The condition is `Job::claimable` in DynamoDB's words; the update is `Job::claim`'s. Doing it in
        // one conditional write (rather than read + compare-and-set) saves a round trip on every job.
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(id)))
            .update_expression(
                "SET #s = :running, attempts = attempts + :one, lease_owner = :owner, \
                 lease_expires_at = :exp, started_at = if_not_exists(started_at, :now), \
                 updated_at = :now, version = version + :one",
            )
            .condition_expression(
                "#s IN (:queued, :retrying) OR (#s = :running AND \
                 (attribute_not_exists(lease_expires_at) OR lease_expires_at < :now))",
            )
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":running", status(JobStatus::Running))
            .expression_attribute_values(":queued", status(JobStatus::Queued))
            .expression_attribute_values(":retrying", status(JobStatus::Retrying))
            .expression_attribute_values(":one", num(1))
            .expression_attribute_values(":owner", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":exp", num(lease_expires_at))
            .expression_attribute_values(":now", num(now))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => from_item(out.attributes.unwrap_or_default()),
            Err(e) => match e.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(c) => {
                    match self.conflict(id, c.item).await {
                        // A retried claim whose first try landed (its response was lost) is ours.
                        StoreError::Conflict { current: Some(job) }
                            if job.lease_owner.as_deref() == Some(owner)
                                && job.lease_expires_at == Some(lease_expires_at) =>
                        {
                            Ok(*job)
                        }
                        e => Err(e),
                    }
                }
                other => Err(StoreError::Unavailable {
                    source: other.into(),
                }),
            },
        }
    }

    async fn replace(&self, job: &Job) -> Result<(), StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(job)))
            .condition_expression("version = :prev")
            .expression_attribute_values(":prev", num(job.version.saturating_sub(1)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => match e.into_service_error() {
                PutItemError::ConditionalCheckFailedException(c) => {
                    match self.conflict(&job.job_id, c.item).await {
                        // A retried write whose first try landed: done.
                        StoreError::Conflict { current: Some(cur) } if *cur == *job => Ok(()),
                        e => Err(e),
                    }
                }
                other => Err(StoreError::Unavailable {
                    source: other.into(),
                }),
            },
        }
    }

    async fn stale_queued(&self, before: Millis, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("#s = :queued AND updated_at < :before")
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":queued", status(JobStatus::Queued))
                .expression_attribute_values(":before", num(before))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                found.push(from_item(item)?);
                if found.len() >= limit {
                    return Ok(found);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }
}
