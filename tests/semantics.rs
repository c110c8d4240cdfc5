//! Unit tests of every operation and of the Go edge cases in `docs/SEMANTICS.md`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use tiermap::SyncMap;

/// Sizes shrink under Miri, which interprets every instruction.
const BIG: u64 = if cfg!(miri) { 400 } else { 10_000 };
const HUGE: u64 = if cfg!(miri) { 2_000 } else { 100_000 };

#[test]
fn get_insert_remove_roundtrip() {
    let map = SyncMap::new();
    assert!(map.get(&1).is_none());
    assert!(map.insert(1, "a").is_none());
    assert_eq!(map.get_cloned(&1), Some("a"));
    assert_eq!(
        map.insert(1, "b").as_deref(),
        Some(&"a"),
        "insert returns the old value (Swap)"
    );
    assert_eq!(map.get_cloned(&1), Some("b"));
    assert_eq!(map.remove(&1).as_deref(), Some(&"b"));
    assert!(
        map.remove(&1).is_none(),
        "removing a missing key is a no-op"
    );
    assert!(map.get(&1).is_none());
    assert_eq!(map.len(), 0);
}

#[test]
fn present_empty_value_is_returned() {
    // Go: a present value is returned even if it is "empty".
    let map = SyncMap::new();
    map.insert("k", String::new());
    assert_eq!(map.get_cloned("k"), Some(String::new()));
    let units: SyncMap<u8, ()> = SyncMap::new();
    units.insert(1, ());
    assert!(units.contains_key(&1));
    assert_eq!(units.get_cloned(&1), Some(()));
    assert_eq!(units.remove(&1).as_deref(), Some(&()));
    assert!(!units.contains_key(&1));
}

#[test]
fn get_or_insert_counts_deleted_as_absent() {
    let map = SyncMap::new();
    assert!(map.get_or_insert(1, 10).is_inserted());
    let loaded = map.get_or_insert(1, 20);
    assert!(loaded.is_loaded());
    assert_eq!(*loaded.into_inner(), 10);
    map.remove(&1);
    let again = map.get_or_insert(1, 30);
    assert!(again.is_inserted(), "a deleted key counts as absent");
    assert_eq!(*again.into_inner(), 30);
}

#[test]
fn get_or_insert_with_runs_closure_once_and_only_when_absent() {
    let map = SyncMap::new();
    let calls = AtomicUsize::new(0);
    for _ in 0..3 {
        map.get_or_insert_with("k", || {
            calls.fetch_add(1, Ordering::Relaxed);
            7
        });
    }
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    // The closure may use the map (it runs outside every lock).
    let r = map.get_or_insert_with("other", || *map.get("k").unwrap() + 1);
    assert_eq!(*r.into_inner(), 8);
}

#[test]
fn compare_exchange_missing_key_fails_and_inserts_nothing() {
    let map: SyncMap<i32, i32> = SyncMap::new();
    let err = map.compare_exchange(&1, &0, 5).unwrap_err();
    assert!(err.current.is_none());
    assert_eq!(err.new, 5);
    assert!(map.get(&1).is_none());
    assert_eq!(map.len(), 0);
    // A deleted key also fails.
    map.insert(1, 0);
    map.remove(&1);
    assert!(map.compare_exchange(&1, &0, 5).is_err());
    assert!(map.get(&1).is_none());
}

#[test]
fn compare_exchange_swaps_only_on_equal() {
    let map = SyncMap::new();
    map.insert(1, 10);
    let err = map.compare_exchange(&1, &11, 12).unwrap_err();
    assert_eq!(err.current.as_deref(), Some(&10));
    assert_eq!(*map.compare_exchange(&1, &10, 12).unwrap(), 10);
    assert_eq!(map.get_cloned(&1), Some(12));
}

#[test]
fn compare_remove_and_remove_if() {
    let map = SyncMap::new();
    assert!(!map.compare_remove(&1, &1), "missing key gives false");
    map.insert(1, 1);
    assert!(!map.compare_remove(&1, &2));
    assert!(map.contains_key(&1));
    assert!(map.compare_remove(&1, &1));
    assert!(!map.contains_key(&1));
    map.insert(2, 20);
    assert!(map.remove_if(&2, |v| *v < 10).is_none());
    assert_eq!(map.remove_if(&2, |v| *v == 20).as_deref(), Some(&20));
    assert_eq!(map.len(), 0);
}

