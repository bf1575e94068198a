//! Status Lambda: `GET /jobs`, `GET /jobs/{id}`, `DELETE /jobs/{id}` for the caller's own jobs.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobkit::lambda::serve_status().await
}
