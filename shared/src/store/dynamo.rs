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
use sha2::Digest;
use std::collections::HashMap;

use super::{
    CancelSignals, CancelWatch, Created, Insert, JobClaimer, JobInserter, JobReader, JobWriter,
    SlotLedger, StepStore, StoreError, WaitpointStore,
};
use crate::job::{Job, JobId, JobStatus, Millis};
use crate::json::Json;
use crate::slots::{Ledger, Views};
use crate::steps::StepMeta;
use crate::waitpoint::{WaitState, Waitpoint};

mod due;
mod limits;
mod list;
mod pages;
mod release;
mod steps;
mod threads;
mod usage;
mod watch;

pub use due::{DUE_SHARDS, SWEEP_SHARDS};
pub use list::USER_SHARDS;

/// Jobs in one DynamoDB table (see `JobsTable` in template.yaml).
#[derive(Debug, Clone)]
pub struct DynamoStore {
    client: Client,
    table: String,
    /// Slot releases of concurrent writers, sent together (shared by clones).
    releases: std::sync::Arc<release::Releases>,
    /// What this instance knows of its ledgers' page loads (shared by clones).
    views: std::sync::Arc<Views>,
    /// What this instance last saw of rate buckets (shared by clones).
    buckets: std::sync::Arc<crate::limits::bucket::Seen>,
}

type Item = HashMap<String, AttributeValue>;

impl DynamoStore {
    /// A store on `table` with a client of `sdk` (for tools that need only the table).
    pub fn from_sdk(sdk: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), table)
    }

    pub fn new(client: Client, table: impl Into<String>) -> Self {
        let table = table.into();
        Self {
            releases: release::Releases::new(client.clone(), table.clone()),
            views: std::sync::Arc::default(),
            buckets: std::sync::Arc::default(),
            client,
            table,
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

    /// Runs one UpdateItem: `false` when its condition did not hold.
    async fn update(&self, u: Update) -> Result<bool, StoreError> {
        update_item(&self.client, u).await
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
            for item in self
                .batch_get(chunk.iter().map(Self::key).collect(), true)
                .await?
            {
                let job = from_item(item)?;
                found.insert(job.job_id.clone(), job);
            }
        }
        Ok(found)
    }

    /// The items at `keys` (at most 100: one BatchGetItem's worth; missing ones are absent), asking
    /// again for what the backend left unprocessed (throttling) until nothing is left.
    async fn batch_get(
        &self,
        mut keys: Vec<Item>,
        consistent: bool,
    ) -> Result<Vec<Item>, StoreError> {
        let mut found = Vec::new();
        while !keys.is_empty() {
            let request = KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(consistent)
                .build()
                .expect("keys are set");
            let out = self
                .client
                .batch_get_item()
                .request_items(&self.table, request)
                .send()
                .await
                .map_err(unavailable)?;
            found.extend(
                out.responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default(),
            );
            keys = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&self.table))
                .map(|k| k.keys)
                .unwrap_or_default();
        }
        Ok(found)
    }

    fn key(id: &JobId) -> Item {
        HashMap::from([("job_id".to_owned(), AttributeValue::S(id.to_string()))])
    }
}

/// The item holding one durable step's result.
fn step_key(id: &JobId, name: &str) -> Item {
    HashMap::from([(
        "job_id".to_owned(),
        AttributeValue::S(format!("step#{id}#{name}")),
    )])
}

/// The item holding one waitpoint: `wname`, `wstate`, `wake_at` (its expiry, epoch ms), and once
/// settled `settled_at` and (completed) `payload`. No `user_id`: it never enters the `by_user` index.
fn waitpoint_key(id: &JobId, name: &str) -> Item {
    HashMap::from([(
        "job_id".to_owned(),
        AttributeValue::S(format!("wait#{id}#{name}")),
    )])
}

