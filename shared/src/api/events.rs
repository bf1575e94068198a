//! `GET /jobs/{id}/events`: a job's live stream (Server-Sent Events). An event for every status change
//! (`status`), one for every progress report (`progress`: `{percent, message}`), one each time the job
//! parks (`waiting`: `{name, expires_at}`, what it waits for), one for every partial result written
//! (`partial`: the value its handler published, see `JobContext::partial`), and a final `done`
//! carrying the job's view, after which the stream ends. The stream reads the job at most once per
//! `poll` (a second, deployed), and changes between two reads are collapsed into the latest state, so
//! no state is missed although intermediate ones may be. A comment every 15 s keeps proxies from
//! closing it; after at most 14 minutes it ends with a `retry:` hint and the client reconnects.
//!
//! The `waiting` event never carries the waitpoint's `complete_url`: an `events_url` is made to be
//! handed to a browser page, which may show a job to someone who should not complete its waits; the
//! owner gets the link from `GET /jobs/{id}` (or the `job.waiting` webhook) and decides who else does.
//!
//! Resuming: each event's `id` says what the client has seen once it has that event (`Seen`: the
//! job's version, the status and fingerprints of the progress and of the wait), so a reconnect with
//! `Last-Event-ID` gets exactly what changed since, and nothing it has seen. The version alone could not say that: it
//! moves on every write (heartbeats, checkpoints), not only when the status or progress changes. A
//! reconnect from a client that has seen `done` is answered `204 No Content`, the one answer that stops
//! a browser's `EventSource` from reconnecting (an empty `200` would have it come back every few
//! seconds for as long as its token lives).
//!
//! Browsers' `EventSource` cannot send an `Authorization` header, so the route is not behind the API's
//! authorizer: `GET /jobs/{id}` (which is) hands out `events_url` with a token, an HMAC over the job id,
//! its owner and an expiry (15 minutes) under the stack's signing secret ([`super::token`]). Anything
//! else — no token, a forged, expired or other job's token, an unknown job — is the same `401`,
//! revealing nothing.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::token::{Purpose, TokenKey};
use super::{ApiError, JobView, rfc3339};
use crate::clock::{Millis, SharedClock};
use crate::job::{Job, JobId, JobStatus, Progress, WaitingFor};
use crate::store::JobReader;

/// How long an `events_url` token is valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(15 * 60);

/// Where `GET /jobs/{id}` points clients for a job's stream.
#[derive(Debug, Clone)]
pub struct EventsLink {
    /// The events endpoint's base URL (the Function URL deployed, `jobctl dev`'s own address locally).
    pub base: String,
    pub key: TokenKey,
}

impl EventsLink {
    /// The `events_url` of `job` of `owner`, as of `now`.
    pub fn url(&self, job: &JobId, owner: &str, now: Millis) -> String {
        let expires = now.div_euclid(1000) + TOKEN_TTL.as_secs() as i64;
        format!(
            "{}/jobs/{job}/events?token={}",
            self.base.trim_end_matches('/'),
            token(&self.key, job, owner, expires)
        )
    }
}

/// The stream token of `job` of `owner`, valid until `expires` (unix seconds).
pub fn token(key: &TokenKey, job: &JobId, owner: &str, expires: i64) -> String {
    key.sign(Purpose::Events, &[job.as_str(), owner], expires)
}

/// How a stream paces itself.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    /// The store is read at most once per `poll`.
    pub poll: Duration,
    pub keep_alive: Duration,
    /// The longest a stream stays open before it asks the client to reconnect.
    pub max_open: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_secs(1),
            keep_alive: Duration::from_secs(15),
            max_open: Duration::from_secs(14 * 60),
        }
    }
}

/// The events endpoint's dependencies: read a job, check tokens.
pub struct EventsApi {
    store: Arc<dyn JobReader>,
    key: TokenKey,
    clock: SharedClock,
    settings: StreamSettings,
}

