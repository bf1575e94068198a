//! Kind-level limits on both backends: a kind's concurrency (in all and per key) is never exceeded
//! however many workers run, rate limits space starts out, configuration overrides code, a deferred
//! job uses no attempt and says why it waits, a crashed worker's hold frees itself, and the store's
//! counters (holds, token buckets) are exact under racing writers.

#[macro_use]
mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jobkit::job::JobId;
use jobkit::limits::{Hold, Key, LimitsConfig, Rate, RateLimit, Take, named_bucket};
use jobkit::local::EventSource;
use jobkit::slots::Ledger;
use jobkit::store::LimitStore;
use jobkit::worker::WorkerSettings;
use jobkit::{Backend, HandlerRegistry, JobError};
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(90);

/// What the `limited` handler saw: how many ran at once, overall and per user, and when each started.
#[derive(Default)]
struct Seen {
    running: Mutex<HashMap<String, u32>>,
    peak: Mutex<HashMap<String, u32>>,
    starts: Mutex<Vec<Instant>>,
    /// While set, handlers wait (a job that holds its slot until the test lets it go).
    hold: AtomicBool,
    /// Jobs (the input's `n`) whose first run failed, for inputs with `fail_first`.
    failed: Mutex<std::collections::HashSet<u64>>,
}

impl Seen {
    fn enter(&self, user: &str) {
        self.starts.lock().unwrap().push(Instant::now());
        let mut running = self.running.lock().unwrap();
        let mut peak = self.peak.lock().unwrap();
        for key in ["*", user] {
            let n = running.entry(key.into()).or_default();
            *n += 1;
            let p = peak.entry(key.into()).or_default();
            *p = (*p).max(*n);
        }
    }

    fn leave(&self, user: &str) {
        let mut running = self.running.lock().unwrap();
        for key in ["*", user] {
            *running.get_mut(key).unwrap() -= 1;
        }
    }

    fn peak(&self, key: &str) -> u32 {
        self.peak.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// `limited`: records overlap (by the input's `user`), sleeps `ms` (300 by default), and waits while
/// `Seen::hold` is set. `how` declares its limits.
fn registry(
    seen: Arc<Seen>,
    how: impl FnOnce(jobkit::handler::Registration<'_>),
) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    let reg = r
        .register_fn("limited", move |input: Value, _ctx| {
            let seen = seen.clone();
            async move {
                let user = input["user"].as_str().unwrap_or("-").to_owned();
                if input["fail_first"] == true
                    && seen
                        .failed
                        .lock()
                        .unwrap()
                        .insert(input["n"].as_u64().unwrap_or(0))
                {
                    return Err(JobError::retryable("flaky", "the first run fails"));
                }
                seen.enter(&user);
                tokio::time::sleep(Duration::from_millis(input["ms"].as_u64().unwrap_or(300)))
                    .await;
                while seen.hold.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                seen.leave(&user);
                Ok(json!("done"))
            }
        })
        .unwrap();
    how(reg);
    r
}

struct Rig {
    api: Api,
    seen: Arc<Seen>,
    backend: Backend,
    /// Two worker instances polling on their own tasks: limits hold across them, not per process.
    stop: Arc<AtomicBool>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn rig_on(backend: Backend, how: impl Fn(jobkit::handler::Registration<'_>) + Clone) -> Rig {
    let seen = Arc::new(Seen::default());
    let api = api_on(
        &backend,
        registry(seen.clone(), how.clone()),
        jobkit::api::ApiSettings::from_config(&backend.config),
    );
    let settings = WorkerSettings {
        concurrency: 10,
        ..fast_settings(5)
    };
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..2 {
        let worker: EventSource = event_source_on(
            &backend,
            registry(seen.clone(), how.clone()),
            settings.clone(),
        )
        .with_wait(Duration::from_millis(100));
        let stop = stop.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = worker.poll_once().await;
            }
        });
    }
    Rig {
        api,
        seen,
        backend,
        stop,
    }
}

impl Rig {
    async fn submit(&self, user: &str, input: Value) -> String {
        let body = json!({"kind": "limited", "input": input}).to_string();
        let (status, accepted) = json(&self.api.handle(post_jobs(user, &body)).await);
        assert_eq!(status, 202, "{accepted}");
        accepted["job_id"].as_str().unwrap().to_owned()
    }

    async fn view(&self, user: &str, id: &str) -> Value {
        json(&self.api.handle(get_job(user, id)).await).1
    }

    /// Until `done` says so, while both workers poll on their own tasks (started with the rig).
    async fn run_until(&self, what: &str, mut done: impl AsyncFnMut() -> bool) {
        eventually(what, WAIT, async || done().await.then_some(())).await;
    }

