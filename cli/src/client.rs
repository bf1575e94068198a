//! Client commands against any deployment or `jobctl dev`: submit, status, watch, list, cancel.

use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

/// Where the API is and who we are.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Base URL of the API (the stack's ApiUrl output, or `jobctl dev`'s address).
    #[arg(
        long,
        env = "JOBKIT_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub api_url: String,
    /// Bearer token for an API behind a JWT authorizer.
    #[arg(long, env = "JOBKIT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// User id to act as, for `jobctl dev --user-header` only (sent as X-User-Id; deployed stacks ignore
    /// it).
    #[arg(long, env = "JOBKIT_USER", global = true)]
    pub user: Option<String>,
    /// Print JSON instead of human-readable lines.
    #[arg(long, global = true)]
    pub json: bool,
}

pub struct Client {
    http: reqwest::Client,
    target: Target,
}

const TERMINAL: [&str; 4] = ["completed", "failed", "cancelled", "dead_letter"];

impl Client {
    pub fn new(target: Target) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self { http, target })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.target.api_url.trim_end_matches('/'), path)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let mut req = req.header("accept", "application/json");
        if let Some(t) = &self.target.token {
            req = req.bearer_auth(t);
        }
        if let Some(u) = &self.target.user {
            req = req.header("x-user-id", u);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.target.api_url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or("http_error");
            let message = body["error"]["message"].as_str().unwrap_or("");
            bail!("{status}: {code}: {message}");
        }
        Ok(body)
    }

    pub async fn submit(&self, kind: &str, input: Value) -> anyhow::Result<Value> {
        let body = serde_json::json!({"kind": kind, "input": input});
        self.send(self.http.post(self.url("/jobs")).json(&body))
            .await
    }

    pub async fn status(&self, id: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(&format!("/jobs/{id}"))))
            .await
    }

    /// One page of the caller's jobs, newest first.
    pub async fn list(
        &self,
        status: Option<&str>,
        limit: u32,
        cursor: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(status.map(|s| ("status", s.to_owned())));
        query.extend(cursor.map(|c| ("cursor", c.to_owned())));
        let url = reqwest::Url::parse_with_params(&self.url("/jobs"), &query)
            .context("invalid --api-url")?;
        self.send(self.http.get(url)).await
    }

    pub async fn cancel(&self, id: &str) -> anyhow::Result<Value> {
        self.send(self.http.delete(self.url(&format!("/jobs/{id}"))))
            .await
    }

    /// Polls until the job is terminal, showing a live status line unless output is JSON.
    pub async fn watch(&self, id: &str) -> anyhow::Result<Value> {
        let bar = if self.target.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        loop {
            let job = self.status(id).await?;
            let status = job["status"].as_str().unwrap_or("?");
            bar.set_message(format!("{id} {status} (attempt {})", job["attempts"]));
            if TERMINAL.contains(&status) {
                bar.finish_and_clear();
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Prints a page of jobs: JSON, or a line per job and the next page's cursor.
    pub fn print_list(&self, page: &Value) {
        if self.target.json {
            println!("{page}");
            return;
        }
        let jobs = page["jobs"].as_array().map_or(&[][..], Vec::as_slice);
        if jobs.is_empty() {
            println!("no jobs");
        }
        for j in jobs {
            println!(
                "{} {:<12} {:<11} {}",
                j["job_id"].as_str().unwrap_or("?"),
                j["kind"].as_str().unwrap_or("?"),
                j["status"].as_str().unwrap_or("?"),
                j["submitted_at"].as_str().unwrap_or("")
            );
        }
        if let Some(c) = page["next_cursor"].as_str() {
            println!("more: --cursor {c}");
        }
    }

    /// Prints a job: JSON, or a few human lines.
    pub fn print_job(&self, job: &Value) {
        if self.target.json {
            println!("{job}");
            return;
        }
        println!(
            "{} {} {}",
            job["job_id"].as_str().unwrap_or("?"),
            job["kind"].as_str().unwrap_or("?"),
            job["status"].as_str().unwrap_or("?")
        );
        if let Some(n) = job["attempts"].as_u64() {
            println!("  attempts: {n}/{}", job["max_attempts"]);
        }
        if !job["result"].is_null() {
            println!("  result:   {}", job["result"]);
        }
        if !job["error"].is_null() {
            println!(
                "  error:    {}: {}",
                job["error"]["code"].as_str().unwrap_or("?"),
                job["error"]["message"].as_str().unwrap_or("")
            );
        }
    }
}

/// Exit status for a finished job: success only if it completed.
pub fn completed(job: &Value) -> bool {
    job["status"] == "completed"
}
