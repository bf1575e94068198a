//! Kind-level limits on DynamoDB (see [`crate::limits`]): concurrency holds on ledger pages (the
//! same capped add as the in-flight cap's, with lapsed holds cleared from a full page), token
//! buckets as one `tat` number per item, and a deferred job's note.

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure, Update};

use super::{DynamoStore, Item, num, status, unavailable};
use crate::job::{JobId, JobStatus, Millis};
use crate::limits::bucket::{self, Write};
use crate::limits::{Deferred, Hold, Rate, Take};
use crate::slots::{Layout, Ledger};
use crate::store::{LimitStore, RateBuckets, StoreError};

/// Conditional writes one take tries at most: each refusal returns the bucket's `tat`, so the next
/// write is the right one unless another taker moved it meanwhile.
const MAX_WRITES: usize = 3;

/// A bucket item outlives its last take by this much (its TTL): idle buckets go away.
const BUCKET_TTL_SECS: i64 = 86_400;

#[async_trait]
impl LimitStore for DynamoStore {
    async fn hold(
        &self,
        ledger: &Ledger,
        cap: u32,
        hold: &Hold,
        now: Millis,
    ) -> Result<Option<u32>, StoreError> {
        let member = hold.to_string();
        self.take_page(
            ledger,
            Layout::new(cap),
            &hold.job_id,
            None,
            &move |_| member.clone(),
            Some(now),
        )
        .await
    }

    async fn unhold(&self, ledger: &Ledger, page: u32, hold: &Hold) -> Result<(), StoreError> {
        self.remove_members(ledger.key(Some(page)), vec![hold.to_string()])
            .await?;
        self.views.moved(ledger, page, -1);
        Ok(())
    }

    async fn renew_hold(
        &self,
        ledger: &Ledger,
        page: u32,
        old: &Hold,
        new: &Hold,
    ) -> Result<(), StoreError> {
        self.add_members(ledger.key(Some(page)), vec![new.to_string()])
            .await?;
        self.remove_members(ledger.key(Some(page)), vec![old.to_string()])
            .await
    }

    async fn holders(&self, ledger: &Ledger, cap: u32, now: Millis) -> Result<u32, StoreError> {
        let pages: Vec<Option<u32>> = (0..Layout::new(cap).pages()).map(Some).collect();
        let items = self.read_pages(ledger, &pages, true).await?;
        Ok(Hold::live(
            items
                .values()
                .filter_map(|i| match i.get("slots") {
                    Some(AttributeValue::Ss(m)) => Some(m),
                    _ => None,
                })
                .flatten()
                .filter_map(|m| Hold::parse(m)),
            now,
        ))
    }

    async fn note_deferred(
        &self,
        id: &JobId,
        deferred: &Deferred,
        now: Millis,
    ) -> Result<(), StoreError> {
        let note = serde_dynamo::to_attribute_value(deferred)
            .map_err(|e| StoreError::Corrupt { source: e.into() })?;
        let write = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::key(id)))
            // `updated_at` too: the sweep re-sends a `queued` job not updated for a while (a lost
            // message?), and a deferred job's message is not lost.
            .update_expression("SET #deferred = :d, updated_at = :now")
            .condition_expression("#s IN (:queued, :retrying)")
            .expression_attribute_names("#s", "status")
            // A reserved word in DynamoDB's expressions.
            .expression_attribute_names("#deferred", "deferred")
            .expression_attribute_values(":d", note)
            .expression_attribute_values(":now", num(now))
            .expression_attribute_values(":queued", status(JobStatus::Queued))
            .expression_attribute_values(":retrying", status(JobStatus::Retrying))
            .build()
            .expect("table, key and expression are set");
        // A job that started meanwhile needs no note: not an error.
        self.update(write).await.map(drop)
    }
}

#[async_trait]
impl RateBuckets for DynamoStore {
    async fn take_tokens(
        &self,
        bucket: &str,
        rate: &Rate,
        n: u32,
        now: Millis,
    ) -> Result<Take, StoreError> {
        let now_us = bucket::at(now);
        let mut seen = self.buckets.get(bucket);
        for _ in 0..MAX_WRITES {
            let write = match rate.write(seen, now_us, n) {
                Ok(w) => w,
                Err(wait) => return Ok(Take::Wait(wait)),
            };
            match self.write_bucket(bucket, write, now).await? {
                Ok(tat) => {
                    self.buckets.saw(bucket, tat);
                    return Ok(Take::Taken);
                }
                Err(tat) => {
                    // Someone else took first: the stored `tat` says which write is right now.
                    if let Some(t) = tat {
                        self.buckets.saw(bucket, t);
                    }
                    seen = tat;
                }
            }
        }
        // Contended past MAX_WRITES: wait one token's time, as a busy bucket would.
        Ok(Take::Wait(std::time::Duration::from_micros(
            rate.interval() as u64,
        )))
    }
}

impl DynamoStore {
    /// One conditional write of a take: `Ok(new tat)` when it applied, `Err(stored tat)` when its
    /// condition failed (`None`: no item, as after its TTL).
    async fn write_bucket(
        &self,
        bucket: &str,
        write: Write,
        now: Millis,
    ) -> Result<Result<bucket::Micros, Option<bucket::Micros>>, StoreError> {
        let key = page_key_of(bucket);
        let expires = num(now / 1000 + BUCKET_TTL_SECS);
        let req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .expression_attribute_values(":exp", expires)
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let req = match write {
            Write::Idle { to } => req
                .update_expression("SET tat = :to, expires_at = :exp")
                .condition_expression("attribute_not_exists(tat) OR tat <= :now")
                .expression_attribute_values(":to", num(to))
                .expression_attribute_values(":now", num(bucket::at(now))),
            Write::Busy { cost, max } => req
                .update_expression("SET expires_at = :exp ADD tat :cost")
                .condition_expression("tat > :now AND tat <= :max")
                .expression_attribute_values(":cost", num(cost))
                .expression_attribute_values(":max", num(max))
                .expression_attribute_values(":now", num(bucket::at(now))),
        };
        match req.send().await {
            Ok(out) => Ok(Ok(tat_of(out.attributes.as_ref()).unwrap_or(match write {
                Write::Idle { to } => to,
                Write::Busy { max, cost } => max + cost,
            }))),
            Err(e) => match e.into_service_error() {
                UpdateItemError::ConditionalCheckFailedException(c) => {
                    Ok(Err(match tat_of(c.item.as_ref()) {
                        Some(t) => Some(t),
                        // Some emulators do not return the old item: read it.
                        None => self.read_tat(bucket).await?,
                    }))
                }
                other => Err(StoreError::Unavailable {
                    source: other.into(),
                }),
            },
        }
    }

    async fn read_tat(&self, bucket: &str) -> Result<Option<bucket::Micros>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(page_key_of(bucket)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(tat_of(out.item.as_ref()))
    }
}

fn page_key_of(key: &str) -> Item {
    Item::from([("job_id".to_owned(), AttributeValue::S(key.to_owned()))])
}

fn tat_of(item: Option<&Item>) -> Option<bucket::Micros> {
    match item?.get("tat")? {
        AttributeValue::N(n) => n.parse().ok(),
        _ => None,
    }
}
