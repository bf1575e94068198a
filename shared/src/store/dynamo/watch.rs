//! The sweep's reads on DynamoDB (see [`crate::sweep`]): what it must see, never the whole table.
//!
//! - **Jobs whose check time has come**: every job the sweep watches ([`Job::watch`]) has an entry
//!   `sweep#<n>` / its check time in the `by_due` index, written by its own PutItems (`to_item`): in
//!   when it is created, out when it ends, unchanged by every write in between (an index entry whose
//!   key does not change costs nothing). The sweep Queries each shard up to now, then reads those
//!   jobs (BatchGetItem, strongly consistent): a finished job is never read again, a running one
//!   once per [`crate::job::SWEEP_AFTER`] at most.
//! - **Ledger pages** (the in-flight cap's `user#…`, limits' `lim#…`): every add to a page sets its
//!   entry `pages#<kind>#<n>` / 0 in the same index, the same values every time, so only the add
//!   that creates the page writes to the (keys-only) index. The sweep Queries those shards and reads
//!   the pages (BatchGetItem, strongly consistent): one walk for the orphaned slots and the lapsed
//!   holds alike.
//! - **Records written before either existed**: one segment of a parallel scan per run
//!   ([`JobScanner::unwatched`]), each item in the same segment every time: jobs in flight (or with
//!   a pending webhook event) that carry no check time are returned to the sweep, which gives them
//!   one; ledger pages with no entry get theirs here. See [`crate::sweep::LEGACY_SLICES`].

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Update};
use futures::future::try_join_all;
use sha2::Digest;

use super::due::{AT_ATTRIBUTE, SHARD_ATTRIBUTE, SWEEP_SHARDS};
use super::{DynamoStore, Item, from_item, num, status, unavailable};
use crate::job::{Job, JobId, JobStatus, Millis};
use crate::slots::{HOLD_PREFIX, OWNER_PREFIX};
use crate::store::{JobScanner, StoreError};

/// How many partitions the pages' entries are spread over (per kind). Only ever raise it.
const PAGE_SHARDS: u32 = 4;

/// The index partition of ledger page item `key`: its kind (`user`, `lim`) and a hash of the key.
fn page_shard(key: &str) -> String {
    let kind = key.split('#').next().unwrap_or_default();
    let n = u32::from(sha2::Sha256::digest(key.as_bytes())[0]) % PAGE_SHARDS;
    format!("pages#{kind}#{n}")
}

/// What an add to a page sets besides its members: the page's entry in the index (see the module's
/// doc). With [`listing`]'s names and values.
pub(super) const LIST_PAGE: &str = "SET #ps = :ps, #pa = :pa";

/// The names and values of [`LIST_PAGE`] for page item `key`.
pub(super) fn listing(key: &str) -> (HashMap<String, String>, HashMap<String, AttributeValue>) {
    (
        HashMap::from([
            ("#ps".to_owned(), SHARD_ATTRIBUTE.to_owned()),
            ("#pa".to_owned(), AT_ATTRIBUTE.to_owned()),
        ]),
        HashMap::from([
            (":ps".to_owned(), AttributeValue::S(page_shard(key))),
            (":pa".to_owned(), num(0)),
        ]),
    )
}

fn key_of(item: &Item) -> Option<&str> {
    match item.get("job_id") {
        Some(AttributeValue::S(k)) => Some(k),
        _ => None,
    }
}

impl DynamoStore {
    /// Every listed page of the ledgers whose keys start with `prefix` ([`OWNER_PREFIX`],
    /// [`HOLD_PREFIX`]), strongly consistent: a Query per shard, then BatchGetItems.
    pub(super) async fn listed_pages(&self, prefix: &str) -> Result<Vec<Item>, StoreError> {
        let kind = prefix.trim_end_matches('#');
        let shards: Vec<String> = (0..PAGE_SHARDS)
            .map(|n| format!("pages#{kind}#{n}"))
            .collect();
        let keys = try_join_all(shards.iter().map(|s| self.due_keys(s, 0, usize::MAX))).await?;
        let keys: Vec<Item> = keys
            .iter()
            .flatten()
            .filter_map(|k| Some(Self::page_key(key_of(k)?)))
            .collect();
        let pages = try_join_all(keys.chunks(100).map(|c| self.batch_get(c.to_vec(), true))).await?;
        Ok(pages.into_iter().flatten().collect())
    }

