//! Tools: typed async Rust functions whose JSON Schema comes from their input type (schemars), so the
//! schema the model sees and the code that runs cannot drift.

use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::model::ToolSpec;

type Run = dyn Fn(Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync;

/// A tool an agent may call. Cheap to clone.
#[derive(Clone)]
pub struct Tool {
    spec: ToolSpec,
    run: Arc<Run>,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.spec.name)
            .finish()
    }
}

impl Tool {
    /// A tool named `name` running `f` on its decoded input. An `Err` is answered to the model as a tool
    /// error (it may try again differently), never as a job failure.
    pub fn new<I, O, F, Fut>(name: &str, description: &str, f: F) -> Self
    where
        I: JsonSchema + DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
        F: Fn(I) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, String>> + Send + 'static,
    {
        let f = Arc::new(f);
        let run = move |input: Value| -> BoxFuture<'static, Result<Value, String>> {
            let f = f.clone();
            Box::pin(async move {
                let input: I =
                    serde_json::from_value(input).map_err(|e| format!("invalid arguments: {e}"))?;
                let out = f(input).await?;
                serde_json::to_value(out).map_err(|e| format!("unserializable output: {e}"))
            })
        };
        Self {
            spec: ToolSpec {
                name: name.to_owned(),
                description: description.to_owned(),
                schema: serde_json::to_value(schemars::schema_for!(I))
                    .expect("a JSON schema serializes"),
            },
            run: Arc::new(run),
        }
    }

    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub async fn call(&self, input: Value) -> Result<Value, String> {
        (self.run)(input).await
    }
}
