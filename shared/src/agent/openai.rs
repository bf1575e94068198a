//! The model adapter for OpenAI-compatible `/v1/chat/completions` servers (Ollama, vLLM, llama.cpp's
//! server, and OpenAI itself), so agents run locally with no AWS account.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::model::{Message, Model, ModelError, ModelReply, ModelRequest, ToolCall, Usage};

/// A chat-completions endpoint: `base_url` ends with `/v1` (e.g. `http://127.0.0.1:11434/v1`).
pub struct OpenAiCompatible {
    base_url: String,
    api_key: Option<String>,
    client: reqwest::Client,
}

impl OpenAiCompatible {
    pub fn new(base_url: &str, api_key: Option<String>) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .expect("a reqwest client with static settings builds"),
        }
    }
}

/// The request body for `request`.
pub fn body(request: &ModelRequest) -> Value {
    let mut messages = vec![json!({"role": "system", "content": request.system})];
    for m in &request.messages {
        match m {
            Message::User { text } => messages.push(json!({"role": "user", "content": text})),
            Message::Assistant { text, tool_calls } => {
                let mut m = json!({"role": "assistant", "content": text});
                if !tool_calls.is_empty() {
                    m["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            let arguments = match (&c.input, c.malformed) {
                                (Value::String(raw), true) => raw.clone(),
                                (input, _) => input.to_string(),
                            };
                            json!({"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": arguments}})
                        })
                        .collect();
                }
                messages.push(m);
            }
            Message::Tool { results } => {
                for r in results {
                    messages
                        .push(json!({"role": "tool", "tool_call_id": r.id, "content": r.content}));
                }
            }
        }
    }
    let mut body = json!({"model": request.model, "messages": messages});
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.schema}})
            })
            .collect();
    }
    body
}

/// Reads a chat-completions answer.
pub fn reply(answer: &Value) -> Result<ModelReply, ModelError> {
    let message = &answer["choices"][0]["message"];
    if message.is_null() {
        return Err(ModelError::Unavailable(format!(
            "an answer without choices: {answer}"
        )));
    }
    let tool_calls = message["tool_calls"]
        .as_array()
        .map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let raw = &c["function"]["arguments"];
                    // Arguments are a JSON string; some servers send the object itself.
                    let (input, malformed) = match raw {
                        Value::String(s) => match serde_json::from_str::<Value>(s) {
                            Ok(v) => (v, false),
                            Err(_) => (Value::String(s.clone()), true),
                        },
                        Value::Object(_) => (raw.clone(), false),
                        other => (other.clone(), true),
                    };
                    ToolCall {
                        id: c["id"]
                            .as_str()
                            .map_or_else(|| format!("call_{i}"), str::to_owned),
                        name: c["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned(),
                        input,
                        malformed,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(ModelReply {
        text: message["content"].as_str().unwrap_or_default().to_owned(),
        tool_calls,
        usage: Usage {
            input_tokens: answer["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            output_tokens: answer["usage"]["completion_tokens"].as_u64().unwrap_or(0),
        },
    })
}

/// Classifies an HTTP error answer.
pub fn classify(status: u16, retry_after: Option<Duration>, text: &str) -> ModelError {
    let message = format!("{status}: {}", text.chars().take(300).collect::<String>());
    let lower = text.to_lowercase();
    match status {
        429 => ModelError::Throttled {
            message,
            retry_after,
        },
        401 | 403 => ModelError::Denied(message),
        400 | 413 if lower.contains("context") || lower.contains("too long") => {
            ModelError::ContextWindow(message)
        }
        500..=599 => ModelError::Unavailable(message),
        _ => ModelError::Invalid(message),
    }
}

#[async_trait]
impl Model for OpenAiCompatible {
    async fn converse(&self, request: &ModelRequest) -> Result<ModelReply, ModelError> {
        let mut req = self
            .client
            .post(format!("{}/chat/completions", self.base_url))
            .json(&body(request));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ModelError::Unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_secs);
        let text = resp
            .text()
            .await
            .map_err(|e| ModelError::Unavailable(e.to_string()))?;
        if !(200..300).contains(&status) {
            return Err(classify(status, retry_after, &text));
        }
        let answer: Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Unavailable(format!("not JSON: {e}")))?;
        reply(&answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::model::{ToolResult, ToolSpec};

    #[test]
    fn a_conversation_with_tools_maps_to_chat_completions() {
        let request = ModelRequest {
            model: "m".into(),
            system: "be brief".into(),
            messages: vec![
                Message::User {
                    text: "2+2?".into(),
                },
                Message::Assistant {
                    text: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "calculator".into(),
                        input: json!({"expression": "2+2"}),
                        malformed: false,
                    }],
                },
                Message::Tool {
                    results: vec![ToolResult {
                        id: "c1".into(),
                        content: "4".into(),
                        is_error: false,
                    }],
                },
            ],
            tools: vec![ToolSpec {
                name: "calculator".into(),
                description: "math".into(),
                schema: json!({"type": "object"}),
            }],
        };
        let b = body(&request);
        assert_eq!(
            b["messages"][0],
            json!({"role": "system", "content": "be brief"})
        );
        assert_eq!(
            b["messages"][2]["tool_calls"][0]["function"]["arguments"],
            r#"{"expression":"2+2"}"#
        );
        assert_eq!(
            b["messages"][3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "4"})
        );
        assert_eq!(b["tools"][0]["function"]["name"], "calculator");
    }

    #[test]
    fn answers_and_malformed_arguments_are_read() {
        let r = reply(&json!({
            "choices": [{"message": {"content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "clock", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "calculator", "arguments": "{oops"}}
            ]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5}
        }))
        .unwrap();
        assert_eq!(r.tool_calls.len(), 2);
        assert!(!r.tool_calls[0].malformed);
        assert!(r.tool_calls[1].malformed);
        assert_eq!(
            r.usage,
            Usage {
                input_tokens: 12,
                output_tokens: 5
            }
        );
    }

    #[test]
    fn errors_are_classified_for_retries() {
        let s = |d| Some(Duration::from_secs(d));
        assert_eq!(
            classify(429, s(7), "slow down"),
            ModelError::Throttled {
                message: "429: slow down".into(),
                retry_after: s(7)
            }
        );
        assert!(matches!(
            classify(503, None, ""),
            ModelError::Unavailable(_)
        ));
        assert!(matches!(classify(401, None, ""), ModelError::Denied(_)));
        assert!(matches!(
            classify(400, None, "maximum context length exceeded"),
            ModelError::ContextWindow(_)
        ));
        assert!(matches!(
            classify(404, None, "no such model"),
            ModelError::Invalid(_)
        ));
        let job: crate::handler::JobError = ModelError::Throttled {
            message: "x".into(),
            retry_after: s(3),
        }
        .into();
        assert!(matches!(
            job,
            crate::handler::JobError::Retryable { after: Some(_), .. }
        ));
    }
}
