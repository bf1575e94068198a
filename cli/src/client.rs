//! Client commands against any deployment or `jobctl dev`: submit, status, watch, list, cancel. Answers
//! are read as the kit's own types; `--json` prints them exactly as the API sent them.

use std::time::Duration;

use anyhow::{Context as _, bail};
use indicatif::{ProgressBar, ProgressStyle};
use jobkit::api::{JobList, JobView};
use jobkit::{JobId, JobStatus, Json};
use serde::Deserialize;
use serde::de::DeserializeOwned;

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

/// An answer: as sent (for `--json`) and as read.
pub struct Answer<T> {
    pub raw: String,
    pub value: T,
}

/// `POST /jobs`'s answer.
#[derive(Debug, Deserialize)]
pub struct Accepted {
    pub job_id: JobId,
    pub status: JobStatus,
}

pub struct Client {
    http: reqwest::Client,
    target: Target,
}

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

    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<Answer<T>> {
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
        let raw = resp.text().await.unwrap_or_default();
        if !status.is_success() {
            let body: serde_json::Value = serde_json::from_str(&raw).unwrap_or_default();
            let code = body["error"]["code"].as_str().unwrap_or("http_error");
            let message = body["error"]["message"].as_str().unwrap_or("");
            bail!("{status}: {code}: {message}");
        }
        let value = serde_json::from_str(&raw)
            .with_context(|| format!("unexpected answer from the API: {raw}"))?;
        Ok(Answer { raw, value })
    }

    pub async fn submit(&self, kind: &str, input: &Json) -> anyhow::Result<Answer<Accepted>> {
        let body = format!(
            r#"{{"kind":{},"input":{input}}}"#,
            serde_json::to_string(kind)?
        );
        self.send(
            self.http
                .post(self.url("/jobs"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    pub async fn status(&self, id: &str) -> anyhow::Result<Answer<JobView>> {
        self.send(self.http.get(self.url(&format!("/jobs/{id}"))))
            .await
    }

    /// One page of the caller's jobs, newest first.
    pub async fn list(
        &self,
        status: Option<&str>,
        limit: u32,
        cursor: Option<&str>,
    ) -> anyhow::Result<Answer<JobList>> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(status.map(|s| ("status", s.to_owned())));
        query.extend(cursor.map(|c| ("cursor", c.to_owned())));
        let url = reqwest::Url::parse_with_params(&self.url("/jobs"), &query)
            .context("invalid --api-url")?;
        self.send(self.http.get(url)).await
    }

    /// Any GET of the API (or of `jobctl dev`'s own routes), read as `T`.
    pub async fn get_raw<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        Ok(self.send(self.http.get(self.url(path))).await?.value)
    }

    pub async fn cancel(&self, id: &str) -> anyhow::Result<Answer<JobView>> {
        self.send(self.http.delete(self.url(&format!("/jobs/{id}"))))
            .await
    }

    /// Follows the job until it is terminal: its event stream (`events_url`) when the API offers one,
    /// with a progress bar (percent and message; a spinner while there is no percent), reconnecting
    /// with `Last-Event-ID`; polling `GET /jobs/{id}` when there is no stream or it fails.
    pub async fn watch(&self, id: &str) -> anyhow::Result<Answer<JobView>> {
        let bar = if self.target.json {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(spinner_style());
        bar.enable_steady_tick(Duration::from_millis(120));
        let job = self.status(id).await?;
        if !job.value.summary.status.is_terminal()
            && let Some(url) = job.value.events_url.clone()
            && let Err(e) = self.follow(&url, id, &bar).await
        {
            tracing::debug!(error = %e, "no event stream; polling");
        }
        loop {
            let job = self.status(id).await?;
            let s = &job.value.summary;
            bar.set_message(format!("{id} {} (attempt {})", s.status, s.attempts));
            if s.status.is_terminal() {
                bar.finish_and_clear();
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reads the job's stream until its `done` event, reconnecting where it left off when the server
    /// ends a stream early (after 14 minutes).
    async fn follow(&self, url: &str, id: &str, bar: &ProgressBar) -> anyhow::Result<()> {
        // No overall timeout: a stream lasts as long as the job (the API client's 30 s would cut it).
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let mut last_id: Option<String> = None;
        loop {
            let mut req = http.get(url).header("accept", "text/event-stream");
            if let Some(l) = &last_id {
                req = req.header("last-event-id", l);
            }
            let mut resp = req.send().await?.error_for_status()?;
            if resp.status() == reqwest::StatusCode::NO_CONTENT {
                return Ok(()); // this client has seen `done` already: nothing more will come
            }
            let mut buf = String::new();
            while let Some(chunk) = resp.chunk().await? {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buf.find("\n\n") {
                    let frame: String = buf.drain(..end + 2).collect();
                    let (event, data, frame_id) = parse_frame(&frame);
                    if frame_id.is_some() {
                        last_id = frame_id;
                    }
                    match event.as_deref() {
                        Some("done") => return Ok(()),
                        Some("progress") => {
                            let p: serde_json::Value = serde_json::from_str(&data)?;
                            if bar.length().is_none() {
                                bar.set_length(100);
                                bar.set_style(bar_style());
                            }
                            bar.set_position(p["percent"].as_u64().unwrap_or(0));
                            bar.set_message(p["message"].as_str().unwrap_or("").to_owned());
                        }
                        Some("status") => {
                            let st: serde_json::Value = serde_json::from_str(&data)?;
                            bar.set_message(format!(
                                "{id} {}",
                                st["status"].as_str().unwrap_or("?")
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    pub fn print_accepted(&self, a: &Answer<Accepted>) {
        if self.target.json {
            println!("{}", a.raw);
        } else {
            println!("{} {}", a.value.job_id, a.value.status);
        }
    }

    /// Prints a page of jobs: JSON, or a line per job and the next page's cursor.
    pub fn print_list(&self, page: &Answer<JobList>) {
        if self.target.json {
            println!("{}", page.raw);
            return;
        }
        if page.value.jobs.is_empty() {
            println!("no jobs");
        }
        for j in &page.value.jobs {
            println!(
                "{} {:<12} {:<11} {}",
                j.job_id, j.kind, j.status, j.submitted_at
            );
        }
        if let Some(c) = &page.value.next_cursor {
            println!("more: --cursor {c}");
        }
    }

    /// Prints a job: JSON, or a few human lines.
    pub fn print_job(&self, job: &Answer<JobView>) {
        if self.target.json {
            println!("{}", job.raw);
            return;
        }
        let v = &job.value;
        let s = &v.summary;
        println!("{} {} {}", s.job_id, s.kind, s.status);
        println!("  attempts: {}/{}", s.attempts, s.max_attempts);
        if let Some(r) = &v.result {
            println!("  result:   {r}");
        }
        if let Some(e) = &s.error {
            println!("  error:    {}: {}", e.code, e.message);
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{elapsed} [{bar:30}] {pos:>3}% {msg}").expect("valid template")
}

/// One Server-Sent Events frame: its event name, data (lines joined) and id; comments are skipped.
fn parse_frame(frame: &str) -> (Option<String>, String, Option<String>) {
    let (mut event, mut data, mut id) = (None, String::new(), None);
    for line in frame.lines().filter(|l| !l.starts_with(':')) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = Some(value.to_owned()),
            "id" => id = Some(value.to_owned()),
            "data" => {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value);
            }
            _ => {}
        }
    }
    (event, data, id)
}

#[cfg(test)]
mod tests {
    use super::parse_frame;

    #[test]
    fn frames_are_read_field_by_field() {
        let (event, data, id) = parse_frame("event: progress\nid: 7\ndata: {\"percent\":5}\n\n");
        assert_eq!(event.as_deref(), Some("progress"));
        assert_eq!(id.as_deref(), Some("7"));
        assert_eq!(data, r#"{"percent":5}"#);
        let (event, data, _) = parse_frame(": keep-alive\n\n");
        assert_eq!((event, data.as_str()), (None, ""));
    }
}
