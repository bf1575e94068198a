//! Completing a parked job's waitpoint with a JSON payload, which resumes the job (see
//! [`crate::waitpoint`]). Two front doors to one completion ([`WaitpointApi::settle`]):
//! - `POST /jobs/{id}/waitpoints/{name}`: the owner, behind the API's authorizer;
//! - `POST /waitpoints/{token}`: whoever holds the waitpoint's `complete_url` (a Slack button, an email
//!   link), with no other credential: the token is an HMAC over (job, waitpoint, expiry) under the stack's
//!   signing secret ([`super::token`]), so it completes that one waitpoint and nothing else, until a
//!   little after the waitpoint's own timeout ([`LINK_GRACE`]). `GET /waitpoints/{token}` never
//!   completes anything: it shows the waitpoint's public view, so a link opened in a browser lands on
//!   something. A token that is not one the stack signed, or is past its expiry, or names a job no
//!   longer stored, is the same `401`, revealing nothing.
//!
//! Served by the submit function: it is the one allowed to send job messages.
//!
//! Two writes, in this order: the waitpoint `pending -> completed` (conditional: the first completion's
//! payload stands, a second is `409`), then the job `waiting -> queued` and its message
//! ([`resume_parked`]). A crash between them leaves a parked job with a completed waitpoint, which the
//! sweep resumes; a completion that lands while the worker is still parking the job finds it running and
//! leaves the resume to that worker, which reads the waitpoint again right after parking.

use std::sync::Arc;
use std::time::Duration;

use axum::Json as JsonBody;
use axum::body::Body;
use axum::extract::{Path, State};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::status::rfc3339;
use super::submit::read_body;
use super::token::{Purpose, TokenKey};
use super::{ApiError, Caller, JobView};
use crate::clock::{Millis, SharedClock};
use crate::job::{Job, JobId, JobStatus, START_TIMER, WaitingFor};
use crate::json::Json;
use crate::park::resume_parked;
use crate::queue::{JobSender, Lanes};
use crate::store::CompleteStore;
use crate::waitpoint::{Closed, MAX_PAYLOAD_BYTES, MAX_WAITPOINT_NAME, WaitState, Waitpoint};

/// How long a `complete_url` outlives its waitpoint's timeout: a link followed a little late is told
/// the waitpoint timed out (`409`), not that the link is invalid (`401`). It completes nothing more:
/// the waitpoint itself refuses completions after its time.
pub const LINK_GRACE: Duration = Duration::from_secs(3600);

/// Hands out `complete_url`s: `{base}/waitpoints/{token}`, the token `<job>.<name>.<expires>.<tag>`
/// (the name base64url, so any name fits a path segment; all of it URL-safe).
#[derive(Debug, Clone)]
pub struct WaitpointLink {
    /// The API's public base URL (API Gateway's endpoint deployed, `jobctl dev`'s own address locally).
    pub base: String,
    pub key: TokenKey,
}

impl WaitpointLink {
    /// The `complete_url` of the waitpoint `on` of `job`, or `None` for what has no waitpoint item to
    /// complete (a delayed start's timer).
    pub fn url(&self, job: &Job, on: &WaitingFor) -> Option<String> {
        if on.name == START_TIMER && job.started_at.is_none() {
            return None;
        }
        Some(format!(
            "{}/waitpoints/{}",
            self.base.trim_end_matches('/'),
            capability(&self.key, &job.job_id, &on.name, on.expires_at)
        ))
    }
}

/// The token completing waitpoint `name` of `job`, which times out at `expires_at`.
pub fn capability(key: &TokenKey, job: &JobId, name: &str, expires_at: Millis) -> String {
    let expires = expires_at.div_euclid(1000) + 1 + LINK_GRACE.as_secs() as i64;
    capability_until(key, job, name, expires)
}

/// [`capability`] with an explicit expiry (unix seconds): tests make expired ones with it.
pub fn capability_until(key: &TokenKey, job: &JobId, name: &str, expires: i64) -> String {
    format!(
        "{job}.{}.{}",
        URL_SAFE_NO_PAD.encode(name),
        key.sign(Purpose::Waitpoint, &[job.as_str(), name], expires)
    )
}

/// The job and waitpoint a token names, if `key` signed it and it is unexpired at `now` (unix seconds).
fn open(key: &TokenKey, token: &str, now: i64) -> Option<(JobId, String)> {
    let (job, rest) = token.split_once('.')?;
    let (name, signed) = rest.split_once('.')?;
    let job = JobId::parse(job).ok()?;
    let name = String::from_utf8(URL_SAFE_NO_PAD.decode(name).ok()?).ok()?;
    key.verify(Purpose::Waitpoint, signed, &[job.as_str(), &name], now)
        .then_some((job, name))
}

