//! `POST /jobs`: validate, store the job `queued`, enqueue its message, answer `202` at once.

use std::time::Duration;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::MAX_BODY_BYTES;
use super::{Api, ApiError, caller, json_response};
use crate::job::{ErrorInfo, Job, MAX_INPUT_BYTES, NewJob};
use crate::now_millis;
use crate::queue::JobMessage;

/// The body of `POST /jobs`. Unknown fields are rejected, so a misspelt field is an error, not a no-op.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub kind: String,
    pub input: Value,
}

impl Api {
    pub(super) async fn submit(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let body = parse_body(req)?;
        if !self.registry.contains(&body.kind) {
            return Err(ApiError::UnknownKind {
                kind: body.kind,
                known: self.registry.kinds().collect::<Vec<_>>().join(", "),
            });
        }
        if serde_json::to_vec(&body.input).map_or(usize::MAX, |v| v.len()) > MAX_INPUT_BYTES {
            return Err(ApiError::InputTooLarge);
        }
        let now = now_millis();
        let job = Job::new(
            NewJob {
                user_id: caller(req),
                kind: body.kind,
                input: body.input,
                max_attempts: self.settings.max_attempts,
                ttl_secs: self.settings.job_ttl.as_secs() as i64,
            },
            now,
        );
        self.store.create(&job).await?;
        let message = JobMessage {
            job_id: job.job_id.clone(),
            kind: job.kind.clone(),
        };
        if let Err(e) = self.queue.send(&message.encode(), Duration::ZERO).await {
            // The client is told the job was not accepted; record the same, so no job sits `queued`
            // forever without a message.
            let error = ErrorInfo {
                code: "enqueue_failed".into(),
                message: "the job could not be enqueued; submit it again".into(),
                retryable: true,
            };
            if let Ok(abandoned) = job.abandon(error, now_millis()) {
                let _ = self.store.replace(&abandoned).await;
            }
            return Err(e.into());
        }
        tracing::info!(job_id = %job.job_id, kind = %job.kind, "job accepted");
        let status_url = format!("/jobs/{}", job.job_id);
        let mut resp = json_response(
            202,
            &json!({"job_id": job.job_id, "status": job.status, "status_url": status_url}),
        );
        resp.headers_mut().insert(
            "location",
            status_url
                .parse()
                .expect("a job id is a valid header value"),
        );
        Ok(resp)
    }
}

/// Content type, size and JSON shape of a submit body.
fn parse_body(req: &Request) -> Result<SubmitRequest, ApiError> {
    let is_json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest(
            "request body is empty; expected {\"kind\", \"input\"}".into(),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        if e.is_data() {
            ApiError::InvalidRequest(format!("invalid job request: {e}"))
        } else {
            ApiError::MalformedJson(e.to_string())
        }
    })
}
