//! The built-in kinds: `echo` and `sleep`, examples for trying the kit. They are registered by default,
//! so nothing in them may let a caller hurt a deployment: no failure modes (the tests register their own
//! failing kind) and a short `sleep`.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

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

/// `sleep`: waits `ms` milliseconds (at most [`SLEEP_MAX_MS`]), stopping early if cancelled.
///
/// Input: `{"ms": 100}`; `{"ms": 100, "durable": true}` parks for the time instead (a durable sleep).
pub struct Sleep;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SleepInput {
    /// How long to wait, in milliseconds.
    #[serde(default, deserialize_with = "at_most_max")]
    #[schemars(range(max = SLEEP_MAX_MS))]
    pub ms: u64,
    /// Park for the time instead of holding the worker (`ctx.sleep`: the job waits `waiting`, and
    /// the due task wakes it). Its waitpoint is named `sleep`, so completing it ends the sleep early.
    #[serde(default)]
    pub durable: bool,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, JsonSchema)]
pub struct Slept {
    pub slept_ms: u64,
    pub attempt: u32,
}

/// How often a sleeping `sleep` looks for a cancel request.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// How often a sleeping `sleep` reports its progress (each report is a write to the job's record).
const SLEEP_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The longest `sleep` accepted (submit refuses a longer one): every deployment has `sleep`, and a few
/// long ones would hold every worker invocation while other users' jobs wait.
pub const SLEEP_MAX_MS: u64 = 10_000;

/// Part of decoding, so submit refuses a longer sleep before it is accepted. Read as a number, so an
/// integer written `72.0` is taken like `72`: what the published schema (`"type": "integer"`) allows.
fn at_most_max<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let ms = f64::deserialize(d)?;
    if ms.fract() != 0.0 || !(0.0..=SLEEP_MAX_MS as f64).contains(&ms) {
        return Err(serde::de::Error::custom(format_args!(
            "ms must be a whole number from 0 to {SLEEP_MAX_MS}, got {ms}"
        )));
    }
    Ok(ms as u64)
}

impl Handler for Sleep {
    type Input = SleepInput;
    type Output = Slept;
    async fn run(&self, args: SleepInput, ctx: JobContext) -> Result<Slept, JobError> {
        if args.durable {
            ctx.sleep("sleep", Duration::from_millis(args.ms)).await?;
            return Ok(Slept {
                slept_ms: args.ms,
                attempt: ctx.attempt(),
            });
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
        Ok(Slept {
            slept_ms: args.ms,
            attempt: ctx.attempt(),
        })
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

    #[tokio::test]
    async fn a_durable_sleep_parks_on_its_waitpoint_instead_of_holding_the_worker() {
        let parked = run(&Sleep, json!({"ms": 5_000, "durable": true}), 1).await;
        assert!(
            matches!(&parked, Err(JobError::Wait { name, .. }) if name == "sleep"),
            "{parked:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn sleep_sleeps_and_refuses_bad_or_long_input_as_it_decodes() {
        let ok = run(&Sleep, json!({"ms": 5}), 2).await.unwrap();
        assert_eq!(
            ok.decode::<Slept>().unwrap(),
            Slept {
                slept_ms: 5,
                attempt: 2
            }
        );
        assert!(
            Sleep
                .check_input(&json!({"ms": SLEEP_MAX_MS}).into())
                .is_ok()
        );
        for (bad, says) in [
            (json!({"ms": "ten"}), "invalid type"),
            (
                json!({"ms": SLEEP_MAX_MS + 1}),
                "ms must be a whole number from 0 to 10000",
            ),
            (json!({"ms": 1.5}), "ms must be a whole number"),
            (json!({"ms": -1}), "ms must be a whole number"),
            (json!({"nap": 1}), "unknown field `nap`"),
            // The test hooks that were once here are no more.
            (json!({"fail": "panic"}), "unknown field `fail`"),
        ] {
            let e = Sleep.check_input(&bad.clone().into()).unwrap_err();
            assert!(e.to_string().contains(says), "{bad}: {e}");
            let e = run(&Sleep, bad, 1).await.unwrap_err();
            assert!(matches!(e, JobError::Terminal { ref code, .. } if code == "invalid_input"));
        }
        assert_eq!(
            Sleep.schemas().input_schema["properties"]["ms"]["maximum"],
            SLEEP_MAX_MS
        );
    }
}