/// The completion routes' dependencies: the job and its waitpoints, the queues to resume it on, and
/// the key `complete_url` tokens are checked with.
pub struct WaitpointApi {
    store: Arc<dyn CompleteStore>,
    queues: Lanes<dyn JobSender>,
    clock: SharedClock,
    key: TokenKey,
}

impl WaitpointApi {
    pub fn new(
        store: Arc<dyn CompleteStore>,
        queues: Lanes<dyn JobSender>,
        clock: SharedClock,
        key: TokenKey,
    ) -> Self {
        Self {
            store,
            queues,
            clock,
            key,
        }
    }

    /// The owner's door: completes waitpoint `name` of job `id` (owned by `user`) with `payload`, and
    /// resumes the job if it is parked on it. Returns the job as it is afterwards.
    pub async fn complete(
        &self,
        user: &str,
        id: &JobId,
        name: &str,
        payload: Json,
    ) -> Result<Job, ApiError> {
        if name.is_empty() || name.len() > MAX_WAITPOINT_NAME {
            return Err(ApiError::WaitpointNotFound);
        }
        let job = self
            .store
            .get(id)
            .await?
            .filter(|j| j.user_id == user)
            .ok_or(ApiError::JobNotFound)?;
        self.settle(job, name, payload).await
    }

    /// The capability's door: the job and waitpoint name a `complete_url` token grants (then completed
    /// by [`Self::settle`], exactly as its owner would), or the one `401` for anything else.
    async fn holder(&self, token: &str) -> Result<(Job, String), ApiError> {
        let now = self.clock.now().div_euclid(1000);
        let (id, name) = open(&self.key, token, now).ok_or(ApiError::InvalidWaitpointToken)?;
        // A job gone (past its retention) is not told apart from a bad token.
        let job = self
            .store
            .get(&id)
            .await?
            .ok_or(ApiError::InvalidWaitpointToken)?;
        Ok((job, name))
    }

    /// The one completion both doors lead to: settles `name` of `job` with `payload`, then resumes it.
    async fn settle(&self, job: Job, name: &str, payload: Json) -> Result<Job, ApiError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(ApiError::WaitpointPayloadTooLarge);
        }
        let id = &job.job_id.clone();
        let wp = self
            .store
            .waitpoint(id, name)
            .await?
            .ok_or(ApiError::WaitpointNotFound)?;
        let now = self.clock.now();
        // A finished job (cancelled, say) never reads its waitpoints again: nothing to complete.
        if job.status.is_terminal() && !wp.is_settled() {
            return Err(ApiError::WaitpointClosed(job.status));
        }
        let completed = wp.complete(payload, now).map_err(closed)?;
        if let Some(first) = self.store.settle_waitpoint(id, &completed).await? {
            // Someone settled it between our read and our write: theirs stands.
            return Err(closed(first.open_at(now).expect_err("settled")));
        }
        tracing::info!(job_id = %id, waitpoint = name, "waitpoint completed");
        // Read afresh, after the waitpoint's write: either this read finds the job parked, or the worker
        // parks it after, and its own read of the waitpoint finds it completed. A copy read before the
        // write could miss both.
        match resume_parked(&*self.store, &self.queues, id, name, None, &self.clock).await? {
            Some(resumed) => Ok(resumed),
            // Not parked on it (yet): still being parked, whose worker resumes it; or cancelled meanwhile.
            None => Ok(self.store.get(id).await?.unwrap_or(job)),
        }
    }
}

fn closed(c: Closed) -> ApiError {
    match c {
        Closed::Completed => ApiError::WaitpointCompleted,
        Closed::TimedOut => ApiError::WaitpointTimedOut,
    }
}

/// What `GET /waitpoints/{token}` shows anyone holding the link: where the waitpoint and its job stand,
/// never the job's input, result or the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitpointView {
    pub job_id: JobId,
    pub name: String,
    /// `pending` (it can be completed now), `completed` or `timed_out` (its time has passed, whether or
    /// not the timeout was recorded yet).
    pub state: WaitState,
    /// When it times out (RFC 3339).
    pub expires_at: String,
    /// The job's status.
    pub job_status: JobStatus,
}

impl WaitpointView {
    fn at(job: &Job, wp: &Waitpoint, now: Millis) -> Self {
        let state = match wp.open_at(now) {
            Ok(()) => WaitState::Pending,
            Err(Closed::Completed) => WaitState::Completed,
            Err(Closed::TimedOut) => WaitState::TimedOut,
        };
        Self {
            job_id: job.job_id.clone(),
            name: wp.name.clone(),
            state,
            expires_at: rfc3339(wp.expires_at),
            job_status: job.effective_status(now),
        }
    }
}