    /// Runs until every job of `jobs` (user, id) completed; their views.
    async fn complete_all(&self, jobs: &[(String, String)]) -> Vec<Value> {
        self.run_until("every job to complete", async || {
            for (user, id) in jobs {
                if self.view(user, id).await["status"] != "completed" {
                    return false;
                }
            }
            true
        })
        .await;
        let mut views = Vec::new();
        for (user, id) in jobs {
            views.push(self.view(user, id).await);
        }
        views
    }
}

async fn a_kind_never_runs_more_than_its_concurrency_and_deferrals_use_no_attempt(b: Backends) {
    let r = rig_on(b.backend.clone(), |k| {
        k.concurrency(2);
    });
    let mut jobs = Vec::new();
    for _ in 0..10 {
        jobs.push((
            "sam".to_owned(),
            r.submit("sam", json!({"user": "sam"})).await,
        ));
    }
    for v in r.complete_all(&jobs).await {
        assert_eq!(v["attempts"], 1, "a deferral is not an attempt: {v}");
        assert!(v.get("deferred").is_none(), "{v}");
    }
    assert_eq!(r.seen.peak("*"), 2, "two at once, never more");
}

async fn a_per_user_key_caps_each_user_alone(b: Backends) {
    let r = rig_on(b.backend.clone(), |k| {
        k.concurrency_key(Key::User, 1);
    });
    let mut jobs = Vec::new();
    for user in ["ann", "bob", "ann", "bob", "ann", "bob"] {
        jobs.push((
            user.to_owned(),
            r.submit(user, json!({"user": user, "ms": 500})).await,
        ));
    }
    r.complete_all(&jobs).await;
    assert_eq!((r.seen.peak("ann"), r.seen.peak("bob")), (1, 1));
    assert_eq!(
        r.seen.peak("*"),
        2,
        "one user's limit does not hold the other back"
    );
}

async fn a_rate_limit_spaces_the_starts_out(b: Backends) {
    let r = rig_on(b.backend.clone(), |k| {
        k.rate_limit(RateLimit::per_second(2).burst(1));
    });
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(("sam".to_owned(), r.submit("sam", json!({"ms": 10})).await));
    }
    for v in r.complete_all(&jobs).await {
        assert_eq!(v["attempts"], 1, "{v}");
    }
    let mut starts = r.seen.starts.lock().unwrap().clone();
    starts.sort();
    // One token every 500 ms, taken before the claim: the handlers' starts follow at that pace, give
    // or take the claim's latency.
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(300),
            "starts {:?} apart",
            pair[1] - pair[0]
        );
    }
    assert!(
        starts[3] - starts[0] >= Duration::from_millis(1_300),
        "four starts within {:?}",
        starts[3] - starts[0]
    );
}

async fn configuration_overrides_the_code_limits(b: Backends) {
    let mut backend = b.backend.clone();
    backend.config.limits = LimitsConfig::parse(r#"{"limited": {"concurrency": 1}}"#).unwrap();
    let r = rig_on(backend, |k| {
        k.concurrency(5);
    });
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(("sam".to_owned(), r.submit("sam", json!({"ms": 200})).await));
    }
    r.complete_all(&jobs).await;
    assert_eq!(
        r.seen.peak("*"),
        1,
        "the configuration's 1, not the code's 5"
    );
}

async fn a_deferred_job_says_why_it_waits_and_runs_when_the_slot_frees(b: Backends) {
    let r = rig_on(b.backend.clone(), |k| {
        k.concurrency(1);
    });
    r.seen.hold.store(true, Ordering::SeqCst);
    let first = r.submit("sam", json!({"ms": 0})).await;
    r.run_until("the first job to run", async || {
        r.view("sam", &first).await["status"] == "running"
    })
    .await;
    let second = r.submit("sam", json!({"ms": 0})).await;
    let waiting = Arc::new(Mutex::new(Value::Null));
    r.run_until("the second job to be deferred", async || {
        let v = r.view("sam", &second).await;
        let deferred = v.get("deferred").is_some();
        *waiting.lock().unwrap() = v;
        deferred
    })
    .await;
    let v = waiting.lock().unwrap().clone();
    assert_eq!(v["status"], "queued", "{v}");
    assert_eq!(v["attempts"], 0, "{v}");
    assert_eq!(v["deferred"]["reason"], "concurrency", "{v}");
    assert_eq!(v["deferred"]["key"], "kind", "{v}");
    assert!(
        v["deferred"]["until"].as_str().unwrap().ends_with('Z'),
        "{v}"
    );
    r.seen.hold.store(false, Ordering::SeqCst);
    let views = r
        .complete_all(&[("sam".into(), first), ("sam".into(), second)])
        .await;
    assert_eq!(views[1]["attempts"], 1, "{}", views[1]);
    assert!(views[1].get("deferred").is_none(), "the claim clears it");
}

