//! The in-flight ledgers' pages on DynamoDB (see [`crate::slots`] for the layout and why): the capped
//! add that picks a page, the uncapped adds of redrives and pathway children, the read of an owner's
//! page loads, the count, the sweep's walk of the pages, and removals (through the group commit of
//! `release.rs`). Every add also lists its page for the sweep (see `watch.rs`).

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure, Update,
};
use std::collections::HashMap;

use super::watch::adding;
use super::{DynamoStore, Item, num};
use crate::job::{Job, JobId, Millis, Slot};
use crate::limits::Hold;
use crate::slots::{Layout, Ledger, MAX_ADDS, PageSlots};
use crate::store::{SlotLedger, StoreError};

/// The key of one page of a ledger (`None`: the page-less item of ledgers written before pages).
pub(super) fn page_key(ledger: &Ledger, page: Option<u32>) -> Item {
    HashMap::from([("job_id".to_owned(), AttributeValue::S(ledger.key(page)))])
}

pub(super) fn members(slots: &[Slot]) -> AttributeValue {
    AttributeValue::Ss(slots.iter().map(ToString::to_string).collect())
}

/// The members an item holds (0 for none).
fn load(item: Option<&Item>) -> u32 {
    match item.and_then(|i| i.get("slots")) {
        Some(AttributeValue::Ss(m)) => m.len() as u32,
        _ => 0,
    }
}

/// What a capped add found.
enum Added {
    /// The member is on the page, which now holds this many.
    Yes(u32),
    /// The page was full (it holds this many, these members when the store said): nothing written.
    Full(u32, Option<Vec<String>>),
}

impl DynamoStore {
    /// Adds `job`'s member to a page of its owner's ledger under `cap` (see [`crate::slots`] for the
    /// choice); the page, or `None` when the owner is at the cap. At most [`MAX_ADDS`] refused writes
    /// and one read of the pages.
    pub(super) async fn take_slot(&self, job: &Job, cap: u32) -> Result<Option<u32>, StoreError> {
        let member = |page: u32| {
            let mut slot = job.slot();
            slot.page = Some(page);
            slot.to_string()
        };
        let taken = self
            .take_page(
                &Ledger::owner(&job.user_id),
                Layout::new(cap),
                &job.job_id,
                job.slot_page,
                &member,
                None,
            )
            .await?;
        if taken.is_none() {
            tracing::debug!(job_id = %job.job_id, "owner at the in-flight cap");
        }
        Ok(taken)
    }

    /// Adds `member(page)` to a page of `ledger` under `layout` (see [`crate::slots`] for the
    /// choice; `first`: the page a retried add tried before); the page, or `None` when every page is
    /// full. With `lapsed_at`, members that are holds lapsed at that time ([`Hold::lapsed`]) do not
    /// count: a full page is cleared of them and tried once more.
    pub(super) async fn take_page(
        &self,
        ledger: &Ledger,
        layout: Layout,
        id: &JobId,
        first: Option<u32>,
        member: &(dyn Fn(u32) -> String + Send + Sync),
        lapsed_at: Option<Millis>,
    ) -> Result<Option<u32>, StoreError> {
        let mut view = self.views.loads(ledger, layout);
        let known = |view: &Option<Vec<u32>>, p: u32| view.as_ref().map(|v| v[p as usize]);
        let (mut tried, mut read, mut pruned) = (Vec::new(), false, Vec::new());
        // A retried insert goes where its first try went.
        let mut next = match first {
            Some(p) if p < layout.pages() => Some(p),
            _ => layout.pick(id, |p| known(&view, p), &[]),
        };
        while let Some(page) = next {
            match self
                .add_member(ledger, page, member(page), layout.capacity(page))
                .await?
            {
                Added::Yes(n) => {
                    self.views.saw(ledger, layout, page, n);
                    return Ok(Some(page));
                }
                Added::Full(n, members) => {
                    if let Some(now) = lapsed_at
                        && !pruned.contains(&page)
                    {
                        pruned.push(page);
                        if self.prune_page(ledger, page, members, now).await? > 0 {
                            continue; // room made: the same page again
                        }
                    }
                    self.views.saw(ledger, layout, page, n);
                    if let Some(v) = view.as_mut() {
                        v[page as usize] = n;
                    }
                    tried.push(page);
                }
            }
            if tried.len() >= MAX_ADDS || tried.len() as u32 >= layout.pages() {
                break;
            }
            if !read {
                // What this instance knew was wrong: read every page once, then pick again.
                let loads = self.read_loads(ledger, layout).await?;
                self.views.read(ledger, layout, loads.clone());
                (view, read) = (Some(loads), true);
            }
            next = layout.pick(id, |p| known(&view, p), &tried);
        }
        Ok(None)
    }

