//! A scripted OpenAI-compatible model server on loopback (a stand-in for Ollama or vLLM), for the agent
//! suites: each call's reply is chosen by a [`Script`], every request is kept for the test to read; and
//! the `mathy` agent those suites run on it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobkit::HandlerRegistry;
use jobkit::agent::{Agent, Agents, Model, OpenAiCompatible, Tool};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};

/// What the fake model does on each call, by call number (1-based) and the last message's role.
#[derive(Clone, Copy, PartialEq)]
pub enum Script {
    /// Calls `multiply` with 6 and 7, then answers with the tool's output.
    ToolThenAnswer,
    /// As `HangOnSecondTurnOnce`, with the tool-calling turn saying "let me multiply" too.
    AloudThenHangOnSecondTurnOnce,
    /// As `ToolThenAnswer`, but the first second-turn call never answers (the worker is killed there).
    HangOnSecondTurnOnce,
    /// 429 with Retry-After: 1 on the first call, then `ToolThenAnswer`.
    ThrottleFirst,
    /// Sends arguments that are not JSON first, then valid ones.
    MalformedFirst,
    /// Asks the first tool (the demo agent's calculator) to evaluate a 40 KB `1+1+…`, then answers.
    HostileCalculator,
    /// Never answers: a tool call every turn, each reporting `u64::MAX` prompt tokens.
    EndlessWithHugeUsage,
    /// As `ToolThenAnswer`, but the first call takes 30 s to answer.
    SlowFirstCall,
    /// Calls `send_note` with `{"note": "hello"}`, then answers with the tool's output (or error).
    NoteThenAnswer,
    /// As `NoteThenAnswer`, with the tool-calling turn saying "let me send a note" too.
    NoteAloudThenAnswer,
    /// A conversation, by the run's user message (the request's last user message): "multiply" asks
    /// for the first tool (saying "working on it"), then answers with its output ("slowly": that
    /// answer takes [`SLOW_CALL`]; "hang": the first such call never answers); "pause" answers after
    /// [`PAUSE`]; anything else is answered `echo: <message>` (over 1,000 bytes: `echo: (a long
    /// message)`).
    Conversation,
}

/// How long `Conversation`'s "pause" calls take.
pub const PAUSE: Duration = Duration::from_millis(300);

/// The text of the last user message of a chat-completions request.
pub fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// How long `SlowFirstCall`'s first call takes.
pub const SLOW_CALL: Duration = Duration::from_secs(30);

pub struct Fake {
    pub url: String,
    pub calls: Arc<AtomicU32>,
    pub requests: Arc<Mutex<Vec<Value>>>,
}

pub async fn fake_model(script: Script) -> Fake {
    fake_model_at("127.0.0.1:0", script).await
}

