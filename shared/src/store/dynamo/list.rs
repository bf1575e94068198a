//! `GET /jobs` on DynamoDB: one owner's jobs, newest first, from the `by_user_shard` index.
//!
//! The index is keyed by `user_shard` = `<owner>#<n>`, `n` one of [`USER_SHARDS`] taken from the job
//! id, not by the owner alone: an index partition takes about 1,000 writes a second, and an index that
//! cannot keep up throttles the table's writes, so one owner keyed alone could insert no faster than
//! that. A list reads every shard (a Query each, newest first) and merges them: the order
//! (`submitted_at`, then job id, both descending) is the index's own within a shard, so a cursor's
//! position is a valid start in every shard and pages stay stable. The index holds keys only: a job's
//! state changes never write to it, and the jobs are read with one BatchGetItem per page.

use std::collections::VecDeque;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{DynamoStore, Item, num, unavailable};
use crate::job::{Job, JobId, Millis};
use crate::store::{JobLister, ListQuery, StoreError};

/// How many index partitions one owner's jobs are spread over: about 1,000 inserts a second each, so
/// 8,000 for one owner. Only ever raise it (a job's shard is stored with it; lists read shards
/// `0..USER_SHARDS`).
pub const USER_SHARDS: u32 = 8;

/// The index (`JobsTable` in template.yaml) and its partition key.
const INDEX: &str = "by_user_shard";
pub(super) const SHARD_ATTRIBUTE: &str = "user_shard";

/// A job's index partition: its owner and a shard from its id's random bits (a hash, for a keyed or
/// pathway job's id). `#` splits at the last one, so no two owners' shards meet.
pub(super) fn user_shard(user: &str, id: &JobId) -> String {
    format!("{user}#{}", shard_of(id, USER_SHARDS))
}

/// One of `shards` for job `id`, from its id's random bits (a hash, for a keyed or pathway job's id).
pub(super) fn shard_of(id: &JobId, shards: u32) -> u128 {
    let bits = ulid::Ulid::from_string(id.as_str()).map_or(0, |u| u.0);
    bits % u128::from(shards)
}

/// One shard's place in the merge: keys read and not yet taken, and where its next page starts.
struct Shard {
    key: String,
    read: VecDeque<(Millis, JobId)>,
    next: Option<Item>,
    done: bool,
}

impl DynamoStore {
    /// Reads the next page of `shard`'s keys, `limit` at most.
    async fn read_shard(&self, shard: &mut Shard, limit: usize) -> Result<(), StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(INDEX)
            .key_condition_expression("#k = :k")
            .expression_attribute_names("#k", SHARD_ATTRIBUTE)
            .expression_attribute_values(":k", AttributeValue::S(shard.key.clone()))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .set_exclusive_start_key(shard.next.take())
            .send()
            .await
            .map_err(unavailable)?;
        for item in out.items.unwrap_or_default() {
            let (Some(AttributeValue::S(id)), Some(AttributeValue::N(t))) =
                (item.get("job_id"), item.get("submitted_at"))
            else {
                continue;
            };
            if let (Ok(id), Ok(t)) = (JobId::parse(id), t.parse()) {
                shard.read.push_back((t, id));
            }
        }
        shard.next = out.last_evaluated_key;
        shard.done = shard.next.is_none();
        Ok(())
    }
}

#[async_trait]
impl JobLister for DynamoStore {
    /// Keys merged from every shard, newest first, then the jobs themselves in one BatchGetItem. With
    /// a status or kind filter, keys are read until enough jobs match (what a FilterExpression would
    /// read too): the index holds keys only, so neither can be a key condition.
    async fn list(&self, user: &str, query: &ListQuery) -> Result<Vec<Job>, StoreError> {
        let mut shards: Vec<Shard> = (0..USER_SHARDS)
            .map(|n| {
                let key = format!("{user}#{n}");
                // The cursor's position starts every shard: a position, not an item of the shard.
                let next = query.after.as_ref().map(|(t, id)| {
                    let mut start = Self::key(id);
                    start.insert(SHARD_ATTRIBUTE.into(), AttributeValue::S(key.clone()));
                    start.insert("submitted_at".into(), num(t));
                    start
                });
                Shard {
                    key,
                    read: VecDeque::new(),
                    next,
                    done: false,
                }
            })
            .collect();
        let mut found = Vec::new();
        loop {
            let wanted = query.limit - found.len();
            let page = if query.filtered() {
                wanted.max(100)
            } else {
                wanted
            };
            // Take up to `page` keys in order. A shard with nothing read and more to read is read
            // first: its next key may be the newest of all.
            let mut ids = Vec::new();
            while ids.len() < page {
                let reads = shards
                    .iter_mut()
                    .filter(|s| s.read.is_empty() && !s.done)
                    .map(|s| self.read_shard(s, page));
                futures::future::try_join_all(reads).await?;
                let newest = shards
                    .iter_mut()
                    .filter(|s| !s.read.is_empty())
                    .max_by(|a, b| a.read[0].cmp(&b.read[0]));
                match newest {
                    Some(s) => ids.push(s.read.pop_front().expect("not empty").1),
                    None => break,
                }
            }
            if ids.is_empty() {
                return Ok(found);
            }
            let mut jobs = self.get_many(&ids).await?;
            for id in &ids {
                // A key whose job is gone (TTL) is skipped.
                if let Some(job) = jobs.remove(id)
                    && query.matches(&job)
                {
                    found.push(job);
                    if found.len() >= query.limit {
                        return Ok(found);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_owner_spreads_over_every_shard_and_owners_never_share_one() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..400 {
            seen.insert(user_shard("alice", &JobId::generate(1_700_000_000_000 + i)));
        }
        assert_eq!(seen.len(), USER_SHARDS as usize);
        assert!(
            seen.iter()
                .all(|s| s.rsplit_once('#').unwrap().0 == "alice")
        );
    }
}
