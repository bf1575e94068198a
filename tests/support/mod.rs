//! Test harness: API Gateway requests from fixtures, and [`TestEnv`], a fresh copy of the stack's queues
//! and table (from template.yaml) on the emulator, reached through the real AWS SDK.
#![allow(dead_code)] // each test binary uses part of the harness

pub mod proxy;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use jobkit::api::{Api, ApiSettings};
use jobkit::aws::{Provisioned, provision, sdk_config};
use jobkit::local::EventSource;
use jobkit::queue::{JobQueue, MemoryQueue, QueueError, ReceivedMessage, SqsQueue};
use jobkit::store::{DynamoStore, JobStore, MemoryStore};
use jobkit::template::{StackSpec, TEMPLATE_YAML, parse};
use jobkit::worker::{Backoff, BatchResult, Worker, WorkerSettings};
use jobkit::{Config, HandlerRegistry, Job, JobId, JobStatus};
use lambda_http::{Body, Request, Response};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------- API Gateway requests from fixtures ----------

fn fixture(name: &str) -> Value {
    let path = repo_root().join("tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture exists"))
        .expect("fixture is JSON")
}

fn to_request(event: Value) -> Request {
    lambda_http::request::from_str(&event.to_string()).expect("a valid API Gateway v2 event")
}

/// `POST /jobs` with `body` as user `user`, with a JSON content type.
pub fn post_jobs(user: &str, body: &str) -> Request {
    post_jobs_with(user, body, Some("application/json"))
}

/// `POST /jobs` with any content type (or none).
pub fn post_jobs_with(user: &str, body: &str, content_type: Option<&str>) -> Request {
    let mut e = fixture("apigw_v2_post_jobs.json");
    e["body"] = Value::from(body);
    e["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = Value::from(user);
    match content_type {
        Some(ct) => e["headers"]["content-type"] = Value::from(ct),
        None => {
            e["headers"].as_object_mut().unwrap().remove("content-type");
        }
    }
    to_request(e)
}

/// `GET /jobs/{id}` as user `user`.
pub fn get_job(user: &str, id: &str) -> Request {
    request("GET", &format!("/jobs/{id}"), user)
}

/// Any method and path, as user `user`.
pub fn request(method: &str, path: &str, user: &str) -> Request {
    let mut e = fixture("apigw_v2_get_job.json");
    e["rawPath"] = Value::from(path);
    e["requestContext"]["http"]["path"] = Value::from(path);
    e["requestContext"]["http"]["method"] = Value::from(method);
    e["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = Value::from(user);
    e.as_object_mut().unwrap().remove("pathParameters");
    to_request(e)
}

/// `GET /jobs?{query}` as user `user` (`query` already URL-encoded).
pub fn list_jobs(user: &str, query: &str) -> Request {
    let mut e = fixture("apigw_v2_get_job.json");
    e["rawPath"] = Value::from("/jobs");
    e["requestContext"]["http"]["path"] = Value::from("/jobs");
    e["requestContext"]["authorizer"]["jwt"]["claims"]["sub"] = Value::from(user);
    e["rawQueryString"] = Value::from(query);
    let mut params = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(k.to_owned(), Value::from(v));
    }
    e["queryStringParameters"] = Value::Object(params);
    e.as_object_mut().unwrap().remove("pathParameters");
    to_request(e)
}

/// A request that reached the function with no authorizer identity (a route left without one).
pub fn unauthenticated(method: &str, path: &str) -> Request {
    let mut e = fixture("apigw_v2_post_jobs.json");
    e["rawPath"] = Value::from(path);
    e["requestContext"]["http"]["path"] = Value::from(path);
    e["requestContext"]["http"]["method"] = Value::from(method);
    e["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("authorizer");
    to_request(e)
}

/// Status and JSON body of a response.
pub fn json(resp: &Response<Body>) -> (u16, Value) {
    let body = match resp.body() {
        Body::Text(s) => s.clone(),
        Body::Binary(b) => String::from_utf8(b.clone()).unwrap(),
        Body::Empty => String::new(),
        _ => unreachable!("no other body kinds are produced"),
    };
    (
        resp.status().as_u16(),
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

/// Asserts an error response: status, `error.code`, and a non-empty message.
pub fn assert_error(resp: &Response<Body>, status: u16, code: &str) {
    let (got, body) = json(resp);
    assert_eq!(got, status, "status for {code}: {body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

/// The built-ins plus `count`: an echo that counts its runs, to prove a handler ran exactly as often as
/// expected.
pub fn counting_registry(runs: Arc<std::sync::atomic::AtomicU32>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register_fn("count", move |input, _ctx| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(input.into())
        }
    })
    .unwrap();
    r
}

/// The ports a suite runs on, the queue's redrive setting, and the configuration a stack on them starts
/// from. Built by [`memory`] (the embedded backend) or [`emulator`] (a fresh copy of the stack on it).
pub struct Backends {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub dlq: Arc<dyn JobQueue>,
    pub max_receives: u32,
    pub queue_arn: String,
    pub config: Config,
    /// Keeps the emulator stack (if any) alive as long as the ports.
    _env: Option<TestEnv>,
}

/// The embedded store and queue, with the queue's DLQ after 5 receives.
pub async fn memory() -> Backends {
    let dlq = Arc::new(MemoryQueue::new(Duration::from_secs(30)));
    let queue =
        Arc::new(MemoryQueue::new(Duration::from_secs(30)).with_dead_letter_queue(dlq.clone(), 5));
    let config = Config::from_lookup(|k| match k {
        "JOBKIT_TABLE" | "JOBKIT_QUEUE_URL" => Some("memory".into()),
        _ => None,
    })
    .expect("the resources are set");
    Backends {
        store: Arc::new(MemoryStore::new()),
        queue,
        dlq,
        max_receives: 5,
        queue_arn: "arn:aws:sqs:local:000000000000:jobs".into(),
        config,
        _env: None,
    }
}

/// DynamoDB and SQS on the emulator: a fresh copy of the stack's table and queues.
pub async fn emulator() -> Backends {
    let env = TestEnv::start().await;
    Backends {
        max_receives: env.max_receive_count(),
        store: env.store.clone(),
        queue: env.queue.clone(),
        dlq: env.dlq.clone(),
        queue_arn: env.queue_arn.clone(),
        config: env.config.clone(),
        _env: Some(env),
    }
}

/// Generates, for each named `async fn(Backends)` of the calling file, one test on the embedded backend
/// (`memory()`) and one on the emulator (`emulator()`): the same code holds both to one behaviour.
#[allow(unused_macros)] // not every test binary has two backends
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::memory().await).await })*
        }
        mod on_emulator {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::emulator().await).await })*
        }
    };
}

