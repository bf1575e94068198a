//! The console (issue 24) in a real browser: headless Chromium driven by cli/tests/browser/console.py
//! against `jobctl dev`, with the harness of the CORS test ([`super::Dev`], [`super::browser_python`]).

use std::time::Duration;

use serde_json::Value;

use super::{Dev, browser_python};

/// Runs one scenario of console.py against `dev`; what the page showed. Fails with the script's
/// error and everything seen so far when a step did not happen.
async fn scenario(dev: &Dev, name: &str) -> Value {
    let python = browser_python().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/console.py");
    let run = tokio::process::Command::new(&python)
        .args([script, name, &dev.url])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("the browser run ends within three minutes")
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saw: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(saw.get("failed").is_none(), "{saw:#}");
    assert_eq!(saw["errors"], serde_json::json!([]), "uncaught errors: {saw:#}");
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
    let saw = scenario(&dev, "submit").await;
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
    assert!(saw["result"].as_str().unwrap().contains("console"), "{saw:#}");
    assert_eq!(saw["first_row"], saw["other"], "newest first: {saw:#}");
    assert_eq!(saw["rows"], 2, "{saw:#}");
    assert!(saw["sleep_input"].as_str().unwrap().contains("10"), "{saw:#}");
    assert!(
        saw["submit_error"]
            .as_str()
            .unwrap()
            .starts_with("invalid_input: "),
        "{saw:#}"
    );
    assert_quiet(&saw, &[422]);
}

#[tokio::test]
async fn a_running_jobs_progress_moves_live_and_the_keyboard_cancels_it() {
    let dev = Dev::start(&[]);
    let saw = scenario(&dev, "cancel").await;
    assert_eq!(saw["focused_row"], saw["job_id"], "j focuses the row: {saw:#}");
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
    let saw = scenario(&dev, "markup").await;
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
