//! Where jobs live: capability-shaped ports, their DynamoDB (`dynamo`) and embedded (`memory`) adapters,
//! and the one bounded read-modify-write loop every writer uses.
//!
//! The store never decides a transition: it persists what [`crate::job`] computed, over the version that
//! value was computed from, so a concurrent change is detected instead of overwritten.
//!
//! Each capability is one trait, and each function's port is the set its IAM policy allows (see
//! template.yaml): [`SubmitStore`] (insert, read, write), [`StatusStore`] (read, list, write, cancel
//! signals), [`WorkerStore`] (read, claim, write, read cancel signals), [`SweepStore`] (scan, read, write,
//! slots). A function handed the wrong port fails to compile, not at runtime with AccessDenied.
//!
//! # What a job costs, and why it stays exact
//!
//! On AWS the bill is DynamoDB write units, and a transaction bills every item twice. So the happy path
//! has no transaction: one single-item conditional write per state change.
//!
//! - **The Idempotency-Key is the job id** ([`JobId::for_key`]): the job's own conditional PutItem
//!   (`attribute_not_exists`) reserves the key; a retry reads the job by the same id. There is no key
//!   item. A key names its job for as long as the record is kept (its TTL).
//! - **The per-user cap is a ledger of slot members** (see [`crate::slots`]), `{job_id}@{second}`
//!   ([`Slot`]), kept in **pages**: items `user#<hash of owner>#<page>` of at most 24 members, whose
//!   capacities add up to the cap. A job's member is added (conditional on its page holding fewer than
//!   the page's capacity) *before* the write that makes the job hold a slot (its insert, a redrive),
//!   and removed *after* the write that ends it (its terminal write; a retry that finds that write
//!   landed removes it again: removals are idempotent). So at every instant **every job that holds a
//!   slot has its member on its page**, and no page — so not the cap, their sum — is ever exceeded. The
//!   converse can fail only for a moment (between the two writes) or after a crash between them: a
//!   member no job holds. Those are removed by the sweep, but only once older than
//!   [`crate::sweep::SLOT_GRACE`], far longer than any invocation that could still be about to write
//!   the job that holds it; a write that did not land for sure (a timeout) is never compensated in
//!   place for the same reason. A leak can thus cost an owner a slot for a while, never let them exceed
//!   the cap.
//! - **Why pages, and which one**: one item holding every member grew ~37 bytes per job in flight, and
//!   a write bills a unit per KB of the item, so a busy owner paid more per job the more they ran (4
//!   units per add at 100 in flight), all on one partition key. A page stays under 1 KB: an add and a
//!   removal bill one unit each at any count, spread over `cap / 24` keys. A job goes to its home page
//!   (a hash of its id) when that has room, else to one its store instance knows has room; the record
//!   keeps the page ([`Job::slot_page`]) for the removal. Refusing costs at most
//!   [`crate::slots::MAX_ADDS`] refused writes and one read of the owner's pages. Children of a
//!   pathway and redriven jobs re-take a slot without the cap check, as they always did: on their
//!   parent's / their own page.
//! - **Listing is sharded too**: the `by_user_shard` index is keyed by `user_shard` = `<owner>#<n>`,
//!   `n` one of [`dynamo::USER_SHARDS`] from the job id, so one owner's inserts spread over that many
//!   index partitions; a list merges the shards' queries newest first. It holds keys only, so state
//!   changes never write to it.
//!
//! Per job on the happy path (items under 1 KB): insert 1 + index 1, claim 1, completion 1; with the
//! cap, +1 for the member's add and +1 for its removal: 4 or 6 write units, key or not, however many
//! jobs the owner has in flight. Removals of jobs finishing together share one request (see
//! `dynamo/release.rs`): same units, fewer calls.

use async_trait::async_trait;

