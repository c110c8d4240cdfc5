//! Retired tiers past their grace period, freed a bounded number of slots at a time.
//!
//! A promotion or `clear` retires a whole tier: its table and every entry it owns (I3). Freeing
//! that inside the epoch's deferred closure would run O(capacity) work, a full table scan plus
//! one `free` per owned entry, inside whatever operation of whatever thread next collects (a
//! 3.3 ms stall at the 99.99th percentile of a 100,000-key churn, `BENCHMARKS.md`). So a large
//! tier's deferred closure only moves it here (O(1)), and the map's own slow operations free
//! [`BUDGET`] slots' worth each, outside the dirty lock, chunk by chunk (memory comes back as the
//! cursor passes). `SyncMap::reclaim` and `clear_and_release` empty the graveyard at once, and a
//! dropped map frees what is left.
//!
//! Tiers below [`SMALL_SLOTS`] slots are still freed by their deferred closure: that costs at
//! most a few microseconds, and keeps small maps from holding retired memory until their next
//! slow operation.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use super::entry::Entry;
use super::{Shared, Tier};
use crate::facade::{lock, AtomicUsize, Mutex};

/// Tiers with at least this many slots (both retired tables of one retirement together) go
/// through the graveyard.
#[cfg(not(any(tiermap_loom, miri)))]
pub(crate) const SMALL_SLOTS: usize = 4096;
/// Under Miri, tests of a few hundred entries reach the graveyard (Miri runs them ~1000x
/// slower than native).
#[cfg(all(miri, not(tiermap_loom)))]
pub(crate) const SMALL_SLOTS: usize = 512;
/// Loom models use tiny tables (4-slot chunks): a two-chunk retirement already goes through the
/// graveyard, so that the models cover it.
#[cfg(tiermap_loom)]
pub(crate) const SMALL_SLOTS: usize = 8;

/// Slots freed per slow operation while one corpse is queued; doubled for each further corpse
/// (up to 64 times), and never less than the operation's migration budget, so that the graveyard
/// drains faster than promotions can fill it.
///
/// 64 slots cost about a microsecond (the owned entries among them are cache misses). Measured
/// along a 100,000-key churn (`LAT_CLOCK=wall cargo bench --bench latency`, `BENCHMARKS.md`):
/// 256 slots per step put the p99 step at 6.1-6.6 µs, 64 at 4.0-4.4 µs (3.3 µs when the whole
/// tier was freed at once, with its 4-6 ms stalls).
#[cfg(not(tiermap_loom))]
pub(crate) const BUDGET: usize = 64;
/// Loom: half a 4-slot chunk, so that the models also stop and resume inside a chunk.
#[cfg(tiermap_loom)]
pub(crate) const BUDGET: usize = 2;

/// The least a slow operation frees, given its migration budget: twice that budget, so that
/// the graveyard (fed by promotions) drains at least twice as fast as migrations retire tables.
/// Loom builds use only [`BUDGET`], so that the models see a tier freed over several steps (the
/// migration budget, at least 32 slots, covers a whole model table).
#[inline]
pub(crate) fn step_floor(migration_budget: usize) -> usize {
    if cfg!(tiermap_loom) {
        0
    } else {
        migration_budget.saturating_mul(2)
    }
}

/// A retired tier that no guard can reach any more, being freed.
pub(crate) struct Corpse<K, V> {
    tier: *mut Tier<K, V>,
    /// I3: the tier owns its tagged entries and the untagged ones at slots `>= upto`.
    upto: usize,
    /// Next slot to free (its chunk is freed with its last slot).
    next: usize,
    /// What `Shared::retired_bytes` counts for this corpse, subtracted when it is gone.
    bytes: usize,
}

impl<K, V> Corpse<K, V> {
    /// # Safety
    /// `tier` came from `Box::into_raw`, no reader can reach it (its grace period is over), it
    /// owns the entries I3 says with `upto`, and it is handed over exactly once.
    pub(crate) unsafe fn new(tier: *mut Tier<K, V>, upto: usize, bytes: usize) -> Self {
        Corpse {
            tier,
            upto,
            next: 0,
            bytes,
        }
    }

