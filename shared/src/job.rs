//! The job record and its state machine. Pure: no I/O, no clock reads (callers pass `now`).
//!
//! Every change to a stored job is computed here as a new `Job` value from the current one; the stores
//! only persist it with a compare-and-set on `version`. So there is one definition of what a legal
//! transition is, shared by the DynamoDB and the embedded backend. The one exception is the claim, which the
//! DynamoDB store performs as a single conditional update for speed; its condition mirrors
//! [`Job::claimable`] and the conformance suite holds the two to the same behaviour.

use std::fmt;

use sha2::Digest;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::clock::Millis;
use crate::json::Json;

/// Error code of a job whose submit could not enqueue it.
pub const ENQUEUE_FAILED: &str = "enqueue_failed";

/// Largest accepted `input`, serialized. A job record holds input, result and checkpoint and must stay
/// under DynamoDB's 400 KB item limit; the SQS message carries only the id, so SQS's 1 MiB is not the bound.
pub const MAX_INPUT_BYTES: usize = 128 * 1024;
/// Largest storable `result`, serialized (see [`MAX_INPUT_BYTES`]).
pub const MAX_RESULT_BYTES: usize = 160 * 1024;
/// Largest storable `checkpoint`, serialized (see [`MAX_INPUT_BYTES`]).
pub const MAX_CHECKPOINT_BYTES: usize = 64 * 1024;

/// A job identifier: a ULID (26 Crockford base32 characters), sortable by creation time and carrying 80
/// random bits, so ids cannot be guessed from one another. A job submitted with an `Idempotency-Key`
/// has an id derived from its owner and key instead ([`JobId::for_key`]): the key is the id, so the job
/// write alone reserves it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

/// Returned when a string is not a well-formed job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job id must be 26 characters of Crockford base32 (a ULID)")]
pub struct InvalidJobId;

impl JobId {
    /// A fresh id for a job submitted at `now`.
    pub fn generate(now: Millis) -> Self {
        let ms = u64::try_from(now).unwrap_or(0);
        Self(ulid::Ulid::from_parts(ms, rand::random::<u128>()).to_string())
    }

    /// Parses and normalises (upper case) an id from untrusted input.
    pub fn parse(raw: &str) -> Result<Self, InvalidJobId> {
        ulid::Ulid::from_string(raw)
            .map(|u| Self(u.to_string()))
            .map_err(|_| InvalidJobId)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id of the job an owner's Idempotency-Key names: all 128 bits from a hash of the key as scoped
    /// to its owner (`scoped_key`, itself a hash), so equal keys of two owners never meet and the id
    /// says nothing about either. Not time-ordered; lists order by `submitted_at`.
    pub fn for_key(scoped_key: &str) -> Self {
        let digest = sha2::Sha256::digest(format!("job-for-key#{scoped_key}").as_bytes());
        Self(
            ulid::Ulid(u128::from_be_bytes(
                digest[..16].try_into().expect("16 bytes"),
            ))
            .to_string(),
        )
    }

    /// The id of `parent`'s `index`-th follow-up job: the same on every attempt that records the parent's
    /// completion, so a retried completion names (and can create) the same children only. Its time
    /// part is the parent's; its random part a hash of the parent id and the index.
    pub fn child_of(parent: &JobId, index: usize) -> Self {
        let parent = ulid::Ulid::from_string(&parent.0).unwrap_or_default();
        let digest = sha2::Sha256::digest(format!("{}#{index}", parent).as_bytes());
        let random = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
        Self(ulid::Ulid::from_parts(parent.timestamp_ms(), random).to_string())
    }
}

impl TryFrom<String> for JobId {
    type Error = InvalidJobId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> Self {
        id.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A conversation thread's id (see [`crate::thread`]): a ULID, like a job's, parsed from untrusted input.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ThreadId(String);

impl ThreadId {
    /// A fresh id for a thread created at `now`.
    pub fn generate(now: Millis) -> Self {
        Self(JobId::generate(now).0)
    }

    /// Parses and normalises (upper case) an id from untrusted input.
    pub fn parse(raw: &str) -> Result<Self, InvalidJobId> {
        JobId::parse(raw).map(|id| Self(id.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ThreadId {
    type Error = InvalidJobId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ThreadId> for String {
    fn from(id: ThreadId) -> Self {
        id.0
    }
}

impl fmt::Display for ThreadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a job sits in its thread: its run's position (1, 2, ...: the order runs were submitted in),
/// the job submitted to the thread just before it (it runs only once that one has finished), and the
/// thread's expiry (epoch seconds: the messages it appends expire with the thread). On the job record,
/// so defined here; the rest of threads is [`crate::thread`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRun {
    pub thread: ThreadId,
    pub position: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<JobId>,
    pub expires_at: i64,
    /// How many messages the run left in its thread (indices `0..said`), recorded by its attempt's
    /// writes once it appended them, so its terminal write carries it: the next run reads them by key
    /// (see [`crate::thread`]). `None`: it appended nothing but its user message (index 0), or ended
    /// by another's write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub said: Option<u32>,
}

/// One job's member of its owner's in-flight ledger: `{job_id}@{since}`, `since` the epoch second the
/// job took the slot (members written before slots were stamped are the bare id), kept on `page` of the
/// ledger (see [`crate::slots`]; `None`: the single slot item of ledgers written before pages). A job
/// that takes a slot again (a redrive) gets a new member, so an old round's member is never mistaken
/// for the new. `Display` is the member as stored; the page is where it is stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot {
    pub job_id: JobId,
    pub since: Option<i64>,
    pub page: Option<u32>,
}

impl Slot {
    /// Parses a member found on `page`; `None` for anything a store did not write.
    pub fn parse(member: &str, page: Option<u32>) -> Option<Self> {
        let (id, since) = match member.split_once('@') {
            Some((id, since)) => (id, Some(since.parse().ok()?)),
            None => (member, None),
        };
        Some(Self {
            job_id: JobId::parse(id).ok()?,
            since,
            page,
        })
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.since {
            Some(since) => write!(f, "{}@{since}", self.job_id),
            None => write!(f, "{}", self.job_id),
        }
    }
}

/// Where a job is in its life. See the state machine in ARCHITECTURE.md section 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Retrying,
    /// Parked on a waitpoint (`ctx.wait_for`, `ctx.sleep`): no message, no lease, nothing runs until
    /// the waitpoint is completed or times out and the job is queued again.
    Waiting,
    Completed,
    Failed,
    Cancelled,
    DeadLetter,
}

/// Returned when a string names no job status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status {0:?}")]
pub struct UnknownStatus(pub String);

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        Self::Queued,
        Self::Running,
        Self::Retrying,
        Self::Waiting,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
        Self::DeadLetter,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Waiting => "waiting",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::DeadLetter => "dead_letter",
        }
    }

    /// No further work happens on a job in a terminal state (a dead-lettered job can still be redriven).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::DeadLetter
        )
    }
}

impl FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed, as stored and as shown to its owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
    pub retryable: bool,
    /// Structured facts the handler attached ([`crate::JobError::with_detail`]): an agent's token
    /// usage, say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Map<String, serde_json::Value>>,
}

impl ErrorInfo {
    /// An error without details.
    pub fn new(code: impl Into<String>, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable,
            details: None,
        }
    }
}

