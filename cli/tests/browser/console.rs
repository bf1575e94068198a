//! The console (issue 24) in a real browser: headless Chromium driven by cli/tests/browser/console.py
//! against `jobctl dev`, with the harness of the CORS test ([`super::Dev`], [`super::browser_python`]).

use std::time::Duration;

use serde_json::Value;

use super::{Dev, browser_python, common, note_taking_model};

/// Runs one scenario of console.py against the console at `base`; what the page showed. Fails with the script's
/// error and everything seen so far when a step did not happen.
async fn scenario(base: &str, name: &str) -> Value {
    let python = browser_python().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.py");
    let saw = common::run_json(&python, &[script, name, base], Duration::from_secs(180)).await;
    assert!(saw.get("failed").is_none(), "{saw:#}");
    assert_eq!(
        saw["errors"],
        serde_json::json!([]),
        "uncaught errors: {saw:#}"
    );
    saw
}

/// No console message but the browser's own note of an answer with one of `statuses` (an action the
/// scenario made fail on purpose): no CSP violation, no script error, no failed load otherwise.
fn assert_quiet(saw: &Value, statuses: &[u16]) {
    for line in saw["console"].as_array().unwrap() {
        let line = line.as_str().unwrap();
        let expected = statuses.iter().any(|s| {
            line.starts_with("error: Failed to load resource")
                && line.contains(&format!("status of {s} "))
        });
        assert!(
            expected || !(line.starts_with("error") || line.starts_with("warning")),
            "console: {line}\n{saw:#}"
        );
    }
}

#[tokio::test]
async fn a_job_submitted_from_the_page_completes_live_and_others_appear_without_reload() {
    let dev = Dev::start(&[]);
    let saw = scenario(&dev.url, "submit").await;
    assert_eq!(saw["content_type"], "text/html; charset=utf-8");
    let csp = saw["csp"].as_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(saw["status"], "completed", "{saw:#}");
    assert!(
        saw["result"].as_str().unwrap().contains("console"),
        "{saw:#}"
    );
    assert_eq!(saw["first_row"], saw["other"], "newest first: {saw:#}");
    assert_eq!(saw["rows"], 2, "{saw:#}");
    assert!(
        saw["sleep_input"].as_str().unwrap().contains("10"),
        "{saw:#}"
    );
    assert!(
        saw["submit_error"]
            .as_str()
            .unwrap()
            .starts_with("invalid_input: "),
        "{saw:#}"
    );
    assert_eq!(saw["filtered"], serde_json::json!(["sleep"]), "{saw:#}");
    assert_eq!(saw["kind_asked"], true, "the API filters by kind: {saw:#}");
    assert!(
        saw["filter_url"]
            .as_str()
            .unwrap()
            .ends_with("#/?status=completed&kind=sleep"),
        "{saw:#}"
    );
    assert_quiet(&saw, &[422]);
}

#[tokio::test]
async fn a_running_jobs_progress_moves_live_and_the_keyboard_cancels_it() {
    let dev = Dev::start(&[]);
    let saw = scenario(&dev.url, "cancel").await;
    assert_eq!(
        saw["focused_row"], saw["job_id"],
        "j focuses the row: {saw:#}"
    );
    let progress = saw["progress"].as_array().unwrap();
    assert!(progress[1].as_u64() > progress[0].as_u64(), "{saw:#}");
    assert!(
        saw["progress_text"].as_str().unwrap().contains('%'),
        "{saw:#}"
    );
    assert_eq!(saw["focused_action"], "cancel", "{saw:#}");
    assert_eq!(saw["status"], "cancelled", "{saw:#}");
    assert_quiet(&saw, &[]);
}

#[tokio::test]
async fn markup_and_script_in_a_jobs_input_show_as_text_and_never_run() {
    let dev = Dev::start(&[]);
    let saw = scenario(&dev.url, "markup").await;
    let input = saw["input_text"].as_str().unwrap();
    assert!(
        input.contains("<script>window.__pwned = 1</script>"),
        "{saw:#}"
    );
    assert!(input.contains("<img src=x onerror="), "{saw:#}");
    assert!(input.contains("<b>key</b>"), "{saw:#}");
    assert!(
        saw["result_text"].as_str().unwrap().contains("<svg onload"),
        "{saw:#}"
    );
    assert_eq!(saw["pwned"], Value::Null, "{saw:#}");
    assert_eq!(saw["injected_elements"], 0, "{saw:#}");
    assert_quiet(&saw, &[]);
}

