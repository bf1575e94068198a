//! Numbers beyond f64 through `POST /mcp`, to the digit, as through the REST routes.
//!
//! rmcp parses a message into its types, whose tool `arguments` and `structuredContent` are
//! `serde_json::Value`s: without serde_json's `arbitrary_precision`, a `Value` rounds
//! `12345678901234567890123` to `1.2345678901234568e22`, so a job submitted through MCP stored a
//! different input than the same job through `POST /jobs`, and its result came back rounded.
//! `arbitrary_precision` is not the fix: it is a feature of the whole build, and it changes how every
//! crate's numbers pass through serde's buffered paths (untagged enums and `flatten`, which rmcp's
//! messages use) and through serde_dynamo. So the exact text goes around rmcp instead: [`keep_digits`]
//! reads a `tools/call`'s `arguments` from the body as sent, before rmcp parses it, and the tool hands
//! back the route's answer as the route wrote it, which replaces the reply's `structuredContent`.
//! rmcp still checks, routes and answers every message; only those two values come from the text.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::api::ApiError;
use crate::api::submit::{is_json, read_limited};
use crate::json::Json;

/// The most of rmcp's reply read back to put the exact answer in: the answer twice (structured, and
/// escaped as its text copy), well above what a route answers.
const MAX_REPLY_BYTES: usize = 8 * super::MAX_ANSWER_BYTES;

/// What [`keep_digits`] read of a `tools/call` (in the request's extensions, which rmcp hands the tool
/// with the HTTP request's parts), and where the tool leaves its answer.
#[derive(Clone, Default)]
pub(super) struct Exact {
    /// The call's `arguments` object, as sent.
    pub(super) arguments: Option<Json>,
    answer: Arc<Mutex<Option<Json>>>,
}

impl Exact {
    /// The route's answer, as it wrote it: the reply's `structuredContent`.
    pub(super) fn answered(&self, answer: Json) {
        *self.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(answer);
    }

    fn take_answer(&self) -> Option<Json> {
        self.answer.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Middleware on `POST /mcp`: the call's arguments in, the tool's answer out, both as text. A body
/// that is not JSON goes to rmcp untouched (it answers those).
pub(super) async fn keep_digits(req: Request, next: Next) -> Response {
    if !is_json(req.headers()) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match read_limited(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let exact = Exact {
        arguments: call_arguments(&bytes),
        answer: Arc::default(),
    };
    parts.extensions.insert(exact.clone());
    let reply = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    match exact.take_answer() {
        Some(answer) => with_structured(reply, &answer).await,
        None => reply,
    }
}

/// A `tools/call`'s `arguments`, when the body is one and they are an object (else rmcp refuses it,
/// or the tool falls back to rmcp's own reading).
fn call_arguments(body: &[u8]) -> Option<Json> {
    #[derive(Deserialize)]
    struct Message {
        method: Option<String>,
        params: Option<Params>,
    }
    #[derive(Deserialize)]
    struct Params {
        arguments: Option<Box<RawValue>>,
    }
    let message: Message = serde_json::from_slice(body).ok()?;
    if message.method.as_deref() != Some("tools/call") {
        return None;
    }
    let arguments = message.params?.arguments?;
    arguments
        .get()
        .starts_with('{')
        .then(|| Json::parse(arguments.get()).ok())
        .flatten()
}

/// rmcp's JSON reply with `result.structuredContent` replaced by `answer`; the reply as it was when it
/// has none (an rmcp error, say).
async fn with_structured(reply: Response, answer: &Json) -> Response {
    if !is_json(reply.headers()) {
        return reply;
    }
    let (mut parts, body) = reply.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_REPLY_BYTES).await else {
        return ApiError::Internal {
            source: "an MCP reply too large to read back".into(),
        }
        .into_response();
    };
    let Some(rewritten) = replace_structured(&bytes, answer) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(rewritten))
}

/// The JSON-RPC message `reply` with `result.structuredContent` set to `answer`; every other member
/// kept as its text.
fn replace_structured(reply: &[u8], answer: &Json) -> Option<Vec<u8>> {
    type Members = BTreeMap<String, Box<RawValue>>;
    let mut message: Members = serde_json::from_slice(reply).ok()?;
    let mut result: Members = serde_json::from_str(message.get("result")?.get()).ok()?;
    let structured = result.get_mut("structuredContent")?;
    *structured = serde_json::value::to_raw_value(answer).ok()?;
    message.insert(
        "result".into(),
        serde_json::value::to_raw_value(&result).ok()?,
    );
    serde_json::to_vec(&message).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: &str = r#"{"n":12345678901234567890123,"x":0.1000000000000000055511151231257827}"#;

    #[test]
    fn a_calls_arguments_are_read_as_sent() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"t","arguments":{BIG}}}}}"#
        );
        assert_eq!(call_arguments(body.as_bytes()).unwrap().get(), BIG);
        for other in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            "not json",
        ] {
            assert!(call_arguments(other.as_bytes()).is_none(), "{other}");
        }
    }

    #[test]
    fn the_answer_replaces_only_the_structured_content() {
        let reply = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"t"}],"structuredContent":{"n":1.2345678901234568e22},"isError":false}}"#;
        let answer = Json::parse(BIG).unwrap();
        let out = String::from_utf8(replace_structured(reply, &answer).unwrap()).unwrap();
        assert_eq!(
            out,
            format!(
                r#"{{"id":7,"jsonrpc":"2.0","result":{{"content":[{{"type":"text","text":"t"}}],"isError":false,"structuredContent":{BIG}}}}}"#
            )
        );
        let error = br#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"m"}}"#;
        assert!(replace_structured(error, &answer).is_none());
    }
}