/// The latest progress a handler reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 0-100.
    pub percent: u8,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The latest partial result a handler published ([`crate::JobContext::partial`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// 1 for the job's first partial, then one more per write (across attempts): the stream tells a
    /// new partial from one its client has seen by it, even when the value repeats.
    pub seq: u64,
    /// Stored as a JSON string, like the result.
    #[serde(with = "crate::json::as_string")]
    pub value: Json,
}

/// Where a terminal job's webhook event stands (jobs with a `callback_url` only). Written with the
/// terminal state itself, so a crash between that write and the delivery request loses nothing: the
/// sweep re-announces a `pending` event whose attempt is long overdue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookState {
    /// The event's `webhook-id`: one per terminal state, the same on every retry.
    pub event_id: String,
    pub status: WebhookStatus,
    #[serde(default)]
    pub attempts: u32,
    /// The receiver's last HTTP status, if it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt failed, when the receiver did not answer (timeout, refused, not public).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Millis>,
    /// When the next attempt is due (its message is hidden in the deliveries queue until then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Millis>,
    /// Set on a `job.waiting` event (absent on a terminal state's): the wait it announces, as the job
    /// parked on it, so every attempt sends the same body after the job has moved on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<WaitingFor>,
}

impl WebhookState {
    /// A new event of `job` (as it is being written), due at `now`: its id names the job's version, so
    /// each state that sends an event has its own.
    fn pending(job: &Job, now: Millis) -> Self {
        Self {
            event_id: format!("msg_{}_{}", job.job_id, job.version),
            status: WebhookStatus::Pending,
            attempts: 0,
            last_status: None,
            last_error: None,
            delivered_at: None,
            next_attempt_at: Some(now),
            waiting: None,
        }
    }
}

/// A webhook event's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    /// Not delivered yet; attempts continue.
    Pending,
    /// A receiver answered 2xx.
    Delivered,
    /// Given up: the receiver answered 410, or every attempt of the schedule failed.
    Failed,
}

/// The waitpoint a `waiting` job is parked on (see [`crate::waitpoint`]): kept on the record so a read
/// of the job shows it and the sweep finds due timers without reading the waitpoint item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitingFor {
    /// The waitpoint's name, unique within the job.
    pub name: String,
    /// When (epoch ms) it times out.
    pub expires_at: Millis,
    /// What the handler says about the wait, for whoever completes it (`WaitFor::detail`: an agent's
    /// approval shows the tool and its input). Stored as a string, like the job's other JSON.
    #[serde(
        default,
        with = "crate::json::as_string::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub detail: Option<Json>,
}

/// The name a delayed start waits on (see [`Job::starting_at`]).
pub const START_TIMER: &str = "start";

/// How long a job may sit `queued` and untouched before a sweep presumes its message lost (far longer
/// than any send, and than a healthy queue's wait); also how far ahead a job's next sweep check
/// ([`Job::sweep_at`]) is set. See [`crate::sweep`].
pub const SWEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// [`SWEEP_AFTER`] in ms.
const SWEEP_AFTER_MS: Millis = SWEEP_AFTER.as_millis() as Millis;

/// The nearest a sweep that found a job healthy looks at it again: no tight loop on a job whose
/// next need is imminent (a lease about to lapse).
const MIN_RECHECK_MS: Millis = 60_000;

/// Where the due index holds a job (see [`crate::store::DueTimers`], [`Job::watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// The due task's: a parked job's timer, at this time.
    Timer(Millis),
    /// The sweep's: the job's next check, at this time.
    Sweep(Millis),
}

/// Where a job runs: which queue its messages go to, and so which worker takes them. Chosen by its kind
/// in the registry ([`crate::HandlerRegistry::register_container`]) when the job is made, and kept on
/// the record so the sweep, continuations and the DLQ tools send it back to the same queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// The jobs queue, which the worker function consumes (and `jobctl worker`, if asked).
    #[default]
    Lambda,
    /// The container queue, which only `jobctl worker --container` consumes: for work that needs more
    /// than a Lambda gives (hours, GPUs, memory, a warm model).
    Container,
}

impl Lane {
    pub fn is_lambda(&self) -> bool {
        *self == Self::Lambda
    }
}

/// The job record. Its serde form is the storage form (DynamoDB item / embedded store); the API shows
/// a [`crate::api::JobView`] of it instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: JobId,
    pub user_id: String,
    pub kind: String,
    /// Stored as a JSON string: DynamoDB maps nest at most 32 deep and its numbers are not JSON's.
    #[serde(with = "crate::json::as_string")]
    pub input: Json,
    pub status: JobStatus,
    #[serde(
        default,
        with = "crate::json::as_string::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub result: Option<Json>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    pub attempts: u32,
    pub max_attempts: u32,
    #[serde(
        default,
        with = "crate::json::as_string::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub checkpoint: Option<Json>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// The latest partial result, kept once the job ends (next to the result that superseded it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial: Option<Partial>,
    /// Times the job yielded before a deadline and continued in a new message (not failed attempts).
    #[serde(default)]
    pub continuations: u32,
    /// Of those, the last ones in a row whose run recorded no step and saved no checkpoint: see
    /// [`crate::worker::MAX_IDLE_CONTINUATIONS`].
    #[serde(default)]
    pub idle_continuations: u32,
    /// The `Idempotency-Key` the job was submitted with, and the hash of the request it was used for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_hash: Option<String>,
    /// A random number of the submit request that created a keyed job: tells that request's own write,
    /// retried after its answer was lost, from a concurrent twin's (same key and body, same millisecond).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit_token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_expires_at: Option<Millis>,
    pub submitted_at: Millis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Millis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Millis>,
    pub updated_at: Millis,
    /// DynamoDB TTL attribute: epoch *seconds* after which the record may be deleted.
    pub expires_at: i64,
    /// How often the job was redriven from the dead-letter queue.
    #[serde(default)]
    pub redrives: u32,
    /// Webhook target for the terminal state, validated at submit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_url: Option<String>,
    /// The terminal state's webhook event, when there is a `callback_url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookState>,
    /// The job whose completion created this one (a stage pathway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<JobId>,
    /// The next stage (a kind) this job's completion started, and its jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pathway: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<JobId>,
    /// The queue it runs from (absent on the record for the default, so Lambda jobs pay no bytes).
    #[serde(default, skip_serializing_if = "Lane::is_lambda")]
    pub lane: Lane,
    /// Its owner asked to cancel it while it ran; the handler sees it and the job ends `cancelled`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Whether the job counts against its owner's in-flight cap (one was set when it was submitted): it
    /// holds a slot while not terminal. Stores add its [`Slot`] to the owner's set before the write that
    /// makes it hold one, and remove it after the write that ends it (see [`crate::store`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counted: bool,
    /// When (epoch seconds) the job last took its slot: names its member of the owner's set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_at: Option<i64>,
    /// The waitpoint it is parked on, while `waiting` (absent otherwise: jobs that never wait pay no
    /// bytes for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<WaitingFor>,
    /// When it last parked (the wait-duration metric's start; absent on jobs that never waited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_at: Option<Millis>,
    /// The waitpoint it last parked on, kept once it resumes: `GET /jobs/{id}` shows how it was settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_waitpoint: Option<String>,
    /// The page of the owner's ledger its member is kept on, chosen by the store when the job is
    /// inserted and kept for the job's life (a redrive takes its slot again there; pathway children
    /// join it). `None` on a counted job: the single slot item of ledgers written before pages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot_page: Option<u32>,
    /// Why it waits to start, when a kind's limit deferred it (see [`crate::limits`]): written by the
    /// deferral alone (not a new version), cleared by the claim. Absent on jobs never deferred.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deferred: Option<Deferred>,
    /// The conversation run this job is, when it is an agent job on a thread (see [`crate::thread`]):
    /// set by the submit that links it, never changed. Absent on every other job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<ThreadRun>,
    /// When the sweep looks at the job next, unless it has left the sweep's watch by then (see
    /// [`Self::watch`], [`crate::sweep`]). Set when the job enters the watch (created, resumed,
    /// redriven, re-sent), kept by every other write, so the index entry it keys is written once
    /// when the job is created and once when it ends, never on the hot path (claim, heartbeats,
    /// steps); moved on only by the sweep when it finds the job healthy. Absent on records written
    /// before it existed (the sweep's slice scan finds those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep_at: Option<Millis>,
    /// Bumped by every write; stores persist a new value only over the version it was computed from.
    pub version: u64,
}

