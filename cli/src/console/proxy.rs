//! `jobctl console`'s forwarding: the page's API calls go to the deployed API with the caller's token
//! added; a job's stream goes to the events function its `events_url` names. The browser sees one
//! origin (so the page's `connect-src 'self'` holds) and never sees the token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The largest request body forwarded: above the API's own limit, which then answers in its words.
const MAX_FORWARDED_BODY: usize = 1024 * 1024;

/// Request headers the page may send on: what the API reads. Cookies, `Origin` and the like stay here.
const REQUEST_HEADERS: [HeaderName; 4] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("last-event-id"),
];

/// Answer headers passed back.
const RESPONSE_HEADERS: [HeaderName; 5] = [
    header::CONTENT_TYPE,
    header::LOCATION,
    header::RETRY_AFTER,
    header::ALLOW,
    header::CACHE_CONTROL,
];

/// Where requests go, and as whom.
pub struct Upstream {
    http: reqwest::Client,
    /// `--api-url` without a trailing slash (it may carry a stage path).
    api: String,
    token: Option<String>,
    /// For `jobctl dev --user-header` (`X-User-Id`); deployed stacks ignore it.
    user: Option<String>,
    /// The events function's base URL (what precedes `/jobs/{id}/events` in an `events_url`), learned
    /// from the first job asked for: one per stack.
    events_base: Mutex<Option<String>>,
}

impl Upstream {
    pub fn new(target: &crate::client::Target) -> anyhow::Result<Arc<Self>> {
        let http = reqwest::Client::builder()
            // No overall timeout: a job's stream stays open for up to 14 minutes.
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Arc::new(Self {
            http,
            api: target.api_url.trim_end_matches('/').to_owned(),
            token: target.token.clone(),
            user: target.user.clone(),
            events_base: Mutex::new(None),
        }))
    }

    /// A request to the API, as the caller.
    fn to_api(&self, method: reqwest::Method, path_and_query: &str) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.api));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(u) = &self.user {
            req = req.header("x-user-id", u);
        }
        req
    }

    /// The events function's base, from the job's `events_url` (asked of the API once).
    async fn events_base(&self, job: &str) -> Result<String, Response> {
        if let Some(base) = self.events_base.lock().expect("not poisoned").clone() {
            return Ok(base);
        }
        let resp = self
            .to_api(reqwest::Method::GET, &format!("/jobs/{job}"))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(pass_back(resp));
        }
        let job: serde_json::Value = resp.json().await.map_err(|e| self.unreachable(&e))?;
        let base = job["events_url"]
            .as_str()
            .and_then(|u| u.split_once("/jobs/"))
            .map(|(base, _)| base.to_owned())
            .ok_or_else(|| {
                error(
                    StatusCode::NOT_FOUND,
                    "no_events_url",
                    "this stack has no events endpoint (GET /jobs/{id} has no events_url)",
                )
            })?;
        *self.events_base.lock().expect("not poisoned") = Some(base.clone());
        Ok(base)
    }

    fn unreachable(&self, e: &reqwest::Error) -> Response {
        tracing::warn!(error = %e, api = %self.api, "upstream request failed");
        error(
            StatusCode::BAD_GATEWAY,
            "upstream_unreachable",
            &format!("cannot reach the API at {}: {e}", self.api),
        )
    }
}

/// Everything the console does not serve itself goes upstream.
pub fn routes(upstream: Arc<Upstream>) -> Router {
    Router::new().fallback(forward).with_state(upstream)
}

/// `/jobs/{id}/events`'s job id, for a request to a job's stream.
fn stream_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/jobs/")?;
    let (id, tail) = rest.split_once('/')?;
    (tail == "events").then_some(id)
}

async fn forward(State(up): State<Arc<Upstream>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let Ok(body) = axum::body::to_bytes(body, MAX_FORWARDED_BODY).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is over 1 MiB",
        );
    };
    let mut out = match stream_of(parts.uri.path()) {
        // The stream's token (in the query) is its authority: the caller's token is not sent there,
        // which may be another origin.
        Some(job) => match up.events_base(job).await {
            Ok(base) => up
                .http
                .request(parts.method.clone(), format!("{base}{path_and_query}")),
            Err(resp) => return resp,
        },
        None => up.to_api(parts.method.clone(), &path_and_query),
    };
    for name in REQUEST_HEADERS {
        if let Some(v) = parts.headers.get(&name) {
            out = out.header(name, v);
        }
    }
    match out.body(body).send().await {
        Ok(resp) => pass_back(resp),
        Err(e) => up.unreachable(&e),
    }
}

/// The upstream answer, streamed (a job's stream flows through as it comes).
fn pass_back(resp: reqwest::Response) -> Response {
    let mut headers = HeaderMap::new();
    for name in RESPONSE_HEADERS {
        if let Some(v) = resp.headers().get(&name) {
            headers.insert(name, v.clone());
        }
    }
    let status = resp.status();
    let mut out = Response::new(Body::from_stream(resp.bytes_stream()));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Refuses requests that did not come from the console's own page: a `Host` other than this loopback
/// address (DNS rebinding: a site whose name resolves here), or an `Origin` of another site (a
/// cross-site form or fetch). The proxy acts with the caller's token, so only its page may use it.
pub async fn same_site_only(State(port): State<u16>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let ours = ["127.0.0.1", "localhost", "[::1]"]
        .iter()
        .any(|h| host == format!("{h}:{port}"));
    let origin_ok = match req.headers().get(header::ORIGIN) {
        None => true,
        Some(o) => o.to_str().is_ok_and(|o| o == format!("http://{host}")),
    };
    if ours && origin_ok {
        next.run(req).await
    } else {
        error(
            StatusCode::FORBIDDEN,
            "forbidden_origin",
            "jobctl console answers only its own page (Host and Origin must be this address)",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::stream_of;

    #[test]
    fn only_a_jobs_events_path_is_a_stream() {
        assert_eq!(stream_of("/jobs/01ABC/events"), Some("01ABC"));
        for other in [
            "/jobs/01ABC",
            "/jobs",
            "/jobs/01ABC/events/x",
            "/kinds",
            "/jobs//x",
        ] {
            assert_eq!(stream_of(other), None, "{other}");
        }
    }
}
