//! The worker's side of kind-level limits (see [`crate::limits`]): before a job of a limited kind is
//! claimed, it takes a hold on each concurrency limit and a token of each rate limit, or is deferred;
//! after its attempt ends (any outcome), its holds are given back. A kind without limits never gets
//! here: it costs what it always did. A thread's run does (its message says so, whatever its kind):
//! it is deferred while the run before it in its thread has not finished, and holds a concurrency
//! slot of one keyed on its thread while it runs (see [`crate::thread`]).
//!
//! Taken before the claim, not after, so a deferral neither uses an attempt nor writes the job a
//! second time to give the claim back: it costs one read of the job, the refused write (none for a
//! rate limit this instance already knows is exhausted), the note `GET /jobs/{id}` shows, and one
//! SendMessage — the message is sent again with a delay and this one acknowledged, because SQS
//! counts every receive towards the DLQ and a visibility change would let deferrals dead-letter it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{Graded, Outcome, Worker};
use crate::clock::Millis;
use crate::job::{DeferReason, Job, ThreadRun};
use crate::limits::{Counter, Deferred, Gate, Hold, Limits, Take};
use crate::observe;
use crate::queue::{Delivery, Invocation, JobMessage, Verdict};
use crate::slots::Ledger;
use crate::thread::RunEnd;
use crate::trace::TraceContext;

/// How long a hold lasts when the invocation has no deadline (`jobctl dev`, the container worker):
/// a crashed worker's hold frees itself after this long.
pub const HOLD_LEASE: Duration = Duration::from_secs(15 * 60);

/// A hold outlives its invocation's deadline by this much (the terminal write and the give-back
/// happen just before it).
const HOLD_GRACE: Millis = 10_000;

/// The longest deferral: SQS's longest message delay.
const MAX_DEFER: Duration = Duration::from_secs(900);

/// The holds one attempt took, given back when it ends (renewed meanwhile when they would lapse),
/// and how the run before a thread's run ended, as the gate read it.
#[derive(Debug, Default)]
pub(super) struct Held {
    holds: Mutex<Vec<HeldHold>>,
    pub(super) before: Option<RunEnd>,
}

/// A hold taken: its ledger, page, member, and whether it follows the job's lease (a thread's hold:
/// two leases long, renewed by every heartbeat) rather than the invocation.
type HeldHold = (Ledger, u32, Hold, bool);

