//! Operator endpoints for the console: queues, throughput, and the dead-letter queue. Served only by
//! `jobctl dev` and `jobctl console` — on loopback, unauthenticated — never by the deployed functions:
//! they act with the operator's own AWS credentials (or on `jobctl dev`'s embedded backend), over every
//! user's jobs, which no API caller may do.
//!
//! | route | answer |
//! |---|---|
//! | `GET /ops/queues` | [`QueueList`]: each queue's depth, in flight, delayed, age of the oldest message |
//! | `GET /ops/throughput?minutes=60` | [`Throughput`]: jobs completed and failed per minute, oldest first |
//! | `GET /ops/dlq?limit=50` | [`DeadLetterList`]: the jobs DLQ's messages with what their jobs say |
//! | `POST /ops/dlq/redrive` `{"job_ids":[..]}` or `{}` (all) | [`Redriven`] |
//! | `POST /ops/dlq/purge` `{}` | [`Purged`] |
//!
//! Errors have the API's shape (`{"error":{"code","message"}}`, through [`ApiError`]): `400
//! invalid_request` / `malformed_json` / `invalid_job_id` for bad input, and `503 operator_unavailable`
//! when the operator's side is not configured (`jobctl console` without AWS credentials or stack
//! variables): its message says what to set.

use std::collections::HashSet;
use std::sync::Arc;

use axum::Json as JsonBody;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::{get, post};
use jobkit::Backend;
use jobkit::api::{ApiError, rfc3339};
use jobkit::clock::SharedClock;
use jobkit::dlq::DeadLetters;
use jobkit::job::{ErrorInfo, JobId, JobStatus, Millis};
use jobkit::queue::JobQueue;
use jobkit::store::MemoryStore;
use serde::{Deserialize, Serialize};

/// `GET /ops/queues`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueList {
    pub queues: Vec<QueueInfo>,
}

/// One queue's backlog, approximately (SQS's own counts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueInfo {
    /// `jobs`, `dlq`, `container`, `container_dlq` or `deliveries`.
    pub name: String,
    /// The SQS queue URL (absent for `jobctl dev`'s embedded queues).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Visible, waiting to be received.
    pub depth: u64,
    /// Received and not yet deleted.
    pub in_flight: u64,
    /// Sent with a delay that has not passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delayed: Option<u64>,
    /// Age of the oldest message in seconds; `null` when unknown (an empty queue, or an SQS queue with no
    /// CloudWatch datapoint yet).
    pub oldest_age_seconds: Option<u64>,
}

/// `GET /ops/throughput?minutes=N` (1 to 1440, default 60).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Throughput {
    /// One entry per minute of the window, oldest first, the current (partial) minute last.
    pub minutes: Vec<Minute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minute {
    /// The minute's start, RFC 3339 UTC.
    pub at: String,
    /// Jobs that completed in that minute.
    pub completed: u64,
    /// Jobs that failed for good in that minute (`failed` or `dead_letter`).
    pub failed: u64,
}

/// `GET /ops/dlq?limit=N` (1 to 1000, default 50).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterList {
    pub messages: Vec<DeadMessage>,
}

/// One DLQ message. Fields other than `message_id` are `null` when the body is not a job message or the
/// job record is gone (expired).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadMessage {
    pub message_id: String,
    pub job_id: Option<String>,
    pub kind: Option<String>,
    pub user_id: Option<String>,
    pub attempts: Option<u32>,
    pub error: Option<ErrorInfo>,
    /// When the job ended `dead_letter` (or last changed), RFC 3339.
    pub dead_at: Option<String>,
}

/// `POST /ops/dlq/redrive`'s body: the jobs to move back (all when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedriveRequest {
    #[serde(default)]
    pub job_ids: Option<Vec<String>>,
}

/// `POST /ops/dlq/redrive`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redriven {
    pub redriven: usize,
}

/// `POST /ops/dlq/purge`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    pub purged: usize,
}

