//! A fault-injecting HTTP proxy in front of the emulator: it fails some requests before forwarding them
//! (throttling, 5xx: the request never ran) and drops some responses after forwarding (the request ran,
//! the client sees a 500 and its SDK retries it). The second kind is what makes retried writes land twice.
//! Or it plays a lagging index: a DynamoDB Query of one index does not list the items written to it
//! lately, as a GSI (eventually consistent) may not yet; reads by key see them at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::extract::State;
use axum::response::Response;

#[derive(Debug, Default)]
pub struct ProxyStats {
    pub forwarded: AtomicU64,
    /// Failed before reaching the emulator.
    pub rejected: AtomicU64,
    /// Ran on the emulator, answered with a 500 instead of its response.
    pub lost_responses: AtomicU64,
    /// DynamoDB items Scans read (their `ScannedCount`: what a Scan bills, whatever its filter).
    pub scanned: AtomicU64,
    /// DynamoDB items (and index entries) the other reads returned: GetItem, BatchGetItem, Query.
    pub read: AtomicU64,
}

impl ProxyStats {
    /// Counts what a DynamoDB answer to `op` read.
    fn count_reads(&self, op: &str, answer: &[u8]) {
        let Ok(answer) = serde_json::from_slice::<serde_json::Value>(answer) else {
            return;
        };
        let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
        match op {
            "Scan" => self
                .scanned
                .fetch_add(n(&answer["ScannedCount"]), Ordering::Relaxed),
            "Query" => self.read.fetch_add(n(&answer["Count"]), Ordering::Relaxed),
            "GetItem" => self
                .read
                .fetch_add(u64::from(answer.get("Item").is_some()), Ordering::Relaxed),
            "BatchGetItem" => self.read.fetch_add(
                answer["Responses"].as_object().map_or(0, |t| {
                    t.values()
                        .filter_map(|v| v.as_array())
                        .map(|a| a.len() as u64)
                        .sum()
                }),
                Ordering::Relaxed,
            ),
            _ => 0,
        };
    }
}

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    reject_rate: f64,
    lose_rate: f64,
    /// Only requests of this operation (`X-Amz-Target` suffix) meet faults; all, when `None`.
    only: Option<&'static str>,
    stats: Arc<ProxyStats>,
    lag: Option<IndexLag>,
}

/// A lagging index: Queries of `index` leave out the items written less than `lag` ago.
struct IndexLag {
    index: &'static str,
    lag: Duration,
    /// The keys (`job_id`) of items written with the index's partition key (`key_attr`), and when.
    key_attr: &'static str,
    written: Mutex<HashMap<String, Instant>>,
}

pub struct FaultProxy {
    pub endpoint: String,
    pub stats: Arc<ProxyStats>,
}

impl FaultProxy {
    /// Starts the proxy on 127.0.0.1 (a free port) in front of `upstream`.
    pub async fn start(upstream: &str, reject_rate: f64, lose_rate: f64) -> Self {
        Self::start_with(upstream, reject_rate, lose_rate, None).await
    }

    /// [`Self::start`], with faults for requests of operation `op` only (e.g. `BatchExecuteStatement`).
    pub async fn start_for(upstream: &str, op: &'static str, reject_rate: f64) -> Self {
        Self::start_with(upstream, reject_rate, 0.0, Some(op)).await
    }

    /// No faults, but index `index` (partition key `key_attr`) lists an item only `lag` after its
    /// last write (a lagging GSI, which the emulator's is not).
    pub async fn lagging_index(
        upstream: &str,
        index: &'static str,
        key_attr: &'static str,
        lag: Duration,
    ) -> Self {
        Self::serve(
            upstream,
            0.0,
            0.0,
            None,
            Some(IndexLag {
                index,
                lag,
                key_attr,
                written: Mutex::default(),
            }),
        )
        .await
    }

    async fn start_with(
        upstream: &str,
        reject_rate: f64,
        lose_rate: f64,
        only: Option<&'static str>,
    ) -> Self {
        Self::serve(upstream, reject_rate, lose_rate, only, None).await
    }

