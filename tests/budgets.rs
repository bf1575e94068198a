//! Model usage per user per day and the daily token budget, end to end on both backends, with the
//! scripted model (each turn 10 input and 3 output tokens): usage of several jobs adds up by model in
//! `GET /usage`, each user's own, and budget 0 limits nothing; a run that crosses the budget stops
//! after that turn with `budget_exceeded` and its usage; a submit over budget is `429
//! token_budget_exhausted` until the next UTC midnight (on a clock set a minute before it), and
//! accepted after it; a worker killed after a recorded turn neither counts that turn again nor
//! publishes its text again; a bad `day` is `400`.

#[macro_use]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobkit::HandlerRegistry;
use jobkit::agent::OpenAiCompatible;
use jobkit::clock::{Clock, Millis, SystemClock};
use jobkit::local::EventSource;
use jobkit::worker::WorkerSettings;
use serde_json::{Value, json};
use support::model::{Fake, Script, fake_model, registry, registry_on};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// The API and a worker on `b` with `registry`, as `jobctl dev` builds them; `lease` short when a
/// test kills an attempt (its job is free again when the lease ends).
fn stack(
    b: &Backends,
    registry: impl Fn() -> HandlerRegistry,
    lease: Duration,
) -> (Api, EventSource) {
    let api = b.api_with_settings(registry(), jobkit::api::ApiSettings::from_config(&b.config));
    let settings = WorkerSettings {
        lease,
        ..fast_settings(5)
    };
    let worker = b
        .event_source(registry(), settings)
        .with_visibility(Duration::from_secs(2))
        .with_wait(Duration::from_millis(200));
    (api, worker)
}

/// `POST /jobs` of a `mathy` agent job as `user`.
async fn submit_agent(api: &Api, user: &str) -> Answer {
    let body = json!({"kind": "agent", "input": {"agent": "mathy", "message": "6 times 7?"}});
    api.handle(post_jobs(user, &body.to_string())).await
}

/// Submits a `mathy` job as `user`; its id.
async fn submit(api: &Api, user: &str) -> String {
    let (status, accepted) = json(&submit_agent(api, user).await);
    assert_eq!(status, 202, "{accepted}");
    accepted["job_id"].as_str().unwrap().to_owned()
}

/// Runs the worker until job `id` of `user` ends; the job as `user` sees it.
async fn finish(api: &Api, worker: &EventSource, user: &str, id: &str) -> Value {
    eventually("the agent job to finish", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
        let (_, v) = json(&api.handle(get_job(user, id)).await);
        matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "dead_letter")
        )
        .then_some(v)
    })
    .await
}

/// `GET /usage` (with `query`) as `user`.
async fn usage(api: &Api, user: &str, query: &str) -> (u16, Value) {
    json(
        &api.handle(request("GET", &format!("/usage{query}"), user))
            .await,
    )
}

/// The `mathy` agent on model id `model` at the fake.
fn mathy_on(fake: &Fake, model: &str) -> HandlerRegistry {
    registry_on(
        Arc::new(OpenAiCompatible::new(&fake.url, None)),
        model,
        Arc::default(),
    )
}

