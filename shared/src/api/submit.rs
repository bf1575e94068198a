//! `POST /jobs`: validate, store the job `queued`, enqueue its message, answer `202` at once.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json as JsonBody;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{ApiError, ApiSettings, Caller, CursorKey, MAX_BODY_BYTES};
use crate::clock::SharedClock;
use crate::handler::HandlerRegistry;
use crate::job::{
    ENQUEUE_FAILED, ErrorInfo, Job, JobId, JobStatus, Lane, MAX_INPUT_BYTES, Millis, NewJob,
};
use crate::json::Json;
use crate::net as callback;
use crate::queue::{Announcer, Lanes, SubmitQueue};
use crate::retry::Backoff;
use crate::store::{Change, Created, Insert, RmwError, StoreError, SubmitStore, read_modify_write};
use crate::trace::TraceContext;
use crate::usage::{Budget, Day, seconds_to_reset};

/// The body of `POST /jobs`: a JSON object. Unknown fields are rejected, so a misspelt field is an
/// error, not a no-op.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    pub kind: String,
    /// Kept as submitted, to the digit (see [`Json`]).
    pub input: Json,
    /// Where to deliver the outcome (see [`super::callback`]).
    #[serde(default)]
    pub callback_url: Option<String>,
    /// Start no earlier than this time (RFC 3339), at most the job's TTL ahead.
    #[serde(default)]
    pub run_at: Option<String>,
    /// Start no earlier than this many seconds from now, at most the job's TTL. A JSON number: `5.0` is
    /// an integer too.
    #[serde(default)]
    pub delay_seconds: Option<serde_json::Number>,
}

impl SubmitRequest {
    /// When the job should start (epoch ms), if later than now: `run_at` or `delay_seconds`, not both,
    /// within `ttl` of `now`. A time already past starts it now.
    fn start_at(&self, now: Millis, ttl: Duration) -> Result<Option<Millis>, ApiError> {
        let ttl_ms = ttl.as_millis() as Millis;
        let at = match (&self.run_at, self.delay_seconds.as_ref().map(whole_seconds)) {
            (Some(_), Some(_)) => {
                return Err(ApiError::InvalidStart(
                    "give run_at or delay_seconds, not both".into(),
                ));
            }
            (None, None) => return Ok(None),
            (Some(raw), None) => chrono::DateTime::parse_from_rfc3339(raw)
                .map_err(|e| {
                    ApiError::InvalidStart(format!(
                        "run_at {} is not an RFC 3339 time: {e}",
                        super::quote(raw)
                    ))
                })?
                .timestamp_millis(),
            (None, Some(None)) => {
                return Err(ApiError::InvalidStart(
                    "delay_seconds must be a whole number of seconds, 0 or more".into(),
                ));
            }
            (None, Some(Some(secs))) => now.saturating_add(secs.saturating_mul(1000)),
        };
        if at > now + ttl_ms {
            return Err(ApiError::InvalidStart(format!(
                "a job may start at most {} s (its retention) after it is submitted",
                ttl.as_secs()
            )));
        }
        Ok((at > now).then_some(at))
    }
}

/// Retry-After when the queue is over its bound: about the depth cache's lifetime, when a new reading
/// can tell.
const QUEUE_FULL_RETRY_SECS: u64 = 5;
/// Retry-After when the caller is at the in-flight cap: a slot frees when one of their jobs ends.
pub(super) const IN_FLIGHT_RETRY_SECS: u64 = 10;

/// How long one instance trusts a queue depth it read: GetQueueAttributes on every submit would double
/// the API's SQS calls, and the number is approximate anyway.
const DEPTH_CACHE_TTL: Duration = Duration::from_secs(5);

/// The last depth read, and the messages this instance sent since: their sum is the instance's estimate,
/// so one instance overshoots the bound by at most what *other* instances sent within the cache's
/// lifetime.
#[derive(Debug, Clone, Copy)]
struct DepthReading {
    at: Instant,
    depth: u64,
    sent_since: u64,
}