/// A running `jobctl console`, killed when dropped.
struct Console {
    child: std::process::Child,
    url: String,
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Console {
    fn start(api_url: &str, token: &str) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_jobctl"))
            .args(["console", "--addr", "127.0.0.1:0", "--api-url", api_url])
            .args(["--token", token])
            .env("RUST_LOG", "warn")
            // The operator pages need the stack's env: none here.
            .env_remove("JOBKIT_QUEUE_URL")
            .env_remove("JOBKIT_TABLE")
            .env_remove("JOBKIT_DLQ_URL")
            .env_remove("AWS_ENDPOINT_URL")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("jobctl runs");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("jobctl console printed its banner")
                .unwrap();
            if let Some(rest) = line.strip_prefix("jobctl console: ") {
                break rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches('/')
                    .to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
        Self { child, url }
    }
}

/// What a stub API and a stub events function saw of the console's requests.
#[derive(Default)]
struct Seen {
    api_auth: Vec<Option<String>>,
    events: Vec<(Option<String>, String)>,
}

/// A stub of a deployed stack: an API that answers a job whose `events_url` names a second origin
/// (the events function's Function URL), which streams one `done` event.
async fn stub_stack() -> (String, std::sync::Arc<std::sync::Mutex<Seen>>) {
    use axum::http::HeaderMap;
    use axum::routing::get;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
    let events = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let events_origin = format!("http://{}", events.local_addr().unwrap());
    let auth = |h: &HeaderMap| {
        h.get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let s = seen.clone();
    let events_app = axum::Router::new().route(
        "/jobs/{id}/events",
        get(move |h: HeaderMap, uri: axum::http::Uri| async move {
            s.lock().unwrap().events.push((auth(&h), uri.to_string()));
            (
                [("content-type", "text/event-stream")],
                "event: done\nid: 3.completed.0\ndata: {\"status\":\"completed\"}\n\n",
            )
        }),
    );
    tokio::spawn(async move { axum::serve(events, events_app).await });
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api_url = format!("http://{}/prod", api.local_addr().unwrap());
    let s = seen.clone();
    let api_app = axum::Router::new().route(
        "/prod/jobs/{id}",
        get(
            move |h: HeaderMap, axum::extract::Path(id): axum::extract::Path<String>| async move {
                s.lock().unwrap().api_auth.push(auth(&h));
                axum::Json(serde_json::json!({
                    "job_id": id,
                    "status": "running",
                    "events_url": format!("{events_origin}/jobs/{id}/events?token=job-capability"),
                }))
            },
        ),
    );
    tokio::spawn(async move { axum::serve(api, api_app).await });
    (api_url, seen)
}

/// `jobctl console` forwards the page's API calls with the caller's token (a stage path in --api-url
/// kept), and a job's stream to the events function its `events_url` names, without the token there;
/// requests from another site are refused; the operator pages say what they need.
#[tokio::test]
async fn the_console_proxy_adds_the_token_streams_events_and_refuses_other_sites() {
    let (api_url, seen) = stub_stack().await;
    let console = Console::start(&api_url, "s3cret");
    let http = reqwest::Client::new();
    let id = "01M98Q833GN3TS09QWMGZ682WQ";

    let page = http.get(format!("{}/", console.url)).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("connect-src 'self'")
    );
    let job = http
        .get(format!("{}/jobs/{id}", console.url))
        .send()
        .await
        .unwrap();
    assert_eq!(job.status(), 200);
    let body = job.text().await.unwrap();
    assert!(!body.contains("s3cret"), "{body}");
    let stream = http
        .get(format!(
            "{}/jobs/{id}/events?token=job-capability",
            console.url
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    assert!(stream.text().await.unwrap().contains("event: done"));
    {
        let seen = seen.lock().unwrap();
        assert!(!seen.api_auth.is_empty());
        assert!(
            seen.api_auth
                .iter()
                .all(|a| a.as_deref() == Some("Bearer s3cret")),
            "{:?}",
            seen.api_auth
        );
        assert_eq!(
            seen.events,
            vec![(None, format!("/jobs/{id}/events?token=job-capability"))]
        );
    }

    let cross_site = http
        .post(format!("{}/jobs", console.url))
        .header("origin", "https://evil.example")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403);
    let rebound = http
        .get(format!("{}/jobs/{id}", console.url))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    let ops = http
        .get(format!("{}/ops/queues", console.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status(), 503);
    let ops: Value = ops.json().await.unwrap();
    assert_eq!(ops["error"]["code"], "operator_unavailable", "{ops}");
}

/// The page through `jobctl console` in a real browser, against `jobctl dev` as the stack: a running
/// job's progress comes over the proxied stream, and the keyboard cancels it.
#[tokio::test]
async fn through_jobctl_console_a_running_jobs_progress_moves_live() {
    let dev = Dev::start(&[]);
    let console = Console::start(&dev.url, "s3cret");
    let saw = scenario(&console.url, "cancel").await;
    let progress = saw["progress"].as_array().unwrap();
    assert!(progress[1].as_u64() > progress[0].as_u64(), "{saw:#}");
    assert_eq!(saw["status"], "cancelled", "{saw:#}");
    assert_quiet(&saw, &[]);
}

/// The DLQ page redrives a dead job: `jobctl dev` with one attempt per job and an `agent` kind whose
/// model is a closed port, so an agent job dies on its first attempt and its message reaches the DLQ.
#[tokio::test]
async fn the_dlq_page_lists_a_dead_job_with_its_error_and_redrives_it() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let model = format!("http://127.0.0.1:{closed}/v1");
    let dev = Dev::start_with(&["--model-url", &model], &[("JOBKIT_MAX_ATTEMPTS", "1")]);
    let saw = scenario(&dev.url, "dlq").await;
    let row = saw["row_text"].as_str().unwrap();
    assert!(
        row.contains("agent") && row.contains("model_unavailable"),
        "{saw:#}"
    );
    assert!(
        saw["queues"].as_u64().unwrap() >= 2,
        "jobs and dlq: {saw:#}"
    );
    assert!(
        saw["redrive_message"]
            .as_str()
            .unwrap()
            .contains("redriven: 1"),
        "{saw:#}"
    );
    assert_eq!(saw["requeued"], true, "{saw:#}");
    assert_quiet(&saw, &[]);
}

/// An OpenAI-compatible model that asks for one calculator call, then answers with its result.
async fn stub_model() -> String {
    common::model((31, 7), |body| {
        let answered = body["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"));
        if answered {
            serde_json::json!({"role": "assistant", "content": "6 times 7 is 42."})
        } else {
            serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{
                "id": "c1", "type": "function",
                "function": {"name": "calculator", "arguments": "{\"expression\":\"6*7\"}"}
            }]})
        }
    })
    .await
}