#[test]
fn len_counts_across_tiers() {
    let map = SyncMap::new();
    for i in 0..1000 {
        map.insert(i, i);
    }
    assert_eq!(map.len(), 1000);
    // Force a promotion (iteration promotes when the dirty tier has new keys).
    assert_eq!(map.pin().iter().count(), 1000);
    for i in 0..500 {
        map.insert(i, i + 1);
    }
    assert_eq!(map.len(), 1000);
    for i in 0..250 {
        map.remove(&i);
    }
    assert_eq!(map.len(), 750);
    assert!(!map.is_empty());
}

#[test]
fn iteration_yields_each_key_once_across_tiers() {
    let map = SyncMap::new();
    for i in 0..300 {
        map.insert(i, i);
    }
    let _ = map.pin().iter().count(); // promote
    for i in 300..600 {
        map.insert(i, i); // new keys in the dirty tier
    }
    for i in (0..600).step_by(3) {
        map.remove(&i);
    }
    let m = map.pin();
    let mut seen = HashSet::new();
    for (k, v) in m.iter() {
        assert_eq!(k, v);
        assert!(seen.insert(*k), "key {k} yielded twice");
    }
    let expected: HashSet<i32> = (0..600).filter(|i| i % 3 != 0).collect();
    assert_eq!(seen, expected);
}

#[test]
fn range_stops_early_and_body_may_mutate_the_map() {
    let map: SyncMap<u32, u32> = (0..100).map(|i| (i, i)).collect();
    let mut n = 0;
    map.range(|k, _| {
        map.insert(k + 1000, 0); // insert
        map.remove(k); // remove
        n += 1;
        n < 10
    });
    assert_eq!(n, 10);
    // Nested iteration and clear from inside the body.
    map.for_each(|_, _| {
        let _ = map.pin().iter().count();
    });
    let mut visited_after_clear = 0;
    map.for_each(|_, _| {
        if visited_after_clear == 0 {
            map.clear();
        }
        visited_after_clear += 1;
    });
    assert_eq!(visited_after_clear, 1, "a clear ends the iteration");
    assert!(map.is_empty());
}

#[test]
fn iterating_an_empty_map_visits_nothing() {
    let map: SyncMap<u8, u8> = SyncMap::new();
    assert_eq!(map.pin().iter().count(), 0);
    map.insert(1, 1);
    map.remove(&1);
    assert_eq!(map.pin().iter().count(), 0);
}

#[test]
fn retain_keeps_matching() {
    let map: SyncMap<u32, u32> = (0..1000).map(|i| (i, i)).collect();
    map.retain(|k, _| k % 10 == 0);
    assert_eq!(map.len(), 100);
    for i in 0..1000 {
        assert_eq!(map.contains_key(&i), i % 10 == 0);
    }
}

#[test]
fn clear_then_reuse() {
    let map: SyncMap<u32, String> = (0..1000).map(|i| (i, i.to_string())).collect();
    map.clear();
    assert!(map.is_empty());
    assert!(map.get(&5).is_none());
    map.insert(5, "five".into());
    assert_eq!(map.get_cloned(&5).as_deref(), Some("five"));
    assert_eq!(map.len(), 1);
    let released = map.clear_and_release();
    // Other tests of this binary run in parallel and pin the same global epoch, so part of the
    // release may be pending (`tests/memory.rs`, alone in its process, asserts 0); it must still
    // be freed once their guards are gone.
    assert!(
        released.released_bytes + released.pending_bytes > 0,
        "{released}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while map.reclaim() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "still pending: {released}"
        );
        std::thread::yield_now();
    }
    assert!(map.is_empty());
    map.insert(6, "six".into());
    assert_eq!(map.len(), 1);
}

#[test]
fn shrink_to_fit_drops_deleted_entries() {
    let keep = BIG / 10;
    let map: SyncMap<u64, u64> = (0..BIG).map(|i| (i, i)).collect();
    let _ = map.pin().iter().count();
    for i in 0..BIG - keep {
        map.remove(&i);
    }
    map.shrink_to_fit();
    let s = map.stats();
    assert_eq!(s.len, keep as usize);
    assert_eq!(s.deleted, 0, "{s}");
    assert!(s.read_capacity <= 4 * keep as usize + 16, "{s}");
    for i in BIG - keep..BIG {
        assert_eq!(map.get_cloned(&i), Some(i));
    }
}