use crate::error::BoxError;
#[cfg(doc)]
use crate::job::Watch;
use crate::job::{Job, JobId, JobStatus, Millis, Slot};
use crate::json::Json;
use crate::limits::{Deferred, Hold, Rate, Take};
use crate::slots::Ledger;
pub use crate::slots::PageSlots;
use crate::steps::{Listed, StepMeta, StepQuery};
use crate::thread::{MessageQuery, Thread, ThreadId, ThreadMessage};
use crate::usage::{Day, DayUsage, Spend};
use crate::waitpoint::Waitpoint;

pub mod dynamo;
pub mod memory;

pub use dynamo::DynamoStore;
pub use memory::MemoryStore;

/// Why a store call failed. Each variant is a different decision for the caller.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A job with this id already exists (create only).
    #[error("job already exists")]
    AlreadyExists,
    /// No job with this id.
    #[error("job not found")]
    NotFound,
    /// The write's condition did not hold: someone else changed the job first, or it is not in a state the
    /// write allows. `current` is the stored job when the backend returned it.
    #[error("job changed concurrently")]
    Conflict { current: Option<Box<Job>> },
    /// The backend could not be reached or throttled us: retrying later may succeed.
    #[error("job store unavailable")]
    Unavailable {
        #[source]
        source: BoxError,
    },
    /// The owner already has as many jobs in flight as the cap allows: nothing was written.
    #[error("too many jobs in flight")]
    InFlightCapReached,
    /// A stored record could not be read back as a job.
    #[error("stored job is malformed")]
    Corrupt {
        #[source]
        source: BoxError,
    },
}

/// How [`JobInserter::insert`] stores a new job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Insert {
    /// The job's id is its owner's Idempotency-Key ([`JobId::for_key`]): a job stored under it already
    /// is the answer ([`Created::Existing`]), not an error.
    pub keyed: bool,
    /// Take a slot of the owner's in-flight set, failing with `InFlightCapReached` when it holds this
    /// many already. Set exactly when the job is [`Job::counted`].
    pub in_flight_cap: Option<u32>,
}

/// The outcome of [`JobInserter::insert`].
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// The job was stored.
    New,
    /// Its key names a job already (stored as it is now): nothing was written.
    Existing(Box<Job>),
}

/// A page request of [`JobLister::list`]: one owner's jobs, newest first. With a filter, a store reads
/// on until `limit` jobs match or none are left, so only the last page is short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    pub limit: usize,
    /// Start after this job (its `submitted_at` and id): the last one of the previous page.
    pub after: Option<(Millis, JobId)>,
}

impl ListQuery {
    /// Whether a filter may drop jobs, so a store has to read past `limit` keys to fill a page.
    pub fn filtered(&self) -> bool {
        self.status.is_some() || self.kind.is_some()
    }

    /// Whether `job` passes the filters (its owner and position are the store's to check).
    pub fn matches(&self, job: &Job) -> bool {
        self.status.is_none_or(|s| job.status == s)
            && self.kind.as_deref().is_none_or(|k| job.kind == k)
    }
}

// Every method below is a single atomic operation, and safe to retry: repeating a write that already
// landed (the SDK retries when a response is lost) succeeds again instead of reporting a conflict with
// itself.

/// Reads a job (GetItem), strongly consistent.
#[async_trait]
pub trait JobReader: Send + Sync {
    async fn get(&self, id: &JobId) -> Result<Option<Job>, StoreError>;
}

/// Compare-and-set writes of a job (PutItem/UpdateItem).
#[async_trait]
pub trait JobWriter: Send + Sync {
    /// Replaces `from` (as read) with `to`, computed from it, if the stored version is still
    /// `from.version`; `Conflict` otherwise. When [`Job::slot_change`] says so, `to`'s slot is added
    /// to the owner's set before the write, or `from`'s removed after it (also when a retry finds the
    /// write landed).
    async fn replace(&self, from: &Job, to: &Job) -> Result<(), StoreError>;

    /// [`Self::replace`], creating `children` (new jobs: a completion's next stage) in the same atomic
    /// write; the children's slots are added before it, the parent's removed after it.
    async fn replace_spawning(
        &self,
        from: &Job,
        to: &Job,
        children: &[Job],
    ) -> Result<(), StoreError>;
}

