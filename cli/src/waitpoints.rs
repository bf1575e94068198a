//! `jobctl waitpoints` and `jobctl complete`: what the caller's jobs wait for, and completing it. Also
//! how a waitpoint reads in a terminal ("approve-refund (expires in 23 h)"), which `watch` shows too.

use anyhow::Context as _;
use jobkit::api::{JobView, WaitingForView};
use jobkit::job::START_TIMER;
use jobkit::{JobStatus, Json};
use serde_json::{Value, json};

use crate::client::{Answer, Client};

/// A waitpoint as a person reads it: its name, the tool an agent asks to run (an approval), and when
/// it times out: `approve-tool-1-0 (send_note; expires in 23 h)`.
pub fn describe(w: &WaitingForView, now: chrono::DateTime<chrono::Utc>) -> String {
    let when = match chrono::DateTime::parse_from_rfc3339(&w.expires_at) {
        Ok(at) => {
            let left = at.with_timezone(&chrono::Utc) - now;
            match left.to_std() {
                Ok(left) if w.name == START_TIMER => format!("starts in {}", span(left)),
                Ok(left) => format!("expires in {}", span(left)),
                Err(_) => "expired".to_owned(),
            }
        }
        Err(_) => format!("expires at {}", w.expires_at),
    };
    match tool(w) {
        Some(tool) => format!("{} ({tool}; {when})", w.name),
        None => format!("{} ({when})", w.name),
    }
}

/// The tool an agent's approval waitpoint asks to run (its detail's `tool`).
fn tool(w: &WaitingForView) -> Option<String> {
    let detail = w.detail.as_ref()?.to_value();
    detail["tool"].as_str().map(str::to_owned)
}