#[test]
fn deleted_entries_are_purged_without_new_inserts() {
    // Go keeps deleted read entries until a new key is inserted; tiermap purges them itself.
    let map: SyncMap<u64, u64> = (0..BIG).map(|i| (i, i)).collect();
    let _ = map.pin().iter().count(); // everything in the read tier
    for i in 0..BIG {
        map.remove(&i);
        let s = map.stats();
        assert!(
            s.deleted <= s.len / 2 + 64 + BIG as usize / 16,
            "after removing {i}: {s}"
        );
    }
    let s = map.stats();
    assert_eq!(s.len, 0);
    assert!(s.deleted <= 64, "{s}");
    assert!(s.compactions > 0, "{s}");
}

/// Go's promotion clock, as tiermap keeps it: lookups that find their key only in the dirty
/// tier promote it once they reach the dirty tier's size; lookups of keys that no tier holds
/// count one time in 16 (by hash), so absent-key reads under a trickle of new keys do not
/// promote over and over, and a read-only phase of them still promotes in the end.
#[test]
fn miss_driven_promotion() {
    // Room for the keys in the first dirty tier: no promotion by load, every key stays fresh.
    let map: SyncMap<u64, u64> = SyncMap::with_capacity(100);
    for i in 0..100 {
        map.insert(i, i);
    }
    let before = map.stats();
    assert_eq!(
        (before.promotions, before.read_capacity),
        (0, 0),
        "{before}"
    );
    // 100 absent-key lookups: about 6 of them count, far from the ~100 a promotion needs.
    for i in 1_000..1_100 {
        assert!(map.get(&i).is_none());
    }
    assert_eq!(map.stats().promotions, before.promotions);
    // Lookups of the keys only the dirty tier holds all count: the clock runs out within
    // one pass and the dirty tier is promoted, once.
    for _ in 0..2 {
        for i in 0..100 {
            assert_eq!(map.get_cloned(&i), Some(i));
        }
    }
    let after = map.stats();
    assert_eq!(after.promotions, before.promotions + 1, "{after}");
    assert_eq!(after.dirty_capacity, 0, "{after}");

    // Absent-key lookups alone: 6,400 of them count about 400 times, enough to promote.
    let map: SyncMap<u64, u64> = SyncMap::with_capacity(100);
    for i in 0..100 {
        map.insert(i, i);
    }
    let before = map.stats();
    for i in 1_000..7_400 {
        assert!(map.get(&i).is_none());
    }
    let after = map.stats();
    assert_eq!(after.promotions, before.promotions + 1, "{after}");
    assert_eq!(
        after.dirty_capacity, 0,
        "the second table is freed: {after}"
    );
    assert_eq!(map.len(), 100);
}

#[test]
fn a_migration_after_removals_sizes_its_table_by_the_live_entries() {
    // A promoted read tier of 20,000 entries, 5,000 of them removed (too few for a compaction):
    // the dirty table the next new key starts need not make room for the 5,000 deleted entries
    // it will drop, only for those that could be revived before it copies them (load 3/4).
    let n: u64 = if cfg!(miri) { 400 } else { 20_000 };
    // One shard (a map built empty would be split as it grows, and the new key below would
    // start the migration of one shard of several).
    let map: SyncMap<u64, u64> =
        SyncMap::with_capacity_shards_and_hasher(0, 1, std::hash::RandomState::new());
    for i in 0..n {
        map.insert(i, i);
    }
    let _ = map.pin().iter().count(); // promote: no dirty tier now
    for i in 0..n / 4 {
        assert_eq!(map.remove(&i).map(|v| *v), Some(i));
    }
    let before = map.stats();
    assert!(
        before.dirty_capacity == 0 && before.deleted as u64 == n / 4,
        "{before}"
    );
    map.insert(n, n);
    let s = map.stats();
    assert!(s.migrating, "{s}");
    let occupied = s.len + s.deleted;
    assert!(
        s.dirty_capacity < 2 * occupied,
        "sized for the deleted entries too: {s}"
    );
    assert!(
        s.dirty_capacity * 3 / 4 >= occupied,
        "no room for every entry the migration could copy: {s}"
    );
    for i in 0..n / 4 {
        assert_eq!(map.get_cloned(&i), None);
    }
    for i in n / 4..=n {
        assert_eq!(map.get_cloned(&i), Some(i));
    }
    assert_eq!(map.len() as u64, n - n / 4 + 1);
}

