//! The handler API: what a job *kind* runs, how it reports success or each class of failure, and the
//! registry the submit function validates kinds against and the worker dispatches through.
//!
//! A handler declares its input and output types; submit decodes each job's input into the first before
//! it accepts the job (`422 invalid_input` with serde's message, nothing written), the worker decodes it
//! again to run it, and the kit encodes the second. Both types derive `JsonSchema` too: `GET /kinds`
//! publishes each kind's schemas, so clients can see what a kind takes without reading its code.
//! `serde_json::Value` (or [`Json`]) works for either when a handler wants untyped JSON. Everything a
//! handler author needs is in [`crate::prelude`].

mod builtin;
mod context;
mod partial;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

pub use builtin::{Echo, Sleep};
pub use context::{
    Attached, Attempt, JobContext, MAX_FAN_OUT, MAX_STEP_BYTES, MAX_WAIT_DETAIL_BYTES, Pathway,
    WaitFor,
};
pub use partial::{MAX_PARTIAL_BYTES, PARTIAL_INTERVAL};

use crate::clock::Millis;
use crate::error::BoxError;
use crate::job::Lane;
use crate::json::Json;
use crate::limits::{Key, KindLimits, Limits, LimitsConfig, LimitsError, RateLimit};

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
        /// Facts for the job's owner, recorded with the error ([`Self::with_detail`]).
        details: Option<Map<String, Value>>,
    },
    /// Retrying cannot help: the job fails now and its message is acknowledged.
    #[error("{code}: {source}")]
    Terminal {
        code: String,
        #[source]
        source: BoxError,
        /// Facts for the job's owner, recorded with the error ([`Self::with_detail`]).
        details: Option<Map<String, Value>>,
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
    Wait {
        name: String,
        expires_at: Millis,
        /// What the handler said about the wait ([`WaitFor::detail`]), shown in `waiting_for.detail`.
        detail: Option<Json>,
    },
    /// Waitpoint `name` timed out before anyone completed it. Match it to go on without the answer;
    /// left unhandled, the job fails with `wait_timed_out` (not retried: the wait is over).
    #[error("waitpoint {name:?} timed out")]
    WaitTimedOut { name: String },
}

/// The most [`JobError::with_detail`] keeps: the details' JSON size (bytes) and the depth a fact nests.
/// They are stored in the job's item (whose maps DynamoDB nests at most 32 deep) and shown with every
/// read.
pub const MAX_ERROR_DETAILS_BYTES: usize = 4 * 1024;
pub const MAX_ERROR_DETAIL_DEPTH: usize = 8;

impl JobError {
    pub fn retryable(code: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Retryable {
            code: code.into(),
            source: source.into(),
            after: None,
            details: None,
        }
    }

    pub fn terminal(code: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Terminal {
            code: code.into(),
            source: source.into(),
            details: None,
        }
    }

    /// Attaches a structured fact to a failure (what an agent spent before it failed, say): the job's
    /// `error.details` shows each one under its `name`. A fact that would take the details over
    /// [`MAX_ERROR_DETAILS_BYTES`], or nests deeper than [`MAX_ERROR_DETAIL_DEPTH`], is replaced by a
    /// note saying so. `Yield`, `Cancelled` and the waits carry none.
    #[must_use]
    pub fn with_detail(mut self, name: &str, fact: impl Serialize) -> Self {
        if let Self::Retryable { details, .. } | Self::Terminal { details, .. } = &mut self {
            let details = details.get_or_insert_with(Map::new);
            let fact = serde_json::to_value(fact)
                .unwrap_or_else(|e| Value::String(format!("left out: it does not serialize: {e}")));
            details.insert(name.to_owned(), fact);
            let bytes = Value::Object(details.clone()).to_string().len();
            let depth = depth(&details[name]);
            if bytes > MAX_ERROR_DETAILS_BYTES || depth > MAX_ERROR_DETAIL_DEPTH {
                details[name] = Value::String(format!(
                    "left out: the details would take {bytes} bytes and this fact nests {depth} \
                     deep; at most {MAX_ERROR_DETAILS_BYTES} bytes and {MAX_ERROR_DETAIL_DEPTH} \
                     levels are kept"
                ));
            }
        }
        self
    }

