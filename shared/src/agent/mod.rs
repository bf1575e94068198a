//! Agent jobs: the built-in kind `agent` runs a registered agent — a model, a system prompt, a turn limit
//! and typed tools — on a user message, as a tool-use loop built on durable steps:
//!
//! - every model turn is a step (`turn-N`) and every tool call a step (`tool-N-M`), so a retried or
//!   continued run replays the conversation from the records and never re-runs a finished tool;
//! - a progress event per turn ("turn 3: calling search"); a cancel request stops the model call or
//!   tool call in flight (steps race it: [`JobContext::until_cancelled`]), so the job ends `cancelled`
//!   within the cancel poll; a yield before the invocation deadline (the continuation replays the
//!   recorded steps and goes on);
//! - a failed run reports the tokens it spent in its error's details (`error.details.usage`);
//! - a tool never takes the process down: a panic in one is a tool error ([`Tool::call`]);
//! - model errors are classified ([`ModelError`]): throttling and server errors are retried (after the
//!   provider's `retry_after`), a refused request, denied access or an overfull context fail the job; a
//!   malformed tool call is answered to the model as a tool error.
//!
//! Input `{"agent": name, "message": text, "context": {...}?}`; result
//! `{answer, turns, tool_calls: [{name, input, output}], usage: {input_tokens, output_tokens}}`.

pub mod bedrock;
pub mod model;
pub mod openai;
mod tool;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use bedrock::Bedrock;
pub use model::{
    Message, Model, ModelError, ModelReply, ModelRequest, ToolCall, ToolResult, ToolSpec, Usage,
};
pub use openai::OpenAiCompatible;
pub use tool::Tool;

use crate::handler::{Handler, HandlerRegistry, InvalidKind, JobContext, JobError};
use crate::steps::StepKind;

/// The kind agent jobs are submitted as.
pub const KIND: &str = "agent";

/// An agent: what it runs on and what it may do.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    /// The model id the adapter sends (e.g. `anthropic.claude-3-5-haiku-20241022-v1:0`, `llama3.2`).
    pub model: String,
    pub system: String,
    pub max_turns: u32,
    pub tools: Vec<Tool>,
}

/// The input of an `agent` job.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentInput {
    pub agent: String,
    pub message: String,
    #[serde(default)]
    pub context: Option<serde_json::Map<String, Value>>,
}

/// One tool call as the result reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolUse {
    pub name: String,
    pub input: Value,
    pub output: Value,
}

/// The result of an `agent` job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AgentResult {
    pub answer: String,
    pub turns: u32,
    pub tool_calls: Vec<ToolUse>,
    pub usage: Usage,
}

/// The `agent` kind: registered agents on one model adapter.
pub struct Agents {
    agents: BTreeMap<String, Agent>,
    model: Arc<dyn Model>,
}

impl Agents {
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self {
            agents: BTreeMap::new(),
            model,
        }
    }

    pub fn with(mut self, agent: Agent) -> Self {
        self.agents.insert(agent.name.clone(), agent);
        self
    }

    /// Registers the `agent` kind with these agents.
    pub fn register(self, registry: &mut HandlerRegistry) -> Result<(), InvalidKind> {
        registry.register(KIND, self).map(drop)
    }
}

impl Handler for Agents {
    type Input = AgentInput;
    type Output = AgentResult;

    async fn run(&self, input: AgentInput, ctx: JobContext) -> Result<AgentResult, JobError> {
        let agent = self.agents.get(&input.agent).ok_or_else(|| {
            let known: Vec<&str> = self.agents.keys().map(String::as_str).collect();
            JobError::terminal(
                "unknown_agent",
                format!(
                    "no agent {:?}; registered: {}",
                    input.agent,
                    known.join(", ")
                ),
            )
        })?;
        run_agent(agent, &*self.model, input, &ctx).await
    }
}

