//! Agent jobs end to end on both backends, against a scripted OpenAI-compatible server on loopback (a
//! stand-in for Ollama or vLLM): a tool call then an answer; a worker killed between a tool call and the
//! next turn resumes without calling the tool again; a throttled model call is retried; a malformed tool
//! call is answered to the model as a tool error; a hostile calculator expression is a tool error, not
//! a crash; absurd usage counts saturate and a failed run reports what it spent; a cancel request stops
//! a model call in flight; tools from an MCP server (written here with `rmcp`): called once across a
//! retry, their errors answered to the model, a server that is down retried. And every built-in tool
//! survives hostile input, in this process.

#[macro_use]
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobkit::HandlerRegistry;
use jobkit::agent::{Agent, Agents, Bedrock, McpServer, Model, OpenAiCompatible, Tool};
use jobkit::local::EventSource;
use jobkit::worker::WorkerSettings;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// What the fake model does on each call, by call number (1-based) and the last message's role.
#[derive(Clone, Copy, PartialEq)]
enum Script {
    /// Calls `multiply` with 6 and 7, then answers with the tool's output.
    ToolThenAnswer,
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
}

/// How long `SlowFirstCall`'s first call takes.
const SLOW_CALL: Duration = Duration::from_secs(30);

struct Fake {
    url: String,
    calls: Arc<AtomicU32>,
    requests: Arc<Mutex<Vec<Value>>>,
}

async fn fake_model(script: Script) -> Fake {
    fake_model_at("127.0.0.1:0", script).await
}