/// New jobs (PutItem, and UpdateItem of a page of the owner's ledger when counted).
#[async_trait]
pub trait JobInserter: Send + Sync {
    /// Stores a new job, taking its in-flight slot first when asked: on the page `job.slot_page`
    /// names if it has room (a retried insert), else on one the store picks, which it writes into
    /// `job.slot_page` before storing it. `InFlightCapReached` if the owner is at the cap (nothing
    /// stored); `Existing` if the job is keyed and its id is taken; else `AlreadyExists` if its id is
    /// taken.
    async fn insert(&self, job: &mut Job, how: &Insert) -> Result<Created, StoreError>;

    /// Stores a new job with no key and no cap; `AlreadyExists` if its id is taken.
    async fn create(&self, job: &Job) -> Result<(), StoreError> {
        self.insert(&mut job.clone(), &Insert::default())
            .await
            .map(|_| ())
    }
}

/// One owner's jobs (Queries on the `by_user_shard` index).
#[async_trait]
pub trait JobLister: Send + Sync {
    /// Up to `query.limit` of `user`'s jobs, newest first. A query, never a scan.
    async fn list(&self, user: &str, query: &ListQuery) -> Result<Vec<Job>, StoreError>;
}

/// The worker's claim (one conditional UpdateItem).
#[async_trait]
pub trait JobClaimer: Send + Sync {
    /// Atomically applies [`Job::claim`]: leases the job to `owner` until `lease_expires_at` and counts an
    /// attempt, if [`Job::claimable`] holds at `now`. Returns the claimed job; `Conflict` with the current
    /// job if it is not claimable; `NotFound` if it does not exist.
    async fn claim(
        &self,
        id: &JobId,
        owner: &str,
        lease_expires_at: Millis,
        now: Millis,
    ) -> Result<Job, StoreError>;
}

/// Cancel requests of running jobs, kept in a small item apart from the job, so a running attempt can
/// look for one every few seconds for the price of reading a few bytes, not the whole job record.
#[async_trait]
pub trait CancelSignals: Send + Sync {
    /// Marks `id`, in its redrive round `round`, as asked to stop (PutItem); the mark expires at
    /// `expires_at` (epoch seconds). A redriven job starts a new round, which no old mark names.
    async fn signal_cancel(
        &self,
        id: &JobId,
        round: u32,
        expires_at: i64,
    ) -> Result<(), StoreError>;
}

/// The running attempt's side of [`CancelSignals`] (GetItem).
#[async_trait]
pub trait CancelWatch: Send + Sync {
    /// Whether `id` was asked to stop in redrive round `round` (an eventually consistent read).
    async fn cancel_signalled(&self, id: &JobId, round: u32) -> Result<bool, StoreError>;
}

/// Durable step results (`ctx.step`): one small item per (job, step), apart from the job record so a
/// long agent run cannot fill the job's 400 KB item; it expires with the job (its TTL).
#[async_trait]
pub trait StepStore: Send + Sync {
    /// The recorded result of step `name` of job `id`, if any (a consistent read).
    async fn step(&self, id: &JobId, name: &str) -> Result<Option<Json>, StoreError>;

    /// Records `value` as step `name`'s result, with `meta` in the same write, unless one is recorded
    /// already, and returns the recorded one: the first writer wins, so every attempt sees the same
    /// result.
    async fn record_step(
        &self,
        id: &JobId,
        name: &str,
        value: &Json,
        meta: &StepMeta,
        expires_at: i64,
    ) -> Result<Json, StoreError>;
}

/// A job's recorded steps and waitpoints, a page at a time (`GET /jobs/{id}/steps`; DynamoDB: a Query
/// of the sparse `by_job` index, then the items).
#[async_trait]
pub trait StepLister: Send + Sync {
    /// Up to `query.limit` of job `id`'s steps and waitpoints after `query.after`, in
    /// [`crate::steps::StepPosition`] order. Entries recorded before they carried a position (no
    /// `step_at` on DynamoDB) are not listed.
    async fn steps(&self, id: &JobId, query: &StepQuery) -> Result<Vec<Listed>, StoreError>;
}

