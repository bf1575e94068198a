//! **The** place where this project's job kinds are registered: [`registry`] is the one entry point.
//! The submit function (which refuses unknown kinds and checks inputs), the worker function, `jobctl
//! dev`, `jobctl run` and `jobctl worker` all build their registry with it, so a kind added there runs
//! everywhere and `GET /kinds` lists it. [`example`] is the README's example kind.

pub mod example;

mod calculator;

use std::sync::Arc;

use jobkit::HandlerRegistry;
use jobkit::agent::{Agent, Agents, Bedrock, Model, OpenAiCompatible, Tool};
use schemars::JsonSchema;
use serde::Deserialize;

/// What the registry is built from: the functions' environment ([`Settings::from_env`]), which
/// `jobctl dev`'s flags may override.
#[derive(Clone, Default)]
pub struct Settings {
    /// The model the `agent` kind runs on; without one there is no `agent` kind.
    pub model: Option<Arc<dyn Model>>,
}

impl Settings {
    /// From the `JOBKIT_*` variables every function and `jobctl` read (see [`model_from_env`]).
    pub fn from_env() -> Self {
        Self {
            model: model_from_env(),
        }
    }
}

// README: registry
/// Every kind this project runs. A deployment registers the two examples, `echo` (returns its input)
/// and `sleep` (waits up to 10 s), and `agent` when a model is configured. Add yours here.
pub fn registry(settings: &Settings) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins(); // echo, sleep; HandlerRegistry::new() for neither
    // r.register_fn("summarize", example::summarize).expect("a valid kind name");
    if let Some(model) = &settings.model {
        // No `agent` kind without a model: submit refuses it as unknown rather than accepting jobs
        // nothing can run.
        Agents::new(model.clone())
            .with(demo_agent())
            .register(&mut r)
            .expect("a valid kind name");
    }
    r
}
// README: end

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

#[derive(Deserialize, JsonSchema)]
struct Note {
    /// The note for the user, at most 2,000 characters.
    note: String,
}

/// The longest note `send_note` takes.
const MAX_NOTE_CHARS: usize = 2_000;

/// `demo`: a small assistant with two harmless tools, `calculator` and `clock`, and `send_note`, which
/// needs the user's approval (`jobctl waitpoints`, `jobctl complete`) and only records the note: it
/// shows in the job's result, as the call's output `{"noted": ..}`. Its model id is
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
        system:
            "You are a concise assistant. Use the calculator for arithmetic, the clock for the \
                 current time, and send_note only when asked to send a note; answer in one or two \
                 sentences."
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
            Tool::new(
                "send_note",
                "Sends the user a short note. The user approves each note before it is sent.",
                |input: Note| async move {
                    if input.note.chars().count() > MAX_NOTE_CHARS {
                        return Err(format!("a note has at most {MAX_NOTE_CHARS} characters"));
                    }
                    Ok(serde_json::json!({ "noted": input.note }))
                },
            )
            .needs_approval(),
        ],
        mcp: Vec::new(),
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
        let note = &agent.tools[2];
        assert_eq!(
            note.approval(),
            Some(jobkit::agent::DEFAULT_APPROVAL_TIMEOUT)
        );
        assert_eq!(
            note.call(serde_json::json!({"note": "hi"})).await,
            Ok(serde_json::json!({"noted": "hi"}))
        );
        let long = "x".repeat(MAX_NOTE_CHARS + 1);
        assert!(
            note.call(serde_json::json!({ "note": long }))
                .await
                .unwrap_err()
                .contains("at most")
        );
    }

    /// The text of `source` between `// README: {name}` and `// README: end`.
    fn region<'a>(source: &'a str, name: &str) -> &'a str {
        let start = format!("// README: {name}\n");
        let from = source.find(&start).expect("start marker") + start.len();
        let len = source[from..].find("// README: end").expect("end marker");
        &source[from..from + len]
    }

    #[test]
    fn the_readme_shows_the_real_registry_and_an_example_that_compiles() {
        let readme = include_str!("../../../README.md");
        for (file, source) in [
            ("lib.rs", include_str!("lib.rs")),
            ("example.rs", include_str!("example.rs")),
        ] {
            let name = if file == "lib.rs" {
                "registry"
            } else {
                "example"
            };
            let shown = region(source, name);
            assert!(
                readme.contains(shown),
                "README.md's \"Writing a job kind\" must show functions/kinds/src/{file} as it is:\n{shown}"
            );
        }
    }

    #[tokio::test]
    async fn the_example_kind_registers_checks_its_input_and_runs() {
        let mut r = registry(&Settings::default());
        r.register_fn("summarize", example::summarize).unwrap();
        let bad = jobkit::Json::parse(r#"{"url": "https://example.com", "pages": "3"}"#).unwrap();
        let e = r.check_input("summarize", &bad).unwrap().unwrap_err();
        assert!(e.to_string().contains("expected u32"), "{e}");
        let input = jobkit::Json::parse(r#"{"url": "https://example.com", "pages": 3}"#).unwrap();
        assert!(r.check_input("summarize", &input).unwrap().is_ok());
        let ctx =
            jobkit::JobContext::new(jobkit::JobId::generate(0), "summarize".into(), 1, 5, None);
        let out = r
            .get("summarize")
            .unwrap()
            .run_json(&input, ctx)
            .await
            .unwrap();
        assert_eq!(out.result, serde_json::json!("3 pages summarized"));
        let described = r.describe();
        let summarize = described.iter().find(|k| k.kind == "summarize").unwrap();
        assert_eq!(
            summarize.schemas.input_schema["required"],
            serde_json::json!(["url", "pages"])
        );
    }

    #[test]
    fn the_agent_kind_exists_only_with_a_model() {
        assert!(!registry(&Settings::default()).contains("agent"));
        let model = Some(openai_model("http://127.0.0.1:9/v1"));
        assert!(registry(&Settings { model }).contains("agent"));
    }
}
