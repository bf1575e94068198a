//! Operator endpoints for the console: queues, throughput, and the dead-letter queue. Served only by
//! `jobctl dev` and `jobctl console` — on loopback, unauthenticated — never by the deployed functions:
//! they act with the operator's own AWS credentials (or on `jobctl dev`'s embedded backend), over every
//! user's jobs, which no API caller may do.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ops/queues` | [`QueueList`]: each queue's depth, in flight, delayed, age of the oldest message |
//! | `GET /ops/throughput?minutes=60` | [`Throughput`]: jobs completed and failed per minute, oldest first |
//! | `GET /ops/dlq?limit=50` | [`DeadLetterList`]: the jobs DLQ's messages with what their jobs say |
//! | `POST /ops/dlq/redrive` `{"job_ids":[..]}` or `{}` (all) | [`Redriven`] |
//! | `POST /ops/dlq/purge` `{}` | [`Purged`] |
//!
//! Errors have the API's shape (`{"error":{"code","message"}}`, through [`ApiError`]): `400
//! invalid_request` / `malformed_json` / `invalid_job_id` for bad input, and `503 operator_unavailable`
//! when the operator's side is not configured (`jobctl console` without AWS credentials or stack
//! variables): its message says what to set.

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use jobkit::api::ApiError;
use jobkit::job::ErrorInfo;
use serde::{Deserialize, Serialize};

/// `GET /ops/queues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

/// One queue's backlog, approximately (SQS's own counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// `jobs`, `dlq`, `container`, `container_dlq` or `deliveries`.
    pub name: String,
    /// The SQS queue URL (absent for `jobctl dev`'s embedded queues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Visible, waiting to be received.
    pub depth: u64,
    /// Received and not yet deleted.
    pub in_flight: u64,
    /// Sent with a delay that has not passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed: Option<u64>,
    /// Age of the oldest message in seconds; `null` when unknown (an empty queue, or an SQS queue with no
    /// CloudWatch datapoint yet).
    pub oldest_age_seconds: Option<u64>,
}

/// `GET /ops/throughput?minutes=N` (1 to 1440, default 60).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throughput {
    /// One entry per minute of the window, oldest first, the current (partial) minute last.
    pub minutes: Vec<Minute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minute {
    /// The minute's start, RFC 3339 UTC.
    pub at: String,
    /// Jobs that completed in that minute.
    pub completed: u64,
    /// Jobs that failed for good in that minute (`failed` or `dead_letter`).
    pub failed: u64,
}

/// `GET /ops/dlq?limit=N` (1 to 1000, default 50).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterList {
    pub messages: Vec<DeadMessage>,
}

/// One DLQ message. Fields other than `message_id` are `null` when the body is not a job message or the
/// job record is gone (expired).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadMessage {
    pub message_id: String,
    pub job_id: Option<String>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub attempts: Option<u32>,
    pub error: Option<ErrorInfo>,
    /// When the job ended `dead_letter` (or last changed), RFC 3339.
    pub dead_at: Option<String>,
}

/// `POST /ops/dlq/redrive`'s body: the jobs to move back (all when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[serde(default)]
    pub job_ids: Option<Vec<String>>,
}

/// `POST /ops/dlq/redrive`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    pub redriven: usize,
}

/// `POST /ops/dlq/purge`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub purged: usize,
}

/// What the operator endpoints act on.
pub struct Ops {
    _private: (),
}

impl Ops {
    /// `jobctl dev`'s: its own backend (embedded, or an emulator's queues and table).
    pub fn from_backend(_backend: &jobkit::Backend) -> Self {
        Self { _private: () }
    }

    /// `jobctl console`'s: the stack the environment names (`JOBKIT_TABLE`, `JOBKIT_QUEUE_URL`,
    /// `JOBKIT_DLQ_URL`, optionally `JOBKIT_DELIVERIES_QUEUE_URL`, `JOBKIT_CONTAINER_QUEUE_URL`,
    /// `JOBKIT_CONTAINER_DLQ_URL`, `JOBKIT_METRICS_NAMESPACE`) with the operator's AWS credentials, at
    /// `endpoint_url` (an emulator) or on AWS. `Err` says what is missing, for [`router`]'s 503.
    #[allow(dead_code, reason = "jobctl console mounts it")]
    pub async fn from_env(_endpoint_url: Option<&str>) -> Result<Self, String> {
        Err("operator endpoints are not implemented yet".into())
    }
}

/// The operator routes (`/ops/...`). With `Err(why)` every route answers `503 operator_unavailable` with
/// `why`. Bind whatever serves it to loopback only: nothing here checks who calls.
pub fn router(ops: Result<Ops, String>) -> Router {
    let why: Arc<str> = match ops {
        Ok(_) => "operator endpoints are not implemented yet".into(),
        Err(why) => why.into(),
    };
    let unavailable = move || {
        let why = why.clone();
        async move { ApiError::OperatorUnavailable(why.to_string()) }
    };
    Router::new()
        .route("/ops/queues", get(unavailable.clone()))
        .route("/ops/throughput", get(unavailable.clone()))
        .route("/ops/dlq", get(unavailable.clone()))
        .route("/ops/dlq/redrive", post(unavailable.clone()))
        .route("/ops/dlq/purge", post(unavailable))
}
