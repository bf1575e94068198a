//! Worker Lambda: an SQS batch -> claim, run and record each job -> partial batch response.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobkit::lambda::serve_worker(kinds::registry(&kinds::Settings::from_env())).await
}
