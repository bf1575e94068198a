//! API errors: each variant is one answer the client can act on. The one mapping to HTTP lives here.

use axum::Json as JsonBody;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::json;

use crate::error::BoxError;
use crate::job::{InvalidJobId, JobStatus, MAX_INPUT_BYTES};
use crate::queue::QueueError;
use crate::store::StoreError;

/// Largest request body accepted (the input limit plus room for the envelope).
pub const MAX_BODY_BYTES: usize = MAX_INPUT_BYTES + 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    InvalidJobId(#[from] InvalidJobId),
    #[error("unknown job kind {}; registered kinds: {known}", quote(kind))]
    UnknownKind { kind: String, known: String },
    #[error("request body exceeds {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    #[error("input exceeds {MAX_INPUT_BYTES} bytes when serialized")]
    InputTooLarge,
    /// The input does not decode into the kind's input type (serde's message; `GET /kinds` has the
    /// schema).
    #[error("invalid input for kind {}: {message}", quote(kind))]
    InvalidInput { kind: String, message: String },
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    #[error("the request body ended before its declared length")]
    TruncatedBody,
    #[error("invalid callback_url: {0}")]
    InvalidCallbackUrl(String),
    /// This deployment delivers no webhooks: a callback the API accepted would never be called.
    #[error(
        "callback_url is not supported by this deployment (it has no webhook deliveries queue); poll GET /jobs/{{id}}"
    )]
    CallbackUnsupported,
    /// A container-only kind, and this deployment has no container queue: nothing would run it.
    #[error(
        "this kind runs only on the container worker, and this deployment has none (no container queue: set the template's ContainerImage parameter)"
    )]
    NoContainerQueue,
    #[error("cursor is not one this API returned")]
    InvalidCursor,
    #[error("no authenticated caller: the request carries no authorizer identity")]
    Unauthenticated,
    #[error(
        "the events token is missing, invalid or expired: get a fresh events_url from GET /jobs/{{id}}"
    )]
    InvalidToken,
    /// A `complete_url` the stack did not sign, edited, expired, or of a job no longer stored: all alike.
    #[error(
        "the waitpoint link is invalid or expired: its owner can complete the waitpoint with POST /jobs/{{id}}/waitpoints/{{name}}"
    )]
    InvalidWaitpointToken,
    /// `run_at` / `delay_seconds` out of range or malformed.
    #[error("invalid start: {0}")]
    InvalidStart(String),
    #[error("job not found")]
    JobNotFound,
    /// Unknown, another user's, or expired: all alike, so ids cannot be probed.
    #[error("thread not found")]
    ThreadNotFound,
    /// The thread's policy is `reject` and a run is queued or going on it.
    #[error(
        "a run is queued or going on this thread (its policy is reject); send again once it ends"
    )]
    ThreadBusy,
    #[error("policy must be one of enqueue, reject, interrupt")]
    InvalidPolicy,
    /// `ttl_seconds` not a whole number within the bounds the message names.
    #[error("{0}")]
    InvalidTtl(String),
    #[error("the job has no waitpoint of that name")]
    WaitpointNotFound,
    #[error("the waitpoint was completed already; the first payload stands")]
    WaitpointCompleted,
    #[error("the waitpoint timed out before it was completed")]
    WaitpointTimedOut,
    #[error("the job is {0}: its waitpoints can no longer be completed")]
    WaitpointClosed(JobStatus),
    #[error(
        "a waitpoint payload may be at most {} bytes",
        crate::waitpoint::MAX_PAYLOAD_BYTES
    )]
    WaitpointPayloadTooLarge,
    #[error("the job is already {0} and cannot be cancelled")]
    JobFinished(JobStatus),
    #[error("the job queue is full; retry after {retry_after} s")]
    QueueFull { retry_after: u64 },
    #[error("you have {cap} jobs in flight, the most allowed; retry after {retry_after} s")]
    TooManyInFlight { cap: u32, retry_after: u64 },
    /// The caller spent their daily token budget: agent jobs are refused until the next UTC midnight.
    #[error(
        "you used {used} of your {limit} model tokens today; the budget resets at midnight UTC, in {retry_after} s"
    )]
    TokenBudgetExhausted {
        used: u64,
        limit: u64,
        retry_after: u64,
    },
    /// `GET /usage?day=` that is not a day, or not one kept.
    #[error("invalid day: {0}")]
    InvalidDay(#[from] crate::usage::InvalidDay),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("no such route")]
    RouteNotFound,
    #[error("the request took too long")]
    RequestTimeout,
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    /// A dependency failed in a way a retry may fix. The source is logged, never returned.
    #[error("service temporarily unavailable, retry later")]
    Unavailable {
        #[source]
        source: BoxError,
    },
    /// An operator endpoint (`jobctl dev` / `jobctl console` only) whose backend is not configured: the
    /// message says what to set.
    #[error("{0}")]
    OperatorUnavailable(String),
    /// A bug or corrupt data. The source is logged, never returned.
    #[error("internal error")]
    Internal {
        #[source]
        source: BoxError,
    },
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            Self::MalformedJson(_)
            | Self::InvalidRequest(_)
            | Self::InvalidJobId(_)
            | Self::InvalidCallbackUrl(_)
            | Self::TruncatedBody
            | Self::InvalidCursor
            | Self::InvalidDay(_)
            | Self::InvalidPolicy
            | Self::InvalidTtl(_) => 400,
            Self::Unauthenticated | Self::InvalidToken | Self::InvalidWaitpointToken => 401,
            Self::JobNotFound
            | Self::RouteNotFound
            | Self::WaitpointNotFound
            | Self::ThreadNotFound => 404,
            Self::RequestTimeout => 408,
            Self::MethodNotAllowed { .. } => 405,
            Self::IdempotencyKeyReused
            | Self::JobFinished(_)
            | Self::WaitpointCompleted
            | Self::WaitpointTimedOut
            | Self::ThreadBusy => 409,
            Self::WaitpointClosed(_) => 410,
            Self::QueueFull { .. }
            | Self::TooManyInFlight { .. }
            | Self::TokenBudgetExhausted { .. } => 429,
            Self::PayloadTooLarge | Self::InputTooLarge | Self::WaitpointPayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::UnknownKind { .. }
            | Self::InvalidInput { .. }
            | Self::CallbackUnsupported
            | Self::NoContainerQueue
            | Self::InvalidStart(_) => 422,
            Self::Internal { .. } => 500,
            Self::Unavailable { .. } | Self::OperatorUnavailable(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidRequest(_) => "invalid_request",
            Self::InvalidJobId(_) => "invalid_job_id",
            Self::UnknownKind { .. } => "unknown_kind",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InputTooLarge => "input_too_large",
            Self::InvalidInput { .. } => "invalid_input",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::TruncatedBody => "truncated_body",
            Self::InvalidCallbackUrl(_) => "invalid_callback_url",
            Self::CallbackUnsupported => "callback_unsupported",
            Self::NoContainerQueue => "no_container_worker",
            Self::InvalidCursor => "invalid_cursor",
            Self::Unauthenticated => "unauthenticated",
            Self::InvalidToken | Self::InvalidWaitpointToken => "invalid_token",
            Self::InvalidStart(_) => "invalid_start",
            Self::JobNotFound => "job_not_found",
            Self::ThreadNotFound => "thread_not_found",
            Self::ThreadBusy => "thread_busy",
            Self::InvalidPolicy => "invalid_policy",
            Self::InvalidTtl(_) => "invalid_ttl",
            Self::JobFinished(_) => "job_finished",
            Self::WaitpointNotFound => "waitpoint_not_found",
            Self::WaitpointCompleted => "waitpoint_completed",
            Self::WaitpointTimedOut => "waitpoint_timed_out",
            Self::WaitpointClosed(_) => "waitpoint_closed",
            Self::WaitpointPayloadTooLarge => "payload_too_large",
            Self::QueueFull { .. } => "queue_full",
            Self::TooManyInFlight { .. } => "too_many_jobs_in_flight",
            Self::TokenBudgetExhausted { .. } => "token_budget_exhausted",
            Self::InvalidDay(_) => "invalid_day",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::RouteNotFound => "route_not_found",
            Self::RequestTimeout => "request_timeout",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Unavailable { .. } => "service_unavailable",
            Self::OperatorUnavailable(_) => "operator_unavailable",
            Self::Internal { .. } => "internal_error",
        }
    }
}

