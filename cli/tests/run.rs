//! `jobctl run`: one job in-process, one JSON document out, the exit status says how it went.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn run(args: &[&str], stdin: Option<&str>) -> (i32, Value, String) {
    run_with(args, stdin, &[])
}

fn run_with(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> (i32, Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .arg("run")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap(),
        doc,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_completed_job_prints_its_result_and_exits_zero() {
    let (code, doc, _) = run(&["echo", "--input", r#"{"a":[1,2]}"#], None);
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["success"], true);
    assert_eq!(doc["kind"], "echo");
    assert_eq!(doc["result"], json!({"a": [1, 2]}));
    assert_eq!(doc["error"], Value::Null);
    assert!(doc["job_id"].as_str().is_some_and(|id| id.len() == 26));
    assert_eq!(doc["pathway"], Value::Null);
}

#[test]
fn failed_jobs_print_their_error_and_exit_one() {
    // The shipped kinds have no failure modes (issue 21): these jobs fail for real, on the `agent` kind
    // with a model nothing listens on.
    let model = [("JOBKIT_MODEL_URL", "http://127.0.0.1:9/v1")];
    let (code, doc, _) = run_with(
        &["agent", "--input", r#"{"agent":"nope","message":"hi"}"#],
        None,
        &model,
    );
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["success"], false);
    assert_eq!(doc["error"]["code"], "unknown_agent", "{doc}");
    assert_eq!(doc["error"]["retryable"], false);
    // A retryable failure on its last attempt.
    let (code, doc, _) = run_with(
        &[
            "agent",
            "--input",
            r#"{"agent":"demo","message":"hi"}"#,
            "--max-attempts",
            "1",
        ],
        None,
        &model,
    );
    assert_eq!(code, 1, "{doc}");
    assert_eq!(doc["error"]["code"], "model_unavailable", "{doc}");
}

#[test]
fn an_input_the_kind_cannot_take_is_refused_before_it_runs() {
    let (code, _, stderr) = run(&["sleep", "--input", r#"{"fail":"panic"}"#], None);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("invalid_input") && stderr.contains("unknown field `fail`"),
        "{stderr}"
    );
}

#[test]
fn a_task_spec_comes_from_a_file_or_stdin_and_its_ids_go_back() {
    let spec = r#"{"kind":"echo","input":"hi","task_uuid":"t-1","stage_uuid":"s-1"}"#;
    let (code, doc, _) = run(&["--spec", "-"], Some(spec));
    assert_eq!(code, 0, "{doc}");
    assert_eq!(doc["result"], "hi");
    assert_eq!(doc["task_uuid"], "t-1");
    assert_eq!(doc["stage_uuid"], "s-1");
    let (code, _, _) = run(&["echo", "--input-file", "-"], Some("[1, 2, 3]"));
    assert_eq!(code, 0);
}

#[test]
fn bad_usage_is_a_clear_error_and_exit_two() {
    for (args, stdin, says) in [
        (vec!["nope"], None, "unknown_kind"),
        (vec!["echo", "--input", "{not json"], None, "must be JSON"),
        (
            vec!["--spec", "-"],
            Some(r#"{"kind":"echo"}"#),
            "--spec must be",
        ),
        (
            vec!["--spec", "-"],
            Some(r#"{"kind":"echo","input":1,"extra":2}"#),
            "--spec must be",
        ),
        (vec![], None, "give a KIND"),
    ] {
        let (code, doc, err) = run(&args, stdin);
        assert_eq!(code, 2, "{args:?}: {doc}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn without_input_a_job_gets_an_empty_object_as_submit_sends() {
    let (code, doc, err) = run(&["echo"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(doc["result"], json!({}));
}

#[test]
fn big_numbers_go_in_and_come_out_to_the_digit() {
    let big = "12345678901234567890123";
    let out = Command::new(env!("CARGO_BIN_EXE_jobctl"))
        .args(["run", "echo", "--input", &format!(r#"{{"n":{big}}}"#)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(r#""result":{{"n":{big}}}"#)),
        "{text}"
    );
}
