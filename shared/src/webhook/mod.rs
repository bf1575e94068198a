//! Webhooks: each terminal job with a `callback_url` gets one signed event, delivered at least once; so
//! does each park (`job.waiting`, with the waitpoint's `complete_url`), through the same machinery. A
//! `job.waiting` event still undelivered when the job moves on to its next event is dropped (the wait it
//! announced is over): a job has one pending event at a time.
//!
//! How an event is never lost, nor blocks its job:
//! 1. The terminal write marks the event `pending` in the job record itself ([`crate::job::WebhookState`]),
//!    so the state and the duty to announce it land together or not at all.
//! 2. Whoever wrote it then [`Announcer::announce`]s it: a small message on the deliveries queue. The
//!    job's own fate never waits on this send.
//! 3. The delivery function ([`Deliverer`], a [`crate::queue::Consumer`]) POSTs the event, records each
//!    attempt in the job, and retries on [`Schedule`] through the message's visibility; its queue has its
//!    own DLQ for a function that keeps crashing.
//! 4. The sweep re-announces a `pending` event whose next attempt is long overdue (a crash between 1
//!    and 2, a message lost with a crashed delivery function), counting it as an attempt, so even that
//!    ends after [`MAX_ATTEMPTS`].
//!
//! Receivers may see an event more than once (a crash after the POST, before its record): they
//! deduplicate on `webhook-id`, which is the same on every retry.

mod deliver;
mod event;
mod policy;
mod sign;

pub use deliver::{Deliverer, DeliverySettings};
pub use event::{MAX_EVENT_BYTES, body, event_type};
pub use policy::{Answer, MAX_ATTEMPTS, Next, Schedule, next, parse_retry_after};
pub use sign::{SecretError, Secrets, TOLERANCE_SECS, VerifyError, verify};

pub use crate::queue::{Announcer, DeliveryMessage};