async fn usage_adds_up_by_model_per_user_and_budget_0_is_no_limit(b: Backends) {
    assert_eq!(b.config.max_tokens_per_user_per_day, 0, "the default");
    let fake = fake_model(Script::ToolThenAnswer).await;
    let (api, worker) = stack(&b, || mathy_on(&fake, "fake"), Duration::from_secs(60));
    for _ in 0..2 {
        let id = submit(&api, "ada").await;
        assert_eq!(
            finish(&api, &worker, "ada", &id).await["status"],
            "completed"
        );
    }
    let (api_big, worker_big) = stack(&b, || mathy_on(&fake, "big"), Duration::from_secs(60));
    let id = submit(&api_big, "ada").await;
    assert_eq!(
        finish(&api_big, &worker_big, "ada", &id).await["status"],
        "completed"
    );
    let now = SystemClock.now();
    let (status, ada) = usage(&api, "ada", "").await;
    assert_eq!(status, 200, "{ada}");
    assert_eq!(ada["day"], day_of(now), "{ada}");
    assert_eq!(ada["resets_at"], midnight_after(now), "{ada}");
    assert_eq!(
        ada["models"],
        json!({"fake": {"input_tokens": 40, "output_tokens": 12, "requests": 4},
               "big": {"input_tokens": 20, "output_tokens": 6, "requests": 2}}),
        "two turns of 10 + 3 a job: {ada}"
    );
    assert_eq!(ada["total_tokens"], 78, "{ada}");
    assert_eq!(
        (&ada["limit"], &ada["remaining"]),
        (&Value::Null, &Value::Null)
    );
    // Someone else's usage is not yours.
    let (_, bob) = usage(&api, "bob", "").await;
    assert_eq!(
        (&bob["total_tokens"], &bob["models"]),
        (&json!(0), &json!({})),
        "{bob}"
    );
    // Without a budget nothing is refused, however much was spent.
    assert_eq!(submit_agent(&api, "ada").await.status(), 202);
}

async fn a_run_that_crosses_the_budget_stops_after_that_turn(mut b: Backends) {
    // One turn is 13 tokens: the first turn crosses a budget of 10, which two turns would need.
    b.backend.config.max_tokens_per_user_per_day = 10;
    let fake = fake_model(Script::ToolThenAnswer).await;
    let tool_runs = Arc::new(AtomicU32::new(0));
    let (api, worker) = stack(
        &b,
        || registry(&fake.url, tool_runs.clone()),
        Duration::from_secs(60),
    );
    let id = submit(&api, "ada").await;
    let view = finish(&api, &worker, "ada", &id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"], 1, "terminal, not retried: {view}");
    assert_eq!(view["error"]["code"], "budget_exceeded", "{view}");
    assert_eq!(view["error"]["retryable"], false, "{view}");
    assert_eq!(
        view["error"]["details"]["usage"],
        json!({"input_tokens": 10, "output_tokens": 3}),
        "the turn that crossed it is kept and counted: {view}"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "no second turn");
    assert_eq!(tool_runs.load(Ordering::SeqCst), 0, "its tool did not run");
    let (_, ada) = usage(&api, "ada", "").await;
    assert_eq!(
        (&ada["total_tokens"], &ada["limit"], &ada["remaining"]),
        (&json!(13), &json!(10), &json!(0)),
        "{ada}"
    );
    // Over it: the next agent job is refused, other kinds are not, nor other users.
    assert_error(
        &submit_agent(&api, "ada").await,
        429,
        "token_budget_exhausted",
    );
    let echo = json!({"kind": "echo", "input": {"x": 1}}).to_string();
    assert_eq!(api.handle(post_jobs("ada", &echo)).await.status(), 202);
    assert_eq!(submit_agent(&api, "bob").await.status(), 202);
}

/// A clock at `at` (epoch ms) when made, running with the wall clock.
fn clock_at(at: Millis) -> Arc<Ahead> {
    Arc::new(Ahead(at - SystemClock.now()))
}

async fn a_submit_over_budget_is_refused_until_the_next_utc_midnight(mut b: Backends) {
    b.backend.config.max_tokens_per_user_per_day = 13;
    // Two minutes before a UTC midnight.
    let midnight = (SystemClock.now() / 86_400_000 + 2) * 86_400_000;
    b.backend.clock = clock_at(midnight - 120_000);
    let fake = fake_model(Script::ToolThenAnswer).await;
    let (api, worker) = stack(&b, || mathy_on(&fake, "fake"), Duration::from_secs(60));
    let id = submit(&api, "ada").await;
    let view = finish(&api, &worker, "ada", &id).await;
    assert_eq!(view["error"]["code"], "budget_exceeded", "{view}");
    let refused = submit_agent(&api, "ada").await;
    assert_error(&refused, 429, "token_budget_exhausted");
    let left = (midnight - b.clock.now()) as f64 / 1000.0;
    let retry_after: f64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (retry_after - left).abs() <= 2.0 && retry_after <= 120.0,
        "Retry-After {retry_after} s, midnight in {left} s"
    );
    let (_, body) = json(&refused);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("13 of your 13"), "{message}");
    // Past midnight the day is new: accepted, and today's usage is empty again.
    b.backend.clock = clock_at(midnight + 1_000);
    let (api, _) = stack(&b, || mathy_on(&fake, "fake"), Duration::from_secs(60));
    assert_eq!(submit_agent(&api, "ada").await.status(), 202);
    let (_, today) = usage(&api, "ada", "").await;
    assert_eq!(today["total_tokens"], 0, "{today}");
    assert_eq!(today["remaining"], 13, "{today}");
    let yesterday = day_of(midnight - 1);
    let (_, before) = usage(&api, "ada", &format!("?day={yesterday}")).await;
    assert_eq!(before["total_tokens"], 13, "{before}");
}

