//! Time-dependent behaviour on tokio's paused clock: the embedded backend on a [`TokioClock`], so lease
//! expiries take virtual time, not wall-clock waits.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use jobkit::api::ApiSettings;
use jobkit::clock::TokioClock;
use jobkit::worker::{Outcome, WorkerSettings};
use jobkit::{HandlerRegistry, JobId, JobStatus};
use serde_json::Value;
use support::*;

/// `stall`: hangs forever on its first run (a worker that will be killed), succeeds after.
fn stalling(runs: Arc<AtomicU32>) -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register_fn("stall", move |_: Value, _| {
        let runs = runs.clone();
        async move {
            if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                std::future::pending::<()>().await;
            }
            Ok("done")
        }
    })
    .unwrap();
    r
}

#[tokio::test(start_paused = true)]
async fn a_killed_workers_job_is_run_again_once_its_lease_and_visibility_end() {
    let s = memory_on(Arc::new(TokioClock::new()));
    let runs = Arc::new(AtomicU32::new(0));
    let api = s.api_with_settings(stalling(runs.clone()), ApiSettings::from_config(&s.config));
    let (status, body) = json(
        &api.handle(post_jobs("u", r#"{"kind":"stall","input":1}"#))
            .await,
    );
    assert_eq!(status, 202, "{body}");
    let id = JobId::parse(body["job_id"].as_str().unwrap()).unwrap();
    let settings = WorkerSettings {
        lease: Duration::from_secs(60),
        ..fast_settings(5)
    };
    let doomed = Arc::new(s.event_source(stalling(runs.clone()), settings.clone()));
    let task = tokio::spawn({
        let doomed = doomed.clone();
        async move { doomed.poll_once().await }
    });
    // Killed after its first heartbeat (which shortened its message's visibility).
    let claimed = loop {
        let job = s.store.get(&id).await.unwrap().unwrap();
        if runs.load(Ordering::SeqCst) == 1 && job.status == JobStatus::Running {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    while s.store.get(&id).await.unwrap().unwrap().lease_expires_at <= claimed.lease_expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let killed_at = tokio::time::Instant::now();
    task.abort(); // no more heartbeats, no outcome, no delete

    let rescuer = s.event_source(stalling(runs.clone()), settings);
    let outcome = loop {
        let (got, result) = rescuer.poll_once().await.unwrap();
        if !got.is_empty() {
            break result.outcomes;
        }
    };
    let waited = killed_at.elapsed();
    assert_eq!(outcome, [Outcome::Completed]);
    let job = s.store.get(&id).await.unwrap().unwrap();
    assert_eq!((job.status, job.attempts), (JobStatus::Completed, 2));
    // The message was hidden for one and a half leases past the last heartbeat: not sooner, not 15 min.
    assert!(
        waited >= Duration::from_secs(60) && waited <= Duration::from_secs(91),
        "picked up again after {waited:?} of virtual time"
    );
}
