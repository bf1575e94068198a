//! Test harness: requests to the API's router as the authenticated caller, and the stacks the suites run
//! on: the embedded backend, or [`TestEnv`], a fresh copy of the stack's queues and table (from
//! template.yaml) on the emulator, reached through the real AWS SDK.
#![allow(dead_code)] // each test binary uses part of the harness

pub mod model;
pub mod proxy;
pub mod receiver;
pub mod test_kinds;

pub use test_kinds::test_registry;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use http::{HeaderMap, StatusCode};
use jobkit::api::{self, ApiSettings, Identity};
use jobkit::aws::{Provisioned, provision, sdk_config};
use jobkit::clock::{SharedClock, SystemClock};
use jobkit::local::EventSource;
#[allow(unused_imports)]
pub use jobkit::queue::{
    Delivery, JobQueue, JobSender, MessageVisibility, QueueDepth, QueueError, QueueReceiver,
    SqsQueue,
};
use jobkit::retry::Backoff;
#[allow(unused_imports)]
pub use jobkit::store::{
    CancelSignals, CancelWatch, DynamoStore, JobClaimer, JobInserter, JobLister, JobReader,
    JobScanner, JobWriter, SlotLedger, StepStore,
};
use jobkit::template::{StackSpec, TEMPLATE_YAML, parse};
use jobkit::worker::{BatchResult, WorkerSettings};
use jobkit::{Backend, Config, HandlerRegistry, Job, JobId, JobStatus};
use serde_json::Value;
use tower::ServiceExt;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ---------- requests to the router ----------

/// A request to the API's router.
pub type Request = http::Request<Body>;

/// `POST /jobs` with `body` as user `user`, with a JSON content type.
pub fn post_jobs(user: &str, body: &str) -> Request {
    post_jobs_with(user, body, Some("application/json"))
}

/// `POST /jobs` with any content type (or none).
pub fn post_jobs_with(user: &str, body: &str, content_type: Option<&str>) -> Request {
    let mut b = http::Request::post("/jobs");
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    as_user(b.body(Body::from(body.to_owned())).unwrap(), user)
}

/// A JSON `POST` to `path` as user `user` (e.g. completing a waitpoint, `/jobs/{id}/waitpoints/{name}`).
pub fn complete_req(user: &str, path: &str, body: &str) -> Request {
    as_user(
        http::Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap(),
        user,
    )
}

/// `GET /jobs/{id}` as user `user`.
pub fn get_job(user: &str, id: &str) -> Request {
    request("GET", &format!("/jobs/{id}"), user)
}

/// Any method and path (with its query), as user `user`.
pub fn request(method: &str, path: &str, user: &str) -> Request {
    as_user(
        http::Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap(),
        user,
    )
}

/// `GET /jobs?{query}` as user `user` (`query` already URL-encoded).
pub fn list_jobs(user: &str, query: &str) -> Request {
    request("GET", &format!("/jobs?{query}"), user)
}

/// A request that reached the API with no authenticated caller (a route left without an authorizer).
pub fn unauthenticated(method: &str, path: &str) -> Request {
    let mut r = request(method, path, "nobody");
    r.extensions_mut().remove::<Identity>();
    r
}

/// `req` as sent by `user`, as the authorizer (or `jobctl dev`) would mark it.
pub fn as_user(mut req: Request, user: &str) -> Request {
    req.extensions_mut().insert(Identity(user.to_owned()));
    req
}

/// A whole answer of the router.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn status(&self) -> StatusCode {
        self.status
    }
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

/// The API under test: the router every deployment serves, called in-process.
#[derive(Clone)]
pub struct Api(pub Router);

impl Api {
    pub async fn handle(&self, req: Request) -> Answer {
        let resp = self
            .0
            .clone()
            .oneshot(req)
            .await
            .expect("the router never fails");
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, 64 << 20).await.expect("a body");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// The whole API over `backend`, as `jobctl dev` and the functions build it.
pub fn api_on(backend: &Backend, registry: HandlerRegistry, settings: ApiSettings) -> Api {
    Api(api::router(
        Arc::new(backend.submit_api(registry, settings)),
        Arc::new(backend.status_api()),
        Arc::new(backend.waitpoint_api()),
    ))
}

/// The worker core on `backend`, fed by a local SQS event source (batches of 10), as Lambda would.
pub fn event_source_on(
    backend: &Backend,
    registry: HandlerRegistry,
    settings: WorkerSettings,
) -> EventSource {
    EventSource::new(
        backend.queue.clone(),
        Arc::new(backend.worker(registry, settings)),
        backend.clock.clone(),
        10,
    )
}

/// `backend` with its messages sent through `queue` (fault injection).
pub fn with_queue(backend: &Backend, queue: Arc<dyn JobQueue>) -> Backend {
    let mut b = backend.clone();
    b.queue = queue;
    b
}

/// Status and JSON body of an answer.
pub fn json(resp: &Answer) -> (u16, Value) {
    (
        resp.status.as_u16(),
        serde_json::from_slice(&resp.body).unwrap_or(Value::Null),
    )
}

/// Asserts an error response: status, `error.code`, and a non-empty message.
pub fn assert_error(resp: &Answer, status: u16, code: &str) {
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

/// The test kinds plus `count`: an echo that counts its runs, to prove a handler ran exactly as often as
/// expected.
pub fn counting_registry(runs: Arc<std::sync::atomic::AtomicU32>) -> HandlerRegistry {
    let mut r = test_registry();
    r.register_fn("count", move |input: jobkit::Json, _ctx| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(input)
        }
    })
    .unwrap();
    r
}

