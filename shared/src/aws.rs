//! AWS plumbing outside the adapters: SDK configuration (real AWS, or an emulator through
//! `AWS_ENDPOINT_URL`), and provisioning the queues and table that template.yaml describes, for local
//! runs and tests.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TableStatus, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;

use crate::config::Config;
use crate::error::BoxError;
use crate::queue::SqsQueue;
use crate::template::{StackSpec, TableSpec};

/// SDK configuration. With an endpoint (`endpoint`, else `AWS_ENDPOINT_URL`: an emulator), requests go
/// there, and region and credentials default to `us-east-1` and static test keys when the environment sets
/// none, since emulators accept any.
pub async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    let from_env = std::env::var("AWS_ENDPOINT_URL")
        .ok()
        .filter(|u| !u.is_empty());
    if let Some(url) = endpoint.or(from_env.as_deref()) {
        loader = loader.endpoint_url(url);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            loader = loader.region(Region::new("us-east-1"));
        }
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "jobkit-emulator",
            ));
        }
    }
    loader.load().await
}

/// What [`provision`] created: physical names by logical id.
#[derive(Debug, Clone, Default)]
pub struct Provisioned {
    pub queue_urls: HashMap<String, String>,
    pub queue_arns: HashMap<String, String>,
    pub tables: HashMap<String, String>,
}

impl Provisioned {
    /// The configuration the functions would get from template.yaml's environment variables.
    pub fn config(&self, spec: &StackSpec) -> Result<Config, BoxError> {
        self.config_with(spec, |_| None)
    }

