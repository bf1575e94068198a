//! The tests' own kinds. The shipped ones (`echo`, `sleep`) have no failure modes and a short `sleep`,
//! so no caller of a deployment can crash a worker or hold it for long; the suites that drive every
//! worker outcome register `flaky` instead, here only.

use std::time::Duration;

use jobkit::prelude::*;

/// `flaky`: waits `ms` milliseconds (no cap; stopping early if cancelled), then succeeds or, when told
/// to, fails: `{"ms": 100, "fail": "retryable" | "terminal" | "panic", "times": 2}`. With `fail`, the
/// first `times` attempts fail that way (every attempt when `times` is absent); later ones succeed.
pub struct Flaky;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlakyInput {
    #[serde(default)]
    pub ms: u64,
    pub fail: Option<FailMode>,
    pub times: Option<u32>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    Retryable,
    Terminal,
    Panic,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Flaked {
    pub slept_ms: u64,
    pub attempt: u32,
}

impl Handler for Flaky {
    type Input = FlakyInput;
    type Output = Flaked;
    async fn run(&self, args: FlakyInput, ctx: JobContext) -> Result<Flaked, JobError> {
        let until = tokio::time::Instant::now() + Duration::from_millis(args.ms);
        loop {
            ctx.check_cancelled()?;
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            tokio::time::sleep(left.min(Duration::from_millis(50))).await;
        }
        let failing = args
            .fail
            .filter(|_| args.times.is_none_or(|t| ctx.attempt() <= t));
        match failing {
            None => Ok(Flaked {
                slept_ms: args.ms,
                attempt: ctx.attempt(),
            }),
            Some(FailMode::Retryable) => Err(JobError::retryable(
                "flaky_failed",
                "told to fail retryably",
            )),
            Some(FailMode::Terminal) => Err(JobError::terminal(
                "flaky_failed",
                "told to fail terminally",
            )),
            Some(FailMode::Panic) => panic!("flaky handler told to panic"),
        }
    }
}

/// The built-ins plus `flaky`.
pub fn test_registry() -> HandlerRegistry {
    let mut r = HandlerRegistry::with_builtins();
    r.register("flaky", Flaky).expect("a valid kind name");
    r
}
