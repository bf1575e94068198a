//! Reliability on the emulator: idempotent submits (including the crash between the DynamoDB write and the
//! SQS send), and the dead-letter tools.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobkit::api::ApiSettings;
use jobkit::queue::JobMessage;
use jobkit::store::DynamoStore;
use jobkit::worker::{Outcome, WorkerSettings};
use jobkit::{HandlerRegistry, JobContext, JobError, JobId, JobStatus};
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
    assert_eq!(
        env.item_count().await,
        2,
        "one job (its id is the key) and its owner's slot item"
    );
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
    assert_eq!(
        env.item_count().await,
        2,
        "the job and its owner's slot item"
    );
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
    assert_eq!(
        env.item_count().await,
        2,
        "one job (its id is the key) and its owner's slot item"
    );
    assert_eq!(
        env.store.in_flight("alice", 100).await.unwrap(),
        1,
        "the losers' members went with them"
    );
}

/// A member of the in-flight set is added before the write that makes its job hold it. While that write
/// may still be under way the member counts against the cap and no sweep removes it; past the grace the
/// sweep removes it only if no job holds it, so a write that landed late keeps its slot.
#[tokio::test]
async fn the_sweep_never_removes_a_member_whose_job_may_still_be_written() {
    use jobkit::store::{Insert, JobClaimer, JobInserter, JobReader, JobWriter, SlotLedger};
    let env = TestEnv::start().await;
    let store = env.store.clone();
    let now = jobkit::now_millis();
    let spec = || jobkit::job::NewJob {
        user_id: "ulla".into(),
        ..parent_spec()
    };
    let mut parent = jobkit::Job::new(spec(), now);
    let capped = |cap| Insert {
        keyed: false,
        in_flight_cap: Some(cap),
    };
    store.insert(&mut parent, &capped(3)).await.unwrap();
    // A completion that starts two children, computed from a copy another write then overtakes: the
    // children's members are added, their write is refused (as if it had not landed yet).
    let running = store
        .claim(&parent.job_id, "w", now + 60_000, now)
        .await
        .unwrap();
    let inputs = [1, 2].map(|i| jobkit::Json::from(serde_json::json!(i)));
    let mut children = running.children("echo", jobkit::Lane::Lambda, &inputs, now);
    let done = running
        .complete_into(
            "w",
            jobkit::Json::from(serde_json::json!(0)),
            vec![],
            "echo",
            &children,
            now,
        )
        .unwrap();
    let beat = running.heartbeat("w", now + 120_000, now).unwrap();
    store.replace(&running, &beat).await.unwrap();
    assert!(matches!(
        store.replace_spawning(&running, &done, &children).await,
        Err(jobkit::store::StoreError::Conflict { .. })
    ));
    assert_eq!(store.in_flight("ulla", 100).await.unwrap(), 3);
    let mut late = jobkit::Job::new(spec(), now);
    assert!(
        matches!(
            store.insert(&mut late, &capped(3)).await,
            Err(jobkit::store::StoreError::InFlightCapReached)
        ),
        "members of writes under way count against the cap"
    );
    let sweeper = env.backend.sweeper();
    assert_eq!(
        sweeper.release_orphaned_slots().await.unwrap(),
        0,
        "young members stay"
    );

    // The first child's write lands late; then the sweep runs as if past the grace.
    store.insert(&mut children[0], &capped(10)).await.unwrap();
    let mut later = env.backend.sweeper();
    later.slot_grace = Duration::ZERO;
    assert_eq!(
        later.release_orphaned_slots().await.unwrap(),
        1,
        "only the member no job holds"
    );
    assert_eq!(store.in_flight("ulla", 100).await.unwrap(), 2);
    assert!(
        store
            .get(&children[0].job_id)
            .await
            .unwrap()
            .unwrap()
            .holds_slot()
    );
    assert!(store.get(&children[1].job_id).await.unwrap().is_none());
}

/// Claimed, counted jobs: `per_user` for each of `users`, under a cap of 5.
async fn running_jobs(
    store: &DynamoStore,
    users: &[String],
    per_user: usize,
    now: jobkit::job::Millis,
) -> Vec<jobkit::Job> {
    use jobkit::store::{Insert, JobClaimer, JobInserter};
    let mut running = Vec::new();
    for user in users {
        for _ in 0..per_user {
            let mut job = jobkit::Job::new(
                jobkit::job::NewJob {
                    user_id: user.clone(),
                    ..parent_spec()
                },
                now,
            );
            let how = Insert {
                keyed: false,
                in_flight_cap: Some(5),
            };
            store.insert(&mut job, &how).await.unwrap();
            running.push(
                store
                    .claim(&job.job_id, "w", now + 60_000, now)
                    .await
                    .unwrap(),
            );
        }
    }
    running
}

