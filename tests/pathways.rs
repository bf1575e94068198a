//! Stage pathways on both backends: a completion that starts its next stage creates the follow-up jobs
//! in the same write, linked both ways, owned and counted like the parent; lost sends are covered by the
//! sweep; fan-out children run once each; a retried completion creates nothing twice.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobkit::api::ApiSettings;
use jobkit::{HandlerRegistry, JobError, JobId};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// fetch -> analyse -> report; `split` fans out to three `part`s; `astray` names an unknown stage.
fn registry(runs: Arc<Mutex<HashMap<String, u32>>>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    let count = move |ctx: &jobkit::JobContext| {
        *runs
            .lock()
            .unwrap()
            .entry(ctx.job_id().to_string())
            .or_default() += 1;
    };
    let c = count.clone();
    r.register_fn("fetch", move |input: Value, ctx| {
        c(&ctx);
        async move {
            ctx.then(
                "analyse",
                &json!({"text": format!("page of {}", input["url"])}),
            )?;
            Ok::<_, JobError>(json!({"fetched": input["url"]}))
        }
    })
    .unwrap();
    let c = count.clone();
    r.register_fn("analyse", move |input: Value, ctx| {
        c(&ctx);
        async move {
            let words = input["text"].as_str().unwrap_or("").split(' ').count();
            ctx.then("report", &json!({"words": words}))?;
            Ok::<_, JobError>(json!({"words": words}))
        }
    })
    .unwrap();
    let c = count.clone();
    r.register_fn("report", move |input: Value, ctx| {
        c(&ctx);
        async move { Ok::<_, JobError>(json!({"report": format!("{} words", input["words"])})) }
    })
    .unwrap();
    let c = count.clone();
    r.register_fn("split", move |_: Value, ctx| {
        c(&ctx);
        async move {
            for part in 0..3 {
                ctx.then("part", &json!({"part": part}))?;
            }
            Ok::<_, JobError>(json!("split"))
        }
    })
    .unwrap();
    let c = count.clone();
    r.register_fn("part", move |input: Value, ctx| {
        c(&ctx);
        async move { Ok::<_, JobError>(input) }
    })
    .unwrap();
    r.register_fn("astray", |_: Value, ctx| async move {
        ctx.then("nowhere", &json!(1))?;
        Ok::<_, JobError>(json!(1))
    })
    .unwrap();
    r
}

struct Stage {
    b: Backends,
    api: Api,
    runs: Arc<Mutex<HashMap<String, u32>>>,
}

impl Stage {
    fn new(b: Backends) -> Self {
        let runs = Arc::default();
        let api = b.api_with_settings(
            registry(Arc::clone(&runs)),
            ApiSettings {
                max_in_flight_per_user: Some(20),
                ..ApiSettings::from_config(&b.config)
            },
        );
        Self { b, api, runs }
    }

    async fn submit(&self, kind: &str, input: Value) -> String {
        let body = json!({"kind": kind, "input": input}).to_string();
        let (status, v) = json(&self.api.handle(post_jobs("pat", &body)).await);
        assert_eq!(status, 202, "{v}");
        v["job_id"].as_str().unwrap().to_owned()
    }

    async fn view(&self, id: &str) -> Value {
        json(&self.api.handle(get_job("pat", id)).await).1
    }

    /// Runs the worker until every job in `ids` (and what they start) is terminal.
    async fn settle(
        &self,
        worker: &jobkit::local::EventSource,
        id: &str,
        depth: usize,
    ) -> Vec<Value> {
        eventually("the pipeline to finish", WAIT, async || {
            worker.poll_once().await.unwrap();
            let mut chain = vec![self.view(id).await];
            while chain.len() <= depth {
                let last = chain.last().unwrap();
                if last["success"] != true {
                    return None;
                }
                let Some(next) = last["next"].as_array().and_then(|n| n.first()) else {
                    break;
                };
                chain.push(self.view(next.as_str().unwrap()).await);
            }
            (chain.len() == depth + 1 && chain.iter().all(|v| v["success"] == true))
                .then_some(chain)
        })
        .await
    }
}

async fn a_three_stage_pipeline_ends_with_three_linked_jobs(b: Backends) {
    let s = Stage::new(b);
    let id = s
        .submit("fetch", json!({"url": "https://example.com/a"}))
        .await;
    let worker =
        s.b.event_source(registry(Arc::clone(&s.runs)), fast_settings(5));
    let chain = s.settle(&worker, &id, 2).await;
    let (fetch, analyse, report) = (&chain[0], &chain[1], &chain[2]);
    assert_eq!(fetch["pathway"], "analyse");
    assert_eq!(fetch["next"], json!([analyse["job_id"]]));
    assert_eq!(analyse["parent_id"], fetch["job_id"]);
    assert_eq!(analyse["kind"], "analyse");
    assert_eq!(analyse["pathway"], "report");
    assert_eq!(report["parent_id"], analyse["job_id"]);
    assert!(report.get("pathway").is_none() && report.get("next").is_none());
    assert_eq!(report["result"], json!({"report": "3 words"}));
    // Owned like the parent (the owner's list shows all three) and counted: nothing is left in flight.
    let (_, list) = json(&s.api.handle(list_jobs("pat", "limit=10")).await);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(s.b.store.in_flight("pat", 100).await.unwrap(), 0);
    assert!(s.runs.lock().unwrap().values().all(|&n| n == 1));
}

