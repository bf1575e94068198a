//! `jobctl dev`: the whole kit in one process. An HTTP server stands in for API Gateway (and its
//! authorizer), an event source stands in for Lambda's SQS polling, and the same `jobkit::api` and
//! `jobkit::worker` code the deployed functions run answers and works.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::{Body as AxumBody, to_bytes};
use axum::extract::State;
use axum::response::Response as AxumResponse;
use jobkit::api::{Api, ApiSettings};
use jobkit::aws::{AwsBackend, Provisioned, provision, sdk_config};
use jobkit::local::{EventSource, gateway_request};
use jobkit::queue::{JobQueue, MemoryQueue};
use jobkit::store::{JobStore, MemoryStore};
use jobkit::template::{TEMPLATE_YAML, parse};
use jobkit::worker::{Worker, WorkerSettings};
use jobkit::{Config, HandlerRegistry};

/// Options of `jobctl dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Address to serve the API on (loopback by default: this is a development server).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Use SQS and DynamoDB at this endpoint (LocalStack, ministack) instead of the embedded backend.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    /// With --endpoint-url: create the queues and table from template.yaml first (named PREFIX-LogicalId).
    /// Without it, JOBKIT_TABLE and JOBKIT_QUEUE_URL name existing resources.
    #[arg(long)]
    pub bootstrap: bool,
    /// Name prefix for --bootstrap.
    #[arg(long, default_value = "jobkit-dev")]
    pub prefix: String,
    /// Messages per worker invocation, as the event source mapping's BatchSize.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub batch_size: u32,
    /// Concurrent worker invocations, as the mapping's MaximumConcurrency.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=100))]
    pub concurrency: u64,
    /// Dev mode identity: take the caller's user id from an `X-User-Id` header (as if a JWT authorizer
    /// had verified it), to try per-user isolation locally. Without it every caller is `local`.
    #[arg(long)]
    pub user_header: bool,
}

/// The largest request body read; the API itself rejects smaller oversize bodies with its own error.
const MAX_HTTP_BODY: usize = 4 * 1024 * 1024;

struct Backend {
    store: Arc<dyn JobStore>,
    queue: Arc<dyn JobQueue>,
    queue_arn: String,
    config: Config,
    description: String,
}

async fn backend(args: &DevArgs) -> anyhow::Result<Backend> {
    let spec = parse(TEMPLATE_YAML, &BTreeMap::new())?;
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
        let dlq = Arc::new(MemoryQueue::new(Duration::from_secs(30)));
        let queue = MemoryQueue::new(Duration::from_secs(visibility))
            .with_dead_letter_queue(dlq, max_receives);
        let config = Provisioned {
            tables: [("JobsTable".into(), "memory".into())].into(),
            queue_urls: [("JobsQueue".into(), "memory".into())].into(),
            ..Default::default()
        }
        .config(&spec)
        .map_err(|e| anyhow::anyhow!(e))?;
        return Ok(Backend {
            store: Arc::new(MemoryStore::new()),
            queue: Arc::new(queue),
            queue_arn: "arn:aws:sqs:local:000000000000:jobs".into(),
            config,
            description: "embedded in-memory store and queue".into(),
        });
    };
    let sdk = sdk_config(Some(endpoint)).await;
    let config = if args.bootstrap {
        let made = provision(&sdk, &spec, &args.prefix)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        made.config(&spec).map_err(|e| anyhow::anyhow!(e))?
    } else {
        Config::from_env().context("without --bootstrap, set JOBKIT_TABLE and JOBKIT_QUEUE_URL")?
    };
    let aws = AwsBackend::new(&sdk, &config);
    let queue_arn = aws.queue.arn().await?;
    Ok(Backend {
        store: Arc::new(aws.store),
        queue: Arc::new(aws.queue),
        queue_arn,
        description: format!("SQS and DynamoDB at {endpoint} (table {})", config.table),
        config,
    })
}

pub async fn run(args: DevArgs, registry: HandlerRegistry) -> anyhow::Result<()> {
    let b = backend(&args).await?;
    let settings = ApiSettings {
        dev_mode: true,
        ..ApiSettings::from_config(&b.config)
    };
    let api = Arc::new(Api::new(
        b.store.clone(),
        b.queue.clone(),
        registry.clone(),
        settings,
    ));
    let worker = Worker::new(
        b.store,
        b.queue.clone(),
        registry,
        WorkerSettings::from_config(&b.config),
    );
    let events = Arc::new(EventSource::new(
        b.queue,
        b.queue_arn,
        Arc::new(worker),
        args.batch_size,
    ));

    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let gateway_state = Gateway {
        api,
        user_header: args.user_header,
    };
    let app = axum::Router::new()
        .fallback(gateway)
        .with_state(Arc::new(gateway_state));
    eprintln!(
        "jobctl dev: API on http://{} ({}); worker: batch size {}, concurrency {}. Ctrl-C stops.",
        listener.local_addr()?,
        b.description,
        args.batch_size,
        args.concurrency
    );
    let poller = tokio::spawn(events.run(args.concurrency as usize, shutdown_signal()));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    poller.abort();
    Ok(())
}

async fn shutdown_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

struct Gateway {
    api: Arc<Api>,
    user_header: bool,
}

/// The user every local caller is, unless `--user-header` lets `X-User-Id` say otherwise.
const LOCAL_USER: &str = "local";

/// API Gateway's part: HTTP request in, the function's answer out, with the authorizer's verified
/// identity played by `LOCAL_USER` or, with `--user-header`, by `X-User-Id`. This exists only in this
/// local server: the deployed functions read identity from the authorizer alone.
async fn gateway(State(gw): State<Arc<Gateway>>, req: http::Request<AxumBody>) -> AxumResponse {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, MAX_HTTP_BODY).await else {
        return http::Response::builder()
            .status(413)
            .header("content-type", "application/json")
            .body(AxumBody::from(
                r#"{"error":{"code":"payload_too_large","message":"request body too large"}}"#,
            ))
            .expect("static response");
    };
    let header = parts.headers.get("x-user-id").filter(|_| gw.user_header);
    let user = match header.map(|v| v.to_str()) {
        None => LOCAL_USER,
        Some(Ok(u)) if (1..=128).contains(&u.len()) && u.bytes().all(|b| b.is_ascii_graphic()) => u,
        Some(_) => {
            return http::Response::builder()
                .status(401)
                .header("content-type", "application/json")
                .body(AxumBody::from(
                    r#"{"error":{"code":"unauthenticated","message":"X-User-Id must be 1-128 visible ASCII characters"}}"#,
                ))
                .expect("static response");
        }
    };
    let resp = gw
        .api
        .handle(gateway_request(&parts, &bytes, Some(user)))
        .await;
    let (parts, body) = resp.into_parts();
    http::Response::from_parts(parts, AxumBody::from(body.to_vec()))
}
