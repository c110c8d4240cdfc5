//! White-box regression tests of the engine (issue 12's defects).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Observer;
use crate::SyncMap;

thread_local! {
    /// Locked rounds `snapshot` ran on this thread (counted in test builds only).
    pub(super) static SNAPSHOT_ROUNDS: Cell<usize> = const { Cell::new(0) };
}

/// An iteration finishes in bounded work while another thread adds new keys as fast as it can.
/// Before the fix, `snapshot` promoted, saw the read tier amended again by the next new key,
/// and started over: thousands of rounds per iteration, for as long as the inserts went on.
#[test]
fn iteration_is_not_starved_by_a_stream_of_new_keys() {
    let map: Arc<SyncMap<u64, u64>> = Arc::new((0..1_000).map(|i| (i, i)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (map, stop) = (map.clone(), stop.clone());
        std::thread::spawn(move || {
            // A sliding window of fresh keys: every insert amends the read tier, and the map
            // stays about the same size.
            let mut k = 1_000_000u64;
            while !stop.load(SeqCst) {
                map.insert(k, k);
                map.remove(&(k - 100));
                k += 1;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_millis(500);
    let mut worst = 0;
    let mut iterations = 0;
    while Instant::now() < deadline {
        SNAPSHOT_ROUNDS.with(|n| n.set(0));
        let seen = map.pin().iter().count();
        assert!(
            seen >= 1_000,
            "keys 0..1,000 are present throughout: saw {seen}"
        );
        worst = worst.max(SNAPSHOT_ROUNDS.with(Cell::get));
        iterations += 1;
    }
    stop.store(true, SeqCst);
    writer.join().unwrap();
    println!(
        "worst {worst} rounds over {iterations} iterations, read capacity {}",
        map.stats().read_capacity
    );
    // About 1,100 live keys in a table of about 2,300 slots: one migration is about 1,250 work
    // units, two steps of `SNAPSHOT_STEP` (the second promotes), plus at most one round that
    // finds a newer tier. (Before the fix: 5 rounds and more, for as long as inserts go on.)
    assert!(
        worst <= 3,
        "an iteration took {worst} locked rounds ({iterations} iterations)"
    );
}

/// Installs an observer on `map` that counts its calls, and inserts keys 0..100.
fn count_observations<S: std::hash::BuildHasher>(map: &SyncMap<u64, u64, S>) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    map.raw().set_observer(Some(Observer(Box::new(move |_| {
        c.fetch_add(1, SeqCst);
    }))));
    for i in 0..100 {
        map.insert(i, i);
    }
    calls
}

/// The observer (the retention alarm's hook) runs after the promotions that iteration and
/// compaction make, as the docs promise for every promotion. Before the fix, `snapshot` and
/// `compact_round` unlocked without `unlock_and_maintain` (then `finish`), so it never ran after them.
#[test]
fn the_observer_runs_after_promotions_by_iteration_and_compaction() {
    let map: SyncMap<u64, u64> = SyncMap::with_capacity(1_000);
    let calls = count_observations(&map);
    let before = (calls.load(SeqCst), map.stats().promotions);
    // Iteration promotes the dirty tier (it holds every key).
    assert_eq!(map.pin().iter().count(), 100);
    let after = (calls.load(SeqCst), map.stats().promotions);
    assert_eq!(after.1, before.1 + 1, "iteration promoted once");
    assert!(after.0 > before.0, "the observer ran after that promotion");
    // Compaction by `shrink_to_fit` (no new key, no other slow operation).
    for i in 0..90 {
        map.remove(&i);
    }
    let before = (calls.load(SeqCst), map.stats().promotions);
    map.shrink_to_fit();
    let after = (calls.load(SeqCst), map.stats().promotions);
    assert!(after.1 > before.1, "compaction promoted");
    assert!(
        after.0 > before.0,
        "the observer ran after the compaction's promotion"
    );
}

/// As above for a parallel iteration of a map of several shards: its snapshots promote, and the
/// observer runs once they are taken (the flags the shards set are not left for a later
/// operation).
#[cfg(feature = "rayon")]
#[test]
fn the_observer_runs_after_promotions_by_parallel_iteration() {
    use rayon::iter::ParallelIterator;
    let map: SyncMap<u64, u64> = SyncMap::with_capacity_shards_and_hasher(
        1_000,
        4,
        std::collections::hash_map::RandomState::new(),
    );
    let calls = count_observations(&map);
    let before = (calls.load(SeqCst), map.stats().promotions);
    assert_eq!(map.pin().par_iter().count(), 100);
    let after = (calls.load(SeqCst), map.stats().promotions);
    assert!(after.1 > before.1, "the snapshots promoted");
    assert!(
        after.0 > before.0,
        "the observer ran after those promotions"
    );
}
#[test]
fn zz_debug_split_spare() {
    let map: SyncMap<u64, u64> = SyncMap::new();
    for i in 0..100_000u64 { map.insert(i, i); }
    map.reclaim();
    for i in 0..90_000u64 { map.remove(&i); }
    map.reclaim();
    let raw = map.raw();
    for (i, s) in raw.shards().iter().enumerate() {
        let st = s.dirty();
        let g = raw.pin();
        let r = s.read(&g);
        eprintln!("shard {i}: cache {} tier {} live {} entries {} cap {}", st.slots.len(), st.tier.is_some(), r.gen.raw_live(), r.gen.raw_entries(), r.table.capacity());
    }
    eprintln!("{}", map.stats());
}
