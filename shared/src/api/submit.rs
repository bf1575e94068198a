//! `POST /jobs`: validate, store the job `queued`, enqueue its message, answer `202` at once.

use std::time::Duration;

use lambda_http::{Body, Request, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::MAX_BODY_BYTES;
use super::{Api, ApiError, callback, caller, json_response};
use sha2::{Digest, Sha256};

use crate::job::{ENQUEUE_FAILED, ErrorInfo, Job, MAX_INPUT_BYTES, NewJob};
use crate::now_millis;
use crate::queue::JobMessage;
use crate::store::{Created, Insert, KeyReservation, StoreError};

/// The body of `POST /jobs`. Unknown fields are rejected, so a misspelt field is an error, not a no-op.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub kind: String,
    pub input: Value,
    /// Where to deliver the outcome (see [`super::callback`]).
    #[serde(default)]
    pub callback_url: Option<String>,
}

/// How long an `Idempotency-Key` names its job: a retry within this window gets the same job.
pub const IDEMPOTENCY_TTL_SECS: i64 = 24 * 3600;

/// Retry-After when the queue is over its bound: about the depth cache's lifetime, when a new reading
/// can tell.
const QUEUE_FULL_RETRY_SECS: u64 = 5;
/// Retry-After when the caller is at the in-flight cap: a slot frees when one of their jobs ends.
const IN_FLIGHT_RETRY_SECS: u64 = 10;

impl Api {
    pub(super) async fn submit(&self, req: &Request) -> Result<Response<Body>, ApiError> {
        let user = caller(req)?;
        let key = idempotency_key(req)?;
        let body = parse_body(req)?;
        if !self.registry.contains(&body.kind) {
            return Err(ApiError::UnknownKind {
                kind: body.kind,
                known: self.registry.kinds().collect::<Vec<_>>().join(", "),
            });
        }
        let input_len = serde_json::to_vec(&body.input).map_or(usize::MAX, |v| v.len());
        if input_len > MAX_INPUT_BYTES {
            return Err(ApiError::InputTooLarge);
        }
        let callback_url = match &body.callback_url {
            Some(raw) => Some(
                callback::validate(raw, self.settings.dev_mode)
                    .await
                    .map_err(|e| ApiError::InvalidCallbackUrl(e.to_string()))?
                    .to_string(),
            ),
            None => None,
        };
        if let Some(bound) = self.settings.max_queue_depth
            && self.queue_depth().await.is_some_and(|d| d >= bound)
        {
            return Err(ApiError::QueueFull {
                retry_after: QUEUE_FULL_RETRY_SECS,
            });
        }
        let cap = self.settings.max_in_flight_per_user;
        let now = now_millis();
        let mut job = Job::new(
            NewJob {
                user_id: user.clone(),
                kind: body.kind,
                input: body.input,
                max_attempts: self.settings.max_attempts,
                ttl_secs: self.settings.job_ttl.as_secs() as i64,
                callback_url,
                counted: cap.is_some(),
            },
            now,
        );
        let mut how = Insert {
            key: None,
            in_flight_cap: cap,
            now_secs: now / 1000,
        };
        let request_hash = key.as_ref().map(|key| {
            let hash = sha256_hex(&[
                job.kind.as_bytes(),
                b"\0",
                job.input.to_string().as_bytes(),
                b"\0",
                job.callback_url.as_deref().unwrap_or("").as_bytes(),
            ]);
            job.idempotency_key = Some(key.clone());
            job.request_hash = Some(hash.clone());
            how.key = Some(KeyReservation {
                // Scoped per user: equal keys of two users never name the same job.
                scoped_key: sha256_hex(&[user.as_bytes(), b"\0", key.as_bytes()]),
                request_hash: hash.clone(),
                expires_at: now / 1000 + IDEMPOTENCY_TTL_SECS,
            });
            hash
        });
        match self.store.insert(&job, &how).await {
            Ok(Created::New) => self.enqueue(job).await,
            Err(StoreError::InFlightCapReached) => Err(ApiError::TooManyInFlight {
                cap: cap.unwrap_or_default(),
                retry_after: IN_FLIGHT_RETRY_SECS,
            }),
            Err(e) => Err(e.into()),
            Ok(Created::Existing {
                request_hash: held, ..
            }) if Some(&held) != request_hash.as_ref() => Err(ApiError::IdempotencyKeyReused),
            Ok(Created::Existing { job_id, .. }) => {
                let existing = self
                    .store
                    .get(&job_id)
                    .await?
                    .ok_or(ApiError::JobNotFound)?;
                self.replay(existing).await
            }
        }
    }

    /// A retried submit of an existing job. Its first submit may have failed to send the message (the
    /// client got a 503, the job says `enqueue_failed`) or crashed before sending (the job sits untouched
    /// in `queued`): then the message is sent now. Otherwise nothing is sent: the same job is the answer.
    async fn replay(&self, job: Job) -> Result<Response<Body>, ApiError> {
        let now = now_millis();
        if job.enqueue_failed() {
            let again = job.resubmit(now).expect("checked: enqueue failed");
            self.store.replace(&job, &again).await?;
            return self.enqueue(again).await.map(|r| with_status(r, 200));
        }
        if job.maybe_unsent(now, self.settings.resend_after.as_millis() as i64) {
            tracing::warn!(job_id = %job.job_id, "re-sending a job that may never have been enqueued");
            self.send(&job).await?;
        }
        Ok(accepted(&job, 200))
    }

    /// Sends a stored job's message and answers `202`. If the send fails, the job is marked
    /// `enqueue_failed` before the client gets its 503, so no job waits forever for a message; a retry
    /// with the same Idempotency-Key resubmits it.
    async fn enqueue(&self, job: Job) -> Result<Response<Body>, ApiError> {
        if let Err(e) = self.send(&job).await {
            let error = ErrorInfo {
                code: ENQUEUE_FAILED.into(),
                message: "the job could not be enqueued; submit it again".into(),
                retryable: true,
            };
            if let Ok(abandoned) = job.abandon(error, now_millis()) {
                let _ = self.store.replace(&job, &abandoned).await;
            }
            return Err(e);
        }
        tracing::info!(job_id = %job.job_id, kind = %job.kind, "job accepted");
        Ok(accepted(&job, 202))
    }

    async fn send(&self, job: &Job) -> Result<(), ApiError> {
        let message = JobMessage {
            job_id: job.job_id.clone(),
            kind: job.kind.clone(),
        };
        self.queue.send(&message.encode(), Duration::ZERO).await?;
        Ok(())
    }
}

fn with_status(mut resp: Response<Body>, status: u16) -> Response<Body> {
    *resp.status_mut() = http::StatusCode::from_u16(status).expect("a valid status");
    resp
}

/// `{job_id, status, status_url}` with `Location`.
fn accepted(job: &Job, status: u16) -> Response<Body> {
    let status_url = format!("/jobs/{}", job.job_id);
    let mut resp = json_response(
        status,
        &json!({"job_id": job.job_id, "status": job.effective_status(now_millis()), "status_url": status_url}),
    );
    resp.headers_mut().insert(
        "location",
        status_url
            .parse()
            .expect("a job id is a valid header value"),
    );
    resp
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The `Idempotency-Key` header, if any: 1-255 visible ASCII characters.
fn idempotency_key(req: &Request) -> Result<Option<String>, ApiError> {
    let Some(raw) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw.to_str().unwrap_or("");
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::InvalidRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters".into(),
        ));
    }
    Ok(Some(key.to_owned()))
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
