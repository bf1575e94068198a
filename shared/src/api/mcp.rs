//! `POST /mcp`: the API as an MCP server (Streamable HTTP, `rmcp`), so an MCP client (an IDE assistant,
//! Claude Desktop, another agent) submits long jobs and comes back for their results.
//!
//! A thin adapter and nothing more: each tool is turned into the REST request it stands for and sent
//! through the API's own routes ([`Router`], in-process), with the MCP request's caller as its
//! [`Identity`]. So a tool gets exactly the route's validation, errors, idempotency and ownership —
//! there is no second implementation of submit, get, list, cancel or complete — and an answer of 400
//! and above comes back as an MCP *tool* error carrying the API's `{"error":{"code","message"}}` (and
//! the status), which the client's model can read and act on.
//!
//! Stateless (`legacy_session_mode: false`): on Lambda no session survives between invocations, so
//! every POST stands alone, `GET` and `DELETE` are `405`, and answers are plain JSON (no SSE stream to
//! hold open). The caller comes from the same authorizer as every route: a request without one is
//! `401` before rmcp reads it.
//!
//! Job inputs and results keep every digit, as on the REST routes: see [`exact`].

mod exact;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities,
    ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiError, Caller, Identity, MAX_BODY_BYTES};
use crate::handler::KindInfo;
use crate::json::Json;

/// The MCP endpoint's path.
pub const PATH: &str = "/mcp";

/// The most of a route's answer read back into a tool result: a job view is at most its input (128
/// KiB) and its result (the store's item limit), far below this.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// `POST /mcp` over `routes` (the API's own routes, layers included), offering the kinds `kinds`.
pub(super) fn routes(routes: Router, kinds: Vec<KindInfo>) -> Router {
    let server = McpServer(Arc::new(Inner {
        tools: tools(&kinds),
        routes,
    }));
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_sse_keep_alive(None)
        // The envelope around a submit's largest input: the body limit layer answers 413 past it.
        .with_max_request_body_bytes(MAX_BODY_BYTES)
        // No Host check: deployed, the API's host is whatever domain fronts it and the authorizer is
        // the gate; `jobctl dev` answers the same REST routes on any Host already, so a check here would
        // protect nothing a DNS-rebinding page could not reach through them.
        .disable_allowed_hosts();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new().route(
        PATH,
        axum::routing::post_service(service)
            .layer(axum::middleware::from_fn(exact::keep_digits))
            .layer(axum::middleware::from_fn(authenticated)),
    )
}

/// `401` for a request without a caller, before rmcp reads it (the REST routes answer the same).
async fn authenticated(caller: Result<Caller, ApiError>, req: Request, next: Next) -> Response {
    match caller {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

#[derive(Clone)]
struct McpServer(Arc<Inner>);

struct Inner {
    tools: Vec<Tool>,
    routes: Router,
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("jobkit", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Runs long jobs asynchronously: submit_job answers at once with a job_id; poll \
                 get_job until its status is completed, failed, cancelled or dead_letter, then read \
                 its result or error.",
            )
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.0.tools.clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.0.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        // rmcp hands the HTTP request's parts to the handler; the caller is in their extensions, put
        // there by the authorizer's layer like for every route (and checked by `authenticated`).
        let parts = context.extensions.get::<http::request::Parts>();
        let identity = parts.and_then(|p| p.extensions.get::<Identity>()).cloned();
        let traceparent = parts.and_then(|p| p.headers.get(crate::trace::ATTRIBUTE).cloned());
        let exact = parts
            .and_then(|p| p.extensions.get::<exact::Exact>())
            .cloned();
        // The arguments as sent (rmcp's own reading rounds numbers beyond f64).
        let args = exact
            .as_ref()
            .and_then(|e| e.arguments.clone())
            .unwrap_or_else(|| Value::Object(request.arguments.unwrap_or_default()).into());
        let response = match route_request(&request.name, &args) {
            Ok(mut req) => {
                if let Some(identity) = identity {
                    req.extensions_mut().insert(identity);
                }
                if let Some(t) = traceparent {
                    req.headers_mut().insert(crate::trace::ATTRIBUTE, t);
                }
                match self.0.routes.clone().oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                }
            }
            Err(e) => e.into_response(),
        };
        let (result, answered) = answer(response).await;
        if let (Some(exact), Some(answered)) = (exact, answered) {
            exact.answered(answered);
        }
        Ok(result.into())
    }
}

