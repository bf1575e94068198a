//! One behaviour suite for the `JobStore` / `JobQueue` ports, run against the embedded backends and against
//! DynamoDB + SQS on the emulator, from the same code. A behaviour that differs is a bug in the embedded
//! backend (the emulator stands in for AWS).

#[macro_use]
mod support;

use std::time::Duration;

use jobkit::job::NewJob;
use jobkit::queue::{JobMessage, QueueError};
use jobkit::store::StoreError;
use jobkit::worker::Outcome;
use jobkit::{HandlerRegistry, Job, JobStatus, now_millis};
use serde_json::json;
use support::*;

fn new_job() -> Job {
    Job::new(
        NewJob {
            user_id: "u".into(),
            kind: "echo".into(),
            input: json!({"x": 1}).into(),
            max_attempts: 5,
            ttl_secs: 3600,
            callback_url: None,
            counted: false,
        },
        now_millis(),
    )
}

const T: Duration = Duration::from_secs(30);

// ---------- store ----------

async fn create_then_get_round_trips_and_ids_are_unique(b: Backends) {
    let job = new_job();
    b.store.create(&job).await.unwrap();
    assert_eq!(b.store.get(&job.job_id).await.unwrap(), Some(job.clone()));
    let mut other = new_job();
    other.job_id = job.job_id.clone();
    other.input = json!("another job").into();
    assert!(matches!(
        b.store.create(&other).await,
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(
        b.store
            .get(&jobkit::JobId::generate(now_millis()))
            .await
            .unwrap(),
        None
    );
}

async fn concurrent_claims_of_one_job_have_exactly_one_winner(b: Backends) {
    let job = new_job();
    b.store.create(&job).await.unwrap();
    let now = now_millis();
    let claims = (0..8).map(|i| {
        let store = b.store.clone();
        let id = job.job_id.clone();
        tokio::spawn(async move { store.claim(&id, &format!("w{i}"), now + 60_000, now).await })
    });
    let results: Vec<_> = futures::future::join_all(claims)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let winners: Vec<&Job> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "exactly one claim wins");
    assert_eq!(
        (winners[0].status, winners[0].attempts),
        (JobStatus::Running, 1)
    );
    for r in &results {
        if let Err(e) = r {
            let StoreError::Conflict { current: Some(cur) } = e else {
                panic!("expected a conflict, got {e:?}")
            };
            assert_eq!(cur.status, JobStatus::Running);
        }
    }
    let stored = b.store.get(&job.job_id).await.unwrap().unwrap();
    assert_eq!(stored, *winners[0]);
}

async fn an_expired_lease_can_be_claimed_and_the_old_owner_cannot_write(b: Backends) {
    let job = new_job();
    b.store.create(&job).await.unwrap();
    let now = now_millis();
    let first = b
        .store
        .claim(&job.job_id, "w1", now + 1_000, now)
        .await
        .unwrap();
    // Still leased: a second claim conflicts.
    assert!(matches!(
        b.store
            .claim(&job.job_id, "w2", now + 60_000, now + 500)
            .await,
        Err(StoreError::Conflict { .. })
    ));
    // After expiry it succeeds and counts a second attempt.
    let second = b
        .store
        .claim(&job.job_id, "w2", now + 60_000, now + 1_001)
        .await
        .unwrap();
    assert_eq!(
        (second.attempts, second.lease_owner.as_deref()),
        (2, Some("w2"))
    );
    // The first owner's completion was computed from a stale version: refused.
    let stale = first
        .complete("w1", json!(1).into(), vec![], now + 1_002)
        .unwrap();
    assert!(matches!(
        b.store.replace(&first, &stale).await,
        Err(StoreError::Conflict { .. })
    ));
    let done = second
        .complete("w2", json!(2).into(), vec![], now + 1_003)
        .unwrap();
    b.store.replace(&second, &done).await.unwrap();
    assert_eq!(
        b.store.get(&job.job_id).await.unwrap().unwrap().result,
        Some(json!(2).into())
    );
}

async fn finished_and_missing_jobs_cannot_be_claimed(b: Backends) {
    let job = new_job();
    b.store.create(&job).await.unwrap();
    let now = now_millis();
    let running = b
        .store
        .claim(&job.job_id, "w", now + 60_000, now)
        .await
        .unwrap();
    let done = running
        .complete("w", json!(null).into(), vec![], now)
        .unwrap();
    b.store.replace(&running, &done).await.unwrap();
    match b
        .store
        .claim(&job.job_id, "w2", now + 60_000, i64::MAX / 2)
        .await
    {
        Err(StoreError::Conflict { current: Some(cur) }) => {
            assert_eq!(cur.status, JobStatus::Completed)
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let ghost = jobkit::JobId::generate(now);
    assert!(matches!(
        b.store.claim(&ghost, "w", now, now).await,
        Err(StoreError::NotFound)
    ));
    let orphan = new_job();
    let touched = orphan.resent(now).unwrap();
    assert!(matches!(
        b.store.replace(&orphan, &touched).await,
        Err(StoreError::NotFound)
    ));
}

async fn repeating_a_write_that_landed_succeeds_as_after_a_lost_response(b: Backends) {
    let job = new_job();
    b.store.create(&job).await.unwrap();
    b.store.create(&job).await.expect("create again");
    let now = now_millis();
    let claimed = b
        .store
        .claim(&job.job_id, "w", now + 60_000, now)
        .await
        .unwrap();
    let again = b
        .store
        .claim(&job.job_id, "w", now + 60_000, now)
        .await
        .expect("claim again");
    assert_eq!(
        (again.attempts, again.version),
        (claimed.attempts, claimed.version),
        "counted once"
    );
    let done = claimed.complete("w", json!(1).into(), vec![], now).unwrap();
    b.store.replace(&claimed, &done).await.unwrap();
    b.store
        .replace(&claimed, &done)
        .await
        .expect("replace again");
    assert_eq!(b.store.get(&job.job_id).await.unwrap(), Some(done));
}

/// The slot protocol's writes, each repeated as the SDK repeats a request whose answer was lost: an
/// insert that filled the owner's set to the cap, a terminal write. Each counts once.
async fn repeated_slot_writes_count_once_even_at_the_cap(b: Backends) {
    use jobkit::store::{Created, Insert};
    let mut job = new_job();
    job.user_id = "capped".into();
    job.counted = true;
    job.slot_at = Some(now_millis() / 1000);
    let how = Insert {
        keyed: false,
        in_flight_cap: Some(1),
    };
    assert_eq!(b.store.insert(&mut job, &how).await.unwrap(), Created::New);
    assert_eq!(job.slot_page, Some(0), "the store names the page it took");
    assert_eq!(
        b.store.insert(&mut job, &how).await.unwrap(),
        Created::New,
        "a retried insert finds the set full of itself, not of others"
    );
    assert_eq!(b.store.in_flight("capped", 1).await.unwrap(), 1);
    let mut other = new_job();
    other.user_id = "capped".into();
    other.counted = true;
    other.slot_at = job.slot_at;
    assert!(matches!(
        b.store.insert(&mut other, &how).await,
        Err(StoreError::InFlightCapReached)
    ));
    let now = now_millis();
    let (_, cancelled) = job.cancel(now).unwrap();
    let cancelled = cancelled.unwrap();
    for _ in 0..2 {
        b.store.replace(&job, &cancelled).await.unwrap();
        assert_eq!(b.store.in_flight("capped", 1).await.unwrap(), 0);
    }
    b.store.insert(&mut other, &how).await.unwrap();
    assert_eq!(b.store.in_flight("capped", 1).await.unwrap(), 1);
}

fn counted_job(user: &str) -> Job {
    let mut job = new_job();
    job.user_id = user.into();
    job.counted = true;
    job.slot_at = Some(now_millis() / 1000);
    job
}

/// A busy owner's cap is split over pages (small items: one write unit per add and removal): the
/// owner is admitted exactly up to the cap, every page within its capacity, each job's member on the
/// page its record names, and a freed slot is taken again, on its page.
async fn a_busy_owner_fills_every_page_exactly_to_the_cap_and_no_further(b: Backends) {
    use jobkit::slots::Layout;
    use jobkit::store::Insert;
    const CAP: u32 = 60;
    let layout = Layout::new(CAP);
    assert_eq!(layout.pages(), 3);
    let how = Insert {
        keyed: false,
        in_flight_cap: Some(CAP),
    };
    let mut jobs = Vec::new();
    for _ in 0..CAP {
        let mut job = counted_job("busy");
        b.store.insert(&mut job, &how).await.expect("under the cap");
        jobs.push(job);
    }
    let mut over = counted_job("busy");
    assert!(matches!(
        b.store.insert(&mut over, &how).await,
        Err(StoreError::InFlightCapReached)
    ));
    assert_eq!(
        b.store.in_flight("busy", CAP).await.unwrap(),
        i64::from(CAP)
    );
    let pages = ledger_pages(&*b.store, "busy").await;
    for (page, members) in &pages {
        let p = page.expect("every member on a page");
        assert_eq!(members.len() as u32, layout.capacity(p), "page {p} is full");
    }
    for job in &jobs {
        let stored = b.store.get(&job.job_id).await.unwrap().unwrap();
        assert_eq!(stored.slot_page, job.slot_page);
        let (_, members) = pages.iter().find(|(p, _)| *p == job.slot_page).unwrap();
        assert!(members.contains(&job.slot()), "{} on its page", job.job_id);
    }
    // A job ends: its slot frees on its page, and the next job takes it there.
    let (_, done) = jobs[7].cancel(now_millis()).unwrap();
    b.store.replace(&jobs[7], &done.unwrap()).await.unwrap();
    assert_eq!(
        b.store.in_flight("busy", CAP).await.unwrap(),
        i64::from(CAP) - 1
    );
    b.store.insert(&mut over, &how).await.expect("a slot freed");
    assert_eq!(over.slot_page, jobs[7].slot_page, "the only page with room");
    assert_eq!(
        b.store.in_flight("busy", CAP).await.unwrap(),
        i64::from(CAP)
    );
}

/// Writers racing for an owner's last slots: never more admitted than the cap, whatever each store
/// instance believed of the pages; the count is exactly the admitted jobs; and the ledger still fills
/// to the cap afterwards.
async fn racing_inserts_never_exceed_the_cap_and_the_count_stays_exact(b: Backends) {
    use jobkit::store::Insert;
    const CAP: u32 = 50;
    let how = Insert {
        keyed: false,
        in_flight_cap: Some(CAP),
    };
    let racers = (0..80).map(|_| {
        let (store, how) = (b.store.clone(), how.clone());
        tokio::spawn(async move {
            let mut job = counted_job("racer");
            store.insert(&mut job, &how).await.map(|_| job)
        })
    });
    let mut admitted = 0;
    for r in futures::future::join_all(racers).await {
        match r.unwrap() {
            Ok(_) => admitted += 1,
            Err(StoreError::InFlightCapReached) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(admitted <= CAP, "{admitted} admitted over a cap of {CAP}");
    assert_eq!(
        b.store.in_flight("racer", CAP).await.unwrap(),
        i64::from(admitted)
    );
    // A refusal under contention may come early (a writer gives up after a few refused pages); the
    // slots are there for the next try.
    eventually("the ledger full", T, async || {
        let mut job = counted_job("racer");
        let _ = b.store.insert(&mut job, &how).await;
        (b.store.in_flight("racer", CAP).await.unwrap() == i64::from(CAP)).then_some(())
    })
    .await;
    let layout = jobkit::slots::Layout::new(CAP);
    for (page, members) in ledger_pages(&*b.store, "racer").await {
        assert_eq!(members.len() as u32, layout.capacity(page.unwrap()));
    }
}

/// One owner's jobs, listed newest first across every index shard (ties in the same millisecond by
/// id), page after page with the cursor's position, with and without a status or kind filter: every
/// page but the last is full, and no job is skipped or repeated.
async fn lists_merge_every_shard_newest_first_and_pages_are_stable(b: Backends) {
    use jobkit::store::ListQuery;
    let t0 = now_millis();
    let mut jobs = Vec::new();
    for i in 0..30 {
        let mut job = Job::new(
            NewJob {
                user_id: "lister".into(),
                // One job in seven of another kind: a filtered page reads past many that do not match.
                kind: if i % 7 == 3 { "rare" } else { "echo" }.into(),
                input: json!(i).into(),
                max_attempts: 5,
                ttl_secs: 3600,
                callback_url: None,
                counted: false,
            },
            t0 + i / 3, // three jobs per millisecond
        );
        if i % 4 == 0 {
            job = job.cancel(t0 + 100).unwrap().1.unwrap();
        }
        b.store.create(&job).await.unwrap();
        jobs.push(job);
    }
    let mut other = new_job();
    other.user_id = "lister2".into();
    b.store.create(&other).await.unwrap();
    jobs.sort_by(|a, b| (b.submitted_at, &b.job_id).cmp(&(a.submitted_at, &a.job_id)));
    for (status, kind) in [
        (None, None),
        (Some(JobStatus::Cancelled), None),
        (None, Some("rare")),
        (None, Some("echo")),
        (Some(JobStatus::Queued), Some("rare")),
        (None, Some("unknown")),
    ] {
        let expected: Vec<_> = jobs
            .iter()
            .filter(|j| status.is_none_or(|s| j.status == s) && kind.is_none_or(|k| j.kind == k))
            .map(|j| j.job_id.clone())
            .collect();
        for limit in [1, 4, 7, 100] {
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = b
                    .store
                    .list(
                        "lister",
                        &ListQuery {
                            status,
                            kind: kind.map(Into::into),
                            limit,
                            after: after.clone(),
                        },
                    )
                    .await
                    .unwrap();
                got.extend(page.iter().map(|j| j.job_id.clone()));
                match page.last() {
                    Some(last) if page.len() == limit => {
                        after = Some((last.submitted_at, last.job_id.clone()))
                    }
                    _ => break,
                }
            }
            assert_eq!(
                got, expected,
                "status {status:?}, kind {kind:?}, pages of {limit}"
            );
        }
    }
}

/// A member no job holds (its record deleted in flight) is found on whichever page it is, and only
/// it is removed: the count comes back to the jobs that hold slots.
async fn the_sweep_frees_orphans_on_any_page_and_nothing_else(b: Backends) {
    use jobkit::store::Insert;
    const CAP: u32 = 100;
    let how = Insert {
        keyed: false,
        in_flight_cap: Some(CAP),
    };
    let mut jobs = Vec::new();
    for _ in 0..40 {
        let mut job = counted_job("sweepy");
        b.store.insert(&mut job, &how).await.unwrap();
        jobs.push(job);
    }
    let pages: std::collections::HashSet<_> = jobs.iter().map(|j| j.slot_page).collect();
    assert!(pages.len() > 1, "the jobs spread over pages");
    for job in jobs.iter().step_by(5) {
        b.expire_job(&job.job_id).await;
    }
    let mut sweeper = b.sweeper();
    sweeper.slot_grace = Duration::ZERO;
    assert_eq!(sweeper.release_orphaned_slots().await.unwrap(), 8);
    assert_eq!(b.store.in_flight("sweepy", CAP).await.unwrap(), 32);
    assert_eq!(sweeper.release_orphaned_slots().await.unwrap(), 0);
}

// ---------- queue ----------

async fn a_received_message_is_hidden_until_its_visibility_ends_and_counts_receives(b: Backends) {
    b.queue.send("m1", Duration::ZERO).await.unwrap();
    let first = b
        .queue
        .receive(10, Duration::from_secs(2), Some(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!((first[0].body.as_str(), first[0].receive_count), ("m1", 1));
    assert!(first[0].sent_at > 0);
    assert!(
        b.queue
            .receive(10, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty(),
        "hidden while in flight"
    );
    b.queue
        .change_visibility(&first[0].receipt_handle, Duration::ZERO)
        .await
        .unwrap();
    let second = eventually("the message back", T, async || {
        let m = b
            .queue
            .receive(10, Duration::from_secs(1), Some(Duration::from_secs(30)))
            .await
            .unwrap();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(
        (second[0].message_id.as_str(), second[0].receive_count),
        (first[0].message_id.as_str(), 2)
    );
    b.queue.delete(&second[0].receipt_handle).await.unwrap();
    assert!(
        b.queue
            .receive(10, Duration::from_secs(1), None)
            .await
            .unwrap()
            .is_empty(),
        "deleted"
    );
}

async fn changing_visibility_of_a_deleted_message_is_a_stale_receipt(b: Backends) {
    b.queue.send("m", Duration::ZERO).await.unwrap();
    let m = b
        .queue
        .receive(1, Duration::from_secs(2), None)
        .await
        .unwrap()
        .remove(0);
    b.queue.delete(&m.receipt_handle).await.unwrap();
    assert!(matches!(
        b.queue
            .change_visibility(&m.receipt_handle, Duration::from_secs(5))
            .await,
        Err(QueueError::StaleReceipt)
    ));
}

async fn a_delayed_message_is_invisible_until_its_delay_passes(b: Backends) {
    b.queue.send("later", Duration::from_secs(2)).await.unwrap();
    assert!(
        b.queue
            .receive(10, Duration::ZERO, None)
            .await
            .unwrap()
            .is_empty()
    );
    let got = eventually("the delayed message", T, async || {
        let m = b
            .queue
            .receive(10, Duration::from_secs(1), None)
            .await
            .unwrap();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(got[0].body, "later");
}

async fn a_message_received_max_receive_count_times_moves_to_the_dlq(b: Backends) {
    b.queue.send("poison", Duration::ZERO).await.unwrap();
    let mut receives = 0;
    let moved = eventually("the message in the DLQ", T, async || {
        for m in b
            .queue
            .receive(10, Duration::from_millis(200), None)
            .await
            .unwrap()
        {
            receives += 1;
            b.queue
                .change_visibility(&m.receipt_handle, Duration::ZERO)
                .await
                .unwrap();
        }
        let d = b.dlq.receive(10, Duration::ZERO, None).await.unwrap();
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(moved[0].body, "poison");
    assert_eq!(receives, b.max_receives);
}

async fn depth_counts_waiting_messages(b: Backends) {
    assert_eq!(b.queue.depth().await.unwrap(), 0);
    for i in 0..3 {
        b.queue
            .send(&format!("m{i}"), Duration::ZERO)
            .await
            .unwrap();
    }
    assert_eq!(b.queue.depth().await.unwrap(), 3);
}

async fn stats_count_waiting_in_flight_and_delayed_messages_and_carry_traces(b: Backends) {
    let trace = jobkit::trace::TraceContext::root();
    for i in 0..3 {
        b.queue
            .send_traced(&format!("m{i}"), Duration::ZERO, Some(&trace))
            .await
            .unwrap();
    }
    b.queue
        .send("later", Duration::from_secs(600))
        .await
        .unwrap();
    let got = eventually("a message", Duration::from_secs(30), async || {
        let got = b
            .queue
            .receive(1, Duration::from_secs(1), Some(Duration::from_secs(600)))
            .await
            .unwrap();
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got[0].trace.as_deref(), Some(trace.to_string().as_str()));
    let stats = eventually("settled counts", Duration::from_secs(30), async || {
        let s = b.queue.stats().await.unwrap();
        (s.waiting == 2 && s.in_flight == 1 && s.delayed == 1).then_some(s)
    })
    .await;
    assert_eq!(stats.in_flight, 1);
}

// ---------- both together: the event source and the worker ----------

async fn a_partial_batch_failure_returns_only_the_failed_message(b: Backends) {
    let registry = HandlerRegistry::with_builtins();
    let events = b.event_source(registry, fast_settings(b.max_receives));
    let ok = new_job();
    b.store.create(&ok).await.unwrap();
    let msg = JobMessage {
        job_id: ok.job_id.clone(),
        kind: "echo".into(),
        thread: false,
    };
    b.queue.send(&msg.encode(), Duration::ZERO).await.unwrap();
    b.queue.send("garbage", Duration::ZERO).await.unwrap();
    let mut outcomes = Vec::new();
    eventually("both messages processed", T, async || {
        let (_, r) = events.poll_once().await.unwrap();
        outcomes.extend(r.outcomes);
        (outcomes.len() >= 2).then_some(())
    })
    .await;
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, [Outcome::Completed, Outcome::Malformed]);
    // Only the malformed message comes back (after its backoff of at most 1 s).
    let back = eventually("the failed message back", T, async || {
        let m = b
            .queue
            .receive(10, Duration::from_secs(1), None)
            .await
            .unwrap();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].body.as_str(), back[0].receive_count),
        ("garbage", 2)
    );
    assert_eq!(
        b.store.get(&ok.job_id).await.unwrap().unwrap().status,
        JobStatus::Completed
    );
}

on_both_backends!(
    create_then_get_round_trips_and_ids_are_unique,
    concurrent_claims_of_one_job_have_exactly_one_winner,
    an_expired_lease_can_be_claimed_and_the_old_owner_cannot_write,
    finished_and_missing_jobs_cannot_be_claimed,
    repeating_a_write_that_landed_succeeds_as_after_a_lost_response,
    repeated_slot_writes_count_once_even_at_the_cap,
    a_busy_owner_fills_every_page_exactly_to_the_cap_and_no_further,
    racing_inserts_never_exceed_the_cap_and_the_count_stays_exact,
    lists_merge_every_shard_newest_first_and_pages_are_stable,
    the_sweep_frees_orphans_on_any_page_and_nothing_else,
    a_received_message_is_hidden_until_its_visibility_ends_and_counts_receives,
    changing_visibility_of_a_deleted_message_is_a_stale_receipt,
    a_delayed_message_is_invisible_until_its_delay_passes,
    a_message_received_max_receive_count_times_moves_to_the_dlq,
    depth_counts_waiting_messages,
    stats_count_waiting_in_flight_and_delayed_messages_and_carry_traces,
    a_partial_batch_failure_returns_only_the_failed_message,
);