fn waitpoint_item(id: &JobId, wp: &Waitpoint) -> Item {
    let mut item = waitpoint_key(id, &wp.name);
    if let Some(at) = wp.opened_at {
        steps::index(&mut item, id, at);
    }
    item.insert("wname".into(), AttributeValue::S(wp.name.clone()));
    item.insert("wstate".into(), AttributeValue::S(wp.state.as_str().into()));
    item.insert("wake_at".into(), num(wp.expires_at));
    if let Some(p) = &wp.payload {
        item.insert("payload".into(), AttributeValue::S(p.get().to_owned()));
    }
    if let Some(t) = wp.settled_at {
        item.insert("settled_at".into(), num(t));
    }
    item
}

fn waitpoint_from(item: &Item) -> Result<Waitpoint, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt {
        source: format!("waitpoint item: {what}").into(),
    };
    let text = |k: &str| match item.get(k) {
        Some(AttributeValue::S(s)) => Some(s.as_str()),
        _ => None,
    };
    let number = |k: &str| match item.get(k) {
        Some(AttributeValue::N(n)) => n.parse::<Millis>().ok(),
        _ => None,
    };
    Ok(Waitpoint {
        name: text("wname").ok_or_else(|| corrupt("no name"))?.to_owned(),
        state: text("wstate")
            .and_then(WaitState::parse)
            .ok_or_else(|| corrupt("no state"))?,
        expires_at: number("wake_at").ok_or_else(|| corrupt("no expiry"))?,
        payload: text("payload")
            .map(Json::parse)
            .transpose()
            .map_err(|e| corrupt(&e.to_string()))?,
        settled_at: number("settled_at"),
        opened_at: number(steps::AT),
    })
}

/// The small item that tells a running attempt its job was asked to stop.
fn cancel_key(id: &JobId, round: u32) -> Item {
    HashMap::from([(
        "job_id".to_owned(),
        AttributeValue::S(format!("cancel#{id}#{round}")),
    )])
}

/// A job's item: its storage form, the `by_user_shard` index's key (see [`list`]), and while it is
/// watched (waiting on a timer, or watched by the sweep) the `by_due` index's (see [`due`]).
fn to_item(job: &Job) -> Item {
    let mut item: Item = serde_dynamo::to_item(job).expect("a job always maps to an item");
    item.insert(
        list::SHARD_ATTRIBUTE.to_owned(),
        AttributeValue::S(list::user_shard(&job.user_id, &job.job_id)),
    );
    if let Some(watch) = job.watch() {
        due::mark(&mut item, &job.job_id, watch);
    }
    item
}

fn from_item(item: Item) -> Result<Job, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::Corrupt { source: e.into() })
}

/// Runs one UpdateItem: `false` when its condition did not hold.
async fn update_item(client: &Client, u: Update) -> Result<bool, StoreError> {
    let res = client
        .update_item()
        .table_name(u.table_name)
        .set_key(Some(u.key))
        .update_expression(u.update_expression)
        .set_condition_expression(u.condition_expression)
        .set_expression_attribute_names(u.expression_attribute_names)
        .set_expression_attribute_values(u.expression_attribute_values)
        .send()
        .await;
    match res {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(unavailable(e)),
    }
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
    async fn insert(&self, job: &mut Job, how: &Insert) -> Result<Created, StoreError> {
        debug_assert_eq!(job.counted, how.in_flight_cap.is_some());
        if let Some(cap) = how.in_flight_cap {
            // The member first: a job never holds a slot its owner's ledger does not count.
            let page = self.take_slot(job, cap).await?;
            job.slot_page = Some(page.ok_or(StoreError::InFlightCapReached)?);
        }
        let taken = match self.put_new(job).await {
            Ok(()) => return Ok(Created::New),
            Err(StoreError::AlreadyExists) => self.get(&job.job_id).await?,
            Err(e) => return Err(e),
        };
        // The id was taken: by this job's key (a concurrent or earlier submit with it), or by chance.
        // The put did not land, so the member just added is held by nobody, unless the stored job is
        // a twin submitted in the same second and holds the very same member.
        if job.counted && !taken.as_ref().is_some_and(|t| t.holds(&job.slot())) {
            self.release_slots(&Ledger::owner(&job.user_id), &[job.slot()])
                .await?;
        }
        match taken {
            Some(existing) if how.keyed => Ok(Created::Existing(Box::new(existing))),
            _ => Err(StoreError::AlreadyExists),
        }
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
                 updated_at = :now, version = version + :one REMOVE #deferred",
            )
            .condition_expression(
                "#s IN (:queued, :retrying) OR (#s = :running AND \
                 (attribute_not_exists(lease_expires_at) OR lease_expires_at < :now))",
            )
            .expression_attribute_names("#s", "status")
            // A reserved word in DynamoDB's expressions.
            .expression_attribute_names("#deferred", "deferred")
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
    async fn replace(&self, from: &Job, to: &Job) -> Result<(), StoreError> {
        self.write_moving_slots(from, to, &[]).await
    }

    async fn replace_spawning(
        &self,
        from: &Job,
        to: &Job,
        children: &[Job],
    ) -> Result<(), StoreError> {
        self.write_moving_slots(from, to, children).await
    }
}

