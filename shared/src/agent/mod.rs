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
//! - conversations ([`crate::thread`]): with `"thread": id` the run sees the thread's earlier runs
//!   (at most [`HistoryBound`] of them) before its message, and appends what it said (turns, tool
//!   calls, results) to the thread when it answers, or when it is cancelled (then marked interrupted),
//!   at keys of its own position, only where nothing is yet: a retried run appends nothing twice.
//!
//! Input `{"agent": name, "message": text, "context": {...}?, "thread": id?}`; result
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
pub use crate::thread::HistoryBound;
use crate::thread::{MessageQuery, SEQ_SPAN, ThreadId, ThreadMessage, ThreadRun};

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
    /// The conversation thread this message belongs to (`POST /threads`): the run sees its history.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub thread: Option<ThreadId>,
}

impl AgentInput {
    /// The user message the model is sent (and a thread keeps): the message, with the context.
    pub fn user_text(&self) -> String {
        match &self.context {
            Some(context) => format!(
                "{}\n\nContext (JSON): {}",
                self.message,
                Value::Object(context.clone())
            ),
            None => self.message.clone(),
        }
    }
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
    history: HistoryBound,
}

impl Agents {
    pub fn new(model: Arc<dyn Model>) -> Self {
        Self {
            agents: BTreeMap::new(),
            model,
            throttle: limits::Throttle::default(),
            history: HistoryBound::default(),
        }
    }

    /// How much of a thread its runs show the model (default [`HistoryBound::default`]);
    /// `JOBKIT_THREAD_HISTORY_MESSAGES` and `JOBKIT_THREAD_HISTORY_TOKENS` win over it:
    /// [`Self::register`] applies them last.
    pub fn with_history(mut self, bound: HistoryBound) -> Self {
        self.history = bound;
        self
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
    /// rather than running agents without the limits its operator meant. The same for the history
    /// bound's variables.
    pub fn register(mut self, registry: &mut HandlerRegistry) -> Result<(), InvalidKind> {
        let configured = ModelLimits::from_env().unwrap_or_else(|e| panic!("{e}"));
        self.history = self.history.with_env().unwrap_or_else(|e| panic!("{e}"));
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
        let run = match &input.thread {
            None => None,
            Some(_) => Some(ctx.thread_run().await.ok_or_else(|| {
                // Only submit links a run into its thread (`ctx.then` does not): unlinked, it
                // could neither be ordered nor keep its messages.
                JobError::terminal(
                    "thread_not_linked",
                    "an agent job on a thread must be submitted with POST /jobs",
                )
            })?),
        };
        let history = match &run {
            Some(run) => thread_history(run, self.history, &ctx).await?,
            None => Vec::new(),
        };
        let mut said = Vec::new();
        let ran = run_agent(
            agent,
            &*self.model,
            &self.throttle,
            input,
            history,
            &ctx,
            &mut said,
        )
        .await;
        if let Some(run) = &run {
            keep_in_thread(run, &ran, said, &ctx).await?;
        }
        ran
    }
}

/// The messages of the runs before `run` its model sees (see [`crate::thread::window`]).
async fn thread_history(
    run: &ThreadRun,
    bound: HistoryBound,
    ctx: &JobContext,
) -> Result<Vec<Message>, JobError> {
    let query = MessageQuery {
        before: Some(run.position * SEQ_SPAN),
        after: None,
        limit: bound.messages,
        newest_first: true,
    };
    let listed = ctx.thread_messages(&run.thread, &query).await?;
    // On DynamoDB the list comes from an eventually consistent index, and an enqueued run starts
    // as soon as the run before it ended: within the index's lag, so the list may miss that run's
    // messages, its answer the most important of all. Those are read by key as well (their places
    // are known from the count its terminal write recorded, which the gate read consistently) and
    // merged in. Runs before that one ended before it started, at least one whole run earlier (a
    // model call: seconds), far past the index's lag (well under a second), so the list has them.
    let latest = match ctx.thread_before() {
        Some(end) if end.run + 1 == run.position => {
            ctx.thread_run_messages(&run.thread, end.run, end.last(bound.messages))
                .await?
        }
        _ => Vec::new(),
    };
    let mut earlier = crate::thread::with_latest(listed, latest, query.limit);
    earlier.reverse();
    Ok(crate::thread::window(&earlier, bound)
        .into_iter()
        // A message this code cannot read (written by a newer version, say) is left out.
        .filter_map(|m| serde_json::from_value(m).ok())
        .collect())
}

/// Appends what the run said to its thread: when it answered, and when it was cancelled (what it
/// said so far, then an assistant message marked interrupted). Any other end appends nothing now: a
/// retry or a continuation will, and a run that never answers leaves its user message alone (the
/// next run's model reads [`crate::thread::NO_ANSWER`] after it). Index 0 is the user message, which
/// submit wrote; each message's index is its place in the run, so replays write the same keys.
async fn keep_in_thread(
    run: &ThreadRun,
    ran: &Result<AgentResult, JobError>,
    said: Vec<Message>,
    ctx: &JobContext,
) -> Result<(), JobError> {
    let interrupted = match ran {
        Ok(_) => false,
        Err(JobError::Cancelled) => true,
        Err(_) => return Ok(()),
    };
    let now = crate::now_millis();
    let job = ctx.job_id();
    let mut messages: Vec<ThreadMessage> = said
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let value = serde_json::to_value(m).expect("a message serializes");
            ThreadMessage::new(run.position, i as u32 + 1, job.clone(), now, value)
        })
        .collect();
    if interrupted {
        let marker = Message::Assistant {
            text: INTERRUPTED.into(),
            tool_calls: Vec::new(),
        };
        let mut m = ThreadMessage::new(
            run.position,
            messages.len() as u32 + 1,
            job.clone(),
            now,
            serde_json::to_value(marker).expect("a message serializes"),
        );
        m.interrupted = true;
        messages.push(m);
    }
    ctx.append_to_thread(run, &messages).await
}

