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
use jobkit::store::Due;
use jobkit::sweep::SWEEP_AFTER;
use jobkit::waitpoint::{REPAIR_AFTER, WaitState, Waitpoint};
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

/// The API's public base URL in these tests: `complete_url`s start with it.
const API_BASE: &str = "https://api.test";

fn rig(mut b: Backends) -> Rig {
    b.backend.config.api_url = Some(API_BASE.into());
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

    /// Runs the due task (timers) and the worker until the job reaches `status`.
    async fn sweep_until(&self, id: &str, status: &str) -> Value {
        eventually(&format!("job {id} to be {status}"), WAIT, async || {
            let due = self.b.sweeper().fire_due().await.unwrap();
            assert_eq!(due.failed, 0, "{due:?}");
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

    /// The `complete_url` `GET /jobs/{id}` shows for a parked job.
    async fn complete_url(&self, id: &str) -> String {
        let view = self.view(id).await;
        view["waiting_for"]["complete_url"]
            .as_str()
            .unwrap_or_else(|| panic!("a complete_url: {view}"))
            .to_owned()
    }

    /// `method` on a `complete_url` (or any path under the API), with no credentials at all.
    async fn follow(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: &str,
    ) -> Answer {
        let path = url.strip_prefix(API_BASE).unwrap_or(url);
        let mut req = http::Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let mut req = req.body(axum::body::Body::from(body.to_owned())).unwrap();
        req.extensions_mut().remove::<jobkit::api::Identity>();
        self.api.handle(req).await
    }

    async fn post_link(&self, url: &str, body: &str) -> Answer {
        self.follow("POST", url, Some("application/json"), body)
            .await
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
    // The owner's view shows how the wait ended.
    let last = &done["last_waitpoint"];
    assert_eq!(
        (last["name"].as_str(), last["state"].as_str()),
        (Some("approve"), Some("completed")),
        "{done}"
    );
    assert_eq!(last["payload"], json!({"ok": true, "by": "ann"}));
    assert!(last["settled_at"].is_string(), "{done}");
    let view: jobkit::api::JobView = serde_json::from_value(done.clone()).unwrap();
    let payload = view.last_waitpoint.and_then(|w| w.payload).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(payload.get()).unwrap(),
        json!({"ok": true, "by": "ann"}),
        "clients read it back"
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
    // The completion put the waitpoint in the due index: the due task checks its job once
    // `REPAIR_AFTER` has passed (a sweeper whose clock is that far ahead), finds it parked on a
    // settled waitpoint and resumes it, once.
    let early = r.b.sweeper().fire_due().await.unwrap();
    assert_eq!(early.resumed, 0, "not before REPAIR_AFTER: {early:?}");
    let later = sweeper_ahead(&r.b, REPAIR_AFTER);
    eventually("the due task to resume the job", WAIT, async || {
        let report = later.fire_due().await.unwrap();
        (report.resumed == 1).then_some(())
    })
    .await;
    let again = later.fire_due().await.unwrap();
    assert_eq!(
        (again.resumed, again.due),
        (0, 0),
        "resumed once, checked once: {again:?}"
    );
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
    let url = r.complete_url(&handled).await;
    let done = r.sweep_until(&handled, "completed").await;
    assert_eq!(
        done["result"]["approval"],
        json!({"timed_out": true}),
        "{done}"
    );
    let failed = r.sweep_until(&unhandled, "failed").await;
    assert_eq!(failed["error"]["code"], "wait_timed_out", "{failed}");
    assert_eq!(failed["last_waitpoint"]["state"], "timed_out", "{failed}");
    assert!(
        failed["last_waitpoint"].get("payload").is_none(),
        "{failed}"
    );
    assert_eq!(failed["attempts"], 1, "not retried: {failed}");
    assert_error(
        &r.complete("sam", &handled, "approve", "{}").await,
        409,
        "waitpoint_timed_out",
    );
    // Its link outlives it a little (LINK_GRACE), to say so rather than "invalid".
    assert_error(&r.post_link(&url, "{}").await, 409, "waitpoint_timed_out");
    let (_, shown) = json(&r.follow("GET", &url, None, "").await);
    assert_eq!(shown["state"], "timed_out", "{shown}");
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
    let delayed = r.view(&id).await;
    assert_eq!(delayed["waiting_for"]["name"], "start");
    assert!(
        delayed["waiting_for"].get("complete_url").is_none(),
        "a start timer has no waitpoint to complete: {delayed}"
    );
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

async fn a_job_is_completed_through_its_complete_url_without_credentials(b: Backends) {
    let r = rig(b);
    let id = r.submit("approve", json!({})).await;
    r.until(&id, "waiting").await;
    let url = r.complete_url(&id).await;
    assert!(
        url.starts_with(&format!("{API_BASE}/waitpoints/{id}.")),
        "{url}"
    );
    // Only the owner's GET /jobs/{id} carries it: a list shows no waitpoint at all.
    let (_, listed) = json(&r.api.handle(list_jobs("sam", "status=waiting")).await);
    assert_eq!(listed["jobs"][0]["job_id"], id.as_str(), "{listed}");
    assert!(!listed.to_string().contains("/waitpoints/"), "{listed}");

    // GET shows where it stands, and completes nothing, however often.
    for _ in 0..2 {
        let (status, shown) = json(&r.follow("GET", &url, None, "").await);
        assert_eq!(status, 200, "{shown}");
        assert_eq!(
            (
                shown["job_id"].as_str(),
                shown["name"].as_str(),
                shown["state"].as_str(),
                shown["job_status"].as_str()
            ),
            (
                Some(id.as_str()),
                Some("approve"),
                Some("pending"),
                Some("waiting")
            ),
            "{shown}"
        );
        assert!(shown["expires_at"].is_string(), "{shown}");
    }
    assert_eq!(r.view(&id).await["status"], "waiting");

    let (status, done) = json(&r.post_link(&url, r#"{"ok":true,"via":"link"}"#).await);
    assert_eq!(status, 202, "{done}");
    assert_eq!(done["state"], "completed", "{done}");
    assert!(
        done.get("input").is_none(),
        "the link's holder is not the owner: {done}"
    );
    let finished = r.until(&id, "completed").await;
    assert_eq!(
        finished["result"]["approval"],
        json!({"ok": true, "via": "link"})
    );
    assert_eq!(r.runs.get("handler"), 2, "resumed exactly once");
    let (_, shown) = json(&r.follow("GET", &url, None, "").await);
    assert_eq!(
        (shown["state"].as_str(), shown["job_status"].as_str()),
        (Some("completed"), Some("completed")),
        "{shown}"
    );
}

async fn a_complete_url_refuses_what_it_cannot_accept(b: Backends) {
    let r = rig(b);
    let id = r.submit("approve", json!({})).await;
    let other = r.submit("approve", json!({})).await;
    r.until(&id, "waiting").await;
    r.until(&other, "waiting").await;
    let url = r.complete_url(&id).await;
    let token = url.rsplit('/').next().unwrap().to_owned();
    let other_token = r
        .complete_url(&other)
        .await
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();

    // Anything but the token the stack signed for this waitpoint is one 401, revealing nothing.
    let key = jobkit::api::TokenKey::new(&r.b.signing_secret);
    let job_id = JobId::parse(&id).unwrap();
    let now = jobkit::now_millis() / 1000;
    let expired = jobkit::api::capability_until(&key, &job_id, "approve", now - 1);
    let last = if token.ends_with('A') { 'E' } else { 'A' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    // Another job's signature under this job's id, and this job's under another's.
    let (_, other_signed) = other_token.split_once('.').unwrap();
    let moved = format!("{id}.{other_signed}");
    let (_, signed) = token.split_once('.').unwrap();
    let borrowed = format!("{other}.{signed}");
    let unknown_job = jobkit::api::capability(
        &key,
        &JobId::generate(jobkit::now_millis()),
        "approve",
        jobkit::now_millis() + 60_000,
    );
    let foreign = jobkit::api::capability(
        &jobkit::api::TokenKey::new(b"another stack"),
        &job_id,
        "approve",
        jobkit::now_millis() + 60_000,
    );
    let mut refusals = Vec::new();
    for bad in [
        &expired,
        &forged,
        &moved,
        &borrowed,
        &unknown_job,
        &foreign,
        "not-a-token",
        "a.b.c.d",
    ] {
        let link = format!("/waitpoints/{bad}");
        for answer in [
            r.post_link(&link, "{}").await,
            r.follow("GET", &link, None, "").await,
        ] {
            assert_error(&answer, 401, "invalid_token");
            refusals.push(json(&answer).1);
        }
    }
    assert!(
        refusals.windows(2).all(|w| w[0] == w[1]),
        "every refusal reads the same"
    );

    // The payload: JSON, of a JSON content type, at most MAX_PAYLOAD_BYTES.
    assert_error(&r.post_link(&url, "{nope").await, 400, "malformed_json");
    assert_error(
        &r.follow("POST", &url, Some("text/plain"), "{}").await,
        415,
        "unsupported_media_type",
    );
    let big = json!({"x": "y".repeat(jobkit::waitpoint::MAX_PAYLOAD_BYTES)}).to_string();
    assert_error(&r.post_link(&url, &big).await, 413, "payload_too_large");
    assert_error(
        &r.follow("DELETE", &url, None, "").await,
        405,
        "method_not_allowed",
    );
    assert_eq!(
        r.view(&id).await["status"],
        "waiting",
        "nothing above completed it"
    );

    // The first completion stands, through either door.
    assert_eq!(r.post_link(&url, r#"{"n":1}"#).await.status(), 202);
    assert_error(
        &r.post_link(&url, r#"{"n":2}"#).await,
        409,
        "waitpoint_completed",
    );
    assert_error(
        &r.complete("sam", &id, "approve", r#"{"n":3}"#).await,
        409,
        "waitpoint_completed",
    );
    let done = r.until(&id, "completed").await;
    assert_eq!(done["result"]["approval"], json!({"n": 1}));
    assert_error(
        &r.post_link(&url, r#"{"n":4}"#).await,
        409,
        "waitpoint_completed",
    );

    // A cancelled job's link is closed for good, as its owner's route is.
    let other_url = format!("/waitpoints/{other_token}");
    let cancelled = r
        .api
        .handle(request("DELETE", &format!("/jobs/{other}"), "sam"))
        .await;
    assert_eq!(cancelled.status(), 202);
    assert_error(
        &r.post_link(&other_url, "{}").await,
        410,
        "waitpoint_closed",
    );
    let (_, shown) = json(&r.follow("GET", &other_url, None, "").await);
    assert_eq!(
        (shown["state"].as_str(), shown["job_status"].as_str()),
        (Some("pending"), Some("cancelled")),
        "{shown}"
    );
}

/// The due index holds a parked job from its park to its resume (or cancel), and a completed
/// waitpoint until the due task checked its job; the sweep's checks never pick parked jobs.
async fn a_parked_job_is_in_the_due_index_only_while_it_waits(b: Backends) {
    let r = rig(b);
    let id = r.submit("approve", json!({"timeout_ms": 60_000})).await;
    let parked = r.until(&id, "waiting").await;
    let job_id = JobId::parse(&id).unwrap();
    let now = jobkit::now_millis();
    let timers = |due: Vec<Due>| -> Vec<JobId> {
        due.into_iter()
            .filter_map(|d| match d {
                Due::Timer(j) => Some(j.job_id),
                Due::Resume { .. } => None,
            })
            .collect()
    };
    assert!(
        timers(r.b.store.due(now, 100).await.unwrap()).is_empty(),
        "not due before its time: {parked}"
    );
    assert_eq!(
        timers(r.b.store.due(now + 61_000, 100).await.unwrap()),
        std::slice::from_ref(&job_id),
        "due at its timeout"
    );
    let checked =
        r.b.store
            .to_check(now + 61_000 + 2 * SWEEP_AFTER.as_millis() as i64, 100)
            .await
            .unwrap();
    assert!(
        checked.iter().all(|j| j.job_id != job_id),
        "the sweep leaves parked jobs to the due task"
    );
    // A completion: the job leaves the index, its waitpoint enters it until checked.
    assert_eq!(r.complete("sam", &id, "approve", "1").await.status(), 202);
    let later = jobkit::now_millis() + REPAIR_AFTER + 61_000;
    let due = r.b.store.due(later, 100).await.unwrap();
    assert_eq!(
        due,
        [Due::Resume {
            job_id: job_id.clone(),
            waitpoint: "approve".into()
        }]
    );
    r.until(&id, "completed").await;
    let checked = sweeper_ahead(&r.b, REPAIR_AFTER).fire_due().await.unwrap();
    assert_eq!((checked.due, checked.resumed), (1, 0), "{checked:?}");
    assert!(r.b.store.due(later, 100).await.unwrap().is_empty());

    // A cancelled delayed start leaves it too.
    let body = json!({"kind": "echo", "input": 1, "delay_seconds": 60}).to_string();
    let (_, accepted) = json(&r.api.handle(post_jobs("sam", &body)).await);
    let delayed = JobId::parse(accepted["job_id"].as_str().unwrap()).unwrap();
    assert_eq!(
        timers(r.b.store.due(later, 100).await.unwrap()),
        std::slice::from_ref(&delayed)
    );
    let cancel = r
        .api
        .handle(request("DELETE", &format!("/jobs/{delayed}"), "sam"))
        .await;
    assert_eq!(cancel.status(), 202, "{:?}", cancel.body);
    assert!(r.b.store.due(later, 100).await.unwrap().is_empty());
}

on_both_backends!(
    a_job_is_completed_through_its_complete_url_without_credentials,
    a_complete_url_refuses_what_it_cannot_accept,
    a_parked_job_is_in_the_due_index_only_while_it_waits,
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

/// An item written before the due index existed (no `due_shard`/`due_at`) and still waiting is fired
/// by the full sweep once its time has passed: the upgrade path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_parked_before_the_due_index_existed_is_fired_by_the_full_sweep() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let env = TestEnv::start().await;
    let api = env.api(HandlerRegistry::with_builtins());
    let body = json!({"kind": "echo", "input": 1, "delay_seconds": 1}).to_string();
    let (_, accepted) = json(&api.handle(post_jobs("sam", &body)).await);
    let id = JobId::parse(accepted["job_id"].as_str().unwrap()).unwrap();
    // What the item looked like before: the same record without the index's attributes.
    aws_sdk_dynamodb::Client::new(&env.sdk)
        .update_item()
        .table_name(&env.config.table)
        .key("job_id", AttributeValue::S(id.to_string()))
        .update_expression("REMOVE due_shard, due_at")
        .send()
        .await
        .unwrap();
    // The sweep finds records without an index entry in its slice of the table: here all of it.
    let mut sweeper = env.backend.sweeper();
    sweeper.legacy_slices = 1;
    let later = sweeper_ahead(&env.backend, 2_000);
    assert_eq!(later.fire_due().await.unwrap().due, 0, "not in the index");
    let early = sweeper.sweep(jobkit::sweep::SWEEP_AFTER).await.unwrap();
    assert_eq!(early.resumed, 0, "not before its time");
    eventually("the full sweep to start it", WAIT, async || {
        let report = sweeper.sweep(jobkit::sweep::SWEEP_AFTER).await.unwrap();
        (report.resumed == 1).then_some(())
    })
    .await;
    assert_eq!(env.job(&id).await.status, jobkit::JobStatus::Queued);
}