async fn fake_model_at(addr: &str, script: Script) -> Fake {
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
                    if script == Script::HangOnSecondTurnOnce
                        && hung.fetch_add(1, Ordering::SeqCst) == 0
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
                let arguments = if script == Script::MalformedFirst && n == 1 {
                    "{oops".to_owned()
                } else if script == Script::HostileCalculator {
                    json!({"expression": format!("1{}", "+1".repeat(20_000))}).to_string()
                } else if tool == "calculator" {
                    json!({"expression": "6 * 7"}).to_string()
                } else {
                    json!({"a": 6, "b": 7}).to_string()
                };
                ok(
                    json!({"choices": [{"message": {"role": "assistant", "content": null,
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
struct Factors {
    a: i64,
    b: i64,
}

/// The `agent` kind with agent `mathy` on the OpenAI-compatible server at `url`.
fn registry(url: &str, tool_runs: Arc<AtomicU32>) -> HandlerRegistry {
    registry_on(
        Arc::new(OpenAiCompatible::new(url, None)),
        "fake",
        tool_runs,
    )
}

/// The `agent` kind with agent `mathy` (model id `model_id`), whose `multiply` tool counts its runs.
fn registry_on(
    model: Arc<dyn Model>,
    model_id: &str,
    tool_runs: Arc<AtomicU32>,
) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
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
        .register(&mut r)
        .unwrap();
    r
}

/// The `agent` kind with the demo agent (`kinds::demo_agent`: calculator and clock) on the
/// OpenAI-compatible server at `url`.
fn demo_registry(url: &str) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    Agents::new(Arc::new(OpenAiCompatible::new(url, None)))
        .with(kinds::demo_agent())
        .register(&mut r)
        .unwrap();
    r
}

/// An MCP server written with the official Rust SDK (`rmcp`), offering `multiply` (whose calls it
/// counts; with `fails`, each answers a tool error) and `forbidden` (which no agent is allowed).
#[derive(Clone)]
struct Multiplier {
    calls: Arc<AtomicU32>,
    fails: bool,
}

impl rmcp::ServerHandler for Multiplier {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(
            rmcp::model::ServerCapabilities::builder()
                .enable_tools()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _: Option<rmcp::model::PaginatedRequestParams>,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let schema = |v: Value| Arc::new(v.as_object().unwrap().clone());
        let factors = json!({"type": "object", "required": ["a", "b"],
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}});
        Ok(rmcp::model::ListToolsResult::with_all_items(vec![
            rmcp::model::Tool::new("multiply", "Multiplies a by b.", schema(factors)),
            rmcp::model::Tool::new(
                "forbidden",
                "Not for agents.",
                schema(json!({"type": "object"})),
            ),
        ]))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        use rmcp::model::{CallToolResult, ContentBlock};
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fails {
            return Ok(
                CallToolResult::error(vec![ContentBlock::text("multiply is out of order")]).into(),
            );
        }
        let args = request.arguments.unwrap_or_default();
        let n = |k: &str| args.get(k).and_then(Value::as_i64).unwrap_or(0);
        Ok(CallToolResult::success(vec![ContentBlock::text((n("a") * n("b")).to_string())]).into())
    }
}

/// Serves `server` (sessions and all, as most MCP servers run) at `/mcp` on `listener`; its URL.
fn serve_mcp(listener: tokio::net::TcpListener, server: Multiplier) -> String {
    use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
    use rmcp::transport::{StreamableHttpServerConfig, StreamableHttpService};
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let app = axum::Router::new().nest_service("/mcp", service);
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The `agent` kind with agent `toolsmith`, whose only tool is `multiply` from the MCP server at
/// `mcp_url`, on the fake model at `model_url`.
fn mcp_registry(model_url: &str, mcp_url: &str) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    Agents::new(Arc::new(OpenAiCompatible::new(model_url, None)))
        .with(Agent {
            name: "toolsmith".into(),
            model: "fake".into(),
            system: "multiply".into(),
            max_turns: 4,
            tools: Vec::new(),
            mcp: vec![McpServer::new(mcp_url, ["multiply"])],
        })
        .register(&mut r)
        .unwrap();
    r
}

fn toolsmith() -> Value {
    json!({"agent": "toolsmith", "message": "6 times 7?"})
}

async fn an_agent_calls_an_mcp_tool_once_across_a_retry(b: Backends) {
    let fake = fake_model(Script::HangOnSecondTurnOnce).await;
    let calls = Arc::new(AtomicU32::new(0));
    let server = Multiplier {
        calls: calls.clone(),
        fails: false,
    };
    let mcp = serve_mcp(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        server,
    );
    let view = run_job(&b, || mcp_registry(&fake.url, &mcp), &toolsmith(), true).await;
    assert_eq!(view["status"], "completed", "{view}");
    // The first attempt hung in its second turn, after the call (the fake model hangs only once it has
    // the tool's result), and was killed; on a loaded machine a 1 s lease may cost one more attempt.
    let attempts = view["attempts"].as_u64().unwrap();
    assert!(attempts >= 2, "{view}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the MCP tool was called once across {attempts} attempts"
    );
    assert_eq!(view["result"]["answer"], "the tool said 42");
    assert_eq!(
        view["result"]["tool_calls"],
        json!([{"name": "multiply", "input": {"a": 6, "b": 7}, "output": 42}])
    );
    // The model saw the server's schema of the allowed tool, and nothing else of the server's.
    let first = fake.requests.lock().unwrap()[0].clone();
    let tools = first["tools"].as_array().unwrap();
    assert_eq!(tools.len(), 1, "{first}");
    assert_eq!(tools[0]["function"]["name"], "multiply");
    assert_eq!(
        tools[0]["function"]["parameters"]["required"],
        json!(["a", "b"])
    );
}

async fn an_mcp_tool_error_is_a_tool_error_to_the_model(b: Backends) {
    let fake = fake_model(Script::ToolThenAnswer).await;
    let calls = Arc::new(AtomicU32::new(0));
    let server = Multiplier {
        calls: calls.clone(),
        fails: true,
    };
    let mcp = serve_mcp(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        server,
    );
    let view = run_job(&b, || mcp_registry(&fake.url, &mcp), &toolsmith(), false).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["attempts"], 1, "not a job failure");
    assert_eq!(
        view["result"]["tool_calls"][0]["output"],
        json!({"error": "multiply is out of order"})
    );
    assert_eq!(
        view["result"]["answer"],
        "the tool said multiply is out of order"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

async fn an_mcp_server_that_is_down_is_retried_like_a_model_error(b: Backends) {
    let fake = fake_model(Script::ToolThenAnswer).await;
    // An address nothing listens on yet: the server is down.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mcp = format!("http://{addr}/mcp");
    let (api, worker) = api_and_worker(&b, || mcp_registry(&fake.url, &mcp), fast_settings(5));
    let id = submit(&api, &toolsmith()).await;
    let retrying = eventually("a retryable failure", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
        let (_, v) = json(&api.handle(get_job("ada", &id)).await);
        (v["status"] == "retrying").then_some(v)
    })
    .await;
    assert_eq!(retrying["error"]["code"], "mcp_unavailable", "{retrying}");
    assert_eq!(retrying["error"]["retryable"], true, "{retrying}");
    // The server comes up: the retry lists its tools and calls one.
    let calls = Arc::new(AtomicU32::new(0));
    let server = Multiplier {
        calls: calls.clone(),
        fails: false,
    };
    serve_mcp(tokio::net::TcpListener::bind(addr).await.unwrap(), server);
    let view = eventually("the agent job to finish", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
        let (_, v) = json(&api.handle(get_job("ada", &id)).await);
        matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "dead_letter")
        )
        .then_some(v)
    })
    .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["attempts"], 2, "{view}");
    assert_eq!(view["result"]["answer"], "the tool said 42");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The input of a `mathy` job.
fn mathy() -> Value {
    json!({"agent": "mathy", "message": "6 times 7?", "context": {"user": "u1"}})
}

/// Submits an `agent` job with `input` as user `ada`; its id.
async fn submit(api: &Api, input: &Value) -> String {
    let body = json!({"kind": "agent", "input": input});
    let (status, accepted) = json(&api.handle(post_jobs("ada", &body.to_string())).await);
    assert_eq!(status, 202, "{accepted}");
    accepted["job_id"].as_str().unwrap().to_owned()
}

/// The API and a worker with `settings` on `registry`, as `jobctl dev` builds them.
fn api_and_worker(
    b: &Backends,
    registry: impl Fn() -> HandlerRegistry,
    settings: WorkerSettings,
) -> (Api, EventSource) {
    let api = b.api_with_settings(registry(), jobkit::api::ApiSettings::from_config(&b.config));
    let worker = b
        .event_source(registry(), settings)
        .with_visibility(Duration::from_secs(2))
        .with_wait(Duration::from_millis(200));
    (api, worker)
}

/// Submits one `mathy` job and runs it to a terminal state; the worker's first poll may be cut short.
async fn run(b: &Backends, fake: &Fake, tool_runs: Arc<AtomicU32>, kill_first: bool) -> Value {
    run_job(
        b,
        || registry(&fake.url, tool_runs.clone()),
        &mathy(),
        kill_first,
    )
    .await
}

/// Submits one `agent` job with `input` on `registry` and runs it until it ends (or dead-letters).
async fn run_job(
    b: &Backends,
    registry: impl Fn() -> HandlerRegistry,
    input: &Value,
    kill_first: bool,
) -> Value {
    // A killed attempt's job is free again when its lease ends: a short one then. Otherwise the
    // deployed minute, so a slow emulator never costs an attempt its lease.
    let settings = WorkerSettings {
        lease: Duration::from_secs(if kill_first { 1 } else { 60 }),
        ..fast_settings(5)
    };
    let (api, worker) = api_and_worker(b, registry, settings);
    let id = submit(&api, input).await;
    if kill_first {
        let killed = tokio::time::timeout(Duration::from_secs(3), worker.poll_once()).await;
        assert!(
            killed.is_err(),
            "the first attempt hangs in its second turn"
        );
    }
    eventually("the agent job to finish", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
        let (_, v) = json(&api.handle(get_job("ada", &id)).await);
        matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "dead_letter")
        )
        .then_some(v)
    })
    .await
}