/// A route's answer as a tool result: its JSON body, structured; at 400 and above a tool error with
/// the API's `error` and the `status`. Below 400, also the body as the route wrote it, which the text
/// content already is and [`exact`] makes the structured content (a job's input and result may hold
/// numbers a `Value` rounds).
async fn answer(response: Response) -> (CallToolResult, Option<Json>) {
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), MAX_ANSWER_BYTES)
        .await
        .ok()
        .and_then(|b| Json::parse(std::str::from_utf8(&b).ok()?).ok());
    if status < 400 {
        let Some(body) = body else {
            return (CallToolResult::structured(Value::Null), None);
        };
        let mut result = CallToolResult::structured(body.to_value());
        result.content = vec![ContentBlock::text(body.get())];
        return (result, Some(body));
    }
    let mut error = match body.map(|b| b.to_value()) {
        Some(Value::Object(o)) if o.contains_key("error") => o,
        _ => json!({"error": {"code": "internal", "message": "the API gave no error body"}})
            .as_object()
            .cloned()
            .expect("an object"),
    };
    error.insert("status".into(), status.into());
    (CallToolResult::structured_error(Value::Object(error)), None)
}

/// The REST request a tool call stands for. Arguments that are not the tool's are `400
/// invalid_request`, like a malformed query; `submit_job`'s go to `POST /jobs` as its body, which
/// checks them. Every value is passed on as its text, so numbers keep their digits.
fn route_request(tool: &str, args: &Json) -> Result<Request, ApiError> {
    match tool {
        SUBMIT => {
            let mut body: BTreeMap<String, Json> = decode(tool, args)?;
            let key = match body.remove("idempotency_key") {
                None => None,
                Some(k) => k.decode::<Option<String>>().map_err(|_| {
                    ApiError::InvalidRequest("idempotency_key must be a string".into())
                })?,
            };
            let mut req = json_request(http::Method::POST, "/jobs", &body);
            if let Some(key) = key {
                let value = http::HeaderValue::from_str(&key).map_err(|_| {
                    ApiError::InvalidRequest(
                        "idempotency_key must be 1-255 visible ASCII characters other than ','"
                            .into(),
                    )
                })?;
                req.headers_mut().insert("idempotency-key", value);
            }
            Ok(req)
        }
        GET | CANCEL => {
            let a: JobArgs = decode(tool, args)?;
            let method = if tool == GET {
                http::Method::GET
            } else {
                http::Method::DELETE
            };
            Ok(empty_request(method, &path(&["jobs", &a.job_id])))
        }
        LIST => {
            let a: ListArgs = decode(tool, args)?;
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            if let Some(s) = &a.status {
                query.append_pair("status", s);
            }
            if let Some(k) = &a.kind {
                query.append_pair("kind", k);
            }
            if let Some(n) = a.limit {
                query.append_pair("limit", &n.to_string());
            }
            if let Some(c) = &a.cursor {
                query.append_pair("cursor", c);
            }
            Ok(empty_request(
                http::Method::GET,
                &format!("/jobs?{}", query.finish()),
            ))
        }
        COMPLETE => {
            let a: CompleteArgs = decode(tool, args)?;
            let uri = path(&["jobs", &a.job_id, "waitpoints", &a.name]);
            Ok(json_request(http::Method::POST, &uri, &a.payload))
        }
        other => Err(ApiError::InvalidRequest(format!(
            "no tool named {}; the tools are {SUBMIT}, {GET}, {LIST}, {CANCEL}, {COMPLETE}",
            super::quote(other)
        ))),
    }
}

fn decode<T: serde::de::DeserializeOwned>(tool: &str, args: &Json) -> Result<T, ApiError> {
    args.decode()
        .map_err(|e| ApiError::InvalidRequest(format!("invalid arguments for {tool}: {e}")))
}

/// `/a/b/...` with each segment percent-encoded, so an id can never name another route.
fn path(segments: &[&str]) -> String {
    let mut url = url::Url::parse("http://mcp.invalid/").expect("a valid base");
    url.path_segments_mut()
        .expect("a base with a path")
        .extend(segments);
    url.path().to_owned()
}

fn json_request(method: http::Method, uri: &str, body: &impl serde::Serialize) -> Request {
    let text = serde_json::to_string(body).expect("JSON values serialize");
    let mut req = Request::new(Body::from(text));
    *req.method_mut() = method;
    *req.uri_mut() = uri.parse().expect("a path made here");
    req.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    req
}

fn empty_request(method: http::Method, uri: &str) -> Request {
    let mut req = Request::new(Body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = uri.parse().expect("a path made here");
    req
}

const SUBMIT: &str = "submit_job";
const GET: &str = "get_job";
const LIST: &str = "list_jobs";
const CANCEL: &str = "cancel_job";
const COMPLETE: &str = "complete_waitpoint";

/// `get_job`'s and `cancel_job`'s arguments.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct JobArgs {
    /// The job's id, as `submit_job` answered it.
    job_id: String,
}

