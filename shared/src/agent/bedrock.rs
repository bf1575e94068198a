//! The model adapter for Amazon Bedrock's Converse API (aws-sdk-bedrockruntime), with tool use.

use std::collections::HashSet;

use async_trait::async_trait;
use aws_sdk_bedrockruntime::Client;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::operation::converse::ConverseError;
use aws_sdk_bedrockruntime::types::{
    ContentBlock, ConversationRole, ConverseOutput, Message as BMessage, StopReason,
    SystemContentBlock, Tool as BTool, ToolConfiguration, ToolInputSchema, ToolResultBlock,
    ToolResultContentBlock, ToolResultStatus, ToolSpecification, ToolUseBlock,
};
use aws_smithy_types::{Document, Number};
use serde_json::Value;

use super::model::{Message, Model, ModelError, ModelReply, ModelRequest, ToolCall, Usage};

/// Bedrock through the SDK configuration's credentials and region (or endpoint, for an emulator).
pub struct Bedrock {
    client: tokio::sync::OnceCell<Client>,
}

impl Bedrock {
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            client: tokio::sync::OnceCell::new_with(Some(Client::new(sdk))),
        }
    }

    /// A client made on first use from the process's AWS configuration (`AWS_ENDPOINT_URL` honoured),
    /// so a registry can be built before any async setup.
    pub fn from_env() -> Self {
        Self {
            client: tokio::sync::OnceCell::new(),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async { Client::new(&crate::aws::sdk_config(None).await) })
            .await
    }
}

/// JSON as a Smithy document (tool schemas and inputs).
pub fn to_document(v: &Value) -> Document {
    match v {
        Value::Null => Document::Null,
        Value::Bool(b) => Document::Bool(*b),
        Value::Number(n) => Document::Number(if let Some(u) = n.as_u64() {
            Number::PosInt(u)
        } else if let Some(i) = n.as_i64() {
            Number::NegInt(i)
        } else {
            Number::Float(n.as_f64().unwrap_or(0.0))
        }),
        Value::String(s) => Document::String(s.clone()),
        Value::Array(a) => Document::Array(a.iter().map(to_document).collect()),
        Value::Object(o) => {
            Document::Object(o.iter().map(|(k, v)| (k.clone(), to_document(v))).collect())
        }
    }
}

/// A Smithy document as JSON.
pub fn from_document(d: &Document) -> Value {
    match d {
        Document::Null => Value::Null,
        Document::Bool(b) => Value::Bool(*b),
        Document::Number(Number::PosInt(u)) => Value::from(*u),
        Document::Number(Number::NegInt(i)) => Value::from(*i),
        Document::Number(Number::Float(f)) => Value::from(*f),
        Document::String(s) => Value::String(s.clone()),
        Document::Array(a) => Value::Array(a.iter().map(from_document).collect()),
        Document::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (k.clone(), from_document(v)))
                .collect(),
        ),
    }
}

fn built<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, ModelError> {
    r.map_err(|e| ModelError::Invalid(format!("cannot build the request: {e}")))
}

/// The conversation as Converse messages. A malformed tool call (arguments that were not JSON) is not
/// sent back as a tool use Bedrock would reject: its error goes to the model as text.
fn messages(request: &ModelRequest) -> Result<Vec<BMessage>, ModelError> {
    let malformed: HashSet<&str> = request
        .messages
        .iter()
        .filter_map(|m| match m {
            Message::Assistant { tool_calls, .. } => Some(tool_calls),
            _ => None,
        })
        .flatten()
        .filter(|c| c.malformed)
        .map(|c| c.id.as_str())
        .collect();
    let mut out = Vec::new();
    for m in &request.messages {
        let (role, content) = match m {
            Message::User { text } => (
                ConversationRole::User,
                vec![ContentBlock::Text(text.clone())],
            ),
            Message::Assistant { text, tool_calls } => {
                let mut blocks = Vec::new();
                if !text.is_empty() {
                    blocks.push(ContentBlock::Text(text.clone()));
                }
                for c in tool_calls.iter().filter(|c| !c.malformed) {
                    blocks.push(ContentBlock::ToolUse(built(
                        ToolUseBlock::builder()
                            .tool_use_id(&c.id)
                            .name(&c.name)
                            .input(to_document(&c.input))
                            .build(),
                    )?));
                }
                if blocks.is_empty() {
                    blocks.push(ContentBlock::Text("(a malformed tool call)".into()));
                }
                (ConversationRole::Assistant, blocks)
            }
            Message::Tool { results } => {
                let mut blocks = Vec::new();
                for r in results {
                    if malformed.contains(r.id.as_str()) {
                        blocks.push(ContentBlock::Text(r.content.clone()));
                        continue;
                    }
                    blocks.push(ContentBlock::ToolResult(built(
                        ToolResultBlock::builder()
                            .tool_use_id(&r.id)
                            .content(ToolResultContentBlock::Text(r.content.clone()))
                            .status(if r.is_error {
                                ToolResultStatus::Error
                            } else {
                                ToolResultStatus::Success
                            })
                            .build(),
                    )?));
                }
                (ConversationRole::User, blocks)
            }
        };
        out.push(built(
            BMessage::builder()
                .role(role)
                .set_content(Some(content))
                .build(),
        )?);
    }
    Ok(out)
}

