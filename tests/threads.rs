//! Conversation threads on both backends, against the scripted OpenAI-compatible model: a thread of
//! three runs whose middle run calls a tool, the third model request carrying all of it; enqueued
//! runs keep their order and never overlap, also when five messages race to link; `reject` refuses a message while a run is queued (`409
//! thread_busy`), a retried submit links its run once, also after its message failed to send;
//! `interrupt` cancels a run in a slow model call, keeps what it said (marked interrupted), then runs
//! the next; a worker killed mid-run appends nothing twice; another user's (or an expired) thread is
//! `404`; the history a run sends is bounded; an oversized message is stored cut, the job unharmed;
//! a run sees the run before it while the thread's index lags (a proxy plays the lag).

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use jobkit::agent::{Agent, Agents, HistoryBound, OpenAiCompatible, Tool};
use jobkit::local::EventSource;
use jobkit::worker::WorkerSettings;
use jobkit::{Backend, HandlerRegistry};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use support::model::{Fake, Script, fake_model, last_user_text};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Deserialize, JsonSchema)]
struct Factors {
    a: i64,
    b: i64,
}

/// The `agent` kind with agent `mathy` (a `multiply` tool) on the fake model, showing `bound` of a
/// thread's history.
fn registry(url: &str, bound: HistoryBound) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    let multiply = Tool::new("multiply", "Multiplies a by b.", |f: Factors| async move {
        Ok::<_, String>(f.a * f.b)
    });
    Agents::new(Arc::new(OpenAiCompatible::new(url, None)))
        .with_history(bound)
        .with(Agent {
            name: "mathy".into(),
            model: "fake".into(),
            system: "multiply".into(),
            max_turns: 4,
            tools: vec![multiply],
            mcp: Vec::new(),
        })
        .register(&mut r)
        .unwrap();
    r
}

/// The API and a worker on `b` with `settings`, as `jobctl dev` builds them.
fn api_and_worker(
    b: &Backends,
    fake: &Fake,
    bound: HistoryBound,
    settings: WorkerSettings,
) -> (Api, EventSource) {
    let config = jobkit::api::ApiSettings::from_config(&b.config);
    let api = b.api_with_settings(registry(&fake.url, bound), config);
    let worker = b
        .event_source(registry(&fake.url, bound), settings)
        .with_visibility(Duration::from_secs(2))
        .with_wait(Duration::from_millis(200));
    (api, worker)
}

fn setup(b: &Backends, fake: &Fake) -> (Api, EventSource) {
    api_and_worker(b, fake, HistoryBound::default(), fast_settings(5))
}

/// Creates a thread as `user` with `body`; its id.
async fn create(api: &Api, user: &str, body: Value) -> String {
    let (status, view) = json(
        &api.handle(complete_req(user, "/threads", &body.to_string()))
            .await,
    );
    assert_eq!(status, 201, "{view}");
    view["thread_id"].as_str().unwrap().to_owned()
}

/// Submits `message` on `thread` as `user`: the answer's status and body.
async fn send(
    api: &Api,
    user: &str,
    thread: &str,
    message: &str,
    key: Option<&str>,
) -> (u16, Value) {
    let body =
        json!({"kind": "agent", "input": {"agent": "mathy", "message": message, "thread": thread}});
    let mut req = post_jobs(user, &body.to_string());
    if let Some(key) = key {
        req.headers_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    json(&api.handle(req).await)
}

async fn send_ok(api: &Api, thread: &str, message: &str) -> String {
    let (status, v) = send(api, "ada", thread, message, None).await;
    assert_eq!(status, 202, "{v}");
    v["job_id"].as_str().unwrap().to_owned()
}

/// Polls the worker until every job of `ids` has ended; their views.
async fn finish(api: &Api, worker: &EventSource, ids: &[&str]) -> Vec<Value> {
    eventually("the runs to end", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
        let mut views = Vec::new();
        for id in ids {
            let (_, v) = json(&api.handle(get_job("ada", id)).await);
            if !v["finished_at"].is_string() {
                return None;
            }
            views.push(v);
        }
        Some(views)
    })
    .await
}