/// What a new job is made of, after validation at the edge.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub user_id: String,
    pub kind: String,
    pub input: Json,
    pub max_attempts: u32,
    pub ttl_secs: i64,
    pub callback_url: Option<String>,
    /// Whether the job takes a slot of its owner's in-flight cap.
    pub counted: bool,
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// The job was waiting: it is `cancelled` now.
    Cancelled,
    /// The job is running: its handler is asked to stop.
    Requested,
    /// It was already cancelled, or already asked to stop: nothing changed.
    AlreadyDone,
}

/// A change the state machine does not allow from the job's current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a job that is {from}")]
pub struct IllegalTransition {
    pub action: &'static str,
    pub from: JobStatus,
}

impl Job {
    /// A freshly submitted job, `queued`.
    pub fn new(spec: NewJob, now: Millis) -> Self {
        Self {
            job_id: JobId::generate(now),
            user_id: spec.user_id,
            kind: spec.kind,
            input: spec.input,
            status: JobStatus::Queued,
            result: None,
            warnings: Vec::new(),
            error: None,
            attempts: 0,
            max_attempts: spec.max_attempts,
            checkpoint: None,
            progress: None,
            partial: None,
            continuations: 0,
            idle_continuations: 0,
            idempotency_key: None,
            request_hash: None,
            submit_token: None,
            lease_owner: None,
            lease_expires_at: None,
            submitted_at: now,
            started_at: None,
            finished_at: None,
            updated_at: now,
            expires_at: now.div_euclid(1000) + spec.ttl_secs,
            redrives: 0,
            callback_url: spec.callback_url,
            webhook: None,
            parent_id: None,
            pathway: None,
            next: Vec::new(),
            lane: Lane::Lambda,
            cancel_requested: false,
            counted: spec.counted,
            slot_at: spec.counted.then(|| now.div_euclid(1000)),
            waiting_for: None,
            parked_at: None,
            last_waitpoint: None,
            slot_page: None,
            deferred: None,
            thread: None,
            sweep_at: Some(now + SWEEP_AFTER_MS),
            version: 0,
        }
    }

    /// A new job that starts at `at` (a delayed start: `run_at` / `delay_seconds`) instead of now: parked
    /// `waiting` on the timer [`START_TIMER`], which has no waitpoint item; the sweep queues it once `at`
    /// has passed, like any due timer.
    pub fn starting_at(mut self, at: Millis) -> Self {
        if at > self.submitted_at {
            self.status = JobStatus::Waiting;
            self.waiting_for = Some(WaitingFor {
                name: START_TIMER.into(),
                expires_at: at,
                detail: None,
            });
        }
        self
    }

    /// Whether the job occupies a slot of its owner's in-flight cap now.
    pub fn holds_slot(&self) -> bool {
        self.counted && !self.status.is_terminal()
    }

    /// How the owner's in-flight count moves when `self` is replaced by `next`: -1 when it becomes
    /// terminal, +1 when a terminal job is redriven or resubmitted, else 0.
    pub fn slot_change(&self, next: &Job) -> i64 {
        i64::from(next.holds_slot()) - i64::from(self.holds_slot())
    }

    /// Its member of the owner's in-flight set (meaningful while [`Self::holds_slot`], and for the
    /// write that ends it).
    pub fn slot(&self) -> Slot {
        Slot {
            job_id: self.job_id.clone(),
            since: self.slot_at,
            page: self.slot_page,
        }
    }

    /// Whether the job holds exactly `slot` now: the set member of an earlier round of the job (before
    /// a redrive) or of a copy that never got written is not held.
    pub fn holds(&self, slot: &Slot) -> bool {
        self.holds_slot() && self.slot() == *slot
    }

    /// Stamps the time a new version takes a slot its previous one did not hold: a fresh member.
    fn stamp_slot(&mut self, prev: &Job, now: Millis) {
        if self.holds_slot() && !prev.holds_slot() {
            self.slot_at = Some(now.div_euclid(1000));
        }
    }

    /// Whether a worker may claim the job at `now`: it waits to run, or its runner's lease has expired
    /// (the runner crashed or was killed). The DynamoDB claim condition is the same predicate.
    pub fn claimable(&self, now: Millis) -> bool {
        match self.status {
            JobStatus::Queued | JobStatus::Retrying => true,
            JobStatus::Running => self.lease_expires_at.is_none_or(|exp| exp < now),
            _ => false,
        }
    }

    /// Whether `owner` holds a live lease on the job.
    pub fn leased_by(&self, owner: &str, now: Millis) -> bool {
        self.status == JobStatus::Running
            && self.lease_owner.as_deref() == Some(owner)
            && self.lease_expires_at.is_some_and(|exp| exp >= now)
    }

    /// `queued`/`retrying`/expired `running` -> `running`, one more attempt, leased to `owner`.
    pub fn claim(
        &self,
        owner: &str,
        lease_expires_at: Millis,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        if !self.claimable(now) {
            return Err(self.illegal("claim"));
        }
        let mut next = self.next_version(now);
        next.status = JobStatus::Running;
        next.attempts += 1;
        next.lease_owner = Some(owner.to_owned());
        next.lease_expires_at = Some(lease_expires_at);
        next.started_at.get_or_insert(now);
        next.deferred = None;
        Ok(next)
    }

    /// `running` -> `completed` with the handler's result. Only the lease holder may complete.
    pub fn complete(
        &self,
        owner: &str,
        result: Json,
        warnings: Vec<String>,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        let mut next = self.finish(owner, JobStatus::Completed, "complete", now)?;
        next.result = Some(result);
        next.warnings = warnings;
        next.error = None;
        Ok(next)
    }

    /// `running` -> `failed` (terminal), `retrying` (will run again) or `dead_letter` (no attempts left).
    pub fn fail(
        &self,
        owner: &str,
        to: JobStatus,
        error: ErrorInfo,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        debug_assert!(matches!(
            to,
            JobStatus::Failed | JobStatus::Retrying | JobStatus::DeadLetter
        ));
        let mut next = self.finish(owner, to, "fail", now)?;
        next.error = Some(error);
        if to == JobStatus::Retrying {
            next.finished_at = None;
        }
        Ok(next)
    }

    /// The status its owner should see at `now`. A `running` job whose lease expired with no attempts left
    /// will never be claimed successfully again (its message goes to the DLQ on its next receive), so it
    /// is reported `dead_letter` before any worker notices.
    pub fn effective_status(&self, now: Millis) -> JobStatus {
        let lease_lost = self.lease_expires_at.is_some_and(|exp| exp < now);
        if self.status == JobStatus::Running && lease_lost && self.attempts >= self.max_attempts {
            JobStatus::DeadLetter
        } else {
            self.status
        }
    }

    /// An operator's redrive -> `queued` for another round of attempts: from `dead_letter` or `failed`, or
    /// from `retrying` / an expired `running` whose message reached the DLQ before a worker could record
    /// it (its last deliveries were lost to crashes). The attempt count restarts; the last error stays as
    /// history and `redrives` counts the rounds.
    pub fn requeue(&self, now: Millis) -> Result<Self, IllegalTransition> {
        let allowed = match self.status {
            JobStatus::DeadLetter | JobStatus::Failed | JobStatus::Retrying => true,
            JobStatus::Running => self.claimable(now),
            JobStatus::Queued
            | JobStatus::Waiting
            | JobStatus::Completed
            | JobStatus::Cancelled => false,
        };
        if !allowed {
            return Err(self.illegal("redrive"));
        }
        let mut next = self.next_version(now);
        next.status = JobStatus::Queued;
        next.attempts = 0;
        next.redrives += 1;
        next.cancel_requested = false;
        next.lease_owner = None;
        next.lease_expires_at = None;
        next.finished_at = None;
        // The next terminal state brings its own event; one not delivered yet is dropped with its state.
        next.webhook = None;
        next.stamp_slot(self, now);
        next.sweep_at = Some(now + SWEEP_AFTER_MS);
        Ok(next)
    }