#[test]
fn first_new_key_after_read_only_phase_does_not_copy_the_map() {
    let map: SyncMap<u64, u64> = (0..HUGE).map(|i| (i, i)).collect();
    let _ = map.pin().iter().count(); // promote: no dirty tier now
    assert!(!map.stats().migrating);
    map.insert(u64::MAX, 0);
    let s = map.stats();
    assert!(s.migrating, "a migration started: {s}");
    assert!(
        s.dirty_capacity > 0 && s.held_bytes < (HUGE * 64 + 2 * HUGE * 16 + HUGE) as usize,
        "the dirty tier's chunks are allocated lazily, not copied at once: {s}"
    );
    assert_eq!(map.get_cloned(&u64::MAX), Some(0));
    assert_eq!(map.len(), HUGE as usize + 1);
}

#[test]
fn std_traits() {
    let map: SyncMap<u32, u32> = (0..5).map(|i| (i, i * 2)).collect();
    let dbg = format!("{map:?}");
    assert!(dbg.starts_with('{') && dbg.contains("4: 8"), "{dbg}");
    let copy = map.clone();
    copy.insert(0, 100);
    assert_eq!(map.get_cloned(&0), Some(0), "clone is deep");
    let mut m2 = SyncMap::default();
    m2.extend(vec![(1u32, 1u32), (2, 2)]);
    assert_eq!(m2.len(), 2);
    let mut owned: Vec<(u32, u32)> = map.into_iter().collect();
    owned.sort();
    assert_eq!(owned, vec![(0, 0), (1, 2), (2, 4), (3, 6), (4, 8)]);
}

#[test]
fn send_sync_where_sound() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<SyncMap<u32, String>>();
    sync::<SyncMap<u32, String>>();
    send::<SyncMap<u32, std::cell::Cell<u32>>>(); // Send, not Sync
}

