//! `POST /threads` creates a conversation thread; `GET /threads/{id}` shows it and its messages, oldest
//! first, a page at a time; and a submit's run on a thread ([`link_run`]). Served by the submit
//! function (it sends messages, and already reads and queries the table for `POST /mcp`). See
//! [`crate::thread`] for what a thread is.

use std::sync::Arc;
use std::time::Duration;

use axum::Json as JsonBody;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::jobs::{page_limit, parameters};
use super::status::{cancel_job, rfc3339};
use super::submit::{read_body, whole_seconds};
use super::{ApiError, Caller, SubmitApi};
use crate::agent::AgentInput;
use crate::job::{Cancel, Job, JobId};
use crate::store::{Created, Insert, StoreError};
use crate::thread::{MAX_TTL, MIN_TTL, MessageQuery, Policy, Thread, ThreadId, ThreadMessage};

/// The body of `POST /threads`, a JSON object whose fields are optional (`{}`: the defaults). Fields
/// are checked by hand, so a wrong value gets its own code rather than serde's generic one; `null` is
/// a wrong value, not an absent one.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateThread {
    #[serde(default, deserialize_with = "present")]
    policy: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    ttl_seconds: Option<Value>,
}

/// A field that is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

/// A thread as `POST /threads` and `GET /threads/{id}` show it (openapi.yaml's `Thread`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadView {
    pub thread_id: ThreadId,
    pub policy: Policy,
    pub created_at: String,
    pub expires_at: String,
    /// Runs submitted so far.
    pub runs: u64,
    /// The job of the last run submitted.
    pub last_job: Option<JobId>,
    pub thread_url: String,
}

impl From<&Thread> for ThreadView {
    fn from(t: &Thread) -> Self {
        Self {
            thread_id: t.thread_id.clone(),
            policy: t.policy,
            created_at: rfc3339(t.created_at),
            expires_at: rfc3339(t.expires_at * 1000),
            runs: t.runs,
            last_job: t.last_job.clone(),
            thread_url: format!("/threads/{}", t.thread_id),
        }
    }
}

/// One message of a thread: the agent's message (`role` and its fields: `text`, `tool_calls`,
/// `results`), where it sits and which job wrote it (openapi.yaml's `ThreadMessage`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageView {
    pub run: u64,
    pub index: u32,
    pub job_id: JobId,
    pub created_at: String,
    #[serde(flatten)]
    pub message: serde_json::Map<String, Value>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    /// The message's size before it was cut to fit (it ends in "[truncated]").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_from: Option<u64>,
}

impl From<ThreadMessage> for MessageView {
    fn from(m: ThreadMessage) -> Self {
        Self {
            run: m.run,
            index: m.index,
            job_id: m.job_id,
            created_at: rfc3339(m.at),
            message: match m.message {
                Value::Object(fields) => fields,
                other => serde_json::Map::from_iter([("message".to_owned(), other)]),
            },
            interrupted: m.interrupted,
            truncated_from: m.truncated_from,
        }
    }
}

/// `GET /threads/{id}`: the thread, and a page of its messages (`next_cursor` is `null` on the last).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThreadPage {
    #[serde(flatten)]
    pub thread: ThreadView,
    pub messages: Vec<MessageView>,
    pub next_cursor: Option<String>,
}

fn policy_of(v: Option<&Value>) -> Result<Policy, ApiError> {
    match v {
        None => Ok(Policy::default()),
        Some(Value::String(s)) => Policy::parse(s).map_err(|_| ApiError::InvalidPolicy),
        Some(_) => Err(ApiError::InvalidPolicy),
    }
}

fn ttl_of(v: Option<&Value>, default: Duration) -> Result<Duration, ApiError> {
    let bad = || {
        ApiError::InvalidTtl(format!(
            "ttl_seconds must be a whole number from {} to {}",
            MIN_TTL.as_secs(),
            MAX_TTL.as_secs()
        ))
    };
    let secs = match v {
        None => return Ok(default.clamp(MIN_TTL, MAX_TTL)),
        Some(Value::Number(n)) => whole_seconds(n).ok_or_else(bad)?,
        Some(_) => return Err(bad()),
    };
    let ttl = Duration::from_secs(u64::try_from(secs).map_err(|_| bad())?);
    (MIN_TTL..=MAX_TTL)
        .contains(&ttl)
        .then_some(ttl)
        .ok_or_else(bad)
}

