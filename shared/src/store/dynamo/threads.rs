//! Conversation threads on DynamoDB (see [`crate::thread`]).
//!
//! - The thread: item `thread#<id>`, its fields as attributes (`owner`, `policy`, `created_at`, `runs`,
//!   `last_job`, and `expires_at`, the table's TTL). No `status`, `slots` or index key: the sweep's
//!   scans and the ledgers' never match it, no list shows it.
//! - A message: item `tmsg#<thread>#<run>#<index>`, the message as JSON in `tmsg` (at most
//!   [`crate::thread::MAX_MESSAGE_BYTES`]), `expires_at` the thread's, and the sparse `by_job` index's
//!   keys (`step_of` = `thread#<id>`, never a job id; `step_at` = its seq), which list a thread's
//!   messages in order: a Query of the index (keys only), then one BatchGetItem.
//! - A run's submit is one TransactWriteItems of three items: the job (`attribute_not_exists`), the
//!   thread (`last_job` still the one read, not expired) and the run's user message. All or nothing,
//!   so a crash leaves either no trace of the run or all of it, and a retried submit with the same
//!   Idempotency-Key finds its job (the first condition) and links nothing again. The price: a
//!   transaction bills each item twice.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use super::{DynamoStore, Item, num, steps, to_item, unavailable};
use crate::job::Job;
use crate::slots::Ledger;
use crate::store::{Created, Insert, JobReader, SlotLedger, StoreError, ThreadStore};
use crate::thread::{MessageQuery, SEQ_SPAN, Thread, ThreadId, ThreadMessage};

/// The message attribute.
const MESSAGE: &str = "tmsg";

fn key(k: String) -> Item {
    Item::from([("job_id".to_owned(), AttributeValue::S(k))])
}

fn thread_key(id: &ThreadId) -> Item {
    key(format!("thread#{id}"))
}

/// The `by_job` partition of a thread's messages: prefixed, so it is never a job's.
fn list_of(id: &ThreadId) -> String {
    format!("thread#{id}")
}

fn message_key(id: &ThreadId, m: &ThreadMessage) -> Item {
    place_key(id, m.run, m.index)
}

/// The key of message `index` of run `run`: known without the index, so a message just appended can
/// be read by key before the index lists it.
fn place_key(id: &ThreadId, run: u64, index: u32) -> Item {
    key(format!("tmsg#{id}#{run}#{index}"))
}

fn message_item(id: &ThreadId, m: &ThreadMessage, expires_at: i64) -> Item {
    let mut item = message_key(id, m);
    item.insert("step_of".into(), AttributeValue::S(list_of(id)));
    item.insert(steps::AT.into(), num(m.seq()));
    item.insert("expires_at".into(), num(expires_at));
    item.insert(
        MESSAGE.into(),
        AttributeValue::S(serde_json::to_string(m).expect("a message serializes")),
    );
    item
}

fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt { source: e.into() }
}

fn message_from(item: &Item) -> Result<ThreadMessage, StoreError> {
    match item.get(MESSAGE) {
        Some(AttributeValue::S(s)) => serde_json::from_str(s).map_err(corrupt),
        _ => Err(StoreError::Corrupt {
            source: "a thread message item without its message".into(),
        }),
    }
}

fn thread_item(t: &Thread) -> Item {
    let mut item: Item = serde_dynamo::to_item(t).expect("a thread always maps to an item");
    item.extend(thread_key(&t.thread_id));
    // `thread_id` is the key's suffix; `last_job` absent rather than null, for the link's condition.
    item.insert(
        "thread_id".into(),
        AttributeValue::S(t.thread_id.to_string()),
    );
    if t.last_job.is_none() {
        item.remove("last_job");
    }
    item
}

fn is_failed_check(reason: &aws_sdk_dynamodb::types::CancellationReason) -> bool {
    reason.code() == Some("ConditionalCheckFailed")
}

