//! The same handlers outside Lambda:
//!
//! - `jobctl run`: one job, in-process, on the embedded backend (checkpoints, steps, retries and
//!   continuations work as deployed), for a shell or another queue system: one JSON document out
//!   (`{job_id, kind, success, result, pathway, error}`), exit 0 on success.
//! - `jobctl worker`: a long-running worker for containers and ordinary machines, on the same jobs
//!   queue and the same worker core as the worker function (`EventSource` + `Worker`), without an
//!   invocation deadline.
//!
//! Past SQS's 12 hours of total visibility a message cannot be hidden longer: it comes back while its
//! job still runs. The lease in the table is what protects the job then: the worker that receives the
//! message finds the lease live (heartbeats keep renewing it) and hands the message back until the
//! lease ends; the running attempt alone may record the outcome. A job that runs that long may so use
//! up its message's receives and leave the message in the DLQ, where a redrive finds the job finished.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use axum::body::Body;
use jobkit::api::{self, ApiSettings, Identity, JobView};
use jobkit::clock::SystemClock;
use jobkit::local::EventSource;
use jobkit::queue::{Consumer, Delivery, Invocation};
use jobkit::worker::WorkerSettings;
use jobkit::{Backend, Config, HandlerRegistry, Json, Lane};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::ServiceExt;

/// Options of `jobctl run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job kind (omit with --spec).
    pub kind: Option<String>,
    /// The input, as JSON.
    #[arg(long, conflicts_with_all = ["input_file", "spec"])]
    pub input: Option<String>,
    /// Read the input from this file (`-`: stdin).
    #[arg(long, conflicts_with = "spec")]
    pub input_file: Option<String>,
    /// A whole task spec `{"kind", "input", "task_uuid"?, "stage_uuid"?}` from this file (`-`: stdin),
    /// as another queue system hands it over.
    #[arg(long)]
    pub spec: Option<String>,
    /// Attempts before the job fails (retryable errors are retried with the kit's backoff).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub max_attempts: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    kind: String,
    /// Kept as text, to the digit.
    input: Json,
    #[serde(default)]
    task_uuid: Option<String>,
    #[serde(default)]
    stage_uuid: Option<String>,
}

fn read_source(path: &str) -> anyhow::Result<String> {
    if path == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read stdin")
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))
    }
}

/// Runs one job; `Ok(true)` when it completed.
pub async fn run(args: RunArgs, registry: HandlerRegistry) -> anyhow::Result<bool> {
    let (kind, input, ids) = match (&args.spec, &args.kind) {
        (Some(path), None) => {
            let spec: Spec = serde_json::from_str(&read_source(path)?)
                .context("--spec must be {\"kind\", \"input\", \"task_uuid\"?, \"stage_uuid\"?}")?;
            (spec.kind, spec.input, (spec.task_uuid, spec.stage_uuid))
        }
        (Some(_), Some(_)) => bail!("give either KIND (with --input) or --spec, not both"),
        (None, None) => bail!("give a KIND (with --input) or --spec"),
        (None, Some(kind)) => {
            let raw = match (&args.input, &args.input_file) {
                (Some(text), _) => text.clone(),
                (None, Some(path)) => read_source(path)?,
                // As `jobctl submit` without --input.
                (None, None) => "{}".into(),
            };
            let input = Json::parse(&raw).context("the input must be JSON")?;
            (kind.clone(), input, (None, None))
        }
    };
    let config = Config::from_lookup(|k| match k {
        "JOBKIT_TABLE" | "JOBKIT_QUEUE_URL" => Some("memory".into()),
        "JOBKIT_MAX_ATTEMPTS" => Some(args.max_attempts.to_string()),
        _ => None,
    })?;
    let b = Backend::embedded(
        config,
        Duration::from_secs(30),
        args.max_attempts + 1,
        Arc::new(SystemClock),
    );
    let submit = api::submit_routes(
        Arc::new(b.submit_api(registry.clone(), ApiSettings::from_config(&b.config))),
        Arc::new(b.waitpoint_api()),
    );
    let mut req = http::Request::post("/jobs")
        .header("content-type", "application/json")
        .body(Body::from(crate::client::submit_body(&kind, &input)))?;
    req.extensions_mut().insert(Identity("local".into()));
    let resp = submit.oneshot(req).await?;
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await?;
    let accepted: Value = serde_json::from_slice(&bytes)?;
    if !status.is_success() {
        bail!(
            "{}: {}",
            accepted["error"]["code"].as_str().unwrap_or("refused"),
            accepted["error"]["message"].as_str().unwrap_or("")
        );
    }
    let id = jobkit::JobId::parse(accepted["job_id"].as_str().unwrap_or_default())?;
    // The queue of the kind's lane, as deployed (the embedded backend has both).
    let (queue, core) = b
        .worker_in(
            registry.lane(&kind),
            registry,
            WorkerSettings::from_config(&b.config),
        )
        .context("the embedded backend has both queues")?;
    let worker = EventSource::new(queue, Arc::new(core), b.clock.clone(), 1)
        .with_wait(Duration::from_millis(200))
        .with_timeout(b.config.worker_timeout);
    let mut shown = None;
    let mut waiting = None;
    // Timers (waitpoint timeouts, `ctx.sleep`) fire through the sweep, as in `jobctl dev`.
    let sweeper = b.sweeper();
    let job = loop {
        worker.poll_once().await.map_err(|e| anyhow::anyhow!(e))?;
        sweeper
            .sweep(jobkit::sweep::SWEEP_AFTER)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let job = b
            .store
            .get(&id)
            .await
            .map_err(|e| anyhow::anyhow!(e))?
            .context("the job vanished")?;
        if job.progress != shown {
            if let Some(p) = &job.progress {
                eprintln!("jobctl run: {}% {}", p.percent, p.message);
            }
            shown = job.progress.clone();
        }
        if job.waiting_for != waiting {
            if let Some(w) = &job.waiting_for {
                eprintln!(
                    "jobctl run: waiting for {} (until {}; nothing completes it here but its timeout)",
                    w.name,
                    jobkit::api::rfc3339(w.expires_at)
                );
            }
            waiting = job.waiting_for.clone();
        }
        if job.status.is_terminal() {
            break job;
        }
    };
    let view = JobView::at(job, b.clock.now());
    let success = view.summary.status == jobkit::JobStatus::Completed;
    let s = &view.summary;
    let out = Outcome {
        job_id: &s.job_id,
        kind: &s.kind,
        success,
        result: view.result.as_ref(),
        pathway: s.pathway.as_deref(),
        next: &s.next,
        error: s.error.as_ref(),
        // A task spec's own ids go back with its completion, as a queue runner reports them.
        task: (ids.0.is_some() || ids.1.is_some()).then_some(TaskIds {
            task_uuid: ids.0,
            stage_uuid: ids.1,
        }),
    };
    println!("{}", serde_json::to_string(&out)?);
    Ok(success)
}