/// Waitpoints (`ctx.wait_for`, `ctx.sleep`): one small item per (job, waitpoint) beside its step items
/// (see [`crate::waitpoint`]); it expires with the job (its TTL).
#[async_trait]
pub trait WaitpointStore: Send + Sync {
    /// Waitpoint `name` of job `id`, if recorded (a consistent read).
    async fn waitpoint(&self, id: &JobId, name: &str) -> Result<Option<Waitpoint>, StoreError>;

    /// Records `wp` (pending) unless a waitpoint of that name is recorded already, and returns the one
    /// that stands: the first writer wins, as for a step.
    async fn open_waitpoint(
        &self,
        id: &JobId,
        wp: &Waitpoint,
        expires_at: i64,
    ) -> Result<Waitpoint, StoreError>;

    /// Replaces the pending waitpoint `to.name` with `to` (completed or timed out) if it is still
    /// pending: `Ok(None)` when written, `Ok(Some(current))` when it was settled already (the first
    /// settlement stands), `NotFound` when there is none. A retried write that landed is `Ok(None)`.
    async fn settle_waitpoint(
        &self,
        id: &JobId,
        to: &Waitpoint,
    ) -> Result<Option<Waitpoint>, StoreError>;
}

/// In-flight slots (BatchGetItem, UpdateItem of ledger pages; Query of the due index): what the cap
/// counts, and the sweep's repair.
#[async_trait]
pub trait SlotLedger: Send + Sync {
    /// How many members `user`'s ledger holds on the pages of `cap` (and the page-less item of
    /// ledgers written before pages): the number the cap checks.
    async fn in_flight(&self, user: &str, cap: u32) -> Result<i64, StoreError>;
    /// Every page of every owner's ledger (for the periodic sweep only: a walk of the pages' entries
    /// in the due index, never a scan of the table; possibly a moment stale, which the sweep's
    /// grace and its strongly consistent read of each job make harmless).
    async fn all_slots(&self) -> Result<Vec<PageSlots>, StoreError>;
    /// Removes these members of `ledger`, each from the page it names, which no job holds (idempotent).
    async fn release_slots(&self, ledger: &Ledger, slots: &[Slot]) -> Result<(), StoreError>;
}

/// What the due index holds that is due (see [`crate::due`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    /// A parked job whose timer ([`Job::due_at`]) has passed, read strongly consistent.
    Timer(Box<Job>),
    /// A completed waitpoint whose resume must be checked ([`Waitpoint::repair_at`]).
    Resume { job_id: JobId, waitpoint: String },
}

/// The due index: a sparse index of the items with a timer, keyed by a few shards and their due
/// time, so the due task finds what is due with a Query per shard instead of a Scan (a parked job
/// costs storage only until its time). A job is in it under its timer while [`Job::watch`] says
/// [`Watch::Timer`], a waitpoint while [`Waitpoint::repair_at`] says so and until
/// [`Self::clear_due`]. The same index holds, under shards of their own that these queries never
/// read, the sweep's check times ([`JobScanner::to_check`]) and the ledger pages.
#[async_trait]
pub trait DueTimers: Send + Sync {
    /// Up to `limit` items due at `now` (their time `<= now`), earliest first within a shard.
    async fn due(&self, now: Millis, limit: usize) -> Result<Vec<Due>, StoreError>;
    /// Takes waitpoint `name` of job `id` out of the due index: its resume was checked (idempotent;
    /// nothing happens to a waitpoint that is gone).
    async fn clear_due(&self, id: &JobId, name: &str) -> Result<(), StoreError>;
}

/// Kind-level limits' counters (see [`crate::limits`]): concurrency holds on ledger pages
/// (UpdateItem, BatchGetItem; the sweep prunes lapsed ones in its slice, [`JobScanner::slice`]), and
/// a deferred job's note (UpdateItem).
#[async_trait]
pub trait LimitStore: Send + Sync {
    /// Adds `hold` to a page of `ledger`, whose holders are capped at `cap`; holds lapsed at `now`
    /// do not count (a full page is cleared of them). The page, or `None` when the cap is reached.
    async fn hold(
        &self,
        ledger: &Ledger,
        cap: u32,
        hold: &Hold,
        now: Millis,
    ) -> Result<Option<u32>, StoreError>;

