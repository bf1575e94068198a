//! `jobctl stats`, and `jobctl dev --metrics`: what an operator looks at first, from a terminal.
//!
//! - Queues: against a stack (`JOBKIT_QUEUE_URL`, optionally `JOBKIT_DLQ_URL` and
//!   `JOBKIT_DELIVERIES_QUEUE_URL`, with AWS credentials) SQS's counts and CloudWatch's age of the oldest
//!   message; against `jobctl dev`, its `/_dev/stats`.
//! - Your jobs by status: the API's list per status (an index query each; no table scan), counted up to
//!   a page of 100.
//! - Limits (with `JOBKIT_TABLE`): each limited kind's concurrency in use (a read of its ledger's
//!   pages) and its other limits as configured (`JOBKIT_LIMITS` over the code's).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use jobkit::queue::{QueueDepth, QueueStats, SqsQueue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::Client;

/// Options of `jobctl stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Refresh every --interval seconds until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes with --watch.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// SQS and CloudWatch at this endpoint (an emulator) instead of AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
}

/// The queues' backlog, as `jobctl dev` serves it at `/_dev/stats` and as read from SQS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Queues {
    pub jobs: QueueStats,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<QueueStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<QueueStats>,
}

const STATUSES: [&str; 7] = [
    "queued",
    "running",
    "retrying",
    "completed",
    "failed",
    "cancelled",
    "dead_letter",
];

/// One limited kind's use, as `jobctl stats` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitUse {
    pub kind: String,
    /// Jobs of the kind running now (live holds) and its concurrency limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running: Option<(u32, u32)>,
    /// Its other limits, as `JOBKIT_LIMITS` would write them (keyed ones count per value).
    pub per_key: Vec<String>,
    pub rates: Vec<String>,
}

/// Each limited kind's use: one read of its kind-wide ledger's pages.
pub async fn limit_use(
    registry: &jobkit::HandlerRegistry,
    store: &dyn jobkit::store::LimitStore,
    now: i64,
) -> anyhow::Result<Vec<LimitUse>> {
    let mut uses = Vec::new();
    for (kind, limits) in registry.all_limits() {
        let running = match limits.concurrency {
            Some(cap) => {
                let ledger = jobkit::slots::Ledger::limit(kind);
                Some((store.holders(&ledger, cap, now).await?, cap))
            }
            None => None,
        };
        uses.push(LimitUse {
            kind: kind.to_owned(),
            running,
            per_key: limits
                .concurrency_keys
                .iter()
                .map(|(k, n)| format!("{n} per {k}"))
                .collect(),
            rates: limits
                .rate_limits
                .iter()
                .map(|r| {
                    let per = r
                        .key
                        .as_ref()
                        .map_or(String::new(), |k| format!(" per {k}"));
                    format!(
                        "{}/{}s (burst {}){per}",
                        r.rate.count,
                        r.rate.per.as_secs(),
                        r.rate.burst
                    )
                })
                .collect(),
        });
    }
    Ok(uses)
}

fn render_limits(uses: &[LimitUse]) -> String {
    let mut out = String::from("limits\n");
    for u in uses {
        let running = u.running.map_or("no kind-wide cap".to_owned(), |(n, cap)| {
            format!("{n}/{cap} running")
        });
        let mut rest: Vec<String> = u.per_key.clone();
        rest.extend(u.rates.iter().cloned());
        out.push_str(&format!(
            "  {:<20} {running}  {}\n",
            u.kind,
            rest.join(", ")
        ));
    }
    out
}

/// The limits' use when the table is named (`JOBKIT_TABLE`); `None` otherwise.
async fn limits(
    args: &StatsArgs,
    registry: &jobkit::HandlerRegistry,
) -> anyhow::Result<Option<Vec<LimitUse>>> {
    let Ok(config) = jobkit::Config::from_env() else {
        return Ok(None);
    };
    let mut registry = registry.clone();
    registry.check_limits(&config.limits)?;
    registry.configure_limits(&config.limits);
    let sdk = jobkit::aws::sdk_config(args.endpoint_url.as_deref()).await;
    let store = jobkit::store::DynamoStore::from_sdk(&sdk, config.table);
    let now = chrono::Utc::now().timestamp_millis();
    Ok(Some(limit_use(&registry, &store, now).await?))
}

pub async fn run(
    args: StatsArgs,
    client: &Client,
    json: bool,
    registry: &jobkit::HandlerRegistry,
) -> anyhow::Result<()> {
    loop {
        let queues = queues(&args, client).await?;
        let limits = limits(&args, registry).await?;
        let mut mine = BTreeMap::new();
        for status in STATUSES {
            let page = client.list(Some(status), None, 100, None).await?;
            let n = page.value.jobs.len();
            let more = page.value.next_cursor.is_some();
            mine.insert(status, if more { format!("{n}+") } else { n.to_string() });
        }
        if json {
            println!(
                "{}",
                serde_json::json!({"queues": queues, "your_jobs": mine, "limits": limits})
            );
        } else {
            if args.watch {
                print!("\x1b[2J\x1b[H"); // clear the screen for the next frame
            }
            print!("{}", render(&queues, &mine));
            if let Some(uses) = limits.as_ref().filter(|u| !u.is_empty()) {
                print!("{}", render_limits(uses));
            }
        }
        if !args.watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(args.interval)).await;
    }
}

