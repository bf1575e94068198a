//! The sweep's reads on DynamoDB (see [`crate::sweep`]): what it must see, never the whole table.
//!
//! - **Jobs whose check time has come**: every job the sweep watches ([`Job::watch`]) has an entry
//!   `sweep#<n>` / its check time in the `by_due` index, written by its own PutItems (`to_item`): in
//!   when it is created, out when it ends, unchanged by every write in between (an index entry whose
//!   key does not change costs nothing). The sweep Queries each shard up to now, then reads those
//!   jobs (BatchGetItem, strongly consistent): a finished job is never read again, a running one
//!   once per [`crate::job::SWEEP_AFTER`] at most.
//! - **The in-flight cap's ledger pages** (`user#…`): every add to one sets its entry
//!   `pages#user#<n>` / 0 in the same index, the same values every time, so only the add that
//!   creates the page writes to the (keys-only) index; the entry's 29 bytes keep a full page within
//!   one write unit. The sweep Queries those shards and reads the pages (BatchGetItem).
//! - **One slice of the table per run** ([`JobScanner::slice`], a parallel scan's segment, each item
//!   in the same segment every time; see [`crate::sweep::LEGACY_SLICES`]): records written before
//!   check times or page entries existed (jobs in flight, or with a pending webhook event, that
//!   carry no check time are returned to the sweep, which gives them one; pages get their entry),
//!   and the limits' pages (`lim#…`), pruned of lapsed holds. Those are not listed: a full page of
//!   holds fills its write unit to the last bytes (see `limits/holds.rs`), and a lapsed hold
//!   already counts for nothing (a writer that finds a page full removes it), so once a day is enough.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Update};
use futures::future::try_join_all;
use sha2::Digest;

use super::due::{AT_ATTRIBUTE, SHARD_ATTRIBUTE, SWEEP_SHARDS};
use super::{DynamoStore, Item, from_item, num, status, unavailable};
use crate::job::{Job, JobId, JobStatus, Millis};
use crate::limits::Hold;
use crate::slots::{HOLD_PREFIX, OWNER_PREFIX};
use crate::store::{JobScanner, Slice, StoreError};

/// How many partitions the pages' entries are spread over. Only ever raise it.
const PAGE_SHARDS: u32 = 4;

/// The index partition of in-flight ledger page item `key`: a hash of the key.
fn page_shard(key: &str) -> String {
    let n = u32::from(sha2::Sha256::digest(key.as_bytes())[0]) % PAGE_SHARDS;
    format!("pages#user#{n}")
}