    /// `queued` -> `queued`, touched: a sweep re-sent its message (so the next sweep waits again).
    pub fn resent(&self, now: Millis) -> Result<Self, IllegalTransition> {
        if self.status != JobStatus::Queued {
            return Err(self.illegal("re-send"));
        }
        let mut next = self.next_version(now);
        next.sweep_at = Some(now + SWEEP_AFTER_MS);
        Ok(next)
    }

    /// `queued` -> `failed`: the submit could not enqueue the job and told its client so.
    pub fn abandon(&self, error: ErrorInfo, now: Millis) -> Result<Self, IllegalTransition> {
        if self.status != JobStatus::Queued {
            return Err(self.illegal("abandon"));
        }
        let mut next = self.next_version(now);
        next.status = JobStatus::Failed;
        next.error = Some(error);
        next.finished_at = Some(now);
        Ok(next)
    }

    /// `failed` with `enqueue_failed` -> `queued`: the client retried a submit whose send had failed.
    pub fn resubmit(&self, now: Millis) -> Result<Self, IllegalTransition> {
        if !self.enqueue_failed() {
            return Err(self.illegal("resubmit"));
        }
        let mut next = self.next_version(now);
        next.status = JobStatus::Queued;
        next.error = None;
        next.finished_at = None;
        next.stamp_slot(self, now);
        next.sweep_at = Some(now + SWEEP_AFTER_MS);
        Ok(next)
    }

    /// Whether the submit told its client the job could not be enqueued.
    pub fn enqueue_failed(&self) -> bool {
        self.status == JobStatus::Failed
            && self
                .error
                .as_ref()
                .is_some_and(|e| e.code == ENQUEUE_FAILED)
    }

    /// Whether the job may have been stored without its message ever being sent (the submit crashed
    /// between the two): never touched by a worker and submitted more than `after_ms` ago.
    pub fn maybe_unsent(&self, now: Millis, after_ms: Millis) -> bool {
        self.status == JobStatus::Queued && self.version == 0 && now - self.submitted_at > after_ms
    }

    /// The owner asks to cancel. A job nobody runs (queued, retrying, or running under an expired lease)
    /// is `cancelled` at once; a running one is flagged, its handler sees the flag through its context
    /// and the worker records `cancelled` when it stops. A finished job cannot be cancelled.
    pub fn cancel(&self, now: Millis) -> Result<(Cancel, Option<Self>), IllegalTransition> {
        match self.effective_status(now) {
            JobStatus::Cancelled => Ok((Cancel::AlreadyDone, None)),
            JobStatus::Queued | JobStatus::Retrying | JobStatus::Waiting => {
                Ok((Cancel::Cancelled, Some(self.cancelled(now))))
            }
            JobStatus::Running if self.claimable(now) => {
                Ok((Cancel::Cancelled, Some(self.cancelled(now))))
            }
            JobStatus::Running if self.cancel_requested => Ok((Cancel::AlreadyDone, None)),
            JobStatus::Running => {
                let mut next = self.next_version(now);
                next.cancel_requested = true;
                Ok((Cancel::Requested, Some(next)))
            }
            JobStatus::Completed | JobStatus::Failed | JobStatus::DeadLetter => {
                Err(self.illegal("cancel"))
            }
        }
    }

    /// `running` -> `cancelled`: the lease holder stops a job whose cancellation was requested.
    pub fn stop_cancelled(&self, owner: &str, now: Millis) -> Result<Self, IllegalTransition> {
        self.finish(owner, JobStatus::Cancelled, "cancel", now)
    }

    /// `running` -> `dead_letter` for a job whose lease expired on its last attempt (its runner died):
    /// records what [`Self::effective_status`] already reports, and frees its slot.
    pub fn bury(&self, now: Millis) -> Result<Self, IllegalTransition> {
        if self.status != JobStatus::Running || self.effective_status(now) != JobStatus::DeadLetter
        {
            return Err(self.illegal("dead-letter"));
        }
        let mut next = self
            .next_version(now)
            .leaving_running(JobStatus::DeadLetter, now);
        next.error = Some(ErrorInfo::new(
            "lease_expired",
            "the worker running the last attempt stopped before recording an outcome",
            true,
        ));
        Ok(next)
    }

    fn cancelled(&self, now: Millis) -> Self {
        let mut next = self
            .next_version(now)
            .leaving_running(JobStatus::Cancelled, now);
        next.waiting_for = None;
        next
    }

    /// The lease holder extends its lease to `until` (a heartbeat).
    pub fn heartbeat(
        &self,
        owner: &str,
        until: Millis,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        let mut next = self.holding(owner, "heartbeat", now)?;
        next.lease_expires_at = Some(until);
        Ok(next)
    }

    /// The lease holder saves a checkpoint; a later attempt or continuation starts from it.
    pub fn save_checkpoint(
        &self,
        owner: &str,
        checkpoint: Json,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        let mut next = self.holding(owner, "checkpoint", now)?;
        next.checkpoint = Some(checkpoint);
        Ok(next)
    }

    /// The lease holder reports progress.
    pub fn report_progress(
        &self,
        owner: &str,
        progress: Progress,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        let mut next = self.holding(owner, "report progress of", now)?;
        next.progress = Some(progress);
        Ok(next)
    }

    /// The lease holder publishes a partial result: it replaces the last one, numbered one more.
    pub fn publish_partial(
        &self,
        owner: &str,
        value: Json,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        let mut next = self.holding(owner, "publish a partial result of", now)?;
        let seq = self.partial.as_ref().map_or(0, |p| p.seq) + 1;
        next.partial = Some(Partial { seq, value });
        Ok(next)
    }

    /// `running` -> `queued`: the handler yielded before the invocation's deadline and the job continues
    /// from its checkpoint in a new message. Not a failed attempt: the attempt is given back.
    /// `progressed`: whether the run recorded a step or saved a checkpoint (else the continuation is
    /// idle, and idle ones in a row are counted).
    pub fn suspend(
        &self,
        owner: &str,
        progressed: bool,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        let mut next = self.finish(owner, JobStatus::Queued, "suspend", now)?;
        next.attempts = next.attempts.saturating_sub(1);
        next.continuations += 1;
        next.idle_continuations = if progressed {
            0
        } else {
            self.idle_continuations + 1
        };
        Ok(next)
    }

    /// `running` -> `queued`: the lease holder gives the job back unfinished (its worker is shutting
    /// down), so another worker can take it at once. Not a failed attempt: the attempt is given back.
    pub fn release(&self, owner: &str, now: Millis) -> Result<Self, IllegalTransition> {
        let mut next = self.finish(owner, JobStatus::Queued, "release", now)?;
        next.attempts = next.attempts.saturating_sub(1);
        Ok(next)
    }

    /// `running` -> `waiting` on `on`: the handler reached a waitpoint that is not settled yet. Not a
    /// failed attempt (the attempt is given back); the lease is released and the message acknowledged,
    /// so nothing runs or polls until [`Self::resume`].
    pub fn park(
        &self,
        owner: &str,
        on: WaitingFor,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        let mut next = self.finish(owner, JobStatus::Waiting, "park", now)?;
        next.attempts = next.attempts.saturating_sub(1);
        next.parked_at = Some(now);
        next.last_waitpoint = Some(on.name.clone());
        // Its index entry moves anyway (to its timer): the check time of a pending event is free.
        next.sweep_at = Some(now + SWEEP_AFTER_MS);
        // Its receiver hears of the wait (`job.waiting`), marked in this same write, as a terminal
        // state's event is; one of an earlier wait not delivered yet is superseded, being over.
        if next.callback_url.is_some() {
            next.webhook = Some(WebhookState {
                waiting: Some(on.clone()),
                ..WebhookState::pending(&next, now)
            });
        }
        next.waiting_for = Some(on);
        Ok(next)
    }

