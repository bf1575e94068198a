//! Durable steps (`ctx.step`) on both backends: a step whose result was recorded never runs again, a
//! replay returns the recorded value, and an oversized result fails the job naming the step. And
//! `GET /jobs/{id}/steps` lists them — steps, waitpoints, an agent's model turns and tool calls — a page
//! at a time, to the job's owner only.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jobkit::agent::{
    Agent, Agents, Model, ModelError, ModelReply, ModelRequest, Tool, ToolCall, Usage,
};
use jobkit::handler::WaitFor;
use jobkit::steps::{StepKind, StepMeta};
use jobkit::worker::MAX_IDLE_CONTINUATIONS;
use jobkit::worker::WorkerSettings;
use jobkit::{HandlerRegistry, JobError, JobStatus};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Effects performed, by step name; the values the first run's steps returned.
#[derive(Default)]
struct Effects {
    performed: Mutex<HashMap<String, u32>>,
    first_values: Mutex<HashMap<String, u64>>,
}

/// `three`: steps a, b, c, each with a side effect and a random result. Its first attempt hangs after
/// the step named in its input (`{"hang_after": "a"}`), as a worker killed between two steps.
fn registry(effects: Arc<Effects>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("three", move |input: Value, ctx| {
        let effects = effects.clone();
        async move {
            let mut results = Vec::new();
            for name in ["a", "b", "c"] {
                let fx = effects.clone();
                let value: u64 = ctx
                    .step(name, async move {
                        *fx.performed.lock().unwrap().entry(name.into()).or_default() += 1;
                        let v = rand::random::<u64>();
                        fx.first_values.lock().unwrap().insert(name.into(), v);
                        Ok(v)
                    })
                    .await?;
                results.push(value);
                if ctx.attempt() == 1 && input["hang_after"] == name {
                    std::future::pending::<()>().await;
                }
            }
            Ok(json!({"values": results, "key_of_b": ctx.step_key("b")}))
        }
    })
    .unwrap();
    r.register_fn("big", |_: Value, ctx| async move {
        ctx.step("huge", async { Ok("x".repeat(70 * 1024)) })
            .await?;
        Ok::<_, JobError>(json!("unreachable"))
    })
    .unwrap();
    r
}

async fn a_job_killed_between_steps_performs_each_recorded_effect_once(b: Backends) {
    for hang_after in ["a", "b"] {
        let effects = Arc::new(Effects::default());
        let api = b.api_with_settings(
            registry(effects.clone()),
            jobkit::api::ApiSettings::from_config(&b.config),
        );
        let body = json!({"kind": "three", "input": {"hang_after": hang_after}}).to_string();
        let (status, accepted) = json(&api.handle(post_jobs("sam", &body)).await);
        assert_eq!(status, 202);
        let id = accepted["job_id"].as_str().unwrap().to_owned();
        // Short leases and visibility: the killed attempt's job is claimed again within seconds.
        let settings = WorkerSettings {
            lease: Duration::from_secs(1),
            ..fast_settings(5)
        };
        let worker = b
            .event_source(registry(effects.clone()), settings)
            .with_visibility(Duration::from_secs(2))
            .with_wait(Duration::from_millis(200));
        // The first attempt runs up to the hang, then its worker is killed.
        let killed = tokio::time::timeout(Duration::from_secs(3), worker.poll_once()).await;
        assert!(
            killed.is_err(),
            "the first attempt hangs after step {hang_after}"
        );
        let view = eventually("the retried job to complete", WAIT, async || {
            let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
            let (_, v) = json(&api.handle(get_job("sam", &id)).await);
            (v["status"] == "completed").then_some(v)
        })
        .await;
        assert_eq!(view["attempts"], 2, "{view}");
        let performed = effects.performed.lock().unwrap().clone();
        assert_eq!(
            performed,
            HashMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]),
            "each step's effect once (killed after {hang_after})"
        );
        // The replayed steps returned what their one run recorded.
        let first = effects.first_values.lock().unwrap().clone();
        let values: Vec<u64> = serde_json::from_value(view["result"]["values"].clone()).unwrap();
        assert_eq!(values, vec![first["a"], first["b"], first["c"]]);
        assert_eq!(view["result"]["key_of_b"], format!("{id}:b"));
    }
}