    /// [`Self::config`], with each setting `overrides` gives taking precedence (the process
    /// environment, for `jobctl dev`); the resources are always the provisioned ones.
    pub fn config_with(
        &self,
        spec: &StackSpec,
        overrides: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, BoxError> {
        let p = |k: &str| spec.parameters.get(k).cloned();
        let vars: HashMap<&str, Option<String>> = HashMap::from([
            ("JOBKIT_TABLE", self.tables.get("JobsTable").cloned()),
            (
                "JOBKIT_QUEUE_URL",
                self.queue_urls.get("JobsQueue").cloned(),
            ),
            (
                "JOBKIT_DLQ_URL",
                self.queue_urls.get("JobsDeadLetterQueue").cloned(),
            ),
            (
                "JOBKIT_DELIVERIES_QUEUE_URL",
                self.queue_urls.get("DeliveriesQueue").cloned(),
            ),
            (
                "JOBKIT_CONTAINER_QUEUE_URL",
                self.queue_urls.get("ContainerJobsQueue").cloned(),
            ),
            (
                "JOBKIT_CONTAINER_DLQ_URL",
                self.queue_urls.get("ContainerJobsDeadLetterQueue").cloned(),
            ),
            ("JOBKIT_MAX_ATTEMPTS", p("MaxReceiveCount")),
            ("JOBKIT_JOB_TTL_DAYS", p("JobRetentionDays")),
            ("JOBKIT_RETRY_BASE_SECS", p("RetryBaseSeconds")),
            ("JOBKIT_RETRY_MAX_SECS", p("RetryMaxSeconds")),
            ("JOBKIT_WORKER_CONCURRENCY", p("JobConcurrencyPerBatch")),
            ("JOBKIT_MAX_QUEUE_DEPTH", p("MaxQueueDepth")),
            ("JOBKIT_MAX_IN_FLIGHT_PER_USER", p("MaxJobsInFlightPerUser")),
            (
                "JOBKIT_MAX_TOKENS_PER_USER_PER_DAY",
                p("MaxTokensPerUserPerDay"),
            ),
            ("JOBKIT_WORKER_TIMEOUT_SECS", p("WorkerTimeout")),
        ]);
        let resource = |k: &str| {
            matches!(
                k,
                "JOBKIT_TABLE"
                    | "JOBKIT_QUEUE_URL"
                    | "JOBKIT_DLQ_URL"
                    | "JOBKIT_DELIVERIES_QUEUE_URL"
                    | "JOBKIT_CONTAINER_QUEUE_URL"
                    | "JOBKIT_CONTAINER_DLQ_URL"
            )
        };
        Ok(Config::from_lookup(|k| {
            (!resource(k))
                .then(|| overrides(k))
                .flatten()
                .or_else(|| vars.get(k).cloned().flatten())
        })?)
    }
}

/// Creates the stack's queues and tables, named `{prefix}-{LogicalId}`. Idempotent: existing resources
/// with the same definition are reused.
pub async fn provision(
    sdk: &SdkConfig,
    spec: &StackSpec,
    prefix: &str,
) -> Result<Provisioned, BoxError> {
    let sqs = aws_sdk_sqs::Client::new(sdk);
    let ddb = aws_sdk_dynamodb::Client::new(sdk);
    let mut out = Provisioned::default();
    for q in &spec.queues {
        let mut attrs: HashMap<QueueAttributeName, String> = q
            .attributes
            .iter()
            .map(|(k, v)| (QueueAttributeName::from(k.as_str()), v.clone()))
            .collect();
        if let Some(r) = &q.redrive {
            let target = out.queue_arns.get(&r.dead_letter_queue).ok_or_else(|| {
                format!(
                    "{}: dead-letter queue {} is not a queue",
                    q.logical_id, r.dead_letter_queue
                )
            })?;
            attrs.insert(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": target, "maxReceiveCount": r.max_receive_count})
                    .to_string(),
            );
        }
        let url = sqs
            .create_queue()
            .queue_name(format!("{prefix}-{}", q.logical_id))
            .set_attributes(Some(attrs))
            .send()
            .await?
            .queue_url
            .ok_or("CreateQueue returned no URL")?;
        let arn = SqsQueue::new(sqs.clone(), &url).arn().await?;
        out.queue_urls.insert(q.logical_id.clone(), url);
        out.queue_arns.insert(q.logical_id.clone(), arn);
    }
    for t in &spec.tables {
        let name = format!("{prefix}-{}", t.logical_id);
        create_table(&ddb, &name, t).await?;
        out.tables.insert(t.logical_id.clone(), name);
    }
    Ok(out)
}

fn key_schema(keys: &[(String, String)]) -> Result<Vec<KeySchemaElement>, BoxError> {
    keys.iter()
        .map(|(name, kind)| {
            Ok(KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(KeyType::from(kind.as_str()))
                .build()?)
        })
        .collect()
}

async fn create_table(
    ddb: &aws_sdk_dynamodb::Client,
    name: &str,
    t: &TableSpec,
) -> Result<(), BoxError> {
    let exists = ddb.describe_table().table_name(name).send().await.is_ok();
    if !exists {
        let mut req = ddb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .set_key_schema(Some(key_schema(&t.key_schema)?));
        for (attr, ty) in &t.attribute_definitions {
            req = req.attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(attr)
                    .attribute_type(ScalarAttributeType::from(ty.as_str()))
                    .build()?,
            );
        }
        for g in &t.global_secondary_indexes {
            req = req.global_secondary_indexes(
                GlobalSecondaryIndex::builder()
                    .index_name(&g.name)
                    .set_key_schema(Some(key_schema(&g.key_schema)?))
                    .projection(
                        Projection::builder()
                            .projection_type(ProjectionType::from(g.projection_type.as_str()))
                            .build(),
                    )
                    .build()?,
            );
        }
        req.send().await?;
    }
    // Real DynamoDB takes seconds to create a table; emulators are instant.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let status = ddb
            .describe_table()
            .table_name(name)
            .send()
            .await?
            .table
            .and_then(|d| d.table_status);
        if status == Some(TableStatus::Active) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("table {name} did not become ACTIVE").into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if let Some(attr) = &t.ttl_attribute {
        let res = ddb
            .update_time_to_live()
            .table_name(name)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .attribute_name(attr)
                    .enabled(true)
                    .build()?,
            )
            .send()
            .await;
        // Enabling TTL twice is an error on real DynamoDB: on a table that existed, it is already on.
        if let Err(e) = res
            && !exists
        {
            return Err(e.into());
        }
    }
    Ok(())
}
