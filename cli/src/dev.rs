//! `jobctl dev`: the whole kit in one process, as deployed: the API's router served by [`crate::serve`]
//! (with a stand-in for the authorizer), and Lambda's SQS event source feeding the worker core, with the
//! worker function's concurrency and timeout. The same `jobkit` code the functions run answers and works.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use jobkit::api::{self, ApiSettings, StreamSettings};
use jobkit::aws::{Provisioned, provision, sdk_config};
use jobkit::clock::SystemClock;
use jobkit::config::SecretSource;
use jobkit::local::EventSource;
use jobkit::store::MemoryStore;
use jobkit::template::{StackSpec, TEMPLATE_YAML, parse};
use jobkit::webhook::{DeliverySettings, Schedule, Secrets};
use jobkit::worker::WorkerSettings;
use jobkit::{Backend, Config, HandlerRegistry, Lane};

use crate::ops::{History, Ops};
use tokio::sync::watch;

/// Options of `jobctl dev`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Settings come from template.yaml's defaults, overridden by the same environment variables the \
functions read: JOBKIT_MAX_ATTEMPTS, JOBKIT_JOB_TTL_DAYS, JOBKIT_RETRY_BASE_SECS, JOBKIT_RETRY_MAX_SECS, \
JOBKIT_WORKER_CONCURRENCY, JOBKIT_MAX_QUEUE_DEPTH, JOBKIT_MAX_IN_FLIGHT_PER_USER, JOBKIT_MAX_TOKENS_PER_USER_PER_DAY, \
JOBKIT_WORKER_TIMEOUT_SECS \
(each invocation's deadline: handlers yield and continue as on Lambda), JOBKIT_SIGNING_SECRET, \
JOBKIT_FAIR_QUEUES (false: deliver in send order rather than fairly across owners).

Webhooks: jobs submitted with a callback_url (http or https; loopback allowed here) get their signed \
event from an in-process delivery loop, on the deployed schedule compressed to seconds: attempts after \
0, 1, 2, 3, 5, 8, 10 and 10 s instead of 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h. Events are signed \
with JOBKIT_WEBHOOK_SECRET (whsec_..., as receivers configure it), or with a secret generated at start \
and printed in the banner.")]
pub struct DevArgs {
    /// Address to serve the API on (loopback by default: this is a development server).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Use SQS and DynamoDB at this endpoint (LocalStack, ministack) instead of the embedded backend.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// With --endpoint-url: create the queues and table from template.yaml first (named PREFIX-LogicalId).
    /// Without it, JOBKIT_TABLE and JOBKIT_QUEUE_URL name existing resources.
    #[arg(long, requires = "endpoint_url")]
    pub bootstrap: bool,
    /// Name prefix for --bootstrap.
    #[arg(long, default_value = PREFIX)]
    pub prefix: String,
    /// Messages per worker invocation (the event source's BatchSize; default: the template's).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub batch_size: Option<u32>,
    /// Concurrent worker invocations (the event source's MaximumConcurrency; default: the template's).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub concurrency: Option<u64>,
    /// Run `agent` jobs on this OpenAI-compatible endpoint (Ollama: http://127.0.0.1:11434/v1; vLLM,
    /// llama.cpp's server), with no AWS account. Without it there is no `agent` kind.
    #[arg(long, env = "JOBKIT_MODEL_URL")]
    pub model_url: Option<String>,
    /// Print a line of the kit's metrics (throughput, failures, queue wait) every few seconds: the same
    /// recorder the functions flush to CloudWatch.
    #[arg(long)]
    pub metrics: bool,
    /// Dev mode identity: take the caller's user id from an `X-User-Id` header (as if a JWT authorizer
    /// had verified it), to try per-user isolation locally. Without it every caller is `local`.
    #[arg(long)]
    pub user_header: bool,
    /// Let pages from this origin (scheme://host[:port], or * for any) call the API and open job
    /// streams from a browser: CORS, as the AllowedOrigins parameter sets it up deployed. Repeatable.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<api::cors::AllowedOrigin>,
}

/// The resources' name prefix of `--bootstrap` and `jobctl bootstrap`: one default, so both find the
/// same queues and table.
pub const PREFIX: &str = "jobkit-local";

/// How long Ctrl-C waits for requests and batches under way before giving their jobs back and exiting.
const GRACE: Duration = Duration::from_secs(3);

/// The configuration the functions would get: template.yaml's defaults, overridden by `JOBKIT_*`.
fn config(spec: &StackSpec, made: &Provisioned) -> anyhow::Result<Config> {
    made.config_with(spec, |k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .map_err(|e| anyhow::anyhow!(e))
}

fn template_number(spec: &StackSpec, name: &str, fallback: u64) -> u64 {
    spec.parameters
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(fallback)
}

/// The backend, and where the operator endpoints read throughput from: the embedded store's records.
/// On an emulator there is nowhere: this process's workers publish no metrics to CloudWatch (deployed
/// functions do, which is what `jobctl console` reads), and DynamoDB has no query for finished jobs.
async fn backend(args: &DevArgs, spec: &StackSpec) -> anyhow::Result<(Backend, History)> {
    let Some(endpoint) = &args.endpoint_url else {
        // Embedded: the queue gets the template's visibility timeout and redrive policy.
        let q = spec
            .queue("JobsQueue")
            .context("template.yaml has no JobsQueue")?;
        let visibility = q
            .attributes
            .get("VisibilityTimeout")
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let max_receives = q.redrive.as_ref().map_or(5, |r| r.max_receive_count);
        let made = Provisioned {
            tables: [("JobsTable".into(), "memory".into())].into(),
            queue_urls: [("JobsQueue".into(), "memory".into())].into(),
            ..Default::default()
        };
        let mut b = Backend::embedded(
            config(spec, &made)?,
            Duration::from_secs(visibility),
            max_receives,
            Arc::new(SystemClock),
        );
        // Its own handle on the store, for the throughput the operator endpoints read from records.
        let store = Arc::new(MemoryStore::new());
        b.store = store.clone();
        return Ok((b, History::Records(store)));
    };
    let sdk = sdk_config(Some(endpoint)).await;
    let config = if args.bootstrap {
        let made = provision(&sdk, spec, &args.prefix)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        config(spec, &made)?
    } else {
        Config::from_env().context("without --bootstrap, set JOBKIT_TABLE and JOBKIT_QUEUE_URL")?
    };
    let history = History::Unavailable(
        "throughput is counted from the embedded store's records: run jobctl dev without \
         --endpoint-url (jobctl console reads a deployed stack's from CloudWatch)"
            .into(),
    );
    let mut b = Backend::aws(&sdk, config)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    b.description = format!("{} at {endpoint}", b.description);
    Ok((b, history))
}

/// How often `--metrics` prints.
const METRICS_EVERY: Duration = Duration::from_secs(5);

/// `jobctl dev`'s own routes: `GET /_dev/stats`, the queues' backlog for `jobctl stats` (the embedded
/// queues live in this process).
fn dev_routes(b: &Backend) -> axum::Router {
    let b = b.clone();
    axum::Router::new().route(
        "/_dev/stats",
        axum::routing::get(move || {
            let b = b.clone();
            async move {
                let read = |q: Option<Arc<dyn jobkit::queue::JobQueue>>| async move {
                    match q {
                        Some(q) => q.stats().await.ok(),
                        None => None,
                    }
                };
                axum::Json(crate::stats::Queues {
                    jobs: b.queue.stats().await.unwrap_or_default(),
                    dead_letters: read(b.dead_letter_queue.clone()).await,
                    deliveries: read(b.deliveries.clone()).await,
                })
            }
        }),
    )
}

/// Runs the sweep every `every`, its due task first: waitpoint timeouts, sleeps and delayed starts fire
/// within it (deployed, the sweep function's due task runs every minute), and lost messages are
/// repaired as they are there.
async fn sweep_every(sweeper: jobkit::sweep::Sweeper, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Err(e) = sweeper.sweep(jobkit::sweep::SWEEP_AFTER).await {
            tracing::warn!(error = %e, "sweep failed");
        }
    }
}

/// Installs the metrics recorder and prints a summary of each interval.
async fn print_metrics(every: Duration) {
    let Ok(collector) = metrics_cloudwatch_embedded::Builder::new()
        .cloudwatch_namespace(jobkit::observe::NAMESPACE_DEFAULT)
        .with_dimension("Function", "dev")
        .init()
    else {
        eprintln!("jobctl dev: a metrics recorder is already installed; --metrics is off");
        return;
    };
    jobkit::observe::describe();
    loop {
        tokio::time::sleep(every).await;
        let mut out = Vec::new();
        if collector.flush(&mut out).is_ok() {
            let summary = crate::stats::summarize_emf(&String::from_utf8_lossy(&out));
            eprintln!("jobctl dev: last {} s: {summary}", every.as_secs());
        }
    }
}

pub async fn run(args: DevArgs, registry: HandlerRegistry) -> anyhow::Result<()> {
    let spec = parse(TEMPLATE_YAML, &Default::default())?;
    let mut kinds = registry.kinds().collect::<Vec<_>>().join(", ");
    if !registry.contains("agent") {
        kinds.push_str(" (agent: with --model-url)");
    }
    let (mut b, history) = backend(&args, &spec).await?;
    let sdk = match &args.endpoint_url {
        Some(endpoint) => Some(sdk_config(Some(endpoint)).await),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    // Job streams and waitpoint links are served here too: `events_url`s and `complete_url`s point at
    // this address.
    b.config.events_url = Some(format!("http://{}", listener.local_addr()?));
    b.config.api_url = b.config.events_url.clone();
    let batch_size = args
        .batch_size
        .unwrap_or(template_number(&spec, "WorkerBatchSize", 10) as u32);
    let concurrency =
        args.concurrency
            .unwrap_or(template_number(&spec, "WorkerMaxConcurrency", 10));
    let settings = ApiSettings {
        dev_mode: true,
        ..ApiSettings::from_config(&b.config)
    };
    registry.check_limits(&b.config.limits)?;
    let submit = Arc::new(b.submit_api(registry.clone(), settings));
    let status = Arc::new(b.status_api());
    let user_header = args.user_header;
    let waitpoints = Arc::new(b.waitpoint_api());
    let app = api::router(submit, status, waitpoints)
        .layer(axum::middleware::from_fn(move |req, next| {
            api::dev_identity(user_header, req, next)
        }))
        .merge(api::events_routes(Arc::new(
            b.events_api(StreamSettings::default()),
        )))
        .merge(dev_routes(&b))
        // Operator endpoints over this process's backend: unauthenticated, so only ever on loopback
        // (the default --addr; see crate::ops).
        .merge(crate::ops::router(Ok(Ops::from_backend(&b, history, sdk))))
        .merge(crate::console::assets::routes());
    // Outermost, as API Gateway's CORS is: preflights are answered before the stand-in authorizer.
    let app = if args.cors_origins.is_empty() {
        app
    } else {
        let dev_headers = [http::HeaderName::from_static("x-user-id")];
        app.layer(api::cors::layer(&args.cors_origins, &dev_headers))
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    // Told to give running jobs back once stopping, after every receive has ended (see below).
    let (release_tx, release_rx) = watch::channel(false);
    // Container-only kinds run in-process too, like `jobctl worker --container`: no deadline.
    let containers = b
        .worker_in(
            Lane::Container,
            registry.clone(),
            WorkerSettings::from_config(&b.config),
        )
        .map(|(queue, worker)| {
            let worker = Arc::new(worker.with_stop(release_rx.clone()));
            Arc::new(EventSource::new(queue, worker, b.clock.clone(), batch_size))
        });
    let worker = b
        .worker(registry, WorkerSettings::from_config(&b.config))
        .with_stop(release_rx);
    let events = Arc::new(
        EventSource::new(
            b.queue.clone(),
            Arc::new(worker),
            b.clock.clone(),
            batch_size,
        )
        .with_timeout(b.config.worker_timeout),
    );
    // Webhooks: the delivery function's core on the deliveries queue, on a compressed schedule.
    let (secret, generated) = match b.config.webhook_secret.clone() {
        Some(SecretSource::Value(v)) => (v, false),
        _ => (Secrets::generate(), true),
    };
    let secrets = Secrets::parse(&secret).context("JOBKIT_WEBHOOK_SECRET")?;
    let delivery = DeliverySettings {
        schedule: Schedule::compressed(),
        allow_loopback: true,
        ..DeliverySettings::default()
    };
    // As many deliveries at once as the delivery function's event source runs (MaximumConcurrency
    // invocations of BatchSize each), but each on its own: a receiver that hangs holds up neither its
    // batch-mates' retries nor the next events (deployed, a batch's invocation ends with its slowest).
    let deliver = spec
        .event_sources
        .get("DeliverFunction")
        .context("template.yaml's DeliverFunction has no SQS event")?;
    let at_once = deliver.batch_size * deliver.maximum_concurrency.unwrap_or(10);
    let deliveries = match (b.deliverer(secrets, delivery), &b.deliveries) {
        (Some(deliverer), Some(queue)) => Some(Arc::new(
            EventSource::new(
                queue.clone(),
                Arc::new(deliverer),
                b.clock.clone(),
                deliver.batch_size,
            )
            .with_timeout(Duration::from_secs(60))
            .with_independent_deliveries(at_once as usize),
        )),
        _ => None,
    };
    eprintln!(
        "jobctl dev: API on http://{} ({}); worker: batch size {batch_size}, concurrency {concurrency}, \
         timeout {} s. Ctrl-C stops.",
        listener.local_addr()?,
        b.description,
        b.config.worker_timeout.as_secs(),
    );
    eprintln!("jobctl dev: kinds {kinds}");
    eprintln!(
        "jobctl dev: console on http://{}/ ({} KiB)",
        listener.local_addr()?,
        crate::console::assets::weight().div_ceil(1024)
    );
    if !args.cors_origins.is_empty() {
        let origins: Vec<String> = args.cors_origins.iter().map(|o| o.to_string()).collect();
        eprintln!(
            "jobctl dev: CORS: pages from {} may call it",
            origins.join(", ")
        );
    }
    match (&deliveries, generated) {
        (None, _) => {
            eprintln!("jobctl dev: webhooks off (no deliveries queue): callback_url is refused")
        }
        (Some(_), true) => eprintln!(
            "jobctl dev: webhooks signed with {secret} (generated; set JOBKIT_WEBHOOK_SECRET to choose)"
        ),
        (Some(_), false) => eprintln!("jobctl dev: webhooks signed with JOBKIT_WEBHOOK_SECRET"),
    }
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let pollers: Vec<_> = [
        Some(events.start(concurrency as usize)),
        containers.map(|c| c.start(concurrency as usize)),
        deliveries.as_ref().map(|d| d.clone().start(4)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if args.metrics {
        tokio::spawn(print_metrics(METRICS_EVERY));
    }
    tokio::spawn(sweep_every(b.sweeper(), Duration::from_secs(1)));
    let server = tokio::spawn(crate::serve::serve(listener, app, stopped(stop_rx)));
    let _ = tokio::signal::ctrl_c().await;
    eprintln!(
        "jobctl dev: stopping (in-flight work has {} s)",
        GRACE.as_secs()
    );
    let _ = stop_tx.send(true);
    for p in &pollers {
        p.stop_receiving();
    }
    // The worker gives its running jobs back only once no receive is open (an open long poll would
    // take them and count the receive: enough of those and a job's message goes to the DLQ). Then
    // requests and batches under way get the grace period; past it, open connections are dropped.
    let _ = tokio::time::timeout(GRACE, async {
        for p in &pollers {
            p.receives_closed().await; // once closed, it stays closed: one after another is all
        }
    })
    .await;
    let _ = release_tx.send(true);
    let _ = tokio::time::timeout(GRACE, async {
        for p in &pollers {
            p.finished().await;
        }
        let _ = server.await;
    })
    .await;
    Ok(())
}