async fn a_step_over_the_limit_fails_the_job_naming_the_step(b: Backends) {
    let api = b.api_with_settings(
        registry(Arc::default()),
        jobkit::api::ApiSettings::from_config(&b.config),
    );
    let (_, accepted) = json(
        &api.handle(post_jobs("sam", r#"{"kind":"big","input":null}"#))
            .await,
    );
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let worker = b.event_source(registry(Arc::default()), fast_settings(5));
    let view = eventually("the job to fail", WAIT, async || {
        worker.poll_once().await.unwrap();
        let (_, v) = json(&api.handle(get_job("sam", &id)).await);
        (v["status"] == JobStatus::Failed.as_str()).then_some(v)
    })
    .await;
    assert_eq!(view["error"]["code"], "step_too_large", "{view}");
    assert!(
        view["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"huge\"")
    );
    assert_eq!(view["attempts"], 1, "terminal: not retried");
}

async fn the_first_recorded_result_of_a_step_stands(b: Backends) {
    let id = jobkit::JobId::generate(jobkit::now_millis());
    let meta = StepMeta {
        kind: StepKind::Step,
        started_at: 1,
        recorded_at: 2,
    };
    assert_eq!(b.store.step(&id, "s").await.unwrap(), None);
    let first = jobkit::Json::from(json!({"n": 1}));
    let second = jobkit::Json::from(json!({"n": 2}));
    assert_eq!(
        b.store
            .record_step(&id, "s", &first, &meta, 0)
            .await
            .unwrap(),
        first
    );
    // A second record (a zombie attempt, or a retry whose first answer was lost) gets the first value.
    assert_eq!(
        b.store
            .record_step(&id, "s", &second, &meta, 0)
            .await
            .unwrap(),
        first
    );
    assert_eq!(b.store.step(&id, "s").await.unwrap(), Some(first));
    assert_eq!(b.store.step(&id, "other").await.unwrap(), None);
}

/// A model that calls `double` with 21 on its first turn, then answers with what the tool said.
struct Scripted;

#[async_trait]
impl Model for Scripted {
    async fn converse(&self, request: &ModelRequest) -> Result<ModelReply, ModelError> {
        let usage = Usage {
            input_tokens: 10,
            output_tokens: 3,
        };
        Ok(if request.messages.len() == 1 {
            ModelReply {
                text: String::new(),
                tool_calls: vec![ToolCall {
                    id: "call-1".into(),
                    name: "double".into(),
                    input: json!({"n": 21}),
                    malformed: false,
                }],
                usage,
            }
        } else {
            ModelReply {
                text: "42".into(),
                tool_calls: Vec::new(),
                usage,
            }
        })
    }
}

#[derive(serde::Deserialize, schemars::JsonSchema)]
struct Double {
    n: u64,
}

/// `agent` (agent `doubler` on [`Scripted`]) and `approve`: step `fetch`, waitpoint `approve`, step
/// `after`.
fn listing_registry() -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    Agents::new(Arc::new(Scripted))
        .with(Agent {
            name: "doubler".into(),
            model: "scripted".into(),
            system: "double things".into(),
            max_turns: 4,
            tools: vec![Tool::new("double", "doubles n", |d: Double| async move {
                Ok::<_, String>(d.n * 2)
            })],
            mcp: Vec::new(),
        })
        .register(&mut r)
        .unwrap();
    r.register_fn("approve", |_: Value, ctx| async move {
        ctx.step("fetch", async { Ok(json!({"rows": 3})) }).await?;
        let ok: Value = ctx
            .wait_for("approve", WaitFor::timeout(Duration::from_secs(3600)))
            .await?;
        ctx.step("after", async { Ok(1) }).await?;
        Ok::<_, JobError>(ok)
    })
    .unwrap();
    r
}

/// Every page of `id`'s steps, `limit` at a time, as `user`; asserts each page's size.
async fn all_pages(api: &Api, user: &str, id: &str, limit: usize) -> Vec<Value> {
    let mut steps = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("limit={limit}&cursor={c}"),
            None => format!("limit={limit}"),
        };
        let (status, page) = json(
            &api.handle(request("GET", &format!("/jobs/{id}/steps?{query}"), user))
                .await,
        );
        assert_eq!(status, 200, "{page}");
        let got = page["steps"].as_array().unwrap();
        assert!(got.len() <= limit, "{page}");
        steps.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(got.len(), limit, "a page before the last is full: {page}");
                cursor = Some(c.to_owned());
            }
            None => return steps,
        }
    }
}

async fn run_until(b: &Backends, api: &Api, id: &str, status: &str) -> Value {
    let worker = b.event_source(listing_registry(), fast_settings(5));
    eventually(&format!("the job to be {status}"), WAIT, async || {
        worker.poll_once().await.unwrap();
        let (_, v) = json(&api.handle(get_job("sam", id)).await);
        (v["status"] == status).then_some(v)
    })
    .await
}

