//! `GET /jobs?status=&kind=&limit=&cursor=`: the caller's jobs, newest first, a page at a time.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json as JsonBody;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};

use super::status::rfc3339;
use super::{ApiError, Caller, StatusApi};
use crate::handler::validate_kind;
use crate::job::{ErrorInfo, Job, JobId, JobStatus, Millis, Progress};
use crate::store::ListQuery;

/// Page size when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;

/// A job in a listing: no input or result, so a full page stays far below Lambda's 6 MB response limit
/// (100 jobs with 128 KiB inputs would not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: JobId,
    pub kind: String,
    pub status: JobStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    pub submitted_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Once terminal: whether it completed (the queue-runner completion summary is `job_id`, `kind`,
    /// `success`, `pathway`, `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// The job whose completion started this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<JobId>,
    /// The next stage this job's completion started, and its jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<JobId>,
}

impl JobSummary {
    pub fn at(j: Job, now: Millis) -> Self {
        let status = j.effective_status(now);
        Self {
            success: status
                .is_terminal()
                .then_some(status == JobStatus::Completed),
            parent_id: j.parent_id,
            pathway: j.pathway,
            next: j.next,
            status,
            submitted_at: rfc3339(j.submitted_at),
            updated_at: rfc3339(j.updated_at),
            finished_at: j.finished_at.map(rfc3339),
            job_id: j.job_id,
            kind: j.kind,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            error: j.error,
            progress: j.progress,
            cancel_requested: j.cancel_requested,
        }
    }
}

/// One page: `next_cursor` is `null` on the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    pub next_cursor: Option<String>,
}

/// The query's parameters, each given at most once (a repeated one is ambiguous and refused), and only
/// those `known`.
pub(super) fn parameters(
    raw: Option<&str>,
    known: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !known.contains(&&*k) {
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter {}; expected {}",
                super::quote(&k),
                known.join(", ")
            )));
        }
        if params.insert(k.to_string(), v.into_owned()).is_some() {
            return Err(ApiError::InvalidRequest(format!(
                "query parameter {k} is given more than once"
            )));
        }
    }
    Ok(params)
}

/// The `limit` parameter: [`DEFAULT_PAGE`] when absent, else an integer from 1 to [`MAX_PAGE`].
pub(super) fn page_limit(params: &BTreeMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!("limit must be an integer from 1 to {MAX_PAGE}"))
            }),
    }
}

pub(super) async fn list(
    State(api): State<Arc<StatusApi>>,
    Caller(user): Caller,
    RawQuery(raw): RawQuery,
) -> Result<JsonBody<JobList>, ApiError> {
    let params = parameters(raw.as_deref(), &["status", "kind", "limit", "cursor"])?;
    let status = params
        .get("status")
        .map(|s| {
            s.parse::<JobStatus>().map_err(|_| {
                let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::InvalidRequest(format!("status must be one of {}", names.join(", ")))
            })
        })
        .transpose()?;
    // A malformed kind is refused; a well-formed one that is not registered lists nothing (this
    // function does not hold the registry, and jobs of a kind since removed stay listable).
    let kind = params
        .get("kind")
        .map(|k| {
            validate_kind(k)
                .map(|()| k.clone())
                .map_err(|e| ApiError::InvalidRequest(e.to_string()))
        })
        .transpose()?;
    let limit = page_limit(&params)?;
    // A cursor pages through the query that made it: the caller's jobs, with these filters. Without a
    // kind the binding is the one cursors had before the kind filter, so those stay valid.
    let filter = status.map_or("", |s| s.as_str());
    let mut binding = vec![user.as_str(), filter];
    binding.extend(kind.as_deref());
    let after = params
        .get("cursor")
        .map(|c| api.cursors.decode(c, &binding))
        .transpose()?;
    // One more than asked tells whether another page exists.
    let query = ListQuery {
        status,
        kind: kind.clone(),
        limit: limit + 1,
        after,
    };
    let mut jobs = api.store.list(&user, &query).await?;
    let next_cursor = (jobs.len() > limit).then(|| {
        jobs.truncate(limit);
        let last = jobs.last().expect("limit is at least 1");
        api.cursors
            .encode(last.submitted_at, &last.job_id, &binding)
    });
    let now = api.clock.now();
    Ok(JsonBody(JobList {
        jobs: jobs.into_iter().map(|j| JobSummary::at(j, now)).collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_unknown_parameters_are_refused() {
        let known = ["status", "limit", "cursor"];
        assert!(parameters(Some("limit=1&status=queued"), &known).is_ok());
        for bad in [
            "limit=1&limit=abc",
            "status=running&status=completed",
            "sort=asc",
        ] {
            assert!(
                matches!(
                    parameters(Some(bad), &known),
                    Err(ApiError::InvalidRequest(_))
                ),
                "{bad}"
            );
        }
    }
}
