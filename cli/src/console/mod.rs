//! The job console: hand-written HTML/CSS/JS modules ([`assets`]) served by `jobctl dev` at `/`, and by
//! `jobctl console`, a local proxy to a deployed API ([`proxy`]) that adds the caller's token, as
//! `kubectl proxy` does: the stack's auth is unchanged and no secret reaches the browser.
//!
//! The page uses only the public API, plus the operator endpoints (`/ops/*`) that exist only here and in
//! `jobctl dev`. It must never get a back door into the store or the queues of its own.

pub mod assets;
mod proxy;

use std::net::SocketAddr;

use anyhow::Context as _;

/// Options of `jobctl console`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
The page only ever talks to this address (its Content-Security-Policy allows nothing else): API calls \
are forwarded to --api-url with `Authorization: Bearer <token>`, and a job's live stream to the events \
function its events_url names (that URL's token is the job's own 15-minute capability, not yours). \
Requests from other sites (another Origin or Host: DNS rebinding, cross-site forms) are refused.

The operator pages (queues, DLQ) need AWS credentials and the stack's env (JOBKIT_TABLE, \
JOBKIT_QUEUE_URL, JOBKIT_DLQ_URL); without them they say what is missing.")]
pub struct ConsoleArgs {
    /// Where to serve the console: a loopback address (the proxy acts with your token).
    #[arg(long, default_value = "127.0.0.1:8181")]
    pub addr: SocketAddr,
    /// The operator pages' SQS, DynamoDB and CloudWatch at this endpoint (an emulator) instead of AWS.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub endpoint_url: Option<String>,
    #[command(flatten)]
    pub target: crate::client::Target,
}

/// Serves the console until Ctrl-C.
pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.addr.ip().is_loopback(),
        "--addr {} is not a loopback address: the console acts with your token, so it serves only this machine",
        args.addr
    );
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.addr))?;
    let local = listener.local_addr()?;
    let upstream = proxy::Upstream::new(&args.target)?;
    let ops = crate::ops::Ops::from_env(args.endpoint_url.as_deref()).await;
    let operators = match &ops {
        Ok(_) => "operator pages on, with your AWS credentials".to_owned(),
        Err(why) => format!("operator pages off: {why}"),
    };
    let app = assets::routes()
        .merge(crate::ops::router(ops))
        .merge(proxy::routes(upstream))
        .layer(axum::middleware::from_fn_with_state(
            local.port(),
            proxy::same_site_only,
        ));
    eprintln!(
        "jobctl console: http://{local}/ ({} KiB of page), forwarding to {}{}. Ctrl-C stops.",
        assets::weight().div_ceil(1024),
        args.target.api_url,
        if args.target.token.is_some() {
            " with your token"
        } else {
            " without a token (--token or JOBKIT_TOKEN)"
        },
    );
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    eprintln!("jobctl console: {operators}");
    crate::serve::serve(listener, app, stop).await;
    Ok(())
}
