//! The handler API: what a job *kind* runs, how it reports success or each class of failure, and the
//! registry the submit function validates kinds against and the worker dispatches through.
//!
//! A handler declares its input and output types; the kit decodes the job's input into the first (a
//! decode error fails the job at once with `invalid_input` and serde's message) and encodes the second.
//! `serde_json::Value` works for either when a handler wants untyped JSON. Everything a handler author
//! needs is in [`crate::prelude`].

mod builtin;
mod context;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use builtin::{Echo, Sleep};
pub use context::{Attached, Attempt, JobContext, MAX_FAN_OUT, MAX_STEP_BYTES, Pathway, WaitFor};

use crate::clock::Millis;
use crate::error::BoxError;
use crate::job::Lane;
use crate::json::Json;

/// How a handler's run went wrong. A variant exists for each decision the worker takes differently.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The work may succeed later: the job is retried with backoff (or after `after`, when given)
    /// until its attempts run out.
    #[error("{code}: {source}")]
    Retryable {
        code: String,
        #[source]
        source: BoxError,
        after: Option<Duration>,
    },
    /// Retrying cannot help: the job fails now and its message is acknowledged.
    #[error("{code}: {source}")]
    Terminal {
        code: String,
        #[source]
        source: BoxError,
    },
    /// Not a failure: the handler stopped before the invocation's deadline (see
    /// [`JobContext::should_yield`]) and the job continues from its last checkpoint in a new message.
    #[error("yielded before the invocation deadline")]
    Yield,
    /// The handler stopped because its job's cancellation was requested (see
    /// [`JobContext::cancel_requested`]): the job ends `cancelled`.
    #[error("stopped on a cancel request")]
    Cancelled,
    /// Not a failure: the handler reached waitpoint `name` ([`JobContext::wait_for`],
    /// [`JobContext::sleep`]) before it was settled. Propagate it with `?`: the job parks (`waiting`, the
    /// attempt given back, no message, no lease) until the waitpoint is completed or times out, then
    /// runs again and replays its finished steps.
    #[error("waiting for {name:?}")]
    Wait { name: String, expires_at: Millis },
    /// Waitpoint `name` timed out before anyone completed it. Match it to go on without the answer;
    /// left unhandled, the job fails with `wait_timed_out` (not retried: the wait is over).
    #[error("waitpoint {name:?} timed out")]
    WaitTimedOut { name: String },
}

impl JobError {
    pub fn retryable(code: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Retryable {
            code: code.into(),
            source: source.into(),
            after: None,
        }
    }

    pub fn terminal(code: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Terminal {
            code: code.into(),
            source: source.into(),
        }
    }

    /// A retryable error that should not be retried before `after` (e.g. a rate limit's Retry-After).
    pub fn retry_after(
        code: impl Into<String>,
        source: impl Into<BoxError>,
        after: Duration,
    ) -> Self {
        Self::Retryable {
            code: code.into(),
            source: source.into(),
            after: Some(after),
        }
    }
}

/// A successful run as the worker records it: the encoded result, and the non-fatal warnings the handler
/// reported through [`JobContext::warn`].
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub result: Json,
    pub warnings: Vec<String>,
    /// The next stage, if the handler chose one ([`JobContext::then`]).
    pub pathway: Option<Pathway>,
}

/// The work behind one job kind, with typed input and output.
///
/// ```
/// use jobkit::prelude::*;
///
/// #[derive(Deserialize)]
/// struct Add { a: i64, b: i64 }
///
/// struct Adder;
/// impl Handler for Adder {
///     type Input = Add;
///     type Output = i64;
///     async fn run(&self, input: Add, _ctx: JobContext) -> Result<i64, JobError> {
///         Ok(input.a + input.b)
///     }
/// }
/// ```
pub trait Handler: Send + Sync + 'static {
    type Input: DeserializeOwned + Send + 'static;
    type Output: Serialize + Send + 'static;
    fn run(
        &self,
        input: Self::Input,
        ctx: JobContext,
    ) -> impl Future<Output = Result<Self::Output, JobError>> + Send;
}

