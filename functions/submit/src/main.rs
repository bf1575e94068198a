//! Submit Lambda: `POST /jobs` -> validate, store `queued`, enqueue, answer `202`.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobkit::lambda::serve_submit(kinds::registry(&kinds::Settings::from_env())).await
}
