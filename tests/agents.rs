//! Agent jobs end to end on both backends, against a scripted OpenAI-compatible server on loopback (a
//! stand-in for Ollama or vLLM): a tool call then an answer; a worker killed between a tool call and the
//! next turn resumes without calling the tool again; a throttled model call is retried; a malformed tool
//! call is answered to the model as a tool error; a hostile calculator expression is a tool error, not
//! a crash; absurd usage counts saturate and a failed run reports what it spent; a cancel request stops
//! a model call in flight; a tool that needs approval parks the run until it is approved (the tool
//! runs once), refused (the model reads the reason) or timed out; with a per-model rate limit, 200
//! jobs against a server that refuses more than N requests a second all complete and the server
//! never sees more than N in a second; tools from an MCP server (written here with `rmcp`): called
//! once across a retry, their errors answered to the model, a server that is down retried. And every
//! built-in tool survives hostile input, in this process.

#[macro_use]
mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobkit::HandlerRegistry;
use jobkit::agent::{
    Agent, Agents, Bedrock, McpServer, ModelLimit, ModelLimits, OpenAiCompatible, Tool,
};
use jobkit::local::EventSource;
use jobkit::worker::WorkerSettings;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Value, json};
use support::model::{Fake, SLOW_CALL, Script, fake_model, fake_model_at, registry};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

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

/// The `agent` kind with agent `notary`, whose `send_note` tool needs approval (within `timeout`) and
/// counts its runs.
fn notary_registry(url: &str, runs: Arc<AtomicU32>, timeout: Duration) -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    let send_note = Tool::new("send_note", "Sends a note.", move |n: Note| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(json!({"noted": n.note}))
        }
    })
    .approval_timeout(timeout);
    Agents::new(Arc::new(OpenAiCompatible::new(url, None)))
        .with(Agent {
            name: "notary".into(),
            model: "fake".into(),
            system: "send notes".into(),
            max_turns: 4,
            tools: vec![send_note],
            mcp: Vec::new(),
        })
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

#[derive(Deserialize, JsonSchema)]
struct Note {
    note: String,
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

/// A `notary` job run until it parks for approval of its `send_note` call: the API, the worker, the
/// job's id, and its view while it waits.
async fn park_for_approval(
    b: &Backends,
    fake: &Fake,
    runs: Arc<AtomicU32>,
    timeout: Duration,
) -> (Api, EventSource, String, Value) {
    let settings = WorkerSettings {
        lease: Duration::from_secs(60),
        ..fast_settings(5)
    };
    let (api, worker) = api_and_worker(
        b,
        || notary_registry(&fake.url, runs.clone(), timeout),
        settings,
    );
    let id = submit(&api, &json!({"agent": "notary", "message": "send a note"})).await;
    let view = eventually("the run to park for approval", WAIT, async || {
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
        let (_, v) = json(&api.handle(get_job("ada", &id)).await);
        (v["status"] == "waiting").then_some(v)
    })
    .await;
    (api, worker, id, view)
}

/// Runs the worker (and the sweep, which fires timers) until the job is terminal.
async fn finish(b: &Backends, api: &Api, worker: &EventSource, id: &str) -> Value {
    eventually("the agent job to finish", WAIT, async || {
        b.sweeper().sweep(jobkit::sweep::SWEEP_AFTER).await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(10), worker.poll_once()).await;
        let (_, v) = json(&api.handle(get_job("ada", id)).await);
        matches!(
            v["status"].as_str(),
            Some("completed" | "failed" | "dead_letter")
        )
        .then_some(v)
    })
    .await
}

/// Answers the approval waitpoint of job `id` with `payload`; the answer's status.
async fn answer(api: &Api, id: &str, payload: &Value) -> u16 {
    let path = format!("/jobs/{id}/waitpoints/approve-tool-1-0");
    let (status, body) = json(
        &api.handle(complete_req("ada", &path, &payload.to_string()))
            .await,
    );
    assert!(status == 202 || status == 409, "{status} {body}");
    status
}

/// The content of the tool message the model read last (its second call).
fn tool_message_seen(fake: &Fake) -> String {
    let requests = fake.requests.lock().unwrap();
    let last = requests.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["role"], "tool", "{last}");
    last["content"].as_str().unwrap().to_owned()
}

