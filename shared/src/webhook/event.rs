//! The events a job's receiver gets: `{"type","timestamp","data"}`. A terminal state's `data` is the
//! job's view without its input, at most [`MAX_EVENT_BYTES`]; a `job.waiting` event's (the job parked)
//! is the job's id, kind and status and what it waits for, with the waitpoint's `complete_url`, so a
//! receiver can hand the decision on (a Slack button, an email link) without the API's credentials.

use serde_json::{Value, json};

use crate::api::{JobView, WaitingForView, WaitpointLink, rfc3339};
use crate::job::{Job, JobStatus, WaitingFor};

/// The largest body sent. A larger result is left out (`data.result_omitted`): GET the job for it.
pub const MAX_EVENT_BYTES: usize = 20 * 1024;

/// The event type of a terminal status (`None` for a status that sends none).
pub fn event_type(status: JobStatus) -> Option<&'static str> {
    match status {
        JobStatus::Completed => Some("job.completed"),
        JobStatus::Failed => Some("job.failed"),
        JobStatus::Cancelled => Some("job.cancelled"),
        JobStatus::DeadLetter => Some("job.dead_lettered"),
        JobStatus::Waiting => Some("job.waiting"),
        JobStatus::Queued | JobStatus::Running | JobStatus::Retrying => None,
    }
}

/// The body of `job`'s pending event: its `job.waiting` event if that is the one, else its terminal
/// state's. The same job gives the same bytes, so every retry of an event carries the same body (a
/// `complete_url` is the same each time it is made: see [`WaitpointLink`]). `link`: where
/// `complete_url`s point (`None`: the event goes without one).
pub fn body(job: &Job, link: Option<&WaitpointLink>) -> String {
    match job.webhook.as_ref().and_then(|w| w.waiting.as_ref()) {
        Some(on) => waiting(job, on, link),
        None => terminal(job),
    }
}

/// A `job.waiting` event: the wait as the job parked on it, whatever the job has done since.
fn waiting(job: &Job, on: &WaitingFor, link: Option<&WaitpointLink>) -> String {
    let mut waiting_for = WaitingForView::from(on.clone());
    waiting_for.complete_url = link.and_then(|l| l.url(job, on));
    json!({
        "type": "job.waiting",
        "timestamp": rfc3339(job.parked_at.unwrap_or(job.submitted_at)),
        "data": {
            "job_id": job.job_id,
            "kind": job.kind,
            "status": JobStatus::Waiting,
            "waiting_for": waiting_for,
        },
    })
    .to_string()
}