/// An agent job's page shows its recorded steps (GET /jobs/{id}/steps): both model turns with their
/// token usage and the tool call between them, with the call's input.
#[tokio::test]
async fn an_agent_jobs_timeline_shows_its_model_turns_and_tool_call() {
    let model = stub_model().await;
    let dev = Dev::start_with(&["--model-url", &model], &[]);
    let saw = scenario(&dev.url, "agent").await;
    let steps: Vec<&str> = saw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(steps.len(), 3, "two turns and a tool call: {saw:#}");
    let timeline = saw["timeline"].as_str().unwrap();
    for shown in [
        "model turn",
        "tool call",
        "31 in / 7 out tokens",
        "calculator",
        "6*7",
        "42",
    ] {
        assert!(timeline.contains(shown), "{shown:?} in {timeline}");
    }
    assert_quiet(&saw, &[]);
}

/// After an agent job (two turns of 31 in and 7 out on the stub model), its page shows its tokens by
/// model, and its link opens the Usage page: today's tokens by model, the daily budget
/// (`JOBKIT_MAX_TOKENS_PER_USER_PER_DAY`) and what is left of it.
#[tokio::test]
async fn the_usage_page_shows_todays_tokens_by_model_after_an_agent_job() {
    let model = stub_model().await;
    let dev = Dev::start_with(
        &["--model-url", &model],
        &[
            ("JOBKIT_MAX_TOKENS_PER_USER_PER_DAY", "1000"),
            ("JOBKIT_DEMO_MODEL", "stub-model"),
        ],
    );
    let saw = scenario(&dev.url, "usage").await;
    let tokens = saw["job_tokens"].as_str().unwrap();
    assert!(
        tokens.contains("stub-model") && tokens.contains("62 in / 14 out"),
        "{saw:#}"
    );
    assert!(
        saw["usage_url"].as_str().unwrap().ends_with("#/usage"),
        "{saw:#}"
    );
    assert_eq!(saw["model"], "stub-model", "{saw:#}");
    let row = saw["models"][0].as_str().unwrap();
    for shown in ["62", "14", "76", "2"] {
        assert!(row.contains(shown), "{shown:?} in {row}");
    }
    assert_eq!(saw["models"].as_array().unwrap().len(), 1, "{saw:#}");
    assert_eq!(saw["total"], "76", "{saw:#}");
    assert_eq!(saw["limit"], "1,000", "{saw:#}");
    assert_eq!(saw["remaining"], "924", "{saw:#}");
    assert_eq!(saw["nav"], 1, "the Usage tab is current: {saw:#}");
    assert_quiet(&saw, &[]);

    // The same from a terminal: `jobctl usage`, as text and as the API's JSON; a bad day is refused.
    let usage = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_jobctl"))
            .args(["usage", "--api-url", &dev.url])
            .args(args)
            .output()
            .unwrap()
    };
    let json = usage(&["--json"]);
    assert!(json.status.success(), "{json:?}");
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        json["models"]["stub-model"],
        serde_json::json!({"input_tokens": 62, "output_tokens": 14, "requests": 2}),
        "{json}"
    );
    assert_eq!(
        (&json["limit"], &json["remaining"]),
        (&1000.into(), &924.into())
    );
    let text = String::from_utf8(usage(&[]).stdout).unwrap();
    assert!(
        text.contains("76 tokens, of 1000 a day, 924 left")
            && text.contains("stub-model  62 in  14 out  2 requests"),
        "{text}"
    );
    let bad = usage(&["--day", "someday"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid_day"),
        "{bad:?}"
    );
}

