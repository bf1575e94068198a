//! The core pipeline on the emulator, through the real AWS SDK: submit -> SQS + DynamoDB -> worker ->
//! status, with the failure paths. Each test provisions its own queues and table from template.yaml.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobkit::queue::JobMessage;
use jobkit::worker::Outcome;
use jobkit::{HandlerRegistry, JobId, JobStatus};
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_submitted_job_runs_to_completion_and_its_status_shows_the_result() {
    let env = TestEnv::start().await;
    let api = env.api(test_registry());
    let resp = api
        .handle(post_jobs(
            "alice",
            r#"{"kind":"echo","input":{"prompt":"hi","n":[1,2]}}"#,
        ))
        .await;
    let (status, body) = json(&resp);
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    let id = body["job_id"].as_str().unwrap();
    assert_eq!(body["status_url"], format!("/jobs/{id}"));
    assert_eq!(resp.headers()["location"], format!("/jobs/{id}"));

    // Before the worker runs, the job is visible as queued.
    let (status, queued) = json(&api.handle(get_job("alice", id)).await);
    assert_eq!((status, queued["status"].as_str()), (200, Some("queued")));

    let worker = env.worker(test_registry());
    let (msgs, result) = env.deliver(&worker).await;
    assert_eq!(msgs.len(), 1, "one small message per job");
    assert_eq!(
        JobMessage::decode(&msgs[0].body).unwrap().job_id.as_str(),
        id
    );
    assert_eq!(result.outcomes, [Outcome::Completed]);
    assert!(result.failures.is_empty());

    let (status, done) = json(&api.handle(get_job("alice", id)).await);
    assert_eq!(status, 200);
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], json!({"prompt": "hi", "n": [1, 2]}));
    assert_eq!(done["attempts"], 1);
    assert!(done["finished_at"].is_string() && done["started_at"].is_string());
    assert!(
        done.get("lease_owner").is_none(),
        "lease internals are not shown"
    );
    // The message was acknowledged: nothing is left to receive.
    assert!(
        env.queue
            .receive(10, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_retryable_failure_comes_back_and_succeeds_on_a_later_attempt() {
    let env = TestEnv::start().await;
    let api = env.api(test_registry());
    let worker = env.worker(test_registry());
    let id = env
        .submit(
            &api,
            r#"{"kind":"flaky","input":{"ms":1,"fail":"retryable","times":1}}"#,
        )
        .await;

    let (_, first) = env.deliver(&worker).await;
    assert_eq!(first.outcomes, [Outcome::Retrying]);
    assert_eq!(first.failures.len(), 1, "reported as a batch item failure");
    let job = env.job(&id).await;
    assert_eq!(job.status, JobStatus::Retrying);
    assert_eq!(
        job.error.as_ref().map(|e| (e.code.as_str(), e.retryable)),
        Some(("flaky_failed", true))
    );

    // The backoff (at most 1 s here) replaces the queue's long default visibility.
    let job = env
        .run_until(&worker, &id, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(job.attempts, 2);
    assert_eq!(job.result.unwrap().to_value()["attempt"], 2);
}

#[tokio::test]
async fn a_terminal_failure_marks_the_job_failed_and_acknowledges_the_message() {
    let env = TestEnv::start().await;
    let api = env.api(test_registry());
    let worker = env.worker(test_registry());
    let id = env
        .submit(&api, r#"{"kind":"flaky","input":{"fail":"terminal"}}"#)
        .await;

    let (_, result) = env.deliver(&worker).await;
    assert_eq!(result.outcomes, [Outcome::Failed]);
    assert!(
        result.failures.is_empty(),
        "a terminal failure is not retried"
    );
    let (status, body) = json(&api.handle(get_job("alice", id.as_str())).await);
    assert_eq!(status, 200);
    assert_eq!(body["status"], "failed");
    assert_eq!(
        body["error"],
        json!({"code": "flaky_failed", "message": "told to fail terminally", "retryable": false})
    );
    assert!(
        env.queue
            .receive(10, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_poison_message_ends_in_the_dlq_after_max_receive_count_receives() {
    let env = TestEnv::start().await;
    let worker = env.worker(test_registry());
    env.queue
        .send("this is not a job message", Duration::ZERO)
        .await
        .unwrap();

    let mut receives = 0;
    let moved: Vec<Delivery> = eventually("the poison message in the DLQ", WAIT, async || {
        let (msgs, result) = env.deliver(&worker).await;
        if !msgs.is_empty() {
            receives += 1;
            assert_eq!(result.outcomes, [Outcome::Malformed]);
            assert_eq!(result.failures.len(), 1);
        }
        let dead = env.dlq.receive(10, Duration::ZERO, None).await.unwrap();
        (!dead.is_empty()).then_some(dead)
    })
    .await;
    assert_eq!(moved[0].body, "this is not a job message");
    assert_eq!(
        receives,
        env.max_receive_count(),
        "delivered exactly maxReceiveCount times"
    );
}

#[tokio::test]
async fn a_job_that_keeps_failing_is_dead_lettered_with_its_last_error_and_its_message_moves_to_the_dlq()
 {
    let env = TestEnv::start().await;
    let api = env.api(test_registry());
    let worker = env.worker(test_registry());
    let id = env
        .submit(&api, r#"{"kind":"flaky","input":{"fail":"retryable"}}"#)
        .await;

    let job = env
        .run_until(&worker, &id, JobStatus::DeadLetter, WAIT)
        .await;
    assert_eq!(job.attempts, env.max_receive_count());
    assert_eq!(job.error.unwrap().code, "flaky_failed");
    let moved = eventually("the job's message in the DLQ", WAIT, async || {
        env.deliver(&worker).await;
        let dead = env.dlq.receive(10, Duration::ZERO, None).await.unwrap();
        dead.into_iter().next()
    })
    .await;
    assert_eq!(JobMessage::decode(&moved.body).unwrap().job_id, id);
}

#[tokio::test]
async fn a_duplicate_delivery_of_a_completed_job_does_not_run_it_again() {
    let env = TestEnv::start().await;
    let runs = Arc::new(AtomicU32::new(0));
    let api = env.api(counting_registry(runs.clone()));
    let worker = env.worker(counting_registry(runs.clone()));
    let id = env.submit(&api, r#"{"kind":"count","input":7}"#).await;
    env.run_until(&worker, &id, JobStatus::Completed, WAIT)
        .await;

    // SQS may deliver a message twice: simulate it with a second copy of the same message.
    let dup = JobMessage {
        job_id: id.clone(),
        kind: "count".into(),
        thread: false,
    };
    env.queue.send(&dup.encode(), Duration::ZERO).await.unwrap();
    let (msgs, result) = env.deliver(&worker).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(result.outcomes, [Outcome::AlreadyFinished]);
    assert!(result.failures.is_empty(), "acknowledged");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    let job = env.job(&id).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Completed, 1));
}

#[tokio::test]
async fn bad_messages_and_missing_jobs_fail_alone_never_the_whole_batch() {
    let env = TestEnv::start().await;
    let api = env.api(test_registry());
    let worker = env.worker(test_registry());
    let good = env.submit(&api, r#"{"kind":"echo","input":"ok"}"#).await;
    let ghost = JobMessage {
        job_id: JobId::generate(jobkit::now_millis()),
        kind: "echo".into(),
        thread: false,
    };
    env.queue
        .send(&ghost.encode(), Duration::ZERO)
        .await
        .unwrap();
    env.queue
        .send("{\"job_id\":42}", Duration::ZERO)
        .await
        .unwrap();
    let panicking = env
        .submit(
            &api,
            r#"{"kind":"flaky","input":{"fail":"panic","times":1}}"#,
        )
        .await;

    // Collect until all four were seen once (the emulator may split them over batches).
    let mut seen = Vec::new();
    eventually("all four messages delivered", WAIT, async || {
        let (msgs, result) = env.deliver(&worker).await;
        let failed = result.failures.clone();
        for (m, o) in msgs.iter().zip(&result.outcomes) {
            assert_eq!(
                failed.contains(&m.message_id),
                !matches!(o, Outcome::Completed),
                "{o:?}"
            );
            if m.receive_count == 1 {
                seen.push(*o);
            }
        }
        (seen.len() >= 4).then_some(())
    })
    .await;
    seen.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(
        seen,
        [
            Outcome::Completed,
            Outcome::Malformed,
            Outcome::Missing,
            Outcome::Retrying
        ]
    );
    assert_eq!(env.job(&good).await.status, JobStatus::Completed);
    let p = env.job(&panicking).await;
    assert!(
        p.error.unwrap().message.contains("told to panic"),
        "the panic is recorded"
    );
    // A panic is retryable: the job completes on its second attempt.
    let p = env
        .run_until(&worker, &panicking, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(p.attempts, 2);
}

#[tokio::test]
async fn status_answers_404_for_unknown_and_other_users_jobs_and_400_for_bad_ids() {
    let env = TestEnv::start().await;
    let api = env.api(test_registry());
    let id = env.submit(&api, r#"{"kind":"echo","input":1}"#).await;

    let unknown = JobId::generate(jobkit::now_millis());
    assert_error(
        &api.handle(get_job("alice", unknown.as_str())).await,
        404,
        "job_not_found",
    );
    // Bob gets exactly the answer an unknown id gets.
    let (s1, b1) = json(&api.handle(get_job("bob", id.as_str())).await);
    let (s2, b2) = json(&api.handle(get_job("alice", unknown.as_str())).await);
    assert_eq!((s1, b1), (s2, b2));
    assert_error(
        &api.handle(get_job("alice", "not-an-id")).await,
        400,
        "invalid_job_id",
    );
    // Ids are case-insensitive (Crockford base32).
    let (status, _) = json(
        &api.handle(get_job("alice", &id.as_str().to_lowercase()))
            .await,
    );
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_submits_get_a_specific_4xx_and_write_nothing() {
    let env = TestEnv::start().await;
    let api = env.api(test_registry());
    let huge_input = format!(
        r#"{{"kind":"echo","input":"{}"}}"#,
        "x".repeat(jobkit::job::MAX_INPUT_BYTES)
    );
    let huge_body = format!(r#"{{"kind":"echo","input":"{}"}}"#, "x".repeat(300 * 1024));
    let cases: Vec<(Request, u16, &str)> = vec![
        (
            post_jobs("alice", r#"{"kind":"nope","input":{}}"#),
            422,
            "unknown_kind",
        ),
        (
            post_jobs("alice", r#"{"kind":"echo","input":"#),
            400,
            "malformed_json",
        ),
        (
            post_jobs("alice", r#"{"input":{}}"#),
            400,
            "invalid_request",
        ),
        (
            post_jobs("alice", r#"{"kind":"echo"}"#),
            400,
            "invalid_request",
        ),
        (
            post_jobs("alice", r#"{"kind":"echo","input":1,"extra":true}"#),
            400,
            "invalid_request",
        ),
        (
            post_jobs("alice", r#"{"kind":7,"input":1}"#),
            400,
            "invalid_request",
        ),
        (post_jobs("alice", r#"[1,2]"#), 400, "invalid_request"),
        (post_jobs("alice", ""), 400, "invalid_request"),
        (post_jobs("alice", &huge_input), 413, "input_too_large"),
        (post_jobs("alice", &huge_body), 413, "payload_too_large"),
        (
            post_jobs_with("alice", r#"{"kind":"echo","input":1}"#, Some("text/plain")),
            415,
            "unsupported_media_type",
        ),
        (
            post_jobs_with("alice", r#"{"kind":"echo","input":1}"#, None),
            415,
            "unsupported_media_type",
        ),
        (request("PUT", "/jobs", "alice"), 405, "method_not_allowed"),
        (
            request("POST", "/jobs/01JF0000000000000000000000", "alice"),
            405,
            "method_not_allowed",
        ),
        (
            request("GET", "/nothing/here", "alice"),
            404,
            "route_not_found",
        ),
    ];
    for (req, status, code) in cases {
        assert_error(&api.handle(req).await, status, code);
    }
    assert_eq!(env.item_count().await, 0, "no job record was written");
    assert_eq!(env.queue.depth().await.unwrap(), 0, "no message was sent");
}

#[tokio::test]
async fn a_failed_enqueue_answers_503_and_leaves_no_job_waiting_forever() {
    let env = TestEnv::start().await;
    let api = env.api_with_queue(test_registry(), FailingSends::new(env.queue.clone(), 1));
    let resp = api
        .handle(post_jobs("alice", r#"{"kind":"echo","input":1}"#))
        .await;
    assert_error(&resp, 503, "service_unavailable");
    assert_eq!(resp.headers()["retry-after"], "1");
    let out = aws_sdk_dynamodb::Client::new(&env.sdk)
        .scan()
        .table_name(&env.config.table)
        .send()
        .await
        .unwrap();
    // Job records only: the owner's in-flight counter lives in the same table.
    let items: Vec<_> = out
        .items
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.contains_key("kind"))
        .collect();
    assert_eq!(items.len(), 1);
    let job: jobkit::Job = serde_dynamo::from_item(items[0].clone()).unwrap();
    assert_eq!(
        job.status,
        JobStatus::Failed,
        "not left queued without a message"
    );
    assert_eq!(job.error.unwrap().code, "enqueue_failed");
}

/// Kinds of both lanes: `plain` (the worker function's) hands its input on to `render`, which is
/// container-only; each run is recorded with the lane of the worker that ran it.
fn two_lane_registry(
    runs: Arc<std::sync::Mutex<Vec<(String, &'static str)>>>,
    lane: &'static str,
) -> HandlerRegistry {
    let mut r = test_registry();
    let seen = runs.clone();
    r.register_fn(
        "plain",
        move |input: serde_json::Value, ctx: jobkit::JobContext| {
            seen.lock().unwrap().push(("plain".into(), lane));
            async move {
                ctx.then("render", &input)?;
                Ok::<_, jobkit::JobError>(json!("handed on"))
            }
        },
    )
    .unwrap();
    let seen = runs;
    let render = jobkit::handler::FnHandler::new(move |input: serde_json::Value, _ctx| {
        seen.lock().unwrap().push(("render".into(), lane));
        async move { Ok::<_, jobkit::JobError>(json!({"rendered": input})) }
    });
    r.register_container("render", render).unwrap();
    r
}

/// The container lane: the container worker's core (as `jobctl worker --container` runs it) behind an
/// event source on the container queue.
fn container_worker(env: &TestEnv, registry: HandlerRegistry) -> jobkit::local::EventSource {
    let b = &env.backend;
    let (queue, worker) = b
        .worker_in(
            jobkit::Lane::Container,
            registry,
            fast_settings(env.config.max_attempts),
        )
        .expect("the stack has a container queue");
    jobkit::local::EventSource::new(queue, Arc::new(worker), b.clock.clone(), 10)
}

#[tokio::test]
async fn container_only_kinds_never_reach_the_worker_function() {
    let env = TestEnv::start_with(&[("ContainerQueue", "true")]).await;
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let api = env.api(two_lane_registry(runs.clone(), "lambda"));
    let lambda = env.worker(two_lane_registry(runs.clone(), "lambda"));
    let container = container_worker(&env, two_lane_registry(runs.clone(), "container"));

    // Submitted directly: into the container queue; the worker function's queue stays empty.
    let direct = env.submit(&api, r#"{"kind":"render","input":1}"#).await;
    assert_eq!(env.job(&direct).await.lane, jobkit::Lane::Container);
    let (msgs, _) = env.deliver(&lambda).await;
    assert!(msgs.is_empty(), "the worker function received {msgs:?}");
    let done = env
        .run_until(&container, &direct, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(done.result.unwrap(), json!({"rendered": 1}));

    // A pathway from a Lambda kind into a container-only one: the child goes to the container queue.
    let parent = env.submit(&api, r#"{"kind":"plain","input":2}"#).await;
    let parent = env
        .run_until(&lambda, &parent, JobStatus::Completed, WAIT)
        .await;
    let child = parent.next[0].clone();
    assert_eq!(env.job(&child).await.lane, jobkit::Lane::Container);
    let (msgs, _) = env.deliver(&lambda).await;
    assert!(msgs.is_empty(), "the worker function received {msgs:?}");
    env.run_until(&container, &child, JobStatus::Completed, WAIT)
        .await;

    // A container job's message on the jobs queue (sent before its kind moved, say) is sent on to the
    // container queue without running, its attempt given back; the container worker runs it once (the
    // forwarded copy and the original are one job).
    let stray = env.submit(&api, r#"{"kind":"render","input":3}"#).await;
    let copy = JobMessage {
        job_id: stray.clone(),
        kind: "render".into(),
        thread: false,
    };
    env.queue
        .send(&copy.encode(), Duration::ZERO)
        .await
        .unwrap();
    let (msgs, result) = env.deliver(&lambda).await;
    assert_eq!(
        (msgs.len(), result.outcomes.as_slice()),
        (1, &[Outcome::Forwarded][..])
    );
    let job = env.job(&stray).await;
    assert_eq!((job.status, job.attempts), (JobStatus::Queued, 0));
    let job = env
        .run_until(&container, &stray, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(job.attempts, 1);

    let runs = runs.lock().unwrap().clone();
    assert!(
        runs.iter()
            .all(|(kind, lane)| (kind == "render") == (*lane == "container")),
        "each kind ran only in its lane: {runs:?}"
    );
    assert_eq!(
        runs.iter().filter(|(k, _)| k == "render").count(),
        3,
        "{runs:?}"
    );
}

#[tokio::test]
async fn a_deployment_without_a_container_queue_refuses_container_only_kinds() {
    let env = TestEnv::start().await;
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let registry = two_lane_registry(runs, "lambda");
    let api = env.api(registry.clone());
    let resp = api
        .handle(post_jobs("alice", r#"{"kind":"render","input":1}"#))
        .await;
    assert_error(&resp, 422, "no_container_worker");
    assert_eq!(env.item_count().await, 0, "nothing was stored");
    // A pathway into it fails its parent plainly instead of leaving a child no worker takes.
    let parent = env.submit(&api, r#"{"kind":"plain","input":1}"#).await;
    let job = env
        .run_until(&env.worker(registry), &parent, JobStatus::Failed, WAIT)
        .await;
    let error = job.error.unwrap();
    assert_eq!(error.code, "invalid_pathway");
    assert!(error.message.contains("container"), "{}", error.message);
    assert!(job.next.is_empty());
}

#[tokio::test]
async fn the_sweep_resends_a_container_job_to_the_container_queue() {
    let env = TestEnv::start_with(&[("ContainerQueue", "true")]).await;
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let api = env.api(two_lane_registry(runs.clone(), "lambda"));
    let id = env.submit(&api, r#"{"kind":"render","input":4}"#).await;
    // Its message is lost (received and deleted by nobody's worker).
    let container_queue = env.backend.container.clone().unwrap();
    let lost = eventually("the container message", WAIT, async || {
        let got = container_queue
            .receive(1, Duration::from_secs(1), None)
            .await
            .unwrap();
        got.into_iter().next()
    })
    .await;
    container_queue.delete(&lost.receipt_handle).await.unwrap();

    let report = env.backend.sweeper().sweep(Duration::ZERO).await.unwrap();
    assert_eq!(report.resent, 1, "{report:?}");
    let (msgs, _) = env
        .deliver(&env.worker(two_lane_registry(runs.clone(), "lambda")))
        .await;
    assert!(msgs.is_empty(), "re-sent to the jobs queue: {msgs:?}");
    let container = container_worker(&env, two_lane_registry(runs.clone(), "container"));
    env.run_until(&container, &id, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(*runs.lock().unwrap(), [("render".to_owned(), "container")]);
}
