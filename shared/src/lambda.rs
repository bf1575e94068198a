//! The Lambda adapters: the only module that knows Lambda's event types. Each entry point reads the
//! configuration, builds the SDK clients once per cold start, and serves its function:
//!
//! - HTTP (submit, status): the API's axum router through `lambda_http`, with the API Gateway
//!   authorizer's verified caller turned into the API's [`Identity`].
//! - SQS (worker): an `SqsEvent` mapped to plain deliveries, and the verdicts back to a partial batch
//!   response.
//! - Streaming HTTP (events): a job's Server-Sent Events behind a Function URL, streamed.
//! - SQS (deliver): the deliveries queue through the webhook deliverer, the same way.
//! - Schedule (sweep): its own function, so only it needs (and has) Scan.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use axum::Router;
use axum::extract::Request;
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use lambda_runtime::{Error, LambdaEvent};
use metrics_cloudwatch_embedded::Collector;
use serde_json::Value;

use crate::api::{self, ApiError, ApiSettings, Identity, StreamSettings};
use crate::aws::sdk_config;
use crate::backend::{Backend, read_secret};
use crate::clock::Millis;
use crate::queue::{Consumer, Delivery, Invocation, Verdict};
use crate::sweep::SWEEP_AFTER;
use crate::webhook::{DeliverySettings, Secrets};
use crate::worker::WorkerSettings;
use crate::{Config, HandlerRegistry};

async fn backend() -> Result<Backend, Error> {
    crate::telemetry::init_lambda();
    let config = Config::from_env()?;
    Backend::aws(&sdk_config(None).await, config).await
}

