//! Durable steps (`ctx.step`) on both backends: a step whose result was recorded never runs again, a
//! replay returns the recorded value, and an oversized result fails the job naming the step.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobkit::worker::WorkerSettings;
use jobkit::{HandlerRegistry, JobError, JobStatus};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Effects performed, by step name; the values the first run's steps returned.
#[derive(Default)]
struct Effects {
    performed: Mutex<HashMap<String, u32>>,
    first_values: Mutex<HashMap<String, u64>>,
}

/// `three`: steps a, b, c, each with a side effect and a random result. Its first attempt hangs after
/// the step named in its input (`{"hang_after": "a"}`), as a worker killed between two steps.
fn registry(effects: Arc<Effects>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("three", move |input: Value, ctx| {
        let effects = effects.clone();
        async move {
            let mut results = Vec::new();
            for name in ["a", "b", "c"] {
                let fx = effects.clone();
                let value: u64 = ctx
                    .step(name, async move {
                        *fx.performed.lock().unwrap().entry(name.into()).or_default() += 1;
                        let v = rand::random::<u64>();
                        fx.first_values.lock().unwrap().insert(name.into(), v);
                        Ok(v)
                    })
                    .await?;
                results.push(value);
                if ctx.attempt() == 1 && input["hang_after"] == name {
                    std::future::pending::<()>().await;
                }
            }
            Ok(json!({"values": results, "key_of_b": ctx.step_key("b")}))
        }
    })
    .unwrap();
    r.register_fn("big", |_: Value, ctx| async move {
        ctx.step("huge", async { Ok("x".repeat(70 * 1024)) })
            .await?;
        Ok::<_, JobError>(json!("unreachable"))
    })
    .unwrap();
    r
}

async fn a_job_killed_between_steps_performs_each_recorded_effect_once(b: Backends) {
    for hang_after in ["a", "b"] {
        let effects = Arc::new(Effects::default());
        let api = b.api_with_settings(
            registry(effects.clone()),
            jobkit::api::ApiSettings::from_config(&b.config),
        );
        let body = json!({"kind": "three", "input": {"hang_after": hang_after}}).to_string();
        let (status, accepted) = json(&api.handle(post_jobs("sam", &body)).await);
        assert_eq!(status, 202);
        let id = accepted["job_id"].as_str().unwrap().to_owned();
        // Short leases and visibility: the killed attempt's job is claimed again within seconds.
        let settings = WorkerSettings {
            lease: Duration::from_secs(1),
            ..fast_settings(5)
        };
        let worker = b
            .event_source(registry(effects.clone()), settings)
            .with_visibility(Duration::from_secs(2))
            .with_wait(Duration::from_millis(200));
        // The first attempt runs up to the hang, then its worker is killed.
        let killed = tokio::time::timeout(Duration::from_secs(3), worker.poll_once()).await;
        assert!(
            killed.is_err(),
            "the first attempt hangs after step {hang_after}"
        );
        let view = eventually("the retried job to complete", WAIT, async || {
            let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
            let (_, v) = json(&api.handle(get_job("sam", &id)).await);
            (v["status"] == "completed").then_some(v)
        })
        .await;
        assert_eq!(view["attempts"], 2, "{view}");
        let performed = effects.performed.lock().unwrap().clone();
        assert_eq!(
            performed,
            HashMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]),
            "each step's effect once (killed after {hang_after})"
        );
        // The replayed steps returned what their one run recorded.
        let first = effects.first_values.lock().unwrap().clone();
        let values: Vec<u64> = serde_json::from_value(view["result"]["values"].clone()).unwrap();
        assert_eq!(values, vec![first["a"], first["b"], first["c"]]);
        assert_eq!(view["result"]["key_of_b"], format!("{id}:b"));
    }
}

async fn a_step_over_the_limit_fails_the_job_naming_the_step(b: Backends) {
    let api = b.api_with_settings(
        registry(Arc::default()),
        jobkit::api::ApiSettings::from_config(&b.config),
    );
    let (_, accepted) = json(
        &api.handle(post_jobs("sam", r#"{"kind":"big","input":null}"#))
            .await,
    );
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let worker = b.event_source(registry(Arc::default()), fast_settings(5));
    let view = eventually("the job to fail", WAIT, async || {
        worker.poll_once().await.unwrap();
        let (_, v) = json(&api.handle(get_job("sam", &id)).await);
        (v["status"] == JobStatus::Failed.as_str()).then_some(v)
    })
    .await;
    assert_eq!(view["error"]["code"], "step_too_large", "{view}");
    assert!(
        view["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"huge\"")
    );
    assert_eq!(view["attempts"], 1, "terminal: not retried");
}

async fn the_first_recorded_result_of_a_step_stands(b: Backends) {
    let id = jobkit::JobId::generate(jobkit::now_millis());
    assert_eq!(b.store.step(&id, "s").await.unwrap(), None);
    let first = jobkit::Json::from(json!({"n": 1}));
    let second = jobkit::Json::from(json!({"n": 2}));
    assert_eq!(
        b.store.record_step(&id, "s", &first, 0).await.unwrap(),
        first
    );
    // A second record (a zombie attempt, or a retry whose first answer was lost) gets the first value.
    assert_eq!(
        b.store.record_step(&id, "s", &second, 0).await.unwrap(),
        first
    );
    assert_eq!(b.store.step(&id, "s").await.unwrap(), Some(first));
    assert_eq!(b.store.step(&id, "other").await.unwrap(), None);
}

on_both_backends!(
    a_job_killed_between_steps_performs_each_recorded_effect_once,
    a_step_over_the_limit_fails_the_job_naming_the_step,
    the_first_recorded_result_of_a_step_stands,
);
