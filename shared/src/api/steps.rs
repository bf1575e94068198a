//! `GET /jobs/{id}/steps?limit=&cursor=`: what the caller's job recorded — durable steps, an agent's model
//! turns and tool calls, waitpoints — oldest first, a page at a time. Served by the status function.

use std::sync::Arc;

use axum::Json as JsonBody;
use axum::extract::{Path, RawQuery, State};
use serde::{Deserialize, Serialize};

use super::jobs::{page_limit, parameters};
use super::status::rfc3339;
use super::{ApiError, Caller, StatusApi};
use crate::agent::{ModelReply, ToolResult, Usage};
use crate::clock::Millis;
use crate::json::Json;
use crate::steps::{Recorded, RecordedStep, StepKind, StepPosition, StepQuery};
use crate::waitpoint::{WaitState, Waitpoint};

/// One entry of the list (openapi.yaml's `Step`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub name: String,
    /// `step`, `waitpoint`, `model_turn` or `tool_call`.
    pub kind: String,
    /// `completed` for steps; a waitpoint's `pending`, `completed` or `timed_out`.
    pub state: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub duration_ms: Option<u64>,
    /// A waitpoint's deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The step's result, or a completed waitpoint's payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Json>,
    /// A model turn's token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

/// What went wrong in a step, where its record says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepError {
    pub code: String,
    pub message: String,
}

/// One page: `next_cursor` is `null` on the last.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepList {
    pub steps: Vec<StepView>,
    pub next_cursor: Option<String>,
}

fn duration(started: Option<Millis>, finished: Option<Millis>) -> Option<u64> {
    Some((finished? - started?).max(0) as u64)
}

impl StepView {
    /// The view of an entry at `now`: a pending waitpoint past its deadline reads `timed_out`, as the
    /// sweep will record it.
    pub fn at(entry: Recorded, now: Millis) -> Self {
        match entry {
            Recorded::Step(s) => Self::of_step(s),
            Recorded::Waitpoint(w) => Self::of_waitpoint(w, now),
        }
    }

    fn of_step(s: RecordedStep) -> Self {
        let kind = s.meta.map_or(StepKind::Step, |m| m.kind);
        let started = s.meta.map(|m| m.started_at);
        let finished = s.meta.map(|m| m.recorded_at);
        // Model turns and tool calls are read as the agent loop stored them; a record that does not
        // read so is shown as it is, without the extras.
        let usage = (kind == StepKind::ModelTurn)
            .then(|| s.value.decode::<ModelReply>().ok().map(|r| r.usage))
            .flatten();
        let error = (kind == StepKind::ToolCall)
            .then(|| s.value.decode::<ToolResult>().ok())
            .flatten()
            .filter(|r| r.is_error)
            .map(|r| StepError {
                code: "tool_error".into(),
                message: r.content,
            });
        Self {
            name: s.name,
            kind: kind.as_str().into(),
            state: WaitState::Completed.as_str().into(),
            started_at: started.map(rfc3339),
            finished_at: finished.map(rfc3339),
            duration_ms: duration(started, finished),
            expires_at: None,
            output: Some(s.value),
            usage,
            error,
        }
    }

    fn of_waitpoint(w: Waitpoint, now: Millis) -> Self {
        let overdue = w.state == WaitState::Pending && now >= w.expires_at;
        let (state, finished) = if overdue {
            (WaitState::TimedOut, Some(w.expires_at))
        } else {
            (w.state, w.settled_at)
        };
        Self {
            name: w.name,
            kind: "waitpoint".into(),
            state: state.as_str().into(),
            started_at: w.opened_at.map(rfc3339),
            finished_at: finished.map(rfc3339),
            duration_ms: duration(w.opened_at, finished),
            expires_at: Some(rfc3339(w.expires_at)),
            output: w.payload,
            usage: None,
            error: (state == WaitState::TimedOut).then(|| StepError {
                code: "wait_timed_out".into(),
                message: "the waitpoint timed out before it was completed".into(),
            }),
        }
    }
}

pub(super) async fn list(
    State(api): State<Arc<StatusApi>>,
    Caller(user): Caller,
    Path(raw_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<JsonBody<StepList>, ApiError> {
    // The job first: an invalid id is a 400 and another user's job a 404 before the query is read,
    // as for GET /jobs/{id}.
    let job = api.owned(&user, &raw_id).await?;
    let params = parameters(raw.as_deref(), &["limit", "cursor"])?;
    let limit = page_limit(&params)?;
    // A cursor pages through the list that made it: this job's, for this caller.
    let id = job.job_id.to_string();
    let binding = [user.as_str(), id.as_str(), "steps"];
    let after = params
        .get("cursor")
        .map(|c| {
            let text = api.cursors.decode_text(c, &binding)?;
            StepPosition::from_text(&text).ok_or(ApiError::InvalidCursor)
        })
        .transpose()?;
    // One more than asked tells whether another page exists.
    let query = StepQuery {
        limit: limit + 1,
        after,
    };
    let mut listed = api.store.steps(&job.job_id, &query).await?;
    let next_cursor = (listed.len() > limit).then(|| {
        listed.truncate(limit);
        let last = listed.last().expect("limit is at least 1");
        api.cursors.encode_text(&last.position.to_text(), &binding)
    });
    let now = api.clock.now();
    Ok(JsonBody(StepList {
        steps: listed
            .into_iter()
            .map(|l| StepView::at(l.entry, now))
            .collect(),
        next_cursor,
    }))
}