    /// Frees slots (the entries they own, and each chunk after its last slot) until `budget`
    /// slots were looked at or the tier is empty; then frees the tier itself. Returns whether it
    /// is gone (its `bytes` are then the caller's to uncount). Panic-safe: if a key's or value's
    /// `Drop` panics, the entries already handed out are not seen again.
    fn free_some(&mut self, budget: &mut usize) -> bool {
        // SAFETY: `new`'s contract: the tier is ours alone until it is freed below.
        let tier = unsafe { &mut *self.tier };
        let upto = self.upto;
        let slots = tier.table.capacity();
        while self.next < slots {
            if *budget == 0 {
                return false;
            }
            let (next, looked) = tier.table.release_slots(self.next, *budget, |i, e, owned| {
                if owned || i >= upto {
                    // SAFETY: I3: this tier is the entry's only owner, and `release_slots`
                    // cleared the slot first, so it is destroyed once.
                    unsafe { Entry::destroy(e) };
                }
            });
            self.next = next;
            // A chunk never allocated or empty costs one unit: the directory is still walked.
            *budget = budget.saturating_sub(looked.max(1));
        }
        // SAFETY: `new`'s contract; every chunk is freed, so this frees the directory and the
        // tier header only.
        drop(unsafe { Box::from_raw(self.tier) });
        true
    }

    /// Frees everything now.
    fn free_all(mut self) {
        let mut unlimited = usize::MAX;
        let done = self.free_some(&mut unlimited);
        debug_assert!(done);
    }
}

/// Frees a tier and the entries it owns (I3: its tagged entries and the untagged ones at slots
/// `>= upto`) now, in one go: for tiers that are small, or that nobody else can reach because
/// the caller has the map exclusively.
///
/// # Safety
/// As for [`Corpse::new`].
pub(crate) unsafe fn free_tier<K, V>(tier: *mut Tier<K, V>, upto: usize) {
    // SAFETY: per the caller; nothing is counted in `retired_bytes` for it here.
    unsafe { Corpse::new(tier, upto, 0) }.free_all();
}

/// Retired tiers waiting to be freed (see the module docs). Shared, through an `Arc`, with the
/// deferred closures that bury tiers in it, which may run after the map is dropped.
pub(crate) struct Graveyard<K, V> {
    yard: Mutex<Yard<K, V>>,
    /// How many corpses are queued: lets slow operations skip the lock when there are none.
    queued: AtomicUsize,
    shared: Arc<Shared>,
}

struct Yard<K, V> {
    /// Cleared when the map is dropped: later burials free at once.
    open: bool,
    corpses: Vec<Corpse<K, V>>,
}