    /// The facts attached with [`Self::with_detail`].
    pub fn details(&self) -> Option<&Map<String, Value>> {
        match self {
            Self::Retryable { details, .. } | Self::Terminal { details, .. } => details.as_ref(),
            Self::Yield | Self::Cancelled | Self::Wait { .. } | Self::WaitTimedOut { .. } => None,
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
            details: None,
        }
    }
}

/// How deep `v` nests (a scalar is 0), walked without recursion.
fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0)];
    while let Some((v, d)) = stack.pop() {
        deepest = deepest.max(d);
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|i| (i, d + 1))),
            Value::Object(fields) => stack.extend(fields.values().map(|i| (i, d + 1))),
            _ => {}
        }
    }
    deepest
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
/// #[derive(Deserialize, JsonSchema)]
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
    /// What a job of this kind takes: submit refuses a job whose input does not decode into it, and
    /// `GET /kinds` shows its schema.
    type Input: DeserializeOwned + JsonSchema + Send + 'static;
    /// What a job of this kind returns, as `GET /kinds` shows it.
    type Output: Serialize + JsonSchema + Send + 'static;
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

    /// Whether `input` decodes into the handler's input type (the decoded value is dropped): what
    /// submit checks before it accepts a job, with the same decode [`Self::run_json`] does.
    fn check_input(&self, input: &Json) -> Result<(), serde_json::Error>;

    /// The JSON Schemas of the input (as it is read) and of the output (as it is written).
    fn schemas(&self) -> KindSchemas;
}

/// A kind's input and output JSON Schemas (draft 2020-12), from its types.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindSchemas {
    pub input_schema: serde_json::Value,
    pub output_schema: serde_json::Value,
}

fn schema_of<T: JsonSchema>(settings: SchemaSettings) -> serde_json::Value {
    SchemaGenerator::new(settings)
        .into_root_schema_for::<T>()
        .to_value()
}

impl<H: Handler> DynHandler for H {
    fn check_input(&self, input: &Json) -> Result<(), serde_json::Error> {
        input.decode::<H::Input>().map(drop)
    }

    fn schemas(&self) -> KindSchemas {
        KindSchemas {
            input_schema: schema_of::<H::Input>(SchemaSettings::draft2020_12().for_deserialize()),
            output_schema: schema_of::<H::Output>(SchemaSettings::draft2020_12().for_serialize()),
        }
    }

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
    I: DeserializeOwned + JsonSchema + Send + 'static,
    O: Serialize + JsonSchema + Send + 'static,
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
    /// Kinds' limits as registered in code (see [`crate::limits`]); configuration overrides them.
    limits: KindLimits,
    /// How a kind's jobs name their model, for limits keyed by [`Key::Model`] (default: the input's
    /// `/model`).
    models: BTreeMap<String, ModelOf>,
}

/// How a job's input names its model.
pub type ModelOf = Arc<dyn Fn(&Json) -> Option<String> + Send + Sync>;

/// A kind just registered: its limits are declared on it, and it leads back to the registry (so
/// registrations chain).
pub struct Registration<'a> {
    registry: &'a mut HandlerRegistry,
    kind: String,
}

impl Registration<'_> {
    fn limits(&mut self) -> &mut Limits {
        self.registry.limits.entry(self.kind.clone()).or_default()
    }

    /// At most `n` jobs of this kind run at once, over every worker instance.
    pub fn concurrency(mut self, n: u32) -> Self {
        self.limits().concurrency = Some(n.max(1));
        self
    }

    /// And at most `n` at once per value of `key`.
    pub fn concurrency_key(mut self, key: Key, n: u32) -> Self {
        let keys = &mut self.limits().concurrency_keys;
        keys.retain(|(k, _)| *k != key);
        keys.push((key, n.max(1)));
        self
    }

    /// Jobs of this kind start no faster than `limit`.
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.limits().rate_limits.push(limit);
        self
    }

    /// How this kind's input names its model ([`Key::Model`]).
    pub fn model_from(self, f: impl Fn(&Json) -> Option<String> + Send + Sync + 'static) -> Self {
        self.registry.models.insert(self.kind.clone(), Arc::new(f));
        self
    }
}

