//! The Lambda adapters on real event fixtures (API Gateway v2 requests, an SQS batch), on the embedded
//! backends: the only place Lambda event types are made up, since the adapters are what read them.

mod support;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use axum::Router;
use jobkit::api::{self, ApiSettings};
use jobkit::lambda::{handle_sqs, with_authorizer_identity};
use jobkit::queue::JobMessage;
use jobkit::worker::{Invocation, Outcome, Worker};
use jobkit::{HandlerRegistry, JobId, JobStatus};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::{Value, json};
use support::*;
use tower::ServiceExt;

struct Local {
    stack: Backends,
    /// The API as the functions serve it: the router behind the authorizer-identity adapter.
    lambda_api: Router,
    worker: Worker,
}

async fn local() -> Local {
    let stack = memory().await;
    let settings = ApiSettings::from_config(&stack.config);
    let router = api::router(
        Arc::new(stack.submit_api(HandlerRegistry::with_builtins(), settings)),
        Arc::new(stack.status_api()),
        Arc::new(stack.waitpoint_api()),
    );
    let worker = stack.worker(HandlerRegistry::with_builtins(), fast_settings(5));
    Local {
        lambda_api: with_authorizer_identity(router),
        worker,
        stack,
    }
}

fn fixture(name: &str) -> Value {
    let path = repo_root().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture exists"))
        .expect("fixture is JSON")
}

