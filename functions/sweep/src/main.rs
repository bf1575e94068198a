//! Sweep Lambda, on a schedule: re-sends lost messages, records dead runners' jobs, frees orphaned slots.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobkit::lambda::serve_sweep().await
}