impl<K, V> Graveyard<K, V> {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Graveyard {
            yard: Mutex::new(Yard {
                open: true,
                corpses: Vec::new(),
            }),
            queued: AtomicUsize::new(0),
            shared,
        }
    }

    /// Queues `corpse` (from a deferred closure: O(1)), or frees it now if the map is gone.
    pub(crate) fn bury(&self, corpse: Corpse<K, V>) {
        let mut yard = lock(&self.yard);
        if yard.open {
            yard.corpses.push(corpse);
            // Relaxed: a hint; `drain` re-checks under the lock.
            self.queued.fetch_add(1, Relaxed);
        } else {
            drop(yard);
            self.free_all(corpse);
        }
    }

    /// Whether any corpse is queued (a hint: one may be queued concurrently).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        // Relaxed: a hint; a corpse missed here is freed by a later operation.
        self.queued.load(Relaxed) == 0
    }

    /// Frees one step's worth: at least `floor` slots (the caller's migration budget, so that
    /// freeing keeps pace with the migrations that retire tiers), at least [`BUDGET`], doubled
    /// per further queued corpse up to 64 times that; `usize::MAX` frees everything. Runs user
    /// `Drop` code: call it without the dirty lock.
    pub(crate) fn drain(&self, floor: usize) {
        if self.is_empty() {
            return;
        }
        let queued = self.queued.load(Relaxed).max(1);
        let mut budget = floor.max(BUDGET << (queued - 1).min(6));
        while budget > 0 {
            let corpse = {
                let mut yard = lock(&self.yard);
                match yard.corpses.pop() {
                    Some(c) => {
                        self.queued.fetch_sub(1, Relaxed);
                        c
                    }
                    None => return,
                }
            };
            // Put the corpse back if a `Drop` panics, so that the rest is still freed.
            let mut held = Requeue {
                yard: self,
                corpse: Some(corpse),
            };
            let done = held
                .corpse
                .as_mut()
                .expect("set above")
                .free_some(&mut budget);
            // Once `done`, the corpse's tier is freed and the taken value (plain pointers, no
            // `Drop`) only carries its byte count.
            let corpse = held.corpse.take().expect("set above");
            if done {
                self.uncount(&corpse);
            } else {
                self.bury(corpse);
            }
        }
    }

    /// Frees every queued corpse and makes later burials free at once (the map is dropped).
    pub(crate) fn close(&self) {
        let corpses = {
            let mut yard = lock(&self.yard);
            yard.open = false;
            self.queued.store(0, Relaxed);
            std::mem::take(&mut yard.corpses)
        };
        for corpse in corpses {
            self.free_all(corpse);
        }
    }

    /// Frees `corpse` now and uncounts it.
    fn free_all(&self, corpse: Corpse<K, V>) {
        let bytes = corpse.bytes;
        corpse.free_all();
        // Relaxed: a statistic.
        self.shared.retired_bytes.fetch_sub(bytes, Relaxed);
    }

    /// Uncounts a corpse that `free_some` finished.
    fn uncount(&self, corpse: &Corpse<K, V>) {
        // Relaxed: a statistic.
        self.shared.retired_bytes.fetch_sub(corpse.bytes, Relaxed);
    }
}

/// Re-queues a corpse whose freeing was interrupted by a panic.
struct Requeue<'a, K, V> {
    yard: &'a Graveyard<K, V>,
    corpse: Option<Corpse<K, V>>,
}

impl<K, V> Drop for Requeue<'_, K, V> {
    fn drop(&mut self) {
        if let Some(corpse) = self.corpse.take() {
            self.yard.bury(corpse);
        }
    }
}