/// A duration, roughly, in the largest unit that keeps it above one: `40 s`, `12 min`, `23 h`, `3 d`.
fn span(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..172_800 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// `jobctl waitpoints [--job ID]`: every waiting job of the caller with what it waits for, or one
/// job's waitpoint. `Ok(false)` when `--job` names a job that waits for nothing.
pub async fn list(c: &Client, job: Option<&str>, json: bool) -> anyhow::Result<bool> {
    let jobs = match job {
        Some(id) => vec![c.status(id).await?],
        None => c.waiting().await?,
    };
    if json {
        let entries = jobs
            .iter()
            .map(|j| entry(&j.raw))
            .collect::<anyhow::Result<Vec<_>>>()?;
        println!("{}", Value::Array(entries));
    } else {
        if jobs.is_empty() {
            println!("no job is waiting");
        }
        let now = chrono::Utc::now();
        for j in &jobs {
            print_one(&j.value, now);
        }
    }
    Ok(job.is_none() || jobs.iter().all(|j| j.value.waiting_for.is_some()))
}

/// A job's entry in `--json` output, from its view exactly as the API sent it (so fields this version
/// of jobctl does not know, such as a capability URL, pass through).
fn entry(raw: &str) -> anyhow::Result<Value> {
    let v: Value = serde_json::from_str(raw).context("unexpected answer from the API")?;
    Ok(json!({
        "job_id": v["job_id"],
        "kind": v["kind"],
        "status": v["status"],
        "waiting_for": v["waiting_for"],
    }))
}

fn print_one(v: &JobView, now: chrono::DateTime<chrono::Utc>) {
    print!("{}", text_of(v, now));
}

/// One job's lines in the text output: what it waits for, its detail, how to complete it, and the
/// capability link when the API gave one (`GET /jobs/{id}` only, so with `--job`).
fn text_of(v: &JobView, now: chrono::DateTime<chrono::Utc>) -> String {
    use std::fmt::Write as _;
    let s = &v.summary;
    let Some(w) = &v.waiting_for else {
        return format!(
            "{} {} is {}: it waits for nothing\n",
            s.job_id, s.kind, s.status
        );
    };
    let mut out = format!("{} {:<12} {}\n", s.job_id, s.kind, describe(w, now));
    if let Some(d) = &w.detail {
        let _ = writeln!(out, "  detail:   {d}");
    }
    if w.name != START_TIMER {
        let data = if tool(w).is_some() {
            r#"'{"approve": true}'"#
        } else {
            "'{...}'"
        };
        let _ = writeln!(
            out,
            "  complete: jobctl complete {} {} --data {data}",
            s.job_id, w.name
        );
    }
    if let Some(url) = &w.complete_url {
        let _ = writeln!(out, "  link:     {url}");
    }
    out
}

/// `jobctl complete ID NAME --data JSON` or `jobctl complete --url URL --data JSON`. The data is
/// checked to be JSON before anything is sent; the API's refusal (409 completed already or timed out,
/// 410 closed, 404 unknown) is the command's error.
pub async fn complete(
    c: &Client,
    to: &CompleteTarget,
    data: &str,
    json: bool,
) -> anyhow::Result<bool> {
    let payload = Json::parse(data).context("--data must be JSON")?;
    match to {
        CompleteTarget::Job { id, name } => {
            let job = c.complete(id, name, &payload).await?;
            if json {
                println!("{}", job.raw);
            } else {
                print_completed(&job);
            }
        }
        CompleteTarget::Url(url) => {
            let answer = c.complete_url(url, &payload).await?;
            let v = &answer.value;
            if json || v["job_id"].is_null() {
                println!("{}", answer.raw);
            } else {
                println!("completed; job {} is {}", v["job_id"], v["status"]);
            }
        }
    }
    Ok(true)
}

/// What a completion was sent to.
pub enum CompleteTarget {
    Job { id: String, name: String },
    Url(String),
}

fn print_completed(job: &Answer<JobView>) {
    let s = &job.value.summary;
    let next = match s.status {
        JobStatus::Queued => "queued again: it resumes with the payload",
        // The worker that parked it resumes it once it sees the completion.
        JobStatus::Running | JobStatus::Waiting => "resuming",
        _ => "not resumed",
    };
    println!("completed; job {} {} is {next}", s.job_id, s.kind);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, name: &str, detail: Option<Value>) -> WaitingForView {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").unwrap();
        let at = now + chrono::Duration::seconds(secs);
        WaitingForView {
            name: name.into(),
            expires_at: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            detail: detail.map(Json::from),
            complete_url: None,
        }
    }

    #[test]
    fn a_waitpoint_reads_with_its_tool_and_time_left() {
        let now: chrono::DateTime<chrono::Utc> = "2026-12-07T10:00:00Z".parse().unwrap();
        let refund = at(23 * 3600 + 59 * 60, "approve-refund", None);
        assert_eq!(describe(&refund, now), "approve-refund (expires in 23 h)");
        let tool = at(
            90,
            "approve-tool-1-0",
            Some(json!({"tool": "send_note", "input": {"note": "hi"}})),
        );
        assert_eq!(
            describe(&tool, now),
            "approve-tool-1-0 (send_note; expires in 1 min)"
        );
        assert_eq!(describe(&at(-5, "x", None), now), "x (expired)");
        assert_eq!(
            describe(&at(3 * 86_400, START_TIMER, None), now),
            "start (starts in 3 d)"
        );
        assert_eq!(describe(&at(40, "x", None), now), "x (expires in 40 s)");
    }

    /// A job view as `GET /jobs/{id}` sends it, waiting on `approve-tool-1-0`.
    fn waiting_job(complete_url: Option<&str>) -> JobView {
        let mut waiting_for = json!({
            "name": "approve-tool-1-0",
            "expires_at": "2026-12-08T09:00:00.000Z",
            "detail": {"tool": "send_note", "input": {"note": "hi"}},
        });
        if let Some(url) = complete_url {
            waiting_for["complete_url"] = json!(url);
        }
        serde_json::from_value(json!({
            "job_id": "01M98Q833GN3TS09QWMGZ682WQ", "kind": "agent", "status": "waiting",
            "attempts": 1, "max_attempts": 3, "input": {"agent": "demo"},
            "submitted_at": "2026-12-07T09:59:00.000Z", "updated_at": "2026-12-07T10:00:00.000Z",
            "waiting_for": waiting_for,
        }))
        .unwrap()
    }

    #[test]
    fn waitpoints_text_shows_the_complete_url_when_the_api_gives_one() {
        let now: chrono::DateTime<chrono::Utc> = "2026-12-07T10:00:00Z".parse().unwrap();
        let url = "https://api.example/waitpoints/wpt.abc";
        let text = text_of(&waiting_job(Some(url)), now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "01M98Q833GN3TS09QWMGZ682WQ agent        approve-tool-1-0 (send_note; expires in 23 h)"
        );
        assert!(
            lines[2].starts_with("  complete: jobctl complete "),
            "{text}"
        );
        assert_eq!(lines[3], format!("  link:     {url}"), "{text}");
        assert_eq!(lines.len(), 4, "{text}");
        let text = text_of(&waiting_job(None), now);
        assert!(!text.contains("link:"), "no link without one: {text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
