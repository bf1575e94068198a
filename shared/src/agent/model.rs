//! What the agent loop needs from a model: one turn of a tool-using conversation. Provider-neutral;
//! adapters map it to a provider's API ([`super::openai`]).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::handler::JobError;

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    User {
        text: String,
    },
    Assistant {
        text: String,
        tool_calls: Vec<ToolCall>,
    },
    /// The results of the assistant's tool calls, in order.
    Tool {
        results: Vec<ToolResult>,
    },
}

/// A tool the model asked for. `input` is the parsed arguments (or, when the model sent text that is not
/// JSON, that text as a string: the loop answers it with a tool error).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub input: Value,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub malformed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub id: String,
    /// The tool's output as JSON text, or the error's text.
    pub content: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

/// A tool as the model sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of its input.
    pub schema: Value,
}

/// One turn's request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelRequest {
    pub model: String,
    pub system: String,
    pub messages: Vec<Message>,
    pub tools: Vec<ToolSpec>,
}

/// Tokens a run spent, as the model reported them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    /// `self` and `other` together, saturating at `u64::MAX`: the counts are the model's to report, and
    /// an absurd one must not panic the run (an overflow panic is retried until the job dead-letters).
    #[must_use]
    pub fn saturating_add(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
        }
    }
}

/// One turn's answer. Recorded as a durable step, so it serializes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReply {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
}

/// Why a turn failed, classified for retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// Rate limited: retry, not before `retry_after` when the provider said.
    #[error("the model is throttling requests: {message}")]
    Throttled {
        message: String,
        retry_after: Option<Duration>,
    },
    /// A server error or no answer: retry.
    #[error("the model is unavailable: {0}")]
    Unavailable(String),
    /// The request is wrong (model id, schema): retrying cannot help.
    #[error("the model refused the request: {0}")]
    Invalid(String),
    #[error("access to the model was denied: {0}")]
    Denied(String),
    #[error("the conversation no longer fits the model's context window: {0}")]
    ContextWindow(String),
}

impl From<ModelError> for JobError {
    fn from(e: ModelError) -> Self {
        match &e {
            ModelError::Throttled {
                retry_after: Some(after),
                ..
            } => JobError::retry_after("model_throttled", e.clone(), *after),
            ModelError::Throttled { .. } => JobError::retryable("model_throttled", e),
            ModelError::Unavailable(_) => JobError::retryable("model_unavailable", e),
            ModelError::Invalid(_) => JobError::terminal("model_invalid_request", e),
            ModelError::Denied(_) => JobError::terminal("model_access_denied", e),
            ModelError::ContextWindow(_) => JobError::terminal("context_window_exceeded", e),
        }
    }
}

/// A model that takes one turn.
#[async_trait]
pub trait Model: Send + Sync {
    async fn converse(&self, request: &ModelRequest) -> Result<ModelReply, ModelError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_adds_up_and_saturates_instead_of_overflowing() {
        let turn = Usage {
            input_tokens: u64::MAX,
            output_tokens: 3,
        };
        let total = Usage::default().saturating_add(turn).saturating_add(turn);
        assert_eq!(
            total,
            Usage {
                input_tokens: u64::MAX,
                output_tokens: 6
            }
        );
    }
}
