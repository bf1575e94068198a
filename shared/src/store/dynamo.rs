//! `JobStore` on DynamoDB. Translation only: requests, attribute mapping (serde_dynamo over the job's
//! storage form) and SDK errors into [`StoreError`]. One item per job, keyed by `job_id`.

use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, KeysAndAttributes, Put, ReturnValue,
    ReturnValuesOnConditionCheckFailure, TransactWriteItem, Update,
};
use futures::future::BoxFuture;
use sha2::Digest;
use std::collections::{BTreeSet, HashMap};

use super::{
    CancelSignals, CancelWatch, Created, Insert, JobClaimer, JobInserter, JobLister, JobReader,
    JobScanner, JobWriter, KeyReservation, ListQuery, SlotLedger, Slots, StepStore, StoreError,
};
use crate::job::{Job, JobId, JobStatus, Millis};
use crate::json::Json;

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

    /// PutItem of a new job; a retried put that landed (its response was lost) is ours.
    async fn put_new(&self, job: &Job) -> Result<(), StoreError> {
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
                match self.get(&job.job_id).await? {
                    Some(stored) if stored == *job => Ok(()),
                    _ => Err(StoreError::AlreadyExists),
                }
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Runs a transaction. `None` when it committed; the cancellation reasons when a condition failed
    /// (empty if the backend gave none, as some emulators do).
    async fn transact(
        &self,
        items: Vec<TransactWriteItem>,
        token: String,
    ) -> Result<Option<Vec<CancellationReason>>, StoreError> {
        let res = self
            .client
            .transact_write_items()
            // Makes the SDK's retries of this transaction idempotent (for 10 minutes).
            .client_request_token(token)
            .set_transact_items(Some(items))
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) => match e.into_service_error() {
                TransactWriteItemsError::TransactionCanceledException(c) => {
                    Ok(Some(c.cancellation_reasons.unwrap_or_default()))
                }
                other => Err(StoreError::Unavailable {
                    source: other.into(),
                }),
            },
        }
    }

    /// Reads many jobs at once (BatchGetItem, strongly consistent); missing ones are absent.
    async fn get_many(&self, ids: &[JobId]) -> Result<HashMap<JobId, Job>, StoreError> {
        let mut found = HashMap::new();
        for chunk in ids.chunks(100) {
            let mut keys: Vec<Item> = chunk.iter().map(Self::key).collect();
            while !keys.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .expect("keys are set");
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(unavailable)?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    let job = from_item(item)?;
                    found.insert(job.job_id.clone(), job);
                }
                // What the backend left unprocessed (throttling) is asked again.
                keys = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
            }
        }
        Ok(found)
    }

    fn key(id: &JobId) -> Item {
        HashMap::from([("job_id".to_owned(), AttributeValue::S(id.to_string()))])
    }
}

/// The GSI listing one owner's jobs by submit time (`JobsTable` in template.yaml).
const BY_USER_INDEX: &str = "by_user";

fn idem_key(key: &KeyReservation) -> String {
    format!("idem#{}", key.scoped_key)
}

/// Partition-key prefix of the items holding a user's in-flight slots.
const SLOTS_PREFIX: &str = "user#";

/// The item holding a user's in-flight slots: the set `slots` of their counted, unfinished job ids, and
/// `owner`. Keyed by a hash: user ids (IAM ARNs, say) may be long.
fn slots_key(user: &str) -> Item {
    let hash = hex::encode(sha2::Sha256::digest(user.as_bytes()));
    HashMap::from([(
        "job_id".to_owned(),
        AttributeValue::S(format!("{SLOTS_PREFIX}{hash}")),
    )])
}

/// The item holding one durable step's result.
fn step_key(id: &JobId, name: &str) -> Item {
    HashMap::from([(
        "job_id".to_owned(),
        AttributeValue::S(format!("step#{id}#{name}")),
    )])
}

/// The small item that tells a running attempt its job was asked to stop.
fn cancel_key(id: &JobId, round: u32) -> Item {
    HashMap::from([(
        "job_id".to_owned(),
        AttributeValue::S(format!("cancel#{id}#{round}")),
    )])
}