fn render(q: &Queues, mine: &BTreeMap<&str, String>) -> String {
    let line = |name: &str, s: &QueueStats| {
        let age = s
            .oldest_age_secs
            .map_or_else(|| "-".to_owned(), |a| format!("{a} s"));
        format!(
            "{name:<12} waiting {:>6}  in flight {:>6}  delayed {:>6}  oldest {age}\n",
            s.waiting, s.in_flight, s.delayed
        )
    };
    let mut out = line("jobs queue", &q.jobs);
    if let Some(d) = &q.dead_letters {
        out += &line("DLQ", d);
    }
    if let Some(d) = &q.deliveries {
        out += &line("deliveries", d);
    }
    out += "your jobs   ";
    for status in STATUSES {
        out += &format!(" {status} {}", mine[status]);
    }
    out + "\n"
}

async fn queues(args: &StatsArgs, client: &Client) -> anyhow::Result<Queues> {
    let Ok(url) = std::env::var("JOBKIT_QUEUE_URL") else {
        return client
            .get_raw("/_dev/stats")
            .await
            .context("without JOBKIT_QUEUE_URL, stats come from `jobctl dev` (its /_dev/stats)");
    };
    let sdk = jobkit::aws::sdk_config(args.endpoint_url.as_deref()).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let read = |url: String| {
        let q = SqsQueue::new(sqs.clone(), &url);
        async move { q.stats().await.map_err(|e| anyhow::anyhow!(e)) }
    };
    let mut jobs = read(url.clone()).await?;
    jobs.oldest_age_secs = oldest_age(&sdk, &url).await;
    let optional = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Ok(Queues {
        jobs,
        dead_letters: match optional("JOBKIT_DLQ_URL") {
            Some(u) => Some(read(u).await?),
            None => None,
        },
        deliveries: match optional("JOBKIT_DELIVERIES_QUEUE_URL") {
            Some(u) => Some(read(u).await?),
            None => None,
        },
    })
}

/// SQS's ApproximateAgeOfOldestMessage, from CloudWatch (the queue's API does not report it): the
/// latest 1-minute maximum of the last 10 minutes, or `None` where there is none (an emulator, a quiet
/// queue).
pub(crate) async fn oldest_age(sdk: &aws_config::SdkConfig, queue_url: &str) -> Option<u64> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};
    let name = queue_url.rsplit('/').next()?;
    let now = std::time::SystemTime::now();
    let query = MetricDataQuery::builder()
        .id("age")
        .metric_stat(
            MetricStat::builder()
                .metric(
                    Metric::builder()
                        .namespace("AWS/SQS")
                        .metric_name("ApproximateAgeOfOldestMessage")
                        .dimensions(Dimension::builder().name("QueueName").value(name).build())
                        .build(),
                )
                .period(60)
                .stat("Maximum")
                .build(),
        )
        .build();
    let out = aws_sdk_cloudwatch::Client::new(sdk)
        .get_metric_data()
        .metric_data_queries(query)
        .start_time(DateTime::from(now - Duration::from_secs(600)))
        .end_time(DateTime::from(now))
        .send()
        .await
        .ok()?;
    let values = out.metric_data_results?.into_iter().next()?.values?;
    values.first().map(|v| *v as u64)
}

/// `jobctl dev --metrics`: one line summing up the EMF documents of the last interval (the same
/// recorder the functions flush to CloudWatch).
pub fn summarize_emf(lines: &str) -> String {
    let mut counts: BTreeMap<String, f64> = BTreeMap::new();
    let mut waits: Vec<f64> = Vec::new();
    for doc in lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if let Some(v) = doc.get("Outcomes").and_then(Value::as_f64) {
            let outcome = doc["Outcome"].as_str().unwrap_or("?").to_owned();
            *counts.entry(outcome).or_default() += v;
        }
        if let Some(v) = doc.get("JobsAccepted").and_then(Value::as_f64) {
            *counts.entry("accepted".into()).or_default() += v;
        }
        if let Some(Value::Array(vs)) = doc.get("QueueWait") {
            waits.extend(vs.iter().filter_map(Value::as_f64));
        }
    }
    waits.sort_by(f64::total_cmp);
    let p = |q: f64| -> String {
        if waits.is_empty() {
            "-".into()
        } else {
            let i = ((waits.len() as f64 - 1.0) * q).round() as usize;
            format!("{:.0} ms", waits[i])
        }
    };
    let n = |k: &str| counts.get(k).copied().unwrap_or(0.0) as u64;
    format!(
        "accepted {}, completed {}, failed {}, retried {}, dead-lettered {}; queue wait p50 {} p99 {}",
        n("accepted"),
        n("completed"),
        n("failed"),
        n("retried"),
        n("dead_lettered"),
        p(0.5),
        p(0.99)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_adds_up_the_interval() {
        let lines = r#"{"Outcome":"completed","Outcomes":3}
{"Outcome":"failed","Outcomes":1}
{"Kind":"echo","JobsAccepted":4,"QueueWait":[10.0,30.0,20.0]}
{"Kind":"sleep","QueueWait":[40.0]}
not json"#;
        assert_eq!(
            summarize_emf(lines),
            "accepted 4, completed 3, failed 1, retried 0, dead-lettered 0; queue wait p50 30 ms p99 40 ms"
        );
        assert!(summarize_emf("").contains("p50 -"));
    }
}