/// The submit function's dependencies: insert and read jobs, send and count messages, nothing else.
pub struct SubmitApi {
    pub(super) store: Arc<dyn SubmitStore>,
    /// Container-only kinds are refused without a container queue.
    queues: Lanes<dyn SubmitQueue>,
    registry: HandlerRegistry,
    pub(super) settings: ApiSettings,
    pub(super) clock: SharedClock,
    /// Signs `GET /threads/{id}`'s cursors (see [`Self::with_threads`]).
    pub(super) cursors: CursorKey,
    /// Announces the event of a run a thread's `interrupt` cancels.
    pub(super) announcer: Announcer,
    /// One reading per lane's queue.
    depth: [Mutex<Option<DepthReading>>; 2],
    /// The daily token budget of each user: agent submits over it are refused.
    token_budget: Option<Budget>,
}

impl SubmitApi {
    pub fn new(
        store: Arc<dyn SubmitStore>,
        queue: Arc<dyn SubmitQueue>,
        registry: HandlerRegistry,
        settings: ApiSettings,
        clock: SharedClock,
    ) -> Self {
        Self {
            store,
            queues: Lanes::new(queue),
            registry,
            settings,
            clock,
            // Replaced by the stack's key (`with_threads`); until then no cursor outlives the process.
            cursors: CursorKey::new(&rand::random::<[u8; 32]>()),
            announcer: Announcer::none(),
            depth: Default::default(),
            token_budget: None,
        }
    }

    /// Refuses agent jobs of a user at or over `budget` today (`429 token_budget_exhausted`).
    pub fn with_token_budget(mut self, budget: Option<Budget>) -> Self {
        self.token_budget = budget;
        self
    }

