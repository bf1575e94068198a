//! Reliability on the emulator: idempotent submits (including the crash between the DynamoDB write and the
//! SQS send), and the dead-letter tools.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobkit::api::{Api, ApiSettings};
use jobkit::dlq::DeadLetters;
use jobkit::queue::{JobMessage, JobQueue};
use jobkit::{HandlerRegistry, JobError, JobId, JobStatus};
use lambda_http::Request;
use serde_json::Value;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn keyed(user: &str, body: &str, key: &str) -> Request {
    let mut req = post_jobs(user, body);
    req.headers_mut()
        .insert("idempotency-key", key.parse().unwrap());
    req
}

async fn all_messages(env: &TestEnv) -> Vec<JobMessage> {
    let mut out = Vec::new();
    loop {
        let batch = env
            .queue
            .receive(10, Duration::ZERO, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.iter().map(|m| JobMessage::decode(&m.body).unwrap()));
    }
}

#[tokio::test]
async fn the_same_key_and_body_return_the_same_job_without_a_second_message() {
    let env = TestEnv::start().await;
    let api = env.api(HandlerRegistry::with_builtins());
    let body = r#"{"kind":"echo","input":{"a":1,"b":2}}"#;
    let (s1, first) = json(&api.handle(keyed("alice", body, "order-42")).await);
    assert_eq!(s1, 202, "{first}");
    // Same request, fields in another order: the same request.
    let (s2, again) = json(
        &api.handle(keyed(
            "alice",
            r#"{"input":{"b":2,"a":1},"kind":"echo"}"#,
            "order-42",
        ))
        .await,
    );
    assert_eq!(s2, 200, "a replay answers 200: {again}");
    assert_eq!(again["job_id"], first["job_id"]);
    let msgs = all_messages(&env).await;
    assert_eq!(msgs.len(), 1, "no second message");
    assert_eq!(msgs[0].job_id.as_str(), first["job_id"]);
    assert_eq!(env.item_count().await, 2, "one job and its key");
}

