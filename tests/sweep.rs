//! The sweep reads only what it must see: the jobs whose check time has come (from the due index),
//! the ledger pages (listed in it), and one slice of the table for records written before either.
//! Each repair on both backends at the deployed threshold, a healthy job left alone and checked
//! later, a record from before check times found by the slice scan, and on the emulator, counted
//! through a proxy: the sweep's reads do not grow with the finished jobs the table keeps.

#[macro_use]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jobkit::clock::Millis;
use jobkit::job::{NewJob, WebhookStatus};
use jobkit::limits::Hold;
use jobkit::slots::Ledger;
use jobkit::store::Insert;
use jobkit::sweep::{LEGACY_SLICES, SWEEP_AFTER, Sweeper};
use jobkit::{Job, JobStatus, now_millis};
use serde_json::json;
use support::*;

const AFTER: Millis = SWEEP_AFTER.as_millis() as Millis;

fn job(user: &str, max_attempts: u32, callback: bool) -> Job {
    Job::new(
        NewJob {
            user_id: user.into(),
            kind: "echo".into(),
            input: json!({"x": 1}).into(),
            max_attempts,
            ttl_secs: 3600,
            callback_url: callback.then(|| "https://example.com/hook".into()),
            counted: false,
        },
        now_millis(),
    )
}

/// The sweeper of `b` on a clock `by` ms ahead, as the deployed schedule would run it then.
fn sweeper_at(b: &Backends, by: Millis) -> Sweeper {
    sweeper_ahead(b, by)
}

/// `job` claimed by `owner` under a lease until `lease_until`.
async fn claimed(b: &Backends, job: &Job, lease_until: Millis) -> Job {
    b.store
        .claim(&job.job_id, "w1", lease_until, now_millis())
        .await
        .unwrap()
}

async fn a_queued_job_whose_message_was_lost_is_resent(b: Backends) {
    let lost = job("u", 3, false);
    b.store.create(&lost).await.unwrap();
    // Not yet: its check time has not come.
    let early = b.sweeper().sweep(SWEEP_AFTER).await.unwrap();
    assert_eq!((early.resent, early.checked), (0, 0), "{early:?}");
    let report = sweeper_at(&b, AFTER + 60_000)
        .sweep(SWEEP_AFTER)
        .await
        .unwrap();
    assert_eq!(report.resent, 1, "{report:?}");
    let got = b
        .queue
        .receive(10, Duration::from_secs(5), None)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "its message was sent again");
    let now = b.store.get(&lost.job_id).await.unwrap().unwrap();
    assert!(
        now.sweep_at.unwrap() > lost.sweep_at.unwrap(),
        "checked again later"
    );
}

async fn a_running_job_whose_last_attempt_died_is_buried_and_leaves_the_index(b: Backends) {
    let dying = job("u", 1, false);
    b.store.create(&dying).await.unwrap();
    claimed(&b, &dying, now_millis() + 1_000).await;
    let report = sweeper_at(&b, AFTER + 60_000)
        .sweep(SWEEP_AFTER)
        .await
        .unwrap();
    assert_eq!(report.buried, 1, "{report:?}");
    let dead = b.store.get(&dying.job_id).await.unwrap().unwrap();
    assert_eq!(dead.status, JobStatus::DeadLetter);
    assert!(
        b.store
            .to_check(now_millis() + 100 * AFTER, 100)
            .await
            .unwrap()
            .is_empty(),
        "a finished job is never read by the sweep again"
    );
}

async fn a_finished_job_whose_webhook_event_was_lost_is_announced_again(b: Backends) {
    let hooked = job("u", 3, true);
    b.store.create(&hooked).await.unwrap();
    let running = claimed(&b, &hooked, now_millis() + 60_000).await;
    let done = running
        .complete("w1", json!("ok").into(), vec![], now_millis())
        .unwrap();
    b.store.replace(&running, &done).await.unwrap();
    // The event's message was lost: nothing delivers it.
    let report = sweeper_at(&b, AFTER + 60_000)
        .sweep(SWEEP_AFTER)
        .await
        .unwrap();
    assert_eq!(report.reannounced, 1, "{report:?}");
    let again = b.store.get(&hooked.job_id).await.unwrap().unwrap();
    let hook = again.webhook.unwrap();
    assert_eq!((hook.status, hook.attempts), (WebhookStatus::Pending, 1));
}

