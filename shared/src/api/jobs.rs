//! `GET /jobs?status=&limit=&cursor=`: the caller's jobs, newest first, a page at a time.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;

use super::status::rfc3339;
use super::{Api, ApiError, caller, json_response};
use crate::job::{ErrorInfo, Job, JobId, JobStatus, Millis, Progress};
use crate::store::ListQuery;

/// Page size when `limit` is not given, and the most a page may hold.
pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;

/// A job in a listing: no input or result, so a full page stays far below Lambda's 6 MB response limit
/// (100 jobs with 128 KiB inputs would not).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobSummary {
    pub job_id: JobId,
    pub kind: String,
    pub status: JobStatus,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    pub submitted_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

impl JobSummary {
    pub fn at(j: Job, now: Millis) -> Self {
        Self {
            status: j.effective_status(now),
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
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
    pub next_cursor: Option<String>,
}

impl Api {
    pub(super) async fn list(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let user = caller(req)?;
        let params = req.query_string_parameters();
        if let Some((name, _)) = params
            .iter()
            .find(|(k, _)| !matches!(*k, "status" | "limit" | "cursor"))
        {
            return Err(ApiError::InvalidRequest(format!(
                "unknown query parameter {name:?}; expected status, limit, cursor"
            )));
        }
        let status = params
            .first("status")
            .map(|s| {
                s.parse::<JobStatus>().map_err(|_| {
                    let names: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
                    ApiError::InvalidRequest(format!("status must be one of {}", names.join(", ")))
                })
            })
            .transpose()?;
        let limit = match params.first("limit") {
            None => DEFAULT_PAGE,
            Some(raw) => raw
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE).contains(n))
                .ok_or_else(|| {
                    ApiError::InvalidRequest(format!(
                        "limit must be an integer from 1 to {MAX_PAGE}"
                    ))
                })?,
        };
        let after = params.first("cursor").map(decode_cursor).transpose()?;
        // One more than asked tells whether another page exists.
        let query = ListQuery {
            status,
            limit: limit + 1,
            after,
        };
        let mut jobs = self.store.list(&user, &query).await?;
        let next_cursor = (jobs.len() > limit).then(|| {
            jobs.truncate(limit);
            let last = jobs.last().expect("limit is at least 1");
            encode_cursor(last.submitted_at, &last.job_id)
        });
        let now = crate::now_millis();
        let page = JobList {
            jobs: jobs.into_iter().map(|j| JobSummary::at(j, now)).collect(),
            next_cursor,
        };
        Ok(json_response(200, &page))
    }
}

/// The position after which the next page starts, opaque to clients. It names no user: a cursor only
/// ever pages through the caller's own jobs.
fn encode_cursor(submitted_at: Millis, id: &JobId) -> String {
    URL_SAFE_NO_PAD.encode(format!("{submitted_at}.{id}"))
}

fn decode_cursor(raw: &str) -> Result<(Millis, JobId), ApiError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(raw)
        .map_err(|_| ApiError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| ApiError::InvalidCursor)?;
    let (t, id) = text.split_once('.').ok_or(ApiError::InvalidCursor)?;
    let t = t.parse().map_err(|_| ApiError::InvalidCursor)?;
    let id = JobId::parse(id).map_err(|_| ApiError::InvalidCursor)?;
    Ok((t, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let id = JobId::generate(1_700_000_000_000);
        let c = encode_cursor(1_700_000_000_000, &id);
        assert_eq!(decode_cursor(&c).unwrap(), (1_700_000_000_000, id));
        for bad in [
            "",
            "!!",
            "bm90LWEtY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("12.notanid"),
        ] {
            assert!(
                matches!(decode_cursor(bad), Err(ApiError::InvalidCursor)),
                "{bad}"
            );
        }
    }
}
