//! API security (issue 5): identity, per-user isolation, list and cancel, validation, backpressure and the
//! per-user in-flight cap. Every test runs on the embedded backend and on the emulator, from the same code.

#[macro_use]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobkit::api::ApiSettings;
use jobkit::local::EventSource;
use jobkit::worker::{Outcome, WorkerSettings};
use jobkit::{HandlerRegistry, JobId, JobStatus};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// The embedded backend or the emulator, with what the API suite builds on them.
type Stack = Backends;

impl Stack {
    /// An API instance (a cold start) with `tune` applied to the stack's settings.
    fn api(&self, tune: impl FnOnce(&mut ApiSettings)) -> Api {
        self.api_with(counting_registry(Arc::default()), tune)
    }

    fn api_with(&self, registry: HandlerRegistry, tune: impl FnOnce(&mut ApiSettings)) -> Api {
        let mut settings = ApiSettings::from_config(&self.config);
        tune(&mut settings);
        self.api_with_settings(registry, settings)
    }

    fn worker(&self, registry: HandlerRegistry, settings: WorkerSettings) -> EventSource {
        self.event_source(registry, settings)
            .with_wait(Duration::from_millis(200))
    }

    async fn status(&self, id: &JobId) -> JobStatus {
        self.store.get(id).await.unwrap().unwrap().status
    }
}

async fn submit(api: &Api, user: &str, body: &str) -> (u16, Value) {
    json(&api.handle(post_jobs(user, body)).await)
}

async fn submit_ok(api: &Api, user: &str, body: &str) -> JobId {
    let (status, b) = submit(api, user, body).await;
    assert_eq!(status, 202, "{b}");
    JobId::parse(b["job_id"].as_str().unwrap()).unwrap()
}

async fn list(api: &Api, user: &str, query: &str) -> (u16, Value) {
    json(&api.handle(list_jobs(user, query)).await)
}

/// The ids of a listing, in order.
fn ids(page: &Value) -> Vec<String> {
    page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect()
}

/// Nothing was stored for `user` and nothing was enqueued.
async fn nothing_written(s: &Stack, user: &str) {
    let jobs = s
        .store
        .list(
            user,
            &jobkit::store::ListQuery {
                status: None,
                kind: None,
                limit: 10,
                after: None,
            },
        )
        .await
        .unwrap();
    assert!(jobs.is_empty(), "jobs were written: {jobs:?}");
    assert_eq!(s.queue.depth().await.unwrap(), 0, "a message was sent");
    assert_eq!(
        s.store.in_flight(user, 100).await.unwrap(),
        0,
        "a slot was taken"
    );
}

// ---------- identity and isolation ----------

async fn requests_without_an_identity_get_401_and_write_nothing(s: Stack) {
    let api = s.api(|_| {});
    for (method, path) in [
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("GET", "/jobs/01KAQZ7X4N3M2P1R0S9T8V7W6Y"),
        ("DELETE", "/jobs/01KAQZ7X4N3M2P1R0S9T8V7W6Y"),
        ("GET", "/kinds"),
    ] {
        assert_error(
            &api.handle(unauthenticated(method, path)).await,
            401,
            "unauthenticated",
        );
    }
    nothing_written(&s, "anonymous").await;
}

