//! Waitpoints (`ctx.wait_for`, `ctx.sleep`) on both backends: a job parks, costs no attempt, resumes
//! exactly once with the completion's payload and never re-runs a finished step — whoever resumes it
//! (the completion, the worker that was parking it, the sweep) and whatever crashes in between.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use jobkit::api::ApiSettings;
use jobkit::handler::WaitFor;
use jobkit::local::EventSource;
use jobkit::waitpoint::{WaitState, Waitpoint};
use jobkit::worker::{BatchResult, WorkerSettings};
use jobkit::{HandlerRegistry, JobError, JobId};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// How often each step's body ran, and each handler started.
#[derive(Default)]
struct Runs(Mutex<HashMap<String, u32>>);

impl Runs {
    fn note(&self, what: &str) {
        *self.0.lock().unwrap().entry(what.into()).or_default() += 1;
    }
    fn get(&self, what: &str) -> u32 {
        self.0.lock().unwrap().get(what).copied().unwrap_or(0)
    }
}

/// `approve`: step `before`, waits for `approve` (its input's `timeout_ms`, an hour by default), step
/// `after`, then answers the payload; a timeout is answered `{"timed_out": true}` when its input says
/// `handle_timeout`. `nap`: sleeps `ms` then answers `"rested"`. `racy`: completes its own waitpoint
/// through the API (from `api`) after recording it and before parking, as a completion that lands
/// while the worker parks the job.
fn registry(runs: Arc<Runs>, api: Arc<OnceLock<Api>>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    let r1 = runs.clone();
    r.register_fn("approve", move |input: Value, ctx| {
        let runs = r1.clone();
        async move {
            runs.note("handler");
            let fx = runs.clone();
            ctx.step("before", async move {
                fx.note("before");
                Ok(1)
            })
            .await?;
            let timeout = Duration::from_millis(input["timeout_ms"].as_u64().unwrap_or(3_600_000));
            let payload = match ctx
                .wait_for::<Value>("approve", WaitFor::timeout(timeout))
                .await
            {
                Err(JobError::WaitTimedOut { .. }) if input["handle_timeout"] == true => {
                    json!({"timed_out": true})
                }
                other => other?,
            };
            let fx = runs.clone();
            ctx.step("after", async move {
                fx.note("after");
                Ok(2)
            })
            .await?;
            Ok(json!({"approval": payload}))
        }
    })
    .unwrap();
    let r2 = runs.clone();
    r.register_fn("nap", move |input: Value, ctx| {
        let runs = r2.clone();
        async move {
            runs.note("nap");
            let ms = input["ms"].as_u64().unwrap_or(1000);
            ctx.sleep("nap", Duration::from_millis(ms)).await?;
            Ok(json!("rested"))
        }
    })
    .unwrap();
    r.register_fn("racy", move |_: Value, ctx| {
        let (runs, api) = (runs.clone(), api.clone());
        async move {
            runs.note("racy");
            match ctx.wait_for::<Value>("go", WaitFor::timeout(WAIT)).await {
                Err(e @ JobError::Wait { .. }) => {
                    let api = api.get().expect("the API is set").clone();
                    let path = format!("/jobs/{}/waitpoints/go", ctx.job_id());
                    let answer = api.handle(complete_req("sam", &path, r#"{"go":1}"#)).await;
                    assert_eq!(answer.status(), 202, "{:?}", answer.body);
                    Err(e)
                }
                other => other,
            }
        }
    })
    .unwrap();
    r
}

struct Rig {
    b: Backends,
    api: Api,
    worker: EventSource,
    runs: Arc<Runs>,
}

fn rig(b: Backends) -> Rig {
    let runs = Arc::new(Runs::default());
    let slot = Arc::new(OnceLock::new());
    let api = b.api_with_settings(
        registry(runs.clone(), slot.clone()),
        ApiSettings::from_config(&b.config),
    );
    let _ = slot.set(api.clone());
    let settings = WorkerSettings {
        lease: Duration::from_secs(5),
        ..fast_settings(5)
    };
    let worker = b
        .event_source(registry(runs.clone(), slot), settings)
        .with_wait(Duration::from_millis(200));
    Rig {
        b,
        api,
        worker,
        runs,
    }
}

impl Rig {
    async fn submit(&self, kind: &str, input: Value) -> String {
        let body = json!({"kind": kind, "input": input}).to_string();
        let (status, accepted) = json(&self.api.handle(post_jobs("sam", &body)).await);
        assert_eq!(status, 202, "{accepted}");
        accepted["job_id"].as_str().unwrap().to_owned()
    }

    async fn view(&self, id: &str) -> Value {
        json(&self.api.handle(get_job("sam", id)).await).1
    }

    /// Runs the worker until the job reaches `status`.
    async fn until(&self, id: &str, status: &str) -> Value {
        eventually(&format!("job {id} to be {status}"), WAIT, async || {
            let _: Option<(Vec<Delivery>, BatchResult)> = self.worker.poll_once().await.ok();
            let v = self.view(id).await;
            (v["status"] == status).then_some(v)
        })
        .await
    }

    /// Sweeps (timers and repairs) and runs the worker until the job reaches `status`.
    async fn sweep_until(&self, id: &str, status: &str) -> Value {
        eventually(&format!("job {id} to be {status}"), WAIT, async || {
            self.b
                .sweeper()
                .sweep(jobkit::sweep::SWEEP_AFTER)
                .await
                .unwrap();
            let _ = self.worker.poll_once().await;
            let v = self.view(id).await;
            (v["status"] == status).then_some(v)
        })
        .await
    }

    async fn complete(&self, user: &str, id: &str, name: &str, body: &str) -> Answer {
        let path = format!("/jobs/{id}/waitpoints/{name}");
        self.api.handle(complete_req(user, &path, body)).await
    }
}

async fn a_job_parks_then_resumes_with_the_payload_running_each_step_once(b: Backends) {
    let r = rig(b);
    let id = r.submit("approve", json!({})).await;
    let parked = r.until(&id, "waiting").await;
    assert_eq!(parked["waiting_for"]["name"], "approve", "{parked}");
    assert!(parked["waiting_for"]["expires_at"].is_string(), "{parked}");
    assert_eq!(
        parked["attempts"], 0,
        "a park is not a failed attempt: {parked}"
    );
    let (_, listed) = json(&r.api.handle(list_jobs("sam", "status=waiting")).await);
    assert_eq!(listed["jobs"][0]["job_id"], id.as_str(), "{listed}");
    // Nothing runs while it waits: its message is gone.
    let (batch, _) = r.worker.poll_once().await.unwrap();
    assert!(batch.is_empty(), "a parked job has no message");

    let answer = r
        .complete("sam", &id, "approve", r#"{"ok":true,"by":"ann"}"#)
        .await;
    let (status, view) = json(&answer);
    assert_eq!(status, 202, "{view}");
    assert_eq!(view["status"], "queued", "{view}");
    assert!(view.get("waiting_for").is_none(), "{view}");

    let done = r.until(&id, "completed").await;
    assert_eq!(
        done["result"],
        json!({"approval": {"ok": true, "by": "ann"}})
    );
    assert_eq!(done["attempts"], 1, "{done}");
    assert_eq!((r.runs.get("before"), r.runs.get("after")), (1, 1));
    assert_eq!(r.runs.get("handler"), 2, "parked once, resumed once");
}

async fn a_second_completion_is_refused_and_the_first_payload_stands(b: Backends) {
    let r = rig(b);
    let id = r.submit("approve", json!({})).await;
    r.until(&id, "waiting").await;
    assert_eq!(
        r.complete("sam", &id, "approve", r#"{"n":1}"#)
            .await
            .status(),
        202
    );
    assert_error(
        &r.complete("sam", &id, "approve", r#"{"n":2}"#).await,
        409,
        "waitpoint_completed",
    );
    let done = r.until(&id, "completed").await;
    assert_eq!(done["result"]["approval"], json!({"n": 1}));
    assert_error(
        &r.complete("sam", &id, "approve", r#"{"n":3}"#).await,
        409,
        "waitpoint_completed",
    );
    assert_eq!(r.runs.get("handler"), 2, "resumed exactly once");
}

async fn completions_that_cannot_be_accepted_get_specific_errors(b: Backends) {
    let r = rig(b);
    let id = r.submit("approve", json!({})).await;
    r.until(&id, "waiting").await;
    assert_error(
        &r.complete("sam", &id, "nope", "{}").await,
        404,
        "waitpoint_not_found",
    );
    assert_error(
        &r.complete("eve", &id, "approve", "{}").await,
        404,
        "job_not_found",
    );
    let other = JobId::generate(jobkit::now_millis());
    assert_error(
        &r.complete("sam", other.as_str(), "approve", "{}").await,
        404,
        "job_not_found",
    );
    assert_error(
        &r.complete("sam", &id, "approve", "{nope").await,
        400,
        "malformed_json",
    );
    let big = json!({"x": "y".repeat(jobkit::waitpoint::MAX_PAYLOAD_BYTES)}).to_string();
    assert_error(
        &r.complete("sam", &id, "approve", &big).await,
        413,
        "payload_too_large",
    );
    let get = r
        .api
        .handle(request(
            "GET",
            &format!("/jobs/{id}/waitpoints/approve"),
            "sam",
        ))
        .await;
    assert_error(&get, 405, "method_not_allowed");
    // Nothing above completed it.
    assert_eq!(r.view(&id).await["status"], "waiting");

    // A waiting job is cancelled at once; its waitpoint is closed for good.
    let (status, cancelled) = json(
        &r.api
            .handle(request("DELETE", &format!("/jobs/{id}"), "sam"))
            .await,
    );
    assert_eq!(
        (status, cancelled["status"].as_str()),
        (202, Some("cancelled")),
        "{cancelled}"
    );
    assert_error(
        &r.complete("sam", &id, "approve", "{}").await,
        410,
        "waitpoint_closed",
    );
    let _ = r.worker.poll_once().await;
    assert_eq!(r.view(&id).await["status"], "cancelled");
    assert_eq!(r.runs.get("handler"), 1, "never resumed");
}

async fn a_completion_landing_while_the_job_is_parked_resumes_it_once(b: Backends) {
    let r = rig(b);
    let id = r.submit("racy", json!({})).await;
    let done = r.until(&id, "completed").await;
    assert_eq!(done["result"], json!({"go": 1}), "{done}");
    assert_eq!(
        r.runs.get("racy"),
        2,
        "parked once, resumed once by its own worker"
    );
    assert_eq!(done["attempts"], 1, "{done}");
}

async fn a_completion_that_crashed_before_resuming_is_repaired_by_the_sweep(b: Backends) {
    let r = rig(b);
    let id = r.submit("approve", json!({})).await;
    r.until(&id, "waiting").await;
    // The completion's first write, then a crash: the job is still parked on a completed waitpoint.
    let job_id = JobId::parse(&id).unwrap();
    let wp =
        r.b.store
            .waitpoint(&job_id, "approve")
            .await
            .unwrap()
            .unwrap();
    let completed = wp
        .complete(json!({"late": true}).into(), jobkit::now_millis())
        .unwrap();
    assert_eq!(
        r.b.store
            .settle_waitpoint(&job_id, &completed)
            .await
            .unwrap(),
        None
    );
    assert_eq!(r.view(&id).await["status"], "waiting");
    // The sweep finds it parked on a settled waitpoint and resumes it, once.
    // (`Duration::ZERO`: any parked job counts as old; it may take a millisecond to be older than now.)
    eventually("the sweep to resume the job", WAIT, async || {
        let report = r.b.sweeper().sweep(Duration::ZERO).await.unwrap();
        (report.resumed == 1).then_some(())
    })
    .await;
    let again = r.b.sweeper().sweep(Duration::ZERO).await.unwrap();
    assert_eq!(again.resumed, 0, "resumed once: {again:?}");
    let done = r.until(&id, "completed").await;
    assert_eq!(done["result"]["approval"], json!({"late": true}));
    assert_eq!(
        (
            r.runs.get("before"),
            r.runs.get("after"),
            r.runs.get("handler")
        ),
        (1, 1, 2)
    );
}

async fn the_first_settlement_of_a_waitpoint_stands(b: Backends) {
    let id = JobId::generate(jobkit::now_millis());
    let now = jobkit::now_millis();
    assert_eq!(b.store.waitpoint(&id, "w").await.unwrap(), None);
    let pending = Waitpoint::pending("w", now + 60_000);
    assert_eq!(
        b.store.open_waitpoint(&id, &pending, 0).await.unwrap(),
        pending
    );
    // Opening it again (a replay, or a zombie attempt) gets the one recorded.
    let later = Waitpoint::pending("w", now + 999_000);
    assert_eq!(
        b.store.open_waitpoint(&id, &later, 0).await.unwrap(),
        pending
    );
    let first = pending.complete(json!({"n": 1}).into(), now).unwrap();
    assert_eq!(b.store.settle_waitpoint(&id, &first).await.unwrap(), None);
    // The same write again (a retry whose answer was lost) is fine; another one loses.
    assert_eq!(b.store.settle_waitpoint(&id, &first).await.unwrap(), None);
    let second = pending.complete(json!({"n": 2}).into(), now + 1).unwrap();
    assert_eq!(
        b.store.settle_waitpoint(&id, &second).await.unwrap(),
        Some(first.clone())
    );
    let timed_out = Waitpoint {
        state: WaitState::TimedOut,
        settled_at: Some(now + 2),
        ..pending.clone()
    };
    assert_eq!(
        b.store.settle_waitpoint(&id, &timed_out).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(b.store.waitpoint(&id, "w").await.unwrap(), Some(first));
    assert!(matches!(
        b.store
            .settle_waitpoint(&id, &Waitpoint::pending("none", now))
            .await,
        Err(jobkit::store::StoreError::NotFound)
    ));
}

async fn a_wait_that_times_out_resumes_with_a_typed_error(b: Backends) {
    let r = rig(b);
    let handled = r
        .submit(
            "approve",
            json!({"timeout_ms": 1000, "handle_timeout": true}),
        )
        .await;
    let unhandled = r.submit("approve", json!({"timeout_ms": 1000})).await;
    r.until(&handled, "waiting").await;
    r.until(&unhandled, "waiting").await;
    let done = r.sweep_until(&handled, "completed").await;
    assert_eq!(
        done["result"]["approval"],
        json!({"timed_out": true}),
        "{done}"
    );
    let failed = r.sweep_until(&unhandled, "failed").await;
    assert_eq!(failed["error"]["code"], "wait_timed_out", "{failed}");
    assert_eq!(failed["attempts"], 1, "not retried: {failed}");
    assert_error(
        &r.complete("sam", &handled, "approve", "{}").await,
        409,
        "waitpoint_timed_out",
    );
}

async fn a_durable_sleep_resumes_after_its_time(b: Backends) {
    let r = rig(b);
    let started = std::time::Instant::now();
    let id = r.submit("nap", json!({"ms": 1500})).await;
    let parked = r.until(&id, "waiting").await;
    assert_eq!(parked["waiting_for"]["name"], "nap");
    let done = r.sweep_until(&id, "completed").await;
    assert_eq!(done["result"], "rested");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "not before its time"
    );
    assert_eq!(r.runs.get("nap"), 2);
}

async fn a_delayed_start_waits_for_its_time_and_counts_at_submit(b: Backends) {
    let r = rig(b);
    let started = std::time::Instant::now();
    let body = json!({"kind": "echo", "input": {"n": 1}, "delay_seconds": 1}).to_string();
    let (status, accepted) = json(&r.api.handle(post_jobs("sam", &body)).await);
    assert_eq!(
        (status, accepted["status"].as_str()),
        (202, Some("waiting")),
        "{accepted}"
    );
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    assert_eq!(r.view(&id).await["waiting_for"]["name"], "start");
    let (batch, _) = r.worker.poll_once().await.unwrap();
    assert!(batch.is_empty(), "no message before its time");
    let done = r.sweep_until(&id, "completed").await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before its time"
    );
    assert_eq!(
        (done["result"].clone(), done["attempts"].clone()),
        (json!({"n": 1}), json!(1))
    );

    // A time already past is now.
    let past = json!({"kind": "echo", "input": 2, "run_at": "2020-01-01T00:00:00Z"}).to_string();
    let (status, accepted) = json(&r.api.handle(post_jobs("sam", &past)).await);
    assert_eq!(
        (status, accepted["status"].as_str()),
        (202, Some("queued")),
        "{accepted}"
    );

    for bad in [
        json!({"kind": "echo", "input": 1, "delay_seconds": 5, "run_at": "2030-01-01T00:00:00Z"}),
        json!({"kind": "echo", "input": 1, "run_at": "tomorrow"}),
        json!({"kind": "echo", "input": 1, "delay_seconds": -1}),
        json!({"kind": "echo", "input": 1, "delay_seconds": 1.5}),
        json!({"kind": "echo", "input": 1, "delay_seconds": 400 * 86_400}),
    ] {
        assert_error(
            &r.api.handle(post_jobs("sam", &bad.to_string())).await,
            422,
            "invalid_start",
        );
    }

    // A delayed job holds its owner's slot from submit: the cap applies then.
    let capped = r.b.api_with_settings(HandlerRegistry::with_builtins(), {
        let mut s = ApiSettings::from_config(&r.b.config);
        s.max_in_flight_per_user = Some(1);
        s
    });
    // (`3600.0` is a whole number of seconds too.)
    let later = json!({"kind": "echo", "input": 3, "delay_seconds": 3600.0}).to_string();
    assert_eq!(capped.handle(post_jobs("kim", &later)).await.status(), 202);
    assert_error(
        &capped.handle(post_jobs("kim", &later)).await,
        429,
        "too_many_jobs_in_flight",
    );
}

on_both_backends!(
    a_delayed_start_waits_for_its_time_and_counts_at_submit,
    a_job_parks_then_resumes_with_the_payload_running_each_step_once,
    a_second_completion_is_refused_and_the_first_payload_stands,
    completions_that_cannot_be_accepted_get_specific_errors,
    a_completion_landing_while_the_job_is_parked_resumes_it_once,
    a_completion_that_crashed_before_resuming_is_repaired_by_the_sweep,
    the_first_settlement_of_a_waitpoint_stands,
    a_wait_that_times_out_resumes_with_a_typed_error,
    a_durable_sleep_resumes_after_its_time,
);