/// Every message of `thread` as `user` sees it, paging with `limit`.
async fn messages(api: &Api, thread: &str, limit: usize) -> Vec<Value> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/threads/{thread}?limit={limit}&cursor={c}"),
            None => format!("/threads/{thread}?limit={limit}"),
        };
        let (status, page) = json(&api.handle(request("GET", &path, "ada")).await);
        assert_eq!(status, 200, "{page}");
        let got = page["messages"].as_array().unwrap();
        assert!(got.len() <= limit);
        all.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return all,
        }
    }
}

/// (role, text) of each message.
fn roles_and_texts(messages: &[Value]) -> Vec<(String, String)> {
    messages
        .iter()
        .map(|m| {
            let text = m["text"].as_str().or(m["content"].as_str()).unwrap_or("");
            (m["role"].as_str().unwrap().to_owned(), text.to_owned())
        })
        .collect()
}

async fn a_thread_of_three_runs_carries_its_history_and_the_middle_runs_tool_call(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let (api, worker) = setup(&b, &fake);
    let thread = create(&api, "ada", json!({})).await;
    for message in ["hello", "multiply 6 by 7", "thanks"] {
        let id = send_ok(&api, &thread, message).await;
        let views = finish(&api, &worker, &[&id]).await;
        assert_eq!(views[0]["status"], "completed", "{}", views[0]);
    }
    // The third run's one model request: the system prompt, then the whole conversation before it.
    let third = fake.requests.lock().unwrap().last().cloned().unwrap();
    let sent: Vec<(String, String)> = third["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("system", "multiply"),
        ("user", "hello"),
        ("assistant", "echo: hello"),
        ("user", "multiply 6 by 7"),
        ("assistant", "working on it"),
        ("tool", "42"),
        ("assistant", "the tool said 42"),
        ("user", "thanks"),
    ]
    .iter()
    .map(|(r, t)| (r.to_string(), t.to_string()))
    .collect();
    assert_eq!(sent, expected, "{third}");
    assert_eq!(
        third["messages"][4]["tool_calls"][0]["function"]["name"],
        "multiply"
    );
    // The thread holds the same, and the third answer; paged three at a time.
    let listed = messages(&api, &thread, 3).await;
    let mut kept: Vec<(String, String)> = expected[1..].to_vec();
    kept[4] = ("tool".into(), String::new());
    kept.push(("assistant".into(), "echo: thanks".into()));
    assert_eq!(roles_and_texts(&listed), kept);
    assert_eq!(listed[4]["results"][0]["content"], "42");
    assert_eq!(listed[3]["tool_calls"][0]["name"], "multiply");
    let runs: Vec<u64> = listed.iter().map(|m| m["run"].as_u64().unwrap()).collect();
    assert_eq!(runs, [1, 1, 2, 2, 2, 2, 3, 3]);
    let (_, view) = json(
        &api.handle(request("GET", &format!("/threads/{thread}"), "ada"))
            .await,
    );
    assert_eq!(
        (view["runs"].as_u64(), view["policy"].as_str()),
        (Some(3), Some("enqueue"))
    );
}

async fn enqueued_runs_keep_their_order_and_never_overlap(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let (api, worker) = setup(&b, &fake);
    let thread = create(&api, "ada", json!({"policy": "enqueue"})).await;
    // All three queued before any runs (the worker polls only below), one after another so the order
    // they were submitted in is known.
    let mut ids = Vec::new();
    for i in 1..=3 {
        ids.push(send_ok(&api, &thread, &format!("pause {i}")).await);
    }
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let views = finish(&api, &worker, &id_refs).await;
    for v in &views {
        assert_eq!(v["status"], "completed", "{v}");
    }
    // Each started after the one before it had finished (RFC 3339 in one format: text order is time
    // order).
    for pair in views.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        assert!(
            after["started_at"].as_str().unwrap() >= before["finished_at"].as_str().unwrap(),
            "overlap: {before} then {after}"
        );
    }
    let asked: Vec<String> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(last_user_text)
        .collect();
    assert_eq!(asked, ["pause 1", "pause 2", "pause 3"]);
    let texts = roles_and_texts(&messages(&api, &thread, 50).await);
    assert_eq!(texts.len(), 6);
    assert_eq!(texts[5].1, "echo: pause 3");
}

