//! `jobctl`: run jobkit locally, provision local resources, and drive any deployment.

mod client;
mod console;
mod dev;
pub mod ops;
mod runner;
mod serve;
mod stats;
mod threads;
mod usage;
mod waitpoints;

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "jobctl",
    version,
    about = "Run and drive jobkit: async jobs on AWS serverless"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole kit locally: API on 127.0.0.1:8080 and a worker, in-memory by default.
    Dev(dev::DevArgs),
    /// Serve the job console on 127.0.0.1 against a deployed API, forwarding with your token (as
    /// `kubectl proxy` does). `jobctl dev` serves the same console at its own `/`.
    Console(console::ConsoleArgs),
    /// Submit a job and print its id (only the id when stdout is not a terminal, for
    /// `id=$(jobctl submit …)`), or with --wait its outcome.
    Submit {
        /// The job kind (a registered handler, e.g. echo or sleep).
        kind: String,
        /// The job input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Wait until the job finishes; exit non-zero unless it completed.
        #[arg(long)]
        wait: bool,
        /// Send an agent's message to this conversation thread (`jobctl threads create`): sets the
        /// input's `thread`.
        #[arg(long)]
        thread: Option<String>,
        #[command(flatten)]
        target: client::Target,
    },
    /// Conversation threads of agent jobs: create one, show one and its messages.
    Threads {
        #[command(subcommand)]
        action: threads::ThreadAction,
    },
    /// Show a job.
    Status {
        #[command(flatten)]
        target: client::Target,
        /// The job's id.
        id: String,
    },
    /// Follow a job until it finishes; exit non-zero unless it completed.
    Watch {
        #[command(flatten)]
        target: client::Target,
        /// The job's id.
        id: String,
    },
    /// List your jobs, newest first.
    List {
        /// Only jobs in this status (queued, running, retrying, waiting, completed, failed, cancelled,
        /// dead_letter).
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Jobs per page (1 to 100).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100))]
        limit: u32,
        /// The next_cursor of a previous page.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        target: client::Target,
    },
    /// Cancel a job: at once if it waits, else its handler is asked to stop ("cancel requested").
    Cancel {
        #[command(flatten)]
        target: client::Target,
        /// The job's id.
        id: String,
    },
    /// List your waiting jobs and what each waits for (name, detail, time left), or one job's.
    Waitpoints {
        /// Only this job's waitpoint (exit 1 if it waits for nothing).
        #[arg(long = "job")]
        job: Option<String>,
        #[command(flatten)]
        target: client::Target,
    },
    /// Complete a job's waitpoint with a JSON payload, resuming the job: `complete ID NAME --data
    /// JSON`, or `complete --url URL --data JSON` for a capability URL (`waiting_for.complete_url`).
    /// An approval of an agent's tool takes {"approve": true} or {"approve": false, "reason": "…"}.
    Complete {
        /// The job's id.
        #[arg(required_unless_present = "url", requires = "name")]
        id: Option<String>,
        /// The waitpoint's name (`jobctl waitpoints` shows it).
        #[arg(requires = "id")]
        name: Option<String>,
        /// A capability URL to POST the payload to instead (the URL authorizes; no token is sent).
        #[arg(long, conflicts_with_all = ["id", "name"])]
        url: Option<String>,
        /// The payload, as JSON (checked before anything is sent).
        #[arg(long)]
        data: String,
        #[command(flatten)]
        target: client::Target,
    },
    /// Your model tokens today (or --day), by model, and the daily token budget.
    Usage {
        /// A UTC day, YYYY-MM-DD, up to 35 days back (default: today).
        #[arg(long)]
        day: Option<String>,
        #[command(flatten)]
        target: client::Target,
    },
    /// Run one job of KIND in-process (no queue, no AWS) and print {job_id, kind, success, result,
    /// pathway, error}; exit 0 when it completed.
    Run(runner::RunArgs),
    /// A long-running worker on the stack's jobs queue (JOBKIT_TABLE, JOBKIT_QUEUE_URL), for containers:
    /// SIGTERM drains, then releases what still runs.
    Worker(runner::WorkerArgs),
    /// Exit 0 if URL answers 2xx within 3 s (a container's health check of `jobctl worker --healthz`,
    /// for images without curl).
    Healthcheck {
        /// The URL to GET, e.g. http://127.0.0.1:8081/healthz.
        url: String,
    },
    /// Queue depth, in flight, DLQ depth, age of the oldest message, and your jobs by status (against a
    /// stack with JOBKIT_QUEUE_URL set, or `jobctl dev`).
    Stats {
        #[command(flatten)]
        args: stats::StatsArgs,
        #[command(flatten)]
        target: client::Target,
    },
    /// Dead-letter queue tools, against the stack named by JOBKIT_TABLE, JOBKIT_QUEUE_URL, JOBKIT_DLQ_URL.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
        /// SQS and DynamoDB at this endpoint (an emulator) instead of AWS.
        #[arg(long, env = "AWS_ENDPOINT_URL", global = true)]
        endpoint_url: Option<String>,
        /// The container queue's DLQ (JOBKIT_CONTAINER_QUEUE_URL, JOBKIT_CONTAINER_DLQ_URL) instead.
        #[arg(long, global = true)]
        container: bool,
        /// Print JSON instead of human-readable lines.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Re-send jobs left queued without a message and record jobs whose last attempt died (what the
    /// worker's scheduled sweep does), against the stack named by JOBKIT_TABLE and JOBKIT_QUEUE_URL.
    Sweep {
        /// SQS and DynamoDB at this endpoint (an emulator) instead of AWS.
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint_url: Option<String>,
        /// Jobs queued and untouched for longer than this many seconds are re-sent.
        #[arg(long, default_value_t = 900)]
        older_than: u64,
        /// Print JSON instead of a human-readable line.
        #[arg(long)]
        json: bool,
    },
    /// Create the queues and table from template.yaml on an emulator (or AWS); print their env vars
    /// (for `jobctl dev` without --bootstrap, `jobctl worker`, `jobctl dlq`).
    Bootstrap {
        /// Create them at this endpoint (an emulator) instead of AWS.
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint_url: Option<String>,
        /// Resources are named PREFIX-LogicalId (the same default as `jobctl dev --bootstrap`).
        #[arg(long, default_value = dev::PREFIX)]
        prefix: String,
        /// Template parameter overrides, as Name=Value.
        #[arg(long = "parameter", value_parser = parse_param)]
        parameters: Vec<(String, String)>,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// Show the messages in the DLQ with their job's attempts and last error.
    List,
    /// Move messages back to the jobs queue and their jobs back to queued (all, or only --job ones).
    Redrive {
        /// Only this job's message (repeatable).
        #[arg(long = "job")]
        jobs: Vec<String>,
    },
    /// Delete every message in the DLQ (job records are kept).
    Purge {
        /// Required: purging cannot be undone.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected Name=Value, got {s:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Worker(_)) {
        // The same structured logs as the functions.
        jobkit::telemetry::init_json();
    } else if matches!(cli.command, Command::Run(_)) {
        // stdout is the result document; stderr shows progress and problems only.
        jobkit::telemetry::init_local("warn");
    } else {
        jobkit::telemetry::init_local("info,aws_config=warn,aws_smithy_runtime=warn");
    }
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("jobctl: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command; `Ok(false)` means it ran but the job did not complete.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Dev(args) => {
            // The functions' registry, with `--model-url` (if given) as the model.
            let mut settings = kinds::Settings::from_env();
            if let Some(url) = &args.model_url {
                settings.model = Some(kinds::openai_model(url));
            }
            let registry = kinds::registry(&settings);
            dev::run(args, registry).await.map(|_| true)
        }
        Command::Console(args) => console::run(args).await.map(|_| true),
        Command::Bootstrap {
            endpoint_url,
            prefix,
            parameters,
        } => {
            let overrides: BTreeMap<String, String> = parameters.into_iter().collect();
            let spec = jobkit::template::parse(jobkit::template::TEMPLATE_YAML, &overrides)?;
            let sdk = jobkit::aws::sdk_config(endpoint_url.as_deref()).await;
            let made = jobkit::aws::provision(&sdk, &spec, &prefix)
                .await
                .map_err(|e| anyhow::anyhow!(e))
                .context("provisioning failed")?;
            let config = made.config(&spec).map_err(|e| anyhow::anyhow!(e))?;
            // The other commands find the resources only at the same endpoint.
            if let Some(url) = &endpoint_url {
                println!("export AWS_ENDPOINT_URL={url}");
            }
            println!("export JOBKIT_TABLE={}", config.table);
            println!("export JOBKIT_QUEUE_URL={}", config.queue_url);
            if let Some(dlq) = config.dlq_url {
                println!("export JOBKIT_DLQ_URL={dlq}");
            }
            Ok(true)
        }
        Command::Dlq {
            action,
            endpoint_url,
            container,
            json,
        } => dlq(action, endpoint_url, container, json).await,
        Command::Sweep {
            endpoint_url,
            older_than,
            json,
        } => {
            let stack = deployed_stack(endpoint_url).await?;
            let report = stack
                .sweeper()
                .sweep(Duration::from_secs(older_than))
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "re-sent {} job(s), recorded {} dead job(s), released {} orphaned slot(s)",
                    report.resent, report.buried, report.slots_released
                );
            }
            Ok(true)
        }
        Command::Run(args) => {
            runner::run(args, kinds::registry(&kinds::Settings::from_env())).await
        }
        Command::Worker(args) => {
            runner::worker(args, kinds::registry(&kinds::Settings::from_env()))
                .await
                .map(|_| true)
        }
        Command::Healthcheck { url } => runner::healthcheck(&url).await,
        Command::Stats { args, target } => {
            let json = target.json;
            let c = client::Client::new(target)?;
            let registry = kinds::registry(&kinds::Settings::from_env());
            stats::run(args, &c, json, &registry).await.map(|_| true)
        }
        Command::Submit {
            target,
            kind,
            input,
            wait,
            thread,
        } => {
            let c = client::Client::new(target)?;
            let input = jobkit::Json::parse(&input).context("--input must be JSON")?;
            let input = match &thread {
                Some(id) => threads::with_thread(&kind, input, id)?,
                None => input,
            };
            let accepted = c.submit(&kind, &input).await?;
            if !wait {
                c.print_accepted(&accepted);
                return Ok(true);
            }
            let job = c.watch(accepted.value.job_id.as_str()).await?;
            Ok(c.print_outcome(&job))
        }
        Command::Status { target, id } => {
            let c = client::Client::new(target)?;
            c.print_job(&c.status(&id).await?);
            Ok(true)
        }
        Command::Watch { target, id } => {
            let c = client::Client::new(target)?;
            let job = c.watch(&id).await?;
            Ok(c.print_outcome(&job))
        }
        Command::List {
            target,
            status,
            kind,
            limit,
            cursor,
        } => {
            let c = client::Client::new(target)?;
            let page = c
                .list(status.as_deref(), kind.as_deref(), limit, cursor.as_deref())
                .await?;
            c.print_list(&page);
            Ok(true)
        }
        Command::Threads { action } => threads::run(action).await,
        Command::Waitpoints { job, target } => {
            let json = target.json;
            let c = client::Client::new(target)?;
            waitpoints::list(&c, job.as_deref(), json).await
        }
        Command::Complete {
            id,
            name,
            url,
            data,
            target,
        } => {
            let to = match (url, id, name) {
                (Some(url), _, _) => waitpoints::CompleteTarget::Url(url),
                (None, Some(id), Some(name)) => waitpoints::CompleteTarget::Job { id, name },
                // clap requires ID and NAME together, or --url.
                _ => anyhow::bail!("give ID NAME, or --url URL"),
            };
            let json = target.json;
            let c = client::Client::new(target)?;
            waitpoints::complete(&c, &to, &data, json).await
        }
        Command::Usage { day, target } => {
            let json = target.json;
            let c = client::Client::new(target)?;
            usage::show(&c, day.as_deref(), json).await
        }
        Command::Cancel { target, id } => {
            let c = client::Client::new(target)?;
            c.print_job(&c.cancel(&id).await?);
            Ok(true)
        }
    }
}

