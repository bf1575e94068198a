//! Coalescing of partial results ([`super::JobContext::partial`]): each write is a write to the job's
//! record (a write unit per KB of the item), so a handler that publishes many partials a second pays
//! for at most one write per [`PARTIAL_INTERVAL`]; the latest value wins. The pure part lives here;
//! the context does the writing and the timer.

use crate::clock::Millis;
use crate::json::Json;

/// The most a partial result may take, serialized: it is kept on the job's record, which every read
/// of the job and every poll of its stream reads.
pub const MAX_PARTIAL_BYTES: usize = 16 * 1024;

/// At most one partial write per this many milliseconds per attempt.
pub const PARTIAL_INTERVAL: Millis = 1000;

/// What to do with an offered partial.
#[derive(Debug, PartialEq)]
pub(crate) enum Offer {
    /// Write it now.
    Write(Json),
    /// Held as the pending value (replacing any pending one). `flush_in`: schedule a flush this many
    /// milliseconds from now; `None` when one is already scheduled (or the attempt ended).
    Hold { flush_in: Option<Millis> },
}

/// One attempt's partial writes: when the last was made and the value waiting for the next.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    last_write: Option<Millis>,
    pending: Option<Json>,
    flush_scheduled: bool,
    /// The attempt ended: later offers are dropped (its outcome is written, or being written).
    ended: bool,
}

impl Coalescer {
    /// A handler published `value` at `now`.
    pub(crate) fn offer(&mut self, value: Json, now: Millis) -> Offer {
        if self.ended {
            return Offer::Hold { flush_in: None };
        }
        match self.last_write {
            Some(last) if now < last + PARTIAL_INTERVAL => {
                self.pending = Some(value);
                let flush_in = (!self.flush_scheduled).then_some(last + PARTIAL_INTERVAL - now);
                self.flush_scheduled = true;
                Offer::Hold { flush_in }
            }
            _ => {
                // A write now supersedes whatever was pending.
                self.pending = None;
                self.last_write = Some(now);
                Offer::Write(value)
            }
        }
    }

    /// The scheduled flush is due at `now`: the pending value to write, if any is left.
    pub(crate) fn due(&mut self, now: Millis) -> Option<Json> {
        self.flush_scheduled = false;
        let value = self.pending.take()?;
        self.last_write = Some(now);
        Some(value)
    }

    /// The attempt's handler returned: the pending value, if any (the caller writes it, or drops it
    /// when a result supersedes it). Nothing is published after this.
    pub(crate) fn end(&mut self) -> Option<Json> {
        self.ended = true;
        self.flush_scheduled = false;
        self.pending.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(n: u32) -> Json {
        Json::from(serde_json::json!(n))
    }

    #[test]
    fn the_first_partial_is_written_at_once_and_a_burst_within_the_interval_keeps_only_the_latest()
    {
        let mut c = Coalescer::default();
        assert_eq!(c.offer(j(1), 10_000), Offer::Write(j(1)));
        // The next two within the second: held, one flush scheduled for the second's end.
        assert_eq!(
            c.offer(j(2), 10_200),
            Offer::Hold {
                flush_in: Some(800)
            }
        );
        assert_eq!(c.offer(j(3), 10_500), Offer::Hold { flush_in: None });
        // The flush writes the latest only, and the interval starts again from it.
        assert_eq!(c.due(11_000), Some(j(3)));
        assert_eq!(
            c.offer(j(4), 11_400),
            Offer::Hold {
                flush_in: Some(600)
            }
        );
        assert_eq!(c.due(12_000), Some(j(4)));
        assert_eq!(c.due(12_000), None, "nothing pending: no write");
    }

    #[test]
    fn a_partial_after_the_interval_is_written_at_once_and_supersedes_a_pending_one() {
        let mut c = Coalescer::default();
        assert_eq!(c.offer(j(1), 0), Offer::Write(j(1)));
        assert!(matches!(c.offer(j(2), 100), Offer::Hold { .. }));
        // The flush timer is late (a busy runtime): the next offer is written, and the flush finds nothing.
        assert_eq!(c.offer(j(3), 1_500), Offer::Write(j(3)));
        assert_eq!(c.due(1_600), None);
    }

    #[test]
    fn the_end_of_the_attempt_hands_over_the_pending_value_and_stops_publishing() {
        let mut c = Coalescer::default();
        assert_eq!(c.end(), None);
        let mut c = Coalescer::default();
        assert_eq!(c.offer(j(1), 0), Offer::Write(j(1)));
        assert!(matches!(c.offer(j(2), 100), Offer::Hold { .. }));
        assert_eq!(c.end(), Some(j(2)));
        assert_eq!(c.offer(j(3), 5_000), Offer::Hold { flush_in: None });
        assert_eq!(c.due(5_000), None);
    }
}