pub async fn fake_model_at(addr: &str, script: Script) -> Fake {
    let calls = Arc::new(AtomicU32::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (c, r) = (calls.clone(), requests.clone());
    let hung = Arc::new(AtomicU32::new(0));
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (c, r, hung) = (c.clone(), r.clone(), hung.clone());
            async move {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                r.lock().unwrap().push(body.clone());
                let last = body["messages"].as_array().unwrap().last().unwrap().clone();
                let usage = if script == Script::EndlessWithHugeUsage {
                    json!({"prompt_tokens": u64::MAX, "completion_tokens": 3})
                } else {
                    json!({"prompt_tokens": 10, "completion_tokens": 3})
                };
                let asked = last_user_text(&body);
                if script == Script::Conversation {
                    if asked.contains("pause") {
                        tokio::time::sleep(PAUSE).await;
                    }
                    let answering = last["role"] == "tool" || !asked.contains("multiply");
                    if answering && last["role"] == "tool" {
                        if asked.contains("slowly") {
                            tokio::time::sleep(SLOW_CALL).await;
                        }
                        if asked.contains("hang") && hung.fetch_add(1, Ordering::SeqCst) == 0 {
                            std::future::pending::<()>().await;
                        }
                    }
                    if answering {
                        let text = if last["role"] == "tool" {
                            format!("the tool said {}", last["content"].as_str().unwrap_or(""))
                        } else if asked.len() > 1000 {
                            "echo: (a long message)".to_owned()
                        } else {
                            format!("echo: {asked}")
                        };
                        return (
                            http::StatusCode::OK,
                            [(http::header::RETRY_AFTER, "0")],
                            axum::Json(json!({"choices": [{"message": {"role": "assistant",
                                "content": text}, "finish_reason": "stop"}], "usage": usage})),
                        );
                    }
                }
                if script == Script::SlowFirstCall && n == 1 {
                    tokio::time::sleep(SLOW_CALL).await;
                }
                if script == Script::ThrottleFirst && n == 1 {
                    return (
                        http::StatusCode::TOO_MANY_REQUESTS,
                        [(http::header::RETRY_AFTER, "1")],
                        axum::Json(json!({"error": {"message": "slow down"}})),
                    );
                }
                let ok = |v: Value| {
                    (
                        http::StatusCode::OK,
                        [(http::header::RETRY_AFTER, "0")],
                        axum::Json(v),
                    )
                };
                if last["role"] == "tool" && script != Script::EndlessWithHugeUsage {
                    if matches!(
                        script,
                        Script::HangOnSecondTurnOnce | Script::AloudThenHangOnSecondTurnOnce
                    ) && hung.fetch_add(1, Ordering::SeqCst) == 0
                    {
                        std::future::pending::<()>().await;
                    }
                    let content = last["content"].as_str().unwrap().to_owned();
                    return ok(json!({"choices": [{"message": {"role": "assistant",
                        "content": format!("the tool said {content}")}, "finish_reason": "stop"}],
                        "usage": usage}));
                }
                // The first offered tool: the demo agent's calculator, or `multiply`.
                let tool = body["tools"][0]["function"]["name"]
                    .as_str()
                    .unwrap_or("multiply")
                    .to_owned();
                let tool = if matches!(script, Script::NoteThenAnswer | Script::NoteAloudThenAnswer)
                {
                    "send_note".to_owned()
                } else {
                    tool
                };
                let content = if script == Script::NoteAloudThenAnswer {
                    json!("let me send a note")
                } else if script == Script::AloudThenHangOnSecondTurnOnce {
                    json!("let me multiply")
                } else if script == Script::Conversation {
                    json!("working on it")
                } else {
                    Value::Null
                };
                let arguments = if script == Script::MalformedFirst && n == 1 {
                    "{oops".to_owned()
                } else if script == Script::HostileCalculator {
                    json!({"expression": format!("1{}", "+1".repeat(20_000))}).to_string()
                } else if tool == "send_note" {
                    json!({"note": "hello"}).to_string()
                } else if tool == "calculator" {
                    json!({"expression": "6 * 7"}).to_string()
                } else {
                    json!({"a": 6, "b": 7}).to_string()
                };
                ok(
                    json!({"choices": [{"message": {"role": "assistant", "content": content,
                    "tool_calls": [{"id": format!("call-{n}"), "type": "function",
                        "function": {"name": tool, "arguments": arguments}}]},
                    "finish_reason": "tool_calls"}], "usage": usage}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Fake {
        url,
        calls,
        requests,
    }
}

#[derive(Deserialize, JsonSchema)]
pub struct Factors {
    pub a: i64,
    pub b: i64,
}

/// The `agent` kind with agent `mathy` on the OpenAI-compatible server at `url`.
pub fn registry(url: &str, tool_runs: Arc<AtomicU32>) -> HandlerRegistry {
    registry_on(
        Arc::new(OpenAiCompatible::new(url, None)),
        "fake",
        tool_runs,
    )
}

/// The `agent` kind with agent `mathy` (model id `model_id`), whose `multiply` tool counts its runs.
pub fn registry_on(
    model: Arc<dyn Model>,
    model_id: &str,
    tool_runs: Arc<AtomicU32>,
) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    add_mathy(&mut r, model, model_id, tool_runs);
    r
}

/// Registers the `agent` kind in `r` with agent `mathy` (model id `model_id`), whose `multiply` tool
/// counts its runs.
pub fn add_mathy(
    r: &mut HandlerRegistry,
    model: Arc<dyn Model>,
    model_id: &str,
    tool_runs: Arc<AtomicU32>,
) {
    let multiply = Tool::new("multiply", "Multiplies a by b.", move |f: Factors| {
        let runs = tool_runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(f.a * f.b)
        }
    });
    Agents::new(model)
        .with(Agent {
            name: "mathy".into(),
            model: model_id.into(),
            system: "multiply".into(),
            max_turns: 4,
            tools: vec![multiply],
            mcp: Vec::new(),
        })
        .register(r)
        .unwrap();
}
