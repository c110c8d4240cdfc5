//! White-box regression tests of the engine (issue 12's defects).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::hash::BuildHasher;

use super::{Observer, RawMap};
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
/// Inserts keys `0..` into a map built empty until it splits; returns how many it took.
fn fill_until_split(map: &SyncMap<u64, u64>) -> u64 {
    let mut k = 0;
    while map.shard_count() == 1 {
        map.insert(k, k * 10);
        // Reads of the new keys advance the promotion clock, whose promotion splits.
        let _ = map.get(&(k / 2));
        k += 1;
        assert!(k < 1 << 20, "never split");
    }
    k
}

/// A map built empty becomes `split_shards()` shards once it holds `SPLIT_AT` keys at a
/// promotion, keeps every key and its count, and works as before after the split.
#[test]
fn a_map_built_empty_splits_as_it_grows_and_keeps_everything() {
    let map: SyncMap<u64, u64> = SyncMap::new();
    assert_eq!(map.shard_count(), 1);
    let n = fill_until_split(&map);
    assert!(n >= super::sharded::SPLIT_AT as u64, "split at {n} keys");
    assert!(map.shard_count() > 1);
    for k in 0..n {
        assert_eq!(map.get_cloned(&k), Some(k * 10), "key {k} after the split");
    }
    assert_eq!(map.len() as u64, n);
    let s = map.stats();
    assert_eq!((s.len as u64, s.deleted), (n, 0), "{s}");
    let mut seen: Vec<u64> = map.pin().iter().map(|(k, _)| *k).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "each key once");
    // Writes of every kind on the split map.
    for k in (0..n).step_by(2) {
        assert_eq!(map.remove(&k).as_deref(), Some(&(k * 10)));
    }
    for k in n..n + 1000 {
        assert!(map.insert(k, k * 10).is_none());
    }
    assert_eq!(map.len() as u64, n - n.div_ceil(2) + 1000);
    map.retain(|k, _| k % 3 != 0);
    let expect = (1..n)
        .step_by(2)
        .chain(n..n + 1000)
        .filter(|k| k % 3 != 0)
        .count();
    assert_eq!(map.len(), expect);
    map.shrink_to_fit();
    assert_eq!(map.stats().deleted, 0);
    map.clear();
    assert!(map.is_empty());
    assert_eq!(map.stats().len, 0);
    map.insert(1, 2);
    assert_eq!(map.get_cloned(&1), Some(2));
    assert_eq!(map.len(), 1);
}

/// A map filled by inserts alone (no reads: every promotion is made by a full dirty table,
/// which starts the next migration at once) splits too, with its migration under way.
#[test]
fn a_map_filled_by_inserts_alone_splits_mid_migration() {
    let map: SyncMap<u64, u64> = SyncMap::new();
    let n = 4 * super::sharded::SPLIT_AT as u64;
    for k in 0..n {
        map.insert(k, k + 1);
    }
    assert!(map.shard_count() > 1, "not split: {}", map.stats());
    for k in 0..n {
        assert_eq!(map.get_cloned(&k), Some(k + 1), "key {k}");
    }
    assert_eq!(map.len() as u64, n);
    let mut seen: Vec<u64> = map.pin().iter().map(|(k, _)| *k).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..n).collect::<Vec<_>>(), "each key once");
}

/// A one-shard map holding keys `0..n` (`n` past `SPLIT_AT`) that splits at its next chance:
/// filled with splitting off (a fill may split a map by itself), then made splittable.
fn one_shard_about_to_split() -> (SyncMap<u64, u64>, u64) {
    let mut map: SyncMap<u64, u64> =
        SyncMap::with_capacity_shards_and_hasher(0, 1, std::hash::RandomState::new());
    let n = super::sharded::SPLIT_AT as u64 + 100;
    for k in 0..n {
        map.insert(k, k);
    }
    map.raw_mut().set_split_at(super::sharded::SPLIT_AT);
    (map, n)
}

/// Splits `old`, the one shard of `map`, now (as the observation after a promotion that made
/// it due would), by inserting key `n`.
fn split_now(map: &SyncMap<u64, u64>, old: &super::Shard<u64, u64>, n: u64) {
    old.split_due.store(true, SeqCst);
    old.observe_due.store(true, SeqCst);
    let _ = map.insert(n, n);
    assert!(old.dirty().frozen, "not split");
}

