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
    for command in ["submit", "status", "watch", "list", "cancel"] {
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
