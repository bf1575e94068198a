//! `POST /jobs/{id}/waitpoints/{name}`: complete a parked job's waitpoint with a JSON payload and resume
//! the job (see [`crate::waitpoint`]). Served by the submit function: it is the one allowed to send job
//! messages.
//!
//! Two writes, in this order: the waitpoint `pending -> completed` (conditional: the first completion's
//! payload stands, a second is `409`), then the job `waiting -> queued` and its message
//! ([`resume_parked`]). A crash between them leaves a parked job with a completed waitpoint, which the
//! sweep resumes; a completion that lands while the worker is still parking the job finds it running and
//! leaves the resume to that worker, which reads the waitpoint again right after parking.

use std::sync::Arc;

use axum::Json as JsonBody;
use axum::body::Body;
use axum::extract::{Path, State};
use http::{HeaderMap, StatusCode};

use super::submit::read_body;
use super::{ApiError, Caller, JobView};
use crate::clock::SharedClock;
use crate::job::{Job, JobId};
use crate::json::Json;
use crate::park::resume_parked;
use crate::queue::{JobSender, Lanes};
use crate::store::CompleteStore;
use crate::waitpoint::{Closed, MAX_PAYLOAD_BYTES, MAX_WAITPOINT_NAME};

/// The completion route's dependencies: the job and its waitpoints, and the queues to resume it on.
pub struct WaitpointApi {
    store: Arc<dyn CompleteStore>,
    queues: Lanes<dyn JobSender>,
    clock: SharedClock,
}

impl WaitpointApi {
    pub fn new(
        store: Arc<dyn CompleteStore>,
        queues: Lanes<dyn JobSender>,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            queues,
            clock,
        }
    }

    /// Completes waitpoint `name` of job `id` (owned by `user`) with `payload`, and resumes the job if it
    /// is parked on it. Returns the job as it is afterwards.
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
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(ApiError::WaitpointPayloadTooLarge);
        }
        let job = self
            .store
            .get(id)
            .await?
            .filter(|j| j.user_id == user)
            .ok_or(ApiError::JobNotFound)?;
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

/// `202` with the job (queued again, or still being parked) once the payload is recorded.
pub(super) async fn complete(
    State(api): State<Arc<WaitpointApi>>,
    Caller(user): Caller,
    Path((raw_id, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, JsonBody<JobView>), ApiError> {
    let id = JobId::parse(&raw_id)?;
    let bytes = read_body(&headers, body).await?;
    let payload = Json::parse(
        std::str::from_utf8(&bytes).map_err(|e| ApiError::MalformedJson(e.to_string()))?,
    )
    .map_err(|e| ApiError::MalformedJson(e.to_string()))?;
    let job = api.complete(&user, &id, &name, payload).await?;
    Ok((
        StatusCode::ACCEPTED,
        JsonBody(JobView::at(job, api.clock.now())),
    ))
}