async fn submit(api: &Api, body: Value) -> String {
    let (status, accepted) = json(&api.handle(post_jobs("sam", &body.to_string())).await);
    assert_eq!(status, 202, "{accepted}");
    accepted["job_id"].as_str().unwrap().to_owned()
}

fn names(steps: &[Value]) -> Vec<&str> {
    steps.iter().map(|s| s["name"].as_str().unwrap()).collect()
}

async fn an_agent_jobs_turns_and_tool_calls_are_listed_in_order_a_page_at_a_time(b: Backends) {
    let api = b.api_with_settings(
        listing_registry(),
        jobkit::api::ApiSettings::from_config(&b.config),
    );
    let id = submit(
        &api,
        json!({"kind": "agent", "input": {"agent": "doubler", "message": "double 21"}}),
    )
    .await;
    let view = run_until(&b, &api, &id, "completed").await;
    assert_eq!(view["result"]["answer"], "42", "{view}");
    for limit in [1, 2, 100] {
        let steps = all_pages(&api, "sam", &id, limit).await;
        assert_eq!(names(&steps), ["turn-1", "tool-1-0", "turn-2"], "{steps:?}");
    }
    let steps = all_pages(&api, "sam", &id, 100).await;
    let (turn, tool) = (&steps[0], &steps[1]);
    assert_eq!(turn["kind"], "model_turn", "{turn}");
    assert_eq!(turn["state"], "completed");
    assert_eq!(
        turn["usage"],
        json!({"input_tokens": 10, "output_tokens": 3})
    );
    assert_eq!(turn["output"]["tool_calls"][0]["input"], json!({"n": 21}));
    assert_eq!(tool["kind"], "tool_call", "{tool}");
    assert_eq!(tool["output"]["content"], "42");
    assert!(tool.get("error").is_none(), "{tool}");
    assert_eq!(steps[2]["output"]["text"], "42");
    for s in &steps {
        let (started, finished) = (s["started_at"].as_str(), s["finished_at"].as_str());
        assert!(started.is_some() && finished.is_some(), "{s}");
        assert!(started <= finished, "{s}");
        assert!(s["duration_ms"].as_u64().is_some(), "{s}");
    }
}

async fn a_waitpoint_is_listed_pending_then_completed_with_its_payload(b: Backends) {
    let api = b.api_with_settings(
        listing_registry(),
        jobkit::api::ApiSettings::from_config(&b.config),
    );
    let id = submit(&api, json!({"kind": "approve", "input": null})).await;
    run_until(&b, &api, &id, "waiting").await;
    let steps = all_pages(&api, "sam", &id, 100).await;
    assert_eq!(names(&steps), ["fetch", "approve"], "{steps:?}");
    assert_eq!(steps[0]["kind"], "step");
    assert_eq!(steps[0]["output"], json!({"rows": 3}));
    let wp = &steps[1];
    assert_eq!(wp["kind"], "waitpoint", "{wp}");
    assert_eq!(wp["state"], "pending");
    assert!(wp["expires_at"].is_string() && wp["started_at"].is_string());
    assert_eq!(wp["finished_at"], Value::Null);
    assert!(wp.get("output").is_none(), "{wp}");
    let mut complete = request("POST", &format!("/jobs/{id}/waitpoints/approve"), "sam");
    *complete.body_mut() = axum::body::Body::from(r#"{"ok":true}"#);
    complete
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    let (status, body) = json(&api.handle(complete).await);
    assert!(status < 300, "{status} {body}");
    run_until(&b, &api, &id, "completed").await;
    let steps = all_pages(&api, "sam", &id, 2).await;
    assert_eq!(names(&steps), ["fetch", "approve", "after"], "{steps:?}");
    assert_eq!(steps[1]["state"], "completed");
    assert_eq!(steps[1]["output"], json!({"ok": true}));
    assert!(steps[1]["finished_at"].is_string());
}

async fn another_users_job_has_no_steps_and_bad_pages_are_refused(b: Backends) {
    let api = b.api_with_settings(
        listing_registry(),
        jobkit::api::ApiSettings::from_config(&b.config),
    );
    let id = submit(&api, json!({"kind": "approve", "input": null})).await;
    let other = submit(&api, json!({"kind": "approve", "input": null})).await;
    run_until(&b, &api, &id, "waiting").await;
    let get = |user: &str, query: &str| request("GET", &format!("/jobs/{id}/steps?{query}"), user);
    // Another user sees what an unknown id gets.
    assert_error(&api.handle(get("eve", "")).await, 404, "job_not_found");
    let unknown = jobkit::JobId::generate(jobkit::now_millis());
    assert_error(
        &api.handle(request("GET", &format!("/jobs/{unknown}/steps"), "sam"))
            .await,
        404,
        "job_not_found",
    );
    assert_error(
        &api.handle(request("GET", "/jobs/nope/steps", "sam")).await,
        400,
        "invalid_job_id",
    );
    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "limit=1&limit=2",
        "sort=asc",
    ] {
        assert_error(&api.handle(get("sam", bad)).await, 400, "invalid_request");
    }
    // A cursor is good only for the job and caller it was issued for.
    let (_, page) = json(&api.handle(get("sam", "limit=1")).await);
    let cursor = page["next_cursor"]
        .as_str()
        .expect("two entries")
        .to_owned();
    let (status, _) = json(&api.handle(get("sam", &format!("cursor={cursor}"))).await);
    assert_eq!(status, 200);
    let on_other = request(
        "GET",
        &format!("/jobs/{other}/steps?cursor={cursor}"),
        "sam",
    );
    assert_error(&api.handle(on_other).await, 400, "invalid_cursor");
    assert_error(
        &api.handle(get("sam", "cursor=bm9wZQ")).await,
        400,
        "invalid_cursor",
    );
    // Only GET.
    let delete = request("DELETE", &format!("/jobs/{id}/steps"), "sam");
    let answer = api.handle(delete).await;
    assert_error(&answer, 405, "method_not_allowed");
    assert_eq!(answer.headers()["allow"], "GET");
}

