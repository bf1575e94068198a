//! Job streams (`GET /jobs/{id}/events`) on both backends, over real HTTP on loopback, read by a plain
//! SSE reader of this file's own (not the server's code): framing, progress, the final view and the end
//! of the stream, incremental delivery, resuming with `Last-Event-ID`, and tokens.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use jobkit::api::{self, ApiSettings, Purpose, StreamSettings, TokenKey};
use jobkit::{HandlerRegistry, JobError};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// One frame as a client reads it.
#[derive(Debug, Clone, Default)]
struct Frame {
    event: Option<String>,
    id: Option<String>,
    data: String,
    retry: Option<String>,
    comment: bool,
    at: Option<Instant>,
}

/// Splits a stream's text into frames (blank-line separated; `field: value` lines, `:` comments).
fn frames(text: &str) -> Vec<Frame> {
    text.split("\n\n")
        .filter(|f| !f.trim().is_empty())
        .map(|f| {
            let mut frame = Frame::default();
            for line in f.lines() {
                if line.starts_with(':') {
                    frame.comment = true;
                    continue;
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => frame.event = Some(value.into()),
                    "id" => frame.id = Some(value.into()),
                    "retry" => frame.retry = Some(value.into()),
                    "data" => {
                        if !frame.data.is_empty() {
                            frame.data.push('\n');
                        }
                        frame.data.push_str(value);
                    }
                    other => panic!("unknown field {other:?} in {f:?}"),
                }
            }
            frame
        })
        .collect()
}

/// Reads to the end.
fn to_the_end(_: &Frame) -> bool {
    false
}

/// Reads a stream to its end (or up to the first frame `stop` accepts), stamping each frame with when
/// it arrived.
async fn read(mut resp: reqwest::Response, stop: impl Fn(&Frame) -> bool) -> Vec<Frame> {
    let mut buf = String::new();
    let mut out: Vec<Frame> = Vec::new();
    while let Ok(Some(chunk)) = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .expect("the stream moves")
    {
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buf.find("\n\n") {
            let raw: String = buf.drain(..end + 2).collect();
            for mut f in frames(&raw) {
                f.at = Some(Instant::now());
                let last = stop(&f);
                out.push(f);
                if last {
                    return out;
                }
            }
        }
    }
    out
}

struct Served {
    base: String,
    http: reqwest::Client,
}

/// The API (submit, status with `events_url`, events) served on loopback for user header `X-User-Id`,
/// and a worker running beside it.
async fn serve(b: &Backends) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut backend = b.backend.clone();
    backend.config.events_url = Some(base.clone());
    let registry = registry();
    let submit =
        Arc::new(backend.submit_api(registry.clone(), ApiSettings::from_config(&b.config)));
    let status = Arc::new(backend.status_api());
    let settings = StreamSettings {
        poll: Duration::from_millis(100),
        ..StreamSettings::default()
    };
    let app = api::router(submit, status, Arc::new(backend.waitpoint_api()))
        .merge(api::events_routes(Arc::new(backend.events_api(settings))))
        .layer(axum::middleware::from_fn(|req, next| {
            api::dev_identity(true, req, next)
        }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let worker = Arc::new(
        event_source_on(&backend, registry, fast_settings(5)).with_wait(Duration::from_millis(100)),
    );
    tokio::spawn(async move {
        loop {
            let _ = worker.poll_once().await;
        }
    });
    Served {
        base,
        http: reqwest::Client::new(),
    }
}

/// `steps`: three progress reports 300 ms apart, then a result.
fn registry() -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("steps", |_: Value, ctx| async move {
        for (i, msg) in ["fetching", "thinking", "writing"].iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            ctx.progress(((i + 1) * 33) as u8, *msg).await?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok::<_, JobError>(json!("written"))
    })
    .unwrap();
    // `partials`: a burst of five partials, then a wait; once the wait is over, two more and a result.
    r.register_fn("partials", |_: Value, ctx| async move {
        let wait = jobkit::handler::WaitFor::timeout(Duration::from_secs(3600));
        match ctx.wait_for::<Value>("go", wait).await {
            Err(wait @ JobError::Wait { .. }) => {
                for n in 1..=5 {
                    ctx.partial(&json!({"n": n})).await?;
                }
                Err(wait)
            }
            Ok(_) => {
                ctx.partial(&json!({"n": 6})).await?;
                ctx.partial(&json!({"n": 7})).await?;
                Ok(json!("done"))
            }
            Err(e) => Err(e),
        }
    })
    .unwrap();
    r.register_fn("approve", |_: Value, ctx| async move {
        let wait = jobkit::handler::WaitFor::timeout(Duration::from_secs(3600));
        ctx.wait_for::<Value>("approve", wait).await
    })
    .unwrap();
    r
}