/// `201` with the new thread and `Location`.
pub(super) async fn create(
    State(api): State<Arc<SubmitApi>>,
    Caller(user): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body).await?;
    // An empty body too is refused: `{}` asks for the defaults.
    let value: Value = match bytes.iter().all(u8::is_ascii_whitespace) {
        true => Value::Null,
        false => {
            serde_json::from_slice(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?
        }
    };
    if !value.is_object() {
        return Err(ApiError::InvalidRequest(
            "request body must be a JSON object {\"policy\"?, \"ttl_seconds\"?} ({} for the defaults)"
                .into(),
        ));
    }
    let request: CreateThread = serde_json::from_value(value)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid thread request: {e}")))?;
    let policy = policy_of(request.policy.as_ref())?;
    let ttl = ttl_of(request.ttl_seconds.as_ref(), api.settings.job_ttl)?;
    let thread = Thread::new(user, policy, ttl, api.clock.now());
    api.store.create_thread(&thread).await?;
    tracing::info!(thread_id = %thread.thread_id, policy = policy.as_str(), "thread created");
    let view = ThreadView::from(&thread);
    Ok((
        StatusCode::CREATED,
        [(http::header::LOCATION, view.thread_url.clone())],
        JsonBody(view),
    )
        .into_response())
}

/// The caller's thread `raw_id`, if it is theirs and not expired: anything else is the same `404`.
async fn visible(api: &SubmitApi, user: &str, raw_id: &str) -> Result<Thread, ApiError> {
    let id = ThreadId::parse(raw_id).map_err(|_| ApiError::ThreadNotFound)?;
    let now = api.clock.now();
    api.store
        .thread(&id)
        .await?
        .filter(|t| t.visible_to(user, now))
        .ok_or(ApiError::ThreadNotFound)
}

