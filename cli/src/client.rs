//! Client commands against any deployment or `jobctl dev`: submit, status, watch, list, cancel. Answers
//! are read as the kit's own types; `--json` prints them exactly as the API sent them.

use std::io::IsTerminal as _;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use jobkit::api::{JobList, JobSummary, JobView, WaitingForView};
use jobkit::{JobId, JobStatus, Json};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// Where the API is and who we are: the flags of the commands that call the API (and only theirs, so
/// `dev`, `run` or `worker` do not list flags they would ignore).
#[derive(Debug, clap::Args)]
pub struct Target {
    /// Base URL of the API (the stack's ApiUrl output, or `jobctl dev`'s address).
    #[arg(long, env = "JOBKIT_API_URL", default_value = DEV_URL)]
    pub api_url: String,
    /// Bearer token (a JWT from the stack's JwtIssuer) for an API behind a JWT authorizer. jobctl does not
    /// sign IAM (SigV4) requests.
    #[arg(long, env = "JOBKIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// User id to act as, for `jobctl dev --user-header` only (sent as X-User-Id; deployed stacks ignore
    /// it).
    #[arg(long, env = "JOBKIT_USER")]
    pub user: Option<String>,
    /// Print JSON instead of human-readable lines.
    #[arg(long)]
    pub json: bool,
}

/// Where `jobctl dev` serves by default.
const DEV_URL: &str = "http://127.0.0.1:8080";