/// Settings that retry fast: backoff of at most one second.
pub fn fast_settings(max_attempts: u32) -> WorkerSettings {
    WorkerSettings {
        max_attempts,
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(1)),
        concurrency: 10,
        lease: Duration::from_secs(60),
        yield_margin: Duration::from_secs(1),
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------- The emulator ----------

/// The emulator endpoint: `JOBKIT_TEST_ENDPOINT`, else `AWS_ENDPOINT_URL`, else ministack's default port.
pub fn endpoint() -> String {
    std::env::var("JOBKIT_TEST_ENDPOINT")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// Starts the emulator once per test process (the script reuses one that already answers). With
/// `JOBKIT_TEST_ENDPOINT` set, the caller runs the emulator (or LocalStack) and nothing is started.
fn ensure_emulator() {
    static STARTED: OnceLock<()> = OnceLock::new();
    if std::env::var_os("JOBKIT_TEST_ENDPOINT").is_some() {
        return;
    }
    STARTED.get_or_init(|| {
        let port = endpoint()
            .rsplit(':')
            .next()
            .unwrap_or("4566")
            .trim_end_matches('/')
            .to_owned();
        let status = std::process::Command::new("bash")
            .arg(repo_root().join("infra/emulator.sh"))
            .arg("start")
            .env("GATEWAY_PORT", port)
            .status()
            .expect("bash runs infra/emulator.sh");
        assert!(status.success(), "infra/emulator.sh start failed");
    });
}

/// A private copy of the stack on the emulator: queues and table from template.yaml, uniquely named.
pub struct TestEnv {
    pub sdk: aws_config::SdkConfig,
    pub spec: StackSpec,
    pub resources: Provisioned,
    pub config: Config,
    pub store: Arc<DynamoStore>,
    pub queue: Arc<SqsQueue>,
    pub dlq: Arc<SqsQueue>,
    pub queue_arn: String,
}

impl TestEnv {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// With template parameter overrides (beyond the shortest worker timeout, which keeps the queue's
    /// default visibility short).
    pub async fn start_with(overrides: &[(&str, &str)]) -> Self {
        ensure_emulator();
        let sdk = sdk_config(Some(&endpoint())).await;
        let mut overrides: BTreeMap<String, String> = overrides
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        overrides
            .entry("WorkerTimeout".into())
            .or_insert_with(|| "30".into());
        let spec = parse(TEMPLATE_YAML, &overrides).expect("template.yaml parses");
        let prefix = format!(
            "t{}",
            JobId::generate(jobkit::now_millis())
                .as_str()
                .to_lowercase()
        );
        let resources = provision(&sdk, &spec, &prefix)
            .await
            .expect("provisioning on the emulator");
        let config = resources
            .config(&spec)
            .expect("config from the provisioned stack");
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let store = Arc::new(DynamoStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            &config.table,
        ));
        let queue = Arc::new(SqsQueue::new(sqs.clone(), &config.queue_url));
        let dlq = Arc::new(SqsQueue::new(
            sqs,
            config.dlq_url.as_deref().expect("a DLQ"),
        ));
        let queue_arn = resources.queue_arns["JobsQueue"].clone();
        Self {
            sdk,
            spec,
            resources,
            config,
            store,
            queue,
            dlq,
            queue_arn,
        }
    }

    pub fn max_receive_count(&self) -> u32 {
        self.spec
            .queue("JobsQueue")
            .unwrap()
            .redrive
            .as_ref()
            .unwrap()
            .max_receive_count
    }

    pub fn api(&self, registry: HandlerRegistry) -> Api {
        self.api_with_queue(registry, self.queue.clone())
    }

    pub fn api_with_queue(&self, registry: HandlerRegistry, queue: Arc<dyn JobQueue>) -> Api {
        Api::new(
            self.store.clone(),
            queue,
            registry,
            ApiSettings::from_config(&self.config),
        )
    }

    /// A worker behind a local SQS event source on this stack's queue.
    pub fn worker(&self, registry: HandlerRegistry) -> EventSource {
        self.worker_with(registry, fast_settings(self.config.max_attempts))
    }

    pub fn worker_with(&self, registry: HandlerRegistry, settings: WorkerSettings) -> EventSource {
        let worker = Worker::new(self.store.clone(), self.queue.clone(), registry, settings);
        EventSource::new(self.queue.clone(), &self.queue_arn, Arc::new(worker), 10)
    }

    pub async fn job(&self, id: &JobId) -> Job {
        self.store
            .get(id)
            .await
            .expect("store reachable")
            .expect("job exists")
    }

    /// Items in the table (scan count).
    pub async fn item_count(&self) -> i32 {
        aws_sdk_dynamodb::Client::new(&self.sdk)
            .scan()
            .table_name(&self.config.table)
            .select(aws_sdk_dynamodb::types::Select::Count)
            .send()
            .await
            .expect("scan")
            .count
    }

    /// What Lambda's event source does once: receive a batch, invoke the worker with it as an `SqsEvent`,
    /// delete the messages not reported as failed. Returns the messages and the worker's result.
    pub async fn deliver(&self, worker: &EventSource) -> (Vec<ReceivedMessage>, BatchResult) {
        worker.poll_once().await.expect("receive from the queue")
    }

    /// Delivers batches until the job reaches `status`, or panics after `timeout`.
    pub async fn run_until(
        &self,
        worker: &EventSource,
        id: &JobId,
        status: JobStatus,
        timeout: Duration,
    ) -> Job {
        eventually(&format!("job {id} to be {status}"), timeout, async || {
            self.deliver(worker).await;
            let job = self.job(id).await;
            (job.status == status).then_some(job)
        })
        .await
    }

    /// Submits through the API and returns the new job's id.
    pub async fn submit(&self, api: &Api, body: &str) -> JobId {
        let (status, body) = json(&api.handle(post_jobs("alice", body)).await);
        assert_eq!(status, 202, "{body}");
        JobId::parse(body["job_id"].as_str().unwrap()).unwrap()
    }
}

/// Fault injection: a queue whose first `n` sends fail as SQS does when throttling or unreachable (or,
/// `hanging`, never return, as when the process dies mid-call); every other call goes to the real queue.
pub struct FailingSends {
    inner: Arc<dyn JobQueue>,
    failures_left: std::sync::atomic::AtomicU32,
    hang: bool,
}

impl FailingSends {
    pub fn new(inner: Arc<dyn JobQueue>, n: u32) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failures_left: n.into(),
            hang: false,
        })
    }

    pub fn hanging(inner: Arc<dyn JobQueue>, n: u32) -> Arc<Self> {
        Arc::new(Self {
            inner,
            failures_left: n.into(),
            hang: true,
        })
    }
}

#[async_trait::async_trait]
impl JobQueue for FailingSends {
    async fn send(&self, body: &str, delay: Duration) -> Result<String, QueueError> {
        use std::sync::atomic::Ordering::SeqCst;
        if self
            .failures_left
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            if self.hang {
                std::future::pending::<()>().await;
            }
            return Err(QueueError::Unavailable {
                source: "injected send failure".into(),
            });
        }
        self.inner.send(body, delay).await
    }
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        vis: Option<Duration>,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        self.inner.receive(max, wait, vis).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt).await
    }
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.inner.change_visibility(receipt, timeout).await
    }
    async fn depth(&self) -> Result<u64, QueueError> {
        self.inner.depth().await
    }
}