/// An iteration that began on the one-shard array before the split, and reaches its shard
/// after it, goes over the new shards: every key once.
#[test]
fn an_iteration_begun_before_the_split_sees_every_key_once() {
    let (map, n) = one_shard_about_to_split();
    // The array as an iteration that began now would hold it.
    let raw = map.raw();
    let guard = raw.pin();
    let mut shards = raw.shards();
    assert_eq!(shards.len(), 1);
    split_now(&map, &shards[0], n);
    // The old array's shard is frozen: its snapshot sends the iteration to the new shards.
    let mut keys = Vec::new();
    let mut at = 0;
    while let Some((_, tier)) = super::sharded::snapshot_at(&mut shards, at, &guard) {
        keys.extend(super::RawIter::new(tier, &guard).map(|(e, _, _)| e.key));
        at += 1;
    }
    assert!(
        shards.len() > 1,
        "the iteration did not move to the new shards"
    );
    keys.sort_unstable();
    assert_eq!(keys, (0..=n).collect::<Vec<_>>(), "each key once");
}

/// An iteration that is walking the split shard's tiers (its snapshot was taken before the
/// split) stops at a `clear` after the split, as on any shard the `clear` reached.
#[test]
fn an_iteration_over_the_split_shard_stops_at_a_clear() {
    let (map, n) = one_shard_about_to_split();
    let old = &map.raw().shards()[0];
    let pinned = map.pin();
    // (Its snapshot may promote, and the observation that follows split.)
    let mut it = pinned.iter();
    assert!(it.next().is_some());
    split_now(&map, old, n);
    map.clear();
    assert!(it.next().is_none(), "the iteration went on past the clear");
    drop(pinned);
    assert!(map.is_empty());
}

/// An operation that picked the split shard before the split (here: called on it directly,
/// afterwards) still works: lookups find every key it held, lock-free writes reach the shared
/// entries, and anything that takes its lock goes to the key's new shard. `len` stays exact
/// (what the old shard's counts get after the split is `RawMap::residual`).
#[test]
fn operations_on_the_split_shard_reach_the_new_shards() {
    let map: SyncMap<u64, u64> = SyncMap::new();
    let raw = map.raw();
    // As an operation that loaded the shard array before the split: pinned first, then the
    // array loaded, and both kept across the split (the split shard's tiers are retired
    // through the epoch, so a guard pinned after the split could not use them; Miri's
    // race detector caught the first version of this test doing that).
    let guard = raw.pin();
    let old = &raw.shards()[0];
    let n = fill_until_split(&map);
    assert!(old.dirty().frozen);
    let hash = |k: u64| RawMap::<u64, u64>::mix(map.hasher().hash_one(k));
    for k in 0..n {
        assert_eq!(old.get(hash(k), &k, &guard), Some(&(k * 10)), "key {k}");
    }
    // A lock-free overwrite through the old shard (the key's entry is shared).
    assert_eq!(old.insert(hash(3), 3, 33, &guard), Some(&30));
    assert_eq!(map.get_cloned(&3), Some(33));
    // New keys take the lock: forwarded to their new shards.
    for k in n..n + 100 {
        assert!(old.insert(hash(k), k, k * 10, &guard).is_none());
    }
    // Removals through the old shard count in its generation, which `len` adds in.
    for k in 0..10 {
        assert!(old.remove(hash(k), &k, &guard).is_some());
    }
    drop(guard);
    for k in n..n + 100 {
        assert_eq!(map.get_cloned(&k), Some(k * 10), "forwarded key {k}");
    }
    for k in 0..10 {
        assert_eq!(map.get_cloned(&k), None);
    }
    assert_eq!(map.len() as u64, n + 100 - 10);
    assert_eq!(map.stats().len as u64, n + 100 - 10);
}