/// The ports a suite runs on (a [`Backend`], which it derefs to), the queue's DLQ and redrive setting.
/// Built by [`memory`] (the embedded backend) or [`emulator`] (a fresh copy of the stack on it).
pub struct Backends {
    pub backend: Backend,
    pub dlq: Arc<dyn JobQueue>,
    pub max_receives: u32,
    /// The embedded store itself, for what only a test does to it (deleting a record as TTL would).
    memory_store: Option<Arc<jobkit::store::MemoryStore>>,
    /// Keeps the emulator stack (if any) alive as long as the ports.
    _env: Option<TestEnv>,
}

impl Deref for Backends {
    type Target = Backend;
    fn deref(&self) -> &Backend {
        &self.backend
    }
}

impl Backends {
    /// The API on these ports with `settings`.
    pub fn api_with_settings(&self, registry: HandlerRegistry, settings: ApiSettings) -> Api {
        api_on(&self.backend, registry, settings)
    }

    /// Deletes a job record as DynamoDB's TTL would: nothing else is told.
    pub async fn expire_job(&self, id: &JobId) {
        match (&self.memory_store, &self._env) {
            (Some(m), _) => m.expire(id),
            (None, Some(env)) => {
                aws_sdk_dynamodb::Client::new(&env.sdk)
                    .delete_item()
                    .table_name(&env.config.table)
                    .key(
                        "job_id",
                        aws_sdk_dynamodb::types::AttributeValue::S(id.to_string()),
                    )
                    .send()
                    .await
                    .expect("delete the record");
            }
            (None, None) => unreachable!("a stack is embedded or on the emulator"),
        }
    }

    /// Stores `job` as a version of the kit from before sweep check times wrote it: its storage form
    /// and nothing else (no index key), through the SDK on the emulator.
    pub async fn put_legacy_record(&self, job: &Job) {
        match (&self.memory_store, &self._env) {
            // The embedded store keeps no index entry for a job without a check time.
            (Some(m), _) => m.create(job).await.expect("store the record"),
            (None, Some(env)) => {
                aws_sdk_dynamodb::Client::new(&env.sdk)
                    .put_item()
                    .table_name(&env.config.table)
                    .set_item(Some(
                        serde_dynamo::to_item(job).expect("a job maps to an item"),
                    ))
                    .send()
                    .await
                    .expect("put the record");
            }
            (None, None) => unreachable!("a stack is embedded or on the emulator"),
        }
    }

    /// A worker behind a local SQS event source on these ports.
    pub fn event_source(&self, registry: HandlerRegistry, settings: WorkerSettings) -> EventSource {
        event_source_on(&self.backend, registry, settings)
    }
}

/// The test configuration of a stack whose resources are named `table` and `queue`.
fn test_config(table: &str, queue: &str) -> Config {
    Config::from_lookup(|k| match k {
        "JOBKIT_TABLE" => Some(table.into()),
        "JOBKIT_QUEUE_URL" => Some(queue.into()),
        _ => None,
    })
    .expect("the resources are set")
}

/// The embedded store and queue, with the queue's DLQ after 5 receives.
pub async fn memory() -> Backends {
    memory_on(Arc::new(SystemClock))
}

/// [`memory`] on `clock` (a [`jobkit::clock::TokioClock`] for tests on paused time).
pub fn memory_on(clock: SharedClock) -> Backends {
    let mut backend = Backend::embedded(
        test_config("memory", "memory"),
        Duration::from_secs(30),
        5,
        clock,
    );
    let store = Arc::new(jobkit::store::MemoryStore::new());
    backend.store = store.clone();
    Backends {
        dlq: backend.dead_letter_queue.clone().expect("a DLQ"),
        backend,
        max_receives: 5,
        memory_store: Some(store),
        _env: None,
    }
}

/// DynamoDB and SQS on the emulator: a fresh copy of the stack's table and queues.
pub async fn emulator() -> Backends {
    let env = TestEnv::start().await;
    Backends {
        max_receives: env.max_receive_count(),
        backend: env.backend.clone(),
        dlq: env.dlq.clone(),
        memory_store: None,
        _env: Some(env),
    }
}