    /// Gives `hold` back from `page` (idempotent).
    async fn unhold(&self, ledger: &Ledger, page: u32, hold: &Hold) -> Result<(), StoreError>;

    /// Replaces `old` on `page` by `new` (the same job's hold with a later end): `new` is added
    /// first, without the cap check (its holder counts already), then `old` removed, so the job is
    /// never uncounted; the page may hold one more for that moment, which only refuses others.
    async fn renew_hold(
        &self,
        ledger: &Ledger,
        page: u32,
        old: &Hold,
        new: &Hold,
    ) -> Result<(), StoreError>;

    /// How many holds of `ledger` (capped at `cap`) are live at `now` (a consistent read).
    async fn holders(&self, ledger: &Ledger, cap: u32, now: Millis) -> Result<u32, StoreError>;

    /// Records why `id` waits, if it is still `queued` or `retrying` (a display-only field: not a
    /// new version; the claim clears it), and that it was seen at `now` (`updated_at`: the sweep
    /// leaves it alone, its message is not lost).
    async fn note_deferred(
        &self,
        id: &JobId,
        deferred: &Deferred,
        now: Millis,
    ) -> Result<(), StoreError>;
}

/// Token buckets (see [`crate::limits::bucket`]): one conditional UpdateItem per take, none when this
/// instance already knows the bucket is empty.
#[async_trait]
pub trait RateBuckets: Send + Sync {
    /// Takes `n` tokens of `rate` from the bucket item `bucket` (a key from
    /// [`crate::limits::bucket_key`] or [`crate::limits::named_bucket`]) at `now` (epoch ms):
    /// [`Take::Taken`], or [`Take::Wait`] with how long until the same take would be allowed
    /// (nothing taken then).
    async fn take_tokens(
        &self,
        bucket: &str,
        rate: &Rate,
        n: u32,
        now: Millis,
    ) -> Result<Take, StoreError>;
}

/// Model usage per owner per UTC day (see [`crate::usage`]): one item per owner and day, counted by
/// the worker (UpdateItem with `ADD`).
#[async_trait]
pub trait UsageLedger: Send + Sync {
    /// Adds one model call's tokens to `owner`'s usage of `day` (one write, which also sets the
    /// item's TTL); the owner's tokens for the day, every model, after it.
    async fn add_usage(&self, owner: &str, day: Day, spend: &Spend) -> Result<u64, StoreError>;
}

/// Reads an owner's usage of a day (GetItem, eventually consistent: half a read unit).
#[async_trait]
pub trait UsageReader: Send + Sync {
    /// `owner`'s usage of `day` (empty when nothing was counted).
    async fn usage(&self, owner: &str, day: Day) -> Result<DayUsage, StoreError>;
}

/// The jobs the sweep looks at (see [`crate::sweep`]): those whose check time has come, from the due
/// index (a Query per shard: the sweep never reads a job before its check, nor a finished one), and a
/// slice of the table for records written before check times existed (a Scan segment).
#[async_trait]
pub trait JobScanner: Send + Sync {
    /// Up to `limit` jobs the sweep watches ([`Job::watch`] is [`Watch::Sweep`]) whose check time is
    /// at or before `until`, earliest first within a shard, read strongly consistent.
    async fn to_check(&self, until: Millis, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// Walks slice `slice` of `slices` of the table (each record falls in one slice, always the
    /// same; eventually consistent): returns up to `limit` jobs the sweep should watch that carry no
    /// check time ([`Job::sweep_at`]: written before it existed), removes the holds lapsed at `now`
    /// from the limits' ledger pages it holds, and lists the in-flight ledger pages written before
    /// pages were listed (see [`SlotLedger::all_slots`]).
    async fn slice(
        &self,
        slice: u32,
        slices: u32,
        now: Millis,
        limit: usize,
    ) -> Result<Slice, StoreError>;
}

/// What [`JobScanner::slice`] found.
#[derive(Debug, Default)]
pub struct Slice {
    /// Jobs to watch that have no check time.
    pub jobs: Vec<Job>,
    /// Lapsed holds removed.
    pub holds_lapsed: usize,
}

/// Conversation threads (see [`crate::thread`]): the thread item, `thread#<id>`, and one item per
/// message, `tmsg#<thread>#<run>#<index>`, listed through the sparse `by_job` index (`step_of` =
/// `thread#<id>`, `step_at` = the message's [`ThreadMessage::seq`]).
#[async_trait]
pub trait ThreadStore: Send + Sync {
    /// Stores a new thread (PutItem; `AlreadyExists` if its id is taken).
    async fn create_thread(&self, thread: &Thread) -> Result<(), StoreError>;