impl EventsApi {
    pub fn new(
        store: Arc<dyn JobReader>,
        key: TokenKey,
        clock: SharedClock,
        settings: StreamSettings,
    ) -> Self {
        Self {
            store,
            key,
            clock,
            settings,
        }
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenQuery {
    token: Option<String>,
}

/// What a client of a stream has seen, as of its last event: written as that event's `id`, read back
/// from `Last-Event-ID`. `<version>.<status>[.<progress fingerprint>][.w<wait fingerprint>][.p<partial
/// seq>]`, e.g. `7.running.1f2e3d4c`, `9.waiting.1f2e3d4c.w0a1b2c3d` or `12.running.p3`:
/// short and of letters, digits, `.` and `_` only, so browsers send it back cross-origin without a
/// CORS preflight (a long or unusual `Last-Event-ID` makes them ask first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Seen {
    /// The job's version when the client got the event (not needed to resume; it orders the ids).
    version: u64,
    status: Option<JobStatus>,
    /// [`fingerprint`] of the last progress the client got.
    progress: Option<u32>,
    /// [`wait_fingerprint`] of the last wait the client got: a job that parks again on another
    /// waitpoint between two reads is still `waiting`, and its new wait is told apart by this.
    waiting: Option<u32>,
    /// The `seq` of the last partial result the client got (each write numbers it one more, so no
    /// fingerprint is needed).
    partial: Option<u64>,
}

/// Identifies a progress report: 32 bits of SHA-256 over its percent and message. A collision could
/// only hide one progress report whose percent and message both changed, until the next one.
fn fingerprint(p: &Progress) -> u32 {
    let digest = Sha256::new()
        .chain_update([p.percent])
        .chain_update(p.message.as_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Identifies a wait: 32 bits of SHA-256 over its waitpoint's name and expiry (a collision could only
/// hide one `waiting` event, and the `status` event still shows the job waiting).
fn wait_fingerprint(w: &WaitingFor) -> u32 {
    let digest = Sha256::new()
        .chain_update(w.name.as_bytes())
        .chain_update(w.expires_at.to_be_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

impl Seen {
    fn id(&self) -> String {
        let status = self.status.map_or("none", JobStatus::as_str);
        let mut id = format!("{}.{status}", self.version);
        if let Some(p) = self.progress {
            id.push_str(&format!(".{p:08x}"));
        }
        if let Some(w) = self.waiting {
            id.push_str(&format!(".w{w:08x}"));
        }
        if let Some(p) = self.partial {
            id.push_str(&format!(".p{p}"));
        }
        id
    }

    /// Reads a `Last-Event-ID`; anything else (another server's id, a client's invention) is `None`,
    /// and the stream starts afresh: better a repeat than a missed change.
    fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.trim().split('.');
        let version = parts.next()?.parse().ok()?;
        let status = match parts.next()? {
            "none" => None,
            s => Some(s.parse().ok()?),
        };
        let hex = |h: &str| (h.len() == 8).then(|| u32::from_str_radix(h, 16).ok())?;
        let mut next = parts.next();
        let progress = match next {
            Some(h) if !h.starts_with(['w', 'p']) => {
                next = parts.next();
                Some(hex(h)?)
            }
            _ => None,
        };
        let waiting = match next {
            Some(h) if h.starts_with('w') => {
                next = parts.next();
                Some(hex(&h[1..])?)
            }
            _ => None,
        };
        let partial = match next {
            Some(h) => {
                let seq = h.strip_prefix('p')?;
                if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                Some(seq.parse().ok()?)
            }
            None => None,
        };
        parts.next().is_none().then_some(Self {
            version,
            status,
            progress,
            waiting,
            partial,
        })
    }

    /// Whether the client has seen the stream's end.
    fn saw_done(&self) -> bool {
        self.status.is_some_and(JobStatus::is_terminal)
    }
}

/// The events that take a client from what it has seen (`seen`, updated as each event is made, so
/// each carries the state the client is in once it has it) to `job`, and whether the job is finished.
/// The status goes first: a client that drops the connection between two events of one read still
/// has a consistent [`Seen`] for the events it got.
fn events_for(job: &Job, seen: &mut Seen, now: Millis) -> (Vec<Event>, bool) {
    let status = job.effective_status(now);
    let progress = job.progress.as_ref().map(|p| (p, fingerprint(p)));
    let mut out = Vec::new();
    if !status.is_terminal() && seen.status != Some(status) {
        *seen = Seen {
            version: job.version,
            status: Some(status),
            ..*seen
        };
        out.push(
            Event::default()
                .event("status")
                .id(seen.id())
                .json_data(json!({"status": status, "attempts": job.attempts}))
                .expect("a status serializes"),
        );
    }
    if let Some(w) = job
        .waiting_for
        .as_ref()
        .filter(|_| status == JobStatus::Waiting)
        && seen.waiting != Some(wait_fingerprint(w))
    {
        *seen = Seen {
            version: job.version,
            waiting: Some(wait_fingerprint(w)),
            ..*seen
        };
        out.push(
            Event::default()
                .event("waiting")
                .id(seen.id())
                .json_data(json!({"name": w.name, "expires_at": rfc3339(w.expires_at)}))
                .expect("a wait serializes"),
        );
    }
    if let Some((p, fp)) = progress
        && seen.progress != Some(fp)
    {
        *seen = Seen {
            version: job.version,
            progress: Some(fp),
            ..*seen
        };
        out.push(
            Event::default()
                .event("progress")
                .id(seen.id())
                .json_data(json!({"percent": p.percent, "message": p.message}))
                .expect("progress serializes"),
        );
    }
    if let Some(p) = job.partial.as_ref()
        && seen.partial != Some(p.seq)
    {
        *seen = Seen {
            version: job.version,
            partial: Some(p.seq),
            ..*seen
        };
        out.push(
            Event::default()
                .event("partial")
                .id(seen.id())
                .data(p.value.get()),
        );
    }
    if status.is_terminal() {
        *seen = Seen {
            version: job.version,
            status: Some(status),
            ..*seen
        };
        out.push(
            Event::default()
                .event("done")
                .id(seen.id())
                .json_data(JobView::at(job.clone(), now))
                .expect("a view serializes"),
        );
        return (out, true);
    }
    (out, false)
}

struct Streaming {
    api: Arc<EventsApi>,
    id: JobId,
    /// What the client has seen, as of the last event made for it.
    seen: Seen,
    queued: VecDeque<Event>,
    opened: tokio::time::Instant,
    first: bool,
    finished: bool,
}

fn stream(state: Streaming) -> impl Stream<Item = Result<Event, std::convert::Infallible>> {
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.queued.pop_front() {
                return Some((Ok(e), s));
            }
            if s.finished {
                return None;
            }
            if s.opened.elapsed() >= s.api.settings.max_open {
                s.finished = true;
                let bye = Event::default()
                    .retry(Duration::from_secs(1))
                    .comment("stream time is up: reconnect with Last-Event-ID");
                return Some((Ok(bye), s));
            }
            if !s.first {
                tokio::time::sleep(s.api.settings.poll).await;
            }
            s.first = false;
            let job = match s.api.store.get(&s.id).await {
                Ok(Some(job)) => job,
                // Gone (expired) or unreadable for now: end, or try at the next tick.
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the job for its stream");
                    continue;
                }
            };
            let (events, done) = events_for(&job, &mut s.seen, s.api.clock.now());
            s.queued.extend(events);
            s.finished = done;
        }
    })
}