/// An API Gateway v2 event, through lambda_http's own parsing, to the adapted router.
async fn call(api: &Router, event: Value) -> (u16, Value) {
    let req = lambda_http::request::from_str(&event.to_string()).expect("a valid v2 event");
    let resp = api
        .clone()
        .oneshot(req.map(axum::body::Body::new))
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn sqs_fixture() -> SqsEvent {
    let raw = std::fs::read_to_string(repo_root().join("tests/fixtures/sqs_batch.json")).unwrap();
    serde_json::from_str(&raw).expect("the fixture parses as a raw SqsEvent")
}

#[tokio::test]
async fn the_api_gateway_fixture_submits_a_job_owned_by_the_jwt_subject() {
    let l = local().await;
    let (status, body) = call(&l.lambda_api, fixture("apigw_v2_post_jobs.json")).await;
    assert_eq!(status, 202, "{body}");
    let id = JobId::parse(body["job_id"].as_str().unwrap()).unwrap();
    let job = l.stack.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.user_id, "user-alice");
    assert_eq!(job.input, json!({"prompt": "hello"}));
    assert_eq!(l.stack.queue.depth().await.unwrap(), 1);

    let mut get = fixture("apigw_v2_get_job.json");
    let path = format!("/jobs/{id}");
    get["rawPath"] = Value::from(path.as_str());
    get["requestContext"]["http"]["path"] = Value::from(path.as_str());
    get["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = Value::from("user-alice");
    let (status, view) = call(&l.lambda_api, get).await;
    assert_eq!(
        (status, view["job_id"].as_str()),
        (200, Some(id.as_str())),
        "{view}"
    );
}

/// A CORS preflight that API Gateway routes to a function (template.yaml's unauthenticated `OPTIONS`
/// routes, needed because its `ANY` routes would catch it) gets `204` without an identity, on every
/// path: API Gateway adds the CORS headers (and ignores any the function sent), so the function sends
/// none. Was `405`, which fails the preflight.
#[tokio::test]
async fn a_preflight_routed_to_a_function_is_answered_204_without_an_identity() {
    let l = local().await;
    let events = api::events_routes(Arc::new(
        l.stack.events_api(jobkit::api::StreamSettings::default()),
    ));
    for (router, path) in [
        (&l.lambda_api, "/jobs"),
        (&l.lambda_api, "/jobs/01JF0000000000000000000000"),
        (&l.lambda_api, "/not-a-route"),
        (&events, "/jobs/01JF0000000000000000000000/events"),
    ] {
        let mut event = fixture("apigw_v2_options_preflight.json");
        event["rawPath"] = Value::from(path);
        event["requestContext"]["http"]["path"] = Value::from(path);
        let req = lambda_http::request::from_str(&event.to_string()).expect("a valid v2 event");
        let resp = router
            .clone()
            .oneshot(req.map(axum::body::Body::new))
            .await
            .unwrap();
        assert_eq!(resp.status(), 204, "{path}");
        assert!(
            !resp
                .headers()
                .keys()
                .any(|k| k.as_str().starts_with("access-control-")),
            "{path}: {:?}",
            resp.headers()
        );
    }
    assert_eq!(
        l.stack.queue.depth().await.unwrap(),
        0,
        "nothing was written"
    );
}

#[tokio::test]
async fn only_the_authorizer_names_the_caller_never_a_header() {
    let l = local().await;
    let mut event = fixture("apigw_v2_post_jobs.json");
    event["headers"]["x-user-id"] = Value::from("mallory");
    event["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    let (status, body) = call(&l.lambda_api, event).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    assert_eq!(
        l.stack.queue.depth().await.unwrap(),
        0,
        "nothing was written"
    );
}

#[tokio::test]
async fn the_sqs_fixture_batch_reports_only_the_bad_records() {
    let l = local().await;
    // Record 1 names a job that does not exist, record 2 is not a job message, record 3 has no id.
    let resp = handle_sqs(
        &l.worker,
        LambdaEvent::new(sqs_fixture(), Context::default()),
    )
    .await;
    let ids: Vec<&str> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(
        ids,
        [
            "059f36b4-87a3-44ab-83d2-661975830a7d",
            "2e1424d4-f796-459a-8184-9c92662be6da"
        ],
        "an empty item identifier would fail the entire batch in Lambda"
    );
}

#[tokio::test]
async fn the_sqs_fixture_runs_a_stored_job_and_acknowledges_it() {
    let l = local().await;
    let api = Api(l.lambda_api.clone());
    let mut post = fixture("apigw_v2_post_jobs.json");
    post["body"] = Value::from(r#"{"kind":"echo","input":[1]}"#);
    let (_, body) = call(&api.0, post).await;
    let id = body["job_id"].as_str().unwrap().to_owned();
    let mut event = sqs_fixture();
    event.records.truncate(1);
    event.records[0].body = Some(
        JobMessage {
            job_id: JobId::parse(&id).unwrap(),
            kind: "echo".into(),
            thread: false,
        }
        .encode(),
    );
    let resp = handle_sqs(&l.worker, LambdaEvent::new(event, Context::default())).await;
    assert!(resp.batch_item_failures.is_empty());
    let job = l
        .stack
        .store
        .get(&JobId::parse(&id).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.status, JobStatus::Completed);
    assert_eq!(job.result.unwrap(), json!([1]));
}

#[tokio::test]
async fn jobs_of_one_batch_run_concurrently() {
    let l = local().await;
    let api = support::api_on(
        &l.stack,
        HandlerRegistry::with_builtins(),
        ApiSettings::from_config(&l.stack.config),
    );
    let mut deliveries = Vec::new();
    for i in 0..5 {
        let (_, body) = json(
            &api.handle(post_jobs("u", r#"{"kind":"sleep","input":{"ms":300}}"#))
                .await,
        );
        let msg = JobMessage {
            job_id: JobId::parse(body["job_id"].as_str().unwrap()).unwrap(),
            kind: "sleep".into(),
            thread: false,
        };
        deliveries.push(Delivery {
            message_id: format!("m{i}"),
            receipt_handle: format!("r{i}"),
            body: msg.encode(),
            receive_count: 1,
            sent_at: 0,
            trace: None,
        });
    }
    // With time paused, the sleeps only end when the runtime is idle: if the five jobs ran one after
    // another, the clock would have to advance 1.5 s; concurrently it advances 0.3 s.
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let result = l.worker.process(&deliveries, &Invocation::default()).await;
    let elapsed = start.elapsed();
    assert_eq!(result.outcomes, [Outcome::Completed; 5]);
    assert!(
        elapsed < Duration::from_millis(600),
        "took {elapsed:?} of virtual time"
    );
    for d in &deliveries {
        let id = JobMessage::decode(&d.body).unwrap().job_id;
        let job = l.stack.store.get(&id).await.unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Completed);
    }
}