/// Two threads grow a map built empty through its split while a third reads: every key
/// inserted is there afterwards, and the count is exact.
#[test]
fn concurrent_writers_through_the_split() {
    const PER: u64 = if cfg!(miri) { 100 } else { 20_000 };
    let map: Arc<SyncMap<u64, u64>> = Arc::new(SyncMap::new());
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (map, stop) = (map.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(SeqCst) {
                if let Some(v) = map.get_cloned(&k) {
                    assert_eq!(v, k + 1);
                }
                k = (k + 7) % (2 * PER);
            }
        })
    };
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let map = map.clone();
            std::thread::spawn(move || {
                for k in (t * PER)..(t + 1) * PER {
                    assert!(map.get_or_insert(k, k + 1).is_inserted());
                    if k % 3 == 0 {
                        assert_eq!(map.get_cloned(&k), Some(k + 1));
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, SeqCst);
    reader.join().unwrap();
    assert!(cfg!(miri) || map.shard_count() > 1);
    for k in 0..2 * PER {
        assert_eq!(map.get_cloned(&k), Some(k + 1), "key {k}");
    }
    assert_eq!(map.len() as u64, 2 * PER);
}

/// A hash (as the tables use it) whose home slot in a table of `cap` slots is `home`, with
/// `salt` in the bits that the slot tag and the key filter take (the low bits of the top 32,
/// `hashbits`), so that entries of one home differ in tag.
fn hash_at(home: usize, cap: usize, salt: u64) -> u64 {
    let base = ((home as u64) << 32).div_ceil(cap as u64);
    let width = (1u64 << 32) / cap as u64;
    let h = ((base + salt % width) << 32) | (salt & 0xFFFF_FFFF);
    assert_eq!(super::hashbits::home(h, cap), home);
    h
}

/// `Table::clone_from` leaves every entry where a lookup finds it: probe sequences that wrap
/// from the table's end to its start, fresh keys that took a slot before the copy reached it,
/// a copy in steps of one work unit, and (at 8,192 slots, or under Miri) the key filter's
/// bits. Breaking any of the cases `clone_from` handles (the wrap run, the taken slot, the
/// filter merge) makes a lookup below miss.
#[test]
fn a_clone_keeps_every_entry_findable() {
    use super::arena::SlotCache;
    use super::entry::Entry;
    use super::table::Table;

    // Under Miri every table keeps a key filter (`filter::MIN_SLOTS` is 1), so the small one
    // covers the filter's merge there too.
    let caps: &[usize] = if cfg!(miri) { &[512] } else { &[512, 8192] };
    for &cap in caps {
        let arena = Entry::<u64, u64>::arena();
        let mut cache = SlotCache::new();
        let mut made = Vec::new();
        let mut entry = |hash: u64, key: u64| {
            let e = Entry::create(hash, key, key, &arena, &mut cache);
            made.push(e);
            (e, hash, key)
        };
        let src = Table::<u64, u64>::new(cap);
        assert_eq!(src.capacity(), cap);
        let mut in_src = Vec::new();
        // Runs that wrap: five keys homed at the last two slots fill them and slots 0..3.
        for (n, home) in [cap - 2, cap - 2, cap - 1, cap - 1, cap - 1]
            .into_iter()
            .enumerate()
        {
            in_src.push(entry(hash_at(home, cap, n as u64 + 1), n as u64));
        }
        // A cluster in the middle and a spread of single keys, to about half full.
        for n in 0..8u64 {
            in_src.push(entry(hash_at(100, cap, n + 1), 100 + n));
        }
        for n in 0..(cap as u64 / 2 - 20) {
            let home = (n as usize * 7919 + 200) % (cap - 200) + 150;
            in_src.push(entry(hash_at(home, cap, n + 20), 1_000 + n));
        }
        for &(e, h, _) in &in_src {
            src.insert_unique(e, h);
        }
        // The dirty table, with fresh keys already in it at homes of the cluster and of single
        // keys, so that copies find their slot taken.
        let dst = Table::<u64, u64>::new(cap);
        let mut fresh = Vec::new();
        for (n, home) in [100, 104, 151, 300].into_iter().enumerate() {
            fresh.push(entry(
                hash_at(home, cap, 1_000_000 + n as u64),
                1_000_000 + n as u64,
            ));
        }
        for &(e, h, _) in &fresh {
            dst.insert_unique(e, h);
        }
        // Where each entry sits in `src`: copied once the cursor is past it.
        let at: Vec<usize> = in_src
            .iter()
            .map(|&(_, hash, key)| src.find(hash, |k| *k == key).expect("in src").1)
            .collect();
        let mut wrap_run = true;
        let mut cursor = 0;
        let mut steps = 0;
        while cursor < cap {
            cursor = dst.clone_from(&src, cursor, 1, &mut wrap_run);
            steps += 1;
            // Mid-copy too (lock-free readers use the dirty table while it fills): every fresh
            // key, and every entry the copy went past, is found.
            if cap <= 512 || steps % 64 == 0 {
                let copied = in_src.iter().zip(&at).filter(|(_, &i)| i < cursor);
                for (&(e, hash, key), _) in copied.chain(fresh.iter().map(|f| (f, &0))) {
                    let found = dst.find(hash, |k| *k == key);
                    assert!(
                        found.is_some_and(|(f, _)| std::ptr::eq(f, e)),
                        "key {key} not found with the clone of {cap} slots at {cursor}"
                    );
                }
            }
        }
        assert!(!wrap_run, "the copy met an empty slot");
        assert_eq!(dst.len(), in_src.len() + fresh.len());
        for &(e, hash, key) in in_src.iter().chain(&fresh) {
            let found = dst.find(hash, |k| *k == key);
            assert!(
                found.is_some_and(|(f, _)| std::ptr::eq(f, e)),
                "key {key} (hash {hash:#x}) not found after the clone of {cap} slots"
            );
        }
        drop((src, dst));
        for e in made {
            // SAFETY: the entries were made from `arena`, hold `u64`s (no drop), and the tables
            // that held them are gone.
            unsafe { arena.free(e.cast()) };
        }
        arena.unreserve(&mut cache);
    }
}

/// Dropping a split map: without a walk when no shard holds a value cell (its blocks go back
/// whole), and with every shard walking its entries when one does (a later value of a key has
/// its own cell, which must be freed, and no shard may give the shared blocks back while
/// another still reads its entries). Under Miri (CI runs it there) a walk over released blocks
/// is a use after free: with `RawMap::drop`'s check of every shard's cells reduced to the
/// dropped shard's own, Miri reports one here.
#[test]
fn a_split_map_is_dropped_with_or_without_value_cells() {
    for overwrite in [false, true] {
        let map: SyncMap<u64, u64> = SyncMap::new();
        let n = fill_until_split(&map);
        assert!(map.shard_count() > 1);
        if overwrite {
            // One key: one shard holds a cell, the others none (every shard must walk).
            assert_eq!(map.insert(7, 8).as_deref(), Some(&70));
        }
        assert_eq!(map.len() as u64, n);
        assert_eq!(map.get_cloned(&7), Some(if overwrite { 8 } else { 70 }));
        drop(map);
    }
}

/// `reclaim` with no guard of the caller's alive waits for a tick of the background reclaimer
/// in progress, which may be pinned (and descheduled) when `reclaim` looks: the `differential`
/// fuzz target's `shrink_to_fit` once found 120 bytes still retired that way. A thread that
/// marks a tick and holds a pin for 15 ms stands in for the reclaimer; without the wait,
/// `reclaim` gives up after its 64 rounds (about 1.5 ms in a release build, 7 in a debug one)
/// and this test sees the cleared tables still pending.
#[test]
fn reclaim_waits_for_a_tick_in_progress() {
    // Large enough that `clear` retires its tables through the graveyard.
    let n = if cfg!(miri) { 2_000 } else { 50_000 };
    let map: SyncMap<u64, u64> = (0..n).map(|i| (i, i)).collect();
    let (pinned, wait) = std::sync::mpsc::channel();
    let ticker = std::thread::spawn(move || {
        let _tick = super::background::TickMark::enter();
        let guard = crossbeam_epoch::pin();
        pinned.send(()).expect("the test waits");
        std::thread::sleep(Duration::from_millis(15));
        drop(guard);
    });
    wait.recv().expect("the ticker pinned");
    map.clear();
    assert_eq!(map.reclaim(), 0, "{}", map.stats());
    ticker.join().expect("the ticker ran");
}

/// A one-shard map of `n` keys (value = key) whose shard is in the middle of a migration (a
/// dirty tier, the cursor short of the read table's end).
fn one_shard_migrating(n: u64) -> SyncMap<u64, u64> {
    let map: SyncMap<u64, u64> =
        SyncMap::with_capacity_shards_and_hasher(0, 1, std::hash::RandomState::new());
    let mut k = 0;
    while k < n || !map.stats().migrating {
        map.insert(k, k);
        k += 1;
        assert!(k < 50 * n, "no migration in progress after {k} inserts");
    }
    map
}

/// Looks at every shard of `map` with the idle watch's `rule` at `now` until one look settles
/// them all (at most `looks` rounds); how many rounds that took.
fn idle_looks(
    map: &SyncMap<u64, u64>,
    rule: super::idle::Rule,
    now: Instant,
    looks: usize,
) -> Option<usize> {
    let guard = map.raw().pin();
    for round in 1..=looks {
        let mut settled = true;
        for s in map.raw().shards() {
            let until = Instant::now() + Duration::from_millis(2);
            if !matches!(
                s.idle_step(&guard, rule, now, until),
                super::idle::Look::Settled
            ) {
                settled = false;
            }
        }
        if settled {
            return Some(round);
        }
    }
    None
}

/// The idle watch finishes a quiet shard's migration and promotes its dirty tier, and every
/// key is then in the promoted read tier with its value. The migration is in progress when
/// the watch looks, so a watch that promoted without finishing it (mutation
/// `idle_skips_migration`) loses the keys past the cursor.
#[test]
fn idle_watch_finishes_the_migration_and_promotes() {
    let n = if cfg!(miri) { 3_000 } else { 100_000 };
    let map = one_shard_migrating(n);
    let len = map.len() as u64;
    let before = map.stats();
    assert!(before.migrating && before.dirty_capacity > 0, "{before}");
    let now = Instant::now();
    let rule = super::idle::Rule {
        quiet: Duration::ZERO,
        min_bytes: 0,
    };
    let rounds = idle_looks(&map, rule, now, 100_000).expect("the shard settles");
    let after = map.stats();
    println!("settled after {rounds} looks: {before} -> {after}");
    assert!(rounds >= 2, "the first look only starts the quiet period");
    assert_eq!(after.dirty_capacity, 0, "{after}");
    assert!(!after.migrating);
    assert!(after.promotions > before.promotions, "{after}");
    assert_eq!(map.len() as u64, len);
    for k in 0..len {
        assert_eq!(
            map.get_cloned(&k),
            Some(k),
            "key {k} after the idle promotion"
        );
    }
    // Every key now answers from the read tier: lookups no longer miss it.
    let misses = map.stats().misses;
    assert_eq!(misses, 0, "{}", map.stats());
}

/// The idle watch's rule with a one-second quiet period, for maps of any size.
const QUIET_1S: super::idle::Rule = super::idle::Rule {
    quiet: Duration::from_secs(1),
    min_bytes: 0,
};

/// Whether the map has a dirty tier in some shard.
fn has_dirty(m: &SyncMap<u64, u64>) -> bool {
    m.stats().dirty_capacity > 0
}

/// The watch leaves a shard alone while operations take its lock, until it has been quiet for
/// the rule's whole period, and never promotes a small shard's tier (under `min_bytes`).
#[test]
fn idle_watch_waits_for_quiet_and_skips_small_maps() {
    let n = if cfg!(miri) { 3_000 } else { 50_000 };
    let map = one_shard_migrating(n);
    let rule = QUIET_1S;
    let t0 = Instant::now();
    let sec = |s: f64| t0 + Duration::from_secs_f64(s);
    // First look: starts the quiet period.
    assert_eq!(idle_looks(&map, rule, sec(0.0), 1), None);
    // A write takes the lock: the period starts again at the next look.
    map.insert(u64::MAX, 1);
    assert_eq!(idle_looks(&map, rule, sec(2.0), 1), None);
    assert!(
        has_dirty(&map),
        "promoted although written to since the last look"
    );
    assert_eq!(idle_looks(&map, rule, sec(2.5), 1), None);
    assert!(has_dirty(&map), "promoted after half the quiet period");
    // Quiet for the whole period: the watch finishes the migration and promotes.
    assert!(idle_looks(&map, rule, sec(3.1), 100_000).is_some());
    assert!(!has_dirty(&map), "{}", map.stats());
    assert_eq!(map.get_cloned(&u64::MAX), Some(1));

    // A small map's tiers stay as they are with the background reclaimer's rule.
    let small: SyncMap<u64, u64> = (0..100)
        .collect::<Vec<_>>()
        .into_iter()
        .map(|k| (k, k))
        .collect();
    small.insert(1_000, 1);
    assert!(has_dirty(&small), "{}", small.stats());
    assert_eq!(
        idle_looks(&small, super::idle::RULE, sec(100.0), 3),
        Some(1)
    );
    assert!(has_dirty(&small), "{}", small.stats());
}

/// A map dropped while its idle watch finishes its migration on another thread (as the
/// background reclaimer does, holding the watch through its own `Arc`): the drop waits for the
/// watch's look in progress (`IdleWatch::detach`), frees the shards, and the watch's next look
/// finds them gone and asks to be taken off the list. The thread looks in a tight loop with no
/// quiet period, so it is working on the shard (migration steps under its lock) when the drop
/// comes; the test checks that it was (the drop found a look in progress or the watch still
/// busy) and, under Miri, that nothing touched the freed shards.
#[test]
fn a_map_dropped_while_its_watch_works_is_detached_first() {
    // Several rounds: the drop lands at a different point of the watch's work each time.
    for round in 0..if cfg!(miri) { 1 } else { 4 } {
        drop_while_the_watch_works(round);
    }
}

fn drop_while_the_watch_works(round: usize) {
    let n = if cfg!(miri) { 600 } else { 200_000 };
    let map = one_shard_migrating(n);
    let watch = map.raw().idle_watch();
    watch.mark_listed();
    let started = Arc::new(AtomicBool::new(false));
    let looker = {
        let started = started.clone();
        std::thread::spawn(move || {
            let rule = super::idle::Rule {
                quiet: Duration::ZERO,
                min_bytes: 0,
            };
            let mut looks = 0usize;
            loop {
                let guard = crossbeam_epoch::pin();
                looks += 1;
                if looks == 2 {
                    started.store(true, SeqCst);
                }
                if !watch.step_with(&guard, rule) {
                    return looks;
                }
            }
        })
    };
    while !started.load(SeqCst) {
        std::thread::yield_now();
    }
    // Drop while the watch holds the shard's lock (a migration step), unless it finished
    // first.
    let shard = &map.raw().shards()[0];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut caught_working = false;
    while Instant::now() < deadline {
        if crate::facade::try_lock(&shard.dirty).is_none() {
            caught_working = true;
            break;
        }
        if shard.dirty().tier.is_none() {
            break;
        }
    }
    let promoted_before_drop = !caught_working && map.stats().dirty_capacity == 0;
    drop(map);
    let looks = looker.join().expect("the watch's thread");
    println!(
        "round {round}: {looks} looks; dropped while the watch held the lock: \
         {caught_working}; promoted before the drop: {promoted_before_drop}"
    );
    assert!(looks >= 2);
}

/// A shard written to again soon after the watch promoted it has its quiet period doubled (so
/// that a map written in batches every few seconds is not copied after every batch), and one
/// written to long after has it halved again. Times are the looks' own (`now`), not the clock's.
#[test]
fn idle_watch_backs_off_from_a_shard_written_soon_after_its_promotion() {
    let n = if cfg!(miri) { 3_000 } else { 50_000 };
    let map = one_shard_migrating(n);
    let rule = QUIET_1S;
    let t0 = Instant::now();
    let at = |s: f64| t0 + Duration::from_secs_f64(s);
    let mut key = u64::MAX;
    let mut write = |m: &SyncMap<u64, u64>| {
        m.insert(key, key);
        key -= 1;
        assert!(has_dirty(m), "a new key starts a migration: {}", m.stats());
    };
    // Quiet for the one-second period: promoted.
    assert_eq!(idle_looks(&map, rule, at(0.0), 1), None);
    assert!(idle_looks(&map, rule, at(1.1), 100_000).is_some());
    assert!(!has_dirty(&map));
    // Written 0.4 s after: the period doubles, so 1.1 s of quiet is not enough any more.
    write(&map);
    assert_eq!(idle_looks(&map, rule, at(1.5), 1), None);
    assert_eq!(idle_looks(&map, rule, at(2.6), 1), None);
    assert!(
        has_dirty(&map),
        "promoted after 1.1 s with a doubled period"
    );
    assert!(idle_looks(&map, rule, at(3.6), 100_000).is_some());
    assert!(
        !has_dirty(&map),
        "not promoted after 2.1 s: {}",
        map.stats()
    );
    // Written 16 s after (more than 4 periods of 2 s): the period halves back to 1 s.
    write(&map);
    assert_eq!(idle_looks(&map, rule, at(20.0), 1), None);
    assert!(idle_looks(&map, rule, at(21.1), 100_000).is_some());
    assert!(
        !has_dirty(&map),
        "not promoted after 1.1 s: {}",
        map.stats()
    );
}

/// An entry keeps no hash field on 64-bit targets (bits 48..64 ride in its value word, bits
/// 32..48 in its slots' tags): key, value word and the inline value, 24 bytes for `u64 -> u64`.
#[test]
#[cfg(target_pointer_width = "64")]
fn an_entry_of_u64_to_u64_takes_24_bytes() {
    assert_eq!(super::entry::entry_bytes::<u64, u64>(true), 24);
    // A zero-sized value takes no room (its inline slot is the entry's own address).
    assert_eq!(super::entry::entry_bytes::<u64, ()>(true), 16);
}

/// A map of zero-sized values (a set): each entry's inline value is the entry's own address.
/// Replacing (each replacement is a one-byte cell), removing and reviving values, then
/// migrating the entries, keeps every key; a cell taken for the inline value would never be
/// freed (a leak, which Miri and LSan report), the inline value taken for a cell would be freed
/// (a crash).
#[test]
fn zero_sized_values_live_in_their_entry() {
    #[derive(Clone, Copy, PartialEq, Debug)]
    struct Unit;
    let map: SyncMap<u64, Unit> = SyncMap::new();
    let n = if cfg!(miri) { 200 } else { 5_000 };
    for k in 0..n {
        assert!(map.insert(k, Unit).is_none());
    }
    for k in 0..n {
        assert_eq!(map.insert(k, Unit).as_deref(), Some(&Unit));
        if k % 3 == 0 {
            assert_eq!(map.remove(&k).as_deref(), Some(&Unit));
            assert!(map.insert(k, Unit).is_none());
        }
    }
    for k in n..2 * n {
        map.insert(k, Unit);
    }
    assert_eq!(map.len() as u64, 2 * n);
    for k in 0..2 * n {
        assert_eq!(map.get(&k).as_deref(), Some(&Unit), "key {k}");
    }
    assert_eq!(map.stats().len as u64, 2 * n);
}

/// Every transition of an entry's value word keeps the hash bits it carries (bits 48..64 of the
/// key's mixed hash, which a migration needs to place the entry): store, delete, revive, exact
/// replacement (to a value and to deleted), expunge, and the exclusive take. A transition that
/// dropped them would leave a live entry that a later migration puts at the wrong home slot
/// (mutation `word_drops_hash_bits`: `try_store` without them).
#[test]
fn the_value_word_keeps_the_hash_bits_through_every_transition() {
    use super::arena::SlotCache;
    use super::entry::{alloc_value, free_value, Entry, State};
    use super::hashbits::{tag16, KEPT};

    let arena = Entry::<u64, u64>::arena();
    let mut cache = SlotCache::new();
    for hash in [u64::MAX, 0xA5A5_5A5A_0F0F_F0F0, 0x8000_0001_0000_0000, KEPT] {
        let e = Entry::create(hash, 7u64, 1u64, &arena, &mut cache);
        // SAFETY: just created, and only this test uses it until it is freed below.
        let entry = unsafe { &*e };
        let kept = || entry.kept_hash(tag16(hash));
        let live = |want: u64| match entry.load() {
            // SAFETY: values stored below stay allocated until the end of the iteration.
            State::Live(p) => assert_eq!(unsafe { *p }, want),
            _ => panic!("not live"),
        };
        assert_eq!(kept(), hash & KEPT);
        let two = alloc_value(2u64);
        let first = entry
            .try_store(two)
            .expect("not expunged")
            .expect("was live");
        live(2);
        assert_eq!(kept(), hash & KEPT, "after a store");
        let three = alloc_value(3u64);
        assert!(entry.replace_exact(two, three).is_ok());
        live(3);
        assert_eq!(kept(), hash & KEPT, "after an exact replacement");
        assert_eq!(entry.try_delete(), Some(three));
        assert!(matches!(entry.load(), State::Deleted));
        assert_eq!(kept(), hash & KEPT, "after a delete");
        let four = alloc_value(4u64);
        assert!(entry.try_revive(four).is_ok());
        live(4);
        assert_eq!(kept(), hash & KEPT, "after a revive");
        assert!(entry.replace_exact(four, std::ptr::null_mut()).is_ok());
        assert_eq!(kept(), hash & KEPT, "after an exact replacement to deleted");
        assert!(entry.expunge_if_deleted());
        assert!(entry.is_expunged());
        assert_eq!(kept(), hash & KEPT, "after the expunge");
        // SAFETY: the test owns the entry exclusively and frees each value once: `first` is the
        // inline slot (freed with the entry), the others are cells no entry holds any more.
        unsafe {
            assert!(!entry.owns_cell(first));
            for p in [two, three, four] {
                free_value(p);
            }
            let (key, value) = Entry::into_parts(e, &arena);
            assert_eq!((key, value), (7, None));
        }
    }
    arena.unreserve(&mut cache);
}