#[async_trait]
impl ThreadStore for DynamoStore {
    async fn create_thread(&self, thread: &Thread) -> Result<(), StoreError> {
        let res = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(thread_item(thread)))
            .condition_expression("attribute_not_exists(job_id)")
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_conditional_check_failed_exception()) =>
            {
                Err(StoreError::AlreadyExists)
            }
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn thread(&self, id: &ThreadId) -> Result<Option<Thread>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(thread_key(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(unavailable)?;
        out.item
            .map(|mut item| {
                item.remove("job_id");
                serde_dynamo::from_item(item).map_err(corrupt)
            })
            .transpose()
    }

    async fn insert_run(
        &self,
        job: &mut Job,
        how: &Insert,
        thread: &Thread,
        message: &ThreadMessage,
    ) -> Result<Created, StoreError> {
        debug_assert_eq!(job.counted, how.in_flight_cap.is_some());
        if let Some(cap) = how.in_flight_cap {
            // The member first, as `insert` does: a job never holds a slot its ledger does not count.
            let page = self.take_slot(job, cap).await?;
            job.slot_page = Some(page.ok_or(StoreError::InFlightCapReached)?);
        }
        let put = |item: Item| {
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .set_item(Some(item))
                        .condition_expression("attribute_not_exists(job_id)")
                        .build()
                        .expect("table and item are set"),
                )
                .build()
        };
        let linked = thread.linking(&job.job_id);
        let mut link = Update::builder()
            .table_name(&self.table)
            .set_key(Some(thread_key(&thread.thread_id)))
            .update_expression("SET runs = :runs, last_job = :job")
            .expression_attribute_values(":runs", num(linked.runs))
            .expression_attribute_values(":job", AttributeValue::S(job.job_id.to_string()))
            .expression_attribute_values(":now", num(job.submitted_at / 1000));
        link = match &thread.last_job {
            Some(last) => link
                .condition_expression("expires_at > :now AND last_job = :last")
                .expression_attribute_values(":last", AttributeValue::S(last.to_string())),
            None => link.condition_expression(
                "attribute_exists(job_id) AND expires_at > :now AND attribute_not_exists(last_job)",
            ),
        };
        let items = vec![
            put(to_item(job)),
            TransactWriteItem::builder()
                .update(link.build().expect("table, key and expression are set"))
                .build(),
            put(message_item(&thread.thread_id, message, thread.expires_at)),
        ];
        // Only the SDK's own retries of this call share the token: a retried submit is told apart by
        // the job's condition instead.
        let token = format!("{:032x}", rand::random::<u128>());
        let Some(reasons) = self.transact(items, token).await? else {
            return Ok(Created::New);
        };
        let taken = if reasons.first().is_some_and(is_failed_check) {
            self.get(&job.job_id).await?
        } else {
            None
        };
        // Nothing was written: the member just added is held by nobody (unless the stored job is this
        // very one, submitted in the same second and holding the same member).
        if job.counted && !taken.as_ref().is_some_and(|t| t.holds(&job.slot())) {
            self.release_slots(&Ledger::owner(&job.user_id), &[job.slot()])
                .await?;
        }
        match taken {
            Some(existing) if how.keyed => Ok(Created::Existing(Box::new(existing))),
            Some(_) => Err(StoreError::AlreadyExists),
            // The thread moved on (another run linked first) or expired.
            None => Err(StoreError::Conflict { current: None }),
        }
    }

    async fn append_messages(
        &self,
        thread: &ThreadId,
        messages: &[ThreadMessage],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        // One conditional PutItem each: a message already there (an earlier attempt appended it) is
        // kept as it is. Not a batch: BatchWriteItem takes no condition.
        for m in messages {
            let res = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(message_item(thread, m, expires_at)))
                .condition_expression("attribute_not_exists(job_id)")
                .send()
                .await;
            match res {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(())
    }

    async fn messages(
        &self,
        thread: &ThreadId,
        query: &MessageQuery,
    ) -> Result<Vec<ThreadMessage>, StoreError> {
        let lo = query.after.map_or(0, |a| a + 1);
        // `step_at` is a DynamoDB number: seqs stay far below 2^53 (runs below 2^33).
        let hi = query
            .before
            .map_or(u64::MAX / SEQ_SPAN * SEQ_SPAN, |b| b.saturating_sub(1));
        if query.limit == 0 || lo > hi {
            return Ok(Vec::new());
        }
        let mut keys = Vec::new();
        let mut start = None;
        while keys.len() < query.limit {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("by_job")
                .key_condition_expression("step_of = :of AND #at BETWEEN :lo AND :hi")
                .expression_attribute_names("#at", steps::AT)
                .expression_attribute_values(":of", AttributeValue::S(list_of(thread)))
                .expression_attribute_values(":lo", num(lo))
                .expression_attribute_values(":hi", num(hi))
                .scan_index_forward(!query.newest_first)
                .limit(i32::try_from(query.limit - keys.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(unavailable)?;
            keys.extend(
                out.items
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|mut i| {
                        Some(key(match i.remove("job_id")? {
                            AttributeValue::S(s) => s,
                            _ => return None,
                        }))
                    }),
            );
            start = out.last_evaluated_key;
            if start.is_none() {
                break;
            }
        }
        keys.truncate(query.limit);
        let mut found = self.messages_by_key(keys).await?;
        if query.newest_first {
            found.reverse();
        }
        Ok(found)
    }

    async fn run_messages(
        &self,
        thread: &ThreadId,
        run: u64,
        indices: std::ops::Range<u32>,
    ) -> Result<Vec<ThreadMessage>, StoreError> {
        let keys = indices.map(|i| place_key(thread, run, i)).collect();
        self.messages_by_key(keys).await
    }
}

impl DynamoStore {
    /// The messages of `keys` (strongly consistent BatchGetItems of at most 100), oldest first.
    async fn messages_by_key(&self, keys: Vec<Item>) -> Result<Vec<ThreadMessage>, StoreError> {
        let mut found = Vec::new();
        for chunk in keys.chunks(100) {
            for item in self.batch_get(chunk.to_vec(), true).await? {
                found.push(message_from(&item)?);
            }
        }
        found.sort_by_key(ThreadMessage::seq);
        Ok(found)
    }
}
