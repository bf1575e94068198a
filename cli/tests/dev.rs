//! `jobctl dev` as a user runs it: the real binary, on a free port, driven over HTTP.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;
/// The console in a real browser, on this file's harness.
#[path = "browser/console.rs"]
mod console;

/// A running `jobctl dev`, killed when dropped.
struct Dev {
    child: Child,
    url: String,
    /// Its stderr, line by line, as it comes.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Dev {
    fn start(extra_env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], extra_env)
    }

    fn start_with(extra_args: &[&str], extra_env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_jobctl"))
            .args(["dev", "--addr", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("jobctl runs");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("jobctl dev printed its banner")
                .unwrap();
            if let Some(rest) = line.split("API on ").nth(1) {
                break rest.split_whitespace().next().unwrap().to_owned();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, url, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory, from the kernel's accounting.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

async fn submit(http: &reqwest::Client, dev: &Dev, body: Value) -> String {
    let resp = http
        .post(format!("{}/jobs", dev.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let v: Value = resp.json().await.unwrap();
    v["job_id"].as_str().unwrap().to_owned()
}

async fn view(http: &reqwest::Client, dev: &Dev, id: &str) -> Value {
    http.get(format!("{}/jobs/{id}", dev.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn status(http: &reqwest::Client, dev: &Dev, id: &str) -> String {
    view(http, dev, id).await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn oversized_posts_are_refused_before_they_are_buffered() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    // Warm up: the first requests allocate what any request needs.
    submit(&http, &dev, json!({"kind": "echo", "input": 1})).await;
    let before = dev.rss_kib();
    let big = vec![b'x'; 4 << 20];
    let posts = (0..32).map(|_| {
        let (http, url, body) = (http.clone(), format!("{}/jobs", dev.url), big.clone());
        tokio::spawn(async move {
            let resp = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            // A refused upload may be cut before all of it was sent: either a 413, or a reset.
            resp.map(|r| r.status().as_u16()).unwrap_or(413)
        })
    });
    for status in futures::future::join_all(posts).await {
        assert_eq!(status.unwrap(), 413);
    }
    // One more, read whole: refused by its Content-Length, in the API's error shape.
    let resp = http
        .post(format!("{}/jobs", dev.url))
        .header("content-type", "application/json")
        .body(vec![b' '; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["error"]["code"], "payload_too_large", "{body}");
    let after = dev.rss_kib();
    println!("jobctl dev RSS: {before} KiB before, {after} KiB after 32 concurrent 4 MiB POSTs");
    assert!(
        after < before + 30 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

/// Issue 21: `jobctl dev` built its own registry, so a kind the functions' registry had was `422
/// unknown_kind` there. Here `agent` on Bedrock, configured as template.yaml configures the functions:
/// `jobctl dev` and `jobctl run` now take their kinds from the one entry point, `kinds::registry`.
#[tokio::test]
async fn dev_and_run_serve_the_one_registry_and_dev_lists_it_with_its_schemas() {
    let env = [("JOBKIT_MODEL_PROVIDER", "bedrock")];
    let dev = Dev::start(&env);
    let http = reqwest::Client::new();
    let model = jobkit::agent::Bedrock::from_env();
    let expected = kinds::registry(&kinds::Settings {
        model: Some(std::sync::Arc::new(model)),
    });
    let listed: Value = http
        .get(format!("{}/kinds", dev.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!({"kinds": expected.describe()}));
    let names: Vec<&str> = expected.kinds().collect();
    assert_eq!(names, ["agent", "echo", "sleep"]);
    submit(
        &http,
        &dev,
        json!({"kind": "agent", "input": {"agent": "nope", "message": "hi"}}),
    )
    .await;
    // Submit checks the input against the kind's type: nothing is accepted that could only fail.
    let resp = http
        .post(format!("{}/jobs", dev.url))
        .json(&json!({"kind": "sleep", "input": {"ms": 10_001}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_input", "{body}");

    // `jobctl run` has the kind too: the job runs (and fails on the unknown agent, without a model call).
    let out = Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args([
            "run",
            "agent",
            "--input",
            r#"{"agent":"nope","message":"hi"}"#,
        ])
        .envs(env)
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        doc["error"]["code"],
        "unknown_agent",
        "{doc} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn long_jobs_do_not_hold_up_a_quick_one_submitted_after_them() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    let long: Vec<String> = futures::future::join_all((0..2).map(|_| {
        submit(
            &http,
            &dev,
            json!({"kind": "sleep", "input": {"ms": 10_000}}),
        )
    }))
    .await;
    let submitted = Instant::now();
    let quick = submit(&http, &dev, json!({"kind": "echo", "input": "quick"})).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&http, &dev, &quick).await != "completed" {
        assert!(Instant::now() < deadline, "the quick job never completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "echo completed {:?} after its submit, behind two 10-second sleeps",
        submitted.elapsed()
    );
    for id in &long {
        assert_eq!(
            status(&http, &dev, id).await,
            "running",
            "the long jobs are still running"
        );
    }
}

#[test]
fn ctrl_c_stops_it_within_seconds_even_with_a_half_sent_request_open() {
    let mut dev = Dev::start(&[]);
    // A request that never finishes: headers promising a body that never comes.
    let mut half = TcpStream::connect(dev.addr()).unwrap();
    half.write_all(b"POST /jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"kind\"")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-INT", &dev.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = dev.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "jobctl dev still runs 15 s after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!(
        "jobctl dev exited {:?} after Ctrl-C ({exit})",
        sent.elapsed()
    );
    assert!(exit.success(), "{exit}");
}

#[test]
fn a_body_cut_short_is_a_400_not_a_413() {
    use std::io::Read;
    let dev = Dev::start(&[]);
    let mut conn = TcpStream::connect(dev.addr()).unwrap();
    conn.write_all(b"POST /jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"kind\":\"echo\"")
        .unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""code":"truncated_body""#), "{answer}");
}

/// A receiver on loopback that hands every POST (headers, body) to the test.
async fn receiver() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(http::HeaderMap, String)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((headers, body));
                http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

#[tokio::test]
async fn a_finished_jobs_webhook_is_delivered_signed_with_the_configured_secret() {
    let secret = jobkit::webhook::Secrets::generate();
    let dev = Dev::start(&[("JOBKIT_WEBHOOK_SECRET", &secret)]);
    let (hook, mut received) = receiver().await;
    let http = reqwest::Client::new();
    let id = submit(
        &http,
        &dev,
        json!({"kind": "echo", "input": {"n": 7}, "callback_url": hook}),
    )
    .await;
    let (headers, body) = tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("the event arrives")
        .unwrap();
    let now = jobkit::now_millis() / 1000;
    let secrets = jobkit::webhook::Secrets::parse(&secret).unwrap();
    jobkit::webhook::verify(&headers, body.as_bytes(), &secrets, now).expect("signed with it");
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["type"], "job.completed");
    assert_eq!(event["data"]["job_id"], id.as_str());
    assert_eq!(event["data"]["result"], json!({"n": 7}));
    // The job shows the delivery.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = view(&http, &dev, &id).await;
        if v["webhook"]["status"] == "delivered" {
            assert_eq!(v["webhook"]["last_status"], 204);
            break;
        }
        assert!(Instant::now() < deadline, "never shown delivered: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn stats_show_the_queues_and_your_jobs_and_metrics_print_a_line() {
    let dev = Dev::start_with(&["--metrics"], &[]);
    let http = reqwest::Client::new();
    let long = submit(
        &http,
        &dev,
        json!({"kind": "sleep", "input": {"ms": 10_000}}),
    )
    .await;
    submit(&http, &dev, json!({"kind": "echo", "input": 1})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&http, &dev, &long).await != "running" {
        assert!(Instant::now() < deadline, "the sleep never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args(["stats", "--api-url", &dev.url, "--json"])
        .env_remove("JOBKIT_QUEUE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["queues"]["jobs"]["in_flight"], 1, "{stats}");
    assert_eq!(stats["queues"]["dead_letters"]["waiting"], 0, "{stats}");
    assert_eq!(stats["your_jobs"]["running"], "1", "{stats}");
    let human = Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args(["stats", "--api-url", &dev.url])
        .env_remove("JOBKIT_QUEUE_URL")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("jobs queue") && text.contains("running 1"),
        "{text}"
    );

    // --metrics: a summary line within a few intervals, counting what was accepted.
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        let found = dev
            .log
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains("last 5 s:") && l.contains("accepted 2"))
            .cloned();
        if let Some(l) = found {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "no metrics line: {:?}",
            dev.log.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("{line}");
}

/// Serves `page` at `/` on a free loopback port: a web app's origin. Returns `http://127.0.0.1:PORT`.
async fn serve_page(page: &'static str) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/",
        axum::routing::get(move || async move { axum::response::Html(page) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

/// The python of infra/browser.sh's venv (Playwright), which it installs if missing. No chromium is a
/// failure that says how to install it, never a skipped test.
async fn browser_python() -> String {
    common::venv_python("browser.sh", "browser").await
}

/// Issues 21.7 and 21.8 in a real browser (headless Chromium, driven by cli/tests/browser/cors.py): a
/// page on an origin `--cors-origin` names submits a job (a JSON POST: preflighted), reads the
/// exposed `Location` and an error's body, and follows the job with `new EventSource(events_url)`;
/// once `done` has come, the browser's own reconnect is told to stop and the EventSource closes for
/// good instead of reconnecting every few seconds. A page on any other origin reads nothing.
#[tokio::test]
async fn a_page_on_an_allowed_origin_submits_and_follows_a_job_in_a_real_browser() {
    const PAGE: &str = include_str!("browser/cors.html");
    let python = browser_python().await;
    let allowed = serve_page(PAGE).await;
    let other = serve_page(PAGE).await;
    let dev = Dev::start_with(&["--cors-origin", &allowed], &[]);
    assert_ne!(allowed, dev.url, "the page's origin is not the API's");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/cors.py");
    let args = [
        script,
        &format!("{allowed}/"),
        &format!("{other}/"),
        &dev.url,
    ];
    let saw = common::run_json(&python, &args, Duration::from_secs(120)).await;
    let page = &saw["allowed"];
    assert_eq!(page["submitStatus"], 202, "{saw:#}");
    let id = page["accepted"]["job_id"].as_str().unwrap();
    assert_eq!(page["location"], format!("/jobs/{id}"), "exposed: {saw:#}");
    assert_eq!(page["refusedStatus"], 422, "{saw:#}");
    assert_eq!(page["refusedBody"]["error"]["code"], "unknown_kind");
    assert!(page["eventsUrl"].as_str().unwrap().starts_with(&dev.url));

    let stream = &page["stream"];
    let events = stream["events"].as_array().unwrap();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(names.last(), Some(&"done"), "{saw:#}");
    assert_eq!(events.last().unwrap()["data"]["status"], "completed");
    // The stream ended after `done`; the browser reconnected once (readyState CONNECTING), was
    // answered 204, and closed for good: one open, never a second.
    assert_eq!(
        stream["timedOut"], false,
        "the EventSource never closed: {saw:#}"
    );
    assert_eq!(stream["finalState"], 2, "CLOSED: {saw:#}");
    assert_eq!(stream["opens"], 1, "{saw:#}");
    assert_eq!(stream["errorStates"], json!([0, 2]), "{saw:#}");

    assert_eq!(saw["refused"], "refused: TypeError", "{saw:#}");
}

/// The python of infra/mcp.sh's venv (PyPI `mcp`, the official Python SDK), which it installs if missing.
async fn mcp_python() -> String {
    common::venv_python("mcp.sh", "MCP client").await
}

/// The official Python MCP client (cli/tests/mcp/client.py) connected to `POST /mcp` lists the tools,
/// submits a job and polls `get_job` to its result; a kind that does not exist is a tool error with
/// the API's code.
#[tokio::test]
async fn an_mcp_client_runs_a_job_through_post_mcp() {
    let python = mcp_python().await;
    let dev = Dev::start(&[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");
    let args = [script, &format!("{}/mcp", dev.url)];
    let saw = common::run_json(&python, &args, Duration::from_secs(60)).await;
    assert_eq!(
        saw["tools"],
        json!([
            "submit_job",
            "get_job",
            "list_jobs",
            "cancel_job",
            "complete_waitpoint"
        ]),
        "{saw:#}"
    );
    assert!(
        saw["kinds"].as_array().unwrap().contains(&json!("sleep")),
        "{saw:#}"
    );
    assert_eq!(saw["accepted"]["status"], "queued", "{saw:#}");
    assert_eq!(saw["job"]["job_id"], saw["accepted"]["job_id"]);
    assert_eq!(saw["job"]["status"], "completed", "{saw:#}");
    assert_eq!(saw["job"]["kind"], "sleep");
    assert_eq!(saw["refused"]["isError"], true, "{saw:#}");
    assert_eq!(saw["refused"]["body"]["status"], 422);
    assert_eq!(saw["refused"]["body"]["error"]["code"], "unknown_kind");
    // The job is the REST API's too.
    let id = saw["job"]["job_id"].as_str().unwrap();
    assert_eq!(status(&reqwest::Client::new(), &dev, id).await, "completed");
}

#[tokio::test]
async fn submit_wait_follows_the_jobs_stream() {
    let dev = Dev::start(&[("RUST_LOG", "warn,tower_http=debug")]);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args([
            "submit",
            "sleep",
            "--input",
            r#"{"ms":1500}"#,
            "--wait",
            "--json",
        ])
        .args(["--api-url", &dev.url])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["status"], "completed", "{job}");
    let id = job["job_id"].as_str().unwrap();
    let streamed = dev
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains(&format!("/jobs/{id}/events")));
    assert!(
        streamed,
        "the client read the job's stream: {:?}",
        dev.log.lock().unwrap()
    );
}

/// `jobctl ARGS --api-url DEV`: exit status, stdout, stderr.
fn jobctl(dev: &Dev, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args(args)
        .args(["--api-url", &dev.url])
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls the job until `done` says so of its view.
async fn wait_for(
    http: &reqwest::Client,
    dev: &Dev,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = view(http, dev, id).await;
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "never {what}: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_banner_lists_the_registered_kinds() {
    let dev = Dev::start(&[]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = dev.log.lock().unwrap().clone();
        if let Some(line) = log.iter().find(|l| l.contains("kinds")) {
            assert!(line.contains("kinds echo, sleep"), "{line}");
            assert!(
                line.contains("--model-url"),
                "says how to get `agent`: {line}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no kinds in the banner: {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn submit_prints_only_the_id_when_stdout_is_not_a_terminal() {
    let dev = Dev::start(&[]);
    // The test's pipe is not a terminal: `id=$(jobctl submit echo)` gets the id alone.
    let (status, out, err) = jobctl(&dev, &["submit", "echo"]);
    assert!(status.success(), "{err}");
    let id = out.strip_suffix('\n').unwrap_or(&out);
    jobkit::JobId::parse(id).unwrap_or_else(|e| panic!("{out:?} is not an id: {e}"));
}

#[tokio::test]
async fn list_kind_lists_only_that_kinds_jobs() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    let sleep = submit(&http, &dev, json!({"kind": "sleep", "input": {"ms": 1}})).await;
    for i in 0..3 {
        submit(&http, &dev, json!({"kind": "echo", "input": i})).await;
    }
    let (status, out, err) = jobctl(&dev, &["list", "--kind", "sleep", "--limit", "1", "--json"]);
    assert!(status.success(), "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    // The one sleep job, though three echo jobs are newer: the API filtered, not the page.
    assert_eq!(page["jobs"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page["jobs"][0]["job_id"], sleep.as_str());
    assert_eq!(page["next_cursor"], Value::Null);
}

#[tokio::test]
async fn cancel_of_a_running_job_says_cancel_requested() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    let id = submit(
        &http,
        &dev,
        json!({"kind": "sleep", "input": {"ms": 10_000}}),
    )
    .await;
    wait_for(&http, &dev, &id, "running", |v| v["status"] == "running").await;
    let (status, out, err) = jobctl(&dev, &["cancel", &id]);
    assert!(status.success(), "{err}");
    assert!(out.contains("cancel requested"), "{out}");
    wait_for(&http, &dev, &id, "cancelled", |v| {
        v["status"] == "cancelled"
    })
    .await;
}

#[tokio::test]
async fn sleep_reports_its_progress_while_it_runs() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    let id = submit(
        &http,
        &dev,
        json!({"kind": "sleep", "input": {"ms": 4_000}}),
    )
    .await;
    let v = wait_for(&http, &dev, &id, "reported progress", |v| {
        v["progress"].is_object()
    })
    .await;
    let percent = v["progress"]["percent"].as_u64().unwrap();
    assert!((1..100).contains(&percent), "{v}");
    assert!(
        v["progress"]["message"]
            .as_str()
            .unwrap()
            .contains("of 4000 ms"),
        "{v}"
    );
}

#[tokio::test]
async fn a_durable_sleep_parks_and_its_timer_fires_within_seconds_of_its_time() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    let submitted = Instant::now();
    let id = submit(
        &http,
        &dev,
        json!({"kind": "sleep", "input": {"ms": 2_000, "durable": true}}),
    )
    .await;
    let parked = wait_for(&http, &dev, &id, "parked", |v| v["status"] == "waiting").await;
    assert_eq!(parked["waiting_for"]["name"], "sleep", "{parked}");
    let done = wait_for(&http, &dev, &id, "completed", |v| {
        v["status"] == "completed"
    })
    .await;
    let took = submitted.elapsed();
    // The due task runs every second in dev: the timer fires about a second after its time.
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "fired after {took:?}: {done}"
    );
    assert_eq!(done["result"]["slept_ms"], 2_000, "{done}");
}

#[tokio::test]
async fn status_prints_big_numbers_to_the_digit() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    let big = "12345678901234567890123";
    let body = format!(r#"{{"kind":"echo","input":{{"n":{big}}}}}"#);
    let resp = http
        .post(format!("{}/jobs", dev.url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let id = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(&http, &dev, &id, "completed", |v| {
        v["status"] == "completed"
    })
    .await;
    let (status, out, err) = jobctl(&dev, &["status", &id]);
    assert!(status.success(), "{err}");
    assert!(
        out.contains(&format!(r#"result:   {{"n":{big}}}"#)),
        "{out}"
    );
}

#[tokio::test]
async fn logs_written_to_a_file_have_no_colour_codes() {
    // stderr is a pipe here, as when it is redirected to a file.
    let dev = Dev::start(&[("RUST_LOG", "info,tower_http=debug")]);
    let http = reqwest::Client::new();
    submit(&http, &dev, json!({"kind": "echo", "input": 1})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = dev.log.lock().unwrap().clone();
        if log.iter().any(|l| l.contains("/jobs")) {
            let coloured: Vec<_> = log.iter().filter(|l| l.contains('\x1b')).collect();
            assert!(coloured.is_empty(), "{coloured:?}");
            break;
        }
        assert!(Instant::now() < deadline, "no request was logged: {log:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A pseudo-terminal for the client (util-linux's `script`): what a person sees of `submit --wait`.
#[test]
fn submit_wait_shows_a_progress_bar_with_the_job_id() {
    let dev = Dev::start(&[]);
    let command = format!(
        r#"{} submit sleep --input '{{"ms":3000}}' --wait --api-url {}"#,
        env!("CARGO_BIN_EXE_jobctl"),
        dev.url
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .output()
        .expect("`script` (util-linux) runs");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    let id = screen
        .lines()
        .rev()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| jobkit::JobId::parse(w).is_ok())
        })
        .unwrap_or_else(|| panic!("no job id: {screen}"));
    // A frame of the bar: the id, the timer, a percentage and the handler's message.
    let frame = screen
        .split(['\r', '\n'])
        .find(|f| f.contains('%') && f.contains("slept"))
        .unwrap_or_else(|| panic!("no progress bar: {screen:?}"));
    assert!(frame.contains(id), "the bar keeps the job id: {frame:?}");
    assert!(frame.contains("00:00:0"), "the timer: {frame:?}");
}

/// What the receivers of [`receivers`] have seen.
#[derive(Default)]
struct Seen {
    /// Requests to `/hang` under way, and those the sender gave up on (its timeout dropped them).
    hanging: usize,
    abandoned: usize,
    /// Attempts at `/flaky` (refused twice, then accepted), and events accepted at `/hook`.
    flaky: usize,
    hooked: usize,
}

/// Receivers on loopback: `/hang` never answers, `/flaky` answers 500 twice then 204, `/hook` 204.
async fn receivers() -> (String, std::sync::Arc<std::sync::Mutex<Seen>>) {
    use axum::routing::post;
    use std::sync::{Arc, Mutex};
    struct Hanging(Arc<Mutex<Seen>>);
    impl Drop for Hanging {
        fn drop(&mut self) {
            let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
            seen.hanging -= 1;
            seen.abandoned += 1;
        }
    }
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (hang, flaky, hook) = (seen.clone(), seen.clone(), seen.clone());
    let app = axum::Router::new()
        .route(
            "/hang",
            post(move || {
                let seen = hang.clone();
                async move {
                    seen.lock().unwrap().hanging += 1;
                    let _guard = Hanging(seen);
                    std::future::pending::<()>().await
                }
            }),
        )
        .route(
            "/flaky",
            post(move || {
                let seen = flaky.clone();
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.flaky += 1;
                    if seen.flaky <= 2 {
                        http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        http::StatusCode::NO_CONTENT
                    }
                }
            }),
        )
        .route(
            "/hook",
            post(move || {
                let seen = hook.clone();
                async move {
                    seen.lock().unwrap().hooked += 1;
                    http::StatusCode::NO_CONTENT
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn receivers_that_hang_delay_neither_other_events_nor_other_retries() {
    let dev = Dev::start(&[]);
    let (base, seen) = receivers().await;
    let http = reqwest::Client::new();
    // Enough hanging receivers to fill every batch the deliveries could be received in.
    const HANGING: usize = 40;
    futures::future::join_all((0..HANGING).map(|n| {
        let body = json!({"kind": "echo", "input": n, "callback_url": format!("{base}/hang")});
        submit(&http, &dev, body)
    }))
    .await;
    let until = |what: &'static str, done: fn(&Seen) -> bool| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done(&seen.lock().unwrap()) {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    until("the hanging deliveries under way", |s| s.hanging > 0).await;

    // Another event, and one whose receiver refuses twice (retried after 1 s, then 2 s here), both
    // done while the hanging ones still hang (the sender gives up on those after 15 s).
    submit(
        &http,
        &dev,
        json!({"kind": "echo", "input": "hook", "callback_url": format!("{base}/hook")}),
    )
    .await;
    submit(
        &http,
        &dev,
        json!({"kind": "echo", "input": "flaky", "callback_url": format!("{base}/flaky")}),
    )
    .await;
    until(
        "the other event and the flaky receiver's third attempt, or a hanging one given up",
        |s| (s.hooked == 1 && s.flaky == 3) || s.abandoned > 0,
    )
    .await;
    let (abandoned, hooked, flaky, hanging) = {
        let s = seen.lock().unwrap();
        (s.abandoned, s.hooked, s.flaky, s.hanging)
    };
    assert_eq!(
        (abandoned, hooked, flaky),
        (0, 1, 3),
        "the other deliveries waited for hanging ones to time out"
    );
    assert_eq!(hanging, HANGING, "every hanging delivery went out at once");
}

#[test]
fn an_oversize_body_is_read_to_its_end_and_answered_413_not_cut_off() {
    use std::io::Read;
    let dev = Dev::start(&[]);
    let mut conn = TcpStream::connect(dev.addr()).unwrap();
    // Well past what the sockets' buffers hold, so a server that closes early resets the upload.
    let size = 6 << 20;
    write!(
        conn,
        "POST /jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {size}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![b' '; 64 * 1024];
    for sent in (0..size).step_by(chunk.len()) {
        conn.write_all(&chunk)
            .unwrap_or_else(|e| panic!("the upload was cut off after {sent} bytes: {e}"));
    }
    conn.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&answer).contains("}}") {
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("no answer: {e}"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
}

#[test]
fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use std::io::Read;
    let dev = Dev::start(&[]);
    // Half a request line, then a byte a second: never a whole head.
    let mut conn = TcpStream::connect(dev.addr()).unwrap();
    conn.write_all(b"GET /jobs HTT").unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut buf = [0; 512];
    loop {
        match conn.read(&mut buf) {
            Ok(_) => break, // closed (or answered, then closed)
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) => {} // nothing yet: a second has passed
        }
        assert!(
            Instant::now() < deadline,
            "a connection that never sent its headers is still open after 40 s"
        );
        if conn.write_all(b"P").is_err() {
            break;
        }
    }
}

#[tokio::test]
async fn a_trailing_slash_names_the_same_resource() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/jobs/", dev.url))
        .json(&json!({"kind": "echo", "input": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let one = http
        .get(format!("{}/jobs/{id}/", dev.url))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    assert_eq!(one.json::<Value>().await.unwrap()["job_id"], id.as_str());
    let list = http.get(format!("{}/jobs/", dev.url)).send().await.unwrap();
    assert_eq!(list.status(), 200);
    let list: Value = list.json().await.unwrap();
    assert!(list.to_string().contains(&id), "{list}");
}

#[test]
fn unparsable_requests_are_answered_in_the_error_shape() {
    use std::io::Read;
    let dev = Dev::start(&[]);
    let many: String = (0..200).map(|i| format!("x-{i}: y\r\n")).collect();
    for (request, status) in [
        (
            "GET /jobs HTTP/1.1\r\nhost: x\r\nno colon here\r\n\r\n".to_owned(),
            "400",
        ),
        (
            format!("GET /jobs HTTP/1.1\r\nhost: x\r\n{many}\r\n"),
            "431",
        ),
    ] {
        let mut conn = TcpStream::connect(dev.addr()).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        let body: Value = serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1)
            .unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert!(body["error"]["code"].is_string(), "{answer}");
        assert!(body["error"]["message"].is_string(), "{answer}");
    }
}

/// A stand-in for an OpenAI-compatible model server on loopback: asks to call `send_note` with `note`,
/// then, once it has read the tool's answer, answers with it. Its base URL (for `--model-url`).
async fn note_taking_model(note: &'static str) -> String {
    common::model((10, 3), move |body| {
        let last = body["messages"].as_array().unwrap().last().unwrap();
        if last["role"] == "tool" {
            json!({"role": "assistant", "content": format!("done: {}", last["content"])})
        } else {
            let arguments = json!({ "note": note }).to_string();
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call-1",
                "type": "function", "function": {"name": "send_note", "arguments": arguments}}]})
        }
    })
    .await
}

/// The whole approval flow as a person runs it, with a fake model: `submit --wait` in a terminal shows
/// that the demo agent waits for approval of `send_note`; `jobctl waitpoints` lists it; a payload that
/// is not JSON is refused before anything is sent; `jobctl complete` approves it, the job resumes and
/// completes with the note, and a second completion is the API's 409 with a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_tool_approval_is_listed_and_completed_from_the_command_line() {
    let model = note_taking_model("hello from the test").await;
    let dev = Dev::start_with(&["--model-url", &model], &[]);
    let command = format!(
        r#"{} submit agent --input '{{"agent":"demo","message":"send me a note"}}' --wait --api-url {}"#,
        env!("CARGO_BIN_EXE_jobctl"),
        dev.url
    );
    let watching = tokio::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("`script` (util-linux) runs");
    // `jobctl waitpoints --json` until the job parks.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (id, name) = loop {
        let (status, out, err) = jobctl(&dev, &["waitpoints", "--json"]);
        assert!(status.success(), "{err}");
        let list: Value = serde_json::from_str(&out).unwrap();
        if let Some(w) = list.as_array().unwrap().first() {
            assert_eq!(w["kind"], "agent", "{w}");
            assert_eq!(
                w["waiting_for"]["detail"],
                json!({"tool": "send_note", "input": {"note": "hello from the test"}})
            );
            let name = w["waiting_for"]["name"].as_str().unwrap().to_owned();
            break (w["job_id"].as_str().unwrap().to_owned(), name);
        }
        assert!(Instant::now() < deadline, "no job ever waited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(name, "approve-tool-1-0");
    let (status, out, err) = jobctl(&dev, &["waitpoints"]);
    assert!(status.success(), "{err}");
    assert!(out.contains(&id) && out.contains("agent"), "{out}");
    assert!(
        out.contains("approve-tool-1-0 (send_note; expires in 23 h)"),
        "{out}"
    );
    assert!(out.contains(r#""note":"hello from the test""#), "{out}");
    let (status, out, _) = jobctl(&dev, &["waitpoints", "--job", &id]);
    assert!(
        status.success() && out.contains("approve-tool-1-0"),
        "{out}"
    );
    // One job's view (GET /jobs/{id}) carries the capability link; it is what `complete --url` takes.
    let link = format!("  link:     {}/waitpoints/", dev.url);
    assert!(out.lines().any(|l| l.starts_with(&link)), "{out}");

    let (status, _, err) = jobctl(&dev, &["complete", &id, &name, "--data", "{approve: true"]);
    assert!(
        !status.success() && err.contains("--data must be JSON"),
        "{err}"
    );
    let http = reqwest::Client::new();
    assert_eq!(
        crate::status(&http, &dev, &id).await,
        "waiting",
        "nothing was sent"
    );

    let (status, out, err) = jobctl(
        &dev,
        &["complete", &id, &name, "--data", r#"{"approve": true}"#],
    );
    assert!(status.success(), "{err}");
    assert!(out.contains("completed") && out.contains(&id), "{out}");

    let done = tokio::time::timeout(Duration::from_secs(30), watching.wait_with_output())
        .await
        .expect("submit --wait ends once the job completes")
        .unwrap();
    let screen = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{screen}");
    // While the job waited, every frame said what it waited for (the progress it reported before it
    // parked, which the stream repeats, must not hide it).
    let wait = "waiting for approve-tool-1-0 (send_note; expires in 23 h)";
    let frames: Vec<&str> = screen
        .split(['\r', '\n'])
        .filter(|f| f.contains(id.as_str()))
        .collect();
    let first = frames.iter().position(|f| f.contains(wait));
    let last = frames.iter().rposition(|f| f.contains(wait));
    let (Some(first), Some(last)) = (first, last) else {
        panic!("the terminal never showed what the job waited for: {screen:?}");
    };
    assert!(
        last > first + 1 && frames[first..=last].iter().all(|f| f.contains(wait)),
        "the wait stayed on the line while the job waited: {:?}",
        &frames[first..=last]
    );
    assert!(screen.contains("completed"), "{screen}");
    assert!(
        screen.contains(r#"{"noted":"hello from the test"}"#),
        "{screen}"
    );

    let (status, _, err) = jobctl(
        &dev,
        &["complete", &id, &name, "--data", r#"{"approve": false}"#],
    );
    assert!(!status.success(), "a second completion fails");
    assert!(
        err.contains("409") && err.contains("waitpoint_completed"),
        "{err}"
    );
    let (status, out, _) = jobctl(&dev, &["waitpoints", "--job", &id]);
    assert!(
        !status.success() && out.contains("waits for nothing"),
        "{out}"
    );
}

/// A stand-in for an OpenAI-compatible model on `listener` that answers every turn at once.
async fn answering_model(listener: tokio::net::TcpListener) {
    let app = common::model_app((1, 1), |_| json!({"role": "assistant", "content": "done"}));
    axum::serve(listener, app).await.unwrap();
}

async fn get_json(http: &reqwest::Client, url: String) -> (u16, Value) {
    let resp = http.get(url).send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

async fn post_json(http: &reqwest::Client, url: String, body: &str) -> (u16, Value) {
    let resp = http.post(url).body(body.to_owned()).send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The dead-letter queue as `GET /ops/dlq` shows it, once `check` holds (polled with a deadline).
async fn dlq_until(
    http: &reqwest::Client,
    dev: &Dev,
    what: &str,
    check: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (status, page) = get_json(http, format!("{}/ops/dlq", dev.url)).await;
        assert_eq!(status, 200, "{page}");
        let messages = page["messages"].as_array().unwrap().clone();
        if check(&messages) {
            return messages;
        }
        assert!(Instant::now() < deadline, "never {what}: {page}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The operator endpoints on `jobctl dev` started with `args`: jobs whose model is down die into the
/// DLQ (one attempt each) and show there; the queues show it; redriving one (the model now up) runs it
/// to completion; purging empties the DLQ; throughput counts them; bad input gets the API's errors.
async fn operators_redrive_and_purge_dead_jobs(args: &[&str]) {
    // The model's address, taken now and served only once the jobs have died.
    let model = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let model_url = format!("http://{}/v1", model.local_addr().unwrap());
    drop(model);
    let mut all_args = vec!["--model-url", &model_url];
    all_args.extend_from_slice(args);
    let dev = Dev::start_with(&all_args, &[("JOBKIT_MAX_ATTEMPTS", "1")]);
    let http = reqwest::Client::new();
    let (status, queues) = get_json(&http, format!("{}/ops/queues", dev.url)).await;
    assert_eq!(status, 200, "{queues}");
    let names: Vec<&str> = queues["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    for name in ["jobs", "dlq", "deliveries"] {
        assert!(names.contains(&name), "{queues}");
    }
    let agent = json!({"kind": "agent", "input": {"agent": "demo", "message": "hi"}});
    let a = submit(&http, &dev, agent.clone()).await;
    let b = submit(&http, &dev, agent).await;
    let dead = dlq_until(&http, &dev, "both jobs in the DLQ", |m| {
        [&a, &b]
            .iter()
            .all(|id| m.iter().any(|x| x["job_id"] == **id))
    })
    .await;
    let entry = dead.iter().find(|m| m["job_id"] == a).unwrap();
    assert_eq!(entry["kind"], "agent", "{entry}");
    assert_eq!(entry["user_id"], "local", "{entry}");
    assert_eq!(entry["attempts"], 1, "{entry}");
    assert_eq!(entry["error"]["code"], "model_unavailable", "{entry}");
    assert!(entry["dead_at"].is_string(), "{entry}");
    assert_eq!(view(&http, &dev, &a).await["status"], "dead_letter");
    // The queues show the two (SQS's counts are approximate: waiting or in flight).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, queues) = get_json(&http, format!("{}/ops/queues", dev.url)).await;
        let dlq = queues["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == "dlq")
            .unwrap()
            .clone();
        let held = dlq["depth"].as_u64().unwrap() + dlq["in_flight"].as_u64().unwrap();
        if held >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the DLQ's depth never showed: {queues}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Bad input, in the API's words.
    for (body, code) in [
        (r#"{"job_ids":["nope"]}"#, "invalid_job_id"),
        (r#"{"job_ids":"#, "malformed_json"),
        (r#"{"jobs":[]}"#, "invalid_request"),
    ] {
        let (status, answer) = post_json(&http, format!("{}/ops/dlq/redrive", dev.url), body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code)),
            "{answer}"
        );
    }
    let (status, answer) = get_json(&http, format!("{}/ops/dlq?limit=0", dev.url)).await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (400, Some("invalid_request"))
    );
    // With the model up, a redriven job completes; the other stays dead.
    let listener = tokio::net::TcpListener::bind(
        model_url
            .trim_start_matches("http://")
            .trim_end_matches("/v1"),
    )
    .await
    .unwrap();
    tokio::spawn(answering_model(listener));
    let body = json!({"job_ids": [a]}).to_string();
    let (status, answer) = post_json(&http, format!("{}/ops/dlq/redrive", dev.url), &body).await;
    assert_eq!((status, &answer), (200, &json!({"redriven": 1})));
    wait_for(&http, &dev, &a, "completed after the redrive", |v| {
        v["status"] == "completed"
    })
    .await;
    let left = dlq_until(&http, &dev, "only the other job left", |m| {
        m.iter().all(|x| x["job_id"] != a) && m.iter().any(|x| x["job_id"] == b)
    })
    .await;
    assert_eq!(left.len(), 1, "{left:?}");
    let (status, answer) = post_json(&http, format!("{}/ops/dlq/purge", dev.url), "{}").await;
    assert_eq!((status, &answer), (200, &json!({"purged": 1})));
    dlq_until(&http, &dev, "an empty DLQ", <[Value]>::is_empty).await;
    let (status, answer) = get_json(&http, format!("{}/ops/throughput?minutes=5", dev.url)).await;
    if !args.is_empty() {
        // On an emulator nothing records throughput (see `jobctl dev`'s backend): it says so.
        assert_eq!(status, 503, "{answer}");
        assert_eq!(answer["error"]["code"], "operator_unavailable", "{answer}");
        return;
    }
    assert_eq!(status, 200, "{answer}");
    let minutes = answer["minutes"].as_array().unwrap();
    assert_eq!(minutes.len(), 5, "{answer}");
    assert!(minutes.iter().all(|m| m["at"].is_string()), "{answer}");
    // The embedded store's records: one completed, one dead.
    let sum = |k: &str| minutes.iter().map(|m| m[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("completed"), sum("failed")), (1, 1), "{answer}");
}

#[tokio::test]
async fn operators_redrive_and_purge_dead_jobs_on_the_embedded_backend() {
    operators_redrive_and_purge_dead_jobs(&[]).await;
}

#[tokio::test]
async fn operators_redrive_and_purge_dead_jobs_on_the_emulators_sqs_and_dynamodb() {
    let endpoint = std::env::var("JOBKIT_TEST_ENDPOINT")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned());
    let prefix = format!("jobctl-ops-{:08x}", rand_suffix());
    operators_redrive_and_purge_dead_jobs(&[
        "--endpoint-url",
        &endpoint,
        "--bootstrap",
        "--prefix",
        &prefix,
    ])
    .await;
}

/// A suffix that keeps this run's resources apart from other runs' on the shared emulator.
fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id()
}

#[tokio::test]
async fn operator_endpoints_answer_other_methods_with_405() {
    let dev = Dev::start(&[]);
    let http = reqwest::Client::new();
    let resp = http
        .delete(format!("{}/ops/queues", dev.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
}

/// A stand-in model that answers every message `echo: <the last user message>`. Its base URL.
async fn echo_model() -> String {
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(|axum::Json(body): axum::Json<Value>| async move {
            let asked = body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .find(|m| m["role"] == "user")
                .and_then(|m| m["content"].as_str())
                .unwrap_or("")
                .to_owned();
            let message = json!({"role": "assistant", "content": format!("echo: {asked}")});
            let usage = json!({"prompt_tokens": 10, "completion_tokens": 3});
            axum::Json(json!({"choices": [{"message": message}], "usage": usage}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// A conversation from the command line: `threads create` prints the id, `submit agent --thread`
/// sends two messages (the second run sees the first), `threads show` lists the four messages; an
/// unknown thread is the API's 404 with a non-zero exit, and `--thread` on another kind is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_runs_from_the_command_line() {
    let model = echo_model().await;
    let dev = Dev::start_with(&["--model-url", &model], &[]);
    let (status, out, err) = jobctl(&dev, &["threads", "create", "--policy", "reject"]);
    assert!(status.success(), "{err}");
    let thread = out.trim().to_owned();
    assert_eq!(thread.len(), 26, "only the id when not a terminal: {out}");
    for message in ["hello", "again"] {
        let input = json!({"agent": "demo", "message": message}).to_string();
        let (status, out, err) = jobctl(
            &dev,
            &[
                "submit", "agent", "--input", &input, "--thread", &thread, "--wait",
            ],
        );
        assert!(status.success(), "{out}{err}");
    }
    let (status, out, err) = jobctl(&dev, &["threads", "show", &thread]);
    assert!(status.success(), "{err}");
    for line in [
        "reject runs: 2",
        "1.0 user: hello",
        "1.1 assistant: echo: hello",
        "2.1 assistant: echo: again",
    ] {
        assert!(out.contains(line), "{line:?} in {out}");
    }
    let (_, out, _) = jobctl(
        &dev,
        &["threads", "show", &thread, "--json", "--limit", "3"],
    );
    let page: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 3);
    assert!(page["next_cursor"].is_string(), "{page}");
    let (status, _, err) = jobctl(&dev, &["threads", "show", "01KAQZ7X4N3M2P1R0S9T8V7W6Y"]);
    assert!(
        !status.success() && err.contains("thread_not_found"),
        "{err}"
    );
    let (status, _, err) = jobctl(&dev, &["submit", "echo", "--thread", &thread]);
    assert!(
        !status.success() && err.contains("--thread is for agent jobs"),
        "{err}"
    );
}
