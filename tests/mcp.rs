//! `POST /mcp`, the API as an MCP server, driven by the official Rust SDK's client (`rmcp`) over
//! Streamable HTTP on loopback, on both backends: the tools and their schemas, a job submitted and read
//! back to its result, the API's refusals as tool errors with its codes, idempotency keys, another
//! caller's job, and the HTTP edges (no caller, other methods). (The Python SDK's client drives
//! `jobctl dev` in cli/tests/dev.rs.)

#[macro_use]
mod support;

use std::collections::HashMap;
use std::time::Duration;

use jobkit::api;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The API of `b` served on loopback as `jobctl dev --user-header` serves it (the caller is whoever
/// `X-User-Id` names); its base URL.
async fn serve(b: &Backends) -> String {
    let app = b.api_with_settings(test_registry(), api::ApiSettings::from_config(&b.config));
    let app = app.0.layer(axum::middleware::from_fn(|req, next| {
        api::dev_identity(true, req, next)
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// An MCP client of `{base}/mcp` as `user`.
async fn client(base: &str, user: &str) -> RunningService<RoleClient, ()> {
    let headers = HashMap::from([(
        http::HeaderName::from_static("x-user-id"),
        http::HeaderValue::from_str(user).unwrap(),
    )]);
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{base}/mcp"))
        .custom_headers(headers);
    ().serve(StreamableHttpClientTransport::from_config(config))
        .await
        .expect("the MCP handshake")
}

async fn call(c: &RunningService<RoleClient, ()>, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments are an object")
    };
    c.call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args))
        .await
        .expect("a tool result")
}

/// The structured content of a result that is not an error.
fn ok(r: CallToolResult) -> Value {
    assert_ne!(r.is_error, Some(true), "{r:?}");
    r.structured_content.expect("structured content")
}

/// Asserts a tool error with the API's `status` and `code`.
fn refused(r: CallToolResult, status: u16, code: &str) {
    assert_eq!(r.is_error, Some(true), "{r:?}");
    let body = r.structured_content.expect("structured content");
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
}

async fn an_mcp_client_submits_a_job_and_reads_its_result(b: Backends) {
    let base = serve(&b).await;
    let worker = b.event_source(test_registry(), fast_settings(5));
    let mcp = client(&base, "ada").await;
    let tools = mcp.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| &*t.name).collect();
    assert_eq!(
        names,
        [
            "submit_job",
            "get_job",
            "list_jobs",
            "cancel_job",
            "complete_waitpoint"
        ]
    );
    // submit_job names the kinds and shows each one's input schema, as GET /kinds does.
    let submit = &tools[0];
    let kinds = &submit.input_schema["properties"]["kind"]["enum"];
    assert!(
        kinds.as_array().unwrap().contains(&json!("echo")),
        "{kinds}"
    );
    assert!(
        submit
            .description
            .as_deref()
            .unwrap()
            .contains("- sleep: input schema {")
    );

    let accepted = ok(call(
        &mcp,
        "submit_job",
        json!({"kind": "echo", "input": {"n": 7}}),
    )
    .await);
    assert_eq!(accepted["status"], "queued", "{accepted}");
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let done = eventually("the job to complete", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(5), worker.poll_once()).await;
        let view = ok(call(&mcp, "get_job", json!({"job_id": id})).await);
        (view["status"] == "completed").then_some(view)
    })
    .await;
    assert_eq!(done["result"], json!({"n": 7}));
    let listed = ok(call(&mcp, "list_jobs", json!({"status": "completed"})).await);
    assert_eq!(listed["jobs"][0]["job_id"], id.as_str(), "{listed}");
    // Cancelling a finished job is the route's 409.
    refused(
        call(&mcp, "cancel_job", json!({"job_id": id})).await,
        409,
        "job_finished",
    );

    // The same key and arguments: the same job, not a second one.
    let keyed = json!({"kind": "sleep", "input": {"ms": 1}, "idempotency_key": "k-1"});
    let first = ok(call(&mcp, "submit_job", keyed.clone()).await);
    let again = ok(call(&mcp, "submit_job", keyed).await);
    assert_eq!(first["job_id"], again["job_id"]);
    // The caller is the authorizer's: another user's job is unknown to them, as on the REST routes.
    let bob = client(&base, "bob").await;
    refused(
        call(&bob, "get_job", json!({"job_id": id})).await,
        404,
        "job_not_found",
    );
}

