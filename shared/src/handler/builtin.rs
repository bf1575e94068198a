//! The built-in kinds: `echo` and `sleep`, for demos and for the tests that drive every worker outcome.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Handler, JobContext, JobError};
use crate::json::Json;

/// `echo`: returns its input unchanged, to the digit.
pub struct Echo;

impl Handler for Echo {
    type Input = Json;
    type Output = Json;
    async fn run(&self, input: Json, _ctx: JobContext) -> Result<Json, JobError> {
        Ok(input)
    }
}

/// `sleep`: waits `ms` milliseconds (stopping early if cancelled), then succeeds or, when told to, fails.
///
/// Input: `{"ms": 100, "fail": "retryable" | "terminal" | "panic", "times": 2}`. With `fail`, the first
/// `times` attempts fail that way (every attempt when `times` is absent); later attempts succeed.
pub struct Sleep;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepInput {
    #[serde(default)]
    pub ms: u64,
    pub fail: Option<FailMode>,
    pub times: Option<u32>,
}

#[derive(Debug, Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    Retryable,
    Terminal,
    Panic,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Slept {
    pub slept_ms: u64,
    pub attempt: u32,
}

/// How often a sleeping `sleep` looks for a cancel request.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// How often a sleeping `sleep` reports its progress (each report is a write to the job's record).
const SLEEP_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The longest `sleep` accepted: a demo handler should not pin a worker for long.
pub const SLEEP_MAX_MS: u64 = 15 * 60 * 1000;

impl Handler for Sleep {
    type Input = SleepInput;
    type Output = Slept;
    async fn run(&self, args: SleepInput, ctx: JobContext) -> Result<Slept, JobError> {
        if args.ms > SLEEP_MAX_MS {
            return Err(JobError::terminal(
                "invalid_input",
                format!("ms must be at most {SLEEP_MAX_MS}"),
            ));
        }
        // In slices, so a cancel request stops it within one.
        let until = tokio::time::Instant::now() + Duration::from_millis(args.ms);
        let mut reported = tokio::time::Instant::now();
        loop {
            ctx.check_cancelled()?;
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            if reported.elapsed() >= SLEEP_PROGRESS_EVERY {
                reported = tokio::time::Instant::now();
                let slept = args.ms.saturating_sub(left.as_millis() as u64);
                let percent = (slept * 100 / args.ms) as u8;
                ctx.progress(percent, format!("slept {slept} of {} ms", args.ms))
                    .await?;
            }
            tokio::time::sleep(left.min(SLEEP_SLICE)).await;
        }
        let failing = args
            .fail
            .filter(|_| args.times.is_none_or(|t| ctx.attempt() <= t));
        match failing {
            None => Ok(Slept {
                slept_ms: args.ms,
                attempt: ctx.attempt(),
            }),
            Some(FailMode::Retryable) => Err(JobError::retryable(
                "sleep_failed",
                "told to fail retryably",
            )),
            Some(FailMode::Terminal) => Err(JobError::terminal(
                "sleep_failed",
                "told to fail terminally",
            )),
            Some(FailMode::Panic) => panic!("sleep handler told to panic"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::DynHandler;
    use super::*;
    use crate::job::JobId;
    use serde_json::json;

    fn ctx(attempt: u32) -> JobContext {
        JobContext::new(JobId::generate(0), "sleep".into(), attempt, 5, None)
    }

    async fn run(
        h: &dyn DynHandler,
        input: serde_json::Value,
        attempt: u32,
    ) -> Result<Json, JobError> {
        h.run_json(&input.into(), ctx(attempt))
            .await
            .map(|o| o.result)
    }

    #[tokio::test]
    async fn echo_returns_its_input_to_the_digit() {
        let input = Json::parse(r#"{"x":[1,2],"n":12345678901234567890123}"#).unwrap();
        let out = Echo.run_json(&input, ctx(1)).await.unwrap();
        assert_eq!(out.result, input);
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_fails_the_first_n_attempts_then_succeeds() {
        let input = json!({"ms": 5, "fail": "retryable", "times": 2});
        for attempt in 1..=2 {
            let e = run(&Sleep, input.clone(), attempt).await.unwrap_err();
            assert!(matches!(e, JobError::Retryable { .. }));
        }
        let ok = run(&Sleep, input, 3).await.unwrap();
        assert_eq!(ok.decode::<Slept>().unwrap().attempt, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_can_fail_terminally_and_rejects_bad_input() {
        let e = run(&Sleep, json!({"fail": "terminal"}), 1)
            .await
            .unwrap_err();
        assert!(matches!(e, JobError::Terminal { ref code, .. } if code == "sleep_failed"));
        for bad in [
            json!({"ms": "ten"}),
            json!({"ms": SLEEP_MAX_MS + 1}),
            json!({"nap": 1}),
        ] {
            let e = run(&Sleep, bad, 1).await.unwrap_err();
            assert!(matches!(e, JobError::Terminal { ref code, .. } if code == "invalid_input"));
        }
    }
}