    async fn serve(
        upstream: &str,
        reject_rate: f64,
        lose_rate: f64,
        only: Option<&'static str>,
        lag: Option<IndexLag>,
    ) -> Self {
        let stats = Arc::new(ProxyStats::default());
        let state = Arc::new(Proxy {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            reject_rate,
            lose_rate,
            only,
            stats: stats.clone(),
            lag,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(forward).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { endpoint, stats }
    }
}

fn error(status: u16, body: &'static str) -> Response {
    http::Response::builder()
        .status(status)
        .header("content-type", "application/x-amz-json-1.0")
        .body(Body::from(body))
        .unwrap()
}

async fn forward(State(p): State<Arc<Proxy>>, req: http::Request<Body>) -> Response {
    let (parts, body) = req.into_parts();
    let body = to_bytes(body, 64 * 1024 * 1024).await.unwrap();
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let dynamo = target.starts_with("DynamoDB");
    let faulty = p
        .only
        .is_none_or(|op| target.rsplit('.').next() == Some(op));
    if faulty && rand::random::<f64>() < p.reject_rate {
        p.stats.rejected.fetch_add(1, Ordering::Relaxed);
        return if dynamo && rand::random::<bool>() {
            error(
                400,
                r#"{"__type":"com.amazonaws.dynamodb.v20120810#ThrottlingException","message":"Rate of requests exceeds the allowed throughput."}"#,
            )
        } else {
            error(503, r#"{"message":"Service Unavailable"}"#)
        };
    }
    let op = target.rsplit('.').next().unwrap_or_default();
    if let Some(lag) = &p.lag {
        lag.note_writes(op, &body);
    }
    let url = format!(
        "{}{}",
        p.upstream,
        parts.uri.path_and_query().map_or("/", |x| x.as_str())
    );
    let mut out = p.http.request(parts.method.clone(), url).body(body.clone());
    for (name, value) in &parts.headers {
        if name != "host" && name != "content-length" {
            out = out.header(name, value);
        }
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(_) => return error(502, r#"{"message":"Bad Gateway"}"#),
    };
    p.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut bytes = resp.bytes().await.unwrap_or_default();
    if dynamo && status.is_success() {
        p.stats
            .count_reads(target.rsplit('.').next().unwrap_or_default(), &bytes);
    }
    let mut altered = false;
    if let Some(lag) = &p.lag
        && let Some(listed) = lag.hide_recent(op, &body, &bytes)
    {
        bytes = listed.into();
        altered = true;
    }
    if faulty && rand::random::<f64>() < p.lose_rate {
        p.stats.lost_responses.fetch_add(1, Ordering::Relaxed);
        return error(500, r#"{"message":"Internal Server Error"}"#);
    }
    let mut builder = http::Response::builder().status(status);
    for (name, value) in &headers {
        // An altered body's checksum would no longer hold.
        let stale = altered && name == "x-amz-crc32";
        if name != "transfer-encoding" && name != "content-length" && name != "connection" && !stale
        {
            builder = builder.header(name, value);
        }
    }
    builder.body(Body::from(bytes)).unwrap()
}

impl IndexLag {
    /// Notes the items a write request puts with the index's key.
    fn note_writes(&self, op: &str, body: &[u8]) {
        let Ok(req) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let items: Vec<&serde_json::Value> = match op {
            "PutItem" => vec![&req["Item"]],
            "TransactWriteItems" => req["TransactItems"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| &t["Put"]["Item"])
                .collect(),
            _ => return,
        };
        let now = Instant::now();
        let mut written = self.written.lock().unwrap();
        for item in items {
            if item.get(self.key_attr).is_some()
                && let Some(key) = item["job_id"]["S"].as_str()
            {
                written.insert(key.to_owned(), now);
            }
        }
    }

    /// A Query of the index's response without the items written less than `lag` ago (`None`: not
    /// such a Query, left as it is).
    fn hide_recent(&self, op: &str, body: &[u8], response: &[u8]) -> Option<Vec<u8>> {
        let req: serde_json::Value = serde_json::from_slice(body).ok()?;
        if op != "Query" || req["IndexName"].as_str() != Some(self.index) {
            return None;
        }
        let mut out: serde_json::Value = serde_json::from_slice(response).ok()?;
        let written = self.written.lock().unwrap();
        let items = out.get_mut("Items")?.as_array_mut()?;
        items.retain(|i| {
            i["job_id"]["S"]
                .as_str()
                .and_then(|k| written.get(k))
                .is_none_or(|at| at.elapsed() >= self.lag)
        });
        let count = items.len();
        out["Count"] = count.into();
        serde_json::to_vec(&out).ok()
    }
}