    /// `waiting` on waitpoint `name` -> `queued`: the waitpoint was completed or timed out, and the job
    /// runs again (its handler replays its steps and finds the waitpoint settled). Refused for a job
    /// parked on another waitpoint or not parked at all, so a late or repeated resume changes nothing.
    pub fn resume(&self, name: &str, now: Millis) -> Result<Self, IllegalTransition> {
        if !self.waits_on(name) {
            return Err(self.illegal("resume"));
        }
        let mut next = self.next_version(now);
        next.status = JobStatus::Queued;
        next.waiting_for = None;
        // Its index entry moves anyway (off its timer): back under the sweep's watch from now.
        next.sweep_at = Some(now + SWEEP_AFTER_MS);
        Ok(next)
    }

    /// When the due task must look at this job (see [`crate::due`]): a parked job's timer (its
    /// waitpoint's timeout, a sleep's end, a delayed start). `None` for a job that is not `waiting`, so
    /// the stores keep it out of the due index and a job that never waits pays nothing for it.
    pub fn due_at(&self) -> Option<Millis> {
        if self.status != JobStatus::Waiting {
            return None;
        }
        self.waiting_for.as_ref().map(|w| w.expires_at)
    }

    /// Where the due index holds the job, if anywhere (the stores key its entry by this; see
    /// [`crate::store::DueTimers`]): a parked job under its timer, for the due task; any other job the
    /// sweep must watch (one not finished, or whose webhook event is pending) under its check time
    /// [`Self::sweep_at`]. A parked job whose `job.waiting` event is pending is the sweep's until the
    /// event is delivered, at its check time or its timer, whichever comes first. A finished job
    /// whose event is settled is in no index: the sweep never reads it again.
    pub fn watch(&self) -> Option<Watch> {
        let pending = self.event_pending();
        match (self.due_at(), self.sweep_at) {
            (Some(timer), Some(at)) if pending => Some(Watch::Sweep(at.min(timer))),
            (Some(timer), _) => Some(Watch::Timer(timer)),
            (None, Some(at)) if pending || !self.status.is_terminal() => Some(Watch::Sweep(at)),
            _ => None,
        }
    }

    /// When a sweep that found the job healthy at `now` should look at it again: when it could next
    /// need repair. A queued job once its message may be lost; a running job's last attempt when its
    /// lease lapses; a pending webhook event once its attempt is overdue; anything else a
    /// [`SWEEP_AFTER`] on. Never less than a minute ahead. While the job is in flight, never more
    /// than [`SWEEP_AFTER`] ahead either: a job that ends with a pending event keeps its check time,
    /// so the sweep sees that event by the time it is overdue.
    pub fn next_check(&self, now: Millis) -> Millis {
        let later = now + SWEEP_AFTER_MS;
        let event = self
            .webhook
            .as_ref()
            .filter(|w| w.status == WebhookStatus::Pending)
            .and_then(|w| w.next_attempt_at)
            .map(|t| t + SWEEP_AFTER_MS);
        let at = match self.status {
            JobStatus::Queued => self.updated_at + SWEEP_AFTER_MS,
            JobStatus::Running if self.attempts >= self.max_attempts => {
                self.lease_expires_at.map_or(later, |l| l.min(later))
            }
            _ => event.unwrap_or(later),
        };
        at.max(now + MIN_RECHECK_MS)
    }

    /// The same job, to be looked at by the sweep again at `at`: a new version, so a writer holding
    /// the old one reads it again instead of writing the old check time back, but not an update
    /// (`updated_at` stays: it tells the sweep when the job last moved).
    pub fn swept(&self, at: Millis) -> Self {
        let mut next = self.clone();
        next.version += 1;
        next.sweep_at = Some(at);
        next
    }

    /// Whether the job is parked on waitpoint `name`.
    pub fn waits_on(&self, name: &str) -> bool {
        self.status == JobStatus::Waiting
            && self.waiting_for.as_ref().is_some_and(|w| w.name == name)
    }

    /// A new version of a running job, if `owner` holds its lease.
    fn holding(
        &self,
        owner: &str,
        action: &'static str,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        if self.status != JobStatus::Running || self.lease_owner.as_deref() != Some(owner) {
            return Err(self.illegal(action));
        }
        Ok(self.next_version(now))
    }

    /// Common part of leaving `running`: the caller must hold the lease; the lease is released.
    fn finish(
        &self,
        owner: &str,
        to: JobStatus,
        action: &'static str,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        Ok(self.holding(owner, action, now)?.leaving_running(to, now))
    }

    /// Moves this (new) version to `to`, releasing the lease; a terminal `to` stamps the finish time and
    /// marks the webhook event pending, in the same write.
    fn leaving_running(mut self, to: JobStatus, now: Millis) -> Self {
        self.status = to;
        self.lease_owner = None;
        self.lease_expires_at = None;
        if to.is_terminal() {
            self.finished_at = Some(now);
            if self.callback_url.is_some() {
                self.webhook = Some(WebhookState::pending(&self, now));
                // The sweep watches a pending event; a record older than the check time gets one.
                self.sweep_at.get_or_insert(now + SWEEP_AFTER_MS);
            }
        }
        self
    }

    /// The follow-up jobs of this job's completion (see [`Self::complete_into`]): stage `kind`, one per
    /// input, owned and counted like their parent, linked to it, run in `lane` (the stage's).
    pub fn children(&self, kind: &str, lane: Lane, inputs: &[Json], now: Millis) -> Vec<Job> {
        let ttl = self.expires_at - self.submitted_at.div_euclid(1000);
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                let mut child = Job::new(
                    NewJob {
                        user_id: self.user_id.clone(),
                        kind: kind.to_owned(),
                        input: input.clone(),
                        max_attempts: self.max_attempts,
                        ttl_secs: ttl,
                        callback_url: None,
                        counted: self.counted,
                    },
                    now,
                );
                child.job_id = JobId::child_of(&self.job_id, i);
                // The parent's page, which its member leaves right after the completion: the store
                // adds children's members without a cap, as it always has (see `crate::store`).
                child.slot_page = self.slot_page;
                child.parent_id = Some(self.job_id.clone());
                child.lane = lane;
                child
            })
            .collect()
    }

    /// `running` -> `completed`, starting the next stage: `children` (from [`Self::children`]) are
    /// created in the same atomic write.
    pub fn complete_into(
        &self,
        owner: &str,
        result: Json,
        warnings: Vec<String>,
        pathway: &str,
        children: &[Job],
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        let mut next = self.complete(owner, result, warnings, now)?;
        next.pathway = Some(pathway.to_owned());
        next.next = children.iter().map(|c| c.job_id.clone()).collect();
        Ok(next)
    }

    /// Whether its webhook event waits for an attempt that was due before `before`: the message that
    /// should have brought it was lost (the sweep re-announces it).
    pub fn webhook_overdue(&self, before: Millis) -> bool {
        self.webhook.as_ref().is_some_and(|w| {
            w.status == WebhookStatus::Pending && w.next_attempt_at.is_some_and(|t| t < before)
        })
    }

    /// Whether the job has a webhook event waiting for delivery.
    pub fn event_pending(&self) -> bool {
        self.webhook
            .as_ref()
            .is_some_and(|w| w.status == WebhookStatus::Pending)
    }

    /// Whether the job's webhook event `event_id` still waits for delivery.
    pub fn webhook_pending(&self, event_id: &str) -> bool {
        self.webhook
            .as_ref()
            .is_some_and(|w| w.status == WebhookStatus::Pending && w.event_id == event_id)
    }

    /// Records a delivery attempt (or a re-announcement) of the pending event `state.event_id`.
    pub fn with_webhook(
        &self,
        state: WebhookState,
        now: Millis,
    ) -> Result<Self, IllegalTransition> {
        if !self.webhook_pending(&state.event_id) {
            return Err(self.illegal("record a webhook attempt of"));
        }
        let mut next = self.next_version(now);
        next.webhook = Some(state);
        Ok(next)
    }

    fn next_version(&self, now: Millis) -> Self {
        let mut next = self.clone();
        next.version += 1;
        next.updated_at = now;
        next
    }

    fn illegal(&self, action: &'static str) -> IllegalTransition {
        IllegalTransition {
            action,
            from: self.status,
        }
    }
}

