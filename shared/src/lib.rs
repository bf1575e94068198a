//! jobkit: asynchronous, long-running jobs on AWS serverless.
//!
//! Layout (see ARCHITECTURE.md):
//! - [`job`]: the job record and its state machine; pure.
//! - [`handler`]: the handler API (`JobHandler`, `JobError`, `JobContext`) and the kind registry.
//! - [`api`]: submit / status request handling over the ports; validation; error bodies.
//! - [`worker`]: SQS batch processing: claim, run, classify, report partial failures.
//! - [`store`], [`queue`]: the ports (`JobStore`, `JobQueue`) with DynamoDB/SQS and embedded adapters.
//! - [`local`]: API Gateway and the SQS event source, reproduced for `jobctl dev` and tests.
//! - [`template`]: reads template.yaml's queue and table definitions, so local resources match deployed ones.
//! - [`dlq`]: dead-letter queue tools: list, redrive, purge; [`recovery`]: the sweep for lost messages.
//! - [`config`], [`telemetry`]: typed configuration from the environment; logging.
//!
//! `api` and `worker` never name an AWS SDK type: those live in `store::dynamo`, `queue::sqs` and
//! [`aws`] (client construction), so every behaviour can be tested on the embedded backends too.

pub mod api;
pub mod aws;
pub mod config;
pub mod dlq;
pub mod handler;
pub mod job;
pub mod lambda;
pub mod local;
pub mod queue;
pub mod recovery;
pub mod store;
pub mod telemetry;
pub mod template;
pub mod worker;

pub use config::Config;
pub use handler::{HandlerRegistry, JobContext, JobError, JobHandler, Output};
pub use job::{Job, JobId, JobStatus};

/// The wall clock in epoch milliseconds. The only place the kit reads it; pure code takes `now`.
pub fn now_millis() -> job::Millis {
    chrono::Utc::now().timestamp_millis()
}