/// Where `GET /ops/throughput` reads finished jobs from.
pub enum History {
    /// `jobctl dev`'s embedded store: its job records (`finished_at` and status).
    Records(Arc<MemoryStore>),
    /// The `Outcomes` metric the worker functions publish (namespace `namespace`, `Service` dimension
    /// `service`), through GetMetricData. Counts of deliveries: a dead job's message counts each time it
    /// is received again until it moves to the DLQ, so `failed` can run a little high there.
    CloudWatch {
        sdk: Box<aws_config::SdkConfig>,
        namespace: String,
        service: String,
    },
    /// Nowhere: `GET /ops/throughput` answers `503 operator_unavailable` saying why.
    Unavailable(String),
}

/// One queue the operator sees.
struct NamedQueue {
    name: &'static str,
    url: Option<String>,
    queue: Arc<dyn JobQueue>,
}

/// What the operator endpoints act on: the stack's queues, its jobs DLQ's tools, and where throughput is
/// read.
pub struct Ops {
    queues: Vec<NamedQueue>,
    dead_letters: Option<DeadLetters>,
    history: History,
    /// For SQS queues' age of the oldest message (CloudWatch); `None` for embedded queues.
    sdk: Option<aws_config::SdkConfig>,
    clock: SharedClock,
}

/// The most `GET /ops/throughput` covers (a day of minutes; GetMetricData returns at most 100,800
/// points a call, far above it).
const MAX_MINUTES: u32 = 1440;
/// The most messages `GET /ops/dlq` shows.
const MAX_DLQ_PAGE: usize = 1000;

const MINUTE_MS: Millis = 60_000;

impl Ops {
    /// Over `backend`'s queues and store; `sdk` when they are SQS (the age of the oldest message is read
    /// from CloudWatch).
    pub fn from_backend(
        backend: &Backend,
        history: History,
        sdk: Option<aws_config::SdkConfig>,
    ) -> Self {
        let c = &backend.config;
        // Embedded queues carry a placeholder for a URL: only real ones are shown.
        let url = |u: Option<&String>| u.filter(|u| u.starts_with("http")).cloned();
        let queues = [
            ("jobs", url(Some(&c.queue_url)), Some(backend.queue.clone())),
            (
                "dlq",
                url(c.dlq_url.as_ref()),
                backend.dead_letter_queue.clone(),
            ),
            (
                "container",
                url(c.container_queue_url.as_ref()),
                backend.container.clone(),
            ),
            (
                "container_dlq",
                url(c.container_dlq_url.as_ref()),
                backend.container_dead_letter_queue.clone(),
            ),
            (
                "deliveries",
                url(c.deliveries_queue_url.as_ref()),
                backend.deliveries.clone(),
            ),
        ]
        .into_iter()
        .filter_map(|(name, url, queue)| {
            Some(NamedQueue {
                name,
                url,
                queue: queue?,
            })
        })
        .collect();
        Self {
            queues,
            dead_letters: backend.dead_letters(),
            history,
            sdk,
            clock: backend.clock.clone(),
        }
    }

    /// `jobctl console`'s: the stack the environment names (`JOBKIT_TABLE`, `JOBKIT_QUEUE_URL`,
    /// `JOBKIT_DLQ_URL`, optionally `JOBKIT_DELIVERIES_QUEUE_URL`, `JOBKIT_CONTAINER_QUEUE_URL`,
    /// `JOBKIT_CONTAINER_DLQ_URL`, `JOBKIT_METRICS_NAMESPACE`, `JOBKIT_SERVICE`) with the operator's AWS
    /// credentials, at `endpoint_url` (an emulator) or on AWS. `Err` says what is missing, for
    /// [`router`]'s 503.
    #[allow(dead_code, reason = "jobctl console mounts it")]
    pub async fn from_env(endpoint_url: Option<&str>) -> Result<Self, String> {
        use aws_sdk_sqs::config::ProvideCredentials as _;
        let config = jobkit::Config::from_env().map_err(|e| {
            format!(
                "operator endpoints need the stack's resources: {e} (set JOBKIT_TABLE, \
                 JOBKIT_QUEUE_URL and JOBKIT_DLQ_URL, e.g. from the stack's outputs)"
            )
        })?;
        let sdk = jobkit::aws::sdk_config(endpoint_url).await;
        let no_credentials = "operator endpoints need AWS credentials (AWS_PROFILE, or \
                              AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY) and AWS_REGION";
        let provider = sdk.credentials_provider().ok_or(no_credentials)?;
        provider
            .provide_credentials()
            .await
            .map_err(|e| format!("{no_credentials}: {e}"))?;
        let history = History::CloudWatch {
            sdk: Box::new(sdk.clone()),
            namespace: config.metrics_namespace.clone(),
            service: config.service.clone(),
        };
        let backend = Backend::aws(&sdk, config)
            .await
            .map_err(|e| format!("cannot reach the stack: {e}"))?;
        Ok(Self::from_backend(&backend, history, Some(sdk)))
    }