async fn a_crashed_workers_hold_frees_itself(b: Backends) {
    let r = rig_on(b.backend.clone(), |k| {
        k.concurrency(1);
    });
    // A worker took the only slot and died: its hold lapses in two seconds.
    let now = r.backend.clock.now();
    let dead = Hold {
        job_id: JobId::generate(now),
        until: now + 2_000,
    };
    let ledger = Ledger::limit("limited");
    assert!(
        r.backend
            .store
            .hold(&ledger, 1, &dead, now)
            .await
            .unwrap()
            .is_some()
    );
    let id = r.submit("sam", json!({"ms": 0})).await;
    let started = Instant::now();
    let views = r.complete_all(&[("sam".into(), id)]).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "it waited for the lapse"
    );
    assert_eq!(views[0]["attempts"], 1);
    assert_eq!(
        r.backend
            .store
            .holders(&ledger, 1, r.backend.clock.now())
            .await
            .unwrap(),
        0
    );
}

async fn holds_are_exact_under_racing_writers_and_lapsed_ones_do_not_count(b: Backends) {
    let store = b.backend.store.clone();
    let now = b.backend.clock.now();
    let ledger = Ledger::limit(&format!("race-{}", JobId::generate(now)));
    let cap = 30; // two pages
    let holds: Vec<Hold> = (0..45)
        .map(|i| Hold {
            job_id: JobId::generate(now + i),
            until: now + 60_000,
        })
        .collect();
    let taken =
        futures::future::join_all(holds.iter().map(|h| store.hold(&ledger, cap, h, now))).await;
    let won: Vec<(usize, u32)> = taken
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_ref().unwrap().map(|p| (i, p)))
        .collect();
    assert!(won.len() <= cap as usize, "{} holds", won.len());
    assert_eq!(
        store.holders(&ledger, cap, now).await.unwrap(),
        won.len() as u32
    );
    // Renewed (a long job's heartbeat): still one hold, with the later end.
    let (j, jpage) = won[1];
    let renewed = Hold {
        job_id: holds[j].job_id.clone(),
        until: now + 120_000,
    };
    store
        .renew_hold(&ledger, jpage, &holds[j], &renewed)
        .await
        .unwrap();
    assert_eq!(
        store.holders(&ledger, cap, now).await.unwrap(),
        won.len() as u32
    );
    assert_eq!(
        store.holders(&ledger, cap, now + 61_000).await.unwrap(),
        1,
        "only the renewed one is live later"
    );
    store.unhold(&ledger, jpage, &renewed).await.unwrap();
    // Given back: room again; lapsed: not counted, and cleared by the next writer or the sweep.
    let (i, page) = won[0];
    store.unhold(&ledger, page, &holds[i]).await.unwrap();
    assert_eq!(
        store.holders(&ledger, cap, now).await.unwrap(),
        won.len() as u32 - 2
    );
    let later = now + 61_000;
    assert_eq!(store.holders(&ledger, cap, later).await.unwrap(), 0);
    let fresh = Hold {
        job_id: JobId::generate(later),
        until: later + 60_000,
    };
    assert!(
        store
            .hold(&ledger, 1, &fresh, later)
            .await
            .unwrap()
            .is_some()
    );
    // The sweep's slice of the table (here all of it) drops the rest.
    let prune = async || store.slice(0, 1, later, 0).await.unwrap().holds_lapsed;
    assert!(prune().await > 0, "the sweep drops the rest");
    assert_eq!(prune().await, 0);
    assert_eq!(
        store.holders(&ledger, cap, later).await.unwrap(),
        1,
        "the fresh one"
    );
}