    fn page_key(key: &str) -> Item {
        HashMap::from([("job_id".to_owned(), AttributeValue::S(key.to_owned()))])
    }

    /// Gives page item `key` (written before pages were listed) its entry in the index.
    async fn list_page(&self, key: &str) -> Result<(), StoreError> {
        let (names, values) = listing(key);
        let list = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::page_key(key)))
            .update_expression(LIST_PAGE)
            // An UpdateItem of a missing key would create the item.
            .condition_expression("attribute_exists(job_id)")
            .set_expression_attribute_names(Some(names))
            .set_expression_attribute_values(Some(values))
            .build()
            .expect("table, key and expression are set");
        self.update(list).await.map(drop)
    }
}

#[async_trait]
impl JobScanner for DynamoStore {
    /// A Query per shard (side by side), then the jobs in BatchGetItems (strongly consistent: the
    /// index is not, and the sweep decides on what it reads).
    async fn to_check(&self, until: Millis, limit: usize) -> Result<Vec<Job>, StoreError> {
        let per_shard = limit.div_ceil(SWEEP_SHARDS as usize).max(1);
        let shards: Vec<String> = (0..SWEEP_SHARDS).map(|s| format!("sweep#{s}")).collect();
        let keys =
            try_join_all(shards.iter().map(|s| self.due_keys(s, until, per_shard))).await?;
        let ids: Vec<JobId> = keys
            .iter()
            .flatten()
            .filter_map(|k| JobId::parse(key_of(k)?).ok())
            .collect();
        let mut found = self.get_many(&ids).await?;
        // In index order (earliest first within a shard); a job gone since is skipped.
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn unwatched(
        &self,
        slice: u32,
        slices: u32,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let mut jobs = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .segment(slice as i32)
                .total_segments(slices as i32)
                // Unlisted pages; jobs in flight, or with a pending event, that have no entry (a
                // job that has one is watched; a finished one whose event is settled needs none).
                .filter_expression(
                    "attribute_not_exists(#k) AND ((attribute_exists(slots) AND \
                     (begins_with(job_id, :user) OR begins_with(job_id, :lim))) OR \
                     #s IN (:queued, :running, :retrying, :waiting) OR webhook.#s = :pending)",
                )
                .expression_attribute_names("#k", SHARD_ATTRIBUTE)
                .expression_attribute_names("#s", "status")
                .expression_attribute_values(":user", AttributeValue::S(OWNER_PREFIX.into()))
                .expression_attribute_values(":lim", AttributeValue::S(HOLD_PREFIX.into()))
                .expression_attribute_values(":queued", status(JobStatus::Queued))
                .expression_attribute_values(":running", status(JobStatus::Running))
                .expression_attribute_values(":retrying", status(JobStatus::Retrying))
                .expression_attribute_values(":waiting", status(JobStatus::Waiting))
                .expression_attribute_values(":pending", AttributeValue::S("pending".into()))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(unavailable)?;
            for item in out.items.unwrap_or_default() {
                match key_of(&item) {
                    Some(k) if k.starts_with(OWNER_PREFIX) || k.starts_with(HOLD_PREFIX) => {
                        self.list_page(k).await?;
                    }
                    _ if jobs.len() < limit => jobs.push(from_item(item)?),
                    _ => {}
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() || jobs.len() >= limit {
                return Ok(jobs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::Ledger;

    #[test]
    fn pages_are_listed_by_kind() {
        let owner = Ledger::owner("alice").key(Some(3));
        let limit = Ledger::limit("kind=a").key(Some(0));
        assert!(page_shard(&owner).starts_with("pages#user#"));
        assert!(page_shard(&limit).starts_with("pages#lim#"));
        assert_eq!(page_shard(&owner), page_shard(&owner));
    }
}
