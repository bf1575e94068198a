//! Logging setup. In Lambda, the runtime's subscriber honours `AWS_LAMBDA_LOG_FORMAT` (JSON, set by
//! template.yaml) and `AWS_LAMBDA_LOG_LEVEL`; elsewhere, human-readable logs filtered by `RUST_LOG`.

use tracing_subscriber::EnvFilter;

/// For the Lambda binaries.
pub fn init_lambda() {
    lambda_runtime::tracing::init_default_subscriber();
}

/// For long-running workers outside Lambda (`jobctl worker`): the same JSON lines as the functions, on
/// stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_json() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// For `jobctl` and other local processes: logs go to stderr so stdout stays for command output, in
/// colour only when stderr is a terminal (a log file or a pipe gets plain text).
pub fn init_local(default_filter: &str) {
    use std::io::IsTerminal as _;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
