//! `GET /jobs/{id}`: the job as its owner may see it; `DELETE /jobs/{id}`: cancel it.

use std::sync::Arc;

use axum::Json as JsonBody;
use axum::extract::{Path, State};
use chrono::{DateTime, SecondsFormat, Utc};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use super::{ApiError, Caller, CursorKey, EventsLink, JobSummary, WaitpointLink};
use crate::clock::SharedClock;
use crate::job::{Cancel, Job, JobId, JobStatus, Millis, WaitingFor, WebhookState, WebhookStatus};
use crate::json::Json;
use crate::queue::Announcer;
use crate::store::{
    CancelSignals, Change, JobReader, JobWriter, RmwError, StatusStore, read_modify_write,
};
use crate::waitpoint::{WaitState, Waitpoint};

/// The public form of a job: its [`JobSummary`] (what lists show) plus its payloads. No lease internals;
/// times as RFC 3339.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub input: Json,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Json>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The latest partial result its handler published (`JobContext::partial`), kept once it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The latest webhook event (the terminal state's; a `job.waiting` one while it waits), when there
    /// is a `callback_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// The job's live stream, with a token valid for 15 minutes (`GET /jobs/{id}` only, where an events
    /// endpoint is deployed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_url: Option<String>,
    /// The waitpoint a `waiting` job is parked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingForView>,
    /// The waitpoint it last waited on, once settled (`GET /jobs/{id}` only): the completion's payload,
    /// or that it timed out. Every waitpoint of a job: `GET /jobs/{id}/steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_waitpoint: Option<SettledView>,
    /// Why a `queued`/`retrying` job waits to start: a kind's limit deferred it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<DeferredView>,
}

/// A limit a job waits on (see the README's "Limits").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferredView {
    /// `concurrency` or `rate`.
    pub reason: String,
    /// What the limit counts per: `kind`, `user`, `model` or an input pointer such as `/customer_id`.
    pub key: String,
    /// About when it is tried again (RFC 3339).
    pub until: String,
}

impl From<crate::limits::Deferred> for DeferredView {
    fn from(d: crate::limits::Deferred) -> Self {
        Self {
            reason: d.reason.as_str().to_owned(),
            key: d.key,
            until: rfc3339(d.until),
        }
    }
}

/// How a job's last wait ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettledView {
    pub name: String,
    /// `completed` or `timed_out`.
    pub state: WaitState,
    /// The completion's payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Json>,
    /// When it was completed or timed out (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<String>,
}

impl From<Waitpoint> for SettledView {
    fn from(w: Waitpoint) -> Self {
        Self {
            name: w.name,
            state: w.state,
            payload: w.payload,
            settled_at: w.settled_at.map(rfc3339),
        }
    }
}

/// What a parked job waits for: complete it with `POST /jobs/{id}/waitpoints/{name}`, or by POSTing to
/// `complete_url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingForView {
    pub name: String,
    /// When it times out (RFC 3339).
    pub expires_at: String,
    /// A capability URL completing this one waitpoint without the API's credentials (`GET /jobs/{id}`
    /// only, which only the owner sees; absent for a delayed start, or where the API's base URL is not
    /// configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub complete_url: Option<String>,
    /// What the handler shows about the wait (`WaitFor::detail`): an agent's tool approval has
    /// `{"tool", "input"}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Json>,
}

impl From<WaitingFor> for WaitingForView {
    fn from(w: WaitingFor) -> Self {
        Self {
            name: w.name,
            expires_at: rfc3339(w.expires_at),
            complete_url: None,
            detail: w.detail,
        }
    }
}

/// Where a job's webhook event stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookView {
    /// The event's `webhook-id` (receivers deduplicate on it).
    pub id: String,
    pub status: WebhookStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    /// When the next attempt is due, while `pending`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<String>,
}

impl From<WebhookState> for WebhookView {
    fn from(w: WebhookState) -> Self {
        let pending = w.status == WebhookStatus::Pending;
        Self {
            id: w.event_id,
            status: w.status,
            attempts: w.attempts,
            last_status: w.last_status,
            last_error: w.last_error,
            delivered_at: w.delivered_at.map(rfc3339),
            next_attempt_at: w.next_attempt_at.filter(|_| pending).map(rfc3339),
        }
    }
}

