//! The two pieces of AWS that run the functions, reproduced for local runs (`jobctl dev`) and tests:
//!
//! - [`gateway_request`]: an HTTP request turned into the API Gateway HTTP API (payload 2.0) event the
//!   deployed functions receive, parsed by `lambda_http` itself, so the same handler code answers.
//! - [`EventSource`]: Lambda's SQS event-source mapping: receive a batch, invoke the worker with it as an
//!   `SqsEvent`, delete only the messages not reported as batch item failures.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use base64::Engine;
use lambda_http::Request;
use serde_json::{Map, Value, json};

use crate::queue::{JobQueue, QueueError, ReceivedMessage};
use crate::worker::{BatchResult, Invocation, Worker};

/// Builds the request API Gateway would hand the function. `user`, when given, appears as the JWT `sub`
/// claim, as if an authorizer had verified it: local runs stand in for the authorizer.
pub fn gateway_request(parts: &http::request::Parts, body: &[u8], user: Option<&str>) -> Request {
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        // API Gateway joins repeated headers with commas.
        match headers.get_mut(name.as_str()) {
            Some(Value::String(prev)) => {
                prev.push(',');
                prev.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let (body, is_base64) = match std::str::from_utf8(body) {
        Ok(text) => (text.to_owned(), false),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(body), true),
    };
    let mut query_params = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        query_params.insert(k.to_owned(), Value::from(v));
    }
    let now = crate::now_millis();
    let mut context = json!({
        "accountId": "000000000000",
        "apiId": "local",
        "domainName": "localhost",
        "domainPrefix": "local",
        "http": {
            "method": parts.method.as_str(),
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1",
            "userAgent": headers.get("user-agent").cloned().unwrap_or_default(),
        },
        "requestId": format!("local-{now}-{:08x}", rand::random::<u32>()),
        "routeKey": "$default",
        "stage": "$default",
        "timeEpoch": now,
    });
    if let Some(user) = user {
        context["authorizer"] = json!({"jwt": {"claims": {"sub": user}, "scopes": null}});
    }
    let event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "queryStringParameters": query_params,
        "requestContext": context,
        "body": body,
        "isBase64Encoded": is_base64,
    });
    lambda_http::request::from_str(&event.to_string()).expect("a well-formed API Gateway v2 event")
}

/// Lambda's SQS event source, locally: polls a queue and feeds the worker, honouring partial batch
/// responses.
pub struct EventSource {
    queue: Arc<dyn JobQueue>,
    queue_arn: String,
    worker: Arc<Worker>,
    batch_size: u32,
    wait: Duration,
    timeout: Option<Duration>,
    visibility: Option<Duration>,
}

impl EventSource {
    pub fn new(
        queue: Arc<dyn JobQueue>,
        queue_arn: impl Into<String>,
        worker: Arc<Worker>,
        batch_size: u32,
    ) -> Self {
        Self {
            queue,
            queue_arn: queue_arn.into(),
            worker,
            batch_size: batch_size.clamp(1, 10),
            wait: Duration::from_secs(1),
            timeout: None,
            visibility: None,
        }
    }

    /// Receives with this visibility timeout instead of the queue's default.
    pub fn with_visibility(mut self, visibility: Duration) -> Self {
        self.visibility = Some(visibility);
        self
    }

    /// Gives each invocation a deadline `timeout` after it starts, like the function's Timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long one receive waits for a first message (long polling).
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// One receive -> invoke -> delete cycle. Returns the messages received and the worker's result.
    pub async fn poll_once(&self) -> Result<(Vec<ReceivedMessage>, BatchResult), QueueError> {
        let msgs = self
            .queue
            .receive(self.batch_size, self.wait, self.visibility)
            .await?;
        if msgs.is_empty() {
            return Ok((msgs, BatchResult::default()));
        }
        let mut event = SqsEvent::default();
        event.records = msgs
            .iter()
            .map(|m| m.to_lambda_record(&self.queue_arn))
            .collect();
        let inv = Invocation {
            request_id: format!("local-{:016x}", rand::random::<u64>()),
            deadline: self
                .timeout
                .map(|t| crate::now_millis() + t.as_millis() as i64),
        };
        let result = self.worker.process_batch(event, &inv).await;
        for m in &msgs {
            let failed = result
                .response
                .batch_item_failures
                .iter()
                .any(|f| f.item_identifier == m.message_id);
            if !failed && let Err(e) = self.queue.delete(&m.receipt_handle).await {
                // Not fatal: the message comes back and the worker acknowledges the finished job again.
                tracing::warn!(message_id = %m.message_id, error = %e, "could not delete a processed message");
            }
        }
        Ok((msgs, result))
    }

    /// Runs `concurrency` pollers (like concurrent Lambda invocations) until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, concurrency: usize, shutdown: impl Future<Output = ()>) {
        let pollers = (0..concurrency.max(1)).map(|_| {
            let me = self.clone();
            async move {
                loop {
                    if let Err(e) = me.poll_once().await {
                        tracing::warn!(error = %e, "receive failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        tokio::select! {
            _ = futures::future::join_all(pollers) => {}
            _ = shutdown => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_http::RequestExt;
    use lambda_http::request::RequestContext;

    #[test]
    fn a_local_request_becomes_the_api_gateway_request_with_the_user_as_jwt_subject() {
        let (parts, ()) = http::Request::post("/jobs?limit=5&status=queued")
            .header("content-type", "application/json")
            .body(())
            .unwrap()
            .into_parts();
        let req = gateway_request(&parts, br#"{"kind":"echo"}"#, Some("alice"));
        assert_eq!(req.method(), "POST");
        assert_eq!(req.raw_http_path(), "/jobs");
        assert_eq!(
            req.query_string_parameters_ref()
                .and_then(|q| q.first("limit")),
            Some("5")
        );
        assert_eq!(req.headers()["content-type"], "application/json");
        assert_eq!(req.body().as_ref(), br#"{"kind":"echo"}"#);
        let Some(RequestContext::ApiGatewayV2(ctx)) = req.request_context_ref() else {
            panic!("an HTTP API v2 context");
        };
        let claims = &ctx
            .authorizer
            .as_ref()
            .unwrap()
            .jwt
            .as_ref()
            .unwrap()
            .claims;
        assert_eq!(claims["sub"], "alice");
    }

    #[test]
    fn binary_bodies_survive_the_trip() {
        let (parts, ()) = http::Request::post("/jobs").body(()).unwrap().into_parts();
        let req = gateway_request(&parts, &[0xff, 0x00, 0xfe], None);
        assert_eq!(req.body().as_ref(), [0xff, 0x00, 0xfe]);
    }
}
