//! Webhooks end to end on both backends: jobs run by the worker core, events delivered by the delivery
//! function's core from the deliveries queue, to a receiver that checks every signature with the
//! reference `standardwebhooks` library (tests/webhooks/receiver.py). Run with `--nocapture` to see the
//! retry timelines.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use jobkit::Backend;
use jobkit::api::ApiSettings;
use jobkit::local::EventSource;
use jobkit::webhook::{Deliverer, DeliverySettings, Schedule, Secrets, verify};
use serde_json::{Value, json};
use support::receiver::Receiver;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A stack with webhooks: the API (loopback callbacks allowed, as in `jobctl dev`), the worker, the
/// deliverer, and a receiver sharing its secret.
struct Hooks {
    s: Backends,
    api: Api,
    worker: EventSource,
    deliverer: EventSource<Deliverer>,
    receiver: Receiver,
    secret: String,
}

/// The test kinds plus `approve`, which waits for its waitpoint `approve` and answers its payload.
fn registry() -> jobkit::HandlerRegistry {
    let mut r = test_registry();
    r.register_fn("approve", |_: Value, ctx| async move {
        let wait = jobkit::handler::WaitFor::timeout(Duration::from_secs(3600));
        ctx.wait_for::<Value>("approve", wait).await
    })
    .unwrap();
    r
}

fn hooks_with(s: Backends, settings: DeliverySettings, worker_attempts: u32) -> Hooks {
    let secret = Secrets::generate();
    let receiver = Receiver::start(&secret, 3.0);
    let api = s.api_with_settings(
        registry(),
        ApiSettings {
            dev_mode: true,
            ..ApiSettings::from_config(&s.config)
        },
    );
    let worker = s
        .event_source(registry(), fast_settings(worker_attempts))
        .with_wait(Duration::from_millis(200));
    let deliverer = deliverer_on(&s, &secret, settings);
    Hooks {
        s,
        api,
        worker,
        deliverer,
        receiver,
        secret,
    }
}

fn deliverer_on(s: &Backend, secret: &str, settings: DeliverySettings) -> EventSource<Deliverer> {
    let d = s
        .deliverer(Secrets::parse(secret).unwrap(), settings)
        .expect("the backend has a deliveries queue");
    EventSource::new(
        s.deliveries.clone().unwrap(),
        Arc::new(d),
        s.clock.clone(),
        10,
    )
    .with_wait(Duration::from_millis(200))
}

fn local_settings() -> DeliverySettings {
    DeliverySettings {
        schedule: Schedule::compressed(),
        timeout: Duration::from_secs(1),
        allow_loopback: true,
    }
}

fn hooks(s: Backends) -> Hooks {
    hooks_with(s, local_settings(), 5)
}

impl Hooks {
    async fn submit(&self, user: &str, body: Value) -> String {
        let (status, view) = json(&self.api.handle(post_jobs(user, &body.to_string())).await);
        assert_eq!(status, 202, "{view}");
        view["job_id"].as_str().unwrap().to_owned()
    }

    async fn view(&self, user: &str, id: &str) -> Value {
        json(&self.api.handle(get_job(user, id)).await).1
    }

    /// Runs the worker and the deliverer until `done` holds for the job's view.
    async fn until(
        &self,
        user: &str,
        id: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(what, WAIT, async || {
            self.worker.poll_once().await.unwrap();
            self.deliverer.poll_once().await.unwrap();
            let view = self.view(user, id).await;
            done(&view).then_some(view)
        })
        .await
    }

    async fn until_webhook(&self, user: &str, id: &str, status: &str) -> Value {
        self.until(user, id, &format!("webhook {status}"), |v| {
            v["webhook"]["status"] == status
        })
        .await
    }
}

/// Checks a logged delivery with jobkit's own `verify` as well (a Rust receiver's view).
fn rust_verifies(delivery: &Value, secret: &str) {
    let mut h = HeaderMap::new();
    for (name, key) in [
        ("webhook-id", "id"),
        ("webhook-timestamp", "timestamp"),
        ("webhook-signature", "signature"),
    ] {
        h.insert(name, delivery[key].as_str().unwrap().parse().unwrap());
    }
    let ts: i64 = delivery["timestamp"].as_str().unwrap().parse().unwrap();
    let body = delivery["body"].as_str().unwrap();
    verify(&h, body.as_bytes(), &Secrets::parse(secret).unwrap(), ts).expect("jobkit verifies it");
}