    /// Removes the holds of `page` lapsed at `now` (`members`: as a refused write returned them;
    /// `None`: read here); how many.
    async fn prune_page(
        &self,
        ledger: &Ledger,
        page: u32,
        members: Option<Vec<String>>,
        now: Millis,
    ) -> Result<usize, StoreError> {
        let members = match members {
            Some(m) => m,
            None => {
                let items = self.read_pages(ledger, &[Some(page)], true).await?;
                match items
                    .get(&ledger.key(Some(page)))
                    .and_then(|i| i.get("slots"))
                {
                    Some(AttributeValue::Ss(m)) => m.clone(),
                    _ => Vec::new(),
                }
            }
        };
        let lapsed = Hold::lapsed_of(&members, now);
        if !lapsed.is_empty() {
            self.remove_members(ledger.key(Some(page)), lapsed.clone())
                .await?;
            self.views.moved(ledger, page, -(lapsed.len() as i32));
        }
        Ok(lapsed.len())
    }

    /// Adds `members` to the page item `key` without a cap (idempotent), listing the page.
    pub(super) async fn add_members(
        &self,
        key: String,
        members: Vec<String>,
    ) -> Result<(), StoreError> {
        let (expression, names, values) = adding(&key);
        let add = Update::builder()
            .table_name(&self.table)
            .set_key(Some(HashMap::from([(
                "job_id".to_owned(),
                AttributeValue::S(key),
            )])))
            .update_expression(expression)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(Some(values))
            .expression_attribute_values(":m", AttributeValue::Ss(members))
            .build()
            .expect("table, key and expression are set");
        self.update(add).await.map(drop)
    }

    /// Removes `members` from the page item `key` (idempotent: removing a member not there is a no-op).
    pub(super) async fn remove_members(
        &self,
        key: String,
        members: Vec<String>,
    ) -> Result<(), StoreError> {
        let remove = Update::builder()
            .table_name(&self.table)
            .set_key(Some(HashMap::from([(
                "job_id".to_owned(),
                AttributeValue::S(key),
            )])))
            .update_expression("DELETE slots :m")
            .expression_attribute_values(":m", AttributeValue::Ss(members))
            .build()
            .expect("table, key and expression are set");
        self.update(remove).await.map(drop)
    }