/// Opens a stream, or answers `204` to a client that has seen its end (see the module docs).
pub(super) async fn events(
    State(api): State<Arc<EventsApi>>,
    Path(raw_id): Path<String>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let now = api.clock.now();
    let (Some(token), Ok(id)) = (q.token, JobId::parse(&raw_id)) else {
        return Err(ApiError::InvalidToken);
    };
    let job = api.store.get(&id).await?.ok_or(ApiError::InvalidToken)?;
    let fields = [id.as_str(), job.user_id.as_str()];
    if !api
        .key
        .verify(Purpose::Events, &token, &fields, now.div_euclid(1000))
    {
        return Err(ApiError::InvalidToken);
    }
    let seen = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Seen::parse);
    if seen.is_some_and(|s| s.saw_done()) {
        return Ok(http::StatusCode::NO_CONTENT.into_response());
    }
    let keep_alive = KeepAlive::new()
        .interval(api.settings.keep_alive)
        .text("keep-alive");
    Ok(Sse::new(stream(Streaming {
        api,
        id,
        // A resumed stream does not repeat the state the client had.
        seen: seen.unwrap_or_default(),
        queued: VecDeque::new(),
        opened: tokio::time::Instant::now(),
        first: true,
        finished: false,
    }))
    .keep_alive(keep_alive)
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;

    fn id() -> JobId {
        JobId::parse("01JF0000000000000000000000").unwrap()
    }

    #[test]
    fn an_event_id_reads_back_as_what_the_client_saw() {
        let p = Progress {
            percent: 40,
            message: "thinking".into(),
        };
        for seen in [
            Seen::default(),
            Seen {
                version: 7,
                status: Some(JobStatus::Running),
                progress: Some(fingerprint(&p)),
                waiting: None,
                partial: None,
            },
            Seen {
                version: u64::MAX,
                status: Some(JobStatus::DeadLetter),
                progress: Some(0),
                waiting: Some(u32::MAX),
                partial: Some(u64::MAX),
            },
            Seen {
                version: 3,
                status: Some(JobStatus::Queued),
                progress: None,
                waiting: None,
                partial: None,
            },
            Seen {
                version: 9,
                status: Some(JobStatus::Waiting),
                progress: None,
                waiting: Some(0x0a1b_2c3d),
                partial: None,
            },
            Seen {
                version: 12,
                status: Some(JobStatus::Running),
                progress: Some(1),
                waiting: None,
                partial: Some(3),
            },
        ] {
            let id = seen.id();
            assert_eq!(Seen::parse(&id), Some(seen), "{id}");
            // Safe for a cross-origin EventSource to send back without a preflight.
            assert!(id.len() <= 128, "{id}");
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_'),
                "{id}"
            );
        }
        for other in [
            "",
            "7",
            "7.",
            "x.running",
            "7.sleeping",
            "7.running.xyz",
            "7.running.1f2e3d4c.9",
            "7.waiting.w1f2e3d4",
            "7.waiting.1f2e3d4c.1f2e3d4c",
            "7.waiting.w1f2e3d4c.1f2e3d4c",
            "7.waiting.w1f2e3d4c.w1f2e3d4c",
            "7.running.p",
            "7.running.p+3",
            "7.running.px",
            "7.running.p3.1f2e3d4c",
            "7.running.p3.p4",
        ] {
            assert_eq!(Seen::parse(other), None, "{other:?}");
        }
    }

    /// The event name of each event, read from its wire form (axum's `Event` has no getters).
    fn names(events: &[Event]) -> Vec<&'static str> {
        events
            .iter()
            .map(|e| {
                let wire = format!("{e:?}");
                ["status", "waiting", "progress", "partial", "done"]
                    .into_iter()
                    .find(|n| wire.contains(&format!("event: {n}")))
                    .unwrap_or("?")
            })
            .collect()
    }

    const T0: Millis = 1_700_000_000_000;

    /// A job of `kind` submitted at [`T0`] and running since a millisecond later.
    fn running(kind: &str) -> crate::job::Job {
        let job = crate::job::Job::new(
            crate::job::NewJob {
                user_id: "u".into(),
                kind: kind.into(),
                input: crate::json::Json::from(json!({})),
                max_attempts: 3,
                ttl_secs: 3600,
                callback_url: None,
                counted: false,
            },
            T0,
        );
        job.claim("w", T0 + 60_000, T0 + 1).unwrap()
    }

    #[test]
    fn a_parked_job_shows_one_waiting_event_per_wait_and_a_resume_repeats_it_not() {
        let t0 = T0;
        let on = |name: &str, at: Millis| WaitingFor {
            name: name.into(),
            expires_at: at,
            detail: None,
        };
        let parked = running("approve")
            .park("w", on("approve", t0 + 9_000), t0 + 2)
            .unwrap();
        let mut seen = Seen::default();
        let (events, done) = events_for(&parked, &mut seen, t0 + 3);
        assert!(!done);
        assert_eq!(names(&events), ["status", "waiting"]);
        assert_eq!(seen.status, Some(JobStatus::Waiting));
        let resumed_from = Seen::parse(&seen.id()).unwrap();
        assert_eq!(resumed_from, seen);
        let (again, _) = events_for(&parked, &mut resumed_from.clone(), t0 + 4);
        assert!(again.is_empty(), "a reconnect repeats nothing");
        // Resumed, ran and parked again on another waitpoint between two reads: still `waiting`, a new wait.
        let rerun = parked
            .resume("approve", t0 + 5)
            .unwrap()
            .claim("w", t0 + 60_000, t0 + 6)
            .unwrap();
        let parked_again = rerun.park("w", on("confirm", t0 + 19_000), t0 + 7).unwrap();
        let (events, _) = events_for(&parked_again, &mut seen, t0 + 8);
        assert_eq!(names(&events), ["waiting"]);
    }

    #[test]
    fn each_partial_written_is_one_event_and_a_resume_repeats_none() {
        let t0 = T0;
        let first = running("k")
            .publish_partial("w", Json::from(json!({"n": 1})), t0 + 2)
            .unwrap();
        let mut seen = Seen::default();
        let (events, _) = events_for(&first, &mut seen, t0 + 3);
        assert_eq!(names(&events), ["status", "partial"]);
        let wire = format!("{:?}", events[1]);
        assert!(wire.contains(r#"data: {\"n\":1}"#), "{wire}");
        let resumed_from = Seen::parse(&seen.id()).unwrap();
        assert_eq!(resumed_from.partial, Some(1));
        let (again, _) = events_for(&first, &mut resumed_from.clone(), t0 + 4);
        assert!(again.is_empty(), "a reconnect repeats nothing");
        // The same value published again is a new partial; a heartbeat is not.
        let second = first
            .heartbeat("w", t0 + 60_000, t0 + 5)
            .unwrap()
            .publish_partial("w", Json::from(json!({"n": 1})), t0 + 6)
            .unwrap();
        let (events, _) = events_for(&second, &mut seen, t0 + 7);
        assert_eq!(names(&events), ["partial"]);
        assert_eq!(seen.partial, Some(2));
    }

    #[test]
    fn progress_fingerprints_tell_percent_and_message_apart() {
        let at = |percent, message: &str| {
            fingerprint(&Progress {
                percent,
                message: message.into(),
            })
        };
        assert_eq!(at(40, "a"), at(40, "a"));
        assert_ne!(at(40, "a"), at(41, "a"));
        assert_ne!(at(40, "a"), at(40, "b"));
    }

    #[test]
    fn links_carry_a_fifteen_minute_token() {
        let link = EventsLink {
            base: "https://abc.lambda-url.eu-west-1.on.aws/".into(),
            key: TokenKey::new(b"k"),
        };
        let url = link.url(&id(), "ann", 1_700_000_000_000);
        let token = url.split("token=").nth(1).unwrap();
        assert!(url.starts_with(
            "https://abc.lambda-url.eu-west-1.on.aws/jobs/01JF0000000000000000000000/events?token="
        ));
        assert!(token.starts_with(&format!("{}.", 1_700_000_000 + 900)));
        let job = id();
        assert!(link.key.verify(
            Purpose::Events,
            token,
            &[job.as_str(), "ann"],
            1_700_000_000
        ));
    }
}
