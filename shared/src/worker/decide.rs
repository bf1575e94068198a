//! What a finished handler run means for its job: a pure function of the run's outcome, the job and the
//! settings, tested as a table. Applying the decision (the writes, the message's fate) is the worker's.

use std::time::Duration;

use crate::clock::Millis;
use crate::handler::{JobError, Output, Pathway};
use crate::job::{ErrorInfo, Job, MAX_RESULT_BYTES};
use crate::json::Json;
use crate::queue::MAX_VISIBILITY;
use crate::retry::Backoff;

/// What to record for a job whose handler returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// `completed` with this result (and the next stage's jobs, when the handler chose a pathway).
    Complete {
        result: Json,
        warnings: Vec<String>,
        pathway: Option<Pathway>,
    },
    /// `failed`: retrying cannot help.
    Fail(ErrorInfo),
    /// `retrying`: the message comes back after `after`.
    Retry { error: ErrorInfo, after: Duration },
    /// `dead_letter`: the last attempt failed; the message goes on to the DLQ.
    DeadLetter(ErrorInfo),
    /// Yielded before the deadline: continues from its checkpoint in a new message.
    Continue,
    /// Stopped on its owner's request: `cancelled`.
    Cancel,
    /// Reached an unsettled waitpoint: `waiting` on it, the attempt given back.
    Park {
        name: String,
        expires_at: Millis,
        detail: Option<Json>,
    },
}

/// The facts `decide` weighs besides the run itself.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// The message's receive count (it may run ahead of the job's attempts after crashes).
    pub receive_count: u32,
    /// Whether the job's owner asked to cancel it.
    pub cancel_requested: bool,
    pub max_attempts: u32,
    pub backoff: Backoff,
    /// The jitter draw in `[0, 1)` for the backoff (random in the worker, fixed in tests).
    pub jitter: f64,
    /// Whether the run recorded a step or saved a checkpoint: what a continuation resumes from.
    pub progressed: bool,
}

/// Continuations in a row whose runs recorded no step and saved no checkpoint before the job fails
/// `no_progress`: each such continuation starts where the last one did, so a handler that yields again
/// and again that way would loop (and cost an invocation each time) until the job expires. One that
/// records something between yields is never stopped by this.
pub const MAX_IDLE_CONTINUATIONS: u32 = 10;

