//! The HTTP API as an axum [`Router`]: submit, status, list and cancel over the store and queue ports.
//!
//! The deployed functions serve it through `lambda_http` ([`crate::lambda`]), `jobctl dev` through
//! `axum::serve`: the same code answers both. Each function serves only its own routes, built from a
//! port that is exactly what its IAM policy allows: [`SubmitApi`] (`POST /jobs`, and `GET /kinds`: the
//! registry it checks submits against) and [`StatusApi`]
//! (`GET /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}`, `GET /jobs/{id}/steps`, `GET /usage`); [`router`] merges the
//! two for local runs.
//!
//! Who calls is an [`Identity`] in the request's extensions, put there by whatever authenticated the
//! request — API Gateway's authorizer on Lambda, `jobctl dev`'s stand-in locally — and read by the
//! [`Caller`] extractor. Every error leaves through [`ApiError`], the one place errors become a status
//! and a `{"error":{"code","message"}}` body; a middleware gives the same shape to the answers of the
//! tower layers (body limit, timeout) and of axum itself.

pub mod cors;
mod cursor;
mod error;
mod events;
mod jobs;
mod kinds;
pub mod mcp;
mod status;
mod steps;
mod submit;
mod threads;
mod token;
mod usage;
mod waitpoints;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::request::Parts;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use crate::net::{CallbackError, is_public_ip};
pub use cursor::CursorKey;
pub use error::{ApiError, MAX_BODY_BYTES, quote};
pub use events::{EventsApi, EventsLink, StreamSettings, TOKEN_TTL};
pub use jobs::{JobList, JobSummary};
pub use kinds::KindList;
pub use status::{JobView, SettledView, StatusApi, WaitingForView, WebhookView, rfc3339};
pub use steps::{StepError, StepList, StepView};
pub use submit::{SubmitApi, SubmitRequest};
pub use threads::{MessageView, ThreadPage, ThreadView};
pub use token::{Purpose, TokenKey};
pub use usage::UsageView;
pub use waitpoints::{
    LINK_GRACE, WaitpointApi, WaitpointLink, WaitpointView, capability, capability_until,
};

use crate::config::Config;

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
    /// Whether webhooks are delivered (a deliveries queue is configured; `Backend::submit_api` sets it
    /// from the backend); without them `callback_url` is refused.
    pub webhooks: bool,
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
            webhooks: c.deliveries_queue_url.is_some(),
            dev_mode: false,
        }
    }
}

/// How long one request may take end to end (a slow client included) before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The verified caller of a request, put in its extensions by the authenticating layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity(pub String);

/// The caller's user id: from [`Identity`], never from the request body or headers. A request without
/// one is refused: every deployed route that reads it has an authorizer (template.yaml; the
/// capability routes `/waitpoints/{token}` have none and never read it), and `jobctl dev` plays one,
/// so none arrives without an identity unless the API is misconfigured — and then no one should share an
/// anonymous bucket of jobs.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Identity>()
            .filter(|i| !i.0.is_empty())
            .map(|i| Caller(i.0.clone()))
            .ok_or(ApiError::Unauthenticated)
    }
}

/// The submit function's routes: `POST /jobs`, `POST /jobs/{id}/waitpoints/{name}` and
/// `GET|POST /waitpoints/{token}` (it may send job messages, which resuming a parked job needs).
pub fn submit_routes(api: Arc<SubmitApi>, waitpoints: Arc<WaitpointApi>) -> Router {
    with_layers(submit_only(api).merge(waitpoints_only(waitpoints)))
}

/// The submit function's routes and `POST /mcp` (see [`mcp`]): its tools wrap the submit, status and
/// waitpoint routes, so the function that serves it holds the status port too (template.yaml gives the
/// submit function the status function's reads for that).
pub fn submit_and_mcp_routes(
    api: Arc<SubmitApi>,
    status: Arc<StatusApi>,
    waitpoints: Arc<WaitpointApi>,
) -> Router {
    let mcp = mcp_only(api.clone(), status, waitpoints.clone());
    with_layers(
        submit_only(api)
            .merge(waitpoints_only(waitpoints))
            .merge(mcp),
    )
}