/// A handler with its types erased: JSON in, [`Output`] out. What the registry stores.
pub trait DynHandler: Send + Sync {
    fn run_json<'a>(
        &'a self,
        input: &'a Json,
        ctx: JobContext,
    ) -> BoxFuture<'a, Result<Output, JobError>>;
}

impl<H: Handler> DynHandler for H {
    fn run_json<'a>(
        &'a self,
        input: &'a Json,
        ctx: JobContext,
    ) -> BoxFuture<'a, Result<Output, JobError>> {
        Box::pin(async move {
            let input: H::Input = input
                .decode()
                .map_err(|e| JobError::terminal("invalid_input", e))?;
            let out = self.run(input, ctx.clone()).await?;
            let result = Json::encode(&out).map_err(|e| JobError::terminal("invalid_output", e))?;
            Ok(Output {
                result,
                warnings: ctx.take_warnings(),
                pathway: ctx.take_pathway(),
            })
        })
    }
}

/// An async closure as a [`Handler`]; its argument type is the input type.
pub struct FnHandler<F, I, O> {
    f: F,
    _types: PhantomData<fn(I) -> O>,
}

impl<F, Fut, I, O> FnHandler<F, I, O>
where
    F: Fn(I, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, JobError>> + Send + 'static,
{
    /// `f` as a handler, e.g. for [`HandlerRegistry::register_container`].
    pub fn new(f: F) -> Self {
        Self {
            f,
            _types: PhantomData,
        }
    }
}

impl<F, Fut, I, O> Handler for FnHandler<F, I, O>
where
    F: Fn(I, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<O, JobError>> + Send + 'static,
    I: DeserializeOwned + Send + 'static,
    O: Serialize + Send + 'static,
{
    type Input = I;
    type Output = O;
    fn run(&self, input: I, ctx: JobContext) -> impl Future<Output = Result<O, JobError>> + Send {
        (self.f)(input, ctx)
    }
}

/// A name that is not a valid job kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "kind must be 1-64 characters of a-z, 0-9, '_', '-' or '.', starting with a letter or digit"
)]
pub struct InvalidKind;

/// Checks a kind name: short, lowercase, URL- and log-safe.
pub fn validate_kind(kind: &str) -> Result<(), InvalidKind> {
    let ok = (1..=64).contains(&kind.len())
        && kind.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || (i > 0 && matches!(b, b'_' | b'-' | b'.'))
        });
    if ok { Ok(()) } else { Err(InvalidKind) }
}

/// Kind -> handler. The submit function rejects kinds not in it; the worker dispatches through it. A
/// project builds it in one function (`functions/kinds`) that every function and `jobctl` call, so they
/// can never disagree. It also says where each kind runs ([`Lane`]): the queue is the registry's choice,
/// never the client's.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: BTreeMap<String, Arc<dyn DynHandler>>,
    /// The kinds only the container worker runs.
    container: BTreeSet<String>,
}