/// `jobctl run`'s document. Serialized straight to text, so the result keeps every digit (a
/// `serde_json::Value` would turn a number beyond f64 into an approximation).
#[derive(Serialize)]
struct Outcome<'a> {
    job_id: &'a jobkit::JobId,
    kind: &'a str,
    success: bool,
    result: Option<&'a Json>,
    pathway: Option<&'a str>,
    next: &'a [jobkit::JobId],
    error: Option<&'a jobkit::job::ErrorInfo>,
    #[serde(flatten)]
    task: Option<TaskIds>,
}

#[derive(Serialize)]
struct TaskIds {
    task_uuid: Option<String>,
    stage_uuid: Option<String>,
}

/// Options of `jobctl worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// Jobs run at once (receives of up to 10 messages, as many in flight as this).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub concurrency: u64,
    /// On SIGTERM, how long running jobs may take to finish before they are released to other
    /// workers.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout: u64,
    /// How long one receive waits for messages (SQS long polling, 1 to 20 s). On SIGTERM the worker
    /// releases its running jobs only once every open receive has returned, so this also bounds that
    /// wait.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=20))]
    pub poll_wait: u64,
    /// Serve `GET /healthz` here (200 while working, 503 while draining), for container health checks.
    #[arg(long)]
    pub healthz: Option<SocketAddr>,
    /// Consume the container queue (JOBKIT_CONTAINER_QUEUE_URL): the container-only kinds, which the
    /// worker function never runs. Without it, the jobs queue.
    #[arg(long)]
    pub container: bool,
    /// SQS and DynamoDB at this endpoint (an emulator) instead of AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
}