/// [`emulator`], reached through a proxy whose `by_job` index lists an item only `lag` after it was
/// written (see [`proxy::FaultProxy::lagging_index`]): what a GSI may do, the emulator's never does.
#[allow(dead_code)] // not every test binary needs it
pub async fn emulator_with_lagging_index(lag: Duration) -> Backends {
    let env = TestEnv::start().await;
    let proxy = proxy::FaultProxy::lagging_index(&endpoint(), "by_job", "step_of", lag).await;
    let sdk = jobkit::aws::sdk_config(Some(&proxy.endpoint)).await;
    let backend = Backend::aws(&sdk, env.config.clone())
        .await
        .expect("the stack is up");
    Backends {
        max_receives: env.max_receive_count(),
        backend,
        dlq: env.dlq.clone(),
        memory_store: None,
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

/// A clock `.0` ms ahead of the wall clock.
#[derive(Debug)]
pub struct Ahead(pub jobkit::clock::Millis);

impl jobkit::clock::Clock for Ahead {
    fn now(&self) -> jobkit::clock::Millis {
        jobkit::now_millis() + self.0
    }
}

/// The sweeper of `b` on a clock `by` ms ahead: what its due task will see then (a completed
/// waitpoint's resume check, `REPAIR_AFTER` after the completion).
#[allow(dead_code)] // not every test binary sweeps
pub fn sweeper_ahead(b: &Backend, by: jobkit::clock::Millis) -> jobkit::sweep::Sweeper {
    jobkit::sweep::Sweeper {
        clock: Arc::new(Ahead(by)),
        ..b.sweeper()
    }
}

/// Settings that retry fast: backoff of at most one second.
pub fn fast_settings(max_attempts: u32) -> WorkerSettings {
    WorkerSettings {
        max_attempts,
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(1)),
        concurrency: 10,
        lease: Duration::from_secs(60),
        yield_margin: Duration::from_secs(1),
        cancel_poll: Duration::from_secs(5),
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
    pub backend: Backend,
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
        let backend = Backend::aws(&sdk, config.clone())
            .await
            .expect("the stack's backend");
        let queue_arn = resources.queue_arns["JobsQueue"].clone();
        Self {
            sdk,
            spec,
            resources,
            config,
            backend,
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
        api_on(
            &self.backend,
            registry,
            ApiSettings::from_config(&self.config),
        )
    }

    /// The API with its messages sent through `queue` (fault injection).
    pub fn api_with_queue(&self, registry: HandlerRegistry, queue: Arc<dyn JobQueue>) -> Api {
        api_on(
            &with_queue(&self.backend, queue),
            registry,
            ApiSettings::from_config(&self.config),
        )
    }

    /// A worker behind a local SQS event source on this stack's queue.
    pub fn worker(&self, registry: HandlerRegistry) -> EventSource {
        self.worker_with(registry, fast_settings(self.config.max_attempts))
    }

    pub fn worker_with(&self, registry: HandlerRegistry, settings: WorkerSettings) -> EventSource {
        event_source_on(&self.backend, registry, settings)
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

    /// What Lambda's event source does once: receive a batch, hand it to the worker, delete the messages
    /// it acknowledged. Returns the deliveries and the worker's result.
    pub async fn deliver(&self, worker: &EventSource) -> (Vec<Delivery>, BatchResult) {
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
impl JobSender for FailingSends {
    async fn send_grouped(
        &self,
        body: &str,
        delay: Duration,
        trace: Option<&jobkit::trace::TraceContext>,
        group: Option<&str>,
    ) -> Result<String, QueueError> {
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
        self.inner.send_grouped(body, delay, trace, group).await
    }
}

#[async_trait::async_trait]
impl QueueReceiver for FailingSends {
    async fn receive(
        &self,
        max: u32,
        wait: Duration,
        vis: Option<Duration>,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.inner.receive(max, wait, vis).await
    }
    async fn delete(&self, receipt: &str) -> Result<(), QueueError> {
        self.inner.delete(receipt).await
    }
}

#[async_trait::async_trait]
impl MessageVisibility for FailingSends {
    async fn change_visibility(&self, receipt: &str, timeout: Duration) -> Result<(), QueueError> {
        self.inner.change_visibility(receipt, timeout).await
    }
}

#[async_trait::async_trait]
impl QueueDepth for FailingSends {
    async fn depth(&self) -> Result<u64, QueueError> {
        self.inner.depth().await
    }
}

/// Each non-empty page of `user`'s in-flight ledger: its page number and members, in page order.
pub async fn ledger_pages(
    store: &dyn jobkit::store::SlotLedger,
    user: &str,
) -> Vec<(Option<u32>, Vec<jobkit::Slot>)> {
    let ledger = jobkit::slots::Ledger::owner(user);
    let mut pages: Vec<_> = store
        .all_slots()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.ledger == ledger && !p.slots.is_empty())
        .map(|p| (p.page, p.slots))
        .collect();
    pages.sort();
    pages
}