/// Decides the fate of `job` after its handler returned `ran` (a panic arrives as a retryable error).
pub fn decide(ran: Result<Output, JobError>, job: &Job, f: Facts) -> Decision {
    let error = |code: String, source: &dyn std::fmt::Display, retryable, details| ErrorInfo {
        code,
        message: source.to_string(),
        retryable,
        details,
    };
    match ran {
        // The owner asked it to stop and it did: whatever error it stopped with, it is cancelled.
        Err(JobError::Cancelled) => Decision::Cancel,
        Err(_) if f.cancel_requested => Decision::Cancel,
        Err(JobError::Yield)
            if !f.progressed && job.idle_continuations + 1 >= MAX_IDLE_CONTINUATIONS =>
        {
            Decision::Fail(ErrorInfo::new(
                "no_progress",
                format!(
                    "yielded {MAX_IDLE_CONTINUATIONS} times in a row without recording a step or \
                     saving a checkpoint"
                ),
                false,
            ))
        }
        Err(JobError::Yield) => Decision::Continue,
        Err(JobError::Wait {
            name,
            expires_at,
            detail,
        }) => Decision::Park {
            name,
            expires_at,
            detail,
        },
        Err(JobError::WaitTimedOut { name }) => Decision::Fail(ErrorInfo::new(
            "wait_timed_out",
            format!("waitpoint {name:?} timed out before it was completed"),
            false,
        )),
        Ok(out) if out.result.len() > MAX_RESULT_BYTES => Decision::Fail(ErrorInfo::new(
            "result_too_large",
            format!("result exceeds {MAX_RESULT_BYTES} bytes"),
            false,
        )),
        Ok(Output {
            result,
            warnings,
            pathway,
        }) => Decision::Complete {
            result,
            warnings,
            pathway,
        },
        Err(JobError::Terminal {
            code,
            source,
            details,
        }) => Decision::Fail(error(code, &source, false, details)),
        Err(JobError::Retryable {
            code,
            source,
            details,
            ..
        })
            // The attempt that reaches maxReceiveCount is the last one SQS delivers: the job is
            // dead-lettered now, before SQS moves the message, so its record says why.
            if job.attempts.max(f.receive_count) >= f.max_attempts =>
        {
            Decision::DeadLetter(error(code, &source, true, details))
        }
        Err(JobError::Retryable {
            code,
            source,
            after,
            details,
        }) => {
            let after = after.unwrap_or_else(|| f.backoff.delay_with(job.attempts, f.jitter));
            Decision::Retry {
                error: error(code, &source, true, details),
                after: after.min(MAX_VISIBILITY),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobId, NewJob};
    use serde_json::json;

    fn job(attempts: u32) -> Job {
        let mut j = Job::new(
            NewJob {
                user_id: "u".into(),
                kind: "k".into(),
                input: json!(1).into(),
                max_attempts: 5,
                ttl_secs: 60,
                callback_url: None,
                counted: false,
            },
            0,
        );
        j.attempts = attempts;
        j.job_id = JobId::generate(0);
        j
    }

    fn facts(receive_count: u32, cancel_requested: bool) -> Facts {
        Facts {
            receive_count,
            cancel_requested,
            max_attempts: 5,
            backoff: Backoff::new(Duration::from_secs(2), Duration::from_secs(60)),
            jitter: 0.5,
            progressed: true,
        }
    }

    fn ok(result: serde_json::Value) -> Result<Output, JobError> {
        Ok(Output {
            result: result.into(),
            warnings: vec![],
            pathway: None,
        })
    }

    fn retryable(after: Option<Duration>) -> Result<Output, JobError> {
        Err(JobError::Retryable {
            code: "busy".into(),
            source: "try later".into(),
            after,
            details: None,
        })
    }

    fn info(code: &str, message: &str, retryable: bool) -> ErrorInfo {
        ErrorInfo::new(code, message, retryable)
    }

    #[test]
    fn a_yield_fails_the_job_only_after_enough_idle_continuations_in_a_row() {
        let idle = |n: u32, progressed: bool| {
            let mut j = job(1);
            j.idle_continuations = n;
            decide(
                Err(JobError::Yield),
                &j,
                Facts {
                    progressed,
                    ..facts(1, false)
                },
            )
        };
        assert_eq!(idle(0, false), Decision::Continue);
        assert_eq!(idle(MAX_IDLE_CONTINUATIONS - 2, false), Decision::Continue);
        assert!(matches!(
            idle(MAX_IDLE_CONTINUATIONS - 1, false),
            Decision::Fail(e) if e.code == "no_progress" && !e.retryable
        ));
        // A run that recorded something continues, however many idle ones came before.
        assert_eq!(idle(MAX_IDLE_CONTINUATIONS + 5, true), Decision::Continue);
    }

    #[test]
    fn every_outcome_maps_to_one_decision() {
        let big = json!("x".repeat(MAX_RESULT_BYTES));
        // (case, the run, job attempts, receive count, cancel requested, decision)
        type Case = (
            &'static str,
            Result<Output, JobError>,
            u32,
            u32,
            bool,
            Decision,
        );
        let table: Vec<Case> = vec![
            (
                "a wait parks, even on the last attempt, with its detail",
                Err(JobError::Wait {
                    name: "approve".into(),
                    expires_at: 42,
                    detail: Some(Json::from(serde_json::json!({"tool": "send_note"}))),
                }),
                5,
                5,
                false,
                Decision::Park {
                    name: "approve".into(),
                    expires_at: 42,
                    detail: Some(Json::from(serde_json::json!({"tool": "send_note"}))),
                },
            ),
            (
                "a wait after a cancel request cancels",
                Err(JobError::Wait {
                    name: "approve".into(),
                    expires_at: 42,
                    detail: None,
                }),
                1,
                1,
                true,
                Decision::Cancel,
            ),
            (
                "an unhandled timeout fails at once",
                Err(JobError::WaitTimedOut {
                    name: "approve".into(),
                }),
                1,
                1,
                false,
                Decision::Fail(info(
                    "wait_timed_out",
                    "waitpoint \"approve\" timed out before it was completed",
                    false,
                )),
            ),
            (
                "success",
                ok(json!(1)),
                1,
                1,
                false,
                Decision::Complete {
                    result: json!(1).into(),
                    warnings: vec![],
                    pathway: None,
                },
            ),
            (
                "success despite a cancel request",
                ok(json!(1)),
                1,
                1,
                true,
                Decision::Complete {
                    result: json!(1).into(),
                    warnings: vec![],
                    pathway: None,
                },
            ),
            (
                "oversized result",
                ok(big),
                1,
                1,
                false,
                Decision::Fail(info(
                    "result_too_large",
                    &format!("result exceeds {MAX_RESULT_BYTES} bytes"),
                    false,
                )),
            ),
            (
                "terminal",
                Err(JobError::terminal("bad", "no")),
                1,
                1,
                false,
                Decision::Fail(info("bad", "no", false)),
            ),
            (
                "terminal with details",
                Err(JobError::terminal("bad", "no").with_detail("spent", 3)),
                1,
                1,
                false,
                Decision::Fail(ErrorInfo {
                    details: json!({"spent": 3}).as_object().cloned(),
                    ..info("bad", "no", false)
                }),
            ),
            (
                "last attempt with details",
                Err(JobError::retryable("busy", "try later").with_detail("spent", 4)),
                5,
                5,
                false,
                Decision::DeadLetter(ErrorInfo {
                    details: json!({"spent": 4}).as_object().cloned(),
                    ..info("busy", "try later", true)
                }),
            ),
            (
                "retryable with backoff",
                retryable(None),
                3,
                3,
                false,
                Decision::Retry {
                    error: info("busy", "try later", true),
                    after: Duration::from_secs(4),
                },
            ),
            (
                "retryable with retry_after",
                retryable(Some(Duration::from_secs(7))),
                1,
                1,
                false,
                Decision::Retry {
                    error: info("busy", "try later", true),
                    after: Duration::from_secs(7),
                },
            ),
            (
                "retry_after capped at SQS's maximum",
                retryable(Some(Duration::from_secs(86_400))),
                1,
                1,
                false,
                Decision::Retry {
                    error: info("busy", "try later", true),
                    after: MAX_VISIBILITY,
                },
            ),
            (
                "last attempt",
                retryable(None),
                5,
                5,
                false,
                Decision::DeadLetter(info("busy", "try later", true)),
            ),
            (
                "receives ran ahead of attempts",
                retryable(None),
                2,
                5,
                false,
                Decision::DeadLetter(info("busy", "try later", true)),
            ),
            (
                "yield",
                Err(JobError::Yield),
                1,
                1,
                false,
                Decision::Continue,
            ),
            (
                "cancelled",
                Err(JobError::Cancelled),
                1,
                1,
                false,
                Decision::Cancel,
            ),
            (
                "error after a cancel request",
                Err(JobError::terminal("bad", "no")),
                1,
                1,
                true,
                Decision::Cancel,
            ),
            (
                "yield after a cancel request",
                Err(JobError::Yield),
                1,
                1,
                true,
                Decision::Cancel,
            ),
        ];
        for (name, ran, attempts, receives, cancel, want) in table {
            assert_eq!(
                decide(ran, &job(attempts), facts(receives, cancel)),
                want,
                "{name}"
            );
        }
    }
}
