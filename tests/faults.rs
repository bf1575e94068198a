//! The fault suite: thousands of jobs with every kind of trouble at once, on the emulator behind a
//! fault-injecting proxy, then a ledger check of ARCHITECTURE.md's invariants 1 and 2: every job ends in
//! exactly one terminal state (or the DLQ), none is lost, none completes twice.
//!
//! Trouble mixed in: successes, retryable failures that later succeed, terminal failures, jobs that never
//! succeed (dead letters), panics, poison messages, duplicated deliveries, workers killed mid-batch, and
//! throttling / 5xx / lost responses from the AWS side.
//!
//! Beside them a second owner, capped at [`CAPPED_CAP`] jobs in flight (two slot pages), submits
//! [`capped_jobs`] more through the same faults, retrying each `429`; a monitor reading the table
//! directly checks throughout that the owner never holds more slots than the cap, and that no page of
//! its ledger ever holds more members than its capacity. Both owners' counts must come out exact.
//!
//! Every fifth job has a webhook, to a receiver that fails one delivery in three, delivered by delivery
//! pollers that are killed too, through the same faults (the deliveries queue throttles like the rest),
//! with the sweep re-announcing what was lost: every terminal job's event must reach the receiver, and
//! the ledger counts the duplicates it saw.
//!
//! Waitpoints under faults ([`waitpoints_under_faults_resume_exactly_once`], on both backends): a
//! completion that lands while the job is being parked, duplicate completions, a completion whose
//! re-send is lost, a crash between recording the payload and resuming, and the sweep re-sending what
//! looks lost (duplicate deliveries): every job resumes exactly once and every finished step runs once.

#[macro_use]
mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use jobkit::api::ApiSettings;
use jobkit::aws::sdk_config;
use jobkit::handler::WaitFor;
use jobkit::local::EventSource;
use jobkit::queue::JobMessage;
use jobkit::waitpoint::REPAIR_AFTER;
use jobkit::webhook::{DeliverySettings, Schedule, Secrets};
use jobkit::worker::{Outcome, WorkerSettings};
use jobkit::{HandlerRegistry, Job, JobError, JobId, JobStatus};
use serde_json::{Value, json};
use support::proxy::FaultProxy;
use support::receiver::Receiver;
use support::*;

