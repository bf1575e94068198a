//! `GET /jobs/{id}`: the job as its owner may see it; `DELETE /jobs/{id}`: cancel it.

use chrono::{DateTime, SecondsFormat, Utc};
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use serde_json::Value;

use super::JobSummary;
use super::{Api, ApiError, caller, json_response};
use crate::job::{Job, JobId, Millis};
use crate::store::StoreError;

/// The public form of a job: its [`JobSummary`] (what lists show) plus its payloads. No lease internals;
/// times as RFC 3339.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobView {
    #[serde(flatten)]
    pub summary: JobSummary,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

pub(super) fn rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl JobView {
    /// The view of `j` at `now` (see [`Job::effective_status`]).
    pub fn at(mut j: Job, now: Millis) -> Self {
        Self {
            input: std::mem::take(&mut j.input),
            result: j.result.take(),
            warnings: std::mem::take(&mut j.warnings),
            callback_url: j.callback_url.take(),
            started_at: j.started_at.map(rfc3339),
            summary: JobSummary::at(j, now),
        }
    }
}

/// Cancel writes retried when a worker's heartbeat got in between.
const CANCEL_ATTEMPTS: usize = 5;

impl Api {
    pub(super) async fn status(
        &self,
        req: &Request,
        raw_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        let job = self.owned(req, raw_id).await?;
        Ok(json_response(200, &JobView::at(job, crate::now_millis())))
    }

    /// `202` with the job once cancelled (or, if running, once asked to stop); `200` if that had
    /// already happened; `409` for a finished job.
    pub(super) async fn cancel(
        &self,
        req: &Request,
        raw_id: &str,
    ) -> Result<Response<Body>, ApiError> {
        for _ in 0..CANCEL_ATTEMPTS {
            let job = self.owned(req, raw_id).await?;
            let now = crate::now_millis();
            let (what, next) = job
                .cancel(now)
                .map_err(|_| ApiError::JobFinished(job.effective_status(now)))?;
            let Some(next) = next else {
                return Ok(json_response(200, &JobView::at(job, now)));
            };
            match self.store.replace(&job, &next).await {
                Ok(()) => {
                    tracing::info!(job_id = %next.job_id, outcome = ?what, "cancel requested");
                    return Ok(json_response(202, &JobView::at(next, now)));
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::Unavailable {
            source: "the job kept changing while being cancelled".into(),
        })
    }

    /// The caller's job `raw_id`. Another user's job answers exactly like a missing one, so ids cannot
    /// be probed.
    async fn owned(&self, req: &Request, raw_id: &str) -> Result<Job, ApiError> {
        let user = caller(req)?;
        let id = JobId::parse(raw_id)?;
        self.store
            .get(&id)
            .await?
            .filter(|j| j.user_id == user)
            .ok_or(ApiError::JobNotFound)
    }
}