impl std::ops::Deref for Registration<'_> {
    type Target = HandlerRegistry;
    fn deref(&self) -> &HandlerRegistry {
        self.registry
    }
}

impl std::ops::DerefMut for Registration<'_> {
    fn deref_mut(&mut self) -> &mut HandlerRegistry {
        self.registry
    }
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

    /// Adds (or replaces) the handler of `kind`; its limits are declared on the answer:
    /// `registry.register("summarize", Summarize)?.concurrency(20)`.
    pub fn register(
        &mut self,
        kind: &str,
        handler: impl Handler,
    ) -> Result<Registration<'_>, InvalidKind> {
        validate_kind(kind)?;
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self.container.remove(kind);
        Ok(Registration {
            registry: self,
            kind: kind.to_owned(),
        })
    }

    /// Adds (or replaces) the handler of a *container-only* kind: submit sends its jobs to the container
    /// queue, which only `jobctl worker --container` consumes, so the worker function never runs them
    /// (work that outlasts 15 minutes, or needs a GPU or more memory than a Lambda has).
    pub fn register_container(
        &mut self,
        kind: &str,
        handler: impl Handler,
    ) -> Result<Registration<'_>, InvalidKind> {
        self.register(kind, handler)?;
        self.container.insert(kind.to_owned());
        Ok(Registration {
            registry: self,
            kind: kind.to_owned(),
        })
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
    pub fn register_fn<F, Fut, I, O>(
        &mut self,
        kind: &str,
        f: F,
    ) -> Result<Registration<'_>, InvalidKind>
    where
        F: Fn(I, JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<O, JobError>> + Send + 'static,
        I: DeserializeOwned + JsonSchema + Send + 'static,
        O: Serialize + JsonSchema + Send + 'static,
    {
        self.register(kind, FnHandler::new(f))
    }

    /// Refuses configured limits naming a kind not registered (a typo would limit nothing): checked
    /// once at start, so such a configuration fails the deployment.
    pub fn check_limits(&self, config: &LimitsConfig) -> Result<(), LimitsError> {
        config.check_kinds(|k| self.contains(k))
    }

    /// Applies configuration's limits over the code's: each field it sets wins.
    pub fn configure_limits(&mut self, config: &LimitsConfig) {
        for (kind, over) in config.kinds() {
            if self.contains(kind) {
                let code = self.limits.get(kind).cloned().unwrap_or_default();
                self.limits.insert(kind.to_owned(), over.over(&code));
            }
        }
    }

    /// `kind`'s limits (`None`: it has none, and costs nothing more to run).
    pub fn limits(&self, kind: &str) -> Option<&Limits> {
        self.limits.get(kind).filter(|l| !l.is_empty())
    }

    /// Every kind's limits (`jobctl stats`).
    pub fn all_limits(&self) -> impl Iterator<Item = (&str, &Limits)> {
        self.limits
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(k, l)| (k.as_str(), l))
    }

    /// The model a job of `kind` with `input` calls, for [`Key::Model`].
    pub fn model_of(&self, kind: &str, input: &Json) -> Option<String> {
        match self.models.get(kind) {
            Some(f) => f(input),
            None => input
                .to_value()
                .pointer("/model")
                .and_then(|m| m.as_str())
                .map(str::to_owned),
        }
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

    /// Checks `input` against `kind`'s input type; `None` when no such kind is registered.
    pub fn check_input(&self, kind: &str, input: &Json) -> Option<Result<(), serde_json::Error>> {
        self.handlers.get(kind).map(|h| h.check_input(input))
    }

    /// Every kind with where it runs and its schemas, by name: what `GET /kinds` answers.
    pub fn describe(&self) -> Vec<KindInfo> {
        self.handlers
            .iter()
            .map(|(kind, h)| KindInfo {
                kind: kind.clone(),
                lane: self.lane(kind),
                schemas: h.schemas(),
            })
            .collect()
    }
}