    async fn queues(&self) -> Result<QueueList, ApiError> {
        let mut queues = Vec::new();
        for q in &self.queues {
            let stats = q.queue.stats().await?;
            let oldest = match (&self.sdk, &q.url, stats.oldest_age_secs) {
                (_, _, Some(age)) => Some(age),
                (Some(sdk), Some(url), None) => crate::stats::oldest_age(sdk, url).await,
                _ => None,
            };
            queues.push(QueueInfo {
                name: q.name.into(),
                url: q.url.clone(),
                depth: stats.waiting,
                in_flight: stats.in_flight,
                delayed: Some(stats.delayed),
                oldest_age_seconds: oldest,
            });
        }
        Ok(QueueList { queues })
    }

    /// Per minute, oldest first: the `minutes` minutes up to and including the current one.
    async fn throughput(&self, minutes: u32) -> Result<Throughput, ApiError> {
        let now = self.clock.now();
        let first = (now - now.rem_euclid(MINUTE_MS)) - MINUTE_MS * Millis::from(minutes - 1);
        let mut counts = vec![(0u64, 0u64); minutes as usize];
        let slot = |at: Millis| usize::try_from((at - first).div_euclid(MINUTE_MS)).ok();
        match &self.history {
            History::Records(store) => {
                for (at, status) in store.finished_since(first) {
                    let Some(c) = slot(at).and_then(|i| counts.get_mut(i)) else {
                        continue;
                    };
                    match status {
                        JobStatus::Completed => c.0 += 1,
                        JobStatus::Failed | JobStatus::DeadLetter => c.1 += 1,
                        _ => {}
                    }
                }
            }
            History::Unavailable(why) => return Err(ApiError::OperatorUnavailable(why.clone())),
            History::CloudWatch {
                sdk,
                namespace,
                service,
            } => {
                let series = outcome_series(sdk, namespace, service, first, now).await?;
                for (failed, points) in series {
                    for (at, n) in points {
                        if let Some(c) = slot(at).and_then(|i| counts.get_mut(i)) {
                            if failed {
                                c.1 += n;
                            } else {
                                c.0 += n;
                            }
                        }
                    }
                }
            }
        }
        Ok(Throughput {
            minutes: counts
                .into_iter()
                .enumerate()
                .map(|(i, (completed, failed))| Minute {
                    at: rfc3339(first + MINUTE_MS * i as Millis),
                    completed,
                    failed,
                })
                .collect(),
        })
    }

    fn dead_letters(&self) -> Result<&DeadLetters, ApiError> {
        self.dead_letters.as_ref().ok_or_else(|| {
            ApiError::OperatorUnavailable(
                "this stack has no dead-letter queue: set JOBKIT_DLQ_URL".into(),
            )
        })
    }
}