async fn a_worker_killed_after_a_recorded_turn_neither_counts_nor_publishes_it_again(b: Backends) {
    let fake = fake_model(Script::AloudThenHangOnSecondTurnOnce).await;
    let (api, worker) = stack(&b, || mathy_on(&fake, "fake"), Duration::from_secs(1));
    let id = submit(&api, "ada").await;
    let killed = tokio::time::timeout(Duration::from_secs(3), worker.poll_once()).await;
    assert!(
        killed.is_err(),
        "the first attempt hangs in its second turn"
    );
    let view = finish(&api, &worker, "ada", &id).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["attempts"], 2, "{view}");
    // Turn 1 was recorded before the kill; turn 2's first call never answered.
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    let (_, ada) = usage(&api, "ada", "").await;
    assert_eq!(
        ada["models"]["fake"],
        json!({"input_tokens": 20, "output_tokens": 6, "requests": 2}),
        "turn 1 counted once, when it ran: {ada}"
    );
    // The resumed attempt published only the turn it took (turn 1's replay used to be written first,
    // and the answering turn's partial, within the second after it, was then dropped on completion).
    assert_eq!(
        view["partial"],
        json!({"turn": 2, "text": "the tool said 42"}),
        "{view}"
    );
}

async fn a_bad_day_is_a_400(b: Backends) {
    let (api, _) = stack(&b, HandlerRegistry::with_builtins, Duration::from_secs(60));
    let now = SystemClock.now();
    for bad in [
        "?day=yesterday",
        "?day=2026-02-30",
        "?day=2020-01-01",
        "?day=",
        "?day=9999-12-31",
    ] {
        let (status, body) = usage(&api, "ada", bad).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_day")),
            "{bad}: {body}"
        );
    }
    let twice = format!("?day={0}&day={0}", day_of(now));
    assert_error(
        &api.handle(request("GET", &format!("/usage{twice}"), "ada"))
            .await,
        400,
        "invalid_request",
    );
    assert_error(
        &api.handle(request("GET", "/usage?days=1", "ada")).await,
        400,
        "invalid_request",
    );
    let (status, body) = usage(&api, "ada", &format!("?day={}", day_of(now - 86_400_000))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["total_tokens"], 0);
}

/// `YYYY-MM-DD` of the UTC day `at` falls on.
fn day_of(at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// The next UTC midnight after `at`, as the API writes times.
fn midnight_after(at: Millis) -> String {
    jobkit::api::rfc3339((at / 86_400_000 + 1) * 86_400_000)
}

on_both_backends!(
    usage_adds_up_by_model_per_user_and_budget_0_is_no_limit,
    a_run_that_crosses_the_budget_stops_after_that_turn,
    a_submit_over_budget_is_refused_until_the_next_utc_midnight,
    a_worker_killed_after_a_recorded_turn_neither_counts_nor_publishes_it_again,
    a_bad_day_is_a_400,
);