impl DynamoStore {
    /// One job write inside the slot protocol (see [`crate::store`]): the members of the slots it
    /// takes (`to`'s on a redrive, the children's) added before it, `from`'s removed after it, also
    /// when a retry finds the write landed already.
    async fn write_moving_slots(
        &self,
        from: &Job,
        to: &Job,
        children: &[Job],
    ) -> Result<(), StoreError> {
        let change = from.slot_change(to);
        let ledger = Ledger::owner(&to.user_id);
        let mut taking: Vec<_> = children
            .iter()
            .filter(|c| c.holds_slot())
            .map(Job::slot)
            .collect();
        if change > 0 {
            taking.push(to.slot());
        }
        self.add_uncapped(&ledger, &taking).await?;
        match self.write(from, to, children).await {
            Ok(()) => {}
            // A retried write whose first try landed: done, but for the removal below.
            Err(StoreError::Conflict { current: Some(cur) }) if *cur == *to => {}
            Err(StoreError::Conflict { current }) => {
                // Refused for sure, so `to` never held its new member, unless the stored job is a twin
                // redrive of the same second. (Children's members are left to the sweep: a child may
                // exist from an earlier completion of the parent, holding a member of the same second.)
                if change > 0 && !current.as_ref().is_some_and(|c| c.holds(&to.slot())) {
                    self.release_slots(&ledger, &[to.slot()]).await?;
                }
                return Err(StoreError::Conflict { current });
            }
            Err(e) => return Err(e),
        }
        if change < 0 {
            self.release_slots(&ledger, &[from.slot()]).await?;
        }
        Ok(())
    }

