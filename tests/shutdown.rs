//! Stopping a worker that is running jobs (`jobctl dev`'s Ctrl-C, `jobctl worker`'s SIGTERM): its
//! running jobs are given back, and nothing else in the process receives them again on the way out, so
//! their messages keep their receive counts, never reach the DLQ, and a restarted worker finishes them.
//! On both backends.

#[macro_use]
mod support;

use std::sync::Arc;
use std::time::Duration;

use jobkit::api::ApiSettings;
use jobkit::{HandlerRegistry, JobId, JobStatus};
use serde_json::json;
use support::*;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(60);

/// The built-ins plus `hold`: a job that runs until `gate` opens.
fn holding_registry(gate: watch::Receiver<bool>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("hold", move |input: jobkit::Json, _ctx| {
        let mut gate = gate.clone();
        async move {
            let _ = gate.wait_for(|open| *open).await;
            Ok(input)
        }
    })
    .unwrap();
    r
}

async fn statuses(s: &Backends, ids: &[JobId]) -> Vec<(JobStatus, u32)> {
    let mut out = Vec::new();
    for id in ids {
        let job = s.store.get(id).await.unwrap().expect("the job exists");
        out.push((job.status, job.attempts));
    }
    out
}

async fn stopping_with_ten_jobs_running_leaves_the_dlq_empty_and_a_restart_finishes_them(
    s: Backends,
) {
    let (gate_tx, gate) = watch::channel(false);
    let registry = holding_registry(gate);
    let api = s.api_with_settings(registry.clone(), ApiSettings::from_config(&s.config));
    let mut ids = Vec::new();
    for n in 0..10 {
        let body = json!({"kind": "hold", "input": {"n": n}}).to_string();
        let (code, v) = json(&api.handle(post_jobs("alice", &body)).await);
        assert_eq!(code, 202, "{v}");
        ids.push(JobId::parse(v["job_id"].as_str().unwrap()).unwrap());
    }

    // As `jobctl dev` and `jobctl worker` run the worker: ten pollers taking batches of ten. Long polls
    // of 5 s (`dev` waits 1 s, `worker` 20 s): the idle pollers' polls are surely open when the stop
    // comes.
    let (release_tx, release_rx) = watch::channel(false);
    let worker = s
        .backend
        .worker(registry.clone(), fast_settings(s.max_receives))
        .with_stop(release_rx);
    let pollers = Arc::new(
        jobkit::local::EventSource::new(s.queue.clone(), Arc::new(worker), s.clock.clone(), 10)
            .with_wait(Duration::from_secs(5)),
    )
    .start(10);
    eventually("ten jobs running", WAIT, async || {
        let now = statuses(&s, &ids).await;
        now.iter()
            .all(|(status, _)| *status == JobStatus::Running)
            .then_some(())
    })
    .await;
    // Stopped in order: no new receive, no receive open, then the running jobs released.
    pollers.stop_receiving();
    tokio::time::timeout(WAIT, pollers.receives_closed())
        .await
        .expect("the open receives return");
    let _ = release_tx.send(true);
    tokio::time::timeout(WAIT, pollers.finished())
        .await
        .expect("the pollers end once their jobs are released");

    // Given back: queued, the attempt not counted, and not a message in the DLQ.
    assert_eq!(
        statuses(&s, &ids).await,
        vec![(JobStatus::Queued, 0); 10],
        "every running job released"
    );
    assert_dlq_empty(&s).await;

    // A restarted worker finishes every job, each on its first counted attempt.
    let _ = gate_tx.send(true);
    let restarted = s.event_source(registry, fast_settings(s.max_receives));
    eventually("every job completed after the restart", WAIT, async || {
        restarted.poll_once().await.unwrap();
        let now = statuses(&s, &ids).await;
        (now == vec![(JobStatus::Completed, 1); 10]).then_some(())
    })
    .await;
    // SQS moves a message that passed maxReceiveCount on its next receive: the restart's receives
    // would have moved any message the stop had received too often.
    assert_dlq_empty(&s).await;
}

async fn assert_dlq_empty(s: &Backends) {
    let dead = s
        .dlq
        .receive(10, Duration::ZERO, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    assert!(dead.is_empty(), "{} messages in the DLQ", dead.len());
}

on_both_backends!(stopping_with_ten_jobs_running_leaves_the_dlq_empty_and_a_restart_finishes_them);