/// Why a job waits to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferReason {
    Concurrency,
    Rate,
    /// A thread's earlier run has not finished (see [`crate::thread`]).
    Thread,
}

impl DeferReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::Rate => "rate",
            Self::Thread => "thread",
        }
    }
}

/// A job's last deferral: kept on the job (queued or retrying) for `GET /jobs/{id}`, cleared by its
/// claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deferred {
    pub reason: DeferReason,
    /// The key it waits on: `kind`, `user`, `model` or the input pointer.
    pub key: String,
    /// About when it is tried again (epoch ms).
    pub until: Millis,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: Millis = 1_700_000_000_000;

    fn job() -> Job {
        job_counted(false)
    }

    fn job_counted(counted: bool) -> Job {
        Job::new(
            NewJob {
                user_id: "u1".into(),
                kind: "echo".into(),
                input: Json::from(json!({"a": 1})),
                max_attempts: 5,
                ttl_secs: 86_400,
                callback_url: None,
                counted,
            },
            T0,
        )
    }

    fn err(retryable: bool) -> ErrorInfo {
        ErrorInfo::new("boom", "it broke", retryable)
    }

    #[test]
    fn a_new_job_is_queued_with_no_attempts_and_a_ttl() {
        let j = job();
        assert_eq!(j.status, JobStatus::Queued);
        assert_eq!(j.attempts, 0);
        assert_eq!(j.expires_at, T0 / 1000 + 86_400);
        assert!(j.claimable(T0));
    }

    #[test]
    fn job_ids_parse_case_insensitively_and_reject_garbage() {
        let id = JobId::generate(T0);
        assert_eq!(JobId::parse(&id.as_str().to_lowercase()).unwrap(), id);
        assert_eq!(JobId::parse("not-a-job"), Err(InvalidJobId));
        assert_eq!(JobId::parse(""), Err(InvalidJobId));
        assert_eq!(JobId::parse(&format!("{id}0")), Err(InvalidJobId));
    }

    #[test]
    fn job_ids_are_time_sortable_and_distinct() {
        let a = JobId::generate(T0);
        let b = JobId::generate(T0 + 1);
        assert!(a < b);
        assert_ne!(JobId::generate(T0), JobId::generate(T0));
    }

    #[test]
    fn claim_leases_the_job_and_counts_the_attempt() {
        let j = job().claim("w1", T0 + 60_000, T0 + 1).unwrap();
        assert_eq!(j.status, JobStatus::Running);
        assert_eq!(j.attempts, 1);
        assert_eq!(j.version, 1);
        assert_eq!(j.started_at, Some(T0 + 1));
        assert!(j.leased_by("w1", T0 + 60_000));
        assert!(!j.leased_by("w2", T0 + 1));
    }

    #[test]
    fn a_running_job_with_a_live_lease_cannot_be_claimed_again() {
        let j = job().claim("w1", T0 + 60_000, T0).unwrap();
        assert_eq!(
            j.claim("w2", T0 + 120_000, T0 + 59_999),
            Err(IllegalTransition {
                action: "claim",
                from: JobStatus::Running
            })
        );
    }

    #[test]
    fn an_expired_lease_lets_another_worker_claim_and_keeps_the_first_start_time() {
        let j = job().claim("w1", T0 + 60_000, T0).unwrap();
        let j2 = j.claim("w2", T0 + 200_000, T0 + 60_001).unwrap();
        assert_eq!(j2.attempts, 2);
        assert_eq!(j2.started_at, Some(T0));
        // The first worker lost its lease and can no longer finish the job.
        assert!(
            j2.complete("w1", Json::from(json!(1)), vec![], T0 + 60_002)
                .is_err()
        );
    }

    #[test]
    fn completion_needs_the_lease_and_is_terminal() {
        let j = job().claim("w1", T0 + 60_000, T0).unwrap();
        let done = j
            .complete(
                "w1",
                Json::from(json!({"ok": true})),
                vec!["slow".into()],
                T0 + 5,
            )
            .unwrap();
        assert_eq!(done.status, JobStatus::Completed);
        assert_eq!(done.result, Some(Json::from(json!({"ok": true}))));
        assert_eq!(done.finished_at, Some(T0 + 5));
        assert_eq!(done.lease_owner, None);
        assert!(!done.claimable(T0 + 1_000_000));
        assert!(
            done.complete("w1", Json::from(json!(2)), vec![], T0 + 6)
                .is_err()
        );
        assert!(
            job()
                .complete("w1", Json::from(json!(1)), vec![], T0)
                .is_err()
        );
    }

    #[test]
    fn a_retryable_failure_makes_the_job_claimable_again() {
        let j = job().claim("w1", T0 + 60_000, T0).unwrap();
        let r = j
            .fail("w1", JobStatus::Retrying, err(true), T0 + 1)
            .unwrap();
        assert_eq!(r.status, JobStatus::Retrying);
        assert_eq!(r.finished_at, None);
        assert!(r.claimable(T0 + 2));
        let again = r.claim("w2", T0 + 90_000, T0 + 3).unwrap();
        assert_eq!(again.attempts, 2);
        assert_eq!(
            again.error,
            Some(err(true)),
            "last error stays visible while retrying"
        );
    }

    #[test]
    fn terminal_failure_and_dead_letter_are_final() {
        let j = job().claim("w1", T0 + 60_000, T0).unwrap();
        for to in [JobStatus::Failed, JobStatus::DeadLetter] {
            let f = j.fail("w1", to, err(false), T0 + 1).unwrap();
            assert_eq!(f.status, to);
            assert!(f.status.is_terminal());
            assert_eq!(f.finished_at, Some(T0 + 1));
            assert!(!f.claimable(i64::MAX));
        }
    }

    #[test]
    fn an_expired_lease_with_no_attempts_left_reads_as_dead_letter() {
        let mut j = job();
        j.max_attempts = 2;
        let j = j
            .claim("w1", T0 + 10, T0)
            .unwrap()
            .claim("w2", T0 + 100, T0 + 11)
            .unwrap();
        assert_eq!(
            j.effective_status(T0 + 100),
            JobStatus::Running,
            "lease still live"
        );
        assert_eq!(j.effective_status(T0 + 101), JobStatus::DeadLetter);
        let one_left = job().claim("w1", T0 + 10, T0).unwrap();
        assert_eq!(
            one_left.effective_status(T0 + 11),
            JobStatus::Running,
            "attempts remain"
        );
    }

    #[test]
    fn redrive_requeues_dead_and_failed_jobs_keeping_their_history() {
        let j = job().claim("w1", T0 + 60_000, T0).unwrap();
        let dead = j
            .fail("w1", JobStatus::DeadLetter, err(true), T0 + 1)
            .unwrap();
        let again = dead.requeue(T0 + 2).unwrap();
        assert_eq!(
            (again.status, again.attempts, again.redrives),
            (JobStatus::Queued, 0, 1)
        );
        assert_eq!(again.error, Some(err(true)), "the last error is kept");
        assert!(again.claimable(T0 + 3));
        let failed = j.fail("w1", JobStatus::Failed, err(false), T0 + 1).unwrap();
        assert!(failed.requeue(T0 + 2).is_ok());
        assert!(job().requeue(T0).is_err(), "a queued job is not redriven");
        let retrying = j
            .fail("w1", JobStatus::Retrying, err(true), T0 + 1)
            .unwrap();
        assert!(retrying.requeue(T0 + 2).is_ok(), "stranded while retrying");
        assert!(j.requeue(T0 + 1).is_err(), "running with a live lease");
        assert!(
            j.requeue(T0 + 60_001).is_ok(),
            "running with an expired lease"
        );
        let done = j
            .complete("w1", Json::from(json!(1)), vec![], T0 + 1)
            .unwrap();
        assert!(
            done.requeue(T0 + 2).is_err(),
            "a completed job is never run again"
        );
    }

    #[test]
    fn only_untouched_old_queued_jobs_are_presumed_unsent() {
        let j = job();
        assert!(!j.maybe_unsent(T0 + 60_000, 60_000), "young");
        assert!(j.maybe_unsent(T0 + 60_001, 60_000));
        let claimed = j.claim("w", T0 + 1, T0).unwrap();
        let retried = claimed
            .fail("w", JobStatus::Retrying, err(true), T0)
            .unwrap();
        assert!(
            !retried.maybe_unsent(T0 + 600_000, 60_000),
            "a worker has seen it"
        );
    }

    #[test]
    fn a_job_whose_enqueue_failed_can_be_resubmitted_once() {
        let mut e = err(true);
        e.code = ENQUEUE_FAILED.into();
        let failed = job().abandon(e, T0 + 1).unwrap();
        assert!(failed.enqueue_failed());
        let again = failed.resubmit(T0 + 2).unwrap();
        assert_eq!(
            (again.status, again.error.clone()),
            (JobStatus::Queued, None)
        );
        assert!(again.resubmit(T0 + 3).is_err());
        let other = job()
            .claim("w", T0 + 9, T0)
            .unwrap()
            .fail("w", JobStatus::Failed, err(false), T0)
            .unwrap();
        assert!(
            other.resubmit(T0 + 1).is_err(),
            "a handler failure is not resubmitted"
        );
    }

    #[test]
    fn the_lease_holder_heartbeats_checkpoints_and_reports_progress_and_others_cannot() {
        let j = job().claim("w1", T0 + 10, T0).unwrap();
        let j = j.heartbeat("w1", T0 + 100, T0 + 5).unwrap();
        assert_eq!(j.lease_expires_at, Some(T0 + 100));
        let j = j
            .save_checkpoint("w1", Json::from(json!({"step": 2})), T0 + 6)
            .unwrap();
        let progress = Progress {
            percent: 40,
            message: "step 2".into(),
        };
        let j = j.report_progress("w1", progress.clone(), T0 + 7).unwrap();
        assert_eq!(
            (j.checkpoint.clone(), j.progress.clone(), j.version),
            (Some(Json::from(json!({"step": 2}))), Some(progress), 4)
        );
        assert!(j.heartbeat("w2", T0 + 200, T0 + 8).is_err());
        assert!(
            j.save_checkpoint("w2", Json::from(json!(0)), T0 + 8)
                .is_err()
        );
        let done = j
            .complete("w1", Json::from(json!(1)), vec![], T0 + 9)
            .unwrap();
        assert!(
            done.heartbeat("w1", T0 + 200, T0 + 10).is_err(),
            "no heartbeat after the end"
        );
    }

    #[test]
    fn a_suspended_job_is_queued_with_its_checkpoint_and_the_attempt_given_back() {
        let j = job().claim("w1", T0 + 10, T0).unwrap();
        let j = j
            .save_checkpoint("w1", Json::from(json!({"step": 5})), T0 + 1)
            .unwrap();
        let s = j.suspend("w1", true, T0 + 2).unwrap();
        assert_eq!(
            (s.status, s.attempts, s.continuations),
            (JobStatus::Queued, 0, 1)
        );
        assert_eq!(s.checkpoint, Some(Json::from(json!({"step": 5}))));
        assert_eq!(s.lease_owner, None);
        assert!(s.claimable(T0 + 3));
    }

    #[test]
    fn status_names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), json!(s.as_str()));
        }
        assert!("done".parse::<JobStatus>().is_err());
    }

    #[test]
    fn the_storage_form_keeps_json_payloads_exact() {
        let mut j = job();
        j.input = Json::from(json!({"deep": [[[[{"n": 1.5e300}]]]], "big": 123456789012345678u64}));
        j.checkpoint = Some(Json::from(json!({"step": 3})));
        let stored = serde_json::to_value(&j).unwrap();
        assert!(stored["input"].is_string());
        let back: Job = serde_json::from_value(stored).unwrap();
        assert_eq!(back, j);
    }

    fn counted_job() -> Job {
        job_counted(true)
    }

    #[test]
    fn a_waiting_job_is_cancelled_at_once_and_a_running_one_is_asked_to_stop() {
        let (what, next) = counted_job().cancel(T0 + 1).unwrap();
        let next = next.unwrap();
        assert_eq!(
            (what, next.status),
            (Cancel::Cancelled, JobStatus::Cancelled)
        );
        assert_eq!(next.finished_at, Some(T0 + 1));
        assert_eq!(next.cancel(T0 + 2).unwrap(), (Cancel::AlreadyDone, None));

        let running = counted_job().claim("w", T0 + 60_000, T0).unwrap();
        let (what, asked) = running.cancel(T0 + 1).unwrap();
        let asked = asked.unwrap();
        assert_eq!(
            (what, asked.status, asked.cancel_requested),
            (Cancel::Requested, JobStatus::Running, true)
        );
        assert_eq!(asked.cancel(T0 + 2).unwrap(), (Cancel::AlreadyDone, None));
        // Only the lease holder records the stop.
        assert!(asked.stop_cancelled("other", T0 + 3).is_err());
        let stopped = asked.stop_cancelled("w", T0 + 3).unwrap();
        assert_eq!(stopped.status, JobStatus::Cancelled);
        // A running job whose runner died is cancelled at once: nobody would see the flag.
        let (what, _) = running.cancel(T0 + 60_001).unwrap();
        assert_eq!(what, Cancel::Cancelled);
    }

    #[test]
    fn finished_jobs_cannot_be_cancelled() {
        let running = job().claim("w", T0 + 60_000, T0).unwrap();
        let done = running
            .complete("w", Json::from(json!(1)), vec![], T0 + 1)
            .unwrap();
        assert!(done.cancel(T0 + 2).is_err());
        let failed = running
            .fail("w", JobStatus::Failed, err(false), T0 + 1)
            .unwrap();
        assert!(failed.cancel(T0 + 2).is_err());
        // Reads as dead_letter: finished too.
        let mut last = job();
        last.max_attempts = 1;
        let last = last.claim("w", T0 + 10, T0).unwrap();
        assert!(last.cancel(T0 + 11).is_err());
    }

    #[test]
    fn an_expired_last_attempt_is_buried_and_nothing_else_is() {
        let mut j = job();
        j.max_attempts = 1;
        let running = j.claim("w", T0 + 10, T0).unwrap();
        assert!(running.bury(T0 + 5).is_err(), "lease still live");
        let dead = running.bury(T0 + 11).unwrap();
        assert_eq!(dead.status, JobStatus::DeadLetter);
        assert_eq!(dead.error.unwrap().code, "lease_expired");
        assert!(
            job()
                .claim("w", T0 + 10, T0)
                .unwrap()
                .bury(T0 + 11)
                .is_err(),
            "attempts left"
        );
    }

    #[test]
    fn a_counted_job_holds_a_slot_exactly_while_not_terminal() {
        let j = counted_job();
        let running = j.claim("w", T0 + 60_000, T0).unwrap();
        assert_eq!(j.slot_change(&running), 0);
        let retrying = running
            .fail("w", JobStatus::Retrying, err(true), T0 + 1)
            .unwrap();
        assert_eq!(running.slot_change(&retrying), 0);
        let dead = retrying
            .claim("w", T0 + 60_000, T0 + 2)
            .unwrap()
            .fail("w", JobStatus::DeadLetter, err(true), T0 + 3)
            .unwrap();
        assert_eq!(retrying.slot_change(&dead), -1);
        let redriven = dead.requeue(T0 + 4).unwrap();
        assert_eq!(dead.slot_change(&redriven), 1);
        let (_, cancelled) = redriven.cancel(T0 + 5).unwrap();
        assert_eq!(redriven.slot_change(&cancelled.unwrap()), -1);
        // Jobs submitted without a cap never move the counter.
        let free = job();
        let (_, c) = free.cancel(T0).unwrap();
        assert_eq!(free.slot_change(&c.unwrap()), 0);
    }

    #[test]
    fn a_job_that_takes_its_slot_again_gets_a_new_member_and_holds_only_that_one() {
        let j = counted_job();
        assert_eq!(j.slot_at, Some(T0 / 1000));
        assert!(j.holds(&j.slot()));
        let dead = j
            .claim("w", T0 + 60_000, T0)
            .unwrap()
            .fail("w", JobStatus::DeadLetter, err(true), T0 + 1)
            .unwrap();
        assert_eq!(
            dead.slot(),
            j.slot(),
            "the terminal write names the member to remove"
        );
        assert!(!dead.holds(&j.slot()));
        let redriven = dead.requeue(T0 + 5_000).unwrap();
        assert_eq!(redriven.slot_at, Some(T0 / 1000 + 5));
        assert!(redriven.holds(&redriven.slot()));
        assert!(
            !redriven.holds(&j.slot()),
            "the first round's member is not held"
        );
        // A change that keeps the slot keeps its member.
        let running = redriven.claim("w", T0 + 70_000, T0 + 6_000).unwrap();
        assert_eq!(running.slot(), redriven.slot());
        assert_eq!(job().slot_at, None, "no cap, no member");
    }

    #[test]
    fn slot_members_round_trip_and_foreign_ones_are_refused() {
        let slot = counted_job().slot();
        let member = slot.to_string();
        assert_eq!(member, format!("{}@{}", slot.job_id, T0 / 1000));
        assert_eq!(Slot::parse(&member, None), Some(slot.clone()));
        let bare = Slot::parse(slot.job_id.as_str(), None).unwrap();
        assert_eq!((bare.job_id, bare.since), (slot.job_id, None));
        for bad in ["", "nope", "01ARZ3NDEKTSV4RRFFQ69G5FAV@x", "@12"] {
            assert_eq!(Slot::parse(bad, None), None, "{bad:?}");
        }
    }

    #[test]
    fn a_keys_job_id_is_fixed_by_the_key_and_valid() {
        let a = JobId::for_key("scoped-a");
        assert_eq!(a, JobId::for_key("scoped-a"));
        assert_ne!(a, JobId::for_key("scoped-b"));
        assert_eq!(JobId::parse(a.as_str()), Ok(a));
    }

    fn on(name: &str) -> WaitingFor {
        WaitingFor {
            name: name.into(),
            expires_at: T0 + 86_400_000,
            detail: None,
        }
    }

    #[test]
    fn parking_gives_the_attempt_back_and_drops_the_lease() {
        let running = counted_job().claim("w", T0 + 60_000, T0).unwrap();
        assert!(
            running.park("other", on("approve"), T0 + 1).is_err(),
            "only the lease holder parks"
        );
        let parked = running.park("w", on("approve"), T0 + 1).unwrap();
        assert_eq!(
            (
                parked.status,
                parked.attempts,
                parked.lease_owner.clone(),
                parked.lease_expires_at
            ),
            (JobStatus::Waiting, 0, None, None)
        );
        assert_eq!(parked.waiting_for, Some(on("approve")));
        assert_eq!(parked.finished_at, None, "not finished");
        assert!(
            !parked.claimable(T0 + 10_000_000),
            "a stray message does not run it"
        );
        assert_eq!(
            running.slot_change(&parked),
            0,
            "a waiting job keeps its slot"
        );
        assert!(
            parked.requeue(T0 + 2).is_err(),
            "not redriven while waiting"
        );
        assert!(
            job().park("w", on("approve"), T0).is_err(),
            "a queued job is not parked"
        );
    }

    #[test]
    fn a_parked_job_resumes_once_and_only_from_its_own_waitpoint() {
        let parked = job()
            .claim("w", T0 + 60_000, T0)
            .unwrap()
            .park("w", on("approve"), T0 + 1)
            .unwrap();
        assert!(parked.resume("other", T0 + 2).is_err());
        let resumed = parked.resume("approve", T0 + 2).unwrap();
        assert_eq!(
            (resumed.status, resumed.waiting_for.clone()),
            (JobStatus::Queued, None)
        );
        assert!(resumed.claimable(T0 + 3));
        assert!(
            resumed.resume("approve", T0 + 3).is_err(),
            "a second resume changes nothing"
        );
        let again = resumed.claim("w2", T0 + 60_000, T0 + 3).unwrap();
        assert_eq!(again.attempts, 1, "the parked attempt did not count");
    }

    #[test]
    fn cancelling_a_waiting_job_is_immediate_and_frees_its_slot() {
        let parked = counted_job()
            .claim("w", T0 + 60_000, T0)
            .unwrap()
            .park("w", on("approve"), T0 + 1)
            .unwrap();
        let (what, next) = parked.cancel(T0 + 2).unwrap();
        let next = next.unwrap();
        assert_eq!(
            (what, next.status),
            (Cancel::Cancelled, JobStatus::Cancelled)
        );
        assert_eq!(
            (next.waiting_for.clone(), next.finished_at),
            (None, Some(T0 + 2))
        );
        assert_eq!(parked.slot_change(&next), -1);
        assert!(
            next.resume("approve", T0 + 3).is_err(),
            "a cancelled job never resumes"
        );
    }

    #[test]
    fn only_a_waiting_job_is_due_and_at_its_timer() {
        let running = job().claim("w", T0 + 60_000, T0).unwrap();
        assert_eq!((job().due_at(), running.due_at()), (None, None));
        let parked = running.park("w", on("approve"), T0 + 1).unwrap();
        assert_eq!(parked.due_at(), Some(T0 + 86_400_000));
        assert_eq!(parked.resume("approve", T0 + 2).unwrap().due_at(), None);
        assert_eq!(parked.cancel(T0 + 2).unwrap().1.unwrap().due_at(), None);
        assert_eq!(job().starting_at(T0 + 5).due_at(), Some(T0 + 5));
    }

    #[test]
    fn a_delayed_start_waits_on_its_timer_and_resumes_like_a_wait() {
        let later = job().starting_at(T0 + 60_000);
        assert_eq!(later.status, JobStatus::Waiting);
        assert_eq!(later.waiting_for.clone().unwrap().expires_at, T0 + 60_000);
        assert!(!later.claimable(T0 + 120_000));
        let started = later.resume(START_TIMER, T0 + 60_001).unwrap();
        assert_eq!((started.status, started.attempts), (JobStatus::Queued, 0));
        assert_eq!(
            job().starting_at(T0).status,
            JobStatus::Queued,
            "now is now"
        );
        assert_eq!(
            job().starting_at(T0 - 5).status,
            JobStatus::Queued,
            "the past is now"
        );
    }
}
