//! Delivery Lambda, on the deliveries queue: POSTs each finished job's signed webhook event, retrying on
//! the schedule through the message's visibility.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    jobkit::lambda::serve_deliver().await
}
