//! Bounded sets of holders, laid out in pages: the one mechanism behind every "at most N at once" of
//! the kit. Pure: the layout, the page a holder goes to, and what a store instance remembers of page
//! loads. The stores do the I/O (see [`crate::store`]).
//!
//! A **ledger** is a set of holders under a key, with a cap: today one per owner (the in-flight cap,
//! [`Ledger::owner`]); concurrency keys (per kind, per key) are ledgers under other keys. Holders are
//! jobs, each a member `{job}@{second}` ([`Slot`]). The cap is split over **pages**, separate items of
//! at most [`PAGE_CAPACITY`] members whose capacities add up to the cap exactly ([`Layout`]). A member
//! is added to one page by a write conditional on that page holding fewer than its capacity, so no page
//! ever holds more than its capacity and the ledger never more than the cap, however many writers race.
//!
//! Why pages: one item holding every member grows by ~37 bytes per holder, and DynamoDB bills a write
//! by the item's size (one unit per KB), so a busy owner's every add and removal cost more and more,
//! all on one partition key (~1,000 writes/s at most). A page stays under 1 KB: every add and removal
//! is one write unit, whatever the count, and the writes spread over `cap / 24` partition keys.
//!
//! Which page: the job's **home** (a hash of its id) when it has room, else one with room chosen by the
//! same hash among those a store instance knows of ([`Views`]: loads it read, at most [`VIEW_TTL`]
//! old, corrected by its own writes). A store that finds its choice full reads every page's load once
//! and picks again; a refusal costs at most [`MAX_ADDS`] refused writes and one read of the pages, and
//! none at all within [`VIEW_TTL`] of a read that found all full. The record keeps its page
//! ([`crate::job::Job::slot_page`]), so the removal goes straight to it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::job::{JobId, Slot};

/// Members a page holds at most: 24 members of 37 bytes and a 75-byte key stay under DynamoDB's 1 KB
/// write unit (checked by a test below).
pub const PAGE_CAPACITY: u32 = 24;

/// How long a store instance trusts page loads it read. Slots freed elsewhere meanwhile are not seen:
/// an instance may refuse an owner for up to this long after a slot freed (the `429` asks the client to
/// wait ten times longer).
pub const VIEW_TTL: Duration = Duration::from_secs(1);

/// Conditional adds one insert tries before it refuses (each refused add bills one write unit).
pub const MAX_ADDS: usize = 3;

/// The key prefix of the in-flight cap's ledgers' items (what the sweep scans for).
pub const OWNER_PREFIX: &str = "user#";

/// The key prefix of concurrency limits' ledger pages (see [`crate::limits`]; what the sweep scans for
/// expired holds).
pub const HOLD_PREFIX: &str = "lim#";

/// A ledger: the holders under one key. Named by a hash, so the key (an IAM ARN, say) may be long and
/// says nothing in the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ledger(String);

impl Ledger {
    /// The owner's in-flight ledger. Its page-less item key is the slot item of ledgers written before
    /// pages, so a job in flight across the upgrade still finds its member.
    pub fn owner(user: &str) -> Self {
        Self(format!(
            "{OWNER_PREFIX}{}",
            hex::encode(sha2::Sha256::digest(user.as_bytes()))
        ))
    }

    /// A concurrency limit's ledger (see [`crate::limits`]), named by a 128-bit hash of what it counts
    /// (its kind, key and value): short, so a full page of holds stays within one write unit.
    pub fn limit(scope: &str) -> Self {
        let hash = sha2::Sha256::digest(scope.as_bytes());
        Self(format!("{}{}", HOLD_PREFIX, hex::encode(&hash[..16])))
    }

    /// A limit ledger's page an item key names, if it names one.
    pub fn parse_limit_key(key: &str) -> Option<(Self, u32)> {
        let rest = key.strip_prefix(HOLD_PREFIX)?;
        let (hash, page) = rest.split_once('#')?;
        let page = page.parse().ok()?;
        (hash.len() == 32 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| (Self(format!("{}{hash}", HOLD_PREFIX)), page))
    }

    /// The item key of `page` (`None`: the page-less item of ledgers written before pages).
    pub fn key(&self, page: Option<u32>) -> String {
        match page {
            Some(p) => format!("{}#{p}", self.0),
            None => self.0.clone(),
        }
    }

    /// The ledger and page an item key names, if it names one.
    pub fn parse_key(key: &str) -> Option<(Self, Option<u32>)> {
        let rest = key.strip_prefix(OWNER_PREFIX)?;
        let (hash, page) = match rest.split_once('#') {
            Some((hash, page)) => (hash, Some(page.parse().ok()?)),
            None => (rest, None),
        };
        (hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| (Self(format!("{OWNER_PREFIX}{hash}")), page))
    }
}