#[test]
fn into_iter_drops_nothing_twice() {
    static DROPS: AtomicUsize = AtomicUsize::new(0);
    struct D(#[allow(dead_code)] u32);
    impl Drop for D {
        fn drop(&mut self) {
            DROPS.fetch_add(1, Ordering::Relaxed);
        }
    }
    let map = SyncMap::new();
    for i in 0..100 {
        map.insert(i, D(i));
    }
    let _ = map.pin().iter().count();
    for i in 0..10 {
        map.remove(&i);
    }
    map.reclaim();
    let items: Vec<_> = map.into_iter().collect();
    assert_eq!(items.len(), 90);
    drop(items);
    // Removed values are freed by the epoch once no guard (of any test thread running in
    // parallel) is in the way; drive collections until then.
    let flush = SyncMap::<u8, u8>::new();
    let start = std::time::Instant::now();
    while DROPS.load(Ordering::Relaxed) < 100 && start.elapsed().as_secs() < 10 {
        flush.reclaim();
        std::thread::yield_now();
    }
    assert_eq!(DROPS.load(Ordering::Relaxed), 100);
}

/// Found by the differential fuzzer: a `remove_if` whose predicate clears the map counted the
/// removal against the new (empty) generation, so `len` went wrong.
#[test]
fn regression_remove_if_predicate_that_clears_counts_old_generation() {
    let map = SyncMap::new();
    for i in 0..100 {
        map.insert(i, i);
    }
    let removed = map.remove_if(&5, |_| {
        map.clear();
        true
    });
    assert_eq!(removed.as_deref(), Some(&5));
    assert_eq!(map.len(), 0);
    map.insert(1, 1);
    assert_eq!(map.len(), 1);
    assert_eq!(map.stats().len, 1);
}

#[test]
fn pooled_sync_map_is_reset_and_bounded() {
    use tiermap::{MapPool, Recycle};
    let pool: MapPool<SyncMap<u64, u64>> = MapPool::builder()
        .initial_capacity(64)
        .capacity_ceiling(1024)
        .max_idle(2)
        .build();
    let ceiling = pool.capacity_ceiling().unwrap();
    for round in 0..3 {
        let n = if round == 1 { HUGE } else { 10 };
        {
            let map = pool.get();
            assert!(map.is_empty(), "a pooled map comes back empty");
            assert!(Recycle::capacity(&*map) <= ceiling);
            for i in 0..n {
                map.insert(i, i);
            }
            assert_eq!(map.len(), n as usize);
        }
        let s = pool.stats();
        assert!(s.retained_bytes < 64 * 1024, "round {round}: {s}");
    }
    // Reset keeps the capacity, so an in-ceiling map is not shrunk again on every return.
    let mut m = <SyncMap<u64, u64> as Recycle>::with_capacity(100);
    let c = Recycle::capacity(&m);
    assert!(c >= 100);
    m.insert(1, 1);
    Recycle::reset(&mut m);
    assert!(m.is_empty());
    assert_eq!(Recycle::capacity(&m), c);
}

/// A hasher that returns the key itself (as `nohash`-style hashers do for integer keys).
#[derive(Clone, Copy, Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A read-only phase of absent-key lookups promotes under any hasher. Before the fix, the 1 in
/// 16 sample tested the low four bits of the mixed hash, which (the mix being a multiplication
/// by an odd constant) are zero exactly when the key's are: under an identity hasher the keys
/// `16 k + 1` below never counted, and the map kept its second table forever.
#[test]
fn absent_misses_promote_under_an_identity_hasher() {
    let hasher = std::hash::BuildHasherDefault::<IdentityHasher>::default();
    let map: SyncMap<u64, u64, _> = SyncMap::with_capacity_and_hasher(100, hasher);
    for i in 0..100 {
        map.insert(i * 16, i);
    }
    let before = map.stats();
    assert_eq!(before.promotions, 0, "{before}");
    assert!(before.dirty_capacity > 0, "{before}");
    // 16 x 100 counted misses would do; four times that many lookups of absent keys, all with
    // the same low bits.
    for i in 0..6_400u64 {
        assert!(map.get(&(1_000_000 + 16 * i + 1)).is_none());
    }
    let after = map.stats();
    assert_eq!(after.promotions, 1, "{after}");
    assert_eq!(
        after.dirty_capacity, 0,
        "the second table is freed: {after}"
    );
    assert_eq!(map.len(), 100);
}

/// A map of eight shards keeps the contract of a one-shard map across every operation that
/// spans shards: counts and statistics add up, iteration and `retain` see each key once,
/// `clear` empties every shard and the map is usable after it, `shrink_to_fit` and `into_iter`
/// cover every shard.
#[test]
fn sharded_map_keeps_every_contract() {
    use std::collections::hash_map::RandomState;
    let map: SyncMap<u64, u64> = SyncMap::with_capacity_shards_and_hasher(0, 8, RandomState::new());
    assert_eq!(map.shard_count(), 8);
    for i in 0..BIG {
        assert!(map.insert(i, i * 2).is_none());
    }
    assert_eq!(map.len(), BIG as usize);
    assert_eq!(map.stats().len, BIG as usize);
    let seen: HashSet<u64> = map
        .pin()
        .iter()
        .map(|(k, v)| {
            assert_eq!(*v, k * 2);
            *k
        })
        .collect();
    assert_eq!(seen.len(), BIG as usize, "every key once");
    map.retain(|k, _| k % 2 == 0);
    assert_eq!(map.len(), (BIG / 2) as usize);
    assert_eq!(map.pin().iter().count(), (BIG / 2) as usize);
    assert!((0..BIG).all(|i| map.contains_key(&i) == (i % 2 == 0)));
    map.shrink_to_fit();
    let s = map.stats();
    assert_eq!((s.len, s.deleted), ((BIG / 2) as usize, 0), "{s}");
    map.clear();
    assert!(map.is_empty());
    assert_eq!(map.pin().iter().count(), 0);
    assert!(
        (0..BIG).all(|i| map.get(&i).is_none()),
        "a key survived clear"
    );
    for i in 0..100 {
        map.insert(i, i);
    }
    assert_eq!(map.len(), 100);
    let mut all: Vec<(u64, u64)> = map.into_iter().collect();
    all.sort();
    assert_eq!(all, (0..100).map(|i| (i, i)).collect::<Vec<_>>());
}

/// The shard count: one for a small map, a power of two for a large one, what was asked
/// (rounded down to a power of two, at most 64) with the explicit constructor.
#[test]
fn shard_count_follows_capacity_and_request() {
    use std::collections::hash_map::RandomState;
    assert_eq!(SyncMap::<u8, u8>::new().shard_count(), 1);
    assert_eq!(SyncMap::<u8, u8>::with_capacity(4000).shard_count(), 1);
    let large = SyncMap::<u8, u8>::with_capacity(1 << 20).shard_count();
    assert!(large.is_power_of_two() && large <= 64, "{large}");
    let ask = |n| {
        SyncMap::<u8, u8>::with_capacity_shards_and_hasher(0, n, RandomState::new()).shard_count()
    };
    assert_eq!(
        (ask(0), ask(1), ask(3), ask(8), ask(1000)),
        (1, 1, 2, 8, 64)
    );
}