/// What an interrupted run's last message says to the models of the runs after it.
pub const INTERRUPTED: &str = "(interrupted)";

async fn run_agent(
    agent: &Agent,
    model: &dyn Model,
    throttle: &limits::Throttle,
    input: AgentInput,
    history: Vec<Message>,
    ctx: &JobContext,
    said: &mut Vec<Message>,
) -> Result<AgentResult, JobError> {
    let mut usage = Usage::default();
    let ran = converse(
        agent, model, throttle, input, history, ctx, &mut usage, said,
    )
    .await;
    // A run that fails still reports what it spent (the job's `error.details.usage`); a retried run
    // replays its recorded turns, so the count covers every attempt.
    ran.map_err(|e| {
        e.with_detail("usage", usage)
            .with_detail("model", &agent.model)
    })
}

/// The tool-use loop after `history` (a thread's earlier runs); `usage` adds up the turns as they
/// are taken, `said` what the model and the tools said, in order.
#[allow(clippy::too_many_arguments)]
async fn converse(
    agent: &Agent,
    model: &dyn Model,
    throttle: &limits::Throttle,
    input: AgentInput,
    history: Vec<Message>,
    ctx: &JobContext,
    usage: &mut Usage,
    said: &mut Vec<Message>,
) -> Result<AgentResult, JobError> {
    let local: Vec<&str> = agent.tools.iter().map(Tool::name).collect();
    let mcp = mcp::McpTools::start(&agent.mcp, &local, ctx).await?;
    let mut messages = history;
    messages.push(Message::User {
        text: input.user_text(),
    });
    let mut request = ModelRequest {
        model: agent.model.clone(),
        system: agent.system.clone(),
        messages,
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
        said.extend(request.messages.last().cloned());
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
        said.extend(request.messages.last().cloned());
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