async fn an_agent_calls_its_tool_and_answers(b: Backends) {
    let fake = fake_model(Script::ToolThenAnswer).await;
    let runs = Arc::new(AtomicU32::new(0));
    let view = run(&b, &fake, runs.clone(), false).await;
    assert_eq!(view["status"], "completed", "{view}");
    let result = &view["result"];
    assert_eq!(result["answer"], "the tool said 42");
    assert_eq!(result["turns"], 2);
    assert_eq!(
        result["tool_calls"],
        json!([{"name": "multiply", "input": {"a": 6, "b": 7}, "output": 42}])
    );
    assert_eq!(
        result["usage"],
        json!({"input_tokens": 20, "output_tokens": 6})
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    println!("agent result: {result}");
    // The model saw the system prompt, the context, and the tool's schema from its Rust type.
    let first = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(first["messages"][0]["content"], "multiply");
    assert!(
        first["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains(r#""user":"u1""#)
    );
    assert_eq!(
        first["tools"][0]["function"]["parameters"]["required"],
        json!(["a", "b"])
    );
}

async fn a_worker_killed_after_a_tool_call_resumes_without_calling_it_again(b: Backends) {
    let fake = fake_model(Script::HangOnSecondTurnOnce).await;
    let runs = Arc::new(AtomicU32::new(0));
    let view = run(&b, &fake, runs.clone(), true).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["attempts"], 2);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the tool ran once");
    // Turn 1 once (recorded), turn 2 twice (the first call never answered).
    assert_eq!(fake.calls.load(Ordering::SeqCst), 3);
    println!(
        "kill-between-steps ledger: attempts 2, tool runs {}, model calls {}",
        runs.load(Ordering::SeqCst),
        fake.calls.load(Ordering::SeqCst)
    );
}

async fn a_throttled_model_call_is_retried(b: Backends) {
    let fake = fake_model(Script::ThrottleFirst).await;
    let view = run(&b, &fake, Arc::default(), false).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["attempts"], 2,
        "one throttled attempt, one that worked"
    );
    assert_eq!(view["result"]["turns"], 2);
}