/// Sums per minute of the `Outcomes` metric: `(false, completed)` and `(true, failed + dead-lettered)`,
/// each point `(epoch ms, count)`. A SEARCH, so every function that records outcomes (the worker, the
/// container worker) counts whatever its `Function` dimension.
async fn outcome_series(
    sdk: &aws_config::SdkConfig,
    namespace: &str,
    service: &str,
    from: Millis,
    to: Millis,
) -> Result<Vec<(bool, Vec<(Millis, u64)>)>, ApiError> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::MetricDataQuery;
    // The names go inside a SEARCH expression's quotes, which have no escape: refuse a name with one
    // rather than send a different query (they come from the stack's configuration, never a request).
    if [namespace, service]
        .iter()
        .any(|n| n.contains(['\'', '"', '{', '}']))
    {
        return Err(ApiError::OperatorUnavailable(
            "JOBKIT_METRICS_NAMESPACE and JOBKIT_SERVICE may not contain quotes or braces".into(),
        ));
    }
    let search = |id: &str, outcomes: &str| {
        MetricDataQuery::builder()
            .id(id)
            .expression(format!(
                "SEARCH('{{{namespace},Function,Outcome,Service}} MetricName=\"Outcomes\" \
                 Service=\"{service}\" ({outcomes})', 'Sum', 60)"
            ))
            .return_data(false)
            .build()
    };
    let total = |id: &str, of: &str| {
        MetricDataQuery::builder()
            .id(id)
            .expression(format!("SUM({of})"))
            .return_data(true)
            .build()
    };
    let out = aws_sdk_cloudwatch::Client::new(sdk)
        .get_metric_data()
        .metric_data_queries(search("c", "Outcome=\"completed\""))
        .metric_data_queries(search(
            "f",
            "Outcome=\"failed\" OR Outcome=\"dead_lettered\"",
        ))
        .metric_data_queries(total("completed", "c"))
        .metric_data_queries(total("failed", "f"))
        .start_time(DateTime::from_millis(from))
        .end_time(DateTime::from_millis(to + MINUTE_MS))
        .send()
        .await
        .map_err(|e| ApiError::Unavailable { source: e.into() })?;
    Ok(out
        .metric_data_results
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| {
            let failed = match r.id.as_deref()? {
                "completed" => false,
                "failed" => true,
                _ => return None,
            };
            let points = r
                .timestamps
                .unwrap_or_default()
                .into_iter()
                .zip(r.values.unwrap_or_default())
                .filter_map(|(t, v)| Some((t.to_millis().ok()?, v.max(0.0) as u64)))
                .collect();
            Some((failed, points))
        })
        .collect())
}

/// A query's parameters, each of `known` at most once, parsed as integers from 1 to `max`.
fn number(
    query: &Result<Query<Vec<(String, String)>>, QueryRejection>,
    known: &str,
    default: u32,
    max: u32,
) -> Result<u32, ApiError> {
    let Ok(Query(pairs)) = query else {
        return Err(ApiError::InvalidRequest(
            "the query string does not parse".into(),
        ));
    };
    if let Some((k, _)) = pairs.iter().find(|(k, _)| k != known) {
        return Err(ApiError::InvalidRequest(format!(
            "unknown query parameter {}; expected {known}",
            jobkit::api::quote(k)
        )));
    }
    match pairs.as_slice() {
        [] => Ok(default),
        [(_, v)] => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest(format!("{known} must be an integer from 1 to {max}"))
            }),
        _ => Err(ApiError::InvalidRequest(format!(
            "query parameter {known} is given more than once"
        ))),
    }
}

/// A JSON body of type `T`; an empty body is `T::default()` (`POST` with no body means "all").
fn body<T: serde::de::DeserializeOwned + Default>(raw: &Bytes) -> Result<T, ApiError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(raw).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            ApiError::MalformedJson(e.to_string())
        } else {
            ApiError::InvalidRequest(e.to_string())
        }
    })
}

type Shared = State<Arc<Ops>>;
type Answer<T> = Result<JsonBody<T>, ApiError>;

async fn queues(State(ops): Shared) -> Answer<QueueList> {
    ops.queues().await.map(JsonBody)
}