fn terminal(job: &Job) -> String {
    let mut job = job.clone();
    // The job as its terminal write left it: recording attempts touches neither the event nor its bytes.
    job.webhook = None;
    let finished = job.finished_at.unwrap_or(job.updated_at);
    job.updated_at = finished;
    let mut data = serde_json::to_value(JobView::at(job.clone(), finished))
        .expect("a job view always serializes");
    if let Value::Object(map) = &mut data {
        map.remove("input");
    }
    let event = |data: &Value| {
        json!({
            "type": event_type(job.status).unwrap_or("job.updated"),
            "timestamp": rfc3339(finished),
            "data": data,
        })
        .to_string()
    };
    let full = event(&data);
    if full.len() <= MAX_EVENT_BYTES {
        return full;
    }
    if let Value::Object(map) = &mut data {
        map.remove("result");
        map.remove("warnings");
        map.insert("result_omitted".into(), Value::Bool(true));
        map.insert(
            "href".into(),
            Value::String(format!("/jobs/{}", job.job_id)),
        );
        // An error message is the only other field a handler sizes.
        if let Some(Value::Object(error)) = map.get_mut("error")
            && let Some(Value::String(message)) = error.get_mut("message")
            && message.len() > 1024
        {
            let cut = (0..=1024)
                .rev()
                .find(|i| message.is_char_boundary(*i))
                .unwrap_or(0);
            message.truncate(cut);
        }
    }
    event(&data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::NewJob;
    use crate::json::Json;

    fn finished(result: Value) -> Job {
        let mut job = Job::new(
            NewJob {
                user_id: "u".into(),
                kind: "echo".into(),
                input: Json::from(json!({"secret": "input"})),
                max_attempts: 3,
                ttl_secs: 3600,
                callback_url: Some("https://example.com/hook".into()),
                counted: false,
            },
            1_700_000_000_000,
        );
        job = job
            .claim("w", 1_700_000_060_000, 1_700_000_000_100)
            .unwrap();
        job.complete("w", Json::from(result), vec![], 1_700_000_000_200)
            .unwrap()
    }

    #[test]
    fn a_completed_job_sends_its_view_without_input() {
        let job = finished(json!({"answer": 42}));
        assert!(
            job.webhook.is_some(),
            "the terminal write marks the event pending"
        );
        let event: Value = serde_json::from_str(&body(&job, None)).unwrap();
        assert_eq!(event["type"], "job.completed");
        assert_eq!(event["timestamp"], "2023-11-14T22:13:20.200Z");
        assert_eq!(event["data"]["job_id"], job.job_id.as_str());
        assert_eq!(event["data"]["status"], "completed");
        assert_eq!(event["data"]["result"], json!({"answer": 42}));
        assert!(event["data"].get("input").is_none());
        assert!(event["data"].get("webhook").is_none());
        let mut attempted = job.clone();
        attempted.updated_at += 5_000;
        attempted.version += 1;
        assert_eq!(
            body(&job, None),
            body(&attempted, None),
            "the same bytes on every retry"
        );
    }

    #[test]
    fn a_large_result_is_left_out_and_the_event_says_where_it_is() {
        let job = finished(json!({"text": "x".repeat(30_000)}));
        let raw = body(&job, None);
        assert!(raw.len() <= MAX_EVENT_BYTES, "{} bytes", raw.len());
        let event: Value = serde_json::from_str(&raw).unwrap();
        assert!(event["data"].get("result").is_none());
        assert_eq!(event["data"]["result_omitted"], true);
        assert_eq!(event["data"]["href"], format!("/jobs/{}", job.job_id));
    }

    #[test]
    fn a_parked_job_announces_its_wait_with_a_link_the_same_on_every_attempt() {
        let t0 = 1_700_000_000_000;
        let job = Job::new(
            NewJob {
                user_id: "u".into(),
                kind: "approve".into(),
                input: Json::from(json!({"secret": "input"})),
                max_attempts: 3,
                ttl_secs: 3600,
                callback_url: Some("https://example.com/hook".into()),
                counted: false,
            },
            t0,
        );
        let on = WaitingFor {
            name: "approve".into(),
            expires_at: t0 + 86_400_000,
            detail: None,
        };
        let parked = job
            .claim("w", t0 + 60_000, t0 + 100)
            .unwrap()
            .park("w", on.clone(), t0 + 200)
            .unwrap();
        let state = parked
            .webhook
            .clone()
            .expect("parking marks the event pending");
        assert_eq!(state.waiting.as_ref(), Some(&on));
        let link = WaitpointLink {
            base: "https://api.example.com".into(),
            key: crate::api::TokenKey::new(b"k"),
        };
        let raw = body(&parked, Some(&link));
        let event: Value = serde_json::from_str(&raw).unwrap();
        assert_eq!(event["type"], "job.waiting");
        assert_eq!(event["timestamp"], "2023-11-14T22:13:20.200Z");
        assert_eq!(event["data"]["job_id"], parked.job_id.as_str());
        assert_eq!(event["data"]["status"], "waiting");
        assert_eq!(event["data"]["waiting_for"]["name"], "approve");
        assert_eq!(
            event["data"]["waiting_for"]["expires_at"],
            "2023-11-15T22:13:20.000Z"
        );
        let url = event["data"]["waiting_for"]["complete_url"]
            .as_str()
            .unwrap();
        assert!(url.starts_with(&format!(
            "https://api.example.com/waitpoints/{}.",
            parked.job_id
        )));
        assert!(!raw.contains("secret"), "no input: {raw}");
        // Resumed and running again before the event got through: the same bytes.
        let moved_on = parked
            .resume("approve", t0 + 300)
            .unwrap()
            .claim("w", t0 + 60_000, t0 + 400)
            .unwrap();
        assert_eq!(body(&moved_on, Some(&link)), raw);
        assert!(
            moved_on.webhook_pending(&state.event_id),
            "still its event to deliver"
        );
        // The job's end brings its own event, superseding the wait's.
        let done = moved_on
            .complete("w", Json::from(json!(1)), vec![], t0 + 500)
            .unwrap();
        assert!(!done.webhook_pending(&state.event_id));
        assert_eq!(
            serde_json::from_str::<Value>(&body(&done, Some(&link))).unwrap()["type"],
            "job.completed"
        );
    }

    #[test]
    fn each_terminal_status_has_its_type() {
        assert_eq!(event_type(JobStatus::Failed), Some("job.failed"));
        assert_eq!(event_type(JobStatus::Cancelled), Some("job.cancelled"));
        assert_eq!(event_type(JobStatus::DeadLetter), Some("job.dead_lettered"));
        assert_eq!(event_type(JobStatus::Running), None);
    }
}
