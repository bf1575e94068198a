//! Handler tests: real Lambda event fixtures (API Gateway v2 requests, an SQS batch) fed to the API and
//! worker code, on the embedded backends. No emulator needed.

mod support;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::sqs::SqsEvent;
use jobkit::api::{Api, ApiSettings};
use jobkit::queue::{JobMessage, JobQueue, MemoryQueue};
use jobkit::store::{JobStore, MemoryStore};
use jobkit::worker::{Invocation, Outcome, Worker};
use jobkit::{HandlerRegistry, JobId, JobStatus};
use lambda_runtime::{Context, LambdaEvent};
use serde_json::json;
use support::*;

struct Local {
    store: Arc<MemoryStore>,
    queue: Arc<MemoryQueue>,
    api: Api,
    worker: Worker,
}

fn local() -> Local {
    let store = Arc::new(MemoryStore::new());
    let queue = Arc::new(MemoryQueue::new(Duration::from_secs(30)));
    let settings = ApiSettings {
        max_attempts: 5,
        job_ttl: Duration::from_secs(86_400),
        resend_after: Duration::from_secs(60),
        max_queue_depth: None,
        max_in_flight_per_user: None,
        dev_mode: false,
    };
    let api = Api::new(
        store.clone(),
        queue.clone(),
        HandlerRegistry::with_builtins(),
        settings,
    );
    let worker = Worker::new(
        store.clone(),
        queue.clone(),
        HandlerRegistry::with_builtins(),
        fast_settings(5),
    );
    Local {
        store,
        queue,
        api,
        worker,
    }
}

fn sqs_fixture() -> SqsEvent {
    let raw = std::fs::read_to_string(repo_root().join("tests/fixtures/sqs_batch.json")).unwrap();
    serde_json::from_str(&raw).expect("the fixture parses as a raw SqsEvent")
}

#[tokio::test]
async fn the_api_gateway_fixture_submits_a_job_owned_by_the_jwt_subject() {
    let l = local();
    let (status, body) = json(
        &l.api
            .handle(post_jobs(
                "user-alice",
                r#"{"kind":"echo","input":{"prompt":"hello"}}"#,
            ))
            .await,
    );
    assert_eq!(status, 202, "{body}");
    let id = JobId::parse(body["job_id"].as_str().unwrap()).unwrap();
    let job = l.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.user_id, "user-alice");
    assert_eq!(job.input, json!({"prompt": "hello"}));
    assert_eq!(l.queue.depth().await.unwrap(), 1);
}

#[tokio::test]
async fn the_sqs_fixture_batch_reports_only_the_bad_records() {
    let l = local();
    // Record 1 names a job that does not exist, record 2 is not a job message, record 3 has no id.
    let event = LambdaEvent::new(sqs_fixture(), Context::default());
    let resp = l
        .worker
        .handle(event)
        .await
        .expect("the batch never fails as a whole");
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
    let l = local();
    let (_, body) = json(
        &l.api
            .handle(post_jobs("u", r#"{"kind":"echo","input":[1]}"#))
            .await,
    );
    let id = body["job_id"].as_str().unwrap().to_owned();
    let mut event = sqs_fixture();
    event.records.truncate(1);
    event.records[0].body = Some(
        JobMessage {
            job_id: JobId::parse(&id).unwrap(),
            kind: "echo".into(),
        }
        .encode(),
    );
    let result = l.worker.process_batch(event, &Invocation::default()).await;
    assert_eq!(result.outcomes, [Outcome::Completed]);
    assert!(result.response.batch_item_failures.is_empty());
    let (status, job) = json(&l.api.handle(get_job("u", &id)).await);
    assert_eq!((status, job["status"].as_str()), (200, Some("completed")));
    assert_eq!(job["result"], json!([1]));
}

#[tokio::test]
async fn jobs_of_one_batch_run_concurrently() {
    let l = local();
    let mut event = SqsEvent::default();
    for i in 0..5 {
        let (_, body) = json(
            &l.api
                .handle(post_jobs("u", r#"{"kind":"sleep","input":{"ms":300}}"#))
                .await,
        );
        let msg = JobMessage {
            job_id: JobId::parse(body["job_id"].as_str().unwrap()).unwrap(),
            kind: "sleep".into(),
        };
        let mut rec = sqs_fixture().records.remove(0);
        rec.message_id = Some(format!("m{i}"));
        rec.body = Some(msg.encode());
        event.records.push(rec);
    }
    // With time paused, the sleeps only end when the runtime is idle: if the five jobs ran one after
    // another, the clock would have to advance 1.5 s; concurrently it advances 0.3 s.
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    let result = l.worker.process_batch(event, &Invocation::default()).await;
    let elapsed = start.elapsed();
    assert_eq!(result.outcomes, [Outcome::Completed; 5]);
    assert!(
        elapsed < Duration::from_millis(600),
        "took {elapsed:?} of virtual time"
    );
    for m in l.queue.receive(10, Duration::ZERO, None).await.unwrap() {
        let job = l
            .store
            .get(&JobMessage::decode(&m.body).unwrap().job_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(job.status, JobStatus::Completed);
    }
}