async fn throughput(
    State(ops): Shared,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer<Throughput> {
    let minutes = number(&query, "minutes", 60, MAX_MINUTES)?;
    ops.throughput(minutes).await.map(JsonBody)
}

fn unavailable(e: jobkit::error::BoxError) -> ApiError {
    ApiError::Unavailable { source: e }
}

async fn dlq(
    State(ops): Shared,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Answer<DeadLetterList> {
    let limit = number(&query, "limit", 50, MAX_DLQ_PAGE as u32)? as usize;
    let mut listed = ops.dead_letters()?.list().await.map_err(unavailable)?;
    listed.truncate(limit);
    Ok(JsonBody(DeadLetterList {
        messages: listed
            .into_iter()
            .map(|d| DeadMessage {
                message_id: d.message_id,
                job_id: d.job_id.map(|id| id.to_string()),
                kind: d.kind,
                user_id: d.user_id,
                attempts: d.attempts,
                error: d.last_error,
                dead_at: d.dead_at.map(rfc3339),
            })
            .collect(),
    }))
}

async fn redrive(State(ops): Shared, raw: Bytes) -> Answer<Redriven> {
    let request: RedriveRequest = body(&raw)?;
    let only = request
        .job_ids
        .map(|ids| {
            ids.iter()
                .map(|id| JobId::parse(id))
                .collect::<Result<HashSet<_>, _>>()
        })
        .transpose()?;
    let report = ops
        .dead_letters()?
        .redrive(only.as_ref())
        .await
        .map_err(unavailable)?;
    tracing::info!(
        moved = report.moved,
        skipped = report.skipped,
        "dlq redriven"
    );
    Ok(JsonBody(Redriven {
        redriven: report.moved,
    }))
}

/// `POST /ops/dlq/purge`'s body: `{}` (nothing to choose: everything goes).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {}

async fn purge(State(ops): Shared, raw: Bytes) -> Answer<Purged> {
    let PurgeRequest {} = body(&raw)?;
    let purged = ops.dead_letters()?.purge().await.map_err(unavailable)?;
    tracing::info!(purged, "dlq purged");
    Ok(JsonBody(Purged { purged }))
}

/// The operator routes (`/ops/...`). With `Err(why)` every route answers `503 operator_unavailable` with
/// `why`. Bind whatever serves it to loopback only: nothing here checks who calls. Other methods answer
/// `405` with `Allow`, in the API's error shape.
pub fn router(ops: Result<Ops, String>) -> Router {
    let ops = match ops {
        Ok(ops) => Arc::new(ops),
        Err(why) => return unavailable_router(why),
    };
    let allow = |allow: &'static str| move || async move { ApiError::MethodNotAllowed { allow } };
    Router::new()
        .route("/ops/queues", get(queues).fallback(allow("GET")))
        .route("/ops/throughput", get(throughput).fallback(allow("GET")))
        .route("/ops/dlq", get(dlq).fallback(allow("GET")))
        .route("/ops/dlq/redrive", post(redrive).fallback(allow("POST")))
        .route("/ops/dlq/purge", post(purge).fallback(allow("POST")))
        .with_state(ops)
}

fn unavailable_router(why: String) -> Router {
    let why: Arc<str> = why.into();
    let answer = move || {
        let why = why.clone();
        async move { ApiError::OperatorUnavailable(why.to_string()) }
    };
    [
        "/ops/queues",
        "/ops/throughput",
        "/ops/dlq",
        "/ops/dlq/redrive",
        "/ops/dlq/purge",
    ]
    .into_iter()
    .fold(Router::new(), |r, path| {
        r.route(path, axum::routing::any(answer.clone()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn call(router: &Router, method: &str, path: &str) -> (u16, serde_json::Value) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn without_a_stack_every_route_says_what_to_configure() {
        let router = router(Err("set JOBKIT_QUEUE_URL".into()));
        for (method, path) in [
            ("GET", "/ops/queues"),
            ("GET", "/ops/throughput"),
            ("GET", "/ops/dlq"),
            ("POST", "/ops/dlq/redrive"),
            ("POST", "/ops/dlq/purge"),
        ] {
            let (status, body) = call(&router, method, path).await;
            assert_eq!(status, 503, "{path}");
            assert_eq!(body["error"]["code"], "operator_unavailable", "{path}");
            assert_eq!(body["error"]["message"], "set JOBKIT_QUEUE_URL", "{path}");
        }
    }
}
