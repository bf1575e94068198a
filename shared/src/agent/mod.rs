//! Agent jobs: the built-in kind `agent` runs a registered agent — a model, a system prompt, a turn limit
//! and typed tools — on a user message, as a tool-use loop built on durable steps:
//!
//! - every model turn is a step (`turn-N`) and every tool call a step (`tool-N-M`), so a retried or
//!   continued run replays the conversation from the records and never re-runs a finished tool;
//! - a progress event per turn ("turn 3: calling search"); a cancel request stops the model call or
//!   tool call in flight (steps race it: [`JobContext::until_cancelled`]), so the job ends `cancelled`
//!   within the cancel poll; a yield before the invocation deadline (the continuation replays the
//!   recorded steps and goes on);
//! - each turn's assistant text is the job's partial result (`{"turn": N, "text": …}`,
//!   [`JobContext::partial`]): `GET /jobs/{id}` and the stream show the answer forming turn by turn;
//! - a failed run reports the tokens it spent in its error's details (`error.details.usage`);
//! - a tool never takes the process down: a panic in one is a tool error ([`Tool::call`]);
//! - a tool that needs approval ([`Tool::needs_approval`]) waits for it on a waitpoint, the run parked
//!   (see [`approval`]);
//! - model errors are classified ([`ModelError`]): throttling and server errors are retried (after the
//!   provider's `retry_after`), a refused request, denied access or an overfull context fail the job; a
//!   malformed tool call is answered to the model as a tool error;
//! - per-model rate limits (requests and tokens per minute, [`limits`]): a call waits for capacity in
//!   buckets every worker shares, or the job parks if the wait is long;
//! - each model call counts in its owner's usage of the day, and a run that crosses the daily token
//!   budget stops after that turn with `budget_exceeded` (see [`budget`]).
//!
//! Input `{"agent": name, "message": text, "context": {...}?}`; result
//! `{answer, turns, tool_calls: [{name, input, output}], usage: {input_tokens, output_tokens}, model}`.

pub mod approval;
pub mod bedrock;
mod budget;
pub mod limits;
pub mod mcp;
pub mod model;
pub mod openai;
mod tool;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use bedrock::Bedrock;
pub use limits::{ModelLimit, ModelLimits};
pub use mcp::McpServer;
pub use model::{
    Message, Model, ModelError, ModelReply, ModelRequest, ToolCall, ToolResult, ToolSpec, Usage,
};
pub use openai::OpenAiCompatible;
pub use tool::{DEFAULT_APPROVAL_TIMEOUT, Tool};

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
    /// MCP servers and the tools it may use from each (see [`mcp`]).
    pub mcp: Vec<McpServer>,
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
    /// The model id `usage` was spent on (the agent's; `GET /usage` counts it under this id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
}

/// The `agent` kind: registered agents on one model adapter.
pub struct Agents {
    agents: BTreeMap<String, Agent>,
    model: Arc<dyn Model>,
    throttle: limits::Throttle,
}

impl Agents {
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self {
            agents: BTreeMap::new(),
            model,
            throttle: limits::Throttle::default(),
        }
    }

    /// Rate limits per model id ([`limits`]), over any given before (per model). `JOBKIT_MODEL_LIMITS`
    /// wins over them: [`Self::register`] applies it last.
    pub fn with_model_limits(mut self, limits: ModelLimits) -> Self {
        self.throttle = limits::Throttle::new(limits.over(self.throttle.limits().clone()));
        self
    }

    pub fn with(mut self, agent: Agent) -> Self {
        self.agents.insert(agent.name.clone(), agent);
        self
    }

    /// Registers the `agent` kind with these agents; a job's model (for limits keyed by
    /// [`crate::limits::Key::Model`]) is its agent's. Model limits from `JOBKIT_MODEL_LIMITS` apply
    /// over the code's.
    ///
    /// # Panics
    /// When `JOBKIT_MODEL_LIMITS` is set and invalid: the process fails at start, naming the variable,
    /// rather than running agents without the limits its operator meant.
    pub fn register(self, registry: &mut HandlerRegistry) -> Result<(), InvalidKind> {
        let configured = ModelLimits::from_env().unwrap_or_else(|e| panic!("{e}"));
        let this = if configured.is_empty() {
            self
        } else {
            self.with_model_limits(configured)
        };
        this.register_as_is(registry)
    }

    fn register_as_is(self, registry: &mut HandlerRegistry) -> Result<(), InvalidKind> {
        let models: BTreeMap<String, String> = self
            .agents
            .iter()
            .map(|(name, a)| (name.clone(), a.model.clone()))
            .collect();
        registry.register(KIND, self)?.model_from(move |input| {
            let name = input.to_value().get("agent")?.as_str()?.to_owned();
            models.get(&name).cloned()
        });
        Ok(())
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
        run_agent(agent, &*self.model, &self.throttle, input, &ctx).await
    }
}