/// An agent's tool call that needs approval, from its page: the demo agent (on the test's stub model)
/// asks to run `send_note`; the page shows the waitpoint with the tool and its input; Approve resumes
/// the job and the page shows it completed with the note, without a reload. A second job is rejected
/// with a reason, which the model gets as the tool's error: the timeline and the result show it.
#[tokio::test]
async fn an_agents_tool_call_is_approved_and_rejected_from_its_page() {
    let model = note_taking_model("hello from the page").await;
    let dev = Dev::start_with(&["--model-url", &model], &[]);
    let saw = scenario(&dev.url, "approval").await;
    assert_eq!(saw["waitpoint_status"], "waiting", "{saw:#}");
    let waitpoint = saw["waitpoint"].as_str().unwrap();
    for shown in ["approve-tool-1-0", "send_note", "hello from the page"] {
        assert!(waitpoint.contains(shown), "{shown:?} in {waitpoint}");
    }
    assert_eq!(saw["approved_status"], "completed", "{saw:#}");
    let result = saw["approved_result"].as_str().unwrap();
    assert!(
        result.contains("noted") && result.contains("hello from the page"),
        "{saw:#}"
    );
    assert_eq!(saw["approved_live"], true, "no reload: {saw:#}");
    assert_eq!(saw["waitpoint_gone"], true, "{saw:#}");

    assert_eq!(saw["rejected_status"], "completed", "{saw:#}");
    let refused = "the user refused this call of send_note: not today, thanks";
    for seen in ["rejected_result", "rejected_timeline"] {
        let text = saw[seen].as_str().unwrap();
        assert!(text.contains(refused), "{seen}: {text}");
    }
    assert!(
        !saw["rejected_result"]
            .as_str()
            .unwrap()
            .contains("\"noted\""),
        "the note was never sent: {saw:#}"
    );
    assert_eq!(saw["rejected_live"], true, "no reload: {saw:#}");
    assert_quiet(&saw, &[]);
}

/// The proxy acts with the caller's token, so it never listens beyond this machine.
#[test]
fn jobctl_console_refuses_an_address_other_machines_can_reach() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args(["console", "--addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");
}