impl Served {
    /// A `kind` job submitted as `user` (its input `null`): its view, with its `events_url`.
    async fn submit(&self, user: &str, kind: &str) -> Value {
        let resp = self
            .http
            .post(format!("{}/jobs", self.base))
            .header("x-user-id", user)
            .json(&json!({"kind": kind, "input": null}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let accepted: Value = resp.json().await.unwrap();
        self.view(user, accepted["job_id"].as_str().unwrap()).await
    }

    async fn view(&self, user: &str, id: &str) -> Value {
        self.http
            .get(format!("{}/jobs/{id}", self.base))
            .header("x-user-id", user)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn open(&self, url: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut req = self.http.get(url);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.send().await.unwrap()
    }
}

async fn a_stream_shows_each_change_and_ends_with_the_view(b: Backends) {
    let s = serve(&b).await;
    let job = s.submit("eve", "steps").await;
    let url = job["events_url"].as_str().expect("events_url").to_owned();
    assert!(url.starts_with(&format!(
        "{}/jobs/{}/events?token=",
        s.base,
        job["job_id"].as_str().unwrap()
    )));
    let resp = s.open(&url, None).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let got = read(resp, to_the_end).await;
    let events: Vec<&Frame> = got.iter().filter(|f| !f.comment).collect();
    let names: Vec<&str> = events.iter().map(|f| f.event.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"status"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
    let progress: Vec<Value> = events
        .iter()
        .filter(|f| f.event.as_deref() == Some("progress"))
        .map(|f| serde_json::from_str(&f.data).unwrap())
        .collect();
    assert_eq!(
        progress
            .iter()
            .map(|p| p["message"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["fetching", "thinking", "writing"],
        "{names:?}"
    );
    assert_eq!(progress[2]["percent"], 99);
    let versions: Vec<u64> = events.iter().map(version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] <= w[1]),
        "ids start with the job's version, in order: {versions:?}"
    );
    let done: Value = serde_json::from_str(&events.last().unwrap().data).unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"], "written");
    // Delivered as it happened, not at the end: the first event came well before the last.
    let first = events[0].at.unwrap();
    let last = events.last().unwrap().at.unwrap();
    assert!(
        last - first >= Duration::from_millis(600),
        "{:?}",
        last - first
    );
}

/// The job's version an event id starts with.
fn version(f: &&Frame) -> u64 {
    let id = f.id.as_deref().expect("every event has an id");
    id.split('.').next().unwrap().parse().expect("a version")
}

async fn a_resumed_stream_repeats_nothing(b: Backends) {
    let s = serve(&b).await;
    let job = s.submit("fay", "steps").await;
    let url = job["events_url"].as_str().unwrap().to_owned();
    // Read up to the first progress event (the job is running by then), then drop the connection.
    let first = read(s.open(&url, None).await, |f| {
        f.event.as_deref() == Some("progress")
    })
    .await;
    let first: Vec<&Frame> = first.iter().filter(|f| !f.comment).collect();
    let last_id = first.last().unwrap().id.clone().unwrap();
    let rest = read(s.open(&url, Some(&last_id)).await, to_the_end).await;
    let rest: Vec<&Frame> = rest.iter().filter(|f| !f.comment).collect();
    let seen = |event: &str| {
        first
            .iter()
            .rfind(|f| f.event.as_deref() == Some(event))
            .map(|f| f.data.clone())
    };
    // The job's version moved on (progress, heartbeats) but its status did not: neither the status
    // nor the progress the client had comes again, under a new id or any other.
    let status: Value = serde_json::from_str(&seen("status").unwrap()).unwrap();
    assert_eq!(status["status"], "running");
    for f in &rest {
        let event = f.event.as_deref().unwrap();
        assert!(
            event == "done" || seen(event).as_deref() != Some(&f.data),
            "{f:?} repeats what {last_id} covered; first: {first:?}"
        );
        assert!(version(f) >= version(first.last().unwrap()), "{f:?}");
    }
    // Still running until the end: no status event at all, only progress, then `done`.
    let names: Vec<&str> = rest.iter().map(|f| f.event.as_deref().unwrap()).collect();
    assert_eq!(names.last(), Some(&"done"), "{rest:?}");
    assert!(
        names[..names.len() - 1].iter().all(|n| *n == "progress"),
        "{rest:?}"
    );
}

/// After `done`, a browser's EventSource reconnects on its own (the stream ended): answering `204`
/// is what makes it stop, where an empty `200` would bring it back every few seconds.
async fn a_client_that_saw_done_is_told_to_stop_reconnecting(b: Backends) {
    let s = serve(&b).await;
    let job = s.submit("ida", "steps").await;
    let url = job["events_url"].as_str().unwrap().to_owned();
    let all = read(s.open(&url, None).await, to_the_end).await;
    let done = all.iter().rfind(|f| !f.comment).unwrap();
    assert_eq!(done.event.as_deref(), Some("done"));
    for _ in 0..2 {
        let again = s.open(&url, done.id.as_deref()).await;
        assert_eq!(again.status(), 204);
        assert_eq!(again.text().await.unwrap(), "");
    }
    // A client that had not seen the end (no Last-Event-ID, or an earlier one) still gets `done`.
    let earlier = all.iter().find(|f| !f.comment).unwrap();
    for last in [None, earlier.id.as_deref()] {
        let resp = s.open(&url, last).await;
        assert_eq!(resp.status(), 200);
        let got = read(resp, to_the_end).await;
        let got: Vec<&Frame> = got.iter().filter(|f| !f.comment).collect();
        assert_eq!(
            got.last().unwrap().event.as_deref(),
            Some("done"),
            "{last:?}"
        );
        assert_eq!(got.last().unwrap().data, done.data);
    }
}

async fn only_a_valid_unexpired_token_for_that_job_opens_a_stream(b: Backends) {
    let s = serve(&b).await;
    let job = s.submit("gus", "steps").await;
    let other = s.submit("gus", "steps").await;
    let id = job["job_id"].as_str().unwrap();
    let url = job["events_url"].as_str().unwrap();
    let token = url.split("token=").nth(1).unwrap();
    let key = TokenKey::new(&b.signing_secret);
    let now = jobkit::now_millis() / 1000;
    let expired = key.sign(Purpose::Events, &[id, "gus"], now - 1);
    let wrong_owner = key.sign(Purpose::Events, &[id, "hal"], now + 600);
    // Another last character (the same one would be the real token).
    let last = if token.ends_with('A') { 'E' } else { 'A' };
    let forged = format!("{}{last}", &token[..token.len() - 1]);
    let other_token = other["events_url"]
        .as_str()
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap()
        .to_owned();
    let at = |job: &str, token: &str| format!("{}/jobs/{job}/events?token={token}", s.base);
    let unknown = "01JF0000000000000000000000";
    let mut answers = Vec::new();
    for url in [
        format!("{}/jobs/{id}/events", s.base),
        at(id, &expired),
        at(id, &wrong_owner),
        at(id, &forged),
        at(id, &other_token),
        at(unknown, token),
        at("not-an-id", token),
    ] {
        let resp = s.open(&url, None).await;
        assert_eq!(resp.status(), 401, "{url}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_token", "{url}");
        answers.push(body);
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every refusal reads the same"
    );
    assert_eq!(s.open(url, None).await.status(), 200);
}

/// A parked job's stream says what it waits for once (never its `complete_url`); a reconnect from that
/// event does not repeat it, and sees the job resume and end.
async fn a_wait_shows_once_in_the_stream(b: Backends) {
    let s = serve(&b).await;
    let job = s.submit("ivy", "approve").await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let url = job["events_url"].as_str().unwrap().to_owned();
    let is_wait = |f: &Frame| f.event.as_deref() == Some("waiting");
    let got = read(s.open(&url, None).await, is_wait).await;
    let events: Vec<&Frame> = got.iter().filter(|f| !f.comment).collect();
    let wait = events.last().unwrap();
    assert!(is_wait(wait), "{events:?}");
    let data: Value = serde_json::from_str(&wait.data).unwrap();
    assert_eq!(data["name"], "approve", "{data}");
    assert!(data["expires_at"].is_string(), "{data}");
    assert!(
        data.get("complete_url").is_none(),
        "no capability in a stream: {data}"
    );
    let status = events[events.len() - 2];
    assert_eq!(status.event.as_deref(), Some("status"));
    assert_eq!(
        serde_json::from_str::<Value>(&status.data).unwrap()["status"],
        "waiting"
    );

    // Resumed from the wait: nothing repeated, then the resume and the end.
    let resumed = s.open(&url, wait.id.as_deref()).await;
    assert_eq!(resumed.status(), 200);
    let completed = s
        .http
        .post(format!("{}/jobs/{id}/waitpoints/approve", s.base))
        .header("x-user-id", "ivy")
        .json(&json!({"ok": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(completed.status(), 202);
    let rest = read(resumed, to_the_end).await;
    let names: Vec<&str> = rest
        .iter()
        .filter(|f| !f.comment)
        .filter_map(|f| f.event.as_deref())
        .collect();
    assert!(!names.contains(&"waiting"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"), "{names:?}");
}

/// Partials coalesce: of a burst, the first is written at once and the latest when the attempt ends
/// (it parks: nothing supersedes it); `GET` shows the latest, the stream each one written, in order,
/// and a reconnect repeats none. A partial pending when the job completes is dropped: the result
/// supersedes it.
async fn partials_show_the_latest_in_the_view_and_each_written_one_in_the_stream(b: Backends) {
    let s = serve(&b).await;
    let job = s.submit("pia", "partials").await;
    let id = job["job_id"].as_str().unwrap().to_owned();
    let url = job["events_url"].as_str().unwrap().to_owned();
    let partial = |f: &Frame| {
        (f.event.as_deref() == Some("partial")).then(|| {
            serde_json::from_str::<Value>(&f.data).unwrap()["n"]
                .as_u64()
                .unwrap()
        })
    };
    let got = read(s.open(&url, None).await, |f| partial(f) == Some(5)).await;
    let ns: Vec<u64> = got.iter().filter_map(partial).collect();
    // Coalesced: the burst's first (unless the stream read after the last) and its latest, no other.
    assert!(ns == [1, 5] || ns == [5], "{ns:?}");
    let view = eventually("the job to park", WAIT, async || {
        let v = s.view("pia", &id).await;
        (v["status"] == "waiting").then_some(v)
    })
    .await;
    assert_eq!(view["partial"], json!({"n": 5}), "{view}");

    let last_id = got.last().unwrap().id.clone().unwrap();
    let resumed = s.open(&url, Some(&last_id)).await;
    let completed = s
        .http
        .post(format!("{}/jobs/{id}/waitpoints/go", s.base))
        .header("x-user-id", "pia")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(completed.status(), 202);
    let rest = read(resumed, to_the_end).await;
    let ns: Vec<u64> = rest.iter().filter_map(partial).collect();
    assert_eq!(ns, [6], "nothing repeated, and 7 never written: {rest:?}");
    let done = rest.iter().rfind(|f| !f.comment).unwrap();
    assert_eq!(done.event.as_deref(), Some("done"));
    let done: Value = serde_json::from_str(&done.data).unwrap();
    assert_eq!(done["result"], "done");
    assert_eq!(done["partial"], json!({"n": 6}), "{done}");
    assert_eq!(s.view("pia", &id).await["partial"], json!({"n": 6}));
}

on_both_backends!(
    partials_show_the_latest_in_the_view_and_each_written_one_in_the_stream,
    a_wait_shows_once_in_the_stream,
    a_stream_shows_each_change_and_ends_with_the_view,
    a_resumed_stream_repeats_nothing,
    a_client_that_saw_done_is_told_to_stop_reconnecting,
    only_a_valid_unexpired_token_for_that_job_opens_a_stream,
);
