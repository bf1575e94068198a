//! Worker Lambda: an SQS batch -> claim, run and record each job -> partial batch response.
//! Everything but the wiring lives in the `jobkit` crate.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobkit::lambda::serve_worker(jobkit::HandlerRegistry::with_builtins()).await
}