/// Five messages sent at once race to link: each gets its own run (the losers of a link read the
/// thread again), and the runs still go one at a time in their runs' order.
async fn racing_messages_each_get_a_run_and_still_take_turns(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let (api, worker) = setup(&b, &fake);
    let thread = create(&api, "ada", json!({})).await;
    let sent: Vec<String> = (1..=5).map(|i| format!("race {i}")).collect();
    let ids = futures::future::join_all(sent.iter().map(|m| send_ok(&api, &thread, m))).await;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    finish(&api, &worker, &id_refs).await;
    let listed = messages(&api, &thread, 100).await;
    // Run n's user message names its job: the runs' order.
    let mut by_run: Vec<(u64, String)> = listed
        .iter()
        .filter(|m| m["index"] == 0)
        .map(|m| {
            (
                m["run"].as_u64().unwrap(),
                m["job_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_run.sort();
    let runs: Vec<u64> = by_run.iter().map(|(r, _)| *r).collect();
    assert_eq!(runs, [1, 2, 3, 4, 5]);
    let mut views = Vec::new();
    for (_, id) in &by_run {
        let (_, v) = json(&api.handle(get_job("ada", id)).await);
        assert_eq!(v["status"], "completed", "{v}");
        views.push(v);
    }
    for pair in views.windows(2) {
        assert!(
            pair[1]["started_at"].as_str().unwrap() >= pair[0]["finished_at"].as_str().unwrap(),
            "overlap: {} then {}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(listed.len(), 10, "a user message and an answer per run");
}

async fn a_reject_thread_refuses_a_message_while_a_run_is_queued(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let (api, worker) = setup(&b, &fake);
    let thread = create(
        &api,
        "ada",
        json!({"policy": "reject", "ttl_seconds": 3600}),
    )
    .await;
    let (status, first) = send(&api, "ada", &thread, "hello", Some("k1")).await;
    assert_eq!(status, 202, "{first}");
    let busy = {
        let body = json!({"kind": "agent", "input": {"agent": "mathy", "message": "again", "thread": thread}});
        api.handle(post_jobs("ada", &body.to_string())).await
    };
    assert_error(&busy, 409, "thread_busy");
    // A retry of the first submit is its job, not a refusal, and links nothing again.
    let (status, again) = send(&api, "ada", &thread, "hello", Some("k1")).await;
    assert_eq!(
        (status, &again["job_id"]),
        (200, &first["job_id"]),
        "{again}"
    );
    let id = first["job_id"].as_str().unwrap();
    finish(&api, &worker, &[id]).await;
    let second = send_ok(&api, &thread, "again").await;
    let views = finish(&api, &worker, &[&second]).await;
    assert_eq!(views[0]["status"], "completed");
    let (_, view) = json(
        &api.handle(request("GET", &format!("/threads/{thread}"), "ada"))
            .await,
    );
    assert_eq!(view["runs"], 2, "{view}");
    assert_eq!(messages(&api, &thread, 50).await.len(), 4);
}

/// The submit's one atomic write is followed by the message's send: a submit whose send fails (as if
/// it crashed there) answers 503 with the run linked; its retry sends it, linking nothing again.
async fn a_retried_submit_whose_send_failed_links_its_run_once(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let (api, worker) = setup(&b, &fake);
    let failing = with_queue(&b, FailingSends::new(b.queue.clone(), 1));
    let flaky_api = api_on(
        &failing,
        registry(&fake.url, HistoryBound::default()),
        jobkit::api::ApiSettings::from_config(&b.config),
    );
    let thread = create(&api, "ada", json!({})).await;
    let (status, _) = send(&flaky_api, "ada", &thread, "hello", Some("k")).await;
    assert_eq!(status, 503);
    let (status, again) = send(&flaky_api, "ada", &thread, "hello", Some("k")).await;
    assert_eq!(status, 200, "{again}");
    let id = again["job_id"].as_str().unwrap();
    let views = finish(&api, &worker, &[id]).await;
    assert_eq!(views[0]["status"], "completed", "{}", views[0]);
    let (_, view) = json(
        &api.handle(request("GET", &format!("/threads/{thread}"), "ada"))
            .await,
    );
    assert_eq!(
        (view["runs"].as_u64(), view["last_job"].as_str()),
        (Some(1), Some(id))
    );
    let texts = roles_and_texts(&messages(&api, &thread, 50).await);
    assert_eq!(
        texts,
        [
            ("user".into(), "hello".into()),
            ("assistant".into(), "echo: hello".into())
        ]
    );
}

async fn an_interrupt_cancels_the_running_run_and_keeps_what_it_said(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let settings = WorkerSettings {
        cancel_poll: Duration::from_secs(1),
        ..fast_settings(5)
    };
    let (api, worker) = api_and_worker(&b, &fake, HistoryBound::default(), settings);
    let worker = Arc::new(worker);
    let polling = tokio::spawn({
        let worker = worker.clone();
        async move {
            loop {
                let _ = worker.poll_once().await;
            }
        }
    });
    let thread = create(&api, "ada", json!({"policy": "interrupt"})).await;
    let first = send_ok(&api, &thread, "slowly multiply 6 by 7").await;
    eventually("the slow model call to be in flight", WAIT, async || {
        (fake.calls.load(std::sync::atomic::Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    let second = send_ok(&api, &thread, "never mind").await;
    let views = eventually("both runs to end", WAIT, async || {
        let mut views = Vec::new();
        for id in [&first, &second] {
            let (_, v) = json(&api.handle(get_job("ada", id)).await);
            v["finished_at"].is_string().then_some(())?;
            views.push(v);
        }
        Some(views)
    })
    .await;
    polling.abort();
    assert_eq!(views[0]["status"], "cancelled", "{}", views[0]);
    assert_eq!(views[1]["status"], "completed", "{}", views[1]);
    assert!(views[1]["started_at"].as_str() >= views[0]["finished_at"].as_str());
    let listed = messages(&api, &thread, 50).await;
    let texts = roles_and_texts(&listed);
    let expected: Vec<(String, String)> = [
        ("user", "slowly multiply 6 by 7"),
        ("assistant", "working on it"),
        ("tool", ""),
        ("assistant", "(interrupted)"),
        ("user", "never mind"),
        ("assistant", "echo: never mind"),
    ]
    .iter()
    .map(|(r, t)| (r.to_string(), t.to_string()))
    .collect();
    assert_eq!(texts, expected);
    assert_eq!(listed[3]["interrupted"], true);
    assert!(listed.iter().filter(|m| m["interrupted"] == true).count() == 1);
    // The second run's model saw the interrupted run, partial answer and all.
    let last = fake.requests.lock().unwrap().last().cloned().unwrap();
    let seen = last["messages"].to_string();
    assert!(
        seen.contains("working on it") && seen.contains("(interrupted)"),
        "{seen}"
    );
}

async fn a_worker_killed_mid_run_appends_nothing_twice(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    // A killed attempt's job is free again when its lease ends: a short one.
    let settings = WorkerSettings {
        lease: Duration::from_secs(1),
        ..fast_settings(5)
    };
    let (api, worker) = api_and_worker(&b, &fake, HistoryBound::default(), settings);
    let thread = create(&api, "ada", json!({})).await;
    let id = send_ok(&api, &thread, "multiply and hang").await;
    let killed = tokio::time::timeout(Duration::from_secs(3), worker.poll_once()).await;
    assert!(
        killed.is_err(),
        "the first attempt hangs in its second turn"
    );
    let views = finish(&api, &worker, &[&id]).await;
    assert_eq!(views[0]["status"], "completed", "{}", views[0]);
    assert_eq!(views[0]["attempts"], 2);
    let listed = messages(&api, &thread, 50).await;
    let places: Vec<(u64, u64)> = listed
        .iter()
        .map(|m| (m["run"].as_u64().unwrap(), m["index"].as_u64().unwrap()))
        .collect();
    assert_eq!(places, [(1, 0), (1, 1), (1, 2), (1, 3)], "{listed:?}");
    // Appending the run's messages again (another replay) changes nothing.
    let thread_id = jobkit::thread::ThreadId::parse(&thread).unwrap();
    let query = jobkit::thread::MessageQuery {
        before: None,
        after: None,
        limit: 50,
        newest_first: false,
    };
    let stored = b.store.messages(&thread_id, &query).await.unwrap();
    let mut replayed = stored.clone();
    replayed[3].message =
        json!({"role": "assistant", "text": "a different answer", "tool_calls": []});
    b.store
        .append_messages(&thread_id, &replayed, i64::MAX / 2)
        .await
        .unwrap();
    assert_eq!(b.store.messages(&thread_id, &query).await.unwrap(), stored);
}

async fn another_users_or_an_expired_thread_is_not_found(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let (api, _worker) = setup(&b, &fake);
    let thread = create(&api, "ada", json!({"ttl_seconds": 60})).await;
    let unknown = jobkit::JobId::generate(jobkit::now_millis()).to_string();
    let mut bodies = Vec::new();
    for (user, id) in [
        ("bob", thread.as_str()),
        ("ada", unknown.as_str()),
        ("ada", "not-an-id"),
    ] {
        let resp = api
            .handle(request("GET", &format!("/threads/{id}"), user))
            .await;
        assert_error(&resp, 404, "thread_not_found");
        bodies.push(resp.body.clone());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "the same body");
    let (status, v) = send(&api, "bob", &thread, "hi", None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (404, Some("thread_not_found")),
        "{v}"
    );
    // A minute later it is gone, whether or not DynamoDB has deleted it yet.
    let later = Backend {
        clock: Arc::new(Ahead(61_000)),
        ..b.backend.clone()
    };
    let later_api = api_on(
        &later,
        registry(&fake.url, HistoryBound::default()),
        jobkit::api::ApiSettings::from_config(&b.config),
    );
    let resp = later_api
        .handle(request("GET", &format!("/threads/{thread}"), "ada"))
        .await;
    assert_error(&resp, 404, "thread_not_found");
    let (status, _) = send(&later_api, "ada", &thread, "hi", None).await;
    assert_eq!(status, 404);
    // Without an identity, nothing.
    for (method, path) in [("POST", "/threads"), ("GET", &format!("/threads/{thread}"))] {
        assert_error(
            &api.handle(unauthenticated(method, path)).await,
            401,
            "unauthenticated",
        );
    }
    // Bad bodies get their own codes.
    for (body, code) in [
        (r#"{"policy": "later"}"#, "invalid_policy"),
        (r#"{"policy": 3}"#, "invalid_policy"),
        (r#"{"ttl_seconds": 5}"#, "invalid_ttl"),
        (r#"{"ttl_seconds": "60"}"#, "invalid_ttl"),
        (r#"{"colour": "red"}"#, "invalid_request"),
        ("[1]", "invalid_request"),
        ("", "invalid_request"),
        (r#"{"policy": null}"#, "invalid_policy"),
        ("{", "malformed_json"),
    ] {
        let resp = api.handle(complete_req("ada", "/threads", body)).await;
        assert_error(&resp, 400, code);
    }
}

async fn the_history_a_run_sends_is_bounded(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let bound = HistoryBound {
        messages: 3,
        tokens: 1_000_000,
    };
    let (api, worker) = api_and_worker(&b, &fake, bound, fast_settings(5));
    let thread = create(&api, "ada", json!({})).await;
    for i in 1..=4 {
        let id = send_ok(&api, &thread, &format!("hi {i}")).await;
        finish(&api, &worker, &[&id]).await;
    }
    let requests = fake.requests.lock().unwrap().clone();
    for r in &requests {
        // System prompt, history, the run's own message.
        let history = r["messages"].as_array().unwrap().len() - 2;
        assert!(history <= 3, "{r}");
    }
    let last: Vec<String> = requests[3]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    // The last three of six earlier messages start at an answer: the window starts at the user's.
    assert_eq!(last, ["multiply", "hi 3", "echo: hi 3", "hi 4"]);
    assert_eq!(
        messages(&api, &thread, 50).await.len(),
        8,
        "the thread keeps everything"
    );
}

async fn an_oversized_message_is_stored_cut_and_the_job_is_unharmed(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let (api, worker) = setup(&b, &fake);
    let thread = create(&api, "ada", json!({})).await;
    let huge = "x".repeat(100_000);
    let id = send_ok(&api, &thread, &huge).await;
    let views = finish(&api, &worker, &[&id]).await;
    assert_eq!(views[0]["status"], "completed", "{}", views[0]["error"]);
    assert_eq!(views[0]["result"]["answer"], "echo: (a long message)");
    let listed = messages(&api, &thread, 50).await;
    assert_eq!(listed.len(), 2);
    let text = listed[0]["text"].as_str().unwrap();
    assert!(
        text.ends_with("[truncated]") && text.len() < 70_000,
        "{}",
        text.len()
    );
    assert!(listed[0]["truncated_from"].as_u64().unwrap() > 100_000);
    assert_eq!(listed[1]["text"], "echo: (a long message)");
    assert!(listed[1].get("truncated_from").is_none());
    // The run's model got the whole message: only the thread's copy is cut.
    let sent = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(last_user_text(&sent), huge);
}

/// A run's history while the thread's index lags (on DynamoDB a GSI, eventually consistent; the
/// emulator's lags through [`emulator_with_lagging_index`] by a minute, longer than the test): the
/// index lists none of the run before, whose messages were all written moments ago, yet the model
/// still gets that run's question and answer, read by key.
async fn a_run_sees_the_run_before_it_while_the_index_lags(b: Backends) {
    let fake = fake_model(Script::Conversation).await;
    let (api, worker) = setup(&b, &fake);
    let thread = create(&api, "ada", json!({})).await;
    for message in ["multiply 6 by 7", "thanks"] {
        let id = send_ok(&api, &thread, message).await;
        let views = finish(&api, &worker, &[&id]).await;
        assert_eq!(views[0]["status"], "completed", "{}", views[0]);
    }
    let second = fake.requests.lock().unwrap().last().cloned().unwrap();
    let sent: Vec<(String, String)> = second["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let text = m["content"].as_str().unwrap_or("");
            (m["role"].as_str().unwrap().to_owned(), text.to_owned())
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("system", "multiply"),
        ("user", "multiply 6 by 7"),
        ("assistant", "working on it"),
        ("tool", "42"),
        ("assistant", "the tool said 42"),
        ("user", "thanks"),
    ]
    .iter()
    .map(|(r, t)| (r.to_string(), t.to_string()))
    .collect();
    assert_eq!(sent, expected, "{second}");
}

mod lagging_index {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_sees_the_run_before_it_while_the_index_lags_embedded() {
        super::a_run_sees_the_run_before_it_while_the_index_lags(super::memory().await).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_sees_the_run_before_it_while_the_index_lags_on_emulator() {
        let lag = std::time::Duration::from_secs(60);
        let b = super::emulator_with_lagging_index(lag).await;
        super::a_run_sees_the_run_before_it_while_the_index_lags(b).await
    }
}

on_both_backends!(
    a_thread_of_three_runs_carries_its_history_and_the_middle_runs_tool_call,
    enqueued_runs_keep_their_order_and_never_overlap,
    racing_messages_each_get_a_run_and_still_take_turns,
    a_reject_thread_refuses_a_message_while_a_run_is_queued,
    a_retried_submit_whose_send_failed_links_its_run_once,
    an_interrupt_cancels_the_running_run_and_keeps_what_it_said,
    a_worker_killed_mid_run_appends_nothing_twice,
    another_users_or_an_expired_thread_is_not_found,
    the_history_a_run_sends_is_bounded,
    an_oversized_message_is_stored_cut_and_the_job_is_unharmed,
);