async fn run_agent(
    agent: &Agent,
    model: &dyn Model,
    throttle: &limits::Throttle,
    input: AgentInput,
    ctx: &JobContext,
) -> Result<AgentResult, JobError> {
    let mut usage = Usage::default();
    let ran = converse(agent, model, throttle, input, ctx, &mut usage).await;
    // A run that fails still reports what it spent (the job's `error.details.usage`); a retried run
    // replays its recorded turns, so the count covers every attempt.
    ran.map_err(|e| {
        e.with_detail("usage", usage)
            .with_detail("model", &agent.model)
    })
}

/// The tool-use loop; `usage` adds up the turns as they are taken.
async fn converse(
    agent: &Agent,
    model: &dyn Model,
    throttle: &limits::Throttle,
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
    let local: Vec<&str> = agent.tools.iter().map(Tool::name).collect();
    let mcp = mcp::McpTools::start(&agent.mcp, &local, ctx).await?;
    let mut request = ModelRequest {
        model: agent.model.clone(),
        system: agent.system.clone(),
        messages: vec![Message::User { text: first }],
        tools: agent.tools.iter().map(|t| t.spec().clone()).collect(),
    };
    request.tools.extend(mcp.specs());
    let mut uses = Vec::new();
    for turn in 1..=agent.max_turns {
        ctx.check_cancelled()?;
        if ctx.should_yield() {
            return Err(JobError::Yield); // the continuation replays the recorded turns
        }
        let name = format!("turn-{turn}");
        // Within the model's limits and counted in the owner's usage: both inside the step, so a
        // replay takes no capacity and counts nothing.
        let ran = std::sync::atomic::AtomicBool::new(false);
        let taken: budget::Turn = ctx
            .step_as(StepKind::ModelTurn, &name, async {
                let reply = throttle
                    .call(ctx, &request, &name, || model.converse(&request))
                    .await?;
                ran.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(budget::count(ctx, &agent.model, reply).await)
            })
            .await?;
        let reply = taken.reply.clone();
        *usage = usage.saturating_add(reply.usage);
        request.messages.push(Message::Assistant {
            text: reply.text.clone(),
            tool_calls: reply.tool_calls.clone(),
        });
        // Only a turn this attempt took: a replayed one was published when it ran, and publishing it
        // again would show an older turn's text for a moment.
        if ran.load(std::sync::atomic::Ordering::Relaxed) {
            publish_turn(ctx, turn, &reply.text).await;
        }
        if reply.tool_calls.is_empty() {
            ctx.progress(100, format!("turn {turn}: answered")).await?;
            return Ok(AgentResult {
                answer: reply.text,
                turns: turn,
                tool_calls: uses,
                usage: *usage,
                model: agent.model.clone(),
            });
        }
        // Over the daily budget: this turn is kept and counted, and the run stops before its tools.
        if let Some(stop) = taken.exceeded() {
            return Err(stop);
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
            // The approval is asked inside the step: once the step is recorded, it is not asked again.
            let result: ToolResult = ctx
                .step_as(StepKind::ToolCall, &format!("tool-{turn}-{i}"), async {
                    let approval = approval::waitpoint_name(turn, i);
                    if let Some(refused) = approval::ask(&agent.tools, call, &approval, ctx).await?
                    {
                        return Ok(refused);
                    }
                    match mcp.call(call).await {
                        Some(result) => result,
                        None => Ok(call_tool(&agent.tools, call).await),
                    }
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
    let error = |text: String| tool_error(call, text);
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

/// A tool error answering `call`: the model reads `text` and may try again differently.
fn tool_error(call: &ToolCall, text: String) -> ToolResult {
    ToolResult {
        id: call.id.clone(),
        content: text,
        is_error: true,
    }
}

/// The most of a turn's text its partial result carries: half of what a partial may take, leaving
/// room for JSON's escapes.
const MAX_TURN_TEXT: usize = crate::handler::MAX_PARTIAL_BYTES / 2;

/// Publishes a turn's assistant text as the job's partial result (`{"turn", "text"}`, plus
/// `"truncated": true` when cut), so a page shows the answer forming turn by turn. A turn with no text
/// (only tool calls) publishes nothing. Best effort: a partial that cannot be written does not fail the
/// agent.
async fn publish_turn(ctx: &JobContext, turn: u32, text: &str) {
    if text.is_empty() {
        return;
    }
    // The last char boundary at or before the limit (`floor_char_boundary` is newer than the MSRV).
    let cut = (0..=MAX_TURN_TEXT.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    let partial = if cut < text.len() {
        serde_json::json!({"turn": turn, "text": &text[..cut], "truncated": true})
    } else {
        serde_json::json!({"turn": turn, "text": text})
    };
    if let Err(e) = ctx.partial(&partial).await {
        tracing::warn!(error = %e, turn, "could not publish the turn's text");
    }
}