impl Held {
    fn push(&self, hold: HeldHold) {
        self.lock().push(hold);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<HeldHold>> {
        self.holds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What each kind's handler took lately in this instance: the guess of when a slot frees.
#[derive(Debug, Default)]
pub(super) struct Runtimes {
    by_kind: Mutex<HashMap<String, Duration>>,
}

impl Runtimes {
    /// Records a run (a moving average: recent runs weigh more).
    pub(super) fn ran(&self, kind: &str, took: Duration) {
        let mut m = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        let avg = m.entry(kind.to_owned()).or_insert(took);
        *avg = avg.mul_f64(0.8) + took.mul_f64(0.2);
    }

    fn typical(&self, kind: &str) -> Option<Duration> {
        let m = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        m.get(kind).copied()
    }
}

/// How long a job waits for a concurrency slot: about one typical run of its kind (5 s when none
/// was seen yet), between 1 s and a minute.
fn slot_wait(typical: Option<Duration>) -> Duration {
    typical
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// `wait` spread by `jitter` (0..1) over ±25 %, so deferred jobs do not all come back at once, and
/// never sooner than a second (the queue's delays are whole seconds).
pub(super) fn jittered(wait: Duration, jitter: f64) -> Duration {
    wait.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
        .clamp(Duration::from_secs(1), MAX_DEFER)
}

/// A thread's runs hold a concurrency slot of one, keyed on the thread, while they run. The scope
/// starts with a NUL, which no kind's name does, so it never names a kind's ledger.
const THREAD_LABEL: &str = "thread";

fn thread_gate(run: &ThreadRun) -> Gate {
    Gate {
        counter: Counter::Concurrency {
            ledger: Ledger::limit(&format!("\0thread\0{}", run.thread)),
            cap: 1,
        },
        label: THREAD_LABEL.into(),
    }
}

/// Whether a thread's run may start.
enum Turn {
    /// With how the run before it ended (none: it has no run before it, or that one is gone).
    Go(Option<RunEnd>),
    /// The run before it is queued or running.
    After,
    /// The run before it is parked (an approval, a sleep).
    AfterWait,
}

/// How long a run waits behind a parked one before it looks again.
const PARKED_BEFORE: Duration = Duration::from_secs(300);

/// What the gate decided.
pub(super) enum Admit {
    /// Claim it, holding these (none: no limit applies, or the claim will say why it cannot run).
    Go(Held),
    /// Not now: graded already.
    Stop(Graded),
}

impl Worker {
    /// Takes what `limits` ask of the job of `msg`, or defers it.
    pub(super) async fn admit(
        &self,
        limits: Option<&Limits>,
        msg: &JobMessage,
        d: &Delivery,
        inv: &Invocation,
    ) -> Admit {
        let now = self.clock.now();
        let job = match self.store.get(&msg.job_id).await {
            Ok(Some(job)) => job,
            // The claim finds out the same and grades it.
            Ok(None) => return Admit::Go(Held::default()),
            Err(e) => {
                tracing::warn!(error = %e, "could not read a limited job");
                return Admit::Stop((Outcome::Unavailable, self.backoff(d.receive_count)));
            }
        };
        if !job.claimable(now) || job.cancel_requested {
            // Running elsewhere, finished, parked or cancelled: the claim grades it; it runs nothing.
            return Admit::Go(Held::default());
        }
        let mut before = None;
        if let Some(run) = &job.thread {
            match self.turn_of(run, now).await {
                Ok(Turn::Go(end)) => before = end,
                Ok(turn) => {
                    let wait = match turn {
                        // It may wait for a person for hours: looked at again every few minutes.
                        Turn::AfterWait => PARKED_BEFORE,
                        _ => slot_wait(self.runtimes.typical(&job.kind)),
                    };
                    return Admit::Stop(
                        self.defer(&job, DeferReason::Thread, THREAD_LABEL, wait, d)
                            .await,
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not read a thread run's predecessor");
                    return Admit::Stop((Outcome::Unavailable, self.backoff(d.receive_count)));
                }
            }
        }
        let model = |input: &crate::json::Json| self.registry.model_of(&job.kind, input);
        let hold = Hold {
            job_id: job.job_id.clone(),
            until: inv
                .deadline
                .map_or(now + HOLD_LEASE.as_millis() as Millis, |d| d + HOLD_GRACE),
        };
        let held = Held {
            before,
            ..Held::default()
        };
        let mut gates = limits.map_or_else(Vec::new, |l| l.gates(&job.kind, &job, &model));
        if let Some(run) = &job.thread {
            gates.insert(0, thread_gate(run));
        }
        // A thread's hold follows the run's lease: a killed worker's lapses about when its job can
        // be claimed again, and its retry (the same run) is not kept waiting for the invocation's
        // end. Two runs of one thread still never overlap: a run whose lease is lost stops.
        let lease_bound = Hold {
            job_id: job.job_id.clone(),
            until: now + 2 * self.settings.lease.as_millis() as Millis,
        };
        for gate in gates {
            let follows = gate.label == THREAD_LABEL && job.thread.is_some();
            let hold = if follows { &lease_bound } else { &hold };
            let wait = match &gate.counter {
                Counter::Concurrency { ledger, cap } => {
                    match self.store.hold(ledger, *cap, hold, now).await {
                        Ok(Some(page)) => {
                            held.push((ledger.clone(), page, hold.clone(), follows));
                            continue;
                        }
                        Ok(None) => slot_wait(self.runtimes.typical(&job.kind)),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not take a concurrency hold");
                            self.give_back(held).await;
                            return Admit::Stop((
                                Outcome::Unavailable,
                                self.backoff(d.receive_count),
                            ));
                        }
                    }
                }
                Counter::Rate { bucket, rate } => {
                    match self.store.take_tokens(bucket, rate, 1, now).await {
                        Ok(Take::Taken) => continue,
                        Ok(Take::Wait(w)) => w,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not take a rate token");
                            self.give_back(held).await;
                            return Admit::Stop((
                                Outcome::Unavailable,
                                self.backoff(d.receive_count),
                            ));
                        }
                    }
                }
            };
            self.give_back(held).await;
            return Admit::Stop(self.defer(&job, gate.reason(), &gate.label, wait, d).await);
        }
        Admit::Go(held)
    }

    /// Moves the end of every hold of `held` that would lapse within half a [`HOLD_LEASE`] one
    /// lease on (from the heartbeat): a job without a deadline (the container worker) may run for
    /// hours, and its hold must not lapse while it does. Lambda's holds end after the invocation's
    /// deadline and never need it. Best effort: a failed renewal is tried at the next heartbeat.
    /// A hold that follows the job's lease (a thread's) is renewed, deadline or not, once less than
    /// a lease is left (about every third heartbeat), to two leases on.
    pub(super) async fn renew_holds(&self, held: &Held, no_deadline: bool) {
        let now = self.clock.now();
        let lease = HOLD_LEASE.as_millis() as Millis;
        let job_lease = self.settings.lease.as_millis() as Millis;
        let due: Vec<(usize, Ledger, u32, Hold, Millis)> = held
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, (l, p, h, follows))| {
                let until = match follows {
                    true if h.until - now < job_lease => now + 2 * job_lease,
                    false if no_deadline && h.until - now < lease / 2 => now + lease,
                    _ => return None,
                };
                Some((i, l.clone(), *p, h.clone(), until))
            })
            .collect();
        for (i, ledger, page, old, until) in due {
            let new = Hold {
                job_id: old.job_id.clone(),
                until,
            };
            match self.store.renew_hold(&ledger, page, &old, &new).await {
                Ok(()) => held.lock()[i].2 = new,
                Err(e) => {
                    tracing::warn!(error = %e, "could not renew a hold; trying again at the next heartbeat")
                }
            }
        }
    }

    /// Gives an attempt's holds back (best effort: one not given back lapses at its end).
    pub(super) async fn give_back(&self, held: Held) {
        let holds = std::mem::take(&mut *held.lock());
        let backs = holds.iter().map(|(ledger, page, hold, _)| async move {
            if let Err(e) = self.store.unhold(ledger, *page, hold).await {
                tracing::warn!(error = %e, until = hold.until, "could not give a hold back; it lapses by itself");
            }
        });
        futures::future::join_all(backs).await;
    }

    /// Whether a thread's run may start: the run submitted before it has finished (or is gone, its
    /// TTL past). The thread's hold ([`thread_gate`]) then keeps a cancelled run still finishing
    /// its turn (its lease lost, so it reads as finished) from overlapping this one.
    async fn turn_of(
        &self,
        run: &ThreadRun,
        now: Millis,
    ) -> Result<Turn, crate::store::StoreError> {
        let Some(before) = &run.after else {
            return Ok(Turn::Go(None));
        };
        Ok(match self.store.get(before).await? {
            None => Turn::Go(None),
            Some(j) => match j.effective_status(now) {
                // Read consistently: its messages were appended before this terminal write.
                s if s.is_terminal() => Turn::Go(j.thread.as_ref().map(RunEnd::of)),
                crate::job::JobStatus::Waiting => Turn::AfterWait,
                _ => Turn::After,
            },
        })
    }

    /// Defers `job`: its message again, delayed by about `wait`, and this one acknowledged; the
    /// note `GET /jobs/{id}` shows (best effort).
    async fn defer(
        &self,
        job: &Job,
        reason: DeferReason,
        key: &str,
        wait: Duration,
        d: &Delivery,
    ) -> Graded {
        let delay = jittered(wait, rand::random::<f64>());
        let trace = d.trace.as_deref().and_then(TraceContext::parse);
        if let Err(e) = self
            .queue
            .send_job_delayed(job, delay, trace.as_ref())
            .await
        {
            tracing::warn!(error = %e, "could not send a deferred job again; its message comes back");
            return (Outcome::Unavailable, Verdict::Retry(delay));
        }
        let now = self.clock.now();
        let note = Deferred {
            reason,
            key: key.to_owned(),
            until: now + delay.as_millis() as Millis,
        };
        if let Err(e) = self.store.note_deferred(&job.job_id, &note, now).await {
            tracing::warn!(error = %e, "could not note the deferral");
        }
        observe::deferred(&job.kind, reason.as_str());
        tracing::info!(
            reason = reason.as_str(),
            key,
            delay_ms = delay.as_millis() as u64,
            "job deferred by a limit"
        );
        (Outcome::Deferred, Verdict::Ack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferral_waits_about_one_run_jittered_within_bounds() {
        assert_eq!(slot_wait(None), Duration::from_secs(5));
        assert_eq!(
            slot_wait(Some(Duration::from_millis(10))),
            Duration::from_secs(1)
        );
        assert_eq!(
            slot_wait(Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
        let w = Duration::from_secs(8);
        assert_eq!(jittered(w, 0.0), Duration::from_secs(6));
        assert_eq!(jittered(w, 1.0), Duration::from_secs(10));
        assert_eq!(jittered(Duration::ZERO, 0.5), Duration::from_secs(1));
        assert_eq!(jittered(Duration::from_secs(5000), 0.5), MAX_DEFER);
    }

    #[test]
    fn runtimes_follow_recent_runs() {
        let r = Runtimes::default();
        assert_eq!(r.typical("k"), None);
        r.ran("k", Duration::from_secs(10));
        r.ran("k", Duration::from_secs(0));
        assert_eq!(r.typical("k"), Some(Duration::from_secs(8)));
    }
}
