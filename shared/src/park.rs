//! Resuming a parked job: the one write every party that may resume it — the completion route, the
//! worker that parked it, the sweep — goes through, so a job resumes exactly once.
//!
//! `waiting -> queued` is a compare-and-set on the job ([`Job::resume`]); only the caller whose write
//! lands sends the job's message. Whoever loses finds the job no longer parked on that waitpoint and
//! does nothing. A send that fails leaves the job `queued` and untouched, which the sweep re-sends
//! ([`crate::sweep::SWEEP_AFTER`]); a duplicate message is harmless (claims are exclusive).

use crate::clock::SharedClock;
use crate::job::{Job, JobId};
use crate::queue::{JobSender, Lanes};
use crate::store::{Change, JobReader, JobWriter, RmwError, StoreError, read_modify_write};

/// Conflicts in a row before giving up (another writer got in between: a cancel, say).
const RESUME_TRIES: usize = 5;

/// Queues job `id` again if it is parked on waitpoint `name`, and sends its message. `current` saves a
/// read: a copy of the job parked on `name` (a stale one costs a conflict and a read), else `None`. A
/// copy that is not parked is taken at its word, so a caller that settled the waitpoint must pass one
/// read after that write, or `None`.
/// `Some(job)` when this call resumed it; `None` when it was not parked on `name` (resumed by someone
/// else, cancelled, still being parked, or gone).
pub async fn resume_parked<S: JobReader + JobWriter + ?Sized>(
    store: &S,
    queues: &Lanes<dyn JobSender>,
    id: &JobId,
    name: &str,
    current: Option<Job>,
    clock: &SharedClock,
) -> Result<Option<Job>, StoreError> {
    let step = |job: &Job| -> Result<Change<bool>, ()> {
        Ok(match job.resume(name, clock.now()) {
            Ok(next) => Change::Write(Box::new(next), true),
            Err(_) => Change::Keep(false),
        })
    };
    let resumed = match read_modify_write(store, id, current, RESUME_TRIES, step).await {
        Ok((job, true)) => job,
        Ok((_, false)) | Err(RmwError::NotFound) | Err(RmwError::Refused(())) => return Ok(None),
        Err(RmwError::Contended) => {
            return Err(StoreError::Unavailable {
                source: "the job kept changing while being resumed".into(),
            });
        }
        Err(RmwError::Store(e)) => return Err(e),
    };
    match queues.get(resumed.lane) {
        Some(queue) => {
            if let Err(e) = queue.send_job(&resumed, None).await {
                tracing::warn!(job_id = %id, error = %e, "could not send a resumed job; the sweep will");
            }
        }
        None => {
            tracing::error!(job_id = %id, "a resumed container-only job, and no container queue")
        }
    }
    tracing::info!(job_id = %id, waitpoint = name, "parked job resumed");
    // Exactly once per resume, whoever won it. A delayed start never parked: no wait to measure.
    if let Some(parked_at) = resumed.parked_at {
        crate::observe::resumed(&resumed.kind, parked_at, resumed.updated_at);
    }
    Ok(Some(resumed))
}