/// Completes `jobs`, all at once.
async fn complete_all(
    store: &DynamoStore,
    jobs: &[jobkit::Job],
    now: jobkit::job::Millis,
) -> Vec<Result<(), jobkit::store::StoreError>> {
    use jobkit::store::JobWriter;
    let completions = jobs.iter().map(|job| async move {
        let done = job
            .complete("w", serde_json::json!(1).into(), vec![], now)
            .unwrap();
        store.replace(job, &done).await
    });
    futures::future::join_all(completions).await
}

/// No member of `users` is left in their sets.
async fn assert_all_released(store: &DynamoStore, users: &[String]) {
    use jobkit::store::SlotLedger;
    for user in users {
        assert_eq!(
            store.in_flight(user, 100).await.unwrap(),
            0,
            "{user}'s members"
        );
    }
    let left: Vec<_> = store
        .all_slots()
        .await
        .unwrap()
        .into_iter()
        .filter(|s| {
            users
                .iter()
                .any(|u| jobkit::slots::Ledger::owner(u) == s.ledger)
                && !s.slots.is_empty()
        })
        .collect();
    assert!(left.is_empty(), "members left: {left:?}");
}

/// Releases of many owners at once go out together (one request per 25 owners, see
/// `store/dynamo/release.rs`): each must still remove exactly its members, two jobs of one owner in the
/// same request included, and a repeated release (an owner whose set is empty already) must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_completions_of_many_owners_release_every_member() {
    use jobkit::store::SlotLedger;
    let env = TestEnv::start().await;
    let store = &*env.store;
    let now = jobkit::now_millis();
    let users: Vec<String> = (0..30).map(|i| format!("many-{i}")).collect();
    let mut running = running_jobs(store, &users, 2, now).await;
    // One more owner, whose only job ended already: its release comes again, to an emptied set.
    let ended = [running.pop().unwrap(), running.pop().unwrap()];
    assert!(
        complete_all(store, &ended, now)
            .await
            .iter()
            .all(Result::is_ok)
    );
    assert_eq!(store.in_flight("many-29", 100).await.unwrap(), 0);

    let members = ended.each_ref().map(jobkit::Job::slot);
    let ledger = jobkit::slots::Ledger::owner("many-29");
    let again = store.release_slots(&ledger, &members);
    let (results, again) = tokio::join!(complete_all(store, &running, now), again);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    again.unwrap();
    assert_all_released(store, &users).await;
}

/// The batched release refused outright (a role without `dynamodb:PartiQLUpdate`, or throttled past
/// the SDK's retries): every member is still removed, one UpdateItem per owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batched_releases_are_released_one_by_one() {
    let env = TestEnv::start().await;
    let proxy =
        support::proxy::FaultProxy::start_for(&endpoint(), "BatchExecuteStatement", 1.0).await;
    let sdk = jobkit::aws::sdk_config(Some(&proxy.endpoint)).await;
    let store = DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), env.store.table());
    let now = jobkit::now_millis();
    let users: Vec<String> = (0..20).map(|i| format!("refused-{i}")).collect();
    let running = running_jobs(&store, &users, 1, now).await;

    let results = complete_all(&store, &running, now).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert!(
        proxy.stats.rejected.load(Ordering::Relaxed) > 0,
        "the releases were tried as a batch first"
    );
    assert_all_released(&store, &users).await;
}

/// A counted `echo` job's spec, for `user_id` to be set.
fn parent_spec() -> jobkit::job::NewJob {
    jobkit::job::NewJob {
        user_id: String::new(),
        kind: "echo".into(),
        input: jobkit::Json::from(serde_json::json!(0)),
        max_attempts: 3,
        ttl_secs: 86_400,
        callback_url: None,
        counted: true,
    }
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
    assert_eq!(
        job.result.map(|r| r.to_value()),
        Some(Value::from("survives"))
    );
}

