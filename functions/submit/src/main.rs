//! Submit Lambda: `POST /jobs` -> validate, store `queued`, enqueue, answer `202`.
//! Everything but the wiring lives in the `jobkit` crate.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobkit::lambda::serve_api(jobkit::HandlerRegistry::with_builtins()).await
}