    /// One conditional add of `member` to `page`, if it holds fewer than `capacity` members or
    /// this one already (the SDK's retry of an add that landed must not find the page full of itself).
    async fn add_member(
        &self,
        ledger: &Ledger,
        page: u32,
        member: String,
        capacity: u32,
    ) -> Result<Added, StoreError> {
        let (expression, names, values) = adding(&ledger.key(Some(page)));
        let res = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(page_key(ledger, Some(page))))
            .update_expression(expression)
            .set_expression_attribute_names(names)
            .set_expression_attribute_values(Some(values))
            .condition_expression(
                "attribute_not_exists(slots) OR size(slots) < :cap OR contains(slots, :mine)",
            )
            .expression_attribute_values(":m", AttributeValue::Ss(vec![member.clone()]))
            .expression_attribute_values(":cap", num(capacity))
            .expression_attribute_values(":mine", AttributeValue::S(member))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Added::Yes(load(out.attributes.as_ref()))),
            Err(e) => match e.into_service_error() {
                // Some emulators do not return the old item: then it is taken as full.
                UpdateItemError::ConditionalCheckFailedException(c) => Ok(Added::Full(
                    c.item.as_ref().map_or(capacity, |i| load(Some(i))),
                    c.item.and_then(|mut i| match i.remove("slots") {
                        Some(AttributeValue::Ss(m)) => Some(m),
                        _ => None,
                    }),
                )),
                other => Err(StoreError::Unavailable {
                    source: other.into(),
                }),
            },
        }
    }

    /// Adds members without a cap (a redrive's, pathway children's: they re-take slots as they always
    /// have), one UpdateItem per page.
    pub(super) async fn add_uncapped(
        &self,
        ledger: &Ledger,
        slots: &[Slot],
    ) -> Result<(), StoreError> {
        for (page, slots) in by_page(slots) {
            let members = slots.iter().map(ToString::to_string).collect();
            self.add_members(ledger.key(page), members).await?;
            if let Some(p) = page {
                self.views.moved(ledger, p, slots.len() as i32);
            }
        }
        Ok(())
    }

    /// Every page's load (BatchGetItem, eventually consistent: a stale load costs a refused write at
    /// worst, never a wrong count).
    pub(super) async fn read_loads(
        &self,
        ledger: &Ledger,
        layout: Layout,
    ) -> Result<Vec<u32>, StoreError> {
        let pages: Vec<Option<u32>> = (0..layout.pages()).map(Some).collect();
        let items = self.read_pages(ledger, &pages, false).await?;
        Ok(pages
            .iter()
            .map(|p| load(items.get(&ledger.key(*p))))
            .collect())
    }

    /// The items of `pages` by key (missing ones are absent), 100 per request, all at once.
    pub(super) async fn read_pages(
        &self,
        ledger: &Ledger,
        pages: &[Option<u32>],
        consistent: bool,
    ) -> Result<HashMap<String, Item>, StoreError> {
        let chunks = pages.chunks(100).map(|chunk| {
            let keys = chunk.iter().map(|p| page_key(ledger, *p)).collect();
            self.batch_get(keys, consistent)
        });
        let mut by_key = HashMap::new();
        for items in futures::future::try_join_all(chunks).await? {
            for item in items {
                if let Some(AttributeValue::S(k)) = item.get("job_id") {
                    by_key.insert(k.clone(), item);
                }
            }
        }
        Ok(by_key)
    }
}

/// Slots grouped by the page they name.
fn by_page(slots: &[Slot]) -> BTreeMap<Option<u32>, Vec<Slot>> {
    let mut pages: BTreeMap<Option<u32>, Vec<Slot>> = BTreeMap::new();
    for s in slots {
        pages.entry(s.page).or_default().push(s.clone());
    }
    pages
}

#[async_trait]
impl SlotLedger for DynamoStore {
    async fn in_flight(&self, user: &str, cap: u32) -> Result<i64, StoreError> {
        let ledger = Ledger::owner(user);
        let mut pages: Vec<Option<u32>> = (0..Layout::new(cap).pages()).map(Some).collect();
        pages.push(None);
        let items = self.read_pages(&ledger, &pages, true).await?;
        Ok(items.values().map(|i| i64::from(load(Some(i)))).sum())
    }

    async fn all_slots(&self) -> Result<Vec<PageSlots>, StoreError> {
        let pages = self.listed_pages().await?;
        Ok(pages
            .iter()
            .filter_map(|item| {
                let (Some(AttributeValue::S(key)), Some(AttributeValue::Ss(members))) =
                    (item.get("job_id"), item.get("slots"))
                else {
                    return None;
                };
                let (ledger, page) = Ledger::parse_key(key)?;
                Some(PageSlots {
                    ledger,
                    page,
                    slots: members
                        .iter()
                        .filter_map(|m| Slot::parse(m, page))
                        .collect(),
                })
            })
            .collect())
    }

    async fn release_slots(&self, ledger: &Ledger, slots: &[Slot]) -> Result<(), StoreError> {
        let removals = by_page(slots).into_iter().map(|(page, slots)| async move {
            self.releases.release(ledger.key(page), &slots).await?;
            if let Some(p) = page {
                self.views.moved(ledger, p, -(slots.len() as i32));
            }
            Ok::<_, StoreError>(())
        });
        futures::future::try_join_all(removals).await.map(|_| ())
    }
}
