//! The HTTP API (API Gateway HTTP API, payload 2.0) over the store and queue ports.
//!
//! [`Api::handle`] takes the `lambda_http` request the deployed functions receive and routes it; `jobctl
//! dev` feeds it the same requests, so one piece of code answers both. Every error leaves through
//! [`ApiError`], the one place errors become a status and a `{"error":{"code","message"}}` body.

mod callback;
mod error;
mod jobs;
mod status;
mod submit;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lambda_http::{Body, Request, RequestExt, Response, request::RequestContext};
use serde::Serialize;

pub use callback::{CallbackError, is_public_ip};
pub use error::ApiError;
pub use jobs::{JobList, JobSummary};
pub use status::JobView;
pub use submit::SubmitRequest;

use crate::config::Config;
use crate::handler::HandlerRegistry;
use crate::queue::JobQueue;
use crate::store::JobStore;

/// Limits the API enforces; from [`Config`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    pub max_attempts: u32,
    pub job_ttl: Duration,
    /// A queued job untouched this long after submit is presumed to have lost its message; a retried
    /// submit with its Idempotency-Key sends it again. Far above a send's latency: a duplicate message
    /// costs one skipped delivery, a lost one the whole job.
    pub resend_after: Duration,
    /// Submit answers 429 while the queue holds this many messages or more (`None`: no bound).
    pub max_queue_depth: Option<u64>,
    /// Submit answers 429 while the caller has this many jobs in flight (`None`: no cap).
    pub max_in_flight_per_user: Option<u32>,
    /// Local development (`jobctl dev` only, never set from the environment): callback URLs may be
    /// `http` to loopback.
    pub dev_mode: bool,
}

impl ApiSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            max_attempts: c.max_attempts,
            job_ttl: c.job_ttl,
            resend_after: Duration::from_secs(60),
            max_queue_depth: (c.max_queue_depth > 0).then_some(c.max_queue_depth),
            max_in_flight_per_user: (c.max_in_flight_per_user > 0)
                .then_some(c.max_in_flight_per_user),
            dev_mode: false,
        }
    }
}

/// How long one instance trusts a queue depth it read: GetQueueAttributes on every submit would double
/// the API's SQS calls, and the number is approximate anyway.
const DEPTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// The API's dependencies, built once per cold start.
pub struct Api {
    store: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    registry: HandlerRegistry,
    settings: ApiSettings,
    /// The last queue depth read, and when.
    depth: Mutex<Option<(Instant, u64)>>,
}

impl Api {
    pub fn new(
        store: Arc<dyn JobStore>,
        queue: Arc<dyn JobQueue>,
        registry: HandlerRegistry,
        settings: ApiSettings,
    ) -> Self {
        Self {
            store,
            queue,
            registry,
            settings,
            depth: Mutex::new(None),
        }
    }

    /// Routes a request and answers it; never fails (errors become JSON error responses).
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let path = req.raw_http_path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let result = match (req.method().as_str(), segments.as_slice()) {
            ("POST", ["jobs"]) => self.submit(&req).await,
            ("GET", ["jobs"]) => self.list(&req).await,
            ("GET", ["jobs", id]) => self.status(&req, id).await,
            ("DELETE", ["jobs", id]) => self.cancel(&req, id).await,
            (_, ["jobs"]) => Err(ApiError::MethodNotAllowed { allow: "GET, POST" }),
            (_, ["jobs", _]) => Err(ApiError::MethodNotAllowed {
                allow: "GET, DELETE",
            }),
            _ => Err(ApiError::RouteNotFound),
        };
        result.unwrap_or_else(|e| e.into_response())
    }

    /// The jobs queue's approximate depth, read at most every [`DEPTH_CACHE_TTL`] per instance. `None`
    /// when it cannot be read: backpressure then fails open (the send itself reports an outage).
    async fn queue_depth(&self) -> Option<u64> {
        let cached = *self.depth.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, depth)) = cached
            && at.elapsed() < DEPTH_CACHE_TTL
        {
            return Some(depth);
        }
        match self.queue.depth().await {
            Ok(depth) => {
                *self.depth.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), depth));
                Some(depth)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the queue depth; not applying backpressure");
                None
            }
        }
    }
}

/// The caller's user id, from the API Gateway authorizer: the JWT `sub` claim, else the IAM caller.
/// Never from the request body or headers. A request with neither is refused: every deployed route has
/// an authorizer (template.yaml), and `jobctl dev` plays one, so none arrives without an identity unless
/// the API is misconfigured — and then no one should share an anonymous bucket of jobs.
fn caller(req: &Request) -> Result<String, ApiError> {
    let authorizer = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.authorizer.as_ref(),
        _ => None,
    };
    let jwt_sub = authorizer
        .and_then(|a| a.jwt.as_ref())
        .and_then(|j| j.claims.get("sub"))
        .filter(|s| !s.is_empty())
        .cloned();
    let iam = || {
        authorizer
            .and_then(|a| a.iam.as_ref())
            .and_then(|i| i.user_arn.clone().or_else(|| i.caller_id.clone()))
    };
    jwt_sub.or_else(iam).ok_or(ApiError::Unauthenticated)
}

/// A JSON response.
fn json_response(status: u16, body: &impl Serialize) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::Text(
            serde_json::to_string(body).expect("response bodies always serialize"),
        ))
        .expect("static response parts are valid")
}