/// `POST /mcp` over the whole API (its layers included, so a tool is answered exactly as its route).
fn mcp_only(
    submit: Arc<SubmitApi>,
    status: Arc<StatusApi>,
    waitpoints: Arc<WaitpointApi>,
) -> Router {
    let kinds = submit.registry().describe();
    let api = with_layers(
        status_only(status)
            .merge(submit_only(submit))
            .merge(waitpoints_only(waitpoints)),
    );
    mcp::routes(api, kinds)
}

fn waitpoints_only(api: Arc<WaitpointApi>) -> Router {
    Router::new()
        .route("/jobs/{id}/waitpoints/{name}", post(waitpoints::complete))
        // No identity read: the token is the authority (template.yaml gives these no authorizer).
        .route(
            "/waitpoints/{token}",
            get(waitpoints::show_by_token).post(waitpoints::complete_by_token),
        )
        .with_state(api)
}

fn submit_only(api: Arc<SubmitApi>) -> Router {
    let router = route(Router::new(), "/jobs", post(submit::submit));
    let router = route(router, "/threads", post(threads::create));
    let router = route(router, "/threads/{id}", get(threads::show));
    route(router, "/kinds", get(kinds::list)).with_state(api)
}

/// Routes `path` and `path/`: a trailing slash names the same resource (openapi.yaml says so).
fn route<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    path: &str,
    method: axum::routing::MethodRouter<S>,
) -> Router<S> {
    router
        .route(&format!("{path}/"), method.clone())
        .route(path, method)
}

/// Counts every error answer to `POST /jobs` by status, the tower layers' own (body limit, timeout)
/// included: this runs outside them.
async fn count_rejected_submits(req: Request, next: Next) -> Response {
    let submit = req.method() == http::Method::POST && req.uri().path() == "/jobs";
    let resp = next.run(req).await;
    if submit && resp.status().as_u16() >= 400 {
        crate::observe::rejected(resp.status().as_u16());
    }
    resp
}

/// The status function's routes (reads, lists, cancels).
pub fn status_routes(api: Arc<StatusApi>) -> Router {
    with_layers(status_only(api))
}

/// The events function's route, `GET /jobs/{id}/events` (see [`events`]): outside the request timeout
/// (a stream stays open for minutes) and without a fallback, so it merges into [`router`] locally.
pub fn events_routes(api: Arc<EventsApi>) -> Router {
    route(
        Router::new(),
        "/jobs/{id}/events",
        get(events::events)
            .fallback(|| async { ApiError::MethodNotAllowed { allow: "GET" } })
            .with_state(api),
    )
    .layer(middleware::from_fn(json_errors))
    .layer(middleware::from_fn(cors::answer_preflights))
    .layer(TraceLayer::new_for_http())
}

/// Both: the whole API and `POST /mcp`, for `jobctl dev` and tests.
pub fn router(
    submit: Arc<SubmitApi>,
    status: Arc<StatusApi>,
    waitpoints: Arc<WaitpointApi>,
) -> Router {
    let mcp = mcp_only(submit.clone(), status.clone(), waitpoints.clone());
    with_layers(
        status_only(status)
            .merge(submit_only(submit))
            .merge(waitpoints_only(waitpoints))
            .merge(mcp),
    )
}

fn status_only(api: Arc<StatusApi>) -> Router {
    let router = route(Router::new(), "/jobs", get(jobs::list));
    let router = route(router, "/jobs/{id}/steps", get(steps::list));
    let router = route(router, "/usage", get(usage::usage));
    route(
        router,
        "/jobs/{id}",
        get(status::status).delete(status::cancel),
    )
    .with_state(api)
}

