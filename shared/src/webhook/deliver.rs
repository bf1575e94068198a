//! The delivery function's core: one POST per delivery, its outcome recorded in the job, a verdict for
//! the message.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use url::Url;

use super::policy::{self, Answer, Next, Schedule};
use super::{DeliveryMessage, Secrets, body};
use crate::api::WaitpointLink;
use crate::clock::SharedClock;
use crate::job::{Job, WebhookState, WebhookStatus};
use crate::net::{PublicResolver, check_target};
use crate::queue::{Consumer, Delivery, Invocation, MessageVisibility, Verdict};
use crate::store::{Change, DeliveryStore, read_modify_write};

/// How deliveries are made.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub schedule: Schedule,
    /// The longest a receiver may take to answer.
    pub timeout: Duration,
    /// Whether receivers on loopback may be called (`jobctl dev` and tests; never deployed).
    pub allow_loopback: bool,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            schedule: Schedule::standard(),
            timeout: Duration::from_secs(15),
            allow_loopback: false,
        }
    }
}

/// When the store cannot be read or written, the message comes back after this.
const STORE_RETRY: Duration = Duration::from_secs(20);

/// Delivers webhook events: a [`Consumer`] of the deliveries queue.
pub struct Deliverer {
    store: Arc<dyn DeliveryStore>,
    queue: Arc<dyn MessageVisibility>,
    secrets: Secrets,
    settings: DeliverySettings,
    clock: SharedClock,
    client: reqwest::Client,
    /// Where a `job.waiting` event's `complete_url` points (`None`: events go without one).
    link: Option<WaitpointLink>,
}

impl Deliverer {
    pub fn new(
        store: Arc<dyn DeliveryStore>,
        queue: Arc<dyn MessageVisibility>,
        secrets: Secrets,
        settings: DeliverySettings,
        clock: SharedClock,
    ) -> Self {
        // No proxy (it would connect for us, past the address check), no redirects (a 3xx is a failed
        // attempt, never a second request to wherever it points), addresses checked at connect time.
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            .dns_resolver(Arc::new(PublicResolver {
                allow_loopback: settings.allow_loopback,
            }))
            .user_agent(concat!("jobkit-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with static settings builds");
        Self {
            store,
            queue,
            secrets,
            settings,
            clock,
            client,
            link: None,
        }
    }

    /// Puts `complete_url`s under `link` into `job.waiting` events.
    pub fn with_link(mut self, link: Option<WaitpointLink>) -> Self {
        self.link = link;
        self
    }

    /// One delivery: `Ack` once the event is delivered, given up, or no longer pending; `Retry(wait)`
    /// (already set as the message's visibility) otherwise.
    async fn deliver(&self, d: &Delivery) -> Verdict {
        let Ok(msg) = serde_json::from_str::<DeliveryMessage>(&d.body) else {
            tracing::error!(message_id = %d.message_id, "malformed delivery message; dropped");
            return Verdict::Ack;
        };
        let job = match self.store.get(&msg.job_id).await {
            Ok(Some(job)) => job,
            Ok(None) => return Verdict::Ack, // expired or deleted: nothing to tell
            Err(e) => {
                tracing::warn!(job_id = %msg.job_id, error = %e, "could not read the job");
                return Verdict::Retry(STORE_RETRY);
            }
        };
        // Delivered or given up already (a duplicate message), or superseded by a redrive.
        let (Some(state), Some(url)) = (
            job.webhook
                .clone()
                .filter(|_| job.webhook_pending(&msg.event_id)),
            job.callback_url.clone(),
        ) else {
            return Verdict::Ack;
        };
        let sent = std::time::Instant::now();
        let answer = self
            .post(&url, &state.event_id, &body(&job, self.link.as_ref()))
            .await;
        let latency = matches!(answer, Answer::Status { .. }).then(|| sent.elapsed());
        let now = self.clock.now();
        let made = state.attempts + 1;
        let next = policy::next(&answer, made, &self.settings.schedule);
        tracing::info!(job_id = %job.job_id, event_id = %state.event_id, attempt = made, ?answer, ?next, "webhook attempt");
        let recorded = record(state, &answer, next, now);
        let step = |j: &Job| {
            Ok::<_, Infallible>(match j.with_webhook(recorded.clone(), now) {
                Ok(next) => Change::Write(Box::new(next), ()),
                Err(_) => Change::Keep(()),
            })
        };
        if let Err(e) =
            read_modify_write(&*self.store, &job.job_id, Some(job.clone()), 3, step).await
        {
            // Retried: the receiver may see this event again, under the same webhook-id.
            tracing::warn!(job_id = %job.job_id, error = %e, "could not record a webhook attempt");
            return Verdict::Retry(STORE_RETRY);
        }
        let (outcome, verdict) = match next {
            Next::Delivered => ("delivered", Verdict::Ack),
            Next::GiveUp => ("failed", Verdict::Ack),
            Next::RetryIn(wait) => ("retried", Verdict::Retry(wait)),
        };
        crate::observe::webhook_attempt(outcome, latency);
        verdict
    }

    /// POSTs `body`, signed, to `url`, checked again at connect time.
    async fn post(&self, url: &str, event_id: &str, body: &str) -> Answer {
        let url = match Url::parse(url) {
            Ok(u) => u,
            Err(e) => return Answer::NoAnswer(format!("invalid url: {e}")),
        };
        if let Err(e) = check_target(&url, self.settings.allow_loopback) {
            return Answer::NoAnswer(e.to_string());
        }
        let timestamp = self.clock.now().div_euclid(1000);
        let sent = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                self.secrets.sign(event_id, timestamp, body),
            )
            .body(body.to_owned())
            .send()
            .await;
        match sent {
            Ok(response) => Answer::Status {
                code: response.status().as_u16(),
                retry_after: response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| policy::parse_retry_after(v, self.clock.now())),
            },
            Err(e) if e.is_timeout() => Answer::NoAnswer(format!(
                "no answer within {} s",
                self.settings.timeout.as_secs()
            )),
            Err(e) => Answer::NoAnswer(describe(&e)),
        }
    }
}