#[cfg(all(test, not(tiermap_loom)))]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::{Duration, Instant};

    use super::{BUDGET, SMALL_SLOTS};
    use crate::SyncMap;

    /// Entries per map: enough for tables over `SMALL_SLOTS` slots.
    const SIZE: u64 = if cfg!(miri) { 400 } else { 10_000 };

    /// A value that counts its drops in the given counter, and panics in `drop` if told to.
    struct Counted {
        drops: &'static AtomicUsize,
        panic: bool,
    }

    impl Drop for Counted {
        fn drop(&mut self) {
            self.drops.fetch_add(1, SeqCst);
            if self.panic {
                panic!("a panicking value destructor");
            }
        }
    }

    fn filled(n: u64, drops: &'static AtomicUsize, panic_at: Option<u64>) -> SyncMap<u64, Counted> {
        let map = SyncMap::new();
        for i in 0..n {
            let panic = panic_at == Some(i);
            map.insert(i, Counted { drops, panic });
        }
        map
    }

    /// Collects until the deferred closures of `map`'s retired tiers have run (other tests of
    /// this binary may pin the global epoch for a while).
    fn until_buried(map: &SyncMap<u64, Counted>) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while map.raw().grave.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the retired tiers were never buried"
            );
            map.raw().reclaimer.collect(1);
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_large_retired_tier_is_freed_in_bounded_steps_by_slow_operations() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        const N: u64 = if cfg!(miri) { 800 } else { 20_000 };
        let map = filled(N, &DROPS, None);
        let slots = map.stats().read_capacity + map.stats().dirty_capacity;
        assert!(slots >= SMALL_SLOTS);
        map.clear();
        until_buried(&map);
        // Buried, not freed: the deferred closure did O(1) work.
        assert_eq!(DROPS.load(SeqCst), 0);
        assert!(map.stats().retired_bytes > 0);
        // Each slow operation (an insert of a new key) frees a bounded step: at most `BUDGET`
        // slots per queued corpse (two here, the read and the dirty tier), so at most that many
        // values are dropped.
        let mut steps = 0;
        let mut last = 0;
        while !map.raw().grave.is_empty() {
            steps += 1;
            // Each step frees at least `BUDGET` slots (or skips a whole unused chunk).
            assert!(
                steps as usize <= slots.div_ceil(BUDGET) + 16,
                "graveyard not drained after {steps} slow operations ({slots} slots)"
            );
            let queued = map.raw().grave.queued.load(SeqCst);
            map.insert(
                N + steps,
                Counted {
                    drops: &DROPS,
                    panic: false,
                },
            );
            let now = DROPS.load(SeqCst);
            let floor = super::step_floor(map.raw().dirty().budget);
            let budget = floor.max(BUDGET << (queued.max(1) - 1).min(6));
            assert!(
                now - last <= budget,
                "one step dropped {} values",
                now - last
            );
            last = now;
        }
        assert_eq!(DROPS.load(SeqCst), N as usize);
        assert!(steps > 1, "freed in one step: not incremental");
        assert!(map.raw().grave.is_empty());
        // What is still retired is at most the small tiers the new inserts outgrew, waiting
        // for their grace period (freed by their deferred closures, not the graveyard).
        let retired = map.stats().retired_bytes;
        assert!(retired < SMALL_SLOTS * 16, "{retired} bytes still retired");
        assert_eq!(map.len(), steps as usize);
    }

    #[test]
    fn reclaim_empties_the_graveyard_at_once() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let map = filled(SIZE, &DROPS, None);
        map.clear();
        until_buried(&map);
        assert_eq!(map.reclaim(), 0);
        assert_eq!(DROPS.load(SeqCst), SIZE as usize);
        assert!(map.raw().grave.is_empty());
    }

    #[test]
    fn dropping_the_map_frees_queued_and_pending_tiers() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        let map = filled(SIZE, &DROPS, None);
        map.clear();
        until_buried(&map);
        let second = filled(SIZE, &DROPS, None);
        // Retired but perhaps not yet past its grace period when the map is dropped: the
        // deferred closure then finds the graveyard closed and frees the tier itself.
        second.clear();
        drop(second);
        drop(map);
        let deadline = Instant::now() + Duration::from_secs(10);
        while DROPS.load(SeqCst) < 2 * SIZE as usize {
            let dropped = DROPS.load(SeqCst);
            assert!(
                Instant::now() < deadline,
                "{dropped} of {} dropped",
                2 * SIZE
            );
            crate::SyncMap::<u8, u8>::new().reclaim();
            std::thread::yield_now();
        }
        assert_eq!(DROPS.load(SeqCst), 2 * SIZE as usize);
    }

    #[test]
    fn a_panicking_destructor_loses_nothing_else() {
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        const N: u64 = SIZE;
        let map = filled(N, &DROPS, Some(N / 2));
        map.clear();
        until_buried(&map);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| map.reclaim()));
        assert!(caught.is_err(), "the destructor's panic reaches the caller");
        // The rest is still queued and freed; the map still works.
        assert_eq!(map.reclaim(), 0);
        assert_eq!(DROPS.load(SeqCst), N as usize);
        assert!(map.raw().grave.is_empty());
        map.insert(
            1,
            Counted {
                drops: &DROPS,
                panic: false,
            },
        );
        assert_eq!(map.len(), 1);
    }
}