/// `list_jobs`'s arguments.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct ListArgs {
    /// Only jobs in this status (queued, running, retrying, waiting, completed, failed, cancelled,
    /// dead_letter).
    #[serde(default)]
    status: Option<String>,
    /// Only jobs of this kind.
    #[serde(default)]
    kind: Option<String>,
    /// Jobs per page, 1-100 (20 when not given).
    #[serde(default)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    #[serde(default)]
    cursor: Option<String>,
}

/// `complete_waitpoint`'s arguments.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CompleteArgs {
    /// The parked job's id.
    job_id: String,
    /// The waitpoint's name (`waiting_for.name` in `get_job`).
    name: String,
    /// What the job's `wait_for` returns (any JSON, at most 64 KiB).
    payload: Json,
}

fn schema<T: JsonSchema>() -> Arc<JsonObject> {
    match serde_json::to_value(schemars::schema_for!(T)) {
        Ok(Value::Object(o)) => Arc::new(o),
        _ => unreachable!("a derived schema is an object"),
    }
}

/// The tools, with `submit_job`'s schema naming the kinds (an enum) and describing each one's input
/// with the schema `GET /kinds` shows.
fn tools(kinds: &[KindInfo]) -> Vec<Tool> {
    let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
    let described: Vec<String> = kinds
        .iter()
        .map(|k| format!("- {}: input schema {}", k.kind, k.schemas.input_schema))
        .collect();
    let submit_schema = json!({
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": names, "description": "The job's kind."},
            "input": {"description": "The job's input: it must match the kind's input schema (listed in this tool's description)."},
            "idempotency_key": {"type": "string", "minLength": 1, "maxLength": 255,
                "description": "Submitting again with the same key and arguments returns the same job instead of a second one."},
            "callback_url": {"type": "string", "description": "An https URL that gets a signed webhook when the job ends."},
            "run_at": {"type": "string", "format": "date-time", "description": "Start no earlier than this time (RFC 3339)."},
            "delay_seconds": {"type": "integer", "minimum": 0, "description": "Start no earlier than this many seconds from now."}
        },
        "required": ["kind", "input"],
        "additionalProperties": false,
    });
    let Value::Object(submit_schema) = submit_schema else {
        unreachable!("an object literal")
    };
    let read_only = ToolAnnotations::new()
        .read_only(true)
        .destructive(false)
        .idempotent(true)
        .open_world(false);
    vec![
        Tool::new(
            SUBMIT,
            format!(
                "Submits a long-running job and answers at once with its job_id and status \
                 (queued); it runs asynchronously. Follow it with get_job. Kinds:\n{}",
                described.join("\n")
            ),
            Arc::new(submit_schema),
        )
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .open_world(false),
        ),
        Tool::new(
            GET,
            "A job: its status (queued, running, retrying, waiting, completed, failed, cancelled, \
             dead_letter), progress, and once it ended its result or error.",
            schema::<JobArgs>(),
        )
        .with_annotations(read_only.clone()),
        Tool::new(
            LIST,
            "Your jobs, newest first, a page at a time (next_cursor pages on).",
            schema::<ListArgs>(),
        )
        .with_annotations(read_only),
        Tool::new(
            CANCEL,
            "Cancels a job: a queued or waiting one at once, a running one is asked to stop.",
            schema::<JobArgs>(),
        )
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(true)
                .idempotent(true)
                .open_world(false),
        ),
        Tool::new(
            COMPLETE,
            "Completes the waitpoint a waiting job is parked on (get_job's waiting_for) with a JSON \
             payload, and resumes the job.",
            schema::<CompleteArgs>(),
        )
        .with_annotations(
            ToolAnnotations::new()
                .read_only(false)
                .destructive(false)
                .open_world(false),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_segments_that_cannot_name_another_route() {
        assert_eq!(path(&["jobs", "01ABC"]), "/jobs/01ABC");
        assert_eq!(
            path(&["jobs", "x/waitpoints/y?z"]),
            "/jobs/x%2Fwaitpoints%2Fy%3Fz"
        );
    }

    #[test]
    fn unknown_arguments_and_tools_are_invalid_requests() {
        let e = route_request(GET, &json!({"job_id": "a", "extra": 1}).into()).unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest(m) if m.contains("unknown field")));
        let e = route_request("drop_tables", &json!({}).into()).unwrap_err();
        assert!(matches!(e, ApiError::InvalidRequest(m) if m.contains("submit_job")));
    }
}