/// `POST /jobs`'s body. The input is written as given, to the digit.
pub fn submit_body(kind: &str, input: &Json) -> String {
    format!(
        r#"{{"kind":{},"input":{input}}}"#,
        serde_json::to_string(kind).expect("a string serializes")
    )
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

    /// Whether `url` names this machine (where `jobctl dev` would be).
    fn on_loopback(url: &str) -> bool {
        let url = reqwest::Url::parse(url);
        let host = url.as_ref().ok().and_then(|u| u.host_str()).unwrap_or("");
        host == "localhost"
            || host
                .trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.target.api_url.trim_end_matches('/'), path)
    }

    /// `path` under the API's base URL, each of `segments` (a job id, a waitpoint name) percent-encoded
    /// as one path segment.
    pub fn url_with(&self, path: &str, segments: &[&str]) -> anyhow::Result<reqwest::Url> {
        let mut url = reqwest::Url::parse(&self.url(path)).context("invalid --api-url")?;
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("invalid --api-url"))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// Sends an API request, with the caller's credentials.
    async fn send<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> anyhow::Result<Answer<T>> {
        let mut req = req;
        if let Some(t) = &self.target.token {
            req = req.bearer_auth(t);
        }
        if let Some(u) = &self.target.user {
            req = req.header("x-user-id", u);
        }
        self.answer(req, &self.target.api_url).await
    }

    /// Sends `req` to `to` as it is (no credentials added) and reads the answer: `T`, or the API's
    /// error as `<status>: <code>: <message>`.
    async fn answer<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        to: &str,
    ) -> anyhow::Result<Answer<T>> {
        let req = req.header("accept", "application/json");
        let resp = req.send().await.map_err(|e| {
            // The usual first-run mistake: nothing listens at the default address yet.
            let hint = if e.is_connect() && Self::on_loopback(to) {
                " (is `jobctl dev` running? start it in another terminal, or pass --api-url)"
            } else {
                ""
            };
            anyhow::Error::new(e).context(format!("cannot reach {to}{hint}"))
        })?;
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
        self.send(
            self.http
                .post(self.url("/jobs"))
                .header("content-type", "application/json")
                .body(submit_body(kind, input)),
        )
        .await
    }

    pub async fn status(&self, id: &str) -> anyhow::Result<Answer<JobView>> {
        self.send(self.http.get(self.url(&format!("/jobs/{id}"))))
            .await
    }

    /// One page of the caller's jobs, newest first, of `status` and `kind` when given (filtered by the
    /// API, so a page is full unless it is the last).
    pub async fn list(
        &self,
        status: Option<&str>,
        kind: Option<&str>,
        limit: u32,
        cursor: Option<&str>,
    ) -> anyhow::Result<Answer<JobList>> {
        let mut query = vec![("limit", limit.to_string())];
        query.extend(status.map(|s| ("status", s.to_owned())));
        query.extend(kind.map(|k| ("kind", k.to_owned())));
        query.extend(cursor.map(|c| ("cursor", c.to_owned())));
        let url = reqwest::Url::parse_with_params(&self.url("/jobs"), &query)
            .context("invalid --api-url")?;
        self.send(self.http.get(url)).await
    }

    /// Every job of the caller that waits (`GET /jobs?status=waiting`, all pages), read one by one
    /// (`GET /jobs/{id}`: only the job's view says what it waits for), newest first.
    pub async fn waiting(&self) -> anyhow::Result<Vec<Answer<JobView>>> {
        let mut ids = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list(Some("waiting"), None, 100, cursor.as_deref())
                .await?;
            ids.extend(page.value.jobs.into_iter().map(|j| j.job_id));
            match page.value.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        futures::stream::iter(ids)
            .map(|id| async move { self.status(id.as_str()).await })
            .buffered(8)
            .try_collect()
            .await
    }

    /// Completes waitpoint `name` of job `id` with `payload` (`POST /jobs/{id}/waitpoints/{name}`): the
    /// job after the change.
    pub async fn complete(
        &self,
        id: &str,
        name: &str,
        payload: &Json,
    ) -> anyhow::Result<Answer<JobView>> {
        let url = self.url_with("/jobs", &[id, "waitpoints", name])?;
        self.send(
            self.http
                .post(url)
                .header("content-type", "application/json")
                .body(payload.get().to_owned()),
        )
        .await
    }

    /// Completes the waitpoint behind a capability URL (`waiting_for.complete_url`) with `payload`. The
    /// URL is the authorization: no credentials are sent with it.
    pub async fn complete_url(
        &self,
        url: &str,
        payload: &Json,
    ) -> anyhow::Result<Answer<serde_json::Value>> {
        let parsed = reqwest::Url::parse(url).context("--url must be an absolute URL")?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https"),
            "--url must be an http(s) URL"
        );
        self.answer(
            self.http
                .post(parsed)
                .header("content-type", "application/json")
                .body(payload.get().to_owned()),
            url,
        )
        .await
    }

    /// A JSON `POST` of `body` to `path`, read as `T`.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: String,
    ) -> anyhow::Result<Answer<T>> {
        self.send(
            self.http
                .post(self.url(path))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// A GET of `url` (under the API), as sent and read as `T`.
    pub async fn get_answer<T: DeserializeOwned>(
        &self,
        url: reqwest::Url,
    ) -> anyhow::Result<Answer<T>> {
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
        let board = Board::new(
            id,
            if self.target.json {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        let job = self.status(id).await?;
        board.job(&job.value);
        if !job.value.summary.status.is_terminal()
            && let Some(url) = job.value.events_url.clone()
            && let Err(e) = self.follow(id, &url, &board).await
        {
            tracing::debug!(error = %e, "no event stream; polling");
        }
        loop {
            let job = self.status(id).await?;
            board.job(&job.value);
            if job.value.summary.status.is_terminal() {
                board.bar.finish_and_clear();
                return Ok(job);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Reads the job's stream until its `done` event, reconnecting where it left off when the server
    /// ends a stream early (after 14 minutes).
    async fn follow(&self, id: &str, url: &str, board: &Board) -> anyhow::Result<()> {
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
                            board.progress(
                                p["percent"].as_u64().unwrap_or(0),
                                p["message"].as_str().unwrap_or(""),
                            );
                        }
                        Some("status") => {
                            let st: serde_json::Value = serde_json::from_str(&data)?;
                            match st["status"].as_str().unwrap_or("?") {
                                // What it waits for is on the job's view.
                                "waiting" => board.job(&self.status(id).await?.value),
                                status => board.status(status, None),
                            }
                        }
                        Some("waiting") => board.job(&self.status(id).await?.value),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Prints a submitted job: JSON, its id and status in a terminal, or only its id when stdout is a
    /// pipe or a file (`id=$(jobctl submit echo)`).
    pub fn print_accepted(&self, a: &Answer<Accepted>) {
        if self.target.json {
            println!("{}", a.raw);
        } else if std::io::stdout().is_terminal() {
            println!("{} {}", a.value.job_id, a.value.status);
        } else {
            println!("{}", a.value.job_id);
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

    /// Prints a finished job; whether it completed.
    pub fn print_outcome(&self, job: &Answer<JobView>) -> bool {
        self.print_job(job);
        job.value.summary.status == JobStatus::Completed
    }

    /// Prints a job: JSON, or a few human lines.
    pub fn print_job(&self, job: &Answer<JobView>) {
        if self.target.json {
            println!("{}", job.raw);
            return;
        }
        let v = &job.value;
        let s = &v.summary;
        println!("{} {} {}", s.job_id, s.kind, status_line(s));
        println!("  attempts: {}/{}", s.attempts, s.max_attempts);
        if let Some(r) = &v.result {
            println!("  result:   {r}");
        }
        if let Some(e) = &s.error {
            println!("  error:    {}: {}", e.code, e.message);
        }
        if let Some(w) = &v.waiting_for {
            let waits = crate::waitpoints::describe(w, chrono::Utc::now());
            println!("  waiting:  {waits}");
            if let Some(d) = &w.detail {
                println!("  detail:   {d}");
            }
        }
    }
}

/// A job's status as a person reads it: a running job asked to cancel is "cancel requested" (its
/// handler stops at its next check), not just "running".
fn status_line(s: &JobSummary) -> String {
    if s.cancel_requested && !s.status.is_terminal() {
        format!("{} (cancel requested)", s.status)
    } else {
        s.status.to_string()
    }
}

/// What `watch` shows while it waits: the job id, the time since the job started (since it was
/// submitted while it waits in the queue), its status, and a bar once its handler reports progress.
struct Board {
    bar: ProgressBar,
    /// Whether the timer already counts from the job's start, not from its submission.
    started: std::sync::atomic::AtomicBool,
    /// What the message line is made of besides the status.
    shown: std::sync::Mutex<Shown>,
}

#[derive(Default)]
struct Shown {
    /// The last progress report's message, shown again when a wait ends.
    progress: String,
    /// What a parked job waits for: it stays on the line until the job runs again (the stream may
    /// repeat the progress reported before the job parked, after the `waiting` status).
    waiting: Option<String>,
}

impl Board {
    fn new(id: &str, target: ProgressDrawTarget) -> Self {
        let bar = ProgressBar::with_draw_target(None, target)
            .with_style(spinner_style())
            .with_prefix(id.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        Self {
            bar,
            started: false.into(),
            shown: Default::default(),
        }
    }

    fn shown(&self) -> std::sync::MutexGuard<'_, Shown> {
        self.shown.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Shows the job as read from the API: its status, and the timer set from its timestamps.
    fn job(&self, v: &JobView) {
        let s = &v.summary;
        let since = v.started_at.as_deref().unwrap_or(&s.submitted_at);
        if let Ok(at) = chrono::DateTime::parse_from_rfc3339(since) {
            let age = SystemTime::now()
                .duration_since(at.into())
                .unwrap_or_default();
            self.bar.set_elapsed(age);
            self.started
                .store(v.started_at.is_some(), std::sync::atomic::Ordering::Relaxed);
        }
        match &v.waiting_for {
            Some(w) if s.status == JobStatus::Waiting => self.waiting(w),
            _ => self.status(&status_line(s), Some(s.attempts)),
        }
    }

    /// A parked job: what it waits for, bar or not ("waiting for approve-refund (expires in 23 h)").
    fn waiting(&self, w: &WaitingForView) {
        let line = format!(
            "waiting for {}",
            crate::waitpoints::describe(w, chrono::Utc::now())
        );
        self.bar.set_message(line.clone());
        self.shown().waiting = Some(line);
    }

    /// A status change seen on the stream: a job that starts running restarts the timer.
    fn status(&self, status: &str, attempts: Option<u32>) {
        if status == "running"
            && !self
                .started
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            self.bar.reset_elapsed();
        }
        let mut shown = self.shown();
        if status.starts_with("waiting") && shown.waiting.is_some() {
            return; // still waiting for what the line says
        }
        shown.waiting = None;
        if self.bar.length().is_none() {
            self.bar.set_message(match attempts {
                Some(n) => format!("{status} (attempt {n})"),
                None => status.to_owned(),
            });
        } else {
            // A bar shows the last progress report (again, after a wait).
            self.bar.set_message(shown.progress.clone());
        }
    }

    /// A progress report: the spinner becomes a bar.
    fn progress(&self, percent: u64, message: &str) {
        if self.bar.length().is_none() {
            self.bar.set_length(100);
            self.bar.set_style(bar_style());
        }
        self.bar.set_position(percent.min(100));
        let mut shown = self.shown();
        shown.progress = message.to_owned();
        if shown.waiting.is_none() {
            self.bar.set_message(message.to_owned());
        }
    }
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{spinner} {prefix} {elapsed_precise} {msg}")
        .expect("valid template")
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix} {elapsed_precise} [{wide_bar}] {pos:>3}% {msg}")
        .expect("valid template")
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
    use std::sync::{Arc, Mutex};

    use indicatif::{ProgressDrawTarget, TermLike};

    use super::*;

    /// A terminal that keeps what is drawn on it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<Vec<String>>>);

    impl Screen {
        /// The last frame drawn (blank writes pad or clear a line).
        fn last(&self) -> String {
            let writes = self.0.lock().unwrap();
            let frame = writes.iter().rev().find(|w| !w.trim().is_empty());
            frame.cloned().unwrap_or_default()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.write_str(s)
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            if !s.is_empty() {
                self.0.lock().unwrap().push(s.to_owned());
            }
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn view(started_secs_ago: Option<i64>, status: &str) -> JobView {
        let ago = |s: i64| {
            (chrono::Utc::now() - chrono::Duration::seconds(s))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        let started = started_secs_ago.map_or("null".to_owned(), |s| format!("\"{}\"", ago(s)));
        serde_json::from_str(&format!(
            r#"{{"job_id":"{}","kind":"sleep","status":"{status}","attempts":1,"max_attempts":5,
               "submitted_at":"{}","updated_at":"{}","input":{{}},"started_at":{started}}}"#,
            JobId::generate(0),
            ago(600),
            ago(0),
        ))
        .unwrap()
    }

    #[test]
    fn the_watch_timer_counts_from_the_jobs_start_and_the_bar_keeps_the_id() {
        let screen = Screen::default();
        let id = "01M839YN063K0RCGEMTG51KP2Z";
        let board = Board::new(id, ProgressDrawTarget::term_like(Box::new(screen.clone())));
        board.job(&view(Some(95), "running"));
        board.bar.force_draw();
        let line = screen.last();
        assert!(line.contains(id) && line.contains("running"), "{line}");
        assert!(line.contains("00:01:3"), "started 95 s ago: {line}");
        board.progress(40, "slept 4000 of 10000 ms");
        board.bar.force_draw();
        let line = screen.last();
        assert!(line.contains(id), "the bar keeps the job id: {line}");
        assert!(
            line.contains(" 40%") && line.contains("slept 4000"),
            "{line}"
        );
        assert!(line.contains("00:01:3"), "{line}");
    }

    #[test]
    fn a_queued_job_counts_from_its_submission_then_from_its_start() {
        let board = Board::new("x", ProgressDrawTarget::hidden());
        board.job(&view(None, "queued"));
        assert!(board.bar.elapsed() >= Duration::from_secs(600));
        board.status("running", None);
        assert!(board.bar.elapsed() < Duration::from_secs(5));
        // Seen running again (the stream's first event, a poll): no restart.
        board.job(&view(Some(30), "running"));
        board.status("running", None);
        assert!(board.bar.elapsed() >= Duration::from_secs(30));
    }

    #[test]
    fn a_waiting_job_shows_what_it_waits_for_then_its_progress_again() {
        let screen = Screen::default();
        let board = Board::new("x", ProgressDrawTarget::term_like(Box::new(screen.clone())));
        board.job(&view(Some(5), "running"));
        board.progress(50, "turn 1: calling send_note");
        let mut waiting = view(Some(5), "waiting");
        waiting.waiting_for = Some(WaitingForView {
            name: "approve-tool-1-0".into(),
            expires_at: (chrono::Utc::now() + chrono::Duration::minutes(23 * 60 + 30))
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            detail: Some(Json::from(
                serde_json::json!({"tool": "send_note", "input": {}}),
            )),
            complete_url: None,
        });
        board.job(&waiting);
        // The stream repeats the progress reported before the job parked: the wait stays shown.
        board.progress(50, "turn 1: calling send_note");
        board.status("waiting", None);
        board.bar.force_draw();
        let line = screen.last();
        assert!(
            line.contains("waiting for approve-tool-1-0 (send_note; expires in 23 h)"),
            "{line}"
        );
        board.status("running", None);
        board.bar.force_draw();
        let line = screen.last();
        assert!(line.contains("turn 1: calling send_note"), "{line}");
    }

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
