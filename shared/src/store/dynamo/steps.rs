//! `GET /jobs/{id}/steps` on DynamoDB: a job's step and waitpoint items, from the sparse `by_job` index.
//!
//! Those items are keyed `step#<job>#<name>` and `wait#<job>#<name>`: each is its own partition, so no
//! Query of the table can list a job's. Each carries `step_of` (the job id) and `step_at` (when it was
//! recorded, epoch ms), the `by_job` index's keys, written in the one put that records it: no write is
//! added, and the index's entry (keys only, well under 1 KB) costs one write unit however large the
//! result. Job items carry neither attribute, so they never enter it; settling a waitpoint changes
//! neither key, so it writes no entry. A page is one Query of the index (oldest first) and one
//! BatchGetItem of the items.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{
    DynamoStore, Item, num, step_key, step_value, unavailable, waitpoint_from, waitpoint_key,
};
use crate::job::JobId;
use crate::steps::{Listed, Recorded, RecordedStep, StepKind, StepMeta, StepPosition, StepQuery};
use crate::store::{StepLister, StoreError};

/// The index (`JobsTable` in template.yaml) and its keys.
const INDEX: &str = "by_job";
const OF: &str = "step_of";
pub(super) const AT: &str = "step_at";
/// What recorded a step, and when its body started (a step item's; `step_at` is when it finished).
const KIND: &str = "step_kind";
const STARTED: &str = "started_at";

/// Puts an item in its job's list, at `at`.
pub(super) fn index(item: &mut Item, id: &JobId, at: i64) {
    item.insert(OF.into(), AttributeValue::S(id.to_string()));
    item.insert(AT.into(), num(at));
}

/// What a step item carries besides its result: its place in the list, kind and start.
pub(super) fn describe(item: &mut Item, id: &JobId, meta: &StepMeta) {
    index(item, id, meta.recorded_at);
    item.insert(KIND.into(), AttributeValue::S(meta.kind.as_str().into()));
    item.insert(STARTED.into(), num(meta.started_at));
}

fn text<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    match item.get(k) {
        Some(AttributeValue::S(s)) => Some(s),
        _ => None,
    }
}

fn number(item: &Item, k: &str) -> Option<i64> {
    match item.get(k) {
        Some(AttributeValue::N(n)) => n.parse().ok(),
        _ => None,
    }
}

/// The position an index entry (or item) names, from its keys.
fn position(item: &Item, id: &JobId) -> Option<StepPosition> {
    let key = text(item, "job_id")?;
    let at = number(item, AT)?;
    let (waitpoint, rest) = match key.split_once('#')? {
        ("step", rest) => (false, rest),
        ("wait", rest) => (true, rest),
        _ => return None,
    };
    let name = rest.strip_prefix(id.as_str())?.strip_prefix('#')?;
    Some(StepPosition {
        at,
        waitpoint,
        name: name.to_owned(),
    })
}

/// The table key of the item at `p`.
fn item_key(id: &JobId, p: &StepPosition) -> Item {
    if p.waitpoint {
        waitpoint_key(id, &p.name)
    } else {
        step_key(id, &p.name)
    }
}

fn entry(item: &Item, position: &StepPosition) -> Result<Recorded, StoreError> {
    if position.waitpoint {
        return waitpoint_from(item).map(Recorded::Waitpoint);
    }
    let meta = number(item, STARTED).map(|started_at| StepMeta {
        kind: text(item, KIND).map_or(StepKind::Step, StepKind::parse),
        started_at,
        recorded_at: position.at,
    });
    Ok(Recorded::Step(RecordedStep {
        name: position.name.clone(),
        value: step_value(item)?,
        meta,
    }))
}

#[async_trait]
impl StepLister for DynamoStore {
    async fn steps(&self, id: &JobId, query: &StepQuery) -> Result<Vec<Listed>, StoreError> {
        let mut start = query.after.as_ref().map(|p| {
            let mut key = item_key(id, p);
            index(&mut key, id, p.at);
            key
        });
        let mut positions = Vec::new();
        // Keys only, so a page of 100 is far below a Query's 1 MB: one call, unless the backend stops
        // early anyway.
        loop {
            let want = query.limit - positions.len();
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX)
                .key_condition_expression("#k = :k")
                .expression_attribute_names("#k", OF)
                .expression_attribute_values(":k", AttributeValue::S(id.to_string()))
                .scan_index_forward(true)
                .limit(i32::try_from(want).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            positions.extend(
                out.items
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|i| position(i, id)),
            );
            start = out.last_evaluated_key;
            if start.is_none() || positions.len() >= query.limit {
                break;
            }
        }
        positions.truncate(query.limit);
        let mut items = HashMap::new();
        // One BatchGetItem takes 100 keys; a page asks for at most 101 (one more tells if there is a
        // next page).
        for chunk in positions.chunks(100) {
            let keys = chunk.iter().map(|p| item_key(id, p)).collect();
            for item in self.batch_get(keys, false).await? {
                if let Some(p) = position(&item, id) {
                    items.insert(p, item);
                }
            }
        }
        // In the index's order; an item gone since (its TTL) is left out.
        positions
            .into_iter()
            .filter_map(|p| items.remove(&p).map(|item| (p, item)))
            .map(|(p, item)| {
                Ok(Listed {
                    entry: entry(&item, &p)?,
                    position: p,
                })
            })
            .collect()
    }
}