    /// The thread as stored (a consistent read), expired or not: callers decide what expiry means.
    async fn thread(&self, id: &ThreadId) -> Result<Option<Thread>, StoreError>;

    /// Stores `job` as the next run of `thread` (as read): the job (taking its slot as
    /// [`JobInserter::insert`] does), the thread's new `runs` and `last_job`, and `message` (the run's
    /// user message), all or nothing (one TransactWriteItems). The thread part holds only while the
    /// stored thread's `last_job` is still `thread.last_job` and it has not expired: else `Conflict`
    /// (read it again and retry), and nothing is stored. `Existing`/`AlreadyExists` as `insert`.
    async fn insert_run(
        &self,
        job: &mut Job,
        how: &Insert,
        thread: &Thread,
        message: &ThreadMessage,
    ) -> Result<Created, StoreError>;

    /// Appends `messages`, each only if its place is free (a retried or continued run appends nothing
    /// twice); they expire at `expires_at` (epoch seconds).
    async fn append_messages(
        &self,
        thread: &ThreadId,
        messages: &[ThreadMessage],
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Up to `query.limit` of a thread's messages, in the order asked for. On DynamoDB listed by an
    /// eventually consistent index: the newest may be missing (see [`Self::run_messages`]).
    async fn messages(
        &self,
        thread: &ThreadId,
        query: &MessageQuery,
    ) -> Result<Vec<ThreadMessage>, StoreError>;

    /// Messages `indices` of run `run` of a thread, read by key (strongly consistent, so they are
    /// there as soon as they were appended), oldest first; a place without a message is skipped.
    async fn run_messages(
        &self,
        thread: &ThreadId,
        run: u64,
        indices: std::ops::Range<u32>,
    ) -> Result<Vec<ThreadMessage>, StoreError>;
}

/// The submit function's port: insert, read (replays; the caller's usage, for the token budget), write
/// (a failed enqueue), threads (runs are inserted with their thread, an interrupted run is asked to stop).
pub trait SubmitStore:
    JobInserter + JobReader + JobWriter + UsageReader + ThreadStore + CancelSignals
{
}
impl<T: JobInserter + JobReader + JobWriter + UsageReader + ThreadStore + CancelSignals + ?Sized>
    SubmitStore for T
{
}

/// The completion route's port (served by the submit function, which may send messages): read and
/// write the job, settle its waitpoint.
pub trait CompleteStore: JobReader + JobWriter + WaitpointStore {}
impl<T: JobReader + JobWriter + WaitpointStore + ?Sized> CompleteStore for T {}

/// The status function's port: read (the job, and the waitpoint it last waited on), list (jobs, a
/// job's steps, the caller's usage), and cancel (a write and a signal).
pub trait StatusStore:
    JobReader + JobLister + StepLister + JobWriter + CancelSignals + WaitpointStore + UsageReader
{
}
impl<
    T: JobReader
        + JobLister
        + StepLister
        + JobWriter
        + CancelSignals
        + WaitpointStore
        + UsageReader
        + ?Sized,
> StatusStore for T
{
}

/// The worker's port: claim, read, write, watch for cancel signals, record steps and waitpoints,
/// take and give back limits' holds and tokens, count model usage.
pub trait WorkerStore:
    JobClaimer
    + JobReader
    + JobWriter
    + CancelWatch
    + StepStore
    + WaitpointStore
    + LimitStore
    + RateBuckets
    + UsageLedger
    + ThreadStore
{
}
impl<
    T: JobClaimer
        + JobReader
        + JobWriter
        + CancelWatch
        + StepStore
        + WaitpointStore
        + LimitStore
        + RateBuckets
        + UsageLedger
        + ThreadStore
        + ?Sized,
> WorkerStore for T
{
}

/// The webhook delivery function's port: read the job, record attempts.
pub trait DeliveryStore: JobReader + JobWriter {}
impl<T: JobReader + JobWriter + ?Sized> DeliveryStore for T {}

/// The sweep's port: its part of the due index and a slice scan, read, write, repair slots and limits' holds, read and settle waitpoints,
/// query the due index.
pub trait SweepStore:
    JobScanner + JobReader + JobWriter + SlotLedger + WaitpointStore + DueTimers + LimitStore
{
}
impl<
    T: JobScanner
        + JobReader
        + JobWriter
        + SlotLedger
        + WaitpointStore
        + DueTimers
        + LimitStore
        + ?Sized,
> SweepStore for T
{
}

/// Every capability: what an adapter implements and what a bundle holds.
pub trait JobStore:
    SubmitStore + StatusStore + WorkerStore + SweepStore + DeliveryStore + CompleteStore
{
}
impl<
    T: SubmitStore + StatusStore + WorkerStore + SweepStore + DeliveryStore + CompleteStore + ?Sized,
> JobStore for T
{
}

/// What a read-modify-write step decided about the job it was shown.
pub enum Change<T> {
    /// Write this new version (computed from the one shown), then return `T`.
    Write(Box<Job>, T),
    /// Write this new version and create these jobs with it ([`JobWriter::replace_spawning`]).
    Spawn(Box<Job>, Vec<Job>, T),
    /// Nothing to write: return `T`.
    Keep(T),
}

/// Why [`read_modify_write`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum RmwError<E> {
    /// The step refused the job as it is.
    #[error("refused")]
    Refused(E),
    #[error("job not found")]
    NotFound,
    /// Other writers kept changing the job.
    #[error("the job kept changing")]
    Contended,
    #[error(transparent)]
    Store(StoreError),
}

/// Writes every conflict loop of the kit: shows `step` the job (`current`, else read by `id`), writes
/// its new version with a compare-and-set, and on a conflict shows it the fresh job again, at most
/// `tries` times.
pub async fn read_modify_write<S, T, E>(
    store: &S,
    id: &JobId,
    mut current: Option<Job>,
    tries: usize,
    mut step: impl FnMut(&Job) -> Result<Change<T>, E>,
) -> Result<(Job, T), RmwError<E>>
where
    S: JobReader + JobWriter + ?Sized,
{
    for _ in 0..tries.max(1) {
        let job = match current.take() {
            Some(job) => job,
            None => store
                .get(id)
                .await
                .map_err(RmwError::Store)?
                .ok_or(RmwError::NotFound)?,
        };
        match step(&job).map_err(RmwError::Refused)? {
            Change::Keep(t) => return Ok((job, t)),
            Change::Write(next, t) => match store.replace(&job, &next).await {
                Ok(()) => return Ok((*next, t)),
                Err(StoreError::Conflict { current: fresh }) => current = fresh.map(|j| *j),
                Err(StoreError::NotFound) => return Err(RmwError::NotFound),
                Err(e) => return Err(RmwError::Store(e)),
            },
            Change::Spawn(next, children, t) => {
                match store.replace_spawning(&job, &next, &children).await {
                    Ok(()) => return Ok((*next, t)),
                    Err(StoreError::Conflict { current: fresh }) => current = fresh.map(|j| *j),
                    Err(StoreError::NotFound) => return Err(RmwError::NotFound),
                    Err(e) => return Err(RmwError::Store(e)),
                }
            }
        }
    }
    Err(RmwError::Contended)
}