#[tokio::test]
async fn a_submit_that_crashed_between_write_and_send_is_sent_by_its_retry() {
    let env = TestEnv::start().await;
    let mut settings = ApiSettings::from_config(&env.config);
    settings.resend_after = Duration::ZERO;
    // The send never returns; dropping the request mid-send is the function being killed there.
    let dying = api_on(
        &with_queue(&env.backend, FailingSends::hanging(env.queue.clone(), 1)),
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
        "the job and its owner's slot item were written"
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
    assert_eq!(
        job.result.map(|r| r.to_value()),
        Some(Value::from("not lost"))
    );
}

/// A handler that fails retryably on its first `n` runs overall, then succeeds.
fn flaky_registry(n: u32, runs: Arc<AtomicU32>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("flaky", move |input: Value, _| {
        let runs = runs.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) < n {
                Err(JobError::retryable(
                    "upstream_down",
                    "the upstream API is down",
                ))
            } else {
                Ok(input)
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
    let tools = env.backend.dead_letters().expect("the stack has a DLQ");
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
    assert_eq!(done.result.unwrap().to_value(), Value::from("finally"));

    assert_eq!(tools.purge().await.unwrap(), 1);
    assert!(tools.list().await.unwrap().is_empty());
}

/// Settings with a short lease, so heartbeats and lease expiry happen within a test.
fn short_lease(env: &TestEnv, lease: Duration) -> WorkerSettings {
    WorkerSettings {
        lease,
        ..fast_settings(env.config.max_attempts)
    }
}

/// `slow`: sleeps `input` milliseconds on the first run only; counts runs.
fn slow_registry(runs: Arc<AtomicU32>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("slow", move |input: Value, _| {
        let runs = runs.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                tokio::time::sleep(Duration::from_millis(input.as_u64().unwrap_or(0))).await;
            }
            Ok(Value::from("done"))
        }
    })
    .unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_long_job_leased_so_a_duplicate_delivery_finds_it_busy() {
    let env = TestEnv::start().await;
    let runs = Arc::new(AtomicU32::new(0));
    let api = env.api(slow_registry(runs.clone()));
    let id = env.submit(&api, r#"{"kind":"slow","input":4000}"#).await;
    // A 1.5 s lease for a 4 s job: only heartbeats keep it.
    let first = Arc::new(env.worker_with(
        slow_registry(runs.clone()),
        short_lease(&env, Duration::from_millis(1500)),
    ));
    let running = tokio::spawn({
        let first = first.clone();
        async move { first.poll_once().await.unwrap() }
    });
    let claimed = eventually("the job claimed", WAIT, async || {
        let j = env.job(&id).await;
        (j.status == JobStatus::Running).then_some(j)
    })
    .await;
    eventually("a heartbeat past the first lease", WAIT, async || {
        let j = env.job(&id).await;
        (j.lease_expires_at > claimed.lease_expires_at
            && jobkit::now_millis() > claimed.lease_expires_at.unwrap())
        .then_some(())
    })
    .await;
    // The lease the claim took has run out, but heartbeats renewed it: a second delivery must not run it.
    let dup = JobMessage {
        job_id: id.clone(),
        kind: "slow".into(),
        thread: false,
    };
    env.queue.send(&dup.encode(), Duration::ZERO).await.unwrap();
    let second = env.worker(slow_registry(runs.clone()));
    let (_, r) = eventually("the duplicate delivered", WAIT, async || {
        let (m, r) = second.poll_once().await.unwrap();
        (!m.is_empty()).then_some((m, r))
    })
    .await;
    assert_eq!(r.outcomes, [Outcome::Busy]);
    let (_, r) = running.await.unwrap();
    assert_eq!(r.outcomes, [Outcome::Completed]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(env.job(&id).await.attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_is_recovered_when_its_lease_and_visibility_run_out() {
    let env = TestEnv::start().await;
    let runs = Arc::new(AtomicU32::new(0));
    let api = env.api(slow_registry(runs.clone()));
    let id = env.submit(&api, r#"{"kind":"slow","input":600000}"#).await;
    let settings = short_lease(&env, Duration::from_secs(1));
    let doomed = Arc::new(env.worker_with(slow_registry(runs.clone()), settings.clone()));
    let task = tokio::spawn({
        let doomed = doomed.clone();
        async move { doomed.poll_once().await }
    });
    // Running: its handler started (the rescuer's run must be the second), and a heartbeat renewed the
    // lease (so the message's visibility was shortened: a worker that dies in the first moments leaves it
    // to the queue's own timeout).
    let claimed = eventually("the job running", WAIT, async || {
        let job = env.job(&id).await;
        (job.status == JobStatus::Running && runs.load(Ordering::SeqCst) == 1).then_some(job)
    })
    .await;
    eventually("a heartbeat", WAIT, async || {
        (env.job(&id).await.lease_expires_at > claimed.lease_expires_at).then_some(())
    })
    .await;
    task.abort(); // the worker dies: no more heartbeats, no outcome, no delete
    assert!(task.await.unwrap_err().is_cancelled());

    let rescuer = env.worker_with(slow_registry(runs.clone()), settings);
    let job = env
        .run_until(&rescuer, &id, JobStatus::Completed, WAIT)
        .await;
    assert_eq!(job.attempts, 2, "the dead attempt counts");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_job_longer_than_an_invocation_yields_and_resumes_from_its_checkpoint_each_time() {
    let env = TestEnv::start().await;
    let starts = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let mut registry = HandlerRegistry::with_builtins();
    let seen = starts.clone();
    registry
        .register_fn("steps", move |input: Value, ctx: JobContext| {
            let seen = seen.clone();
            async move {
                let total = input["steps"].as_u64().unwrap();
                let from = ctx
                    .checkpoint::<Value>()?
                    .and_then(|c| c["next"].as_u64())
                    .unwrap_or(0);
                seen.lock().unwrap().push(from);
                for step in from..total {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    ctx.save_checkpoint(&serde_json::json!({"next": step + 1}))
                        .await?;
                    ctx.progress(
                        ((step + 1) * 100 / total) as u8,
                        format!("step {}", step + 1),
                    )
                    .await?;
                    if step + 1 < total && ctx.should_yield() {
                        return Err(JobError::Yield);
                    }
                }
                Ok(total)
            }
        })
        .unwrap();
    let api = env.api(registry.clone());
    let id = env
        .submit(&api, r#"{"kind":"steps","input":{"steps":8}}"#)
        .await;
    // Each simulated invocation has 700 ms; handlers yield with 500 ms left: a few steps per invocation.
    let settings = WorkerSettings {
        yield_margin: Duration::from_millis(500),
        ..fast_settings(env.config.max_attempts)
    };
    let worker = env
        .worker_with(registry, settings)
        .with_timeout(Duration::from_millis(700));
    let job = env
        .run_until(&worker, &id, JobStatus::Completed, WAIT)
        .await;
    let starts = starts.lock().unwrap().clone();
    assert!(starts.len() >= 3, "spanned several invocations: {starts:?}");
    assert_eq!(starts[0], 0);
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "each resumed past the last: {starts:?}"
    );
    assert_eq!(job.result.unwrap().to_value(), Value::from(8));
    assert_eq!(job.continuations as usize, starts.len() - 1);
    assert_eq!(job.attempts, 1, "continuations are not failed attempts");
    assert_eq!(job.progress.unwrap().percent, 100);
}

#[tokio::test]
async fn the_sweep_resends_a_job_whose_submit_crashed_before_sending_and_it_completes() {
    let env = TestEnv::start().await;
    let dying = env.api_with_queue(
        HandlerRegistry::with_builtins(),
        FailingSends::hanging(env.queue.clone(), 1),
    );
    let crashed = tokio::time::timeout(
        Duration::from_secs(2),
        dying.handle(post_jobs("alice", r#"{"kind":"echo","input":"swept"}"#)),
    )
    .await;
    assert!(
        crashed.is_err(),
        "the submit died mid-send, with no key to retry with"
    );
    assert!(all_messages(&env).await.is_empty());
    let sweeper = env.backend.sweeper();
    // Not yet stale under the deployed threshold; stale under a zero one.
    assert_eq!(
        sweeper
            .sweep(jobkit::sweep::SWEEP_AFTER)
            .await
            .unwrap()
            .resent,
        0
    );
    assert_eq!(sweeper.sweep(Duration::ZERO).await.unwrap().resent, 1);
    let worker = env.worker(HandlerRegistry::with_builtins());
    let (msgs, result) = env.deliver(&worker).await;
    assert_eq!(
        (msgs.len(), result.outcomes.as_slice()),
        (1, [Outcome::Completed].as_slice())
    );
    assert_eq!(
        sweeper.sweep(Duration::ZERO).await.unwrap().resent,
        0,
        "nothing left queued"
    );
}
