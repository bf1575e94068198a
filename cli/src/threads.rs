//! `jobctl threads create | show`: conversation threads (`POST /threads`, `GET /threads/{id}`). An
//! agent's message goes to a thread with `jobctl submit agent --input … --thread ID`.

use anyhow::Context as _;
use jobkit::api::{ThreadPage, ThreadView};

use crate::client::{Client, Target};

#[derive(Debug, clap::Subcommand)]
pub enum ThreadAction {
    /// Create a thread and print its id (only the id when stdout is not a terminal).
    Create {
        /// What a message sent while a run is queued or going does: enqueue (run after), reject
        /// (refused, 409 thread_busy) or interrupt (cancel that run, then run).
        #[arg(long, value_parser = ["enqueue", "reject", "interrupt"])]
        policy: Option<String>,
        /// How long the thread is kept, in seconds (60 s to 30 days; the job retention by default).
        #[arg(long)]
        ttl_seconds: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Show a thread and its messages, oldest first (a page of them; --cursor for the next).
    Show {
        /// The thread's id.
        id: String,
        /// Messages per page (1 to 100).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        /// The next_cursor of a previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        target: Target,
    },
}

pub async fn run(action: ThreadAction) -> anyhow::Result<bool> {
    match action {
        ThreadAction::Create {
            policy,
            ttl_seconds,
            target,
        } => {
            let json = target.json;
            let c = Client::new(target)?;
            let mut body = serde_json::Map::new();
            if let Some(p) = policy {
                body.insert("policy".into(), p.into());
            }
            if let Some(t) = ttl_seconds {
                body.insert("ttl_seconds".into(), t.into());
            }
            let created = c
                .post_json::<ThreadView>("/threads", serde_json::Value::Object(body).to_string())
                .await?;
            if json {
                println!("{}", created.raw);
            } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                let t = &created.value;
                println!(
                    "{} {} (expires {})",
                    t.thread_id,
                    t.policy.as_str(),
                    t.expires_at
                );
            } else {
                println!("{}", created.value.thread_id);
            }
            Ok(true)
        }
        ThreadAction::Show {
            id,
            limit,
            cursor,
            target,
        } => {
            let json = target.json;
            let c = Client::new(target)?;
            let mut url = c.url_with("/threads", &[&id])?;
            url.query_pairs_mut()
                .append_pair("limit", &limit.to_string());
            if let Some(cursor) = &cursor {
                url.query_pairs_mut().append_pair("cursor", cursor);
            }
            let page = c.get_answer::<ThreadPage>(url).await?;
            if json {
                println!("{}", page.raw);
                return Ok(true);
            }
            let p = &page.value;
            println!(
                "{} {} runs: {} (expires {})",
                p.thread.thread_id,
                p.thread.policy.as_str(),
                p.thread.runs,
                p.thread.expires_at
            );
            for m in &p.messages {
                println!("  {}", describe(m).context("a message the API sent")?);
            }
            if let Some(c) = &p.next_cursor {
                println!("more: --cursor {c}");
            }
            Ok(true)
        }
    }
}

/// One line for a message: `run.index role: text`, a tool call's name and input, a tool's results.
fn describe(m: &jobkit::api::MessageView) -> anyhow::Result<String> {
    let role = m
        .message
        .get("role")
        .and_then(|r| r.as_str())
        .unwrap_or("?");
    let mut parts = Vec::new();
    if let Some(text) = m.message.get("text").and_then(|t| t.as_str())
        && !text.is_empty()
    {
        parts.push(text.to_owned());
    }
    for call in m
        .message
        .get("tool_calls")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
    {
        parts.push(format!(
            "calls {}({})",
            call["name"].as_str().unwrap_or("?"),
            call["input"]
        ));
    }
    for r in m
        .message
        .get("results")
        .and_then(|c| c.as_array())
        .into_iter()
        .flatten()
    {
        parts.push(format!("→ {}", r["content"].as_str().unwrap_or("")));
    }
    if m.interrupted {
        parts.push("[interrupted]".into());
    }
    Ok(format!("{}.{} {role}: {}", m.run, m.index, parts.join(" ")))
}

/// `input` with `"thread": id` (for `submit --thread`): agent jobs only, an input that is an object.
pub fn with_thread(kind: &str, input: jobkit::Json, thread: &str) -> anyhow::Result<jobkit::Json> {
    anyhow::ensure!(
        kind == jobkit::agent::KIND,
        "--thread is for agent jobs (`jobctl submit agent --input … --thread ID`)"
    );
    let mut value: serde_json::Map<String, serde_json::Value> = input
        .decode()
        .context("--input must be a JSON object to take --thread")?;
    value.insert("thread".into(), thread.into());
    jobkit::Json::encode(&value).context("the input with its thread")
}