/// What an add of members `:m` to page item `key` writes: on an in-flight ledger's page, its entry
/// in the index too (see the module's doc). The update expression, its names and its values.
pub(super) fn adding(
    key: &str,
) -> (
    &'static str,
    Option<HashMap<String, String>>,
    HashMap<String, AttributeValue>,
) {
    if !key.starts_with(OWNER_PREFIX) {
        // DynamoDB refuses an empty map of names.
        return ("ADD slots :m", None, HashMap::new());
    }
    (
        "ADD slots :m SET #ps = :ps, #pa = :pa",
        Some(HashMap::from([
            ("#ps".to_owned(), SHARD_ATTRIBUTE.to_owned()),
            ("#pa".to_owned(), AT_ATTRIBUTE.to_owned()),
        ])),
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
    /// Every listed page of the in-flight ledgers: a Query per shard, then BatchGetItems, eventually
    /// consistent (half the price, and enough: the sweep removes only members older than
    /// [`crate::sweep::SLOT_GRACE`] that no job holds, reading each job strongly consistent; a stale
    /// page can only show a member removed since, and removing it again is a no-op; a member is
    /// never added twice, a job's next one names a later second).
    pub(super) async fn listed_pages(&self) -> Result<Vec<Item>, StoreError> {
        let shards: Vec<String> = (0..PAGE_SHARDS)
            .map(|n| format!("pages#user#{n}"))
            .collect();
        let keys = try_join_all(shards.iter().map(|s| self.due_keys(s, 0, usize::MAX))).await?;
        let keys: Vec<Item> = keys
            .iter()
            .flatten()
            .filter_map(|k| Some(Self::page_key(key_of(k)?)))
            .collect();
        let pages =
            try_join_all(keys.chunks(100).map(|c| self.batch_get(c.to_vec(), false))).await?;
        Ok(pages.into_iter().flatten().collect())
    }

    fn page_key(key: &str) -> Item {
        HashMap::from([("job_id".to_owned(), AttributeValue::S(key.to_owned()))])
    }

    /// Gives in-flight ledger page item `key` (written before pages were listed) its entry in the
    /// index.
    async fn list_page(&self, key: &str) -> Result<(), StoreError> {
        let (_, names, values) = adding(key);
        let list = Update::builder()
            .table_name(&self.table)
            .set_key(Some(Self::page_key(key)))
            .update_expression("SET #ps = :ps, #pa = :pa")
            // An UpdateItem of a missing key would create the item.
            .condition_expression("attribute_exists(job_id)")
            .set_expression_attribute_names(names)
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
        let keys = try_join_all(shards.iter().map(|s| self.due_keys(s, until, per_shard))).await?;
        let ids: Vec<JobId> = keys
            .iter()
            .flatten()
            .filter_map(|k| JobId::parse(key_of(k)?).ok())
            .collect();
        let mut found = self.get_many(&ids).await?;
        // In index order (earliest first within a shard); a job gone since is skipped.
        Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
    }

    async fn slice(
        &self,
        slice: u32,
        slices: u32,
        now: Millis,
        limit: usize,
    ) -> Result<Slice, StoreError> {
        let mut found = Slice::default();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .segment(slice as i32)
                .total_segments(slices as i32)
                // Unlisted in-flight pages; limits' pages; jobs in flight, or with a pending event,
                // that have no entry (a job that has one is watched; a finished one whose event is
                // settled needs none).
                .filter_expression(
                    "(attribute_exists(slots) AND (begins_with(job_id, :lim) OR \
                     (begins_with(job_id, :user) AND attribute_not_exists(#k)))) OR \
                     (attribute_not_exists(#k) AND \
                     (#s IN (:queued, :running, :retrying, :waiting) OR webhook.#s = :pending))",
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
                match (key_of(&item), item.get("slots")) {
                    (Some(k), Some(AttributeValue::Ss(members))) if k.starts_with(HOLD_PREFIX) => {
                        let lapsed = Hold::lapsed_of(members, now);
                        if !lapsed.is_empty() {
                            found.holds_lapsed += lapsed.len();
                            self.remove_members(k.to_owned(), lapsed).await?;
                        }
                    }
                    (Some(k), _) if k.starts_with(OWNER_PREFIX) => self.list_page(k).await?,
                    _ if found.jobs.len() < limit => found.jobs.push(from_item(item)?),
                    _ => {}
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Slot;
    use crate::slots::{Ledger, PAGE_CAPACITY};

    #[test]
    fn only_in_flight_pages_are_listed() {
        let owner = Ledger::owner("alice").key(Some(3));
        assert!(adding(&owner).0.contains("SET"));
        assert!(page_shard(&owner).starts_with("pages#user#"));
        let limit = Ledger::limit("kind=a").key(Some(0));
        assert_eq!(adding(&limit).0, "ADD slots :m");
    }

    /// DynamoDB's item size (as in `slots.rs`), with the page's entry: a full page of the largest
    /// cap, listed, is still billed one write unit.
    #[test]
    fn a_full_listed_page_is_billed_one_write_unit() {
        let key = Ledger::owner(&"x".repeat(2048)).key(Some(416));
        let member = Slot {
            job_id: JobId::generate(1_700_000_000_000),
            since: Some(4_102_444_800),
            page: Some(416),
        }
        .to_string();
        let entry = SHARD_ATTRIBUTE.len() + page_shard(&key).len() + AT_ATTRIBUTE.len() + 2;
        let size = "job_id".len()
            + key.len()
            + "slots".len()
            + PAGE_CAPACITY as usize * member.len()
            + entry;
        assert!(size <= 1024, "{size} bytes");
    }
}
