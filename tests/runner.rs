//! `jobctl worker` against the emulator: the real binary on a fresh copy of the stack, jobs submitted
//! through the API. It runs jobs like the worker function; on SIGTERM it stops receiving, lets running
//! jobs finish for --drain-timeout, then releases the rest, which another worker finishes at once.

mod support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobkit::{HandlerRegistry, JobId, JobStatus};
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// The jobctl binary, fresh: the workspace's dev build with every target, as `cargo test --workspace`
/// builds it (from the tests, only a link; run alone, this suite builds it here).
fn jobctl() -> PathBuf {
    let built = Command::new(env!("CARGO"))
        .args(["build", "--workspace", "--all-targets"])
        .current_dir(repo_root())
        .status()
        .unwrap();
    assert!(built.success());
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("debug/jobctl")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(env: &TestEnv, healthz: u16, drain_secs: u64) -> Worker {
    Worker(
        Command::new(jobctl())
            .args(["worker", "--concurrency", "2"])
            .args(["--drain-timeout", &drain_secs.to_string()])
            // Short long polls: a stopping worker waits for its open ones before it releases.
            .args(["--poll-wait", "1"])
            .args(["--healthz", &format!("127.0.0.1:{healthz}")])
            .env("JOBKIT_TABLE", &env.config.table)
            .env("JOBKIT_QUEUE_URL", &env.config.queue_url)
            .env("AWS_ENDPOINT_URL", endpoint())
            .env(
                "RUST_LOG",
                std::env::var("JOBKIT_WORKER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_worker_drains_then_releases_and_another_finishes_the_job() {
    let env = TestEnv::start().await;
    let api = env.api(HandlerRegistry::with_builtins());
    let status = async |id: &str| {
        env.store
            .get(&JobId::parse(id).unwrap())
            .await
            .unwrap()
            .unwrap()
    };
    let submit = async |body: serde_json::Value| {
        let (code, v) = json(&api.handle(post_jobs("wes", &body.to_string())).await);
        assert_eq!(code, 202, "{v}");
        v["job_id"].as_str().unwrap().to_owned()
    };
    let health = free_port();
    let mut a = start_worker(&env, health, 1);
    let http = reqwest::Client::new();
    eventually("worker A healthy", WAIT, async || {
        let r = http
            .get(format!("http://127.0.0.1:{health}/healthz"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // It runs jobs like the worker function.
    let quick = submit(json!({"kind": "echo", "input": {"n": 1}})).await;
    eventually("the quick job", WAIT, async || {
        (status(&quick).await.status == JobStatus::Completed).then_some(())
    })
    .await;

    // A long job is running in A when A is told to stop: longer than the drain timeout and the idle
    // pollers' long polls (1 s here), which A waits for before it releases (an open poll would receive
    // the released message and count the receive).
    let long = submit(json!({"kind": "sleep", "input": {"ms": 10_000}})).await;
    eventually("the long job running", WAIT, async || {
        (status(&long).await.status == JobStatus::Running).then_some(())
    })
    .await;
    let sent = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &a.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let exited = tokio::task::spawn_blocking(move || {
        let code = a.0.wait().unwrap();
        (code, Instant::now())
    })
    .await
    .unwrap();
    assert!(exited.0.success(), "a clean exit: {:?}", exited.0);
    let released = status(&long).await;
    assert_eq!(
        released.status,
        JobStatus::Queued,
        "given back, not left to its lease"
    );
    assert_eq!(released.attempts, 0, "the released attempt is not counted");

    // Another worker takes it at once (its message is visible again) and finishes it.
    let _b = start_worker(&env, free_port(), 30);
    let done = eventually("worker B to finish the job", WAIT, async || {
        let j = status(&long).await;
        (j.status == JobStatus::Completed).then_some((j, Instant::now()))
    })
    .await;
    println!(
        "SIGTERM drain timeline: SIGTERM at 0 ms; worker A released the job after its 1 s drain timeout \
         and exited at {} ms (its idle long poll returned); job completed by worker B at {} ms (a 30 s \
         job, restarted)",
        (exited.1 - sent).as_millis(),
        (done.1 - sent).as_millis()
    );
    // The drain timeout, then the idle poller's long poll (20 s at most) returning.
    assert!(exited.1 - sent < Duration::from_secs(30));
    assert_eq!(done.0.attempts, 1);
}
