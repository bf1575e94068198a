//! Events Lambda, behind a Function URL in response-streaming mode: a job's live stream (SSE).

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobkit::lambda::serve_events_stream().await
}