/// The slot update that moves `job` in (`+1`) or out (`-1`) of its owner's set.
fn slot_update(table: &str, job: &Job, delta: i64, cap: Option<u32>) -> Update {
    let ids = AttributeValue::Ss(vec![job.job_id.to_string()]);
    // Every slot write bumps `v`, so a write that sets the whole set (a completion that starts follow-up
    // jobs) can be made conditional on nothing having moved since it read it.
    let mut u = Update::builder()
        .table_name(table)
        .set_key(Some(slots_key(&job.user_id)))
        .expression_attribute_values(":id", ids)
        .expression_attribute_values(":one", num(1));
    u = if delta > 0 {
        u.update_expression("ADD slots :id, v :one SET #o = :owner")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":owner", AttributeValue::S(job.user_id.clone()))
    } else {
        u.update_expression("DELETE slots :id ADD v :one")
    };
    if let Some(cap) = cap {
        u = u
            .condition_expression("attribute_not_exists(slots) OR size(slots) < :cap")
            .expression_attribute_values(":cap", num(cap));
    }
    u.build().expect("table, key and expression are set")
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
impl JobInserter for DynamoStore {
    async fn insert(&self, job: &Job, how: &Insert) -> Result<Created, StoreError> {
        debug_assert_eq!(job.counted, how.in_flight_cap.is_some());
        if how.key.is_none() && how.in_flight_cap.is_none() {
            return self.put_new(job).await.map(|()| Created::New);
        }
        let put_job = Put::builder()
            .table_name(&self.table)
            .set_item(Some(to_item(job)))
            .condition_expression("attribute_not_exists(job_id)")
            .build()
            .expect("table and item are set");
        // One transaction: the job, its key item and its owner's slot, each conditional. Key and
        // slot items live in the same table under partition keys no job id can take (`idem#...`,
        // `user#...`), so no second table is needed, and they stay out of the `by_user` index.
        let mut items = vec![TransactWriteItem::builder().put(put_job).build()];
        let key_at = how.key.as_ref().map(|key| {
            let item = HashMap::from([
                ("job_id".to_owned(), AttributeValue::S(idem_key(key))),
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
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(job_id) OR expires_at < :now")
                .expression_attribute_values(":now", num(how.now_secs))
                .build()
                .expect("table and item are set");
            items.push(TransactWriteItem::builder().put(put).build());
            items.len() - 1
        });
        let counter_at = how.in_flight_cap.map(|cap| {
            let update = slot_update(&self.table, job, 1, Some(cap));
            items.push(TransactWriteItem::builder().update(update).build());
            items.len() - 1
        });
        let reasons = match self.transact(items, job.job_id.to_string()).await? {
            None => return Ok(Created::New),
            Some(reasons) => reasons,
        };
        let failed = |i: usize| {
            reasons
                .get(i)
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
        let known = !reasons.is_empty();
        if let (Some(i), Some(key)) = (key_at, &how.key)
            && (failed(i) || !known)
            && let Some(held) = self.held_key(key, how.now_secs).await?
        {
            return Ok(held);
        }
        if let (Some(i), Some(cap)) = (counter_at, how.in_flight_cap)
            && (failed(i) || (!known && self.in_flight(&job.user_id).await? >= i64::from(cap)))
        {
            return Err(StoreError::InFlightCapReached);
        }
        Err(StoreError::Conflict { current: None })
    }

    async fn held_key(
        &self,
        key: &KeyReservation,
        now_secs: i64,
    ) -> Result<Option<Created>, StoreError> {
        let held = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("job_id", AttributeValue::S(idem_key(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?
            .item;
        let Some(held) = held else { return Ok(None) };
        let text = |k: &str| match held.get(k) {
            Some(AttributeValue::S(s)) => Ok(s.clone()),
            _ => Err(StoreError::Corrupt {
                source: format!("idempotency item lacks {k}").into(),
            }),
        };
        let expired = match held.get("expires_at") {
            Some(AttributeValue::N(n)) => n.parse::<i64>().map_or(true, |e| e < now_secs),
            _ => true,
        };
        if expired {
            return Ok(None);
        }
        let job_id = JobId::parse(&text("target_job_id")?)
            .map_err(|e| StoreError::Corrupt { source: e.into() })?;
        Ok(Some(Created::Existing {
            job_id,
            request_hash: text("request_hash")?,
        }))
    }
}

#[async_trait]
impl JobReader for DynamoStore {
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
}

#[async_trait]
impl JobClaimer for DynamoStore {
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
}

#[async_trait]
impl JobWriter for DynamoStore {
    async fn replace_spawning(
        &self,
        from: &Job,
        to: &Job,
        children: &[Job],
    ) -> Result<(), StoreError> {
        self.spawn(from, to, children).await
    }

    async fn replace(&self, from: &Job, to: &Job) -> Result<(), StoreError> {
        let delta = from.slot_change(to);
        let landed_or_conflict =
            async |old: Option<Item>| match self.conflict(&to.job_id, old).await {
                // A retried write whose first try landed: done.
                StoreError::Conflict { current: Some(cur) } if *cur == *to => Ok(()),
                e => Err(e),
            };
        if delta == 0 {
            let res = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(to_item(to)))
                .condition_expression("version = :prev")
                .expression_attribute_values(":prev", num(from.version))
                .return_values_on_condition_check_failure(
                    ReturnValuesOnConditionCheckFailure::AllOld,
                )
                .send()
                .await;
            return match res {
                Ok(_) => Ok(()),
                Err(e) => match e.into_service_error() {
                    PutItemError::ConditionalCheckFailedException(c) => {
                        landed_or_conflict(c.item).await
                    }
                    other => Err(StoreError::Unavailable {
                        source: other.into(),
                    }),
                },
            };
        }
        // The job's write and its owner's slot move together, so the set stays exact.
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(to_item(to)))
            .condition_expression("version = :prev")
            .expression_attribute_values(":prev", num(from.version))
            .build()
            .expect("table and item are set");
        let count = slot_update(&self.table, to, delta, None);
        let items = vec![
            TransactWriteItem::builder().put(put).build(),
            TransactWriteItem::builder().update(count).build(),
        ];
        match self
            .transact(items, format!("{}-{}", to.job_id, to.version))
            .await?
        {
            None => Ok(()),
            Some(_) => landed_or_conflict(None).await,
        }
    }
}

impl DynamoStore {
    /// The owner's slot set and its write counter `v` (absent on an item no write has bumped yet).
    async fn slots_with_version(
        &self,
        user: &str,
    ) -> Result<(BTreeSet<String>, Option<i64>), StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(slots_key(user)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        let item = out.item.unwrap_or_default();
        let set = match item.get("slots") {
            Some(AttributeValue::Ss(ids)) => ids.iter().cloned().collect(),
            None => BTreeSet::new(),
            Some(other) => {
                return Err(StoreError::Corrupt {
                    source: format!("slots item holds {other:?}").into(),
                });
            }
        };
        let v = match item.get("v") {
            Some(AttributeValue::N(n)) => n.parse().ok(),
            _ => None,
        };
        Ok((set, v))
    }

    /// [`JobWriter::replace_spawning`]: one transaction of the parent's write, the children's creation
    /// and the owner's whole new slot set (the parent out, the children in: one item cannot take an ADD
    /// and a DELETE of one attribute in one write), conditional on the set's counter not having moved.
    async fn spawn(&self, from: &Job, to: &Job, children: &[Job]) -> Result<(), StoreError> {
        let mut items = vec![
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(to_item(to)))
                        .condition_expression("version = :prev")
                        .expression_attribute_values(":prev", num(from.version))
                        .build()
                        .expect("table and item are set"),
                )
                .build(),
        ];
        for child in children {
            items.push(
                TransactWriteItem::builder()
                    .put(
                        Put::builder()
                            .table_name(&self.table)
                            .set_item(Some(to_item(child)))
                            .condition_expression("attribute_not_exists(job_id)")
                            .build()
                            .expect("table and item are set"),
                    )
                    .build(),
            );
        }
        let leaves = from.slot_change(to) < 0;
        let entering: Vec<String> = children
            .iter()
            .filter(|c| c.holds_slot())
            .map(|c| c.job_id.to_string())
            .collect();
        let mut token = format!("{}-{}", to.job_id, to.version);
        if leaves || !entering.is_empty() {
            let (mut set, v) = self.slots_with_version(&to.user_id).await?;
            if leaves {
                set.remove(to.job_id.as_str());
            }
            set.extend(entering);
            let mut u = Update::builder()
                .table_name(&self.table)
                .set_key(Some(slots_key(&to.user_id)))
                .expression_attribute_names("#o", "owner")
                .expression_attribute_values(":owner", AttributeValue::S(to.user_id.clone()))
                .expression_attribute_values(":one", num(1));
            u = if set.is_empty() {
                u.update_expression("REMOVE slots SET #o = :owner ADD v :one")
            } else {
                u.update_expression("SET slots = :s, #o = :owner ADD v :one")
                    .expression_attribute_values(
                        ":s",
                        AttributeValue::Ss(set.into_iter().collect()),
                    )
            };
            u = match v {
                Some(v) => u
                    .condition_expression("v = :v")
                    .expression_attribute_values(":v", num(v)),
                None => u.condition_expression("attribute_not_exists(v)"),
            };
            // The set read is part of the request: a retry after the set moved is another request.
            token = format!("{token}-s{}", v.unwrap_or(-1));
            items.push(
                TransactWriteItem::builder()
                    .update(u.build().expect("table, key and expression are set"))
                    .build(),
            );
        }
        match self.transact(items, token).await? {
            None => Ok(()),
            // The parent moved (a conflict, or this write landed before), or the slot set did: the
            // caller re-reads the parent and tries again.
            Some(_) => match self.conflict(&to.job_id, None).await {
                StoreError::Conflict { current: Some(cur) } if *cur == *to => Ok(()),
                e => Err(e),
            },
        }
    }
}

#[async_trait]
impl JobLister for DynamoStore {
    /// The `by_user` index holds keys only (so a job's state changes never write to it): a page of keys
    /// from the index, newest first, then the jobs themselves in one BatchGetItem. With a status filter,
    /// pages are read until enough jobs match (what a FilterExpression would read too).
    async fn list(&self, user: &str, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let mut start = query.after.as_ref().map(|(t, id)| {
            let mut key = Self::key(id);
            key.insert("user_id".into(), AttributeValue::S(user.to_owned()));
            key.insert("submitted_at".into(), num(t));
            key
        });
        let mut found = Vec::new();
        loop {
            let wanted = query.limit - found.len();
            let page = if query.status.is_some() {
                wanted.max(100)
            } else {
                wanted
            };
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(BY_USER_INDEX)
                .key_condition_expression("user_id = :u")
                .expression_attribute_values(":u", AttributeValue::S(user.to_owned()))
                .scan_index_forward(false)
                .limit(i32::try_from(page).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            let ids: Vec<JobId> = out
                .items
                .unwrap_or_default()
                .iter()
                .filter_map(|i| match i.get("job_id") {
                    Some(AttributeValue::S(id)) => JobId::parse(id).ok(),
                    _ => None,
                })
                .collect();
            let mut jobs = self.get_many(&ids).await?;
            for id in &ids {
                // A key whose job is gone (TTL) is skipped.
                if let Some(job) = jobs.remove(id)
                    && query.status.is_none_or(|s| job.status == s)
                {
                    found.push(job);
                    if found.len() >= query.limit {
                        return Ok(found);
                    }
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }
}

#[async_trait]
impl CancelSignals for DynamoStore {
    async fn signal_cancel(
        &self,
        id: &JobId,
        round: u32,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        let mut item = cancel_key(id, round);
        item.insert("expires_at".into(), num(expires_at));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl StepStore for DynamoStore {
    async fn step(&self, id: &JobId, name: &str) -> Result<Option<Json>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(step_key(id, name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.item.as_ref().map(step_value).transpose()
    }

    async fn record_step(
        &self,
        id: &JobId,
        name: &str,
        value: &Json,
        expires_at: i64,
    ) -> Result<Json, StoreError> {
        let mut item = step_key(id, name);
        item.insert("value".into(), AttributeValue::S(value.get().to_owned()));
        item.insert("expires_at".into(), num(expires_at));
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(job_id)")
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(value.clone()),
            Err(e) => match e.into_service_error() {
                // Recorded already (by an earlier attempt, or by this put whose answer was lost): that
                // value stands.
                PutItemError::ConditionalCheckFailedException(c) => match c.item {
                    Some(held) => step_value(&held),
                    None => self
                        .step(id, name)
                        .await?
                        .ok_or_else(|| StoreError::Corrupt {
                            source: "a step item vanished after its conditional put failed".into(),
                        }),
                },
                other => Err(StoreError::Unavailable {
                    source: other.into(),
                }),
            },
        }
    }
}

fn step_value(item: &Item) -> Result<Json, StoreError> {
    match item.get("value") {
        Some(AttributeValue::S(text)) => Json::parse(text).map_err(|e| StoreError::Corrupt {
            source: format!("step value: {e}").into(),
        }),
        other => Err(StoreError::Corrupt {
            source: format!("step item holds {other:?}").into(),
        }),
    }
}

#[async_trait]
impl CancelWatch for DynamoStore {
    async fn cancel_signalled(&self, id: &JobId, round: u32) -> Result<bool, StoreError> {
        // Eventually consistent: half the price, and a mark is seen well within the poll period.
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(cancel_key(id, round)))
            .projection_expression("job_id")
            .send()
            .await
            .map_err(unavailable)?;
        Ok(out.item.is_some())
    }
}

#[async_trait]
impl SlotLedger for DynamoStore {
    async fn in_flight(&self, user: &str) -> Result<i64, StoreError> {
        Ok(self.slots_with_version(user).await?.0.len() as i64)
    }

    async fn all_slots(&self) -> Result<Vec<Slots>, StoreError> {
        let mut found = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .filter_expression("begins_with(job_id, :p) AND attribute_exists(slots)")
                .expression_attribute_values(":p", AttributeValue::S(SLOTS_PREFIX.into()))
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                let (Some(AttributeValue::S(user_id)), Some(AttributeValue::Ss(ids))) =
                    (item.get("owner"), item.get("slots"))
                else {
                    continue;
                };
                let jobs = ids.iter().filter_map(|id| JobId::parse(id).ok()).collect();
                found.push(Slots {
                    user_id: user_id.clone(),
                    jobs,
                });
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }

    async fn release_slots(&self, user: &str, jobs: &[JobId]) -> Result<(), StoreError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let ids = AttributeValue::Ss(jobs.iter().map(ToString::to_string).collect());
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(slots_key(user)))
            .update_expression("DELETE slots :ids ADD v :one")
            .condition_expression("attribute_exists(job_id)")
            .expression_attribute_values(":ids", ids)
            .expression_attribute_values(":one", num(1))
            .send()
            .await
            .map(|_| ())
            .or_else(|e| match e.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(_) => Ok(()),
                other => Err(StoreError::Unavailable {
                    source: other.into(),
                }),
            })
    }
}

#[async_trait]
impl JobScanner for DynamoStore {
    async fn stale_jobs(
        &self,
        before: Millis,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        collect_pages(limit, None, |start, _| {
            let scan = self
                .client
                .scan()
                .table_name(&self.table)
                // The second part is `Job::effective_status` == dead_letter for a running job, the
                // third `Job::webhook_overdue`.
                .filter_expression(
                    "(#s = :queued AND updated_at < :before) OR (#s = :running AND \
                     lease_expires_at < :now AND attempts >= max_attempts) OR \
                     (webhook.#s = :pending AND webhook.next_attempt_at < :before)",
                )
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":pending", AttributeValue::S("pending".into()))
                .expression_attribute_values(":queued", status(JobStatus::Queued))
                .expression_attribute_values(":running", status(JobStatus::Running))
                .expression_attribute_values(":before", num(before))
                .expression_attribute_values(":now", num(now))
                .set_exclusive_start_key(start);
            Box::pin(async move {
                let out = scan.send().await.map_err(unavailable)?;
                Ok((out.items.unwrap_or_default(), out.last_evaluated_key))
            })
        })
        .await
    }
}

/// One page of items, and where the next starts (`None`: it was the last).
type Page = (Vec<Item>, Option<Item>);

/// Reads pages with `page(start, still wanted)` -> (items, next start) until `limit` jobs are found or
/// the pages run out (DynamoDB's pagination, for queries and scans alike).
async fn collect_pages(
    limit: usize,
    mut start: Option<Item>,
    mut page: impl FnMut(Option<Item>, usize) -> BoxFuture<'static, Result<Page, StoreError>>,
) -> Result<Vec<Job>, StoreError> {
    let mut found = Vec::new();
    loop {
        let (items, next) = page(start, limit - found.len()).await?;
        for item in items {
            found.push(from_item(item)?);
            if found.len() >= limit {
                return Ok(found);
            }
        }
        start = next;
        if start.is_none() {
            return Ok(found);
        }
    }
}