/// Runs the worker until SIGTERM or Ctrl-C, then drains.
pub async fn worker(args: WorkerArgs, registry: HandlerRegistry) -> anyhow::Result<()> {
    let config = Config::from_env().context("set JOBKIT_TABLE and JOBKIT_QUEUE_URL")?;
    let sdk = jobkit::aws::sdk_config(args.endpoint_url.as_deref()).await;
    let b = Backend::aws(&sdk, config)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    registry.check_limits(&b.config.limits)?;
    let (release_tx, release_rx) = watch::channel(false);
    let (lane, queue_url) = if args.container {
        let url = b.config.container_queue_url.clone();
        (
            Lane::Container,
            url.context("--container needs JOBKIT_CONTAINER_QUEUE_URL")?,
        )
    } else {
        (Lane::Lambda, b.config.queue_url.clone())
    };
    let (queue, core) = b
        .worker_in(lane, registry, WorkerSettings::from_config(&b.config))
        .context("the backend has the queue its configuration names")?;
    let busy = Arc::new(Busy::new(core.with_stop(release_rx)));
    if let Some(agent) = std::env::var("ECS_AGENT_URI")
        .ok()
        .filter(|u| !u.is_empty())
    {
        tokio::spawn(protect_while_busy(agent, busy.clone()));
    }
    // No deadline: a handler may run for hours; long polls (20 s by default, like Lambda's poller).
    let source = Arc::new(
        EventSource::new(queue, busy, b.clock.clone(), 10)
            .with_wait(Duration::from_secs(args.poll_wait)),
    );
    let draining = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.healthz {
        let draining = draining.clone();
        let app = axum::Router::new().route(
            "/healthz",
            axum::routing::get(move || {
                let draining = draining.load(Ordering::Relaxed);
                async move {
                    if draining {
                        (http::StatusCode::SERVICE_UNAVAILABLE, "draining")
                    } else {
                        (http::StatusCode::OK, "ok")
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let (term_tx, term_rx) = watch::channel(false);
    tokio::spawn(async move {
        terminated().await;
        let _ = term_tx.send(true);
    });
    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|t| *t).await;
    };
    tracing::info!(concurrency = args.concurrency, queue = %queue_url, "jobctl worker: started");
    let pollers = source.start(args.concurrency as usize);
    wait(term_rx).await;
    draining.store(true, Ordering::Relaxed);
    pollers.stop_receiving();
    tracing::info!(
        drain_timeout_s = args.drain_timeout,
        "jobctl worker: stopping; running jobs may finish"
    );
    if tokio::time::timeout(Duration::from_secs(args.drain_timeout), pollers.finished())
        .await
        .is_err()
    {
        // Released only once no long poll is open (at most --poll-wait): an open poll would receive
        // the released messages and count them towards the DLQ.
        tracing::warn!("jobctl worker: drain time is up; releasing the jobs still running");
        pollers.receives_closed().await;
        let _ = release_tx.send(true);
        pollers.finished().await;
    }
    tracing::info!("jobctl worker: stopped");
    Ok(())
}

/// `jobctl healthcheck URL`: whether `url` answers 2xx within 3 s.
pub async fn healthcheck(url: &str) -> anyhow::Result<bool> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    Ok(http
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success()))
}

/// A consumer that counts the batches it holds, so the task can ask not to be scaled in meanwhile.
struct Busy<C> {
    inner: C,
    holding: watch::Sender<usize>,
}

impl<C> Busy<C> {
    fn new(inner: C) -> Self {
        Self {
            inner,
            holding: watch::channel(0).0,
        }
    }
}

#[async_trait::async_trait]
impl<C: Consumer> Consumer for Busy<C> {
    type Report = C::Report;

    async fn consume(&self, batch: &[Delivery], inv: &Invocation) -> Self::Report {
        self.holding.send_modify(|n| *n += 1);
        let report = self.inner.consume(batch, inv).await;
        self.holding.send_modify(|n| *n -= 1);
        report
    }
}

/// How long one task-protection request protects the task; renewed at half of it while jobs run.
const PROTECTION_MINUTES: u64 = 60;

/// ECS scale-in protection while the task holds jobs: the ECS agent's task-protection endpoint
/// (`$ECS_AGENT_URI/task-protection/v1/state`) is set when the first batch arrives and cleared when the
/// last ends, so a scale-in never stops a task in the middle of a job (SIGTERM would release it, but
/// its work so far would be lost). Best effort: a failed call is logged and tried again at the next
/// change or renewal.
async fn protect_while_busy<C: Consumer>(agent: String, busy: Arc<Busy<C>>) {
    let http = reqwest::Client::new();
    let url = format!("{}/task-protection/v1/state", agent.trim_end_matches('/'));
    let mut holding = busy.holding.subscribe();
    let mut protected = false;
    loop {
        let want = *holding.borrow_and_update() > 0;
        // Set while jobs are held (renewed), cleared once when they are not.
        if want || protected {
            let body = if want {
                json!({"ProtectionEnabled": true, "ExpiresInMinutes": PROTECTION_MINUTES})
            } else {
                json!({"ProtectionEnabled": false})
            };
            match http.put(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => protected = want,
                Ok(r) => tracing::warn!(status = r.status().as_u16(), "task protection refused"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not reach the ECS agent for task protection")
                }
            }
        }
        let renew = Duration::from_secs(PROTECTION_MINUTES * 60 / 2);
        tokio::select! {
            changed = holding.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(renew), if protected => {}
        }
    }
}

/// SIGTERM (what containers get) or Ctrl-C.
async fn terminated() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler installs");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