    /// The refusal of an agent job by a user at or over the daily token budget, if they are: one
    /// eventually consistent read of their day's usage, only for agent jobs and only with a budget.
    /// A read that fails lets the job in (as the queue bound does): a run over the budget stops after
    /// its first turn anyway, and so does one the read missed by a second.
    async fn over_budget(&self, user: &str, kind: &str) -> Option<ApiError> {
        let budget = self.token_budget.filter(|_| kind == crate::agent::KIND)?;
        let now = self.clock.now();
        let used = match self.store.usage(user, Day::of(now)).await {
            Ok(usage) => usage.total_tokens,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the caller's usage; not applying the token budget");
                return None;
            }
        };
        budget
            .exhausted(used)
            .then(|| ApiError::TokenBudgetExhausted {
                used,
                limit: budget.limit,
                retry_after: seconds_to_reset(now),
            })
    }

    /// Signs threads' page cursors with `cursors` (the stack's secret, as the status function's), and
    /// announces the runs an interrupt cancels with `announcer`.
    pub fn with_threads(mut self, cursors: CursorKey, announcer: Announcer) -> Self {
        self.cursors = cursors;
        self.announcer = announcer;
        self
    }

    /// Takes container-only kinds, sending them to `queue`.
    pub fn with_container_queue(mut self, queue: Arc<dyn SubmitQueue>) -> Self {
        self.queues.container = Some(queue);
        self
    }

    /// The kinds it accepts.
    pub fn registry(&self) -> &HandlerRegistry {
        &self.registry
    }

    /// The queue of `lane`, if this deployment has one.
    fn queue_of(&self, lane: Lane) -> Result<&Arc<dyn SubmitQueue>, ApiError> {
        self.queues.get(lane).ok_or(ApiError::NoContainerQueue)
    }

    fn depth_of(&self, lane: Lane) -> std::sync::MutexGuard<'_, Option<DepthReading>> {
        self.depth[lane as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The queue's depth as this instance estimates it: the last reading (at most [`DEPTH_CACHE_TTL`]
    /// old) plus its own sends since. `None` when it cannot be read: backpressure then fails open (the
    /// send itself reports an outage).
    async fn queue_depth(&self, lane: Lane) -> Option<u64> {
        let cached = *self.depth_of(lane);
        if let Some(r) = cached
            && r.at.elapsed() < DEPTH_CACHE_TTL
        {
            return Some(r.depth + r.sent_since);
        }
        match self.queue_of(lane).ok()?.depth().await {
            Ok(depth) => {
                *self.depth_of(lane) = Some(DepthReading {
                    at: Instant::now(),
                    depth,
                    sent_since: 0,
                });
                Some(depth)
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the queue depth; not applying backpressure");
                None
            }
        }
    }

    async fn send(&self, job: &Job, trace: &TraceContext) -> Result<(), ApiError> {
        self.queue_of(job.lane)?.send_job(job, Some(trace)).await?;
        if let Some(r) = self.depth_of(job.lane).as_mut() {
            r.sent_since += 1;
        }
        Ok(())
    }

    /// A retried submit of an existing job. Its first submit may have failed to send the message (the
    /// client got a 503, the job says `enqueue_failed`) or crashed before sending (the job sits untouched
    /// in `queued`): then the message is sent now. Otherwise nothing is sent: the same job is the answer.
    async fn replay(&self, job: Job, trace: &TraceContext) -> Result<Response, ApiError> {
        let now = self.clock.now();
        if job.enqueue_failed() {
            let again = job.resubmit(now).expect("checked: enqueue failed");
            self.store.replace(&job, &again).await?;
            return self.enqueue(again, StatusCode::OK, trace).await;
        }
        if job.maybe_unsent(now, self.settings.resend_after.as_millis() as i64) {
            tracing::warn!(job_id = %job.job_id, "re-sending a job that may never have been enqueued");
            self.send(&job, trace).await?;
            // Touched, so the next replay does not send again (best effort: losing to a worker is fine).
            if let Ok(touched) = job.resent(now) {
                let _ = self.store.replace(&job, &touched).await;
            }
        }
        Ok(accepted(&job, StatusCode::OK, now))
    }

    /// Sends a stored job's message and answers `status`. If the send fails, the job is marked
    /// `enqueue_failed` before the client gets its 503, so no job waits forever for a message; a retry
    /// with the same Idempotency-Key resubmits it.
    async fn enqueue(
        &self,
        job: Job,
        status: StatusCode,
        trace: &TraceContext,
    ) -> Result<Response, ApiError> {
        if let Err(e) = self.send(&job, trace).await {
            let error = ErrorInfo::new(
                ENQUEUE_FAILED,
                "the job could not be enqueued; submit it again",
                true,
            );
            self.mark_unsent(job, error).await;
            return Err(e);
        }
        tracing::info!(job_id = %job.job_id, kind = %job.kind, trace_id = %trace.trace_id, span_id = %trace.span_id, "job accepted");
        crate::observe::accepted(&job.kind);
        Ok(accepted(&job, status, self.clock.now()))
    }

    /// Records that `job`'s message was not sent. This write is what makes the client's retry re-send:
    /// a job left `queued` looks sent to a replay (only the sweep would find it, much later), so the
    /// write is retried through transient store errors. A job a worker already holds (the send did
    /// land, its answer was lost) is left alone.
    async fn mark_unsent(&self, job: Job, error: ErrorInfo) {
        const TRIES: u32 = 4;
        let backoff = Backoff::new(Duration::from_millis(25), Duration::from_millis(200));
        let id = job.job_id.clone();
        let mut current = Some(job);
        for attempt in 1..=TRIES {
            let now = self.clock.now();
            let step = |j: &Job| {
                Ok::<_, Infallible>(match j.abandon(error.clone(), now) {
                    Ok(next) => Change::Write(Box::new(next), ()),
                    Err(_) => Change::Keep(()),
                })
            };
            match read_modify_write(&*self.store, &id, current.take(), 3, step).await {
                Ok(_) | Err(RmwError::NotFound) => return,
                Err(e) if attempt == TRIES => {
                    tracing::error!(job_id = %id, error = %e, "could not mark an unsent job; the sweep re-sends it");
                }
                Err(_) => tokio::time::sleep(backoff.delay(attempt)).await,
            }
        }
    }

    /// The existing job a key names: its replay, or `409` when the key was used with another request.
    async fn answer_existing(
        &self,
        existing: Job,
        request_hash: &str,
        trace: &TraceContext,
    ) -> Result<Response, ApiError> {
        if existing.request_hash.as_deref() != Some(request_hash) {
            return Err(ApiError::IdempotencyKeyReused);
        }
        self.replay(existing, trace).await
    }
}