/// Reading a view back (clients such as `jobctl`). Through `Value` payloads: serde's `flatten` buffers
/// the document, which exact [`Json`] text cannot pass through, so numbers wider than f64 lose digits
/// here. The API itself never reads a view.
/// Reads a view exactly: `input` and `result` are taken out as raw text before the rest is read,
/// because `#[serde(flatten)]` buffers a document into serde's generic values, where a number beyond
/// f64 (`12345678901234567890123`) would lose its digits.
impl<'de> Deserialize<'de> for JobView {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        struct Wire {
            #[serde(flatten)]
            summary: JobSummary,
            #[serde(default)]
            warnings: Vec<String>,
            #[serde(default)]
            callback_url: Option<String>,
            #[serde(default)]
            webhook: Option<WebhookView>,
            #[serde(default)]
            started_at: Option<String>,
            #[serde(default)]
            events_url: Option<String>,
            #[serde(default)]
            waiting_for: Option<WaitingForView>,
            #[serde(default)]
            deferred: Option<DeferredView>,
        }
        // `last_waitpoint` holds a payload: taken out as raw text, like `input`.
        let mut doc =
            std::collections::BTreeMap::<String, Box<serde_json::value::RawValue>>::deserialize(d)?;
        let payload = |raw: Box<serde_json::value::RawValue>| {
            Json::parse(raw.get()).map_err(D::Error::custom)
        };
        let input = payload(
            doc.remove("input")
                .ok_or_else(|| D::Error::missing_field("input"))?,
        )?;
        let result = match doc.remove("result") {
            Some(r) if r.get() != "null" => Some(payload(r)?),
            _ => None,
        };
        let partial = match doc.remove("partial") {
            Some(r) if r.get() != "null" => Some(payload(r)?),
            _ => None,
        };
        let last_waitpoint = match doc.remove("last_waitpoint") {
            Some(raw) => serde_json::from_str(raw.get()).map_err(D::Error::custom)?,
            None => None,
        };
        let rest = serde_json::to_string(&doc).map_err(D::Error::custom)?;
        let w: Wire = serde_json::from_str(&rest).map_err(D::Error::custom)?;
        Ok(Self {
            summary: w.summary,
            input,
            result,
            partial,
            warnings: w.warnings,
            callback_url: w.callback_url,
            webhook: w.webhook,
            started_at: w.started_at,
            events_url: w.events_url,
            waiting_for: w.waiting_for,
            last_waitpoint,
            deferred: w.deferred,
        })
    }
}

pub fn rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl JobView {
    /// The view of `j` at `now` (see [`Job::effective_status`]).
    pub fn at(mut j: Job, now: Millis) -> Self {
        Self {
            input: j.input.clone(),
            result: j.result.take(),
            warnings: std::mem::take(&mut j.warnings),
            partial: j.partial.take().map(|p| p.value),
            callback_url: j.callback_url.take(),
            webhook: j.webhook.take().map(WebhookView::from),
            started_at: j.started_at.map(rfc3339),
            events_url: None,
            waiting_for: j.waiting_for.take().map(WaitingForView::from),
            last_waitpoint: None,
            // Only while it still waits to start (a claim clears the note; this is belt and braces).
            deferred: j
                .deferred
                .take()
                .filter(|_| matches!(j.status, JobStatus::Queued | JobStatus::Retrying))
                .map(DeferredView::from),
            summary: JobSummary::at(j, now),
        }
    }
}

/// The status function's dependencies: reads, lists and cancels, nothing else.
pub struct StatusApi {
    pub(super) store: Arc<dyn StatusStore>,
    pub(super) cursors: CursorKey,
    pub(super) clock: SharedClock,
    announcer: Announcer,
    events: Option<EventsLink>,
    waitpoints: Option<WaitpointLink>,
    /// The daily token budget `GET /usage` reports.
    token_budget: Option<crate::usage::Budget>,
}

impl StatusApi {
    pub fn new(store: Arc<dyn StatusStore>, cursors: CursorKey, clock: SharedClock) -> Self {
        Self {
            store,
            cursors,
            clock,
            announcer: Announcer::none(),
            events: None,
            waitpoints: None,
            token_budget: None,
        }
    }

    /// Reports `budget` with the caller's usage (`GET /usage`).
    pub fn with_token_budget(mut self, budget: Option<crate::usage::Budget>) -> Self {
        self.token_budget = budget;
        self
    }

    pub(super) fn token_budget(&self) -> Option<crate::usage::Budget> {
        self.token_budget
    }

    /// Hands out waitpoints' `complete_url`s under this link's base.
    pub fn with_waitpoints(mut self, link: WaitpointLink) -> Self {
        self.waitpoints = Some(link);
        self
    }

    /// Hands out `events_url`s to this events endpoint.
    pub fn with_events(mut self, link: EventsLink) -> Self {
        self.events = Some(link);
        self
    }

    /// Announces the webhook event of each job it cancels.
    pub fn with_announcer(mut self, announcer: Announcer) -> Self {
        self.announcer = announcer;
        self
    }

    /// The caller's job `raw_id`. Another user's job answers exactly like a missing one, so ids cannot
    /// be probed.
    pub(super) async fn owned(&self, user: &str, raw_id: &str) -> Result<Job, ApiError> {
        let id = JobId::parse(raw_id)?;
        self.store
            .get(&id)
            .await?
            .filter(|j| j.user_id == user)
            .ok_or(ApiError::JobNotFound)
    }
}

