//! Entry points for the Lambda binaries: configuration from the environment, SDK clients built once per
//! cold start, then the runtime loop. A kit user's `main` is one call with their handler registry.

use std::sync::Arc;

use aws_lambda_events::sqs::SqsEvent;
use lambda_http::{Request, service_fn};
use lambda_runtime::{Error, LambdaEvent};
use serde_json::Value;

use crate::api::{Api, ApiSettings};
use crate::aws::{AwsBackend, sdk_config};
use crate::queue::JobQueue;
use crate::recovery;
use crate::store::JobStore;
use crate::worker::{Worker, WorkerSettings};
use crate::{Config, HandlerRegistry};

async fn backend() -> Result<(Config, AwsBackend), Error> {
    crate::telemetry::init_lambda();
    let config = Config::from_env()?;
    let aws = AwsBackend::new(&sdk_config(None).await, &config);
    Ok((config, aws))
}

/// Serves the HTTP API (the submit and status functions). `registry` gives the kinds submit accepts.
pub async fn serve_api(registry: HandlerRegistry) -> Result<(), Error> {
    let (config, aws) = backend().await?;
    let api = Api::new(
        Arc::new(aws.store),
        Arc::new(aws.queue),
        registry,
        ApiSettings::from_config(&config),
    );
    let api = &api;
    lambda_http::run(service_fn(move |req: Request| async move {
        Ok::<_, Error>(api.handle(req).await)
    }))
    .await
}

/// Serves the worker function: SQS batches with the handlers in `registry`, and the scheduled sweep for
/// jobs whose message was lost (`Sweep` in template.yaml).
pub async fn serve_worker(registry: HandlerRegistry) -> Result<(), Error> {
    let (config, aws) = backend().await?;
    let store: Arc<dyn JobStore> = Arc::new(aws.store);
    let queue: Arc<dyn JobQueue> = Arc::new(aws.queue);
    let worker = Worker::new(
        store.clone(),
        queue.clone(),
        registry,
        WorkerSettings::from_config(&config),
    );
    let (worker, store, queue) = (&worker, &store, &queue);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        if event.payload.get("Records").is_some() {
            // Parsed here as the raw SqsEvent: bodies are decoded per record by the worker.
            let batch: SqsEvent = serde_json::from_value(event.payload)?;
            let response = worker
                .handle(LambdaEvent::new(batch, event.context))
                .await?;
            Ok::<Value, Error>(serde_json::to_value(response)?)
        } else {
            let report = recovery::sweep(store, queue, recovery::SWEEP_AFTER).await?;
            Ok(serde_json::to_value(report)?)
        }
    }))
    .await
}