/// Jobs submitted (plus poison messages beside them). `JOBKIT_FAULT_JOBS` overrides.
fn job_count() -> usize {
    std::env::var("JOBKIT_FAULT_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// The capped owner's cap: two pages of the slot ledger.
const CAPPED_CAP: u32 = 48;

/// Jobs the capped owner submits: a tenth of the main run's.
fn capped_jobs() -> usize {
    (job_count() / 10).max(CAPPED_CAP as usize * 2)
}

/// What each kind does, and where its jobs must end.
const MIX: [(&str, usize, JobStatus); 6] = [
    ("ok", 50, JobStatus::Completed),
    ("flaky", 15, JobStatus::Completed), // fails retryably twice, then succeeds
    ("fatal", 10, JobStatus::Failed),
    ("doomed", 5, JobStatus::DeadLetter),  // never succeeds
    ("panicky", 10, JobStatus::Completed), // panics on its first run
    ("slow", 10, JobStatus::Completed),    // 400 ms on its first run: often killed there
];

/// Side effects of successful runs, applied with the job id as idempotency key, as a real handler should.
#[derive(Default)]
struct Ledger {
    runs: Mutex<HashMap<String, u32>>,
    effects: Mutex<HashSet<String>>,
}

impl Ledger {
    fn run(&self, id: &JobId) -> u32 {
        let mut runs = self.runs.lock().unwrap();
        let n = runs.entry(id.to_string()).or_default();
        *n += 1;
        *n
    }

    fn effect(&self, id: &JobId) {
        self.effects.lock().unwrap().insert(id.to_string());
    }
}

fn registry(ledger: Arc<Ledger>) -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    for (kind, _, _) in MIX {
        let ledger = ledger.clone();
        r.register_fn(kind, move |input: Value, ctx| {
            let ledger = ledger.clone();
            async move {
                let run = ledger.run(ctx.job_id());
                match ctx.kind() {
                    "flaky" if run <= 2 => return Err(JobError::retryable("flaky", "not yet")),
                    "fatal" => return Err(JobError::terminal("fatal", "cannot be done")),
                    "doomed" => return Err(JobError::retryable("doomed", "never works")),
                    "panicky" if run == 1 => panic!("first run panics"),
                    "slow" if run == 1 => tokio::time::sleep(Duration::from_millis(400)).await,
                    _ => {}
                }
                ledger.effect(ctx.job_id());
                Ok(input)
            }
        })
        .unwrap();
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_jobs_under_faults_all_end_exactly_once() {
    // The handlers' panics are part of the test; keep them out of the log.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"first run panics") {
            default_hook(info);
        }
    }));
    let started = Instant::now();
    let env = TestEnv::start_with(&[("MaxReceiveCount", "8")]).await;
    let proxy = FaultProxy::start(&endpoint(), 0.02, 0.01).await;
    let sdk = sdk_config(Some(&proxy.endpoint)).await;
    // Every call of the API and the workers goes through the proxy.
    let backend = jobkit::Backend::aws(&sdk, env.config.clone())
        .await
        .unwrap();
    let queue = backend.queue.clone();
    let ledger = Arc::new(Ledger::default());
    let api = api_on(
        &backend,
        registry(ledger.clone()),
        jobkit::api::ApiSettings {
            // Every job counted against a cap it never reaches: the in-flight counter goes through the
            // faults too, and must come out exact.
            max_in_flight_per_user: Some(10_000),
            // Callbacks to the loopback receiver.
            dev_mode: true,
            ..jobkit::api::ApiSettings::from_config(&env.config)
        },
    );

    // The capped owner: its own API with a cap it keeps hitting; every 429 is retried with the same
    // Idempotency-Key until accepted.
    let capped_api = Arc::new(api_on(
        &backend,
        registry(ledger.clone()),
        jobkit::api::ApiSettings {
            max_in_flight_per_user: Some(CAPPED_CAP),
            ..jobkit::api::ApiSettings::from_config(&env.config)
        },
    ));
    let capped_done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let capped_submitter = {
        let (api, done) = (capped_api.clone(), capped_done.clone());
        tokio::spawn(async move {
            let mut refused = 0u32;
            for i in 0..capped_jobs() {
                let body = json!({"kind": "ok", "input": i}).to_string();
                loop {
                    let mut req = post_jobs("capped-user", &body);
                    req.headers_mut()
                        .insert("idempotency-key", format!("capped-{i}").parse().unwrap());
                    match json(&api.handle(req).await) {
                        (200 | 202, _) => break,
                        (429 | 503, _) => {
                            refused += 1;
                            // A client's backoff, not a wait for anything.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        (other, answer) => panic!("capped submit answered {other}: {answer}"),
                    }
                }
            }
            done.store(true, Ordering::Relaxed);
            refused
        })
    };
    // The monitor: the capped owner's slot holders and page sizes, read directly, throughout the run.
    let monitoring = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let monitor = {
        let (on, client, table) = (
            monitoring.clone(),
            aws_sdk_dynamodb::Client::new(&env.sdk),
            env.config.table.clone(),
        );
        tokio::spawn(async move {
            let ledger = jobkit::slots::Ledger::owner("capped-user");
            let layout = jobkit::slots::Layout::new(CAPPED_CAP);
            let (mut samples, mut most_holding) = (0u32, 0usize);
            while on.load(Ordering::Relaxed) {
                let holding = scan_jobs(&client, &table)
                    .await
                    .iter()
                    .filter(|j| j.user_id == "capped-user" && j.holds_slot())
                    .count();
                assert!(
                    holding <= CAPPED_CAP as usize,
                    "{holding} jobs hold slots under a cap of {CAPPED_CAP}"
                );
                most_holding = most_holding.max(holding);
                for page in 0..layout.pages() {
                    let members = page_members(&client, &table, &ledger.key(Some(page))).await;
                    assert!(
                        members <= layout.capacity(page) as usize,
                        "page {page} holds {members} members"
                    );
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            (samples, most_holding)
        })
    };

    let secret = Secrets::generate();
    let receiver = Receiver::start(&secret, 3.0);
    let hook = receiver.url("/flaky");

    // Submit through the API (faults included: a 503 is retried with the same Idempotency-Key).
    let n = job_count();
    let weights: usize = MIX.iter().map(|(_, w, _)| w).sum();
    let mut expected: HashMap<JobId, JobStatus> = HashMap::new();
    for i in 0..n {
        let mut pick = (i * 7919) % weights; // spread the kinds over the run
        let (kind, _, end) = MIX
            .iter()
            .find(|(_, w, _)| {
                pick < *w || {
                    pick -= w;
                    false
                }
            })
            .unwrap();
        let body = if i % 5 == 0 {
            json!({"kind": kind, "input": i, "callback_url": hook})
        } else {
            json!({"kind": kind, "input": i})
        }
        .to_string();
        let id = loop {
            let mut req = post_jobs("fault-user", &body);
            req.headers_mut()
                .insert("idempotency-key", format!("job-{i}").parse().unwrap());
            let (status, answer) = json(&api.handle(req).await);
            match status {
                200 | 202 => break JobId::parse(answer["job_id"].as_str().unwrap()).unwrap(),
                503 => continue,
                other => panic!("submit answered {other}: {answer}"),
            }
        };
        expected.insert(id.clone(), *end);
        // Duplicated delivery: every tenth job's message is sent twice.
        if i % 10 == 0 {
            let dup = JobMessage {
                job_id: id,
                kind: kind.to_string(),
                thread: false,
            };
            while queue.send(&dup.encode(), Duration::ZERO).await.is_err() {}
        }
    }
    let poison = n / 50;
    for i in 0..poison {
        while queue
            .send(&format!("poison #{i}"), Duration::ZERO)
            .await
            .is_err()
        {}
    }
    let submitted_in = started.elapsed();

    // Workers: four concurrent pollers, short leases; one poll in twenty is killed 150 ms in.
    let settings = WorkerSettings {
        lease: Duration::from_secs(1),
        ..fast_settings(8)
    };
    let events = Arc::new(
        event_source_on(&backend, registry(ledger.clone()), settings)
            .with_visibility(Duration::from_secs(3))
            .with_wait(Duration::from_millis(200)),
    );
    let completions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let kills = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pollers: Vec<_> = (0..4)
        .map(|_| {
            let (events, completions, kills, stop) = (
                events.clone(),
                completions.clone(),
                kills.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let kill = rand::random::<f64>() < 0.05;
                    let limit = if kill {
                        Duration::from_millis(150)
                    } else {
                        Duration::from_secs(60)
                    };
                    match tokio::time::timeout(limit, events.poll_once()).await {
                        Err(_) => {
                            kills.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(_)) => {} // receive failed (injected): poll again
                        Ok(Ok((msgs, result))) => {
                            let mut c = completions.lock().unwrap();
                            for (m, o) in msgs.iter().zip(&result.outcomes) {
                                if *o == Outcome::Completed {
                                    let id =
                                        JobMessage::decode(&m.body).unwrap().job_id.to_string();
                                    *c.entry(id).or_default() += 1;
                                }
                            }
                        }
                    }
                }
            })
        })
        .collect();

    // Delivery pollers (two, one poll in ten killed 100 ms in) and the sweep, re-announcing events whose
    // message was lost, every 5 s.
    let deliverer = backend
        .deliverer(
            Secrets::parse(&secret).unwrap(),
            DeliverySettings {
                schedule: Schedule::compressed(),
                timeout: Duration::from_secs(2),
                allow_loopback: true,
            },
        )
        .expect("a deliveries queue");
    let deliveries = Arc::new(
        EventSource::new(
            backend.deliveries.clone().unwrap(),
            Arc::new(deliverer),
            backend.clock.clone(),
            10,
        )
        .with_visibility(Duration::from_secs(5))
        .with_wait(Duration::from_millis(200)),
    );
    let delivery_kills = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let delivering = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut helpers: Vec<_> = (0..2)
        .map(|_| {
            let (deliveries, kills, on) = (
                deliveries.clone(),
                delivery_kills.clone(),
                delivering.clone(),
            );
            tokio::spawn(async move {
                while on.load(Ordering::Relaxed) {
                    let limit = if rand::random::<f64>() < 0.1 {
                        Duration::from_millis(100)
                    } else {
                        Duration::from_secs(60)
                    };
                    if tokio::time::timeout(limit, deliveries.poll_once())
                        .await
                        .is_err()
                    {
                        kills.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let sweeps = Arc::new(std::sync::atomic::AtomicU32::new(0));
    helpers.push({
        let (sweeper, on, sweeps) = (backend.sweeper(), delivering.clone(), sweeps.clone());
        tokio::spawn(async move {
            while on.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Ok(r) = sweeper.sweep(Duration::from_secs(20)).await {
                    sweeps.fetch_add(r.reannounced as u32, Ordering::Relaxed);
                }
            }
        })
    });

    // Wait until the system is quiet: nothing left in the jobs queue. Then every job is terminal or, if its
    // last deliveries were all lost to kills or faults, in the DLQ without a terminal record, which
    // invariant 1 allows ("a terminal state or the DLQ"). Read directly, without faults.
    let direct = aws_sdk_dynamodb::Client::new(&env.sdk);
    let raw_sqs = aws_sdk_sqs::Client::new(&env.sdk);
    let mut quiet_checks = 0;
    let jobs: Vec<Job> = eventually("the system quiet", Duration::from_secs(1200), async || {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let jobs: Vec<Job> = scan_jobs(&direct, &env.config.table)
            .await
            .into_iter()
            .filter(|j| j.user_id == "fault-user")
            .collect();
        let done = jobs.iter().filter(|j| j.status.is_terminal()).count();
        let in_queue = queue_total(&raw_sqs, &env.config.queue_url).await;
        eprintln!(
            "fault suite: {done}/{n} jobs terminal, {in_queue} messages in the queue, {:.0}s",
            started.elapsed().as_secs_f64()
        );
        let capped_in = capped_done.load(Ordering::Relaxed);
        quiet_checks = if in_queue == 0 && capped_in {
            quiet_checks + 1
        } else {
            0
        };
        // Quiet means nothing left to deliver: poison messages and duplicates still cycle after the last
        // job is terminal, until SQS has moved them to the DLQ.
        (quiet_checks >= 2).then_some(jobs)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for p in pollers {
        p.await.unwrap();
    }
    let capped_refused = capped_submitter.await.unwrap();
    monitoring.store(false, Ordering::Relaxed);
    let (samples, most_holding) = monitor.await.unwrap();

    // Everything in the DLQ: poison messages and job messages.
    let mut dlq_jobs = HashSet::new();
    // By body: a poison send whose response the proxy lost was sent again (SQS delivers at least once),
    // so one poison message may stand in the DLQ twice.
    let mut poisoned = HashSet::new();
    loop {
        let got = env
            .dlq
            .receive(
                10,
                Duration::from_millis(500),
                Some(Duration::from_secs(600)),
            )
            .await
            .unwrap();
        if got.is_empty() {
            break;
        }
        for m in got {
            match JobMessage::decode(&m.body) {
                Ok(msg) => {
                    dlq_jobs.insert(msg.job_id);
                }
                Err(_) => {
                    poisoned.insert(m.body);
                }
            }
        }
    }

    // The ledger.
    assert_eq!(jobs.len(), n, "no job lost, none invented");
    let mut by_status: HashMap<JobStatus, usize> = HashMap::new();
    let mut stranded = 0;
    for j in &jobs {
        *by_status.entry(j.status).or_default() += 1;
        if j.status.is_terminal() {
            assert_eq!(
                Some(&j.status),
                expected.get(&j.job_id),
                "job {} ({}) ended {:?}",
                j.job_id,
                j.kind,
                j.status
            );
        } else {
            assert!(
                dlq_jobs.contains(&j.job_id),
                "job {} ({}) is {:?} and not in the DLQ: lost",
                j.job_id,
                j.kind,
                j.status
            );
            stranded += 1;
        }
        if j.status == JobStatus::DeadLetter {
            assert!(
                dlq_jobs.contains(&j.job_id),
                "dead letter {} has no message in the DLQ",
                j.job_id
            );
        }
    }
    let count = |s| by_status.get(&s).copied().unwrap_or(0);
    assert_eq!(
        n,
        count(JobStatus::Completed)
            + count(JobStatus::Failed)
            + count(JobStatus::DeadLetter)
            + stranded
    );
    let sent: HashSet<String> = (0..poison).map(|i| format!("poison #{i}")).collect();
    assert_eq!(
        poisoned, sent,
        "every poison message reached the DLQ, and nothing else"
    );
    let poisoned = poisoned.len();
    // The cap never undercounts: every job that holds a slot has its member in its owner's set.
    let members: HashSet<jobkit::Slot> = env
        .store
        .all_slots()
        .await
        .unwrap()
        .into_iter()
        .flat_map(|set| set.slots)
        .collect();
    let holding: Vec<&Job> = jobs.iter().filter(|j| j.holds_slot()).collect();
    for j in &holding {
        assert!(
            members.contains(&j.slot()),
            "{} holds a slot its owner's set does not count",
            j.job_id
        );
    }
    // A fault between a member's write and its job's leaves a member no job holds; nothing is being
    // written now, so a sweep past the grace removes exactly those, and the count is exact.
    let mut sweeper = env.backend.sweeper();
    sweeper.slot_grace = Duration::ZERO;
    let swept = sweeper.release_orphaned_slots().await.unwrap();
    let counted = env.store.in_flight("fault-user", 10_000).await.unwrap();
    assert_eq!(
        counted,
        holding.len() as i64,
        "the in-flight count matches the jobs not yet terminal once orphans are swept ({} were)",
        swept
    );
    let capped_holding = scan_jobs(&direct, &env.config.table)
        .await
        .iter()
        .filter(|j| j.user_id == "capped-user" && j.holds_slot())
        .count();
    assert_eq!(
        env.store
            .in_flight("capped-user", CAPPED_CAP)
            .await
            .unwrap(),
        capped_holding as i64,
        "the capped owner's count is exact too"
    );
    eprintln!(
        "capped owner: {} jobs under a cap of {CAPPED_CAP}, {capped_refused} submits refused (429/503) and retried; \
         {samples} samples, at most {most_holding} holding slots at once, never over the cap or a page's capacity",
        capped_jobs()
    );
    let completions = completions.lock().unwrap().clone();
    assert!(
        completions.values().all(|&c| c == 1),
        "a job completed twice"
    );
    let effects = ledger.effects.lock().unwrap().clone();
    for j in jobs.iter().filter(|j| j.status == JobStatus::Completed) {
        assert!(
            effects.contains(j.job_id.as_str()),
            "completed without its effect"
        );
    }
    // Webhooks: every terminal job with a callback has its event delivered, at least once.
    let hooked: Vec<(JobId, String)> = jobs
        .iter()
        .filter(|j| j.callback_url.is_some() && j.status.is_terminal())
        .map(|j| {
            let w = j
                .webhook
                .as_ref()
                .expect("a terminal job with a callback has an event");
            (j.job_id.clone(), w.event_id.clone())
        })
        .collect();
    let (log, webhook_states) = eventually(
        "every event delivered",
        Duration::from_secs(600),
        async || {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let log = receiver.log().await;
            let ok: HashSet<&str> = log
                .iter()
                .filter(|d| d["answered"] == 200)
                .filter_map(|d| d["id"].as_str())
                .collect();
            let missing = hooked
                .iter()
                .filter(|(_, e)| !ok.contains(e.as_str()))
                .count();
            eprintln!(
                "fault suite: {missing}/{} events not delivered yet",
                hooked.len()
            );
            if missing > 0 {
                return None;
            }
            let states: HashMap<JobId, Job> = scan_jobs(&direct, &env.config.table)
                .await
                .into_iter()
                .map(|j| (j.job_id.clone(), j))
                .collect();
            Some((log, states))
        },
    )
    .await;
    delivering.store(false, Ordering::Relaxed);
    for h in helpers {
        h.await.unwrap();
    }
    assert!(
        log.iter().all(|d| d["verified"] == true),
        "every delivery verifies with standardwebhooks"
    );
    let mut per_event: HashMap<&str, u32> = HashMap::new();
    for d in log.iter().filter(|d| d["answered"] == 200) {
        *per_event.entry(d["id"].as_str().unwrap()).or_default() += 1;
    }
    let duplicates: u32 = per_event.values().map(|c| c - 1).sum();
    let recorded_delivered = hooked
        .iter()
        .filter(|(id, _)| {
            webhook_states[id].webhook.as_ref().map(|w| w.status)
                == Some(jobkit::job::WebhookStatus::Delivered)
        })
        .count();
    let runs: u32 = ledger.runs.lock().unwrap().values().sum();
    eprintln!(
        "delivery ledger: {} events for terminal jobs with callbacks, all delivered; receiver saw {} requests \
         ({} answered 500), {duplicates} duplicate deliveries of an event already answered 200; recorded delivered \
         in the job: {recorded_delivered}; delivery polls killed {}, events re-announced by the sweep {}",
        hooked.len(),
        log.len(),
        log.iter().filter(|d| d["answered"] == 500).count(),
        delivery_kills.load(Ordering::Relaxed),
        sweeps.load(Ordering::Relaxed),
    );
    eprintln!(
        "fault ledger: {n} jobs + {poison} poison in {:.1}s (submitted in {:.1}s): completed {}, failed {}, dead_letter {}, \
         unfinished but in the DLQ {stranded}; handler runs {runs}, distinct effects {}, completions reported {} (max 1 per job), \
         worker polls killed {}; proxy: {} forwarded, {} rejected, {} responses lost; DLQ: {} jobs, {poisoned} poison",
        started.elapsed().as_secs_f64(),
        submitted_in.as_secs_f64(),
        count(JobStatus::Completed),
        count(JobStatus::Failed),
        count(JobStatus::DeadLetter),
        effects.len(),
        completions.values().sum::<u32>(),
        kills.load(Ordering::Relaxed),
        proxy.stats.forwarded.load(Ordering::Relaxed),
        proxy.stats.rejected.load(Ordering::Relaxed),
        proxy.stats.lost_responses.load(Ordering::Relaxed),
        dlq_jobs.len(),
    );
}

/// Messages in the queue, visible or in flight.
async fn queue_total(sqs: &aws_sdk_sqs::Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = out.attributes.unwrap_or_default();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .filter_map(|a| attrs.get(a).and_then(|v| v.parse::<u64>().ok()))
    .sum()
}

/// How many members the slot page keyed `key` holds.
async fn page_members(client: &aws_sdk_dynamodb::Client, table: &str, key: &str) -> usize {
    let out = client
        .get_item()
        .table_name(table)
        .key(
            "job_id",
            aws_sdk_dynamodb::types::AttributeValue::S(key.into()),
        )
        .consistent_read(true)
        .send()
        .await
        .expect("read a page");
    match out.item.as_ref().and_then(|i| i.get("slots")) {
        Some(aws_sdk_dynamodb::types::AttributeValue::Ss(m)) => m.len(),
        _ => 0,
    }
}

/// Every job record in the table (slot, step and cancel items skipped).
async fn scan_jobs(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut start = None;
    loop {
        let out = client
            .scan()
            .table_name(table)
            .set_exclusive_start_key(start)
            .send()
            .await
            .expect("scan");
        for item in out.items.unwrap_or_default() {
            if let Ok(job) = serde_dynamo::from_item::<_, Job>(item) {
                jobs.push(job);
            }
        }
        start = out.last_evaluated_key;
        if start.is_none() {
            return jobs;
        }
    }
}

// ---------- Waitpoints under faults ----------

/// How a `gated` job's waitpoint gets completed, and what goes wrong on the way.
const GATES: [&str; 4] = [
    "racy",      // the handler completes its own waitpoint before the worker parks it
    "duplicate", // three completions at once: one wins, its payload stands
    "lost",      // the completion's re-send of the job is lost: the sweep re-sends it
    "crashed",   // the completion records the payload and dies before resuming: the due task does
];

/// Jobs per gate.
const GATED: usize = 6;

/// How often each (job, what) ran: `handler`, and the steps `before` and `after`.
#[derive(Default)]
struct Runs(Mutex<HashMap<String, u32>>);

impl Runs {
    fn note(&self, id: &JobId, what: &str) {
        *self
            .0
            .lock()
            .unwrap()
            .entry(format!("{id}:{what}"))
            .or_default() += 1;
    }
    fn get(&self, id: &JobId, what: &str) -> u32 {
        let runs = self.0.lock().unwrap();
        runs.get(&format!("{id}:{what}")).copied().unwrap_or(0)
    }
}

/// `gated`: step `before`, waits for `go`, step `after`, answers the payload. A `racy` one completes
/// `go` through the API (`api`) after recording it and before its worker parks the job.
fn gated_registry(runs: Arc<Runs>, api: Arc<OnceLock<Api>>) -> HandlerRegistry {
    let mut r = HandlerRegistry::new();
    r.register_fn("gated", move |input: Value, ctx| {
        let (runs, api) = (runs.clone(), api.clone());
        async move {
            let id = ctx.job_id().clone();
            runs.note(&id, "handler");
            let fx = (runs.clone(), id.clone());
            ctx.step("before", async move {
                fx.0.note(&fx.1, "before");
                Ok(1)
            })
            .await?;
            let payload = match ctx
                .wait_for::<Value>("go", WaitFor::timeout(Duration::from_secs(300)))
                .await
            {
                Err(e @ JobError::Wait { .. }) if input["gate"] == "racy" => {
                    let api = api.get().expect("the API is set").clone();
                    let answer = api
                        .handle(complete("sam", &id, &json!({"by": "racy"})))
                        .await;
                    assert_eq!(answer.status(), 202, "{:?}", answer.body);
                    return Err(e);
                }
                other => other?,
            };
            let fx = (runs.clone(), id.clone());
            ctx.step("after", async move {
                fx.0.note(&fx.1, "after");
                Ok(2)
            })
            .await?;
            Ok(payload)
        }
    })
    .unwrap();
    r
}

fn complete(user: &str, id: &JobId, payload: &Value) -> Request {
    as_user(
        http::Request::post(format!("/jobs/{id}/waitpoints/go"))
            .header("content-type", "application/json")
            .body(axum::body::Body::from(payload.to_string()))
            .unwrap(),
        user,
    )
}

async fn waitpoints_under_faults_resume_exactly_once(b: Backends) {
    let runs = Arc::new(Runs::default());
    let slot = Arc::new(OnceLock::new());
    let registry = || gated_registry(runs.clone(), slot.clone());
    let settings = ApiSettings::from_config(&b.config);
    let api = b.api_with_settings(registry(), settings.clone());
    let _ = slot.set(api.clone());
    // The same completion route, whose sends to the queue all fail.
    let lossy = api_on(
        &with_queue(&b, FailingSends::new(b.queue.clone(), u32::MAX)),
        registry(),
        settings,
    );
    let worker = b
        .event_source(
            registry(),
            WorkerSettings {
                lease: Duration::from_secs(5),
                ..fast_settings(5)
            },
        )
        .with_wait(Duration::from_millis(200));

    let mut jobs: Vec<(JobId, &str)> = Vec::new();
    for gate in GATES {
        for _ in 0..GATED {
            let body = json!({"kind": "gated", "input": {"gate": gate}}).to_string();
            let (status, accepted) = json(&api.handle(post_jobs("sam", &body)).await);
            assert_eq!(status, 202, "{accepted}");
            jobs.push((
                JobId::parse(accepted["job_id"].as_str().unwrap()).unwrap(),
                gate,
            ));
        }
    }
    let status_of = async |id: &JobId| b.store.get(id).await.unwrap().unwrap().status;
    // Run until every job is parked (a racy one resumes itself and completes).
    eventually("every job to park", Duration::from_secs(60), async || {
        let _ = worker.poll_once().await;
        for (id, gate) in &jobs {
            let want = if *gate == "racy" {
                JobStatus::Completed
            } else {
                JobStatus::Waiting
            };
            if status_of(id).await != want {
                return None;
            }
        }
        Some(())
    })
    .await;

    let payload = |id: &JobId, n: u32| json!({"job": id.to_string(), "n": n});
    for (id, gate) in &jobs {
        match *gate {
            "duplicate" => {
                let answers = futures::future::join_all(
                    (0..3).map(|n| api.handle(complete("sam", id, &payload(id, n)))),
                )
                .await;
                let won: Vec<_> = answers.iter().filter(|a| a.status() == 202).collect();
                assert_eq!(
                    won.len(),
                    1,
                    "one completion wins: {:?}",
                    answers.iter().map(|a| a.status()).collect::<Vec<_>>()
                );
                for lost in answers.iter().filter(|a| a.status() != 202) {
                    assert_error(lost, 409, "waitpoint_completed");
                }
            }
            "lost" => {
                assert_eq!(
                    lossy
                        .handle(complete("sam", id, &payload(id, 0)))
                        .await
                        .status(),
                    202
                );
                assert_eq!(
                    status_of(id).await,
                    JobStatus::Queued,
                    "resumed, but no message"
                );
            }
            "crashed" => {
                let wp = b.store.waitpoint(id, "go").await.unwrap().unwrap();
                let done = wp
                    .complete(payload(id, 0).into(), jobkit::now_millis())
                    .unwrap();
                assert_eq!(b.store.settle_waitpoint(id, &done).await.unwrap(), None);
            }
            _ => {}
        }
    }

    // Repairs: the full sweep re-sends queued jobs (lost ones, and as duplicates the rest), the due
    // task resumes the crashed completions once their check is due.
    let repair = sweeper_ahead(&b, REPAIR_AFTER);
    let full = b.sweeper();
    eventually(
        "every job to complete",
        Duration::from_secs(120),
        async || {
            full.sweep(Duration::ZERO).await.unwrap();
            let due = repair.fire_due().await.unwrap();
            assert_eq!(due.failed, 0, "{due:?}");
            let _ = worker.poll_once().await;
            for (id, _) in &jobs {
                if status_of(id).await != JobStatus::Completed {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    // Stragglers: duplicate messages of finished jobs are acknowledged without running them.
    for _ in 0..3 {
        let _ = worker.poll_once().await;
    }

    for (id, gate) in &jobs {
        let job = b.store.get(id).await.unwrap().unwrap();
        let counts = (
            runs.get(id, "handler"),
            runs.get(id, "before"),
            runs.get(id, "after"),
        );
        assert_eq!(
            counts,
            (2, 1, 1),
            "{gate} job {id}: parked once, resumed once, each step once"
        );
        assert_eq!(
            job.attempts, 1,
            "{gate} job {id}: the park was not an attempt"
        );
        let result = serde_json::to_value(job.result.unwrap()).unwrap();
        match *gate {
            "racy" => assert_eq!(result, json!({"by": "racy"})),
            "duplicate" => {
                let wp = b.store.waitpoint(id, "go").await.unwrap().unwrap();
                assert_eq!(
                    Some(result.clone()),
                    wp.payload.map(|p| serde_json::to_value(p).unwrap()),
                    "the winner's payload stands"
                );
                assert_eq!(result["job"], id.to_string());
            }
            _ => assert_eq!(result, payload(id, 0)),
        }
    }
    // Nothing is left due once the checks of the last completions ran: they were made and cleared.
    repair.fire_due().await.unwrap();
    let later = jobkit::now_millis() + REPAIR_AFTER + 1;
    assert_eq!(b.store.due(later, 100).await.unwrap(), []);
}

on_both_backends!(waitpoints_under_faults_resume_exactly_once);