pub(super) async fn submit(
    State(api): State<Arc<SubmitApi>>,
    Caller(user): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    // The submit's span in the job's trace (see `crate::trace`), handed on with the message.
    let trace = crate::trace::for_request(
        headers
            .get(crate::trace::ATTRIBUTE)
            .and_then(|v| v.to_str().ok()),
    );
    let body = parse_body(read_body(&headers, body).await?)?;
    if !api.registry.contains(&body.kind) {
        return Err(ApiError::UnknownKind {
            kind: body.kind,
            known: api.registry.kinds().collect::<Vec<_>>().join(", "),
        });
    }
    // Where the kind runs is the registry's choice; a deployment without that lane's queue refuses it.
    let lane = api.registry.lane(&body.kind);
    api.queue_of(lane)?;
    if body.input.len() > MAX_INPUT_BYTES {
        return Err(ApiError::InputTooLarge);
    }
    // Decoded as the worker will decode it, so a job that could only fail with `invalid_input` is
    // never accepted.
    if let Some(Err(e)) = api.registry.check_input(&body.kind, &body.input) {
        return Err(ApiError::InvalidInput {
            kind: body.kind,
            message: e.to_string(),
        });
    }
    let callback_url = match &body.callback_url {
        Some(raw) => Some(
            callback::validate(raw, api.settings.dev_mode)
                .await
                .map_err(|e| ApiError::InvalidCallbackUrl(e.to_string()))?
                .to_string(),
        ),
        None => None,
    };
    if callback_url.is_some() && !api.settings.webhooks {
        // A field the API accepts is a promise: where nothing delivers webhooks, a valid callback is
        // refused rather than stored and never called.
        return Err(ApiError::CallbackUnsupported);
    }
    let now = api.clock.now();
    let start_at = body.start_at(now, api.settings.job_ttl)?;
    // The hash is over what was submitted: the kind, the input (canonical: key order does not matter,
    // every digit does), the callback, and a delayed start as sent (absent, it adds nothing, so keys
    // used before delayed starts existed hash as they did).
    let start = match (&body.run_at, &body.delay_seconds) {
        (Some(at), _) => format!("\0run_at={at}"),
        (None, Some(secs)) => format!("\0delay_seconds={secs}"),
        (None, None) => String::new(),
    };
    let request_hash = sha256_hex(&[
        body.kind.as_bytes(),
        b"\0",
        body.input.canonical().as_bytes(),
        b"\0",
        callback_url.as_deref().unwrap_or("").as_bytes(),
        start.as_bytes(),
    ]);
    // The key is the job's id (scoped per user: equal keys of two users never name the same job), so
    // the job's own conditional write reserves it.
    let keyed_id = key
        .as_ref()
        .map(|key| JobId::for_key(&sha256_hex(&[user.as_bytes(), b"\0", key.as_bytes()])));
    // A retry of a submit that was accepted gets its job whatever the backlog or the owner's in-flight
    // count: when a bound refuses, the key is looked up before the refusal. (On the happy path the
    // job's own conditional write finds it: no read.)
    let refused = async |refusal: ApiError| match &keyed_id {
        Some(id) => match api.store.get(id).await? {
            Some(existing) => api.answer_existing(existing, &request_hash, &trace).await,
            None => Err(refusal),
        },
        None => Err(refusal),
    };
    if let Some(bound) = api.settings.max_queue_depth
        && api.queue_depth(lane).await.is_some_and(|d| d >= bound)
    {
        return refused(ApiError::QueueFull {
            retry_after: QUEUE_FULL_RETRY_SECS,
        })
        .await;
    }
    if let Some(refusal) = api.over_budget(&user, &body.kind).await {
        return refused(refusal).await;
    }
    let cap = api.settings.max_in_flight_per_user;
    let mut job = Job::new(
        NewJob {
            user_id: user,
            kind: body.kind,
            input: body.input,
            max_attempts: api.settings.max_attempts,
            ttl_secs: api.settings.job_ttl.as_secs() as i64,
            callback_url,
            counted: cap.is_some(),
        },
        now,
    );
    job.lane = lane;
    if let Some(at) = start_at {
        job = job.starting_at(at);
    }
    if let (Some(key), Some(id)) = (key, &keyed_id) {
        job.job_id = id.clone();
        job.idempotency_key = Some(key);
        job.request_hash = Some(request_hash.clone());
        job.submit_token = Some(rand::random());
    }
    let how = Insert {
        keyed: keyed_id.is_some(),
        in_flight_cap: cap,
    };
    // An agent's message on a thread is inserted as the thread's next run (see `threads`).
    let thread = (job.kind == crate::agent::KIND)
        .then(|| job.input.decode::<crate::agent::AgentInput>().ok())
        .flatten()
        .and_then(|input| Some((input.thread.clone()?, input)));
    let inserted = match &thread {
        Some((id, input)) => {
            match super::threads::link_run(&api, &mut job, &how, input, id).await {
                Err(ApiError::ThreadBusy) => return refused(ApiError::ThreadBusy).await,
                linked => Ok(linked?),
            }
        }
        None => api.store.insert(&mut job, &how).await,
    };
    match inserted {
        // A delayed start has no message yet: the sweep queues it when its time comes.
        Ok(Created::New) if job.status == JobStatus::Waiting => {
            tracing::info!(job_id = %job.job_id, kind = %job.kind, start_at, "job accepted for later");
            crate::observe::accepted(&job.kind);
            Ok(accepted(&job, StatusCode::ACCEPTED, now))
        }
        Ok(Created::New) => api.enqueue(job, StatusCode::ACCEPTED, &trace).await,
        Ok(Created::Existing(existing)) => {
            api.answer_existing(*existing, &request_hash, &trace).await
        }
        Err(StoreError::InFlightCapReached) => {
            refused(ApiError::TooManyInFlight {
                cap: cap.unwrap_or_default(),
                retry_after: IN_FLIGHT_RETRY_SECS,
            })
            .await
        }
        Err(e) => Err(e.into()),
    }
}

