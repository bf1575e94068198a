//! The HTTP API (API Gateway HTTP API, payload 2.0) over the store and queue ports.
//!
//! [`Api::handle`] takes the `lambda_http` request the deployed functions receive and routes it; `jobctl
//! dev` feeds it the same requests, so one piece of code answers both. Every error leaves through
//! [`ApiError`], the one place errors become a status and a `{"error":{"code","message"}}` body.

mod error;
mod status;
mod submit;

use std::sync::Arc;
use std::time::Duration;

use lambda_http::{Body, Request, RequestExt, Response, request::RequestContext};
use serde::Serialize;

pub use error::ApiError;
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
}

impl ApiSettings {
    pub fn from_config(c: &Config) -> Self {
        Self {
            max_attempts: c.max_attempts,
            job_ttl: c.job_ttl,
            resend_after: Duration::from_secs(60),
        }
    }
}

/// The API's dependencies, built once per cold start.
pub struct Api {
    store: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    registry: HandlerRegistry,
    settings: ApiSettings,
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
        }
    }

    /// Routes a request and answers it; never fails (errors become JSON error responses).
    pub async fn handle(&self, req: Request) -> Response<Body> {
        let path = req.raw_http_path().trim_end_matches('/').to_owned();
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let result = match (req.method().as_str(), segments.as_slice()) {
            ("POST", ["jobs"]) => self.submit(&req).await,
            ("GET", ["jobs", id]) => self.status(&req, id).await,
            (_, ["jobs"]) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
            (_, ["jobs", _]) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
            _ => Err(ApiError::RouteNotFound),
        };
        result.unwrap_or_else(|e| e.into_response())
    }
}

/// The caller's user id, from the API Gateway authorizer: the JWT `sub` claim, else the IAM caller.
/// Never from the request body. Without an authorizer every caller is `anonymous`.
fn caller(req: &Request) -> String {
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
    jwt_sub
        .or_else(iam)
        .unwrap_or_else(|| "anonymous".to_owned())
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