pub(super) async fn show(
    State(api): State<Arc<SubmitApi>>,
    Caller(user): Caller,
    Path(raw_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<JsonBody<ThreadPage>, ApiError> {
    // The thread first: another user's is a 404 before the query is read, as for jobs.
    let thread = visible(&api, &user, &raw_id).await?;
    let params = parameters(raw.as_deref(), &["limit", "cursor"])?;
    let limit = page_limit(&params)?;
    // A cursor pages through the list that made it: this thread's, for this caller.
    let id = thread.thread_id.to_string();
    let binding = [user.as_str(), id.as_str(), "thread"];
    let after = params
        .get("cursor")
        .map(|c| {
            let text = api.cursors.decode_text(c, &binding)?;
            text.parse::<u64>().map_err(|_| ApiError::InvalidCursor)
        })
        .transpose()?;
    // One more than asked tells whether another page exists.
    let query = MessageQuery {
        before: None,
        after,
        limit: limit + 1,
        newest_first: false,
    };
    let mut messages = api.store.messages(&thread.thread_id, &query).await?;
    let next_cursor = (messages.len() > limit).then(|| {
        messages.truncate(limit);
        let last = messages.last().expect("limit is at least 1");
        api.cursors.encode_text(&last.seq().to_string(), &binding)
    });
    Ok(JsonBody(ThreadPage {
        thread: ThreadView::from(&thread),
        messages: messages.into_iter().map(MessageView::from).collect(),
        next_cursor,
    }))
}

/// Links tried before giving up when other runs keep linking first.
const LINK_TRIES: usize = 5;

/// Stores `job` (an agent job with `"thread"`) as its thread's next run: the job, the thread's new
/// last run and the run's user message in one atomic write ([`crate::store::ThreadStore::insert_run`]).
///
/// - The thread must be the caller's and not expired: else `404 thread_not_found`, nothing written.
/// - While the last run is not finished, the policy decides: `enqueue` links behind it, `reject`
///   refuses (`409 thread_busy`), `interrupt` cancels it (it ends `cancelled`, what it said kept)
///   and links behind it: the worker's gate starts this run once that one has ended.
/// - **Retried submits** (same Idempotency-Key): a keyed job stored already is answered before
///   anything else, so a retry never links a second run nor interrupts its own; the insert's job
///   condition settles a retry racing its first try (`Existing`).
/// - **Crashes**: the one write is all or nothing, so a submit that dies before it leaves no trace
///   (its retry links the run as new) and one that dies after it leaves the whole run (its retry
///   finds the job and, if the message was never sent, sends it, as any replay does). An interrupt
///   that landed before a crash is not undone: the retry finds the run gone and links behind it.
/// - Another run linking first makes the write fail on its condition: the thread is read again and
///   the policy applied to the new last run.
pub(super) async fn link_run(
    api: &SubmitApi,
    job: &mut Job,
    how: &Insert,
    input: &AgentInput,
    thread_id: &ThreadId,
) -> Result<Created, ApiError> {
    if how.keyed
        && let Some(existing) = api.store.get(&job.job_id).await?
    {
        return Ok(Created::Existing(Box::new(existing)));
    }
    for _ in 0..LINK_TRIES {
        let now = api.clock.now();
        let thread = visible(api, &job.user_id, thread_id.as_str()).await?;
        if let Some(last) = &thread.last_job {
            busy(api, &thread, last).await?;
        }
        let run = thread.next_run();
        let message = ThreadMessage::new(
            run.position,
            0,
            job.job_id.clone(),
            now,
            json!({"role": "user", "text": input.user_text()}),
        );
        job.thread = Some(run);
        match api.store.insert_run(job, how, &thread, &message).await {
            Err(StoreError::Conflict { .. }) => continue,
            Err(StoreError::InFlightCapReached) => {
                return Err(ApiError::TooManyInFlight {
                    cap: how.in_flight_cap.unwrap_or_default(),
                    retry_after: super::submit::IN_FLIGHT_RETRY_SECS,
                });
            }
            other => return Ok(other?),
        }
    }
    Err(ApiError::Unavailable {
        source: "the thread kept changing while linking a run".into(),
    })
}

/// Applies `thread`'s policy when its last run, `last`, is not finished.
async fn busy(api: &SubmitApi, thread: &Thread, last: &JobId) -> Result<(), ApiError> {
    let now = api.clock.now();
    let Some(job) = api.store.get(last).await? else {
        return Ok(()); // gone with its TTL: finished long ago
    };
    if job.effective_status(now).is_terminal() {
        return Ok(());
    }
    match thread.policy {
        Policy::Enqueue => Ok(()),
        Policy::Reject => Err(ApiError::ThreadBusy),
        Policy::Interrupt => {
            // A run that finishes first keeps its outcome; either way the next one waits for it.
            match cancel_job(&*api.store, &api.clock, job).await {
                Ok((job, what)) => {
                    if what == Cancel::Cancelled {
                        api.announcer.announce(&job).await;
                    }
                    tracing::info!(job_id = %job.job_id, thread_id = %thread.thread_id, outcome = ?what, "run interrupted");
                    Ok(())
                }
                Err(ApiError::JobFinished(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_fields_are_checked_each_with_its_own_code() {
        let day = Duration::from_secs(86_400);
        assert_eq!(policy_of(None).unwrap(), Policy::Enqueue);
        assert_eq!(policy_of(Some(&json!("reject"))).unwrap(), Policy::Reject);
        for bad in [json!("later"), json!(1), json!(["enqueue"]), Value::Null] {
            assert_eq!(policy_of(Some(&bad)).unwrap_err().code(), "invalid_policy");
        }
        assert_eq!(ttl_of(None, day).unwrap(), day);
        assert_eq!(ttl_of(Some(&json!(60)), day).unwrap(), MIN_TTL);
        assert_eq!(ttl_of(Some(&json!(120.0)), day).unwrap().as_secs(), 120);
        for bad in [
            json!(59),
            json!(-1),
            json!(1.5),
            json!("60"),
            json!(MAX_TTL.as_secs() + 1),
            Value::Null,
        ] {
            assert_eq!(
                ttl_of(Some(&bad), day).unwrap_err().code(),
                "invalid_ttl",
                "{bad}"
            );
        }
    }
}