#[tokio::test]
async fn the_same_key_with_a_different_body_is_a_conflict_that_writes_nothing() {
    let env = TestEnv::start().await;
    let api = env.api(HandlerRegistry::with_builtins());
    let (s, _) = json(
        &api.handle(keyed("alice", r#"{"kind":"echo","input":1}"#, "k"))
            .await,
    );
    assert_eq!(s, 202);
    assert_error(
        &api.handle(keyed("alice", r#"{"kind":"echo","input":2}"#, "k"))
            .await,
        409,
        "idempotency_key_reused",
    );
    assert_eq!(env.item_count().await, 2);
    assert_eq!(all_messages(&env).await.len(), 1);
    assert_error(
        &api.handle(keyed("alice", r#"{"kind":"echo","input":2}"#, "bad key"))
            .await,
        400,
        "invalid_request",
    );
}

#[tokio::test]
async fn keys_are_scoped_per_user() {
    let env = TestEnv::start().await;
    let api = env.api(HandlerRegistry::with_builtins());
    let body = r#"{"kind":"echo","input":1}"#;
    let (_, a) = json(&api.handle(keyed("alice", body, "shared-key")).await);
    let (sb, b) = json(&api.handle(keyed("bob", body, "shared-key")).await);
    assert_eq!(sb, 202);
    assert_ne!(a["job_id"], b["job_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_submits_create_one_job() {
    let env = TestEnv::start().await;
    let api = Arc::new(env.api(HandlerRegistry::with_builtins()));
    let tasks = (0..16).map(|_| {
        let api = api.clone();
        tokio::spawn(async move {
            json(
                &api.handle(keyed("alice", r#"{"kind":"echo","input":"x"}"#, "race"))
                    .await,
            )
        })
    });
    let answers: Vec<(u16, Value)> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let ids: HashSet<&str> = answers
        .iter()
        .map(|(_, b)| b["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == 202).count(),
        1,
        "exactly one creation"
    );
    assert_eq!(env.item_count().await, 2, "one job and one key item");
}

#[tokio::test]
async fn a_submit_whose_send_failed_is_resubmitted_by_its_retry_and_completes() {
    let env = TestEnv::start().await;
    let flaky = env.api_with_queue(
        HandlerRegistry::with_builtins(),
        FailingSends::new(env.queue.clone(), 1),
    );
    let body = r#"{"kind":"echo","input":"survives"}"#;
    assert_error(
        &flaky.handle(keyed("alice", body, "retry-me")).await,
        503,
        "service_unavailable",
    );
    assert!(all_messages(&env).await.is_empty(), "nothing was enqueued");
    let (status, again) = json(&flaky.handle(keyed("alice", body, "retry-me")).await);
    assert_eq!(status, 200, "{again}");
    let id = JobId::parse(again["job_id"].as_str().unwrap()).unwrap();
    assert_eq!(env.job(&id).await.status, JobStatus::Queued);
    let worker = env.worker(HandlerRegistry::with_builtins());
    let job = env
        .run_until(&worker, &id, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(job.result, Some(Value::from("survives")));
}

#[tokio::test]
async fn a_submit_that_crashed_between_write_and_send_is_sent_by_its_retry() {
    let env = TestEnv::start().await;
    let mut settings = ApiSettings::from_config(&env.config);
    settings.resend_after = Duration::ZERO;
    // The send never returns; dropping the request mid-send is the function being killed there.
    let dying = Api::new(
        env.store.clone(),
        FailingSends::hanging(env.queue.clone(), 1),
        HandlerRegistry::with_builtins(),
        settings,
    );
    let body = r#"{"kind":"echo","input":"not lost"}"#;
    let crashed = tokio::time::timeout(
        Duration::from_secs(2),
        dying.handle(keyed("alice", body, "crash")),
    )
    .await;
    assert!(crashed.is_err(), "the submit died mid-send");
    assert_eq!(
        env.item_count().await,
        2,
        "the job and its key were written"
    );
    assert!(
        all_messages(&env).await.is_empty(),
        "but no message was sent"
    );

    let (status, again) = json(&dying.handle(keyed("alice", body, "crash")).await);
    assert_eq!(status, 200, "{again}");
    let id = JobId::parse(again["job_id"].as_str().unwrap()).unwrap();
    let worker = env.worker(HandlerRegistry::with_builtins());
    let job = env
        .run_until(&worker, &id, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(job.result, Some(Value::from("not lost")));
}

/// A handler that fails retryably on its first `n` runs overall, then succeeds.
fn flaky_registry(n: u32, runs: Arc<AtomicU32>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("flaky", move |input, _| {
        let runs = runs.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) < n {
                Err(JobError::retryable(
                    "upstream_down",
                    "the upstream API is down",
                ))
            } else {
                Ok(input.into())
            }
        }
    })
    .unwrap();
    r
}

#[tokio::test]
async fn dead_letters_are_listed_redriven_with_their_history_and_purged() {
    let env = TestEnv::start().await;
    let runs = Arc::new(AtomicU32::new(0));
    let registry = flaky_registry(env.max_receive_count(), runs.clone());
    let api = env.api(registry.clone());
    let worker = env.worker(registry);
    let id = env
        .submit(&api, r#"{"kind":"flaky","input":"finally"}"#)
        .await;
    env.run_until(&worker, &id, JobStatus::DeadLetter, WAIT)
        .await;
    env.queue.send("poison", Duration::ZERO).await.unwrap();
    let tools = DeadLetters::new(env.store.clone(), env.queue.clone(), env.dlq.clone());
    let listed = eventually("both messages in the DLQ", WAIT, async || {
        env.deliver(&worker).await;
        let l = tools.list().await.unwrap();
        (l.len() == 2).then_some(l)
    })
    .await;
    let entry = listed
        .iter()
        .find(|e| e.job_id.as_ref() == Some(&id))
        .expect("the job's message is listed");
    assert_eq!(entry.attempts, Some(env.max_receive_count()));
    assert_eq!(entry.last_error.as_ref().unwrap().code, "upstream_down");
    assert_eq!(entry.status, Some(JobStatus::DeadLetter));
    assert!(listed.iter().any(|e| e.body.as_deref() == Some("poison")));

    // Redrive only the job: it is queued again with its history, and the poison message stays.
    let report = tools
        .redrive(Some(&HashSet::from([id.clone()])))
        .await
        .unwrap();
    assert_eq!((report.moved, report.skipped), (1, 1));
    let requeued = env.job(&id).await;
    assert_eq!(
        (requeued.status, requeued.attempts, requeued.redrives),
        (JobStatus::Queued, 0, 1)
    );
    assert_eq!(
        requeued.error.unwrap().code,
        "upstream_down",
        "history kept"
    );
    let done = env
        .run_until(&worker, &id, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(done.result, Some(Value::from("finally")));

    assert_eq!(tools.purge().await.unwrap(), 1);
    assert!(tools.list().await.unwrap().is_empty());
}