/// How a cap is split over pages: `ceil(cap / PAGE_CAPACITY)` pages, capacities as even as can be
/// (differing by one at most), adding up to the cap exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    cap: u32,
}

impl Layout {
    pub fn new(cap: u32) -> Self {
        Self { cap }
    }

    pub fn cap(&self) -> u32 {
        self.cap
    }

    pub fn pages(&self) -> u32 {
        self.cap.div_ceil(PAGE_CAPACITY).max(1)
    }

    /// How many members page `page` may hold.
    pub fn capacity(&self, page: u32) -> u32 {
        let pages = self.pages();
        self.cap / pages + u32::from(page < self.cap % pages)
    }

    /// The page a job's member goes to when it has room: spread by a hash of the id.
    pub fn home(&self, id: &JobId) -> u32 {
        (spread(id).0 % u64::from(self.pages())) as u32
    }

    /// The page to try for `id`: its home if `load` does not say it is full, else one `load` says has
    /// room, chosen by the id's hash among them (so concurrent writers go different ways); `None` when
    /// every page not in `tried` is full. `load` is what is known of a page's members (`None`:
    /// nothing, taken as room).
    pub fn pick(
        &self,
        id: &JobId,
        load: impl Fn(u32) -> Option<u32>,
        tried: &[u32],
    ) -> Option<u32> {
        let room = |p: u32| !tried.contains(&p) && load(p).is_none_or(|n| n < self.capacity(p));
        let home = self.home(id);
        if room(home) {
            return Some(home);
        }
        let open: Vec<u32> = (0..self.pages()).filter(|&p| room(p)).collect();
        (!open.is_empty()).then(|| open[(spread(id).1 % open.len() as u64) as usize])
    }
}

/// Two independent 64-bit hashes of a job id.
fn spread(id: &JobId) -> (u64, u64) {
    let d = sha2::Sha256::digest(id.as_str().as_bytes());
    let word = |i: usize| u64::from_be_bytes(d[i..i + 8].try_into().expect("8 bytes"));
    (word(0), word(8))
}

/// What one store instance knows of its ledgers' page loads: read at most [`VIEW_TTL`] ago, kept up to
/// date by its own adds and removals. Only ever a guide to which page to try: the conditional write
/// decides, so a wrong view costs a refused write, never an exceeded cap.
#[derive(Debug, Default)]
pub struct Views {
    views: Mutex<HashMap<(Ledger, Layout), View>>,
}

#[derive(Debug, Clone)]
struct View {
    loads: Vec<u32>,
    read_at: Instant,
}

/// Ledgers one instance remembers at most (the oldest views are dropped first).
const MAX_VIEWS: usize = 1024;

