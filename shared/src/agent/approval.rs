//! Tools that need a person's approval ([`Tool::needs_approval`]): before such a tool runs, the agent's
//! run parks on a waitpoint (`approve-tool-<turn>-<n>`, beside the call's step `tool-<turn>-<n>`) whose
//! `waiting_for.detail` shows `{"tool", "input"}`, so whoever approves sees what they approve.
//!
//! The approval is asked from inside the call's durable step, so once the step is recorded (the tool
//! ran, or the model was told it was refused) a replay neither asks again nor runs the tool again;
//! and the model turn that asked for the call is a step too, so the run that resumes after the
//! approval does not call the model for that turn again. What an answer means:
//!
//! - `{"approve": true}`: the tool runs;
//! - `{"approve": false, "reason": "…"}` (reason optional): the model gets a tool error with the reason;
//! - anything else: refused too (never run on an answer that does not say yes), the model told why;
//! - no answer before the timeout: the model gets the tool error "approval timed out".

use serde::Deserialize;
use serde_json::{Value, json};

use super::model::{ToolCall, ToolResult};
use super::tool::Tool;
use super::tool_error;
use crate::handler::{JobContext, JobError, MAX_WAIT_DETAIL_BYTES, WaitFor};

/// The waitpoint that approves call `n` (0-based) of turn `turn`.
pub fn waitpoint_name(turn: u32, n: usize) -> String {
    format!("approve-tool-{turn}-{n}")
}

/// What a completion of an approval waitpoint says.
#[derive(Deserialize)]
struct Answer {
    approve: bool,
    #[serde(default)]
    reason: Option<String>,
}

/// Asks for approval of `call` on waitpoint `name` when its tool needs one. `Ok(None)`: run it
/// (approved, or no approval needed); `Ok(Some(result))`: answer the model with this tool error
/// instead; `Err(JobError::Wait)`: not answered yet, the run parks.
pub(crate) async fn ask(
    tools: &[Tool],
    call: &ToolCall,
    name: &str,
    ctx: &JobContext,
) -> Result<Option<ToolResult>, JobError> {
    let timeout = match tools.iter().find(|t| t.name() == call.name) {
        // A malformed call runs nothing (it is answered as a tool error): nothing to approve.
        Some(tool) if !call.malformed => tool.approval(),
        _ => None,
    };
    let Some(timeout) = timeout else {
        return Ok(None);
    };
    let detail = json!({"tool": call.name, "input": call.input});
    let shown = detail.to_string().len();
    if shown > MAX_WAIT_DETAIL_BYTES {
        // Nobody can approve what they cannot see.
        return Ok(Some(tool_error(
            call,
            format!(
                "{} needs approval, and its input is too large to show ({shown} bytes); call it with \
                 a smaller input",
                call.name
            ),
        )));
    }
    let answer = match ctx
        .wait_for::<Value>(name, WaitFor::timeout(timeout).detail(detail))
        .await
    {
        Ok(answer) => answer,
        Err(JobError::WaitTimedOut { .. }) => {
            tracing::info!(tool = %call.name, waitpoint = name, "approval timed out");
            return Ok(Some(tool_error(call, "approval timed out".to_owned())));
        }
        Err(e) => return Err(e),
    };
    let refused = match serde_json::from_value::<Answer>(answer) {
        Ok(Answer { approve: true, .. }) => return Ok(None),
        Ok(Answer {
            approve: false,
            reason,
        }) => format!(
            "the user refused this call of {}: {}",
            call.name,
            reason.as_deref().unwrap_or("no reason given")
        ),
        Err(_) => format!(
            "the call of {} was not approved (the answer was not {{\"approve\": true}})",
            call.name
        ),
    };
    tracing::info!(tool = %call.name, waitpoint = name, "tool call refused");
    Ok(Some(tool_error(call, refused)))
}