async fn the_apis_refusals_are_tool_errors_with_its_codes(b: Backends) {
    let base = serve(&b).await;
    let mcp = client(&base, "ada").await;
    for (tool, args, status, code) in [
        (
            "submit_job",
            json!({"kind": "nope", "input": 1}),
            422,
            "unknown_kind",
        ),
        (
            "submit_job",
            json!({"kind": "sleep", "input": {"ms": "long"}}),
            422,
            "invalid_input",
        ),
        (
            "submit_job",
            json!({"kind": "echo", "input": 1, "colour": "red"}),
            400,
            "invalid_request",
        ),
        (
            "get_job",
            json!({"job_id": "not-an-id"}),
            400,
            "invalid_job_id",
        ),
        (
            "get_job",
            json!({"job_id": "01JF0000000000000000000000"}),
            404,
            "job_not_found",
        ),
        // An id cannot name another route: it is one path segment.
        (
            "cancel_job",
            json!({"job_id": "01JF0000000000000000000000/waitpoints/x"}),
            400,
            "invalid_job_id",
        ),
        ("list_jobs", json!({"limit": 0}), 400, "invalid_request"),
        ("list_jobs", json!({"sort": "asc"}), 400, "invalid_request"),
        (
            "complete_waitpoint",
            json!({"job_id": "01JF0000000000000000000000", "name": "approve", "payload": {}}),
            404,
            "job_not_found",
        ),
    ] {
        let r = call(&mcp, tool, args.clone()).await;
        assert_eq!(r.is_error, Some(true), "{tool} {args}: {r:?}");
        refused(r, status, code);
    }
}

async fn mcp_answers_only_posts_from_an_authenticated_caller(b: Backends) {
    let app = b.api_with_settings(test_registry(), api::ApiSettings::from_config(&b.config));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}});
    let post = |user: Option<&str>| {
        // Any host: deployed, the API's is whatever domain fronts it.
        let mut req = http::Request::post("/mcp")
            .header("host", "jobs.example.com")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(axum::body::Body::from(init.to_string()))
            .unwrap();
        if let Some(user) = user {
            req = as_user(req, user);
        }
        req
    };
    assert_error(&app.handle(post(None)).await, 401, "unauthenticated");
    let (status, answer) = json(&app.handle(post(Some("ada"))).await);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["result"]["serverInfo"]["name"], "jobkit", "{answer}");
    // Stateless: no stream to open, no session to end.
    for method in ["GET", "DELETE", "PUT"] {
        let resp = app.handle(request(method, "/mcp", "ada")).await;
        assert_error(&resp, 405, "method_not_allowed");
        assert_eq!(resp.headers()["allow"], "POST");
    }
}

/// A `tools/call` to `/mcp` as `user`, its JSON-RPC body given as text (a `Value` would round the
/// numbers this is about); the answer's status and body, as text.
async fn raw_call(app: &Api, user: &str, id: u32, tool: &str, arguments: &str) -> (u16, String) {
    let body = format!(
        r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
    );
    let req = http::Request::post("/mcp")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("host", "jobs.example.com")
        .header("mcp-protocol-version", "2025-06-18")
        .body(axum::body::Body::from(body))
        .unwrap();
    let answer = app.handle(as_user(req, user)).await;
    (
        answer.status.as_u16(),
        String::from_utf8(answer.body.to_vec()).unwrap(),
    )
}

/// Numbers beyond f64 keep every digit through `POST /mcp`, both ways, as they do through the REST
/// routes: rmcp parses a call's arguments into `serde_json::Value`, which rounded them before.
async fn big_numbers_keep_every_digit_through_mcp(b: Backends) {
    const INPUT: &str = r#"{"n":12345678901234567890123,"x":0.1000000000000000055511151231257827}"#;
    let app = b.api_with_settings(test_registry(), api::ApiSettings::from_config(&b.config));
    let worker = b.event_source(test_registry(), fast_settings(5));
    let (status, text) = raw_call(
        &app,
        "ada",
        1,
        "submit_job",
        &format!(r#"{{"kind":"echo","input":{INPUT}}}"#),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    let id = answer["result"]["structuredContent"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job id: {text}"))
        .to_owned();
    let stored = b.store.get(&jobkit::JobId::parse(&id).unwrap()).await;
    assert_eq!(
        stored.unwrap().unwrap().input.get(),
        INPUT,
        "the input as sent"
    );
    let done = eventually("the job to complete", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(5), worker.poll_once()).await;
        let (_, text) = raw_call(
            &app,
            "ada",
            2,
            "get_job",
            &format!(r#"{{"job_id":"{id}"}}"#),
        )
        .await;
        text.contains(r#""status":"completed""#).then_some(text)
    })
    .await;
    // Both the structured result and its text copy carry the digits.
    let exact = format!(r#""result":{INPUT}"#);
    let answer: Value = serde_json::from_str(&done).unwrap();
    let text_copy = answer["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text_copy.contains(&exact), "text content: {text_copy}");
    let structured = done
        .split(r#""structuredContent":"#)
        .nth(1)
        .unwrap_or_else(|| panic!("{done}"));
    assert!(structured.contains(&exact), "structured content: {done}");
}

on_both_backends!(
    big_numbers_keep_every_digit_through_mcp,
    an_mcp_client_submits_a_job_and_reads_its_result,
    the_apis_refusals_are_tool_errors_with_its_codes,
    mcp_answers_only_posts_from_an_authenticated_caller,
);