impl fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl HandlerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// The built-in kinds: `echo` and `sleep`.
    pub fn with_builtins() -> Self {
        let mut r = Self::new();
        r.register("echo", Echo).expect("valid kind");
        r.register("sleep", Sleep).expect("valid kind");
        r
    }

    /// Adds (or replaces) the handler of `kind`.
    pub fn register(
        &mut self,
        kind: &str,
        handler: impl Handler,
    ) -> Result<&mut Self, InvalidKind> {
        validate_kind(kind)?;
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self.container.remove(kind);
        Ok(self)
    }

    /// Adds (or replaces) the handler of a *container-only* kind: submit sends its jobs to the container
    /// queue, which only `jobctl worker --container` consumes, so the worker function never runs them
    /// (work that outlasts 15 minutes, or needs a GPU or more memory than a Lambda has).
    pub fn register_container(
        &mut self,
        kind: &str,
        handler: impl Handler,
    ) -> Result<&mut Self, InvalidKind> {
        self.register(kind, handler)?;
        self.container.insert(kind.to_owned());
        Ok(self)
    }

    /// Where jobs of `kind` run.
    pub fn lane(&self, kind: &str) -> Lane {
        if self.container.contains(kind) {
            Lane::Container
        } else {
            Lane::Lambda
        }
    }

    /// Adds an async closure as the handler of `kind`: `|input: MyInput, ctx| async move { ... }`.
    pub fn register_fn<F, Fut, I, O>(&mut self, kind: &str, f: F) -> Result<&mut Self, InvalidKind>
    where
        F: Fn(I, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, JobError>> + Send + 'static,
        I: DeserializeOwned + Send + 'static,
        O: Serialize + Send + 'static,
    {
        self.register(kind, FnHandler::new(f))
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn DynHandler>> {
        self.handlers.get(kind).cloned()
    }

    pub fn contains(&self, kind: &str) -> bool {
        self.handlers.contains_key(kind)
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;
    use serde_json::{Value, json};

    fn ctx() -> JobContext {
        JobContext::new(JobId::generate(0), "double".into(), 1, 5, None)
    }

    #[test]
    fn kinds_are_validated() {
        for ok in ["echo", "a", "agent.run-v2", "x_1"] {
            assert_eq!(validate_kind(ok), Ok(()), "{ok}");
        }
        for bad in ["", "Echo", "-x", "a b", "é", &"a".repeat(65)] {
            assert_eq!(validate_kind(bad), Err(InvalidKind), "{bad}");
        }
    }

    #[test]
    fn the_registry_knows_the_builtins_and_rejects_bad_names() {
        let mut r = HandlerRegistry::with_builtins();
        assert_eq!(r.kinds().collect::<Vec<_>>(), ["echo", "sleep"]);
        assert!(r.register("Bad Kind", Echo).is_err());
        r.register_fn("double", |v: i64, _| async move { Ok(v * 2) })
            .unwrap();
        assert!(r.contains("double"));
    }

    #[test]
    fn kinds_run_on_lambda_unless_registered_container_only() {
        let mut r = HandlerRegistry::with_builtins();
        assert_eq!(r.lane("echo"), Lane::Lambda);
        r.register_container("render", Echo).unwrap();
        assert_eq!(r.lane("render"), Lane::Container);
        assert!(r.contains("render"));
        // Registering the kind again, plainly, brings it back to the worker function.
        r.register("render", Echo).unwrap();
        assert_eq!(r.lane("render"), Lane::Lambda);
        assert!(r.register_container("Bad", Echo).is_err());
        assert_eq!(r.lane("Bad"), Lane::Lambda);
    }

    #[tokio::test]
    async fn typed_closures_decode_their_input_and_encode_their_output() {
        #[derive(serde::Deserialize)]
        struct In {
            n: u128,
        }
        let mut r = HandlerRegistry::new();
        r.register_fn("double", |i: In, _| async move { Ok(i.n * 2) })
            .unwrap();
        let h = r.get("double").unwrap();
        // Wider than f64: exact through decode and encode.
        let input = Json::parse(r#"{"n": 12345678901234567890123}"#).unwrap();
        let out = h.run_json(&input, ctx()).await.unwrap();
        assert_eq!(out.result.get(), "24691357802469135780246");
        let bad = Json::parse(r#"{"m": 1}"#).unwrap();
        let err = h.run_json(&bad, ctx()).await.unwrap_err();
        assert!(
            matches!(&err, JobError::Terminal { code, source } if code == "invalid_input" && source.to_string().contains("missing field `n`")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn untyped_handlers_and_warnings_work() {
        let mut r = HandlerRegistry::new();
        r.register_fn("v", |v: Value, ctx: JobContext| async move {
            ctx.warn("used a fallback");
            Ok(json!({"got": v}))
        })
        .unwrap();
        let out = r
            .get("v")
            .unwrap()
            .run_json(&Json::parse("[1]").unwrap(), ctx())
            .await
            .unwrap();
        assert_eq!(out.result, json!({"got": [1]}));
        assert_eq!(out.warnings, ["used a fallback"]);
    }
}
