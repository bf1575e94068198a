//! The agent loop's side of model usage and the daily token budget (see [`crate::usage`]).
//!
//! - **Counting.** Each model call that answered is added to the job owner's usage of the day with one
//!   write, from inside its turn's durable step, after the call ([`count`]). A turn replayed from its
//!   record (a retry, a continuation, a resumed wait) never counts again. A call that really ran twice
//!   (the process died after the model answered and before the step was recorded) was paid for twice
//!   and is counted twice: the count is of spend, not of turns kept.
//! - **The budget mid-run.** The count answers the owner's total for the day; the turn records it with
//!   its reply ([`Turn::spent`]), so a replay decides exactly as the run that took the turn did. A turn
//!   that leaves the owner at or over the budget is kept and counted, and the run stops after it with
//!   `budget_exceeded` (terminal, not retried; the usage in `error.details.usage`), before any tool it
//!   asked for runs. A turn whose answer is final (no tool calls) completes the run normally even if
//!   it crossed the budget: its tokens are spent already, and throwing its answer away would waste
//!   them; the next submit is refused instead.
//! - A count that cannot be written (the store unavailable) is logged and the turn goes on: the model
//!   call is spent already, and failing the turn would only pay for it again on the retry.

use serde::{Deserialize, Serialize};

use super::model::ModelReply;
use crate::handler::{JobContext, JobError};
use crate::usage::{Counted, Spend};

/// A model turn as its step records it: the reply, and what the owner had spent that day once it was
/// counted. Flattened, so a record is a [`ModelReply`] with one more field, and records written before
/// budgets existed replay as turns with nothing recorded about the budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Turn {
    #[serde(flatten)]
    pub reply: ModelReply,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent: Option<Spent>,
}

/// The owner's tokens of the day after a turn was counted, and the budget it was held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Spent {
    pub day_total: u64,
    pub limit: u64,
}

impl Turn {
    /// The refusal to go on after this turn, when it left the owner at or over the budget.
    pub fn exceeded(&self) -> Option<JobError> {
        let s = self.spent.filter(|s| s.day_total >= s.limit)?;
        Some(JobError::terminal(
            "budget_exceeded",
            format!(
                "the daily token budget is spent: {} of {} tokens used today; the run stopped after this turn",
                s.day_total, s.limit
            ),
        ))
    }
}

/// Counts `reply`'s tokens against `model` in the owner's usage of the day (inside the turn's step,
/// after the call) and records the budget with the turn.
pub(super) async fn count(ctx: &JobContext, model: &str, reply: ModelReply) -> Turn {
    let spend = Spend {
        model: model.to_owned(),
        input_tokens: reply.usage.input_tokens,
        output_tokens: reply.usage.output_tokens,
    };
    crate::observe::model_tokens(model, spend.input_tokens, spend.output_tokens);
    let counted = match ctx.count_usage(&spend).await {
        Ok(counted) => counted,
        Err(e) => {
            tracing::warn!(error = %e, model, "could not count the turn's usage; going on");
            None
        }
    };
    let spent = counted.and_then(|Counted { used, budget, .. }| {
        budget.map(|b| Spent {
            day_total: used,
            limit: b.limit,
        })
    });
    Turn { reply, spent }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Usage;

    fn reply() -> ModelReply {
        ModelReply {
            text: "hi".into(),
            tool_calls: Vec::new(),
            usage: Usage {
                input_tokens: 10,
                output_tokens: 3,
            },
        }
    }

    #[test]
    fn a_turn_records_as_a_reply_and_an_old_record_replays_as_a_turn() {
        let turn = Turn {
            reply: reply(),
            spent: Some(Spent {
                day_total: 13,
                limit: 13,
            }),
        };
        let json = serde_json::to_value(&turn).unwrap();
        assert_eq!(
            serde_json::from_value::<ModelReply>(json.clone()).unwrap(),
            reply()
        );
        assert_eq!(serde_json::from_value::<Turn>(json).unwrap(), turn);
        let old: Turn = serde_json::from_value(serde_json::to_value(reply()).unwrap()).unwrap();
        assert_eq!(old.spent, None);
        assert!(old.exceeded().is_none());
        let e = turn.exceeded().expect("at the budget is over it");
        assert!(matches!(&e, JobError::Terminal { code, .. } if code == "budget_exceeded"));
        let under = Turn {
            spent: Some(Spent {
                day_total: 12,
                limit: 13,
            }),
            ..turn
        };
        assert!(under.exceeded().is_none());
    }
}