    /// `to` over `from` (a PutItem conditional on the version), with `children` created in the same
    /// transaction when there are any. `Conflict` carries the stored job.
    async fn write(&self, from: &Job, to: &Job, children: &[Job]) -> Result<(), StoreError> {
        if children.is_empty() {
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
                        Err(self.conflict(&to.job_id, c.item).await)
                    }
                    other => Err(StoreError::Unavailable {
                        source: other.into(),
                    }),
                },
            };
        }
        let put = |job: &Job, condition: &str| {
            let mut p = Put::builder()
                .table_name(&self.table)
                .set_item(Some(to_item(job)))
                .condition_expression(condition);
            if condition.contains(":prev") {
                p = p.expression_attribute_values(":prev", num(from.version));
            }
            TransactWriteItem::builder()
                .put(p.build().expect("table and item are set"))
                .build()
        };
        let mut items = vec![put(to, "version = :prev")];
        items.extend(
            children
                .iter()
                .map(|c| put(c, "attribute_not_exists(job_id)")),
        );
        // The token makes the SDK's retries of this very write idempotent; another write over the same
        // version (another attempt's completion) must not pass for one: it names the content.
        let mut token = sha2::Sha256::new();
        token.update(serde_json::to_vec(to).expect("a job serializes"));
        children
            .iter()
            .for_each(|c| token.update(c.job_id.as_str()));
        let token = hex::encode(token.finalize())[..36].to_owned();
        match self.transact(items, token).await? {
            None => Ok(()),
            // The parent moved (a conflict, or this write landed before): the caller looks again.
            Some(_) => Err(self.conflict(&to.job_id, None).await),
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
        meta: &StepMeta,
        expires_at: i64,
    ) -> Result<Json, StoreError> {
        let mut item = step_key(id, name);
        item.insert("value".into(), AttributeValue::S(value.get().to_owned()));
        item.insert("expires_at".into(), num(expires_at));
        steps::describe(&mut item, id, meta);
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
impl WaitpointStore for DynamoStore {
    async fn waitpoint(&self, id: &JobId, name: &str) -> Result<Option<Waitpoint>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(waitpoint_key(id, name)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.item.as_ref().map(waitpoint_from).transpose()
    }

    async fn open_waitpoint(
        &self,
        id: &JobId,
        wp: &Waitpoint,
        expires_at: i64,
    ) -> Result<Waitpoint, StoreError> {
        let mut item = waitpoint_item(id, wp);
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
            Ok(_) => Ok(wp.clone()),
            Err(e) => match e.into_service_error() {
                // Recorded already (an earlier attempt, or this put whose answer was lost): it stands.
                PutItemError::ConditionalCheckFailedException(c) => match c.item {
                    Some(held) => waitpoint_from(&held),
                    None => {
                        self.waitpoint(id, &wp.name)
                            .await?
                            .ok_or_else(|| StoreError::Corrupt {
                                source: "a waitpoint vanished after its conditional put failed"
                                    .into(),
                            })
                    }
                },
                other => Err(StoreError::Unavailable {
                    source: other.into(),
                }),
            },
        }
    }

    async fn settle_waitpoint(
        &self,
        id: &JobId,
        to: &Waitpoint,
    ) -> Result<Option<Waitpoint>, StoreError> {
        let mut names = HashMap::from([("#st".to_owned(), "wstate".to_owned())]);
        let mut values = HashMap::from([
            (
                ":to".to_owned(),
                AttributeValue::S(to.state.as_str().into()),
            ),
            (":pending".to_owned(), AttributeValue::S("pending".into())),
            (":at".to_owned(), num(to.settled_at.unwrap_or_default())),
        ]);
        let mut set = "SET #st = :to, settled_at = :at".to_owned();
        if let Some(p) = &to.payload {
            set.push_str(", #p = :p");
            names.insert("#p".into(), "payload".into());
            values.insert(":p".into(), AttributeValue::S(p.get().to_owned()));
        }
        // A completion enters the due index: the due task checks that its job was resumed.
        if let Some(at) = to.repair_at() {
            set.push_str(", #dk = :dk, #da = :da");
            names.insert("#dk".into(), due::SHARD_ATTRIBUTE.into());
            names.insert("#da".into(), due::AT_ATTRIBUTE.into());
            values.insert(":dk".into(), AttributeValue::S(due::due_shard(id)));
            values.insert(":da".into(), num(at));
        }
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(waitpoint_key(id, &to.name)))
            .update_expression(set)
            .condition_expression("#st = :pending")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(_) => Ok(None),
            Err(e) => match e.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(c) => {
                    let current = match c.item {
                        Some(held) => Some(waitpoint_from(&held)?),
                        None => self.waitpoint(id, &to.name).await?,
                    };
                    match current {
                        None => Err(StoreError::NotFound),
                        // The SDK's retry of this very write, whose first answer was lost.
                        Some(c) if c == *to => Ok(None),
                        Some(c) => Ok(Some(c)),
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