/// A request body as a JSON payload: `application/json`, at most the body limit, valid JSON.
async fn payload(headers: &HeaderMap, body: Body) -> Result<Json, ApiError> {
    let bytes = read_body(headers, body).await?;
    Json::parse(std::str::from_utf8(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?)
        .map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// `202` with the job (queued again, or still being parked) once the payload is recorded.
pub(super) async fn complete(
    State(api): State<Arc<WaitpointApi>>,
    Caller(user): Caller,
    Path((raw_id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, JsonBody<JobView>), ApiError> {
    let id = JobId::parse(&raw_id)?;
    let payload = payload(&headers, body).await?;
    let job = api.complete(&user, &id, &name, payload).await?;
    Ok((
        StatusCode::ACCEPTED,
        JsonBody(JobView::at(job, api.clock.now())),
    ))
}

/// `POST /waitpoints/{token}`: `202` with the waitpoint's public view once the payload is recorded
/// (not the job's view: the link's holder is not its owner). The token is checked before the body is
/// read, so a bad link is `401` whatever it sends.
pub(super) async fn complete_by_token(
    State(api): State<Arc<WaitpointApi>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, JsonBody<WaitpointView>), ApiError> {
    let (job, name) = api.holder(&token).await?;
    let payload = payload(&headers, body).await?;
    let job = api.settle(job, &name, payload).await?;
    let view = show(&api, job, &name).await?;
    Ok((StatusCode::ACCEPTED, JsonBody(view)))
}

/// `GET /waitpoints/{token}`: the waitpoint's public view. Reads only.
pub(super) async fn show_by_token(
    State(api): State<Arc<WaitpointApi>>,
    Path(token): Path<String>,
) -> Result<JsonBody<WaitpointView>, ApiError> {
    let (job, name) = api.holder(&token).await?;
    Ok(JsonBody(show(&api, job, &name).await?))
}

async fn show(api: &WaitpointApi, job: Job, name: &str) -> Result<WaitpointView, ApiError> {
    let wp = api
        .store
        .waitpoint(&job.job_id, name)
        .await?
        .ok_or(ApiError::WaitpointNotFound)?;
    Ok(WaitpointView::at(&job, &wp, api.clock.now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> JobId {
        JobId::parse("01JF0000000000000000000000").unwrap()
    }

    #[test]
    fn a_capability_names_its_job_and_waitpoint_until_a_little_after_its_timeout() {
        let key = TokenKey::new(b"secret");
        let expires_at: Millis = 1_700_000_000_500;
        let t = capability(&key, &job(), "approve refund/ü", expires_at);
        assert!(
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)),
            "one URL-safe path segment: {t}"
        );
        let at = |secs: i64| open(&key, &t, secs);
        let last = 1_700_000_001 + LINK_GRACE.as_secs() as i64;
        assert_eq!(at(1_700_000_000), Some((job(), "approve refund/ü".into())));
        assert_eq!(at(last), Some((job(), "approve refund/ü".into())));
        assert_eq!(at(last + 1), None, "expired");
        assert_eq!(open(&TokenKey::new(b"other"), &t, 0), None, "forged");
    }

    #[test]
    fn a_capability_cannot_be_moved_to_another_job_or_waitpoint() {
        let key = TokenKey::new(b"secret");
        let t = capability(&key, &job(), "approve", 1_700_000_000_000);
        let (_, rest) = t.split_once('.').unwrap();
        let other = JobId::parse("01JF0000000000000000000001").unwrap();
        assert_eq!(
            open(&key, &format!("{other}.{rest}"), 0),
            None,
            "another job"
        );
        let (_, signed) = rest.split_once('.').unwrap();
        let renamed = format!("{}.{}.{signed}", job(), URL_SAFE_NO_PAD.encode("other"));
        assert_eq!(open(&key, &renamed, 0), None, "another waitpoint");
        for bad in [
            "",
            "x",
            "a.b.c.d",
            &format!("{}..1.x", job()),
            &t[..t.len() - 2],
        ] {
            assert_eq!(open(&key, bad, 0), None, "{bad:?}");
        }
    }

    #[test]
    fn a_delayed_start_has_no_complete_url() {
        let link = WaitpointLink {
            base: "https://api.example.com/".into(),
            key: TokenKey::new(b"k"),
        };
        let mut j = Job::new(
            crate::job::NewJob {
                user_id: "u".into(),
                kind: "echo".into(),
                input: Json::from(serde_json::json!(1)),
                max_attempts: 3,
                ttl_secs: 3600,
                callback_url: None,
                counted: false,
            },
            1_700_000_000_000,
        )
        .starting_at(1_700_000_060_000);
        let on = j.waiting_for.clone().unwrap();
        assert_eq!(link.url(&j, &on), None);
        j.started_at = Some(1_700_000_000_001);
        let url = link.url(&j, &on).unwrap();
        assert!(
            url.starts_with(&format!("https://api.example.com/waitpoints/{}.", j.job_id)),
            "{url}"
        );
    }
}
