//! **The** place where this project's job kinds are registered. The submit function (which rejects
//! unknown kinds), the worker (which runs them) and `jobctl` (`dev`, and the local commands) all call
//! [`registry`], so adding a kind is one edit here.

mod calculator;

use std::sync::Arc;

use jobkit::HandlerRegistry;
use jobkit::agent::{Agent, Agents, Bedrock, Model, OpenAiCompatible, Tool};
use schemars::JsonSchema;
use serde::Deserialize;

/// Every kind this project runs: the built-ins (`echo`, `sleep`), the `agent` kind when a model is
/// configured, plus your own, e.g.
///
/// ```ignore
/// r.register_fn("summarize", |input: Summarize, ctx: JobContext| async move { /* ... */ })?;
/// ```
pub fn registry() -> HandlerRegistry {
    registry_with(model_from_env())
}

/// [`registry`] with agents on `model` (no `agent` kind without one: submit then refuses it as an
/// unknown kind rather than accepting jobs nothing can run).
pub fn registry_with(model: Option<Arc<dyn Model>>) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    if let Some(model) = model {
        Agents::new(model)
            .with(demo_agent())
            .register(&mut r)
            .expect("`agent` is a valid kind");
    }
    r
}

/// The model adapter the configuration names: `JOBKIT_MODEL_URL`, an OpenAI-compatible `/v1` endpoint
/// (Ollama, vLLM, llama.cpp's server; `JOBKIT_MODEL_API_KEY` if it wants one), else Amazon Bedrock when
/// `JOBKIT_MODEL_PROVIDER=bedrock` (template.yaml sets it when `BedrockModelArns` is given).
pub fn model_from_env() -> Option<Arc<dyn Model>> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let Some(url) = var("JOBKIT_MODEL_URL") {
        return Some(openai_model(&url));
    }
    (var("JOBKIT_MODEL_PROVIDER").as_deref() == Some("bedrock"))
        .then(|| Arc::new(Bedrock::from_env()) as Arc<dyn Model>)
}

/// An OpenAI-compatible endpoint as the model.
pub fn openai_model(url: &str) -> Arc<dyn Model> {
    let key = std::env::var("JOBKIT_MODEL_API_KEY")
        .ok()
        .filter(|k| !k.is_empty());
    Arc::new(OpenAiCompatible::new(url, key))
}

#[derive(Deserialize, JsonSchema)]
struct Expression {
    /// An arithmetic expression, e.g. `(2 + 3) * 4.5`.
    expression: String,
}

#[derive(Deserialize, JsonSchema)]
struct NoInput {}

/// `demo`: a small assistant with two harmless tools, `calculator` and `clock`. Its model id is
/// `JOBKIT_DEMO_MODEL` (default: `llama3.2`, an Ollama model, or on Bedrock
/// `anthropic.claude-3-5-haiku-20241022-v1:0`).
pub fn demo_agent() -> Agent {
    let default = if std::env::var("JOBKIT_MODEL_PROVIDER").as_deref() == Ok("bedrock") {
        "anthropic.claude-3-5-haiku-20241022-v1:0"
    } else {
        "llama3.2"
    };
    Agent {
        name: "demo".into(),
        model: std::env::var("JOBKIT_DEMO_MODEL").unwrap_or_else(|_| default.into()),
        system: "You are a concise assistant. Use the calculator for arithmetic and the clock for \
                 the current time; answer in one or two sentences."
            .into(),
        max_turns: 6,
        tools: vec![
            Tool::new(
                "calculator",
                "Evaluates an arithmetic expression (+ - * / % ^ and parentheses).",
                |input: Expression| async move { calculator::evaluate(&input.expression) },
            ),
            Tool::new(
                "clock",
                "The current UTC time, RFC 3339.",
                |_: NoInput| async move { Ok::<_, String>(chrono::Utc::now().to_rfc3339()) },
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_demo_tools_compute_and_refuse_clearly() {
        let agent = demo_agent();
        let calc = &agent.tools[0];
        assert_eq!(
            calc.call(serde_json::json!({"expression": "(2 + 3) * 4.5"}))
                .await,
            Ok(serde_json::json!(22.5))
        );
        assert!(
            calc.call(serde_json::json!({"expression": "2 +"}))
                .await
                .is_err()
        );
        assert!(
            calc.call(serde_json::json!({"expr": "1"}))
                .await
                .unwrap_err()
                .contains("invalid arguments")
        );
        assert_eq!(
            calc.spec().schema["properties"]["expression"]["type"],
            "string"
        );
        let clock = agent.tools[1].call(serde_json::json!({})).await.unwrap();
        assert!(clock.as_str().unwrap().contains('T'));
    }

    #[test]
    fn the_agent_kind_exists_only_with_a_model() {
        assert!(!registry_with(None).contains("agent"));
        assert!(registry_with(Some(openai_model("http://127.0.0.1:9/v1"))).contains("agent"));
    }
}
