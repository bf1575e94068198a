//! Model usage per owner per day on DynamoDB (see [`crate::usage`]): one item per owner and day, keyed
//! `use#<owner>#<day>` in the jobs table's `job_id`, with three counters per model as top-level
//! numbers (`in#<model>`, `out#<model>`, `req#<model>`) and `total_tokens`.
//!
//! Top-level attributes, not a map per model: `ADD` cannot reach into a map that does not exist yet,
//! and an item that does not exist yet is every owner's first call of a day. So each model call is one
//! UpdateItem with no condition and no read (`ADD` creates what is missing), returning the new total:
//! 1 write unit while the item is under 1 KB (a few dozen models), and the budget check mid-run costs
//! nothing more. Not an item the sweep or a list reads: it has no `status` and no index attribute.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};

use super::{DynamoStore, Item, num, unavailable};
use crate::store::{StoreError, UsageLedger, UsageReader};
use crate::usage::{Day, DayUsage, ModelUsage, Spend};

const INPUT: &str = "in#";
const OUTPUT: &str = "out#";
const REQUESTS: &str = "req#";
const TOTAL: &str = "total_tokens";

fn key(owner: &str, day: Day) -> Item {
    Item::from([("job_id".to_owned(), AttributeValue::S(day.key(owner)))])
}

/// A stored counter as a `u64`, saturating: the sums of absurd counts a model reported can pass
/// `u64::MAX` (DynamoDB keeps 38 digits) and must not make the item unreadable.
fn counter(v: Option<&AttributeValue>) -> u64 {
    match v {
        Some(AttributeValue::N(n)) => n
            .parse::<u128>()
            .map(|n| n.min(u128::from(u64::MAX)) as u64)
            .unwrap_or(u64::MAX),
        _ => 0,
    }
}

#[async_trait]
impl UsageLedger for DynamoStore {
    async fn add_usage(&self, owner: &str, day: Day, spend: &Spend) -> Result<u64, StoreError> {
        let tokens = spend.counters().tokens();
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, day)))
            .update_expression(
                "ADD #in :in, #out :out, #req :one, total_tokens :total SET expires_at = :exp",
            )
            .expression_attribute_names("#in", format!("{INPUT}{}", spend.model))
            .expression_attribute_names("#out", format!("{OUTPUT}{}", spend.model))
            .expression_attribute_names("#req", format!("{REQUESTS}{}", spend.model))
            .expression_attribute_values(":in", num(spend.input_tokens))
            .expression_attribute_values(":out", num(spend.output_tokens))
            .expression_attribute_values(":one", num(1))
            .expression_attribute_values(":total", num(tokens))
            .expression_attribute_values(":exp", num(day.expires_at()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(unavailable)?;
        Ok(counter(out.attributes.as_ref().and_then(|a| a.get(TOTAL))))
    }
}

#[async_trait]
impl UsageReader for DynamoStore {
    async fn usage(&self, owner: &str, day: Day) -> Result<DayUsage, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(owner, day)))
            // Eventually consistent: half the price, and a budget or a page a second behind is fine.
            .consistent_read(false)
            .send()
            .await
            .map_err(unavailable)?;
        let Some(item) = out.item else {
            return Ok(DayUsage::default());
        };
        let mut usage = DayUsage {
            total_tokens: counter(item.get(TOTAL)),
            ..DayUsage::default()
        };
        for (name, value) in &item {
            let (model, set): (&str, fn(&mut ModelUsage, u64)) =
                if let Some(m) = name.strip_prefix(INPUT) {
                    (m, |u, n| u.input_tokens = n)
                } else if let Some(m) = name.strip_prefix(OUTPUT) {
                    (m, |u, n| u.output_tokens = n)
                } else if let Some(m) = name.strip_prefix(REQUESTS) {
                    (m, |u, n| u.requests = n)
                } else {
                    continue;
                };
            set(
                usage.models.entry(model.to_owned()).or_default(),
                counter(Some(value)),
            );
        }
        Ok(usage)
    }
}
