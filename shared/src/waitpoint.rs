//! Waitpoints: what a parked job waits for. Pure: no I/O, no clock reads (callers pass `now`).
//!
//! A handler's `ctx.wait_for(name, ..)` records a waitpoint — its own small item beside the job's step
//! items, never part of the job record — and parks the job (`running -> waiting`, see
//! [`crate::job::Job::park`]). Completing the waitpoint records its payload with one conditional write
//! (`pending -> completed`: the first completion wins, a second is refused), then queues the job again
//! (`waiting -> queued`, a compare-and-set on the job: exactly one resume wins, whoever tries it — the
//! completion, the worker that finds it completed right after parking, or the sweep repairing a crash).
//! The handler replays its finished steps and `wait_for` returns the recorded payload.

use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::json::Json;

/// The longest waitpoint name (it is part of the item's key, like a step's).
pub const MAX_WAITPOINT_NAME: usize = 200;

/// The largest payload a completion may carry, serialized (a waitpoint is its own item, and its payload
/// becomes the step's result: the same bound as a step's).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Where a waitpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitState {
    /// Recorded; its job waits (or is being parked).
    Pending,
    /// Completed with a payload: final.
    Completed,
    /// Its time passed before anyone completed it: final.
    TimedOut,
}

impl WaitState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Completed => "completed",
            Self::TimedOut => "timed_out",
        }
    }

    /// Parses a stored state.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Completed, Self::TimedOut]
            .into_iter()
            .find(|w| w.as_str() == s)
    }
}

/// One waitpoint of one job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Waitpoint {
    pub name: String,
    pub state: WaitState,
    /// When (epoch ms) it times out.
    pub expires_at: Millis,
    /// The completion's payload, once `completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Json>,
    /// When it was completed or timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<Millis>,
    /// When it was opened (`None` on waitpoints recorded before they carried it): its place in the job's
    /// list of steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<Millis>,
}

/// Why a waitpoint cannot be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Closed {
    /// Someone completed it first; their payload stands.
    #[error("the waitpoint was completed already")]
    Completed,
    /// Its time passed (whether or not the timeout was recorded yet).
    #[error("the waitpoint timed out")]
    TimedOut,
}

impl Waitpoint {
    /// A new, pending waitpoint expiring at `expires_at`.
    pub fn pending(name: &str, expires_at: Millis) -> Self {
        Self {
            name: name.to_owned(),
            state: WaitState::Pending,
            expires_at,
            payload: None,
            settled_at: None,
            opened_at: None,
        }
    }

    /// Opened at `now` (what the worker records).
    pub fn opened(self, now: Millis) -> Self {
        Self {
            opened_at: Some(now),
            ..self
        }
    }

    /// `pending` -> `completed` with `payload`, if its time has not passed at `now`.
    pub fn complete(&self, payload: Json, now: Millis) -> Result<Self, Closed> {
        self.open_at(now)?;
        Ok(Self {
            state: WaitState::Completed,
            payload: Some(payload),
            settled_at: Some(now),
            ..self.clone()
        })
    }

    /// Whether it can still be completed at `now`.
    pub fn open_at(&self, now: Millis) -> Result<(), Closed> {
        match self.state {
            WaitState::Completed => Err(Closed::Completed),
            WaitState::TimedOut => Err(Closed::TimedOut),
            WaitState::Pending if now >= self.expires_at => Err(Closed::TimedOut),
            WaitState::Pending => Ok(()),
        }
    }

    pub fn is_settled(&self) -> bool {
        self.state != WaitState::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T0: Millis = 1_700_000_000_000;

    #[test]
    fn a_pending_waitpoint_is_completed_once_with_its_payload() {
        let wp = Waitpoint::pending("approve", T0 + 1000);
        let done = wp
            .complete(Json::from(json!({"ok": true})), T0 + 1)
            .unwrap();
        assert_eq!(done.state, WaitState::Completed);
        assert_eq!(done.payload, Some(Json::from(json!({"ok": true}))));
        assert_eq!(done.settled_at, Some(T0 + 1));
        assert!(done.is_settled());
        assert_eq!(
            done.complete(Json::from(json!(2)), T0 + 2),
            Err(Closed::Completed)
        );
    }

    #[test]
    fn a_waitpoint_past_its_time_cannot_be_completed() {
        let wp = Waitpoint::pending("approve", T0 + 1000);
        assert_eq!(
            wp.complete(Json::from(json!(1)), T0 + 1000),
            Err(Closed::TimedOut)
        );
        let mut timed_out = wp.clone();
        timed_out.state = WaitState::TimedOut;
        assert_eq!(
            timed_out.complete(Json::from(json!(1)), T0),
            Err(Closed::TimedOut)
        );
    }

    #[test]
    fn states_round_trip() {
        for s in [
            WaitState::Pending,
            WaitState::Completed,
            WaitState::TimedOut,
        ] {
            assert_eq!(WaitState::parse(s.as_str()), Some(s));
        }
        assert_eq!(WaitState::parse("done"), None);
    }
}
