//! Tools from MCP servers: an agent names servers (Streamable HTTP) and the tools it may use from each;
//! their schemas come from the server (`tools/list`), and calls go through the official Rust SDK's
//! client (`rmcp`).
//!
//! Durable like any tool:
//! - the tools are listed once per job, as the step `mcp-tools`, so a retried or continued run shows
//!   the model the same tools and needs no server until it calls one;
//! - a call runs inside the loop's `tool-N-M` step, so a retry after the call replays its recorded
//!   result and never calls the server again;
//! - a tool's own error (`isError`) or a JSON-RPC error answering the call is a tool error for the
//!   model to read; a server that cannot be reached (connect, transport, timeout) is a retryable
//!   [`JobError`] (`mcp_unavailable`), retried with backoff like a model error. Nothing is recorded
//!   then, so the retry asks again.
//!
//! Connections are opened on first use in an attempt and dropped with it (a Lambda invocation keeps
//! nothing between jobs).

use std::collections::BTreeSet;

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RoleClient, RunningService, ServiceError};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransport, StreamableHttpClientTransportConfig,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::OnceCell;

use super::model::{ToolCall, ToolResult, ToolSpec};
use crate::handler::{JobContext, JobError};

/// How long one MCP request (connect, list, call) may take before the server counts as unavailable.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// An MCP server an agent may use tools of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServer {
    /// Its Streamable HTTP endpoint, e.g. `https://tools.example.com/mcp`.
    pub url: String,
    /// The tools the agent may call, by the server's names. Any other tool it offers is never shown to
    /// the model; one named here that the server does not offer is a warning on the job.
    pub tools: Vec<String>,
    /// The environment variable holding a bearer token for it (`Authorization: Bearer …`), read when a
    /// run connects: on Lambda, set it from a secret.
    pub token_env: Option<String>,
}

impl McpServer {
    /// The server at `url`, of which the agent may call `tools`.
    pub fn new(url: impl Into<String>, tools: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            url: url.into(),
            tools: tools.into_iter().map(Into::into).collect(),
            token_env: None,
        }
    }

    /// Sends the bearer token in environment variable `var`.
    pub fn with_token_env(mut self, var: impl Into<String>) -> Self {
        self.token_env = Some(var.into());
        self
    }

    async fn connect(&self) -> Result<RunningService<RoleClient, ()>, JobError> {
        let mut config = StreamableHttpClientTransportConfig::with_uri(self.url.as_str());
        if let Some(var) = &self.token_env {
            let token = std::env::var(var).map_err(|_| {
                JobError::terminal(
                    "mcp_misconfigured",
                    format!(
                        "the MCP server {} needs a token in ${var}, which is not set",
                        self.url
                    ),
                )
            })?;
            config = config.auth_header(token);
        }
        let transport = StreamableHttpClientTransport::from_config(config);
        match tokio::time::timeout(REQUEST_TIMEOUT, ().serve(transport)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(self.unavailable(e)),
            Err(_) => Err(self.unavailable("no answer to initialize")),
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> JobError {
        tracing::warn!(url = %self.url, error = %e, "MCP server unavailable");
        JobError::retryable(
            "mcp_unavailable",
            format!("the MCP server {} is unavailable: {e}", self.url),
        )
    }
}

/// One listed tool, as recorded in the `mcp-tools` step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Listed {
    /// The server's URL (not its position: a redeployed agent may list its servers differently).
    server: String,
    spec: ToolSpec,
}

/// A run's MCP tools.
pub(super) struct McpTools<'a> {
    servers: &'a [McpServer],
    listed: Vec<Listed>,
    /// One connection per server, opened on first use.
    clients: Vec<OnceCell<RunningService<RoleClient, ()>>>,
}