async fn every_terminal_state_is_delivered_signed(s: Backends) {
    let h = hooks_with(s, local_settings(), 1);
    let hook = h.receiver.url("/ok");
    let completed = h
        .submit(
            "wendy",
            json!({"kind":"echo","input":{"n":1},"callback_url":hook}),
        )
        .await;
    let failed = h
        .submit(
            "wendy",
            json!({"kind":"flaky","input":{"fail":"terminal"},"callback_url":hook}),
        )
        .await;
    let dead = h
        .submit(
            "wendy",
            json!({"kind":"flaky","input":{"fail":"retryable"},"callback_url":hook}),
        )
        .await;
    let cancelled = h
        .submit(
            "wendy",
            json!({"kind":"echo","input":2,"callback_url":hook}),
        )
        .await;
    let (status, _) = json(
        &h.api
            .handle(request("DELETE", &format!("/jobs/{cancelled}"), "wendy"))
            .await,
    );
    assert_eq!(status, 202);
    let no_callback = h.submit("wendy", json!({"kind":"echo","input":3})).await;

    for (id, status, event) in [
        (&completed, "completed", "job.completed"),
        (&failed, "failed", "job.failed"),
        (&dead, "dead_letter", "job.dead_lettered"),
        (&cancelled, "cancelled", "job.cancelled"),
    ] {
        let view = h.until_webhook("wendy", id, "delivered").await;
        assert_eq!(view["status"], status, "{view}");
        let w = &view["webhook"];
        assert_eq!(w["attempts"], 1, "{view}");
        assert_eq!(w["last_status"], 200);
        assert!(w["delivered_at"].is_string());
        let event_id = w["id"].as_str().unwrap();
        let got = h.receiver.deliveries_of(event_id).await;
        assert_eq!(got.len(), 1, "one delivery of {event_id}: {got:?}");
        let d = &got[0];
        assert_eq!(d["verified"], true, "standardwebhooks verifies it: {d}");
        assert_eq!(d["content_type"], "application/json");
        rust_verifies(d, &h.secret);
        let body: Value = serde_json::from_str(d["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["type"], event);
        assert_eq!(body["data"]["job_id"], id.as_str());
        assert_eq!(body["data"]["status"], status);
        assert!(body["data"].get("input").is_none(), "no input: {body}");
        if status == "completed" {
            assert_eq!(body["data"]["result"], json!({"n": 1}));
            println!("a delivery as the receiver saw it: {d:#}");
        }
    }
    let view = h.view("wendy", &no_callback).await;
    assert!(view.get("webhook").is_none(), "{view}");
}

async fn a_receiver_failing_twice_gets_the_event_on_the_third_attempt(s: Backends) {
    let h = hooks(s);
    let id = h
        .submit(
            "xena",
            json!({"kind":"echo","input":1,"callback_url":h.receiver.url("/fail-twice")}),
        )
        .await;
    let view = h.until_webhook("xena", &id, "delivered").await;
    assert_eq!(view["webhook"]["attempts"], 3, "{view}");
    assert_eq!(view["webhook"]["last_status"], 200);
    let got = h
        .receiver
        .deliveries_of(view["webhook"]["id"].as_str().unwrap())
        .await;
    let answered: Vec<&Value> = got.iter().map(|d| &d["answered"]).collect();
    assert_eq!(answered, [&json!(500), &json!(500), &json!(200)]);
    assert!(got.iter().all(|d| d["verified"] == true));
    assert!(got.iter().all(|d| d["body"] == got[0]["body"]), "same body");
    let at: Vec<f64> = got
        .iter()
        .map(|d| d["received_at"].as_f64().unwrap())
        .collect();
    // The compressed schedule waits 1 s, then 2 s.
    assert!(at[1] - at[0] >= 0.9, "{at:?}");
    assert!(at[2] - at[1] >= 1.9, "{at:?}");
    println!(
        "fail-twice timeline (s after the first attempt): {:?}, answers {answered:?}",
        at.iter()
            .map(|t| ((t - at[0]) * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
}

async fn gone_stops_deliveries_for_good(s: Backends) {
    let h = hooks(s);
    let id = h
        .submit(
            "yuri",
            json!({"kind":"echo","input":1,"callback_url":h.receiver.url("/gone")}),
        )
        .await;
    let view = h.until_webhook("yuri", &id, "failed").await;
    assert_eq!(view["webhook"]["attempts"], 1, "{view}");
    assert_eq!(view["webhook"]["last_status"], 410);
    // Nothing is left to deliver: the deliveries queue runs dry and the receiver hears no more.
    let event_id = view["webhook"]["id"].as_str().unwrap().to_owned();
    eventually("the deliveries queue to run dry", WAIT, async || {
        let (batch, _) = h.deliverer.poll_once().await.unwrap();
        batch.is_empty().then_some(())
    })
    .await;
    assert_eq!(h.receiver.deliveries_of(&event_id).await.len(), 1);
}

async fn a_slow_receiver_times_out_and_is_retried(s: Backends) {
    let h = hooks(s);
    let id = h
        .submit(
            "zack",
            json!({"kind":"echo","input":1,"callback_url":h.receiver.url("/slow-once")}),
        )
        .await;
    let first = h
        .until("zack", &id, "a timed-out attempt", |v| {
            v["webhook"]["attempts"] == 1
        })
        .await;
    assert_eq!(first["webhook"]["status"], "pending", "{first}");
    assert!(
        first["webhook"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within")),
        "{first}"
    );
    let view = h.until_webhook("zack", &id, "delivered").await;
    assert_eq!(view["webhook"]["attempts"], 2, "{view}");
}

async fn retry_after_is_honoured_and_redirects_are_not_followed(s: Backends) {
    let h = hooks(s);
    let throttled = h
        .submit(
            "abe",
            json!({"kind":"echo","input":1,"callback_url":h.receiver.url("/throttle-once")}),
        )
        .await;
    let redirected = h
        .submit(
            "abe",
            json!({"kind":"echo","input":2,"callback_url":h.receiver.url("/redirect")}),
        )
        .await;
    let view = h.until_webhook("abe", &throttled, "delivered").await;
    assert_eq!(view["webhook"]["attempts"], 2, "{view}");
    let view = h
        .until("abe", &redirected, "two redirected attempts", |v| {
            v["webhook"]["attempts"].as_u64() >= Some(2)
        })
        .await;
    assert_eq!(view["webhook"]["last_status"], 302, "{view}");
    assert_eq!(view["webhook"]["status"], "pending");
    let log = h.receiver.log().await;
    let event_id = view["webhook"]["id"].as_str().unwrap();
    assert!(
        log.iter()
            .all(|d| !(d["path"] == "/ok" && d["id"] == event_id)),
        "the redirect was followed: {log:?}"
    );
}

async fn private_targets_are_refused_at_connect_time(s: Backends) {
    // The API (dev mode) took a loopback callback; a deployed deliverer must still not connect to it.
    let h = hooks_with(
        s,
        DeliverySettings {
            allow_loopback: false,
            ..local_settings()
        },
        5,
    );
    for hook in [
        h.receiver.url("/ok"),
        h.receiver.url("/ok").replace("127.0.0.1", "localhost"),
    ] {
        let id = h
            .submit("bo", json!({"kind":"echo","input":1,"callback_url":hook}))
            .await;
        let view = h
            .until("bo", &id, "a refused attempt", |v| {
                v["webhook"]["attempts"] == 1
            })
            .await;
        let error = view["webhook"]["last_error"].as_str().unwrap_or_default();
        assert!(
            error.contains("not a public address") || error.contains("no public address"),
            "{view}"
        );
    }
    assert!(
        h.receiver.log().await.is_empty(),
        "nothing reached the receiver"
    );
}

async fn the_sweep_announces_an_event_whose_message_was_lost(s: Backends) {
    let h = hooks(s);
    // A worker that dies between the terminal write and the announcement: here, one that has none.
    let mut mute = h.s.backend.clone();
    mute.deliveries = None;
    let worker = event_source_on(&mute, test_registry(), fast_settings(5))
        .with_wait(Duration::from_millis(200));
    let id = h
        .submit(
            "cy",
            json!({"kind":"echo","input":1,"callback_url":h.receiver.url("/ok")}),
        )
        .await;
    let view = eventually("the job to complete", WAIT, async || {
        worker.poll_once().await.unwrap();
        let v = h.view("cy", &id).await;
        (v["status"] == "completed").then_some(v)
    })
    .await;
    assert_eq!(view["webhook"]["status"], "pending");
    let (batch, verdicts) = h.deliverer.poll_once().await.unwrap();
    assert!(batch.is_empty(), "nothing was announced: {verdicts:?}");

    let report = h.s.sweeper().sweep(Duration::ZERO).await.unwrap();
    assert_eq!(report.reannounced, 1, "{report:?}");
    let view = h.until_webhook("cy", &id, "delivered").await;
    // The lost announcement counts as an attempt, so an event can never be re-announced forever.
    assert_eq!(view["webhook"]["attempts"], 2, "{view}");
    let event_id = view["webhook"]["id"].as_str().unwrap();
    assert_eq!(h.receiver.deliveries_of(event_id).await.len(), 1);
}

/// A worker that dies between parking a job and announcing its `job.waiting` event: the sweep announces
/// it, as it does a terminal state's.
async fn the_sweep_announces_a_lost_job_waiting_event(s: Backends) {
    let h = hooks(s);
    let mut mute = h.s.backend.clone();
    mute.deliveries = None;
    let worker =
        event_source_on(&mute, registry(), fast_settings(5)).with_wait(Duration::from_millis(200));
    let id = h
        .submit(
            "cy",
            json!({"kind":"approve","input":{},"callback_url":h.receiver.url("/ok")}),
        )
        .await;
    let view = eventually("the job to park", WAIT, async || {
        worker.poll_once().await.unwrap();
        let v = h.view("cy", &id).await;
        (v["status"] == "waiting").then_some(v)
    })
    .await;
    assert_eq!(view["webhook"]["status"], "pending", "{view}");
    let (batch, _) = h.deliverer.poll_once().await.unwrap();
    assert!(batch.is_empty(), "nothing was announced");

    let report = h.s.sweeper().sweep(Duration::ZERO).await.unwrap();
    assert_eq!(report.reannounced, 1, "{report:?}");
    let view = h
        .until("cy", &id, "the job.waiting event", |v| {
            v["webhook"]["status"] == "delivered"
        })
        .await;
    assert_eq!(view["status"], "waiting", "still parked: {view}");
    let event_id = view["webhook"]["id"].as_str().unwrap();
    let got = h.receiver.deliveries_of(event_id).await;
    assert_eq!(got.len(), 1);
    let body: Value = serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "job.waiting");
}

/// A parked job's receiver gets `job.waiting` with the waitpoint's `complete_url`, signed like every
/// event; following that link resumes the job, whose end brings its own event.
async fn a_parked_job_announces_its_wait_with_a_link_that_completes_it(mut s: Backends) {
    const BASE: &str = "https://api.test";
    s.backend.config.api_url = Some(BASE.into());
    let h = hooks(s);
    let hook = h.receiver.url("/ok");
    let id = h
        .submit(
            "wendy",
            json!({"kind":"approve","input":{},"callback_url":hook}),
        )
        .await;
    let view = h
        .until("wendy", &id, "the job.waiting event", |v| {
            v["status"] == "waiting" && v["webhook"]["status"] == "delivered"
        })
        .await;
    let event_id = view["webhook"]["id"].as_str().unwrap().to_owned();
    let got = h.receiver.deliveries_of(&event_id).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let d = &got[0];
    assert_eq!(d["verified"], true, "standardwebhooks verifies it: {d}");
    rust_verifies(d, &h.secret);
    let body: Value = serde_json::from_str(d["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "job.waiting", "{body}");
    assert_eq!(body["data"]["job_id"], id.as_str());
    assert_eq!(body["data"]["status"], "waiting");
    let waiting_for = &body["data"]["waiting_for"];
    assert_eq!(waiting_for["name"], "approve");
    assert_eq!(waiting_for["expires_at"], view["waiting_for"]["expires_at"]);
    let url = waiting_for["complete_url"].as_str().unwrap();
    assert_eq!(url, view["waiting_for"]["complete_url"], "the owner's link");

    let mut follow = http::Request::post(url.strip_prefix(BASE).unwrap())
        .header("content-type", "application/json")
        .body(axum::body::Body::from(r#"{"ok":true}"#))
        .unwrap();
    follow.extensions_mut().remove::<jobkit::api::Identity>();
    assert_eq!(h.api.handle(follow).await.status(), 202);
    let done = h
        .until("wendy", &id, "the job.completed event", |v| {
            v["status"] == "completed" && v["webhook"]["status"] == "delivered"
        })
        .await;
    assert_eq!(done["result"], json!({"ok": true}));
    let last = done["webhook"]["id"].as_str().unwrap();
    assert_ne!(last, event_id, "each event has its own id");
    let got = h.receiver.deliveries_of(last).await;
    let body: Value = serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["type"], "job.completed");
    assert_eq!(
        h.receiver.deliveries_of(&event_id).await.len(),
        1,
        "no repeat"
    );
}

on_both_backends!(
    a_parked_job_announces_its_wait_with_a_link_that_completes_it,
    the_sweep_announces_a_lost_job_waiting_event,
    every_terminal_state_is_delivered_signed,
    a_receiver_failing_twice_gets_the_event_on_the_third_attempt,
    gone_stops_deliveries_for_good,
    a_slow_receiver_times_out_and_is_retried,
    retry_after_is_honoured_and_redirects_are_not_followed,
    private_targets_are_refused_at_connect_time,
    the_sweep_announces_an_event_whose_message_was_lost,
);