async fn an_orphaned_slot_is_released_and_a_lapsed_hold_pruned(b: Backends) {
    let mut counted = job("slotty", 3, false);
    counted.counted = true;
    counted.slot_at = Some(now_millis() / 1000);
    let how = Insert {
        keyed: false,
        in_flight_cap: Some(10),
    };
    b.store.insert(&mut counted, &how).await.unwrap();
    b.expire_job(&counted.job_id).await;
    let ledger = Ledger::limit("kind=echo");
    let hold = Hold {
        job_id: counted.job_id.clone(),
        until: now_millis() - 1,
    };
    assert!(
        b.store
            .hold(&ledger, 5, &hold, now_millis() - 10)
            .await
            .unwrap()
            .is_some()
    );
    let mut sweeper = b.sweeper();
    // Holds are pruned in the run's slice: here the whole table.
    (sweeper.slot_grace, sweeper.legacy_slices) = (Duration::ZERO, 1);
    let report = sweeper.sweep(SWEEP_AFTER).await.unwrap();
    assert_eq!(
        (report.slots_released, report.holds_lapsed),
        (1, 1),
        "{report:?}"
    );
    assert_eq!(b.store.in_flight("slotty", 10).await.unwrap(), 0);
    let again = sweeper.sweep(SWEEP_AFTER).await.unwrap();
    assert_eq!(
        (again.slots_released, again.holds_lapsed),
        (0, 0),
        "{again:?}"
    );
}

async fn a_long_running_healthy_job_is_left_alone_and_checked_later(b: Backends) {
    let long = job("u", 1, false);
    b.store.create(&long).await.unwrap();
    let running = claimed(&b, &long, now_millis() + 4 * AFTER).await;
    let sweeper = sweeper_at(&b, AFTER + 60_000);
    let report = sweeper.sweep(SWEEP_AFTER).await.unwrap();
    assert_eq!(
        (report.checked, report.postponed, report.buried),
        (1, 1, 0),
        "{report:?}"
    );
    let after = b.store.get(&long.job_id).await.unwrap().unwrap();
    assert_eq!(
        (after.status, after.lease_expires_at, after.updated_at),
        (
            JobStatus::Running,
            running.lease_expires_at,
            running.updated_at
        ),
        "undisturbed"
    );
    let next = after.sweep_at.unwrap();
    assert!(
        next > long.sweep_at.unwrap() + AFTER,
        "checked again later: {next}"
    );
    // The next run does not read it: its check has not come.
    let again = sweeper.sweep(SWEEP_AFTER).await.unwrap();
    assert_eq!(again.checked, 0, "{again:?}");
    // Its lease holder's next write reads the job again (a new version) and keeps the check time.
    let beat = after
        .heartbeat("w1", now_millis() + 5 * AFTER, now_millis())
        .unwrap();
    assert!(
        b.store.replace(&running, &beat).await.is_err(),
        "the sweep's version is newer"
    );
    b.store.replace(&after, &beat).await.unwrap();
    assert_eq!(
        b.store.get(&long.job_id).await.unwrap().unwrap().sweep_at,
        Some(next)
    );
}

async fn a_record_from_before_check_times_is_found_by_one_slice(b: Backends) {
    let mut old = job("u", 3, false);
    old.sweep_at = None;
    old.updated_at -= 2 * AFTER;
    b.put_legacy_record(&old).await;
    assert!(
        b.store
            .to_check(now_millis() + 100 * AFTER, 100)
            .await
            .unwrap()
            .is_empty(),
        "not in the index"
    );
    // Each record is in exactly one slice of the day's.
    let mut found = Vec::new();
    for slice in 0..LEGACY_SLICES {
        if !b
            .store
            .slice(slice, LEGACY_SLICES, now_millis(), 10)
            .await
            .unwrap()
            .jobs
            .is_empty()
        {
            found.push(slice);
        }
    }
    assert_eq!(found.len(), 1, "{found:?}");
    let mut sweeper = b.sweeper();
    sweeper.legacy_slices = 1;
    let report = sweeper.sweep(SWEEP_AFTER).await.unwrap();
    assert_eq!(report.resent, 1, "{report:?}");
    let watched = b.store.get(&old.job_id).await.unwrap().unwrap();
    assert!(watched.sweep_at.is_some(), "watched from now on");
    assert!(
        b.store
            .slice(0, 1, now_millis(), 10)
            .await
            .unwrap()
            .jobs
            .is_empty(),
        "no longer a legacy record"
    );
    assert_eq!(
        b.store
            .to_check(watched.sweep_at.unwrap(), 10)
            .await
            .unwrap()
            .len(),
        1,
        "in the index at its check time"
    );
}