fn classify(e: SdkError<ConverseError>) -> ModelError {
    let text = e
        .message()
        .map(str::to_owned)
        .unwrap_or_else(|| e.to_string());
    match e.into_service_error() {
        ConverseError::ThrottlingException(_) => ModelError::Throttled {
            message: text,
            retry_after: None,
        },
        ConverseError::AccessDeniedException(_) => ModelError::Denied(text),
        ConverseError::ValidationException(_)
            if text.to_lowercase().contains("too long")
                || text.to_lowercase().contains("context") =>
        {
            ModelError::ContextWindow(text)
        }
        ConverseError::ValidationException(_) | ConverseError::ResourceNotFoundException(_) => {
            ModelError::Invalid(text)
        }
        // Server-side, timeouts, not ready, and anything without a modelled error (no answer at all).
        _ => ModelError::Unavailable(text),
    }
}

#[async_trait]
impl Model for Bedrock {
    async fn converse(&self, request: &ModelRequest) -> Result<ModelReply, ModelError> {
        let mut call = self
            .client()
            .await
            .converse()
            .model_id(&request.model)
            .system(SystemContentBlock::Text(request.system.clone()))
            .set_messages(Some(messages(request)?));
        if !request.tools.is_empty() {
            let tools = request
                .tools
                .iter()
                .map(|t| {
                    built(
                        ToolSpecification::builder()
                            .name(&t.name)
                            .description(&t.description)
                            .input_schema(ToolInputSchema::Json(to_document(&t.schema)))
                            .build(),
                    )
                    .map(BTool::ToolSpec)
                })
                .collect::<Result<Vec<_>, _>>()?;
            call = call.tool_config(built(
                ToolConfiguration::builder().set_tools(Some(tools)).build(),
            )?);
        }
        let out = call.send().await.map_err(classify)?;
        if out.stop_reason == StopReason::ModelContextWindowExceeded {
            return Err(ModelError::ContextWindow(
                "stop reason model_context_window_exceeded".into(),
            ));
        }
        let mut reply = ModelReply {
            text: String::new(),
            tool_calls: Vec::new(),
            usage: out
                .usage
                .as_ref()
                .map(|u| Usage {
                    input_tokens: u.input_tokens.max(0) as u64,
                    output_tokens: u.output_tokens.max(0) as u64,
                })
                .unwrap_or_default(),
        };
        if let Some(ConverseOutput::Message(m)) = &out.output {
            for block in &m.content {
                match block {
                    ContentBlock::Text(t) => reply.text.push_str(t),
                    ContentBlock::ToolUse(u) => reply.tool_calls.push(ToolCall {
                        id: u.tool_use_id.clone(),
                        name: u.name.clone(),
                        input: from_document(&u.input),
                        malformed: false,
                    }),
                    _ => {}
                }
            }
        }
        if out.stop_reason == StopReason::MalformedToolUse {
            // No usable call came back: ask again, with the reason, as a tool error.
            reply.tool_calls.push(ToolCall {
                id: format!("malformed-{}", reply.usage.output_tokens),
                name: "(malformed)".into(),
                input: Value::Null,
                malformed: true,
            });
        }
        Ok(reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_documents_convert_both_ways() {
        let v = json!({"a": [1, -2, 2.5, "x", null, true], "b": {"c": {}}});
        assert_eq!(from_document(&to_document(&v)), v);
    }
}