/// A whole, non-negative number of seconds (`5` or `5.0`), if `n` is one.
pub(super) fn whole_seconds(n: &serde_json::Number) -> Option<i64> {
    n.as_i64()
        .or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 1e15)
                .map(|f| f as i64)
        })
        .filter(|s| *s >= 0)
}

/// `{job_id, status, status_url}` with `Location`.
fn accepted(job: &Job, status: StatusCode, now: i64) -> Response {
    let status_url = format!("/jobs/{}", job.job_id);
    let body = json!({"job_id": job.job_id, "status": job.effective_status(now), "status_url": status_url});
    (
        status,
        [(http::header::LOCATION, status_url)],
        JsonBody(body),
    )
        .into_response()
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// The `Idempotency-Key` header, if any: given once, 1-255 visible ASCII characters other than `,` (API
/// Gateway joins a repeated header's values with commas, so a comma would make two keys look like one).
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(raw) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidRequest(
            "Idempotency-Key must be given at most once".into(),
        ));
    }
    let key = raw.to_str().unwrap_or("");
    let valid = |b: u8| b.is_ascii_graphic() && b != b',';
    if key.is_empty() || key.len() > 255 || !key.bytes().all(valid) {
        return Err(ApiError::InvalidRequest(
            "Idempotency-Key must be 1-255 visible ASCII characters other than ','".into(),
        ));
    }
    Ok(Some(key.to_owned()))
}

/// The body, after its content type is checked (415 before a byte is read). The body limit layer stops
/// the read at [`MAX_BODY_BYTES`] (413); a body that ends before its declared length is a 400.
pub(super) async fn read_body(headers: &HeaderMap, body: Body) -> Result<Bytes, ApiError> {
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    read_limited(body).await
}

/// Whether the one `Content-Type` is `application/json`.
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    let mut types = headers.get_all(http::header::CONTENT_TYPE).iter();
    let is_json = types
        .next()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    is_json && types.next().is_none()
}

/// The body, up to the limit: `413` past it, `400 truncated_body` for one cut short.
pub(super) async fn read_limited(body: Body) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, MAX_BODY_BYTES + 1)
        .await
        .map_err(|e| {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = source {
                if s.is::<http_body_util::LengthLimitError>() {
                    return ApiError::PayloadTooLarge;
                }
                source = s.source();
            }
            ApiError::TruncatedBody
        })
        .and_then(|b| {
            if b.len() > MAX_BODY_BYTES {
                Err(ApiError::PayloadTooLarge)
            } else {
                Ok(b)
            }
        })
}

/// The JSON shape of a submit body: an object with the documented fields.
fn parse_body(bytes: Bytes) -> Result<SubmitRequest, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::InvalidRequest(
                "request body is empty; expected {\"kind\", \"input\"}".into(),
            ));
        }
        // serde would read a JSON array into the struct's fields in order: only an object is a request.
        Some(b'{') => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() => {}
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "request body must be a JSON object {\"kind\", \"input\"}".into(),
            ));
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        if e.is_data() {
            ApiError::InvalidRequest(format!("invalid job request: {e}"))
        } else {
            ApiError::MalformedJson(e.to_string())
        }
    })
}
