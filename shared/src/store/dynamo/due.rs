//! The due index on DynamoDB: `by_due`, a sparse GSI keyed by `due_shard` (`due#<n>`, n of
//! [`DUE_SHARDS`] from the job id) and `due_at` (epoch ms), keys only.
//!
//! An item is in it exactly while it carries both attributes: a `waiting` job's item (written by
//! `to_item` from [`crate::job::Job::due_at`], so every PutItem of the job puts it in or takes it out: no
//! extra request), and a completed waitpoint's item (set by the settling write from
//! [`crate::waitpoint::Waitpoint::repair_at`], removed by [`DueTimers::clear_due`]). The due task
//! Queries `due_at <= now` on each shard: it reads only what is due, never a parked job before its
//! time, and a parked job costs its storage and the index entry's (~100 bytes) until then.
//! The shards spread the index's writes (an index partition takes ~1,000 writes a second) and the
//! queries run side by side.
//!
//! The same index holds two more families of entries, under shard values the due task never reads
//! (see `watch.rs`, the sweep's): every job the sweep watches, under `sweep#<n>` and its check time
//! ([`crate::job::Job::watch`]), and every ledger page, under `pages#<kind>#<n>` and 0.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use futures::future::try_join_all;

use super::list::shard_of;
use super::{DynamoStore, Item, num, unavailable, waitpoint_key};
use crate::job::{JobId, Millis, Watch};
use crate::store::{Due, DueTimers, StoreError};

/// How many partitions the due index is spread over. Only ever raise it (an item's shard is stored
/// with it; the due task reads shards `0..DUE_SHARDS`).
pub const DUE_SHARDS: u32 = 4;

/// How many partitions the sweep's check times are spread over: every job's insert and end write
/// its entry, so 32 partitions of ~1,000 writes a second take ~16,000 jobs a second. Only ever
/// raise it (the sweep reads shards `0..SWEEP_SHARDS`).
pub const SWEEP_SHARDS: u32 = 32;

/// The index (`JobsTable` in template.yaml) and its key.
const INDEX: &str = "by_due";
pub(super) const SHARD_ATTRIBUTE: &str = "due_shard";
pub(super) const AT_ATTRIBUTE: &str = "due_at";

/// The due index's partition for job `id`'s items (the job's and its waitpoints').
pub(super) fn due_shard(id: &JobId) -> String {
    format!("due#{}", shard_of(id, DUE_SHARDS))
}

/// The sweep's partition for job `id`'s entry.
pub(super) fn sweep_shard(id: &JobId) -> String {
    format!("sweep#{}", shard_of(id, SWEEP_SHARDS))
}

/// Adds the due index's key to `item`, job `id`'s, watched as `watch` says.
pub(super) fn mark(item: &mut Item, id: &JobId, watch: Watch) {
    let (shard, at) = match watch {
        Watch::Timer(at) => (due_shard(id), at),
        Watch::Sweep(at) => (sweep_shard(id), at),
    };
    item.insert(SHARD_ATTRIBUTE.into(), AttributeValue::S(shard));
    item.insert(AT_ATTRIBUTE.into(), num(at));
}

/// What an index key names: a job (`<id>`) or one of its waitpoints (`wait#<id>#<name>`).
fn parse_key(key: &str) -> Option<Result<JobId, (JobId, String)>> {
    match key.strip_prefix("wait#") {
        Some(rest) => {
            let (id, name) = rest.split_once('#')?;
            Some(Err((JobId::parse(id).ok()?, name.to_owned())))
        }
        None => JobId::parse(key).ok().map(Ok),
    }
}

impl DynamoStore {
    /// Up to `limit` keys of the index's partition `shard` due at `now`, earliest first.
    pub(super) async fn due_keys(
        &self,
        shard: &str,
        now: Millis,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let mut keys = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(INDEX)
                .key_condition_expression("#k = :k AND #at <= :now")
                .expression_attribute_names("#k", SHARD_ATTRIBUTE)
                .expression_attribute_names("#at", AT_ATTRIBUTE)
                .expression_attribute_values(":k", AttributeValue::S(shard.to_owned()))
                .expression_attribute_values(":now", num(now))
                .limit(i32::try_from(limit - keys.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            keys.extend(out.items.unwrap_or_default());
            start = out.last_evaluated_key;
            if start.is_none() || keys.len() >= limit {
                return Ok(keys);
            }
        }
    }
}

#[async_trait]
impl DueTimers for DynamoStore {
    /// A Query per shard (side by side), then the due jobs in BatchGetItems (strongly consistent:
    /// the index is not, and a job resumed a moment ago must not be fired again).
    async fn due(&self, now: Millis, limit: usize) -> Result<Vec<Due>, StoreError> {
        let per_shard = limit.div_ceil(DUE_SHARDS as usize).max(1);
        let shards = (0..DUE_SHARDS)
            .map(|s| format!("due#{s}"))
            .collect::<Vec<_>>();
        let shards = try_join_all(shards.iter().map(|s| self.due_keys(s, now, per_shard))).await?;
        let mut jobs = Vec::new();
        let mut due = Vec::new();
        for item in shards.into_iter().flatten() {
            let Some(AttributeValue::S(key)) = item.get("job_id") else {
                continue;
            };
            match parse_key(key) {
                Some(Ok(id)) => jobs.push(id),
                Some(Err((job_id, waitpoint))) => due.push(Due::Resume { job_id, waitpoint }),
                None => {
                    tracing::error!(key = %key, "an item of the due index with a key no job names")
                }
            }
        }
        let mut found = self.get_many(&jobs).await?;
        // In index order (earliest first within a shard); a job gone since is skipped.
        due.extend(
            jobs.iter()
                .filter_map(|id| found.remove(id))
                .map(|job| Due::Timer(Box::new(job))),
        );
        Ok(due)
    }

    async fn clear_due(&self, id: &JobId, name: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(waitpoint_key(id, name)))
            .update_expression("REMOVE #k, #at")
            // An UpdateItem of a missing key would create the item.
            .condition_expression("attribute_exists(job_id)")
            .expression_attribute_names("#k", SHARD_ATTRIBUTE)
            .expression_attribute_names("#at", AT_ATTRIBUTE)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_name_jobs_and_waitpoints() {
        let id = JobId::generate(1_700_000_000_000);
        assert_eq!(parse_key(id.as_str()), Some(Ok(id.clone())));
        assert_eq!(
            parse_key(&format!("wait#{id}#a#b")),
            Some(Err((id.clone(), "a#b".to_owned())))
        );
        assert_eq!(parse_key("user#abc#1"), None);
        assert!(due_shard(&id).starts_with("due#"));
        assert!(sweep_shard(&id).starts_with("sweep#"));
    }
}