impl<'a> McpTools<'a> {
    /// Lists the allowed tools of `servers` (once per job: the step `mcp-tools`). `local` are the
    /// agent's own tools' names: a tool name the model would see twice is a terminal error.
    pub(super) async fn start(
        servers: &'a [McpServer],
        local: &[&str],
        ctx: &JobContext,
    ) -> Result<Self, JobError> {
        let mut tools = Self {
            servers,
            listed: Vec::new(),
            clients: servers.iter().map(|_| OnceCell::new()).collect(),
        };
        if servers.is_empty() {
            return Ok(tools);
        }
        let listed: Vec<Listed> = ctx
            .step("mcp-tools", async {
                let mut listed = Vec::new();
                for (i, server) in servers.iter().enumerate() {
                    listed.extend(tools.list(i, server, ctx).await?);
                }
                Ok(listed)
            })
            .await?;
        let mut seen: BTreeSet<&str> = local.iter().copied().collect();
        for l in &listed {
            if !seen.insert(&l.spec.name) {
                return Err(JobError::terminal(
                    "mcp_tool_conflict",
                    format!(
                        "two of the agent's tools are named {:?} (one from the MCP server {}): name \
                         each tool once",
                        l.spec.name, l.server
                    ),
                ));
            }
        }
        tools.listed = listed;
        Ok(tools)
    }

    async fn list(
        &self,
        i: usize,
        server: &McpServer,
        ctx: &JobContext,
    ) -> Result<Vec<Listed>, JobError> {
        let client = self.client(i).await?;
        let offered = tokio::time::timeout(REQUEST_TIMEOUT, client.list_all_tools())
            .await
            .map_err(|_| server.unavailable("no answer to tools/list"))?
            .map_err(|e| server.unavailable(e))?;
        for name in &server.tools {
            if !offered.iter().any(|t| t.name == name.as_str()) {
                ctx.warn(format!(
                    "the MCP server {} offers no tool {name:?}",
                    server.url
                ));
            }
        }
        Ok(offered
            .into_iter()
            .filter(|t| server.tools.iter().any(|n| t.name == n.as_str()))
            .map(|t| Listed {
                server: server.url.clone(),
                spec: ToolSpec {
                    name: t.name.into_owned(),
                    description: t.description.map(|d| d.into_owned()).unwrap_or_default(),
                    schema: Value::Object((*t.input_schema).clone()),
                },
            })
            .collect())
    }

    async fn client(&self, i: usize) -> Result<&RunningService<RoleClient, ()>, JobError> {
        self.clients[i]
            .get_or_try_init(|| self.servers[i].connect())
            .await
    }

    /// What the model is shown.
    pub(super) fn specs(&self) -> impl Iterator<Item = ToolSpec> + '_ {
        self.listed.iter().map(|l| l.spec.clone())
    }

    /// Runs `call` if it names one of these tools (`None`: not an MCP tool, or a malformed call the
    /// loop answers itself).
    pub(super) async fn call(&self, call: &ToolCall) -> Option<Result<ToolResult, JobError>> {
        if call.malformed {
            return None;
        }
        let listed = self.listed.iter().find(|l| l.spec.name == call.name)?;
        let error = |text: String| {
            Ok(ToolResult {
                id: call.id.clone(),
                content: text,
                is_error: true,
            })
        };
        let Some(i) = self.servers.iter().position(|s| s.url == listed.server) else {
            return Some(error(format!(
                "the tool {} is no longer available (its MCP server was removed from the agent)",
                call.name
            )));
        };
        let Value::Object(args) = call.input.clone() else {
            return Some(error(format!(
                "the arguments of {} must be a JSON object",
                call.name
            )));
        };
        let server = &self.servers[i];
        let client = match self.client(i).await {
            Ok(c) => c,
            Err(e) => return Some(Err(e)),
        };
        let request = CallToolRequestParams::new(call.name.clone()).with_arguments(args);
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, client.call_tool(request)).await {
            Err(_) => return Some(Err(server.unavailable("no answer to tools/call"))),
            Ok(answer) => answer,
        };
        Some(match answer {
            Ok(result) => Ok(ToolResult {
                id: call.id.clone(),
                is_error: result.is_error == Some(true),
                content: content(result),
            }),
            // The server answered, refusing the call (unknown tool, invalid arguments): the model's to
            // fix.
            Err(ServiceError::McpError(e)) => error(e.message.into_owned()),
            Err(e) => Err(server.unavailable(e)),
        })
    }
}

/// A tool result as the model reads it: its structured content (JSON text), else its text blocks.
fn content(result: CallToolResult) -> String {
    if let Some(v) = result.structured_content {
        return v.to_string();
    }
    let texts: Vec<String> = result
        .content
        .into_iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect();
    texts.join("\n")
}
