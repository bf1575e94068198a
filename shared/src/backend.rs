//! The one bundle of ports a deployment runs on — store, queues, clock, signing secret, configuration —
//! with an AWS constructor and an embedded one. The functions, `jobctl` and the tests all build their
//! parts (the API, the worker, the sweep, the DLQ tools) from it, so there is one way to wire them.

use std::sync::Arc;
use std::time::Duration;

use crate::api::{
    ApiSettings, CursorKey, EventsApi, EventsLink, StatusApi, StreamSettings, SubmitApi, TokenKey,
    WaitpointApi, WaitpointLink,
};
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, SecretSource};
use crate::dlq::DeadLetters;
use crate::error::BoxError;
use crate::handler::HandlerRegistry;
use crate::job::Lane;
use crate::queue::{JobQueue, JobSender, Lanes, MemoryQueue, SqsQueue};
use crate::store::{DynamoStore, JobStore, MemoryStore};
use crate::sweep::Sweeper;
use crate::webhook::{Announcer, Deliverer, DeliverySettings, Secrets};
use crate::worker::{Worker, WorkerSettings};

/// A deployment's ports.
#[derive(Clone)]
pub struct Backend {
    pub store: Arc<dyn JobStore>,
    pub queue: Arc<dyn JobQueue>,
    pub dead_letter_queue: Option<Arc<dyn JobQueue>>,
    /// The queue of container-only kinds and its DLQ (`None`: this deployment has no container worker).
    pub container: Option<Arc<dyn JobQueue>>,
    pub container_dead_letter_queue: Option<Arc<dyn JobQueue>>,
    /// The webhook deliveries queue (`None`: this deployment has no webhooks).
    pub deliveries: Option<Arc<dyn JobQueue>>,
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
        let signing_secret = match read_secret(sdk, config.signing_secret.as_ref()).await? {
            Some(value) => value.into_bytes(),
            None => local_secret(None),
        };
        let sqs_queue = |url: &String| {
            Arc::new(SqsQueue::new(sqs.clone(), url).with_groups(config.fair_queues))
                as Arc<dyn JobQueue>
        };
        Ok(Self {
            store: Arc::new(DynamoStore::new(
                aws_sdk_dynamodb::Client::new(sdk),
                &config.table,
            )),
            queue: sqs_queue(&config.queue_url),
            dead_letter_queue: config.dlq_url.as_ref().map(sqs_queue),
            container: config.container_queue_url.as_ref().map(sqs_queue),
            container_dead_letter_queue: config.container_dlq_url.as_ref().map(sqs_queue),
            deliveries: config.deliveries_queue_url.as_ref().map(sqs_queue),
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
        let with_dlq = || {
            let dlq = Arc::new(MemoryQueue::new(visibility));
            let queue = MemoryQueue::new(visibility)
                .with_groups(config.fair_queues)
                .with_dead_letter_queue(dlq.clone(), max_receives);
            (Arc::new(queue), dlq)
        };
        let (queue, dlq) = with_dlq();
        let (container, container_dlq) = with_dlq();
        Self {
            store: Arc::new(MemoryStore::new()),
            queue,
            dead_letter_queue: Some(dlq),
            container: Some(container),
            container_dead_letter_queue: Some(container_dlq),
            deliveries: Some(Arc::new(MemoryQueue::new(visibility))),
            clock,
            signing_secret: local_secret(config.signing_secret.as_ref()),
            description: "embedded in-memory store and queue".into(),
            config,
        }
    }

    /// Sends webhook delivery requests (to nowhere when the deployment has no deliveries queue).
    pub fn announcer(&self) -> Announcer {
        match &self.deliveries {
            Some(q) => Announcer::new(q.clone()),
            None => Announcer::none(),
        }
    }

    /// The delivery function's core, signing with `secrets`; `None` without a deliveries queue.
    /// `job.waiting` events carry `complete_url`s when the API's base URL is configured.
    pub fn deliverer(&self, secrets: Secrets, settings: DeliverySettings) -> Option<Deliverer> {
        Some(
            Deliverer::new(
                self.store.clone(),
                self.deliveries.clone()?,
                secrets,
                settings,
                self.clock.clone(),
            )
            .with_link(self.waitpoint_link()),
        )
    }

    /// The submit function's API. It takes `callback_url` only if this deployment delivers webhooks, and
    /// container-only kinds only if it has a container queue.
    pub fn submit_api(&self, registry: HandlerRegistry, settings: ApiSettings) -> SubmitApi {
        let api = SubmitApi::new(
            self.store.clone(),
            self.queue.clone(),
            registry,
            ApiSettings {
                webhooks: self.deliveries.is_some(),
                ..settings
            },
            self.clock.clone(),
        )
        .with_token_budget(self.token_budget())
        .with_threads(CursorKey::new(&self.signing_secret), self.announcer());
        match &self.container {
            Some(q) => api.with_container_queue(q.clone()),
            None => api,
        }
    }

    /// The waitpoint completion routes (served by the submit function): they resume parked jobs on their
    /// lane's queue, and check `complete_url` tokens with the signing secret.
    pub fn waitpoint_api(&self) -> WaitpointApi {
        WaitpointApi::new(
            self.store.clone(),
            self.senders(),
            self.clock.clone(),
            TokenKey::new(&self.signing_secret),
        )
    }

    /// Where waitpoints' `complete_url`s point, when the API's base URL is configured.
    pub fn waitpoint_link(&self) -> Option<WaitpointLink> {
        Some(WaitpointLink {
            base: self.config.api_url.clone()?,
            key: TokenKey::new(&self.signing_secret),
        })
    }

    /// The status function's API.
    pub fn status_api(&self) -> StatusApi {
        let api = StatusApi::new(
            self.store.clone(),
            CursorKey::new(&self.signing_secret),
            self.clock.clone(),
        )
        .with_announcer(self.announcer())
        .with_token_budget(self.token_budget());
        let api = match self.waitpoint_link() {
            Some(link) => api.with_waitpoints(link),
            None => api,
        };
        match &self.config.events_url {
            Some(base) => api.with_events(EventsLink {
                base: base.clone(),
                key: TokenKey::new(&self.signing_secret),
            }),
            None => api,
        }
    }

    /// The events function's stream endpoint (tokens checked with the signing secret).
    pub fn events_api(&self, settings: StreamSettings) -> EventsApi {
        EventsApi::new(
            self.store.clone(),
            TokenKey::new(&self.signing_secret),
            self.clock.clone(),
            settings,
        )
    }

    /// The worker function's core with `settings`: it consumes the jobs queue, and sends follow-up jobs
    /// of container-only kinds to the container queue.
    pub fn worker(&self, registry: HandlerRegistry, settings: WorkerSettings) -> Worker {
        let (_, worker) = self
            .worker_in(Lane::Lambda, registry, settings)
            .expect("every deployment has a jobs queue");
        worker
    }

    /// The queue of `lane` and a worker core consuming it (`Lane::Container`: what `jobctl worker
    /// --container` runs); follow-up jobs go to their own lane's queue. `None` when the deployment has
    /// no queue for `lane`.
    pub fn worker_in(
        &self,
        lane: Lane,
        registry: HandlerRegistry,
        settings: WorkerSettings,
    ) -> Option<(Arc<dyn JobQueue>, Worker)> {
        let own = self.queues().get(lane)?.clone();
        let mut registry = registry;
        registry.configure_limits(&self.config.limits);
        let worker = Worker::new(
            self.store.clone(),
            own.clone(),
            registry,
            settings,
            self.clock.clone(),
        )
        .with_lanes(lane, self.senders())
        .with_announcer(self.announcer())
        .with_token_budget(self.token_budget());
        Some((own, worker))
    }

    /// The daily token budget of each user (`MaxTokensPerUserPerDay`), if one is set.
    pub fn token_budget(&self) -> Option<crate::usage::Budget> {
        crate::usage::Budget::from_limit(self.config.max_tokens_per_user_per_day)
    }

    /// The job queues by lane.
    fn queues(&self) -> Lanes<dyn JobQueue> {
        Lanes {
            lambda: self.queue.clone(),
            container: self.container.clone(),
        }
    }

    /// [`Self::queues`], for sending only.
    fn senders(&self) -> Lanes<dyn JobSender> {
        Lanes {
            lambda: self.queue.clone(),
            container: self.container.clone().map(|q| q as Arc<dyn JobSender>),
        }
    }

    pub fn sweeper(&self) -> Sweeper {
        Sweeper {
            store: self.store.clone(),
            queues: self.senders(),
            clock: self.clock.clone(),
            announcer: self.announcer(),
            slot_grace: crate::sweep::SLOT_GRACE,
            legacy_slices: crate::sweep::LEGACY_SLICES,
        }
    }

    /// The DLQ tools of the jobs queue, when it has a DLQ.
    pub fn dead_letters(&self) -> Option<DeadLetters> {
        Some(self.dead_letters_of(self.queue.clone(), self.dead_letter_queue.clone()?))
    }

    /// The DLQ tools of the container queue, when there is one with a DLQ.
    pub fn container_dead_letters(&self) -> Option<DeadLetters> {
        Some(self.dead_letters_of(
            self.container.clone()?,
            self.container_dead_letter_queue.clone()?,
        ))
    }

    fn dead_letters_of(&self, queue: Arc<dyn JobQueue>, dlq: Arc<dyn JobQueue>) -> DeadLetters {
        DeadLetters::new(self.store.clone(), queue, dlq, self.clock.clone())
    }
}

/// A secret's value: given, read from Secrets Manager (once, at cold start), or `None` when not set.
pub async fn read_secret(
    sdk: &aws_config::SdkConfig,
    source: Option<&SecretSource>,
) -> Result<Option<String>, BoxError> {
    Ok(match source {
        None => None,
        Some(SecretSource::Value(v)) => Some(v.clone()),
        Some(SecretSource::SecretsManager { arn }) => Some(
            aws_sdk_secretsmanager::Client::new(sdk)
                .get_secret_value()
                .secret_id(arn)
                .send()
                .await?
                .secret_string
                .ok_or("the secret has no string value")?,
        ),
    })
}

/// A secret given as a value, or one made up for this process (local runs: cursors then last as long
/// as the process).
fn local_secret(source: Option<&SecretSource>) -> Vec<u8> {
    match source {
        Some(SecretSource::Value(v)) => v.clone().into_bytes(),
        _ => rand::random::<[u8; 32]>().to_vec(),
    }
}
