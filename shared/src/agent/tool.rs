//! Tools: typed async Rust functions whose JSON Schema comes from their input type (schemars), so the
//! schema the model sees and the code that runs cannot drift.
//!
//! A tool's input is whatever the model sends, so a tool must never take the process down: a panic in
//! one is caught and answered to the model as a tool error (not a job failure retried into the DLQ).
//! A stack overflow is an abort that nothing catches: a tool bounds what reaches anything recursive
//! (the demo calculator bounds its expression's length and operators before evalexpr parses it).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::model::ToolSpec;

type Run = dyn Fn(Value) -> BoxFuture<'static, Result<Value, String>> + Send + Sync;

/// How long a call of a tool that needs approval waits for one, unless the tool says otherwise
/// ([`Tool::approval_timeout`]).
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// A tool an agent may call. Cheap to clone.
#[derive(Clone)]
pub struct Tool {
    spec: ToolSpec,
    run: Arc<Run>,
    /// How long a call waits for approval; `None` for a tool that runs without one.
    approval: Option<Duration>,
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
            approval: None,
        }
    }

    /// Every call of this tool waits for a person's approval first: the run parks on waitpoint
    /// `approve-tool-<turn>-<n>` (its `waiting_for.detail` shows the tool and its input) until it is
    /// completed with `{"approve": true}` (the tool runs) or `{"approve": false, "reason": ".."}` (the
    /// model is told the call was refused, and why), for at most [`DEFAULT_APPROVAL_TIMEOUT`].
    pub fn needs_approval(mut self) -> Self {
        self.approval.get_or_insert(DEFAULT_APPROVAL_TIMEOUT);
        self
    }

    /// Needs approval ([`Self::needs_approval`]) within `timeout` (capped by the job's retention); past
    /// it the model is told "approval timed out".
    pub fn approval_timeout(mut self, timeout: Duration) -> Self {
        self.approval = Some(timeout);
        self
    }

    /// How long a call waits for approval, if the tool needs one.
    pub fn approval(&self) -> Option<Duration> {
        self.approval
    }

    pub fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Runs the tool on `input` (the model's arguments). Every failure is an `Err` for the model to
    /// read: arguments that do not decode, the tool's own error, and a panic.
    pub async fn call(&self, input: Value) -> Result<Value, String> {
        // Unwind safety: the closure's state is the tool's own, and a panicked call's output is dropped.
        AssertUnwindSafe((self.run)(input))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let text = crate::error::panic_text(&*panic);
                tracing::warn!(tool = %self.spec.name, panic = text, "a tool panicked");
                Err(format!(
                    "the tool {} failed unexpectedly: {text}",
                    self.spec.name
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, JsonSchema)]
    struct Divide {
        n: i64,
        by: i64,
    }

    #[tokio::test]
    async fn a_panicking_tool_answers_a_tool_error() {
        let divide = Tool::new("divide", "n / by", |d: Divide| async move {
            Ok::<_, String>(d.n / d.by) // panics on 0
        });
        assert_eq!(divide.call(json!({"n": 6, "by": 3})).await, Ok(json!(2)));
        let e = divide.call(json!({"n": 6, "by": 0})).await.unwrap_err();
        assert!(
            e.contains("divide failed unexpectedly") && e.contains("divide by zero"),
            "{e}"
        );
        // The tool still works afterwards.
        assert_eq!(divide.call(json!({"n": 1, "by": 1})).await, Ok(json!(1)));
    }
}