async fn a_malformed_tool_call_is_answered_as_a_tool_error(b: Backends) {
    let fake = fake_model(Script::MalformedFirst).await;
    let runs = Arc::new(AtomicU32::new(0));
    let view = run(&b, &fake, runs.clone(), false).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["attempts"], 1, "not a job failure");
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "the tool never ran on bad arguments"
    );
    let answer = view["result"]["answer"].as_str().unwrap();
    assert!(answer.contains("not valid JSON"), "{answer}");
}

/// The same loop through Bedrock's Converse API on the emulator: ministack translates Converse (with its
/// toolConfig) to an OpenAI-compatible server named by MINISTACK_BEDROCK_PROXY_URL, here the fake. Its
/// own emulator on port 4571 (the proxy address is read when the emulator starts), the fake on 4572.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_run_through_the_emulators_bedrock_runtime() {
    let fake = fake_model_at("127.0.0.1:4572", Script::ToolThenAnswer).await;
    let started = std::process::Command::new("bash")
        .arg(repo_root().join("infra/emulator.sh"))
        .arg("start")
        .env("GATEWAY_PORT", "4571")
        .env("MINISTACK_BEDROCK_PROXY_URL", "http://127.0.0.1:4572")
        .status()
        .expect("bash runs infra/emulator.sh");
    assert!(started.success());
    let sdk = jobkit::aws::sdk_config(Some("http://127.0.0.1:4571")).await;
    let b = memory().await;
    let model_id = "anthropic.claude-3-5-haiku-20241022-v1:0";
    // The demo agent of the default registry, on Bedrock.
    let registry = || {
        let mut r = HandlerRegistry::with_builtins();
        Agents::new(Arc::new(Bedrock::new(&sdk)))
            .with(Agent {
                model: model_id.into(),
                ..kinds::demo_agent()
            })
            .register(&mut r)
            .unwrap();
        r
    };
    let api = b.api_with_settings(registry(), jobkit::api::ApiSettings::from_config(&b.config));
    let body =
        json!({"kind": "agent", "input": {"agent": "demo", "message": "What is 6 times 7?"}});
    let (_, accepted) = json(&api.handle(post_jobs("ada", &body.to_string())).await);
    let id = accepted["job_id"].as_str().unwrap().to_owned();
    let worker = b.event_source(registry(), fast_settings(3));
    let view = eventually("the agent job to finish", WAIT, async || {
        worker.poll_once().await.unwrap();
        let (_, v) = json(&api.handle(get_job("ada", &id)).await);
        matches!(v["status"].as_str(), Some("completed" | "failed")).then_some(v)
    })
    .await;
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        2,
        "both turns reached the fake through the emulator (an emulator started without \
         MINISTACK_BEDROCK_PROXY_URL answers from its mock: `GATEWAY_PORT=4571 infra/emulator.sh stop`)"
    );
    assert_eq!(view["status"], "completed", "{view}");
    let result = &view["result"];
    assert_eq!(result["turns"], 2);
    assert_eq!(result["answer"], "the tool said 42.0");
    assert_eq!(
        result["tool_calls"],
        json!([{"name": "calculator", "input": {"expression": "6 * 7"}, "output": 42.0}])
    );
    // The fake got Bedrock's model id and the tools' schemas through the translation.
    let first = fake.requests.lock().unwrap()[0].clone();
    assert_eq!(first["model"], model_id);
    assert_eq!(first["tools"][0]["function"]["name"], "calculator");
    assert_eq!(first["tools"][1]["function"]["name"], "clock");
    println!("demo-style run through the emulator's Bedrock runtime: {result}");
}

