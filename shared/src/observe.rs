//! The kit's metrics, named and typed in one place, recorded through the `metrics` facade. Deployed, the
//! recorder is `metrics_cloudwatch_embedded`: CloudWatch Embedded Metric Format lines, flushed once per
//! invocation ([`crate::lambda`]), with the `Service` and `Function` dimensions on every metric. Other
//! dimensions are low-cardinality only: kind (registered kinds; anything else is `other`), outcome,
//! HTTP status — never a job or user id.
//!
//! | metric | unit | dimensions | recorded by |
//! |---|---|---|---|
//! | `JobsAccepted` | Count | Kind | submit |
//! | `SubmitRejected` | Count | Status | submit (every 4xx/5xx answer to `POST /jobs`) |
//! | `Attempts` | Count | Kind, Outcome | worker, each delivery |
//! | `Outcomes` | Count | Outcome | worker (the same, across kinds: the failure-rate alarm's input) |
//! | `HandlerDuration` | Milliseconds | Kind | worker, each handler run |
//! | `QueueWait` | Milliseconds | Kind | worker, submitted → first claimed |
//! | `EndToEnd` | Milliseconds | Kind | worker, submitted → terminal |
//! | `Panics` | Count | Kind | worker, handler panics caught |
//! | `BatchSize`, `BatchFailures` | Count | | worker, each invocation |
//! | `WebhookAttempts` | Count | Outcome (delivered, retried, failed) | delivery function |
//! | `ReceiverLatency` | Milliseconds | | delivery function, receivers that answered |
//! | `ColdStart` | Count | | every function, once per instance |
//! | `JobsParked` | Count | Kind | worker, each park (`ctx.wait_for`, `ctx.sleep`) |
//! | `JobsResumed` | Count | Kind | whoever resumes a parked job (exactly once per park) |
//! | `WaitDuration` | Milliseconds | Kind | the same, parked → resumed |
//! | `WaitTimeouts` | Count | Kind | sweep, each waitpoint recorded `timed_out` (sleeps included) |
//! | `InputTokens`, `OutputTokens`, `ModelRequests` | Count | Model | worker, each model call that answered (the agents' model ids: registered, so bounded) |
//!
//! Jobs waiting now = `JobsParked` − `JobsResumed` − cancelled waits, summed over time; the list
//! `GET /jobs?status=waiting` shows them one by one.

use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

use crate::clock::Millis;

pub const NAMESPACE_DEFAULT: &str = "jobkit";

/// Every counter the kit records (unit Count).
pub const COUNTERS: &[&str] = &[
    "JobsAccepted",
    "SubmitRejected",
    "Attempts",
    "Outcomes",
    "Panics",
    "BatchSize",
    "BatchFailures",
    "WebhookAttempts",
    "ColdStart",
    "JobsParked",
    "JobsResumed",
    "WaitTimeouts",
    "Deferrals",
    "InputTokens",
    "OutputTokens",
    "ModelRequests",
];

/// Every histogram the kit records (unit Milliseconds).
pub const HISTOGRAMS: &[&str] = &[
    "HandlerDuration",
    "QueueWait",
    "EndToEnd",
    "ReceiverLatency",
    "WaitDuration",
];

/// Registers units with the installed recorder (once per process, after installing it).
pub fn describe() {
    for name in COUNTERS {
        describe_counter!(*name, Unit::Count, "");
    }
    for name in HISTOGRAMS {
        describe_histogram!(*name, Unit::Milliseconds, "");
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A job was accepted (`kind` is registered: submit checked it).
pub fn accepted(kind: &str) {
    counter!("JobsAccepted", "Kind" => kind.to_owned()).increment(1);
}

/// `POST /jobs` answered `status` (an error).
pub fn rejected(status: u16) {
    counter!("SubmitRejected", "Status" => status.to_string()).increment(1);
}

/// One delivery's outcome (`kind` already bounded by [`bounded_kind`]).
pub fn attempt(kind: &str, outcome: &'static str) {
    counter!("Attempts", "Kind" => kind.to_owned(), "Outcome" => outcome).increment(1);
    counter!("Outcomes", "Outcome" => outcome).increment(1);
}

pub fn handler_duration(kind: &str, took: Duration) {
    histogram!("HandlerDuration", "Kind" => kind.to_owned()).record(ms(took));
}

/// Submitted → first claimed.
pub fn queue_wait(kind: &str, submitted_at: Millis, claimed_at: Millis) {
    histogram!("QueueWait", "Kind" => kind.to_owned())
        .record((claimed_at - submitted_at).max(0) as f64);
}

/// Submitted → terminal.
pub fn end_to_end(kind: &str, submitted_at: Millis, finished_at: Millis) {
    histogram!("EndToEnd", "Kind" => kind.to_owned())
        .record((finished_at - submitted_at).max(0) as f64);
}

/// A job a limit deferred (`reason`: `concurrency` or `rate`).
pub fn deferred(kind: &str, reason: &'static str) {
    counter!("Deferrals", "Kind" => kind.to_owned(), "Reason" => reason).increment(1);
}

pub fn panicked(kind: &str) {
    counter!("Panics", "Kind" => kind.to_owned()).increment(1);
}

/// One worker invocation: its size and how many deliveries it reported failed.
pub fn batch(size: usize, failures: usize) {
    counter!("BatchSize").increment(size as u64);
    counter!("BatchFailures").increment(failures as u64);
}

/// One webhook attempt: `delivered`, `retried` or `failed`; `latency` when the receiver answered.
pub fn webhook_attempt(outcome: &'static str, latency: Option<Duration>) {
    counter!("WebhookAttempts", "Outcome" => outcome).increment(1);
    if let Some(l) = latency {
        histogram!("ReceiverLatency").record(ms(l));
    }
}

/// A job parked on a waitpoint.
pub fn parked(kind: &str) {
    counter!("JobsParked", "Kind" => kind.to_owned()).increment(1);
}

/// A parked job resumed (completed, timed out, or a sleep's end), having waited since `parked_at`.
pub fn resumed(kind: &str, parked_at: Millis, resumed_at: Millis) {
    counter!("JobsResumed", "Kind" => kind.to_owned()).increment(1);
    histogram!("WaitDuration", "Kind" => kind.to_owned())
        .record((resumed_at - parked_at).max(0) as f64);
}

/// A waitpoint's time passed before anyone completed it.
pub fn wait_timed_out(kind: &str) {
    counter!("WaitTimeouts", "Kind" => kind.to_owned()).increment(1);
}

/// One model call that answered, with the tokens it reported (`model`: an agent's model id, from code
/// or configuration, never from a request).
pub fn model_tokens(model: &str, input: u64, output: u64) {
    counter!("InputTokens", "Model" => model.to_owned()).increment(input);
    counter!("OutputTokens", "Model" => model.to_owned()).increment(output);
    counter!("ModelRequests", "Model" => model.to_owned()).increment(1);
}

/// A kind as a metric dimension: registered kinds as they are, anything else (a malformed or forged
/// message) as `other`, so no input can mint dimensions.
pub fn bounded_kind(kind: &str, registered: impl Fn(&str) -> bool) -> &str {
    if registered(kind) { kind } else { "other" }
}