async fn run_agent(
    agent: &Agent,
    model: &dyn Model,
    input: AgentInput,
    ctx: &JobContext,
) -> Result<AgentResult, JobError> {
    let mut usage = Usage::default();
    let ran = converse(agent, model, input, ctx, &mut usage).await;
    // A run that fails still reports what it spent (the job's `error.details.usage`); a retried run
    // replays its recorded turns, so the count covers every attempt.
    ran.map_err(|e| e.with_detail("usage", usage))
}

/// The tool-use loop; `usage` adds up the turns as they are taken.
async fn converse(
    agent: &Agent,
    model: &dyn Model,
    input: AgentInput,
    ctx: &JobContext,
    usage: &mut Usage,
) -> Result<AgentResult, JobError> {
    let first = match &input.context {
        Some(context) => format!(
            "{}\n\nContext (JSON): {}",
            input.message,
            Value::Object(context.clone())
        ),
        None => input.message.clone(),
    };
    let mut request = ModelRequest {
        model: agent.model.clone(),
        system: agent.system.clone(),
        messages: vec![Message::User { text: first }],
        tools: agent.tools.iter().map(|t| t.spec().clone()).collect(),
    };
    let mut uses = Vec::new();
    for turn in 1..=agent.max_turns {
        ctx.check_cancelled()?;
        if ctx.should_yield() {
            return Err(JobError::Yield); // the continuation replays the recorded turns
        }
        let reply: ModelReply = ctx
            .step_as(StepKind::ModelTurn, &format!("turn-{turn}"), async {
                model.converse(&request).await.map_err(JobError::from)
            })
            .await?;
        *usage = usage.saturating_add(reply.usage);
        request.messages.push(Message::Assistant {
            text: reply.text.clone(),
            tool_calls: reply.tool_calls.clone(),
        });
        if reply.tool_calls.is_empty() {
            ctx.progress(100, format!("turn {turn}: answered")).await?;
            return Ok(AgentResult {
                answer: reply.text,
                turns: turn,
                tool_calls: uses,
                usage: *usage,
            });
        }
        let names: Vec<&str> = reply.tool_calls.iter().map(|c| c.name.as_str()).collect();
        let percent = (100 * u64::from(turn) / u64::from(agent.max_turns.max(1))).min(99) as u8;
        ctx.progress(
            percent,
            format!("turn {turn}: calling {}", names.join(", ")),
        )
        .await?;
        let mut results = Vec::new();
        for (i, call) in reply.tool_calls.iter().enumerate() {
            let result: ToolResult = ctx
                .step_as(StepKind::ToolCall, &format!("tool-{turn}-{i}"), async {
                    Ok(call_tool(&agent.tools, call).await)
                })
                .await?;
            let output = serde_json::from_str(&result.content)
                .unwrap_or_else(|_| Value::String(result.content.clone()));
            uses.push(ToolUse {
                name: call.name.clone(),
                input: call.input.clone(),
                output: if result.is_error {
                    serde_json::json!({"error": output})
                } else {
                    output
                },
            });
            results.push(result);
        }
        request.messages.push(Message::Tool { results });
    }
    Err(JobError::terminal(
        "max_turns_exceeded",
        format!(
            "agent {:?} did not answer within {} turns",
            agent.name, agent.max_turns
        ),
    ))
}

/// Runs one requested tool; every failure (unknown tool, malformed or invalid arguments, the tool's own
/// error) becomes a tool error for the model to read.
async fn call_tool(tools: &[Tool], call: &ToolCall) -> ToolResult {
    let error = |text: String| ToolResult {
        id: call.id.clone(),
        content: text,
        is_error: true,
    };
    if call.malformed {
        return error(format!(
            "the arguments of {} are not valid JSON; call it again with a JSON object",
            call.name
        ));
    }
    let Some(tool) = tools.iter().find(|t| t.name() == call.name) else {
        let known: Vec<&str> = tools.iter().map(Tool::name).collect();
        return error(format!(
            "no tool named {:?}; available: {}",
            call.name,
            known.join(", ")
        ));
    };
    match tool.call(call.input.clone()).await {
        Ok(output) => ToolResult {
            id: call.id.clone(),
            content: output.to_string(),
            is_error: false,
        },
        Err(e) => error(e),
    }
}
