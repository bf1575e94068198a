//! The command line itself: what `--help` lists, usage errors, and what a first run without a server
//! says.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn jobctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args(args)
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("JOBKIT_API_URL")
        .output()
        .unwrap()
}

fn help(command: &str) -> String {
    let out = jobctl(&[command, "--help"]);
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn only_the_commands_that_call_the_api_list_its_flags() {
    for command in ["dev", "run", "worker", "bootstrap"] {
        let text = help(command);
        for flag in ["--api-url", "--token", "--user "] {
            assert!(
                !text.contains(flag),
                "`{command} --help` lists {flag}:\n{text}"
            );
        }
    }
    for command in [
        "submit",
        "status",
        "watch",
        "list",
        "cancel",
        "waitpoints",
        "complete",
        "usage",
    ] {
        assert!(help(command).contains("--api-url"), "{command}");
    }
}

#[test]
fn bootstrap_and_dev_bootstrap_use_the_same_prefix() {
    let default = |text: &str| {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with("--prefix"))
            .unwrap_or_else(|| panic!("no --prefix:\n{text}"));
        let default = line.split("[default: ").nth(1);
        default
            .unwrap_or_else(|| panic!("no default: {line}"))
            .to_owned()
    };
    assert_eq!(default(&help("bootstrap")), default(&help("dev")));
}

#[test]
fn dev_bootstrap_without_an_endpoint_is_an_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args(["dev", "--bootstrap", "--addr", "127.0.0.1:0"])
        .env_remove("AWS_ENDPOINT_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`jobctl dev --bootstrap` started without an endpoint");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("--endpoint-url"), "{err}");
}

#[test]
fn a_refused_connection_says_to_start_jobctl_dev() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = jobctl(&["submit", "echo", "--api-url", &url]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("`jobctl dev`"), "{err}");
}

#[test]
fn bootstrap_prints_the_endpoint_with_the_resources() {
    let endpoint =
        std::env::var("JOBKIT_TEST_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let prefix = format!("jobctl-bootstrap-{}", std::process::id());
    let out = jobctl(&[
        "bootstrap",
        "--endpoint-url",
        &endpoint,
        "--prefix",
        &prefix,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines().next() == Some(&format!("export AWS_ENDPOINT_URL={endpoint}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("export JOBKIT_TABLE={prefix}")),
        "{text}"
    );
}

#[test]
fn complete_takes_an_id_and_a_name_or_a_url_and_json_data() {
    for args in [
        &["complete", "--data", "{}"][..],
        &["complete", "01M839YN063K0RCGEMTG51KP2Z", "--data", "{}"],
        &[
            "complete",
            "--url",
            "http://127.0.0.1:9/w/t",
            "01M839YN063K0RCGEMTG51KP2Z",
            "x",
        ],
        &["complete", "01M839YN063K0RCGEMTG51KP2Z", "approve"],
    ] {
        let out = jobctl(args);
        assert_eq!(out.status.code(), Some(2), "{args:?} is a usage error");
    }
    // Not JSON: refused before anything is sent (nothing listens at port 9).
    let out = jobctl(&[
        "complete",
        "--url",
        "http://127.0.0.1:9/w/t",
        "--data",
        "yes",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--data must be JSON"), "{err}");
}

/// What a capability URL received, and what it answers: a completion, then a refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_url_posts_the_data_without_credentials_and_shows_a_refusal() {
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(http::HeaderMap, String)>>>;
    let seen: Seen = Default::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/waitpoints/{token}",
        axum::routing::post(move |headers: http::HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let mut seen = log.lock().unwrap();
                seen.push((headers, body));
                if seen.len() == 1 {
                    let job = serde_json::json!({"job_id": "01M839YN063K0RCGEMTG51KP2Z",
                        "status": "queued"});
                    (http::StatusCode::ACCEPTED, axum::Json(job))
                } else {
                    let error = serde_json::json!({"error": {"code": "waitpoint_completed",
                        "message": "the waitpoint was completed already"}});
                    (http::StatusCode::CONFLICT, axum::Json(error))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/waitpoints/tok123",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let run = |url: String| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_jobctl"))
                .args(["complete", "--url", &url, "--data", r#"{"approve": true}"#])
                .args(["--token", "secret-token", "--user", "ada"])
                .output()
                .unwrap()
        })
    };
    let out = run(url.clone()).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("01M839YN063K0RCGEMTG51KP2Z") && text.contains("queued"),
        "{text}"
    );
    {
        let seen = seen.lock().unwrap();
        let (headers, body) = &seen[0];
        assert_eq!(body, r#"{"approve":true}"#);
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            headers.get("authorization").is_none() && headers.get("x-user-id").is_none(),
            "the URL is the authorization: {headers:?}"
        );
    }
    let out = run(url).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("409") && err.contains("waitpoint_completed"),
        "{err}"
    );
}
