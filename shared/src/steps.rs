//! What a job's handler recorded, as `GET /jobs/{id}/steps` lists it: durable steps (`ctx.step`, an
//! agent's model turns and tool calls) and waitpoints. Pure types: the stores write and list them, the
//! API shows them.
//!
//! A step item carries, besides its result, its [`StepKind`] and when its body started and its result
//! was recorded ([`StepMeta`]): all in the one put that records the result, so listing costs the happy
//! path no write. A list is ordered by when each item was recorded (a step: its result; a waitpoint:
//! when it was opened), then by name: a [`StepPosition`], which a page cursor carries.

use crate::clock::Millis;
use crate::json::Json;
use crate::waitpoint::Waitpoint;

/// What recorded a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    /// `ctx.step` in a handler.
    Step,
    /// One model call of the agent loop (its result is the model's reply).
    ModelTurn,
    /// One tool call of the agent loop (its result is the tool's).
    ToolCall,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Step => "step",
            Self::ModelTurn => "model_turn",
            Self::ToolCall => "tool_call",
        }
    }

    /// A stored kind; an unknown one (written by a newer version) reads as a plain step.
    pub fn parse(s: &str) -> Self {
        [Self::ModelTurn, Self::ToolCall]
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(Self::Step)
    }
}

/// What a step's record holds besides its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepMeta {
    pub kind: StepKind,
    /// When its body started (epoch ms).
    pub started_at: Millis,
    /// When its result was recorded (epoch ms): its place in the list.
    pub recorded_at: Millis,
}

/// A recorded step, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedStep {
    pub name: String,
    pub value: Json,
    /// `None` for a step recorded before steps carried it.
    pub meta: Option<StepMeta>,
}

/// One entry of a job's list.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    Step(RecordedStep),
    Waitpoint(Waitpoint),
}

impl Recorded {
    pub fn name(&self) -> &str {
        match self {
            Self::Step(s) => &s.name,
            Self::Waitpoint(w) => &w.name,
        }
    }
}

/// Where an entry stands in its job's list: when it was recorded, then whether it is a waitpoint, then
/// its name (step and waitpoint names are unique per job, each among its own).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StepPosition {
    pub at: Millis,
    pub waitpoint: bool,
    pub name: String,
}

impl StepPosition {
    /// The position as cursor text: `<at>.<s|w><name>`.
    pub fn to_text(&self) -> String {
        let tag = if self.waitpoint { 'w' } else { 's' };
        format!("{}.{tag}{}", self.at, self.name)
    }

    /// The position [`Self::to_text`] wrote.
    pub fn from_text(text: &str) -> Option<Self> {
        let (at, rest) = text.split_once('.')?;
        let at = at.parse().ok()?;
        let waitpoint = match rest.chars().next()? {
            'w' => true,
            's' => false,
            _ => return None,
        };
        let name = rest[1..].to_owned();
        (!name.is_empty()).then_some(Self {
            at,
            waitpoint,
            name,
        })
    }
}

/// One listed entry and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub position: StepPosition,
    pub entry: Recorded,
}

/// A page request of a job's list, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepQuery {
    pub limit: usize,
    /// Start after this entry (the last one of the previous page).
    pub after: Option<StepPosition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_text_and_order_by_time_then_name() {
        let a = StepPosition {
            at: 5,
            waitpoint: false,
            name: "turn-1.x".into(),
        };
        let b = StepPosition {
            at: 5,
            waitpoint: true,
            name: "approve".into(),
        };
        for p in [&a, &b] {
            assert_eq!(StepPosition::from_text(&p.to_text()).as_ref(), Some(p));
        }
        assert!(a < b);
        for bad in ["", "5", "5.", "5.x", "x.sa", "5.s"] {
            assert_eq!(StepPosition::from_text(bad), None, "{bad}");
        }
        assert_eq!(StepKind::parse("tool_call"), StepKind::ToolCall);
        assert_eq!(StepKind::parse("future"), StepKind::Step);
    }
}