/// The attempt's record: counters, last answer, and the next step.
fn record(mut state: WebhookState, answer: &Answer, next: Next, now: i64) -> WebhookState {
    state.attempts += 1;
    (state.last_status, state.last_error) = match answer {
        Answer::Status { code, .. } => (Some(*code), None),
        Answer::NoAnswer(why) => (None, Some(why.clone())),
    };
    (state.status, state.next_attempt_at) = match next {
        Next::Delivered => {
            state.delivered_at = Some(now);
            (WebhookStatus::Delivered, None)
        }
        Next::GiveUp => (WebhookStatus::Failed, None),
        Next::RetryIn(wait) => (WebhookStatus::Pending, Some(now + wait.as_millis() as i64)),
    };
    state
}

/// An error with its causes ("error sending request: connection refused"), without the URL.
fn describe(e: &reqwest::Error) -> String {
    let mut text = String::from(if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    });
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[async_trait]
impl Consumer for Deliverer {
    type Report = Vec<Verdict>;

    async fn consume(&self, batch: &[Delivery], _: &Invocation) -> Vec<Verdict> {
        let verdicts = join_all(batch.iter().map(|d| self.deliver(d))).await;
        // Each retry waits in its message's visibility: one batch call for the whole batch.
        let changes: Vec<(String, Duration)> = batch
            .iter()
            .zip(&verdicts)
            .filter_map(|(d, v)| match v {
                Verdict::Retry(wait) => Some((d.receipt_handle.clone(), *wait)),
                Verdict::Ack => None,
            })
            .collect();
        self.queue
            .change_visibility_logged(&changes, "delay a webhook retry")
            .await;
        verdicts
    }
}
