//! `jobctl`: run jobkit locally, provision local resources, and drive any deployment.

mod client;
mod dev;

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use jobkit::HandlerRegistry;

#[derive(Parser)]
#[command(
    name = "jobctl",
    version,
    about = "Run and drive jobkit: async jobs on AWS serverless"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: client::Target,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole kit locally: API on 127.0.0.1:8080 and a worker, in-memory by default.
    Dev(dev::DevArgs),
    /// Submit a job and print its id (or, with --wait, its outcome).
    Submit {
        /// The job kind (a registered handler, e.g. echo or sleep).
        kind: String,
        /// The job input, as JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Wait until the job finishes; exit non-zero unless it completed.
        #[arg(long)]
        wait: bool,
    },
    /// Show a job.
    Status { id: String },
    /// Follow a job until it finishes; exit non-zero unless it completed.
    Watch { id: String },
    /// Create the queues and table from template.yaml on an emulator (or AWS); print their env vars.
    Bootstrap {
        #[arg(long, env = "AWS_ENDPOINT_URL")]
        endpoint_url: Option<String>,
        /// Resources are named PREFIX-LogicalId.
        #[arg(long, default_value = "jobkit-local")]
        prefix: String,
        /// Template parameter overrides, as Name=Value.
        #[arg(long = "parameter", value_parser = parse_param)]
        parameters: Vec<(String, String)>,
    },
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("expected Name=Value, got {s:?}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    jobkit::telemetry::init_local("info,aws_config=warn,aws_smithy_runtime=warn");
    match run(Cli::parse()).await {
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
        Command::Dev(args) => dev::run(args, HandlerRegistry::with_builtins())
            .await
            .map(|_| true),
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
            println!("export JOBKIT_TABLE={}", config.table);
            println!("export JOBKIT_QUEUE_URL={}", config.queue_url);
            if let Some(dlq) = config.dlq_url {
                println!("export JOBKIT_DLQ_URL={dlq}");
            }
            Ok(true)
        }
        command => {
            let c = client::Client::new(cli.target)?;
            let job = match command {
                Command::Submit { kind, input, wait } => {
                    let input = serde_json::from_str(&input).context("--input must be JSON")?;
                    let accepted = c.submit(&kind, input).await?;
                    if !wait {
                        c.print_job(&accepted);
                        return Ok(true);
                    }
                    let id = accepted["job_id"]
                        .as_str()
                        .context("no job_id in the answer")?
                        .to_owned();
                    c.watch(&id).await?
                }
                Command::Status { id } => {
                    let job = c.status(&id).await?;
                    c.print_job(&job);
                    return Ok(true);
                }
                Command::Watch { id } => c.watch(&id).await?,
                Command::Dev(_) | Command::Bootstrap { .. } => unreachable!("handled above"),
            };
            c.print_job(&job);
            Ok(client::completed(&job))
        }
    }
}