/// One registered kind as `GET /kinds` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindInfo {
    pub kind: String,
    /// `lambda` (the worker function) or `container` (`jobctl worker --container` only).
    pub lane: Lane,
    #[serde(flatten)]
    pub schemas: KindSchemas,
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
    fn error_details_are_named_facts_bounded_in_size_and_depth() {
        let e = JobError::terminal("max_turns_exceeded", "no answer")
            .with_detail("usage", json!({"input_tokens": u64::MAX}))
            .with_detail("turns", 4);
        assert_eq!(
            Value::Object(e.details().unwrap().clone()),
            json!({"usage": {"input_tokens": u64::MAX}, "turns": 4})
        );
        let big = JobError::retryable("x", "y").with_detail("blob", "z".repeat(5_000));
        let note = big.details().unwrap()["blob"].as_str().unwrap();
        assert!(note.starts_with("left out") && note.len() < 300, "{note}");
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!([deep]);
        }
        let deep = JobError::terminal("x", "y").with_detail("deep", deep);
        assert!(
            deep.details().unwrap()["deep"]
                .as_str()
                .unwrap()
                .contains("nests 20 deep")
        );
        // Only failures carry facts.
        assert!(
            JobError::Cancelled
                .with_detail("usage", 1)
                .details()
                .is_none()
        );
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
        #[derive(serde::Deserialize, JsonSchema)]
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
            matches!(&err, JobError::Terminal { code, source, .. } if code == "invalid_input" && source.to_string().contains("missing field `n`")),
            "{err}"
        );
    }

    #[test]
    fn inputs_are_checked_against_the_kinds_type_and_schemas_describe_both_sides() {
        #[derive(serde::Deserialize, JsonSchema)]
        struct Greet {
            /// Who to greet.
            text: String,
        }
        #[derive(Serialize, JsonSchema)]
        struct Greeting {
            greeting: String,
        }
        let mut r = HandlerRegistry::with_builtins();
        r.register_fn("greet", |g: Greet, _| async move {
            Ok(Greeting {
                greeting: format!("hello {}", g.text),
            })
        })
        .unwrap();
        r.register_fn("any", |v: Value, _| async move { Ok(v) })
            .unwrap();
        let check = |kind: &str, input: &str| r.check_input(kind, &Json::parse(input).unwrap());
        let e = check("greet", r#"{"text": 42}"#).unwrap().unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid type: integer `42`, expected a string at line 1 column 10"
        );
        assert!(check("greet", r#"{"text": "you"}"#).unwrap().is_ok());
        assert!(check("any", r#"[1, {"x": null}]"#).unwrap().is_ok());
        assert!(check("echo", "42").unwrap().is_ok());
        assert!(check("nope", "{}").is_none());

        let kinds = r.describe();
        let names: Vec<&str> = kinds.iter().map(|k| k.kind.as_str()).collect();
        assert_eq!(names, ["any", "echo", "greet", "sleep"]);
        let greet = &kinds[2].schemas;
        assert_eq!(greet.input_schema["properties"]["text"]["type"], "string");
        assert_eq!(
            greet.input_schema["properties"]["text"]["description"],
            "Who to greet."
        );
        assert_eq!(greet.input_schema["required"], json!(["text"]));
        assert_eq!(
            greet.output_schema["properties"]["greeting"]["type"],
            "string"
        );
        // Untyped JSON: any document, both ways (a schema with no constraint).
        let unconstrained = |s: &Value| {
            s.as_object()
                .unwrap()
                .keys()
                .all(|k| k == "$schema" || k == "title")
        };
        assert!(
            unconstrained(&kinds[0].schemas.input_schema),
            "{:?}",
            kinds[0]
        );
        assert!(
            unconstrained(&kinds[1].schemas.output_schema),
            "{:?}",
            kinds[1]
        );
        assert_eq!(kinds[1].lane, Lane::Lambda);
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