on_both_backends!(
    a_queued_job_whose_message_was_lost_is_resent,
    a_running_job_whose_last_attempt_died_is_buried_and_leaves_the_index,
    a_finished_job_whose_webhook_event_was_lost_is_announced_again,
    an_orphaned_slot_is_released_and_a_lapsed_hold_pruned,
    a_long_running_healthy_job_is_left_alone_and_checked_later,
    a_record_from_before_check_times_is_found_by_one_slice,
);

/// A ledger page written before pages were listed (no index entry) is listed by the slice scan, and
/// its orphan released in the same run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_from_before_listing_is_listed_by_the_slice_and_swept() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let env = TestEnv::start().await;
    let orphan = job("paged", 3, false);
    let key = Ledger::owner("paged").key(Some(0));
    aws_sdk_dynamodb::Client::new(&env.sdk)
        .update_item()
        .table_name(&env.config.table)
        .key("job_id", AttributeValue::S(key))
        .update_expression("ADD slots :m")
        .expression_attribute_values(
            ":m",
            AttributeValue::Ss(vec![format!("{}@{}", orphan.job_id, now_millis() / 1000)]),
        )
        .send()
        .await
        .unwrap();
    assert!(
        env.store.all_slots().await.unwrap().is_empty(),
        "not listed"
    );
    let mut sweeper = env.backend.sweeper();
    (sweeper.slot_grace, sweeper.legacy_slices) = (Duration::ZERO, 1);
    let report = sweeper.sweep(SWEEP_AFTER).await.unwrap();
    // Only a listed page is swept.
    assert_eq!(report.slots_released, 1, "{report:?}");
}

/// What the sweep reads, counted at the wire: the jobs due for a check and nothing of the finished
/// jobs the table keeps (ten times more of them change nothing), and of the slice scan only its
/// slice. The old sweep scanned the whole table twice per run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeps_reads_do_not_grow_with_finished_jobs() {
    let env = TestEnv::start().await;
    let proxy = support::proxy::FaultProxy::start(&endpoint(), 0.0, 0.0).await;
    let sdk = jobkit::aws::sdk_config(Some(&proxy.endpoint)).await;
    let counted = Arc::new(DynamoStore::new(
        aws_sdk_dynamodb::Client::new(&sdk),
        &env.config.table,
    ));
    let sweeper = Sweeper {
        store: counted,
        clock: Arc::new(Ahead(AFTER + 60_000)),
        ..env.backend.sweeper()
    };
    let finished = async |n: usize| {
        for _ in 0..n {
            let mut done = job("many", 3, false);
            done.status = JobStatus::Completed;
            done.finished_at = Some(now_millis());
            env.store.create(&done).await.unwrap();
        }
    };
    // One job in flight, due for its check at each run; `n` more finished jobs before each.
    let mut runs = Vec::new();
    for n in [20, 200] {
        finished(n).await;
        let long = job("few", 1, false);
        env.store.create(&long).await.unwrap();
        env.store
            .claim(&long.job_id, "w1", now_millis() + 4 * AFTER, now_millis())
            .await
            .unwrap();
        let (scanned, read) = (&proxy.stats.scanned, &proxy.stats.read);
        let before = (
            scanned.load(Ordering::Relaxed),
            read.load(Ordering::Relaxed),
        );
        let report = sweeper.sweep(SWEEP_AFTER).await.unwrap();
        assert_eq!((report.checked, report.postponed), (1, 1), "{report:?}");
        runs.push((
            scanned.load(Ordering::Relaxed) - before.0,
            read.load(Ordering::Relaxed) - before.1,
        ));
    }
    let items = env.item_count().await as u64;
    assert!(items >= 222, "{items}");
    // Index entries and items read: the one job due (its key and its item), whatever the table holds.
    assert_eq!(
        runs[0].1, runs[1].1,
        "reads grew with finished jobs: {runs:?}"
    );
    assert!(runs[1].1 <= 2, "{runs:?}");
    // The slice scan reads a 288th of the table (a handful of items here), never all of it.
    assert!(runs[1].0 * 10 < items, "scanned {runs:?} of {items} items");
}