/// The metrics recorder of function `role` (`submit`, `worker`, ...): EMF lines on stdout, flushed after
/// every invocation by the runtime layer [`serve_events`] and [`serve_http`] install, with a cold-start
/// count. See [`crate::observe`].
fn metrics(role: &'static str, config: &Config) -> Result<&'static Collector, Error> {
    let collector = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(config.metrics_namespace.clone())
        .with_dimension("Service", config.service.clone())
        .with_dimension("Function", role)
        .lambda_cold_start_metric("ColdStart")
        .with_lambda_request_id("RequestId")
        .init()?;
    // Units go to the installed recorder: described after it is in place.
    crate::observe::describe();
    Ok(collector)
}

/// Serves an HTTP function's router, flushing its metrics after each request.
async fn serve_http(role: &'static str, config: &Config, router: Router) -> Result<(), Error> {
    let metrics = metrics(role, config)?;
    metrics_cloudwatch_embedded::lambda::service::run_http(
        metrics,
        with_authorizer_identity(router),
    )
    .await
}

/// Serves an event function, flushing its metrics after each invocation.
async fn serve_events<E, R, F, Fut>(
    role: &'static str,
    config: &Config,
    handler: F,
) -> Result<(), Error>
where
    E: serde::de::DeserializeOwned,
    R: serde::Serialize,
    F: FnMut(LambdaEvent<E>) -> Fut,
    Fut: std::future::Future<Output = Result<R, Error>>,
{
    let metrics = metrics(role, config)?;
    metrics_cloudwatch_embedded::lambda::handler::run(metrics, handler).await
}

/// Serves the submit function: `POST /jobs` for the kinds in `registry`, waitpoint completions, and
/// `POST /mcp`, whose tools also read, list and cancel (so it needs the status function's signing
/// secret: list cursors must verify on every instance).
pub async fn serve_submit(registry: HandlerRegistry) -> Result<(), Error> {
    let b = backend().await?;
    if b.config.signing_secret.is_none() {
        // A key made up per instance would refuse every complete_url the status function hands out.
        return Err(
            "the submit function needs JOBKIT_SIGNING_SECRET_ARN (or JOBKIT_SIGNING_SECRET)".into(),
        );
    }
    let settings = ApiSettings::from_config(&b.config);
    let api = Arc::new(b.submit_api(registry, settings));
    let waitpoints = Arc::new(b.waitpoint_api());
    let status = Arc::new(b.status_api());
    let routes = api::submit_and_mcp_routes(api, status, waitpoints);
    serve_http("submit", &b.config, routes).await
}

/// Serves the status function: reads, lists, cancels.
pub async fn serve_status() -> Result<(), Error> {
    let b = backend().await?;
    if b.config.signing_secret.is_none() {
        // A key made up per instance would make every other instance refuse this one's cursors.
        return Err(
            "the status function needs JOBKIT_SIGNING_SECRET_ARN (or JOBKIT_SIGNING_SECRET)".into(),
        );
    }
    let api = Arc::new(b.status_api());
    serve_http("status", &b.config, api::status_routes(api)).await
}

/// Serves the events function: `GET /jobs/{id}/events` behind a Lambda Function URL with
/// `InvokeMode: RESPONSE_STREAM`, streamed as it is produced. No authorizer: the token in the URL is the
/// authority (see [`crate::api::EventsApi`]).
pub async fn serve_events_stream() -> Result<(), Error> {
    let b = backend().await?;
    if b.config.signing_secret.is_none() {
        return Err(
            "the events function needs JOBKIT_SIGNING_SECRET_ARN (or JOBKIT_SIGNING_SECRET)".into(),
        );
    }
    let api = Arc::new(b.events_api(StreamSettings::default()));
    let router = api::events_routes(api).fallback(|| async { ApiError::RouteNotFound });
    lambda_http::run_with_streaming_response(router).await
}

/// Serves the worker function: SQS batches with the handlers in `registry`.
pub async fn serve_worker(registry: HandlerRegistry) -> Result<(), Error> {
    let b = backend().await?;
    registry.check_limits(&b.config.limits)?;
    let worker = b.worker(registry, WorkerSettings::from_config(&b.config));
    let worker = &worker;
    serve_events(
        "worker",
        &b.config,
        move |event: LambdaEvent<SqsEvent>| async move {
            Ok::<_, Error>(handle_sqs(worker, event).await)
        },
    )
    .await
}

/// Serves the delivery function: batches of the deliveries queue, each event POSTed signed with the
/// webhook secret (read once, at cold start).
pub async fn serve_deliver() -> Result<(), Error> {
    crate::telemetry::init_lambda();
    let config = Config::from_env()?;
    let sdk = sdk_config(None).await;
    let secret = read_secret(&sdk, config.webhook_secret.as_ref())
        .await?
        .ok_or(
            "the delivery function needs JOBKIT_WEBHOOK_SECRET_ARN (or JOBKIT_WEBHOOK_SECRET)",
        )?;
    let secrets = Secrets::parse(&secret)?;
    if config.api_url.is_some() && config.signing_secret.is_none() {
        // A key made up per instance would sign complete_urls no other function accepts.
        return Err("with JOBKIT_API_URL, the delivery function needs JOBKIT_SIGNING_SECRET_ARN (or JOBKIT_SIGNING_SECRET)".into());
    }
    let b = Backend::aws(&sdk, config).await?;
    let deliverer = b
        .deliverer(secrets, DeliverySettings::default())
        .ok_or("the delivery function needs JOBKIT_DELIVERIES_QUEUE_URL")?;
    let deliverer = &deliverer;
    serve_events(
        "deliver",
        &b.config,
        move |event: LambdaEvent<SqsEvent>| async move {
            Ok::<_, Error>(handle_sqs(deliverer, event).await)
        },
    )
    .await
}

/// Serves the sweep function, on two schedules: `{"task": "due"}` (every minute) runs the due task
/// ([`crate::due`]: Queries of the due index), any other event the full sweep (every 5 minutes).
pub async fn serve_sweep() -> Result<(), Error> {
    let b = backend().await?;
    let sweeper = b.sweeper();
    let sweeper = &sweeper;
    serve_events(
        "sweep",
        &b.config,
        move |event: LambdaEvent<Value>| async move {
            if is_due_task(&event.payload) {
                let report = sweeper.fire_due().await?;
                return Ok::<_, Error>(serde_json::to_value(report)?);
            }
            let report = sweeper.sweep(SWEEP_AFTER).await?;
            Ok::<_, Error>(serde_json::to_value(report)?)
        },
    )
    .await
}

/// Whether a scheduled event asks for the due task (template.yaml's `DueSchedule` input).
fn is_due_task(event: &Value) -> bool {
    event.get("task").and_then(Value::as_str) == Some("due")
}

/// The router, with each request's caller taken from the API Gateway authorizer: the JWT `sub` claim,
/// else the IAM caller. Nothing in the request itself (body, headers) can name a caller.
pub fn with_authorizer_identity(router: Router) -> Router {
    router.layer(axum::middleware::map_request(
        |mut req: Request| async move {
            let user = authorizer_user(req.request_context_ref());
            req.extensions_mut().remove::<Identity>();
            if let Some(user) = user {
                req.extensions_mut().insert(Identity(user));
            }
            req
        },
    ))
}

fn authorizer_user(ctx: Option<&RequestContext>) -> Option<String> {
    let Some(RequestContext::ApiGatewayV2(ctx)) = ctx else {
        return None;
    };
    let authorizer = ctx.authorizer.as_ref()?;
    let jwt_sub = authorizer
        .jwt
        .as_ref()
        .and_then(|j| j.claims.get("sub"))
        .filter(|s| !s.is_empty())
        .cloned();
    jwt_sub.or_else(|| {
        authorizer
            .iam
            .as_ref()
            .and_then(|i| i.user_arn.clone().or_else(|| i.caller_id.clone()))
    })
}

/// One SQS batch through a consumer (the worker, the webhook deliverer): records become deliveries (a
/// record without a body is a malformed one, failing alone), `Retry` verdicts become the partial batch
/// response. A record without a message id is processed but cannot be reported: Lambda treats an empty
/// item identifier as a failure of the whole batch.
pub async fn handle_sqs<C: Consumer>(
    consumer: &C,
    event: LambdaEvent<SqsEvent>,
) -> SqsBatchResponse {
    let deadline: Option<Millis> = event
        .context
        .deadline
        .try_into()
        .ok()
        .filter(|d: &Millis| *d > 0);
    let inv = Invocation {
        request_id: event.context.request_id,
        deadline,
    };
    let deliveries: Vec<Delivery> = event
        .payload
        .records
        .into_iter()
        .map(|r| Delivery {
            receive_count: r
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            sent_at: r
                .attributes
                .get("SentTimestamp")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            trace: r
                .message_attributes
                .get(crate::trace::ATTRIBUTE)
                .and_then(|v| v.string_value.clone()),
            message_id: r.message_id.unwrap_or_default(),
            receipt_handle: r.receipt_handle.unwrap_or_default(),
            body: r.body.unwrap_or_default(),
        })
        .collect();
    let report = consumer.consume(&deliveries, &inv).await;
    let mut response = SqsBatchResponse::default();
    for (d, verdict) in deliveries.into_iter().zip(report.as_ref()) {
        if *verdict == Verdict::Ack {
            continue;
        }
        let id = d.message_id;
        if id.is_empty() {
            tracing::error!("record without a message id cannot be reported as failed");
        } else {
            response.add_failure(id);
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_due_schedule_s_input_asks_for_the_due_task_and_others_for_the_sweep() {
        // template.yaml's `DueSchedule` input, as EventBridge sends it.
        let input = crate::template::TEMPLATE_YAML
            .lines()
            .find_map(|l| l.trim().strip_prefix("Input: '"))
            .and_then(|l| l.strip_suffix('\''))
            .expect("the due schedule's input");
        assert!(is_due_task(&serde_json::from_str(input).unwrap()));
        // The 5-minute schedule's event (a plain EventBridge event) runs the full sweep.
        assert!(!is_due_task(
            &serde_json::json!({"source": "aws.events", "detail": {}})
        ));
    }
}
