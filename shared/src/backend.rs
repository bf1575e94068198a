//! The one bundle of ports a deployment runs on — store, queues, clock, signing secret, configuration —
//! with an AWS constructor and an embedded one. The functions, `jobctl` and the tests all build their
//! parts (the API, the worker, the sweep, the DLQ tools) from it, so there is one way to wire them.

use std::sync::Arc;
use std::time::Duration;

use crate::api::{ApiSettings, CursorKey, StatusApi, SubmitApi};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, SecretSource};
use crate::dlq::DeadLetters;
use crate::error::BoxError;
use crate::handler::HandlerRegistry;
use crate::queue::{JobQueue, MemoryQueue, SqsQueue};
use crate::store::{DynamoStore, JobStore, MemoryStore};
use crate::sweep::Sweeper;
use crate::worker::{Worker, WorkerSettings};

/// A deployment's ports.
#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub dead_letter_queue: Option<Arc<dyn JobQueue>>,
    pub clock: SharedClock,
    /// Keys the API's page cursors.
    pub signing_secret: Vec<u8>,
    pub config: Config,
    /// What it runs on, for banners and logs.
    pub description: String,
}

impl Backend {
    /// DynamoDB, SQS and Secrets Manager as `config` names them, through `sdk` (AWS, or an emulator).
    pub async fn aws(sdk: &aws_config::SdkConfig, config: Config) -> Result<Self, BoxError> {
        let sqs = aws_sdk_sqs::Client::new(sdk);
        let signing_secret = match &config.signing_secret {
            Some(SecretSource::SecretsManager { arn }) => aws_sdk_secretsmanager::Client::new(sdk)
                .get_secret_value()
                .secret_id(arn)
                .send()
                .await?
                .secret_string
                .ok_or("the signing secret has no string value")?
                .into_bytes(),
            other => local_secret(other.as_ref()),
        };
        Ok(Self {
            store: Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                &config.table,
            )),
            queue: Arc::new(SqsQueue::new(sqs.clone(), &config.queue_url)),
            dead_letter_queue: config
                .dlq_url
                .as_ref()
                .map(|u| Arc::new(SqsQueue::new(sqs, u)) as Arc<dyn JobQueue>),
            clock: Arc::new(SystemClock),
            signing_secret,
            description: format!("DynamoDB table {}, SQS {}", config.table, config.queue_url),
            config,
        })
    }

    /// The embedded store and queue (SQS semantics: `visibility` by default, the DLQ after
    /// `max_receives`), on `clock`.
    pub fn embedded(
        config: Config,
        visibility: Duration,
        max_receives: u32,
        clock: SharedClock,
    ) -> Self {
        let dlq = Arc::new(MemoryQueue::new(visibility));
        let queue = MemoryQueue::new(visibility).with_dead_letter_queue(dlq.clone(), max_receives);
        Self {
            store: Arc::new(MemoryStore::new()),
            queue: Arc::new(queue),
            dead_letter_queue: Some(dlq),
            clock,
            signing_secret: local_secret(config.signing_secret.as_ref()),
            description: "embedded in-memory store and queue".into(),
            config,
        }
    }

    /// The submit function's API.
    pub fn submit_api(&self, registry: HandlerRegistry, settings: ApiSettings) -> SubmitApi {
        SubmitApi::new(
            self.store.clone(),
            self.queue.clone(),
            registry,
            settings,
            self.clock.clone(),
        )
    }

    /// The status function's API.
    pub fn status_api(&self) -> StatusApi {
        StatusApi::new(
            self.store.clone(),
            CursorKey::new(&self.signing_secret),
            self.clock.clone(),
        )
    }

    /// The worker core with `settings`.
    pub fn worker(&self, registry: HandlerRegistry, settings: WorkerSettings) -> Worker {
        Worker::new(
            self.store.clone(),
            self.queue.clone(),
            registry,
            settings,
            self.clock.clone(),
        )
    }

    pub fn sweeper(&self) -> Sweeper {
        Sweeper {
            store: self.store.clone(),
            queue: self.queue.clone(),
            clock: self.clock.clone(),
        }
    }

    /// The DLQ tools, when there is a DLQ.
    pub fn dead_letters(&self) -> Option<DeadLetters> {
        let dlq = self.dead_letter_queue.clone()?;
        Some(DeadLetters::new(
            self.store.clone(),
            self.queue.clone(),
            dlq,
            self.clock.clone(),
        ))
    }
}

/// A secret given as a value, or one made up for this process (local runs: cursors then last as long
/// as the process).
fn local_secret(source: Option<&SecretSource>) -> Vec<u8> {
    match source {
        Some(SecretSource::Value(v)) => v.clone().into_bytes(),
        _ => rand::random::<[u8; 32]>().to_vec(),
    }
}