/// What every router gets: `204` to any `OPTIONS` (a CORS preflight: see [`cors`]), 404/405 in the
/// API's words, the body limit (enforced while the body streams:
/// a too-long Content-Length is refused before a byte is read), a request timeout, tracing, and JSON
/// error bodies for the layers' own answers.
fn with_layers(routes: Router) -> Router {
    routes
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(|| async { ApiError::RouteNotFound })
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(middleware::from_fn(refuse_oversize))
        .layer(TimeoutLayer::with_status_code(
            http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        // Outside the limit and the timeout (layers added later run first), so their answers pass it.
        .layer(middleware::from_fn(json_errors))
        .layer(middleware::from_fn(count_rejected_submits))
        .layer(middleware::from_fn(cors::answer_preflights))
        .layer(TraceLayer::new_for_http())
}

/// The most of an oversize body read (and thrown away) before answering 413, and for how long.
const DISCARD_BYTES: u64 = 8 << 20;
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// A body announced larger than the limit is refused unread, but first read to its end and thrown
/// away, when that is at most [`DISCARD_BYTES`] within [`DISCARD_TIME`]: a server that answers and
/// closes while the client still sends resets the connection, and the client sees a broken pipe
/// instead of the 413. Past either bound the connection is closed anyway (a client sending more is
/// not owed our bandwidth). Nothing read is kept.
async fn refuse_oversize(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(announced) = announced.filter(|n| *n > MAX_BODY_BYTES as u64) else {
        return next.run(req).await;
    };
    if announced <= DISCARD_BYTES {
        let mut body = req.into_body();
        let _ = tokio::time::timeout(DISCARD_TIME, async {
            use http_body_util::BodyExt;
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    }
    ApiError::PayloadTooLarge.into_response()
}

async fn method_not_allowed(uri: http::Uri) -> ApiError {
    let path = uri.path().trim_end_matches('/');
    let allow = if path == "/jobs" {
        "GET, POST"
    } else if path == "/kinds"
        || path == "/usage"
        || path.split('/').count() == 4 && path.ends_with("/steps")
        || path.starts_with("/threads/")
    {
        "GET"
    } else if path == "/threads" {
        "POST"
    } else if path.starts_with("/waitpoints/") {
        "GET, POST"
    } else if path.contains("/waitpoints/") || path == mcp::PATH {
        "POST"
    } else {
        "GET, DELETE"
    };
    ApiError::MethodNotAllowed { allow }
}

/// Gives answers made outside [`ApiError`] (the body limit's 413, the timeout's 408) the API's error
/// shape, so clients parse one format.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status().as_u16() < 400 || is_json {
        return resp;
    }
    let error = match resp.status().as_u16() {
        413 => ApiError::PayloadTooLarge,
        408 => ApiError::RequestTimeout,
        404 => ApiError::RouteNotFound,
        415 => ApiError::UnsupportedMediaType,
        status @ 400..500 => ApiError::InvalidRequest(format!("malformed request ({status})")),
        _ => ApiError::Internal {
            source: format!("unexpected plain answer {}", resp.status()).into(),
        },
    };
    error.into_response()
}

/// The dev-mode stand-in for an authorizer (`jobctl dev` only): every caller is `local`, or with
/// `user_header`, whoever `X-User-Id` names (visible ASCII, 1-128 characters, given once).
pub async fn dev_identity(user_header: bool, mut req: Request, next: Next) -> Response {
    let values: Vec<_> = if user_header {
        req.headers().get_all("x-user-id").iter().collect()
    } else {
        Vec::new()
    };
    let user = match values.as_slice() {
        [] => "local".to_owned(),
        [v] => match v.to_str() {
            Ok(u) if (1..=128).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_graphic()) => {
                u.to_owned()
            }
            _ => {
                return ApiError::Unauthenticated.into_response();
            }
        },
        _ => {
            return ApiError::InvalidRequest("X-User-Id must be given at most once".into())
                .into_response();
        }
    };
    req.extensions_mut().insert(Identity(user));
    next.run(req).await
}