impl Views {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Ledger, Layout), View>> {
        self.views.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The known load of every page of `ledger` under `layout`, if read within [`VIEW_TTL`].
    pub fn loads(&self, ledger: &Ledger, layout: Layout) -> Option<Vec<u32>> {
        let key = (ledger.clone(), layout);
        let mut views = self.lock();
        match views.get(&key) {
            Some(v) if v.read_at.elapsed() < VIEW_TTL => Some(v.loads.clone()),
            Some(_) => {
                views.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Records loads just read.
    pub fn read(&self, ledger: &Ledger, layout: Layout, loads: Vec<u32>) {
        let mut views = self.lock();
        if views.len() >= MAX_VIEWS {
            let oldest = views
                .iter()
                .min_by_key(|(_, v)| v.read_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                views.remove(&k);
            }
        }
        views.insert(
            (ledger.clone(), layout),
            View {
                loads,
                read_at: Instant::now(),
            },
        );
    }

    /// Records what a write saw of `page`: its load now.
    pub fn saw(&self, ledger: &Ledger, layout: Layout, page: u32, load: u32) {
        if let Some(v) = self.lock().get_mut(&(ledger.clone(), layout))
            && let Some(l) = v.loads.get_mut(page as usize)
        {
            *l = load;
        }
    }

    /// Records an add (`+1`) or a removal (`-1`) of a member of `page`, in every layout of `ledger`
    /// this instance knows.
    pub fn moved(&self, ledger: &Ledger, page: u32, by: i32) {
        for ((l, _), v) in self.lock().iter_mut() {
            if l == ledger
                && let Some(load) = v.loads.get_mut(page as usize)
            {
                *load = load.saturating_add_signed(by);
            }
        }
    }
}

/// The slots of one page found by a scan: the sweep's view of a ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageSlots {
    pub ledger: Ledger,
    pub page: Option<u32>,
    /// Its members, each naming this page.
    pub slots: Vec<Slot>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<JobId> {
        (0..n)
            .map(|i| JobId::generate(1_700_000_000_000 + i as i64))
            .collect()
    }

    #[test]
    fn page_capacities_add_up_to_the_cap_and_stay_within_a_page() {
        for cap in [1, 2, 23, 24, 25, 47, 48, 49, 100, 1000, 5000, 9999, 10_000] {
            let l = Layout::new(cap);
            let caps: Vec<u32> = (0..l.pages()).map(|p| l.capacity(p)).collect();
            assert_eq!(caps.iter().sum::<u32>(), cap, "cap {cap}");
            assert!(
                caps.iter().all(|&c| (1..=PAGE_CAPACITY).contains(&c)),
                "cap {cap}: {caps:?}"
            );
            assert!(caps.iter().max().unwrap() - caps.iter().min().unwrap() <= 1);
        }
    }

    /// DynamoDB's item size: attribute names and values (a string set: its members' bytes).
    #[test]
    fn a_full_page_is_billed_one_write_unit() {
        let ledger = Ledger::owner(&"x".repeat(2048));
        let key = ledger.key(Some(416)); // the last page of the largest cap (10,000)
        let member = Slot {
            job_id: JobId::generate(1_700_000_000_000),
            since: Some(4_102_444_800), // 2100: ten digits
            page: Some(416),
        }
        .to_string();
        let size =
            "job_id".len() + key.len() + "slots".len() + PAGE_CAPACITY as usize * member.len();
        assert!(size <= 1024, "{size} bytes");
    }

    #[test]
    fn keys_round_trip_and_foreign_keys_are_not_ledgers() {
        let l = Ledger::owner("alice");
        for page in [None, Some(0), Some(416)] {
            assert_eq!(Ledger::parse_key(&l.key(page)), Some((l.clone(), page)));
        }
        for bad in [
            "user#abc",
            "step#x",
            "01KAQZ7X4N3M2P1R0S9T8V7W6Y",
            &format!("{}#x", l.key(None)),
        ] {
            assert_eq!(Ledger::parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_job_goes_home_while_it_has_room_then_elsewhere_and_nowhere_when_all_are_full() {
        let l = Layout::new(100);
        let id = &ids(1)[0];
        let home = l.home(id);
        assert_eq!(l.pick(id, |_| None, &[]), Some(home));
        let full_home = |p: u32| Some(if p == home { l.capacity(p) } else { 3 });
        let other = l.pick(id, full_home, &[]).unwrap();
        assert_ne!(other, home);
        assert_eq!(
            l.pick(id, full_home, &[]),
            Some(other),
            "the same choice again"
        );
        assert_eq!(l.pick(id, |p| Some(l.capacity(p)), &[]), None);
        let all: Vec<u32> = (0..l.pages()).collect();
        assert_eq!(l.pick(id, |_| None, &all), None, "every page tried");
    }

    #[test]
    fn homes_spread_over_the_pages() {
        let l = Layout::new(5000);
        let mut per_page = vec![0u32; l.pages() as usize];
        for id in ids(50_000) {
            per_page[l.home(&id) as usize] += 1;
        }
        let mean = 50_000 / l.pages();
        assert!(
            per_page.iter().all(|&n| n > mean / 2 && n < mean * 2),
            "{per_page:?}"
        );
    }

    /// Filling a ledger to its cap with what a single writer knows: every job admitted, each added
    /// where it was sent first once the view is read.
    #[test]
    fn a_ledger_fills_exactly_to_its_cap_and_refuses_the_next() {
        for cap in [30, 100, 1000] {
            let l = Layout::new(cap);
            let mut loads = vec![0u32; l.pages() as usize];
            for id in ids(cap as usize) {
                let p = l
                    .pick(&id, |p| Some(loads[p as usize]), &[])
                    .expect("room left");
                loads[p as usize] += 1;
            }
            assert!((0..l.pages()).all(|p| loads[p as usize] == l.capacity(p)));
            assert_eq!(l.pick(&ids(1)[0], |p| Some(loads[p as usize]), &[]), None);
        }
    }

    #[test]
    fn views_expire_and_follow_the_instance_own_writes() {
        let views = Views::default();
        let (ledger, layout) = (Ledger::owner("u"), Layout::new(48));
        assert_eq!(views.loads(&ledger, layout), None);
        views.read(&ledger, layout, vec![24, 3]);
        views.moved(&ledger, 0, -1);
        views.moved(&ledger, 1, 1);
        views.saw(&ledger, layout, 1, 9);
        assert_eq!(views.loads(&ledger, layout), Some(vec![23, 9]));
        assert_eq!(views.loads(&ledger, Layout::new(47)), None, "per layout");
    }
}