/// How much of a client's own input an error message quotes: enough to recognise it, never a megabyte.
pub const QUOTE_MAX_CHARS: usize = 64;

/// `raw` quoted for an error message, cut to [`QUOTE_MAX_CHARS`] characters.
pub fn quote(raw: &str) -> String {
    let mut chars = raw.chars();
    let head: String = chars.by_ref().take(QUOTE_MAX_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}... ({} bytes)", raw.len())
    } else {
        format!("{head:?}")
    }
}

/// The longest error message returned: messages that embed parser errors can quote client input.
const MESSAGE_MAX_CHARS: usize = 512;

fn shorten(message: String) -> String {
    match message.char_indices().nth(MESSAGE_MAX_CHARS) {
        Some((cut, _)) => format!("{}...", &message[..cut]),
        None => message,
    }
}

/// The one place an error becomes an HTTP answer: status, `{"error":{"code","message"}}`, and the
/// headers some statuses need. Internals are logged here and never returned.
impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::Internal { source } => tracing::error!(error = %source, "internal error"),
            Self::Unavailable { source } => {
                tracing::warn!(error = %source, "dependency unavailable")
            }
            other => tracing::info!(code = other.code(), status, "request rejected"),
        }
        let body = json!({"error": {"code": self.code(), "message": shorten(self.to_string())}});
        let mut resp = (
            StatusCode::from_u16(status).expect("a valid status"),
            JsonBody(body),
        )
            .into_response();
        let headers = resp.headers_mut();
        let retry_after = match self {
            Self::MethodNotAllowed { allow } => {
                headers.insert("allow", HeaderValue::from_static(allow));
                None
            }
            Self::Unavailable { .. } => Some(1),
            Self::QueueFull { retry_after }
            | Self::TooManyInFlight { retry_after, .. }
            | Self::TokenBudgetExhausted { retry_after, .. } => Some(retry_after),
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.insert("retry-after", secs.into());
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt { source } => Self::Internal { source },
            StoreError::NotFound => Self::JobNotFound,
            other => Self::Unavailable {
                source: other.into(),
            },
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        Self::Unavailable { source: e.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(resp: Response) -> String {
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn internal_details_never_reach_the_body() {
        let resp = ApiError::Internal {
            source: "secret table name jobs-prod".into(),
        }
        .into_response();
        assert_eq!(resp.status(), 500);
        let body = body(resp).await;
        assert!(!body.contains("secret"), "{body}");
        assert!(body.contains(r#""code":"internal_error""#), "{body}");
    }

    #[test]
    fn unavailable_says_when_to_retry_and_405_says_what_is_allowed() {
        let resp = ApiError::Unavailable { source: "x".into() }.into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "1");
        let resp = ApiError::MethodNotAllowed { allow: "GET" }.into_response();
        assert_eq!(resp.status(), 405);
        assert_eq!(resp.headers()["allow"], "GET");
    }

    #[test]
    fn messages_quote_at_most_a_short_prefix_of_client_input() {
        let kind = "k".repeat(147 * 1024);
        let msg = ApiError::UnknownKind {
            kind,
            known: "echo".into(),
        }
        .to_string();
        assert!(msg.len() < 200, "{} bytes", msg.len());
        assert!(msg.contains("150528 bytes"), "{msg}");
        assert_eq!(quote("echo"), "\"echo\"");
    }
}