async fn a_bucket_admits_exactly_its_burst_to_racing_takers(b: Backends) {
    let store = b.backend.store.clone();
    let now = b.backend.clock.now();
    let bucket = named_bucket(&format!("race-{}", JobId::generate(now)));
    let rate = Rate::per_minute(60).with_burst(5);
    let takes =
        futures::future::join_all((0..12).map(|_| store.take_tokens(&bucket, &rate, 1, now))).await;
    let taken = takes
        .iter()
        .filter(|t| matches!(t.as_ref().unwrap(), Take::Taken))
        .count();
    // Racing takers that lose MAX_WRITES times wait too: never more than the burst.
    assert!((1..=5).contains(&taken), "{taken} taken");
    let mut admitted = taken;
    for _ in 0..10 {
        if store.take_tokens(&bucket, &rate, 1, now).await.unwrap() == Take::Taken {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "exactly the burst at one instant");
    match store.take_tokens(&bucket, &rate, 1, now).await.unwrap() {
        Take::Wait(w) => assert_eq!(w, Duration::from_secs(1), "one token a second"),
        Take::Taken => panic!("the bucket is empty"),
    }
    assert_eq!(
        store
            .take_tokens(&bucket, &rate, 1, now + 1_000)
            .await
            .unwrap(),
        Take::Taken
    );
}

on_both_backends!(
    a_kind_never_runs_more_than_its_concurrency_and_deferrals_use_no_attempt,
    a_per_user_key_caps_each_user_alone,
    a_rate_limit_spaces_the_starts_out,
    configuration_overrides_the_code_limits,
    a_deferred_job_says_why_it_waits_and_runs_when_the_slot_frees,
    a_crashed_workers_hold_frees_itself,
    holds_are_exact_under_racing_writers_and_lapsed_ones_do_not_count,
    a_bucket_admits_exactly_its_burst_to_racing_takers,
);

/// Throttling, 5xx and lost responses on every DynamoDB and SQS call (the fault suite's proxy), jobs
/// that fail retryably once, three workers: a monitor reading the table directly never sees more live
/// holds than the limit, the handlers never overlap more, and every job completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_under_faults() {
    let env = TestEnv::start_with(&[("MaxReceiveCount", "8")]).await;
    let proxy = support::proxy::FaultProxy::start(&endpoint(), 0.03, 0.01).await;
    let sdk = jobkit::aws::sdk_config(Some(&proxy.endpoint)).await;
    let backend = Backend::aws(&sdk, env.config.clone()).await.unwrap();
    const CAP: u32 = 3;
    let seen = Arc::new(Seen::default());
    let how = |k: jobkit::handler::Registration<'_>| {
        k.concurrency(CAP);
    };
    let api = api_on(
        &backend,
        registry(seen.clone(), how),
        jobkit::api::ApiSettings::from_config(&backend.config),
    );
    let mut ids = Vec::new();
    for n in 0..30u64 {
        let body =
            json!({"kind": "limited", "input": {"n": n, "ms": 150, "fail_first": n % 3 == 0}})
                .to_string();
        let id = loop {
            let mut req = post_jobs("sam", &body);
            req.headers_mut()
                .insert("idempotency-key", format!("f-{n}").parse().unwrap());
            match json(&api.handle(req).await) {
                (200 | 202, v) => break v["job_id"].as_str().unwrap().to_owned(),
                (503, _) => tokio::time::sleep(Duration::from_millis(50)).await, // a client's retry
                (other, v) => panic!("submit answered {other}: {v}"),
            }
        };
        ids.push(id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let settings = WorkerSettings {
        max_attempts: 8,
        ..fast_settings(8)
    };
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let worker = event_source_on(&backend, registry(seen.clone(), how), settings.clone())
            .with_wait(Duration::from_millis(100));
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let _ = worker.poll_once().await;
            }
        }));
    }
    // The monitor reads the ledger's pages around the proxy.
    let monitor = {
        let (stop, store) = (
            stop.clone(),
            jobkit::store::DynamoStore::from_sdk(&env.sdk, env.config.table.clone()),
        );
        tokio::spawn(async move {
            let (ledger, mut samples) = (Ledger::limit("limited"), 0u32);
            while !stop.load(Ordering::SeqCst) {
                let now = chrono::Utc::now().timestamp_millis();
                let live = store.holders(&ledger, CAP, now).await.unwrap();
                assert!(live <= CAP, "{live} live holds under a limit of {CAP}");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            samples
        })
    };
    let store = jobkit::store::DynamoStore::from_sdk(&env.sdk, env.config.table.clone());
    eventually(
        "every job to complete under faults",
        Duration::from_secs(240),
        async || {
            for id in &ids {
                let job = jobkit::store::JobReader::get(&store, &JobId::parse(id).unwrap())
                    .await
                    .unwrap()
                    .unwrap();
                if job.status != jobkit::JobStatus::Completed {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let samples = monitor.await.unwrap();
    assert!(samples > 5, "the monitor sampled the run ({samples})");
    assert!(seen.peak("*") <= CAP, "{} ran at once", seen.peak("*"));
    assert!(
        proxy.stats.rejected.load(Ordering::Relaxed)
            + proxy.stats.lost_responses.load(Ordering::Relaxed)
            > 0,
        "faults were injected"
    );
}

#[test]
fn configured_limits_of_an_unknown_kind_are_refused_at_start() {
    let r = registry(Arc::new(Seen::default()), |_| {});
    let bad = LimitsConfig::parse(r#"{"limted": {"concurrency": 1}}"#).unwrap();
    let e = r.check_limits(&bad).unwrap_err().to_string();
    assert!(e.contains("limted") && e.contains("not registered"), "{e}");
    assert!(
        r.check_limits(&LimitsConfig::parse(r#"{"limited": {"concurrency": 1}}"#).unwrap())
            .is_ok()
    );
}
