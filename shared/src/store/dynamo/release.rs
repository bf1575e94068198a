//! Slot releases, sent together (group commit). A batch's jobs finish at about the same time, and each
//! ends by removing its member from a page of its owner's ledger: one UpdateItem per job, the worker's
//! third DynamoDB call per job. Here the first release goes out at once, alone; the releases that
//! arrive while it is in flight wait and then go out together as one `BatchExecuteStatement` (PartiQL
//! `SET_DELETE`, one statement per page, up to 25): no added latency when there is no concurrency, one
//! request for many when there is. Each statement is billed as the single write it is, so units do not
//! change.
//!
//! A caller still returns only once its members are removed (or the removal failed), so the slot
//! protocol of [`crate::store`] is unchanged. Whatever the batch does not confirm — the whole request
//! failing (a deployment whose role lacks `dynamodb:PartiQLUpdate`, say) or one statement failing
//! (throttled: the SDK does not retry a statement) — is removed again the plain way, one UpdateItem
//! per page with the SDK's retries, so the batch can only save requests, never lose a removal.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{AttributeValue, BatchStatementRequest, Update};
use tokio::sync::oneshot;

use super::pages::members;
use super::update_item;
use crate::job::Slot;
use crate::store::StoreError;

/// The most statements one `BatchExecuteStatement` takes.
const MAX_STATEMENTS: usize = 25;

/// Releases waiting for the one in flight, and whether one is.
#[derive(Debug)]
pub(super) struct Releases {
    client: Client,
    table: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    sending: bool,
    waiting: Vec<Waiting>,
}

#[derive(Debug)]
struct Waiting {
    /// The page item's key.
    key: String,
    slots: Vec<Slot>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl Releases {
    pub(super) fn new(client: Client, table: String) -> Arc<Self> {
        Arc::new(Self {
            client,
            table,
            state: Mutex::default(),
        })
    }

    /// Removes `slots` from the page item keyed `key`, with whatever other releases are waiting.
    pub(super) async fn release(
        self: &Arc<Self>,
        key: String,
        slots: &[Slot],
    ) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut state = self.state();
            state.waiting.push(Waiting {
                key,
                slots: slots.to_vec(),
                done,
            });
            !std::mem::replace(&mut state.sending, true)
        };
        if lead {
            // Its own task: a caller that gives up (a timeout) must not strand the releases it carries.
            tokio::spawn(self.clone().send_all());
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable {
                source: "the slot release task ended without an answer".into(),
            })
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends what is waiting, then what came in meanwhile, until nothing is.
    async fn send_all(self: Arc<Self>) {
        let guard = Sending(&self);
        loop {
            let batch: Vec<Waiting> = {
                let mut state = self.state();
                if state.waiting.is_empty() {
                    state.sending = false;
                    break;
                }
                let n = state.waiting.len().min(MAX_STATEMENTS);
                state.waiting.drain(..n).collect()
            };
            self.send(batch).await;
        }
        std::mem::forget(guard);
    }

    async fn send(&self, batch: Vec<Waiting>) {
        let mut by_page: BTreeMap<String, (Vec<Slot>, Vec<oneshot::Sender<_>>)> = BTreeMap::new();
        for w in batch {
            let entry = by_page.entry(w.key).or_default();
            entry.0.extend(w.slots);
            entry.1.push(w.done);
        }
        let confirmed = if by_page.len() > 1 {
            self.batch(by_page.iter().map(|(k, (s, _))| (k.as_str(), s.as_slice())))
                .await
        } else {
            vec![false]
        };
        // What the batch did not confirm is released page by page, all at once: one slow page must
        // not hold up the others' callers.
        let answers = by_page
            .into_iter()
            .zip(confirmed)
            .map(|((key, (slots, waiters)), ok)| self.answer(key, slots, waiters, ok));
        futures::future::join_all(answers).await;
    }

    /// Answers one page's callers: done if the batch `confirmed` it, else after an UpdateItem.
    async fn answer(
        &self,
        key: String,
        slots: Vec<Slot>,
        waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
        confirmed: bool,
    ) {
        let result = if confirmed {
            Ok(())
        } else {
            self.one(&key, &slots).await
        };
        let mut waiters = waiters.into_iter();
        let last = waiters.next_back();
        for w in waiters {
            let _ = w.send(copy(&result));
        }
        if let Some(w) = last {
            let _ = w.send(result);
        }
    }

    /// One statement per page; which of them removed their members (or found no page item: nothing
    /// to remove). All `false` when the request itself failed.
    async fn batch(&self, pages: impl ExactSizeIterator<Item = (&str, &[Slot])>) -> Vec<bool> {
        let n = pages.len();
        let statement = format!(
            "UPDATE \"{}\" SET slots = SET_DELETE(slots, ?) WHERE job_id = ?",
            self.table
        );
        let statements = pages
            .map(|(key, slots)| {
                BatchStatementRequest::builder()
                    .statement(&statement)
                    .parameters(members(slots))
                    .parameters(AttributeValue::S(key.to_owned()))
                    .build()
                    .expect("the statement is set")
            })
            .collect();
        match self
            .client
            .batch_execute_statement()
            .set_statements(Some(statements))
            .send()
            .await
        {
            Ok(out) => {
                let answers = out.responses.unwrap_or_default();
                (0..n)
                    .map(|i| {
                        answers.get(i).is_some_and(|r| match &r.error {
                            None => true,
                            // PartiQL's UPDATE never creates an item: no slot item, nothing held.
                            Some(e) => e
                                .code
                                .as_ref()
                                .is_some_and(|c| c.as_str() == "ConditionalCheckFailed"),
                        })
                    })
                    .collect()
            }
            Err(e) => {
                tracing::debug!(error = %e, "batched slot release failed; releasing one by one");
                vec![false; n]
            }
        }
    }

    /// One page's members, by UpdateItem (conditional on the item existing, so a release never
    /// creates an empty one).
    async fn one(&self, key: &str, slots: &[Slot]) -> Result<(), StoreError> {
        let delete = Update::builder()
            .table_name(&self.table)
            .key("job_id", AttributeValue::S(key.to_owned()))
            .update_expression("DELETE slots :m")
            .condition_expression("attribute_exists(job_id)")
            .expression_attribute_values(":m", members(slots))
            .build()
            .expect("table, key and expression are set");
        update_item(&self.client, delete).await.map(|_| ())
    }
}

/// Resets the queue if [`Releases::send_all`] ends early (a panic): the releases still waiting are
/// answered `Unavailable` instead of waiting forever, and the next release sends again.
struct Sending<'a>(&'a Releases);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.sending = false;
        for w in state.waiting.drain(..) {
            let _ = w.done.send(Err(StoreError::Unavailable {
                source: "the slot release task stopped".into(),
            }));
        }
    }
}

/// The same outcome for another caller of a merged release (`StoreError` is not `Clone`: its source
/// is kept as text).
fn copy(r: &Result<(), StoreError>) -> Result<(), StoreError> {
    r.as_ref().map(|_| ()).map_err(|e| {
        let cause = std::error::Error::source(e).map(|s| format!(": {s}"));
        StoreError::Unavailable {
            source: format!("{e}{}", cause.unwrap_or_default()).into(),
        }
    })
}