pub(super) async fn status(
    State(api): State<Arc<StatusApi>>,
    Caller(user): Caller,
    Path(raw_id): Path<String>,
) -> Result<JsonBody<JobView>, ApiError> {
    let job = api.owned(&user, &raw_id).await?;
    let now = api.clock.now();
    let events_url = api.events.as_ref().map(|l| l.url(&job.job_id, &user, now));
    let complete_url = match (&api.waitpoints, &job.waiting_for) {
        (Some(link), Some(on)) if job.status == JobStatus::Waiting => link.url(&job, on),
        _ => None,
    };
    // One more read, only for a job that has waited and is not waiting now.
    let last_waitpoint = match (&job.last_waitpoint, job.status) {
        (Some(name), status) if status != JobStatus::Waiting => api
            .store
            .waitpoint(&job.job_id, name)
            .await?
            .filter(Waitpoint::is_settled)
            .map(SettledView::from),
        _ => None,
    };
    let mut view = JobView::at(job, now);
    if let Some(w) = view.waiting_for.as_mut() {
        w.complete_url = complete_url;
    }
    Ok(JsonBody(JobView {
        events_url,
        last_waitpoint,
        ..view
    }))
}

/// Cancel writes retried when a worker's heartbeat got in between.
const CANCEL_TRIES: usize = 5;

/// `202` with the job once cancelled (or, if running, once asked to stop); `200` if that had already
/// happened; `409` for a finished job.
pub(super) async fn cancel(
    State(api): State<Arc<StatusApi>>,
    Caller(user): Caller,
    Path(raw_id): Path<String>,
) -> Result<(StatusCode, JsonBody<JobView>), ApiError> {
    let job = api.owned(&user, &raw_id).await?;
    let (job, what) = cancel_job(&*api.store, &api.clock, job).await?;
    if what == Cancel::Cancelled {
        api.announcer.announce(&job).await;
    }
    let status = match what {
        Cancel::AlreadyDone => StatusCode::OK,
        Cancel::Cancelled | Cancel::Requested => {
            tracing::info!(job_id = %job.job_id, outcome = ?what, "cancel requested");
            StatusCode::ACCEPTED
        }
    };
    Ok((status, JsonBody(JobView::at(job, api.clock.now()))))
}

/// Cancels `job` (as read): one not running at once, a running one asked to stop (the flag on the
/// job, then the small signal its heartbeat reads). What `DELETE /jobs/{id}` does, and a thread's
/// `interrupt` policy to the run it interrupts. The caller announces a cancelled job's event.
pub(super) async fn cancel_job<S>(
    store: &S,
    clock: &SharedClock,
    job: Job,
) -> Result<(Job, Cancel), ApiError>
where
    S: JobReader + JobWriter + CancelSignals + ?Sized,
{
    let step = |job: &Job| {
        let now = clock.now();
        match job.cancel(now) {
            Ok((what, Some(next))) => Ok(Change::Write(Box::new(next), what)),
            Ok((what, None)) => Ok(Change::Keep(what)),
            Err(_) => Err(ApiError::JobFinished(job.effective_status(now))),
        }
    };
    let (job, what) = read_modify_write(store, &job.job_id.clone(), Some(job), CANCEL_TRIES, step)
        .await
        .map_err(|e| match e {
            RmwError::Refused(e) => e,
            RmwError::NotFound => ApiError::JobNotFound,
            RmwError::Contended => ApiError::Unavailable {
                source: "the job kept changing while being cancelled".into(),
            },
            RmwError::Store(e) => e.into(),
        })?;
    if job.status == JobStatus::Running && job.cancel_requested {
        // The running attempt looks for this small mark every few seconds (a read of a few bytes, not of
        // the job); it also sees the flag on the job at its next write. Written again on a repeated
        // request, in case the first one died between the two writes.
        store
            .signal_cancel(&job.job_id, job.redrives, job.expires_at)
            .await?;
    }
    Ok((job, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_read_back_keeps_every_digit_of_its_input_and_result() {
        let big = r#"{"n":12345678901234567890123,"x":[0.1000000000000000055511151231257827]}"#;
        let text = format!(
            r#"{{"job_id":"{}","kind":"echo","status":"completed","attempts":1,"max_attempts":5,
               "submitted_at":"2026-11-23T07:16:09.645Z","updated_at":"2026-11-23T07:16:09.700Z",
               "input":{big},"result":{big},"started_at":"2026-11-23T07:16:09.650Z"}}"#,
            JobId::generate(0)
        );
        let view: JobView = serde_json::from_str(&text).unwrap();
        assert_eq!(view.input.get(), big);
        assert_eq!(view.result.as_ref().map(Json::get), Some(big));
        assert_eq!(view.summary.status, JobStatus::Completed);
        assert_eq!(view.started_at.as_deref(), Some("2026-11-23T07:16:09.650Z"));
        let again: JobView = serde_json::from_str(&serde_json::to_string(&view).unwrap()).unwrap();
        assert_eq!(again, view);
        // `"result": null` is no result; a view without `input` is refused.
        let no_result = text.replace(&format!(r#""result":{big}"#), r#""result":null"#);
        assert_eq!(
            serde_json::from_str::<JobView>(&no_result).unwrap().result,
            None
        );
        let no_input = text.replace(&format!(r#""input":{big},"#), "");
        assert!(serde_json::from_str::<JobView>(&no_input).is_err());
    }
}