/// `spin` yields at once, every run, recording nothing; `stepper` records one new step a run and
/// yields, [`MAX_IDLE_CONTINUATIONS`] + 2 runs in all, then completes.
fn yielding_registry() -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("spin", |_: Value, _ctx| async move {
        Err::<Value, _>(JobError::Yield)
    })
    .unwrap();
    r.register_fn("stepper", |_: Value, ctx| async move {
        let runs = MAX_IDLE_CONTINUATIONS + 2;
        for i in 0..runs {
            let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mark = ran.clone();
            ctx.step(&format!("s{i}"), async move {
                mark.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(i)
            })
            .await?;
            if ran.load(std::sync::atomic::Ordering::SeqCst) && i + 1 < runs {
                return Err(JobError::Yield);
            }
        }
        Ok(json!(runs))
    })
    .unwrap();
    r
}

/// A handler that yields again and again without recording a step or a checkpoint would continue
/// forever, an invocation each time: after [`MAX_IDLE_CONTINUATIONS`] such runs in a row the job fails
/// `no_progress`. One that records a step each run continues past that many and completes.
async fn continuations_that_record_nothing_fail_the_job_and_others_go_on(b: Backends) {
    let api = b.api_with_settings(
        yielding_registry(),
        jobkit::api::ApiSettings::from_config(&b.config),
    );
    let worker = b
        .event_source(yielding_registry(), fast_settings(5))
        .with_wait(Duration::from_millis(200));
    let submit = async |kind: &str| {
        let body = json!({"kind": kind, "input": null}).to_string();
        let (status, accepted) = json(&api.handle(post_jobs("sam", &body)).await);
        assert_eq!(status, 202, "{accepted}");
        accepted["job_id"].as_str().unwrap().to_owned()
    };
    let spin = submit("spin").await;
    let stepper = submit("stepper").await;
    let ended = |v: &Value| v["status"] == "failed" || v["status"] == "completed";
    let (spun, stepped) = eventually("both jobs to end", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
        let (_, a) = json(&api.handle(get_job("sam", &spin)).await);
        let (_, b) = json(&api.handle(get_job("sam", &stepper)).await);
        (ended(&a) && ended(&b)).then_some((a, b))
    })
    .await;
    assert_eq!(spun["status"], "failed", "{spun}");
    assert_eq!(spun["error"]["code"], "no_progress", "{spun}");
    assert_eq!(spun["error"]["retryable"], false, "{spun}");
    let stored = b.store.get(&jobkit::JobId::parse(&spin).unwrap()).await;
    assert_eq!(
        stored.unwrap().unwrap().continuations,
        MAX_IDLE_CONTINUATIONS - 1
    );
    assert_eq!(stepped["status"], "completed", "{stepped}");
    assert_eq!(stepped["result"], json!(MAX_IDLE_CONTINUATIONS + 2));
}

on_both_backends!(
    continuations_that_record_nothing_fail_the_job_and_others_go_on,
    a_job_killed_between_steps_performs_each_recorded_effect_once,
    a_step_over_the_limit_fails_the_job_naming_the_step,
    the_first_recorded_result_of_a_step_stands,
    an_agent_jobs_turns_and_tool_calls_are_listed_in_order_a_page_at_a_time,
    a_waitpoint_is_listed_pending_then_completed_with_its_payload,
    another_users_job_has_no_steps_and_bad_pages_are_refused,
);