async fn a_tool_that_needs_approval_runs_once_when_approved(b: Backends) {
    let fake = fake_model(Script::NoteThenAnswer).await;
    let runs = Arc::new(AtomicU32::new(0));
    let (api, worker, id, waiting) =
        park_for_approval(&b, &fake, runs.clone(), Duration::from_secs(3600)).await;
    // The waitpoint shows what is to be approved; nothing ran yet.
    assert_eq!(
        waiting["waiting_for"]["name"], "approve-tool-1-0",
        "{waiting}"
    );
    assert_eq!(
        waiting["waiting_for"]["detail"],
        json!({"tool": "send_note", "input": {"note": "hello"}})
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    assert_eq!(answer(&api, &id, &json!({"approve": true})).await, 202);
    let view = finish(&b, &api, &worker, &id).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["result"]["tool_calls"],
        json!([{"name": "send_note", "input": {"note": "hello"}, "output": {"noted": "hello"}}])
    );
    assert_eq!(
        view["result"]["answer"],
        r#"the tool said {"noted":"hello"}"#
    );
    assert!(view.get("waiting_for").is_none(), "{view}");
    // The tool ran once, and the turn that parked was not asked of the model again on resuming.
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    // A second answer changes nothing.
    assert_eq!(answer(&api, &id, &json!({"approve": false})).await, 409);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn a_refused_tool_call_answers_the_model_with_the_reason(b: Backends) {
    let fake = fake_model(Script::NoteThenAnswer).await;
    let runs = Arc::new(AtomicU32::new(0));
    let (api, worker, id, _) =
        park_for_approval(&b, &fake, runs.clone(), Duration::from_secs(3600)).await;
    let refusal = json!({"approve": false, "reason": "not today"});
    assert_eq!(answer(&api, &id, &refusal).await, 202);
    let view = finish(&b, &api, &worker, &id).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(runs.load(Ordering::SeqCst), 0, "a refused tool never runs");
    let seen = tool_message_seen(&fake);
    assert!(
        seen.contains("refused") && seen.contains("not today"),
        "{seen}"
    );
    let output = &view["result"]["tool_calls"][0]["output"];
    assert!(
        output["error"].as_str().unwrap().contains("not today"),
        "{output}"
    );
}

async fn an_approval_that_does_not_say_yes_is_a_refusal(b: Backends) {
    let fake = fake_model(Script::NoteThenAnswer).await;
    let runs = Arc::new(AtomicU32::new(0));
    let (api, worker, id, _) =
        park_for_approval(&b, &fake, runs.clone(), Duration::from_secs(3600)).await;
    assert_eq!(answer(&api, &id, &json!({"approve": "yes"})).await, 202);
    let view = finish(&b, &api, &worker, &id).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let seen = tool_message_seen(&fake);
    assert!(seen.contains("not approved"), "{seen}");
}

async fn an_approval_that_times_out_is_a_tool_error(b: Backends) {
    let fake = fake_model(Script::NoteThenAnswer).await;
    let runs = Arc::new(AtomicU32::new(0));
    let (api, worker, id, _) =
        park_for_approval(&b, &fake, runs.clone(), Duration::from_secs(1)).await;
    let view = finish(&b, &api, &worker, &id).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(tool_message_seen(&fake), "approval timed out");
}

/// An OpenAI-compatible server that answers at once and refuses (429) any request beyond `limit` in
/// the same wall-clock second; it counts what it sees per second.
struct Strict {
    url: String,
    per_second: Arc<Mutex<std::collections::BTreeMap<i64, u32>>>,
    refused: Arc<AtomicU32>,
}

async fn strict_model(limit: u32) -> Strict {
    let per_second = Arc::new(Mutex::new(std::collections::BTreeMap::<i64, u32>::new()));
    let refused = Arc::new(AtomicU32::new(0));
    let (seen, no) = (per_second.clone(), refused.clone());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move || {
            let (seen, no) = (seen.clone(), no.clone());
            async move {
                let second = chrono::Utc::now().timestamp();
                let n = {
                    let mut seen = seen.lock().unwrap();
                    let n = seen.entry(second).or_default();
                    *n += 1;
                    *n
                };
                if n > limit {
                    no.fetch_add(1, Ordering::SeqCst);
                    return (
                        http::StatusCode::TOO_MANY_REQUESTS,
                        axum::Json(json!({"error": {"message": "rate limit exceeded"}})),
                    );
                }
                (
                    http::StatusCode::OK,
                    axum::Json(json!({"choices": [{"message": {"role": "assistant",
                        "content": "42"}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 3}})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Strict {
        url,
        per_second,
        refused,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_model_serves_200_jobs_without_a_refusal() {
    rate_limited_jobs(memory().await, 200).await;
}

/// On the emulator, fewer jobs: each costs a few hundred milliseconds of its DynamoDB there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_model_serves_20_jobs_without_a_refusal_on_the_emulator() {
    rate_limited_jobs(emulator().await, 20).await;
}

/// `jobs` one-turn agent jobs, 10 at a time, against a server refusing more than 20 requests in
/// a second, under a limit of 540 a minute: all complete, none refused, never more than 20 a second.
async fn rate_limited_jobs(b: Backends, jobs: usize) {
    const LIMIT: u32 = 20;
    let server = strict_model(LIMIT).await;
    // 9 a second with bursts of 9: at most 18 in any wall-clock second, under the server's 20 with
    // room for a request taken at the end of one second that arrives in the next.
    let limits = ModelLimits::default().with(
        "strict",
        ModelLimit {
            rpm: Some(540),
            tpm: None,
        },
    );
    let registry = || {
        let mut r = HandlerRegistry::with_builtins();
        Agents::new(Arc::new(OpenAiCompatible::new(&server.url, None)))
            .with(Agent {
                name: "mathy".into(),
                model: "strict".into(),
                system: "answer".into(),
                max_turns: 2,
                tools: Vec::new(),
                mcp: Vec::new(),
            })
            .with_model_limits(limits.clone())
            .register(&mut r)
            .unwrap();
        r
    };
    let api = b.api_with_settings(
        registry(),
        jobkit::api::ApiSettings {
            max_in_flight_per_user: None,
            ..jobkit::api::ApiSettings::from_config(&b.config)
        },
    );
    let mut ids = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        ids.push(submit(&api, &mathy()).await);
    }
    // Batches of 10 at a time, each a poll of its own: 10 model calls compete for 9 a second.
    let source = b
        .event_source(registry(), fast_settings(5))
        .with_wait(Duration::from_millis(200));
    let mut pending = ids.clone();
    eventually(
        "every agent job finished",
        Duration::from_secs(180),
        async || {
            let _ = tokio::time::timeout(Duration::from_secs(30), source.poll_once()).await;
            let mut still = Vec::new();
            for id in &pending {
                let (_, v) = json(&api.handle(get_job("ada", id)).await);
                match v["status"].as_str() {
                    Some("completed") => {}
                    Some("failed" | "dead_letter" | "cancelled") => {
                        panic!("a job did not complete: {v}")
                    }
                    _ => still.push(id.clone()),
                }
            }
            pending = still;
            pending.is_empty().then_some(())
        },
    )
    .await;
    let seen = server.per_second.lock().unwrap().clone();
    let busiest = seen.values().max().copied().unwrap_or(0);
    assert_eq!(
        server.refused.load(Ordering::SeqCst),
        0,
        "per second: {seen:?}"
    );
    assert!(
        busiest <= LIMIT,
        "{busiest} requests in one second: {seen:?}"
    );
    assert_eq!(seen.values().sum::<u32>(), jobs as u32, "one call per job");
}

/// Each turn's assistant text is the job's partial result: the text of the turn that parked shows
/// while the job waits; a turn with only tool calls publishes nothing, so a plain run's partial is its
/// answering turn's text.
async fn each_turns_text_is_published_as_the_jobs_partial(b: Backends) {
    let fake = fake_model(Script::NoteAloudThenAnswer).await;
    let runs = Arc::new(AtomicU32::new(0));
    let (api, worker, id, waiting) =
        park_for_approval(&b, &fake, runs.clone(), Duration::from_secs(3600)).await;
    assert_eq!(
        waiting["partial"],
        json!({"turn": 1, "text": "let me send a note"}),
        "{waiting}"
    );
    assert_eq!(answer(&api, &id, &json!({"approve": true})).await, 202);
    let view = finish(&b, &api, &worker, &id).await;
    assert_eq!(view["status"], "completed", "{view}");
    // The answer is the result; the partial is the last turn's text written before it (turn 2's
    // is dropped when it came within the second: the result supersedes it).
    let turn = view["partial"]["turn"].as_u64();
    assert!(matches!(turn, Some(1 | 2)), "{view}");

    let fake = fake_model(Script::ToolThenAnswer).await;
    let view = run(&b, &fake, Arc::new(AtomicU32::new(0)), false).await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["partial"],
        json!({"turn": 2, "text": "the tool said 42"}),
        "{view}"
    );
}

on_both_backends!(
    each_turns_text_is_published_as_the_jobs_partial,
    a_tool_that_needs_approval_runs_once_when_approved,
    a_refused_tool_call_answers_the_model_with_the_reason,
    an_approval_that_does_not_say_yes_is_a_refusal,
    an_approval_that_times_out_is_a_tool_error,
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