/// The stack named by JOBKIT_TABLE, JOBKIT_QUEUE_URL and JOBKIT_DLQ_URL, at `endpoint_url` or on AWS.
async fn deployed_stack(endpoint_url: Option<String>) -> anyhow::Result<jobkit::Backend> {
    let config = jobkit::Config::from_env()?;
    let sdk = jobkit::aws::sdk_config(endpoint_url.as_deref()).await;
    jobkit::Backend::aws(&sdk, config)
        .await
        .map_err(|e| anyhow::anyhow!(e))
}

async fn dlq(
    action: DlqAction,
    endpoint_url: Option<String>,
    container: bool,
    json: bool,
) -> anyhow::Result<bool> {
    let stack = deployed_stack(endpoint_url).await?;
    let tools = if container {
        stack
            .container_dead_letters()
            .context("JOBKIT_CONTAINER_QUEUE_URL and JOBKIT_CONTAINER_DLQ_URL are not set")?
    } else {
        stack.dead_letters().context("JOBKIT_DLQ_URL is not set")?
    };
    let err = |e: jobkit::error::BoxError| anyhow::anyhow!(e);
    match action {
        DlqAction::List => {
            let entries = tools.list().await.map_err(err)?;
            if json {
                println!("{}", serde_json::to_string(&entries)?);
            } else if entries.is_empty() {
                println!("the dead-letter queue is empty");
            }
            for e in entries.iter().filter(|_| !json) {
                let id = e
                    .job_id
                    .as_ref()
                    .map_or("-".to_owned(), ToString::to_string);
                let error = e
                    .last_error
                    .as_ref()
                    .map_or(String::new(), |x| format!("{}: {}", x.code, x.message));
                let body = e
                    .body
                    .as_deref()
                    .map_or(String::new(), |b| format!("not a job message: {b:?}"));
                println!(
                    "{id} {} attempts={} {error}{body}",
                    e.kind.as_deref().unwrap_or("-"),
                    e.attempts.map_or("-".to_owned(), |a| a.to_string())
                );
            }
        }
        DlqAction::Redrive { jobs } => {
            let only = if jobs.is_empty() {
                None
            } else {
                Some(
                    jobs.iter()
                        .map(|j| jobkit::JobId::parse(j))
                        .collect::<Result<HashSet<_>, _>>()?,
                )
            };
            let report = tools.redrive(only.as_ref()).await.map_err(err)?;
            println!(
                "moved {} message(s), left {} in the DLQ",
                report.moved, report.skipped
            );
        }
        DlqAction::Purge { yes } => {
            anyhow::ensure!(
                yes,
                "purge deletes every message in the DLQ: pass --yes to confirm"
            );
            println!("purged {} message(s)", tools.purge().await.map_err(err)?);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::Cli;

    /// Every command, as `jobctl a b` paths, with clap's built-in `help` left out.
    fn commands(cmd: &clap::Command, path: String, out: &mut Vec<(String, clap::Command)>) {
        out.push((path.clone(), cmd.clone()));
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            commands(sub, format!("{path} {}", sub.get_name()), out);
        }
    }

    fn all() -> Vec<(String, clap::Command)> {
        let mut cmd = Cli::command();
        // Propagates global arguments into the subcommands, as at parse time.
        cmd.build();
        let mut out = Vec::new();
        commands(&cmd, "jobctl".into(), &mut out);
        out
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_argument_has_help_text() {
        let missing: Vec<String> = all()
            .iter()
            .flat_map(|(path, cmd)| {
                cmd.get_arguments()
                    .filter(|a| a.get_help().is_none() && a.get_long_help().is_none())
                    .map(move |a| format!("{path}: {}", a.get_id()))
            })
            .collect();
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    #[test]
    fn client_flags_are_listed_only_by_the_commands_that_call_the_api() {
        let client = ["api_url", "token", "user"];
        for (path, cmd) in all() {
            let has: Vec<&str> = client
                .into_iter()
                .filter(|id| cmd.get_arguments().any(|a| a.get_id() == *id))
                .collect();
            let calls_api = [
                "submit",
                "status",
                "watch",
                "list",
                "cancel",
                "stats",
                "waitpoints",
                "complete",
                "console",
                "usage",
                "threads create",
                "threads show",
            ]
            .iter()
            .any(|c| path == format!("jobctl {c}"));
            if calls_api {
                assert_eq!(has, client, "{path}");
            } else {
                assert!(has.is_empty(), "{path} lists {has:?}");
            }
        }
    }
}
