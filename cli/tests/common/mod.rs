//! Helpers the cli test binaries share: the Python of an `infra/*.sh` venv and a script run on it,
//! and a stand-in for an OpenAI-compatible model server.

use std::time::Duration;

use serde_json::{Value, json};

/// The python of the venv `infra/{script}` makes (installing what it needs if missing). No venv is a
/// failure that says what is missing (`what`), never a skipped test.
pub async fn venv_python(script: &str, what: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = tokio::process::Command::new("bash")
        .arg(format!("{root}/infra/{script}"))
        .arg("python")
        .output()
        .await
        .unwrap_or_else(|e| panic!("bash runs infra/{script}: {e}"));
    assert!(
        out.status.success(),
        "no {what} for this test: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout.lines().last().expect("a python path").to_owned()
}

/// Runs `python args…` (a test script that prints one JSON document) within `limit`: what it printed.
/// Fails with the script's stderr when it fails.
pub async fn run_json(python: &str, args: &[&str], limit: Duration) -> Value {
    let run = tokio::process::Command::new(python)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{args:?} ends within {limit:?}"))
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A stand-in for an OpenAI-compatible model server (`POST /v1/chat/completions`): `reply` makes the
/// assistant's message from the request's body; each turn reports `usage` as (prompt, completion)
/// tokens, and finishes with `tool_calls` when the message has some, else `stop`.
pub fn model_app<F>(usage: (u32, u32), reply: F) -> axum::Router
where
    F: Fn(&Value) -> Value + Clone + Send + Sync + 'static,
{
    axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| async move {
            let message = reply(&body);
            let finish = if message.get("tool_calls").is_some() {
                "tool_calls"
            } else {
                "stop"
            };
            axum::Json(json!({
                "choices": [{"message": message, "finish_reason": finish}],
                "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1},
            }))
        }),
    )
}

/// [`model_app`] served on a loopback port of its own: its base URL (for `--model-url`).
pub async fn model<F>(usage: (u32, u32), reply: F) -> String
where
    F: Fn(&Value) -> Value + Clone + Send + Sync + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, model_app(usage, reply)).await });
    url
}
