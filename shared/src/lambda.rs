//! Entry points for the Lambda binaries: configuration from the environment, SDK clients built once per
//! cold start, then the runtime loop. A kit user's `main` is one call with their handler registry.

use std::sync::Arc;

use lambda_http::{Request, service_fn};
use lambda_runtime::Error;

use crate::api::{Api, ApiSettings};
use crate::aws::{AwsBackend, sdk_config};
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

/// Serves SQS batches (the worker function) with the handlers in `registry`.
pub async fn serve_worker(registry: HandlerRegistry) -> Result<(), Error> {
    let (config, aws) = backend().await?;
    let worker = Worker::new(
        Arc::new(aws.store),
        Arc::new(aws.queue),
        registry,
        WorkerSettings::from_config(&config),
    );
    let worker = &worker;
    lambda_runtime::run(service_fn(move |event| worker.handle(event))).await
}