async fn fan_out_children_each_run_once(b: Backends) {
    let s = Stage::new(b);
    let id = s.submit("split", json!(null)).await;
    let worker =
        s.b.event_source(registry(Arc::clone(&s.runs)), fast_settings(5));
    let parent = eventually("the parent and its parts", WAIT, async || {
        worker.poll_once().await.unwrap();
        let parent = s.view(&id).await;
        let next = parent["next"].as_array()?.clone();
        for child in &next {
            if s.view(child.as_str().unwrap()).await["status"] != "completed" {
                return None;
            }
        }
        Some(parent)
    })
    .await;
    let next = parent["next"].as_array().unwrap();
    assert_eq!(next.len(), 3);
    let runs = s.runs.lock().unwrap().clone();
    for child in next {
        assert_eq!(runs[child.as_str().unwrap()], 1, "each part ran once");
        assert_eq!(
            s.view(child.as_str().unwrap()).await["parent_id"],
            parent["job_id"]
        );
    }
    assert_eq!(s.b.store.in_flight("pat", 100).await.unwrap(), 0);
}

async fn a_follow_up_whose_message_was_lost_is_run_after_the_sweep(b: Backends) {
    let s = Stage::new(b);
    let id = s.submit("analyse", json!({"text": "one two"})).await;
    // A worker that completes the parent but cannot send the child's message (a crash between the two).
    let mute = with_queue(&s.b.backend, FailingSends::new(s.b.queue.clone(), 1));
    let worker = event_source_on(&mute, registry(Arc::clone(&s.runs)), fast_settings(5));
    let parent = eventually("the parent to complete", WAIT, async || {
        worker.poll_once().await.unwrap();
        let v = s.view(&id).await;
        (v["status"] == "completed").then_some(v)
    })
    .await;
    let child = parent["next"][0].as_str().unwrap().to_owned();
    assert_eq!(s.view(&child).await["status"], "queued");
    let (batch, _) = worker.poll_once().await.unwrap();
    assert!(batch.is_empty(), "no message was sent for the child");
    let report = s.b.sweeper().sweep(Duration::ZERO).await.unwrap();
    assert_eq!(report.resent, 1, "{report:?}");
    let worker =
        s.b.event_source(registry(Arc::clone(&s.runs)), fast_settings(5));
    let done = eventually("the child to run", WAIT, async || {
        worker.poll_once().await.unwrap();
        let v = s.view(&child).await;
        (v["status"] == "completed").then_some(v)
    })
    .await;
    assert_eq!(done["result"], json!({"report": "2 words"}));
}

async fn a_retried_completion_creates_no_second_child(b: Backends) {
    let s = Stage::new(b);
    let id = JobId::parse(&s.submit("echo", json!(1)).await).unwrap();
    let now = jobkit::now_millis();
    let queued = s.b.store.get(&id).await.unwrap().unwrap();
    let running = s.b.store.claim(&id, "w", now + 60_000, now).await.unwrap();
    let children = running.children(
        "echo",
        jobkit::Lane::Lambda,
        &[jobkit::Json::from(json!(2))],
        now,
    );
    let done = running
        .complete_into(
            "w",
            jobkit::Json::from(json!(1)),
            vec![],
            "echo",
            &children,
            now,
        )
        .unwrap();
    s.b.store
        .replace_spawning(&running, &done, &children)
        .await
        .unwrap();
    // The same write again (its first answer lost): it landed, nothing more is created.
    s.b.store
        .replace_spawning(&running, &done, &children)
        .await
        .unwrap();
    // A completion computed anew by another attempt (from the running copy it held) conflicts: the job
    // moved on, and its children are not created again.
    let again = running
        .complete_into(
            "w",
            jobkit::Json::from(json!(3)),
            vec![],
            "echo",
            &children,
            now + 1,
        )
        .unwrap();
    assert!(matches!(
        s.b.store
            .replace_spawning(&running, &again, &children)
            .await,
        Err(jobkit::store::StoreError::Conflict { .. })
    ));
    assert_eq!(queued.version, 0);
    let (_, list) = json(&s.api.handle(list_jobs("pat", "limit=10")).await);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2, "{list}");
    assert_eq!(
        s.b.store.in_flight("pat", 100).await.unwrap(),
        1,
        "the child holds the slot"
    );
    assert_eq!(
        children[0].job_id,
        JobId::child_of(&id, 0),
        "child ids are derived, not drawn"
    );
}

async fn a_next_stage_that_is_no_kind_fails_the_job(b: Backends) {
    let s = Stage::new(b);
    let id = s.submit("astray", json!(null)).await;
    let worker =
        s.b.event_source(registry(Arc::clone(&s.runs)), fast_settings(5));
    let v = eventually("the job to fail", WAIT, async || {
        worker.poll_once().await.unwrap();
        let v = s.view(&id).await;
        (v["status"] == "failed").then_some(v)
    })
    .await;
    assert_eq!(v["error"]["code"], "invalid_pathway", "{v}");
    assert_eq!(v["success"], false);
}

on_both_backends!(
    a_three_stage_pipeline_ends_with_three_linked_jobs,
    fan_out_children_each_run_once,
    a_follow_up_whose_message_was_lost_is_run_after_the_sweep,
    a_retried_completion_creates_no_second_child,
    a_next_stage_that_is_no_kind_fails_the_job,
);