/// Issue 21 (2): a 40 KB `1+1+…` overflowed evalexpr's stack and aborted the process, losing every
/// job in it. Now the calculator refuses it before parsing, and the model reads why.
async fn a_hostile_calculator_expression_is_a_tool_error_not_a_crash(b: Backends) {
    let fake = fake_model(Script::HostileCalculator).await;
    let input = json!({"agent": "demo", "message": "add up a lot of ones"});
    let view = run_job(&b, || demo_registry(&fake.url), &input, false).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["attempts"], 1);
    let call = &view["result"]["tool_calls"][0];
    assert_eq!(call["name"], "calculator");
    let error = call["output"]["error"].as_str().unwrap();
    assert!(
        error.contains("40001 bytes") && error.contains("at most 1000"),
        "{error}"
    );
    let answer = view["result"]["answer"].as_str().unwrap();
    assert!(
        answer.contains("at most 1000"),
        "the model read it: {answer}"
    );
}

/// Issue 21 (3): a model reporting `u64::MAX` prompt tokens on two turns overflowed the sum (a panic,
/// retried until the job dead-lettered). The sum saturates, and the run that fails (here: out of
/// turns) reports what it spent in `error.details.usage`.
async fn a_failed_run_reports_its_usage_and_absurd_counts_saturate(b: Backends) {
    let fake = fake_model(Script::EndlessWithHugeUsage).await;
    let view = run(&b, &fake, Arc::default(), false).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["attempts"], 1, "failed at once, not retried: {view}");
    let error = &view["error"];
    assert_eq!(error["code"], "max_turns_exceeded", "{view}");
    assert_eq!(
        error["details"]["usage"],
        json!({"input_tokens": u64::MAX, "output_tokens": 12}),
        "four turns of u64::MAX and 3: {view}"
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
}

