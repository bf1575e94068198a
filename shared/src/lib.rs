//! jobkit: asynchronous, long-running jobs on AWS serverless.
//!
//! Layout (see ARCHITECTURE.md), leaves first; no module imports one listed after it:
//! - [`error`], [`clock`], [`retry`], [`json`]: the shared leaves (error alias, time, backoff, exact JSON).
//! - [`job`]: the job record and its state machine; [`waitpoint`]: what a parked job waits for;
//!   [`steps`]: what a job's handler recorded (its steps and waitpoints), as listed;
//!   [`slots`]: bounded sets of holders in pages (the in-flight cap), the layout and page choice; pure.
//! - [`usage`]: model usage per user per UTC day and the daily token budget; pure.
//! - [`config`], [`template`]: typed configuration from the environment; template.yaml's resources.
//! - [`handler`]: typed handlers, the kind registry, [`JobContext`]; [`prelude`] for handler authors.
//! - [`store`], [`queue`]: capability-shaped ports with DynamoDB/SQS and embedded adapters; [`park`]:
//!   resuming a parked job, the one write the completion route, the worker and the sweep share.
//! - [`worker`]: deliveries in, verdicts out: claim, run, decide (pure), apply.
//! - [`api`]: the axum router: submit / status / list / cancel; [`sweep`], [`dlq`]: repair and DLQ tools.
//! - [`backend`]: the one bundle of ports (AWS or embedded) everything is built from; [`aws`]: SDK
//!   configuration and provisioning.
//! - [`local`]: the SQS event source for local runs; [`lambda`]: the Lambda adapters, the only module
//!   that knows Lambda's event types.
//!
//! `api` and `worker` never name an AWS type: those live in `store::dynamo`, `queue::sqs`, [`aws`] and
//! [`backend`], so every behaviour can be tested on the embedded backends too.

pub mod agent;
pub mod api;
pub mod aws;
pub mod backend;
pub mod clock;
pub mod config;
pub mod dlq;
pub mod due;
pub mod error;
pub mod handler;
pub mod job;
pub mod json;
pub mod lambda;
pub mod limits;
pub mod local;
pub mod net;
pub mod observe;
pub mod park;
pub mod queue;
pub mod retry;
pub mod slots;
pub mod steps;
pub mod store;
pub mod sweep;
pub mod telemetry;
pub mod template;
pub mod thread;
pub mod trace;
pub mod usage;
pub mod waitpoint;
pub mod webhook;
pub mod worker;

pub use backend::Backend;
pub use config::Config;
pub use handler::{Handler, HandlerRegistry, JobContext, JobError};
pub use job::{Job, JobId, JobStatus, Lane, Slot};
pub use json::Json;

/// Everything a handler author needs, in one `use jobkit::prelude::*;`.
pub mod prelude {
    pub use crate::handler::{Handler, HandlerRegistry, JobContext, JobError};
    pub use crate::json::Json;
    // The derives expand to paths in `serde` and `schemars`, so the crate defining a kind depends on
    // both (as `functions/kinds` does).
    pub use schemars::JsonSchema;
    pub use serde::{Deserialize, Serialize};
}

/// The wall clock in epoch milliseconds (the kit's parts take a [`clock::Clock`] instead).
pub fn now_millis() -> job::Millis {
    clock::Clock::now(&clock::SystemClock)
}