async fn another_users_job_is_invisible_to_read_cancel_and_list(s: Stack) {
    let api = s.api(|_| {});
    let id = submit_ok(&api, "alice", r#"{"kind":"echo","input":1}"#).await;
    let unknown = JobId::generate(jobkit::now_millis());

    let as_unknown = json(&api.handle(get_job("alice", unknown.as_str())).await);
    assert_eq!(as_unknown.0, 404);
    // Bob's read and cancel answer exactly like an unknown id, and change nothing.
    assert_eq!(
        json(&api.handle(get_job("bob", id.as_str())).await),
        as_unknown
    );
    let path = format!("/jobs/{id}");
    let (status, body) = json(&api.handle(request("DELETE", &path, "bob")).await);
    let unknown_delete = json(
        &api.handle(request("DELETE", &format!("/jobs/{unknown}"), "alice"))
            .await,
    );
    assert_eq!((status, body), unknown_delete);
    assert_eq!(s.status(&id).await, JobStatus::Queued);
    // Bob's list is empty; Alice's holds her job.
    let (status, page) = list(&api, "bob", "").await;
    assert_eq!((status, ids(&page)), (200, vec![]));
    let page = eventually("alice's job to be listed", WAIT, async || {
        let (_, page) = list(&api, "alice", "").await;
        (!ids(&page).is_empty()).then_some(page)
    })
    .await;
    assert_eq!(ids(&page), vec![id.to_string()]);
    assert!(
        page["jobs"][0].get("input").is_none(),
        "lists carry no payloads"
    );
}

// ---------- list ----------

async fn lists_page_newest_first_and_filter_by_status(s: Stack) {
    let api = s.api(|_| {});
    let mut submitted = Vec::new();
    for i in 0..5 {
        submitted
            .push(submit_ok(&api, "carol", &format!(r#"{{"kind":"echo","input":{i}}}"#)).await);
        // Distinct submit times: the index orders by time only.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let cancelled = submitted[1].clone();
    let (status, _) = json(
        &api.handle(request("DELETE", &format!("/jobs/{cancelled}"), "carol"))
            .await,
    );
    assert_eq!(status, 202);

    let newest_first: Vec<String> = submitted.iter().rev().map(|i| i.to_string()).collect();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".to_owned(),
        };
        let (status, page) = list(&api, "carol", &query).await;
        assert_eq!(status, 200, "{page}");
        assert!(ids(&page).len() <= 2);
        seen.extend(ids(&page));
        pages += 1;
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen, newest_first);
    assert_eq!(pages, 3);

    let page = eventually("the cancelled job under its status", WAIT, async || {
        let (_, page) = list(&api, "carol", "status=cancelled").await;
        (!ids(&page).is_empty()).then_some(page)
    })
    .await;
    assert_eq!(ids(&page), vec![cancelled.to_string()]);
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, queued) = list(&api, "carol", "status=queued&limit=100").await;
    assert_eq!(ids(&queued).len(), 4);
}

/// `kind=` filters on the server: pages of a kind stay full and the cursor carries on past the jobs
/// of other kinds; a kind nothing has (or nothing registers) lists nothing.
async fn lists_filter_by_kind_and_page_through_other_kinds(s: Stack) {
    let api = s.api(|_| {});
    for i in 0..9 {
        let kind = if i % 3 == 0 { "count" } else { "echo" };
        submit_ok(&api, "dora", &format!(r#"{{"kind":"{kind}","input":{i}}}"#)).await;
    }
    // The expected order is the unfiltered listing's (jobs in one millisecond are ordered by id).
    let all = eventually("every job to be listed", WAIT, async || {
        let (_, page) = list(&api, "dora", "limit=100").await;
        (ids(&page).len() == 9).then_some(page)
    })
    .await;
    let counts: Vec<String> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|j| j["kind"] == "count")
        .map(|j| j["job_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(counts.len(), 3);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let query = match &cursor {
            Some(c) => format!("kind=count&limit=2&cursor={c}"),
            None => "kind=count&limit=2".to_owned(),
        };
        let (status, page) = list(&api, "dora", &query).await;
        assert_eq!(status, 200, "{page}");
        let got = ids(&page);
        assert!(
            page["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|j| j["kind"] == "count")
        );
        seen.extend(got.clone());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(got.len(), 2, "only the last page is short");
                cursor = Some(c.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(seen, counts);
    // A cursor is bound to its filters: one made with `kind=count` does not page another kind.
    let (_, first) = list(&api, "dora", "kind=count&limit=1").await;
    let c = first["next_cursor"].as_str().unwrap();
    for other in [format!("cursor={c}"), format!("kind=echo&cursor={c}")] {
        assert_error(
            &api.handle(list_jobs("dora", &other)).await,
            400,
            "invalid_cursor",
        );
    }
    let (status, none) = list(&api, "dora", "kind=never-registered").await;
    assert_eq!((status, ids(&none)), (200, vec![]));
    assert_eq!(none["next_cursor"], Value::Null);
}

async fn bad_list_queries_are_rejected(s: Stack) {
    let api = s.api(|_| {});
    for (query, code) in [
        ("status=done", "invalid_request"),
        ("kind=", "invalid_request"),
        ("kind=Echo", "invalid_request"),
        ("kind=echo&kind=sleep", "invalid_request"),
        ("limit=0", "invalid_request"),
        ("limit=101", "invalid_request"),
        ("limit=ten", "invalid_request"),
        ("sort=asc", "invalid_request"),
        ("cursor=not-a-cursor", "invalid_cursor"),
    ] {
        assert_error(&api.handle(list_jobs("alice", query)).await, 400, code);
    }
}

// ---------- validation ----------

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Greet {
    text: String,
}

/// Issue 21 item 5: an input the kind cannot decode was accepted (202) and failed later; now it is a
/// 422 with serde's message, before anything is written, and `GET /kinds` shows what each kind takes.
async fn inputs_that_do_not_fit_the_kinds_type_are_refused_and_write_nothing(s: Stack) {
    let mut registry = test_registry();
    registry
        .register_fn("greet", |g: Greet, _| async move {
            Ok(format!("hello {}", g.text))
        })
        .unwrap();
    let api = s.api_with(registry, |c| c.max_in_flight_per_user = Some(5));
    let keyed = |body: &Value, key: Option<&str>| {
        let mut req = post_jobs("gail", &body.to_string());
        if let Some(key) = key {
            req.headers_mut()
                .insert("idempotency-key", key.parse().unwrap());
        }
        req
    };
    for (body, says) in [
        (
            json!({"kind": "greet", "input": {"text": 42}}),
            "invalid type: integer `42`, expected a string",
        ),
        (
            json!({"kind": "greet", "input": {}}),
            "missing field `text`",
        ),
        (
            json!({"kind": "sleep", "input": {"ms": 10_001}}),
            "ms must be a whole number from 0 to 10000",
        ),
        // The shipped `sleep` has no failure modes for a caller to set.
        (
            json!({"kind": "sleep", "input": {"fail": "panic"}}),
            "unknown field `fail`",
        ),
    ] {
        for key in [None, Some("gail-1")] {
            let resp = api.handle(keyed(&body, key)).await;
            assert_error(&resp, 422, "invalid_input");
            let message = json(&resp).1["error"]["message"].to_string();
            assert!(message.contains(says), "{body}: {message}");
        }
    }
    nothing_written(&s, "gail").await;
    // The key was not taken: the corrected request is a new job.
    let fixed = json!({"kind": "greet", "input": {"text": "you"}});
    let (status, b) = json(&api.handle(keyed(&fixed, Some("gail-1"))).await);
    assert_eq!(status, 202, "{b}");
    // An untyped input (`echo` takes any JSON) accepts anything.
    submit_ok(
        &api,
        "gail",
        r#"{"kind":"echo","input":[42,{"text":null}]}"#,
    )
    .await;

    // What each kind takes, from the registry submit checks against.
    let (status, listed) = json(&api.handle(request("GET", "/kinds", "gail")).await);
    assert_eq!(status, 200, "{listed}");
    let kinds = listed["kinds"].as_array().unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "flaky", "greet", "sleep"]);
    let greet = &kinds[2];
    assert_eq!(greet["lane"], "lambda");
    assert_eq!(
        greet["input_schema"]["properties"]["text"]["type"],
        "string"
    );
    assert_eq!(greet["output_schema"]["type"], "string");
    assert_eq!(
        kinds[3]["input_schema"]["properties"]["ms"]["maximum"],
        10_000
    );
    let resp = api.handle(request("POST", "/kinds", "gail")).await;
    assert_error(&resp, 405, "method_not_allowed");
    assert_eq!(resp.headers()["allow"], "GET");
}

async fn callback_urls_are_validated_and_refused_where_nothing_delivers_them(s: Stack) {
    let api = s.api(|_| {});
    for url in [
        "http://93.184.215.14/hook",                // not https
        "https://127.0.0.1/hook",                   // loopback
        "https://10.0.0.8/hook",                    // private
        "https://169.254.169.254/latest/meta-data", // instance metadata
        "https://[fd00:ec2::254]/",                 // instance metadata, IPv6
        "https://[::ffff:192.168.0.1]/",            // private, IPv4-mapped
        "https://[2002:a9fe:a9fe::]/",              // 6to4 of the instance metadata address
        "https://[::ffff:0:a9fe:a9fe]/",            // IPv4-translated, same
        "https://[2001::a9fe:a9fe]/",               // Teredo
        "https://[fec0::1]/",                       // site-local
        "https://localhost/hook",                   // resolves to loopback
        "https://user:secret@93.184.215.14/",       // credentials
        "https://no-such-host.invalid/hook",        // does not resolve
        "not a url",
    ] {
        let body = json!({"kind": "echo", "input": 1, "callback_url": url}).to_string();
        let resp = api.handle(post_jobs("dave", &body)).await;
        assert_error(&resp, 400, "invalid_callback_url");
    }
    nothing_written(&s, "dave").await;

    // A deployment without a deliveries queue refuses a valid callback: never stored and left uncalled.
    let mut undelivered = s.backend.clone();
    undelivered.deliveries = None;
    let body = json!({"kind": "echo", "input": 1, "callback_url": "https://93.184.215.14/hook"});
    let no_webhooks = api_on(
        &undelivered,
        test_registry(),
        ApiSettings::from_config(&s.config),
    );
    let resp = no_webhooks
        .handle(post_jobs("dave", &body.to_string()))
        .await;
    assert_error(&resp, 422, "callback_unsupported");
    nothing_written(&s, "dave").await;

    // Where webhooks are delivered, it is taken and shown.
    let resp = api.handle(post_jobs("dave", &body.to_string())).await;
    let (status, view) = json(&resp);
    assert_eq!(status, 202, "{view}");
    let id = view["job_id"].as_str().unwrap();
    let (_, shown) = json(&api.handle(get_job("dave", id)).await);
    assert_eq!(shown["callback_url"], "https://93.184.215.14/hook");

    // Local development may name loopback over http; a deployed API finds such a URL invalid.
    let dev = s.api(|c| c.dev_mode = true);
    let local = json!({"kind": "echo", "input": 1, "callback_url": "http://127.0.0.1:9000/hook"});
    assert_eq!(
        dev.handle(post_jobs("erin", &local.to_string()))
            .await
            .status(),
        202
    );
    assert_error(
        &api.handle(post_jobs("erin", &local.to_string())).await,
        400,
        "invalid_callback_url",
    );
}

// ---------- traces ----------

async fn a_submits_trace_context_travels_with_its_message(s: Stack) {
    let api = s.api(|_| {});
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut req = post_jobs("tia", r#"{"kind":"echo","input":1}"#);
    req.headers_mut()
        .insert("traceparent", parent.parse().unwrap());
    assert_eq!(api.handle(req).await.status(), 202);
    // Without one, a new trace starts.
    assert_eq!(
        api.handle(post_jobs("tia", r#"{"kind":"echo","input":2}"#))
            .await
            .status(),
        202
    );
    let worker = s.worker(test_registry(), fast_settings(5));
    let mut traces = Vec::new();
    eventually("both messages", WAIT, async || {
        let (batch, _) = worker.poll_once().await.unwrap();
        traces.extend(batch.into_iter().map(|d| d.trace));
        (traces.len() >= 2).then_some(())
    })
    .await;
    let parsed: Vec<jobkit::trace::TraceContext> = traces
        .iter()
        .map(|t| jobkit::trace::TraceContext::parse(t.as_deref().expect("a traceparent")).unwrap())
        .collect();
    let given = parsed
        .iter()
        .find(|t| t.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736")
        .expect("the caller's trace continues in the message");
    assert_ne!(
        given.span_id, "00f067aa0ba902b7",
        "the submit's own span is the parent"
    );
    assert!(
        parsed.iter().any(|t| t.trace_id != given.trace_id),
        "a request without a trace starts one"
    );
}

// ---------- cancel ----------

async fn a_queued_job_is_cancelled_at_once_and_never_runs(s: Stack) {
    let runs = Arc::new(AtomicU32::new(0));
    let api = s.api_with(counting_registry(runs.clone()), |c| {
        c.max_in_flight_per_user = Some(5)
    });
    let id = submit_ok(&api, "erin", r#"{"kind":"count","input":1}"#).await;
    let path = format!("/jobs/{id}");
    let (status, view) = json(&api.handle(request("DELETE", &path, "erin")).await);
    assert_eq!(
        (status, view["status"].as_str()),
        (202, Some("cancelled")),
        "{view}"
    );
    assert_eq!(
        s.store.in_flight("erin", 100).await.unwrap(),
        0,
        "slot released"
    );
    // Cancelling again changes nothing and says so.
    let (status, view) = json(&api.handle(request("DELETE", &path, "erin")).await);
    assert_eq!((status, view["status"].as_str()), (200, Some("cancelled")));

    let worker = s.worker(counting_registry(runs.clone()), fast_settings(5));
    let (msgs, result) = worker.poll_once().await.unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(result.outcomes, vec![Outcome::AlreadyFinished]);
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a cancelled job never runs");
    assert_eq!(s.status(&id).await, JobStatus::Cancelled);
}

async fn a_running_job_stops_when_cancelled_and_ends_cancelled(s: Stack) {
    let api = s.api(|c| c.max_in_flight_per_user = Some(5));
    let id = submit_ok(&api, "frank", r#"{"kind":"flaky","input":{"ms":600000}}"#).await;
    // Short leases: heartbeats, which bring the cancel request to the worker, come every 200 ms.
    let settings = WorkerSettings {
        lease: Duration::from_millis(600),
        ..fast_settings(5)
    };
    let worker = s.worker(test_registry(), settings);
    let running = tokio::spawn(async move { worker.poll_once().await.unwrap().1.outcomes });
    eventually("the job to run", WAIT, async || {
        (s.status(&id).await == JobStatus::Running).then_some(())
    })
    .await;
    let path = format!("/jobs/{id}");
    let (status, view) = json(&api.handle(request("DELETE", &path, "frank")).await);
    assert_eq!(status, 202, "{view}");
    assert_eq!(
        (view["status"].as_str(), view["cancel_requested"].as_bool()),
        (Some("running"), Some(true))
    );
    // A ten-minute sleep ends long before the deadline: the handler saw the request.
    let outcomes = tokio::time::timeout(WAIT, running)
        .await
        .expect("the handler stopped")
        .unwrap();
    assert_eq!(outcomes, vec![Outcome::Cancelled]);
    let job = s.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Cancelled);
    assert!(job.finished_at.is_some());
    assert_eq!(s.store.in_flight("frank", 100).await.unwrap(), 0);
}

async fn finished_jobs_cannot_be_cancelled(s: Stack) {
    let api = s.api(|_| {});
    let id = submit_ok(&api, "gina", r#"{"kind":"echo","input":1}"#).await;
    let worker = s.worker(test_registry(), fast_settings(5));
    worker.poll_once().await.unwrap();
    assert_eq!(s.status(&id).await, JobStatus::Completed);
    let resp = api
        .handle(request("DELETE", &format!("/jobs/{id}"), "gina"))
        .await;
    assert_error(&resp, 409, "job_finished");
    assert_eq!(s.status(&id).await, JobStatus::Completed);
    assert_error(
        &api.handle(request("DELETE", "/jobs/nope", "gina")).await,
        400,
        "invalid_job_id",
    );
}

// ---------- backpressure ----------

async fn submit_answers_429_when_the_queue_is_over_its_bound(s: Stack) {
    let bound = |c: &mut ApiSettings| c.max_queue_depth = Some(2);
    for _ in 0..2 {
        // A fresh instance each time: each reads the depth anew (instances cache it for seconds).
        submit_ok(&s.api(bound), "hank", r#"{"kind":"echo","input":1}"#).await;
    }
    let depth = eventually("the queue depth to show both jobs", WAIT, async || {
        let d = s.queue.depth().await.unwrap();
        (d >= 2).then_some(d)
    })
    .await;
    assert_eq!(depth, 2);
    let resp = s
        .api(bound)
        .handle(post_jobs("hank", r#"{"kind":"echo","input":2}"#))
        .await;
    assert_error(&resp, 429, "queue_full");
    assert!(
        resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(s.queue.depth().await.unwrap(), 2, "nothing sent");
    // Without a bound the same submit goes through.
    submit_ok(
        &s.api(|c| c.max_queue_depth = None),
        "hank",
        r#"{"kind":"echo","input":2}"#,
    )
    .await;
}

async fn concurrent_submits_never_exceed_the_in_flight_cap(s: Stack) {
    const CAP: u32 = 3;
    let api = Arc::new(s.api(|c| c.max_in_flight_per_user = Some(CAP)));
    let attempts = (0..12).map(|i| {
        let api = api.clone();
        tokio::spawn(async move {
            submit(&api, "ivy", &format!(r#"{{"kind":"echo","input":{i}}}"#)).await
        })
    });
    let answers: Vec<(u16, Value)> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    for (status, body) in answers.iter().filter(|(s, _)| *s != 202) {
        assert_eq!(*status, 429, "{body}");
        assert_eq!(body["error"]["code"], "too_many_jobs_in_flight", "{body}");
    }
    assert_eq!(accepted, CAP as usize, "exactly the cap was admitted");
    assert_eq!(s.store.in_flight("ivy", 100).await.unwrap(), i64::from(CAP));
    // The cap is per user.
    submit_ok(&api, "jack", r#"{"kind":"echo","input":1}"#).await;

    // Finishing jobs frees their slots.
    let worker = s.worker(test_registry(), fast_settings(5));
    eventually("ivy's jobs to finish", WAIT, async || {
        worker.poll_once().await.unwrap();
        (s.store.in_flight("ivy", 100).await.unwrap() == 0).then_some(())
    })
    .await;
    submit_ok(&api, "ivy", r#"{"kind":"echo","input":"again"}"#).await;
}

/// One busy user submitting as fast as this machine drives the backend: every submit under the cap is
/// admitted, the user's slot members spread over the pages of their ledger (many partition keys, none
/// over its capacity), and the count is exact. The rate is printed (the paper figure is SCALING.md's).
async fn one_busy_user_submitting_at_full_speed_spreads_over_slot_pages(s: Stack) {
    const CAP: u32 = 1000;
    const JOBS: usize = 600;
    let api = Arc::new(s.api(|c| c.max_in_flight_per_user = Some(CAP)));
    let started = std::time::Instant::now();
    let next = Arc::new(AtomicU32::new(0));
    let submitters = (0..16).map(|_| {
        let (api, next) = (api.clone(), next.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= JOBS {
                    return ids;
                }
                ids.push(
                    submit_ok(&api, "busy", &format!(r#"{{"kind":"echo","input":{i}}}"#)).await,
                );
            }
        })
    });
    let ids: Vec<JobId> = futures::future::join_all(submitters)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "one user: {JOBS} submits in {secs:.2}s, {:.0}/s",
        JOBS as f64 / secs
    );
    assert_eq!(ids.len(), JOBS);
    assert_eq!(s.store.in_flight("busy", CAP).await.unwrap(), JOBS as i64);
    let layout = jobkit::slots::Layout::new(CAP);
    let pages = ledger_pages(&*s.store, "busy").await;
    assert!(
        pages.len() as u32 > layout.pages() * 3 / 4,
        "{} of {} pages used",
        pages.len(),
        layout.pages()
    );
    for (page, members) in &pages {
        assert!(members.len() as u32 <= layout.capacity(page.unwrap()));
    }
}

async fn every_way_a_job_ends_releases_its_slot(s: Stack) {
    let api = s.api(|c| c.max_in_flight_per_user = Some(10));
    let ok = submit_ok(&api, "kim", r#"{"kind":"echo","input":1}"#).await;
    let fails = submit_ok(
        &api,
        "kim",
        r#"{"kind":"flaky","input":{"fail":"terminal"}}"#,
    )
    .await;
    let cancelled = submit_ok(&api, "kim", r#"{"kind":"echo","input":2}"#).await;
    assert_eq!(s.store.in_flight("kim", 100).await.unwrap(), 3);
    api.handle(request("DELETE", &format!("/jobs/{cancelled}"), "kim"))
        .await;
    assert_eq!(s.store.in_flight("kim", 100).await.unwrap(), 2);

    // A submit whose send fails is abandoned (failed) and gives its slot back.
    let failing = api_on(
        &with_queue(&s.backend, FailingSends::new(s.queue.clone(), 1)),
        test_registry(),
        ApiSettings {
            max_in_flight_per_user: Some(10),
            ..ApiSettings::from_config(&s.config)
        },
    );
    let resp = failing
        .handle(post_jobs("kim", r#"{"kind":"echo","input":3}"#))
        .await;
    assert_error(&resp, 503, "service_unavailable");
    assert_eq!(s.store.in_flight("kim", 100).await.unwrap(), 2);

    let worker = s.worker(test_registry(), fast_settings(5));
    eventually("the jobs to finish", WAIT, async || {
        worker.poll_once().await.unwrap();
        (s.status(&ok).await.is_terminal() && s.status(&fails).await.is_terminal()).then_some(())
    })
    .await;
    assert_eq!(s.status(&ok).await, JobStatus::Completed);
    assert_eq!(s.status(&fails).await, JobStatus::Failed);
    assert_eq!(s.store.in_flight("kim", 100).await.unwrap(), 0);
}

async fn the_sweep_records_a_job_whose_last_attempt_died_and_frees_its_slot(s: Stack) {
    let api = s.api(|c| c.max_in_flight_per_user = Some(5));
    let id = submit_ok(&api, "lena", r#"{"kind":"echo","input":1}"#).await;
    // Every attempt's worker died: each claim's lease is already over when the next one comes.
    let mut job = s.store.get(&id).await.unwrap().unwrap();
    for attempt in 0..job.max_attempts {
        let now = jobkit::now_millis();
        job = s
            .store
            .claim(&id, &format!("dead-{attempt}"), now - 1, now)
            .await
            .unwrap();
    }
    assert_eq!(job.status, JobStatus::Running);
    assert_eq!(s.store.in_flight("lena", 100).await.unwrap(), 1);
    let (_, view) = json(&api.handle(get_job("lena", id.as_str())).await);
    assert_eq!(
        view["status"], "dead_letter",
        "reads say so before any write"
    );

    // The sweep looks at the job at its check time (its insert's, SWEEP_AFTER on).
    let sweeper = sweeper_ahead(&s, jobkit::sweep::SWEEP_AFTER.as_millis() as i64);
    let report = sweeper.sweep(jobkit::sweep::SWEEP_AFTER).await.unwrap();
    assert_eq!((report.buried, report.resent), (1, 0));
    let job = s.store.get(&id).await.unwrap().unwrap();
    assert_eq!(job.status, JobStatus::DeadLetter);
    assert_eq!(job.error.unwrap().code, "lease_expired");
    assert_eq!(s.store.in_flight("lena", 100).await.unwrap(), 0);
    let again = sweeper.sweep(jobkit::sweep::SWEEP_AFTER).await.unwrap();
    assert_eq!(again.buried, 0);
}

on_both_backends!(
    requests_without_an_identity_get_401_and_write_nothing,
    another_users_job_is_invisible_to_read_cancel_and_list,
    lists_page_newest_first_and_filter_by_status,
    lists_filter_by_kind_and_page_through_other_kinds,
    bad_list_queries_are_rejected,
    callback_urls_are_validated_and_refused_where_nothing_delivers_them,
    inputs_that_do_not_fit_the_kinds_type_are_refused_and_write_nothing,
    a_submits_trace_context_travels_with_its_message,
    a_queued_job_is_cancelled_at_once_and_never_runs,
    a_running_job_stops_when_cancelled_and_ends_cancelled,
    finished_jobs_cannot_be_cancelled,
    submit_answers_429_when_the_queue_is_over_its_bound,
    concurrent_submits_never_exceed_the_in_flight_cap,
    one_busy_user_submitting_at_full_speed_spreads_over_slot_pages,
    every_way_a_job_ends_releases_its_slot,
    the_sweep_records_a_job_whose_last_attempt_died_and_frees_its_slot,
);