/// Issue 21 (9): a `DELETE` during a 30 s model call used to wait for the call and end `completed`. The
/// call is raced against the cancel poll (5 s), so the job ends `cancelled` within about that.
async fn a_cancel_stops_a_model_call_in_flight(b: Backends) {
    let fake = fake_model(Script::SlowFirstCall).await;
    // The deployed lease (a minute: heartbeats every 20 s), so only the cancel poll (5 s) can see the
    // request in time.
    let (api, worker) =
        api_and_worker(&b, || registry(&fake.url, Arc::default()), fast_settings(5));
    let worker = Arc::new(worker);
    let id = submit(&api, &mathy()).await;
    let running = tokio::spawn({
        let worker = worker.clone();
        async move {
            loop {
                let (_, batch) = worker.poll_once().await.unwrap();
                if !batch.outcomes.is_empty() {
                    return batch.outcomes;
                }
            }
        }
    });
    eventually("the first model call to be in flight", WAIT, async || {
        (fake.calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let asked = std::time::Instant::now();
    let (status, _) = json(
        &api.handle(request("DELETE", &format!("/jobs/{id}"), "ada"))
            .await,
    );
    assert_eq!(status, 202);
    // Well below the 30 s call: the poll period (5 s) and some room for a busy machine.
    let view = eventually("the job to end", Duration::from_secs(15), async || {
        let (_, v) = json(&api.handle(get_job("ada", &id)).await);
        v["finished_at"].is_string().then_some(v)
    })
    .await;
    let took = asked.elapsed();
    assert_eq!(view["status"], "cancelled", "{view}");
    assert!(
        took < SLOW_CALL / 2,
        "ended {took:?} after the request: {view}"
    );
    let outcomes = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the worker's batch ended with the job")
        .unwrap();
    assert_eq!(outcomes, [jobkit::worker::Outcome::Cancelled]);
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        1,
        "no turn after the cancel"
    );
    println!("cancelled during a model call: ended {took:?} after the request");
}

/// Every built-in tool meets hostile arguments in this process: a stack overflow is an abort no
/// `catch_unwind` stops, so any tool that overflows kills this test binary, and a tool that panics
/// fails the test. Each call must come back, with an output or an error for the model. Runs on the
/// test thread's stack (2 MiB, as tokio's workers have).
#[tokio::test]
async fn every_built_in_tool_survives_hostile_arguments() {
    let mut nested = json!("x");
    for _ in 0..127 {
        nested = json!([nested]); // as deep as serde_json parses a model's arguments
    }
    let huge = "9".repeat(1 << 20);
    let strings = [
        format!("1{}", "+1".repeat(20_000)),
        format!("{}1", "-".repeat(5_000)),
        format!("{}1{}", "(".repeat(5_000), ")".repeat(5_000)),
        format!("{}true", "!".repeat(5_000)),
        format!("{}1", "a=".repeat(5_000)),
        format!("{}1", "-(".repeat(3_000)),
        "shl(1, 100)".into(),
        "2 ^ 99999".into(),
        "\u{0}\u{202e}１＋１".into(),
        huge.clone(),
        String::new(),
    ];
    let mut inputs: Vec<Value> = vec![
        Value::Null,
        json!(42),
        json!("1+1"),
        json!([1, 2]),
        json!({}),
        json!({"expression": null}),
        json!({"expression": 17}),
        json!({"expression": nested.clone()}),
        json!({"expression": "1", "extra": nested}),
        json!({ huge.clone(): 1 }),
    ];
    inputs.extend(strings.iter().map(|s| json!({ "expression": s })));
    let agent = kinds::demo_agent();
    for tool in &agent.tools {
        for input in &inputs {
            let shown: String = input.to_string().chars().take(60).collect();
            let _ = tool.call(input.clone()).await; // comes back: an output or an error
            println!("{} survived {shown}", tool.name());
        }
    }
    // The calculator says why, in a sentence the model can act on.
    let calculator = &agent.tools[0];
    for s in &strings[..6] {
        let e = calculator
            .call(json!({ "expression": s }))
            .await
            .unwrap_err();
        assert!(e.contains("at most"), "{e}");
    }
}

on_both_backends!(
    an_agent_calls_its_tool_and_answers,
    a_worker_killed_after_a_tool_call_resumes_without_calling_it_again,
    a_throttled_model_call_is_retried,
    a_malformed_tool_call_is_answered_as_a_tool_error,
    a_hostile_calculator_expression_is_a_tool_error_not_a_crash,
    a_failed_run_reports_its_usage_and_absurd_counts_saturate,
    a_cancel_stops_a_model_call_in_flight,
    an_agent_calls_an_mcp_tool_once_across_a_retry,
    an_mcp_tool_error_is_a_tool_error_to_the_model,
    an_mcp_server_that_is_down_is_retried_like_a_model_error,
);
